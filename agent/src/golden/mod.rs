//! Golden metrics for every request and connection of every enrolled pod, traced or
//! not: success rate, rate, latency, per direction, per edge (client workload →
//! server workload) and per route. docs/METRICS.md lists every series and its bound.
//!
//! The data path asks for an [`Edge`] once per connection ([`Golden::edge`]), then
//! records each request with a [`RequestObservation`] that the response body carries
//! until it is done; nothing here blocks or allocates per request beyond the label
//! lookup of the families.

pub mod peers;
mod request;
pub mod route;
mod series;
pub mod tap;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use http::Method;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::pod::{Direction, PodKey};
pub use peers::{Peer, PeerIndex};
use request::method_label;
pub use request::RequestObservation;
pub use route::{RouteCache, RouteTable};
pub use tap::{Tap, TapEvent};

/// Latency buckets (seconds): 1 ms to 10 s, as Linkerd's and OpenTelemetry's defaults
/// roughly do, so `histogram_quantile` is within a bucket of the truth.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Connection duration buckets (seconds).
const CONNECTION_BUCKETS: [f64; 8] = [0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0];

/// A shared label value (a workload, namespace or route name): cloning is a refcount.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl prometheus_client::encoding::EncodeLabelValue for Name {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(&self.0)
    }
}

/// The two ends of a connection, seen from one leg.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    /// The leg that observed it: `outbound` (the client pod's) or `inbound` (the server pod's).
    pub direction: &'static str,
    /// Client workload's namespace.
    pub client_namespace: Name,
    /// Client workload.
    pub client: Name,
    /// Server workload's namespace.
    pub server_namespace: Name,
    /// Server workload.
    pub server: Name,
}

/// Labels of the per-pod series (the enrolled pod of the leg: the server on the
/// inbound leg, the client on the outbound leg). Removed when the pod is released.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    /// `outbound` | `inbound`.
    pub direction: &'static str,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
}

/// Labels of the per-pod request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodOutcomeLabels {
    outcome: &'static str,
    #[prometheus(flatten)]
    pod: PodLabels,
}

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    route: Name,
    method: &'static str,
    status_code: u16,
    outcome: &'static str,
    // Flattened fields must come last (prometheus-client 0.22's derive).
    #[prometheus(flatten)]
    edge: EdgeLabels,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    route: Name,
    outcome: &'static str,
    #[prometheus(flatten)]
    edge: EdgeLabels,
}

/// The golden metric families, the route table and the peer index of the node.
#[derive(Debug)]
pub struct Golden {
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    headers_latency: Family<LatencyLabels, Histogram>,
    traced: Family<EdgeLabels, Counter>,
    request_bytes: Family<EdgeLabels, Counter>,
    response_bytes: Family<EdgeLabels, Counter>,
    pod_requests: Family<PodOutcomeLabels, Counter>,
    pod_latency: Family<PodLabels, Histogram>,
    tcp_opened: Family<EdgeLabels, Counter>,
    tcp_active: Family<EdgeLabels, Gauge>,
    tcp_duration: Family<EdgeLabels, Histogram>,
    tcp_bytes_from_client: Family<EdgeLabels, Counter>,
    tcp_bytes_from_server: Family<EdgeLabels, Counter>,
    /// Routes per server workload, capped.
    pub routes: RouteTable,
    /// Address → workload.
    pub peers: PeerIndex,
    /// Live requests for `GET /tap`.
    pub tap: Tap,
    /// `--golden-metrics`: when off, requests and connections are not counted (routes
    /// are still templated for the spans; the bench measures what counting costs).
    enabled: bool,
}

impl Default for Golden {
    fn default() -> Self {
        Self::new(true, false)
    }
}

