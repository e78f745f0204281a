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

mod tcp;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpStream, task::JoinHandle};

use crate::{
    ebpf::Datapath,
    metrics::{ConnMetrics, Direction},
    netns::Netns,
    socket,
    workloads::PodKey,
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
}

/// Running accept loops of one pod. Dropping it does not stop them; call
/// [`PodListeners::stop`].
#[derive(Debug, Default)]
pub struct PodListeners {
    tasks: Vec<JoinHandle<()>>,
}

impl PodListeners {
    /// Starts accept loops for the given listeners.
    pub fn start(
        pod: Arc<PodContext>,
        outbound: Vec<std::net::TcpListener>,
        inbound: Vec<std::net::TcpListener>,
    ) -> std::io::Result<Self> {
        let mut tasks = Vec::new();
        for (listeners, dir) in [
            (outbound, Direction::Outbound),
            (inbound, Direction::Inbound),
        ] {
            for l in listeners {
                let l = tokio::net::TcpListener::from_std(l)?;
                tasks.push(tokio::spawn(accept_loop(l, pod.clone(), dir)));
            }
        }
        Ok(Self { tasks })
    }

    /// Stops accepting (closes the listeners). Connections already accepted go on.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, pod: Arc<PodContext>, dir: Direction) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let pod = pod.clone();
                tokio::spawn(async move {
                    let m = match dir {
                        Direction::Outbound => &pod.outbound,
                        Direction::Inbound => &pod.inbound,
                    };
                    m.accepted.inc();
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
                });
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

async fn outbound(pod: &PodContext, client: TcpStream, peer: SocketAddr) -> Result<(), ConnError> {
    let Some(dst) = pod.datapath.take_orig_dst(pod.netns_cookie, peer.port()) else {
        reset(client);
        return Err(ConnError::NoOrigDst(peer.port()));
    };
    let upstream = match connect(pod, dst, socket::Source::Default).await {
        Ok(u) => u,
        Err(err) => {
            reset(client);
            return Err(err);
        }
    };
    tcp::relay(client, upstream, &pod.outbound)
        .await
        .map_err(ConnError::Relay)
}

async fn inbound(pod: &PodContext, client: TcpStream) -> Result<(), ConnError> {
    // With sk_lookup the accepted socket keeps the address the client dialed.
    let dst = client.local_addr().map_err(ConnError::Relay)?;
    let peer = client.peer_addr().map_err(ConnError::Relay)?;
    let upstream = match connect_transparent(pod, peer, dst).await {
        Ok(u) => u,
        Err(err) => {
            reset(client);
            return Err(err);
        }
    };
    tcp::relay(client, upstream, &pod.inbound)
        .await
        .map_err(ConnError::Relay)
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

/// Closes the client connection with RST, so the app sees "connection reset" as it
/// would have seen "connection refused" without the agent, rather than a clean EOF.
fn reset(client: TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}
