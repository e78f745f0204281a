//! Driving the instrumented Python test apps (`tests/apps/`: backend.py,
//! web.py, client.py, and the gRPC pair grpc_server.py / grpc_client.py;
//! OpenTelemetry Python SDK 1.45, installed by `cargo xtask setup`) inside lab
//! pods, and reading the spans they record.
//!
//! Pods can't reach the host's loopback, so the apps don't export over the
//! network: each writes its finished spans as JSON lines to a file (env
//! `SPAN_FILE`, one file per app process under the lab's temp dir), read back
//! here as [`AppSpan`]s. Their stdout/stderr go to `<lab tmp>/py-<pod>-<app>.log`.
//!
//! ```ignore
//! let apps = PyApps::new(&lab)?.with_propagation(Propagation::B3Multi);
//! let backend = apps.backend(&backend_pod, 8080)?;
//! let web = apps.web(&web_pod, 8080, &backend.url(""))?;
//! let run = apps.client(&client_pod, &web.url("/hello"), &ClientOptions::default())?;
//! let answer = run.requests[0].answer()?;          // web's JSON answer
//! let seen_by_backend = answer.backend_answer()?;   // backend's, embedded
//!
//! let grpc = apps.grpc_server(&server_pod, 50051)?;
//! let calls = [GrpcCall::count(3, 10)];
//! let run = apps.grpc_client(&client_pod, grpc.addr, &calls, &GrpcOptions::default())?;
//! assert_eq!(run.calls[0].replies.len(), 3);
//! ```

use crate::otlp::SpanKind;
use crate::{Lab, Pod, PodProcess};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long an app server may take to start listening (Python imports are slow).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one client.py run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Modules the apps import; missing ones mean `cargo xtask setup` was not run.
const MODULES: &str =
    "opentelemetry.sdk.trace, opentelemetry.propagators.b3, opentelemetry.instrumentation.requests, requests";
/// Modules the gRPC apps import on top of [`MODULES`] (checked when one starts).
const GRPC_MODULES: &str = "grpc, grpc_tools.protoc, opentelemetry.instrumentation.grpc";

/// Trace-context format the apps inject and extract (`OTEL_PROPAGATORS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// W3C `traceparent`/`tracestate` (`tracecontext`).
    #[default]
    TraceContext,
    /// B3 multi-header: `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled` (`b3multi`).
    B3Multi,
    /// B3 single header `b3: {trace}-{span}-{sampled}` (`b3`).
    B3Single,
}

impl Propagation {
    /// The `OTEL_PROPAGATORS` value.
    pub fn env_value(self) -> &'static str {
        match self {
            Propagation::TraceContext => "tracecontext",
            Propagation::B3Multi => "b3multi",
            Propagation::B3Single => "b3",
        }
    }
}

/// One span recorded by a Python app (a line of its span file).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AppSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits, `""` for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// `SERVER`, `CLIENT`, `INTERNAL`, ... (see [`AppSpan::span_kind`]).
    pub kind: String,
    /// Start, ns since the Unix epoch.
    pub start_ns: u64,
    /// End, ns since the Unix epoch.
    pub end_ns: u64,
    /// Span attributes as recorded.
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// `UNSET`, `OK` or `ERROR`.
    pub status: String,
    /// `service.name` of the app (`client`, `web`, `backend` by default).
    pub service: String,
}

impl AppSpan {
    /// The kind as an OTLP [`SpanKind`].
    pub fn span_kind(&self) -> SpanKind {
        match self.kind.as_str() {
            "SERVER" => SpanKind::Server,
            "CLIENT" => SpanKind::Client,
            "INTERNAL" => SpanKind::Internal,
            "PRODUCER" => SpanKind::Producer,
            "CONSUMER" => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    /// The attribute `key` stringified (strings bare, numbers and bools as JSON).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// Reads a span file (JSON lines). A missing file is no spans; a trailing
/// line without a newline (being written) is ignored.
pub fn read_span_file(path: &Path) -> Result<Vec<AppSpan>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("bad span line in {}: {l}", path.display()))
        })
        .collect()
}

/// The JSON answer of backend.py / web.py.
#[derive(Clone, Debug, Deserialize)]
pub struct AppAnswer {
    /// `backend` or `web`.
    pub app: String,
    /// Request method as received.
    pub method: String,
    /// Request target as received (path and query).
    pub path: String,
    /// The request headers exactly as received: names in the received case, in order.
    pub headers: Vec<(String, String)>,
    /// The peer address of the connection (`ip:port`) as the app saw it.
    pub peer: String,
    /// The status the app answered with.
    pub status: u16,
    /// Trace id of the app's SERVER span.
    pub trace_id: String,
    /// Span id of the app's SERVER span.
    pub span_id: String,
    /// The parent span id the app extracted from the request (`""`: none).
    pub parent_span_id: String,
    /// Whether the app's SERVER span is sampled.
    pub sampled: bool,
    /// web.py only: what the backend answered.
    #[serde(default)]
    pub backend: Option<BackendCall>,
}

