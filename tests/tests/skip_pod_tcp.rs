//! In-pod connections without TCP (`--skip-pod-tcp`, docs/ARCHITECTURE.md, "In-pod
//! connections without TCP"): what the app and the agent send each other inside a pod
//! goes straight into the peer socket's queue (`hoptrace_local_msg`). Checked from the
//! apps' side: byte for byte, cross-node and through a same-node hop in one pass; a
//! reader that stops holds the writer back and the stream stays byte-exact (the
//! redirected queue is bounded, then TCP's window takes over); a `kill -9` of the
//! agent ends its connections and new ones go direct. The HTTP edge cases with their
//! spans run the same way in `http_edge.rs`.
//!
//! The echo clients here read with blocking calls, so they stay within what such an
//! app can do on this path: no half-close while a read waits, no more than the
//! window in flight (docs/ARCHITECTURE.md, "In-pod connections without TCP": the
//! kernel can return `EAGAIN` to a blocked read woken without data).

mod common;

use common::*;
use hoptrace_tests::{assert_eventually, labapp, require_root, Agent, Lab};
use std::time::{Duration, Instant};

const HOLD_PORT: u16 = 7100;
const SKIP: &[&str] = &["--skip-pod-tcp"];

/// Root, and a kernel with what `--skip-pod-tcp` needs (6.3: the receive tracepoint
/// that bounds the queues). Under `CI=true` an older kernel fails the test.
fn require_root_and_local() -> bool {
    if !require_root() {
        return false;
    }
    if hoptrace::kernel::has(hoptrace::kernel::SOCK_LENGTH_TRACEPOINTS) {
        return true;
    }
    let release = hoptrace::kernel::running_release().unwrap_or_default();
    if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1") {
        panic!(
            "kernel {release} lacks the {}: these tests cannot run here and CI=true is set",
            hoptrace::kernel::SOCK_LENGTH_TRACEPOINTS
        );
    }
    eprintln!("skipping: kernel {release} lacks what --skip-pod-tcp needs");
    false
}

/// The agent of `node` with `--skip-pod-tcp`, ready.
fn skipping_agent(lab: &Lab, node: &str) -> Agent {
    let file = lab.write_workloads(node).expect("write workload file");
    let mut agent = Agent::start_with_args(lab, node, &file, SKIP).expect("start the agent");
    agent.wait_ready(READY).expect("agent ready");
    // The agent says what the apps' blocking reads will do, probed on this kernel.
    let log = agent.log_tail(200);
    assert!(
        log.contains("--skip-pod-tcp (experimental)") && log.contains("(probed"),
        "{log}"
    );
    agent
}

/// `hoptrace_ebpf_local_{redirected,to_tcp}_total` now.
fn local(agent: &Agent, what: &str) -> f64 {
    agent
        .metrics()
        .expect("metrics")
        .value(&format!("hoptrace_ebpf_local_{what}_total"), &[])
}

#[test]
fn in_pod_messages_are_byte_exact() {
    if !require_root_and_local() {
        return;
    }
    let app = labapp!();
    for cross_node in [true, false] {
        let (lab, client, server) = client_server_lab(cross_node);
        let echo = server.addr(ECHO_PORT);
        let _echo = app.echo_server(&server, echo).expect("echo server");
        let agents: Vec<Agent> = if cross_node {
            vec![
                skipping_agent(&lab, "node-1"),
                skipping_agent(&lab, "node-2"),
            ]
        } else {
            vec![skipping_agent(&lab, "node-1")]
        };
        let what = if cross_node { "cross-node" } else { "one pass" };

        // Four connections at once, 128 KiB each way.
        let r = app
            .echo_client(&client, echo, MIB / 8, 4, false)
            .expect("echo");
        assert_echo(&r, 4, MIB / 8);
        for agent in &agents {
            assert!(
                local(agent, "redirected") >= 10.0,
                "{what}: {}: no in-pod message skipped TCP\n{}",
                agent.node(),
                agent.log_tail(20)
            );
        }
        assert_settled(&agents[0], "outbound", "client", 0.0);
    }
}

#[test]
fn in_pod_queues_are_bounded_when_the_reader_stops() {
    if !require_root_and_local() {
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

    let direct = app
        .flood_client(&client, hold, TOTAL, sample)
        .expect("flood client, direct");
    assert!(direct.ok, "direct flood: {}", direct.stderr);

    let agent1 = skipping_agent(&lab, "node-1");
    let agent2 = skipping_agent(&lab, "node-2");
    // The client half-closes after its last byte and then waits for the server's
    // answer: a blocked read can be woken by the FIN's handshake and get `EAGAIN`
    // (module docs), so it reads as readiness-based I/O does.
    let through = app
        .flood_client_with(&client, hold, TOTAL, sample, &["--retry-eagain"])
        .expect("flood client, through the agents");
    assert!(through.ok, "flood not byte-exact: {}", through.stderr);
    eprintln!(
        "buffered while the server reads nothing: direct {} KiB, in-pod messages {} KiB",
        direct.buffered / 1024,
        through.buffered / 1024
    );
    // The server's agent filled the server's queue up to the window, then went on by
    // TCP; the client's writes waited for the agent's reads as they would for TCP.
    assert!(
        local(&agent2, "to_tcp") >= 1.0,
        "node-2's agent never left the server's queue for TCP"
    );
    assert!(
        through.buffered < TOTAL / 4,
        "the path took {} bytes while the server read nothing (direct: {}): no backpressure",
        through.buffered,
        direct.buffered
    );
    assert!(
        local(&agent1, "redirected") >= 1.0,
        "node-1 redirected nothing"
    );
}

#[test]
fn killing_the_agent_ends_its_connections_and_new_ones_go_direct() {
    if !require_root_and_local() {
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
    let mut agent = skipping_agent(&lab, "node-1");

    let flood = {
        let (app, client) = (app.clone(), client.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = app.flood_client(&client, hold, 256 * MIB as u64, Duration::from_millis(500));
            (r, start.elapsed())
        })
    };
    assert_eventually!(
        local(&agent, "redirected") >= 1.0 && active(&agent, "outbound", "client") >= 1.0,
        COUNTED,
        "the flood's messages did not skip TCP"
    );
    agent.kill9().expect("kill -9 the agent");
    let (report, took) = flood.join().expect("flood thread");
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

    // Back, its in-pod messages skip TCP again.
    agent.restart().expect("restart");
    agent.wait_ready(READY).expect("agent ready");
    let r = app
        .echo_client(&client, echo, MIB / 8, 2, false)
        .expect("echo");
    assert_echo(&r, 2, MIB / 8);
    assert!(
        local(&agent, "redirected") >= 4.0,
        "nothing redirected after the restart"
    );
}
