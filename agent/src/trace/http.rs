//! The span layer of an HTTP request leg: the trace decision when the head arrives,
//! the semantic-convention attributes, and the two spans (SERVER: the proxy receiving
//! the request, CLIENT: the proxy sending it on) emitted when the response is over.
//! `proxy::http` moves the request and calls into this module at four points: [`begin`]
//! (head in, trace header rewritten), [`RequestSpans::client_started`],
//! [`RequestSpans::failed`] (no response) and [`RequestSpans::wrap`] (response head in;
//! the returned body emits the spans at its end). docs/TRACING.md is the rulebook.

use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt as _};
use hyper::body::{Body, Frame};
use prometheus_client::metrics::counter::Counter;

use super::{
    context::{self, SpanId, TraceContext, TraceId},
    span::{
        Kind, PodIdentity, PodSpans, SpanParts, SpanSink, Status, UnixNanos, TRUNCATED_ATTRIBUTES,
    },
    wire::Attributes,
};

pub use super::attrs::RequestFacts;
use super::attrs::{LastRequest, Leg, RequestAttrs};

/// What the span layer knows about a request leg's connection (one per client
/// connection, shared by its requests).
#[derive(Debug)]
pub struct LegSpans {
    /// Where finished spans go.
    pub sink: SpanSink,
    /// The pod the spans belong to (their resource).
    pub identity: Arc<PodIdentity>,
    /// `outbound` | `inbound` (`hoptrace.direction`).
    pub direction: &'static str,
    /// The destination (`server.port`; `server.address` without a Host).
    pub dst: SocketAddr,
    /// The attributes every request of the connection has (`url.scheme`,
    /// `server.port`, `client.address`, `hoptrace.direction`), encoded once.
    fixed: Attributes,
    /// Counts attribute values cut to the limit.
    pub truncated: Counter,
    /// The connection's last request attributes.
    last: LastRequest,
}

impl LegSpans {
    /// The span layer of a connection from `client` to `dst`.
    pub fn new(
        sink: SpanSink,
        identity: Arc<PodIdentity>,
        direction: &'static str,
        dst: SocketAddr,
        client: IpAddr,
        truncated: Counter,
    ) -> Self {
        let mut fixed = Attributes::with_capacity(128);
        fixed.string("url.scheme", "http");
        fixed.int("server.port", i64::from(dst.port()));
        fixed.string("client.address", &client.to_string());
        fixed.string("hoptrace.direction", direction);
        Self {
            sink,
            identity,
            direction,
            dst,
            fixed,
            truncated,
            last: LastRequest::default(),
        }
    }

    /// The attributes of a request on this connection leg (the last request's when it
    /// was the same).
    fn attrs(&self, req: RequestFacts<'_>, route: &Arc<str>, grpc: bool) -> Arc<RequestAttrs> {
        let leg = Leg {
            fixed: &self.fixed,
            dst: self.dst,
        };
        self.last.attrs(leg, req, route, grpc, &self.truncated)
    }
}

/// The trace decision for one request.
struct Traced {
    /// The agent started this trace: the SERVER span is the root.
    root: bool,
    ctx: TraceContext,
    server_id: SpanId,
    client_id: SpanId,
}

/// Decides whether a request is traced and rewrites its trace header (DESIGN §3.3):
/// - no context: forwarded untouched and not traced, unless `start_root` (the pod opted
///   into starting traces for a share of its context-less inbound requests);
/// - not sampled: ids rewritten so the next hop's parent is new, no span;
/// - sampled: the forwarded header carries the CLIENT span as parent.
fn decide(headers: &mut HeaderMap, start_root: bool) -> Option<Traced> {
    let found = context::extract(headers);
    decide_with(found, start_root, |ctx, span| {
        context::inject(headers, ctx, span)
    })
}

/// [`decide`] on the context `found` in a request; `inject` rewrites the request's
/// trace header to carry `ctx` with the given span as parent.
fn decide_with(
    found: Option<TraceContext>,
    start_root: bool,
    mut inject: impl FnMut(&TraceContext, SpanId),
) -> Option<Traced> {
    let (root, ctx) = match found {
        None if start_root => (true, context::new_root(true)),
        None => return None,
        Some(ctx) if !ctx.sampled() => {
            inject(&ctx, SpanId::random());
            return None;
        }
        Some(ctx) => (false, ctx),
    };
    let (server_id, client_id) = SpanId::random_pair();
    let t = Traced {
        root,
        ctx,
        server_id,
        client_id,
    };
    inject(&t.ctx, t.client_id);
    Some(t)
}

