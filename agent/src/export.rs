//! OTLP export of proxy spans (DESIGN §3.5).
//!
//! The data path hands finished spans to a bounded queue with `try_send` and never
//! waits: when the queue is full the span is dropped and counted
//! (`hoptrace_spans_dropped_total`). One task drains the queue in batches, groups
//! them by pod (each pod is its own OTLP resource) and exports them with
//! opentelemetry-otlp over tonic. A collector that is down, slow or refusing costs at
//! most the queue's memory and one export timeout per batch; export resumes by itself.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use opentelemetry::{
    trace::{SpanContext, SpanKind, Status as OtelStatus, TraceFlags, TraceState},
    InstrumentationScope,
};
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
    Resource,
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::trace::span::{Kind, PodIdentity, ProxySpan, Status};

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
}

/// Where the data path submits finished spans. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SpanSink {
    tx: mpsc::Sender<ProxySpan>,
    metrics: ExportMetrics,
}

impl SpanSink {
    /// Queues a span without waiting; drops and counts it when the queue is full.
    pub fn submit(&self, span: ProxySpan) {
        if self.tx.try_send(span).is_err() {
            self.metrics.dropped.inc();
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

/// Builds the exporter and starts the export task. Must run inside the runtime.
pub fn start(config: ExportConfig, metrics: ExportMetrics) -> Result<SpanSink, ExportError> {
    let endpoint = config.endpoint.trim_end_matches('/').to_string();
    let tls = if endpoint.starts_with("https://") {
        true
    } else if endpoint.starts_with("http://") {
        false
    } else {
        return Err(ExportError::Endpoint {
            endpoint,
            reason: "must start with http:// or https://".into(),
        });
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(config.timeout);
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
        builder = builder.with_tls_config(tls_config);
    } else if config.client_cert.is_some() || config.ca_file.is_some() {
        return Err(ExportError::Endpoint {
            endpoint,
            reason: "TLS files were given but the endpoint is http://; use https://".into(),
        });
    }
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (k, v) in &config.headers {
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| ExportError::Header(format!("{k}={v}")))?;
        let value = v
            .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
            .map_err(|_| ExportError::Header(format!("{k}={v}")))?;
        metadata.insert(key, value);
    }
    builder = builder.with_metadata(metadata);
    if config.gzip {
        builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    let exporter = builder.build().map_err(|e| ExportError::Endpoint {
        endpoint: endpoint.clone(),
        reason: e.to_string(),
    })?;
    let (tx, rx) = mpsc::channel(config.queue_size.max(1));
    tokio::spawn(run(exporter, rx, config, metrics.clone()));
    Ok(SpanSink { tx, metrics })
}

async fn run(
    mut exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<ProxySpan>,
    config: ExportConfig,
    metrics: ExportMetrics,
) {
    let scope = InstrumentationScope::builder("hoptrace")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    // Keyed by the identity's address (stable while the Arc lives, which the map ensures).
    let mut resources: HashMap<usize, (Arc<PodIdentity>, Resource)> = HashMap::new();
    let mut batch = Vec::with_capacity(config.batch_size);
    let mut last_error_log: Option<std::time::Instant> = None;
    loop {
        batch.clear();
        // Wait for the first span, then gather more until the batch is full or the
        // flush interval passes.
        match rx.recv().await {
            Some(s) => batch.push(s),
            None => return,
        }
        let deadline = tokio::time::Instant::now() + config.flush_interval;
        while batch.len() < config.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        // One request per pod resource (opentelemetry-otlp sends one resource per call).
        let mut by_pod: Vec<(Arc<PodIdentity>, Vec<ProxySpan>)> = Vec::new();
        for span in batch.drain(..) {
            let key = Arc::as_ptr(&span.pod);
            match by_pod.iter_mut().find(|(p, _)| Arc::as_ptr(p) == key) {
                Some((_, v)) => v.push(span),
                None => by_pod.push((span.pod.clone(), vec![span])),
            }
        }
        for (pod, spans) in by_pod {
            let key = Arc::as_ptr(&pod) as usize;
            let resource = &resources
                .entry(key)
                .or_insert_with(|| {
                    let r = Resource::builder_empty()
                        .with_attributes(pod.resource.iter().cloned())
                        .build();
                    (pod.clone(), r)
                })
                .1;
            exporter.set_resource(resource);
            // Every request stays well below the collectors' default 4 MiB limit.
            for chunk in split_by_size(&spans, MAX_REQUEST_BYTES) {
                export_with_retry(
                    &mut exporter,
                    chunk,
                    &scope,
                    &config,
                    &metrics,
                    &mut last_error_log,
                )
                .await;
            }
        }
        // Forget resources of pods whose spans are no longer referenced anywhere but
        // here (released pods), so pod churn cannot grow this map.
        resources.retain(|_, (pod, _)| Arc::strong_count(pod) > 1);
    }
}

/// Estimated encoded size of one export request at most. The OpenTelemetry Collector
/// and gRPC servers reject messages over 4 MiB by default; with attribute values capped
/// at [`crate::trace::span::MAX_ATTRIBUTE_LEN`] one span is far smaller than this, so
/// a batch split at this size always fits.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// An upper estimate of a span's protobuf size: every string and attribute, plus
/// the fixed fields (ids, times, kind, status, field tags).
fn estimated_size(s: &ProxySpan) -> usize {
    const FIXED: usize = 128;
    const PER_ATTRIBUTE: usize = 16;
    let attrs: usize = s
        .attributes
        .iter()
        .map(|kv| kv.key.as_str().len() + kv.value.as_str().len() + PER_ATTRIBUTE)
        .sum();
    let status = match &s.status {
        Status::Unset => 0,
        Status::Error(m) => m.len(),
    };
    FIXED + s.name.len() + attrs + status
}

/// Consecutive slices of `spans` whose estimated sizes sum to at most `max` each (a
/// single span larger than `max` goes alone).
fn split_by_size(spans: &[ProxySpan], max: usize) -> Vec<&[ProxySpan]> {
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, s) in spans.iter().enumerate() {
        let n = estimated_size(s);
        if i > start && size + n > max {
            chunks.push(&spans[start..i]);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < spans.len() {
        chunks.push(&spans[start..]);
    }
    chunks
}

/// First wait before a retryable export failure is retried; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between retries of one batch.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Exports one pod's spans. A retryable failure (collector down, overloaded or
/// timing out) keeps the batch and retries it with backoff: meanwhile the data path
/// keeps queueing into the bounded channel and only what overflows it is dropped, so
/// an outage costs exactly the overflow and at most `queue_size + batch_size` spans of
/// memory. A permanent rejection (bad request, auth) loses the batch at once, counted
/// in `failed`, so one poison batch cannot stall export.
async fn export_with_retry(
    exporter: &mut opentelemetry_otlp::SpanExporter,
    spans: &[ProxySpan],
    scope: &InstrumentationScope,
    config: &ExportConfig,
    metrics: &ExportMetrics,
    last_error_log: &mut Option<std::time::Instant>,
) {
    let n = spans.len() as u64;
    let mut backoff = RETRY_FIRST;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        // The exporter takes the batch by value: convert per attempt (a retry is rare;
        // a copy made for it on every export would not be).
        let data: Vec<SpanData> = spans.iter().map(|s| to_span_data(s, scope)).collect();
        match exporter.export(data).await {
            Ok(()) => {
                metrics.exported.inc_by(n);
                return;
            }
            Err(err) => {
                metrics.errors.inc();
                let msg = err.to_string();
                let retry = match classify(&msg) {
                    Retry::Always => true,
                    Retry::Few => attempts < FEW_ATTEMPTS,
                    Retry::Never => false,
                };
                // Rate-limited: a collector that is down must not flood the log.
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    if retry {
                        tracing::warn!(endpoint = %config.endpoint, "span export failed, retrying ({n} spans held; new spans queue up to --span-queue, then are dropped): {msg}");
                    } else {
                        tracing::warn!(endpoint = %config.endpoint, "{n} spans lost, export not retried: {msg}");
                    }
                    *last_error_log = Some(std::time::Instant::now());
                }
                if !retry {
                    metrics.failed.inc_by(n);
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// How an export error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Collector down, overloaded or slow: retry until it succeeds.
    Always,
    /// `Unknown`/`Internal`: often a connection torn down mid-request, sometimes a
    /// collector bug; retried a few times, then lost.
    Few,
    /// The collector refuses the request as such (bad data, auth): never retried.
    Never,
}

/// Attempts of a batch whose failure is [`Retry::Few`].
const FEW_ATTEMPTS: u32 = 3;

/// Classifies an export error per the OTLP specification's retryable gRPC codes
/// (Cancelled, DeadlineExceeded, ResourceExhausted, Aborted, OutOfRange, Unavailable,
/// DataLoss). The exporter reports errors as text (tonic's `Status` display,
/// `code: '<description>'`), hence the string match; a unit test pins it to tonic's
/// format. Errors without a status (transport) are retried.
fn classify(msg: &str) -> Retry {
    use tonic::Code;
    let has = |c: Code| msg.contains(&format!("code: '{c}'"));
    const NEVER: &[Code] = &[
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::FailedPrecondition,
        Code::Unimplemented,
        Code::Unauthenticated,
    ];
    // A request over the collector's size limit fails the same way every time
    // (grpc-go: "received message larger than max", ResourceExhausted; tonic:
    // "decoded message length too large", OutOfRange): retrying it would stall export.
    let too_large = msg.contains("larger than max") || msg.contains("message length too large");
    if too_large || NEVER.iter().any(|c| has(*c)) {
        Retry::Never
    } else if has(Code::ResourceExhausted) {
        // Retryable only when the server says so (OTLP: with RetryInfo), e.g. a memory
        // limiter; the exporter does not expose that, so a few tries, then the batch goes.
        Retry::Few
    } else if has(Code::Unknown) || has(Code::Internal) {
        Retry::Few
    } else {
        Retry::Always
    }
}

fn to_span_data(s: &ProxySpan, scope: &InstrumentationScope) -> SpanData {
    let span_context = SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes(s.trace_id.0),
        opentelemetry::trace::SpanId::from_bytes(s.span_id.0),
        TraceFlags::new(s.flags),
        false,
        TraceState::default(),
    );
    SpanData {
        span_context,
        parent_span_id: opentelemetry::trace::SpanId::from_bytes(s.parent_span_id.0),
        parent_span_is_remote: matches!(s.kind, Kind::Server),
        span_kind: match s.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        },
        name: s.name.clone().into(),
        start_time: s.start,
        end_time: s.end,
        attributes: s.attributes.clone(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match &s.status {
            Status::Unset => OtelStatus::Unset,
            Status::Error(msg) => OtelStatus::error(msg.clone()),
        },
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{trace::context::SpanId, workloads::PodKey};
    use opentelemetry::KeyValue;
    use tonic::{Code, Status};

    fn span(attr_len: usize) -> ProxySpan {
        ProxySpan {
            pod: Arc::new(PodIdentity {
                key: PodKey {
                    namespace: "ns".into(),
                    name: "p".into(),
                },
                resource: Vec::new(),
            }),
            trace_id: crate::trace::context::TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: SpanId([3; 8]),
            flags: 1,
            kind: Kind::Server,
            name: "GET".into(),
            start: std::time::SystemTime::UNIX_EPOCH,
            end: std::time::SystemTime::UNIX_EPOCH,
            attributes: vec![KeyValue::new("user_agent.original", "u".repeat(attr_len))],
            status: crate::trace::span::Status::Unset,
        }
    }

    #[test]
    fn batches_split_below_the_request_size() {
        let spans: Vec<ProxySpan> = (0..1000).map(|_| span(2048)).collect();
        let chunks = split_by_size(&spans, MAX_REQUEST_BYTES);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 1000);
        for c in &chunks {
            let size: usize = c.iter().map(estimated_size).sum();
            assert!(size <= MAX_REQUEST_BYTES, "{size}");
        }
        // Small spans: one request.
        let small: Vec<ProxySpan> = (0..512).map(|_| span(10)).collect();
        assert_eq!(split_by_size(&small, MAX_REQUEST_BYTES).len(), 1);
        // A span over the limit on its own still goes (alone).
        let huge = vec![span(10), span(MAX_REQUEST_BYTES), span(10)];
        let chunks = split_by_size(&huge, MAX_REQUEST_BYTES);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert!(split_by_size(&[], MAX_REQUEST_BYTES).is_empty());
    }

    #[test]
    fn classification_follows_the_otlp_retry_rules() {
        let c = |code| classify(&Status::new(code, "x").to_string());
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert_eq!(c(code), Retry::Always, "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
        ] {
            assert_eq!(c(code), Retry::Never, "{code:?}");
        }
        assert_eq!(c(Code::Unknown), Retry::Few);
        assert_eq!(c(Code::ResourceExhausted), Retry::Few);
        // Too large: permanent, whatever the code.
        let big = Status::new(
            Code::ResourceExhausted,
            "grpc: received message larger than max (5242880 vs. 4194304)",
        );
        assert_eq!(classify(&big.to_string()), Retry::Never);
        let big = Status::new(
            Code::OutOfRange,
            "Error, decoded message length too large: found 5242880 bytes, the limit is: 4194304 bytes",
        );
        assert_eq!(classify(&big.to_string()), Retry::Never);
        assert_eq!(c(Code::Internal), Retry::Few);
        assert_eq!(
            classify("transport error: connection refused"),
            Retry::Always
        );
    }
}
