//! The spans as the tests see them: the receiver's requests flattened into
//! [`ReceivedSpan`]s, with their kinds, statuses and attributes as strings.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// OTLP `Span.SpanKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpanKind {
    /// `SPAN_KIND_UNSPECIFIED` (or a value this receiver does not know).
    Unspecified,
    /// `SPAN_KIND_INTERNAL`.
    Internal,
    /// `SPAN_KIND_SERVER`.
    Server,
    /// `SPAN_KIND_CLIENT`.
    Client,
    /// `SPAN_KIND_PRODUCER`.
    Producer,
    /// `SPAN_KIND_CONSUMER`.
    Consumer,
}

impl SpanKind {
    fn from_proto(kind: i32) -> SpanKind {
        match span::SpanKind::try_from(kind) {
            Ok(span::SpanKind::Internal) => SpanKind::Internal,
            Ok(span::SpanKind::Server) => SpanKind::Server,
            Ok(span::SpanKind::Client) => SpanKind::Client,
            Ok(span::SpanKind::Producer) => SpanKind::Producer,
            Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }
}

/// OTLP `Status.StatusCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusCode {
    /// `STATUS_CODE_UNSET` (also when the span has no status).
    Unset,
    /// `STATUS_CODE_OK`.
    Ok,
    /// `STATUS_CODE_ERROR`.
    Error,
}

impl StatusCode {
    fn from_proto(code: i32) -> StatusCode {
        match status::StatusCode::try_from(code) {
            Ok(status::StatusCode::Ok) => StatusCode::Ok,
            Ok(status::StatusCode::Error) => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }
}

/// One span as received, flattened with its resource and scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits; `""` for a root span.
    pub parent_span_id: String,
    /// W3C tracestate the span carries (often empty).
    pub trace_state: String,
    /// Span name.
    pub name: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Start, ns since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, ns since the Unix epoch.
    pub end_unix_nano: u64,
    /// Span attributes, values stringified (see [`stringify`]).
    pub attributes: BTreeMap<String, String>,
    /// Status code.
    pub status_code: StatusCode,
    /// Status message (`""` when none).
    pub status_message: String,
    /// Names of the span's events.
    pub events: Vec<String>,
    /// Attributes of the resource the span came with, values stringified.
    pub resource: BTreeMap<String, String>,
    /// Name of the instrumentation scope.
    pub scope_name: String,
}

impl ReceivedSpan {
    /// The attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// The resource attribute `key`, if present.
    pub fn res(&self, key: &str) -> Option<&str> {
        self.resource.get(key).map(String::as_str)
    }

    /// `end - start` (zero if the end is before the start).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nano.saturating_sub(self.start_unix_nano))
    }
}

/// Renders an OTLP attribute value as a string: strings as they are, bools
/// `true`/`false`, integers in decimal, doubles with Rust's `{}` (`1.5`),
/// bytes as lowercase hex, arrays `[a, b]`, key-value lists `{k: v, ...}`,
/// an empty value as `""`.
pub fn stringify(value: Option<&AnyValue>) -> String {
    let Some(v) = value.and_then(|v| v.value.as_ref()) else {
        return String::new();
    };
    match v {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BytesValue(b) => hex(b),
        any_value::Value::ArrayValue(a) => {
            let items: Vec<String> = a.values.iter().map(|v| stringify(Some(v))).collect();
            format!("[{}]", items.join(", "))
        }
        any_value::Value::KvlistValue(kv) => {
            let items: Vec<String> = kv
                .values
                .iter()
                .map(|kv| format!("{}: {}", kv.key, stringify(kv.value.as_ref())))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), stringify(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Flattens an export request into [`ReceivedSpan`]s, in request order.
pub fn flatten(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            let scope_name = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for s in &ss.spans {
                let (status_code, status_message) = match &s.status {
                    Some(st) => (StatusCode::from_proto(st.code), st.message.clone()),
                    None => (StatusCode::Unset, String::new()),
                };
                out.push(ReceivedSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    trace_state: s.trace_state.clone(),
                    name: s.name.clone(),
                    kind: SpanKind::from_proto(s.kind),
                    start_unix_nano: s.start_time_unix_nano,
                    end_unix_nano: s.end_time_unix_nano,
                    attributes: attributes(&s.attributes),
                    status_code,
                    status_message,
                    events: s.events.iter().map(|e| e.name.clone()).collect(),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                });
            }
        }
    }
    out
}

/// One line per span: `kind name trace/span<-parent status [resource pod] attrs`,
/// for assertion messages.
pub fn summarize(spans: &[ReceivedSpan]) -> String {
    let mut out = String::new();
    for s in spans {
        let _ = writeln!(
            out,
            "  {:?} {:?} {}/{} <- {:?} {:?} pod={:?} dir={:?} [{} .. {}] {:?}",
            s.kind,
            s.name,
            s.trace_id,
            s.span_id,
            s.parent_span_id,
            s.status_code,
            s.res("k8s.pod.name").unwrap_or(""),
            s.attr("hoptrace.direction").unwrap_or(""),
            s.start_unix_nano,
            s.end_unix_nano,
            s.attributes
        );
    }
    out
}