/// Makes the trace decision for a request whose head just arrived (rewriting its trace
/// header) and, when it is traced and spans are exported, starts its spans. The
/// attributes are gathered here, before the proxy changes the request.
///
/// `route` is the request's bounded path template (`http.route`, and the span name
/// `METHOD route`); `grpc` whether it is a gRPC call (span name `service/method`).
pub fn begin<B>(
    leg: Option<&Arc<LegSpans>>,
    req: &mut Request<B>,
    start_root: bool,
    route: &Arc<str>,
    grpc: bool,
) -> Option<RequestSpans> {
    let server_start = UnixNanos::now();
    let traced = decide(req.headers_mut(), start_root)?;
    let leg = leg?.clone();
    let attrs = leg.attrs(RequestFacts::of(req), route, grpc);
    Some(RequestSpans::new(leg, traced, attrs, server_start))
}

/// [`begin`] for a head that is not a hyper `Request`: `trace_headers` holds its
/// trace-context fields (and receives the rewritten ones), `facts` the rest;
/// `server_start` is when its head arrived.
pub fn begin_head(
    leg: Option<&Arc<LegSpans>>,
    trace_headers: &mut HeaderMap,
    facts: RequestFacts<'_>,
    server_start: UnixNanos,
    start_root: bool,
    route: &Arc<str>,
    grpc: bool,
) -> Option<RequestSpans> {
    let traced = decide(trace_headers, start_root)?;
    let leg = leg?.clone();
    let attrs = leg.attrs(facts, route, grpc);
    Some(RequestSpans::new(leg, traced, attrs, server_start))
}

/// [`begin_head`] for the common head whose only trace-context field is one
/// `traceparent` of [`TRACEPARENT_LEN`](context::TRACEPARENT_LEN) bytes: the same
/// decision, with the rewritten value (always that long) written back into `value`, so
/// the head keeps its bytes and no `HeaderMap` is built. `None` when `value` is not a
/// valid `traceparent` (nothing changed): the caller takes [`begin_head`], whose rules
/// cover it.
pub fn begin_traceparent(
    leg: Option<&Arc<LegSpans>>,
    value: &mut [u8; context::TRACEPARENT_LEN],
    facts: RequestFacts<'_>,
    server_start: UnixNanos,
    start_root: bool,
    route: &Arc<str>,
    grpc: bool,
) -> Option<Option<RequestSpans>> {
    let found = context::w3c_context_bytes(value)?;
    let traced = decide_with(Some(found), start_root, |ctx, span| {
        context::write_traceparent(value, &ctx.trace_id, &span, ctx.flags())
    });
    Some(traced.and_then(|traced| {
        let leg = leg?.clone();
        let attrs = leg.attrs(facts, route, grpc);
        Some(RequestSpans::new(leg, traced, attrs, server_start))
    }))
}

/// The grpc-status of a trailers-only response (status in the headers) or of trailers.
pub fn grpc_status(h: &HeaderMap) -> Option<i64> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// One traced request's spans, until they are emitted.
pub struct RequestSpans {
    leg: Arc<LegSpans>,
    traced: Traced,
    /// The request's attributes, shared with the leg's [`LastRequest`].
    attrs: Arc<RequestAttrs>,
    /// The response's, written at the end.
    response: Attributes,
    server_start: UnixNanos,
    client_start: UnixNanos,
    status: Option<StatusCode>,
    grpc_status: Option<i64>,
}

