//! Helpers shared by the end-to-end tests (each test binary uses a subset).
#![allow(dead_code)]

pub mod hostile;
pub mod propchain;
pub mod proptally;
pub mod pychain;
pub mod realkube;

use hoptrace_tests::{assert_eventually, Agent, EchoReport, Lab};
use std::time::Duration;

/// Agent startup budget (loading and attaching eBPF programs, opening listeners).
pub const READY: Duration = Duration::from_secs(30);
/// How long a finished connection may take to show up in the metrics.
pub const COUNTED: Duration = Duration::from_secs(5);
/// Port of the echo servers.
pub const ECHO_PORT: u16 = 7000;
/// Port of the whoami servers.
pub const WHOAMI_PORT: u16 = 7001;
/// 1 MiB.
pub const MIB: usize = 1024 * 1024;

/// Writes `node`'s workload file with all its pods, starts its agent and
/// waits for `/ready`.
pub fn agent_for(lab: &Lab, node: &str) -> Agent {
    let file = lab.write_workloads(node).expect("write workload file");
    let mut agent = Agent::start(lab, node, &file).expect("start the agent");
    agent.wait_ready(READY).expect("agent ready");
    agent
}

/// `hoptrace_connections_accepted_total{direction,namespace="lab",pod}` now.
pub fn accepted(agent: &Agent, direction: &str, pod: &str) -> f64 {
    scrape(agent).accepted(direction, pod)
}

/// `hoptrace_opaque_connections_total{relay}` now.
pub fn relayed(agent: &Agent, relay: &str) -> f64 {
    scrape(agent).value("hoptrace_opaque_connections_total", &[("relay", relay)])
}

/// `hoptrace_connections_active{direction,namespace="lab",pod}` now.
pub fn active(agent: &Agent, direction: &str, pod: &str) -> f64 {
    scrape(agent).active(direction, pod)
}

/// `hoptrace_upstream_connections_opened_total{direction,pod}` now.
pub fn opened(agent: &Agent, direction: &str, pod: &str) -> f64 {
    agent.metrics().expect("metrics").value(
        "hoptrace_upstream_connections_opened_total",
        &[("direction", direction), ("pod", pod)],
    )
}

/// `hoptrace_connections_failed_total{direction,namespace="lab",pod}` now.
pub fn failed(agent: &Agent, direction: &str, pod: &str) -> f64 {
    scrape(agent).failed(direction, pod)
}

/// Sum of `hoptrace_connections_accepted_total` over every label set.
pub fn accepted_all(agent: &Agent) -> f64 {
    scrape(agent).value(hoptrace_tests::metrics::ACCEPTED, &[])
}

fn scrape(agent: &Agent) -> hoptrace_tests::Metrics {
    match agent.metrics() {
        Ok(m) => m,
        Err(e) => panic!("scraping the agent for {}: {e:#}", agent.node()),
    }
}

/// Asserts that the agent's accepted counter for (`direction`, `pod`) grows
/// to exactly `before + expected` (eventually reaching it, then not beyond:
/// one proxied connection is one accept, never more).
pub fn assert_counted(agent: &Agent, direction: &str, pod: &str, before: f64, expected: u64) {
    let want = before + expected as f64;
    assert_eventually!(
        accepted(agent, direction, pod) >= want,
        COUNTED,
        "agent for {}: {direction} connections accepted for pod {pod} = {}, want {want} ({expected} new)",
        agent.node(),
        accepted(agent, direction, pod)
    );
    assert_eq!(
        accepted(agent, direction, pod),
        want,
        "agent for {}: {direction} connections for pod {pod} counted more than once",
        agent.node()
    );
}

/// Asserts that no connection is left active and none failed since `failed_before`.
pub fn assert_settled(agent: &Agent, direction: &str, pod: &str, failed_before: f64) {
    assert_eventually!(
        active(agent, direction, pod) == 0.0,
        COUNTED,
        "agent for {}: {} {direction} connections still active for pod {pod}",
        agent.node(),
        active(agent, direction, pod)
    );
    assert_eq!(
        failed(agent, direction, pod),
        failed_before,
        "agent for {}: {direction} connections for pod {pod} failed",
        agent.node()
    );
}

/// Asserts an echo-client run was fully intact.
pub fn assert_echo(report: &EchoReport, conns: u64, bytes_each: usize) {
    assert_eq!(
        (report.ok, report.failed),
        (conns, 0),
        "echo-client: {} ok / {} failed; errors:\n{}",
        report.ok,
        report.failed,
        report.stderr
    );
    assert_eq!(report.bytes, conns * bytes_each as u64, "echoed byte count");
}

/// A lab with a `client` pod on node-1 and a `server` pod on node-1
/// (`cross_node == false`) or node-2 (`cross_node == true`).
pub fn client_server_lab(cross_node: bool) -> (Lab, hoptrace_tests::Pod, hoptrace_tests::Pod) {
    let mut lab = Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    let server_node = if cross_node {
        lab.add_node("node-2").expect("node-2");
        "node-2"
    } else {
        "node-1"
    };
    let client = lab.add_pod("node-1", "client").expect("client pod");
    let server = lab.add_pod(server_node, "server").expect("server pod");
    (lab, client, server)
}
