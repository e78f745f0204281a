//! Opaque TCP relayed in the kernel (docs/ARCHITECTURE.md, "Opaque TCP in the
//! kernel"): once a connection is known to be opaque, its two sockets are spliced by
//! the `hoptrace_splice` program ([`Datapath::splice`]) and their bytes never reach
//! the agent. What stays here is what the kernel does not do for a relay:
//!
//! - **half-close**: a FIN from one side is passed on (the other socket's write side
//!   shut down) only once that socket has taken every byte the program sent it, so the
//!   FIN can never overtake data;
//! - **backpressure**: the program redirects only up to a limit that this loop raises
//!   as the other socket takes the bytes ([`WINDOW`] ahead), read at an interval
//!   between 5 ms (bytes flowing fast) and 1 s (idle). A direction whose reader falls
//!   behind is paused by the program (its bytes then stay queued in the receiving
//!   socket, charged to it: TCP's window closes) and the connection goes on in the
//!   userspace relay once every redirected byte has been taken;
//! - **idle timeout** and **byte metrics**, from the program's per-socket byte counts;
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

use agent_common::SpliceStats;
use prometheus_client::metrics::counter::Counter;
use tokio::{io::unix::AsyncFd, net::TcpStream, time::Instant};

use super::ConnError;
use crate::{ebpf::Spliced, metrics::ConnMetrics, socket::tcp_bytes_taken};

/// How far the program may run ahead of what the other socket has taken: the most a
/// spliced direction holds in the kernel beyond the two sockets' own buffers.
pub const WINDOW: u64 = 2 * 1024 * 1024;
/// Bounds of the interval at which the counts are read and the limits raised: short
/// while bytes flow fast (so the limit keeps ahead of a fast reader), long when idle.
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_secs(1);

/// One direction of a spliced connection, by the index of its receiving socket.
struct Half {
    /// Bytes counted in the metrics so far.
    seen: u64,
    /// What the other socket had taken for sending before the splice.
    base: u64,
    /// The FIN was passed on.
    done: bool,
    counters: Vec<Counter>,
}

/// What each socket had taken for sending before the splice ([`tcp_bytes_taken`] of
/// the client, then the upstream), read before it: a byte the program sends is never
/// in it.
#[derive(Debug, Clone, Copy)]
pub struct Bases(pub u64, pub u64);

impl Bases {
    /// Reads them; call before [`crate::ebpf::Datapath::splice`].
    pub fn read(client: &TcpStream, upstream: &TcpStream) -> io::Result<Self> {
        Ok(Self(tcp_bytes_taken(client)?, tcp_bytes_taken(upstream)?))
    }
}

