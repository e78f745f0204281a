//! The per-pod proxy: accept loops on each pod's outbound and inbound listeners and
//! the relay between the steered connection and its upstream.
//!
//! - outbound: a pod's connect() was steered to `127.0.0.1:15001` in its netns. The
//!   original destination comes from the eBPF map; the upstream socket is created
//!   in the same netns, so the server sees the client pod's address.
//! - inbound: `sk_lookup` handed a connection for the pod's address to
//!   `127.0.0.1:15006`; the accepted socket's local address is the original
//!   destination. The upstream to the app is made from the client's own address
//!   (IP_TRANSPARENT, see `inpod`), so the app sees the real client; it arrives on
//!   the pod's loopback, which `sk_lookup` never steers.

mod body;
pub mod detect;
pub mod h1;
pub mod http;
mod idle;
mod limits;
pub mod local;
pub mod pool;
pub mod propagation;
mod splice;
mod tcp;

pub use limits::{InFlightCount, Limits};

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpStream, sync::Semaphore, task::JoinHandle};

use crate::{
    cores::{self, Cores, OnCore},
    ebpf::{AppSocket, Datapath},
    golden::{Edge, Golden, Peer},
    metrics::ConnMetrics,
    netns::Netns,
    pod::Direction,
    pod::PodKey,
    socket,
    trace::span::{PodIdentity, SpanSink},
};

/// How long an upstream connect may take before the client connection is reset.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a connection task needs to know about the pod it serves.
#[derive(Debug)]
pub struct PodContext {
    /// `namespace/name`.
    pub key: PodKey,
    /// The pod's network namespace (upstream sockets are created in it).
    pub netns: Netns,
    /// `SO_NETNS_COOKIE` of that namespace.
    pub netns_cookie: u64,
    /// Kernel state (original destinations).
    pub datapath: Arc<Datapath>,
    /// Outbound connection metrics.
    pub outbound: ConnMetrics,
    /// Inbound connection metrics.
    pub inbound: ConnMetrics,
    /// Resource attributes of the pod's spans.
    pub identity: Arc<PodIdentity>,
    /// Where finished spans go (`None`: tracing off).
    pub spans: Option<SpanSink>,
    /// Opt-in ratio of context-less inbound requests that start a trace.
    pub trace_sampling: f64,
    /// The pod's addresses (the first of each family is `client.address` of its
    /// outbound spans: the steered connection itself comes from loopback).
    pub ips: Vec<IpAddr>,
    /// Reusable upstream HTTP connections of the outbound leg.
    pub outbound_pool: Arc<pool::Pool>,
    /// Reusable upstream HTTP connections of the inbound leg (per calling pod).
    pub inbound_pool: Arc<pool::Pool>,
    /// Limits and timeouts (shared by every pod).
    pub limits: Arc<Limits>,
    /// Connection slots of the outbound and inbound legs ([`Limits::max_connections_per_pod`] each).
    pub slots: [Arc<Semaphore>; 2],
    /// Becomes `true` when the agent shuts down: HTTP connections close once idle.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Connections being proxied on the whole node (shutdown waits for them).
    pub node_inflight: Arc<InFlightCount>,
    /// The node's golden metrics (edges, routes, peers).
    pub golden: Arc<Golden>,
    /// This pod's workload, as a metric label pair.
    pub workload: Peer,
    /// The node's enrolled pods by address (same-node hops in one pass).
    pub local: Arc<local::LocalPods>,
    /// Context propagation by the agent, when the pod opted in.
    pub propagation: Option<Arc<propagation::Propagation>>,
}

impl PodContext {
    /// The connection metrics of one direction.
    pub fn metrics(&self, dir: Direction) -> &ConnMetrics {
        match dir {
            Direction::Outbound => &self.outbound,
            Direction::Inbound => &self.inbound,
        }
    }

    /// The connection slots of one direction.
    pub fn slots(&self, dir: Direction) -> &Arc<Semaphore> {
        match dir {
            Direction::Outbound => &self.slots[0],
            Direction::Inbound => &self.slots[1],
        }
    }

    /// The upstream connection pool of one direction.
    pub fn pool(&self, dir: Direction) -> &Arc<pool::Pool> {
        match dir {
            Direction::Outbound => &self.outbound_pool,
            Direction::Inbound => &self.inbound_pool,
        }
    }
}

