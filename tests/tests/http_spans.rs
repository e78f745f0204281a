//! The agent's HTTP spans (DESIGN §3.3–3.5), checked end to end with the
//! instrumented Python apps and a real OTLP/gRPC receiver:
//! client (node-1) → web (node-1) → backend (node-2), one agent per node,
//! both exporting to the receiver.
//!
//! Contract: per HTTP request per hop four spans, outbound SERVER → outbound
//! CLIENT → inbound SERVER → inbound CLIENT, chained between the caller's
//! CLIENT span and the callee's SERVER span; each forwarded trace header
//! carries the proxy span as parent, in the format the request came with; no
//! context or not sampled: no spans; 5xx marks the spans ERROR.

mod common;

use common::pychain::*;
use hoptrace_tests::hops::{hops, HopSpan};
use hoptrace_tests::otlp::{summarize, ReceivedSpan, SpanKind, StatusCode};
use hoptrace_tests::pyapp::{end_to_end, AppAnswer, ClientRequest, CLIENT_USER_AGENT};
use hoptrace_tests::traces::{check_nesting, expect_roles, linear_chain, render, views, SpanView};
use hoptrace_tests::{
    require_root, Agent, ClientContext, ClientOptions, OtlpReceiver, Pod, Propagation,
    ReceiverOptions, TlsMode, LAB_NAMESPACE,
};

/// Headers that carry trace context (compared separately from the rest).
const CONTEXT_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// The chain lab plus a receiver and one agent per node exporting to it.
/// Drop order: agents, receiver, apps, lab.
struct Traced {
    _agent1: Agent,
    _agent2: Agent,
    otlp: OtlpReceiver,
    chain: ChainLab,
}

fn traced(propagation: Propagation, receiver: ReceiverOptions, extra: &[&str]) -> Traced {
    let chain = chain_lab(propagation);
    let otlp = OtlpReceiver::start(receiver).expect("OTLP receiver");
    let agent1 = agent_with_otlp(&chain.lab, "node-1", &otlp, extra);
    let agent2 = agent_with_otlp(&chain.lab, "node-2", &otlp, extra);
    Traced {
        _agent1: agent1,
        _agent2: agent2,
        otlp,
        chain,
    }
}

/// The four expected roles of one hop from `client` to `server`.
fn hop(client: &str, server: &str) -> [String; 4] {
    [
        format!("proxy:outbound:{client} Server"),
        format!("proxy:outbound:{client} Client"),
        format!("proxy:inbound:{server} Server"),
        format!("proxy:inbound:{server} Client"),
    ]
}

/// What every proxy span of one hop must carry.
struct HopExpect<'a> {
    client: &'a Pod,
    server: &'a Pod,
    path: &'a str,
    user_agent: UserAgent<'a>,
    status: u16,
}

