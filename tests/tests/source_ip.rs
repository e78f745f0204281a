//! The server sees the client pod's own IPv4 address as the peer of a proxied
//! connection (the agent connects from the client's netns, and the inbound
//! leg keeps the source), never 127.x or a node address.

mod common;

use common::*;
use hoptrace_tests::{labapp, require_root, Agent, Lab, Pod};
use std::net::IpAddr;

fn check_source(lab: &Lab, client: &Pod, server: &Pod, out_agent: &Agent, in_agent: &Agent) {
    let app = labapp!();
    let target = server.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(server, target).expect("whoami server");
    let out0 = accepted(out_agent, "outbound", &client.name);
    let in0 = accepted(in_agent, "inbound", &server.name);

    let peer = app.whoami(client, target).expect("whoami");
    let ip = peer.ip();
    assert!(!ip.is_loopback(), "server saw a loopback peer {peer}");
    for node in [&client.node, &server.node] {
        let n = lab.node(node).expect("node");
        assert_ne!(
            ip,
            IpAddr::V4(n.gateway_v4),
            "server saw node {node}'s gateway"
        );
        assert_ne!(
            ip,
            IpAddr::V4(n.underlay_v4),
            "server saw node {node}'s underlay address"
        );
    }
    assert_eq!(
        ip,
        IpAddr::V4(client.ipv4),
        "server saw {peer}, not the client pod"
    );

    assert_counted(out_agent, "outbound", &client.name, out0, 1);
    assert_counted(in_agent, "inbound", &server.name, in0, 1);
}

#[test]
fn source_ip_same_node() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(false);
    let agent = agent_for(&lab, "node-1");
    check_source(&lab, &client, &server, &agent, &agent);
}

#[test]
fn source_ip_cross_node() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(true);
    let agent1 = agent_for(&lab, "node-1");
    let agent2 = agent_for(&lab, "node-2");
    check_source(&lab, &client, &server, &agent1, &agent2);
}