/// Where a steered connection goes and how the agent connects there.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Outbound leg: to the original destination, from the client pod's netns.
    Outbound {
        /// Original destination.
        dst: SocketAddr,
    },
    /// Inbound leg: to the app, from the client's own address.
    Inbound {
        /// The connecting client.
        client: SocketAddr,
        /// The address it dialed (the app).
        dst: SocketAddr,
    },
}

impl Target {
    /// The destination.
    pub fn dst(&self) -> SocketAddr {
        match self {
            Target::Outbound { dst } | Target::Inbound { dst, .. } => *dst,
        }
    }

    /// Opens a connection to the destination as this leg must (counted in
    /// `hoptrace_upstream_connections_opened_total`).
    pub async fn connect(&self, pod: &PodContext) -> Result<TcpStream, ConnError> {
        match *self {
            Target::Outbound { dst } => {
                pod.outbound.upstream_opened.inc();
                connect(pod, dst, socket::Source::Default).await
            }
            Target::Inbound { client, dst } => {
                pod.inbound.upstream_opened.inc();
                connect_transparent(pod, client, dst).await
            }
        }
    }
}

/// The destination side of a same-node hop served in one pass: the outbound leg of the
/// caller also plays the destination's inbound leg (its metrics, edge and spans) and
/// connects to the app itself.
#[derive(Debug, Clone)]
pub struct Through {
    /// The destination pod.
    pub dest: Arc<PodContext>,
    /// Its inbound edge (the caller as client).
    pub edge: Edge,
    /// The inbound leg's target: the app, from the caller's address.
    pub target: Target,
}

impl Through {
    /// The destination's inbound connection metrics.
    fn metrics(&self) -> &ConnMetrics {
        self.dest.metrics(Direction::Inbound)
    }
}

/// Opens the upstream connection of a leg: the target's own, or on a one-pass hop the
/// destination's inbound one.
async fn open(
    pod: &PodContext,
    target: &Target,
    through: Option<&Through>,
) -> Result<TcpStream, ConnError> {
    match through {
        Some(t) => t.target.connect(&t.dest).await,
        None => target.connect(pod).await,
    }
}

/// Errors of one proxied connection (logged at debug, counted as failed).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The steered connection has no recorded original destination.
    #[error("no original destination recorded for client port {0} (connection made directly to the listener, or its record was evicted)")]
    NoOrigDst(u16),
    /// Socket creation in the pod netns failed.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// Upstream connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Upstream.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Upstream connect timed out.
    #[error("connect to {0}: timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout(SocketAddr),
    /// The sk_lookup bypass entry could not be written.
    #[error("registering the inbound leg with sk_lookup: {0}")]
    Bypass(String),
    /// Relay I/O error.
    #[error("relay: {0}")]
    Relay(std::io::Error),
    /// The connection was addressed to the agent's own listener: proxying it would
    /// connect to the agent again, in a loop.
    #[error(
        "refused: {0} is the agent's own listener (a connection made to it directly, not steered)"
    )]
    SelfConnect(SocketAddr),
    /// An opaque connection saw no byte for [`Limits::tcp_idle_timeout`].
    #[error("closed after {0:?} without traffic")]
    Idle(Duration),
}

/// Running accept loops of one pod; dropping it stops them (closes the listeners).
/// Connections already accepted go on.
#[derive(Debug, Default)]
pub struct PodListeners {
    tasks: Vec<JoinHandle<()>>,
}

impl PodListeners {
    /// Starts accept loops for the given listeners on the data path's cores, the
    /// first on core `first` and the next ones on the following cores. On error the
    /// loops already started are stopped again (by drop).
    pub fn start(
        pod: Arc<PodContext>,
        cores: &Arc<Cores>,
        first: usize,
        outbound: Vec<std::net::TcpListener>,
        inbound: Vec<std::net::TcpListener>,
    ) -> std::io::Result<Self> {
        let mut this = Self::default();
        let all = outbound
            .into_iter()
            .map(|l| (l, Direction::Outbound))
            .chain(inbound.into_iter().map(|l| (l, Direction::Inbound)));
        for (i, (l, dir)) in all.enumerate() {
            let handle = cores.handle(first.wrapping_add(i));
            // Registered with that core's event loop.
            let l = {
                let _on_core = handle.enter();
                tokio::net::TcpListener::from_std(l)?
            };
            this.tasks
                .push(handle.spawn(accept_loop(l, pod.clone(), cores.clone(), dir)));
        }
        Ok(this)
    }
}