enum UserAgent<'a> {
    Exactly(&'a str),
    StartsWith(&'a str),
}

/// Checks attributes and resources of the four spans of one hop (in chain order).
fn check_hop(spans: &[&ReceivedSpan], want: &HopExpect<'_>) {
    assert_eq!(spans.len(), 4);
    let all = spans.iter().map(|s| (*s).clone()).collect::<Vec<_>>();
    let ctx = || format!("\nhop spans:\n{}", summarize(&all));
    for (i, s) in spans.iter().enumerate() {
        let (direction, pod) = if i < 2 {
            ("outbound", want.client)
        } else {
            ("inbound", want.server)
        };
        let attr = |k: &str| s.attr(k).map(str::to_owned);
        let label = format!("{direction} {:?} span", s.kind);
        assert_eq!(
            attr("hoptrace.direction").as_deref(),
            Some(direction),
            "{label}{}",
            ctx()
        );
        assert_eq!(
            attr("http.request.method").as_deref(),
            Some("GET"),
            "{label}{}",
            ctx()
        );
        assert_eq!(
            attr("url.path").as_deref(),
            Some(want.path),
            "{label}: url.path (no query){}",
            ctx()
        );
        assert_eq!(
            attr("url.scheme").as_deref(),
            Some("http"),
            "{label}{}",
            ctx()
        );
        assert_eq!(
            attr("server.address"),
            Some(want.server.ipv4.to_string()),
            "{label}: server.address{}",
            ctx()
        );
        assert_eq!(
            attr("server.port"),
            Some(APP_PORT.to_string()),
            "{label}: server.port{}",
            ctx()
        );
        assert_eq!(
            attr("client.address"),
            Some(want.client.ipv4.to_string()),
            "{label}: client.address{}",
            ctx()
        );
        assert_eq!(
            attr("network.protocol.version").as_deref(),
            Some("1.1"),
            "{label}{}",
            ctx()
        );
        let ua = attr("user_agent.original").unwrap_or_default();
        match want.user_agent {
            UserAgent::Exactly(u) => assert_eq!(ua, u, "{label}: user_agent.original{}", ctx()),
            UserAgent::StartsWith(u) => {
                assert!(
                    ua.starts_with(u),
                    "{label}: user_agent.original {ua:?}, want {u}*{}",
                    ctx()
                )
            }
        }
        assert_eq!(
            attr("http.response.status_code"),
            Some(want.status.to_string()),
            "{label}: http.response.status_code{}",
            ctx()
        );
        if want.status < 400 {
            assert_ne!(s.status_code, StatusCode::Error, "{label}: status{}", ctx());
        }
        assert!(
            s.res("service.name").is_some_and(|v| !v.is_empty()),
            "{label}: resource service.name{}",
            ctx()
        );
        assert_eq!(
            s.res("k8s.pod.name"),
            Some(pod.name.as_str()),
            "{label}: resource k8s.pod.name{}",
            ctx()
        );
        assert_eq!(
            s.res("k8s.namespace.name"),
            Some(LAB_NAMESPACE),
            "{label}: resource k8s.namespace.name{}",
            ctx()
        );
        assert_eq!(
            s.res("k8s.node.name"),
            Some(pod.node.as_str()),
            "{label}: resource k8s.node.name{}",
            ctx()
        );
    }
}

/// The proxy spans on `chain` (app and proxy views in chain order), by span id.
fn proxy_in<'a>(
    proxy: &'a [ReceivedSpan],
    chain: &[SpanView],
    range: std::ops::Range<usize>,
) -> Vec<&'a ReceivedSpan> {
    chain[range]
        .iter()
        .map(|v| {
            proxy
                .iter()
                .find(|s| s.span_id == v.span_id)
                .unwrap_or_else(|| panic!("{} is not a proxy span", v.role()))
        })
        .collect()
}

/// Asserts that `received` carries the context of trace `tid` with parent
/// `parent` in the `propagation` format, and no other format was added.
/// For tracecontext, the flags must equal `flags` when given.
fn assert_context(
    who: &str,
    received: &AppAnswer,
    propagation: Propagation,
    tid: &str,
    parent: &str,
    flags: Option<&str>,
) {
    let h = |n: &str| received.header(n);
    match propagation {
        Propagation::TraceContext => {
            let tp = h("traceparent")
                .unwrap_or_else(|| panic!("{who}: no traceparent: {:?}", received.headers));
            let (v, t, p, f) = traceparent(tp);
            assert_eq!(
                (v.as_str(), t.as_str()),
                ("00", tid),
                "{who}: traceparent {tp}"
            );
            assert_eq!(
                p, parent,
                "{who}: traceparent {tp} must carry the proxy's inbound CLIENT span as parent"
            );
            match flags {
                Some(flags) => assert_eq!(f, flags, "{who}: trace flags must be kept as they came"),
                None => assert_eq!(
                    u8::from_str_radix(&f, 16).expect("hex flags") & 1,
                    1,
                    "{who}: sampled"
                ),
            }
            assert_eq!(h("b3"), None, "{who}: b3 added");
            assert_eq!(h("x-b3-traceid"), None, "{who}: x-b3-traceid added");
        }
        Propagation::B3Multi => {
            assert_eq!(h("x-b3-traceid"), Some(tid), "{who}: x-b3-traceid");
            assert_eq!(
                h("x-b3-spanid"),
                Some(parent),
                "{who}: x-b3-spanid must be the proxy's inbound CLIENT span"
            );
            assert_eq!(h("x-b3-sampled"), Some("1"), "{who}: x-b3-sampled");
            assert_eq!(
                h("traceparent"),
                None,
                "{who}: traceparent added to a B3 request"
            );
            assert_eq!(h("b3"), None, "{who}: b3 added");
        }
        Propagation::B3Single => {
            let b3 =
                h("b3").unwrap_or_else(|| panic!("{who}: no b3 header: {:?}", received.headers));
            let (t, s, sampled) = b3_single(b3);
            assert_eq!(t, tid, "{who}: b3 {b3}");
            assert_eq!(
                s, parent,
                "{who}: b3 {b3} must carry the proxy's inbound CLIENT span"
            );
            assert_eq!(sampled.as_deref(), Some("1"), "{who}: b3 {b3} sampled flag");
            assert_eq!(
                h("traceparent"),
                None,
                "{who}: traceparent added to a B3 request"
            );
            assert_eq!(h("x-b3-traceid"), None, "{who}: x-b3-traceid added");
        }
    }
}

