//! `sockops`:
//! - when a steered client connection is established, move its original destination
//!   from the socket-cookie key (known at connect time) to a key the agent can
//!   compute after `accept()`: (netns cookie, client port);
//! - when an app calls `listen()`, record its port in `APP_LISTENERS`, so `sk_lookup`
//!   steers connections to it (and only to ports where something listens);
//! - when an app of a pod that propagates context accepts a connection, record the
//!   socket in `SOCK_THREADS` (its reader is noted by `tcp_recvmsg`) and its 4-tuple in
//!   `APP_SOCKETS` (the agent finds the app's end of its inbound-leg connection);
//! - in a pod whose in-pod connections skip TCP (`STEER_LOCAL`), put the app's end of
//!   each of them into `LOCAL_SOCKS` (`local.rs`): a steered connect, and an accepted
//!   connection the agent made (`INBOUND_BYPASS`). `hoptrace_sockops_agent`, attached
//!   to the agent's own cgroup, puts the agent's ends there.

use agent_common::{
    Counter, ListenKey, OrigDstKey, SockKey, SockThread, SOCK_INBOUND, STEER_LOCAL, STEER_PROPAGATE,
};
use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::debug;

use crate::{
    local::{prepare, tuple_of, Ends},
    log::shown,
    maps::{
        count, APP_LISTENERS, APP_SOCKETS, INBOUND_BYPASS, LOCAL_SOCKS, ORIG_BY_COOKIE,
        ORIG_BY_PEER, OUTBOUND_READY, SOCK_THREADS,
    },
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn hoptrace_sockops_agent(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: helper valid for sock_ops programs (netns cookie: 5.15+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    // SAFETY: plain-data value copied out immediately.
    let Some(steer) = (unsafe { OUTBOUND_READY.get(&netns_cookie) }).copied() else {
        return 1;
    };
    if steer.flags & STEER_LOCAL == 0 {
        return 1;
    }
    let Some(tuple) = tuple_of(&ends(&ctx)) else {
        return 1;
    };
    let key = SockKey {
        netns_cookie,
        tuple,
    };
    let ours = if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        // Accepted by the pod's outbound listener: the app's steered connection.
        tuple.local_port == steer.outbound_port
    } else {
        // The agent's connect to an app in the pod (the inbound leg, or a one-pass
        // hop): registered in INBOUND_BYPASS as sk_lookup sees it, remote = caller.
        // SAFETY: plain-data value.
        unsafe { INBOUND_BYPASS.get(&key.peer().tuple) }.is_some()
    };
    if ours {
        local_insert(&ctx, key);
    }
    1
}

/// The socket's addresses and ports.
#[inline(always)]
fn ends(ctx: &SockOpsContext) -> Ends {
    Ends {
        family: ctx.family(),
        remote_ip4: ctx.remote_ip4(),
        local_ip4: ctx.local_ip4(),
        remote_ip6: ctx.remote_ip6(),
        local_ip6: ctx.local_ip6(),
        remote_port: ctx.remote_port(),
        local_port: ctx.local_port(),
    }
}

/// Puts an established socket into `LOCAL_SOCKS` (fail-open: without room, or when the
/// insertion fails, its connection uses TCP).
#[inline(always)]
fn local_insert(ctx: &SockOpsContext, mut key: SockKey) {
    // SAFETY: helper valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if prepare(&key, cookie) {
        // SAFETY: the program's own context, valid for its run.
        let _ = LOCAL_SOCKS.update(&mut key, unsafe { &mut *ctx.ops }, u64::from(BPF_ANY));
    }
}

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
    // SAFETY: plain-data value copied out immediately.
    let local = unsafe { OUTBOUND_READY.get(&netns_cookie) }
        .is_some_and(|steer| steer.flags & STEER_LOCAL != 0);
    if local {
        if let Some(tuple) = tuple_of(&ends(ctx)) {
            local_insert(
                ctx,
                SockKey {
                    netns_cookie,
                    tuple,
                },
            );
        }
    }
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
/// is noted from now on, and the agent can find it by its 4-tuple; in a pod whose
/// in-pod connections skip TCP, a connection the agent made goes into `LOCAL_SOCKS`.
fn on_accepted(ctx: &SockOpsContext) {
    // SAFETY: helpers valid for sock_ops programs (netns cookie: 5.15+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    // SAFETY: plain-data value copied out immediately.
    let Some(flags) = (unsafe { OUTBOUND_READY.get(&netns_cookie) }).map(|s| s.flags) else {
        return;
    };
    if flags & (STEER_PROPAGATE | STEER_LOCAL) == 0 {
        return;
    }
    // Remote = the connecting side, as sk_lookup and INBOUND_BYPASS key it.
    let Some(tuple) = tuple_of(&ends(ctx)) else {
        return;
    };
    // SAFETY: plain-data value.
    if flags & STEER_LOCAL != 0 && unsafe { INBOUND_BYPASS.get(&tuple) }.is_some() {
        local_insert(
            ctx,
            SockKey {
                netns_cookie,
                tuple,
            },
        );
    }
    if flags & STEER_PROPAGATE == 0 {
        return;
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
