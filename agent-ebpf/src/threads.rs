//! Raw tracepoints `sock_send_length` and `sock_recv_length` (every socket send and
//! receive, in the calling thread, after the call): for the app sockets of pods that
//! propagate context (`SOCK_THREADS`, filled by connect4/6 and sock_ops), note which
//! thread last wrote an outbound socket and which last read an inbound one, and when
//! (and when the app last wrote on an inbound one: its response).
//! Facts only: the agent decides which inbound request an outbound one belongs to
//! (docs/TRACING.md, "Context propagation by the agent").
//!
//! The socket is known by its cookie, read from `struct sock_common` at the offset the
//! agent found in the kernel's BTF ([`SKC_COOKIE_OFFSET`]; 0: unknown, do nothing).
//! connect4/6 and sock_ops asked for the cookie of every socket recorded here, so it
//! is set; other sockets have 0 or a cookie that is not in the map. The programs are
//! attached only while a pod propagates.

use agent_common::{SOCK_INBOUND, SOCK_OUTBOUND};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::maps::SOCK_THREADS;

/// Offset of `skc_cookie` in `struct sock` (set by the agent before loading).
#[unsafe(no_mangle)]
static SKC_COOKIE_OFFSET: u32 = 0;

/// [`SKC_COOKIE_OFFSET`] (0: unknown).
#[inline(always)]
pub fn skc_cookie_offset() -> u32 {
    // SAFETY: a read-only global of this object.
    unsafe { core::ptr::read_volatile(&SKC_COOKIE_OFFSET) }
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn hoptrace_sock_send(ctx: RawTracePointContext) -> i32 {
    note(&ctx, SOCK_OUTBOUND);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn hoptrace_sock_recv(ctx: RawTracePointContext) -> i32 {
    note(&ctx, SOCK_INBOUND);
    0
}

/// `TP_PROTO(struct sock *sk, int ret, int flags)`: records the current thread on
/// `sk`'s entry when the call moved bytes and `sk` is an app socket of `kind`.
#[inline(always)]
fn note(ctx: &RawTracePointContext, kind: u32) {
    let ret: u64 = ctx.arg(1);
    if ret as i32 <= 0 {
        return;
    }
    let offset = skc_cookie_offset();
    if offset == 0 {
        return;
    }
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read is skipped.
    let Ok(cookie) = (unsafe { bpf_probe_read_kernel((sk + u64::from(offset)) as *const u64) })
    else {
        return;
    };
    if cookie == 0 {
        return;
    }
    let Some(entry) = SOCK_THREADS.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: a map value of this program's map; a concurrent writer can only store
    // another thread's id, which is as good a fact as this one.
    unsafe {
        if (*entry).kind == kind {
            (*entry).tid = bpf_get_current_pid_tgid() as u32;
            (*entry).ns = bpf_ktime_get_ns();
        } else if kind == SOCK_OUTBOUND {
            // A write on an inbound socket: the app answers.
            (*entry).write_ns = bpf_ktime_get_ns();
        }
    }
}
