//! The opaque TCP relay in userspace (`proxy::tcp::copy_half`) makes one `recvfrom`
//! per message it relays, not two.
//!
//! It used to wait for readiness and then call `try_read`, which leaves tokio's
//! readiness set after a short read: the next turn of its loop made a `recvfrom`
//! that returned `EAGAIN` before waiting again, one wasted system call per message
//! (docs/BENCH.md, "The opaque relay read every socket twice per message"). It now
//! calls `read`, which marks the socket drained after a short read. Nothing else
//! shows the difference from outside (the bytes are the same), so this test counts
//! the agents' system calls: `strace -f -c -e trace=recvfrom` on each agent while
//! `labapp load --proto tcp` (the bench's `hoptrace-tcp-userspace` ping-pong) makes
//! [`ROUND_TRIPS`] 64-byte round trips, one at a time, on one connection from
//! `client` (node-1) to an echo server in `server` (node-2). Each agent relays every
//! request and every answer once: 2 messages per round trip. With `try_read` the
//! calls double and half of them fail with `EAGAIN`.
//!
//! Needs `strace` (`cargo xtask setup` installs it); without it the test fails.

mod common;

use common::*;
use hoptrace_tests::bench::loadgen::LoadReport;
use hoptrace_tests::bench::syscalls::{parse_summary, traced_by};
use hoptrace_tests::bench::TCP_MESSAGE;
use hoptrace_tests::{assert_eventually, labapp, require_root, Agent, Lab};
use std::io::ErrorKind;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Round trips of the ping-pong: a second or two under strace.
const ROUND_TRIPS: u64 = 3000;
/// How long strace may take to attach to every thread of an agent.
const ATTACH: Duration = Duration::from_secs(10);
/// Upper bound for the load run (strace slows every system call of the agents).
const LOAD: Duration = Duration::from_secs(60);

#[test]
fn opaque_relay_reads_each_message_once() {
    if !require_root() {
        return;
    }
    require_strace();
    let app = labapp!();
    let (lab, client, server) = client_server_lab(true);
    let _echo = app
        .echo_server(&server, server.addr(ECHO_PORT))
        .expect("echo server");
    let agents = [
        userspace_agent(&lab, "node-1"),
        userspace_agent(&lab, "node-2"),
    ];
    let before = agents.each_ref().map(|a| relayed(a, "userspace"));
    let (out0, in0) = (
        accepted(&agents[0], "outbound", "client"),
        accepted(&agents[1], "inbound", "server"),
    );

    let traces = agents.each_ref().map(Strace::attach);
    let started = Instant::now();
    let (addr, n) = (server.addr(ECHO_PORT).to_string(), ROUND_TRIPS.to_string());
    let args = [
        "load",
        "--addr",
        &addr,
        "--proto",
        "tcp",
        "--conns",
        "1",
        "--requests",
        &n,
        "--duration-ms",
        &LOAD.as_millis().to_string(),
    ];
    let out = client
        .run(app.command(&args), LOAD + Duration::from_secs(10))
        .and_then(|o| o.ensure_success())
        .expect("labapp load");
    let took = started.elapsed();
    let summaries = traces.map(|mut t| t.stop());
    let line = out.stdout.lines().rev().find(|l| l.starts_with('{'));
    let report: LoadReport = serde_json::from_str(line.expect("labapp load printed no report"))
        .unwrap_or_else(|e| panic!("labapp load report: {e}\n{}", out.stdout));
    assert_eq!(
        (report.requests, report.errors),
        (ROUND_TRIPS, 0),
        "{TCP_MESSAGE}-byte round trips through the agents: {report:?}"
    );
    eprintln!("{ROUND_TRIPS} round trips in {took:.2?} under strace");

    // Each agent relays the request and the answer of every round trip once.
    let messages = 2 * ROUND_TRIPS;
    for (agent, s) in agents.iter().zip(&summaries) {
        eprintln!(
            "{}: {} recvfrom, {} errors for {messages} messages",
            agent.node(),
            s.calls,
            s.errors
        );
    }
    for (agent, s) in agents.iter().zip(&summaries) {
        let node = agent.node();
        assert!(
            s.calls >= messages,
            "{node}: {} recvfrom for {messages} relayed messages: was the connection relayed \
             by this agent in userspace?\n{}",
            s.calls,
            s.text
        );
        assert!(
            s.errors * 20 < s.calls,
            "{node}: {} of {} recvfrom failed (EAGAIN): the relay reads a socket again after a \
             short read instead of waiting for it (try_read?)\n{}",
            s.errors,
            s.calls,
            s.text
        );
        // 25% for the detection's peek, the end of stream and the agent's other sockets.
        assert!(
            s.calls * 4 <= messages * 5,
            "{node}: {} recvfrom for {messages} relayed messages (at most {} allowed): more \
             than one read per message\n{}",
            s.calls,
            messages * 5 / 4,
            s.text
        );
    }
    // One connection, and it went through the userspace relay on both nodes.
    assert_counted(&agents[0], "outbound", "client", out0, 1);
    assert_counted(&agents[1], "inbound", "server", in0, 1);
    for (agent, b) in agents.iter().zip(before) {
        assert_eventually!(
            relayed(agent, "userspace") >= b + 1.0,
            COUNTED,
            "{}: hoptrace_opaque_connections_total{{relay=\"userspace\"}} = {}, want {}",
            agent.node(),
            relayed(agent, "userspace"),
            b + 1.0
        );
        assert_eq!(relayed(agent, "kernel"), 0.0, "{}: spliced", agent.node());
    }
    assert_settled(&agents[0], "outbound", "client", 0.0);
    assert_settled(&agents[1], "inbound", "server", 0.0);
}

