//! A clock shared by the test process and the programs it runs in pods.

/// Milliseconds of `CLOCK_MONOTONIC`. The clock is system-wide (the lab makes
/// no time namespaces), so timestamps printed by `labapp connect-loop` inside
/// a pod compare directly with ones taken by the test.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists
    // on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_advances() {
        let a = super::monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(super::monotonic_ms() >= a + 5);
    }
}
