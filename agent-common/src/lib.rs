//! Types shared by the eBPF programs (`agent-ebpf`) and the agent (`hoptrace`).
//!
//! Everything here is `#[repr(C)]`, plain old data, and laid out without implicit
//! padding so the kernel and userspace agree byte for byte. The `user` feature adds
//! the `aya::Pod` impls the userspace half needs to use these as map keys/values.
#![no_std]

/// Port of the per-pod outbound listener, bound on loopback inside each pod netns.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the per-pod inbound listener, bound on loopback inside each pod netns.
pub const INBOUND_PORT: u16 = 15006;

/// `AF_INET` as used in map values.
pub const FAMILY_V4: u16 = 2;
/// `AF_INET6` as used in map values.
pub const FAMILY_V6: u16 = 10;

/// Map names (must match the `#[map]` statics in agent-ebpf).
pub mod maps {
    /// `HashMap<u64 netns cookie, PodSteer>`: pods whose outbound listener is up.
    pub const OUTBOUND_READY: &str = "OUTBOUND_READY";
    /// `LruHashMap<u64 socket cookie, OrigDst>`: written by connect4/6.
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    /// `LruHashMap<OrigDstKey, OrigDst>`: written by sock_ops, read+deleted by the agent.
    pub const ORIG_BY_PEER: &str = "ORIG_BY_PEER";
    /// `SockHash<InboundKey>`: per pod address, the pod's inbound listener.
    pub const INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
    /// `LruHashMap<Tuple, u8>`: connections the agent is making into a pod (inbound
    /// leg) that `sk_lookup` must let through to the app.
    pub const INBOUND_BYPASS: &str = "INBOUND_BYPASS";
    /// `PerCpuArray<u64>` of [`crate::Counter`] values, for `/metrics`.
    pub const COUNTERS: &str = "COUNTERS";
    /// pod address → the pod's netns cookie (sk_lookup finds the pod's listening ports).
    pub const POD_NETNS: &str = "POD_NETNS";
    /// (netns cookie, port) → time seen listening: the ports an enrolled pod's apps
    /// listen on. sk_lookup steers only connections to these.
    pub const APP_LISTENERS: &str = "APP_LISTENERS";
    /// `LruHashMap<u64 socket cookie, SockThread>`: the app sockets of
    /// context-propagating pods and the thread that last used each (docs/TRACING.md).
    pub const SOCK_THREADS: &str = "SOCK_THREADS";
    /// `LruHashMap<Tuple, u64 socket cookie>`: a context-propagating pod's accepted
    /// sockets by 4-tuple (remote = the connecting side), so the agent can find the
    /// app's end of its inbound-leg connection.
    pub const APP_SOCKETS: &str = "APP_SOCKETS";
    /// `SockHash<u64 socket cookie>`: both sockets of each opaque TCP connection the
    /// agent splices in the kernel (docs/ARCHITECTURE.md, "Opaque TCP in the kernel").
    pub const SPLICE_SOCKS: &str = "SPLICE_SOCKS";
    /// `HashMap<u64 socket cookie, SplicePeer>`: where a spliced socket's bytes go.
    pub const SPLICE_PEERS: &str = "SPLICE_PEERS";
    /// `HashMap<u64 socket cookie, SpliceStats>`: what the program did with them.
    pub const SPLICE_STATS: &str = "SPLICE_STATS";
    /// `SockHash<SockKey>`: both ends of each in-pod connection (app ↔ agent) whose
    /// messages go straight into the other end's receive queue (docs/ARCHITECTURE.md,
    /// "In-pod connections without TCP").
    pub const LOCAL_SOCKS: &str = "LOCAL_SOCKS";
    /// `LruHashMap<SockKey, LocalFlow>`: per socket of [`LOCAL_SOCKS`], the bytes
    /// redirected into it, the bytes it read, and whether its own sends go by TCP.
    pub const LOCAL_FLOWS: &str = "LOCAL_FLOWS";
    /// `LruHashMap<u64 socket cookie, SockKey>`: a socket of [`LOCAL_SOCKS`] by cookie
    /// (the receive hook knows the socket, not its key).
    pub const LOCAL_KEYS: &str = "LOCAL_KEYS";
}

