//! `sk_skb/stream_verdict` on `SPLICE_SOCKS`: the bytes of an opaque TCP connection
//! the agent spliced go from one of its sockets straight out of the other, without
//! waking the agent (docs/ARCHITECTURE.md, "Opaque TCP in the kernel").
//!
//! Each received segment of a spliced socket is redirected to the egress of its peer
//! (`SPLICE_PEERS`) and counted (`SPLICE_STATS`). The agent reads the counts for its
//! metrics, its idle timeout and its half-close (it passes a FIN on only once the peer
//! socket has taken every byte counted here).
//!
//! Backpressure: a redirected segment waits in the peer's queue until the peer socket
//! can send it, and nothing there is charged to either socket. So the program redirects
//! only up to the limit the agent sets (the bytes the peer has taken plus a window).
//! Past it, or when the peer has left the map, it **pauses** the direction for good:
//! this and every later segment stays in the socket's own queue (`SK_PASS`), in order
//! and charged to its receive buffer, so TCP's window closes; the agent relays the
//! connection in userspace from there. The empty segment that carries a FIN is dropped
//! (`SK_DROP`): TCP has noted the FIN, and the agent passes it on.

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::bpf_get_socket_cookie,
    macros::stream_verdict,
    programs::SkBuffContext,
};

use crate::maps::{SPLICE_PEERS, SPLICE_SOCKS, SPLICE_STATS};

#[stream_verdict]
pub fn hoptrace_splice(ctx: SkBuffContext) -> u32 {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(stats) = SPLICE_STATS.get_ptr_mut(&cookie) else {
        return SK_PASS;
    };
    // SAFETY: a map value, valid for this run; one writer per entry (the verdict runs
    // under the receiving socket's lock), the agent only reads it.
    let stats = unsafe { &mut *stats };
    let len = u64::from(ctx.len());
    if len == 0 {
        // Redirected, the peer's send of 0 bytes would fail and break it with EPIPE.
        return SK_DROP;
    }
    if stats.paused != 0 {
        return SK_PASS;
    }
    // SAFETY: as above; the agent replaces this entry, never writes it in place.
    let Some(peer) = (unsafe { SPLICE_PEERS.get(&cookie) }) else {
        stats.paused = 1;
        return SK_PASS;
    };
    if stats.bytes + len > peer.limit {
        stats.paused = 1;
        return SK_PASS;
    }
    let verdict = SPLICE_SOCKS.redirect_skb(&ctx, peer.peer, 0);
    if verdict != i64::from(SK_PASS) {
        stats.paused = 1;
        return SK_PASS;
    }
    stats.bytes += len;
    SK_PASS
}
