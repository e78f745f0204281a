//! Client and server pods on one node, one agent: the connection is steered
//! out of the client (outbound) and into the server (inbound) by the same
//! agent, and the bytes arrive intact, half-close included.

mod common;

use common::*;
use hoptrace_tests::{labapp, require_root};

#[test]
fn same_node_echo_through_agent() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(false);
    let target = server.addr(ECHO_PORT);
    let _echo = app.echo_server(&server, target).expect("echo server");
    let agent = agent_for(&lab, "node-1");

    let out0 = accepted(&agent, "outbound", "client");
    let in0 = accepted(&agent, "inbound", "server");
    let (out_failed0, in_failed0) = (
        failed(&agent, "outbound", "client"),
        failed(&agent, "inbound", "server"),
    );

    let r = app
        .echo_client(&client, target, 8 * MIB, 1, false)
        .expect("echo client");
    assert_echo(&r, 1, 8 * MIB);
    assert_counted(&agent, "outbound", "client", out0, 1);
    assert_counted(&agent, "inbound", "server", in0, 1);

    // Half-close: the client shuts down its write side first; the echo must
    // still arrive in full, followed by the server's FIN.
    let r = app
        .echo_client(&client, target, MIB, 4, true)
        .expect("echo client --half-close");
    assert_echo(&r, 4, MIB);
    assert_counted(&agent, "outbound", "client", out0, 5);
    assert_counted(&agent, "inbound", "server", in0, 5);

    assert_settled(&agent, "outbound", "client", out_failed0);
    assert_settled(&agent, "inbound", "server", in_failed0);
}
