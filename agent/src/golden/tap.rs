//! Live requests (`hoptrace tap`): every finished request as one JSON line, for
//! whoever is watching, from `GET /tap` on the admin port.
//!
//! Opt-in (`--tap`): raw paths can carry personal data. Bounded and never in the data
//! path's way: events go through a broadcast ring of [`CAPACITY`]; a reader that
//! falls behind loses the oldest events and is told how many (`{"dropped":N}`), the
//! proxy never waits. Nothing is built for a request while nobody watches.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

/// Events buffered per reader before the oldest are dropped.
pub const CAPACITY: usize = 1024;
/// Longest raw path kept in an event.
pub const MAX_PATH: usize = 256;

/// One finished request.
#[derive(Debug, Clone, Serialize)]
pub struct TapEvent {
    /// Unix time of the response's end, milliseconds.
    pub ts_ms: u64,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// Client workload's namespace.
    pub client_namespace: Arc<str>,
    /// Client workload.
    pub client: Arc<str>,
    /// Server workload's namespace.
    pub server_namespace: Arc<str>,
    /// Server workload.
    pub server: Arc<str>,
    /// Request method.
    pub method: &'static str,
    /// Raw path (query included), cut at [`MAX_PATH`] bytes.
    pub path: String,
    /// The route label.
    pub route: Arc<str>,
    /// Response status (0: none).
    pub status: u16,
    /// gRPC status, for gRPC calls that had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<i64>,
    /// `success` or `failure` (docs/METRICS.md).
    pub outcome: &'static str,
    /// Request head to response end, milliseconds.
    pub latency_ms: f64,
    /// The trace id, when the request was traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The node's tap: a broadcast ring, or nothing when `--tap` is off.
#[derive(Debug)]
pub struct Tap {
    tx: Option<broadcast::Sender<Arc<TapEvent>>>,
}

impl Tap {
    /// A tap that serves readers (`enabled`) or refuses them.
    pub fn new(enabled: bool) -> Self {
        Self {
            tx: enabled.then(|| broadcast::channel(CAPACITY).0),
        }
    }

    /// Whether anyone reads now (one atomic load): requests build events only then.
    pub fn watched(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Hands an event to the readers; never waits.
    pub fn publish(&self, event: TapEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Arc::new(event));
        }
    }

    /// A new reader, or `None` when the tap is off.
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Arc<TapEvent>>> {
        self.tx.as_ref().map(broadcast::Sender::subscribe)
    }
}

/// What a reader asked for (`GET /tap?namespace=N&to=W&path=PREFIX`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TapFilter {
    /// Only requests with a client or server in this namespace.
    pub namespace: Option<String>,
    /// Only requests to this server workload.
    pub to: Option<String>,
    /// Only paths starting with this.
    pub path: Option<String>,
}

impl TapFilter {
    /// Parses a query string; unknown keys are an error (a typo must not silently
    /// widen the stream).
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut f = TapFilter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.into_owned();
            match &*k {
                "namespace" => f.namespace = Some(v),
                "to" => f.to = Some(v),
                "path" => f.path = Some(v),
                _ => {
                    return Err(format!(
                        "unknown tap filter {k:?}: use namespace, to or path"
                    ))
                }
            }
        }
        Ok(f)
    }

    /// Whether `e` passes.
    pub fn matches(&self, e: &TapEvent) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| &*e.client_namespace == ns || &*e.server_namespace == ns)
            && self.to.as_deref().is_none_or(|to| &*e.server == to)
            && self.path.as_deref().is_none_or(|p| e.path.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str) -> TapEvent {
        TapEvent {
            ts_ms: 0,
            direction: "inbound",
            client_namespace: Arc::from("shop"),
            client: Arc::from("web"),
            server_namespace: Arc::from("shop"),
            server: Arc::from("db"),
            method: "GET",
            path: path.into(),
            route: Arc::from("/x"),
            status: 200,
            grpc_status: None,
            outcome: "success",
            latency_ms: 1.0,
            trace_id: None,
        }
    }

    #[test]
    fn filters() {
        let f = TapFilter::parse("namespace=shop&to=db&path=%2Fusers").expect("filter");
        assert_eq!(f.path.as_deref(), Some("/users"));
        assert!(f.matches(&event("/users/1")));
        assert!(!f.matches(&event("/orders/1")));
        assert!(!TapFilter::parse("to=web")
            .expect("filter")
            .matches(&event("/")));
        assert!(TapFilter::parse("nmespace=x").is_err());
        let f = TapFilter::parse("path=a+b%41").expect("filter");
        assert_eq!(f.path.as_deref(), Some("a bA"));
    }

    #[tokio::test]
    async fn slow_readers_lose_the_oldest_never_block() {
        let tap = Tap::new(true);
        assert!(!tap.watched());
        let mut rx = tap.subscribe().expect("on");
        assert!(tap.watched());
        for i in 0..CAPACITY + 10 {
            tap.publish(event(&format!("/{i}")));
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.recv().await.expect("event").path, "/10");
        assert!(Tap::new(false).subscribe().is_none());
    }
}
