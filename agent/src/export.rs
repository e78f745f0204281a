//! OTLP/gRPC export of proxy spans (DESIGN §3.5).
//!
//! The data path hands finished spans to a bounded queue with `try_send` and never
//! waits: when the queue is full the span is dropped and counted
//! (`hoptrace_spans_dropped_total`). One task drains the queue in batches and sends each
//! batch as one `ExportTraceServiceRequest` with one `ResourceSpans` per pod, encoded
//! straight from the spans into the OTLP protobuf (opentelemetry-proto's generated
//! messages and tonic client: no intermediate SDK span objects). A request is split
//! when its exact encoded size would pass [`MAX_REQUEST_BYTES`]. Retries follow the
//! gRPC status code (OTLP's retryable codes), never error text. A collector that is
//! down, slow or refusing costs at most the queue's memory; export resumes by itself.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::BufMut;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceResponse, common::v1::InstrumentationScope,
};
use prometheus_client::metrics::counter::Counter;
use prost::Message as _;
use tokio::sync::Semaphore;
use tonic::{
    client::Grpc,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::Channel,
    Code,
};

use crate::trace::{
    queue::{SpanQueue, SpanSink},
    span::{PodIdentity, PodSpans},
    wire,
};

/// Errors setting up the exporter.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A certificate/key file could not be read.
    #[error("cannot read {what} {path}: {source}; check --otlp-ca-file/--otlp-client-cert/--otlp-client-key")]
    File {
        /// Which file.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Client cert without key or the reverse.
    #[error("--otlp-client-cert and --otlp-client-key must be given together (mTLS)")]
    HalfIdentity,
    /// A header could not be used as gRPC metadata.
    #[error("invalid --otlp-header {0:?}: use KEY=VALUE with a lowercase ASCII key")]
    Header(String),
    /// The endpoint is not a URL the exporter accepts.
    #[error("invalid --otlp-endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// As given.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// Exporter settings (from the command line).
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// `http://host:port` (plaintext) or `https://host:port` (TLS).
    pub endpoint: String,
    /// CA bundle to verify the collector (PEM); system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mTLS (PEM).
    pub client_cert: Option<PathBuf>,
    /// Client key for mTLS (PEM).
    pub client_key: Option<PathBuf>,
    /// Extra gRPC metadata, e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// gzip-compress export requests.
    pub gzip: bool,
    /// Spans held at most while waiting to be exported.
    pub queue_size: usize,
    /// Spans per export request at most.
    pub batch_size: usize,
    /// Longest wait before a non-full batch is sent.
    pub flush_interval: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Export counters.
#[derive(Debug, Clone, Default)]
pub struct ExportMetrics {
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans dropped because the queue was full (or the exporter gone).
    pub dropped: Counter,
    /// Spans lost in failed export requests.
    pub failed: Counter,
    /// Failed export requests.
    pub errors: Counter,
    /// Failed OTLP metrics export requests.
    pub metric_errors: Counter,
}

impl crate::metrics::Source for ExportMetrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let counters = [
            (
                "spans_exported",
                "Spans accepted by the collector",
                &self.exported,
            ),
            (
                "spans_dropped",
                "Spans dropped because the export queue was full",
                &self.dropped,
            ),
            (
                "spans_export_failed",
                "Spans lost in failed export requests",
                &self.failed,
            ),
            ("span_export_errors", "Failed export requests", &self.errors),
            (
                "metric_export_errors",
                "Failed OTLP metrics export requests",
                &self.metric_errors,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path).map_err(|source| ExportError::File {
        what,
        path: path.clone(),
        source,
    })
}

/// The collector connection: plaintext or TLS (rustls; system roots or `ca_file`,
/// optional client identity). Connects lazily and reconnects by itself.
fn channel(config: &ExportConfig) -> Result<Channel, ExportError> {
    let endpoint = config.endpoint.trim_end_matches('/').to_string();
    let bad = |reason: String| ExportError::Endpoint {
        endpoint: endpoint.clone(),
        reason,
    };
    let tls = if endpoint.starts_with("https://") {
        true
    } else if endpoint.starts_with("http://") {
        false
    } else {
        return Err(bad("must start with http:// or https://".into()));
    };
    let mut ep = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .map_err(|e| bad(e.to_string()))?
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .tcp_nodelay(true);
    if tls {
        let mut tls_config = tonic::transport::ClientTlsConfig::new();
        match &config.ca_file {
            Some(ca) => {
                tls_config = tls_config.ca_certificate(tonic::transport::Certificate::from_pem(
                    read("CA file", ca)?,
                ));
            }
            None => tls_config = tls_config.with_native_roots(),
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                tls_config = tls_config.identity(tonic::transport::Identity::from_pem(
                    read("client certificate", cert)?,
                    read("client key", key)?,
                ));
            }
            (None, None) => {}
            _ => return Err(ExportError::HalfIdentity),
        }
        ep = ep.tls_config(tls_config).map_err(|e| bad(e.to_string()))?;
    } else if config.client_cert.is_some() || config.ca_file.is_some() {
        return Err(bad(
            "TLS files were given but the endpoint is http://; use https://".into(),
        ));
    }
    Ok(ep.connect_lazy())
}

