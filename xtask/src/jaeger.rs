//! Jaeger's query API (`GET /api/traces?service=...` on port 16686) as
//! [`HopSpan`]s for the shared four-spans-per-hop check, and the check that
//! `cargo xtask kind` applies to the demo app's traces.
//!
//! The JSON: `{"data": [trace], "errors": [...]}`, each trace `{"traceID",
//! "spans", "processes"}`, each span `{"traceID", "spanID", "references":
//! [{"refType": "CHILD_OF", "spanID"}], "tags": [{"key", "value"}],
//! "processID"}`, each process `{"serviceName", "tags"}`. Jaeger turns OTLP
//! resource attributes into process tags and the span kind into the `span.kind`
//! tag (`server`, `client`); ids are hex, possibly without leading zeros.

use std::collections::HashMap;

use anyhow::{bail, Context as _};
use serde::Deserialize;

use crate::hops::{HopKind, HopSpan};

/// The answer of `/api/traces`.
#[derive(Debug, Deserialize)]
pub struct TracesResponse {
    /// The traces found.
    #[serde(default)]
    pub data: Option<Vec<Trace>>,
    /// Errors the query reported.
    #[serde(default)]
    pub errors: Option<Vec<ApiError>>,
}

/// An error in a query answer.
#[derive(Debug, Deserialize)]
pub struct ApiError {
    /// HTTP-like code.
    #[serde(default)]
    pub code: i64,
    /// Message.
    #[serde(default)]
    pub msg: String,
}

/// One trace.
#[derive(Debug, Deserialize)]
pub struct Trace {
    /// Trace id (hex).
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Its spans.
    pub spans: Vec<Span>,
    /// Processes (resources) by id.
    #[serde(default)]
    pub processes: HashMap<String, Process>,
}

/// One span.
#[derive(Debug, Deserialize)]
pub struct Span {
    /// Trace id (hex).
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Span id (hex).
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Parent links.
    #[serde(default)]
    pub references: Vec<Reference>,
    /// Attributes.
    #[serde(default)]
    pub tags: Vec<KeyValue>,
    /// Key into the trace's `processes`.
    #[serde(rename = "processID")]
    pub process_id: String,
}

/// A span reference.
#[derive(Debug, Deserialize)]
pub struct Reference {
    /// `CHILD_OF` or `FOLLOWS_FROM`.
    #[serde(rename = "refType")]
    pub ref_type: String,
    /// Trace id of the referenced span.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// The referenced span.
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A tag.
#[derive(Debug, Deserialize)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// Value (string, number or bool).
    #[serde(default)]
    pub value: serde_json::Value,
}

/// A process: a resource (`serviceName` is `service.name`; not needed here).
#[derive(Debug, Deserialize)]
pub struct Process {
    /// The other resource attributes.
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

fn tag<'a>(tags: &'a [KeyValue], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key == key)
        .and_then(|t| t.value.as_str())
}

/// Lowercase hex, left-padded with zeros to `width` (Jaeger drops leading zeros).
fn id(hex: &str, width: usize) -> String {
    format!("{:0>width$}", hex.to_ascii_lowercase())
}

