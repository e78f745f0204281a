//! The four-spans-per-hop check (docs/TRACING.md "Spans"), on spans from any
//! source: the lab's OTLP receiver (`From<&ReceivedSpan>` in [`crate::traces`]) and
//! Jaeger's query API (`cargo xtask kind` converts its JSON).
//!
//! Per HTTP request per hop the agents export four spans, each the parent of the
//! next: outbound SERVER → outbound CLIENT (resource: the calling pod) → inbound
//! SERVER → inbound CLIENT (resource: the called pod). [`hops`] finds them, checks
//! that every proxy span belongs to exactly one complete hop, and says what is
//! wrong otherwise.
//! [`verify_path`] finds a trace of the demo app (deploy/examples) whose hops follow
//! a given path of Deployments (`cargo xtask kind`, `cargo xtask cluster`).
//!
//! This file depends on `std` and `anyhow` only: xtask compiles it as its own
//! module (`#[path]`), so that `cargo xtask` builds without the lab's dependencies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// A span's kind, as far as the check cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopKind {
    /// `SPAN_KIND_SERVER`.
    Server,
    /// `SPAN_KIND_CLIENT`.
    Client,
    /// Any other kind.
    Other,
}

/// One span: its ids, kind, and the attributes that place it in a hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits, `""` for a root span.
    pub parent_span_id: String,
    /// Span kind.
    pub kind: HopKind,
    /// The `hoptrace.direction` attribute (`outbound` / `inbound`): present on the
    /// agent's proxy spans, `None` on anything else (the apps' own spans).
    pub direction: Option<String>,
    /// The `k8s.namespace.name` resource attribute (`""` when absent).
    pub namespace: String,
    /// The `k8s.pod.name` resource attribute (`""` when absent).
    pub pod: String,
}

impl HopSpan {
    /// `namespace/pod`.
    pub fn pod_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }

    fn role(&self) -> String {
        let kind = match self.kind {
            HopKind::Server => "SERVER",
            HopKind::Client => "CLIENT",
            HopKind::Other => "other-kind",
        };
        format!(
            "{} {kind} of {} (span {}, parent {:?})",
            self.direction.as_deref().unwrap_or("app"),
            self.pod_ref(),
            self.span_id,
            self.parent_span_id
        )
    }

    fn is(&self, direction: &str, kind: HopKind) -> bool {
        self.direction.as_deref() == Some(direction) && self.kind == kind
    }
}

/// One hop: the four proxy spans of one request from one pod to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The trace.
    pub trace_id: String,
    /// The calling pod, `namespace/name` (resource of the outbound spans).
    pub client: String,
    /// The called pod, `namespace/name` (resource of the inbound spans).
    pub server: String,
    /// Span ids in chain order: outbound SERVER, outbound CLIENT, inbound SERVER,
    /// inbound CLIENT.
    pub spans: [String; 4],
    /// Parent of the outbound SERVER span: the calling app's span, or the previous
    /// hop's inbound CLIENT span when the app forwarded the context it received.
    pub parent_span_id: String,
}

impl Hop {
    /// True when this hop's outbound SERVER span is a child of `prev`'s inbound
    /// CLIENT span: the app between them forwarded the trace context as it came.
    pub fn follows(&self, prev: &Hop) -> bool {
        self.trace_id == prev.trace_id && self.parent_span_id == prev.spans[3]
    }
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}

/// Groups spans by trace id.
pub fn by_trace(spans: &[HopSpan]) -> BTreeMap<String, Vec<HopSpan>> {
    let mut out: BTreeMap<String, Vec<HopSpan>> = BTreeMap::new();
    for s in spans {
        out.entry(s.trace_id.clone()).or_default().push(s.clone());
    }
    out
}

