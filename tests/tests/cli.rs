//! The agent's command-line contract: `hoptrace check` on this host, and a broken
//! workload file at runtime (rejected with the reason, last good set kept).

mod common;

use common::*;
use hoptrace_tests::{assert_eventually, labapp, require_root, Agent};

#[test]
fn check_reports_every_requirement_and_passes_here() {
    if !require_root() {
        return;
    }
    let bin = Agent::binary().expect("agent binary");
    let out = std::process::Command::new(&bin)
        .arg("check")
        .output()
        .expect("run hoptrace check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hoptrace check failed:\n{stdout}");
    for item in [
        "kernel",
        "BTF",
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "CAP_SYS_ADMIN",
        "cgroup v2",
        "eBPF programs",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("[ok  ]") && l.contains(item)),
            "no passing line for {item}:\n{stdout}"
        );
    }
    // The kernel probe for --skip-pod-tcp reaches a verdict (the agent's unit test
    // checks which one on this kernel).
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("[note] --skip-pod-tcp:") && l.contains("(probed")),
        "no sockmap read probe verdict:\n{stdout}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn broken_workload_file_is_rejected_and_last_good_set_kept() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(false);
    let _echo = app
        .echo_server(&server, server.addr(ECHO_PORT))
        .expect("echo server");
    let agent = agent_for(&lab, "node-1");
    let file = lab.workloads_path("node-1");
    let errors = |a: &Agent| {
        a.metrics()
            .expect("metrics")
            .value("hoptrace_workload_file_errors_total", &[])
    };
    assert_eq!(errors(&agent), 0.0);

    // A syntax error: rejected, reported with the line, counted; steering goes on.
    std::fs::write(&file, "node: node-1\nworkloads:\n  - name: [unclosed\n").expect("write");
    assert_eventually!(
        errors(&agent) == 1.0,
        std::time::Duration::from_secs(3),
        "broken file not reported (errors = {})",
        errors(&agent)
    );
    assert_eventually!(
        agent.log_tail(50).contains("line 3")
            && agent
                .log_tail(50)
                .contains("keeping the last good workload set"),
        std::time::Duration::from_secs(3),
        "the log does not name the line and the consequence:\n{}",
        agent.log_tail(50)
    );
    let before = accepted(&agent, "outbound", "client");
    let r = app
        .echo_client(&client, server.addr(ECHO_PORT), 64 * 1024, 2, false)
        .expect("echo client");
    assert_echo(&r, 2, 64 * 1024);
    assert_counted(&agent, "outbound", "client", before, 2);
}
