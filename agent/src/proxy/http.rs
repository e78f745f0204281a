//! HTTP proxying with hyper: HTTP/1.x and HTTP/2 (gRPC), bodies streamed both ways.
//! The span layer (`trace::http`) sees each request at its head, when it is sent on,
//! and at its response: it rewrites the trace header and emits the spans.
//!
//! Requests go out on upstream connections reused per (source pod, destination)
//! (`pool`): the connection opened during detection serves a client connection's
//! first request and then joins the pool; later requests, from any client connection
//! of the same pod to the same destination, take a ready pooled connection (HTTP/1)
//! or share the pooled HTTP/2 connection.
//! HTTP/2 shakes hands upstream as soon as the client's preface is here (see [`serve`]).

use std::{
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{
    body::UpstreamBody,
    idle::{watchdog, Activity, Tracked},
    pool::PoolKey,
    propagation::{self, InboundGuard, Link},
    ConnError, PodContext, Target,
};
use crate::{
    ebpf::AppSocket,
    golden::{Edge, RequestObservation},
    pod::Direction,
    trace::{
        self,
        http::{LegSpans, ProxyBody},
    },
};

/// What the accept side knows of a connection it hands to [`serve`].
pub struct Conn {
    /// The leg.
    pub dir: Direction,
    /// Where its requests go.
    pub target: Target,
    /// The calling pod's address (`client.address` of the spans).
    pub client_ip: IpAddr,
    /// Prior-knowledge HTTP/2.
    pub h2: bool,
    /// Its edge in the golden metrics.
    pub edge: Edge,
    /// Outbound leg: the app's socket that connected (context propagation).
    pub app: Option<AppSocket>,
}

/// One proxied connection's shared state.
struct Leg {
    pod: Arc<PodContext>,
    dir: Direction,
    target: Target,
    edge: Edge,
    /// The edge's request-body byte counter, resolved once per connection.
    request_bytes: prometheus_client::metrics::counter::Counter,
    /// The span layer of this connection (`None`: tracing off).
    spans: Option<Arc<LegSpans>>,
    /// The connection opened during detection (if any), used for the first request.
    first: Mutex<Option<TcpStream>>,
    h2: bool,
    /// Requests in flight on this client connection (idle timeout).
    activity: Arc<Activity>,
    /// Outbound leg: the app's socket that connected (context propagation).
    app: Option<AppSocket>,
}

impl Leg {
    fn take_first(&self) -> Option<TcpStream> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Serves one downstream connection as HTTP (`h2` = prior-knowledge HTTP/2).
/// `upstream` is a connection already open to the target (from detection), or
/// `None` when requests should go out on pooled connections from the start.
pub async fn serve<IO>(
    pod: Arc<PodContext>,
    conn: Conn,
    client: IO,
    upstream: Option<TcpStream>,
) -> Result<(), ConnError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        dir,
        target,
        client_ip,
        h2,
        edge,
        app,
    } = conn;
    let pod_limits = pod.limits.clone();
    let pod_metrics = pod.metrics(dir).clone();
    let shutdown = pod.shutdown.clone();
    let spans = leg_spans(&pod, dir, &target, client_ip);
    let leg = Arc::new(Leg {
        activity: Arc::new(Activity::new()),
        pod,
        dir,
        target,
        request_bytes: edge.request_body_counter(),
        edge,
        spans,
        first: Mutex::new(upstream),
        h2,
        app,
    });
    if h2 {
        // HTTP/2: shake hands upstream now, not at the first request. The client's
        // preface is already here; a client that connects ahead of its first call (a
        // gRPC channel) would otherwise leave the next hop — the server node's inbound
        // leg — without a preface to detect, and after its detection timeout it would
        // relay the connection opaquely (no spans). On failure the first request
        // connects again (and answers 502 if that fails too).
        if let Err(err) = h2_sender(&leg).await {
            tracing::debug!(pod = %leg.pod.key, direction = leg.dir.as_str(), "upstream: {err}");
        }
    }
    let activity = leg.activity.clone();
    let svc = hyper::service::service_fn(move |req| handle(leg.clone(), req));
    let io = TokioIo::new(client);
    let limits = pod_limits.clone();
    let watchdog = watchdog(&activity, limits.http_idle_timeout, shutdown);
    // On an idle timeout or agent shutdown the connection is closed gracefully: requests
    // in flight finish (HTTP/2: GOAWAY), then it closes.
    // The two connection types share no trait for `graceful_shutdown`.
    macro_rules! serve_until_watchdog {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = watchdog => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }};
    }
    let result = if h2 {
        serve_until_watchdog!(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, svc)
        )
    } else {
        serve_until_watchdog!(hyper::server::conn::http1::Builder::new()
            .preserve_header_case(true)
            .timer(TokioTimer::new())
            // Also the keep-alive idle time: hyper arms it whenever it waits for a head.
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(io, svc)
            .with_upgrades())
    };
    match result {
        // The header-read timeout (a slow head, or a keep-alive connection left idle):
        // the connection is closed as the limit says, which is not a proxying failure.
        Err(e) if e.is_timeout() => {
            pod_metrics.limits.timeouts.inc();
            Ok(())
        }
        r => r.map_err(|e| ConnError::Relay(std::io::Error::other(e))),
    }
}