/// Finds the hops among `spans` (any number of traces; app spans may be among
/// them) and checks that every proxy span belongs to exactly one complete hop:
/// outbound SERVER → outbound CLIENT of the same pod → inbound SERVER → inbound
/// CLIENT of the same pod, each the only proxy child of the one before.
///
/// Returns the hops ordered by trace, then by depth in the trace (a caller's hop
/// before its callee's). The error lists every problem and the proxy spans.
pub fn hops(spans: &[HopSpan]) -> anyhow::Result<Vec<Hop>> {
    let proxy: Vec<&HopSpan> = spans.iter().filter(|s| s.direction.is_some()).collect();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for s in &proxy {
        if !seen.insert((s.trace_id.as_str(), s.span_id.as_str())) {
            problems.push(format!(
                "span {} appears twice in trace {}",
                s.span_id, s.trace_id
            ));
        }
        let direction_ok = matches!(s.direction.as_deref(), Some("outbound" | "inbound"));
        if !direction_ok || s.kind == HopKind::Other {
            problems.push(format!(
                "{}: a proxy span must be outbound or inbound, SERVER or CLIENT",
                s.role()
            ));
        }
        if s.pod.is_empty() {
            problems.push(format!("{}: no k8s.pod.name resource attribute", s.role()));
        }
    }
    let mut children: HashMap<(&str, &str), Vec<&HopSpan>> = HashMap::new();
    for s in &proxy {
        children
            .entry((s.trace_id.as_str(), s.parent_span_id.as_str()))
            .or_default()
            .push(s);
    }
    // The only proxy child of `parent`, which must be `direction` `kind`.
    let only_child = |parent: &HopSpan, direction: &str, kind: HopKind, what: &str| {
        let kids = children
            .get(&(parent.trace_id.as_str(), parent.span_id.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        match kids {
            [kid] if kid.is(direction, kind) => Ok(*kid),
            [] => Err(format!("{} has no {what} child", parent.role())),
            _ => Err(format!(
                "{} must have exactly one proxy child, the {what}; it has: {}",
                parent.role(),
                kids.iter().map(|k| k.role()).collect::<Vec<_>>().join("; ")
            )),
        }
    };

    let mut found = Vec::new();
    let mut used: HashSet<(&str, &str)> = HashSet::new();
    for start in proxy.iter().filter(|s| s.is("outbound", HopKind::Server)) {
        let chain = only_child(start, "outbound", HopKind::Client, "outbound CLIENT")
            .and_then(|oc| {
                only_child(oc, "inbound", HopKind::Server, "inbound SERVER").map(|is| (oc, is))
            })
            .and_then(|(oc, is)| {
                only_child(is, "inbound", HopKind::Client, "inbound CLIENT").map(|ic| (oc, is, ic))
            });
        let (oc, is, ic) = match chain {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("incomplete hop: {e}"));
                continue;
            }
        };
        if oc.pod_ref() != start.pod_ref() {
            problems.push(format!(
                "{} and its child {} must carry the same (calling) pod",
                start.role(),
                oc.role()
            ));
        }
        if ic.pod_ref() != is.pod_ref() {
            problems.push(format!(
                "{} and its child {} must carry the same (called) pod",
                is.role(),
                ic.role()
            ));
        }
        for s in [*start, oc, is, ic] {
            used.insert((s.trace_id.as_str(), s.span_id.as_str()));
        }
        found.push(Hop {
            trace_id: start.trace_id.clone(),
            client: start.pod_ref(),
            server: is.pod_ref(),
            spans: [
                start.span_id.clone(),
                oc.span_id.clone(),
                is.span_id.clone(),
                ic.span_id.clone(),
            ],
            parent_span_id: start.parent_span_id.clone(),
        });
    }
    for s in &proxy {
        if !used.contains(&(s.trace_id.as_str(), s.span_id.as_str())) {
            problems.push(format!("{} is not part of a complete hop", s.role()));
        }
    }
    if !problems.is_empty() {
        problems.dedup();
        let listing: Vec<String> = proxy
            .iter()
            .map(|s| format!("  trace {}: {}", s.trace_id, s.role()))
            .collect();
        anyhow::bail!(
            "proxy spans do not form four-span hops:\n- {}\nproxy spans:\n{}",
            problems.join("\n- "),
            listing.join("\n")
        );
    }

    // Order: by trace, then by how many ancestors the outbound SERVER span has.
    let parents: HashMap<(&str, &str), &str> = spans
        .iter()
        .map(|s| {
            (
                (s.trace_id.as_str(), s.span_id.as_str()),
                s.parent_span_id.as_str(),
            )
        })
        .collect();
    let depth = |hop: &Hop| {
        let mut depth = 0usize;
        let mut id = hop.parent_span_id.as_str();
        while let Some(parent) = parents.get(&(hop.trace_id.as_str(), id)) {
            depth += 1;
            if depth > spans.len() {
                break; // a parent cycle: never loop forever
            }
            id = parent;
        }
        depth
    };
    found.sort_by_cached_key(|h| (h.trace_id.clone(), depth(h), h.spans[0].clone()));
    Ok(found)
}

