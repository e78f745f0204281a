//! Client on node-1, server on node-2, one agent per node: the outbound leg is
//! counted by node-1's agent, the inbound leg by node-2's, bytes intact.

mod common;

use common::*;
use hoptrace_tests::{labapp, require_root};

#[test]
fn cross_node_echo_through_two_agents() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(true);
    let target = server.addr(ECHO_PORT);
    let _echo = app.echo_server(&server, target).expect("echo server");
    let agent1 = agent_for(&lab, "node-1");
    let agent2 = agent_for(&lab, "node-2");

    let out0 = accepted(&agent1, "outbound", "client");
    let in0 = accepted(&agent2, "inbound", "server");
    let (out_failed0, in_failed0) = (
        failed(&agent1, "outbound", "client"),
        failed(&agent2, "inbound", "server"),
    );

    let r = app
        .echo_client(&client, target, 8 * MIB, 1, false)
        .expect("echo client");
    assert_echo(&r, 1, 8 * MIB);
    assert_counted(&agent1, "outbound", "client", out0, 1);
    assert_counted(&agent2, "inbound", "server", in0, 1);

    let r = app
        .echo_client(&client, target, MIB, 4, true)
        .expect("echo client --half-close");
    assert_echo(&r, 4, MIB);
    assert_counted(&agent1, "outbound", "client", out0, 5);
    assert_counted(&agent2, "inbound", "server", in0, 5);

    // Each agent only sees its own node's pods.
    assert_eq!(
        accepted(&agent1, "inbound", "server"),
        0.0,
        "agent-1 counted the remote server"
    );
    assert_eq!(
        accepted(&agent2, "outbound", "client"),
        0.0,
        "agent-2 counted the remote client"
    );

    assert_settled(&agent1, "outbound", "client", out_failed0);
    assert_settled(&agent2, "inbound", "server", in_failed0);
}
