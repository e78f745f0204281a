//! `sockops`:
//! - when a steered client connection is established, move its original destination
//!   from the socket-cookie key (known at connect time) to a key the agent can
//!   compute after `accept()`: (netns cookie, client port);
//! - when an app calls `listen()`, record its port in `APP_LISTENERS`, so `sk_lookup`
//!   steers connections to it (and only to ports where something listens).

use agent_common::{Counter, ListenKey, OrigDstKey};
use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_LISTEN_CB},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::debug;

use crate::{
    log::shown,
    maps::{count, APP_LISTENERS, ORIG_BY_COOKIE, ORIG_BY_PEER},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn hoptrace_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
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
