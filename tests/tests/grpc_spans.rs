//! The agent's gRPC spans (DESIGN §3.4), end to end with a real gRPC client
//! and server (grpcio; the server instrumented with
//! opentelemetry-instrumentation-grpc) and a real OTLP/gRPC receiver:
//! grpc_client.py in `client` (node-1) → grpc_server.py in `server` (node-2),
//! one agent per node, so every call crosses an outbound and an inbound leg.
//!
//! Contract: per call (one HTTP/2 stream) four proxy spans, outbound SERVER →
//! outbound CLIENT → inbound SERVER → inbound CLIENT, chained between the
//! caller's CLIENT span and the server's SERVER span, named
//! `package.Service/Method`, with `rpc.system`, `rpc.service`, `rpc.method`
//! and `rpc.grpc.status_code` (from the trailers, or from the headers of a
//! trailers-only response); status ERROR for a non-OK gRPC status; a stream's
//! spans last until its trailers; concurrent calls multiplexed on one
//! connection each get their own spans.

mod common;

use common::pychain::{agent_with_otlp, proxy_spans, APP_SPANS, NEST_TOLERANCE_NS};
use common::{accepted, assert_counted, client_server_lab};
use hoptrace_tests::otlp::{summarize, ReceivedSpan, StatusCode};
use hoptrace_tests::pyapp::{AppSpan, GrpcCallOutcome, GrpcRun, PyServer};
use hoptrace_tests::traces::{check_nesting, expect_roles, linear_chain, render, views, SpanView};
use hoptrace_tests::{
    require_root, Agent, GrpcCall, GrpcOptions, Lab, OtlpReceiver, Pod, PyApps, ReceiverOptions,
    LAB_NAMESPACE,
};
use std::collections::HashSet;
use std::time::Duration;

/// Port of grpc_server.py.
const GRPC_PORT: u16 = 50051;
/// The test service (tests/apps/hoptrace_echo.proto).
const SERVICE: &str = "hoptrace.test.Echo";
/// grpc_client.py's `grpc.primary_user_agent` (gRPC appends its own).
const USER_AGENT: &str = "hoptrace-grpc-client/1.0 ";

/// The lab, the gRPC server, the receiver and one agent per node exporting
/// to it. Fields drop in order: agents, receiver, server, apps, lab.
struct GrpcLab {
    agent1: Agent,
    agent2: Agent,
    otlp: OtlpReceiver,
    server: PyServer,
    apps: PyApps,
    client_pod: Pod,
    server_pod: Pod,
    _lab: Lab,
}

fn grpc_lab() -> GrpcLab {
    let (lab, client_pod, server_pod) = client_server_lab(true);
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let server = apps
        .grpc_server(&server_pod, GRPC_PORT)
        .expect("grpc_server.py (run `cargo xtask setup`)");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("OTLP receiver");
    let agent1 = agent_with_otlp(&lab, "node-1", &otlp, &[]);
    let agent2 = agent_with_otlp(&lab, "node-2", &otlp, &[]);
    GrpcLab {
        agent1,
        agent2,
        otlp,
        server,
        apps,
        client_pod,
        server_pod,
        _lab: lab,
    }
}

impl GrpcLab {
    fn run(&self, calls: &[GrpcCall], opts: GrpcOptions) -> GrpcRun {
        self.apps
            .grpc_client(&self.client_pod, self.server.addr, calls, &opts)
            .expect("grpc_client.py")
    }
}

/// One call's trace, checked: the chain client → 4 proxy spans → server.
struct CallTrace {
    /// The six spans in chain order.
    chain: Vec<SpanView>,
    /// The proxy spans in chain order: outbound SERVER, outbound CLIENT,
    /// inbound SERVER, inbound CLIENT.
    proxy: Vec<ReceivedSpan>,
    /// grpc_server.py's SERVER span.
    app_server: AppSpan,
}

