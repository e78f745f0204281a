//! The eBPF decision log (`--ebpf-log`, or a `--log` directive naming [`LOG_TARGET`]).
//!
//! The programs (`agent-ebpf`) call aya-log-ebpf's `debug!` at each steering decision.
//! Each call first reads the global `AYA_LOG_LEVEL` from `.rodata`, which the agent
//! sets at load time: [`level`] is 0 unless the log is on. aya freezes `.rodata`
//! maps, so the verifier knows the value and, with logging off, never walks the
//! logging code and removes it: the programs that run are the ones without logging
//! plus one load per call site (measured in docs/BENCH.md, "eBPF decision log").
//!
//! With logging on, each decision is one record in the `AYA_LOGS` ring buffer
//! (128 KiB). A thread of its own drains it and hands the records to tracing under
//! [`LOG_TARGET`], at debug. When that thread cannot keep up, the programs find the
//! ring buffer full and drop the record (`bpf_ringbuf_reserve` fails): the data path
//! never waits for the log, and the proxy's tasks never wait for this thread.

use std::os::fd::AsRawFd as _;

use aya::Ebpf;

use super::DatapathError;

/// The tracing target of the programs' log records.
pub const LOG_TARGET: &str = "hoptrace::ebpf";

/// aya-log-ebpf's ring buffer map (`aya_log_ebpf::macro_support::AYA_LOGS`).
pub(super) const RING_BUFFER: &str = "AYA_LOGS";

/// The value of the programs' `AYA_LOG_LEVEL` global: every statement is `debug!`.
pub(super) fn level(on: bool) -> u8 {
    if on {
        aya_log::Level::Debug.into()
    } else {
        0
    }
}

/// The system page size: the smallest ring buffer the kernel accepts.
pub(super) fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
}

/// Takes the ring buffer from `ebpf` and starts the thread that forwards its records.
pub(super) fn start(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let mut logger = aya_log::EbpfLogger::init_with_logger(ebpf, Forward)
        .map_err(|e| DatapathError::Log(e.to_string()))?;
    std::thread::Builder::new()
        .name("hoptrace-ebpf-log".into())
        .spawn(move || loop {
            let mut pfd = libc::pollfd {
                fd: logger.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on a descriptor the logger keeps open.
            if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!(target: LOG_TARGET, "eBPF log stopped: poll: {err}");
                return;
            }
            // aya-log panics on a record it cannot parse: stop the log, not the agent.
            let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush()));
            if flushed.is_err() {
                tracing::warn!(target: LOG_TARGET, "eBPF log stopped: unreadable record");
                return;
            }
        })
        .map_err(|e| DatapathError::Log(format!("starting its thread: {e}")))?;
    Ok(())
}

/// Hands aya-log's records to tracing (the agent's only log).
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: LOG_TARGET, "{msg}"),
            log::Level::Warn => tracing::warn!(target: LOG_TARGET, "{msg}"),
            log::Level::Info => tracing::info!(target: LOG_TARGET, "{msg}"),
            log::Level::Debug => tracing::debug!(target: LOG_TARGET, "{msg}"),
            log::Level::Trace => tracing::trace!(target: LOG_TARGET, "{msg}"),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_is_level_zero() {
        assert_eq!(level(false), 0);
        assert_eq!(level(true), 4, "aya-log's Debug");
        assert!(page_size() >= 4096 && page_size().is_power_of_two());
    }
}