/// client → web → backend through both agents: 8 proxy spans and the 4 app
/// spans in one trace, one parent chain, nested timings, full attributes.
fn check_chain(propagation: Propagation) {
    let t = traced(propagation, ReceiverOptions::default(), &[]);
    let (client, web, backend) = (&t.chain.client_pod, &t.chain.web_pod, &t.chain.backend_pod);
    let mut headers = vec![("x-hoptrace-test".to_owned(), "keep me".to_owned())];
    if propagation == Propagation::TraceContext {
        headers.push(("tracestate".into(), "hop=1,vendor=x".into()));
    }
    let opts = ClientOptions {
        headers,
        ..Default::default()
    };
    let run = t
        .chain
        .apps
        .client(client, &t.chain.web.url("/chain?q=1"), &opts)
        .expect("client.py");
    let req = &run.requests[0];
    assert_eq!(req.status, 200, "{req:?}");
    let tid = req.trace_id().expect("trace id").to_owned();
    let web_got = req.answer().expect("web answer");
    let backend_got = web_got.backend_answer().expect("backend answer");

    let proxy = proxy_spans(&t.otlp, &tid, 8);
    let apps = app_spans(&t.chain, &run.spans, req, true);
    assert_eq!(apps.len(), 4, "app spans: {apps:#?}");
    let all = views(&apps, &proxy);
    let chain = linear_chain(&all).unwrap_or_else(|e| panic!("{e:#}"));
    let mut want: Vec<String> = vec!["app:client Client".into()];
    want.extend(hop("client", "web"));
    want.extend(["app:web Server".into(), "app:web Client".into()]);
    want.extend(hop("web", "backend"));
    want.push("app:backend Server".into());
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    expect_roles(&chain, &want).unwrap_or_else(|e| panic!("{e:#}"));
    check_nesting(&all, NEST_TOLERANCE_NS).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{propagation:?} trace:\n{}", render(&chain));
    // The shared four-spans-per-hop check (also run on Jaeger's data by `cargo xtask kind`).
    let mut hop_spans: Vec<HopSpan> = apps.iter().map(HopSpan::from).collect();
    hop_spans.extend(proxy.iter().map(HopSpan::from));
    let found = hops(&hop_spans).unwrap_or_else(|e| panic!("{e:#}"));
    let path: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(path, ["lab/client -> lab/web", "lab/web -> lab/backend"]);
    assert_eq!(found[0].spans[0], chain[1].span_id);
    assert_eq!(found[1].spans[3], chain[10].span_id);
    assert_eq!(
        chain[0].span_id,
        req.span_id.clone().expect("client span id")
    );
    assert_eq!(chain[0].parent_span_id, "", "the client span is the root");

    check_hop(
        &proxy_in(&proxy, &chain, 1..5),
        &HopExpect {
            client,
            server: web,
            path: "/chain",
            user_agent: UserAgent::Exactly(CLIENT_USER_AGENT),
            status: 200,
        },
    );
    check_hop(
        &proxy_in(&proxy, &chain, 7..11),
        &HopExpect {
            client: web,
            server: backend,
            path: "/chain",
            user_agent: UserAgent::StartsWith("python-requests/"),
            status: 200,
        },
    );

    // What the apps received: the context rewritten to the inbound CLIENT
    // spans, every other header as sent, the caller's own address.
    let sent_flags = req.sent_header("traceparent").map(|tp| traceparent(tp).3);
    assert_context(
        "web",
        &web_got,
        propagation,
        &tid,
        &chain[4].span_id,
        sent_flags.as_deref(),
    );
    assert_context(
        "backend",
        &backend_got,
        propagation,
        &tid,
        &chain[10].span_id,
        None,
    );
    assert_eq!(web_got.parent_span_id, chain[4].span_id);
    assert_eq!(backend_got.parent_span_id, chain[10].span_id);
    if propagation == Propagation::TraceContext {
        assert_eq!(
            web_got.header("tracestate"),
            Some("hop=1,vendor=x"),
            "tracestate forwarded untouched"
        );
    }
    assert_eq!(
        end_to_end(&web_got.headers, CONTEXT_HEADERS),
        end_to_end(&req.sent_headers, CONTEXT_HEADERS),
        "web must receive every non-context header the client sent, unchanged"
    );
    assert_eq!(
        web_got.peer_ip().expect("peer").to_string(),
        client.ipv4.to_string()
    );
    assert_eq!(
        backend_got.peer_ip().expect("peer").to_string(),
        web.ipv4.to_string()
    );

    // Nothing else arrived for this trace meanwhile.
    assert_eq!(
        t.otlp.trace(&tid).len(),
        8,
        "{}",
        summarize(&t.otlp.trace(&tid))
    );
}