/// A trace through the demo app that passed the check.
#[derive(Debug)]
pub struct Verified {
    /// The trace.
    pub trace_id: String,
    /// Its hops, in order.
    pub hops: Vec<Hop>,
    /// Traces checked.
    pub checked: usize,
}

/// True when `pod_ref` (`namespace/name`) is a pod of Deployment `deployment` in
/// `namespace` (`<deployment>-<replicaset hash>-<suffix>`).
fn is_pod_of(pod_ref: &str, namespace: &str, deployment: &str) -> bool {
    pod_ref
        .split_once('/')
        .is_some_and(|(ns, pod)| ns == namespace && pod.starts_with(&format!("{deployment}-")))
}

/// Finds a trace whose proxy spans form complete four-span hops along `path`
/// (Deployments in `namespace`, e.g. loadgen → frontend → backend), each hop the
/// child of the one before (the apps forward the context they receive). Other
/// traces may be incomplete (requests made while pods were being enrolled); when
/// none passes, the error says why for each.
pub fn verify_path(spans: &[HopSpan], namespace: &str, path: &[&str]) -> anyhow::Result<Verified> {
    let traces = by_trace(spans);
    if traces.is_empty() {
        anyhow::bail!("no traces yet");
    }
    let mut reasons = Vec::new();
    for (trace_id, spans) in &traces {
        let found = match hops(spans) {
            Ok(found) => found,
            Err(e) => {
                reasons.push(format!("trace {trace_id}: {e:#}"));
                continue;
            }
        };
        let on_path = found.len() + 1 == path.len()
            && found.iter().zip(path.windows(2)).all(|(hop, pair)| {
                is_pod_of(&hop.client, namespace, pair[0])
                    && is_pod_of(&hop.server, namespace, pair[1])
            })
            && found.windows(2).all(|w| w[1].follows(&w[0]));
        if on_path {
            return Ok(Verified {
                trace_id: trace_id.clone(),
                hops: found,
                checked: traces.len(),
            });
        }
        let got: Vec<String> = found.iter().map(Hop::to_string).collect();
        reasons.push(format!(
            "trace {trace_id}: hops [{}], want {} (each hop the child of the one before)",
            got.join(", "),
            path.join(" -> ")
        ));
    }
    reasons.truncate(5);
    anyhow::bail!(
        "none of {} traces has four proxy spans on every hop of {}:\n{}",
        traces.len(),
        path.join(" -> "),
        reasons.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0af7651916cd43dd8448eb211c80319c";

    fn span(id: &str, parent: &str, kind: HopKind, dir: Option<&str>, pod: &str) -> HopSpan {
        HopSpan {
            trace_id: T.into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            kind,
            direction: dir.map(str::to_owned),
            namespace: "demo".into(),
            pod: pod.into(),
        }
    }

    /// The four proxy spans of a hop from `client` to `server` under `parent`,
    /// ids `<p>1`..`<p>4`.
    fn hop_spans(p: &str, parent: &str, client: &str, server: &str) -> Vec<HopSpan> {
        let id = |n: u8| format!("{p}{n}");
        vec![
            span(&id(1), parent, HopKind::Server, Some("outbound"), client),
            span(&id(2), &id(1), HopKind::Client, Some("outbound"), client),
            span(&id(3), &id(2), HopKind::Server, Some("inbound"), server),
            span(&id(4), &id(3), HopKind::Client, Some("inbound"), server),
        ]
    }

    #[test]
    fn forwarded_context_two_hops() {
        // loadgen's root span is not exported; frontend forwards the context as is.
        let mut spans = hop_spans("b", "a4", "frontend", "backend");
        spans.splice(0..0, hop_spans("a", "root", "loadgen", "frontend"));
        spans.reverse(); // order of arrival must not matter
        let hops = hops(&spans).expect("two hops");
        let path: Vec<String> = hops.iter().map(Hop::to_string).collect();
        assert_eq!(
            path,
            [
                "demo/loadgen -> demo/frontend",
                "demo/frontend -> demo/backend"
            ]
        );
        assert_eq!(hops[0].spans, ["a1", "a2", "a3", "a4"].map(String::from));
        assert_eq!(hops[0].parent_span_id, "root");
        assert!(hops[1].follows(&hops[0]));
        assert!(!hops[0].follows(&hops[1]));
    }

    #[test]
    fn app_spans_between_hops() {
        let mut spans = vec![
            span("c0", "", HopKind::Client, None, "client"),
            span("w1", "a4", HopKind::Server, None, "web"),
            span("w2", "w1", HopKind::Client, None, "web"),
            span("k1", "b4", HopKind::Server, None, "backend"),
        ];
        spans.extend(hop_spans("b", "w2", "web", "backend"));
        spans.extend(hop_spans("a", "c0", "client", "web"));
        let hops = hops(&spans).expect("two hops");
        let path: Vec<String> = hops.iter().map(Hop::to_string).collect();
        assert_eq!(
            path,
            ["demo/client -> demo/web", "demo/web -> demo/backend"]
        );
        assert!(!hops[1].follows(&hops[0]), "an app span sits between them");
        // App spans alone: no hops, no error.
        assert!(super::hops(&spans[..4]).expect("no proxy spans").is_empty());
    }

    #[test]
    fn incomplete_hops_are_reported() {
        // The callee is not enrolled: only the outbound leg.
        let spans = hop_spans("a", "root", "loadgen", "jaeger")[..2].to_vec();
        let err = hops(&spans).expect_err("half a hop").to_string();
        assert!(err.contains("no inbound SERVER child"), "{err}");

        // An inbound leg with no outbound leg (the caller is not enrolled).
        let spans = hop_spans("a", "root", "loadgen", "frontend")[2..].to_vec();
        let err = hops(&spans).expect_err("inbound only").to_string();
        assert!(err.contains("is not part of a complete hop"), "{err}");
    }

    #[test]
    fn malformed_hops_are_reported() {
        let mut wrong_pod = hop_spans("a", "root", "loadgen", "frontend");
        wrong_pod[1].pod = "other".into();
        let err = hops(&wrong_pod).expect_err("pods differ").to_string();
        assert!(err.contains("same (calling) pod"), "{err}");

        let mut branching = hop_spans("a", "root", "loadgen", "frontend");
        branching.push(span(
            "x",
            "a2",
            HopKind::Server,
            Some("inbound"),
            "frontend",
        ));
        let err = hops(&branching)
            .expect_err("two inbound SERVER")
            .to_string();
        assert!(err.contains("exactly one proxy child"), "{err}");

        let mut wrong_kind = hop_spans("a", "root", "loadgen", "frontend");
        wrong_kind[2].kind = HopKind::Client;
        assert!(hops(&wrong_kind).is_err());

        let mut bad_direction = hop_spans("a", "root", "loadgen", "frontend");
        bad_direction[0].direction = Some("sideways".into());
        let err = hops(&bad_direction).expect_err("direction").to_string();
        assert!(err.contains("outbound or inbound"), "{err}");

        let mut dup = hop_spans("a", "root", "loadgen", "frontend");
        dup.push(dup[3].clone());
        let err = hops(&dup).expect_err("duplicate").to_string();
        assert!(err.contains("appears twice"), "{err}");
    }

    #[test]
    fn traces_are_checked_apart() {
        let mut spans = hop_spans("a", "root", "loadgen", "frontend");
        let mut other = hop_spans("a", "root", "loadgen", "frontend");
        for s in &mut other {
            s.trace_id = "1".repeat(32);
        }
        spans.extend(other);
        let hops = hops(&spans).expect("one hop per trace");
        assert_eq!(hops.len(), 2);
        assert_ne!(hops[0].trace_id, hops[1].trace_id);
        assert_eq!(by_trace(&spans).len(), 2);
    }
}
