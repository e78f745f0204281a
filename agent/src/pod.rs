//! What every layer says about a pod: its key, the direction of a connection from its
//! point of view, and its identity as a span resource. The lowest module of the agent:
//! it depends on nothing else in it.

use std::fmt;

use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::attr;

/// `namespace/name` of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Direction of a proxied connection, from the enrolled pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The pod is the client (steered by connect4/6).
    Outbound,
    /// The pod is the server (steered by sk_lookup).
    Inbound,
}

impl Direction {
    /// Label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Identity of the pod a span serves: the client pod for outbound spans, the server
/// pod for inbound spans. Exported as the span's OTLP resource.
#[derive(Debug)]
pub struct PodIdentity {
    /// `namespace/name`.
    pub key: PodKey,
    /// The OTLP resource, built once at enrollment.
    pub resource: Resource,
}

impl PodIdentity {
    /// Builds the resource attributes of a pod: `workload` is its workload (service)
    /// name, `service_name` the spans' `service.name`.
    pub fn new(
        key: PodKey,
        uid: Option<&str>,
        workload: &str,
        node: Option<&str>,
        service_name: &str,
    ) -> Self {
        let mut attributes = vec![
            attr::string("service.name", service_name),
            attr::string("k8s.pod.name", key.name.as_str()),
            attr::string("k8s.namespace.name", key.namespace.as_str()),
            attr::string("hoptrace.workload.name", workload),
        ];
        if let Some(uid) = uid {
            attributes.push(attr::string("k8s.pod.uid", uid));
        }
        if let Some(node) = node {
            attributes.push(attr::string("k8s.node.name", node));
        }
        Self {
            key,
            resource: Resource {
                attributes,
                ..Default::default()
            },
        }
    }
}