/// web.py's call to its backend.
#[derive(Clone, Debug, Deserialize)]
pub struct BackendCall {
    /// The backend's status code (0 when the call failed).
    pub status: u16,
    /// The backend's answer (JSON, or a string when not JSON).
    #[serde(default)]
    pub body: serde_json::Value,
    /// The error when the call failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl AppAnswer {
    /// The first received header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The peer's IP (without the port).
    pub fn peer_ip(&self) -> Result<std::net::IpAddr> {
        let addr: SocketAddr = self
            .peer
            .parse()
            .or_else(|_| format!("[{}]", self.peer).parse())
            .or_else(|_| {
                // "fd00::2:40000" as printed by Python for IPv6
                let (ip, port) = self.peer.rsplit_once(':').context("no port")?;
                format!("[{ip}]:{port}").parse().context("bad address")
            })
            .with_context(|| format!("bad peer {:?}", self.peer))?;
        Ok(addr.ip())
    }

    /// web.py only: the backend's answer, parsed.
    pub fn backend_answer(&self) -> Result<AppAnswer> {
        let call = self
            .backend
            .as_ref()
            .with_context(|| format!("the {} app made no backend call", self.app))?;
        if let Some(e) = &call.error {
            bail!("web's backend call failed: {e}");
        }
        serde_json::from_value(call.body.clone())
            .with_context(|| format!("backend answer is not an app answer: {}", call.body))
    }
}

/// The first header called `name` (case-insensitive) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) a proxy may legitimately drop or change.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

/// `headers` as a sorted multiset of (lowercase name, value), minus the
/// hop-by-hop headers and the names in `except` (case-insensitive): equal for
/// two header lists that carry the same end-to-end headers, whatever the
/// name case and order.
pub fn end_to_end(headers: &[(String, String)], except: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
        .filter(|(k, _)| !except.iter().any(|e| e.eq_ignore_ascii_case(k)))
        .collect();
    out.sort();
    out
}

/// What to do about trace context in client.py.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientContext {
    /// A sampled root CLIENT span per request, its context injected.
    #[default]
    Sampled,
    /// An unsampled root span: the header carries valid ids, sampled flag off
    /// (`--unsampled`); no span recorded.
    Unsampled,
    /// No span and no trace header at all (`--no-context`).
    None,
}

/// Options of one client.py run.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Number of requests (default 1), sequential.
    pub count: usize,
    /// Trace context (default: sampled).
    pub context: ClientContext,
    /// Extra request headers, sent after the defaults (a `tracestate` here
    /// goes out as given next to the `traceparent`).
    pub headers: Vec<(String, String)>,
    /// `User-Agent` (default `hoptrace-pyclient/1.0`).
    pub user_agent: Option<String>,
    /// A new connection per request (default: one keep-alive connection).
    pub new_connection: bool,
    /// Method (default GET).
    pub method: Option<String>,
    /// Request body.
    pub data: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            count: 1,
            context: ClientContext::Sampled,
            headers: Vec::new(),
            user_agent: None,
            new_connection: false,
            method: None,
            data: None,
        }
    }
}

/// The default `User-Agent` of client.py.
pub const CLIENT_USER_AGENT: &str = "hoptrace-pyclient/1.0";

/// One request made by client.py (one JSON line of its output).
#[derive(Clone, Debug, Deserialize)]
pub struct ClientRequest {
    /// HTTP status (0 when the request failed).
    pub status: u16,
    /// Trace id of the request's span (None with `ClientContext::None`).
    pub trace_id: Option<String>,
    /// Span id of the request's span, i.e. the parent id it sent.
    pub span_id: Option<String>,
    /// Whether that span was sampled.
    pub sampled: Option<bool>,
    /// The request headers exactly as sent (Host included), in order.
    pub sent_headers: Vec<(String, String)>,
    /// The response body (JSON, or a string when not JSON).
    pub body: serde_json::Value,
    /// The error when the request failed.
    pub error: Option<String>,
}

impl ClientRequest {
    /// The server's answer, parsed.
    pub fn answer(&self) -> Result<AppAnswer> {
        if let Some(e) = &self.error {
            bail!("client request failed: {e}");
        }
        serde_json::from_value(self.body.clone()).with_context(|| {
            format!(
                "answer (status {}) is not an app answer: {}",
                self.status, self.body
            )
        })
    }

