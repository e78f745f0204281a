//! Opaque TCP relay: byte-exact, half-close preserved, bounded buffers, idle timeout;
//! spliced in the kernel where it can be ([`super::splice`]), else copied here.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, ErrorKind},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    time::Instant,
};

use super::ConnError;
use prometheus_client::metrics::counter::Counter;

use crate::{
    ebpf::{Datapath, SpliceSocket, Spliced},
    golden::Edge,
    metrics::ConnMetrics,
    socket::socket_cookie,
};

/// Per-direction buffer. Bounded: a slow reader stops us reading from the writer
/// (backpressure through TCP windows), never an unbounded queue in the agent. It is
/// allocated at a direction's first byte, so an idle connection costs no buffer; 16 KiB
/// (not 64) keeps 1,000 busy connections at ~32 MiB of buffers.
const BUF: usize = 16 * 1024;

/// Relays an opaque connection until both sides are done: in the kernel when `splice`
/// is given and the kernel takes the two sockets ([`super::splice`]), else by copying
/// ([`copy`]). The bytes are counted in `m` and `edge`, and on a same-node hop served
/// in one pass (`also`) in the destination's inbound metrics and edge too.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    m: &ConnMetrics,
    edge: &Edge,
    idle: Duration,
    also: Option<(&ConnMetrics, &Edge)>,
    splice: Option<&Arc<Datapath>>,
) -> Result<(), ConnError> {
    let (edge_from_client, edge_from_server) = edge.tcp_byte_counters();
    let mut from_client = vec![m.bytes_from_client.clone(), edge_from_client];
    let mut from_server = vec![m.bytes_from_server.clone(), edge_from_server];
    if let Some((m2, edge2)) = also {
        let (c, s) = edge2.tcp_byte_counters();
        from_client.extend([m2.bytes_from_client.clone(), c]);
        from_server.extend([m2.bytes_from_server.clone(), s]);
    }
    let _ = client.set_nodelay(true);
    // Read before the splice: afterwards the program may already be sending.
    let bases = splice.map(|d| (d, super::splice::Bases::read(&client, &upstream)));
    match bases {
        Some((d, Ok(bases))) => match splice_in(d, &client, &upstream) {
            Some(Ok(spliced)) => {
                m.opaque.kernel.inc();
                let r = super::splice::relay(
                    client,
                    upstream,
                    spliced,
                    bases,
                    m,
                    from_client,
                    from_server,
                    idle,
                )
                .await;
                if matches!(r, Err(ConnError::Idle(_))) {
                    m.limits.timeouts.inc();
                }
                return r;
            }
            Some(Err(err)) => tracing::debug!("opaque TCP relayed in userspace: {err}"),
            None => {}
        },
        Some((_, Err(err))) => tracing::debug!("opaque TCP relayed in userspace: {err}"),
        None => {}
    }
    m.opaque.userspace.inc();
    copy(client, upstream, m, idle, &from_client, &from_server).await
}

/// Hands the two sockets to the kernel ([`Datapath::splice`]); `None`: not available.
fn splice_in(
    datapath: &Arc<Datapath>,
    client: &TcpStream,
    upstream: &TcpStream,
) -> Option<Result<Spliced, String>> {
    let (a, b) = match (socket_cookie(client), socket_cookie(upstream)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Some(Err(format!("SO_COOKIE: {e}"))),
    };
    let a = SpliceSocket {
        fd: client,
        cookie: a,
    };
    let b = SpliceSocket {
        fd: upstream,
        cookie: b,
    };
    datapath
        .splice(a, b, super::splice::WINDOW)
        .map(|r| r.map_err(|e| e.to_string()))
}

/// Copies both ways until both sides are done. When one side ends its stream (FIN),
/// the other side's write half is shut down, and the reverse direction keeps flowing:
/// half-close reaches the peer as it would without the agent. A connection with no
/// byte in either direction for `idle` is closed ([`ConnError::Idle`]).
pub(super) async fn copy(
    client: TcpStream,
    upstream: TcpStream,
    m: &ConnMetrics,
    idle: Duration,
    from_client: &[Counter],
    from_server: &[Counter],
) -> Result<(), ConnError> {
    let start = Instant::now();
    // Milliseconds after `start` of the last byte relayed in either direction.
    let last = AtomicU64::new(0);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let both = async {
        tokio::try_join!(
            copy_half(&mut cr, &mut uw, from_client, &last, start),
            copy_half(&mut ur, &mut cw, from_server, &last, start),
        )
    };
    let watchdog = async {
        loop {
            let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let result = tokio::select! {
        r = both => r.map(|_| ()).map_err(ConnError::Relay),
        () = watchdog => {
            m.limits.timeouts.inc();
            Err(ConnError::Idle(idle))
        }
    };
    if result.is_err() {
        // A reset (or a timeout) on one side is passed on as a reset to the other, as
        // the peer would have seen it without the agent, never as a clean end of stream.
        for half in [cr.as_ref(), ur.as_ref()] {
            let _ = socket2::SockRef::from(half).set_linger(Some(Duration::ZERO));
        }
    }
    result
}

/// One direction: read until EOF, write everything, then shut the writer down.
async fn copy_half(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    bytes: &[Counter],
    last: &AtomicU64,
    start: Instant,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The buffer only once there is something to read: an idle connection holds none.
        r.readable().await?;
        if buf.is_empty() {
            buf = vec![0; BUF];
        }
        // `read`, not `try_read`: after a short read tokio's `poll_read` marks the socket
        // drained, where `try_read` leaves it readable and the next turn of this loop
        // would make one more `recvfrom` only to get `EAGAIN`: one per message.
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // FIN from this side: pass it on, keep the other direction open.
            return match w.shutdown().await {
                Err(e) if e.kind() != ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        }
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        w.write_all(&buf[..n]).await?;
        for counter in bytes {
            counter.inc_by(n as u64);
        }
    }
}
