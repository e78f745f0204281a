//! `hoptrace dashboard`: the golden metrics and live requests in a browser (issue 12).
//!
//! A small read-only HTTP server: `GET /` is one page (HTML, JavaScript and inline SVG
//! compiled into the binary, nothing fetched from elsewhere) that polls the JSON views
//! below every few seconds and draws the topology, the workloads and the tap.
//!
//! - `GET /api/edges`, `/api/workloads`, `/api/routes?namespace=&name=`: the rows of
//!   `hoptrace edges -o json`, `stat -o json` and `stat route -o json`, kept fresh by a
//!   background task (with `--agent`: a scrape every [`SCRAPE_EVERY`], rates over the
//!   window between the latest scrape and one a window older; with `--prometheus`: the
//!   PromQL queries), so a request is answered at once.
//! - `GET /api/status`: refresh counter, last error, source, window, trace URL template.
//! - `GET /api/tap`: Server-Sent Events, one `data:` line per request from the agents'
//!   `GET /tap` (agents started with `--tap`); `event: notice` lines say why there is
//!   none (tap off, or `--prometheus`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper::{header, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::stat::{self, View};
use super::{query, render, tap};

/// How often the agents are scraped (and the rows recomputed).
pub const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// How often Prometheus is queried.
const QUERY_EVERY: Duration = Duration::from_secs(3);
/// Tap lines kept for a page that connects later.
const RECENT: usize = 200;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");

/// `hoptrace dashboard` arguments.
#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// Address the web UI listens on (read-only; keep it on localhost or behind
    /// `kubectl port-forward`).
    #[arg(long, default_value = "127.0.0.1:8084")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub from: super::Sources,

    /// Link for a trace id, `{trace_id}` replaced
    /// (`http://jaeger:16686/trace/{trace_id}`).
    #[arg(long, value_name = "TEMPLATE")]
    pub trace_url: Option<String>,
}

/// The latest rows and how they came.
#[derive(Default)]
struct Snapshot {
    edges: Value,
    workloads: Value,
    routes: Value,
    refreshes: u64,
    updated_ms: u64,
    error: Option<String>,
}

/// What the handlers read.
struct State {
    snapshot: Mutex<Snapshot>,
    /// SSE frames (`data: ...` / `event: notice ...`), live.
    tap: broadcast::Sender<String>,
    /// The last [`RECENT`] request frames and the last notice.
    recent: Mutex<(VecDeque<String>, Option<String>)>,
    status: Value,
}

/// `hoptrace dashboard`.
pub fn dashboard(args: DashboardArgs) -> ExitCode {
    super::block_on(2, run(args))
}

