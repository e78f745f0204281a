//! The agents' spans as a third-party collector reads them: the same HTTP hop as
//! in `http_spans`, exported to `@elastic/mockotlpserver` (npm, Node.js gRPC) instead
//! of our receiver, one agent with gzip and one without. The four spans must arrive
//! decoded by that server with their kinds, parent chain, attributes and per-pod
//! resources.
//!
//! Lab: `client` (node-1) → backend.py in `server` (node-2).

mod common;

use common::pychain::APP_PORT;
use common::*;
use hoptrace_tests::mockotlp::{MockCollector, MockSpan};
use hoptrace_tests::{require_root, Agent, ClientOptions, Lab, PyApps};
use std::time::Duration;

const SPANS: Duration = Duration::from_secs(20);

fn agent(lab: &Lab, node: &str, collector: &MockCollector, compression: &str) -> Agent {
    let file = lab.write_workloads(node).expect("workload file");
    let args = [
        "--otlp-endpoint",
        collector.endpoint(),
        "--otlp-compression",
        compression,
    ];
    let mut agent = Agent::start_with_args(lab, node, &file, &args).expect("start the agent");
    agent.wait_ready(READY).expect("agent ready");
    agent
}

#[test]
fn spans_reach_a_third_party_collector() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(true);
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&server, APP_PORT).expect("backend.py");
    let collector = MockCollector::start().expect("mockotlpserver (run `cargo xtask setup`)");
    let _agent1 = agent(&lab, "node-1", &collector, "gzip");
    let _agent2 = agent(&lab, "node-2", &collector, "none");

    let run = apps
        .client(
            &client,
            &backend.url("/third-party"),
            &ClientOptions::default(),
        )
        .expect("client.py");
    let req = &run.requests[0];
    assert_eq!(req.status, 200, "{req:?}");
    let tid = req.trace_id().expect("trace id");
    let spans = collector
        .wait_for_trace(tid, 4, SPANS)
        .expect("four proxy spans at mockotlpserver");
    assert_eq!(spans.len(), 4, "{spans:#?}");

    // The chain: client's span → outbound SERVER → outbound CLIENT → inbound SERVER
    // → inbound CLIENT.
    let mut parent = req.span_id.clone().expect("client span id");
    let want = [
        ("SPAN_KIND_SERVER", "outbound", "client"),
        ("SPAN_KIND_CLIENT", "outbound", "client"),
        ("SPAN_KIND_SERVER", "inbound", "server"),
        ("SPAN_KIND_CLIENT", "inbound", "server"),
    ];
    for (kind, direction, pod) in want {
        let next: Vec<&MockSpan> = spans
            .iter()
            .filter(|s| s.parent_span_id == parent)
            .collect();
        assert_eq!(next.len(), 1, "one child of {parent}: {spans:#?}");
        let s = next[0];
        let who = format!("{direction} {kind}");
        assert_eq!(s.kind, kind, "{who}");
        assert_eq!(
            s.attr("hoptrace.direction").as_deref(),
            Some(direction),
            "{who}"
        );
        assert_eq!(
            s.attr("http.request.method").as_deref(),
            Some("GET"),
            "{who}"
        );
        assert_eq!(s.attr("url.path").as_deref(), Some("/third-party"), "{who}");
        assert_eq!(
            s.attr("http.response.status_code").as_deref(),
            Some("200"),
            "{who}"
        );
        assert_eq!(s.status, "STATUS_CODE_UNSET", "{who}");
        assert_eq!(s.res("k8s.pod.name").as_deref(), Some(pod), "{who}");
        assert_eq!(s.res("k8s.namespace.name").as_deref(), Some("lab"), "{who}");
        assert_eq!(s.scope, "hoptrace", "{who}");
        parent = s.span_id.clone();
    }
}