/// A response body as the proxy sends it downstream.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl RequestSpans {
    /// The request's trace id.
    pub fn trace_id(&self) -> TraceId {
        self.traced.ctx.trace_id
    }

    fn new(leg: Arc<LegSpans>, traced: Traced, attrs: Arc<RequestAttrs>, start: UnixNanos) -> Self {
        Self {
            leg,
            traced,
            attrs,
            response: Attributes::default(),
            server_start: start,
            client_start: start,
            status: None,
            grpc_status: None,
        }
    }

    /// The response head is here with `status` (for a caller that relays the body
    /// itself and then calls [`RequestSpans::complete`]).
    pub fn responded(&mut self, status: StatusCode) {
        self.status = Some(status);
    }

    /// The response is over (`error`: why it did not complete): emits the spans, which
    /// end at `end` (when the response's last byte was handed to the client's socket).
    pub fn complete(self, end: UnixNanos, error: Option<String>) {
        self.emit_at(end, error);
    }

    /// The proxy starts sending the request on (the CLIENT span starts).
    pub fn client_started(&mut self) {
        self.client_start = UnixNanos::now();
    }

    /// No response came: the proxy answers `status` itself; `error` says why.
    pub fn failed(mut self, status: StatusCode, error: String) {
        self.status = Some(status);
        self.emit(Some(error));
    }

    /// The response head is here: returns its body, which emits the spans once its
    /// last frame is handed downstream (or it is dropped early, as an error). At `101`
    /// the HTTP exchange is over (the upgraded bytes are relayed without spans).
    pub fn wrap<B>(mut self, status: StatusCode, headers: &HeaderMap, body: B) -> ProxyBody
    where
        B: Body<Data = Bytes, Error = hyper::Error> + Send + Sync + Unpin + 'static,
    {
        self.status = Some(status);
        self.grpc_status = grpc_status(headers);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            self.emit(None);
            return body.boxed();
        }
        SpanBody {
            inner: body,
            done: Some(self),
        }
        .boxed()
    }

    /// Writes the response's attributes (and the list of cut values): both spans
    /// carry the request's and then these.
    fn finish_attributes(&mut self) {
        let r = &mut self.response;
        if let Some(s) = self.status {
            r.int("http.response.status_code", i64::from(s.as_u16()));
        }
        if let Some(g) = self.grpc_status {
            r.int("rpc.grpc.status_code", g);
        }
        if !self.attrs.truncated.is_empty() {
            r.strings(TRUNCATED_ATTRIBUTES, self.attrs.truncated.iter().copied());
        }
    }

    /// A span's status (DESIGN §3.4): ERROR for a connection/stream error, a gRPC
    /// status other than OK, and HTTP 5xx (SERVER spans) or 4xx and 5xx (CLIENT spans).
    fn status(&self, kind: Kind, error: &Option<String>) -> Status {
        if let Some(e) = error {
            return Status::Error(e.clone());
        }
        let code = self.status.map_or(0, |s| s.as_u16());
        let http_error_from = match kind {
            Kind::Server => 500,
            Kind::Client => 400,
        };
        if code >= http_error_from {
            return Status::Error(format!("HTTP {code}"));
        }
        match self.grpc_status {
            Some(g) if g != 0 => Status::Error(format!("gRPC status {g}")),
            _ => Status::Unset,
        }
    }

    /// Emits the SERVER and CLIENT spans; `error` is a connection/stream error. Both
    /// are encoded here, once, into one buffer; the attributes written at request time
    /// are copied into each as bytes.
    fn emit(self, error: Option<String>) {
        self.emit_at(UnixNanos::now(), error);
    }

    fn emit_at(mut self, end: UnixNanos, error: Option<String>) {
        self.finish_attributes();
        let t = &self.traced;
        let (trace_id, flags) = (t.ctx.trace_id, t.ctx.flags());
        let client = (
            Kind::Client,
            t.client_id,
            Some(t.server_id),
            self.client_start,
        );
        let server = (
            Kind::Server,
            t.server_id,
            (!t.root).then_some(t.ctx.span_id),
            self.server_start,
        );
        let statuses = [
            self.status(Kind::Client, &error),
            self.status(Kind::Server, &error),
        ];
        let attributes = [&self.attrs.encoded, &self.response];
        let len = attributes.iter().map(|a| a.as_bytes().len()).sum::<usize>();
        let mut out = Vec::with_capacity(2 * (len + 160));
        for ((kind, span_id, parent, start), status) in [client, server].into_iter().zip(&statuses)
        {
            let parts = SpanParts {
                trace_id,
                span_id,
                parent,
                flags,
                kind,
                name: &self.attrs.name,
                start,
                end,
                status,
            };
            parts.encode(attributes, &mut out);
        }
        self.leg.sink.submit(PodSpans {
            pod: self.leg.identity.clone(),
            count: 2,
            bytes: out,
        });
    }
}

/// What a [`SpanBody`] reports to (the span emitter; a recorder in tests).
trait Finish {
    /// A `grpc-status` found in the trailers.
    fn grpc_status(&mut self, status: i64);
    /// The response is over; `error` says why it did not complete.
    fn finish(self, error: Option<String>);
}

impl Finish for RequestSpans {
    fn grpc_status(&mut self, status: i64) {
        self.grpc_status = Some(status);
    }

    fn finish(self, error: Option<String>) {
        self.emit(error);
    }
}

/// A response body that emits the spans when its last frame has been handed to the
/// downstream connection (or when it is dropped early, as an error).
struct SpanBody<B: Body, F: Finish> {
    inner: B,
    done: Option<F>,
}

impl<B, F> Body for SpanBody<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    F: Finish + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    if let (Some(g), Some(done)) = (grpc_status(t), self.done.as_mut()) {
                        done.grpc_status(g);
                    }
                }
                // Trailers are always the last frame; hyper's HTTP/1 encoder drops the
                // body right after writing them, without polling for the end.
                if frame.is_trailers() || self.inner.is_end_stream() {
                    if let Some(done) = self.done.take() {
                        done.finish(None);
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = format!("response body: {e}");
                if let Some(done) = self.done.take() {
                    done.finish(Some(msg));
                }
            }
            Poll::Ready(None) => {
                if let Some(done) = self.done.take() {
                    done.finish(None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, F: Finish> Drop for SpanBody<B, F> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            // hyper never polls a body that is at its end from the start: it sends the
            // head (HTTP/2: a HEADERS frame with END_STREAM) and drops the body. That is
            // a complete response — a gRPC trailers-only response (grpc-status in the
            // headers, as servers answer an error without messages), an HTTP 204, a
            // `Content-Length: 0` body — not an abandoned one.
            let error = (!self.inner.is_end_stream())
                .then(|| "response aborted before completion".to_string());
            done.finish(error);
        }
    }
}

#[cfg(test)]
mod tests;
