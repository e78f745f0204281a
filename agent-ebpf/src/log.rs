//! Steering decisions logged through aya-log (`--ebpf-log`; docs/ARCHITECTURE.md,
//! "eBPF decision log").
//!
//! Every `debug!` first reads `AYA_LOG_LEVEL`, a global in `.rodata` that the agent
//! sets at load time (0 = off, the default). The kernel freezes that map, so the
//! verifier knows the value: with logging off it never walks the logging branch
//! and removes it (dead-code elimination), leaving one load per call site. With
//! logging on, a full ring buffer (`AYA_LOGS`) drops the record; nothing waits.
//!
//! Arguments are computed inside the macro, after the level check, so the helpers
//! here cost nothing when logging is off.

use agent_common::FAMILY_V4;

/// An address for the log: IPv6 as is, IPv4 as `::ffff:a.b.c.d` (aya-log prints
/// `[u8; 16]` with `{:i}` as an IPv6 address), so one call site serves both families.
#[inline(always)]
pub fn shown(addr: &[u8; 16], family: u32) -> [u8; 16] {
    if family == u32::from(FAMILY_V4) {
        let mut v = [0u8; 16];
        v[10] = 0xff;
        v[11] = 0xff;
        v[12..].copy_from_slice(&addr[..4]);
        v
    } else {
        *addr
    }
}
