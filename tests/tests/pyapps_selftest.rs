//! The instrumented Python test apps on their own (no agent): client (node-1)
//! → web (node-1) → backend (node-2). The apps' spans must form one trace with
//! the right parent chain in every propagation format, headers must arrive as
//! sent, and the no-context / unsampled / error modes must do what the span
//! tests rely on. The gRPC pair (grpc_client.py → grpc_server.py) likewise. The
//! plain apps of the propagation tests (tests/apps/plain_web.*) send no trace header.

mod common;

use common::pychain::*;
use hoptrace_tests::plainapp::{LoadOptions, WebKind};
use hoptrace_tests::pyapp::{end_to_end, ClientRequest, CLIENT_USER_AGENT};
use hoptrace_tests::traces::{check_nesting, expect_roles, linear_chain};
use hoptrace_tests::{
    require_root, ClientContext, ClientOptions, GrpcCall, GrpcOptions, Propagation, PyApps,
};
use std::time::Duration;

const APP_CHAIN: [&str; 4] = [
    "app:client Client",
    "app:web Server",
    "app:web Client",
    "app:backend Server",
];

/// Runs 2 requests client → web → backend and checks the app spans and what
/// each tier received; returns the requests.
fn check_chain(propagation: Propagation) -> Vec<ClientRequest> {
    let chain = chain_lab(propagation);
    let opts = ClientOptions {
        count: 2,
        headers: vec![
            ("x-hoptrace-test".into(), "keep me".into()),
            ("tracestate".into(), "hop=1".into()),
        ],
        ..Default::default()
    };
    let run = chain
        .apps
        .client(&chain.client_pod, &chain.web.url("/chain?x=1"), &opts)
        .expect("client.py");
    assert_eq!(
        run.spans.len(),
        2,
        "one client span per request: {:?}",
        run.spans
    );
    let mut trace_ids = Vec::new();
    for req in &run.requests {
        assert_eq!(req.status, 200, "{req:?}");
        let tid = req.trace_id().expect("trace id").to_owned();
        let web = req.answer().expect("web answer");
        let backend = web.backend_answer().expect("backend answer");
        assert_eq!((web.app.as_str(), backend.app.as_str()), ("web", "backend"));
        assert_eq!(
            (web.path.as_str(), backend.path.as_str()),
            ("/chain?x=1", "/chain?x=1")
        );
        assert_eq!(web.trace_id, tid);
        assert_eq!(backend.trace_id, tid);
        assert!(web.sampled && backend.sampled);

        // Without a proxy in the way, web got exactly what the client sent.
        assert_eq!(
            end_to_end(&web.headers, &[]),
            end_to_end(&req.sent_headers, &[])
        );
        assert_eq!(web.header("x-hoptrace-test"), Some("keep me"));
        assert_eq!(web.header("user-agent"), Some(CLIENT_USER_AGENT));
        assert!(backend
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("python-requests/")));
        assert_eq!(
            web.peer_ip().expect("peer").to_string(),
            chain.client_pod.ipv4.to_string()
        );
        assert_eq!(
            backend.peer_ip().expect("peer").to_string(),
            chain.web_pod.ipv4.to_string()
        );

        let spans = app_spans(&chain, &run.spans, req, true);
        let views = app_views(&spans);
        let ordered = linear_chain(&views).expect("one chain");
        expect_roles(&ordered, &APP_CHAIN).expect("app chain");
        check_nesting(&views, NEST_TOLERANCE_NS).expect("app spans nest");
        assert_eq!(ordered[0].span_id, req.span_id.clone().expect("span id"));
        assert_eq!(web.span_id, ordered[1].span_id);
        assert_eq!(web.parent_span_id, ordered[0].span_id);
        assert_eq!(backend.span_id, ordered[3].span_id);
        assert_eq!(
            backend.parent_span_id, ordered[2].span_id,
            "backend's parent is web's client span"
        );
        let web_server = spans
            .iter()
            .find(|s| s.span_id == web.span_id)
            .expect("web span");
        assert_eq!(web_server.attr("url.path").as_deref(), Some("/chain"));
        assert_eq!(
            web_server.attr("http.response.status_code").as_deref(),
            Some("200")
        );

        // The context went out in the chosen format, and only in it.
        match propagation {
            Propagation::TraceContext => {
                let sent = req.sent_header("traceparent").expect("traceparent sent");
                assert_eq!(web.header("traceparent"), Some(sent));
                let (v, t, p, flags) = traceparent(sent);
                assert_eq!(
                    (v.as_str(), t.as_str(), p.as_str()),
                    ("00", tid.as_str(), ordered[0].span_id.as_str())
                );
                assert_eq!(
                    u8::from_str_radix(&flags, 16).expect("flags") & 1,
                    1,
                    "sampled"
                );
                let (_, t, p, _) = traceparent(backend.header("traceparent").expect("traceparent"));
                assert_eq!(
                    (t.as_str(), p.as_str()),
                    (tid.as_str(), ordered[2].span_id.as_str())
                );
                assert_eq!(web.header("tracestate"), Some("hop=1"));
                assert_eq!(
                    backend.header("tracestate"),
                    Some("hop=1"),
                    "web's SDK carries tracestate on"
                );
                assert_eq!(web.header("b3"), None);
                assert_eq!(web.header("x-b3-traceid"), None);
            }
            Propagation::B3Multi => {
                assert_eq!(web.header("x-b3-traceid"), Some(tid.as_str()));
                assert_eq!(web.header("x-b3-spanid"), Some(ordered[0].span_id.as_str()));
                assert_eq!(web.header("x-b3-sampled"), Some("1"));
                assert_eq!(backend.header("x-b3-traceid"), Some(tid.as_str()));
                assert_eq!(
                    backend.header("x-b3-spanid"),
                    Some(ordered[2].span_id.as_str())
                );
                assert_eq!(web.header("traceparent"), None);
                assert_eq!(backend.header("traceparent"), None);
                assert_eq!(web.header("b3"), None);
            }
            Propagation::B3Single => {
                let (t, s, sampled) = b3_single(web.header("b3").expect("b3 header"));
                assert_eq!(
                    (t.as_str(), s.as_str(), sampled.as_deref()),
                    (tid.as_str(), ordered[0].span_id.as_str(), Some("1"))
                );
                let (t, s, _) = b3_single(backend.header("b3").expect("b3 header"));
                assert_eq!(
                    (t.as_str(), s.as_str()),
                    (tid.as_str(), ordered[2].span_id.as_str())
                );
                assert_eq!(web.header("traceparent"), None);
                assert_eq!(web.header("x-b3-traceid"), None);
            }
        }
        trace_ids.push(tid);
    }
    assert_ne!(trace_ids[0], trace_ids[1], "each request is its own trace");
    run.requests
}