/// The agent of `node` relaying opaque TCP in userspace: the default, said explicitly
/// so that a `HOPTRACE_OPAQUE_TCP` in the environment cannot change it.
fn userspace_agent(lab: &Lab, node: &str) -> Agent {
    let file = lab.write_workloads(node).expect("write workload file");
    let args = ["--opaque-tcp", "userspace"];
    let mut agent = Agent::start_with_args(lab, node, &file, &args).expect("start the agent");
    agent.wait_ready(READY).expect("agent ready");
    agent
}

/// Fails (never skips) without strace.
fn require_strace() {
    match Command::new("strace").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("strace -V: {}", out.status),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("strace is not installed: run `cargo xtask setup`")
        }
        Err(e) => panic!("running strace: {e}"),
    }
}

/// `strace -f -qq -c -e trace=recvfrom -p <pid>`: counts one process's `recvfrom`
/// calls from attach to [`Strace::stop`]. Interrupted on drop.
struct Strace {
    child: Option<Child>,
}

/// The `recvfrom` line of strace's summary table.
struct Summary {
    calls: u64,
    errors: u64,
    /// The whole table, for failure messages.
    text: String,
}

impl Strace {
    /// Attaches to every thread of `agent` and returns once they are all traced.
    fn attach(agent: &Agent) -> Strace {
        let pid = agent.pid().expect("agent running");
        let child = Command::new("strace")
            .args(["-f", "-qq", "-c", "-e", "trace=recvfrom", "-p"])
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning strace (run `cargo xtask setup`)");
        let tracer = child.id();
        let mut s = Strace { child: Some(child) };
        assert_eventually!(
            s.running() && traced_by(&pid.to_string(), tracer),
            ATTACH,
            "strace {tracer} not attached to every thread of agent {pid} ({}); strace: {}",
            agent.node(),
            if s.running() {
                "running".to_owned()
            } else {
                s.stop().text
            }
        );
        s
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGINT (strace detaches and prints its summary), then the summary.
    fn stop(&mut self) -> Summary {
        let mut child = self.child.take().expect("strace stopped twice");
        interrupt(&mut child);
        let out = child.wait_with_output().expect("strace output");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let (calls, errors) = parse_summary(&text)
            .get("recvfrom")
            .copied()
            .unwrap_or_default();
        Summary {
            calls,
            errors,
            text,
        }
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            interrupt(&mut child);
            let _ = child.wait();
        }
    }
}

/// SIGINT to `child` unless it has exited (and been reaped).
fn interrupt(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) on our own child, still running, not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    }
}
