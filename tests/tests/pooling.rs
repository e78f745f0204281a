//! Upstream HTTP connections are reused per (source pod, destination): a client
//! that opens a new connection for every request still reaches the server over
//! one upstream connection per leg, and every request keeps its four spans.
//!
//! Lab: `client` (node-1) → backend.py in `server` (node-2), one agent per node.

mod common;

use common::pychain::{agent_with_otlp, APP_PORT};
use common::*;
use hoptrace_tests::{
    assert_eventually, require_root, ClientOptions, OtlpReceiver, PyApps, ReceiverOptions,
};
use std::collections::BTreeSet;
use std::time::Duration;

const REQUESTS: usize = 10;
const SPANS: Duration = Duration::from_secs(20);
/// The pool's idle timeout (4 s) plus its sweep interval and slack.
const IDLE_CLOSE: Duration = Duration::from_secs(10);
#[test]
fn new_client_connections_share_pooled_upstream_connections() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(true);
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&server, APP_PORT).expect("backend.py");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent1 = agent_with_otlp(&lab, "node-1", &otlp, &[]);
    let agent2 = agent_with_otlp(&lab, "node-2", &otlp, &[]);

    let run = apps
        .client(
            &client,
            &backend.url("/pooled"),
            &ClientOptions {
                count: REQUESTS,
                new_connection: true,
                ..ClientOptions::default()
            },
        )
        .expect("client.py");
    let mut peers = BTreeSet::new();
    for r in &run.requests {
        assert_eq!(r.status, 200, "{r:?}");
        let answer = r.answer().expect("backend answer");
        assert_eq!(
            answer.peer_ip().expect("peer ip"),
            client.addr(0).ip(),
            "the backend still sees the client pod's address"
        );
        peers.insert(answer.peer.clone());
        let tid = r.trace_id().expect("trace id");
        otlp.wait_for_trace(tid, 4, SPANS)
            .expect("four proxy spans per request");
    }
    // The client opened a connection per request...
    assert_counted(&agent1, "outbound", "client", 0.0, REQUESTS as u64);
    // ...the agents one per leg, reused for every request.
    assert_eq!(
        opened(&agent1, "outbound", "client"),
        1.0,
        "outbound upstream connections"
    );
    assert_counted(&agent2, "inbound", "server", 0.0, 1);
    assert_eq!(
        opened(&agent2, "inbound", "server"),
        1.0,
        "inbound upstream connections"
    );
    assert_eq!(
        peers.len(),
        1,
        "the backend saw {} client connections: {peers:?}",
        peers.len()
    );
    assert_settled(&agent1, "outbound", "client", 0.0);
    // Idle pooled connections are closed on time, with no traffic to trigger it.
    assert_eventually!(
        active(&agent2, "inbound", "server") == 0.0,
        IDLE_CLOSE,
        "agent-1's idle pooled connection to node-2 still open after {IDLE_CLOSE:?}"
    );
}
