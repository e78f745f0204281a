//! Which pods the agent enrolls, and the names it gives them.
//!
//! Decision order for a pod on this node (first match wins):
//!
//! 1. never: host-network pods, pods not `Running`, pods without an address, pods
//!    being deleted (`deletionTimestamp` set), and the agent's own pod;
//! 2. the pod annotation `hoptrace.io/inject: enabled|disabled`;
//! 3. the namespace label `hoptrace.io/inject=enabled|disabled`;
//! 4. `--inject-default` (`HOPTRACE_INJECT_DEFAULT`), `disabled` unless set (opt-in).
//!
//! Any other annotation or label value is reported as a warning and ignored (the
//! next level decides). The service name of a pod is its owning workload's name.

use crate::workloads::ContextPropagation;
use std::fmt;

pub use super::records::{NamespaceRecord, Owner, PodRecord};

/// Pod annotation and namespace label that turn enrollment on or off.
pub const INJECT_KEY: &str = "hoptrace.io/inject";
/// Pod annotation: fraction (0.0–1.0) of context-less requests arriving at the pod
/// for which the agent starts a trace (`Workload::trace_sampling`).
pub const SAMPLING_ANNOTATION: &str = "hoptrace.io/trace-sampling";
/// Pod annotation: `auto` makes the agent link the pod's context-less outbound
/// requests to their inbound cause (`Workload::context_propagation`).
pub const PROPAGATION_ANNOTATION: &str = "hoptrace.io/context-propagation";
/// Label the Deployment controller puts on its pods; its value is the suffix of the
/// ReplicaSet name.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// An enrollment switch value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Inject {
    /// Enroll (steer and trace) the pod.
    Enabled,
    /// Leave the pod alone.
    Disabled,
}

impl Inject {
    /// Parses an annotation or label value (`enabled` | `disabled`, surrounding
    /// blanks ignored).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "enabled" => Some(Inject::Enabled),
            "disabled" => Some(Inject::Disabled),
            _ => None,
        }
    }
}

/// Which level decided a pod's enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The pod's `hoptrace.io/inject` annotation.
    PodAnnotation,
    /// The namespace's `hoptrace.io/inject` label.
    NamespaceLabel,
    /// `--inject-default`.
    Default,
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecidedBy::PodAnnotation => "pod annotation hoptrace.io/inject",
            DecidedBy::NamespaceLabel => "namespace label hoptrace.io/inject",
            DecidedBy::Default => "--inject-default",
        })
    }
}

/// Why a pod is not enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// `spec.nodeName` is another node (or unset).
    OtherNode,
    /// `spec.hostNetwork: true`: the pod shares the node's network namespace.
    HostNetwork,
    /// `status.phase` is not `Running`.
    NotRunning(String),
    /// No `status.podIPs` yet.
    NoAddress,
    /// `metadata.deletionTimestamp` is set.
    Deleting,
    /// The agent's own pod.
    OwnPod,
    /// Enrollment is off for it.
    Disabled(DecidedBy),
    /// No pod annotation decides, and the namespaces cannot be read (the agent may
    /// not list them): its namespace's label is unknown, so neither it nor
    /// `--inject-default` decides; the pod is left alone.
    NamespaceUnknown,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::OtherNode => f.write_str("scheduled on another node"),
            Skip::HostNetwork => f.write_str("host-network pod"),
            Skip::NotRunning(phase) => write!(f, "phase {phase}, not Running"),
            Skip::NoAddress => f.write_str("no pod IP yet"),
            Skip::Deleting => f.write_str("being deleted"),
            Skip::OwnPod => f.write_str("the agent's own pod"),
            Skip::Disabled(by) => write!(f, "injection disabled by {by}"),
            Skip::NamespaceUnknown => f.write_str(
                "no hoptrace.io/inject annotation, and its namespace's label is unknown \
                 (the agent may not list namespaces)",
            ),
        }
    }
}

