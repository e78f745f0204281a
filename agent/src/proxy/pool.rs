//! Upstream HTTP connections reused per (source pod, destination), as a sidecar
//! proxy would: many short client connections from one pod to one service share a
//! few upstream connections instead of each opening its own.
//!
//! One pool per pod and direction (it lives in the pod's [`super::PodContext`] and
//! dies with it). Keys: the destination, the protocol, and for the inbound leg the
//! calling pod's address (the upstream connection is made *from* that address, so it
//! can only carry that caller's requests).
//!
//! - HTTP/1: a list of connections per key. A connection is checked out only when it
//!   can take a request now (hyper's `is_ready`: its previous response is complete);
//!   busy ones stay listed and become usable when their response finishes. Idle ones
//!   are closed after [`IDLE_TIMEOUT`], and at most [`MAX_PER_KEY`] are kept.
//! - HTTP/2: one shared connection per key; streams multiplex on it.
//!
//! A key that was seen speaking HTTP is remembered for [`KNOWN_HTTP_TTL`]: new client
//! connections to it are detected before connecting, so a pooled connection can serve
//! them (see `proxy::proxy`).

use super::body::UpstreamBody;
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use hyper::client::conn::{http1, http2};
use tokio::net::TcpStream;

use super::Target;

/// How long an unused HTTP/1 upstream connection is kept. Short, because servers
/// close idle keep-alive connections on their own schedule (5 s for Node.js), and a
/// request racing such a close is retried only if none of it was sent.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// HTTP/1 connections kept per key at most (busy ones included).
pub const MAX_PER_KEY: usize = 64;
/// How long a destination counts as HTTP after it was last used as such.
pub const KNOWN_HTTP_TTL: Duration = Duration::from_secs(60);

/// Which upstream connections can carry a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Inbound leg: the calling pod's address (the connection's source). Outbound:
    /// `None` (the source is the pod itself).
    source: Option<IpAddr>,
    /// Where the connection goes.
    dst: SocketAddr,
    /// Prior-knowledge HTTP/2.
    h2: bool,
    /// The data path core of the connection (`crate::cores`): a connection is
    /// registered with its core's event loop and used only there.
    core: Option<usize>,
}

impl PoolKey {
    /// The key of a request on `target` over HTTP/1 (`h2 == false`) or HTTP/2.
    pub fn new(target: &Target, h2: bool) -> Self {
        let source = match target {
            Target::Outbound { .. } => None,
            Target::Inbound { client, .. } => Some(client.ip()),
        };
        Self {
            source,
            dst: target.dst(),
            h2,
            core: crate::cores::current(),
        }
    }
}

struct H1Conn {
    sender: http1::SendRequest<UpstreamBody>,
    last_used: Instant,
    opened: Instant,
}

impl H1Conn {
    /// Open, not past its lifetime, and either busy or idle for less than
    /// [`IDLE_TIMEOUT`]. A busy connection past its lifetime stays listed until the
    /// next sweep after its response; dropping its sender then closes it.
    fn keep(&self, now: Instant, max_lifetime: Duration) -> bool {
        let ready = self.sender.is_ready();
        let idle_too_long = ready && now.duration_since(self.last_used) > IDLE_TIMEOUT;
        let too_old = ready && now.duration_since(self.opened) > max_lifetime;
        !self.sender.is_closed() && !idle_too_long && !too_old
    }
}

/// An upstream connection of the lean HTTP/1 path (`proxy::h1`): the socket, when it
/// stops being reused, and its addresses once asked for.
#[derive(Debug)]
pub struct RawUpstream {
    pub stream: TcpStream,
    /// Opened plus the pool's lifetime (`None`: beyond what a clock can hold). Kept as
    /// a deadline so that a check-in or check-out compares two instants.
    expires: Option<Instant>,
    addrs: Option<(SocketAddr, SocketAddr)>,
}

impl RawUpstream {
    /// Its (local, peer) addresses: asked of the kernel once per connection (two
    /// syscalls), not once per request.
    pub fn addrs(&mut self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        if let Some(a) = self.addrs {
            return Ok(a);
        }
        let a = (self.stream.local_addr()?, self.stream.peer_addr()?);
        self.addrs = Some(a);
        Ok(a)
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|t| now > t)
    }
}

/// An idle HTTP/1 connection of the lean path.
struct RawConn {
    up: RawUpstream,
    /// Checked in plus [`IDLE_TIMEOUT`].
    idle_until: Option<Instant>,
}

