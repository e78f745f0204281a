//! Prometheus metrics (served by `admin` at `GET /metrics`).
//!
//! Per-pod handles are created once at enrollment and cloned into connection tasks,
//! so the data path only touches atomics. A released pod's series are removed.

pub mod text;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::pod::{Direction, PodKey};

/// A part of the agent with metrics of its own (the kernel datapath, the span
/// exporter), registered once when the registry is built. The parts depend on this
/// module, never the other way.
pub trait Source {
    /// Registers this part's metrics (the registry adds the `hoptrace_` prefix).
    fn register(&self, registry: &mut Registry);
}

/// Labels of the per-pod connection series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// `outbound` | `inbound`.
    pub direction: &'static str,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
}

/// Labels of the refused-connection counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `outbound` | `inbound`.
    pub direction: &'static str,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// `pod_limit` (the pod's connection slots are taken) | `self_connect` (addressed to
    /// the agent's own listener).
    pub reason: &'static str,
}

/// Node-wide counters of limits being hit (docs/SECURITY.md).
#[derive(Debug, Clone, Default)]
pub struct LimitMetrics {
    /// HTTP/1 connections whose request line did not fit the detection window (8 KiB)
    /// and were relayed opaquely, untraced.
    pub head_too_large: Counter,
    /// Admin connections refused because the per-peer or total cap was reached.
    pub admin_refused: Counter,
    /// Span attribute values cut to the documented limit.
    pub attributes_truncated: Counter,
    /// Client connections closed by a timeout (header read, HTTP idle, TCP idle).
    pub timeouts: Counter,
}

/// Node-wide counts of opaque TCP connections by how they were relayed
/// (`hoptrace_opaque_connections_total{relay}`).
#[derive(Debug, Clone, Default)]
pub struct OpaqueMetrics {
    /// Spliced in the kernel (docs/ARCHITECTURE.md, "Opaque TCP in the kernel").
    pub kernel: Counter,
    /// Relayed in userspace (`--opaque-tcp userspace`, or the kernel path unavailable
    /// or refused for this connection).
    pub userspace: Counter,
    /// Spliced, then moved to the userspace relay because a reader fell behind (the
    /// kernel path holds at most a window per direction).
    pub paused: Counter,
}

/// Labels of `hoptrace_opaque_connections_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    /// `kernel` | `userspace` | `kernel_paused`.
    pub relay: &'static str,
}

/// One pod's `hoptrace_propagation_total` counters (context propagation by the agent).
#[derive(Debug, Clone, Default)]
pub struct PropagationMetrics {
    /// Context added to a context-less outbound request.
    pub linked: Counter,
    /// Several inbound requests could have caused it: forwarded untouched.
    pub ambiguous: Counter,
    /// No inbound request in flight, or the one that caused it carried no context.
    pub none: Counter,
}

/// Labels of the workload state gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `steered` | `failed` | `pending` (Kubernetes discovery: to be enrolled, cgroup
    /// or network namespace not found yet).
    pub state: &'static str,
}

/// Labels of the context propagation counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PropagationLabels {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// `linked` | `ambiguous` | `none`.
    pub result: &'static str,
}

/// Labels of the Kubernetes watch error counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// `pods` | `namespaces`.
    pub resource: &'static str,
}

/// All agent metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    accepted: Family<ConnLabels, Counter>,
    active: Family<ConnLabels, Gauge>,
    failed: Family<ConnLabels, Counter>,
    bytes_from_client: Family<ConnLabels, Counter>,
    bytes_from_server: Family<ConnLabels, Counter>,
    upstream_opened: Family<ConnLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    /// Limits being hit.
    pub limits: LimitMetrics,
    /// Workloads by state.
    pub workloads: Family<StateLabels, Gauge>,
    /// Rejected workload file reads (the last good set stays in force).
    pub workload_file_errors: Counter,
    kube_watch_errors: Family<ResourceLabels, Counter>,
    kube_forbidden: Family<ResourceLabels, Gauge>,
    propagation: Family<PropagationLabels, Counter>,
    opaque: OpaqueMetrics,
}

