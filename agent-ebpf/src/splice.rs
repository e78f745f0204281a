//! `sk_skb/stream_verdict` on `SPLICE_SOCKS`: the bytes of an opaque TCP connection
//! the agent spliced go from one of its sockets straight out of the other, without
//! waking the agent (docs/ARCHITECTURE.md, "Opaque TCP in the kernel").
//!
//! Each received segment of a spliced socket is redirected to the egress of its peer
//! (`SPLICE_PEERS`), and its length added to the bytes sent that way, which the agent
//! reads for its metrics, its idle timeout and its half-close (it passes a FIN on only
//! once the peer socket has taken every byte counted here). A socket with no peer
//! entry, or whose peer has left the map (closed), keeps its bytes in its own receive
//! queue (`SK_PASS`): the agent sees them there and ends the connection. The empty
//! segment that carries a FIN is dropped (`SK_DROP`): the agent passes the FIN on.

use agent_common::SplicePeer;
use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::bpf_get_socket_cookie,
    macros::stream_verdict,
    programs::SkBuffContext,
};

use crate::maps::{SPLICE_PEERS, SPLICE_SOCKS};

#[stream_verdict]
pub fn hoptrace_splice(ctx: SkBuffContext) -> u32 {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(entry) = SPLICE_PEERS.get_ptr_mut(&cookie) else {
        return SK_PASS;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let peer: &mut SplicePeer = unsafe { &mut *entry };
    let len = u64::from(ctx.len());
    if len == 0 {
        // The FIN's own segment, empty: TCP has taken note of the FIN already (the
        // agent passes it on). Redirected, the peer's send of 0 bytes would fail and
        // break that socket with EPIPE.
        return SK_DROP;
    }
    let verdict = SPLICE_SOCKS.redirect_skb(&ctx, peer.peer, 0);
    if verdict != i64::from(SK_PASS) {
        // The peer is gone: leave the bytes where the agent will see them.
        return SK_PASS;
    }
    // One writer per entry: the verdict runs under the receiving socket's lock.
    peer.bytes += len;
    verdict as u32
}
