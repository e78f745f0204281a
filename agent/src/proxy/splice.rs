//! Opaque TCP relayed in the kernel (docs/ARCHITECTURE.md, "Opaque TCP in the
//! kernel"): once a connection is known to be opaque, its two sockets are spliced by
//! the `hoptrace_splice` program ([`Datapath::splice`]) and their bytes never reach
//! the agent. What stays here is what the kernel does not do for a relay:
//!
//! - **half-close**: a FIN from one side is passed on (the other socket's write side
//!   shut down) only once that socket has taken every byte the program sent it, so the
//!   FIN can never overtake data;
//! - **idle timeout** and **byte metrics**, from the program's per-socket byte counts,
//!   read once per [`TICK`];
//! - **resets**: an error on one side resets the other, as the userspace relay does.
//!
//! The agent is woken only by a FIN or an error: the sockets leave tokio's reactor and
//! sit in an epoll set of their own that asks for `EPOLLRDHUP` only, so the data the
//! kernel moves wakes nobody.

use std::{
    io,
    net::{Shutdown, TcpStream as StdStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::{io::unix::AsyncFd, net::TcpStream, time::Instant};

use super::ConnError;
use crate::{ebpf::Spliced, socket::tcp_bytes_taken};

/// How often a spliced connection's byte counts are read (metrics, idle timeout).
pub const TICK: Duration = Duration::from_secs(1);

/// One direction of a spliced connection: the socket whose FIN ends it, and the one
/// that FIN is passed on to.
struct Half {
    /// Its byte count at the last tick.
    seen: u64,
    /// Bytes the other socket had taken for sending before the splice.
    base: u64,
    /// The FIN was passed on.
    done: bool,
    counters: Vec<Counter>,
}

/// Relays `client` ↔ `upstream` in the kernel until both sides have ended their stream;
/// the bytes are counted in `from_client` and `from_server`. `spliced` was made for
/// these two sockets.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    spliced: Spliced,
    from_client: Vec<Counter>,
    from_server: Vec<Counter>,
    idle: Duration,
) -> Result<(), ConnError> {
    // Out of tokio's reactor: nothing in the agent is woken by the spliced bytes.
    let socks = [
        client.into_std().map_err(ConnError::Relay)?,
        upstream.into_std().map_err(ConnError::Relay)?,
    ];
    let result = run(&socks, &spliced, from_client, from_server, idle).await;
    if result.is_err() {
        // A reset (or a timeout) on one side is passed on as a reset to the other.
        for s in &socks {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
    // The map entries go before the sockets close (they would leave the map anyway).
    drop(spliced);
    result
}

async fn run(
    socks: &[StdStream; 2],
    spliced: &Spliced,
    from_client: Vec<Counter>,
    from_server: Vec<Counter>,
    idle: Duration,
) -> Result<(), ConnError> {
    let watch = Watch::new(socks).map_err(ConnError::Relay)?;
    let mut halves = [
        Half {
            seen: 0,
            base: tcp_bytes_taken(&socks[1]).map_err(ConnError::Relay)?,
            done: false,
            counters: from_client,
        },
        Half {
            seen: 0,
            base: tcp_bytes_taken(&socks[0]).map_err(ConnError::Relay)?,
            done: false,
            counters: from_server,
        },
    ];
    // What the sockets received before the splice (the bytes detection peeked at, or
    // a server's greeting) is still queued: make the kernel run the program over it now
    // rather than at the next segment (setting SO_RCVLOWAT calls `sk_data_ready`).
    for s in socks {
        set_rcvlowat(s).map_err(ConnError::Relay)?;
    }
    let mut last_change = Instant::now();
    let mut ticker = tokio::time::interval_at(Instant::now() + TICK, TICK);
    while !halves.iter().all(|h| h.done) {
        tokio::select! {
            ready = watch.fd.readable() => {
                let mut guard = ready.map_err(ConnError::Relay)?;
                let events = watch.events().map_err(ConnError::Relay)?;
                guard.clear_ready();
                for from in events {
                    let half = &mut halves[from];
                    // After its FIN a socket can still be reset: that ends it all.
                    if !end_of_stream(&socks[from], half.done).map_err(ConnError::Relay)?
                        || half.done
                    {
                        continue;
                    }
                    let to = &socks[1 - from];
                    let bytes = spliced_bytes(spliced, from);
                    tracing::debug!(from, bytes, base = half.base, taken = ?tcp_bytes_taken(to).ok(), "spliced: end of stream");
                    drain(to, half.base + bytes, idle).await?;
                    tracing::debug!(from, taken = ?tcp_bytes_taken(to).ok(), "spliced: drained");
                    match to.shutdown(Shutdown::Write) {
                        Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                            return Err(ConnError::Relay(e));
                        }
                        _ => {}
                    }
                    count(half, bytes);
                    half.done = true;
                }
            }
            _ = ticker.tick() => {
                let (a, b) = spliced.bytes();
                if a != halves[0].seen || b != halves[1].seen {
                    last_change = Instant::now();
                }
                count(&mut halves[0], a);
                count(&mut halves[1], b);
                if last_change.elapsed() >= idle {
                    return Err(ConnError::Idle(idle));
                }
            }
        }
    }
    Ok(())
}

fn spliced_bytes(spliced: &Spliced, from: usize) -> u64 {
    let (a, b) = spliced.bytes();
    if from == 0 {
        a
    } else {
        b
    }
}

/// Adds what `half` moved since it was last counted.
fn count(half: &mut Half, bytes: u64) {
    let delta = bytes.saturating_sub(half.seen);
    if delta > 0 {
        for c in &half.counters {
            c.inc_by(delta);
        }
        half.seen = bytes;
    }
}

/// Whether `sock` saw its peer's FIN (the read returns 0; `false`: nothing yet). Bytes
/// there mean the program could not send them on (the other socket is gone): an error,
/// as is a reset. `peek`: the FIN was seen before, only look for an error.
fn end_of_stream(sock: &StdStream, peek: bool) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: valid fd, one-byte buffer.
    let n = unsafe { libc::recv(sock.as_raw_fd(), byte.as_mut_ptr().cast(), 1, flags) };
    match n {
        0 => Ok(true),
        n if n > 0 => Err(io::Error::other(
            "a spliced socket kept bytes its peer could not take",
        )),
        _ => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(false);
            }
            Err(err)
        }
    }
}

