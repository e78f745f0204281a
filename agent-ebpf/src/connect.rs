//! `cgroup/connect4` and `cgroup/connect6`: steer an enrolled pod's outgoing TCP
//! connections to the agent's outbound listener on the pod's loopback, recording
//! the original destination under the socket cookie.

use agent_common::{
    Counter, OrigDst, PodSteer, SockThread, FAMILY_V4, FAMILY_V6, SOCK_OUTBOUND, STEER_PROPAGATE,
    STEER_V4, STEER_V6,
};
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use aya_log_ebpf::debug;

use crate::{
    log::shown,
    maps::{count, ORIG_BY_COOKIE, OUTBOUND_READY, SOCK_THREADS},
};

/// Allow the syscall (cgroup sock_addr programs must return 1 to let it proceed).
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn hoptrace_connect4(ctx: SockAddrContext) -> i32 {
    steer_v4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn hoptrace_connect6(ctx: SockAddrContext) -> i32 {
    steer_v6(&ctx);
    ALLOW
}

/// Looks up the steering entry for the socket's netns; `None` means leave it alone.
#[inline(always)]
fn ready_port(ctx: &SockAddrContext, flag: u16) -> Option<PodSteer> {
    // SAFETY: helper valid for cgroup sock_addr programs (5.7+).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: plain-data value; a concurrent delete at worst yields a stale read.
    match unsafe { OUTBOUND_READY.get(&netns) } {
        Some(steer) if steer.flags & flag != 0 => Some(*steer),
        _ => {
            count(Counter::OutboundNotReady);
            debug!(
                ctx,
                "connect: not steered: netns {} not ready (family flag {})", netns, flag
            );
            None
        }
    }
}

/// Records `orig` for this socket (and, for a pod that propagates context, the socket
/// as one whose writer `tcp_sendmsg` notes). Steering without a record would leave the
/// agent unable to forward, so a failed insert means "do not steer".
#[inline(always)]
fn record(ctx: &SockAddrContext, orig: &mut OrigDst, steer: &PodSteer) -> bool {
    // SAFETY: helper valid for cgroup sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    orig.socket_cookie = cookie;
    if steer.flags & STEER_PROPAGATE != 0 {
        let thread = SockThread {
            kind: SOCK_OUTBOUND,
            ..SockThread::default()
        };
        // Full map: LRU evicts; a socket missing here is only not linked by thread.
        let _ = SOCK_THREADS.insert(&cookie, &thread, 0);
    }
    let ok = ORIG_BY_COOKIE.insert(&cookie, &*orig, 0).is_ok();
    if !ok {
        debug!(
            ctx,
            "connect: not steered: no room to record {:i} port {}",
            shown(&orig.addr, u32::from(orig.family)),
            orig.port
        );
    }
    ok
}

fn steer_v4(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return;
    }
    let ip = sa.user_ip4.to_ne_bytes(); // network byte order in memory
                                        // Loopback stays inside the pod; 0.0.0.0 means "this host" (also local).
    if ip[0] == 127 || ip == [0, 0, 0, 0] {
        return;
    }
    let Some(steer) = ready_port(ctx, STEER_V4) else {
        return;
    };
    let port = steer.outbound_port;
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip);
    let mut orig = OrigDst {
        addr,
        port: u16::from_be(sa.user_port as u16),
        family: FAMILY_V4,
        _pad: 0,
        socket_cookie: 0,
    };
    if !record(ctx, &mut orig, &steer) {
        return;
    }
    sa.user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
    sa.user_port = u32::from(port.to_be());
    count(Counter::OutboundSteered);
    debug!(
        ctx,
        "connect4: steered {:i}:{} -> 127.0.0.1:{}", ip, orig.port, port
    );
}

fn steer_v6(ctx: &SockAddrContext) {
    // SAFETY: as in steer_v4.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return;
    }
    let w = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let b2 = w[2].to_ne_bytes();
    let b3 = w[3].to_ne_bytes();
    let v4_mapped = w[0] == 0 && w[1] == 0 && b2 == [0, 0, 0xff, 0xff];
    if v4_mapped {
        // A dual-stack socket dialing an IPv4 peer: same rules as connect4, and the
        // connection lands on the agent's v4 listener (::ffff:127.0.0.1).
        if b3[0] == 127 || b3 == [0, 0, 0, 0] {
            return;
        }
        let Some(steer) = ready_port(ctx, STEER_V4) else {
            return;
        };
        let port = steer.outbound_port;
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&b3);
        let mut orig = OrigDst {
            addr,
            port: u16::from_be(sa.user_port as u16),
            family: FAMILY_V4,
            _pad: 0,
            socket_cookie: 0,
        };
        if !record(ctx, &mut orig, &steer) {
            return;
        }
        sa.user_ip6[3] = u32::from_ne_bytes([127, 0, 0, 1]);
        sa.user_port = u32::from(port.to_be());
        count(Counter::OutboundSteered);
        debug!(
            ctx,
            "connect6: steered {:i}:{} -> ::ffff:127.0.0.1:{}", b3, orig.port, port
        );
        return;
    }
    let is_unspecified = w == [0, 0, 0, 0];
    let is_loopback = w[0] == 0 && w[1] == 0 && w[2] == 0 && b3 == [0, 0, 0, 1];
    if is_unspecified || is_loopback {
        return;
    }
    let Some(steer) = ready_port(ctx, STEER_V6) else {
        return;
    };
    let port = steer.outbound_port;
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&w[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&b2);
    addr[12..16].copy_from_slice(&b3);
    let mut orig = OrigDst {
        addr,
        port: u16::from_be(sa.user_port as u16),
        family: FAMILY_V6,
        _pad: 0,
        socket_cookie: 0,
    };
    if !record(ctx, &mut orig, &steer) {
        return;
    }
    sa.user_ip6[0] = 0;
    sa.user_ip6[1] = 0;
    sa.user_ip6[2] = 0;
    sa.user_ip6[3] = u32::from_ne_bytes([0, 0, 0, 1]);
    sa.user_port = u32::from(port.to_be());
    count(Counter::OutboundSteered);
    debug!(
        ctx,
        "connect6: steered [{:i}]:{} -> [::1]:{}", orig.addr, orig.port, port
    );
}
