//! `sockops`:
//! - when a steered client connection is established, move its original destination
//!   from the socket-cookie key (known at connect time) to a key the agent can
//!   compute after `accept()`: (netns cookie, client port);
//! - when an app calls `listen()`, record its port in `APP_LISTENERS`, so `sk_lookup`
//!   steers connections to it (and only to ports where something listens);
//! - when an app of a pod that propagates context accepts a connection, record the
//!   socket in `SOCK_THREADS` (its reader is noted by `tcp_recvmsg`) and its 4-tuple in
//!   `APP_SOCKETS` (the agent finds the app's end of its inbound-leg connection).

use agent_common::{
    Counter, ListenKey, OrigDstKey, SockThread, Tuple, FAMILY_V4, FAMILY_V6, SOCK_INBOUND,
    STEER_PROPAGATE,
};
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::debug;

use crate::{
    log::shown,
    maps::{
        count, APP_LISTENERS, APP_SOCKETS, ORIG_BY_COOKIE, ORIG_BY_PEER, OUTBOUND_READY,
        SOCK_THREADS,
    },
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn hoptrace_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accepted(&ctx),
        _ => {}
    }
    1
}

/// A listener bound to loopback only is not reachable from other pods: not recorded,
/// so connections to the pod's address on that port are refused by the pod, as they
/// would be without the agent.
fn on_listen(ctx: &SockOpsContext) {
    let loopback = match ctx.family() {
        // local_ip4 is in network byte order: its first byte is the lowest in memory.
        AF_INET => ctx.local_ip4().to_ne_bytes()[0] == 127,
        AF_INET6 => {
            let w = ctx.local_ip6();
            w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3].to_ne_bytes() == [0, 0, 0, 1]
        }
        _ => return,
    };
    if loopback {
        return;
    }
    // SAFETY: helpers valid for sock_ops programs (netns cookie: 5.15+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    let key = ListenKey {
        netns_cookie,
        port: ctx.local_port(),
        _pad: 0,
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // Full map: the port stays unrecorded and its connections go direct (fail open).
    let _ = APP_LISTENERS.insert(&key, &now, 0);
}

fn on_established(ctx: &SockOpsContext) {
    // SAFETY: helpers valid for sock_ops programs (netns cookie: 5.15+).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: plain-data value copied out immediately.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        // Not a steered connection (or its record was evicted): nothing to do.
        return;
    };
    let _ = ORIG_BY_COOKIE.remove(&cookie);
    // SAFETY: as above.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    let key = OrigDstKey {
        netns_cookie,
        port: ctx.local_port(),
        _pad: 0,
    };
    if ORIG_BY_PEER.insert(&key, &orig, 0).is_ok() {
        count(Counter::OrigDstRecorded);
        debug!(
            ctx,
            "sock_ops: record moved: client port {} -> {:i}:{}",
            key.port,
            shown(&orig.addr, u32::from(orig.family)),
            orig.port
        );
    } else {
        count(Counter::OrigDstMissing);
        debug!(
            ctx,
            "sock_ops: record missing: no room for client port {} -> {:i}:{}",
            key.port,
            shown(&orig.addr, u32::from(orig.family)),
            orig.port
        );
    }
}

/// An app accepted a connection: in a pod that propagates context, the socket's reader
/// is noted from now on, and the agent can find it by its 4-tuple.
fn on_accepted(ctx: &SockOpsContext) {
    // SAFETY: helpers valid for sock_ops programs (netns cookie: 5.15+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    // SAFETY: plain-data value copied out immediately.
    let propagate = unsafe { OUTBOUND_READY.get(&netns_cookie) }
        .is_some_and(|steer| steer.flags & STEER_PROPAGATE != 0);
    if !propagate {
        return;
    }
    let mut tuple = Tuple {
        // sock_ops keeps the remote port in network byte order (shifted up on
        // little-endian machines), the local one in host order.
        remote_port: u32::from_be(ctx.remote_port()) as u16,
        local_port: ctx.local_port() as u16,
        ..Tuple::default()
    };
    match ctx.family() {
        AF_INET => {
            tuple.family = u32::from(FAMILY_V4);
            tuple.remote_addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
            tuple.local_addr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        }
        AF_INET6 => {
            let (r, l) = (ctx.remote_ip6(), ctx.local_ip6());
            if r[0] == 0 && r[1] == 0 && r[2].to_ne_bytes() == [0, 0, 0xff, 0xff] {
                // A dual-stack listener accepting IPv4: keyed as IPv4, as the agent
                // sees its own connection.
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
        _ => return,
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let thread = SockThread {
        kind: SOCK_INBOUND,
        ..SockThread::default()
    };
    // Full maps: LRU evicts; a socket missing here is only not linked by thread.
    if SOCK_THREADS.insert(&cookie, &thread, 0).is_ok() {
        let _ = APP_SOCKETS.insert(&tuple, &cookie, 0);
    }
}
