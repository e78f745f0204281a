//! Checking whole traces made of spans from different sources: the agent's
//! proxy spans (received over OTLP, [`ReceivedSpan`]) and the test apps' own
//! spans ([`AppSpan`]), merged into one [`SpanView`] list.

use crate::hops::{HopKind, HopSpan};
use crate::otlp::{ReceivedSpan, SpanKind};
use crate::pyapp::AppSpan;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::fmt::Write as _;

/// The parts of a span that trace-shape checks need, plus a label saying
/// where it came from (for messages and for matching expectations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanView {
    /// `app:<service>` for app spans, `proxy:<direction>:<pod>` for proxy spans.
    pub source: String,
    /// 32 hex.
    pub trace_id: String,
    /// 16 hex.
    pub span_id: String,
    /// 16 hex or `""`.
    pub parent_span_id: String,
    /// Kind.
    pub kind: SpanKind,
    /// Name.
    pub name: String,
    /// Start, ns since the epoch.
    pub start: u64,
    /// End, ns since the epoch.
    pub end: u64,
}

impl From<&AppSpan> for SpanView {
    fn from(s: &AppSpan) -> SpanView {
        SpanView {
            source: format!("app:{}", s.service),
            trace_id: s.trace_id.clone(),
            span_id: s.span_id.clone(),
            parent_span_id: s.parent_span_id.clone(),
            kind: s.span_kind(),
            name: s.name.clone(),
            start: s.start_ns,
            end: s.end_ns,
        }
    }
}

impl From<&ReceivedSpan> for SpanView {
    fn from(s: &ReceivedSpan) -> SpanView {
        SpanView {
            source: format!(
                "proxy:{}:{}",
                s.attr("hoptrace.direction").unwrap_or("?"),
                s.res("k8s.pod.name").unwrap_or("?")
            ),
            trace_id: s.trace_id.clone(),
            span_id: s.span_id.clone(),
            parent_span_id: s.parent_span_id.clone(),
            kind: s.kind,
            name: s.name.clone(),
            start: s.start_unix_nano,
            end: s.end_unix_nano,
        }
    }
}

impl From<&ReceivedSpan> for HopSpan {
    fn from(s: &ReceivedSpan) -> HopSpan {
        HopSpan {
            trace_id: s.trace_id.clone(),
            span_id: s.span_id.clone(),
            parent_span_id: s.parent_span_id.clone(),
            kind: match s.kind {
                SpanKind::Server => HopKind::Server,
                SpanKind::Client => HopKind::Client,
                _ => HopKind::Other,
            },
            direction: s.attr("hoptrace.direction").map(str::to_owned),
            namespace: s.res("k8s.namespace.name").unwrap_or_default().to_owned(),
            pod: s.res("k8s.pod.name").unwrap_or_default().to_owned(),
        }
    }
}

impl From<&AppSpan> for HopSpan {
    fn from(s: &AppSpan) -> HopSpan {
        HopSpan {
            trace_id: s.trace_id.clone(),
            span_id: s.span_id.clone(),
            parent_span_id: s.parent_span_id.clone(),
            kind: match s.span_kind() {
                SpanKind::Server => HopKind::Server,
                SpanKind::Client => HopKind::Client,
                _ => HopKind::Other,
            },
            direction: None,
            namespace: String::new(),
            pod: s.service.clone(),
        }
    }
}

impl SpanView {
    /// `source KIND` — what chain expectations are written in, e.g.
    /// `proxy:outbound:client Server` or `app:web Client`.
    pub fn role(&self) -> String {
        format!("{} {:?}", self.source, self.kind)
    }
}

/// Merges app and proxy spans into views.
pub fn views<'a>(
    apps: impl IntoIterator<Item = &'a AppSpan>,
    proxy: impl IntoIterator<Item = &'a ReceivedSpan>,
) -> Vec<SpanView> {
    let mut out: Vec<SpanView> = apps.into_iter().map(SpanView::from).collect();
    out.extend(proxy.into_iter().map(SpanView::from));
    out
}

/// Spans whose parent is not among `spans` (sorted by start), and each span id's
/// children.
type Tree<'a> = (Vec<&'a SpanView>, HashMap<&'a str, Vec<&'a SpanView>>);

fn tree(spans: &[SpanView]) -> Tree<'_> {
    let ids: HashMap<&str, &SpanView> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut children: HashMap<&str, Vec<&SpanView>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        if ids.contains_key(s.parent_span_id.as_str()) {
            children
                .entry(s.parent_span_id.as_str())
                .or_default()
                .push(s);
        } else {
            roots.push(s);
        }
    }
    roots.sort_by_key(|s| s.start);
    (roots, children)
}