/// Program names (function names in agent-ebpf).
pub mod programs {
    /// `cgroup/connect4`
    pub const CONNECT4: &str = "hoptrace_connect4";
    /// `cgroup/connect6`
    pub const CONNECT6: &str = "hoptrace_connect6";
    /// `sockops`
    pub const SOCK_OPS: &str = "hoptrace_sockops";
    /// `sk_lookup`
    pub const SK_LOOKUP: &str = "hoptrace_sk_lookup";
    /// raw tracepoint `sock_send_length`: which thread wrote on a
    /// context-propagating pod's outbound socket.
    pub const SOCK_SEND: &str = "hoptrace_sock_send";
    /// raw tracepoint `sock_recv_length`: which thread read a context-propagating
    /// pod's inbound socket.
    pub const SOCK_RECV: &str = "hoptrace_sock_recv";
    /// The tracepoints they attach to.
    pub const SOCK_SEND_TP: &str = "sock_send_length";
    /// See [`SOCK_SEND_TP`].
    pub const SOCK_RECV_TP: &str = "sock_recv_length";
    /// `sk_skb/stream_verdict` on [`super::maps::SPLICE_SOCKS`]: each received
    /// segment of a spliced socket goes out on its peer socket.
    pub const SPLICE: &str = "hoptrace_splice";
    /// `sockops` for the agent's own cgroup: puts the agent's end of each in-pod
    /// connection into [`super::maps::LOCAL_SOCKS`].
    pub const SOCK_OPS_AGENT: &str = "hoptrace_sockops_agent";
    /// `sk_msg` on [`super::maps::LOCAL_SOCKS`]: a message sent on one end goes into
    /// the other end's receive queue.
    pub const LOCAL_MSG: &str = "hoptrace_local_msg";
    /// raw tracepoint [`SOCK_RECV_TP`]: counts what a socket of
    /// [`super::maps::LOCAL_SOCKS`] read.
    pub const LOCAL_RECV: &str = "hoptrace_local_recv";
    /// The global holding `skc_cookie`'s offset in `struct sock` (0: unknown).
    pub const SKC_COOKIE_OFFSET: &str = "SKC_COOKIE_OFFSET";
}

/// Capacity of the original-destination maps. LRU eviction is only the backstop:
/// the agent deletes each entry as soon as it has accepted the connection.
pub const ORIG_DST_MAX_ENTRIES: u32 = 65_536;
/// Capacity of the per-pod maps (pods per node, times addresses per pod).
pub const PODS_MAX_ENTRIES: u32 = 4_096;

/// Value of [`maps::OUTBOUND_READY`]: present means "steer this netns".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodSteer {
    /// Agent-assigned pod index (for diagnostics only).
    pub pod_index: u32,
    /// Outbound listener port in the pod netns (host byte order).
    pub outbound_port: u16,
    /// [`STEER_V4`] | [`STEER_V6`]: which loopback listeners are up.
    pub flags: u16,
}

/// [`PodSteer::flags`]: the `127.0.0.1` outbound listener is up.
pub const STEER_V4: u16 = 1;
/// [`PodSteer::flags`]: the `[::1]` outbound listener is up.
pub const STEER_V6: u16 = 2;
/// [`PodSteer::flags`]: the pod propagates context (`context_propagation: auto`): its
/// app sockets are recorded in [`maps::SOCK_THREADS`] and [`maps::APP_SOCKETS`].
pub const STEER_PROPAGATE: u16 = 4;
/// [`PodSteer::flags`]: the pod's in-pod connections (app ↔ agent) skip TCP: both
/// ends go into [`maps::LOCAL_SOCKS`] when established.
pub const STEER_LOCAL: u16 = 8;

/// Capacity of [`maps::LOCAL_SOCKS`], [`maps::LOCAL_FLOWS`] and [`maps::LOCAL_KEYS`]
/// (two sockets per in-pod connection; LRU: closed sockets' records age out).
pub const LOCAL_MAX_ENTRIES: u32 = 65_536;

/// The most bytes redirected into a socket and not yet read by it (TCP's default
/// receive buffer is 128 KiB, autotuned up from there). A message that would go past
/// it is sent by TCP instead, and so is every later one from that sender: the TCP
/// window then holds the sender back, as without the agent.
pub const LOCAL_WINDOW: u64 = 256 << 10;

