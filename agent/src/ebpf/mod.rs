//! Loading, attaching and driving the eBPF programs (agent-ebpf).
//!
//! Cgroup programs attach through bpf_link (attach flags 0: links always coexist
//! with other programs on the cgroup, e.g. a CNI's). Links are never pinned: they
//! live as long as this process, so when the agent
//! dies the kernel detaches everything and new connections go direct (fail-open).
//!
//! The programs log their steering decisions through aya-log when asked
//! (`--ebpf-log`, see [`log`]); otherwise the level global is 0 and the verifier
//! removes the logging code.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use agent_common::{
    maps, programs, Counter, InboundKey, ListenKey, OrigDst, OrigDstKey, PodSteer, Tuple,
    FAMILY_V4, FAMILY_V6,
};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, SockHash},
    programs::{
        cgroup_sock_addr::CgroupSockAddrLinkId, sk_lookup::SkLookupLinkId, sock_ops::SockOpsLinkId,
        CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps,
    },
    Ebpf, EbpfLoader,
};

pub mod btf;
mod counters;
mod local;
mod log;
mod pod;
pub mod read_probe;
mod splice;
mod threads;

pub use counters::KernelCounters;
pub use log::LOG_TARGET;

pub use pod::{AttachedPod, SteeringGuard};
pub use splice::{SpliceSocket, Spliced};
pub use threads::{AppSocket, LastUse, ThreadId, ThreadProbes};

/// The compiled eBPF object, built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Errors from the eBPF layer; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded (usually privileges or kernel features).
    #[error("loading eBPF programs failed: {0}; run as root (or with CAP_SYS_ADMIN, which covers CAP_BPF and CAP_PERFMON) on Linux ≥ 5.15 with BTF; `hoptrace check` shows what is missing")]
    Load(#[from] aya::EbpfError),
    /// A program failed verification or attach.
    #[error("eBPF program {name}: {}; `hoptrace check` shows what is missing", chain(.source))]
    Program {
        /// Program name.
        name: &'static str,
        /// Cause.
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("eBPF map {name}: {}", chain(.source))]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        source: aya::maps::MapError,
    },
    /// The object is missing a program or map: agent and eBPF object out of sync.
    #[error("eBPF object has no {0}: rebuild with `cargo xtask build`")]
    Missing(&'static str),
    /// The eBPF log (`--ebpf-log`) could not be started.
    #[error("eBPF log (--ebpf-log): {0}")]
    Log(String),
    /// An optional feature this kernel's release does not have.
    #[error("this kernel lacks {0} (`hoptrace check` lists the releases)")]
    Unsupported(&'static str),
    /// The kernel's BTF could not be read (tracing programs need it).
    #[error("kernel BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
}

/// `error: cause: cause` — aya keeps the errno in the source chain.
fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// The program `name` of the object, as its type `T`.
fn program_as<'a, T>(e: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    e.program_mut(name)
        .ok_or(DatapathError::Missing(name))?
        .try_into()
        .map_err(prog_err(name))
}

fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Program { name, source }
}

/// Links attached for one pod; hand back to [`Datapath::detach_pod`].
#[derive(Debug)]
pub struct PodLinks {
    connect4: CgroupSockAddrLinkId,
    connect6: CgroupSockAddrLinkId,
    sock_ops: SockOpsLinkId,
    sk_lookup: SkLookupLinkId,
}

struct Control {
    ebpf: Ebpf,
    ready: HashMap<MapData, u64, PodSteer>,
    inbound: SockHash<MapData, InboundKey>,
    pod_netns: HashMap<MapData, InboundKey, u64>,
    counters: PerCpuArray<MapData, u64>,
}

/// The loaded programs and maps. Shared by the reconciler (attach/detach, readiness)
/// and the proxy (original destination lookups), each behind its own lock.
pub struct Datapath {
    control: Mutex<Control>,
    orig: Mutex<HashMap<MapData, OrigDstKey, OrigDst>>,
    bypass: Mutex<HashMap<MapData, Tuple, u8>>,
    listeners: Mutex<HashMap<MapData, ListenKey, u64>>,
    /// Context propagation's thread facts (`None`: the programs did not load).
    threads: Mutex<Option<threads::Threads>>,
    /// Opaque TCP spliced in the kernel (`None`: the program did not load or attach).
    splice: Mutex<Option<splice::Splicer>>,
    /// In-pod connections skip TCP (`None`: not asked for, or not available).
    local: Mutex<Option<local::Local>>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath").finish_non_exhaustive()
    }
}

