//! `sk_lookup`, attached to each enrolled pod's netns: hand new TCP connections for
//! the pod's addresses to the agent's inbound listener in that netns.

use agent_common::{Counter, InboundKey, FAMILY_V4, FAMILY_V6, INBOUND_PORT, OUTBOUND_PORT};
use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};

use crate::maps::{count, INBOUND_LISTENERS};

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
    let local_port = field!(ctx, local_port);
    if local_port == u32::from(INBOUND_PORT) || local_port == u32::from(OUTBOUND_PORT) {
        return;
    }
    let mut key = InboundKey::default();
    match field!(ctx, family) {
        AF_INET => {
            let remote = field!(ctx, remote_ip4).to_ne_bytes();
            // The agent's own inbound-leg connections come from 127.0.0.6 (and any
            // loopback source is local to the pod): let them reach the app.
            if remote[0] == 127 {
                return;
            }
            key.family = u32::from(FAMILY_V4);
            key.addr[..4].copy_from_slice(&field!(ctx, local_ip4).to_ne_bytes());
        }
        AF_INET6 => {
            let r = [
                field!(ctx, remote_ip6[0]),
                field!(ctx, remote_ip6[1]),
                field!(ctx, remote_ip6[2]),
                field!(ctx, remote_ip6[3]),
            ];
            if r[0] == 0 && r[1] == 0 && r[2].to_ne_bytes() == [0, 0, 0xff, 0xff] {
                return; // v4-mapped: handled by the AF_INET lookup
            }
            let w = [
                field!(ctx, local_ip6[0]),
                field!(ctx, local_ip6[1]),
                field!(ctx, local_ip6[2]),
                field!(ctx, local_ip6[3]),
            ];
            // The agent's v6 inbound-leg connections are made from the pod's own
            // address (see agent::socket::inbound_upstream_source): let them through.
            // A v6 loopback source cannot be used: the kernel's RST towards ::1 from a
            // global address is not routed, so a closed app port would hang.
            if r == w {
                return;
            }
            key.family = u32::from(FAMILY_V6);
            key.addr[0..4].copy_from_slice(&w[0].to_ne_bytes());
            key.addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
            key.addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
            key.addr[12..16].copy_from_slice(&w[3].to_ne_bytes());
        }
        _ => return,
    }
    match INBOUND_LISTENERS.redirect_sk_lookup(ctx, key, 0) {
        Ok(()) => count(Counter::InboundSteered),
        // No listener for this address: not enrolled or not ready yet.
        Err(ENOENT) => {}
        Err(_) => count(Counter::InboundAssignFailed),
    }
}