/// Renders spans as an indented tree (children under parents, by start
/// time; orphans at the top level), for assertion messages.
pub fn render(spans: &[SpanView]) -> String {
    let (roots, children) = tree(spans);
    let t0 = spans.iter().map(|s| s.start).min().unwrap_or(0);
    let mut out = String::new();
    let mut seen = std::collections::HashSet::new();
    fn walk<'a>(
        out: &mut String,
        s: &'a SpanView,
        depth: usize,
        t0: u64,
        children: &HashMap<&str, Vec<&'a SpanView>>,
        seen: &mut std::collections::HashSet<*const SpanView>,
    ) {
        if !seen.insert(s as *const SpanView) {
            let _ = writeln!(
                out,
                "{:indent$}- (cycle back to {})",
                "",
                s.span_id,
                indent = depth * 2
            );
            return;
        }
        let _ = writeln!(
            out,
            "{:indent$}- {} {:?} {}/{} <- {:?} [+{:.3} ms .. +{:.3} ms]",
            "",
            s.role(),
            s.name,
            &s.trace_id[..s.trace_id.len().min(8)],
            s.span_id,
            s.parent_span_id,
            s.start.saturating_sub(t0) as f64 / 1e6,
            s.end.saturating_sub(t0) as f64 / 1e6,
            indent = depth * 2
        );
        if let Some(kids) = children.get(s.span_id.as_str()) {
            let mut kids = kids.clone();
            kids.sort_by_key(|k| k.start);
            for k in kids {
                walk(out, k, depth + 1, t0, children, seen);
            }
        }
    }
    for r in roots {
        walk(&mut out, r, 0, t0, &children, &mut seen);
    }
    for s in spans {
        if !seen.contains(&(s as *const SpanView)) {
            let _ = writeln!(
                out,
                "- (in a parent cycle) {} {}/{} <- {}",
                s.role(),
                s.trace_id,
                s.span_id,
                s.parent_span_id
            );
        }
    }
    out
}

/// Follows `spans` from the root (the span with no parent among them, which
/// must be unique) down through single children and returns the chain.
/// Fails (with the tree) if spans repeat an id, belong to different traces,
/// branch, or are left over (not on the chain).
pub fn linear_chain(spans: &[SpanView]) -> Result<Vec<SpanView>> {
    let tree = render(spans);
    let mut ids: HashMap<&str, &SpanView> = HashMap::new();
    for s in spans {
        if ids.insert(s.span_id.as_str(), s).is_some() {
            bail!("span id {} appears twice:\n{tree}", s.span_id);
        }
    }
    if let Some(first) = spans.first() {
        if let Some(other) = spans.iter().find(|s| s.trace_id != first.trace_id) {
            bail!(
                "spans of two traces ({} and {}):\n{tree}",
                first.trace_id,
                other.trace_id
            );
        }
    }
    let roots: Vec<&SpanView> = spans
        .iter()
        .filter(|s| !ids.contains_key(s.parent_span_id.as_str()))
        .collect();
    if roots.len() != 1 {
        bail!(
            "{} spans have no parent among the spans (want 1 root):\n{tree}",
            roots.len()
        );
    }
    let mut chain = vec![roots[0].clone()];
    loop {
        let last = &chain[chain.len() - 1].span_id;
        let kids: Vec<&SpanView> = spans.iter().filter(|s| &s.parent_span_id == last).collect();
        match kids.len() {
            0 => break,
            1 if chain.len() < spans.len() => chain.push(kids[0].clone()),
            1 => bail!("parent cycle at span {last}:\n{tree}"),
            n => bail!("span {last} has {n} children (want a single chain):\n{tree}"),
        }
    }
    if chain.len() != spans.len() {
        bail!(
            "{} of {} spans are not on the chain from the root:\n{tree}",
            spans.len() - chain.len(),
            spans.len()
        );
    }
    Ok(chain)
}

/// Checks that every span whose parent is among `spans` starts no earlier
/// and ends no later than its parent, within `tolerance_ns` (clock reads in
/// different processes), and that no span ends before it starts.
pub fn check_nesting(spans: &[SpanView], tolerance_ns: u64) -> Result<()> {
    let ids: HashMap<&str, &SpanView> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut errors = Vec::new();
    for s in spans {
        if s.end < s.start {
            errors.push(format!("{} ends before it starts", s.role()));
        }
        let Some(p) = ids.get(s.parent_span_id.as_str()) else {
            continue;
        };
        if s.start + tolerance_ns < p.start {
            errors.push(format!(
                "{} starts {:.3} ms before its parent {}",
                s.role(),
                (p.start - s.start) as f64 / 1e6,
                p.role()
            ));
        }
        if s.end > p.end + tolerance_ns {
            errors.push(format!(
                "{} ends {:.3} ms after its parent {}",
                s.role(),
                (s.end - p.end) as f64 / 1e6,
                p.role()
            ));
        }
    }
    if !errors.is_empty() {
        bail!(
            "spans do not nest:\n  {}\n{}",
            errors.join("\n  "),
            render(spans)
        );
    }
    Ok(())
}