/// Checks everything every call must satisfy: exactly four proxy spans in
/// the call's own trace, the exact parent chain, nested timings, the rpc and
/// HTTP attributes, the resources, the span status for the call's gRPC
/// status, and that the server got the context rewritten to the inbound
/// CLIENT span.
fn check_call(t: &GrpcLab, run: &GrpcRun, call: &GrpcCallOutcome) -> CallTrace {
    let tid = call.trace_id.as_str();
    assert!(call.sampled, "{call:?}");
    let proxy = proxy_spans(&t.otlp, tid, 4);
    let mut apps: Vec<AppSpan> = run
        .spans
        .iter()
        .filter(|s| s.trace_id == tid)
        .cloned()
        .collect();
    assert_eq!(apps.len(), 1, "one client span per call: {apps:#?}");
    let server_spans = t
        .server
        .wait_for_trace(tid, 1, APP_SPANS)
        .expect("grpc_server.py span");
    assert_eq!(server_spans.len(), 1, "one server span per call");
    let app_server = server_spans[0].clone();
    apps.extend(server_spans);

    let all = views(&apps, &proxy);
    let chain = linear_chain(&all).unwrap_or_else(|e| panic!("{e:#}"));
    expect_roles(
        &chain,
        &[
            "app:grpc-client Client",
            "proxy:outbound:client Server",
            "proxy:outbound:client Client",
            "proxy:inbound:server Server",
            "proxy:inbound:server Client",
            "app:grpc-server Server",
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    check_nesting(&all, NEST_TOLERANCE_NS).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(chain[0].span_id, call.span_id, "{}", render(&chain));
    assert_eq!(chain[0].parent_span_id, "", "the client span is the root");
    let proxy: Vec<ReceivedSpan> = chain[1..5]
        .iter()
        .map(|v| {
            proxy
                .iter()
                .find(|s| s.span_id == v.span_id)
                .cloned()
                .unwrap_or_else(|| panic!("{} is not a proxy span", v.role()))
        })
        .collect();

    let path = format!("/{SERVICE}/{}", call.method);
    let ctx = || format!("\n{}\n{}", render(&chain), summarize(&proxy));
    for (i, s) in proxy.iter().enumerate() {
        let (direction, pod) = if i < 2 {
            ("outbound", &t.client_pod)
        } else {
            ("inbound", &t.server_pod)
        };
        let label = format!("{direction} {:?} span of {} ({})", s.kind, path, call.code);
        let want = [
            ("hoptrace.direction", direction.to_owned()),
            ("rpc.system", "grpc".to_owned()),
            ("rpc.service", SERVICE.to_owned()),
            ("rpc.method", call.method.clone()),
            ("rpc.grpc.status_code", call.code_value.to_string()),
            ("http.request.method", "POST".to_owned()),
            ("url.path", path.clone()),
            ("url.scheme", "http".to_owned()),
            ("network.protocol.version", "2".to_owned()),
            ("http.response.status_code", "200".to_owned()),
            ("server.address", t.server_pod.ipv4.to_string()),
            ("server.port", GRPC_PORT.to_string()),
            ("client.address", t.client_pod.ipv4.to_string()),
        ];
        for (key, value) in want {
            assert_eq!(s.attr(key), Some(value.as_str()), "{label}: {key}{}", ctx());
        }
        assert_eq!(
            s.name,
            format!("{SERVICE}/{}", call.method),
            "{label}{}",
            ctx()
        );
        let ua = s.attr("user_agent.original").unwrap_or_default();
        assert!(
            ua.starts_with(USER_AGENT),
            "{label}: user_agent.original {ua:?}{}",
            ctx()
        );
        let resources = [
            ("k8s.pod.name", pod.name.as_str()),
            ("k8s.namespace.name", LAB_NAMESPACE),
            ("k8s.node.name", pod.node.as_str()),
        ];
        for (key, value) in resources {
            assert_eq!(s.res(key), Some(value), "{label}: resource {key}{}", ctx());
        }
        if call.code_value == 0 {
            assert_ne!(s.status_code, StatusCode::Error, "{label}{}", ctx());
        } else {
            assert_eq!(s.status_code, StatusCode::Error, "{label}{}", ctx());
            let want = format!("gRPC status {}", call.code_value);
            assert!(
                s.status_message.contains(&want),
                "{label}: status message {:?}, want {want:?}{}",
                s.status_message,
                ctx()
            );
        }
    }

    // What the server saw: the context rewritten to the inbound CLIENT span
    // (flags as sent), in every message of the call.
    let sent = call
        .sent_metadata
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.as_str())
        .expect("traceparent sent");
    let flags = sent.rsplit('-').next().unwrap_or_default();
    let want_tp = format!("00-{tid}-{}-{flags}", chain[4].span_id);
    for r in &call.replies {
        assert_eq!(r.trace_id, tid, "{r:?}");
        assert_eq!(r.span_id, app_server.span_id, "{r:?}");
        assert_eq!(r.parent_span_id, chain[4].span_id, "{r:?}");
        assert_eq!(r.metadata("traceparent"), Some(want_tp.as_str()), "{r:?}");
    }
    eprintln!("{path} {}:\n{}", call.code, render(&chain));
    CallTrace {
        chain,
        proxy,
        app_server,
    }
}

/// Unary calls: OK, and error statuses. grpcio answers an error without a
/// message as a trailers-only response (grpc-status in the HEADERS frame that
/// ends the stream): a complete response, whose status must reach the spans.
/// The channel connects and then idles for longer than the agent's protocol
/// detection timeout before the first call, and the gRPC server sends its
/// SETTINGS as soon as it accepts: neither may make a leg relay the
/// connection opaquely.
#[test]
fn unary_calls_have_four_spans_with_rpc_attributes() {
    if !require_root() {
        return;
    }
    let t = grpc_lab();
    let run = t.run(
        &[
            GrpcCall::say("hello"),
            GrpcCall::say("missing").with_code(5),
            GrpcCall::say("broken").with_code(13),
        ],
        GrpcOptions {
            idle: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let [ok, not_found, internal] = [&run.calls[0], &run.calls[1], &run.calls[2]];
    assert_eq!((ok.code.as_str(), ok.replies.len()), ("OK", 1), "{ok:?}");
    assert_eq!(ok.replies[0].text, "hello");
    assert_eq!(not_found.code, "NOT_FOUND", "{not_found:?}");
    assert!(not_found.replies.is_empty());
    assert_eq!(internal.code, "INTERNAL", "{internal:?}");
    for call in &run.calls {
        check_call(&t, &run, call);
    }
    let tids: HashSet<&str> = run.calls.iter().map(|c| c.trace_id.as_str()).collect();
    assert_eq!(tids.len(), 3, "each call is its own trace");
}

/// The gRPC server sends its SETTINGS as soon as it accepts, here well before
/// the client's preface (held back by a relay in the client): that is not a
/// server-first protocol, so the legs must still detect HTTP/2 from the
/// client's bytes instead of relaying the connection opaquely.
#[test]
fn server_settings_before_the_client_preface_still_traced() {
    if !require_root() {
        return;
    }
    let t = grpc_lab();
    let run = t.run(
        &[GrpcCall::say("late"), GrpcCall::count(2, 0)],
        GrpcOptions {
            slow_start: Duration::from_millis(150),
            ..Default::default()
        },
    );
    for call in &run.calls {
        assert_eq!(call.code, "OK", "{call:?}");
        check_call(&t, &run, call);
    }
}

/// Server streaming: every message arrives, and the spans last until the
/// stream's trailers (not just its headers) — for an OK stream and for one
/// whose error status comes in the trailers after the messages.
#[test]
fn server_streaming_spans_cover_the_whole_stream() {
    if !require_root() {
        return;
    }
    const N: u32 = 5;
    const INTERVAL_MS: u32 = 100;
    let t = grpc_lab();
    let run = t.run(
        &[
            GrpcCall::count(N, INTERVAL_MS),
            GrpcCall::count(3, INTERVAL_MS).with_code(10),
        ],
        GrpcOptions::default(),
    );
    let [ok, aborted] = [&run.calls[0], &run.calls[1]];
    assert_eq!(ok.code, "OK", "{ok:?}");
    assert_eq!(aborted.code, "ABORTED", "{aborted:?}");
    for (call, n) in [(ok, N), (aborted, 3)] {
        let seqs: Vec<u32> = call.replies.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            (0..n).collect::<Vec<_>>(),
            "every message, in order: {call:?}"
        );
        let trace = check_call(&t, &run, call);
        // The server sends its messages INTERVAL_MS apart: a span that ended
        // at the response headers would be far shorter than the stream.
        let stream = Duration::from_millis(u64::from((n - 1) * INTERVAL_MS));
        for s in &trace.proxy {
            assert!(
                s.duration() >= stream,
                "{:?} {:?} span lasted {:?}, the stream {stream:?}:\n{}",
                s.attr("hoptrace.direction"),
                s.kind,
                s.duration(),
                render(&trace.chain)
            );
            // The server's span ends when its last message is produced, before
            // the trailers go out; every proxy span ends after the trailers.
            assert!(
                s.end_unix_nano >= trace.app_server.end_ns,
                "{:?} {:?} span ended before the server's span:\n{}",
                s.attr("hoptrace.direction"),
                s.kind,
                render(&trace.chain)
            );
        }
    }
}

/// Concurrent calls on one channel share one HTTP/2 connection (one accept
/// per leg) and overlap in time; each still gets its own four spans in its
/// own trace, with the right parents (no cross-talk between streams).
#[test]
fn concurrent_calls_on_one_connection_get_their_own_spans() {
    if !require_root() {
        return;
    }
    const CALLS: usize = 8;
    let t = grpc_lab();
    let out_before = accepted(&t.agent1, "outbound", "client");
    let in_before = accepted(&t.agent2, "inbound", "server");
    let calls: Vec<GrpcCall> = (0..CALLS)
        .map(|i| {
            if i % 2 == 0 {
                GrpcCall::say(&format!("call-{i}")).with_delay(400)
            } else {
                GrpcCall::count(3, 200)
            }
        })
        .collect();
    let run = t.run(
        &calls,
        GrpcOptions {
            concurrent: true,
            ..Default::default()
        },
    );
    for (i, call) in run.calls.iter().enumerate() {
        assert_eq!(call.code, "OK", "call {i}: {call:?}");
        if i % 2 == 0 {
            assert_eq!(call.replies.len(), 1, "call {i}");
            assert_eq!(call.replies[0].text, format!("call-{i}"));
        } else {
            assert_eq!(call.replies.len(), 3, "call {i}");
        }
    }
    let tids: HashSet<&str> = run.calls.iter().map(|c| c.trace_id.as_str()).collect();
    assert_eq!(tids.len(), CALLS, "each call is its own trace");

    // One connection: one accept on each leg, one peer address at the server.
    assert_counted(&t.agent1, "outbound", "client", out_before, 1);
    assert_counted(&t.agent2, "inbound", "server", in_before, 1);
    let peers: HashSet<&str> = run
        .calls
        .iter()
        .flat_map(|c| c.replies.iter().map(|r| r.peer.as_str()))
        .collect();
    assert_eq!(peers.len(), 1, "calls reached the server on {peers:?}");
    assert!(
        peers
            .iter()
            .all(|p| p.starts_with(&format!("ipv4:{}:", t.client_pod.ipv4))),
        "the server sees the client pod's address: {peers:?}"
    );

    let traces: Vec<CallTrace> = run.calls.iter().map(|c| check_call(&t, &run, c)).collect();
    // Really concurrent: every call's inbound SERVER span overlaps every other's.
    let inbound: Vec<&ReceivedSpan> = traces.iter().map(|tr| &tr.proxy[2]).collect();
    let last_start = inbound.iter().map(|s| s.start_unix_nano).max();
    let first_end = inbound.iter().map(|s| s.end_unix_nano).min();
    assert!(
        last_start < first_end,
        "the streams did not overlap:\n{}",
        traces
            .iter()
            .map(|tr| render(&tr.chain))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let ids: HashSet<&str> = traces
        .iter()
        .flat_map(|tr| tr.chain.iter().map(|v| v.span_id.as_str()))
        .collect();
    assert_eq!(ids.len(), CALLS * 6, "span ids are unique across calls");
}