impl RawConn {
    fn keep(&self, now: Instant) -> bool {
        self.idle_until.is_none_or(|t| now <= t) && !self.up.expired(now)
    }
}

/// Whether an idle connection is still usable: no EOF, reset or stray bytes from the
/// server since its last response (no syscall unless the socket became readable).
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[derive(Default)]
struct Entry {
    h1: Vec<H1Conn>,
    /// Idle connections of the lean HTTP/1 path.
    raw: Vec<RawConn>,
    /// The shared connection and when it was opened.
    h2: Option<(http2::SendRequest<UpstreamBody>, Instant)>,
    last_http: Option<Instant>,
}

/// The upstream connections of one pod and direction. Shared (`Arc`) so that its
/// sweeper task can close idle connections without keeping the pool alive.
pub struct Pool {
    entries: Mutex<HashMap<PoolKey, Entry, foldhash::fast::RandomState>>,
    /// A sweeper task is running (started by the first check-in, ends when empty).
    sweeping: AtomicBool,
    /// Connections are not reused past this age (`Limits::pool_max_lifetime`): a
    /// connection that went direct while the peer's agent was down is replaced by a
    /// steered one within this time once the agent is back.
    max_lifetime: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// An empty pool whose connections are reused for at most `max_lifetime`.
    pub fn new(max_lifetime: Duration) -> Self {
        Self {
            entries: Mutex::default(),
            sweeping: AtomicBool::new(false),
            max_lifetime,
        }
    }