    /// The trace id, or an error for a request without context.
    pub fn trace_id(&self) -> Result<&str> {
        self.trace_id
            .as_deref()
            .context("request sent without trace context")
    }

    /// The first sent header called `name` (case-insensitive).
    pub fn sent_header(&self, name: &str) -> Option<&str> {
        header(&self.sent_headers, name)
    }
}

/// The outcome of one client.py run.
#[derive(Clone, Debug)]
pub struct ClientRun {
    /// One entry per request, in order.
    pub requests: Vec<ClientRequest>,
    /// The client's recorded spans (one CLIENT span per sampled request).
    pub spans: Vec<AppSpan>,
    /// The client's stderr.
    pub stderr: String,
}

/// A running backend.py or web.py in a pod (killed on drop).
pub struct PyServer {
    /// The process.
    pub process: PodProcess,
    /// `backend`, `web` or `grpc_server`.
    pub app: String,
    /// The pod it runs in.
    pub pod: String,
    /// Address it listens on (the pod's IPv4 address and the port).
    pub addr: SocketAddr,
    span_file: PathBuf,
    log_file: PathBuf,
}

impl PyServer {
    /// `http://<addr><path>`, e.g. `url("/hello")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The span file.
    pub fn span_file(&self) -> &Path {
        &self.span_file
    }

    /// The spans recorded so far.
    pub fn spans(&self) -> Result<Vec<AppSpan>> {
        read_span_file(&self.span_file)
    }

