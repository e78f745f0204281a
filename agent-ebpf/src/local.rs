//! In-pod connections without TCP (docs/ARCHITECTURE.md, "In-pod connections without
//! TCP"). Both ends of a steered connection inside a pod (the app's socket and the
//! agent's, on loopback or from the caller's address) go into `LOCAL_SOCKS` when
//! established (`sock_ops`), and `hoptrace_local_msg` puts each message one end sends
//! straight into the other end's receive queue: no segments, no ACKs, no loopback
//! softirq.
//!
//! Order: a message that is not redirected goes by TCP, and the peer reads its
//! redirected queue before its TCP queue. So a sender that sent one message by TCP
//! sends every later one by TCP too (`LocalFlow::tcp`, never cleared): its peer then
//! reads everything in the order it was sent. A FIN always goes by TCP, after the data.
//!
//! Bound: nothing limits the redirected queue but the agent, so a message goes by TCP
//! (for good) when it would leave more than `LOCAL_WINDOW` bytes unread in the peer
//! (`redirected` counted here, `consumed` by `hoptrace_local_recv` from every read of
//! the socket: once its sender went to TCP the count is no longer looked at). From there TCP's
//! window holds the sender back, as without the agent.
//!
//! Fail-open: a missing record, a missing peer or a failed redirect sends by TCP.

use agent_common::{Counter, LocalFlow, SockKey, Tuple, FAMILY_V4, FAMILY_V6, LOCAL_WINDOW};
use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_F_INGRESS},
    helpers::{bpf_get_netns_cookie, bpf_probe_read_kernel},
    macros::{raw_tracepoint, sk_msg},
    programs::{RawTracePointContext, SkMsgContext},
};