/// What the datapath takes from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct DatapathConfig {
    /// The programs log their steering decisions (`--ebpf-log`).
    pub log: bool,
    /// Opaque TCP spliced in the kernel: `None` not asked for (`--opaque-tcp
    /// userspace`, the default: the program is not loaded); `Some(supported)` asked
    /// for, and whether the kernel can (`kernel::SPLICE_FEATURE`; else a warning, and
    /// opaque TCP is relayed in userspace).
    pub splice: Option<bool>,
}

/// Loads the object and every program into the kernel (verifier included), without
/// attaching anything. Used by `run` and by `check`. With `log` false the programs'
/// log level is 0: every log statement is dead code the verifier removes.
///
/// `cookie_offset` is where `skc_cookie` is in `struct sock` ([`btf::skc_cookie_offset`];
/// 0: unknown, the context propagation programs do nothing). They are loaded by
/// [`Datapath::load`], not here.
pub fn load_programs(log: bool, cookie_offset: u32) -> Result<Ebpf, DatapathError> {
    let level = log::level(log);
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &level, true);
    loader.override_global(programs::SKC_COOKIE_OFFSET, &cookie_offset, true);
    if !log {
        // Nothing is ever written to it: the smallest ring buffer the kernel takes.
        loader.map_max_entries(log::RING_BUFFER, log::page_size());
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    for name in [programs::CONNECT4, programs::CONNECT6] {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(DatapathError::Missing(name))?
            .try_into()
            .map_err(prog_err(name))?;
        prog.load().map_err(prog_err(name))?;
    }
    let prog: &mut SockOps = ebpf
        .program_mut(programs::SOCK_OPS)
        .ok_or(DatapathError::Missing(programs::SOCK_OPS))?
        .try_into()
        .map_err(prog_err(programs::SOCK_OPS))?;
    prog.load().map_err(prog_err(programs::SOCK_OPS))?;
    let prog: &mut SkLookup = ebpf
        .program_mut(programs::SK_LOOKUP)
        .ok_or(DatapathError::Missing(programs::SK_LOOKUP))?
        .try_into()
        .map_err(prog_err(programs::SK_LOOKUP))?;
    prog.load().map_err(prog_err(programs::SK_LOOKUP))?;
    Ok(ebpf)
}

