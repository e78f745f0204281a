//! One request's record on each leg it crosses: the outbound or inbound leg of the
//! connection, and on a same-node hop served in one pass the destination's inbound leg
//! too. Each leg has its golden-metrics observation and, when traced, its two spans.

use crate::trace::span::UnixNanos;

use http::StatusCode;

use crate::{
    golden::RequestObservation, proxy::propagation::InboundGuard, trace::http::RequestSpans,
};

/// One leg's record of a request.
pub(super) struct LegRequest {
    pub spans: Option<RequestSpans>,
    pub observed: RequestObservation,
}

impl LegRequest {
    /// Notes the trace id on the observation (for the tap) when traced.
    pub fn new(spans: Option<RequestSpans>, mut observed: RequestObservation) -> Self {
        if let Some(s) = &spans {
            observed.traced(|| s.trace_id().to_hex());
        }
        Self { spans, observed }
    }
}

/// The legs of one request, in chain order (the first leg's CLIENT span is the parent
/// of the second's SERVER span).
pub(super) struct Legs {
    pub first: LegRequest,
    pub second: Option<LegRequest>,
    /// The request as the app receives it, registered in a pod that propagates
    /// context while it is in flight (dropped with the legs).
    pub cause: Option<InboundGuard>,
}

impl Legs {
    fn each(&mut self, mut f: impl FnMut(&mut LegRequest)) {
        f(&mut self.first);
        if let Some(s) = self.second.as_mut() {
            f(s);
        }
    }

    /// The request is about to be sent upstream: the last leg's CLIENT span starts.
    pub fn client_started(&mut self) {
        let last = self.second.as_mut().unwrap_or(&mut self.first);
        if let Some(s) = last.spans.as_mut() {
            s.client_started();
        }
    }

    /// The response head is here.
    pub fn responded(&mut self, status: StatusCode) {
        self.each(|l| {
            l.observed.response(status, None);
            if let Some(s) = l.spans.as_mut() {
                s.responded(status);
            }
        });
    }

    /// Response body bytes passed.
    pub fn response_data(&mut self, n: u64) {
        self.each(|l| l.observed.response_data(n as usize));
    }

    /// The response is over at `end` (`error`: why it did not complete). The legs are
    /// completed where they are (boxed, not moved); their observations are recorded
    /// when the box drops.
    pub fn complete(mut self: Box<Self>, end: UnixNanos, error: Option<String>) {
        drop(self.cause.take());
        self.each(|l| {
            if error.is_none() {
                l.observed.complete();
            }
            if let Some(s) = l.spans.take() {
                s.complete(end, error.clone());
            }
        });
    }

    /// No response came: the proxy answers `status` itself.
    pub fn failed(mut self: Box<Self>, status: StatusCode, error: String) {
        drop(self.cause.take());
        self.each(|l| {
            if let Some(s) = l.spans.take() {
                s.failed(status, error.clone());
            }
            l.observed.response(status, None);
            l.observed.complete();
        });
    }
}
