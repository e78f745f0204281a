//! A real OTLP/gRPC trace receiver for the tests, built on the official
//! protobuf definitions (`opentelemetry-proto`'s generated tonic service), run
//! in-process on its own tokio runtime.
//!
//! ```ignore
//! let otlp = OtlpReceiver::start(ReceiverOptions::default())?;      // http://127.0.0.1:<port>
//! let agent = Agent::start_with_args(&lab, "node-1", &file, &otlp.agent_args_str())?;
//! let spans = otlp.wait_for_trace(&trace_id, 8, Duration::from_secs(10))?;
//! ```
//!
//! - Plain, server-TLS or mutual-TLS ([`TlsMode`]); certificates (a CA, a
//!   server certificate for `localhost` and `127.0.0.1`, a client certificate)
//!   are generated per receiver with rcgen and written as PEM files to a temp
//!   dir ([`OtlpReceiver::ca_file`], [`OtlpReceiver::client_cert_file`], ...).
//! - gzip-compressed requests are accepted.
//! - [`OtlpReceiver::stop`] takes the collector down abruptly (listener and
//!   every open connection closed, like a crash); [`OtlpReceiver::restart`]
//!   brings it back on the same port with the same certificates.
//! - [`OtlpReceiver::set_reject`] makes it answer every export `UNAVAILABLE`
//!   (a refusing or overloaded collector); rejected spans are not stored.
//!
//! The agent exports from the host network namespace, so the default bind
//! address is `127.0.0.1:0`.

use anyhow::{bail, Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// How long [`OtlpReceiver::stop`] waits for the runtime's threads to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS on the receiver's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// The server presents a certificate signed by the test CA.
    ServerTls,
    /// Like `ServerTls`, and clients must present a certificate signed by the
    /// test CA (a client without one, or with another CA's, is refused).
    MutualTls,
}

/// How to run an [`OtlpReceiver`].
#[derive(Clone, Debug)]
pub struct ReceiverOptions {
    /// Address to listen on (default `127.0.0.1:0`: a free port on loopback).
    pub bind: SocketAddr,
    /// TLS (default: none, plain HTTP/2).
    pub tls: Option<TlsMode>,
    /// Keep every span and request (default: true). When false only spans are
    /// counted ([`OtlpReceiver::span_count`]): for the bench, where millions of spans
    /// arrive and the receiver shares the CPU with what is measured.
    pub keep_spans: bool,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            keep_spans: true,
        }
    }
}

impl ReceiverOptions {
    /// Default options with `tls`.
    pub fn tls(mode: TlsMode) -> Self {
        ReceiverOptions {
            tls: Some(mode),
            ..Default::default()
        }
    }
}

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

/// The test PKI: a CA, a server certificate (`localhost`, `127.0.0.1`, `::1`)
/// and a client certificate (`hoptrace-agent`), all signed by the CA, written
/// as PEM files into one directory.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// `ca.pem`: the CA certificate (trust anchor for both sides).
    pub ca_file: PathBuf,
    /// `server.pem`.
    pub server_cert_file: PathBuf,
    /// `server.key` (PKCS#8).
    pub server_key_file: PathBuf,
    /// `client.pem`.
    pub client_cert_file: PathBuf,
    /// `client.key` (PKCS#8).
    pub client_key_file: PathBuf,
    /// PEM text of `ca.pem`.
    pub ca_pem: String,
    /// PEM text of `server.pem`.
    pub server_cert_pem: String,
    /// PEM text of `server.key`.
    pub server_key_pem: String,
    /// PEM text of `client.pem`.
    pub client_cert_pem: String,
    /// PEM text of `client.key`.
    pub client_key_pem: String,
}

