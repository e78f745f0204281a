//! The lean HTTP/1.1 path: one task per client connection reads a request head
//! (`httparse`), rewrites its trace header (in place when the new value has the old
//! one's length, as a W3C `traceparent` always does), writes head and body upstream in
//! one go, reads the response head and relays the body by its framing, byte for byte.
//! No `Request`/`HeaderMap` per request, no second task per upstream connection, no
//! body re-encoding; the buffers belong to the connection.
//!
//! Spans and golden metrics are the same as on the hyper path (`proxy::http`), which
//! still serves HTTP/2 and every HTTP/1 head the lean path does not take
//! ([`head::Request::Fallback`]): the connection is handed to hyper with the bytes
//! already read, from that request on.

mod body;
mod exchange;
pub mod head;
mod legs;
mod rewind;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::BytesMut;
use tokio::{net::TcpStream, time::Instant};

use super::{http, ConnError, PodContext, Through};
use head::{RequestHead, ResponseHead};

/// The largest request head the lean path buffers; a longer one goes to hyper (whose
/// limit is ~400 KiB).
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// At shutdown, how long an idle client connection may still send a request.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

/// What waiting for the next request head ended with.
enum Next {
    /// A head the lean path forwards is at the start of the buffer.
    Lean,
    /// hyper takes the connection from here (why, for the log).
    Fallback(&'static str),
    /// The client closed, the connection stayed idle, or the agent is stopping.
    Closed,
    /// The head did not arrive within the header-read timeout.
    TimedOut,
}

/// One client connection on the lean path.
struct Lean {
    pod: Arc<PodContext>,
    conn: http::Conn,
    /// The edge's request-body byte counter.
    request_bytes: prometheus_client::metrics::counter::Counter,
    spans: Option<Arc<crate::trace::http::LegSpans>>,
    key: super::pool::PoolKey,
    /// The upstream connection opened during detection, for the first request.
    first: Option<TcpStream>,
    /// Bytes read from the client and not yet forwarded.
    cbuf: BytesMut,
    /// Bytes read from the upstream and not yet forwarded.
    rbuf: BytesMut,
    /// A head as it is sent on.
    out: Vec<u8>,
    req: RequestHead,
    resp: ResponseHead,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Resolves once the agent starts shutting down (`None` after it has); made once
    /// per connection, so waiting for a request registers nothing new.
    stopping: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The connection's one timer, re-armed only when it fires (see [`Lean::next_head`]).
    timer: Pin<Box<tokio::time::Sleep>>,
    /// A same-node hop served in one pass: the destination's inbound leg.
    through: Option<ThroughLeg>,
    /// The connection's last path and route.
    routes: crate::golden::RouteCache,
}

/// The destination's inbound leg of a one-pass hop, as the lean path uses it.
struct ThroughLeg {
    through: Through,
    spans: Option<Arc<crate::trace::http::LegSpans>>,
    key: super::pool::PoolKey,
    request_bytes: prometheus_client::metrics::counter::Counter,
    routes: crate::golden::RouteCache,
}

impl Lean {
    /// The pool the upstream connections come from and go back to, and their key.
    fn pool(&self) -> (&Arc<super::pool::Pool>, super::pool::PoolKey) {
        match &self.through {
            Some(t) => (t.through.dest.pool(crate::pod::Direction::Inbound), t.key),
            None => (self.pod.pool(self.conn.dir), self.key),
        }
    }