/// The enrollment policy of one agent.
#[derive(Debug, Clone)]
pub struct Policy {
    /// This node's name.
    pub node: String,
    /// `--inject-default`.
    pub default: Inject,
    /// The agent's own pod (`namespace`, `name`), when known.
    pub own_pod: Option<(String, String)>,
}

/// The outcome for one pod: what decided, plus warnings about values that were ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// `Ok(level)` to enroll (and which level said so), `Err(reason)` to leave it alone.
    pub decision: Result<DecidedBy, Skip>,
    /// Problems with annotations or labels (logged as warnings).
    pub warnings: Vec<String>,
}

impl Policy {
    /// Decides whether to enroll `pod`; `namespace` is its namespace when known.
    pub fn decide(&self, pod: &PodRecord, namespace: Option<&NamespaceRecord>) -> Verdict {
        let mut warnings = Vec::new();
        let decision = self.decide_inner(pod, namespace, &mut warnings);
        Verdict { decision, warnings }
    }

    fn decide_inner(
        &self,
        pod: &PodRecord,
        namespace: Option<&NamespaceRecord>,
        warnings: &mut Vec<String>,
    ) -> Result<DecidedBy, Skip> {
        if pod.node.as_deref() != Some(self.node.as_str()) {
            return Err(Skip::OtherNode);
        }
        if pod.host_network {
            return Err(Skip::HostNetwork);
        }
        if pod.deleting {
            return Err(Skip::Deleting);
        }
        if pod.phase.as_deref() != Some("Running") {
            return Err(Skip::NotRunning(
                pod.phase.clone().unwrap_or_else(|| "unknown".into()),
            ));
        }
        if pod.ips.is_empty() {
            return Err(Skip::NoAddress);
        }
        if let Some((ns, name)) = &self.own_pod {
            if *ns == pod.namespace && *name == pod.name {
                return Err(Skip::OwnPod);
            }
        }
        let mut level = |value: Option<&String>, by: DecidedBy, what: &str| {
            let value = value?;
            let parsed = Inject::parse(value);
            if parsed.is_none() {
                warnings.push(format!(
                    "{what} {INJECT_KEY}={value:?} is neither \"enabled\" nor \"disabled\"; ignored"
                ));
            }
            parsed.map(|i| (i, by))
        };
        let (inject, by) = level(pod.inject.as_ref(), DecidedBy::PodAnnotation, "annotation")
            .or_else(|| {
                level(
                    namespace.and_then(|n| n.inject.as_ref()),
                    DecidedBy::NamespaceLabel,
                    "namespace label",
                )
            })
            .unwrap_or((self.default, DecidedBy::Default));
        match inject {
            Inject::Enabled => Ok(by),
            Inject::Disabled => Err(Skip::Disabled(by)),
        }
    }
}

/// The pod's `hoptrace.io/trace-sampling` annotation as a fraction: `Ok(None)` when
/// absent, `Err(warning)` when it is not a number between 0.0 and 1.0.
pub fn trace_sampling(pod: &PodRecord) -> Result<Option<f64>, String> {
    let Some(raw) = pod.trace_sampling.as_deref() else {
        return Ok(None);
    };
    match raw.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(Some(r)),
        _ => Err(format!(
            "annotation {SAMPLING_ANNOTATION}={raw:?} is not a fraction between 0.0 and 1.0; ignored"
        )),
    }
}

/// The pod's `hoptrace.io/context-propagation` annotation: off when absent,
/// `Err(warning)` (and off) when it is not `auto` or `off`.
pub fn context_propagation(pod: &PodRecord) -> Result<ContextPropagation, String> {
    match pod.context_propagation.as_deref() {
        None => Ok(ContextPropagation::Off),
        Some(raw) => ContextPropagation::parse(raw)
            .map_err(|e| format!("annotation {PROPAGATION_ANNOTATION}: {e}; off")),
    }
}

