//! What discovery keeps of each watched object: small records cut from the API's
//! `Pod` and `Namespace`, so thousands of pods cost little memory and the policy can
//! be tested without API types.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::{Namespace, Pod};

use super::policy::{INJECT_KEY, PROPAGATION_ANNOTATION, SAMPLING_ANNOTATION};

/// The controller that owns a pod (`metadata.ownerReferences`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Owner kind, e.g. `ReplicaSet`.
    pub kind: String,
    /// Owner name.
    pub name: String,
}

/// The parts of a pod that discovery uses (the watcher keeps only these, not the
/// whole object).
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `status.phase` (`Pending`, `Running`, ...).
    pub phase: Option<String>,
    /// `status.podIPs` (else `status.podIP`); unparsable entries are dropped.
    pub ips: Vec<IpAddr>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.creationTimestamp`, seconds since the epoch.
    pub created: Option<i64>,
    /// `status.qosClass` (`Guaranteed`, `Burstable`, `BestEffort`).
    pub qos_class: Option<String>,
    /// Value of the `hoptrace.io/inject` annotation.
    pub inject: Option<String>,
    /// Value of the `hoptrace.io/trace-sampling` annotation.
    pub trace_sampling: Option<String>,
    /// Value of the `hoptrace.io/context-propagation` annotation.
    pub context_propagation: Option<String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The controller owner (the reference with `controller: true`, else the first).
    pub owner: Option<Owner>,
}

impl PodRecord {
    /// Extracts a record; `None` for objects without name, namespace or uid (the API
    /// server always sets them, so this only guards against malformed input).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
        let status = pod.status.as_ref();
        let ips: Vec<IpAddr> = match status.and_then(|s| s.pod_ips.as_ref()) {
            Some(ips) if !ips.is_empty() => ips.iter().filter_map(|i| i.ip.parse().ok()).collect(),
            _ => status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse().ok())
                .into_iter()
                .collect(),
        };
        let owners = meta.owner_references.as_deref().unwrap_or_default();
        let owner = owners
            .iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| owners.first())
            .map(|o| Owner {
                kind: o.kind.clone(),
                name: o.name.clone(),
            });
        let spec = pod.spec.as_ref();
        Some(Self {
            name: meta.name.clone()?,
            namespace: meta.namespace.clone()?,
            uid: meta.uid.clone()?,
            node: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: status.and_then(|s| s.phase.clone()),
            ips,
            deleting: meta.deletion_timestamp.is_some(),
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            qos_class: status.and_then(|s| s.qos_class.clone()),
            inject: annotation(INJECT_KEY),
            trace_sampling: annotation(SAMPLING_ANNOTATION),
            context_propagation: annotation(PROPAGATION_ANNOTATION),
            labels: meta.labels.clone().unwrap_or_default(),
            owner,
        })
    }
}

/// A pod as the golden metrics name it (any node): its addresses and workload.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRecord {
    /// `metadata.uid` as a number (its hex digits; other uids hashed), so the key
    /// costs no allocation: thousands of these are kept (≤ 1 KB each with the index).
    pub uid: u128,
    /// `metadata.namespace`.
    pub namespace: Box<str>,
    /// The workload name (`policy::service_name`: the owner, a Deployment's name for
    /// its ReplicaSets' pods).
    pub workload: Box<str>,
    /// The pod's addresses (none once it has stopped).
    pub ips: Box<[IpAddr]>,
}

impl PeerRecord {
    /// Extracts a record; `None` for malformed objects and for host-network pods,
    /// whose address is their node's and names no single workload.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let r = PodRecord::from_pod(pod)?;
        if r.host_network {
            return None;
        }
        Some(Self {
            workload: super::policy::service_name(&r).into_boxed_str(),
            uid: uid_key(&r.uid),
            namespace: r.namespace.into_boxed_str(),
            ips: r.ips.into_boxed_slice(),
        })
    }
}

/// A pod uid as a number: a UUID's 32 hex digits, else a hash of the string.
fn uid_key(uid: &str) -> u128 {
    let hex: String = uid.chars().filter(|c| *c != '-').collect();
    match u128::from_str_radix(&hex, 16) {
        Ok(n) if hex.len() == 32 => n,
        _ => {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            uid.hash(&mut h);
            // A collision with another uid would only let one pod's record replace
            // the other's name until the next change.
            u128::from(h.finish()) | (1 << 127)
        }
    }
}

/// The parts of a namespace that discovery uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRecord {
    /// `metadata.name`.
    pub name: String,
    /// Value of the `hoptrace.io/inject` label.
    pub inject: Option<String>,
}

impl NamespaceRecord {
    /// Extracts a record; `None` without a name.
    pub fn from_namespace(ns: &Namespace) -> Option<Self> {
        Some(Self {
            name: ns.metadata.name.clone()?,
            inject: ns
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(INJECT_KEY))
                .cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::policy::service_name;

    #[test]
    fn uid_keys() {
        assert_eq!(
            uid_key("0000002a-7e57-4d15-8c0e-00000000002a"),
            0x0000002a_7e57_4d15_8c0e_00000000002a
        );
        assert_eq!(uid_key("not-a-uuid"), uid_key("not-a-uuid"));
        assert_ne!(uid_key("not-a-uuid") >> 127, 0);
    }

    #[test]
    fn records_from_api_objects() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-7d9f8c6b5-x2x4q", "namespace": "shop",
                "uid": "0c1d9a4e-2f0b-4c7e-9a61-3b5e8f7d2a10",
                "creationTimestamp": "2026-11-21T10:00:00Z",
                "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5"},
                "annotations": {"hoptrace.io/inject": "enabled", "hoptrace.io/trace-sampling": "0.5"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "1"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5",
                     "uid": "2", "controller": true}
                ]
            },
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "web"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5", "qosClass": "Burstable",
                       "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}, {"ip": "bogus"}]}
        });
        let pod: Pod = serde_json::from_value(json).expect("pod");
        let r = PodRecord::from_pod(&pod).expect("record");
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.inject.as_deref(), Some("enabled"));
        assert_eq!(r.trace_sampling.as_deref(), Some("0.5"));
        assert_eq!(
            r.owner.as_ref().map(|o| o.kind.as_str()),
            Some("ReplicaSet")
        );
        assert_eq!(service_name(&r), "web");
        assert_eq!(r.qos_class.as_deref(), Some("Burstable"));
        assert!(r.created.is_some() && !r.deleting && !r.host_network);

        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "b", "uid": "c",
                         "deletionTimestamp": "2026-11-21T10:00:00Z"},
            "spec": {"hostNetwork": true, "containers": []},
            "status": {"podIP": "10.0.0.1"}
        }))
        .expect("pod");
        let r = PodRecord::from_pod(&pod).expect("record");
        assert!(r.deleting && r.host_network);
        assert_eq!(r.ips, vec!["10.0.0.1".parse::<IpAddr>().expect("ip")]);
        let nameless: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {}})).expect("pod");
        assert!(PodRecord::from_pod(&nameless).is_none());

        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {"hoptrace.io/inject": "enabled"}}
        }))
        .expect("ns");
        let n = NamespaceRecord::from_namespace(&ns).expect("ns");
        assert_eq!(n.inject.as_deref(), Some("enabled"));
    }
}