impl Golden {
    /// The node's golden metrics (`enabled`: counted; `--golden-metrics`); `tap`
    /// serves live requests (`--tap`).
    pub fn new(enabled: bool, tap: bool) -> Self {
        Self {
            enabled,
            tap: Tap::new(tap),
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS.into_iter())),
            headers_latency: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.into_iter())
            }),
            traced: Family::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            pod_requests: Family::default(),
            pod_latency: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.into_iter())
            }),
            tcp_opened: Family::default(),
            tcp_active: Family::default(),
            tcp_duration: Family::new_with_constructor(|| {
                Histogram::new(CONNECTION_BUCKETS.into_iter())
            }),
            tcp_bytes_from_client: Family::default(),
            tcp_bytes_from_server: Family::default(),
            routes: RouteTable::default(),
            peers: PeerIndex::default(),
        }
    }
}

/// `Arc<Golden>` is what the metrics registry and the data path share.
impl crate::metrics::Source for Arc<Golden> {
    fn register(&self, r: &mut Registry) {
        r.register(
            "http_requests",
            "HTTP/gRPC requests by edge, route, method, status code and outcome (failure: 5xx, a gRPC status other than OK, or no response)",
            self.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time from the request head to the end of the response, by edge, route and outcome",
            self.latency.clone(),
        );
        r.register(
            "http_response_headers_duration_seconds",
            "Time from the request head to the response head, by edge, route and outcome",
            self.headers_latency.clone(),
        );
        r.register(
            "pod_http_requests",
            "HTTP/gRPC requests per enrolled pod and outcome (hoptrace stat pod)",
            self.pod_requests.clone(),
        );
        r.register(
            "pod_http_request_duration_seconds",
            "Time from the request head to the end of the response, per enrolled pod",
            self.pod_latency.clone(),
        );
        r.register(
            "http_traced_requests",
            "Requests that carried (or started) trace context, by edge",
            self.traced.clone(),
        );
        r.register(
            "http_request_body_bytes",
            "Request body bytes by edge",
            self.request_bytes.clone(),
        );
        r.register(
            "http_response_body_bytes",
            "Response body bytes by edge",
            self.response_bytes.clone(),
        );
        r.register(
            "tcp_connections_opened",
            "Connections by edge (HTTP and opaque)",
            self.tcp_opened.clone(),
        );
        r.register(
            "tcp_connections_active",
            "Connections open now, by edge",
            self.tcp_active.clone(),
        );
        r.register(
            "tcp_connection_duration_seconds",
            "Connection lifetimes by edge (observed when they close)",
            self.tcp_duration.clone(),
        );
        r.register(
            "tcp_read_bytes_from_client",
            "Bytes the client sent, by edge",
            self.tcp_bytes_from_client.clone(),
        );
        r.register(
            "peer_addresses",
            "Pod addresses the agent can name (this node's and, from the workload file or the cluster-wide pod watch, the others')",
            self.peers.size.clone(),
        );
        r.register(
            "tcp_read_bytes_from_server",
            "Bytes the server sent, by edge",
            self.tcp_bytes_from_server.clone(),
        );
    }
}

/// One connection's edge, with its metric handles resolved once.
#[derive(Debug, Clone)]
pub struct Edge {
    golden: Arc<Golden>,
    labels: EdgeLabels,
    /// The enrolled pod's series, resolved once per connection (`None`: metrics off).
    pod: Option<Arc<PodSeries>>,
    /// The edge's request series this connection used, resolved once.
    series: Arc<Mutex<series::SeriesCache>>,
}

/// One pod's request series in one direction.
#[derive(Debug)]
struct PodSeries {
    success: Counter,
    failure: Counter,
    latency: Histogram,
}

impl Golden {
    /// The edge of a connection of `own` (the enrolled pod's workload) in `dir` with
    /// the remote end at `peer_ip`.
    pub fn edge(
        self: &Arc<Self>,
        dir: Direction,
        pod: &PodKey,
        own: &Peer,
        peer_ip: IpAddr,
    ) -> Edge {
        let pod = self.enabled.then(|| {
            let labels = PodLabels {
                direction: dir.as_str(),
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
            };
            let count = |outcome| {
                self.pod_requests
                    .get_or_create(&PodOutcomeLabels {
                        outcome,
                        pod: labels.clone(),
                    })
                    .clone()
            };
            Arc::new(PodSeries {
                success: count("success"),
                failure: count("failure"),
                latency: self.pod_latency.get_or_create(&labels).clone(),
            })
        });
        let peer = self.peers.lookup(peer_ip);
        let (client, server) = match dir {
            Direction::Outbound => (own.clone(), peer),
            Direction::Inbound => (peer, own.clone()),
        };
        Edge {
            golden: self.clone(),
            pod,
            series: Arc::default(),
            labels: EdgeLabels {
                direction: dir.as_str(),
                client_namespace: Name(client.namespace),
                client: Name(client.workload),
                server_namespace: Name(server.namespace),
                server: Name(server.workload),
            },
        }
    }
}