/// The span layer of one client connection (`None`: tracing off).
pub(super) fn leg_spans(
    pod: &PodContext,
    dir: Direction,
    target: &Target,
    client_ip: IpAddr,
) -> Option<Arc<LegSpans>> {
    pod.spans.as_ref().map(|sink| {
        Arc::new(LegSpans::new(
            sink.clone(),
            pod.identity.clone(),
            dir.as_str(),
            target.dst(),
            client_ip,
            pod.metrics(dir).limits.attributes_truncated.clone(),
        ))
    })
}

/// Serves one request; the response body holds the connection's in-flight mark.
async fn handle(leg: Arc<Leg>, req: Request<Incoming>) -> Result<Response<Tracked>, Infallible> {
    let inflight = leg.activity.begin();
    let (resp, observed, cause) = proxy_request(leg, req).await;
    Ok(resp.map(|inner| Tracked::new(inner, (inflight, cause), observed)))
}

/// Proxies one request; the golden-metrics observation (and, for a pod that propagates
/// context, the inbound request's registration) travels with the response body.
async fn proxy_request(
    leg: Arc<Leg>,
    mut req: Request<Incoming>,
) -> (
    Response<ProxyBody>,
    RequestObservation,
    Option<InboundGuard>,
) {
    // A pod may opt into starting traces for a share of its context-less inbound requests.
    let start_root = leg.dir == Direction::Inbound
        && leg.pod.trace_sampling > 0.0
        && rand::random::<f64>() < leg.pod.trace_sampling;
    let grpc = is_grpc(req.headers());
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut observed = leg.edge.request(req.method(), target, grpc);
    if let Some(prop) = &leg.pod.propagation {
        if leg.dir == Direction::Outbound && !propagation::has_trace_fields(req.headers()) {
            if let Link::Linked(fields) = prop.link(leg.app, !leg.h2) {
                propagation::adopt(req.headers_mut(), &fields);
            }
        }
    }
    let mut spans = trace::http::begin(
        leg.spans.as_ref(),
        &mut req,
        start_root,
        observed.route(),
        grpc,
    );
    if let Some(s) = &spans {
        observed.traced(|| s.trace_id().to_hex());
    }
    // The app end of hyper's upstream connection is not known here: the request counts
    // for exclusivity only.
    let cause = match &leg.pod.propagation {
        Some(prop) if leg.dir == Direction::Inbound => Some(prop.inbound(
            propagation::Forwarded::fields(propagation::trace_fields(req.headers())),
            false,
        )),
        _ => None,
    };
    let down_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.headers_mut(), down_upgrade.is_some());

    if let Some(s) = spans.as_mut() {
        s.client_started();
    }
    let req = req.map(|body| UpstreamBody::new(body, leg.request_bytes.clone()));
    let mut resp = match send(&leg, req).await {
        Ok(r) => r,
        Err(err) => {
            let msg = err.to_string();
            tracing::debug!(pod = %leg.pod.key, direction = leg.dir.as_str(), "upstream: {msg}");
            // The client's own body was malformed (bad chunk size, cut short): its
            // fault, answered as the server would have, not blamed on the upstream.
            let (status, text) = if is_request_body_error(&err) {
                (
                    StatusCode::BAD_REQUEST,
                    "hoptrace: malformed request body\n",
                )
            } else {
                (StatusCode::BAD_GATEWAY, "hoptrace: upstream unavailable\n")
            };
            if let Some(s) = spans {
                s.failed(status, msg);
            }
            observed.response(status, None);
            let mut r = Response::new(full(text));
            *r.status_mut() = status;
            return (r, observed, None);
        }
    };
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = down_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match (down.await, up.await) {
                    (Ok(d), Ok(u)) => {
                        let mut d = TokioIo::new(d);
                        let mut u = TokioIo::new(u);
                        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                    }
                    (Err(e), _) | (_, Err(e)) => tracing::debug!("upgrade failed: {e}"),
                }
            });
        }
    }
    let (mut parts, body) = resp.into_parts();
    observed.response(status, trace::http::grpc_status(&parts.headers));
    let body = match spans {
        Some(s) => s.wrap(status, &parts.headers, body),
        None => body.boxed(),
    };
    strip_hop_by_hop(
        &mut parts.headers,
        status == StatusCode::SWITCHING_PROTOCOLS,
    );
    (Response::from_parts(parts, body), observed, cause)
}