impl Drop for PodListeners {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    pod: Arc<PodContext>,
    cores: Arc<Cores>,
    dir: Direction,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let m = pod.metrics(dir);
                m.accepted.inc();
                // One pod's flood must not take the node's descriptors: beyond its
                // slots a connection is reset at once (a refusal, not a hang).
                let Ok(slot) = pod.slots(dir).clone().try_acquire_owned() else {
                    m.refused_limit.inc();
                    reset(stream);
                    continue;
                };
                let inflight = pod.node_inflight.enter();
                let (core, on_core) = cores.pick();
                let serve = Serve {
                    pod: pod.clone(),
                    dir,
                    peer,
                    slot,
                    inflight,
                    on_core,
                };
                if Some(core) == cores::current() {
                    tokio::spawn(serve.run(stream));
                } else {
                    // Handed over: the socket leaves this core's event loop and joins
                    // the other's, where the connection runs from now on.
                    match stream.into_std() {
                        Ok(std) => {
                            cores.handle(core).spawn(serve.run_std(std));
                        }
                        Err(err) => tracing::debug!(pod = %pod.key, "hand-over: {err}"),
                    }
                }
            }
            Err(err) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the kernel keeps
                // the backlog meanwhile.
                tracing::warn!(pod = %pod.key, direction = dir.as_str(), "accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted connection with what it holds while it runs.
struct Serve {
    pod: Arc<PodContext>,
    dir: Direction,
    peer: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
    inflight: limits::InFlightGuard,
    on_core: OnCore,
}

impl Serve {
    /// Runs a connection handed over from another core.
    async fn run_std(self, stream: std::net::TcpStream) {
        match TcpStream::from_std(stream) {
            Ok(stream) => self.run(stream).await,
            Err(err) => tracing::debug!(pod = %self.pod.key, "hand-over: {err}"),
        }
    }

    async fn run(self, stream: TcpStream) {
        let Serve {
            pod,
            dir,
            peer,
            slot: _slot,
            inflight: _inflight,
            on_core: _on_core,
        } = self;
        let m = pod.metrics(dir);
        m.active.inc();
        let result = match dir {
            Direction::Outbound => outbound(&pod, stream, peer).await,
            Direction::Inbound => inbound(&pod, stream).await,
        };
        m.active.dec();
        if let Err(err) = result {
            m.failed.inc();
            tracing::debug!(pod = %pod.key, direction = dir.as_str(), %peer, "{err}");
        }
    }
}

async fn outbound(
    pod: &Arc<PodContext>,
    client: TcpStream,
    peer: SocketAddr,
) -> Result<(), ConnError> {
    let Some((dst, app)) = pod.datapath.take_orig_dst(pod.netns_cookie, peer.port()) else {
        reset(client);
        return Err(ConnError::NoOrigDst(peer.port()));
    };
    if is_own_listener(dst) {
        pod.outbound.refused_loop.inc();
        reset(client);
        return Err(ConnError::SelfConnect(dst));
    }
    let client_ip = pod
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .copied()
        .unwrap_or(peer.ip());
    if pod.limits.one_pass {
        if let Some(dest) = pod.local.get(dst.ip()) {
            return one_pass(pod, dest, client, dst, client_ip, app).await;
        }
    }
    let target = Target::Outbound { dst };
    proxy(
        pod,
        Direction::Outbound,
        client,
        target,
        client_ip,
        None,
        Some(app),
    )
    .await
}

/// A same-node hop in one pass: `dest` is an enrolled pod of this node. The connection
/// is also counted as the destination's inbound one (accepted, active, failed, its slot
/// taken), as if its inbound leg had accepted it.
async fn one_pass(
    pod: &Arc<PodContext>,
    dest: Arc<PodContext>,
    client: TcpStream,
    dst: SocketAddr,
    client_ip: IpAddr,
    app: AppSocket,
) -> Result<(), ConnError> {
    let dm = dest.metrics(Direction::Inbound).clone();
    dm.accepted.inc();
    let Ok(_slot) = dest.slots(Direction::Inbound).clone().try_acquire_owned() else {
        dm.refused_limit.inc();
        reset(client);
        return Ok(());
    };
    dm.active.inc();
    let edge = dest
        .golden
        .edge(Direction::Inbound, &dest.key, &dest.workload, client_ip);
    let _connection = edge.connection();
    let through = Through {
        target: Target::Inbound {
            client: SocketAddr::new(client_ip, 0),
            dst,
        },
        edge,
        dest,
    };
    let target = Target::Outbound { dst };
    let r = proxy(
        pod,
        Direction::Outbound,
        client,
        target,
        client_ip,
        Some(through),
        Some(app),
    )
    .await;
    dm.active.dec();
    if r.is_err() {
        dm.failed.inc();
    }
    r
}

async fn inbound(pod: &Arc<PodContext>, client: TcpStream) -> Result<(), ConnError> {
    // With sk_lookup the accepted socket keeps the address the client dialed.
    let dst = client.local_addr().map_err(ConnError::Relay)?;
    let peer = client.peer_addr().map_err(ConnError::Relay)?;
    if is_own_listener(dst) {
        pod.inbound.refused_loop.inc();
        reset(client);
        return Err(ConnError::SelfConnect(dst));
    }
    let target = Target::Inbound { client: peer, dst };
    proxy(
        pod,
        Direction::Inbound,
        client,
        target,
        peer.ip(),
        None,
        None,
    )
    .await
}

/// Connects upstream, detects the protocol and proxies the connection as HTTP or as
/// opaque TCP. `through`: a same-node hop served in one pass; `app`: on the outbound
/// leg, the app's socket that connected.
async fn proxy(
    pod: &Arc<PodContext>,
    dir: Direction,
    client: TcpStream,
    target: Target,
    client_ip: IpAddr,
    through: Option<Through>,
    app: Option<AppSocket>,
) -> Result<(), ConnError> {
    let m = pod.metrics(dir);
    let peer_ip = match target {
        Target::Outbound { dst } => dst.ip(),
        Target::Inbound { client, .. } => client.ip(),
    };
    let edge = pod.golden.edge(dir, &pod.key, &pod.workload, peer_ip);
    let _connection = edge.connection();
    let conn = |edge: &Edge| http::Conn {
        dir,
        target,
        client_ip,
        h2: false,
        edge: edge.clone(),
        app,
    };
    // A destination this pod recently spoke HTTP to is expected to be HTTP again:
    // detect first, so the request can go out on a pooled connection without a new
    // connect. Should the client send something else (or nothing within the
    // detection timeout), connect now and relay it opaquely.
    let idle = pod.limits.tcp_idle_timeout;
    let also = through.as_ref().map(|t| (t.metrics(), &t.edge));
    let splice = pod.limits.opaque_in_kernel.then_some(&pod.datapath);
    let knows_http = match &through {
        Some(t) => t.dest.pool(Direction::Inbound).knows_http(&t.target),
        None => pod.pool(dir).knows_http(&target),
    };
    if knows_http {
        let protocol =
            detect::detect(&client, detect::DETECT_TIMEOUT, &m.limits.head_too_large).await;
        if protocol != detect::Protocol::Opaque {
            return serve_http(pod, client, conn(&edge), protocol, None, through.clone()).await;
        }
        let upstream = match open(pod, &target, through.as_ref()).await {
            Ok(u) => u,
            Err(err) => {
                reset(client);
                return Err(err);
            }
        };
        return tcp::relay(client, upstream, m, &edge, idle, also, splice).await;
    }
    // Otherwise connect first, as a plain proxy would, then watch both sides: the
    // client's first bytes decide the protocol; if the server speaks first (SMTP,
    // MySQL, …) the connection is opaque at once, with no detection delay.
    let upstream = match open(pod, &target, through.as_ref()).await {
        Ok(u) => u,
        Err(err) => {
            reset(client);
            return Err(err);
        }
    };
    let started = tokio::time::Instant::now();
    let protocol = tokio::select! {
        p = detect::detect(&client, detect::DETECT_TIMEOUT, &m.limits.head_too_large) => p,
        first = detect::server_first(&upstream) => match first {
            // An HTTP/2 server (gRPC) may send its SETTINGS before the client's preface
            // is here: not a server-first protocol, so the client's bytes still decide,
            // within what is left of the detection time. Anything but HTTP/2 from the
            // client is then relayed as it is, as it would have been without the agent.
            detect::ServerFirst::H2Settings => {
                let left = detect::DETECT_TIMEOUT.saturating_sub(started.elapsed());
                match detect::detect(&client, left, &m.limits.head_too_large).await {
                    detect::Protocol::Http2 => detect::Protocol::Http2,
                    _ => detect::Protocol::Opaque,
                }
            }
            detect::ServerFirst::Other => detect::Protocol::Opaque,
            detect::ServerFirst::Reset => {
                reset(client);
                return Err(ConnError::Relay(std::io::ErrorKind::ConnectionReset.into()));
            }
        },
    };
    match protocol {
        detect::Protocol::Opaque => {
            tcp::relay(client, upstream, m, &edge, idle, also, splice).await
        }
        p => serve_http(pod, client, conn(&edge), p, Some(upstream), through.clone()).await,
    }
}

/// Serves an HTTP connection: HTTP/1.1 on the lean path (which hands what it does not
/// take to hyper), HTTP/2 with hyper. A one-pass hop is served in one pass on the lean
/// path only: hyper sends its requests the usual way (steered through the inbound leg),
/// so a connection opened for the one-pass hop is not given to it.
async fn serve_http(
    pod: &Arc<PodContext>,
    client: TcpStream,
    mut conn: http::Conn,
    protocol: detect::Protocol,
    upstream: Option<TcpStream>,
    through: Option<Through>,
) -> Result<(), ConnError> {
    let _ = client.set_nodelay(true);
    conn.h2 = protocol == detect::Protocol::Http2;
    if !conn.h2 && pod.limits.lean_http1 {
        return h1::serve(pod.clone(), conn, client, upstream, through).await;
    }
    let upstream = if through.is_some() { None } else { upstream };
    http::serve(pod.clone(), conn, client, upstream).await
}

async fn connect(
    pod: &PodContext,
    dst: SocketAddr,
    src: socket::Source,
) -> Result<TcpStream, ConnError> {
    let sock = socket::connect_socket_in(&pod.netns, dst, src)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ConnError::Connect { addr: dst, source }),
        Err(_) => Err(ConnError::ConnectTimeout(dst)),
    }
}

