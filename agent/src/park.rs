//! Heap collection when a runtime thread parks: the agent's memory after a load peak
//! goes back to the OS (mimalloc, see `main.rs`), without a collection on every park.

/// A worker that slept at least this long (ms) before its last wake-up is not serving
/// a busy node: its next park may collect its heap fully.
const IDLE_SLEEP_MS: u64 = 100;
/// A worker collects at most this often (ms).
const COLLECT_EVERY_MS: u64 = 1000;
/// A busy worker's collection is forced at least this often (ms).
const FORCE_EVERY_MS: u64 = 5000;

/// When this thread last parked and collected (coarse ms), and whether its last sleep
/// was long.
#[derive(Clone, Copy)]
struct ParkState {
    parked_at: u64,
    slept_long: bool,
    collected: Option<u64>,
    forced: u64,
}

thread_local! {
    static PARK: std::cell::Cell<ParkState> = const {
        std::cell::Cell::new(ParkState { parked_at: 0, slept_long: false, collected: None, forced: 0 })
    };
}

/// Milliseconds of the coarse monotonic clock: a few instructions, where `Instant`
/// reads the TSC; the park hooks run several times per request on a busy worker.
fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Gives memory freed on this thread back to the OS when a runtime worker parks, at
/// most once a second: a forced mimalloc collection (every freed page back at once)
/// after a long sleep (the node is quiet) and every 5 s, else a normal one (freed
/// pages go back after mimalloc's purge delay). mimalloc returns a freed block to the heap of the thread that
/// allocated it; with tokio's work stealing a connection's memory is often freed on
/// another worker, and waits there until its owner thread collects. Without
/// collecting, part of a load peak stays resident (tests/tests/memory.rs). A forced
/// collection takes 0.2 ms on average and up to 9 ms (measured under the bench's
/// load): forced at every park, once a second, it was a source of the p99 at moderate
/// rates, where workers park between requests.
pub fn on_park() {
    let mut st = PARK.with(std::cell::Cell::get);
    let now = coarse_ms();
    st.parked_at = now;
    if st
        .collected
        .is_none_or(|t| now.saturating_sub(t) >= COLLECT_EVERY_MS)
    {
        st.collected = Some(now);
        let force = st.slept_long || now.saturating_sub(st.forced) >= FORCE_EVERY_MS;
        if force {
            st.forced = now;
        }
        collect_heap(force);
        st.slept_long = false;
    }
    PARK.with(|p| p.set(st));
}

/// Notes whether the sleep that just ended was long.
pub fn on_unpark() {
    PARK.with(|p| {
        let mut st = p.get();
        st.slept_long = coarse_ms().saturating_sub(st.parked_at) >= IDLE_SLEEP_MS;
        p.set(st);
    });
}

/// Turns transparent huge pages off for the agent's process (`PR_SET_THP_DISABLE`,
/// inherited by its threads). mimalloc advises them for its arenas (`MADV_HUGEPAGE`),
/// and a 2 MiB page counts whole in RSS however little of it is in use, and stays
/// until all of it is free: after load the agent's RSS was 30–36 MB with them and
/// 19–22 MB without, for about 7% more agent CPU per request at saturation without them (docs/BENCH.md,
/// sixth session). Skipped with `--huge-pages`. Call first thing, before the heap
/// grows.
pub fn no_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and changes only this
    // process's memory policy.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Collects this thread's heap; `force` also returns every freed page to the OS at
/// once (else mimalloc's purge delay applies).
pub fn collect_heap(force: bool) {
    // SAFETY: mi_collect has no preconditions; it only frees unused pages.
    unsafe { libmimalloc_sys::mi_collect(force) };
}