fn metadata(headers: &[(String, String)]) -> Result<MetadataMap, ExportError> {
    let mut metadata = MetadataMap::new();
    for (k, v) in headers {
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| ExportError::Header(format!("{k}={v}")))?;
        let value = v
            .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
            .map_err(|_| ExportError::Header(format!("{k}={v}")))?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// Starts the periodic OTLP metrics export of `registry` to the same collector
/// (`export/metrics.rs`). Must run inside the runtime.
pub fn start_metrics(
    config: &ExportConfig,
    registry: std::sync::Arc<crate::metrics::Metrics>,
    interval: Duration,
    resource: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
    errors: Counter,
) -> Result<tokio::task::JoinHandle<()>, ExportError> {
    Ok(metrics::spawn(
        channel(config)?,
        metadata(&config.headers)?,
        registry,
        interval,
        resource,
        errors,
    ))
}

/// Builds the exporter and starts the export task. Must run inside the runtime.
pub fn start(config: ExportConfig, metrics: ExportMetrics) -> Result<SpanSink, ExportError> {
    let mut client = Grpc::new(channel(&config)?);
    if config.gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    let (sink, queue) = SpanSink::new(
        config.queue_size,
        config.batch_size,
        metrics.dropped.clone(),
    );
    let exporter = Exporter {
        client,
        metadata: metadata(&config.headers)?,
        config: Arc::new(config),
        metrics,
        last_error_log: Arc::default(),
    };
    tokio::spawn(exporter.run(queue));
    Ok(sink)
}

/// Export requests in flight at once. One at a time, export throughput is capped at
/// batch size / collector round trip, whatever the CPU left: an agent serving a busy
/// same-node hop (four spans per request from one agent) dropped spans that way. The
/// requests share one HTTP/2 connection.
pub const MAX_IN_FLIGHT: usize = 4;

/// What sending needs; cloned into each request's task.
#[derive(Clone)]
struct Exporter {
    client: Grpc<Channel>,
    metadata: MetadataMap,
    config: Arc<ExportConfig>,
    metrics: ExportMetrics,
    /// When a failure was last logged (shared: the log is rate-limited for all).
    last_error_log: Arc<Mutex<Option<std::time::Instant>>>,
}

impl Exporter {
    /// Sends what the queue gathers, up to [`MAX_IN_FLIGHT`] requests at once: a batch
    /// as soon as one is queued, anything less once the flush interval has passed
    /// since the export task saw its first span. While that many requests are in flight
    /// (a slow or absent collector), spans wait in the bounded queue and what overflows
    /// it is dropped. Returns once the queue is closed and drained.
    async fn run(self, queue: Arc<SpanQueue>) {
        let scope: Arc<[u8]> = InstrumentationScope {
            name: "hoptrace".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }
        .encode_to_vec()
        .into();
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let limits = Limits {
            bytes: MAX_REQUEST_BYTES,
            spans: queue.batch(),
        };
        loop {
            let (waiting, closed) = queue.state();
            if waiting == 0 {
                if closed {
                    return;
                }
                queue.ready().await;
                continue;
            }
            if waiting < limits.spans && !closed {
                let deadline = tokio::time::Instant::now() + self.config.flush_interval;
                loop {
                    tokio::select! {
                        () = queue.ready() => {}
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                    let (waiting, closed) = queue.state();
                    if waiting >= limits.spans || closed {
                        break;
                    }
                }
            }
            for request in encode(queue.take_batch(), &scope, limits) {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut this = self.clone();
                tokio::spawn(async move {
                    this.export_with_retry(request).await;
                    drop(slot);
                });
            }
        }
    }

    /// Sends one request. A retryable failure (collector down, overloaded or timing
    /// out) keeps it and retries with backoff: meanwhile the data path keeps queueing
    /// into the bounded channel and only what overflows it is dropped, so an outage
    /// costs exactly the overflow and a bounded number of spans of memory: the queue,
    /// the [`MAX_IN_FLIGHT`] requests retrying and one batch being gathered, which the
    /// agent sizes to at most twice `--span-queue` spans. A permanent rejection loses
    /// the request at once, counted in `failed`, so one poison request cannot stall
    /// export.
    async fn export_with_retry(&mut self, request: Encoded) {
        let n = request.spans as u64;
        let mut delays = retry_delays();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // Framed into the gRPC message when sent (the spans' bytes copied once,
            // into tonic's buffer); a retry frames the same parts again.
            let mut req = tonic::Request::new(request.parts.clone());
            *req.metadata_mut() = self.metadata.clone();
            match self.send(req).await {
                Ok(resp) => {
                    let rejected = resp
                        .into_inner()
                        .partial_success
                        .map_or(0, |p| p.rejected_spans.max(0) as u64);
                    self.metrics.exported.inc_by(n - rejected.min(n));
                    self.metrics.failed.inc_by(rejected.min(n));
                    return;
                }
                Err(status) => {
                    self.metrics.errors.inc();
                    let retry = match classify(&status) {
                        Retry::Always => true,
                        Retry::Few => attempts < FEW_ATTEMPTS,
                        Retry::Never => false,
                    };
                    self.log_failure(n, retry, &status);
                    if !retry {
                        self.metrics.failed.inc_by(n);
                        return;
                    }
                    tokio::time::sleep(delays.next().unwrap_or(RETRY_MAX)).await;
                }
            }
        }
    }

    /// One `TraceService/Export` call with a request's parts.
    async fn send(
        &mut self,
        req: tonic::Request<Arc<Parts>>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.client
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("collector connection: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        );
        self.client.unary(req, path, PartsCodec).await
    }

    /// Rate-limited: a collector that is down must not flood the log.
    fn log_failure(&mut self, n: u64, retry: bool, status: &tonic::Status) {
        {
            let mut last = self
                .last_error_log
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let endpoint = &self.config.endpoint;
        let (code, msg) = (status.code(), status.message());
        if retry {
            tracing::warn!(%endpoint, "span export failed, retrying ({n} spans held; new spans queue up to --span-queue, then are dropped): {code:?}: {msg}");
        } else {
            tracing::warn!(%endpoint, "{n} spans lost, export not retried: {code:?}: {msg}");
        }
    }
}

/// Encoded size of one export request at most. The OpenTelemetry Collector and gRPC
/// servers reject messages over 4 MiB by default; with attribute values capped at
/// [`crate::trace::span::MAX_ATTRIBUTE_LEN`] one span is far smaller than this, so a
/// batch split at this size always fits.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// One export request: its pods' parts, and the number of spans in it.
struct Encoded {
    parts: Arc<Parts>,
    spans: usize,
}

/// The parts of one `ExportTraceServiceRequest`, written out only when sent
/// ([`Parts::write`]): the spans' bytes go from the pods' buffers straight into the
/// gRPC message.
pub(crate) struct Parts {
    pods: Vec<PodPart>,
    /// The encoded `InstrumentationScope`.
    scope: Arc<[u8]>,
    /// The request's encoded length.
    len: usize,
}

/// How large one export request may grow.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Encoded bytes at most (a single submission larger than that goes alone).
    bytes: usize,
    /// Spans at most (a single submission with more goes alone).
    spans: usize,
}

/// The queued spans as export requests within `limits`: one `ResourceSpans` per pod,
/// in order of first appearance, spans in submission order. `scope` is the encoded
/// `InstrumentationScope`. Nothing is copied here: [`Parts::write`] does, when sent.
fn encode(batch: Vec<PodSpans>, scope: &Arc<[u8]>, limits: Limits) -> Vec<Encoded> {
    let mut out = Vec::new();
    let mut current = Builder::default();
    for spans in batch {
        let full = current.spans > 0
            && (current.size + spans.bytes.len() + POD_FRAMING > limits.bytes
                || current.spans + spans.count > limits.spans);
        if full {
            out.push(std::mem::take(&mut current).finish(scope));
        }
        current.push(spans, scope);
    }
    if current.spans > 0 {
        out.push(current.finish(scope));
    }
    out
}

/// Bytes of framing per pod at most besides its resource and scope: three tags and
/// three lengths (`ResourceSpans`, `Resource`, `ScopeSpans`, `InstrumentationScope`).
const POD_FRAMING: usize = 4 * (1 + 5);

/// One pod's part of a request.
struct PodPart {
    pod: Arc<PodIdentity>,
    resource: Vec<u8>,
    spans: Vec<Vec<u8>>,
    span_bytes: usize,
}

impl PodPart {
    /// `ScopeSpans` content: the scope, then the spans as they were encoded.
    fn scope_spans_len(&self, scope: &[u8]) -> usize {
        wire::len_field_size(1, scope.len()) + self.span_bytes
    }

    /// `ResourceSpans` content.
    fn resource_spans_len(&self, scope: &[u8]) -> usize {
        wire::len_field_size(1, self.resource.len())
            + wire::len_field_size(2, self.scope_spans_len(scope))
    }
}

/// Spans grouped per pod for one request, and an upper bound of its encoded size.
#[derive(Default)]
struct Builder {
    pods: Vec<PodPart>,
    spans: usize,
    size: usize,
}

impl Builder {
    fn push(&mut self, spans: PodSpans, scope: &[u8]) {
        let PodSpans { pod, count, bytes } = spans;
        self.spans += count;
        self.size += bytes.len();
        let part = match self.pods.iter_mut().position(|p| Arc::ptr_eq(&p.pod, &pod)) {
            Some(i) => &mut self.pods[i],
            None => {
                let resource = pod.resource.encode_to_vec();
                self.size += resource.len() + scope.len() + POD_FRAMING;
                self.pods.push(PodPart {
                    pod,
                    resource,
                    spans: Vec::new(),
                    span_bytes: 0,
                });
                let last = self.pods.len() - 1;
                &mut self.pods[last]
            }
        };
        part.span_bytes += bytes.len();
        part.spans.push(bytes);
    }

    /// The request, its length computed; nothing is copied.
    fn finish(self, scope: &Arc<[u8]>) -> Encoded {
        let len = self
            .pods
            .iter()
            .map(|p| wire::len_field_size(1, p.resource_spans_len(scope)))
            .sum();
        Encoded {
            spans: self.spans,
            parts: Arc::new(Parts {
                pods: self.pods,
                scope: scope.clone(),
                len,
            }),
        }
    }
}

impl Parts {
    /// Writes `ExportTraceServiceRequest { resource_spans = 1: ResourceSpans {
    /// resource = 1, scope_spans = 2: ScopeSpans { scope = 1, spans = 2… } } }` into
    /// `out`, each length known before its content: `self.len` bytes.
    fn write(&self, out: &mut impl BufMut) {
        let scope = &self.scope[..];
        for part in &self.pods {
            wire::len_prefix(out, 1, part.resource_spans_len(scope));
            wire::len_prefix(out, 1, part.resource.len());
            out.put_slice(&part.resource);
            wire::len_prefix(out, 2, part.scope_spans_len(scope));
            wire::len_prefix(out, 1, scope.len());
            out.put_slice(scope);
            for spans in &part.spans {
                out.put_slice(spans);
            }
        }
    }

    /// The request's bytes (tests).
    #[cfg(test)]
    fn to_vec(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.len);
        self.write(&mut b);
        assert_eq!(b.len(), self.len);
        b
    }
}

/// The gRPC codec of a request's parts (framed as they are written) and a protobuf
/// answer.
#[derive(Debug, Clone, Copy, Default)]
struct PartsCodec;

impl Codec for PartsCodec {
    type Encode = Arc<Parts>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PartsEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> PartsEncoder {
        PartsEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// Writes a request's parts.
#[derive(Debug, Clone, Copy, Default)]
struct PartsEncoder;

impl Encoder for PartsEncoder {
    type Item = Arc<Parts>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Arc<Parts>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        // Room for the whole request at once: growing 8 KiB at a time copies it again
        // and again (docs/BENCH.md).
        dst.reserve(item.len);
        item.write(dst);
        Ok(())
    }
}

/// Decodes the collector's answer.
#[derive(Debug, Clone, Copy, Default)]
struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the export answer: {e}")))
    }
}