    /// Hands the connection to hyper, with the bytes read and not yet forwarded. A
    /// one-pass hop's connection from detection is not handed over (hyper sends the
    /// usual way, through the inbound leg).
    async fn fallback(self, client: TcpStream, why: &'static str) -> Result<(), ConnError> {
        tracing::trace!(pod = %self.pod.key, direction = self.conn.dir.as_str(), "HTTP/1 served by hyper from here: {why}");
        let first = if self.through.is_some() {
            None
        } else {
            self.first
        };
        let io = rewind::Rewind::new(self.cbuf.freeze(), client);
        http::serve(self.pod, self.conn, io, first).await
    }
}

/// Serves one HTTP/1 client connection; `upstream` is a connection already open to the
/// target (from detection), or `None`.
/// `through`: a same-node hop served in one pass (`upstream` then goes to the
/// destination's app).
pub async fn serve(
    pod: Arc<PodContext>,
    conn: http::Conn,
    mut client: TcpStream,
    upstream: Option<TcpStream>,
    through: Option<Through>,
) -> Result<(), ConnError> {
    let spans = http::leg_spans(&pod, conn.dir, &conn.target, conn.client_ip);
    let key = super::pool::PoolKey::new(&conn.target, false);
    let through = through.map(|t| ThroughLeg {
        spans: http::leg_spans(
            &t.dest,
            crate::pod::Direction::Inbound,
            &t.target,
            conn.client_ip,
        ),
        key: super::pool::PoolKey::new(&t.target, false),
        request_bytes: t.edge.request_body_counter(),
        routes: Default::default(),
        through: t,
    });
    let mut lean = Lean {
        through,
        routes: Default::default(),
        stopping: Some(Box::pin(stopping(pod.shutdown.clone()))),
        timer: Box::pin(tokio::time::sleep(pod.limits.header_read_timeout)),
        shutdown: pod.shutdown.clone(),
        request_bytes: conn.edge.request_body_counter(),
        pod,
        conn,
        spans,
        key,
        first: upstream,
        cbuf: BytesMut::with_capacity(body::READ_SIZE),
        rbuf: BytesMut::with_capacity(body::READ_SIZE),
        out: Vec::with_capacity(1024),
        req: RequestHead::default(),
        resp: ResponseHead::default(),
    };
    loop {
        match lean.next_head(&mut client).await? {
            Next::Lean => {}
            Next::Closed => return Ok(()),
            Next::TimedOut => {
                lean.pod.metrics(lean.conn.dir).limits.timeouts.inc();
                return Ok(());
            }
            Next::Fallback(why) => return lean.fallback(client, why).await,
        }
        match lean.exchange(&mut client).await? {
            exchange::After::KeepAlive => {}
            exchange::After::Close => return Ok(()),
            exchange::After::Fallback(why) => return lean.fallback(client, why).await,
        }
    }
}

/// Resolves when `shutdown` becomes `true`, or when its sender is gone (the agent is
/// exiting without a graceful stop: idle connections need not be closed early).
async fn stopping(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for `stopping`; never resolves once it has (`None`).
fn poll_stopping(
    stopping: &mut Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match stopping {
        Some(f) => f.as_mut().poll(cx),
        None => std::task::Poll::Pending,
    })
}

impl Lean {
    /// Reads until a whole request head is buffered, within the header-read timeout
    /// (also the keep-alive idle time) and the HTTP idle timeout; at agent shutdown an
    /// idle connection is closed after [`SHUTDOWN_GRACE`].
    ///
    /// The deadline moves with every request, the timer does not: it stays armed at an
    /// earlier deadline and, when it fires before the current one, is re-armed to it.
    /// A busy connection thus touches the runtime's timer wheel about once per timeout
    /// period, not twice per request (a timer registered and removed), and waiting for
    /// the shutdown signal registers nothing per request either.
    async fn next_head(&mut self, client: &mut TcpStream) -> Result<Next, ConnError> {
        let limits = &self.pod.limits;
        let now = Instant::now();
        let header_deadline = now + limits.header_read_timeout;
        let idle_deadline = now + limits.http_idle_timeout;
        let mut grace = (*self.shutdown.borrow()).then(|| Instant::now() + SHUTDOWN_GRACE);
        loop {
            if !self.cbuf.is_empty() {
                match head::parse_request(&self.cbuf, MAX_HEAD, &mut self.req) {
                    head::Request::Partial => {}
                    head::Request::Lean => return Ok(Next::Lean),
                    head::Request::Fallback(why) => return Ok(Next::Fallback(why)),
                }
            }
            if self.cbuf.capacity() - self.cbuf.len() < body::READ_SIZE / 4 {
                self.cbuf.reserve(body::READ_SIZE);
            }
            // Once stopping, an idle connection (nothing of a request read) has the
            // grace period left; one in the middle of a head keeps its deadlines.
            let stopping = grace.is_some() && self.cbuf.is_empty();
            let deadline = match grace {
                Some(g) if self.cbuf.is_empty() => g,
                _ => header_deadline.min(idle_deadline),
            };
            // In order: bytes that are here win over a deadline or the shutdown signal,
            // and no random branch order is drawn per request.
            tokio::select! {
                biased;
                read = tokio::io::AsyncReadExt::read_buf(client, &mut self.cbuf) => match read {
                    Ok(0) => return Ok(Next::Closed),
                    Ok(_) => {}
                    Err(e) => return Err(ConnError::Relay(e)),
                },
                () = self.timer.as_mut() => {
                    if Instant::now() < deadline {
                        self.timer.as_mut().reset(deadline);
                        continue;
                    }
                    return Ok(if !stopping && deadline == header_deadline {
                        Next::TimedOut
                    } else {
                        Next::Closed
                    });
                }
                () = poll_stopping(&mut self.stopping), if grace.is_none() => {
                    self.stopping = None;
                    let g = Instant::now() + SHUTDOWN_GRACE;
                    grace = Some(g);
                    if g < self.timer.deadline() {
                        self.timer.as_mut().reset(g);
                    }
                }
            }
        }
    }
}