/// Relays `client` ↔ `upstream` in the kernel until both sides have ended their stream;
/// the bytes are counted in `from_client` and `from_server`. `spliced` was made for
/// these two sockets, after `bases` were read. A direction the program paused (its
/// reader is slow) moves the connection to the userspace relay ([`super::tcp`]),
/// counted in `m`.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    spliced: Spliced,
    bases: Bases,
    m: &ConnMetrics,
    from_client: Vec<Counter>,
    from_server: Vec<Counter>,
    idle: Duration,
) -> Result<(), ConnError> {
    // Out of tokio's reactor: nothing in the agent is woken by the spliced bytes.
    let socks = [
        client.into_std().map_err(ConnError::Relay)?,
        upstream.into_std().map_err(ConnError::Relay)?,
    ];
    let half = |base, counters| Half {
        seen: 0,
        base,
        done: false,
        counters,
    };
    // Client → upstream: what the upstream had taken; upstream → client: the client.
    let mut halves = [half(bases.1, from_client), half(bases.0, from_server)];
    let result = match run(&socks, &spliced, &mut halves, idle).await {
        Ok(Outcome::Done) => Ok(()),
        Ok(Outcome::Paused) => {
            m.opaque.paused.inc();
            let [a, b] = socks;
            let (a, b) = (
                TcpStream::from_std(a).map_err(ConnError::Relay)?,
                TcpStream::from_std(b).map_err(ConnError::Relay)?,
            );
            let [h0, h1] = halves;
            // The sockets stay in the map until the end: leaving it would drop what
            // the program left in their queues.
            let r = super::tcp::copy(a, b, m, idle, &h0.counters, &h1.counters).await;
            drop(spliced);
            return r;
        }
        Err(e) => Err(e),
    };
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

enum Outcome {
    /// Both sides ended their stream, every byte passed on.
    Done,
    /// The program paused a direction; every byte it redirected has been taken by the
    /// other socket: what is left is in the sockets' own queues, for userspace.
    Paused,
}

async fn run(
    socks: &[StdStream; 2],
    spliced: &Spliced,
    halves: &mut [Half; 2],
    idle: Duration,
) -> Result<Outcome, ConnError> {
    let watch = Watch::new(socks).map_err(ConnError::Relay)?;
    // What the sockets received before the splice (the bytes detection peeked at, or
    // a server's greeting) is still queued: make the kernel run the program over it now
    // rather than at the next segment (setting SO_RCVLOWAT calls `sk_data_ready`).
    for s in socks {
        set_rcvlowat(s).map_err(ConnError::Relay)?;
    }
    let mut last_change = Instant::now();
    let mut interval = POLL_MIN;
    let mut limits = [WINDOW; 2];
    let mut next = Instant::now() + interval;
    while !halves.iter().all(|h| h.done) {
        tokio::select! {
            ready = watch.fd.readable() => {
                let mut guard = ready.map_err(ConnError::Relay)?;
                let events = watch.events().map_err(ConnError::Relay)?;
                guard.clear_ready();
                for from in events {
                    let eof = end_of_stream(&socks[from]).map_err(ConnError::Relay)?;
                    let stats = stats(spliced, from);
                    tracing::debug!(from, ?eof, bytes = stats.bytes, paused = stats.paused, "spliced: event");
                    if stats.paused != 0 {
                        return pause(socks, spliced, halves, idle).await;
                    }
                    match eof {
                        Eof::Yes => {}
                        Eof::No => continue,
                        Eof::Queued => {
                            // Bytes the program has not seen (a kernel that runs it on
                            // one segment per wake-up): run it again.
                            set_rcvlowat(&socks[from]).map_err(ConnError::Relay)?;
                            watch.retry(from);
                            continue;
                        }
                    }
                    let half = &mut halves[from];
                    if half.done {
                        continue;
                    }
                    let to = &socks[1 - from];
                    tracing::debug!(from, target = half.base + stats.bytes, taken = ?tcp_bytes_taken(to).ok(), "spliced: end of stream, draining");
                    drain(to, half.base + stats.bytes, idle).await?;
                    tracing::debug!(from, "spliced: drained, FIN passed on");
                    match to.shutdown(Shutdown::Write) {
                        Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                            return Err(ConnError::Relay(e));
                        }
                        _ => {}
                    }
                    count(half, stats.bytes);
                    half.done = true;
                }
            }
            () = tokio::time::sleep_until(next) => {
                let (a, b) = spliced.stats();
                if a.paused != 0 || b.paused != 0 {
                    return pause(socks, spliced, halves, idle).await;
                }
                let moved = a.bytes.saturating_sub(halves[0].seen)
                    + b.bytes.saturating_sub(halves[1].seen);
                if moved > 0 {
                    last_change = Instant::now();
                } else if last_change.elapsed() >= idle {
                    return Err(ConnError::Idle(idle));
                }
                count(&mut halves[0], a.bytes);
                count(&mut halves[1], b.bytes);
                // Raise each limit to what the other socket has taken plus the window.
                let mut new = limits;
                for (i, l) in new.iter_mut().enumerate() {
                    let taken = tcp_bytes_taken(&socks[1 - i]).map_err(ConnError::Relay)?;
                    *l = taken.saturating_sub(halves[i].base) + WINDOW;
                }
                if new != limits {
                    spliced
                        .set_limits(new[0], new[1])
                        .map_err(|e| ConnError::Relay(io::Error::other(e.to_string())))?;
                    limits = new;
                }
                interval = if moved > WINDOW / 8 {
                    (interval / 2).max(POLL_MIN)
                } else if moved < WINDOW / 32 {
                    (interval * 2).min(POLL_MAX)
                } else {
                    interval
                };
                next = Instant::now() + interval;
            }
        }
    }
    Ok(Outcome::Done)
}

