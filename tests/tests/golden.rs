//! Golden metrics from the proxy alone (issue 11): every request of an enrolled pod,
//! traced or not, is counted per edge (client workload → server workload), route,
//! status and outcome, with its latency, on both legs.
//!
//! Lab: `client` → backend.py in `server`, both on node-1 (one agent sees both legs).
//! The backend answers `/status/<code>` with that code and `/delay/<ms>` after that
//! long, so the expected counts, outcomes and latency buckets are known.

mod common;

use common::pychain::{agent_with_otlp, APP_PORT};
use common::*;
use hoptrace_tests::{
    assert_eventually, require_root, Agent, ClientContext, ClientOptions, OtlpReceiver, PyApps,
    ReceiverOptions, LAB_NAMESPACE,
};
use std::time::Duration;

const REQUESTS: &str = "hoptrace_http_requests_total";
const LATENCY: &str = "hoptrace_http_request_duration_seconds_bucket";
const HEADERS: &str = "hoptrace_http_response_headers_duration_seconds_bucket";
const TRACED: &str = "hoptrace_http_traced_requests_total";
const OPENED: &str = "hoptrace_tcp_connections_opened_total";

fn edge<'a>(direction: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![
        ("direction", direction),
        ("client_namespace", LAB_NAMESPACE),
        ("client", "client"),
        ("server_namespace", LAB_NAMESPACE),
        ("server", "server"),
    ];
    labels.extend_from_slice(extra);
    labels
}

fn value(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent.metrics().expect("metrics").value(name, labels)
}

#[test]
fn requests_are_counted_per_edge_route_and_outcome_with_their_latency() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(false);
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&server, APP_PORT).expect("backend.py");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent = agent_with_otlp(&lab, "node-1", &otlp, &[]);

    let run = |path: &str, count: usize, context: ClientContext| {
        let r = apps
            .client(
                &client,
                &backend.url(path),
                &ClientOptions {
                    count,
                    context,
                    ..ClientOptions::default()
                },
            )
            .expect("client.py");
        assert_eq!(r.requests.len(), count, "{path}");
    };
    run("/users/17", 10, ClientContext::Sampled);
    run("/orders/5/status/503", 5, ClientContext::None);
    run("/slow/delay/300", 3, ClientContext::None);

    for direction in ["outbound", "inbound"] {
        let ok = edge(
            direction,
            &[
                ("route", "/users/{id}"),
                ("method", "GET"),
                ("status_code", "200"),
                ("outcome", "success"),
            ],
        );
        assert_eventually!(
            value(&agent, REQUESTS, &ok) == 10.0,
            Duration::from_secs(10),
            "{direction} /users: {}",
            value(&agent, REQUESTS, &ok)
        );
        let failed = edge(
            direction,
            &[
                ("route", "/orders/{id}/status/{id}"),
                ("status_code", "503"),
                ("outcome", "failure"),
            ],
        );
        assert_eventually!(
            value(&agent, REQUESTS, &failed) == 5.0,
            Duration::from_secs(10),
            "{direction} /orders: {}",
            value(&agent, REQUESTS, &failed)
        );
        // The delayed route: none within 250 ms, all three within 500 ms.
        let slow = |le| edge(direction, &[("route", "/slow/delay/{id}"), ("le", le)]);
        assert_eventually!(
            value(&agent, LATENCY, &slow("0.5")) == 3.0,
            Duration::from_secs(10),
            "{direction} /slow: {}",
            value(&agent, LATENCY, &slow("0.5"))
        );
        assert_eq!(value(&agent, LATENCY, &slow("0.25")), 0.0, "{direction}");
        // The delay is before the response head: time to headers is as long.
        let headers = edge(direction, &[("route", "/slow/delay/{id}"), ("le", "0.25")]);
        assert_eq!(value(&agent, HEADERS, &headers), 0.0, "{direction}");
        let headers = edge(direction, &[("route", "/slow/delay/{id}"), ("le", "0.5")]);
        assert_eq!(value(&agent, HEADERS, &headers), 3.0, "{direction}");
        // Only the sampled requests were traced; the untraced ones are counted anyway.
        assert_eq!(
            value(&agent, TRACED, &edge(direction, &[])),
            10.0,
            "{direction}"
        );
        assert!(
            value(&agent, OPENED, &edge(direction, &[])) >= 1.0,
            "{direction}"
        );
    }
    // Nothing was attributed to an unknown peer: both pods are known.
    let metrics = agent.metrics().expect("metrics");
    let unknown = metrics.value(REQUESTS, &[("client", "unknown")])
        + metrics.value(REQUESTS, &[("server", "unknown")]);
    assert_eq!(unknown, 0.0);
}

/// Across nodes each agent sees one leg, and names the other node's pod from the
/// workload file's peer entries (`node:`): the edge is the same on both agents.
#[test]
fn edges_across_nodes_name_both_workloads() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(true);
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&server, APP_PORT).expect("backend.py");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent1 = agent_with_otlp(&lab, "node-1", &otlp, &[]);
    let agent2 = agent_with_otlp(&lab, "node-2", &otlp, &[]);

    // One request in four fails: 12 to /items/<n>, 4 of them to the failing path.
    for (path, count) in [("/items/1", 9), ("/items/2/status/500", 3)] {
        let r = apps
            .client(
                &client,
                &backend.url(path),
                &ClientOptions {
                    count,
                    context: ClientContext::None,
                    ..ClientOptions::default()
                },
            )
            .expect("client.py");
        assert_eq!(r.requests.len(), count, "{path}");
    }
    for (agent, direction) in [(&agent1, "outbound"), (&agent2, "inbound")] {
        let total = |outcome| value(agent, REQUESTS, &edge(direction, &[("outcome", outcome)]));
        assert_eventually!(
            total("success") == 9.0 && total("failure") == 3.0,
            Duration::from_secs(10),
            "{direction}: {} ok, {} failed",
            total("success"),
            total("failure")
        );
        let metrics = agent.metrics().expect("metrics");
        assert_eq!(metrics.value(REQUESTS, &[("client", "unknown")]), 0.0);
        assert_eq!(metrics.value(REQUESTS, &[("server", "unknown")]), 0.0);
    }
}
