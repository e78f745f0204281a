//! A same-node hop in one pass (docs/ARCHITECTURE.md, "A same-node hop in one pass"):
//! when a pod calls an enrolled pod of the same node, the outbound leg connects
//! straight to the destination's app, from the caller's own address, in the
//! destination's netns — no second accept, no second parse. The hop still has its four
//! spans in the exact parent chain, the app still sees its real caller, and the
//! destination's inbound metrics still count the connection and its requests.

mod common;

use common::pychain::{agent_with_otlp, proxy_spans, APP_PORT};
use common::*;
use hoptrace_tests::{
    hops::{hops, HopSpan},
    labapp, require_root, ClientOptions, OtlpReceiver, PyApps, ReceiverOptions,
};

const REQUESTS: usize = 5;
#[test]
fn same_node_http_hop_in_one_pass() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(false);
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&server, APP_PORT).expect("backend.py");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent = agent_with_otlp(&lab, "node-1", &otlp, &[]);
    let in0 = accepted(&agent, "inbound", "server");
    let out0 = accepted(&agent, "outbound", "client");

    let run = apps
        .client(
            &client,
            &backend.url("/one-pass"),
            &ClientOptions {
                count: REQUESTS,
                ..ClientOptions::default()
            },
        )
        .expect("client.py");
    assert_eq!(run.requests.len(), REQUESTS);
    for r in &run.requests {
        assert_eq!(r.status, 200, "{r:?}");
        let answer = r.answer().expect("backend answer");
        assert_eq!(
            answer.peer_ip().expect("peer ip"),
            client.addr(0).ip(),
            "the app sees the calling pod's own address"
        );
        let tid = r.trace_id().expect("trace id");
        let spans = proxy_spans(&otlp, tid, 4);
        let hop_spans: Vec<HopSpan> = spans.iter().map(HopSpan::from).collect();
        let found = hops(&hop_spans).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(found.len(), 1, "one hop: {found:?}");
        let hop = &found[0];
        assert_eq!(hop.client, "lab/client");
        assert_eq!(hop.server, "lab/server");
        // The exact chain: the client app's span → the four proxy spans → the app.
        assert_eq!(
            Some(hop.parent_span_id.as_str()),
            r.span_id.as_deref(),
            "the outbound SERVER span's parent is the client's span"
        );
        assert_eq!(
            answer.parent_span_id, hop.spans[3],
            "the app's parent is the inbound CLIENT span"
        );
        // True timings: each span within its parent.
        let by_id = |id: &str| {
            spans
                .iter()
                .find(|s| s.span_id == id)
                .unwrap_or_else(|| panic!("span {id}"))
        };
        for pair in hop.spans.windows(2) {
            let (parent, child) = (by_id(&pair[0]), by_id(&pair[1]));
            assert!(
                child.start_unix_nano >= parent.start_unix_nano
                    && child.end_unix_nano <= parent.end_unix_nano,
                "{} [{}..{}] outside {} [{}..{}]",
                child.name,
                child.start_unix_nano,
                child.end_unix_nano,
                parent.name,
                parent.start_unix_nano,
                parent.end_unix_nano
            );
        }
    }
    // One pass: the outbound leg opened no connection of its own (it would have been
    // steered into the agent again); the inbound side opened the one to the app.
    assert_eq!(
        opened(&agent, "outbound", "client"),
        0.0,
        "outbound upstream opened"
    );
    assert!(
        opened(&agent, "inbound", "server") >= 1.0,
        "inbound upstream opened"
    );
    assert_counted(&agent, "outbound", "client", out0, 1);
    assert_counted(&agent, "inbound", "server", in0, 1);
    let m = agent.metrics().expect("metrics");
    let requests = |direction: &str| {
        m.value(
            "hoptrace_http_requests_total",
            &[("direction", direction), ("status_code", "200")],
        )
    };
    assert_eq!(
        requests("outbound"),
        REQUESTS as f64,
        "outbound edge requests"
    );
    assert_eq!(
        requests("inbound"),
        REQUESTS as f64,
        "inbound edge requests"
    );
}

#[test]
fn same_node_opaque_tcp_in_one_relay() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (lab, client, server) = client_server_lab(false);
    let target = server.addr(ECHO_PORT);
    let _echo = app.echo_server(&server, target).expect("echo server");
    let agent = agent_for(&lab, "node-1");
    let (out0, in0) = (
        accepted(&agent, "outbound", "client"),
        accepted(&agent, "inbound", "server"),
    );
    // Relayed in userspace (the default); the kernel splice, and its pause, are
    // splice.rs's.
    let r = app
        .echo_client(&client, target, MIB, 2, true)
        .expect("echo client --half-close");
    assert_echo(&r, 2, MIB);
    assert_counted(&agent, "outbound", "client", out0, 2);
    assert_counted(&agent, "inbound", "server", in0, 2);
    assert_eq!(
        opened(&agent, "outbound", "client"),
        0.0,
        "one relay, not two"
    );
    assert_eq!(opened(&agent, "inbound", "server"), 2.0);
}