/// A socket of [`maps::LOCAL_SOCKS`] as it sees itself: its netns and its 4-tuple
/// (`Tuple::remote_*` its peer, `Tuple::local_*` itself). An IPv4-mapped IPv6
/// address is keyed as IPv4, so a dual-stack app socket meets the agent's IPv4 one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Cookie of the socket's network namespace.
    pub netns_cookie: u64,
    /// Its 4-tuple, from its own side.
    pub tuple: Tuple,
}

impl SockKey {
    /// The key of this socket's peer (same netns, ends swapped).
    pub fn peer(&self) -> SockKey {
        SockKey {
            netns_cookie: self.netns_cookie,
            tuple: Tuple {
                remote_addr: self.tuple.local_addr,
                local_addr: self.tuple.remote_addr,
                remote_port: self.tuple.local_port,
                local_port: self.tuple.remote_port,
                family: self.tuple.family,
            },
        }
    }
}

/// Value of [`maps::LOCAL_FLOWS`], for one socket. Each field has one writer, which
/// holds that socket's lock: `redirected` the peer's `sk_msg` program, `consumed` the
/// receive hook, `tcp` the socket's own `sk_msg` program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalFlow {
    /// Bytes the peer's messages put into this socket's receive queue.
    pub redirected: u64,
    /// Bytes this socket read from that queue.
    pub consumed: u64,
    /// Non-zero once one of this socket's own messages went by TCP: every later one
    /// does too, so its peer never reads them out of order.
    pub tcp: u64,
}

/// Capacity of [`maps::SOCK_THREADS`] and [`maps::APP_SOCKETS`] (LRU: sockets closed
/// long ago age out).
pub const PROPAGATION_MAX_ENTRIES: u32 = 65_536;

/// [`SockThread::kind`]: an app's accepted socket (the agent's inbound leg writes the
/// requests to it); `tcp_recvmsg` records its reader.
pub const SOCK_INBOUND: u32 = 1;
/// [`SockThread::kind`]: an app's steered outbound socket; `tcp_sendmsg` records its
/// writer.
pub const SOCK_OUTBOUND: u32 = 2;

/// Value of [`maps::SOCK_THREADS`]: the thread that last read ([`SOCK_INBOUND`]) or
/// wrote ([`SOCK_OUTBOUND`]) on an app socket, and when; for an inbound socket also
/// when the app last wrote on it (its response).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockThread {
    /// [`SOCK_INBOUND`] or [`SOCK_OUTBOUND`].
    pub kind: u32,
    /// Thread id (kernel pid, in the initial pid namespace); 0 until first used.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the read or write returned.
    pub ns: u64,
    /// Inbound socket: `bpf_ktime_get_ns()` of the app's last write on it (0: none).
    pub write_ns: u64,
}

/// Capacity of [`maps::SPLICE_SOCKS`] and [`maps::SPLICE_PEERS`] (two per spliced
/// connection); beyond it, connections are relayed in userspace.
pub const SPLICE_MAX_ENTRIES: u32 = 65_536;

/// Value of [`maps::SPLICE_PEERS`]: where a spliced socket's bytes go, and how many
/// it may have sent there in all. Written by the agent only (it replaces the entry to
/// raise the limit as the peer takes bytes); the program only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplicePeer {
    /// Socket cookie of the socket this one's bytes are redirected to.
    pub peer: u64,
    /// The program redirects a segment only while [`SpliceStats::bytes`] stays within
    /// this; beyond, it pauses the direction (the peer's backlog is full).
    pub limit: u64,
}

/// Value of [`maps::SPLICE_STATS`]: what the program did with a spliced socket's bytes.
/// Written in place by the program only (the agent inserts it zeroed and reads it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes redirected to the peer.
    pub bytes: u64,
    /// Non-zero once the program stopped redirecting (the limit was reached, or the
    /// peer left the map): from then on every segment stays in this socket's own
    /// queue, in order, charged to its receive buffer (TCP backpressure), for the agent
    /// to relay in userspace.
    pub paused: u64,
}