impl TestPki {
    /// Generates a fresh PKI (ECDSA P-256) and writes it into `dir` (created
    /// if missing). `label` goes into the CA's common name.
    pub fn generate(dir: &Path, label: &str) -> Result<TestPki> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("hoptrace test CA ({label})"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let leaf = |sans: Vec<String>,
                    cn: &str,
                    eku: ExtendedKeyUsagePurpose|
         -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![eku];
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) = leaf(
            vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert_pem, client_key_pem) = leaf(
            vec!["hoptrace-agent".into()],
            "hoptrace-agent",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let pki = TestPki {
            ca_file: dir.join("ca.pem"),
            server_cert_file: dir.join("server.pem"),
            server_key_file: dir.join("server.key"),
            client_cert_file: dir.join("client.pem"),
            client_key_file: dir.join("client.key"),
            ca_pem: ca.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        };
        for (path, text) in [
            (&pki.ca_file, &pki.ca_pem),
            (&pki.server_cert_file, &pki.server_cert_pem),
            (&pki.server_key_file, &pki.server_key_pem),
            (&pki.client_cert_file, &pki.client_cert_pem),
            (&pki.client_key_file, &pki.client_key_pem),
        ] {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(pki)
    }

    /// The client identity (certificate + key) for a tonic client.
    pub fn client_identity(&self) -> Identity {
        Identity::from_pem(&self.client_cert_pem, &self.client_key_pem)
    }

    /// The CA as a tonic certificate.
    pub fn ca_certificate(&self) -> Certificate {
        Certificate::from_pem(&self.ca_pem)
    }
}

/// What the receiver saw. Guarded by `Shared::state`.
#[derive(Default)]
struct State {
    spans: Vec<ReceivedSpan>,
    /// Accepted requests as received (for forwarding, e.g. by the demo).
    raw: Vec<ExportTraceServiceRequest>,
    /// Spans accepted (also counted when not kept).
    span_count: usize,
    requests: usize,
    rejected: usize,
    reject: bool,
    last_headers: BTreeMap<String, String>,
}

#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Copied from [`ReceiverOptions::keep_spans`]: serve
    /// [`CountingTraceService`](crate::otlp_count::CountingTraceService).
    count_only: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock can't leave State inconsistent in a
        // way that matters to a test: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes one export request of `count` spans (with its spans and the request
    /// itself when they are kept); `UNAVAILABLE` in reject mode, nothing counted.
    pub(crate) fn record(
        &self,
        count: usize,
        headers: BTreeMap<String, String>,
        kept: Option<(Vec<ReceivedSpan>, ExportTraceServiceRequest)>,
    ) -> Result<(), tonic::Status> {
        let mut st = self.lock();
        st.requests += 1;
        st.last_headers = headers;
        let reject = st.reject;
        if reject {
            st.rejected += 1;
        } else {
            st.span_count += count;
            if let Some((spans, raw)) = kept {
                st.spans.extend(spans);
                st.raw.push(raw);
            }
        }
        drop(st);
        self.changed.notify_all();
        if reject {
            return Err(tonic::Status::unavailable(
                "hoptrace test receiver: rejecting exports (set_reject)",
            ));
        }
        Ok(())
    }
}

struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let count: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let headers = headers_of(request.metadata());
        let spans = flatten(request.get_ref());
        self.shared
            .record(count, headers, Some((spans, request.into_inner())))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An export request's metadata as header name -> value (repeated names joined
/// with ", ").
pub(crate) fn headers_of(metadata: &tonic::metadata::MetadataMap) -> BTreeMap<String, String> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in metadata.clone().into_headers().iter() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    headers
}

/// The running server: its own runtime (dropping it drops the listener and
/// every connection task).
struct Running {
    runtime: tokio::runtime::Runtime,
}

/// An OTLP/gRPC trace receiver (see the module docs). Stopped on drop; its
/// certificate dir is removed on drop (kept when dropped during a panic).
pub struct OtlpReceiver {
    addr: SocketAddr,
    mode: Option<TlsMode>,
    pki: Option<TestPki>,
    dir: Option<PathBuf>,
    shared: Arc<Shared>,
    metrics: crate::otlp_metrics::MetricsStore,
    running: Option<Running>,
    /// The receiver's threads (kernel thread ids), for [`OtlpReceiver::idle_while`].
    threads: Arc<Mutex<Vec<libc::pid_t>>>,
}