/// Waits until `to` has taken `target` bytes for sending (every byte the program sent
/// it), for as long as it makes progress: a receiver that takes nothing for `idle`
/// ends the connection.
async fn drain(to: &StdStream, target: u64, idle: Duration) -> Result<(), ConnError> {
    let mut pause = Duration::from_millis(1);
    let mut taken = tcp_bytes_taken(to).map_err(ConnError::Relay)?;
    let mut progress = Instant::now();
    while taken < target {
        if progress.elapsed() >= idle {
            return Err(ConnError::Idle(idle));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
        let now = tcp_bytes_taken(to).map_err(ConnError::Relay)?;
        if now > taken {
            progress = Instant::now();
        }
        taken = now;
    }
    Ok(())
}

fn set_rcvlowat(sock: &StdStream) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: valid fd; pointer to an int of the declared size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An epoll set of the connection's two sockets, asking for `EPOLLRDHUP` only (errors
/// and hang-ups are always reported), edge-triggered: readable in tokio when one of
/// them saw a FIN or an error.
struct Watch {
    fd: AsyncFd<OwnedFd>,
}

impl Watch {
    fn new(socks: &[StdStream; 2]) -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        for (i, s) in socks.iter().enumerate() {
            add(&epoll, s.as_raw_fd(), i as u64)?;
        }
        // SAFETY: `epoll` is an open fd owned by the `AsyncFd` from here on.
        let fd = unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// The sockets (by index) with a FIN or an error since the last call.
    fn events(&self) -> io::Result<Vec<usize>> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // SAFETY: valid epoll fd; buffer of 2 events; timeout 0 (never blocks).
        let n =
            unsafe { libc::epoll_wait(self.fd.get_ref().as_raw_fd(), events.as_mut_ptr(), 2, 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(Vec::new())
            } else {
                Err(err)
            };
        }
        Ok(events[..n as usize]
            .iter()
            .map(|e| e.u64 as usize)
            .filter(|&i| i < 2)
            .collect())
    }
}

fn add(epoll: &OwnedFd, fd: RawFd, index: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: index,
    };
    // SAFETY: valid fds; the event is copied by the kernel.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
