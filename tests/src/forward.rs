//! Sending spans on to a real collector (Jaeger, an OpenTelemetry Collector):
//! `cargo xtask demo --otlp-endpoint URL` forwards the agents' export requests as
//! received by the embedded receiver, plus the demo apps' own spans converted to
//! OTLP, so the whole trace shows up in the user's UI.

use crate::pyapp::AppSpan;
use anyhow::{bail, Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Per-request timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An OTLP/gRPC client to one collector (plaintext `http://host:port`).
pub struct Forwarder {
    runtime: tokio::runtime::Runtime,
    client: TraceServiceClient<tonic::transport::Channel>,
    endpoint: String,
}

impl Forwarder {
    /// Connects to `endpoint` (`http://host:4317`).
    pub fn connect(endpoint: &str) -> Result<Forwarder> {
        if !endpoint.starts_with("http://") {
            bail!("--otlp-endpoint {endpoint:?}: the demo forwards over plaintext OTLP/gRPC only; use http://host:4317");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .with_context(|| format!("invalid endpoint {endpoint:?}"))?
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT);
        let channel = runtime
            .block_on(channel.connect())
            .with_context(|| format!("connecting to the collector at {endpoint}"))?;
        Ok(Forwarder {
            runtime,
            client: TraceServiceClient::new(channel),
            endpoint: endpoint.to_owned(),
        })
    }

    /// The collector's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one export request; fails with the collector's answer.
    pub fn send(&mut self, request: ExportTraceServiceRequest) -> Result<()> {
        let endpoint = &self.endpoint;
        let client = &mut self.client;
        self.runtime
            .block_on(client.export(request))
            .with_context(|| format!("exporting to {endpoint}"))?;
        Ok(())
    }
}

fn string_kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
    }
}

fn json_kv(key: &str, value: &serde_json::Value) -> KeyValue {
    let v = match value {
        serde_json::Value::Bool(b) => any_value::Value::BoolValue(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => any_value::Value::StringValue(s.clone()),
        other => any_value::Value::StringValue(other.to_string()),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        bail!("odd-length id {hex:?}");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).with_context(|| format!("bad id {hex:?}")))
        .collect()
}

/// The apps' spans as one OTLP request, one resource (`service.name`) per app.
pub fn app_spans_request(spans: &[AppSpan]) -> Result<ExportTraceServiceRequest> {
    let mut by_service: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for s in spans {
        let kind = match s.kind.as_str() {
            "SERVER" => span::SpanKind::Server,
            "CLIENT" => span::SpanKind::Client,
            "PRODUCER" => span::SpanKind::Producer,
            "CONSUMER" => span::SpanKind::Consumer,
            _ => span::SpanKind::Internal,
        };
        let code = match s.status.as_str() {
            "ERROR" => status::StatusCode::Error,
            "OK" => status::StatusCode::Ok,
            _ => status::StatusCode::Unset,
        };
        by_service.entry(&s.service).or_default().push(Span {
            trace_id: hex_bytes(&s.trace_id)?,
            span_id: hex_bytes(&s.span_id)?,
            parent_span_id: hex_bytes(&s.parent_span_id)?,
            name: s.name.clone(),
            kind: kind as i32,
            start_time_unix_nano: s.start_ns,
            end_time_unix_nano: s.end_ns,
            attributes: s.attributes.iter().map(|(k, v)| json_kv(k, v)).collect(),
            status: Some(Status {
                code: code as i32,
                message: String::new(),
            }),
            ..Default::default()
        });
    }
    Ok(ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string_kv("service.name", service.to_owned())],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "hoptrace-demo-app".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{OtlpReceiver, ReceiverOptions, SpanKind};

    #[test]
    fn app_spans_arrive_at_a_collector_as_sent() {
        let collector = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
        let span: AppSpan = serde_json::from_str(
            r#"{"attributes": {"http.response.status_code": 200, "url.path": "/x", "ok": true}, "end_ns": 2000, "kind": "SERVER",
                "name": "GET /x", "parent_span_id": "00000000000000aa", "service": "web", "span_id": "00000000000000bb",
                "start_ns": 1000, "status": "ERROR", "trace_id": "0000000000000000000000000000000c"}"#,
        )
        .expect("span");
        let mut f = Forwarder::connect(&collector.endpoint()).expect("connect");
        f.send(app_spans_request(&[span]).expect("request"))
            .expect("send");
        let got = collector
            .wait_for_spans(1, Duration::from_secs(10))
            .expect("received");
        let s = &got[0];
        assert_eq!(s.trace_id, "0000000000000000000000000000000c");
        assert_eq!(s.span_id, "00000000000000bb");
        assert_eq!(s.parent_span_id, "00000000000000aa");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!((s.start_unix_nano, s.end_unix_nano), (1000, 2000));
        assert_eq!(s.attr("http.response.status_code"), Some("200"));
        assert_eq!(s.attr("ok"), Some("true"));
        assert_eq!(s.res("service.name"), Some("web"));

        // What the receiver got can be forwarded again, unchanged.
        let second = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver 2");
        let mut f2 = Forwarder::connect(&second.endpoint()).expect("connect 2");
        for r in collector.raw_requests() {
            f2.send(r).expect("forward");
        }
        let again = second
            .wait_for_spans(1, Duration::from_secs(10))
            .expect("forwarded");
        assert_eq!(again[0].span_id, s.span_id);
        assert_eq!(again[0].res("service.name"), Some("web"));
        assert!(Forwarder::connect("https://collector:4317").is_err());
    }
}
