//! `sockops`: when a steered client connection is established, move its original
//! destination from the socket-cookie key (known at connect time) to a key the
//! agent can compute after `accept()`: (netns cookie, client port).

use agent_common::{Counter, OrigDstKey};
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::maps::{count, ORIG_BY_COOKIE, ORIG_BY_PEER};

#[sock_ops]
pub fn hoptrace_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        on_established(&ctx);
    }
    1
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
    } else {
        count(Counter::OrigDstMissing);
    }
}