#[test]
fn tracecontext_chain_across_nodes() {
    if !require_root() {
        return;
    }
    check_chain(Propagation::TraceContext);
}

#[test]
fn b3_multi_chain_across_nodes() {
    if !require_root() {
        return;
    }
    check_chain(Propagation::B3Multi);
}

#[test]
fn b3_single_chain_across_nodes() {
    if !require_root() {
        return;
    }
    check_chain(Propagation::B3Single);
}

#[test]
fn no_context_unsampled_and_errors() {
    if !require_root() {
        return;
    }
    let chain = chain_lab(Propagation::TraceContext);
    let backend_url = chain.backend.url("/plain");

    // --no-context: no trace header at all, no client span; the backend starts its own trace.
    let run = chain
        .apps
        .client(
            &chain.client_pod,
            &backend_url,
            &ClientOptions {
                context: ClientContext::None,
                new_connection: true,
                count: 2,
                ..Default::default()
            },
        )
        .expect("client.py --no-context");
    assert!(run.spans.is_empty(), "{:?}", run.spans);
    for req in &run.requests {
        assert_eq!(
            (req.status, req.trace_id.as_deref()),
            (200, None),
            "{req:?}"
        );
        let got = req.answer().expect("backend answer");
        assert_eq!(got.header("traceparent"), None);
        assert_eq!(got.parent_span_id, "");
        assert_eq!(
            end_to_end(&got.headers, &[]),
            end_to_end(&req.sent_headers, &[])
        );
        assert_eq!(
            got.header("host"),
            Some(chain.backend.addr.to_string().as_str())
        );
    }

    // --unsampled: valid ids, sampled flag off, nothing recorded downstream.
    let run = chain
        .apps
        .client(
            &chain.client_pod,
            &backend_url,
            &ClientOptions {
                context: ClientContext::Unsampled,
                ..Default::default()
            },
        )
        .expect("client.py --unsampled");
    let req = &run.requests[0];
    assert!(
        run.spans.is_empty(),
        "unsampled span recorded: {:?}",
        run.spans
    );
    assert_eq!(req.sampled, Some(false));
    let sent = req.sent_header("traceparent").expect("traceparent sent");
    let (_, t, p, flags) = traceparent(sent);
    assert_eq!(Some(t.as_str()), req.trace_id.as_deref());
    assert_eq!(Some(p.as_str()), req.span_id.as_deref());
    assert_eq!(
        u8::from_str_radix(&flags, 16).expect("flags") & 1,
        0,
        "{sent}"
    );
    let got = req.answer().expect("backend answer");
    assert_eq!(got.header("traceparent"), Some(sent));
    assert!(!got.sampled);
    assert_eq!(got.trace_id, t);
    // backend.py writes its span (SimpleSpanProcessor) before it sends the
    // response, so by now a recorded span would already be in the file.
    let backend_spans = chain.backend.spans().expect("backend spans");
    assert!(
        backend_spans.iter().all(|s| s.trace_id != t),
        "backend recorded an unsampled span"
    );

    // /status/<code> through web: the status comes back, 5xx spans are ERROR.
    let run = chain
        .apps
        .client(
            &chain.client_pod,
            &chain.web.url("/status/503"),
            &ClientOptions::default(),
        )
        .expect("client.py");
    let req = &run.requests[0];
    assert_eq!(req.status, 503);
    let spans = app_spans(&chain, &run.spans, req, true);
    for s in &spans {
        assert_eq!(s.status, "ERROR", "{s:?}");
        // requests' instrumentation still records the old `http.status_code`.
        let code = s
            .attr("http.response.status_code")
            .or_else(|| s.attr("http.status_code"));
        assert_eq!(code.as_deref(), Some("503"), "{s:?}");
    }
    assert_eq!(spans.len(), 4);
}