/// First wait before a retryable export failure is retried; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between retries of one batch, before jitter (which at most doubles it).
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The waits between retries of one request: `d` doubling from [`RETRY_FIRST`] to
/// [`RETRY_MAX`], each wait `d` plus a random jitter in `[0, d)`, so that the agents
/// of a cluster do not all hit a collector that comes back at the same instant.
fn retry_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(RETRY_FIRST)
        .with_max_delay(RETRY_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}
/// Attempts of a request whose failure is [`Retry::Few`].
const FEW_ATTEMPTS: u32 = 3;

/// How an export error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Collector down, overloaded or slow: retry until it succeeds.
    Always,
    /// Retried a few times, then lost: `Unknown`/`Internal` (often a connection torn
    /// down mid-request, sometimes a collector bug) and `ResourceExhausted` (retryable
    /// only with RetryInfo per OTLP, e.g. a memory limiter).
    Few,
    /// The collector refuses the request as such (bad data, auth, too large).
    Never,
}

/// Classifies an export error per the OTLP specification's retryable gRPC codes
/// (Cancelled, DeadlineExceeded, Aborted, OutOfRange, Unavailable, DataLoss; and
/// ResourceExhausted, a few times). A request over the collector's size limit fails
/// the same way every time (grpc-go: ResourceExhausted "received message larger than
/// max"; tonic: OutOfRange "message length too large"): never retried.
fn classify(status: &tonic::Status) -> Retry {
    let msg = status.message();
    if msg.contains("larger than max") || msg.contains("message length too large") {
        return Retry::Never;
    }
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Unimplemented
        | Code::Unauthenticated => Retry::Never,
        Code::ResourceExhausted | Code::Unknown | Code::Internal => Retry::Few,
        _ => Retry::Always,
    }
}

pub mod metrics;

#[cfg(test)]
mod tests;
