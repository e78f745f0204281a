//! Driving the plain web apps of the context-propagation tests (issue 13) in lab
//! pods: `tests/apps/plain_web.py` (a thread per connection), `PlainWeb.java` (a
//! fixed thread pool) and `plain_web.js` (one event loop). None of them uses a
//! tracing library or forwards any header: for `GET /work/<tag>?calls=N` each calls
//! its backend N times at `/echo/<tag>/<i>` and answers JSON saying what it did
//! ([`WebAnswer`]). `tests/apps/plain_load.py` is the concurrent client: every
//! request with its own sampled W3C trace ([`LoadRequest`]).
//!
//! ```ignore
//! let plain = PlainApps::new(&lab)?;
//! let web = plain.web(WebKind::Threaded, &web_pod, 8080, &backend.url(""))?;
//! let run = plain.load(&client_pod, &web, &LoadOptions { count: 500, concurrency: 128, ..Default::default() })?;
//! for req in &run.requests { let answer = req.answer()?; /* answer.calls[0].backend()? */ }
//! ```
//!
//! Output of every process goes to `<lab tmp>/plain-<pod>-<app>-<n>.log`; Java is
//! compiled once per [`PlainApps`] into `<lab tmp>/plain-java/`.

use crate::pyapp::{self, AppAnswer};
use crate::{Lab, Pod, PodProcess, Propagation};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a web app may take to listen (a JVM starting on a busy machine).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one plain_load.py run.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// The app model of a plain web app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebKind {
    /// plain_web.py: `ThreadingHTTPServer` + `urllib.request`.
    Threaded,
    /// PlainWeb.java: `com.sun.net.httpserver` with a 16-thread pool + `HttpURLConnection`.
    JavaPool,
    /// plain_web.js: Node.js `http` server + `http.request` on one event loop.
    NodeLoop,
}

impl WebKind {
    /// Short name, used in file names and messages.
    pub fn name(self) -> &'static str {
        match self {
            WebKind::Threaded => "plain_web_py",
            WebKind::JavaPool => "plain_web_java",
            WebKind::NodeLoop => "plain_web_js",
        }
    }
}

/// What the web app answered (its JSON).
#[derive(Clone, Debug, Deserialize)]
pub struct WebAnswer {
    /// `plain_web`, `plain_web_java` or `plain_web_js`.
    pub app: String,
    /// The tag of the request path.
    pub tag: String,
    /// The app thread that served the request (`main` for Node).
    pub thread: String,
    /// The request headers as the app received them.
    pub headers: Vec<(String, String)>,
    /// Its backend calls, in order.
    pub calls: Vec<WebCall>,
}

impl WebAnswer {
    /// The first received header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        pyapp::header(&self.headers, name)
    }
}

/// One backend call of a web app.
#[derive(Clone, Debug, Deserialize)]
pub struct WebCall {
    /// `/echo/<tag>/<i>`.
    pub path: String,
    /// The backend's status (0 when the call failed).
    pub status: u16,
    /// How many requests the web app was serving when it made the call (this one
    /// included; Node: requests between their head and their answer).
    pub in_flight: u32,
    /// The backend's answer (JSON, or text).
    #[serde(default)]
    pub body: serde_json::Value,
    /// The error when the call failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl WebCall {
    /// The answer of backend.py (tests/apps/backend.py): what it received.
    pub fn backend(&self) -> Result<AppAnswer> {
        if let Some(e) = &self.error {
            bail!("backend call {} failed: {e}", self.path);
        }
        serde_json::from_value(self.body.clone())
            .with_context(|| format!("{}: not a backend.py answer: {}", self.path, self.body))
    }
}

