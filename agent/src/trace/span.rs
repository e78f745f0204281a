//! The proxy span model (DESIGN §3.4): what one leg of one request produces, and the
//! queue the data path hands finished spans to ([`SpanSink`]; drained by `export`).
//!
//! Spans are OTLP protobuf bytes from the start (`wire`): a request leg writes its
//! attributes once, copies them into its two spans, and the export task frames the
//! bytes without encoding again.

use std::sync::Arc;

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

pub use super::queue::SpanSink;
use super::{
    context::{SpanId, TraceId},
    wire::{self, Attributes},
};
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

/// A wall-clock instant in nanoseconds since the Unix epoch: the form OTLP carries, read
/// so from the clock, so a span's times are never converted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixNanos(pub u64);

impl UnixNanos {
    /// The Unix epoch itself (for tests).
    pub const EPOCH: Self = Self(0);

    /// Now, by the system's real-time clock (`0` if it reads before the epoch).
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME always exists, so
        // the call cannot fail (it is answered by the vDSO, without a system call).
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
        Self(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
    }
}

/// OTLP `Span.flags` bits besides the W3C trace flags: the parent's remoteness is
/// known, and the parent is remote (a SERVER span's parent came over the network; a
/// CLIENT span's is the SERVER span in this process).
pub const HAS_IS_REMOTE: u32 = 0x100;
/// See [`HAS_IS_REMOTE`].
pub const IS_REMOTE: u32 = 0x200;

/// The parts of one span, encoded once ([`SpanParts::encode`]) into the OTLP protobuf
/// it travels to the collector in.
#[derive(Debug)]
pub struct SpanParts<'a> {
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
    pub name: &'a str,
    /// Start time.
    pub start: UnixNanos,
    /// End time (≥ start).
    pub end: UnixNanos,
    /// Status.
    pub status: &'a Status,
}

impl SpanParts<'_> {
    /// Appends the span with `attributes` (both parts, in order) to `out`, as one
    /// `ScopeSpans.spans` entry.
    pub fn encode(&self, attributes: [&Attributes; 2], out: &mut Vec<u8>) {
        let remote = self.kind == Kind::Server && self.parent.is_some();
        let (status_message, status_code) = match self.status {
            Status::Unset => ("", StatusCode::Unset),
            Status::Error(message) => (message.as_str(), StatusCode::Error),
        };
        let kind = match self.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        };
        wire::span(
            out,
            &wire::SpanFields {
                trace_id: &self.trace_id.0,
                span_id: &self.span_id.0,
                parent_span_id: self.parent.as_ref().map(|p| &p.0),
                flags: u32::from(self.flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 },
                name: self.name,
                kind: kind as i32,
                start_time_unix_nano: self.start.0,
                end_time_unix_nano: self.end.0,
                attributes,
                status_message,
                status_code: status_code as i32,
            },
        );
    }
}

/// Finished spans of one pod (a request leg's two), encoded as `ScopeSpans.spans`
/// entries: the export task frames them as they are.
#[derive(Debug, Clone)]
pub struct PodSpans {
    /// The pod they serve (their resource).
    pub pod: Arc<PodIdentity>,
    /// How many spans `bytes` holds.
    pub count: usize,
    /// The encoded spans.
    pub bytes: Vec<u8>,
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
pub fn capped<'a>(value: &'a str, key: &'static str, truncated: &mut Vec<&'static str>) -> &'a str {
    if value.len() <= MAX_ATTRIBUTE_LEN {
        return value;
    }
    let mut end = MAX_ATTRIBUTE_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    truncated.push(key);
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_nanos_read_the_wall_clock() {
        let since = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos() as u64
        };
        let before = since(std::time::SystemTime::now());
        let now = UnixNanos::now();
        let after = since(std::time::SystemTime::now());
        assert!(
            before <= now.0 && now.0 <= after,
            "{before} <= {} <= {after}",
            now.0
        );
    }

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