/// grpc_client.py (node-1) → grpc_server.py (node-2), no agent: unary OK and
/// error, streaming, through the slow-start relay too; one CLIENT and one
/// SERVER span per call, parent to child, the context in the metadata as
/// sent, the client's address and one connection for all calls.
#[test]
fn grpc_apps_across_nodes() {
    if !require_root() {
        return;
    }
    let (lab, client_pod, server_pod) = common::client_server_lab(true);
    let apps = PyApps::new(&lab).expect("python test apps");
    let server = apps
        .grpc_server(&server_pod, 50051)
        .expect("grpc_server.py");
    let calls = [
        GrpcCall::say("hi"),
        GrpcCall::say("nope").with_code(5),
        GrpcCall::count(3, 20).with_code(10),
    ];
    for opts in [
        GrpcOptions::default(),
        GrpcOptions {
            slow_start: Duration::from_millis(50),
            ..Default::default()
        },
    ] {
        let run = apps
            .grpc_client(&client_pod, server.addr, &calls, &opts)
            .expect("grpc_client.py");
        let codes: Vec<(&str, usize)> = run
            .calls
            .iter()
            .map(|c| (c.code.as_str(), c.replies.len()))
            .collect();
        assert_eq!(
            codes,
            [("OK", 1), ("NOT_FOUND", 0), ("ABORTED", 3)],
            "{opts:?}"
        );
        let mut peers = Vec::new();
        for call in &run.calls {
            let mut spans: Vec<_> = run
                .spans
                .iter()
                .filter(|s| s.trace_id == call.trace_id)
                .cloned()
                .collect();
            spans.extend(
                server
                    .wait_for_trace(&call.trace_id, 1, APP_SPANS)
                    .expect("server span"),
            );
            let views = app_views(&spans);
            let chain = linear_chain(&views).expect("one chain");
            expect_roles(
                &chain,
                &["app:grpc-client Client", "app:grpc-server Server"],
            )
            .expect("roles");
            check_nesting(&views, NEST_TOLERANCE_NS).expect("nesting");
            assert_eq!(chain[0].span_id, call.span_id);
            let server_span = spans
                .iter()
                .find(|s| s.span_id == chain[1].span_id)
                .expect("server span");
            assert_eq!(
                server_span.name,
                format!("/hoptrace.test.Echo/{}", call.method)
            );
            assert_eq!(
                server_span.attr("rpc.grpc.status_code"),
                Some(call.code_value.to_string())
            );
            let sent = call
                .sent_metadata
                .iter()
                .find(|(k, _)| k == "traceparent")
                .map(|(_, v)| v.as_str());
            for r in &call.replies {
                assert_eq!(r.metadata("traceparent"), sent, "{r:?}");
                assert_eq!(r.parent_span_id, call.span_id);
                assert!(
                    r.peer.starts_with(&format!("ipv4:{}:", client_pod.ipv4)),
                    "{r:?}"
                );
                assert!(r
                    .metadata("user-agent")
                    .is_some_and(|ua| ua.starts_with("hoptrace-grpc-client/1.0 ")));
                peers.push(r.peer.clone());
            }
        }
        peers.dedup();
        assert_eq!(peers.len(), 1, "one connection for all calls: {peers:?}");
    }
}

