//! One request and its response on the lean path: the trace decision, the head sent
//! on, the upstream connection (pooled, or the one from detection, or new), the
//! response relayed, the spans and golden metrics recorded.

use crate::trace::span::UnixNanos;

use bytes::Buf as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use tokio::{io::AsyncReadExt as _, io::AsyncWriteExt as _, net::TcpStream};

use super::{
    body::{self, BodyState},
    head::{self, write_head, write_head_fields, Framing},
    legs::{LegRequest, Legs},
    Lean, MAX_RESPONSE_HEAD,
};
use crate::{
    golden::route::RequestTarget,
    pod::Direction,
    proxy::{
        pool::RawUpstream,
        propagation::{Forwarded, Link, Propagation},
        ConnError,
    },
    trace::{
        context::{TRACEPARENT, TRACEPARENT_LEN},
        http::{begin_head, begin_traceparent, RequestFacts},
    },
};

/// The largest request body the lean path reads whole before sending it on; a larger
/// one is streamed by hyper.
pub(super) const MAX_BUFFERED_BODY: usize = 64 * 1024;

/// Attempts per request when a pooled connection turns out closed before it answered.
const SEND_ATTEMPTS: usize = 3;

/// What the connection does after an exchange.
pub(super) enum After {
    /// Reads the next request.
    KeepAlive,
    /// Closes.
    Close,
    /// hyper serves the connection from this request on.
    Fallback(&'static str),
}

/// Why no response head came.
#[derive(Debug)]
enum HeadError {
    /// Writing the request upstream failed.
    Write(std::io::Error),
    /// Reading failed after `received` bytes.
    Read(std::io::Error, usize),
    /// The upstream closed after `received` bytes.
    Closed(usize),
    /// Not a response the proxy can forward.
    Invalid(&'static str),
    /// Forwarding an informational response to the client failed.
    Client(std::io::Error),
}

impl HeadError {
    /// Whether the request may go again on another connection: the connection was a
    /// pooled one that closed before answering anything (a server closing an idle
    /// keep-alive connection), and the request is idempotent or was not written.
    fn retryable(&self, idempotent: bool) -> bool {
        match self {
            HeadError::Write(_) => true,
            HeadError::Read(_, 0) | HeadError::Closed(0) => idempotent,
            _ => false,
        }
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Write(e) => write!(f, "sending the request: {e}"),
            HeadError::Read(e, _) => write!(f, "reading the response: {e}"),
            HeadError::Closed(_) => write!(f, "connection closed before the response"),
            HeadError::Invalid(why) => f.write_str(why),
            HeadError::Client(e) => write!(f, "client: {e}"),
        }
    }
}

/// Whether a context-less request starts a trace, for a pod that opted into starting
/// them for a share `ratio` of its inbound requests.
fn start_trace(ratio: f64) -> bool {
    ratio > 0.0 && rand::random::<f64>() < ratio
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The head's trace-context fields as a map; `None` when one is not a valid field.
fn trace_fields(req: &head::RequestHead, buf: &[u8]) -> Option<HeaderMap> {
    let mut map = HeaderMap::with_capacity(req.trace.len() + 1);
    for f in &req.trace {
        let n = HeaderName::from_bytes(f.name.get(buf)).ok()?;
        let v = HeaderValue::from_bytes(f.value.get(buf)).ok()?;
        map.append(n, v);
    }
    Some(map)
}

/// Whether the rewritten trace fields fit where the old ones are: same names in the
/// same order, same value lengths.
fn same_shape(map: &HeaderMap, old: &[head::Field], buf: &[u8]) -> bool {
    map.len() == old.len()
        && map.iter().zip(old).all(|((n, v), f)| {
            n.as_str().as_bytes().eq_ignore_ascii_case(f.name.get(buf))
                && v.len() == f.value.end - f.value.start
        })
}

impl Lean {
    /// Proxies the request whose head is at the start of `cbuf`.
    pub(super) async fn exchange(&mut self, client: &mut TcpStream) -> Result<After, ConnError> {
        let server_start = UnixNanos::now();
        let Some((body_len, body_data)) = self.buffer_body(client).await? else {
            return Ok(After::Fallback("request body streamed"));
        };
        let pod = self.pod.clone();
        let (req, buf) = (&self.req, &self.cbuf[..]);
        let Ok(method) = Method::from_bytes(req.method.get(buf)) else {
            return Ok(After::Fallback("method"));
        };
        let start_root = self.conn.dir == Direction::Inbound && start_trace(pod.trace_sampling);
        // A one-pass hop: the destination's inbound leg may start traces too.
        let start_root2 = self
            .through
            .as_ref()
            .is_some_and(|t| start_trace(t.through.dest.trace_sampling));
        let mut trace = None;
        // A pod that propagates context: a context-less request leaving it takes the
        // context of the inbound request that caused it, when exactly one can have.
        if req.trace.is_empty() && self.conn.dir == Direction::Outbound {
            if let Some(prop) = &pod.propagation {
                if let Link::Linked(fields) = prop.link(self.conn.app, true) {
                    trace = Some(HeaderMap::clone(&fields));
                }
            }
        }
        // The common head, one `traceparent` and nothing that reads the fields as a map
        // (a one-pass hop does): rewritten in place.
        let lone = match (&trace, req.trace.as_slice()) {
            (None, [f])
                if self.through.is_none()
                    && f.name.get(buf).eq_ignore_ascii_case(TRACEPARENT.as_bytes()) =>
            {
                <[u8; TRACEPARENT_LEN]>::try_from(f.value.get(buf))
                    .ok()
                    .map(|v| (f.value, v))
            }
            _ => None,
        };
        if trace.is_none() && lone.is_none() && (!req.trace.is_empty() || start_root || start_root2)
        {
            let Some(map) = trace_fields(req, buf) else {
                return Ok(After::Fallback("trace field"));
            };
            trace = Some(map);
        }
        let target = RequestTarget::new(req.target.str(buf));
        let facts = RequestFacts {
            method: method.as_str(),
            path: target.path(),
            version: Version::HTTP_11,
            host: req.host.map(|h| h.str(buf)),
            user_agent: req.user_agent.map(|u| u.str(buf)),
        };
        let observed = (self.conn.edge).request_cached(&mut self.routes, &method, target, req.grpc);
        let route = observed.route().clone();
        let leg = self.spans.as_ref();
        let mut rewritten = None;
        let spans = if let Some(map) = trace.as_mut() {
            begin_head(leg, map, facts, server_start, start_root, &route, req.grpc)
        } else if let Some((at, mut value)) = lone {
            let grpc = req.grpc;
            match begin_traceparent(
                leg,
                &mut value,
                facts,
                server_start,
                start_root,
                &route,
                grpc,
            ) {
                Some(spans) => {
                    rewritten = Some((at, value));
                    spans
                }
                // Not a valid value: the general rules decide.
                None => {
                    let Some(mut map) = trace_fields(req, buf) else {
                        return Ok(After::Fallback("trace field"));
                    };
                    let spans =
                        begin_head(leg, &mut map, facts, server_start, start_root, &route, grpc);
                    trace = Some(map);
                    spans
                }
            }
        } else {
            None
        };
        // Boxed: the record is ~900 bytes and moves through several calls per request.
        let mut legs = Box::new(Legs {
            first: LegRequest::new(spans, observed),
            second: None,
            cause: None,
        });
        if let Some(t) = &mut self.through {
            // The destination's inbound leg starts where the caller's CLIENT span does,
            // and reads the context the first leg just wrote.
            if let Some(s) = legs.first.spans.as_mut() {
                s.client_started();
            }
            let observed =
                (t.through.edge).request_cached(&mut t.routes, &method, target, req.grpc);
            let spans = match trace.as_mut() {
                Some(map) => {
                    let route = observed.route().clone();
                    let now = UnixNanos::now();
                    let leg = t.spans.as_ref();
                    begin_head(leg, map, facts, now, start_root2, &route, req.grpc)
                }
                None => None,
            };
            legs.second = Some(LegRequest::new(spans, observed));
        }
        if let Some((at, value)) = &rewritten {
            self.cbuf[at.start..at.end].copy_from_slice(value);
        }
        self.build_request_head(trace.as_ref());
        // The request as the app receives it, registered while it is in flight in a pod
        // that propagates context (the destination's, on a one-pass hop); before it is
        // written.
        if let Some(prop) = self.cause_propagation() {
            let forwarded = match (rewritten, trace) {
                (Some((_, value)), _) => Some(Forwarded::Traceparent(value)),
                (None, Some(map)) => Forwarded::fields(map),
                (None, None) => None,
            };
            legs.cause = Some(prop.inbound(forwarded, true));
        }
        let close_after = self.req.close;
        let head_request = method == Method::HEAD;

        // The body is whole in the buffer (see `buffer_body`): one write, and a retry
        // is possible.
        self.out.extend_from_slice(&self.cbuf[..body_len]);
        self.cbuf.advance(body_len);
        self.request_bytes.inc_by(body_data);
        if let Some(t) = &self.through {
            t.request_bytes.inc_by(body_data);
        }
        legs.client_started();
        let idem = idempotent(&method);
        let mut attempt = 0;
        let up = loop {
            attempt += 1;
            let (mut up, reused) = match self.upstream().await {
                Ok(u) => u,
                Err(e) => return self.bad_gateway(client, legs, e, close_after).await,
            };
            if let Some(cause) = &legs.cause {
                if let Ok((from, to)) = up.addrs() {
                    cause.sending_on(from, to);
                }
            }
            let sent = match up.stream.write_all(&self.out).await {
                Ok(()) => {
                    self.response_head(&mut up.stream, client, head_request)
                        .await
                }
                Err(e) => Err(HeadError::Write(e)),
            };
            match sent {
                Ok(()) => break up,
                Err(e) if reused && attempt < SEND_ATTEMPTS && e.retryable(idem) => {
                    tracing::debug!(pod = %pod.key, "pooled connection closed before answering; retrying: {e}");
                }
                Err(HeadError::Client(e)) => return Err(ConnError::Relay(e)),
                Err(e) => return self.bad_gateway(client, legs, e, close_after).await,
            }
        };
        self.response(client, up, legs, close_after).await
    }

    /// The pod whose app receives the request, when it propagates context: the
    /// destination's on a one-pass hop, this pod's on an inbound leg.
    fn cause_propagation(&self) -> Option<&std::sync::Arc<Propagation>> {
        match &self.through {
            Some(t) => t.through.dest.propagation.as_ref(),
            None if self.conn.dir == Direction::Inbound => self.pod.propagation.as_ref(),
            None => None,
        }
    }

    /// Makes sure the request's body is in `cbuf` after its head: `Some((bytes, data
    /// bytes))` of the body, or `None` when hyper should serve the request instead —
    /// a chunked body not all here (it may be a stream the client sends piece by piece,
    /// waiting for answers in between), a `Content-Length` over [`MAX_BUFFERED_BODY`],
    /// a malformed or cut-short body (hyper answers those as before). Small bodies are
    /// read whole first, as nginx buffers request bodies, within the header-read
    /// timeout.
    async fn buffer_body(
        &mut self,
        client: &mut TcpStream,
    ) -> Result<Option<(usize, u64)>, ConnError> {
        let framing = self.req.framing.unwrap_or(Framing::Empty);
        // Read the clock only when a body has to be waited for.
        let mut deadline = None;
        loop {
            let mut probe = BodyState::new(framing);
            match probe.consume(&self.cbuf[self.req.len..]) {
                Ok(whole) if probe.done() => return Ok(Some(whole)),
                Ok(_) => {}
                Err(_) => return Ok(None),
            }
            let small = matches!(framing, Framing::Length(n) if n <= MAX_BUFFERED_BODY as u64);
            if !small {
                return Ok(None);
            }
            self.cbuf.reserve(body::READ_SIZE);
            let limit = self.pod.limits.header_read_timeout;
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + limit);
            match tokio::time::timeout_at(deadline, client.read_buf(&mut self.cbuf)).await {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ConnError::Relay(e)),
                Err(_) => {
                    self.pod.metrics(self.conn.dir).limits.timeouts.inc();
                    return Err(ConnError::Relay(std::io::ErrorKind::TimedOut.into()));
                }
            }
        }
    }