/// Metric handles for one pod and direction, cheap to clone into tasks.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    /// Connections accepted from the steered side.
    pub accepted: Counter,
    /// Connections being proxied now.
    pub active: Gauge,
    /// Connections that could not be proxied (no original destination, upstream
    /// connect failure, I/O error).
    pub failed: Counter,
    /// Bytes the client sent.
    pub bytes_from_client: Counter,
    /// Bytes the server sent.
    pub bytes_from_server: Counter,
    /// Upstream connections opened (HTTP reuses them across client connections).
    pub upstream_opened: Counter,
    /// Connections reset at accept because the pod's slots were taken.
    pub refused_limit: Counter,
    /// Connections refused because they were addressed to the agent's own listener.
    pub refused_loop: Counter,
    /// Node-wide limit counters.
    pub limits: LimitMetrics,
    /// Node-wide opaque TCP relay counters.
    pub opaque: OpaqueMetrics,
}

impl Metrics {
    /// Creates the registry with the agent's own metrics and those of `sources`.
    pub fn new(sources: &[&dyn Source]) -> Self {
        let mut registry = Registry::with_prefix("hoptrace");
        let accepted = Family::<ConnLabels, Counter>::default();
        let active = Family::<ConnLabels, Gauge>::default();
        let failed = Family::<ConnLabels, Counter>::default();
        let bytes_from_client = Family::<ConnLabels, Counter>::default();
        let bytes_from_server = Family::<ConnLabels, Counter>::default();
        let upstream_opened = Family::<ConnLabels, Counter>::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        let limits = LimitMetrics::default();
        let workloads = Family::<StateLabels, Gauge>::default();
        let workload_file_errors = Counter::default();
        let kube_watch_errors = Family::<ResourceLabels, Counter>::default();
        let kube_forbidden = Family::<ResourceLabels, Gauge>::default();
        let propagation = Family::<PropagationLabels, Counter>::default();
        registry.register(
            "connections_accepted",
            "Connections accepted by a per-pod listener",
            accepted.clone(),
        );
        registry.register(
            "connections_active",
            "Connections being proxied",
            active.clone(),
        );
        registry.register(
            "connections_failed",
            "Connections that could not be proxied (see the agent log for the reason)",
            failed.clone(),
        );
        registry.register(
            "bytes_from_client",
            "Bytes received from the connecting side",
            bytes_from_client.clone(),
        );
        registry.register(
            "bytes_from_server",
            "Bytes received from the accepting side",
            bytes_from_server.clone(),
        );
        registry.register(
            "upstream_connections_opened",
            "Connections the agent opened to destinations (HTTP reuses them per source pod and destination)",
            upstream_opened.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections reset at once instead of being proxied (pod_limit: the pod's connection slots are taken; self_connect: addressed to the agent's own listener)",
            refused.clone(),
        );
        registry.register(
            "http_head_too_large",
            "Connections whose HTTP request line exceeded the 8 KiB detection window, relayed opaquely without spans",
            limits.head_too_large.clone(),
        );
        registry.register(
            "admin_connections_refused",
            "Admin connections refused (per-peer or total cap reached)",
            limits.admin_refused.clone(),
        );
        registry.register(
            "span_attributes_truncated",
            "Span attribute values cut to the attribute value limit",
            limits.attributes_truncated.clone(),
        );
        registry.register(
            "connection_timeouts",
            "Client connections closed by the header-read, HTTP idle or TCP idle timeout",
            limits.timeouts.clone(),
        );
        registry.register(
            "workloads",
            "Workloads by steering state",
            workloads.clone(),
        );
        registry.register(
            "workload_file_errors",
            "Workload file reads rejected (last good set kept)",
            workload_file_errors.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Kubernetes API list/watch errors (retried with backoff; the last known pods stay steered)",
            kube_watch_errors.clone(),
        );
        registry.register(
            "kube_forbidden",
            "1 while the API server refuses the Kubernetes list/watch of a resource (403: the service account lacks a permission; the log names it)",
            kube_forbidden.clone(),
        );
        registry.register(
            "propagation",
            "Outbound requests without trace context of pods that propagate context (linked: the causing inbound request's context added; ambiguous: several could have caused it, untouched; none: no inbound request in flight, or it carried no context)",
            propagation.clone(),
        );
        let relayed = Family::<RelayLabels, Counter>::default();
        // One statement each: a `get_or_create` guard held across the next deadlocks.
        let kernel = relayed
            .get_or_create(&RelayLabels { relay: "kernel" })
            .clone();
        let userspace = relayed
            .get_or_create(&RelayLabels { relay: "userspace" })
            .clone();
        let paused = relayed
            .get_or_create(&RelayLabels {
                relay: "kernel_paused",
            })
            .clone();
        let opaque = OpaqueMetrics {
            kernel,
            userspace,
            paused,
        };
        registry.register(
            "opaque_connections",
            "Opaque TCP connections by relay (kernel: spliced by the eBPF program, the bytes never reach the agent; userspace: copied by the agent; kernel_paused: spliced connections moved to userspace because a reader fell behind)",
            relayed,
        );
        for source in sources {
            source.register(&mut registry);
        }
        Self {
            registry,
            accepted,
            active,
            failed,
            bytes_from_client,
            bytes_from_server,
            upstream_opened,
            refused,
            limits,
            workloads,
            workload_file_errors,
            kube_watch_errors,
            kube_forbidden,
            propagation,
            opaque,
        }
    }

