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

use std::{sync::Arc, time::Duration};

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
    /// A same-node hop served in one pass: the destination's inbound leg.
    through: Option<ThroughLeg>,
}

/// The destination's inbound leg of a one-pass hop, as the lean path uses it.
struct ThroughLeg {
    through: Through,
    spans: Option<Arc<crate::trace::http::LegSpans>>,
    key: super::pool::PoolKey,
    request_bytes: prometheus_client::metrics::counter::Counter,
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
        through: t,
    });
    let mut lean = Lean {
        through,
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

impl Lean {
    /// Reads until a whole request head is buffered, within the header-read timeout
    /// (also the keep-alive idle time) and the HTTP idle timeout; at agent shutdown an
    /// idle connection is closed after [`SHUTDOWN_GRACE`].
    async fn next_head(&mut self, client: &mut TcpStream) -> Result<Next, ConnError> {
        let limits = &self.pod.limits;
        let now = Instant::now();
        let header_deadline = now + limits.header_read_timeout;
        let idle_deadline = now + limits.http_idle_timeout;
        let mut watch_shutdown = true;
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
            let stopping = *self.shutdown.borrow();
            let deadline = if stopping && self.cbuf.is_empty() {
                Instant::now() + SHUTDOWN_GRACE
            } else {
                header_deadline.min(idle_deadline)
            };
            tokio::select! {
                read = tokio::io::AsyncReadExt::read_buf(client, &mut self.cbuf) => match read {
                    Ok(0) => return Ok(Next::Closed),
                    Ok(_) => {}
                    Err(e) => return Err(ConnError::Relay(e)),
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Ok(if !stopping && deadline == header_deadline {
                        Next::TimedOut
                    } else {
                        Next::Closed
                    });
                }
                changed = self.shutdown.changed(), if watch_shutdown && !stopping => {
                    // The sender gone: the agent is exiting without a graceful stop.
                    watch_shutdown = changed.is_ok();
                }
            }
        }
    }
}
