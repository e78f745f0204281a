//! hoptrace eBPF programs. One file per program type; maps live here.
//!
//! The programs only steer and record: every decision that userspace can make
//! (which pods, which ports, readiness) is made there and expressed as map entries.
#![no_std]
#![no_main]

mod connect;
mod local;
mod log;
mod maps;
mod sk_lookup;
mod sock_ops;
mod splice;
mod threads;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists for the linker.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
