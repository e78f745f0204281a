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
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

mod pki;
mod spans;
pub use pki::TestPki;
pub use spans::{flatten, stringify, summarize, ReceivedSpan, SpanKind, StatusCode};

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

#[cfg(test)]
mod tests;
