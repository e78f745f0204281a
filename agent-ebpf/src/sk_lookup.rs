//! `sk_lookup`, attached to each enrolled pod's netns: hand new TCP connections for
//! the pod's addresses to the agent's inbound listener in that netns.

use agent_common::{Counter, InboundKey, ListenKey, Tuple, FAMILY_V4, FAMILY_V6};
use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use aya_log_ebpf::debug;

use crate::{
    log::shown,
    maps::{count, APP_LISTENERS, INBOUND_BYPASS, INBOUND_LISTENERS, POD_NETNS},
};

const SK_PASS: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const ENOENT: i32 = -2;

#[sk_lookup]
pub fn hoptrace_sk_lookup(ctx: SkLookupContext) -> u32 {
    steer(&ctx);
    // Always PASS: with a socket assigned the kernel uses it, otherwise the regular
    // lookup runs. Never DROP: the agent fails open.
    SK_PASS
}

/// Reads one context field with a load at its fixed offset. The verifier rejects
/// context loads through a modified pointer, which the optimiser would otherwise
/// produce when it merges the v4 and v6 paths.
macro_rules! field {
    ($ctx:expr, $($f:tt)+) => {
        // SAFETY: `$ctx.lookup` is the valid bpf_sk_lookup the kernel passed in.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx.lookup).$($f)+)) }
    };
}

fn steer(ctx: &SkLookupContext) {
    if field!(ctx, protocol) != IPPROTO_TCP {
        return;
    }
    // The agent's own listener ports need no check: they are not in APP_LISTENERS
    // (the agent is not in the pod's cgroup), so they are never steered.
    let local_port = field!(ctx, local_port);
    let mut key = InboundKey::default();
    let mut tuple = Tuple {
        remote_port: u16::from_be(field!(ctx, remote_port)),
        local_port: local_port as u16,
        ..Tuple::default()
    };
    match field!(ctx, family) {
        AF_INET => {
            let remote = field!(ctx, remote_ip4).to_ne_bytes();
            let local = field!(ctx, local_ip4).to_ne_bytes();
            key.family = u32::from(FAMILY_V4);
            key.addr[..4].copy_from_slice(&local);
            tuple.family = u32::from(FAMILY_V4);
            tuple.remote_addr[..4].copy_from_slice(&remote);
            tuple.local_addr[..4].copy_from_slice(&local);
        }
        AF_INET6 => {
            let w = [
                field!(ctx, local_ip6[0]),
                field!(ctx, local_ip6[1]),
                field!(ctx, local_ip6[2]),
                field!(ctx, local_ip6[3]),
            ];
            if w[0] == 0 && w[1] == 0 && w[2].to_ne_bytes() == [0, 0, 0xff, 0xff] {
                return; // v4-mapped: not a pod's v6 address
            }
            let r = [
                field!(ctx, remote_ip6[0]),
                field!(ctx, remote_ip6[1]),
                field!(ctx, remote_ip6[2]),
                field!(ctx, remote_ip6[3]),
            ];
            key.family = u32::from(FAMILY_V6);
            tuple.family = u32::from(FAMILY_V6);
            let mut i = 0;
            while i < 4 {
                key.addr[i * 4..i * 4 + 4].copy_from_slice(&w[i].to_ne_bytes());
                tuple.local_addr[i * 4..i * 4 + 4].copy_from_slice(&w[i].to_ne_bytes());
                tuple.remote_addr[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
                i += 1;
            }
        }
        _ => return,
    }
    // The agent's own inbound-leg connection (made from the client's address with
    // IP_TRANSPARENT) looks like the client's: the agent registers its exact 4-tuple
    // before connecting. Steering it would loop.
    // SAFETY: plain-data value.
    if unsafe { INBOUND_BYPASS.get(&tuple) }.is_some() {
        debug!(
            ctx,
            "sk_lookup: bypass (agent's inbound leg) {:i}:{} -> {:i}:{}",
            shown(&tuple.remote_addr, tuple.family),
            tuple.remote_port,
            shown(&tuple.local_addr, tuple.family),
            tuple.local_port
        );
        return;
    }
    // Only ports an app listens on: a connection to a closed port is left to the
    // pod's kernel, which refuses it at once, exactly as without the agent (steered,
    // it would be accepted first and reset after).
    // SAFETY: plain-data value copied out immediately.
    let Some(netns_cookie) = (unsafe { POD_NETNS.get(&key) }).copied() else {
        // Not enrolled (or not ready yet).
        debug!(
            ctx,
            "sk_lookup: not steered: no record for {:i}",
            shown(&key.addr, key.family)
        );
        return;
    };
    let listen = ListenKey {
        netns_cookie,
        port: local_port,
        _pad: 0,
    };
    // SAFETY: as above.
    if unsafe { APP_LISTENERS.get(&listen) }.is_none() {
        count(Counter::InboundNoListener);
        debug!(
            ctx,
            "sk_lookup: not steered: no app listening on {:i}:{}",
            shown(&key.addr, key.family),
            tuple.local_port
        );
        return;
    }
    match INBOUND_LISTENERS.redirect_sk_lookup(ctx, key, 0) {
        Ok(()) => {
            count(Counter::InboundSteered);
            debug!(
                ctx,
                "sk_lookup: steered {:i}:{} -> {:i}:{}",
                shown(&tuple.remote_addr, tuple.family),
                tuple.remote_port,
                shown(&tuple.local_addr, tuple.family),
                tuple.local_port
            );
        }
        // No listener for this address: not enrolled or not ready yet.
        Err(ENOENT) => debug!(
            ctx,
            "sk_lookup: not steered: no inbound listener for {:i}",
            shown(&key.addr, key.family)
        ),
        Err(e) => {
            count(Counter::InboundAssignFailed);
            debug!(ctx, "sk_lookup: not steered: assign failed ({})", e);
        }
    }
}