/// Options of one plain_load.py run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Requests in all (default 1).
    pub count: usize,
    /// Requests in flight at once: client threads, each with its own keep-alive
    /// connection (default 1: one after another).
    pub concurrency: usize,
    /// Backend calls per request (`calls=`, default 1).
    pub calls: usize,
    /// Wait in the web app before its first backend call (`delay_ms=`, default 0).
    pub delay_ms: u64,
    /// Tag prefix: request i is `/work/<prefix><i>` (default `r`).
    pub prefix: String,
    /// The format of each request's context (default W3C `traceparent`).
    pub propagation: Propagation,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            count: 1,
            concurrency: 1,
            calls: 1,
            delay_ms: 0,
            prefix: "r".into(),
            propagation: Propagation::TraceContext,
        }
    }
}

/// One request of plain_load.py.
#[derive(Clone, Debug, Deserialize)]
pub struct LoadRequest {
    /// The request's tag (`<prefix><i>`).
    pub tag: String,
    /// The trace id it was sent with (32 hex, sampled).
    pub trace_id: String,
    /// The parent span id it was sent with: the client's span (16 hex).
    pub span_id: String,
    /// HTTP status (0 when it failed).
    pub status: u16,
    /// The web's answer (JSON or text).
    #[serde(default)]
    pub body: serde_json::Value,
    /// The error when it failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl LoadRequest {
    /// The web app's answer, parsed.
    pub fn answer(&self) -> Result<WebAnswer> {
        if let Some(e) = &self.error {
            bail!("request {} failed: {e}", self.tag);
        }
        serde_json::from_value(self.body.clone()).with_context(|| {
            format!(
                "request {} (status {}): not a web answer: {}",
                self.tag, self.status, self.body
            )
        })
    }
}

/// The outcome of one plain_load.py run.
#[derive(Clone, Debug)]
pub struct LoadRun {
    /// One entry per request, in request order.
    pub requests: Vec<LoadRequest>,
    /// How long the run took (process start to exit).
    pub elapsed: Duration,
}

/// A running plain web app (killed on drop).
pub struct PlainServer {
    /// The process.
    pub process: PodProcess,
    /// Its app model.
    pub kind: WebKind,
    /// The pod it runs in.
    pub pod: String,
    /// Where it listens (the pod's IPv4 address).
    pub addr: SocketAddr,
    log_file: PathBuf,
}

impl PlainServer {
    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The app's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

/// Starts the plain apps in lab pods.
pub struct PlainApps {
    dir: PathBuf,
    out: PathBuf,
    seq: AtomicUsize,
    java_classes: OnceLock<std::result::Result<PathBuf, String>>,
}

impl PlainApps {
    /// Apps for `lab` (files in its temp dir).
    pub fn new(lab: &Lab) -> Result<PlainApps> {
        Ok(PlainApps {
            dir: pyapp::apps_dir(),
            out: lab.tmp_dir().to_owned(),
            seq: AtomicUsize::new(0),
            java_classes: OnceLock::new(),
        })
    }

    fn log_file(&self, pod: &Pod, app: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.out.join(format!("plain-{}-{app}-{n}.log", pod.name))
    }

