//! Opaque TCP spliced in the kernel (`--opaque-tcp kernel`, experimental;
//! docs/ARCHITECTURE.md, "Opaque TCP in the kernel"): the bytes of a non-HTTP connection go from socket to socket through the
//! `hoptrace_splice` program, never through the agent. Checked from the apps' side:
//! byte for byte with half-close, backpressure kept while the server reads nothing,
//! the idle timeout, a `kill -9` of the agent (the connection ends, new ones go
//! direct), and the userspace relay behind `--opaque-tcp userspace`.

mod common;

use common::*;
use hoptrace_tests::{assert_eventually, labapp, require_root, Agent, Lab};
use std::time::{Duration, Instant};

const HOLD_PORT: u16 = 7100;

/// Root, and a kernel the agent splices on (`hoptrace check`; docs/KERNELS.md), or
/// `HOPTRACE_OPAQUE_TCP=kernel-always` in the environment (which the agents inherit:
/// `cargo xtask vm-test --env` tries an older kernel so). Under `CI=true` an older
/// kernel fails the test rather than skipping it.
fn require_root_and_splice() -> bool {
    if !require_root() {
        return false;
    }
    if hoptrace::kernel::has(hoptrace::kernel::SPLICE_FEATURE)
        || std::env::var("HOPTRACE_OPAQUE_TCP").is_ok_and(|v| v == "kernel-always")
    {
        return true;
    }
    let release = hoptrace::kernel::running_release().unwrap_or_default();
    if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1") {
        panic!(
            "kernel {release} lacks {}: these tests cannot run here and CI=true is set",
            hoptrace::kernel::SPLICE_FEATURE
        );
    }
    eprintln!("skipping: kernel {release} lacks the kernel splice");
    false
}

/// The agent of `node` splicing opaque TCP (`--opaque-tcp kernel`, not the default),
/// with `extra` arguments. `HOPTRACE_OPAQUE_TCP` in the environment, which the agent
/// reads itself, wins (`kernel-always` in `cargo xtask vm-test`).
fn splicing_agent(lab: &Lab, node: &str, extra: &[&str]) -> Agent {
    let mut args: Vec<&str> = extra.to_vec();
    if std::env::var_os("HOPTRACE_OPAQUE_TCP").is_none() {
        args.extend(["--opaque-tcp", "kernel"]);
    }
    let file = lab.write_workloads(node).expect("write workload file");
    let mut agent = Agent::start_with_args(lab, node, &file, &args).expect("start the agent");
    agent.wait_ready(READY).expect("agent ready");
    agent
}

/// `hoptrace_bytes_from_{client,server}_total{direction,pod}` now.
fn bytes(agent: &Agent, from: &str, direction: &str, pod: &str) -> f64 {
    agent.metrics().expect("metrics").value(
        &format!("hoptrace_bytes_from_{from}_total"),
        &[("direction", direction), ("pod", pod)],
    )
}

#[test]
fn opaque_tcp_is_spliced_byte_exact_with_half_close() {
    if !require_root_and_splice() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(true);
    let _echo = app
        .echo_server(&server, server.addr(ECHO_PORT))
        .expect("echo server");
    let agent1 = splicing_agent(&lab, "node-1", &[]);
    let agent2 = splicing_agent(&lab, "node-2", &[]);
    let (f1, f2) = (
        failed(&agent1, "outbound", "client"),
        failed(&agent2, "inbound", "server"),
    );

    // 4 connections × 8 MiB, both ways at once, each ended by the client's FIN: the
    // echo, then the server's FIN, must come back whole.
    let r = app
        .echo_client(&client, server.addr(ECHO_PORT), 8 * MIB, 4, true)
        .expect("echo client");
    assert_echo(&r, 4, 8 * MIB);
    for (agent, dir, pod) in [
        (&agent1, "outbound", "client"),
        (&agent2, "inbound", "server"),
    ] {
        assert_eq!(
            (relayed(agent, "kernel"), relayed(agent, "userspace")),
            (4.0, 0.0),
            "agent for {}: opaque connections (kernel, userspace)",
            agent.node()
        );
        // The byte counts come from the program's per-socket counters.
        let want = (4 * 8 * MIB) as f64;
        assert_eventually!(
            bytes(agent, "client", dir, pod) == want && bytes(agent, "server", dir, pod) == want,
            COUNTED,
            "agent for {}: bytes from client/server {} / {}, want {want} each",
            agent.node(),
            bytes(agent, "client", dir, pod),
            bytes(agent, "server", dir, pod)
        );
    }
    assert_settled(&agent1, "outbound", "client", f1);
    assert_settled(&agent2, "inbound", "server", f2);
}