impl Datapath {
    /// Loads programs and takes ownership of the maps; with `config.log`, starts the
    /// thread that forwards the programs' log records (target [`LOG_TARGET`]).
    pub fn load(config: DatapathConfig) -> Result<Self, DatapathError> {
        let cookie_offset = btf::skc_cookie_offset();
        let mut ebpf = load_programs(config.log, cookie_offset.clone().unwrap_or(0))?;
        if config.log {
            log::start(&mut ebpf)?;
        }
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::Missing(name));
        let ready = HashMap::try_from(take(maps::OUTBOUND_READY)?)
            .map_err(map_err(maps::OUTBOUND_READY))?;
        let orig =
            HashMap::try_from(take(maps::ORIG_BY_PEER)?).map_err(map_err(maps::ORIG_BY_PEER))?;
        let inbound = SockHash::try_from(take(maps::INBOUND_LISTENERS)?)
            .map_err(map_err(maps::INBOUND_LISTENERS))?;
        let counters =
            PerCpuArray::try_from(take(maps::COUNTERS)?).map_err(map_err(maps::COUNTERS))?;
        let bypass = HashMap::try_from(take(maps::INBOUND_BYPASS)?)
            .map_err(map_err(maps::INBOUND_BYPASS))?;
        let pod_netns =
            HashMap::try_from(take(maps::POD_NETNS)?).map_err(map_err(maps::POD_NETNS))?;
        let listeners =
            HashMap::try_from(take(maps::APP_LISTENERS)?).map_err(map_err(maps::APP_LISTENERS))?;
        let threads = match threads::load(&mut ebpf, cookie_offset) {
            Ok(t) => Some(t),
            Err(err) => {
                tracing::warn!(
                    "context propagation: {err}; pods with context_propagation: auto are linked by exclusivity only (docs/TRACING.md)"
                );
                None
            }
        };
        let splice = match config
            .splice
            .map(|supported| splice::load(&mut ebpf, supported))
        {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(err)) => {
                tracing::warn!(
                    "opaque TCP in the kernel: {err}; opaque connections are relayed in userspace (docs/KERNELS.md)"
                );
                None
            }
        };
        Ok(Self {
            control: Mutex::new(Control {
                ebpf,
                ready,
                inbound,
                pod_netns,
                counters,
            }),
            orig: Mutex::new(orig),
            bypass: Mutex::new(bypass),
            listeners: Mutex::new(listeners),
            threads: Mutex::new(threads),
            splice: Mutex::new(splice),
            local: Mutex::new(None),
        })
    }

    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        // A panic while holding the lock leaves only plain handles behind: keep going.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches the steering programs to a pod's cgroup and netns. They stay inert
    /// until [`Datapath::set_ready`] / [`Datapath::add_inbound`] enable the pod.
    pub fn attach_pod(&self, cgroup: &File, netns: &File) -> Result<PodLinks, DatapathError> {
        let mut c = self.control();
        let e = &mut c.ebpf;
        let connect4 = sock_addr(e, programs::CONNECT4)?
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(programs::CONNECT4))?;
        // Never leave a pod half-attached: undo what succeeded before a failure.
        let connect6 = match sock_addr(e, programs::CONNECT6).and_then(|p| {
            p.attach(cgroup, CgroupAttachMode::Single)
                .map_err(prog_err(programs::CONNECT6))
        }) {
            Ok(l) => l,
            Err(err) => {
                let _ = sock_addr(e, programs::CONNECT4).map(|p| p.detach(connect4));
                return Err(err);
            }
        };
        let sock_ops_link = match sock_ops(e).and_then(|p| {
            p.attach(cgroup, CgroupAttachMode::Single)
                .map_err(prog_err(programs::SOCK_OPS))
        }) {
            Ok(l) => l,
            Err(err) => {
                let _ = sock_addr(e, programs::CONNECT4).map(|p| p.detach(connect4));
                let _ = sock_addr(e, programs::CONNECT6).map(|p| p.detach(connect6));
                return Err(err);
            }
        };
        let sk_lookup_link = match sk_lookup(e)
            .and_then(|p| p.attach(netns).map_err(prog_err(programs::SK_LOOKUP)))
        {
            Ok(l) => l,
            Err(err) => {
                let _ = sock_addr(e, programs::CONNECT4).map(|p| p.detach(connect4));
                let _ = sock_addr(e, programs::CONNECT6).map(|p| p.detach(connect6));
                let _ = sock_ops(e).map(|p| p.detach(sock_ops_link));
                return Err(err);
            }
        };
        Ok(PodLinks {
            connect4,
            connect6,
            sock_ops: sock_ops_link,
            sk_lookup: sk_lookup_link,
        })
    }

    /// Detaches a pod's programs. Errors are logged: the links are gone either way
    /// once the pod's cgroup/netns are.
    pub fn detach_pod(&self, links: PodLinks) {
        let mut c = self.control();
        let results = [
            sock_addr(&mut c.ebpf, programs::CONNECT4).and_then(|p| {
                p.detach(links.connect4)
                    .map_err(prog_err(programs::CONNECT4))
            }),
            sock_addr(&mut c.ebpf, programs::CONNECT6).and_then(|p| {
                p.detach(links.connect6)
                    .map_err(prog_err(programs::CONNECT6))
            }),
            sock_ops(&mut c.ebpf).and_then(|p| {
                p.detach(links.sock_ops)
                    .map_err(prog_err(programs::SOCK_OPS))
            }),
            sk_lookup(&mut c.ebpf).and_then(|p| {
                p.detach(links.sk_lookup)
                    .map_err(prog_err(programs::SK_LOOKUP))
            }),
        ];
        for r in results {
            if let Err(err) = r {
                tracing::warn!("detach: {err}");
            }
        }
    }

    /// Marks a pod's outbound listener(s) ready: connect4/6 start steering.
    pub fn set_ready(&self, netns_cookie: u64, steer: PodSteer) -> Result<(), DatapathError> {
        self.control()
            .ready
            .insert(netns_cookie, steer, 0)
            .map_err(map_err(maps::OUTBOUND_READY))
    }

    /// Stops outbound steering for a pod (idempotent).
    pub fn clear_ready(&self, netns_cookie: u64) {
        let _ = self.control().ready.remove(&netns_cookie);
    }

    /// Steers new inbound connections for `ip` to `listener` (in the pod's netns).
    pub fn add_inbound(&self, ip: IpAddr, listener: &impl AsRawFd) -> Result<(), DatapathError> {
        self.control()
            .inbound
            .insert(inbound_key(ip), listener.as_raw_fd(), 0)
            .map_err(map_err(maps::INBOUND_LISTENERS))
    }

    /// Stops inbound steering for `ip` (idempotent).
    pub fn remove_inbound(&self, ip: IpAddr) {
        let _ = self.control().inbound.remove(&inbound_key(ip));
    }

    /// Takes (reads and deletes) the original destination of the steered connection
    /// whose client port in the netns `netns_cookie` is `peer_port`, and the app's
    /// socket that made it.
    pub fn take_orig_dst(
        &self,
        netns_cookie: u64,
        peer_port: u16,
    ) -> Option<(SocketAddr, AppSocket)> {
        let key = OrigDstKey {
            netns_cookie,
            port: u32::from(peer_port),
            _pad: 0,
        };
        let mut map = self.orig.lock().unwrap_or_else(|e| e.into_inner());
        let orig = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        drop(map);
        Some((orig_to_addr(&orig)?, AppSocket(orig.socket_cookie)))
    }

    /// Lets the connection `from` → `to` (the agent's own inbound leg) through
    /// `sk_lookup` until the returned guard is dropped.
    pub fn bypass(
        self: &Arc<Self>,
        from: SocketAddr,
        to: SocketAddr,
    ) -> Result<BypassGuard, DatapathError> {
        let tuple = tuple(from, to);
        self.bypass
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tuple, 1, 0)
            .map_err(map_err(maps::INBOUND_BYPASS))?;
        Ok(BypassGuard {
            datapath: self.clone(),
            tuple,
        })
    }

    /// Current values of the kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        let c = self.control();
        Counter::ALL
            .iter()
            .map(|&k| {
                let v = c
                    .counters
                    .get(&(k as u32), 0)
                    .map(|vals| vals.iter().sum())
                    .unwrap_or(0);
                (k, v)
            })
            .collect()
    }
}