    /// The request head as it goes upstream, into `out`: the received bytes without the
    /// `Connection` lines, the trace values overwritten in place when they keep their
    /// length; else rebuilt without `Connection` and with the rewritten trace fields
    /// last.
    fn build_request_head(&mut self, trace: Option<&HeaderMap>) {
        self.out.clear();
        let len = self.req.len;
        let fits = trace.is_none_or(|map| same_shape(map, &self.req.trace, &self.cbuf));
        if fits {
            if let Some(map) = trace {
                for ((_, v), f) in map.iter().zip(&self.req.trace) {
                    self.cbuf[f.value.start..f.value.end].copy_from_slice(v.as_bytes());
                }
            }
        }
        if !(fits
            && self
                .req
                .dropped
                .copy_without(&mut self.out, &self.cbuf, len))
        {
            write_head(&mut self.out, &self.cbuf, self.req.line, &self.req.fields);
            match trace {
                Some(map) => {
                    for (n, v) in map {
                        self.out.extend_from_slice(n.as_str().as_bytes());
                        self.out.extend_from_slice(b": ");
                        self.out.extend_from_slice(v.as_bytes());
                        self.out.extend_from_slice(b"\r\n");
                    }
                }
                // Trace fields rewritten in place, if any.
                None => write_head_fields(&mut self.out, &self.cbuf, &self.req.trace),
            }
            self.out.extend_from_slice(b"\r\n");
        }
        self.cbuf.advance(len);
    }

