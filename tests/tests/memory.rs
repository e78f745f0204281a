//! Memory under load is given back (issue 8). In its own test binary: it measures the
//! agent's RSS, which other tests' floods running in parallel would disturb.

mod common;

use common::hostile::*;
use common::*;
use hoptrace_tests::{assert_eventually, require_root};
use std::time::Duration;

/// Memory under load is given back: 1,000 concurrent connections echoing 256 KiB
/// each, then 3,000 idle ones; the agent's RSS after they are gone returns close to
/// where it started (docs/SECURITY.md states the bound).
#[test]
fn memory_is_returned_after_load() {
    if !require_root() {
        return;
    }
    let app = hoptrace_tests::labapp!();
    let h = Hostile::new(&["--max-connections-per-pod", "4000"]);
    let echo = h.victim.addr(ECHO_PORT);
    let _echo = app.echo_server(&h.victim, echo).expect("echo server");
    let pid = h.pid();
    // Transparent huge pages are off for the agent (`park::no_huge_pages`): a 2 MiB
    // page would count whole in its RSS, however little of it is used.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
        "the agent runs with transparent huge pages on: {status}"
    );
    // Warm up: the first connections allocate the runtime's own structures.
    let r = app
        .echo_client(&h.attacker, echo, 64 * 1024, 50, false)
        .expect("warm-up");
    assert_echo(&r, 50, 64 * 1024);
    std::thread::sleep(Duration::from_secs(1));
    let base = rss_mib(pid);

    let r = app
        .echo_client(&h.attacker, echo, 256 * 1024, 1000, false)
        .expect("load");
    assert_echo(&r, 1000, 256 * 1024);
    let loaded = rss_mib(pid);
    let victim_http = h.victim.addr(HTTP_PORT).to_string();
    let idle = run(
        &h.attacker,
        &[
            "hold",
            "--addr",
            &victim_http,
            "--count",
            "3000",
            "--seconds",
            "3",
        ],
        Duration::from_secs(120),
    );
    let held = rss_mib(pid);
    assert!(idle["opened"].as_u64().unwrap_or(0) >= 2900, "{idle}");
    assert_eventually!(
        active(&h.agent, "outbound", "attacker") == 0.0,
        Duration::from_secs(10),
        "connections still active"
    );
    // glibc's malloc kept the whole peak (196 MiB after 2,000 such connections, for a
    // 53 MiB start); with mimalloc it comes back within a few seconds.
    // At least a quarter of what the load added is given back (glibc gave back
    // nothing; with mimalloc and the workers' collection at park 37–70 % came back in
    // runs on this machine, the rest stays cached in the allocator's segments).
    let peak = loaded.max(held);
    let bound = peak - (peak - base) / 4.0;
    assert_eventually!(
        rss_mib(pid) <= bound,
        Duration::from_secs(15),
        "RSS not returned: base {base:.1} MiB, now {:.1} MiB (peaks {loaded:.1}/{held:.1}), bound {bound:.1}",
        rss_mib(pid)
    );
    eprintln!(
        "agent RSS MiB: base {base:.1}, after 1000x256KiB echo {loaded:.1}, with 3000 idle {held:.1}, after {:.1}",
        rss_mib(pid)
    );
    // No neighbour check here: this is legitimate load saturating both cores (see
    // docs/SECURITY.md, "CPU"), not an attack the limits are meant to contain.
}