/// Removes a bypass entry when dropped (the connection is established or failed:
/// `sk_lookup` only runs for the SYN).
#[derive(Debug)]
pub struct BypassGuard {
    datapath: Arc<Datapath>,
    tuple: Tuple,
}

impl Drop for BypassGuard {
    fn drop(&mut self) {
        let _ = self
            .datapath
            .bypass
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.tuple);
    }
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

/// The sk_lookup view of a connection from `from` to `to`.
pub fn tuple(from: SocketAddr, to: SocketAddr) -> Tuple {
    Tuple {
        remote_addr: addr_bytes(from.ip()),
        local_addr: addr_bytes(to.ip()),
        remote_port: from.port(),
        local_port: to.port(),
        family: u32::from(if to.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }),
    }
}

fn sock_addr<'a>(
    e: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, DatapathError> {
    e.program_mut(name)
        .ok_or(DatapathError::Missing(name))?
        .try_into()
        .map_err(prog_err(name))
}

fn sock_ops(e: &mut Ebpf) -> Result<&mut SockOps, DatapathError> {
    e.program_mut(programs::SOCK_OPS)
        .ok_or(DatapathError::Missing(programs::SOCK_OPS))?
        .try_into()
        .map_err(prog_err(programs::SOCK_OPS))
}

fn sk_lookup(e: &mut Ebpf) -> Result<&mut SkLookup, DatapathError> {
    e.program_mut(programs::SK_LOOKUP)
        .ok_or(DatapathError::Missing(programs::SK_LOOKUP))?
        .try_into()
        .map_err(prog_err(programs::SK_LOOKUP))
}

/// Map key of a pod address.
pub fn inbound_key(ip: IpAddr) -> InboundKey {
    let mut key = InboundKey::default();
    match ip {
        IpAddr::V4(v4) => {
            key.family = u32::from(FAMILY_V4);
            key.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key.family = u32::from(FAMILY_V6);
            key.addr.copy_from_slice(&v6.octets());
        }
    }
    key
}

/// Converts a map value into a socket address (`None` for an unknown family).
pub fn orig_to_addr(orig: &OrigDst) -> Option<SocketAddr> {
    match orig.family {
        FAMILY_V4 => {
            let mut b = [0u8; 4];
            b.copy_from_slice(&orig.addr[..4]);
            Some(SocketAddr::new(IpAddr::from(b), orig.port))
        }
        FAMILY_V6 => Some(SocketAddr::new(IpAddr::from(orig.addr), orig.port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        let v4: IpAddr = "10.1.2.3".parse().expect("ip");
        let k = inbound_key(v4);
        assert_eq!(k.family, 2);
        assert_eq!(&k.addr[..4], &[10, 1, 2, 3]);
        assert_eq!(&k.addr[4..], &[0; 12]);
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let o = OrigDst {
            addr,
            port: 8080,
            family: FAMILY_V4,
            _pad: 0,
            socket_cookie: 0,
        };
        assert_eq!(orig_to_addr(&o), Some("10.1.2.3:8080".parse().expect("sa")));
        let v6: std::net::Ipv6Addr = "fd00::7".parse().expect("v6");
        let o = OrigDst {
            addr: v6.octets(),
            port: 443,
            family: FAMILY_V6,
            _pad: 0,
            socket_cookie: 0,
        };
        assert_eq!(orig_to_addr(&o), Some("[fd00::7]:443".parse().expect("sa")));
        let o = OrigDst { family: 99, ..o };
        assert_eq!(orig_to_addr(&o), None);
    }
}