    /// Waits until `n` spans of trace `trace_id` are recorded; returns them.
    pub fn wait_for_trace(
        &self,
        trace_id: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<AppSpan>> {
        let start = Instant::now();
        loop {
            let spans: Vec<AppSpan> = self
                .spans()?
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if spans.len() >= n {
                return Ok(spans);
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} in pod {}: {} spans of trace {trace_id} after {timeout:?}, wanted {n}; log:\n{}",
                    self.app,
                    self.pod,
                    spans.len(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The app's stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

/// Starts the Python apps in lab pods. Files go to the lab's temp dir.
pub struct PyApps {
    python: String,
    dir: PathBuf,
    out: PathBuf,
    propagation: Propagation,
    seq: AtomicUsize,
}

/// The directory holding the apps (`tests/apps`).
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// The Python interpreter: `$HOPTRACE_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("HOPTRACE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Fails with the fix when Python or the apps' packages are missing.
pub fn check_python() -> Result<()> {
    check_modules(MODULES)
}

/// Fails with the fix when Python can't import `modules` (comma-separated).
fn check_modules(modules: &str) -> Result<()> {
    let py = python();
    let out = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .with_context(|| format!("running {py} (Python 3.11 runs the test apps)"))?;
    if !out.status.success() {
        bail!(
            "{py} cannot import the test apps' packages ({modules}): run `cargo xtask setup`\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl PyApps {
    /// Apps for `lab`, tracecontext propagation. Checks Python and its packages.
    pub fn new(lab: &Lab) -> Result<PyApps> {
        check_python()?;
        Ok(PyApps {
            python: python(),
            dir: apps_dir(),
            out: lab.tmp_dir().to_owned(),
            propagation: Propagation::TraceContext,
            seq: AtomicUsize::new(0),
        })
    }

    /// Uses `propagation` for every app started from now on.
    pub fn with_propagation(mut self, propagation: Propagation) -> PyApps {
        self.propagation = propagation;
        self
    }

    /// The propagation in use.
    pub fn propagation(&self) -> Propagation {
        self.propagation
    }

    fn command(&self, script: &str, span_file: &Path) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg("-u")
            .arg(self.dir.join(script))
            .env("SPAN_FILE", span_file)
            .env("OTEL_PROPAGATORS", self.propagation.env_value())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // Nothing from the test's environment may change what the apps record.
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_TRACES_SAMPLER")
            .env_remove("OTEL_SDK_DISABLED");
        cmd
    }

    fn files(&self, pod: &Pod, app: &str) -> (PathBuf, PathBuf) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let stem = format!("py-{}-{app}-{n}", pod.name);
        (
            self.out.join(format!("{stem}.spans.jsonl")),
            self.out.join(format!("{stem}.log")),
        )
    }

    fn server(&self, pod: &Pod, app: &str, port: u16, extra: &[&str]) -> Result<PyServer> {
        let (span_file, log_file) = self.files(pod, app);
        let addr = pod.addr(port);
        let mut cmd = self.command(&format!("{app}.py"), &span_file);
        cmd.args(["--listen", &format!("0.0.0.0:{port}")])
            .args(extra);
        let log = std::fs::File::create(&log_file)
            .with_context(|| format!("creating {}", log_file.display()))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let mut process = pod.spawn(cmd)?;
        if let Err(e) = process.wait_listening(port, LISTEN_TIMEOUT) {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            bail!("{app}.py in pod {}: {e:#}\nlog:\n{log}", pod.name);
        }
        Ok(PyServer {
            process,
            app: app.to_owned(),
            pod: pod.name.clone(),
            addr,
            span_file,
            log_file,
        })
    }

    /// Starts backend.py in `pod` on `0.0.0.0:<port>` and waits until it listens.
    pub fn backend(&self, pod: &Pod, port: u16) -> Result<PyServer> {
        self.server(pod, "backend", port, &[])
    }

    /// Starts web.py in `pod` on `0.0.0.0:<port>`, calling `backend_url`
    /// (e.g. `backend.url("")`) + the request's path; waits until it listens.
    pub fn web(&self, pod: &Pod, port: u16, backend_url: &str) -> Result<PyServer> {
        self.server(pod, "web", port, &["--backend", backend_url])
    }

    /// Runs client.py in `pod` against `url` to completion. `Ok` as long as
    /// it printed one line per request (check each request's status/error).
    pub fn client(&self, pod: &Pod, url: &str, opts: &ClientOptions) -> Result<ClientRun> {
        let (span_file, _) = self.files(pod, "client");
        let mut cmd = self.command("client.py", &span_file);
        cmd.args(["--url", url, "--count", &opts.count.to_string()]);
        match opts.context {
            ClientContext::Sampled => {}
            ClientContext::Unsampled => {
                cmd.arg("--unsampled");
            }
            ClientContext::None => {
                cmd.arg("--no-context");
            }
        }
        for (k, v) in &opts.headers {
            cmd.args(["--header", &format!("{k}: {v}")]);
        }
        if let Some(ua) = &opts.user_agent {
            cmd.args(["--user-agent", ua]);
        }
        if opts.new_connection {
            cmd.arg("--new-connection");
        }
        if let Some(m) = &opts.method {
            cmd.args(["--method", m]);
        }
        if let Some(d) = &opts.data {
            cmd.args(["--data", d]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = pod.run(cmd, CLIENT_TIMEOUT)?;
        let requests: Vec<ClientRequest> = json_lines(&out.stdout, "client.py")?;
        if requests.len() != opts.count {
            bail!(
                "client.py in pod {} printed {} of {} requests ({})\nstdout: {}\nstderr: {}",
                pod.name,
                requests.len(),
                opts.count,
                out.status,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        Ok(ClientRun {
            requests,
            spans: read_span_file(&span_file)?,
            stderr: out.stderr,
        })
    }

    /// Starts grpc_server.py (the `hoptrace.test.Echo` service) in `pod` on
    /// `0.0.0.0:<port>` and waits until it listens.
    pub fn grpc_server(&self, pod: &Pod, port: u16) -> Result<PyServer> {
        check_modules(GRPC_MODULES)?;
        self.server(pod, "grpc_server", port, &[])
    }

    /// Runs grpc_client.py in `pod`: `calls` to `target` on one channel (one
    /// HTTP/2 connection, connected before the first call). `Ok` as long as
    /// it printed one line per call (check each call's `code`).
    pub fn grpc_client(
        &self,
        pod: &Pod,
        target: SocketAddr,
        calls: &[GrpcCall],
        opts: &GrpcOptions,
    ) -> Result<GrpcRun> {
        check_modules(GRPC_MODULES)?;
        let (span_file, _) = self.files(pod, "grpc_client");
        let mut cmd = self.command("grpc_client.py", &span_file);
        cmd.args(["--target", &target.to_string()])
            .args(["--calls", &serde_json::to_string(calls)?])
            .args(["--idle-ms", &opts.idle.as_millis().to_string()])
            .args(["--slow-start-ms", &opts.slow_start.as_millis().to_string()]);
        if opts.concurrent {
            cmd.arg("--concurrent");
        }
        let out = pod.run(cmd, CLIENT_TIMEOUT)?;
        let results: Vec<GrpcCallOutcome> = json_lines(&out.stdout, "grpc_client.py")?;
        if results.len() != calls.len() || !out.status.success() {
            bail!(
                "grpc_client.py in pod {} printed {} of {} calls ({})\nstdout: {}\nstderr: {}",
                pod.name,
                results.len(),
                calls.len(),
                out.status,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        Ok(GrpcRun {
            calls: results,
            spans: read_span_file(&span_file)?,
            stderr: out.stderr,
        })
    }
}

/// The JSON lines (those starting with `{`) of an app's stdout, parsed.
fn json_lines<T: serde::de::DeserializeOwned>(stdout: &str, app: &str) -> Result<Vec<T>> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad {app} line {l}")))
        .collect()
}

/// How grpc_client.py makes its calls.
#[derive(Clone, Debug, Default)]
pub struct GrpcOptions {
    /// All calls at once (streams multiplexed on the connection); default:
    /// one after another.
    pub concurrent: bool,
    /// Pause between connecting the channel and the first call.
    pub idle: Duration,
    /// Dial through a relay (in the client process) that connects at once
    /// but holds the client's bytes, the HTTP/2 preface first, this long:
    /// the server's SETTINGS come first (`--slow-start-ms`).
    pub slow_start: Duration,
}

/// One call of grpc_client.py to `hoptrace.test.Echo` (tests/apps/hoptrace_echo.proto).
#[derive(Clone, Debug, Serialize)]
pub struct GrpcCall {
    /// `Say` (unary) or `Count` (server streaming).
    pub method: &'static str,
    /// Say: the text to echo.
    pub text: String,
    /// The gRPC status the server answers with (0 = OK). Say: instead of the
    /// reply (trailers-only response); Count: after the messages.
    pub code: i32,
    /// Say: how long the server takes (ms).
    pub delay_ms: u32,
    /// Count: number of messages.
    pub n: u32,
    /// Count: pause between messages (ms).
    pub interval_ms: u32,
}

impl GrpcCall {
    /// A unary `Say(text)`.
    pub fn say(text: &str) -> GrpcCall {
        GrpcCall {
            method: "Say",
            text: text.to_owned(),
            code: 0,
            delay_ms: 0,
            n: 0,
            interval_ms: 0,
        }
    }

    /// A server-streaming `Count`: `n` messages `interval_ms` apart.
    pub fn count(n: u32, interval_ms: u32) -> GrpcCall {
        GrpcCall {
            method: "Count",
            n,
            interval_ms,
            ..GrpcCall::say("")
        }
    }

    /// Ends the call with gRPC status `code` (e.g. 5 = NOT_FOUND).
    pub fn with_code(mut self, code: i32) -> GrpcCall {
        self.code = code;
        self
    }

    /// Makes the server take `ms` before answering (Say).
    pub fn with_delay(mut self, ms: u32) -> GrpcCall {
        self.delay_ms = ms;
        self
    }
}

/// One reply message, with what grpc_server.py saw of the call.
#[derive(Clone, Debug, Deserialize)]
pub struct GrpcReply {
    /// Say: the text; Count: the message number.
    pub text: String,
    /// Count: 0 .. n-1.
    pub seq: u32,
    /// The peer as gRPC reports it, e.g. `ipv4:10.1.1.2:40000`.
    pub peer: String,
    /// Trace id of the server's SERVER span.
    pub trace_id: String,
    /// Span id of the server's SERVER span.
    pub span_id: String,
    /// The parent span id it extracted from the metadata (`""`: none).
    pub parent_span_id: String,
    /// The call's metadata as received, in order.
    pub metadata: Vec<(String, String)>,
}

impl GrpcReply {
    /// The first received metadata entry called `name` (case-insensitive).
    pub fn metadata(&self, name: &str) -> Option<&str> {
        header(&self.metadata, name)
    }
}

/// One call made by grpc_client.py (one JSON line of its output).
#[derive(Clone, Debug, Deserialize)]
pub struct GrpcCallOutcome {
    /// `Say` or `Count`.
    pub method: String,
    /// Trace id of the call's root CLIENT span.
    pub trace_id: String,
    /// Span id of that span, i.e. the parent id it sent.
    pub span_id: String,
    /// Whether that span was sampled.
    pub sampled: bool,
    /// The trace metadata as sent.
    pub sent_metadata: Vec<(String, String)>,
    /// gRPC status name (`OK`, `NOT_FOUND`, ...).
    pub code: String,
    /// gRPC status code (0 = OK).
    pub code_value: i64,
    /// The status message.
    pub details: String,
    /// Every message received, in order.
    pub replies: Vec<GrpcReply>,
}

/// The outcome of one grpc_client.py run.
#[derive(Clone, Debug)]
pub struct GrpcRun {
    /// One entry per call, in the order given.
    pub calls: Vec<GrpcCallOutcome>,
    /// The client's recorded spans (one CLIENT span per call).
    pub spans: Vec<AppSpan>,
    /// The client's stderr.
    pub stderr: String,
}

#[cfg(test)]
mod tests;
