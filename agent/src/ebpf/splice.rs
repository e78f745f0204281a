//! Opaque TCP in the kernel (docs/ARCHITECTURE.md, "Opaque TCP in the kernel"): the
//! two sockets of a relayed connection go into `SPLICE_SOCKS`, each with its peer in
//! `SPLICE_PEERS`, and the `hoptrace_splice` stream verdict program sends what one
//! receives out of the other. [`Spliced`] holds a connection's entries and removes them
//! when dropped. When the program cannot be loaded or attached, [`Datapath::splice`]
//! is `None` and connections are relayed in userspace, as before.

use std::{os::fd::AsRawFd, sync::Arc};

use agent_common::{maps, programs, SplicePeer, SpliceStats};
use aya::{
    maps::{HashMap, MapData, SockHash},
    programs::SkSkb,
    Ebpf,
};

use super::{map_err, prog_err, Datapath, DatapathError};

/// The maps, with the program attached to `socks` for as long as the object lives.
pub(super) struct Splicer {
    socks: SockHash<MapData, u64>,
    peers: HashMap<MapData, u64, SplicePeer>,
    stats: HashMap<MapData, u64, SpliceStats>,
}

/// Loads `hoptrace_splice` and attaches it to `SPLICE_SOCKS`; `supported`: the
/// kernel's release has the feature (`DatapathConfig::splice`).
pub(super) fn load(ebpf: &mut Ebpf, supported: bool) -> Result<Splicer, DatapathError> {
    if !supported {
        return Err(DatapathError::Unsupported(
            "sockmap redirects without duplicated bytes (Linux 6.16, 6.12.34+, 6.15.3+; docs/KERNELS.md)",
        ));
    }
    let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::Missing(name));
    let socks: SockHash<MapData, u64> =
        SockHash::try_from(take(maps::SPLICE_SOCKS)?).map_err(map_err(maps::SPLICE_SOCKS))?;
    let peers =
        HashMap::try_from(take(maps::SPLICE_PEERS)?).map_err(map_err(maps::SPLICE_PEERS))?;
    let stats =
        HashMap::try_from(take(maps::SPLICE_STATS)?).map_err(map_err(maps::SPLICE_STATS))?;
    let name = programs::SPLICE;
    let prog: &mut SkSkb = ebpf
        .program_mut(name)
        .ok_or(DatapathError::Missing(name))?
        .try_into()
        .map_err(prog_err(name))?;
    prog.load().map_err(prog_err(name))?;
    // The link lives in the program, which lives in `Control::ebpf`: attached until
    // the agent exits.
    prog.attach(socks.fd()).map_err(prog_err(name))?;
    Ok(Splicer {
        socks,
        peers,
        stats,
    })
}

/// One connection spliced in the kernel: `a`'s bytes go out of `b` and `b`'s out of
/// `a` until this is dropped (or a socket is closed, which removes it from the map).
#[derive(Debug)]
pub struct Spliced {
    datapath: Arc<Datapath>,
    a: u64,
    b: u64,
}

impl Spliced {
    /// What the program did with each socket's bytes: (`a`'s, `b`'s).
    pub fn stats(&self) -> (SpliceStats, SpliceStats) {
        let splice = self.datapath.splicer();
        let Some(s) = splice.as_ref() else {
            return Default::default();
        };
        let get = |k: u64| s.stats.get(&k, 0).unwrap_or_default();
        (get(self.a), get(self.b))
    }

    /// Lets the program redirect up to `a` bytes from `a` (counted from the splice)
    /// and `b` from `b`.
    pub fn set_limits(&self, a: u64, b: u64) -> Result<(), DatapathError> {
        let mut splice = self.datapath.splicer();
        let Some(s) = splice.as_mut() else {
            return Ok(());
        };
        for (k, peer, limit) in [(self.a, self.b, a), (self.b, self.a, b)] {
            s.peers
                .insert(k, SplicePeer { peer, limit }, 0)
                .map_err(map_err(maps::SPLICE_PEERS))?;
        }
        Ok(())
    }

    /// Stops redirecting in both directions: the program pauses each at its next
    /// segment. A segment it is redirecting right now may still be counted: take the
    /// receiving socket's lock (any socket call that does) before the final counts.
    pub fn stop(&self) {
        let mut splice = self.datapath.splicer();
        if let Some(s) = splice.as_mut() {
            for k in [self.a, self.b] {
                let _ = s.peers.remove(&k);
            }
        }
    }
}

impl Drop for Spliced {
    fn drop(&mut self) {
        let mut splice = self.datapath.splicer();
        if let Some(s) = splice.as_mut() {
            s.remove(self.a, self.b);
        }
    }
}

impl Datapath {
    pub(super) fn splicer(&self) -> std::sync::MutexGuard<'_, Option<Splicer>> {
        self.splice.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether opaque TCP can be spliced in the kernel here.
    pub fn splice_available(&self) -> bool {
        self.splicer().is_some()
    }

    /// Splices the connected TCP sockets `a` and `b`: from now on what either
    /// receives, including what it had received and not yet been read, leaves through
    /// the other, up to `limit` bytes each until [`Spliced::set_limits`] raises it. Nothing must read or write them but the kernel until the returned
    /// guard is dropped, except for shutting down a write side. `None` when not
    /// available; `Err` (nothing changed) when these sockets cannot be spliced (the map
    /// is full, or a socket is no longer connected).
    pub fn splice(
        self: &Arc<Self>,
        a: SpliceSocket<'_>,
        b: SpliceSocket<'_>,
        limit: u64,
    ) -> Option<Result<Spliced, DatapathError>> {
        let mut splice = self.splicer();
        let s = splice.as_mut()?;
        Some(splice_in(self, s, a, b, limit))
    }
}

/// A connected TCP socket to splice, with its cookie (`SO_COOKIE`).
#[derive(Clone, Copy)]
pub struct SpliceSocket<'a> {
    /// The socket.
    pub fd: &'a dyn AsRawFd,
    /// Its cookie, the key the program knows it by.
    pub cookie: u64,
}

fn splice_in(
    datapath: &Arc<Datapath>,
    s: &mut Splicer,
    a: SpliceSocket<'_>,
    b: SpliceSocket<'_>,
    limit: u64,
) -> Result<Spliced, DatapathError> {
    let (ca, cb) = (a.cookie, b.cookie);
    let peer = |peer| SplicePeer { peer, limit };
    let zero = SpliceStats::default();
    let inserted = s
        .stats
        .insert(ca, zero, 0)
        .and_then(|()| s.stats.insert(cb, zero, 0))
        .map_err(map_err(maps::SPLICE_STATS))
        .and_then(|()| {
            s.peers
                .insert(ca, peer(cb), 0)
                .and_then(|()| s.peers.insert(cb, peer(ca), 0))
                .map_err(map_err(maps::SPLICE_PEERS))
        })
        .and_then(|()| {
            s.socks
                .insert(cb, b.fd.as_raw_fd(), 0)
                .and_then(|()| s.socks.insert(ca, a.fd.as_raw_fd(), 0))
                .map_err(map_err(maps::SPLICE_SOCKS))
        });
    if let Err(err) = inserted {
        // Undo what was inserted (the lock is held: not through the guard's drop).
        s.remove(ca, cb);
        return Err(err);
    }
    Ok(Spliced {
        datapath: datapath.clone(),
        a: ca,
        b: cb,
    })
}

impl Splicer {
    fn remove(&mut self, a: u64, b: u64) {
        for k in [a, b] {
            let _ = self.socks.remove(&k);
            let _ = self.peers.remove(&k);
            let _ = self.stats.remove(&k);
        }
    }
}