use crate::{
    maps::{count, LOCAL_FLOWS, LOCAL_KEYS, LOCAL_SOCKS},
    threads::skc_cookie_offset,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `MSG_PEEK`: a peek takes nothing from the queue.
const MSG_PEEK: u64 = 2;

/// The addresses and ports a socket program sees, in its context's encodings.
pub struct Ends {
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    /// Network byte order, shifted up by 16 on little-endian machines (as `sock_ops`
    /// and `sk_msg` give it).
    pub remote_port: u32,
    /// Host byte order.
    pub local_port: u32,
}

/// The socket's 4-tuple from its own side (`remote` = its peer). An IPv4-mapped IPv6
/// pair is keyed as IPv4. `None` for other families.
#[inline(always)]
pub fn tuple_of(e: &Ends) -> Option<Tuple> {
    let mut tuple = Tuple {
        remote_port: u32::from_be(e.remote_port) as u16,
        local_port: e.local_port as u16,
        ..Tuple::default()
    };
    match e.family {
        AF_INET => {
            tuple.family = u32::from(FAMILY_V4);
            tuple.remote_addr[..4].copy_from_slice(&e.remote_ip4.to_ne_bytes());
            tuple.local_addr[..4].copy_from_slice(&e.local_ip4.to_ne_bytes());
        }
        AF_INET6 => {
            let (r, l) = (e.remote_ip6, e.local_ip6);
            if r[0] == 0 && r[1] == 0 && r[2].to_ne_bytes() == [0, 0, 0xff, 0xff] {
                tuple.family = u32::from(FAMILY_V4);
                tuple.remote_addr[..4].copy_from_slice(&r[3].to_ne_bytes());
                tuple.local_addr[..4].copy_from_slice(&l[3].to_ne_bytes());
            } else {
                tuple.family = u32::from(FAMILY_V6);
                for i in 0..4 {
                    tuple.remote_addr[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
                    tuple.local_addr[i * 4..i * 4 + 4].copy_from_slice(&l[i].to_ne_bytes());
                }
            }
        }
        _ => return None,
    }
    Some(tuple)
}

/// Records a socket that `sock_ops` is about to put into `LOCAL_SOCKS`: a fresh flow
/// (a closed socket with the same key may have left one) and its cookie's key. Both
/// are written before the socket enters the map, so a peer that finds it there finds
/// them too. `false`: no room, leave the socket out (its connection uses TCP).
#[inline(always)]
pub fn prepare(key: &SockKey, cookie: u64) -> bool {
    LOCAL_FLOWS.insert(key, &LocalFlow::default(), 0).is_ok()
        && LOCAL_KEYS.insert(&cookie, key, 0).is_ok()
}

#[sk_msg]
pub fn hoptrace_local_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the context's fields are readable for the program's run.
    let (ends, size) = unsafe {
        let m = &*ctx.msg;
        (
            Ends {
                family: m.family,
                remote_ip4: m.remote_ip4,
                local_ip4: m.local_ip4,
                remote_ip6: m.remote_ip6,
                local_ip6: m.local_ip6,
                remote_port: m.remote_port,
                local_port: m.local_port,
            },
            u64::from(m.size),
        )
    };
    let Some(tuple) = tuple_of(&ends) else {
        return SK_PASS;
    };
    // SAFETY: the helper takes the program's own context (sk_msg: 5.15+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.msg.cast()) };
    let own = SockKey {
        netns_cookie,
        tuple,
    };
    let Some(flow) = LOCAL_FLOWS.get_ptr_mut(&own) else {
        // No record (evicted): by TCP, now and later (nothing can bring it back).
        return SK_PASS;
    };
    // SAFETY: a map value; `tcp` is written only here, under this socket's lock.
    let flow = unsafe { &mut *flow };
    if flow.tcp != 0 {
        return SK_PASS;
    }
    let mut peer = own.peer();
    let Some(into) = LOCAL_FLOWS.get_ptr_mut(&peer) else {
        return to_tcp(flow);
    };
    // SAFETY: the peer's record; `redirected` is written only here, under this
    // socket's lock, `consumed` only by the peer's reads (a stale value only makes
    // the window look fuller).
    let into = unsafe { &mut *into };
    let unread = into.redirected.saturating_sub(into.consumed);
    if unread + size > LOCAL_WINDOW {
        return to_tcp(flow);
    }
    if LOCAL_SOCKS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS)) != i64::from(SK_PASS) {
        // The peer is not in the map (not yet, or closed): the helper set nothing.
        return to_tcp(flow);
    }
    into.redirected += size;
    count(Counter::LocalRedirected);
    SK_PASS
}

#[inline(always)]
fn to_tcp(flow: &mut LocalFlow) -> u32 {
    flow.tcp = 1;
    count(Counter::LocalToTcp);
    SK_PASS
}

/// Raw tracepoint `sock_recv_length`, `TP_PROTO(struct sock *sk, int ret, int flags)`:
/// after every socket read of the node; counts what a socket of `LOCAL_SOCKS` read.
/// (A BPF trampoline on `sk_msg_recvmsg` would run for those sockets only, but some
/// hosts refuse every tracing program: docs/TRACING.md.)
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn hoptrace_local_recv(ctx: RawTracePointContext) -> i32 {
    let ret: u64 = ctx.arg(1);
    let flags: u64 = ctx.arg(2);
    let read = ret as i32;
    if read <= 0 || flags & MSG_PEEK != 0 {
        return 0;
    }
    let offset = skc_cookie_offset();
    let sk: u64 = ctx.arg(0);
    if offset == 0 || sk == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read is skipped.
    let Ok(cookie) = (unsafe { bpf_probe_read_kernel((sk + u64::from(offset)) as *const u64) })
    else {
        return 0;
    };
    if cookie == 0 {
        return 0;
    }
    // SAFETY: plain-data value copied out.
    let Some(key) = (unsafe { LOCAL_KEYS.get(&cookie) }).copied() else {
        return 0;
    };
    if let Some(flow) = LOCAL_FLOWS.get_ptr_mut(&key) {
        // SAFETY: `consumed` is written only here, by the socket's reader (one read at
        // a time under the socket's lock, or racing reads that only undercount).
        unsafe { (*flow).consumed += read as u64 };
    }
    0
}