/// The plain apps themselves, without agents: each web calls the backend as asked
/// and sends no trace header (so whatever context backend.py sees in the other
/// tests was put there by the agent).
#[test]
fn plain_apps_forward_no_header() {
    if !require_root() {
        return;
    }
    let mut lab = hoptrace_tests::Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    lab.add_node("node-2").expect("node-2");
    let client = lab.add_pod("node-1", "client").expect("client pod");
    let backend_pod = lab.add_pod("node-2", "backend").expect("backend pod");
    let py = hoptrace_tests::PyApps::new(&lab).expect("python test apps");
    let plain = hoptrace_tests::plainapp::PlainApps::new(&lab).expect("plain apps");
    let backend = py.backend(&backend_pod, 8080).expect("backend.py");
    for (i, kind) in [WebKind::Threaded, WebKind::JavaPool, WebKind::NodeLoop]
        .into_iter()
        .enumerate()
    {
        let pod = lab.add_pod("node-1", &format!("web{i}")).expect("web pod");
        let web = plain
            .web(kind, &pod, 8080, &backend.url(""))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let run = plain
            .load(
                &client,
                &web,
                &LoadOptions {
                    count: 8,
                    concurrency: 4,
                    calls: 2,
                    delay_ms: 20,
                    prefix: format!("{}-", kind.name()),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e:#}\n{}", web.log()));
        for req in &run.requests {
            assert_eq!(req.status, 200, "{}: {req:?}\n{}", kind.name(), web.log());
            let answer = req.answer().expect("web answer");
            assert_eq!(
                answer.header("traceparent"),
                Some(format!("00-{}-{}-01", req.trace_id, req.span_id).as_str()),
                "{}: the web got the client's context as sent",
                kind.name()
            );
            let paths: Vec<&str> = answer.calls.iter().map(|c| c.path.as_str()).collect();
            let want: Vec<String> = (0..2).map(|i| format!("/echo/{}/{i}", req.tag)).collect();
            assert_eq!(paths, want, "{}", kind.name());
            for call in &answer.calls {
                let seen = call.backend().expect("backend answer");
                assert_eq!(seen.path, call.path);
                for (name, _) in &seen.headers {
                    let name = name.to_ascii_lowercase();
                    assert!(
                        name != "traceparent"
                            && name != "tracestate"
                            && name != "b3"
                            && !name.starts_with("x-b3-"),
                        "{} sent {name} to the backend: {:?}",
                        kind.name(),
                        seen.headers
                    );
                }
            }
        }
    }
}
