//! 200 concurrent connections across nodes through both agents, 64 KiB each,
//! all byte-exact and each counted exactly once on each side, and served by every
//! data path core of the agent (one pod's connections spread over the cores).

mod common;

use common::*;
use hoptrace_tests::{labapp, require_root, Agent};

const CONNS: u64 = 200;
const BYTES: usize = 64 * 1024;

#[test]
fn concurrent_connections_cross_node() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(true);
    let target = server.addr(ECHO_PORT);
    let _echo = app.echo_server(&server, target).expect("echo server");
    // Two data path cores on node-1 whatever this machine has (cores.rs).
    let file = lab.write_workloads("node-1").expect("workload file");
    let mut agent1 = Agent::start_with_args(&lab, "node-1", &file, &["--worker-threads", "2"])
        .expect("start the agent");
    agent1.wait_ready(READY).expect("agent ready");
    let agent2 = agent_for(&lab, "node-2");

    let out0 = accepted(&agent1, "outbound", "client");
    let in0 = accepted(&agent2, "inbound", "server");
    let (out_failed0, in_failed0) = (
        failed(&agent1, "outbound", "client"),
        failed(&agent2, "inbound", "server"),
    );

    let switches0 = agent1.thread_switches("hoptrace-core-").expect("threads");
    assert_eq!(
        switches0.keys().collect::<Vec<_>>(),
        ["hoptrace-core-0", "hoptrace-core-1"],
        "the agent's data path threads"
    );
    let r = app
        .echo_client(&client, target, BYTES, CONNS as usize, false)
        .expect("echo client");
    assert_echo(&r, CONNS, BYTES);
    assert_counted(&agent1, "outbound", "client", out0, CONNS);
    assert_counted(&agent2, "inbound", "server", in0, CONNS);
    assert_settled(&agent1, "outbound", "client", out_failed0);
    assert_settled(&agent2, "inbound", "server", in_failed0);
    // Each core woke many times to serve its share (an idle core sleeps in epoll_wait).
    let switches = agent1.thread_switches("hoptrace-core-").expect("threads");
    for (core, n) in &switches {
        let woke = n - switches0[core];
        assert!(
            woke >= 20,
            "{core} woke {woke} times for {CONNS} connections: not serving its share ({switches:?} from {switches0:?})"
        );
    }
}
