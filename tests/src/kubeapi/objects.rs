//! `Pod` and `Namespace` objects shaped like the API server's JSON.

use serde_json::{json, Value};
use std::net::IpAddr;

/// A pod for [`pod`].
#[derive(Clone, Debug)]
pub struct PodSpec<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.namespace`.
    pub namespace: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
    /// `spec.nodeName`.
    pub node: &'a str,
    /// `status.podIPs` (and `status.podIP`, the first).
    pub ips: Vec<IpAddr>,
    /// `metadata.annotations`.
    pub annotations: Vec<(&'a str, &'a str)>,
    /// `metadata.labels`.
    pub labels: Vec<(&'a str, &'a str)>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `status.phase`.
    pub phase: &'a str,
    /// `status.qosClass`.
    pub qos_class: &'a str,
    /// The controller owner (`kind`, `name`).
    pub owner: Option<(&'a str, &'a str)>,
}

impl<'a> PodSpec<'a> {
    /// A running BestEffort pod with no annotations, labels or owner.
    pub fn new(name: &'a str, namespace: &'a str, uid: &'a str, node: &'a str) -> Self {
        PodSpec {
            name,
            namespace,
            uid,
            node,
            ips: Vec::new(),
            annotations: Vec::new(),
            labels: Vec::new(),
            host_network: false,
            phase: "Running",
            qos_class: "BestEffort",
            owner: None,
        }
    }
}

fn string_map(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect(),
    )
}

/// A `Pod` object as the API server returns it (the fields discovery reads plus
/// the usual company: containers, conditions, container statuses).
pub fn pod(p: &PodSpec<'_>) -> Value {
    let ips: Vec<Value> = p
        .ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    let mut metadata = json!({
        "name": p.name, "namespace": p.namespace, "uid": p.uid,
        "creationTimestamp": "2026-11-21T10:00:00Z", "generation": 1,
        "labels": string_map(&p.labels), "annotations": string_map(&p.annotations),
    });
    if let Some((kind, name)) = p.owner {
        let api = if kind == "Job" { "batch/v1" } else { "apps/v1" };
        metadata["ownerReferences"] = json!([{"apiVersion": api, "kind": kind, "name": name,
            "uid": format!("{}-owner", p.uid), "controller": true, "blockOwnerDeletion": true}]);
    }
    let mut status = json!({
        "phase": p.phase, "qosClass": p.qos_class, "hostIP": "10.0.0.1",
        "hostIPs": [{"ip": "10.0.0.1"}], "startTime": "2026-11-21T10:00:01Z",
        "conditions": [{"type": "Ready", "status": if p.phase == "Running" { "True" } else { "False" },
                        "lastTransitionTime": "2026-11-21T10:00:02Z"}],
        "containerStatuses": [{"name": "app", "image": "registry.example/app:1",
            "imageID": "", "ready": p.phase == "Running", "restartCount": 0, "started": true,
            "containerID": format!("containerd://{}", "ab".repeat(32)),
            "state": {"running": {"startedAt": "2026-11-21T10:00:02Z"}}}],
    });
    if let Some(first) = p.ips.first() {
        status["podIP"] = json!(first.to_string());
        status["podIPs"] = json!(ips);
    }
    json!({
        "kind": "Pod", "apiVersion": "v1", "metadata": metadata,
        "spec": {
            "nodeName": p.node, "hostNetwork": p.host_network,
            "containers": [{"name": "app", "image": "registry.example/app:1",
                            "resources": {}, "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "schedulerName": "default-scheduler",
        },
        "status": status,
    })
}

/// A `Namespace` object with `labels` (plus the `kubernetes.io/metadata.name`
/// label the API server adds).
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = string_map(labels);
    l["kubernetes.io/metadata.name"] = json!(name);
    json!({
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": name, "uid": format!("ns-{name}"),
                     "creationTimestamp": "2026-11-21T09:00:00Z", "labels": l},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}