#[test]
fn spliced_connections_keep_backpressure() {
    if !require_root_and_splice() {
        return;
    }
    const TOTAL: u64 = 192 * MIB as u64;
    let app = labapp!();
    let (lab, client, server) = client_server_lab(true);
    let hold = server.addr(HOLD_PORT);
    let _server = app
        .hold_server(&server, hold, Duration::from_secs(3))
        .expect("hold server");
    let sample = Duration::from_secs(2);

    // What the path holds without the agents: the two apps' socket buffers.
    let direct = app
        .flood_client(&client, hold, TOTAL, sample)
        .expect("flood client, direct");
    assert!(direct.ok, "direct flood: {}", direct.stderr);

    let mut agent1 = splicing_agent(&lab, "node-1", &[]);
    let mut agent2 = splicing_agent(&lab, "node-2", &[]);
    let through = app
        .flood_client(&client, hold, TOTAL, sample)
        .expect("flood client, through the agents");
    assert!(
        through.ok,
        "spliced flood not byte-exact: {}",
        through.stderr
    );
    assert_eq!(relayed(&agent1, "kernel"), 1.0, "node-1 spliced it");
    assert_eq!(relayed(&agent2, "kernel"), 1.0, "node-2 spliced it");
    // The reader fell behind: the program paused, the connection went on in userspace.
    let paused = relayed(&agent1, "kernel_paused") + relayed(&agent2, "kernel_paused");
    assert!(paused >= 1.0, "no agent paused its splice");

    // The same through the userspace relay, for the bound.
    for agent in [&mut agent1, &mut agent2] {
        agent
            .restart_with_args(&["--opaque-tcp", "userspace"])
            .expect("restart");
        agent.wait_ready(READY).expect("agent ready");
    }
    let copied = app
        .flood_client(&client, hold, TOTAL, sample)
        .expect("flood client, userspace relay");
    assert!(
        copied.ok,
        "userspace flood not byte-exact: {}",
        copied.stderr
    );
    eprintln!(
        "buffered while the server reads nothing: direct {} KiB, spliced {} KiB, userspace relay {} KiB",
        direct.buffered / 1024,
        through.buffered / 1024,
        copied.buffered / 1024
    );
    // Bounded: each agent holds at most a window (2 MiB) beyond its two sockets'
    // buffers (tcp_rmem/tcp_wmem maxima: up to tens of MiB on their own), and the
    // writer is stopped long before the stream is through. Without the bound the whole
    // stream went in (96 of 96 MiB in the first version).
    assert!(
        through.buffered < TOTAL / 4,
        "the spliced path took {} bytes while the server read nothing (userspace relay: {}, direct: {}): no backpressure",
        through.buffered,
        copied.buffered,
        direct.buffered
    );
}

#[test]
fn idle_spliced_connections_time_out_and_userspace_relay_remains() {
    if !require_root_and_splice() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(false);
    let echo = server.addr(ECHO_PORT);
    let _echo = app.echo_server(&server, echo).expect("echo server");
    let mut agent = splicing_agent(&lab, "node-1", &["--tcp-idle-timeout", "2s"]);

    let idle = app
        .idle_client(&client, echo, Duration::from_secs(15))
        .expect("idle client");
    assert_ne!(
        idle.how, "open",
        "the idle spliced connection was never closed"
    );
    assert!(
        idle.after >= Duration::from_millis(1500) && idle.after <= Duration::from_millis(5000),
        "closed {:?} after its last byte ({}); the idle timeout is 2 s",
        idle.after,
        idle.how
    );
    assert_eq!(relayed(&agent, "kernel"), 1.0, "spliced");

    // The userspace relay, for comparison and where the kernel cannot splice.
    agent
        .restart_with_args(&["--opaque-tcp", "userspace"])
        .expect("restart");
    agent.wait_ready(READY).expect("agent ready");
    let r = app
        .echo_client(&client, echo, MIB, 2, true)
        .expect("echo client");
    assert_echo(&r, 2, MIB);
    assert_eq!(
        (relayed(&agent, "kernel"), relayed(&agent, "userspace")),
        (0.0, 2.0),
        "opaque connections (kernel, userspace); a same-node hop is one relay"
    );
}

