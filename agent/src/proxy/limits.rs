//! What one pod's connections may cost the node, and the node's count of connections
//! in flight (graceful shutdown waits for it). docs/SECURITY.md lists every limit.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

/// What one pod's connections may cost the node (docs/SECURITY.md lists every limit,
/// its default and what happens when it is hit). Built once from the command line
/// (`--max-connections-per-pod`, `--header-read-timeout`, ...; the defaults live there).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections proxied at once per pod and direction; beyond, new ones are
    /// reset at once (`hoptrace_connections_refused_total{reason="pod_limit"}`), so one
    /// pod's flood costs only that pod.
    pub max_connections_per_pod: usize,
    /// An HTTP/1 request head must arrive within this time of its first byte being
    /// awaited (slowloris); else the connection is closed.
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight (HTTP keep-alive, or an HTTP/2
    /// connection without streams) is closed after this long.
    pub http_idle_timeout: Duration,
    /// An opaque TCP connection with no byte in either direction is closed after this long.
    pub tcp_idle_timeout: Duration,
    /// A pooled upstream HTTP connection is not reused after this age, so connections
    /// opened while a peer's agent was down (direct, untraced) are replaced by steered
    /// ones within this time once it is back.
    pub pool_max_lifetime: Duration,
    /// HTTP/1.1 requests go through the lean path (`proxy::h1`); `false`: through
    /// hyper, as HTTP/2 always does (`--http1-proxy`).
    pub lean_http1: bool,
    /// A connection to an enrolled pod of the same node is served in one pass: the
    /// outbound leg connects to the destination's app itself (`--same-node-one-pass`).
    pub one_pass: bool,
    /// Opaque TCP is spliced in the kernel where it can be (`--opaque-tcp`).
    pub opaque_in_kernel: bool,
}

/// Connections being proxied on the node; each holds an [`InFlightGuard`].
#[derive(Debug, Default)]
pub struct InFlightCount(AtomicUsize);

impl InFlightCount {
    /// Connections being proxied now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    pub(super) fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }
}

/// One proxied connection, counted until dropped.
#[derive(Debug)]
pub(super) struct InFlightGuard(Arc<InFlightCount>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}