/// Connects to the app from the client's own address. The exact 4-tuple is
/// registered with `sk_lookup` for the duration of the handshake so this
/// connection reaches the app instead of being steered back to the agent.
async fn connect_transparent(
    pod: &PodContext,
    client: SocketAddr,
    dst: SocketAddr,
) -> Result<TcpStream, ConnError> {
    let sock =
        socket::connect_socket_in(&pod.netns, dst, socket::Source::Transparent(client.ip()))?;
    let local = sock.local_addr().map_err(ConnError::Relay)?;
    let _bypass = pod
        .datapath
        .bypass(local, dst)
        .map_err(|e| ConnError::Bypass(e.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ConnError::Connect { addr: dst, source }),
        Err(_) => Err(ConnError::ConnectTimeout(dst)),
    }
}

/// Whether a connection to `dst` reached the agent's listener without steering.
///
/// `sk_lookup` hands the inbound listener only connections for the pod's own
/// addresses, and `connect4/6` never steer loopback, so a steered connection never has
/// a loopback or unspecified destination. Such a destination means the pod dialed the
/// agent's listener itself (`connect(127.0.0.1:15006)`): relaying it would dial the same
/// listener again, and again, without end. (A pod address on the agent's port needs no
/// rule: the agent listens on loopback only, so relaying it finds no listener: refused.)
pub fn is_own_listener(dst: SocketAddr) -> bool {
    let ip = match dst.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
}

/// Closes the client connection with RST, so the app sees "connection reset" as it
/// would have seen "connection refused" without the agent, rather than a clean EOF.
fn reset(client: TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}