impl Golden {
    /// Removes a released pod's own series (the edge series are per workload and stay).
    pub fn remove_pod(&self, pod: &PodKey) {
        for dir in [Direction::Outbound, Direction::Inbound] {
            let labels = PodLabels {
                direction: dir.as_str(),
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
            };
            self.pod_latency.remove(&labels);
            for outcome in ["success", "failure"] {
                self.pod_requests.remove(&PodOutcomeLabels {
                    outcome,
                    pod: labels.clone(),
                });
            }
        }
    }
}

impl Edge {
    /// The connection's resolved series.
    fn series(&self) -> MutexGuard<'_, series::SeriesCache> {
        // Nothing is left half-done under this lock: a poisoned one is usable.
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection on this edge opened; the guard counts it until dropped.
    pub fn connection(&self) -> ConnectionGuard {
        if !self.golden.enabled {
            return ConnectionGuard {
                edge: None,
                start: Instant::now(),
            };
        }
        self.golden.tcp_opened.get_or_create(&self.labels).inc();
        self.golden.tcp_active.get_or_create(&self.labels).inc();
        ConnectionGuard {
            edge: Some(self.clone()),
            start: Instant::now(),
        }
    }

    /// The counter of request body bytes on this edge (a detached one when the
    /// metrics are off).
    pub fn request_body_counter(&self) -> Counter {
        if !self.golden.enabled {
            return Counter::default();
        }
        self.golden
            .request_bytes
            .get_or_create(&self.labels)
            .clone()
    }

    /// The byte counters of an opaque connection on this edge (from the client, from
    /// the server), resolved once per connection.
    pub fn tcp_byte_counters(&self) -> (Counter, Counter) {
        let g = &self.golden;
        if !g.enabled {
            return (Counter::default(), Counter::default());
        }
        (
            g.tcp_bytes_from_client.get_or_create(&self.labels).clone(),
            g.tcp_bytes_from_server.get_or_create(&self.labels).clone(),
        )
    }

    /// A request on this edge begins: its route is resolved (and capped) now.
    /// `target`: the request's path and query (origin form).
    pub fn request(&self, method: &Method, target: &str, grpc: bool) -> RequestObservation {
        let target = route::RequestTarget::new(target);
        self.request_cached(&mut RouteCache::default(), method, target, grpc)
    }

    /// [`Edge::request`] with the connection's route cache, for a target whose path
    /// the caller has found already.
    pub fn request_cached(
        &self,
        cache: &mut RouteCache,
        method: &Method,
        target: route::RequestTarget<'_>,
        grpc: bool,
    ) -> RequestObservation {
        let (path, target) = (target.path(), target.target());
        let server = &self.labels.server.0;
        let route = self.golden.routes.route_cached(cache, server, path, grpc);
        // The raw path only while someone taps.
        let tap_path = self.golden.tap.watched().then(|| {
            let p = if target.is_empty() { "/" } else { target };
            let mut end = p.len().min(tap::MAX_PATH);
            while !p.is_char_boundary(end) {
                end -= 1;
            }
            p[..end].to_owned()
        });
        RequestObservation::new(self.clone(), route, method_label(method), grpc, tap_path)
    }
}

/// Counts a connection as active until dropped, then observes its duration.
#[derive(Debug)]
pub struct ConnectionGuard {
    /// `None` when the metrics are off.
    edge: Option<Edge>,
    start: Instant,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let Some(edge) = &self.edge else { return };
        let g = &edge.golden;
        g.tcp_active.get_or_create(&edge.labels).dec();
        g.tcp_duration
            .get_or_create(&edge.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}
