//! The proxy span model (DESIGN §3.4): what one leg of one request produces, and the
//! queue the data path hands finished spans to ([`SpanSink`]; drained by `export`).
//!
//! Attributes are OTLP protobuf values from the start (`attr`), built once per request
//! leg and shared by its two spans, so export encodes them without converting.

use std::{sync::Arc, time::SystemTime};

use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    trace::v1::{span::SpanKind, status::StatusCode, Span, Status as ProtoStatus},
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::context::{SpanId, TraceId};
pub use crate::pod::PodIdentity;

/// Resource attribute value of `service.name` unless configured otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "hoptrace-proxy";

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

/// OTLP `Span.flags` bits besides the W3C trace flags: the parent's remoteness is
/// known, and the parent is remote (a SERVER span's parent came over the network; a
/// CLIENT span's is the SERVER span in this process).
pub const HAS_IS_REMOTE: u32 = 0x100;
/// See [`HAS_IS_REMOTE`].
pub const IS_REMOTE: u32 = 0x200;

/// The parts of one span, turned into its OTLP form once ([`SpanParts::into_otlp`]):
/// the span travels to the exporter in the form it is encoded in.
#[derive(Debug)]
pub struct SpanParts {
    /// Trace id.
    pub trace_id: TraceId,
    /// This span's id.
    pub span_id: SpanId,
    /// Parent span id; `None` for a root span (a trace the agent started).
    pub parent: Option<SpanId>,
    /// W3C trace flags as received.
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

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl SpanParts {
    /// The OTLP span.
    pub fn into_otlp(self) -> Span {
        let remote = self.kind == Kind::Server && self.parent.is_some();
        Span {
            trace_id: self.trace_id.0.to_vec(),
            span_id: self.span_id.0.to_vec(),
            parent_span_id: self.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
            flags: u32::from(self.flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 },
            name: self.name,
            kind: match self.kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
            } as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(self.end),
            attributes: self.attributes,
            status: Some(match self.status {
                Status::Unset => ProtoStatus {
                    message: String::new(),
                    code: StatusCode::Unset as i32,
                },
                Status::Error(message) => ProtoStatus {
                    message,
                    code: StatusCode::Error as i32,
                },
            }),
            ..Default::default()
        }
    }
}

/// One finished proxy span, in its OTLP form, with the pod it belongs to.
#[derive(Debug, Clone)]
pub struct ProxySpan {
    /// The pod it serves (its resource).
    pub pod: Arc<PodIdentity>,
    /// The span, ready to encode.
    pub span: Span,
}

/// Where the data path submits finished spans. Cheap to clone; never waits.
#[derive(Debug, Clone)]
pub struct SpanSink {
    tx: mpsc::Sender<ProxySpan>,
    dropped: Counter,
}

impl SpanSink {
    /// A sink feeding `tx`; spans that do not fit are counted in `dropped`.
    pub fn new(tx: mpsc::Sender<ProxySpan>, dropped: Counter) -> Self {
        Self { tx, dropped }
    }

    /// Queues a span without waiting; drops and counts it when the queue is full.
    pub fn submit(&self, span: ProxySpan) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
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
