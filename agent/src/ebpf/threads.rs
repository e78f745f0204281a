//! The kernel facts context propagation uses (docs/TRACING.md, "Context propagation by
//! the agent"): for the app sockets of pods that propagate context, which thread last
//! read each inbound socket and which last wrote each outbound one (`SOCK_THREADS`,
//! noted by the `tcp_recvmsg`/`tcp_sendmsg` programs), and the app's end of each of the
//! agent's inbound-leg connections (`APP_SOCKETS`, by 4-tuple).
//!
//! The two programs (raw tracepoints `sock_send_length`, `sock_recv_length`) run on
//! every socket send and receive of the node, so they are attached only while at least
//! one enrolled pod propagates ([`ThreadProbes`] counts them). When they cannot be
//! loaded or attached (a kernel without these tracepoints, before 6.3), pods still
//! propagate by exclusivity alone and the agent says why.

use std::{net::SocketAddr, sync::Arc};

use agent_common::{maps, programs, SockThread, Tuple};
use aya::{
    maps::{HashMap, MapData},
    programs::{raw_trace_point::RawTracePointLinkId, RawTracePoint},
    Ebpf,
};

use super::{map_err, prog_err, tuple, Datapath, DatapathError};

/// The cookie of an app's socket: the app's end of a steered connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppSocket(pub u64);

/// A thread of a pod's processes (kernel thread id, initial pid namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadId(pub u32);

/// The last use of an app socket by a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastUse {
    /// Who.
    pub thread: ThreadId,
    /// When (CLOCK_MONOTONIC nanoseconds, when the call returned).
    pub at_ns: u64,
    /// Inbound socket: when the app last wrote on it (0: never).
    pub wrote_ns: u64,
}

/// The maps and program state; `None` in [`Datapath`] when the programs did not load.
pub(super) struct Threads {
    sock_threads: HashMap<MapData, u64, SockThread>,
    app_sockets: HashMap<MapData, Tuple, u64>,
    /// Pods that propagate, and the links while that is more than zero.
    users: usize,
    links: Option<(RawTracePointLinkId, RawTracePointLinkId)>,
}

fn program<'a>(
    e: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut RawTracePoint, DatapathError> {
    super::program_as(e, name)
}

/// Loads the two programs (not attached) and takes their maps; `cookie_offset` is
/// what [`super::btf::skc_cookie_offset`] found (the programs were loaded with it).
pub(super) fn load(
    ebpf: &mut Ebpf,
    cookie_offset: Result<u32, String>,
) -> Result<Threads, DatapathError> {
    cookie_offset.map_err(DatapathError::Btf)?;
    for name in [programs::SOCK_SEND, programs::SOCK_RECV] {
        program(ebpf, name)?.load().map_err(prog_err(name))?;
    }
    let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::Missing(name));
    Ok(Threads {
        sock_threads: HashMap::try_from(take(maps::SOCK_THREADS)?)
            .map_err(map_err(maps::SOCK_THREADS))?,
        app_sockets: HashMap::try_from(take(maps::APP_SOCKETS)?)
            .map_err(map_err(maps::APP_SOCKETS))?,
        users: 0,
        links: None,
    })
}

/// Held by each pod that propagates context: the thread programs stay attached while
/// any is alive.
#[derive(Debug)]
pub struct ThreadProbes {
    datapath: Arc<Datapath>,
}

impl Drop for ThreadProbes {
    fn drop(&mut self) {
        let mut control = self.datapath.control();
        let mut threads = self.datapath.threads();
        let Some(t) = threads.as_mut() else {
            return;
        };
        t.users = t.users.saturating_sub(1);
        if t.users > 0 {
            return;
        }
        if let Some((send, recv)) = t.links.take() {
            let e = &mut control.ebpf;
            if let Ok(p) = program(e, programs::SOCK_SEND) {
                let _ = p.detach(send);
            }
            if let Ok(p) = program(e, programs::SOCK_RECV) {
                let _ = p.detach(recv);
            }
        }
    }
}

impl Datapath {
    fn threads(&self) -> std::sync::MutexGuard<'_, Option<Threads>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the thread programs loaded (the by-thread rule is available).
    pub fn thread_facts_available(&self) -> bool {
        self.threads().is_some()
    }

    /// Attaches the thread programs unless already attached, for a pod that
    /// propagates context; they stay attached until every returned guard is dropped.
    /// `None` (and a warning saying why): not available on this kernel, the pod is
    /// linked by exclusivity alone.
    pub fn thread_probes(self: &Arc<Self>) -> Option<ThreadProbes> {
        // Lock order: control, then threads (as in `ThreadProbes::drop`).
        let mut control = self.control();
        let mut threads = self.threads();
        let t = threads.as_mut()?;
        if t.links.is_none() {
            let e = &mut control.ebpf;
            let attach = |e: &mut Ebpf, name, tp| {
                program(e, name).and_then(|p| p.attach(tp).map_err(prog_err(name)))
            };
            let send = attach(e, programs::SOCK_SEND, programs::SOCK_SEND_TP);
            let recv = attach(e, programs::SOCK_RECV, programs::SOCK_RECV_TP);
            match (send, recv) {
                (Ok(s), Ok(r)) => t.links = Some((s, r)),
                (send, recv) => {
                    for (name, link) in [(programs::SOCK_SEND, send), (programs::SOCK_RECV, recv)] {
                        match link {
                            Ok(l) => {
                                let _ = program(e, name).map(|p| p.detach(l));
                            }
                            Err(err) => tracing::warn!(
                                "context propagation: {err}; linked by exclusivity only (docs/TRACING.md)"
                            ),
                        }
                    }
                    return None;
                }
            }
        }
        t.users += 1;
        Some(ThreadProbes {
            datapath: self.clone(),
        })
    }

    /// The app's end of the agent's connection `from` → `to` into a pod that
    /// propagates context (`from` is the calling pod's address the agent connects
    /// from), once the app has accepted it.
    pub fn app_socket(&self, from: SocketAddr, to: SocketAddr) -> Option<AppSocket> {
        let key = tuple(from, to);
        let threads = self.threads();
        threads
            .as_ref()?
            .app_sockets
            .get(&key, 0)
            .ok()
            .map(AppSocket)
    }

    /// The last read (inbound socket) or write (outbound socket) on `socket` by a
    /// thread of its app; `None` before the first or when unknown.
    pub fn last_use(&self, socket: AppSocket) -> Option<LastUse> {
        let threads = self.threads();
        let v = threads.as_ref()?.sock_threads.get(&socket.0, 0).ok()?;
        (v.tid != 0).then_some(LastUse {
            thread: ThreadId(v.tid),
            at_ns: v.ns,
            wrote_ns: v.write_ns,
        })
    }
}