    /// Compiles PlainWeb.java once (`javac`, from `cargo xtask setup`'s JDK).
    fn java_classes(&self) -> Result<PathBuf> {
        let result = self.java_classes.get_or_init(|| {
            let dest = self.out.join("plain-java");
            let out = Command::new("javac")
                .arg("-d")
                .arg(&dest)
                .arg(self.dir.join("PlainWeb.java"))
                .output()
                .map_err(|e| format!("running javac (run `cargo xtask setup`): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "javac PlainWeb.java failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(dest)
        });
        result.clone().map_err(anyhow::Error::msg)
    }

    fn command(&self, kind: WebKind) -> Result<Command> {
        Ok(match kind {
            WebKind::Threaded => {
                let mut cmd = Command::new(pyapp::python());
                cmd.arg("-u").arg(self.dir.join("plain_web.py"));
                cmd
            }
            WebKind::JavaPool => {
                let classes = self.java_classes()?;
                let mut cmd = Command::new("java");
                // IPv4 sockets (the lab apps listen on the pod's IPv4 address), and a
                // small JVM for a 2-core machine.
                cmd.args([
                    "-Djava.net.preferIPv4Stack=true",
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",
                    "-Xmx128m",
                    "-cp",
                ])
                .arg(classes)
                .arg("PlainWeb");
                cmd
            }
            WebKind::NodeLoop => {
                let mut cmd = Command::new("node");
                cmd.arg(self.dir.join("plain_web.js"));
                cmd
            }
        })
    }

    /// Starts the `kind` web app in `pod` on `0.0.0.0:<port>`, calling `backend_url`
    /// (e.g. `backend.url("")`), and waits until it listens.
    pub fn web(
        &self,
        kind: WebKind,
        pod: &Pod,
        port: u16,
        backend_url: &str,
    ) -> Result<PlainServer> {
        let mut cmd = self.command(kind)?;
        cmd.args([
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--backend",
            backend_url,
        ])
        .env("PYTHONDONTWRITEBYTECODE", "1");
        let log_file = self.log_file(pod, kind.name());
        let log = std::fs::File::create(&log_file)
            .with_context(|| format!("creating {}", log_file.display()))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let mut process = pod.spawn(cmd)?;
        if let Err(e) = process.wait_listening(port, LISTEN_TIMEOUT) {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            bail!("{} in pod {}: {e:#}\nlog:\n{log}", kind.name(), pod.name);
        }
        Ok(PlainServer {
            process,
            kind,
            pod: pod.name.clone(),
            addr: pod.addr(port),
            log_file,
        })
    }

    /// Runs plain_load.py in `pod` against `web` to completion. `Ok` when it printed
    /// one line per request (check each request's status).
    pub fn load(&self, pod: &Pod, web: &PlainServer, opts: &LoadOptions) -> Result<LoadRun> {
        let mut cmd = Command::new(pyapp::python());
        cmd.arg("-u")
            .arg(self.dir.join("plain_load.py"))
            .args(["--base", &web.url("")])
            .args(["--count", &opts.count.to_string()])
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["--calls", &opts.calls.to_string()])
            .args(["--delay-ms", &opts.delay_ms.to_string()])
            .args(["--prefix", &opts.prefix])
            .args(["--propagation", opts.propagation.env_value()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = std::time::Instant::now();
        let out = pod.run(cmd, LOAD_TIMEOUT)?;
        let elapsed = start.elapsed();
        let requests: Vec<LoadRequest> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad plain_load line {l}")))
            .collect::<Result<_>>()?;
        if requests.len() != opts.count {
            bail!(
                "plain_load.py in pod {} printed {} of {} requests ({})\nstderr: {}",
                pod.name,
                requests.len(),
                opts.count,
                out.status,
                out.stderr.trim()
            );
        }
        Ok(LoadRun { requests, elapsed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_load_lines_and_answers() {
        let line = r#"{"tag": "r3", "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331",
            "status": 200, "error": null, "body": {"app": "plain_web", "tag": "r3", "thread": "Thread-4",
            "headers": [["Host", "10.1.1.3:8080"], ["traceparent", "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"]],
            "calls": [{"path": "/echo/r3/0", "status": 200, "in_flight": 2, "error": null,
                       "body": {"app": "backend", "method": "GET", "path": "/echo/r3/0", "headers": [], "peer": "10.1.1.3:4000",
                                "status": 200, "trace_id": "ab", "span_id": "cd", "parent_span_id": "ef", "sampled": true}}]}}"#;
        let req: LoadRequest = serde_json::from_str(&line.replace('\n', " ")).expect("line");
        let answer = req.answer().expect("answer");
        assert_eq!(answer.tag, "r3");
        assert_eq!(
            answer.header("TraceParent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01")
        );
        let backend = answer.calls[0].backend().expect("backend");
        assert_eq!(backend.parent_span_id, "ef");
        assert_eq!(backend.path, "/echo/r3/0");
    }
}