/// The pod's workload (service) name: a Deployment's name for pods of its
/// ReplicaSets (the `pod-template-hash` suffix stripped), the owner's name for any
/// other owner (StatefulSet, DaemonSet, Job, ...), else the pod's own name.
pub fn service_name(pod: &PodRecord) -> String {
    let Some(owner) = &pod.owner else {
        return pod.name.clone();
    };
    if owner.kind == "ReplicaSet" {
        if let Some(hash) = pod.labels.get(POD_TEMPLATE_HASH) {
            if let Some(base) = owner.name.strip_suffix(hash.as_str()) {
                if let Some(base) = base.strip_suffix('-').filter(|b| !b.is_empty()) {
                    return base.to_string();
                }
            }
        }
    }
    owner.name.clone()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pod(name: &str) -> PodRecord {
        PodRecord {
            name: name.into(),
            namespace: "shop".into(),
            uid: "0c1d9a4e-2f0b-4c7e-9a61-3b5e8f7d2a10".into(),
            node: Some("node-1".into()),
            host_network: false,
            phase: Some("Running".into()),
            ips: vec!["10.244.1.5".parse().expect("ip")],
            deleting: false,
            created: Some(1_700_000_000),
            qos_class: Some("BestEffort".into()),
            inject: None,
            trace_sampling: None,
            context_propagation: None,
            labels: BTreeMap::new(),
            owner: None,
        }
    }

    fn ns(inject: Option<&str>) -> NamespaceRecord {
        NamespaceRecord {
            name: "shop".into(),
            inject: inject.map(String::from),
        }
    }

    fn policy(default: Inject) -> Policy {
        Policy {
            node: "node-1".into(),
            default,
            own_pod: Some(("hoptrace".into(), "hoptrace-abcde".into())),
        }
    }

    fn decide(
        p: &Policy,
        pod: &PodRecord,
        ns: Option<&NamespaceRecord>,
    ) -> Result<DecidedBy, Skip> {
        p.decide(pod, ns).decision
    }

    #[test]
    fn annotation_beats_namespace_label_beats_default() {
        let off = policy(Inject::Disabled);
        let on = policy(Inject::Enabled);
        let mut p = pod("web");
        assert_eq!(
            decide(&off, &p, None),
            Err(Skip::Disabled(DecidedBy::Default))
        );
        assert_eq!(decide(&on, &p, None), Ok(DecidedBy::Default));
        assert_eq!(
            decide(&off, &p, Some(&ns(None))),
            Err(Skip::Disabled(DecidedBy::Default))
        );
        assert_eq!(
            decide(&off, &p, Some(&ns(Some("enabled")))),
            Ok(DecidedBy::NamespaceLabel)
        );
        assert_eq!(
            decide(&on, &p, Some(&ns(Some("disabled")))),
            Err(Skip::Disabled(DecidedBy::NamespaceLabel))
        );
        p.inject = Some("disabled".into());
        assert_eq!(
            decide(&on, &p, Some(&ns(Some("enabled")))),
            Err(Skip::Disabled(DecidedBy::PodAnnotation))
        );
        p.inject = Some(" enabled ".into());
        assert_eq!(
            decide(&off, &p, Some(&ns(Some("disabled")))),
            Ok(DecidedBy::PodAnnotation)
        );
    }

    #[test]
    fn invalid_values_warn_and_fall_through() {
        let off = policy(Inject::Disabled);
        let mut p = pod("web");
        p.inject = Some("yes".into());
        let v = off.decide(&p, Some(&ns(Some("enabled"))));
        assert_eq!(v.decision, Ok(DecidedBy::NamespaceLabel));
        assert_eq!(v.warnings.len(), 1);
        assert!(v.warnings[0].contains("\"yes\""), "{:?}", v.warnings);
        let v = off.decide(&p, Some(&ns(Some("true"))));
        assert_eq!(v.decision, Err(Skip::Disabled(DecidedBy::Default)));
        assert_eq!(v.warnings.len(), 2);
    }

    #[test]
    fn pods_that_are_never_enrolled() {
        let on = policy(Inject::Enabled);
        let mut p = pod("web");
        p.inject = Some("enabled".into());
        assert_eq!(decide(&on, &p, None), Ok(DecidedBy::PodAnnotation));

        let mut x = p.clone();
        x.host_network = true;
        assert_eq!(decide(&on, &x, None), Err(Skip::HostNetwork));
        let mut x = p.clone();
        x.phase = Some("Pending".into());
        assert_eq!(
            decide(&on, &x, None),
            Err(Skip::NotRunning("Pending".into()))
        );
        x.phase = None;
        assert_eq!(
            decide(&on, &x, None),
            Err(Skip::NotRunning("unknown".into()))
        );
        let mut x = p.clone();
        x.ips.clear();
        assert_eq!(decide(&on, &x, None), Err(Skip::NoAddress));
        let mut x = p.clone();
        x.deleting = true;
        assert_eq!(decide(&on, &x, None), Err(Skip::Deleting));
        let mut x = p.clone();
        x.node = Some("node-2".into());
        assert_eq!(decide(&on, &x, None), Err(Skip::OtherNode));
        let mut x = p.clone();
        x.namespace = "hoptrace".into();
        x.name = "hoptrace-abcde".into();
        assert_eq!(decide(&on, &x, None), Err(Skip::OwnPod));
        x.namespace = "other".into();
        assert_eq!(decide(&on, &x, None), Ok(DecidedBy::PodAnnotation));
    }

    #[test]
    fn sampling_annotation() {
        let mut p = pod("web");
        assert_eq!(trace_sampling(&p), Ok(None));
        p.trace_sampling = Some("0.25".into());
        assert_eq!(trace_sampling(&p), Ok(Some(0.25)));
        p.trace_sampling = Some("1".into());
        assert_eq!(trace_sampling(&p), Ok(Some(1.0)));
        for bad in ["1.5", "-0.1", "a lot", "", "NaN"] {
            p.trace_sampling = Some(bad.into());
            let err = trace_sampling(&p).expect_err(bad);
            assert!(err.contains(SAMPLING_ANNOTATION), "{err}");
        }
    }

    #[test]
    fn propagation_annotation() {
        let mut p = pod("web");
        assert_eq!(context_propagation(&p), Ok(ContextPropagation::Off));
        p.context_propagation = Some("auto".into());
        assert_eq!(context_propagation(&p), Ok(ContextPropagation::Auto));
        p.context_propagation = Some(" off ".into());
        assert_eq!(context_propagation(&p), Ok(ContextPropagation::Off));
        p.context_propagation = Some("yes".into());
        let err = context_propagation(&p).expect_err("yes");
        assert!(
            err.contains(PROPAGATION_ANNOTATION) && err.contains("yes"),
            "{err}"
        );
    }

    #[test]
    fn service_names() {
        let owned = |kind: &str, name: &str| {
            let mut p = pod("web-7d9f8c6b5-x2x4q");
            p.owner = Some(Owner {
                kind: kind.into(),
                name: name.into(),
            });
            p
        };
        let mut p = owned("ReplicaSet", "web-7d9f8c6b5");
        p.labels
            .insert(POD_TEMPLATE_HASH.into(), "7d9f8c6b5".into());
        assert_eq!(service_name(&p), "web");
        // A ReplicaSet of its own (no template hash label, or one that does not match).
        let p = owned("ReplicaSet", "web-7d9f8c6b5");
        assert_eq!(service_name(&p), "web-7d9f8c6b5");
        let mut p = owned("ReplicaSet", "web-7d9f8c6b5");
        p.labels.insert(POD_TEMPLATE_HASH.into(), "abc".into());
        assert_eq!(service_name(&p), "web-7d9f8c6b5");
        let mut p = owned("ReplicaSet", "7d9f8c6b5");
        p.labels
            .insert(POD_TEMPLATE_HASH.into(), "7d9f8c6b5".into());
        assert_eq!(service_name(&p), "7d9f8c6b5");
        assert_eq!(service_name(&owned("StatefulSet", "db")), "db");
        assert_eq!(service_name(&owned("DaemonSet", "fluentd")), "fluentd");
        assert_eq!(
            service_name(&owned("Job", "migrate-28391")),
            "migrate-28391"
        );
        assert_eq!(service_name(&pod("standalone")), "standalone");
    }
}
