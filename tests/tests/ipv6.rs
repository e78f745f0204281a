//! IPv6 through the agent: same-node and cross-node echo (counted), and the
//! server sees the client pod's IPv6 address.

mod common;

use common::*;
use hoptrace_tests::{labapp, require_root, Agent, Pod};
use std::net::IpAddr;

fn echo_v6(client: &Pod, server: &Pod, out_agent: &Agent, in_agent: &Agent) {
    let app = labapp!();
    let target = server.addr6(ECHO_PORT).expect("dual-stack lab");
    let _echo = app.echo_server(server, target).expect("echo server");
    let whoami_at = server.addr6(WHOAMI_PORT).expect("dual-stack lab");
    let _whoami = app.whoami_server(server, whoami_at).expect("whoami server");
    let out0 = accepted(out_agent, "outbound", &client.name);
    let in0 = accepted(in_agent, "inbound", &server.name);

    let r = app
        .echo_client(client, target, 4 * MIB, 1, false)
        .expect("echo client");
    assert_echo(&r, 1, 4 * MIB);
    let r = app
        .echo_client(client, target, 256 * 1024, 4, true)
        .expect("echo client --half-close");
    assert_echo(&r, 4, 256 * 1024);
    let peer = app.whoami(client, whoami_at).expect("whoami");
    assert_eq!(
        peer.ip(),
        IpAddr::V6(client.ipv6.expect("v6")),
        "server saw {peer}"
    );

    assert_counted(out_agent, "outbound", &client.name, out0, 6);
    assert_counted(in_agent, "inbound", &server.name, in0, 6);
}

#[test]
fn ipv6_same_node() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(false);
    let agent = agent_for(&lab, "node-1");
    echo_v6(&client, &server, &agent, &agent);
}

#[test]
fn ipv6_cross_node() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(true);
    let agent1 = agent_for(&lab, "node-1");
    let agent2 = agent_for(&lab, "node-2");
    echo_v6(&client, &server, &agent1, &agent2);
}
