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
        .connect_loop(&client, target, 20, 600_000, &out)
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