    fn with<R>(
        &self,
        f: impl FnOnce(&mut HashMap<PoolKey, Entry, foldhash::fast::RandomState>) -> R,
    ) -> R {
        // A panic while holding the lock leaves the map consistent (every operation is
        // a single push/pop/retain), so a poisoned lock is still usable.
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut map)
    }

    /// Whether `target` recently spoke HTTP (either version) from this pod.
    pub fn knows_http(&self, target: &Target) -> bool {
        let now = Instant::now();
        self.with(|map| {
            [false, true].iter().any(|h2| {
                map.get(&PoolKey::new(target, *h2))
                    .and_then(|e| e.last_http)
                    .is_some_and(|t| now.duration_since(t) < KNOWN_HTTP_TTL)
            })
        })
    }

    /// Takes an HTTP/1 connection that can send a request now, if there is one, with
    /// the time it was opened.
    pub fn checkout_h1(
        &self,
        key: &PoolKey,
    ) -> Option<(http1::SendRequest<UpstreamBody>, Instant)> {
        let now = Instant::now();
        self.with(|map| {
            let entry = map.get_mut(key)?;
            entry.last_http = Some(now);
            // Closed connections and idle ones past their time go; busy ones stay.
            let max = self.max_lifetime;
            entry.h1.retain(|c| c.keep(now, max));
            // Most recently used first: keeps the number of live connections low.
            let i = entry.h1.iter().rposition(|c| c.sender.is_ready())?;
            let c = entry.h1.remove(i);
            Some((c.sender, c.opened))
        })
    }

    /// Returns an HTTP/1 connection after a request was sent on it (its response may
    /// still be streaming). Dropped instead when closed or the key is full. Must run
    /// inside the tokio runtime (starts the sweeper).
    /// `opened`: when its TCP connection was made.
    pub fn checkin_h1(
        self: &Arc<Self>,
        key: PoolKey,
        sender: http1::SendRequest<UpstreamBody>,
        opened: Instant,
    ) {
        let now = Instant::now();
        if sender.is_closed() || now.duration_since(opened) > self.max_lifetime {
            return;
        }
        self.with(|map| {
            let entry = map.entry(key).or_default();
            entry.last_http = Some(now);
            if entry.h1.len() < MAX_PER_KEY {
                entry.h1.push(H1Conn {
                    sender,
                    last_used: now,
                    opened,
                });
            }
        });
        self.sweep(now);
        self.start_sweeper();
    }

    /// A connection of the lean HTTP/1 path, opened now on `stream`.
    pub fn raw_upstream(&self, stream: TcpStream) -> RawUpstream {
        RawUpstream {
            stream,
            expires: Instant::now().checked_add(self.max_lifetime),
            addrs: None,
        }
    }

    /// Takes an idle connection of the lean HTTP/1 path, if one is open.
    pub fn checkout_raw(&self, key: &PoolKey) -> Option<RawUpstream> {
        let now = Instant::now();
        self.with(|map| {
            let entry = map.get_mut(key)?;
            entry.last_http = Some(now);
            // Most recently used first; closed or expired ones are dropped on the way.
            while let Some(c) = entry.raw.pop() {
                if c.keep(now) && still_open(&c.up.stream) {
                    return Some(c.up);
                }
            }
            None
        })
    }

    /// Returns a connection of the lean HTTP/1 path after its response ended with the
    /// connection reusable. Dropped instead when past its lifetime or the key is full.
    /// Must run inside the tokio runtime (starts the sweeper).
    pub fn checkin_raw(self: &Arc<Self>, key: PoolKey, up: RawUpstream) {
        let now = Instant::now();
        if up.expired(now) {
            return;
        }
        self.with(|map| {
            let entry = map.entry(key).or_default();
            entry.last_http = Some(now);
            if entry.raw.len() < MAX_PER_KEY {
                entry.raw.push(RawConn {
                    up,
                    idle_until: now.checked_add(IDLE_TIMEOUT),
                });
            }
        });
        self.start_sweeper();
    }

    /// Remembers that `target` speaks HTTP/1 (the lean path, before its first check-in).
    pub fn mark_http(&self, key: PoolKey) {
        let now = Instant::now();
        self.with(|map| map.entry(key).or_default().last_http = Some(now));
    }

    /// Closes idle connections on time even when no request comes to trigger it.
    /// One task per pool at most; it holds only a weak reference, and exits once the
    /// pool is empty (the next check-in starts it again) or gone.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE_TIMEOUT / 2).await;
                let Some(pool) = weak.upgrade() else { return };
                pool.sweep(Instant::now());
                if pool.with(|map| map.values().all(|e| e.h1.is_empty() && e.raw.is_empty())) {
                    pool.sweeping.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    /// The shared HTTP/2 connection of `key`, if open and not past its lifetime (its
    /// streams in flight go on; new ones get a new connection).
    pub fn h2(&self, key: &PoolKey) -> Option<http2::SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let max = self.max_lifetime;
        self.with(|map| {
            let entry = map.get_mut(key)?;
            entry.last_http = Some(now);
            match &entry.h2 {
                Some((s, opened)) if !s.is_closed() && now.duration_since(*opened) <= max => {
                    Some(s.clone())
                }
                _ => {
                    entry.h2 = None;
                    None
                }
            }
        })
    }

    /// Makes `sender` the shared HTTP/2 connection of `key`.
    pub fn set_h2(self: &Arc<Self>, key: PoolKey, sender: http2::SendRequest<UpstreamBody>) {
        let now = Instant::now();
        self.with(|map| {
            let entry = map.entry(key).or_default();
            entry.last_http = Some(now);
            entry.h2 = Some((sender, now));
        });
        self.sweep(now);
    }

    /// Forgets keys not used for [`KNOWN_HTTP_TTL`] and closes their connections, so a
    /// pod talking to ever new destinations cannot grow the pool.
    fn sweep(&self, now: Instant) {
        self.with(|map| {
            let max = self.max_lifetime;
            map.retain(|_, e| {
                e.h1.retain(|c| c.keep(now, max));
                e.raw.retain(|c| c.keep(now));
                let recent = e
                    .last_http
                    .is_some_and(|t| now.duration_since(t) < KNOWN_HTTP_TTL);
                recent || !e.h1.is_empty() || !e.raw.is_empty()
            });
        });
    }

    /// HTTP/1 connections held for `key` (for tests and debugging).
    pub fn h1_len(&self, key: &PoolKey) -> usize {
        self.with(|map| map.get(key).map_or(0, |e| e.h1.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_keys_separate_callers_outbound_keys_do_not() {
        let dst: SocketAddr = "10.0.2.2:8080".parse().expect("addr");
        let a = Target::Inbound {
            client: "10.0.1.2:40000".parse().expect("addr"),
            dst,
        };
        let a2 = Target::Inbound {
            client: "10.0.1.2:40001".parse().expect("addr"),
            dst,
        };
        let b = Target::Inbound {
            client: "10.0.1.3:40000".parse().expect("addr"),
            dst,
        };
        assert_eq!(PoolKey::new(&a, false), PoolKey::new(&a2, false));
        assert_ne!(PoolKey::new(&a, false), PoolKey::new(&b, false));
        assert_ne!(PoolKey::new(&a, false), PoolKey::new(&a, true));
        let o = Target::Outbound { dst };
        assert_eq!(PoolKey::new(&o, false).source, None);
        assert!(!Pool::new(Duration::from_secs(30)).knows_http(&o));
    }
}