/// Stops the program in both directions and waits until every byte it redirected has
/// been taken by the other socket; what is left is in the sockets' own queues.
async fn pause(
    socks: &[StdStream; 2],
    spliced: &Spliced,
    halves: &mut [Half; 2],
    idle: Duration,
) -> Result<Outcome, ConnError> {
    spliced.stop();
    // Reading TCP_INFO takes each socket's lock: a program run that was redirecting a
    // segment when the entries went has finished, and its count is in the stats.
    for s in socks {
        tcp_bytes_taken(s).map_err(ConnError::Relay)?;
    }
    let (a, b) = spliced.stats();
    tracing::debug!(
        from_client = a.bytes,
        from_server = b.bytes,
        base_upstream = halves[0].base,
        base_client = halves[1].base,
        "spliced: paused; draining what the program redirected"
    );
    for (from, bytes) in [(0, a.bytes), (1, b.bytes)] {
        drain(&socks[1 - from], halves[from].base + bytes, idle).await?;
        count(&mut halves[from], bytes);
    }
    Ok(Outcome::Paused)
}

fn stats(spliced: &Spliced, from: usize) -> SpliceStats {
    let (a, b) = spliced.stats();
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

/// What a spliced socket's queue shows (peeked only: nothing is taken from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eof {
    /// The peer's FIN, after every byte.
    Yes,
    /// Nothing yet.
    No,
    /// Bytes: the program paused (the caller finds it in the stats), or has not run on
    /// them yet.
    Queued,
}

/// Peeks at `sock`'s queue. A reset is an error.
fn end_of_stream(sock: &StdStream) -> io::Result<Eof> {
    let mut byte = [0u8; 1];
    let flags = libc::MSG_DONTWAIT | libc::MSG_PEEK;
    // SAFETY: valid fd, one-byte buffer.
    let n = unsafe { libc::recv(sock.as_raw_fd(), byte.as_mut_ptr().cast(), 1, flags) };
    match n {
        0 => Ok(Eof::Yes),
        n if n > 0 => Ok(Eof::Queued),
        _ => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(Eof::No);
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
    crate::socket::setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_RCVLOWAT)
}

/// An epoll set of the connection's two sockets, asking for `EPOLLRDHUP` only (errors
/// and hang-ups are always reported), edge-triggered: readable in tokio when one of
/// them saw a FIN or an error.
struct Watch {
    fd: AsyncFd<OwnedFd>,
    /// The sockets' fds, by index.
    rearm: [RawFd; 2],
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
        Ok(Self {
            fd,
            rearm: [socks[0].as_raw_fd(), socks[1].as_raw_fd()],
        })
    }

    /// Looks at socket `index` again at the next wake-up even without a new event: the
    /// interest is re-armed (an edge-triggered `EPOLL_CTL_MOD` reports what is ready).
    fn retry(&self, index: usize) {
        let _ = self.rearm.get(index).map(|&fd| {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: index as u64,
            };
            // SAFETY: valid fds; the event is copied by the kernel.
            unsafe {
                libc::epoll_ctl(
                    self.fd.get_ref().as_raw_fd(),
                    libc::EPOLL_CTL_MOD,
                    fd,
                    &mut event,
                )
            }
        });
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