    fn labels(pod: &PodKey, direction: Direction) -> ConnLabels {
        ConnLabels {
            direction: direction.as_str(),
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
        }
    }

    /// Handles for one pod and direction (series appear at zero).
    pub fn conn(&self, pod: &PodKey, direction: Direction) -> ConnMetrics {
        let l = Self::labels(pod, direction);
        ConnMetrics {
            accepted: self.accepted.get_or_create(&l).clone(),
            active: self.active.get_or_create(&l).clone(),
            failed: self.failed.get_or_create(&l).clone(),
            bytes_from_client: self.bytes_from_client.get_or_create(&l).clone(),
            bytes_from_server: self.bytes_from_server.get_or_create(&l).clone(),
            upstream_opened: self.upstream_opened.get_or_create(&l).clone(),
            refused_limit: self.refused(pod, direction, "pod_limit"),
            refused_loop: self.refused(pod, direction, "self_connect"),
            limits: self.limits.clone(),
            opaque: self.opaque.clone(),
        }
    }

    fn refused(&self, pod: &PodKey, direction: Direction, reason: &'static str) -> Counter {
        self.refused
            .get_or_create(&RefusedLabels {
                direction: direction.as_str(),
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                reason,
            })
            .clone()
    }

    /// The error counter of the Kubernetes watch of `resource`.
    pub fn kube_watch_errors(&self, resource: &'static str) -> Counter {
        self.kube_watch_errors
            .get_or_create(&ResourceLabels { resource })
            .clone()
    }

    /// The gauge that is 1 while the Kubernetes watch of `resource` is refused (403).
    pub fn kube_forbidden(&self, resource: &'static str) -> Gauge {
        self.kube_forbidden
            .get_or_create(&ResourceLabels { resource })
            .clone()
    }

    /// The context propagation counters of a pod that propagates (series appear at
    /// zero).
    pub fn propagation(&self, pod: &PodKey) -> PropagationMetrics {
        let get = |result| {
            self.propagation
                .get_or_create(&PropagationLabels {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    result,
                })
                .clone()
        };
        PropagationMetrics {
            linked: get("linked"),
            ambiguous: get("ambiguous"),
            none: get("none"),
        }
    }

    /// Drops a released pod's series so pod churn cannot grow `/metrics` forever.
    pub fn remove_pod(&self, pod: &PodKey) {
        for result in ["linked", "ambiguous", "none"] {
            self.propagation.remove(&PropagationLabels {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                result,
            });
        }
        for d in [Direction::Outbound, Direction::Inbound] {
            let l = Self::labels(pod, d);
            self.accepted.remove(&l);
            self.active.remove(&l);
            self.failed.remove(&l);
            self.bytes_from_client.remove(&l);
            self.bytes_from_server.remove(&l);
            self.upstream_opened.remove(&l);
            for reason in ["pod_limit", "self_connect"] {
                self.refused.remove(&RefusedLabels {
                    direction: d.as_str(),
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    reason,
                });
            }
        }
    }

    /// Prometheus/OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {err}");
        }
        out
    }
}
