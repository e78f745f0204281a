//! Maps shared by the programs. Names must match `agent_common::maps`.

use agent_common::{
    Counter, InboundKey, ListenKey, LocalFlow, OrigDst, OrigDstKey, PodSteer, SockKey, SockThread,
    SplicePeer, SpliceStats, Tuple, BYPASS_MAX_ENTRIES, COUNTERS_LEN, LISTENERS_MAX_ENTRIES,
    LOCAL_MAX_ENTRIES, ORIG_DST_MAX_ENTRIES, PODS_MAX_ENTRIES, PROPAGATION_MAX_ENTRIES,
    SPLICE_MAX_ENTRIES,
};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, SockHash},
};

/// netns cookie → steering entry; present only while the pod's listener is up.
#[map]
pub static OUTBOUND_READY: HashMap<u64, PodSteer> = HashMap::with_max_entries(PODS_MAX_ENTRIES, 0);

/// socket cookie → original destination (connect4/6 → sock_ops).
#[map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(ORIG_DST_MAX_ENTRIES, 0);

/// (netns cookie, client port) → original destination (sock_ops → agent).
#[map]
pub static ORIG_BY_PEER: LruHashMap<OrigDstKey, OrigDst> =
    LruHashMap::with_max_entries(ORIG_DST_MAX_ENTRIES, 0);

/// pod address → that pod's inbound listener.
#[map]
pub static INBOUND_LISTENERS: SockHash<InboundKey> =
    SockHash::with_max_entries(PODS_MAX_ENTRIES, 0);

/// Inbound-leg connections of the agent itself: sk_lookup must not steer them.
#[map]
pub static INBOUND_BYPASS: LruHashMap<Tuple, u8> =
    LruHashMap::with_max_entries(BYPASS_MAX_ENTRIES, 0);

/// pod address → the pod's netns cookie (written by the agent with its listeners).
#[map]
pub static POD_NETNS: HashMap<InboundKey, u64> = HashMap::with_max_entries(PODS_MAX_ENTRIES, 0);

/// (netns cookie, port) → `bpf_ktime_get_ns()` when seen listening: sock_ops adds a
/// port at `listen()`, the agent adds the ones listening before enrollment and removes
/// closed ones (it compares the time with its own dump's).
#[map]
pub static APP_LISTENERS: HashMap<ListenKey, u64> =
    HashMap::with_max_entries(LISTENERS_MAX_ENTRIES, 0);

/// socket cookie → the thread that last used it: app sockets of context-propagating
/// pods (connect4/6 and sock_ops add them, the tcp_sendmsg/tcp_recvmsg programs note
/// the thread, the agent reads).
#[map]
pub static SOCK_THREADS: LruHashMap<u64, SockThread> =
    LruHashMap::with_max_entries(PROPAGATION_MAX_ENTRIES, 0);

/// 4-tuple (remote = connecting side) → socket cookie of a context-propagating pod's
/// accepted sockets (sock_ops → agent).
#[map]
pub static APP_SOCKETS: LruHashMap<Tuple, u64> =
    LruHashMap::with_max_entries(PROPAGATION_MAX_ENTRIES, 0);

/// Both sockets of each opaque TCP connection spliced in the kernel, by socket cookie
/// (the agent inserts them; closing a socket removes it).
#[map]
pub static SPLICE_SOCKS: SockHash<u64> = SockHash::with_max_entries(SPLICE_MAX_ENTRIES, 0);

/// socket cookie → its peer and how far it may send to it (the agent writes).
#[map]
pub static SPLICE_PEERS: HashMap<u64, SplicePeer> =
    HashMap::with_max_entries(SPLICE_MAX_ENTRIES, 0);

/// socket cookie → bytes redirected and the pause flag (`hoptrace_splice` writes in
/// place; the agent inserts, reads, removes).
#[map]
pub static SPLICE_STATS: HashMap<u64, SpliceStats> =
    HashMap::with_max_entries(SPLICE_MAX_ENTRIES, 0);

/// Both ends of each in-pod connection that skips TCP (sock_ops inserts them;
/// closing a socket removes it). `hoptrace_local_msg` is attached to it.
#[map]
pub static LOCAL_SOCKS: SockHash<SockKey> = SockHash::with_max_entries(LOCAL_MAX_ENTRIES, 0);

/// Per socket of `LOCAL_SOCKS`: bytes redirected into it and read by it, and whether
/// its own sends go by TCP (`local.rs`).
#[map]
pub static LOCAL_FLOWS: LruHashMap<SockKey, LocalFlow> =
    LruHashMap::with_max_entries(LOCAL_MAX_ENTRIES, 0);

/// socket cookie → its key in `LOCAL_SOCKS` (for the receive hook).
#[map]
pub static LOCAL_KEYS: LruHashMap<u64, SockKey> =
    LruHashMap::with_max_entries(LOCAL_MAX_ENTRIES, 0);

/// Per-CPU event counters, summed by the agent for `/metrics`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Adds one to a counter slot.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, programs run with preemption disabled on this CPU.
        unsafe { *slot += 1 };
    }
}