#[test]
fn tracecontext_chain_has_four_spans_per_hop() {
    if !require_root() {
        return;
    }
    check_chain(Propagation::TraceContext);
}

#[test]
fn b3_multi_chain_has_four_spans_per_hop() {
    if !require_root() {
        return;
    }
    check_chain(Propagation::B3Multi);
}

#[test]
fn b3_single_chain_has_four_spans_per_hop() {
    if !require_root() {
        return;
    }
    check_chain(Propagation::B3Single);
}

/// A sampled request client → backend whose 4 proxy spans must arrive: proof
/// that the exporter works and has flushed what came before it.
fn control_request(t: &Traced) -> String {
    let run = t
        .chain
        .apps
        .client(
            &t.chain.client_pod,
            &t.chain.backend.url("/control"),
            &ClientOptions::default(),
        )
        .expect("client.py (control)");
    let tid = run.requests[0].trace_id().expect("trace id").to_owned();
    assert_eq!(run.requests[0].status, 200);
    proxy_spans(&t.otlp, &tid, 4);
    tid
}

#[test]
fn no_context_is_forwarded_untouched_without_spans() {
    if !require_root() {
        return;
    }
    let t = traced(Propagation::TraceContext, ReceiverOptions::default(), &[]);
    let opts = ClientOptions {
        context: ClientContext::None,
        count: 3,
        headers: vec![("x-hoptrace-test".into(), "keep me".into())],
        ..Default::default()
    };
    let run = t
        .chain
        .apps
        .client(&t.chain.client_pod, &t.chain.backend.url("/plain"), &opts)
        .expect("client.py --no-context");
    for req in &run.requests {
        assert_eq!(req.status, 200, "{req:?}");
        let got = req.answer().expect("backend answer");
        assert_eq!(
            end_to_end(&got.headers, &[]),
            end_to_end(&req.sent_headers, &[]),
            "a request without context must reach the backend with exactly the headers sent"
        );
        assert_eq!(got.header("traceparent"), None);
        assert_eq!(got.header("b3"), None);
        assert_eq!(got.header("x-b3-traceid"), None);
    }
    let control = control_request(&t);
    let spans = t.otlp.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == control),
        "spans exported for requests without context:\n{}",
        summarize(&spans)
    );
}

#[test]
fn unsampled_context_is_rewritten_without_spans() {
    if !require_root() {
        return;
    }
    let t = traced(Propagation::TraceContext, ReceiverOptions::default(), &[]);
    let opts = ClientOptions {
        context: ClientContext::Unsampled,
        count: 2,
        ..Default::default()
    };
    let run = t
        .chain
        .apps
        .client(
            &t.chain.client_pod,
            &t.chain.backend.url("/unsampled"),
            &opts,
        )
        .expect("client.py --unsampled");
    let mut unsampled = Vec::new();
    for req in &run.requests {
        assert_eq!(req.status, 200, "{req:?}");
        let sent = req.sent_header("traceparent").expect("traceparent sent");
        let (_, sent_tid, sent_parent, sent_flags) = traceparent(sent);
        assert_eq!(
            u8::from_str_radix(&sent_flags, 16).expect("flags") & 1,
            0,
            "client sent {sent}"
        );
        let got = req.answer().expect("backend answer");
        let tp = got
            .header("traceparent")
            .expect("the backend got a traceparent");
        let (version, tid, parent, flags) = traceparent(tp);
        assert_eq!(
            (version.as_str(), tid.as_str()),
            ("00", sent_tid.as_str()),
            "got {tp}, sent {sent}"
        );
        assert_ne!(
            parent, sent_parent,
            "the proxy must rewrite the parent id of an unsampled request ({tp})"
        );
        assert!(
            parent.len() == 16
                && parent.chars().all(|c| c.is_ascii_hexdigit())
                && parent != "0000000000000000",
            "bad rewritten parent id in {tp}"
        );
        assert_eq!(flags, sent_flags, "trace flags must be kept as they came");
        assert!(!got.sampled);
        unsampled.push(sent_tid);
    }
    let control = control_request(&t);
    let spans = t.otlp.spans();
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == control && !unsampled.contains(&s.trace_id)),
        "spans exported for unsampled requests:\n{}",
        summarize(&spans)
    );
}

