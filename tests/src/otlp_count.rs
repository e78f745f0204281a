//! The [`OtlpReceiver`](crate::otlp::OtlpReceiver)'s trace service when spans are
//! only counted (`ReceiverOptions::keep_spans` off, the bench): the same gRPC method
//! and wire format, decoded only down to where the spans are. Each span stays the
//! bytes it came as; its fields are not decoded.
//!
//! The bench's receiver stands in for a collector on another machine but runs on the
//! machine measured, so what it spends is taken from the agents being measured.
//! Decoding every attribute of 100k spans a second cost it about 10 µs of CPU per
//! traced request (docs/BENCH.md); counting spans needs only the message's outline.
//! The tests that look at spans' contents use the full decoding (`otlp.rs`).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::codegen::Bytes;
use tonic::codegen::{http, Body as HttpBody, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};

use crate::otlp::Shared;

/// The gRPC path of OTLP's trace export.
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `ExportTraceServiceRequest` (`resource_spans = 1`) with its fields past
/// `ScopeSpans.spans` left encoded; other fields are skipped as unknown.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportOutline {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpansOutline>,
}

/// `ResourceSpans` (`scope_spans = 2`).
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpansOutline {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpansOutline>,
}

/// `ScopeSpans` (`spans = 2`), each span as its encoded bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpansOutline {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<Bytes>,
}

impl ExportOutline {
    /// Spans in the request.
    pub fn span_count(&self) -> usize {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
}

/// The trace service that counts spans (see the module docs). gzip accepted, up to
/// 64 MiB per message, as the full service.
#[derive(Clone)]
pub(crate) struct CountingTraceService {
    shared: Arc<Shared>,
}

impl CountingTraceService {
    pub(crate) fn new(shared: Arc<Shared>) -> CountingTraceService {
        CountingTraceService { shared }
    }
}

impl NamedService for CountingTraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// One export call.
struct Export(Arc<Shared>);

impl UnaryService<ExportOutline> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<ExportTraceServiceResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<ExportOutline>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let count = request.get_ref().span_count();
            let headers = crate::otlp::headers_of(request.metadata());
            shared.record(count, headers, None)?;
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        })
    }
}

impl<B> Service<http::Request<B>> for CountingTraceService
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            if req.uri().path() != EXPORT {
                return Ok(tonic::Status::unimplemented(format!(
                    "hoptrace test receiver: no method {}",
                    req.uri().path()
                ))
                .into_http());
            }
            let codec =
                tonic_prost::ProstCodec::<ExportTraceServiceResponse, ExportOutline>::default();
            let mut grpc = Grpc::new(codec)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(64 * 1024 * 1024);
            Ok(grpc.unary(Export(shared), req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn scope(spans: usize) -> ScopeSpans {
        ScopeSpans {
            spans: (0..spans)
                .map(|k| Span {
                    name: format!("span {k}"),
                    span_id: vec![k as u8; 8],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The outline counts the spans of every scope of every resource, whatever else
    /// the request carries, and an empty scope (no span field at all) counts 0.
    #[test]
    fn outline_counts_spans_across_resources_and_scopes() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource::default()),
                    scope_spans: vec![scope(3), scope(0), scope(1)],
                    schema_url: "https://example.test/schema".into(),
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![scope(4)],
                    schema_url: String::new(),
                },
            ],
        };
        let bytes = request.encode_to_vec();
        let outline = ExportOutline::decode(bytes.as_slice()).expect("decode");
        assert_eq!(outline.span_count(), 8);
        assert_eq!(
            ExportOutline::decode(&[][..]).expect("empty").span_count(),
            0
        );
    }

    /// A request cut short is an error, not a count.
    #[test]
    fn truncated_request_is_an_error() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![scope(2)],
                ..Default::default()
            }],
        };
        let bytes = request.encode_to_vec();
        assert!(ExportOutline::decode(&bytes[..bytes.len() - 3]).is_err());
    }
}
