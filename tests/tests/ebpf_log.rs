//! The eBPF decision log (`--ebpf-log`): with the flag, a steered connection shows
//! up in the agent's log as the programs' own decisions (connect4 steered, sock_ops
//! record moved, sk_lookup steered, and the bypass of the agent's inbound leg) under
//! the target `hoptrace::ebpf`; without it, even at `--log debug`, no such line.
//!
//! Lab: `client` and `server` on node-1, one agent (both legs on one node, so one
//! log holds every decision of the connection).
//!
//! `connect_cost` (ignored; run by hand, docs/BENCH.md "eBPF decision log") times a
//! loop of steered connections and reads the kernel's per-program run time.

mod common;

use common::*;
use hoptrace_tests::{labapp, require_root, Agent, Lab, Pod};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a record may take from the ring buffer to the log file.
const LOGGED: Duration = Duration::from_secs(10);

/// The log written since byte `from`, without colour escapes.
fn log_since(path: &Path, from: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.get(from..).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The lines of `log` logged under the eBPF target (`<level> hoptrace::ebpf: <msg>`).
fn ebpf_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" hoptrace::ebpf: "))
        .collect()
}

fn start_agent(lab: &Lab, args: &[&str]) -> Agent {
    let file = lab.write_workloads("node-1").expect("write workload file");
    // Both legs through the kernel programs: a same-node hop served in one pass would
    // skip sk_lookup's steering decision (the programs' log is what is checked here).
    let mut args = args.to_vec();
    args.push("--same-node-one-pass=false");
    let mut agent = Agent::start_with_args(lab, "node-1", &file, &args).expect("start the agent");
    agent.wait_ready(READY).expect("agent ready");
    agent
}

/// One steered whoami connection, checked end to end.
fn steered_whoami(client: &Pod, server: &Pod, agent: &Agent) {
    let app = labapp!();
    let out0 = accepted(agent, "outbound", "client");
    let peer = app
        .whoami(client, server.addr(WHOAMI_PORT))
        .expect("whoami through the agent");
    assert_eq!(peer.ip(), client.ipv4, "the server sees the client");
    assert_counted(agent, "outbound", "client", out0, 1);
}

#[test]
fn steering_decisions_are_logged_only_when_asked() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(false);
    let _whoami = app
        .whoami_server(&server, server.addr(WHOAMI_PORT))
        .expect("whoami server");
    let (c, s) = (client.ipv4, server.ipv4);

    // With the flag, at the default `--log info`: the flag alone shows the lines.
    let mut agent = start_agent(&lab, &["--ebpf-log", "--log", "info"]);
    steered_whoami(&client, &server, &agent);
    let wanted = [
        format!("connect4: steered {s}:{WHOAMI_PORT} -> 127.0.0.1:15001"),
        "sock_ops: record moved: client port ".to_string(),
        format!("sk_lookup: steered ::ffff:{c}:"),
        format!("-> ::ffff:{s}:{WHOAMI_PORT}"),
        format!("sk_lookup: bypass (agent's inbound leg) ::ffff:{c}:"),
    ];
    let start = Instant::now();
    loop {
        let log = log_since(agent.log_path(), 0);
        let lines = ebpf_lines(&log);
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|w| !lines.iter().any(|l| l.contains(w.as_str())))
            .collect();
        if missing.is_empty() {
            assert!(
                lines.iter().all(|l| l.contains(" DEBUG hoptrace::ebpf: ")),
                "decisions are logged at debug:\n{}",
                lines.join("\n")
            );
            break;
        }
        assert!(
            start.elapsed() < LOGGED,
            "with --ebpf-log, no line for {missing:?}; eBPF lines:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop().expect("stop the agent");
    drop(agent);

    // Without it, even at `--log debug` (the tests' default), not one line: the
    // programs were loaded with log level 0.
    let from = std::fs::metadata(lab.tmp_dir().join("agent-node-1.log"))
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let agent = start_agent(&lab, &[]);
    steered_whoami(&client, &server, &agent);
    std::thread::sleep(Duration::from_secs(1));
    let log = log_since(agent.log_path(), from);
    assert!(log.contains("=== start"), "reading the second agent's log");
    assert!(!log.contains("eBPF decision log on"), "{log}");
    let lines = ebpf_lines(&log);
    assert!(
        lines.is_empty(),
        "without --ebpf-log the programs logged:\n{}",
        lines.join("\n")
    );
}

