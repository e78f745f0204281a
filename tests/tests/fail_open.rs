//! Fail-open: when the agent dies, new connections go direct within 1 s;
//! when it comes back, steering resumes; the app never stays broken.

mod common;

use common::*;
use hoptrace_tests::clock::monotonic_ms;
use hoptrace_tests::{assert_eventually, labapp, require_root, Attempt};
use std::time::Duration;

fn describe(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a.t_ms,
                if a.ok { "ok" } else { "error" },
                a.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn agent_kill_fails_open_and_restart_resumes_steering() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(false);
    let target = server.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server, target).expect("whoami server");
    let mut agent = agent_for(&lab, "node-1");

    let out = lab.tmp_dir().join("connect-loop.out");
    let conn_loop = app
        // A connection made while the agent is being killed is lost with it (it was in
        // the agent's hands): a short timeout keeps such a one from holding up the
        // next attempt, which must succeed within the 1 s budget.
        .connect_loop(&client, target, (20, 600_000, 700), &out)
        .expect("connect-loop");

    // Steered before the kill.
    assert_eventually!(
        accepted(&agent, "outbound", "client") >= 3.0,
        COUNTED,
        "connect-loop connections are not counted before the kill"
    );
    let before = conn_loop.attempts().expect("attempts");
    assert!(
        before.iter().all(|a| a.ok),
        "connections failed with a healthy agent:\n{}",
        describe(&before)
    );

    let t_kill = monotonic_ms();
    agent.kill9().expect("kill -9 the agent");

    // Wait until the loop has run well past the 1 s budget.
    assert_eventually!(
        conn_loop
            .attempts()
            .map(|a| a.last().is_some_and(|l| l.t_ms > t_kill + 1500))
            .unwrap_or(false),
        Duration::from_secs(10),
        "connect-loop stopped making attempts"
    );
    let after_kill = conn_loop.attempts().expect("attempts");
    let first_ok = after_kill
        .iter()
        .find(|a| a.t_ms >= t_kill && a.ok)
        .unwrap_or_else(|| {
            panic!(
                "no connection succeeded after the kill:\n{}",
                describe(&after_kill)
            )
        });
    assert!(
        first_ok.t_ms - t_kill <= 1000,
        "first success {} ms after the kill:\n{}",
        first_ok.t_ms - t_kill,
        describe(&after_kill)
    );

    // Restart: steering resumes (a new process counts from zero).
    agent.restart().expect("restart agent");
    agent.wait_ready(READY).expect("restarted agent ready");
    assert_eventually!(
        accepted(&agent, "outbound", "client") >= 3.0,
        COUNTED,
        "steering did not resume after the restart"
    );

    let t_end = monotonic_ms();
    let all = conn_loop.finish().expect("connect-loop output");
    let late_failures: Vec<&Attempt> = all
        .iter()
        .filter(|a| a.t_ms > t_kill + 1000 && !a.ok)
        .collect();
    assert!(
        late_failures.is_empty(),
        "connections failed more than 1 s after the kill (kill at {t_kill}, end {t_end}):\n{}",
        describe(&all)
    );
    assert!(
        all.iter().filter(|a| a.t_ms > t_kill + 1000).count() >= 10,
        "too few attempts after the kill to judge:\n{}",
        describe(&all)
    );
}

/// Issue 8, finding 5: while node-2's agent is down, node-1's agent opens its pooled
/// upstream connection to the server directly (nothing steers it on node-2). Once
/// node-2's agent is back, that connection must not carry the traffic on forever
/// untraced: it is not reused past `--pool-max-lifetime`, and the replacement goes
/// through node-2's agent. Before, with requests flowing every 100 ms, the direct
/// connection stayed in use indefinitely.
#[test]
fn pooled_connections_are_steered_again_after_the_peer_agent_restarts() {
    if !require_root() {
        return;
    }
    use common::hostile::{py, HTTP_PORT};
    let (lab, client, server) = client_server_lab(true);
    let listen = server.addr(HTTP_PORT).to_string();
    let mut app = server
        .spawn(py(&["serve", "--listen", &listen]))
        .expect("server");
    app.wait_listening(HTTP_PORT, Duration::from_secs(10))
        .expect("server listening");
    let file = lab.write_workloads("node-1").expect("workloads");
    let mut agent1 = hoptrace_tests::Agent::start_with_args(
        &lab,
        "node-1",
        &file,
        &["--pool-max-lifetime", "2s"],
    )
    .expect("agent node-1");
    agent1.wait_ready(READY).expect("ready");

    // Requests flow for 12 s; node-2's agent starts after 3 s.
    let loop_ = client
        .spawn({
            let mut c = py(&[
                "loop",
                "--addr",
                &listen,
                "--interval-ms",
                "100",
                "--seconds",
                "12",
            ]);
            c.stdout(std::process::Stdio::piped());
            c
        })
        .expect("request loop");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        accepted(&agent1, "outbound", "client") >= 10.0,
        "node-1 steers the client"
    );
    let agent2 = agent_for(&lab, "node-2");
    let t = std::time::Instant::now();
    assert_eventually!(
        accepted(&agent2, "inbound", "server") >= 1.0,
        Duration::from_secs(6),
        "node-2's agent saw no connection {:?} after its start: the pooled direct connection is still in use",
        t.elapsed()
    );
    let out = loop_
        .wait_output(Duration::from_secs(30))
        .expect("loop output");
    let r: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("loop report");
    assert_eq!(r["failed"].as_u64(), Some(0), "requests failed: {r}");
}