/// Whether a request is a gRPC call (`content-type: application/grpc*`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn full(s: &'static str) -> ProxyBody {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// Attempts per request when a pooled connection turns out closed before any of the
/// request was written (a server closing an idle keep-alive connection).
const SEND_ATTEMPTS: usize = 3;

/// Whether sending failed because reading the client's request body failed.
fn is_request_body_error(err: &ConnError) -> bool {
    match err {
        ConnError::Relay(io) => io
            .get_ref()
            .and_then(|e| e.downcast_ref::<hyper::Error>())
            .is_some_and(|e| e.is_user() && !e.is_canceled()),
        _ => false,
    }
}

fn relay_err(e: hyper::Error) -> ConnError {
    ConnError::Relay(std::io::Error::other(e))
}

/// Sends the request upstream: on the connection opened during detection if this
/// client connection still has it, else on a pooled one, else on a new one.
async fn send(leg: &Leg, mut req: Request<UpstreamBody>) -> Result<Response<Incoming>, ConnError> {
    if leg.h2 {
        let mut sender = h2_sender(leg).await?;
        return sender.send_request(req).await.map_err(relay_err);
    }
    let key = PoolKey::new(&leg.target, false);
    let pool = leg.pod.pool(leg.dir);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut sender, opened) = match leg.take_first() {
            Some(stream) => (handshake_h1(stream).await?, Instant::now()),
            None => match pool.checkout_h1(&key) {
                Some(pooled) => pooled,
                None => (
                    handshake_h1(leg.target.connect(&leg.pod).await?).await?,
                    Instant::now(),
                ),
            },
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                // After 101 the connection belongs to the upgraded stream.
                if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    pool.checkin_h1(key, sender, opened);
                }
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                // Nothing was written: safe to send on another connection.
                Some(r) if attempt < SEND_ATTEMPTS => {
                    tracing::debug!(pod = %leg.pod.key, "pooled connection closed before the request was sent; retrying: {}", e.error());
                    req = r;
                }
                _ => return Err(relay_err(e.into_error())),
            },
        }
    }
}

/// This leg's HTTP/2 connection: the one opened during detection while unused, else
/// the pooled one for (source pod, destination), else a new one; it becomes the pooled
/// one.
async fn h2_sender(
    leg: &Leg,
) -> Result<hyper::client::conn::http2::SendRequest<UpstreamBody>, ConnError> {
    let key = PoolKey::new(&leg.target, true);
    let pool = leg.pod.pool(leg.dir);
    let sender = match leg.take_first() {
        Some(stream) => handshake_h2(stream).await?,
        None => match pool.h2(&key) {
            Some(s) => return Ok(s),
            None => handshake_h2(leg.target.connect(&leg.pod).await?).await?,
        },
    };
    pool.set_h2(key, sender.clone());
    Ok(sender)
}

async fn handshake_h1(
    stream: TcpStream,
) -> Result<hyper::client::conn::http1::SendRequest<UpstreamBody>, ConnError> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(relay_err)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender.ready().await.map_err(relay_err)?;
    Ok(sender)
}

async fn handshake_h2(
    stream: TcpStream,
) -> Result<hyper::client::conn::http2::SendRequest<UpstreamBody>, ConnError> {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(relay_err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// `HTTP2-Settings` (RFC 7540 §3.2.1): sent with `Upgrade: h2c`.
const HTTP2_SETTINGS: &str = "http2-settings";

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every field it names,
/// `Proxy-Connection`, `Keep-Alive`, `TE` (except `TE: trailers`, which gRPC needs),
/// `Transfer-Encoding` (hyper re-frames the body) and `Upgrade` — except for an
/// upgrade handshake, where `Connection: upgrade` and `Upgrade` must reach the app.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Read before `Connection`'s names are removed: a client that follows RFC 9110
    // sends `Connection: TE` with `TE: trailers`, and the next hop must still learn
    // that trailers are welcome (hyper only sends response trailers when asked).
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
    });
    // Tokens are read from the raw bytes: a value with obs-text elsewhere in it (e.g.
    // `Connection: \x80, x-a`) still names `x-a`, which must not be forwarded.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        // `Host` is never hop-by-hop: a request must not lose it because a client
        // named it in `Connection`.
        .filter(|n| n != header::HOST)
        .filter(|n| !(keep_upgrade && (n == header::UPGRADE || n == HTTP2_SETTINGS)))
        .collect();
    for n in named {
        h.remove(n);
    }
    if keep_upgrade {
        // An `Upgrade: h2c` handshake carries its settings in `HTTP2-Settings`, a
        // connection-specific field the next hop needs to accept the upgrade.
        let value = if h.contains_key(HTTP2_SETTINGS) {
            "upgrade, http2-settings"
        } else {
            "upgrade"
        };
        h.insert(header::CONNECTION, HeaderValue::from_static(value));
    } else {
        h.remove(HTTP2_SETTINGS);
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    h.remove("proxy-connection");
    h.remove("keep-alive");
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests;
