//! HTTP/1.1 edge cases through both proxies (issue 3, item 2), on the wire with
//! `labapp http-edge-client` → `labapp http-edge-server` (see
//! `hoptrace_tests::h1edge`): a chunked request and response streamed in
//! lock-step (each piece's echo must come back before the next is sent, so a
//! proxy that buffers a body stalls), trailers in both directions (declared with
//! `Trailer`, asked for with `TE: trailers`), and `Expect: 100-continue` (the
//! body is sent only after `100 Continue` came back through the proxies), and an
//! `Upgrade` answered with 101 after which the connection is relayed as raw bytes
//! (WebSocket-style), half-close included.
//! Each request still gets its four spans, chained from the client's context.
//! The same again with `--skip-pod-tcp`, where the in-pod connections carry the
//! bytes as messages put straight into the peer socket's queue (docs/ARCHITECTURE.md,
//! "In-pod connections without TCP").

mod common;

use common::pychain::agent_with_otlp;
use common::*;
use hoptrace_tests::otlp::{summarize, SpanKind, StatusCode};
use hoptrace_tests::traces::{check_nesting, linear_chain, SpanView};
use hoptrace_tests::{labapp, require_root, OtlpReceiver, ReceiverOptions};
use std::time::Duration;

const EDGE_PORT: u16 = 8081;
const SPANS: Duration = Duration::from_secs(20);
const SEED: u64 = 0x4854_6564_6765;

#[test]
fn chunked_trailers_and_expect_continue_through_both_proxies() {
    if !require_root() {
        return;
    }
    edge_cases(&[], &[], |_| {});
}

#[test]
fn edge_cases_with_in_pod_connections_off_tcp() {
    if !require_root() {
        return;
    }
    // The client half-closes after the upgrade and waits for EOF: a blocked read can be
    // woken by the FIN's handshake and get EAGAIN (docs/ARCHITECTURE.md), so it reads
    // that as readiness-based I/O does.
    edge_cases(&["--skip-pod-tcp"], &["--retry-eagain"], |agent| {
        let m = agent.metrics().expect("metrics");
        let redirected = m.value("hoptrace_ebpf_local_redirected_total", &[]);
        // Client → agent-1 and agent-2 → server: requests, bodies piece by piece, the
        // responses and the upgraded bytes, each a message of its own.
        assert!(
            redirected >= 10.0,
            "{}: {redirected} in-pod messages skipped TCP\n{}",
            agent.node(),
            agent.log_tail(20)
        );
    });
}

/// Runs the three edge cases (`http-edge-client` with `client_flags`) through two
/// agents started with `extra`, checks bytes and spans, then `also` on each agent.
fn edge_cases(extra: &[&str], client_flags: &[&str], also: impl Fn(&hoptrace_tests::Agent)) {
    let app = labapp!();
    let (lab, client, server) = client_server_lab(true);
    let _server = app
        .http_edge_server(&server, server.addr(EDGE_PORT))
        .expect("http-edge-server");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent1 = agent_with_otlp(&lab, "node-1", &otlp, extra);
    let agent2 = agent_with_otlp(&lab, "node-2", &otlp, extra);
    let out0 = accepted(&agent1, "outbound", "client");

    let reports = app
        .http_edge_client(&client, server.addr(EDGE_PORT), SEED, client_flags)
        .expect("http-edge-client");
    for r in &reports {
        assert!(
            r.ok,
            "{} through the proxies: {:?}\nagent-1 log:\n{}\nagent-2 log:\n{}",
            r.scenario,
            r,
            agent1.log_tail(30),
            agent2.log_tail(30)
        );
    }
    // All three requests on one steered connection.
    assert_counted(&agent1, "outbound", "client", out0, 1);

    let expected = [
        ("/stream", "POST", "200"),
        ("/expect", "POST", "200"),
        ("/upgrade", "GET", "101"),
    ];
    for (r, (path, method, status)) in reports.iter().zip(expected) {
        let sent: Vec<&str> = r.traceparent.split('-').collect();
        let seen = r
            .seen_traceparent
            .as_deref()
            .expect("server saw a traceparent");
        let seen: Vec<&str> = seen.split('-').collect();
        assert_eq!(seen[1], sent[1], "{}: trace id kept", r.scenario);
        assert_ne!(
            seen[2], sent[2],
            "{}: parent rewritten by the proxies",
            r.scenario
        );

        let spans = otlp
            .wait_for_trace(sent[1], 4, SPANS)
            .expect("four proxy spans");
        let views: Vec<SpanView> = spans.iter().map(SpanView::from).collect();
        let chain = linear_chain(&views).unwrap_or_else(|e| panic!("{}: {e:#}", r.scenario));
        let roles: Vec<String> = chain.iter().map(SpanView::role).collect();
        assert_eq!(
            roles,
            [
                "proxy:outbound:client Server",
                "proxy:outbound:client Client",
                "proxy:inbound:server Server",
                "proxy:inbound:server Client"
            ],
            "{}",
            r.scenario
        );
        assert_eq!(
            chain[0].parent_span_id, sent[2],
            "{}: chained to the client",
            r.scenario
        );
        assert_eq!(
            chain[3].span_id, seen[2],
            "{}: the server's parent",
            r.scenario
        );
        check_nesting(&views, 0).unwrap_or_else(|e| panic!("{}: {e:#}", r.scenario));
        for s in &spans {
            let ctx = || format!("{} {:?}\n{}", r.scenario, s.kind, summarize(&spans));
            assert_eq!(s.attr("http.request.method"), Some(method), "{}", ctx());
            assert_eq!(s.attr("url.path"), Some(path), "{}", ctx());
            assert_eq!(
                s.attr("http.response.status_code"),
                Some(status),
                "{}",
                ctx()
            );
            assert_ne!(s.status_code, StatusCode::Error, "{}", ctx());
            assert!(matches!(s.kind, SpanKind::Server | SpanKind::Client));
        }
    }
    // The client's connection is done; agent-1's upstream to node-2 stays pooled.
    assert_settled(&agent1, "outbound", "client", 0.0);
    assert_eq!(failed(&agent2, "inbound", "server"), 0.0);
    also(&agent1);
    also(&agent2);
}