/// One request client → backend `path`; returns the client request and the
/// 4 proxy spans in chain order (after checking the chain).
fn one_hop(t: &Traced, path: &str) -> (ClientRequest, Vec<ReceivedSpan>) {
    let run = t
        .chain
        .apps
        .client(
            &t.chain.client_pod,
            &t.chain.backend.url(path),
            &ClientOptions::default(),
        )
        .expect("client.py");
    let req = run.requests[0].clone();
    let tid = req.trace_id().expect("trace id").to_owned();
    let proxy = proxy_spans(&t.otlp, &tid, 4);
    let apps = app_spans(&t.chain, &run.spans, &req, false);
    let all = views(&apps, &proxy);
    let chain = linear_chain(&all).unwrap_or_else(|e| panic!("{e:#}"));
    let mut want: Vec<String> = vec!["app:client Client".into()];
    want.extend(hop("client", "backend"));
    want.push("app:backend Server".into());
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    expect_roles(&chain, &want).unwrap_or_else(|e| panic!("{e:#}"));
    check_nesting(&all, NEST_TOLERANCE_NS).unwrap_or_else(|e| panic!("{e:#}"));
    let ordered = proxy_in(&proxy, &chain, 1..5)
        .into_iter()
        .cloned()
        .collect();
    (req, ordered)
}

#[test]
fn server_errors_mark_spans_error() {
    if !require_root() {
        return;
    }
    let t = traced(Propagation::TraceContext, ReceiverOptions::default(), &[]);
    let (req, spans) = one_hop(&t, "/status/503");
    assert_eq!(req.status, 503);
    let refs: Vec<&ReceivedSpan> = spans.iter().collect();
    check_hop(
        &refs,
        &HopExpect {
            client: &t.chain.client_pod,
            server: &t.chain.backend_pod,
            path: "/status/503",
            user_agent: UserAgent::Exactly(CLIENT_USER_AGENT),
            status: 503,
        },
    );
    let [out_server, out_client, in_server, in_client] =
        [&spans[0], &spans[1], &spans[2], &spans[3]];
    let all = || summarize(&spans);
    assert_eq!(
        in_server.status_code,
        StatusCode::Error,
        "inbound SERVER span of a 503:\n{}",
        all()
    );
    assert_eq!(
        out_client.status_code,
        StatusCode::Error,
        "outbound CLIENT span of a 503:\n{}",
        all()
    );
    // DESIGN §3.4: ERROR for 5xx on server spans, 4xx/5xx on client spans.
    assert_eq!(
        out_server.status_code,
        StatusCode::Error,
        "outbound SERVER span of a 503:\n{}",
        all()
    );
    assert_eq!(
        in_client.status_code,
        StatusCode::Error,
        "inbound CLIENT span of a 503:\n{}",
        all()
    );

    // A 4xx is the client's error: client spans ERROR, server spans not.
    let (req, spans) = one_hop(&t, "/status/404");
    assert_eq!(req.status, 404);
    let all = || summarize(&spans);
    for s in &spans {
        assert_eq!(
            s.attr("http.response.status_code"),
            Some("404"),
            "{}",
            all()
        );
        match s.kind {
            SpanKind::Client => assert_eq!(
                s.status_code,
                StatusCode::Error,
                "CLIENT span of a 404:\n{}",
                all()
            ),
            _ => assert_ne!(
                s.status_code,
                StatusCode::Error,
                "SERVER span of a 404:\n{}",
                all()
            ),
        }
    }
}

/// Export over mutual TLS with a custom header (`--otlp-header`): spans of
/// both agents arrive and the header is on the export requests.
#[test]
fn export_over_mtls_with_custom_header() {
    if !require_root() {
        return;
    }
    let t = traced(
        Propagation::TraceContext,
        ReceiverOptions::tls(TlsMode::MutualTls),
        &["--otlp-header", "x-hoptrace-tenant=lab-42"],
    );
    let (_, spans) = one_hop(&t, "/mtls");
    assert_eq!(spans[0].res("k8s.node.name"), Some("node-1"));
    assert_eq!(spans[3].res("k8s.node.name"), Some("node-2"));
    let headers = t.otlp.received_headers();
    assert_eq!(
        headers.get("x-hoptrace-tenant").map(String::as_str),
        Some("lab-42"),
        "export request metadata: {headers:?}"
    );
}
