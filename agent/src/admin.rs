//! Admin HTTP server: `GET /live`, `/ready`, `/metrics`.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::{
    body::Incoming, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::{
    golden::{tap::TapFilter, Golden},
    metrics::Metrics,
};

/// Errors starting the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error(
        "cannot serve the admin API on {addr}: {source}; pass a free address with --admin-addr"
    )]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Shared state the admin endpoints report.
#[derive(Debug)]
pub struct AdminState {
    /// Set once programs are attached and every current workload is steered or
    /// reported; cleared at shutdown.
    pub ready: AtomicBool,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Live requests (`GET /tap`).
    pub golden: Arc<Golden>,
}

/// Admin connections open at once, and per peer address, at most; a request head
/// must arrive within [`ADMIN_HEADER_TIMEOUT`]. A scraper or probe needs one or two
/// connections, so a pod that opens thousands gets the per-peer share and no more: the
/// kubelet's probes (another peer) still get through, and the agent's descriptors are safe.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// In all.
    pub max_connections: usize,
    /// Per peer address.
    pub max_per_peer: usize,
}

impl AdminLimits {
    /// `total` in all, an eighth of it per peer.
    pub fn new(total: usize) -> Self {
        Self {
            max_connections: total.max(1),
            max_per_peer: (total / 8).max(1),
        }
    }
}

/// Time allowed for an admin request head (also the keep-alive idle time).
pub const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Open admin connections, in all and per peer.
#[derive(Debug, Default)]
struct Conns {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// One admin connection's place in [`Conns`], given back on drop.
struct ConnSlot {
    conns: Arc<Mutex<Conns>>,
    peer: IpAddr,
}

impl ConnSlot {
    fn take(conns: &Arc<Mutex<Conns>>, peer: IpAddr, limits: AdminLimits) -> Option<Self> {
        let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
        let mine = c.per_peer.get(&peer).copied().unwrap_or(0);
        if c.total >= limits.max_connections || mine >= limits.max_per_peer {
            return None;
        }
        c.total += 1;
        *c.per_peer.entry(peer).or_default() += 1;
        Some(Self {
            conns: conns.clone(),
            peer,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Binds the admin address (so a conflict fails startup) and serves it in the background.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
    limits: AdminLimits,
) -> Result<SocketAddr, AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    let conns = Arc::new(Mutex::new(Conns::default()));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!("admin accept: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = ConnSlot::take(&conns, peer.ip(), limits) else {
                state.metrics.limits.admin_refused.inc();
                drop(stream);
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = service_fn(move |req| handle(req, state.clone()));
                if let Err(err) = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!("admin connection: {err}");
                }
            });
        }
    });
    Ok(local)
}

/// A response body: a whole text, or the tap's stream.
type AdminBody = BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<AdminBody>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/tap" => return Ok(tap(&state.golden, req.uri().query().unwrap_or(""))),
        "/live" => (StatusCode::OK, "text/plain", "live\n".to_string()),
        "/ready" => {
            if state.ready.load(Ordering::Acquire) {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: workloads are still being enrolled\n".to_string(),
                )
            }
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /live, /ready or /tap\n".to_string(),
        ),
    };
    Ok(text(status, ctype, body))
}

fn text(status: StatusCode, ctype: &str, body: String) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// `GET /tap?namespace=N&to=W&path=PREFIX`: finished requests as JSON lines, until
/// the reader goes away. A reader that falls behind gets `{"dropped":N}` lines for
/// what it lost; the data path never waits for it.
fn tap(golden: &Golden, query: &str) -> Response<AdminBody> {
    let filter = match TapFilter::parse(query) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    let Some(rx) = golden.tap.subscribe() else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "tap is off: start the agent with --tap (HOPTRACE_TAP=true) to stream live requests\n"
                .to_string(),
        );
    };
    let lines = futures_util::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            let line = match rx.recv().await {
                Ok(e) if filter.matches(&e) => serde_json::to_vec(&*e).ok(),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    Some(format!("{{\"dropped\":{n}}}").into_bytes())
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            if let Some(mut line) = line {
                line.push(b'\n');
                let frame = hyper::body::Frame::data(Bytes::from(line));
                return Some((Ok::<_, Infallible>(frame), (rx, filter)));
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(lines).boxed());
    if let Ok(v) = hyper::header::HeaderValue::from_str("application/x-ndjson") {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
