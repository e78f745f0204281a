//! The proxy span model (DESIGN §3.4): what one leg of one request produces.

use std::{sync::Arc, time::SystemTime};

use opentelemetry::KeyValue;

use super::context::{SpanId, TraceId};
use crate::workloads::{PodKey, Workload};

/// Resource attribute value of `service.name` unless configured otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "hoptrace-proxy";

/// Identity of the pod a span serves: the client pod for outbound spans, the server
/// pod for inbound spans. Exported as the span's OTLP resource.
#[derive(Debug)]
pub struct PodIdentity {
    /// `namespace/name`.
    pub key: PodKey,
    /// Resource attributes, in export order.
    pub resource: Vec<KeyValue>,
}

impl PodIdentity {
    /// Builds the resource attributes of a pod.
    pub fn new(w: &Workload, node: Option<&str>, service_name: &str) -> Self {
        let mut resource = vec![
            KeyValue::new("service.name", service_name.to_string()),
            KeyValue::new("k8s.pod.name", w.name.clone()),
            KeyValue::new("k8s.namespace.name", w.namespace.clone()),
            KeyValue::new("hoptrace.workload.name", w.service_name().to_string()),
        ];
        if let Some(uid) = &w.uid {
            resource.push(KeyValue::new("k8s.pod.uid", uid.clone()));
        }
        if let Some(node) = node {
            resource.push(KeyValue::new("k8s.node.name", node.to_string()));
        }
        Self {
            key: w.key(),
            resource,
        }
    }
}

/// SERVER (the proxy receiving the request) or CLIENT (the proxy sending it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The proxy's server side.
    Server,
    /// The proxy's client side.
    Client,
}

/// Final status of a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not an error.
    Unset,
    /// An error, with a description.
    Error(String),
}

/// One finished proxy span.
#[derive(Debug, Clone)]
pub struct ProxySpan {
    /// The pod it serves (its resource).
    pub pod: Arc<PodIdentity>,
    /// Trace id (from the incoming context).
    pub trace_id: TraceId,
    /// This span's id.
    pub span_id: SpanId,
    /// Parent span id.
    pub parent_span_id: SpanId,
    /// W3C trace flags to export with the span context.
    pub flags: u8,
    /// SERVER or CLIENT.
    pub kind: Kind,
    /// Span name.
    pub name: String,
    /// Start time.
    pub start: SystemTime,
    /// End time (≥ start).
    pub end: SystemTime,
    /// Semantic-convention attributes.
    pub attributes: Vec<KeyValue>,
    /// Status.
    pub status: Status,
}

/// Longest attribute value (bytes) the agent records. Longer values (a 300 KiB
/// `User-Agent`, a huge path) are cut at a character boundary and the span names them
/// in [`TRUNCATED_ATTRIBUTES`]: one request can then never make a span, or an export
/// request, too large for the collector.
pub const MAX_ATTRIBUTE_LEN: usize = 2048;

/// Span attribute listing the attributes whose values were cut to [`MAX_ATTRIBUTE_LEN`].
pub const TRUNCATED_ATTRIBUTES: &str = "hoptrace.truncated_attributes";

/// `value` cut to [`MAX_ATTRIBUTE_LEN`] bytes at a character boundary; `key` is added to
/// `truncated` when it was cut.
pub fn capped(value: &str, key: &'static str, truncated: &mut Vec<&'static str>) -> String {
    if value.len() <= MAX_ATTRIBUTE_LEN {
        return value.to_string();
    }
    let mut end = MAX_ATTRIBUTE_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    truncated.push(key);
    value[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_char_boundary_and_named() {
        let mut t = Vec::new();
        assert_eq!(capped("short", "a", &mut t), "short");
        assert!(t.is_empty());
        let exact = "x".repeat(MAX_ATTRIBUTE_LEN);
        assert_eq!(capped(&exact, "a", &mut t), exact);
        assert!(t.is_empty());
        // 'é' is 2 bytes: the limit falls inside one, the cut goes before it.
        let long = format!(
            "{}é{}",
            "x".repeat(MAX_ATTRIBUTE_LEN - 1),
            "y".repeat(300_000)
        );
        let cut = capped(&long, "user_agent.original", &mut t);
        assert_eq!(cut.len(), MAX_ATTRIBUTE_LEN - 1);
        assert_eq!(t, ["user_agent.original"]);
    }
}
