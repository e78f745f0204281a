//! Requests in flight on one HTTP client connection, and the watchdog that closes the
//! connection gracefully when it has been idle for the HTTP idle timeout or when the
//! agent shuts down.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::watch;

use crate::{
    golden::RequestObservation,
    trace::http::{grpc_status, ProxyBody},
};

/// Resolves when the connection has had no request in flight for `idle`, or when the
/// agent shuts down.
pub(super) async fn watchdog(
    activity: &Activity,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let wait_idle = async {
        loop {
            match activity.idle_since() {
                Some(since) if since.elapsed() >= idle => return,
                Some(since) => tokio::time::sleep_until((since + idle).into()).await,
                None => tokio::time::sleep(idle).await,
            }
        }
    };
    let stopping = async {
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            // The agent is gone without a shutdown: nothing to wait for.
            std::future::pending::<()>().await;
        }
        // A request in flight ends with `Connection: close` (HTTP/2: GOAWAY); an idle
        // connection is closed once it has stayed idle a moment, so a request that
        // was steered just before the release is read and served first.
        loop {
            match activity.idle_since() {
                None => return,
                Some(since) if since.elapsed() >= SHUTDOWN_IDLE => return,
                Some(_) => tokio::time::sleep(SHUTDOWN_IDLE / 10).await,
            }
        }
    };
    tokio::select! {
        () = wait_idle => {}
        () = stopping => {}
    }
}

/// At shutdown, how long a client connection must have been idle to be closed.
const SHUTDOWN_IDLE: Duration = Duration::from_millis(250);

/// Requests in flight on one client connection, and since when it has had none.
#[derive(Debug)]
pub(super) struct Activity {
    inflight: AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            inflight: AtomicUsize::new(0),
            idle_since: Mutex::new(Some(Instant::now())),
        }
    }

    /// `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        if self.inflight.fetch_add(1, Ordering::AcqRel) == 0 {
            *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        InFlight(self.clone())
    }
}

/// One request in flight, until its response body is done or dropped.
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let mut since = a.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        if a.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Some(Instant::now());
        }
    }
}

/// A response body that holds its request's [`InFlight`] until it is dropped, and
/// shows its frames to the request's golden-metrics observation (recorded on drop).
pub(super) struct Tracked {
    inner: ProxyBody,
    /// The in-flight mark, and what else lives as long as the response (a propagating
    /// pod's inbound request registration).
    _inflight: (InFlight, Option<super::propagation::InboundGuard>),
    observed: RequestObservation,
}

impl Tracked {
    pub(super) fn new(
        inner: ProxyBody,
        inflight: (InFlight, Option<super::propagation::InboundGuard>),
        mut observed: RequestObservation,
    ) -> Self {
        // A body with nothing to stream (204, `Content-Length: 0`, a gRPC trailers-only
        // response, HEAD) may never be polled: it is complete with its head.
        if inner.is_end_stream() {
            observed.complete();
        }
        Self {
            inner,
            _inflight: inflight,
            observed,
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.observed.response_data(data.len());
                } else if let Some(trailers) = frame.trailers_ref() {
                    self.observed.trailers(grpc_status(trailers));
                }
                if self.inner.is_end_stream() {
                    self.observed.complete();
                }
            }
            Poll::Ready(None) => self.observed.complete(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
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