/// While held, the receiver's threads run at the idle scheduling class
/// ([`OtlpReceiver::idle_while`]); back to normal on drop.
pub struct IdlePriority<'a>(&'a OtlpReceiver);

impl Drop for IdlePriority<'_> {
    fn drop(&mut self) {
        self.0.schedule(libc::SCHED_OTHER);
    }
}

impl OtlpReceiver {
    /// Runs the receiver's threads at `SCHED_IDLE` until the guard drops: they then
    /// take only CPU time nothing else on the machine wants, as a collector on
    /// another machine takes none of this one's. For the bench's fixed-rate runs, where
    /// the machine has idle time to spare (at saturation the receiver would starve and
    /// the agents drop spans). Best effort: a thread that cannot be moved is left as
    /// it was.
    pub fn idle_while(&self) -> IdlePriority<'_> {
        self.schedule(libc::SCHED_IDLE);
        IdlePriority(self)
    }

    fn schedule(&self, policy: libc::c_int) {
        let param = libc::sched_param { sched_priority: 0 };
        for &tid in self.threads.lock().expect("lock").iter() {
            // SAFETY: a thread id and a valid sched_param; a thread that has exited
            // answers ESRCH, which changes nothing.
            unsafe { libc::sched_setscheduler(tid, policy, &param) };
        }
    }

    /// Generates certificates if `opts.tls` asks for them, binds and starts serving.
    pub fn start(opts: ReceiverOptions) -> Result<OtlpReceiver> {
        let (pki, dir) = match opts.tls {
            None => (None, None),
            Some(_) => {
                let dir = std::env::temp_dir().join(format!(
                    "hoptrace-otlp-{}-{:08x}",
                    std::process::id(),
                    rand::random::<u32>()
                ));
                let pki = TestPki::generate(&dir, "otlp receiver")?;
                (Some(pki), Some(dir))
            }
        };
        let mut receiver = OtlpReceiver {
            addr: opts.bind,
            mode: opts.tls,
            pki,
            dir,
            shared: Arc::new(Shared {
                count_only: !opts.keep_spans,
                ..Shared::default()
            }),
            metrics: Default::default(),
            running: None,
            threads: Default::default(),
        };
        receiver.launch()?;
        Ok(receiver)
    }

    fn launch(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let threads = self.threads.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .on_thread_start(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                threads.lock().expect("lock").push(tid);
            })
            .enable_all()
            .build()
            .context("building the receiver's tokio runtime")?;
        // A task run to its end: the worker thread has started (and noted its id).
        runtime
            .block_on(runtime.spawn(async {}))
            .context("starting the receiver's worker")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .with_context(|| format!("OTLP receiver: binding {}", self.addr))?;
        self.addr = listener.local_addr()?;
        let mut builder = Server::builder();
        if let (Some(mode), Some(pki)) = (self.mode, &self.pki) {
            let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
                &pki.server_cert_pem,
                &pki.server_key_pem,
            ));
            if mode == TlsMode::MutualTls {
                tls = tls.client_ca_root(pki.ca_certificate());
            }
            builder = builder
                .tls_config(tls)
                .context("OTLP receiver TLS config")?;
        }
        let (full, counting) = if self.shared.count_only {
            let counting = crate::otlp_count::CountingTraceService::new(self.shared.clone());
            (None, Some(counting))
        } else {
            let full = TraceServiceServer::new(Service {
                shared: self.shared.clone(),
            })
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(64 * 1024 * 1024);
            (Some(full), None)
        };
        let incoming = {
            let _guard = runtime.enter();
            TcpIncoming::from(listener).with_nodelay(Some(true))
        };
        let addr = self.addr;
        let metrics = self.metrics.service();
        runtime.spawn(async move {
            if let Err(e) = builder
                .add_optional_service(full)
                .add_optional_service(counting)
                .add_service(metrics)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("OTLP receiver on {addr}: server error: {e}");
            }
        });
        self.running = Some(Running { runtime });
        Ok(())
    }

    /// The OTLP metrics received (the agent's `--otlp-metrics`).
    pub fn metrics(&self) -> &crate::otlp_metrics::MetricsStore {
        &self.metrics
    }

    /// The listening address (`127.0.0.1:<port>` by default).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, or `https://...` with TLS (the server
    /// certificate is valid for `127.0.0.1`, `::1` and `localhost`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.mode.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The TLS mode, if any.
    pub fn tls_mode(&self) -> Option<TlsMode> {
        self.mode
    }

    /// The generated certificates (None without TLS).
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// The CA certificate file (PEM) clients must trust (None without TLS).
    pub fn ca_file(&self) -> Option<&Path> {
        self.pki.as_ref().map(|p| p.ca_file.as_path())
    }

    /// A client certificate file (PEM) the receiver accepts in mTLS mode (None without TLS).
    pub fn client_cert_file(&self) -> Option<&Path> {
        self.pki.as_ref().map(|p| p.client_cert_file.as_path())
    }

    /// The key (PKCS#8 PEM) of [`OtlpReceiver::client_cert_file`] (None without TLS).
    pub fn client_key_file(&self) -> Option<&Path> {
        self.pki.as_ref().map(|p| p.client_key_file.as_path())
    }

    /// The `hoptrace run` flags that point an agent at this receiver:
    /// `--otlp-endpoint <endpoint>`, plus `--otlp-ca-file` with TLS and
    /// `--otlp-client-cert`/`--otlp-client-key` with mTLS.
    pub fn agent_args(&self) -> Vec<String> {
        let mut args = vec!["--otlp-endpoint".to_owned(), self.endpoint()];
        if let Some(pki) = &self.pki {
            args.push("--otlp-ca-file".into());
            args.push(pki.ca_file.display().to_string());
            if self.mode == Some(TlsMode::MutualTls) {
                args.push("--otlp-client-cert".into());
                args.push(pki.client_cert_file.display().to_string());
                args.push("--otlp-client-key".into());
                args.push(pki.client_key_file.display().to_string());
            }
        }
        args
    }

    /// Every span received so far (accepted requests only), in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.clone()
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let want = trace_id.to_ascii_lowercase();
        self.shared
            .lock()
            .spans
            .iter()
            .filter(|s| s.trace_id == want)
            .cloned()
            .collect()
    }

    /// Spans accepted so far (counted also when [`ReceiverOptions::keep_spans`] is off).
    pub fn span_count(&self) -> usize {
        self.shared.lock().span_count
    }

    /// Export requests received so far, accepted or rejected.
    pub fn requests(&self) -> usize {
        self.shared.lock().requests
    }

    /// Export requests answered `UNAVAILABLE` because of [`OtlpReceiver::set_reject`].
    pub fn rejected(&self) -> usize {
        self.shared.lock().rejected
    }

    /// The metadata (HTTP/2 headers) of the last export request, names
    /// lowercase, repeated values joined with `", "`. Includes the gRPC
    /// protocol headers (`content-type`, `te`, `grpc-encoding` when compressed,
    /// `user-agent`, ...) and every custom header (`--otlp-header`).
    pub fn received_headers(&self) -> BTreeMap<String, String> {
        self.shared.lock().last_headers.clone()
    }

    /// Forgets every span, request count and header seen so far.
    pub fn clear(&self) {
        let mut st = self.shared.lock();
        let reject = st.reject;
        *st = State {
            reject,
            ..State::default()
        };
    }

    /// The accepted export requests, as received (what an agent sent, resource and
    /// all), e.g. to forward them to another collector.
    pub fn raw_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.shared.lock().raw.clone()
    }

    /// While `true`, every export is answered `UNAVAILABLE` and its spans are
    /// dropped (still counted in [`OtlpReceiver::requests`]).
    pub fn set_reject(&self, reject: bool) {
        self.shared.lock().reject = reject;
    }

    /// Waits until `done(spans)` holds for the spans received so far and
    /// returns them; fails after `timeout` with `what` and what was received.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if done(&st.spans) {
                return Ok(st.spans.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "OTLP receiver {}: {what} not seen after {timeout:?}; {} requests ({} rejected), {} spans:\n{}",
                    self.endpoint(),
                    st.requests,
                    st.rejected,
                    st.spans.len(),
                    summarize(&st.spans)
                );
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until at least `n` spans were received in all; returns all of them.
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> Result<Vec<ReceivedSpan>> {
        self.wait_until(&format!("{n} spans"), timeout, |s| s.len() >= n)
    }

    /// Waits until at least `n` spans of trace `trace_id` were received;
    /// returns that trace's spans.
    pub fn wait_for_trace(
        &self,
        trace_id: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>> {
        let want = trace_id.to_ascii_lowercase();
        let spans = self.wait_until(&format!("{n} spans of trace {want}"), timeout, |s| {
            s.iter().filter(|s| s.trace_id == want).count() >= n
        })?;
        Ok(spans.into_iter().filter(|s| s.trace_id == want).collect())
    }

    /// Waits until at least `n` export requests arrived (accepted or rejected).
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.requests >= n {
                return Ok(st.requests);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "OTLP receiver {}: {} export requests after {timeout:?}, wanted {n}",
                    self.endpoint(),
                    st.requests
                );
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// True while serving (between start/restart and stop).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Takes the receiver down abruptly: the listener and every open
    /// connection are closed (clients see resets / refused connections, as
    /// with a crashed collector). What was received is kept.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.runtime.shutdown_timeout(STOP_TIMEOUT);
        }
    }

    /// Starts serving again on the same address and port with the same
    /// certificates (stops first if running). Fails if the port was taken meanwhile.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            if std::thread::panicking() {
                eprintln!("OTLP receiver: certificates kept in {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope, KeyValueList};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use tonic::transport::{Channel, ClientTlsConfig};

    const WAIT: Duration = Duration::from_secs(10);

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    /// A request with `n` spans of trace 0102..10, span ids 1..=n, span k the
    /// child of span k-1.
    fn request(n: u8) -> ExportTraceServiceRequest {
        let trace_id: Vec<u8> = (1..=16).collect();
        let spans = (1..=n)
            .map(|k| Span {
                trace_id: trace_id.clone(),
                span_id: vec![0, 0, 0, 0, 0, 0, 0, k],
                parent_span_id: if k == 1 {
                    vec![]
                } else {
                    vec![0, 0, 0, 0, 0, 0, 0, k - 1]
                },
                name: format!("GET /{k}"),
                kind: if k % 2 == 1 {
                    span::SpanKind::Server as i32
                } else {
                    span::SpanKind::Client as i32
                },
                start_time_unix_nano: 1_000 + u64::from(k),
                end_time_unix_nano: 2_000 - u64::from(k),
                attributes: vec![
                    kv("http.request.method", s("GET")),
                    kv("http.response.status_code", any_value::Value::IntValue(503)),
                    kv("ok", any_value::Value::BoolValue(false)),
                    kv("ratio", any_value::Value::DoubleValue(0.5)),
                    kv(
                        "list",
                        any_value::Value::ArrayValue(ArrayValue {
                            values: vec![
                                AnyValue {
                                    value: Some(s("a")),
                                },
                                AnyValue {
                                    value: Some(any_value::Value::IntValue(2)),
                                },
                            ],
                        }),
                    ),
                    kv(
                        "map",
                        any_value::Value::KvlistValue(KeyValueList {
                            values: vec![kv("k", s("v"))],
                        }),
                    ),
                    kv("raw", any_value::Value::BytesValue(vec![0xab, 0x01])),
                ],
                status: Some(Status {
                    message: "upstream said 503".into(),
                    code: status::StatusCode::Error as i32,
                }),
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", s("hoptrace-proxy")),
                        kv("k8s.pod.name", s("client")),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "hoptrace".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    struct Client {
        endpoint: String,
        tls: Option<ClientTlsConfig>,
        gzip: bool,
        headers: Vec<(&'static str, &'static str)>,
    }

    impl Client {
        fn plain(endpoint: String) -> Client {
            Client {
                endpoint,
                tls: None,
                gzip: false,
                headers: vec![],
            }
        }

        fn export(&self, n: u8) -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime");
            rt.block_on(async {
                let mut ep = Channel::from_shared(self.endpoint.clone())
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(5));
                if let Some(tls) = &self.tls {
                    ep = ep.tls_config(tls.clone()).map_err(|e| e.to_string())?;
                }
                let channel = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
                let mut client = TraceServiceClient::new(channel);
                if self.gzip {
                    client = client.send_compressed(CompressionEncoding::Gzip);
                }
                let mut req = tonic::Request::new(request(n));
                for (k, v) in &self.headers {
                    req.metadata_mut()
                        .insert(*k, v.parse().map_err(|_| "bad header".to_string())?);
                }
                client
                    .export(req)
                    .await
                    .map(|_| ())
                    .map_err(|st| format!("{:?}: {}", st.code(), st.message()))
            })
        }
    }

    #[test]
    fn plain_receives_and_flattens_spans() {
        let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
        assert!(
            otlp.endpoint().starts_with("http://127.0.0.1:"),
            "{}",
            otlp.endpoint()
        );
        assert_eq!(otlp.ca_file(), None);
        assert_eq!(
            otlp.agent_args(),
            vec!["--otlp-endpoint".to_owned(), otlp.endpoint()]
        );
        let mut client = Client::plain(otlp.endpoint());
        client.headers = vec![("x-tenant", "lab"), ("authorization", "Bearer t0k")];
        client.export(3).expect("export");

        let spans = otlp.wait_for_spans(3, WAIT).expect("3 spans");
        assert_eq!(otlp.requests(), 1);
        let first = &spans[0];
        assert_eq!(first.trace_id, "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(first.span_id, "0000000000000001");
        assert_eq!(first.parent_span_id, "");
        assert_eq!(spans[1].parent_span_id, "0000000000000001");
        assert_eq!(first.kind, SpanKind::Server);
        assert_eq!(spans[1].kind, SpanKind::Client);
        assert_eq!(first.name, "GET /1");
        assert_eq!((first.start_unix_nano, first.end_unix_nano), (1001, 1999));
        assert_eq!(first.status_code, StatusCode::Error);
        assert_eq!(first.status_message, "upstream said 503");
        assert_eq!(first.attr("http.request.method"), Some("GET"));
        assert_eq!(first.attr("http.response.status_code"), Some("503"));
        assert_eq!(first.attr("ok"), Some("false"));
        assert_eq!(first.attr("ratio"), Some("0.5"));
        assert_eq!(first.attr("list"), Some("[a, 2]"));
        assert_eq!(first.attr("map"), Some("{k: v}"));
        assert_eq!(first.attr("raw"), Some("ab01"));
        assert_eq!(first.res("service.name"), Some("hoptrace-proxy"));
        assert_eq!(first.res("k8s.pod.name"), Some("client"));
        assert_eq!(first.scope_name, "hoptrace");
        assert_eq!(otlp.trace("0102030405060708090A0B0C0D0E0F10").len(), 3);
        assert_eq!(
            otlp.wait_for_trace("0102030405060708090a0b0c0d0e0f10", 3, WAIT)
                .expect("trace")
                .len(),
            3
        );

        let headers = otlp.received_headers();
        assert_eq!(headers.get("x-tenant").map(String::as_str), Some("lab"));
        assert_eq!(
            headers.get("authorization").map(String::as_str),
            Some("Bearer t0k")
        );
        assert_eq!(headers.get("grpc-encoding"), None, "{headers:?}");

        otlp.clear();
        assert_eq!((otlp.spans().len(), otlp.requests()), (0, 0));
        let err = otlp
            .wait_for_spans(1, Duration::from_millis(50))
            .unwrap_err();
        assert!(format!("{err:#}").contains("1 spans not seen"), "{err:#}");
    }

    /// `idle_while` moves the receiver's threads to SCHED_IDLE and back, and the
    /// receiver still answers meanwhile.
    #[test]
    fn idle_priority_while_held() {
        let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
        let policies = || -> Vec<libc::c_int> {
            let tids = otlp.threads.lock().expect("lock").clone();
            assert!(!tids.is_empty(), "the receiver's threads are known");
            // SAFETY: a thread id; -1 for one that exited.
            tids.iter()
                .map(|&t| unsafe { libc::sched_getscheduler(t) })
                .filter(|p| *p >= 0)
                .collect()
        };
        assert!(policies().iter().all(|p| *p == libc::SCHED_OTHER));
        {
            let _idle = otlp.idle_while();
            assert!(policies().iter().all(|p| *p == libc::SCHED_IDLE));
            Client::plain(otlp.endpoint()).export(2).expect("export");
            assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
        }
        assert!(policies().iter().all(|p| *p == libc::SCHED_OTHER));
    }

    #[test]
    fn gzip_requests_are_accepted() {
        let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
        let mut client = Client::plain(otlp.endpoint());
        client.gzip = true;
        client.export(2).expect("gzip export");
        assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
        assert_eq!(
            otlp.received_headers()
                .get("grpc-encoding")
                .map(String::as_str),
            Some("gzip")
        );
    }

    #[test]
    fn count_only_counts_spans_plain_and_gzip_and_honours_reject() {
        let otlp = OtlpReceiver::start(ReceiverOptions {
            keep_spans: false,
            ..ReceiverOptions::default()
        })
        .expect("start");
        let mut client = Client::plain(otlp.endpoint());
        client.export(3).expect("plain export");
        client.gzip = true;
        client.export(5).expect("gzip export");
        assert_eq!(otlp.wait_for_requests(2, WAIT).expect("requests"), 2);
        assert_eq!(otlp.span_count(), 8);
        assert!(otlp.spans().is_empty(), "count-only receiver kept spans");
        assert_eq!(
            otlp.received_headers()
                .get("grpc-encoding")
                .map(String::as_str),
            Some("gzip")
        );
        otlp.set_reject(true);
        let err = client
            .export(2)
            .expect_err("export accepted in reject mode");
        assert!(err.starts_with("Unavailable"), "{err}");
        assert_eq!((otlp.span_count(), otlp.rejected()), (8, 1));
    }

    #[test]
    fn server_tls() {
        let otlp = OtlpReceiver::start(ReceiverOptions::tls(TlsMode::ServerTls)).expect("start");
        let pki = otlp.pki().expect("pki").clone();
        assert!(otlp.endpoint().starts_with("https://127.0.0.1:"));
        for f in [
            otlp.ca_file(),
            otlp.client_cert_file(),
            otlp.client_key_file(),
        ] {
            assert!(f.expect("file").is_file());
        }
        let args = otlp.agent_args();
        assert_eq!(args.len(), 4, "{args:?}");
        assert_eq!(args[2], "--otlp-ca-file");

        // By IP (the endpoint as given) and by name.
        let mut client = Client::plain(otlp.endpoint());
        client.tls = Some(ClientTlsConfig::new().ca_certificate(pki.ca_certificate()));
        client.export(1).expect("TLS export by IP");
        client.tls = Some(
            ClientTlsConfig::new()
                .ca_certificate(pki.ca_certificate())
                .domain_name("localhost"),
        );
        client.gzip = true;
        client.export(1).expect("TLS export by name, gzip");
        assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);

        // A client that does not trust the test CA fails, and so does plain text.
        let other = TestPki::generate(&otlp.dir.as_ref().expect("dir").join("other"), "untrusted")
            .expect("other pki");
        client.tls = Some(ClientTlsConfig::new().ca_certificate(other.ca_certificate()));
        assert!(client.export(1).is_err(), "untrusted server cert accepted");
        client.tls = None;
        client.endpoint = otlp.endpoint().replace("https://", "http://");
        assert!(
            client.export(1).is_err(),
            "plain text accepted on a TLS port"
        );
        assert_eq!(otlp.requests(), 2);
    }

    #[test]
    fn mutual_tls_refuses_clients_without_a_valid_cert() {
        let otlp = OtlpReceiver::start(ReceiverOptions::tls(TlsMode::MutualTls)).expect("start");
        let pki = otlp.pki().expect("pki").clone();
        let args = otlp.agent_args();
        assert_eq!(args.len(), 8, "{args:?}");
        assert_eq!(
            (args[4].as_str(), args[6].as_str()),
            ("--otlp-client-cert", "--otlp-client-key")
        );

        let mut client = Client::plain(otlp.endpoint());
        client.tls = Some(ClientTlsConfig::new().ca_certificate(pki.ca_certificate()));
        let err = client
            .export(1)
            .expect_err("client without a cert accepted");
        eprintln!("no client cert: {err}");

        let other = TestPki::generate(&otlp.dir.as_ref().expect("dir").join("other"), "untrusted")
            .expect("other pki");
        client.tls = Some(
            ClientTlsConfig::new()
                .ca_certificate(pki.ca_certificate())
                .identity(other.client_identity()),
        );
        let err = client
            .export(1)
            .expect_err("client cert of another CA accepted");
        eprintln!("foreign client cert: {err}");
        assert_eq!(otlp.requests(), 0);

        client.tls = Some(
            ClientTlsConfig::new()
                .ca_certificate(pki.ca_certificate())
                .identity(pki.client_identity()),
        );
        client.gzip = true;
        client.export(2).expect("mTLS export");
        assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
        assert_eq!(otlp.requests(), 1);
    }

    #[test]
    fn stop_and_restart_on_the_same_port() {
        let mut otlp =
            OtlpReceiver::start(ReceiverOptions::tls(TlsMode::ServerTls)).expect("start");
        let endpoint = otlp.endpoint();
        let mut client = Client::plain(endpoint.clone());
        client.tls =
            Some(ClientTlsConfig::new().ca_certificate(otlp.pki().expect("pki").ca_certificate()));
        client.export(1).expect("export before stop");

        otlp.stop();
        assert!(!otlp.is_running());
        assert!(
            std::net::TcpStream::connect(otlp.addr()).is_err(),
            "port still open after stop"
        );
        assert!(client.export(1).is_err(), "export succeeded while stopped");

        otlp.restart().expect("restart");
        assert!(otlp.is_running());
        assert_eq!(otlp.endpoint(), endpoint, "restart moved the receiver");
        client.export(1).expect("export after restart (same CA)");
        assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
        assert_eq!(otlp.requests(), 2);

        // Restart while running and while a connection is open is fine too.
        otlp.restart().expect("second restart");
        client.export(1).expect("export after second restart");
        assert_eq!(otlp.spans().len(), 3);
    }

    /// A long-lived client connection (as an exporter keeps) is cut by stop()
    /// and the same channel gets through again after restart().
    #[test]
    fn stop_cuts_open_connections_and_a_channel_recovers() {
        let mut otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let _guard = rt.enter();
        let channel = Channel::from_shared(otlp.endpoint())
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect_lazy();
        let export = |n: u8| {
            let mut client = TraceServiceClient::new(channel.clone());
            rt.block_on(client.export(request(n))).map(|_| ())
        };
        export(1).expect("export on a fresh channel");
        otlp.stop();
        let err = export(1).expect_err("export through a stopped receiver");
        eprintln!("while stopped: {:?} {}", err.code(), err.message());
        otlp.restart().expect("restart");
        let start = Instant::now();
        while export(1).is_err() {
            assert!(
                start.elapsed() < WAIT,
                "the channel never reconnected after restart"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(otlp.spans().len(), 2);
    }

    #[test]
    fn reject_mode_answers_unavailable() {
        let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("start");
        let client = Client::plain(otlp.endpoint());
        otlp.set_reject(true);
        let err = client
            .export(2)
            .expect_err("export accepted in reject mode");
        assert!(err.starts_with("Unavailable"), "{err}");
        assert_eq!(
            (otlp.requests(), otlp.rejected(), otlp.spans().len()),
            (1, 1, 0)
        );
        assert_eq!(otlp.wait_for_requests(1, WAIT).expect("requests"), 1);

        otlp.set_reject(false);
        client.export(2).expect("export after reject mode");
        assert_eq!(otlp.wait_for_spans(2, WAIT).expect("spans").len(), 2);
        assert_eq!((otlp.requests(), otlp.rejected()), (2, 1));
    }
}