/// The agent's programs: (name, run_cnt, run_time_ns) of every `hoptrace_*` program
/// with an id above `after` (loaded by this test's agent), from `bpftool`.
fn prog_stats(after: u64) -> Vec<(String, u64, u64, u64)> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool (apt-get install bpftool)");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    let mut v = Vec::new();
    for p in progs.as_array().into_iter().flatten() {
        let id = p["id"].as_u64().unwrap_or(0);
        let name = p["name"].as_str().unwrap_or("");
        if id > after && name.starts_with("hoptrace_") {
            v.push((
                name.to_owned(),
                p["run_cnt"].as_u64().unwrap_or(0),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["bytes_xlated"].as_u64().unwrap_or(0) / 8,
            ));
        }
    }
    v
}

fn max_prog_id() -> u64 {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool (apt-get install bpftool)");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Turns on the kernel's per-program run-time statistics while the returned fd is
/// open (`BPF_ENABLE_STATS`: nothing to restore afterwards, unlike the sysctl).
fn enable_bpf_stats() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let attr = [0u32; 4]; // enable_stats.type = BPF_STATS_RUN_TIME (0)
                          // SAFETY: bpf(2) reads `size` bytes of attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_ENABLE_STATS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor we own.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// `EBPF_LOG_COST_ARGS="--ebpf-log" HOPTRACE_BIN=… cargo test -p hoptrace-tests --test
/// ebpf_log -- --ignored --nocapture connect_cost`: `EBPF_LOG_COST_N` (default 3000)
/// sequential steered connections (connect, read the answer, close) from `client` to
/// `server` through one agent; prints the wall time per connection and each
/// program's mean run time.
#[test]
#[ignore = "measurement, run by hand (docs/BENCH.md)"]
fn connect_cost() {
    if !require_root() {
        return;
    }
    let n: u64 = std::env::var("EBPF_LOG_COST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let extra = std::env::var("EBPF_LOG_COST_ARGS").unwrap_or_default();
    let mut args: Vec<&str> = extra.split_whitespace().collect();
    args.extend(["--log", "info"]);
    let app = labapp!();
    let (lab, client, server) = client_server_lab(false);
    let target = server.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server, target).expect("whoami server");
    let before = max_prog_id();
    let agent = start_agent(&lab, &args);
    steered_whoami(&client, &server, &agent); // warm-up
    let stats = enable_bpf_stats();
    let base = prog_stats(before);
    let (a, count) = (target.to_string(), n.to_string());
    let t = Instant::now();
    let out = client
        .run(
            app.command(&[
                "connect-loop",
                "--addr",
                &a,
                "--interval-ms",
                "0",
                "--duration-ms",
                "600000",
                "--count",
                &count,
            ]),
            Duration::from_secs(600),
        )
        .expect("connect-loop");
    let wall = t.elapsed();
    let after = prog_stats(before);
    drop(stats);
    let ok = out.stdout.lines().filter(|l| l.contains(" ok ")).count() as u64;
    assert_eq!(ok, n, "every connection answered: {}", out.stderr);
    println!(
        "connect_cost args={extra:?} n={n}: {:.1} µs per connection ({:.0}/s)",
        wall.as_secs_f64() * 1e6 / n as f64,
        n as f64 / wall.as_secs_f64()
    );
    for (name, cnt, ns, insns) in &after {
        let (cnt0, ns0) = base
            .iter()
            .find(|b| &b.0 == name)
            .map(|b| (b.1, b.2))
            .unwrap_or((0, 0));
        let runs = cnt.saturating_sub(cnt0);
        let mean = ns.saturating_sub(ns0) as f64 / runs.max(1) as f64;
        println!("  {name:<20} runs {runs:>6}  mean {mean:>7.1} ns  xlated {insns} insns");
    }
}