    /// The connection for this request: the one from detection, a pooled one, or a new
    /// one (the flag says whether it served a request before).
    async fn upstream(&mut self) -> Result<(RawUpstream, bool), ConnError> {
        if let Some(s) = self.first.take() {
            return Ok((self.pool().0.raw_upstream(s), false));
        }
        let (pool, key) = self.pool();
        if let Some(up) = pool.checkout_raw(&key) {
            return Ok((up, true));
        }
        pool.mark_http(key);
        let s = match &self.through {
            Some(t) => t.through.target.connect(&t.through.dest).await?,
            None => self.conn.target.connect(&self.pod).await?,
        };
        Ok((pool.raw_upstream(s), false))
    }

    /// Reads the response head into `rbuf` (`resp`), forwarding informational (1xx)
    /// responses to the client on the way.
    async fn response_head(
        &mut self,
        up: &mut TcpStream,
        client: &mut TcpStream,
        head_request: bool,
    ) -> Result<(), HeadError> {
        self.rbuf.clear();
        let mut received = 0;
        loop {
            if !self.rbuf.is_empty() {
                let r = head::parse_response(
                    &self.rbuf,
                    MAX_RESPONSE_HEAD,
                    head_request,
                    &mut self.resp,
                );
                match r {
                    head::Response::Partial => {}
                    head::Response::Invalid(why) => return Err(HeadError::Invalid(why)),
                    head::Response::Complete if self.resp.status == 101 => {
                        return Err(HeadError::Invalid(
                            "101 response to a request without upgrade",
                        ))
                    }
                    head::Response::Complete if self.resp.status < 200 => {
                        let mut info = Vec::with_capacity(self.resp.len);
                        write_head(&mut info, &self.rbuf, self.resp.line, &self.resp.fields);
                        info.extend_from_slice(b"\r\n");
                        client.write_all(&info).await.map_err(HeadError::Client)?;
                        self.rbuf.advance(self.resp.len);
                        continue;
                    }
                    head::Response::Complete => return Ok(()),
                }
            }
            if self.rbuf.capacity() - self.rbuf.len() < body::READ_SIZE / 4 {
                self.rbuf.reserve(body::READ_SIZE);
            }
            match up.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(HeadError::Closed(received)),
                Ok(n) => received += n,
                Err(e) => return Err(HeadError::Read(e, received)),
            }
        }
    }

    /// Relays the response whose head is in `rbuf`, then pools the upstream connection
    /// if the server keeps it open.
    async fn response(
        &mut self,
        client: &mut TcpStream,
        mut up: RawUpstream,
        mut legs: Box<Legs>,
        close_after: bool,
    ) -> Result<After, ConnError> {
        let Ok(status) = StatusCode::from_u16(self.resp.status) else {
            let e = HeadError::Invalid("invalid response status");
            return self.bad_gateway(client, legs, e, true).await;
        };
        legs.responded(status);
        let framing = self.resp.framing.unwrap_or(Framing::UntilClose);
        let closing = close_after || *self.shutdown.borrow() || framing == Framing::UntilClose;
        self.out.clear();
        self.resp.write(&mut self.out, &self.rbuf, closing);
        self.rbuf.advance(self.resp.len);
        let mut state = BodyState::new(framing);
        let relayed = body::forward(
            &mut state,
            &mut self.out,
            &mut self.rbuf,
            &mut up.stream,
            client,
            &mut |n| legs.response_data(n),
        )
        .await;
        let end = match relayed {
            Ok(end) => end,
            Err(e) => {
                legs.complete(UnixNanos::now(), Some(format!("response body: {e}")));
                return Err(ConnError::Relay(std::io::Error::other(e)));
            }
        };
        legs.complete(end, None);
        if self.resp.reusable && self.rbuf.is_empty() {
            let (pool, key) = self.pool();
            pool.checkin_raw(key, up);
        }
        self.rbuf.clear();
        Ok(if closing {
            After::Close
        } else {
            After::KeepAlive
        })
    }

    /// No response from upstream: answers 502 itself.
    async fn bad_gateway(
        &mut self,
        client: &mut TcpStream,
        legs: Box<Legs>,
        err: impl std::fmt::Display,
        close: bool,
    ) -> Result<After, ConnError> {
        let msg = err.to_string();
        tracing::debug!(pod = %self.pod.key, direction = self.conn.dir.as_str(), "upstream: {msg}");
        let status = StatusCode::BAD_GATEWAY;
        legs.failed(status, msg);
        let text = "hoptrace: upstream unavailable\n";
        let close = close || *self.shutdown.borrow();
        let answer = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{text}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            text.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        client
            .write_all(answer.as_bytes())
            .await
            .map_err(ConnError::Relay)?;
        Ok(if close {
            After::Close
        } else {
            After::KeepAlive
        })
    }
}