/// Checks a chain (from [`linear_chain`]) against expected roles, e.g.
/// `["app:client Client", "proxy:outbound:client Server", ...]`.
pub fn expect_roles(chain: &[SpanView], expected: &[&str]) -> Result<()> {
    let got: Vec<String> = chain.iter().map(SpanView::role).collect();
    if got != expected {
        bail!(
            "parent chain mismatch\n  want: {expected:#?}\n  got:  {got:#?}\n{}",
            render(chain)
        );
    }
    Ok(())
}

/// A terminal waterfall of one trace: one line per span in tree order, a bar on a
/// shared time axis, and the duration — where the time goes on each hop.
pub fn waterfall(spans: &[SpanView], width: usize) -> String {
    let Some(t0) = spans.iter().map(|s| s.start).min() else {
        return String::new();
    };
    let t1 = spans.iter().map(|s| s.end).max().unwrap_or(t0).max(t0 + 1);
    let total = (t1 - t0) as f64;
    let (roots, children) = tree(spans);
    let mut rows: Vec<(usize, &SpanView)> = Vec::new();
    let mut stack: Vec<(usize, &SpanView)> = roots.into_iter().rev().map(|s| (0, s)).collect();
    while let Some((depth, s)) = stack.pop() {
        if rows.len() > spans.len() {
            break; // malformed (cycle): never loop forever
        }
        rows.push((depth, s));
        if let Some(kids) = children.get(s.span_id.as_str()) {
            let mut kids = kids.clone();
            kids.sort_by_key(|k| std::cmp::Reverse(k.start));
            stack.extend(kids.into_iter().map(|k| (depth + 1, k)));
        }
    }
    let label = |depth: usize, s: &SpanView| {
        let kind = match s.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
            _ => "INTERNAL",
        };
        format!("{:indent$}{} {}", "", s.source, kind, indent = depth)
    };
    let label_w = rows
        .iter()
        .map(|(d, s)| label(*d, s).len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {}  ({} spans, {:.2} ms)",
        spans[0].trace_id,
        spans.len(),
        total / 1e6
    );
    for (depth, s) in rows {
        let a = (((s.start - t0) as f64 / total) * width as f64).round() as usize;
        let b = (((s.end.max(s.start) - t0) as f64 / total) * width as f64).round() as usize;
        let b = b.clamp(a + 1, width.max(a + 1));
        let bar: String = (0..width)
            .map(|i| if i >= a && i < b { '█' } else { '·' })
            .collect();
        let _ = writeln!(
            out,
            "{:<label_w$}  {bar}  {:>8.3} ms",
            label(depth, s),
            (s.end.saturating_sub(s.start)) as f64 / 1e6,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(src: &str, kind: SpanKind, id: &str, parent: &str, start: u64, end: u64) -> SpanView {
        SpanView {
            source: src.into(),
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            kind,
            name: "GET /".into(),
            start,
            end,
        }
    }

    #[test]
    fn chains_and_nesting() {
        let spans = vec![
            v(
                "proxy:outbound:client",
                SpanKind::Server,
                "b",
                "a",
                110,
                190,
            ),
            v("app:client", SpanKind::Client, "a", "", 100, 200),
            v("app:web", SpanKind::Server, "c", "b", 120, 191),
        ];
        let chain = linear_chain(&spans).expect("chain");
        expect_roles(
            &chain,
            &[
                "app:client Client",
                "proxy:outbound:client Server",
                "app:web Server",
            ],
        )
        .expect("roles");
        assert!(expect_roles(&chain, &["app:client Client"]).is_err());
        assert!(check_nesting(&spans, 0).is_err(), "c ends after b");
        check_nesting(&spans, 1).expect("within tolerance");

        let mut branching = spans.clone();
        branching.push(v("app:web", SpanKind::Client, "d", "b", 130, 140));
        assert!(linear_chain(&branching).is_err());
        let mut two_roots = spans.clone();
        two_roots.push(v("app:other", SpanKind::Client, "e", "zz", 130, 140));
        assert!(linear_chain(&two_roots).is_err());
        let mut dup = spans.clone();
        dup.push(v("app:web", SpanKind::Client, "c", "c", 130, 140));
        assert!(linear_chain(&dup).is_err());
        let mut cycle = spans;
        cycle.push(v("app:loop", SpanKind::Client, "x", "x", 130, 140));
        assert!(linear_chain(&cycle).is_err());
        assert!(render(&cycle).contains("cycle"), "{}", render(&cycle));
    }
}
