//! Workloads follow the workload file without an agent restart: a pod missing
//! from the file is left alone, adding it steers its new connections within
//! about a second, removing it releases it again (connections keep working).

mod common;

use common::*;
use hoptrace_tests::{assert_eventually, labapp, require_root, Agent, Lab, LabApp, Pod};
use std::net::SocketAddr;
use std::time::Duration;

/// DESIGN §3.2: changes are picked up within 1 s; slack for the connection itself.
const RELOAD: Duration = Duration::from_millis(1500);

fn connect(app: &LabApp, pod: &Pod, target: SocketAddr) {
    let peer = app
        .whoami(pod, target)
        .unwrap_or_else(|e| panic!("connection from {} failed: {e:#}", pod.name));
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(pod.ipv4),
        "source address of {}",
        pod.name
    );
}

/// Makes sure the agent has processed everything before now: a connection
/// from the always-enrolled client must show up in its counter.
fn barrier(app: &LabApp, agent: &Agent, client: &Pod, target: SocketAddr) {
    let before = accepted(agent, "outbound", &client.name);
    connect(app, client, target);
    assert_counted(agent, "outbound", &client.name, before, 1);
}

#[test]
fn workloads_added_and_removed_at_runtime() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let mut lab = Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    let client = lab.add_pod("node-1", "client").expect("client pod");
    let late = lab.add_pod("node-1", "late").expect("late pod");
    // The server is never enrolled, so only outbound steering is in play.
    let server = lab.add_pod("node-1", "server").expect("server pod");
    let target = server.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server, target).expect("whoami server");

    let file = lab
        .write_workloads_only("node-1", &["client"])
        .expect("workload file");
    let mut agent = Agent::start(&lab, "node-1", &file).expect("start agent");
    agent.wait_ready(READY).expect("agent ready");
    let pid = agent.pid().expect("agent pid");

    // The agent steers what is in the file...
    barrier(&app, &agent, &client, target);

    // ...and nothing else: `late` is not in the file.
    let total0 = accepted_all(&agent);
    for _ in 0..3 {
        connect(&app, &late, target);
    }
    barrier(&app, &agent, &client, target);
    assert_eq!(
        accepted(&agent, "outbound", "late"),
        0.0,
        "unlisted pod was steered"
    );
    assert_eq!(
        accepted_all(&agent),
        total0 + 1.0,
        "only the barrier connection may be counted"
    );

    // Add `late`: its new connections get steered within ~1 s.
    lab.write_workloads_only("node-1", &["client", "late"])
        .expect("rewrite workload file");
    assert_eventually!(
        {
            connect(&app, &late, target);
            accepted(&agent, "outbound", "late") >= 1.0
        },
        RELOAD,
        "connections of the added pod are not counted"
    );
    let before = accepted(&agent, "outbound", "late");
    connect(&app, &late, target);
    assert_counted(&agent, "outbound", "late", before, 1);

    // Remove it again: new connections still work and are not steered any more.
    lab.write_workloads_only("node-1", &["client"])
        .expect("rewrite workload file");
    assert_eventually!(
        {
            let c0 = accepted(&agent, "outbound", "late");
            connect(&app, &late, target);
            barrier(&app, &agent, &client, target);
            accepted(&agent, "outbound", "late") == c0
        },
        RELOAD + Duration::from_secs(1),
        "connections of the removed pod are still counted"
    );
    let released = accepted(&agent, "outbound", "late");
    for _ in 0..3 {
        connect(&app, &late, target);
    }
    barrier(&app, &agent, &client, target);
    assert_eq!(
        accepted(&agent, "outbound", "late"),
        released,
        "the removed pod is still steered"
    );

    assert_eq!(agent.pid(), Some(pid), "agent was restarted");
    assert!(agent.is_running(), "agent exited during reloads");
}
