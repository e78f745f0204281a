//! 200 concurrent connections across nodes through both agents, 64 KiB each,
//! all byte-exact and each counted exactly once on each side.

mod common;

use common::*;
use hoptrace_tests::{labapp, require_root};

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
    let agent1 = agent_for(&lab, "node-1");
    let agent2 = agent_for(&lab, "node-2");

    let out0 = accepted(&agent1, "outbound", "client");
    let in0 = accepted(&agent2, "inbound", "server");
    let (out_failed0, in_failed0) = (
        failed(&agent1, "outbound", "client"),
        failed(&agent2, "inbound", "server"),
    );

    let r = app
        .echo_client(&client, target, BYTES, CONNS as usize, false)
        .expect("echo client");
    assert_echo(&r, CONNS, BYTES);
    assert_counted(&agent1, "outbound", "client", out0, CONNS);
    assert_counted(&agent2, "inbound", "server", in0, CONNS);
    assert_settled(&agent1, "outbound", "client", out_failed0);
    assert_settled(&agent2, "inbound", "server", in_failed0);
}