#[test]
fn killing_the_agent_ends_spliced_connections_and_new_ones_go_direct() {
    if !require_root_and_splice() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(false);
    let hold = server.addr(HOLD_PORT);
    let echo = server.addr(ECHO_PORT);
    let _hold = app
        .hold_server(&server, hold, Duration::from_secs(5))
        .expect("hold server");
    let _echo = app.echo_server(&server, echo).expect("echo server");
    let mut agent = splicing_agent(&lab, "node-1", &[]);

    // A spliced connection in full flow (the server reads nothing yet).
    let flood = {
        let (app, client) = (app.clone(), client.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = app.flood_client(&client, hold, 256 * MIB as u64, Duration::from_millis(500));
            (r, start.elapsed())
        })
    };
    assert_eventually!(
        relayed(&agent, "kernel") >= 1.0 && active(&agent, "outbound", "client") >= 1.0,
        COUNTED,
        "the flood connection was not spliced"
    );
    agent.kill9().expect("kill -9 the agent");
    let (report, took) = flood.join().expect("flood thread");
    // The connection ends (the agent's sockets are gone with it); it never hangs.
    assert!(
        report.as_ref().map(|r| !r.ok).unwrap_or(true),
        "256 MiB arrived whole through a killed agent? {report:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "the flood took {took:?} to end"
    );

    // Fail open: with the agent dead, new connections go direct.
    let r = app.echo_client(&client, echo, MIB, 2, true).expect("echo");
    assert_echo(&r, 2, MIB);

    // Back, it splices again.
    agent.restart().expect("restart");
    agent.wait_ready(READY).expect("agent ready");
    let r = app.echo_client(&client, echo, MIB, 2, true).expect("echo");
    assert_echo(&r, 2, MIB);
    assert_eq!(relayed(&agent, "kernel"), 2.0, "spliced after the restart");
}

/// Why the kernel splice is not the default: on 6.18 a connection the program paused
/// (its reader fell `WINDOW` behind) sometimes delivers one segment twice once the
/// agent relays it from the sockets' queues in userspace (docs/ARCHITECTURE.md,
/// "Opaque TCP in the kernel"). Same-node echoes of 2 × 8 MiB, each connection
/// pausing, until one is not byte-exact or `HOPTRACE_PAUSE_ROUNDS` (default 200) pass.
/// Not run by `cargo xtask test` (on this project's 6.18 it failed in three runs of
/// four, within 100 rounds); run it to try a kernel:
/// `cargo test -p hoptrace-tests --test splice -- --ignored --nocapture`.
#[test]
#[ignore = "a kernel check that fails on 6.18 most runs: run by hand"]
fn paused_splices_stay_byte_exact_under_repetition() {
    if !require_root_and_splice() {
        return;
    }
    let app = labapp!();
    let rounds: usize = std::env::var("HOPTRACE_PAUSE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (lab, client, server) = client_server_lab(false);
    let target = server.addr(ECHO_PORT);
    let _echo = app.echo_server(&server, target).expect("echo server");
    let agent = splicing_agent(&lab, "node-1", &[]);
    for round in 0..rounds {
        let r = app
            .echo_client(&client, target, 8 * MIB, 2, true)
            .expect("echo client");
        assert!(
            r.ok == 2 && r.failed == 0,
            "round {round} ({} connections paused so far): {}",
            relayed(&agent, "kernel_paused"),
            r.stderr
        );
    }
    eprintln!(
        "{rounds} rounds byte-exact; {} connections spliced, {} paused",
        relayed(&agent, "kernel"),
        relayed(&agent, "kernel_paused")
    );
}