/// Parses an `/api/traces` answer into spans; fails on query errors.
pub fn parse(json: &str) -> anyhow::Result<Vec<HopSpan>> {
    let response: TracesResponse =
        serde_json::from_str(json).context("not a Jaeger /api/traces answer")?;
    if let Some(errors) = response.errors.filter(|e| !e.is_empty()) {
        let list: Vec<String> = errors
            .iter()
            .map(|e| format!("{} {}", e.code, e.msg))
            .collect();
        bail!("Jaeger answered with errors: {}", list.join("; "));
    }
    let mut out = Vec::new();
    for trace in response.data.unwrap_or_default() {
        for span in &trace.spans {
            let process = trace.processes.get(&span.process_id).with_context(|| {
                format!(
                    "trace {}: span {} names process {:?}, which the trace does not list",
                    trace.trace_id, span.span_id, span.process_id
                )
            })?;
            let trace_id = id(&span.trace_id, 32);
            let parent = span
                .references
                .iter()
                .find(|r| r.ref_type == "CHILD_OF" && id(&r.trace_id, 32) == trace_id)
                .map(|r| id(&r.span_id, 16))
                .unwrap_or_default();
            out.push(HopSpan {
                trace_id,
                span_id: id(&span.span_id, 16),
                parent_span_id: parent,
                kind: match tag(&span.tags, "span.kind") {
                    Some("server") => HopKind::Server,
                    Some("client") => HopKind::Client,
                    _ => HopKind::Other,
                },
                direction: tag(&span.tags, "hoptrace.direction").map(str::to_owned),
                namespace: tag(&process.tags, "k8s.namespace.name")
                    .unwrap_or_default()
                    .to_owned(),
                pod: tag(&process.tags, "k8s.pod.name")
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hops::{verify_path, Hop};

    /// A recorded `/api/traces?service=hoptrace-proxy` answer, written by hand
    /// after Jaeger's JSON format: a complete trace of the demo app, one captured
    /// while the backend was not enrolled yet, and one with a single hop; ids with
    /// leading zeros dropped as Jaeger prints them.
    const RECORDED: &str = include_str!("../testdata/jaeger-traces.json");
    const PATH: &[&str] = &["loadgen", "frontend", "backend"];

    #[test]
    fn parses_the_recorded_answer() {
        let spans = parse(RECORDED).expect("parse");
        assert_eq!(spans.len(), 8 + 6 + 4);
        let s = spans
            .iter()
            .find(|s| s.span_id == "b000000000000003")
            .expect("backend inbound SERVER span");
        assert_eq!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.parent_span_id, "b000000000000002");
        assert_eq!(s.kind, HopKind::Server);
        assert_eq!(s.direction.as_deref(), Some("inbound"));
        assert_eq!(s.pod_ref(), "hoptrace-demo/backend-7c9d6f5b8-h3j8n");
        // Leading zeros restored.
        assert!(spans
            .iter()
            .any(|s| s.trace_id == "00f067aa0ba902b7b3a5c1e2d4f60718"));
        assert!(spans.iter().any(|s| s.span_id == "0e00000000000001"));
        assert!(spans.iter().any(|s| s.parent_span_id == "0e00000000000001"));
    }

    #[test]
    fn finds_the_complete_demo_trace() {
        let spans = parse(RECORDED).expect("parse");
        let v = verify_path(&spans, "hoptrace-demo", PATH).expect("a complete trace");
        assert_eq!(v.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v.checked, 3);
        let hops: Vec<String> = v.hops.iter().map(Hop::to_string).collect();
        assert_eq!(
            hops,
            [
                "hoptrace-demo/loadgen-6b8f9c7d5-x2x7k -> hoptrace-demo/frontend-5d4c8b9f7-q9w4z",
                "hoptrace-demo/frontend-5d4c8b9f7-q9w4z -> hoptrace-demo/backend-7c9d6f5b8-h3j8n",
            ]
        );
    }

    #[test]
    fn says_why_no_trace_passes() {
        let spans: Vec<HopSpan> = parse(RECORDED)
            .expect("parse")
            .into_iter()
            .filter(|s| s.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736")
            .collect();
        let err = verify_path(&spans, "hoptrace-demo", PATH)
            .expect_err("no complete trace")
            .to_string();
        assert!(err.contains("none of 2 traces"), "{err}");
        assert!(err.contains("has no inbound SERVER child"), "{err}");
        assert!(err.contains("want loadgen -> frontend -> backend"), "{err}");
        assert!(verify_path(&[], "hoptrace-demo", PATH).is_err());
        // The other namespace: nothing matches.
        let all = parse(RECORDED).expect("parse");
        assert!(verify_path(&all, "default", PATH).is_err());
    }

    #[test]
    fn query_errors_and_garbage_fail() {
        let err = parse(r#"{"data": null, "errors": [{"code": 400, "msg": "parameter 'service' is required"}]}"#)
            .expect_err("errors");
        assert!(err.to_string().contains("service' is required"), "{err}");
        assert!(parse("<html>").is_err());
        assert!(parse(r#"{"data": []}"#).expect("empty").is_empty());
        let dangling = r#"{"data": [{"traceID": "1", "spans": [{"traceID": "1", "spanID": "2", "processID": "p9"}], "processes": {}}]}"#;
        assert!(parse(dangling).is_err());
    }
}