/// Serves the dashboard until the process ends.
pub async fn run(args: DashboardArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr().context("listening address")?;
    let state = start(&args);
    println!("hoptrace dashboard: http://{local}/");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("hoptrace dashboard: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, state.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The state, with its refresh and tap tasks running.
fn start(args: &DashboardArgs) -> Arc<State> {
    let (source, window) = (args.from.describe(), args.from.window());
    let state = Arc::new(State {
        snapshot: Mutex::new(Snapshot {
            edges: json!([]),
            workloads: json!([]),
            routes: json!([]),
            ..Snapshot::default()
        }),
        tap: broadcast::channel(1024).0,
        recent: Mutex::new((VecDeque::new(), None)),
        status: json!({
            "source": source,
            "window_s": window.as_secs_f64(),
            "trace_url": args.trace_url,
            "tap": args.from.prometheus.is_none(),
        }),
    });
    match &args.from.prometheus {
        Some(url) => {
            tokio::spawn(refresh_prometheus(state.clone(), url.clone(), window));
            notice(
                &state,
                "the tap needs agents: start the dashboard with --agent URL (agents run with --tap)",
            );
        }
        None => {
            tokio::spawn(refresh_agents(
                state.clone(),
                args.from.agents.clone(),
                window,
            ));
            tokio::spawn(relay_tap(state.clone(), args.from.agents.clone()));
        }
    }
    state
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn publish(state: &State, rows: Result<[stat::Rows; 3]>) {
    let Ok(mut snap) = state.snapshot.lock() else {
        return;
    };
    snap.refreshes += 1;
    snap.updated_ms = now_ms();
    match rows {
        Ok([edges, workloads, routes]) => {
            snap.edges = render::json(View::Edges, &edges);
            snap.workloads = render::json(View::Deploy, &workloads);
            snap.routes = render::json(View::Route, &routes);
            snap.error = None;
        }
        Err(e) => snap.error = Some(format!("{e:#}")),
    }
}

/// Scrapes the agents every [`SCRAPE_EVERY`]; the rows over the last `window` (or
/// since the first scrape, until a window has passed).
async fn refresh_agents(state: Arc<State>, agents: Vec<String>, window: Duration) {
    let http = query::Http::default();
    let mut scrapes: VecDeque<(Instant, stat::Scrape)> = VecDeque::new();
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    loop {
        tick.tick().await;
        let scrape = match super::scrape_agents(&http, &agents).await {
            Ok(s) => s,
            Err(e) => {
                publish(&state, Err(e));
                continue;
            }
        };
        let now = Instant::now();
        scrapes.push_back((now, scrape));
        // Keep one scrape at least a window old as the base.
        while scrapes.len() > 2 && now.duration_since(scrapes[1].0) >= window {
            scrapes.pop_front();
        }
        let (Some((t0, before)), Some((_, after))) = (scrapes.front(), scrapes.back()) else {
            continue;
        };
        if scrapes.len() < 2 {
            continue;
        }
        let secs = now.duration_since(*t0).as_secs_f64();
        let rows = [View::Edges, View::Deploy, View::Route]
            .map(|v| stat::from_scrapes(v, before, after, secs));
        publish(&state, Ok(rows));
    }
}

/// Queries Prometheus every [`QUERY_EVERY`].
async fn refresh_prometheus(state: Arc<State>, url: String, window: Duration) {
    let mut tick = tokio::time::interval(QUERY_EVERY);
    loop {
        tick.tick().await;
        let rows = async {
            Ok([
                super::from_prometheus(View::Edges, &url, window).await?,
                super::from_prometheus(View::Deploy, &url, window).await?,
                super::from_prometheus(View::Route, &url, window).await?,
            ])
        }
        .await;
        publish(&state, rows);
    }
}

/// An SSE frame of one event; newlines in `data` become separate `data:` lines.
fn sse(event: Option<&str>, data: &str) -> String {
    let mut out = String::new();
    if let Some(e) = event {
        out.push_str(&format!("event: {e}\n"));
    }
    for line in data.split('\n') {
        out.push_str(&format!("data: {line}\n"));
    }
    out.push('\n');
    out
}

fn notice(state: &State, text: &str) {
    let frame = sse(Some("notice"), text);
    if let Ok(mut recent) = state.recent.lock() {
        recent.1 = Some(frame.clone());
    }
    let _ = state.tap.send(frame);
}

/// Relays the agents' tap lines to the pages; reconnects 5 s after all streams end.
async fn relay_tap(state: Arc<State>, agents: Vec<String>) {
    let source = tap::TapSource {
        agents,
        namespace: None,
        to: None,
        path: None,
    };
    loop {
        let mut rx = tap::subscribe(&source);
        while let Some(item) = rx.recv().await {
            match item {
                Ok(line) => {
                    let frame = sse(None, &line);
                    if let Ok(mut recent) = state.recent.lock() {
                        if recent.0.len() >= RECENT {
                            recent.0.pop_front();
                        }
                        recent.0.push_back(frame.clone());
                        recent.1 = None;
                    }
                    let _ = state.tap.send(frame);
                }
                Err(e) => notice(&state, &format!("{e:#}")),
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json_response(v: &Value) -> Response<Body> {
    full(StatusCode::OK, "application/json", v.to_string())
}

/// A query parameter (`%XX` and `+` decoded).
fn param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The route rows of one workload (or all).
fn routes(all: &Value, namespace: Option<&str>, name: Option<&str>) -> Value {
    let keep = |r: &&Value| {
        namespace.is_none_or(|n| r["namespace"] == n) && name.is_none_or(|n| r["name"] == n)
    };
    Value::Array(
        all.as_array()
            .map(|a| a.iter().filter(keep).cloned().collect())
            .unwrap_or_default(),
    )
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    Ok(respond(req.method(), req.uri(), &state))
}

fn respond(method: &hyper::Method, uri: &hyper::Uri, state: &State) -> Response<Body> {
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "read-only: GET only\n",
        );
    }
    let query = uri.query().unwrap_or("");
    let snap = || state.snapshot.lock().ok();
    match uri.path() {
        "/" | "/index.html" => full(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => full(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/api/edges" => json_response(&snap().map_or(json!([]), |s| s.edges.clone())),
        "/api/workloads" => json_response(&snap().map_or(json!([]), |s| s.workloads.clone())),
        "/api/routes" => {
            let ns = param(query, "namespace").filter(|s| !s.is_empty());
            let name = param(query, "name").filter(|s| !s.is_empty());
            let all = snap().map_or(json!([]), |s| s.routes.clone());
            json_response(&routes(&all, ns.as_deref(), name.as_deref()))
        }
        "/api/status" => {
            let mut v = state.status.clone();
            if let Some(s) = snap() {
                v["refreshes"] = json!(s.refreshes);
                v["updated_ms"] = json!(s.updated_ms);
                v["error"] = json!(s.error);
            }
            json_response(&v)
        }
        "/api/tap" => tap_stream(state),
        _ => full(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /api/edges, /api/workloads, /api/routes, /api/status or /api/tap\n",
        ),
    }
}

/// `GET /api/tap`: the recent frames, then the live ones.
fn tap_stream(state: &State) -> Response<Body> {
    let rx = state.tap.subscribe();
    let mut first = String::from("retry: 3000\n\n");
    if let Ok(recent) = state.recent.lock() {
        for f in &recent.0 {
            first.push_str(f);
        }
        if let Some(n) = &recent.1 {
            first.push_str(n);
        }
    }
    let head = futures_util::stream::once(async move {
        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(first)))
    });
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(frame) => {
                    return Some((Ok(hyper::body::Frame::data(Bytes::from(frame))), rx));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt as _;
    let mut resp = Response::new(http_body_util::BodyExt::boxed(StreamBody::new(
        head.chain(live),
    )));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

#[cfg(test)]
mod tests;
