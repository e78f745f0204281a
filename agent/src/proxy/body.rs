//! The request body as it goes upstream: the client's body, its data bytes counted
//! into the edge's golden metric as they pass (no copy, no allocation per request).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus_client::metrics::counter::Counter;

/// A client's request body on its way upstream.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    bytes: Counter,
}

impl UpstreamBody {
    /// `inner`, counting its data bytes into `bytes`.
    pub fn new(inner: Incoming, bytes: Counter) -> Self {
        Self { inner, bytes }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