/// An original destination as the application asked for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// IPv4 in the first 4 bytes, or IPv6, network byte order.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u16,
    /// Reserved, zero.
    pub _pad: u32,
    /// Cookie of the app's socket that connected (the agent's peer).
    pub socket_cookie: u64,
}

/// Key of [`maps::ORIG_BY_PEER`]: the client socket as the agent sees it after accept.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDstKey {
    /// Cookie of the pod's network namespace (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
    /// The client's local port (the agent's peer port), host byte order.
    ///
    /// The family is deliberately not part of the key: a v6 socket connecting to a
    /// v4-mapped address reaches the agent's v4 listener, and ports are unique per
    /// netns and peer address for the connections the agent accepts.
    pub port: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Key of [`maps::INBOUND_LISTENERS`]: one pod address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InboundKey {
    /// IPv4 in the first 4 bytes, or IPv6, network byte order.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
}

/// A TCP 4-tuple as `sk_lookup` sees it (remote = connecting side).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Remote (connecting) address: IPv4 in the first 4 bytes, or IPv6; network order.
    pub remote_addr: [u8; 16],
    /// Local (destination) address, same encoding.
    pub local_addr: [u8; 16],
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// Local port, host byte order.
    pub local_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
}

/// Key of [`maps::APP_LISTENERS`]: a TCP port an app in a pod's netns listens on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// Cookie of the pod's network namespace.
    pub netns_cookie: u64,
    /// The listening port, host byte order.
    pub port: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Capacity of [`maps::APP_LISTENERS`]: listening ports of all enrolled pods.
pub const LISTENERS_MAX_ENTRIES: u32 = 65_536;

/// Capacity of [`maps::INBOUND_BYPASS`]: inbound-leg connects in flight per node.
pub const BYPASS_MAX_ENTRIES: u32 = 16_384;

/// Indexes into [`maps::COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect() calls redirected to an outbound listener.
    OutboundSteered = 0,
    /// connect() calls left alone because the pod's listener was not ready.
    OutboundNotReady = 1,
    /// Original destinations moved from cookie to peer key by sock_ops.
    OrigDstRecorded = 2,
    /// sk_lookup assignments to an inbound listener.
    InboundSteered = 3,
    /// sk_lookup assignments that failed (connection went on unsteered).
    InboundAssignFailed = 4,
    /// Original destination not found in sock_ops (cookie evicted or missing).
    OrigDstMissing = 5,
    /// sk_lookup left a connection to the pod's kernel because no app listens on its
    /// port (the caller is refused by the pod itself, as without the agent).
    InboundNoListener = 6,
    /// In-pod messages put straight into the peer's receive queue.
    LocalRedirected = 7,
    /// In-pod senders switched to TCP for good (peer missing, window full, or the
    /// redirect failed).
    LocalToTcp = 8,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 9] = [
        Counter::OutboundSteered,
        Counter::OutboundNotReady,
        Counter::OrigDstRecorded,
        Counter::InboundSteered,
        Counter::InboundAssignFailed,
        Counter::OrigDstMissing,
        Counter::InboundNoListener,
        Counter::LocalRedirected,
        Counter::LocalToTcp,
    ];

    /// Metric-friendly name.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::OutboundSteered => "outbound_steered",
            Counter::OutboundNotReady => "outbound_not_ready",
            Counter::OrigDstRecorded => "orig_dst_recorded",
            Counter::InboundSteered => "inbound_steered",
            Counter::InboundAssignFailed => "inbound_assign_failed",
            Counter::OrigDstMissing => "orig_dst_missing",
            Counter::InboundNoListener => "inbound_no_listener",
            Counter::LocalRedirected => "local_redirected",
            Counter::LocalToTcp => "local_to_tcp",
        }
    }
}

/// Number of [`Counter`] slots.
pub const COUNTERS_LEN: u32 = 9;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all types are repr(C), Copy, and contain only integers laid out
    // without implicit padding (explicit `_pad` fields), so any bit pattern is valid.
    unsafe impl aya::Pod for super::PodSteer {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::OrigDstKey {}
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::InboundKey {}
    unsafe impl aya::Pod for super::Tuple {}
    unsafe impl aya::Pod for super::SockThread {}
    unsafe impl aya::Pod for super::SplicePeer {}
    unsafe impl aya::Pod for super::SpliceStats {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::LocalFlow {}
}
