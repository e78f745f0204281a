//! Context propagation by the agent (issue 13), end to end: apps that forward no
//! header and use no tracing library still produce one connected trace when their
//! pod opts in with `context_propagation: auto`.
//!
//! Lab (tests/common/propchain.rs): client (node-1) → web (node-1, opted in) →
//! backend.py (node-2), one agent per node exporting to the OTLP receiver. The
//! client sends every request with its own sampled W3C trace; web calls
//! `/echo/<tag>/<i>` on the backend with no trace header.
//!
//! Contract: a context-less outbound request of an opted-in pod is linked to the
//! inbound request that caused it (the only one in flight, or the only one the
//! writing thread is serving) and gets the usual four proxy spans under that
//! request's inbound CLIENT span; otherwise it is forwarded untouched (never a
//! wrong parent). `hoptrace_propagation_total{result="linked|ambiguous|none"}`
//! counts each one; a request that carries its own context is never touched.

mod common;

use common::propchain::*;
use common::proptally::{tally, Counts, COUNTED};
use common::pychain::APP_PORT;
use common::realkube::{lab_with_control_plane, start_agent, workloads, KubePod};
use hoptrace_tests::plainapp::{LoadOptions, PlainApps, WebKind};
use hoptrace_tests::{
    assert_eventually, require_root, ClientOptions, OtlpReceiver, Propagation, PyApps,
    ReceivedSpan, ReceiverOptions,
};
use std::time::Instant;

/// Requests of the load test, each in its own trace.
const LOAD_REQUESTS: usize = 500;
/// Client threads, each with its own connection (the threaded web serves each
/// connection on its own thread): all requests are sent at once.
const LOAD_CONCURRENCY: usize = 500;

/// One request with `calls` backend calls through the plain web: the trace is
/// whole and the metric counts exactly `calls` linked.
fn whole(p: &PropLab, tag: &str, calls: usize) {
    let before = Counts::now(p);
    let run = p.load(&LoadOptions {
        calls,
        prefix: tag.into(),
        propagation: p.propagation,
        ..Default::default()
    });
    check_whole(&p.otlp, &run.requests[0], calls, p.propagation);
    assert_eventually!(
        Counts::now(p).since(&before).linked >= calls as f64,
        COUNTED,
        "linked {:?} after {calls} linked calls",
        Counts::now(p).since(&before)
    );
    let counts = Counts::now(p).since(&before);
    assert_eq!((counts.ambiguous, counts.none), (0.0, 0.0), "{counts:?}");
    assert_eq!(counts.linked, calls as f64, "{counts:?}");
}

#[test]
fn threaded_python_web_trace_is_whole() {
    if !require_root() {
        return;
    }
    let p = prop_lab(WebApp::Plain(WebKind::Threaded), true);
    whole(&p, "py", 1);
}

#[test]
fn threaded_python_web_on_the_backends_node_trace_is_whole() {
    if !require_root() {
        return;
    }
    let p = prop_lab_on(WebApp::Plain(WebKind::Threaded), true, "node-2");
    whole(&p, "py2", 2);
}

#[test]
fn b3_contexts_are_added_in_b3() {
    if !require_root() {
        return;
    }
    for propagation in [Propagation::B3Single, Propagation::B3Multi] {
        let p = prop_lab_with(
            WebApp::Plain(WebKind::Threaded),
            true,
            "node-1",
            propagation,
        );
        whole(&p, propagation.env_value(), 1);
    }
}

#[test]
fn java_thread_pool_web_trace_is_whole_with_two_calls() {
    if !require_root() {
        return;
    }
    let p = prop_lab(WebApp::Plain(WebKind::JavaPool), true);
    whole(&p, "java", 1);
    whole(&p, "javatwo", 2);
}

/// Through the plain web `kind`, one load run per (requests, concurrency,
/// `must_link`) of `phases`, on the same agents: 0 wrong parents (in [`tally`]), the
/// requests overlapped in the web, something linked when `must_link`; prints the
/// linked share of each.
fn under_load(kind: WebKind, label: &str, phases: &[(usize, usize, bool)]) {
    let p = prop_lab(WebApp::Plain(kind), true);
    for (i, &(count, concurrency, must_link)) in phases.iter().enumerate() {
        let before = Counts::now(&p);
        let start = Instant::now();
        let run = p.load(&LoadOptions {
            count,
            concurrency,
            prefix: format!("load{i}-"),
            ..Default::default()
        });
        eprintln!(
            "{label}: {count} requests at concurrency {concurrency} answered in {:.1?}",
            run.elapsed
        );
        let t = tally(&p, &run, 1, &before);
        println!(
            "{label}, {count} requests at concurrency {concurrency} \
             ({:.1?} of load, {:.1?} in all): linked {}/{} = {:.1}% (ambiguous {}, none {}); \
             {} calls made while the web served several requests (at most {}), {} of them linked",
            run.elapsed,
            start.elapsed(),
            t.linked_hops,
            t.calls,
            100.0 * t.linked_hops as f64 / t.calls as f64,
            t.counts.ambiguous,
            t.counts.none,
            t.overlapped,
            t.max_in_flight,
            t.overlapped_linked
        );
        assert!(
            t.max_in_flight > 1,
            "the requests did not overlap in the web: {t:?}"
        );
        assert!(
            !must_link || t.linked_hops > 0,
            "{label}, {count} requests at concurrency {concurrency}: nothing linked: {t:?}"
        );
    }
}

#[test]
fn threaded_web_under_load_has_no_wrong_parent() {
    if !require_root() {
        return;
    }
    under_load(
        WebKind::Threaded,
        "threaded Python web",
        &[(LOAD_REQUESTS, LOAD_CONCURRENCY, true)],
    );
}

#[test]
fn java_pool_web_under_load_has_no_wrong_parent() {
    if !require_root() {
        return;
    }
    // Fewer in flight than the pool has threads (each pool thread serves one request
    // at a time: linked by thread); then all at once (the 16 threads saturated,
    // requests queued behind busy threads: no wrong parent, whatever is linked); then
    // as at first again: the pool's threads must be trusted again after the burst.
    under_load(
        WebKind::JavaPool,
        "Java thread-pool web",
        &[
            (200, 8, true),
            (LOAD_REQUESTS, LOAD_CONCURRENCY, false),
            (200, 8, true),
        ],
    );
}

#[test]
fn event_loop_web_is_ambiguous_under_concurrency_and_linked_alone() {
    if !require_root() {
        return;
    }
    let p = prop_lab(WebApp::Plain(WebKind::NodeLoop), true);
    let before = Counts::now(&p);
    let run = p.load(&LoadOptions {
        count: 50,
        concurrency: 50,
        delay_ms: 300,
        prefix: "loop".into(),
        ..Default::default()
    });
    let t = tally(&p, &run, 1, &before);
    println!(
        "Node.js event loop, 50 requests at concurrency 50 (300 ms apart from their calls): \
         linked {}/{} (ambiguous {}, none {}); at most {} requests in flight at a call",
        t.linked_hops, t.calls, t.counts.ambiguous, t.counts.none, t.max_in_flight
    );
    assert!(
        t.counts.ambiguous > 0.0,
        "an event loop serving 50 requests at once: {t:?}"
    );

    let before = Counts::now(&p);
    let run = p.load(&LoadOptions {
        count: 10,
        prefix: "seq".into(),
        ..Default::default()
    });
    let t = tally(&p, &run, 1, &before);
    println!(
        "Node.js event loop, 10 requests one at a time: linked {}/{}",
        t.linked_hops, t.calls
    );
    assert_eq!(
        t.linked_hops, 10,
        "one request at a time: every call linked: {t:?}"
    );
    for req in run.requests.iter().take(2) {
        check_whole(&p.otlp, req, 1, Propagation::TraceContext);
    }
}

#[test]
fn sdk_context_is_left_untouched() {
    if !require_root() {
        return;
    }
    let p = prop_lab(WebApp::Otel, true);
    let Web::Otel(web) = &p.web else {
        unreachable!()
    };
    let run =
        p.py.client(
            &p.client_pod,
            &web.url("/work/otel"),
            &ClientOptions::default(),
        )
        .expect("client.py");
    let req = &run.requests[0];
    assert_eq!(req.status, 200, "{req:?}");
    let tid = req.trace_id().expect("trace id");
    let spans = exactly(&p.otlp, tid, 8);
    let hops = hops_of(&spans);
    let hop = |client: &str| {
        hops.iter()
            .find(|h| h.client == client)
            .unwrap_or_else(|| panic!("no hop from {client}: {hops:?}"))
    };
    let (first, second) = (hop("lab/client"), hop("lab/web"));
    let web_spans = web.wait_for_trace(tid, 2, SPAN_WAIT).expect("web.py spans");
    let web_client = web_spans
        .iter()
        .find(|s| s.kind == "CLIENT")
        .unwrap_or_else(|| panic!("no CLIENT span of web.py: {web_spans:?}"));
    assert_eq!(
        second.parent_span_id, web_client.span_id,
        "the web→backend hop must stay under web.py's own CLIENT span (not {})",
        first.spans[3]
    );
    assert!(!second.follows(first));
    assert_eq!(
        p.propagation_total(),
        0.0,
        "{}",
        propagation_samples(p.web_agent(), "web")
    );
}

#[test]
fn opted_out_pod_is_left_as_today() {
    if !require_root() {
        return;
    }
    let p = prop_lab(WebApp::Plain(WebKind::Threaded), false);
    let run = p.load(&LoadOptions {
        count: 3,
        prefix: "out".into(),
        ..Default::default()
    });
    for req in &run.requests {
        let spans = exactly(&p.otlp, &req.trace_id, 4);
        let hops = hops_of(&spans);
        assert_eq!(
            (hops.len(), hops[0].client.as_str()),
            (1, "lab/client"),
            "only the client→web hop"
        );
        let answer = req.answer().expect("web answer");
        let seen = answer.calls[0].backend().expect("backend answer");
        for h in ["traceparent", "b3", "x-b3-traceid"] {
            assert_eq!(
                seen.header(h),
                None,
                "{} reached backend.py with {h}",
                req.tag
            );
        }
    }
    let all = p.otlp.spans();
    let echo: Vec<&ReceivedSpan> = all
        .iter()
        .filter(|s| s.attr("url.path").is_some_and(|u| u.starts_with("/echo/")))
        .collect();
    assert!(
        echo.is_empty(),
        "proxy spans of backend calls from an opted-out pod: {echo:?}"
    );
    assert_eq!(
        p.propagation_total(),
        0.0,
        "{}",
        propagation_samples(p.web_agent(), "web")
    );
}

/// In Kubernetes the pod annotation `hoptrace.io/context-propagation: auto` opts
/// the pod in (real API server, tests/common/realkube.rs; one node, so both hops are
/// served in one pass): the trace through the plain Python web is whole.
#[test]
fn kubernetes_annotation_opts_in() {
    if !require_root() {
        return;
    }
    let (mut lab, root, cp) = lab_with_control_plane();
    cp.admin().create_namespace("lab", &[]).expect("namespace");
    let inject = ("hoptrace.io/inject", "enabled");
    let auto = ("hoptrace.io/context-propagation", "auto");
    let add = |lab: &mut hoptrace_tests::Lab, name: &str, annotations: &[(&str, &str)]| {
        KubePod::add(lab, &cp, &root, ("lab", name), name, annotations)
    };
    let client = add(&mut lab, "client", &[inject]);
    let web = add(&mut lab, "web", &[inject, auto]);
    let backend = add(&mut lab, "backend", &[inject]);
    let py = PyApps::new(&lab).expect("python test apps");
    let plain = PlainApps::new(&lab).expect("plain apps");
    let backend_app = py.backend(&backend.pod, APP_PORT).expect("backend.py");
    let web_app = plain
        .web(WebKind::Threaded, &web.pod, APP_PORT, &backend_app.url(""))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("OTLP receiver");
    let args = otlp.agent_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = start_agent(&lab, &cp, &root, &args);
    agent.wait_ready(common::READY).expect("agent ready");
    // The gauge counts a pod once its steering entry is written (after its listeners).
    assert_eventually!(
        workloads(&agent, "steered") == 3.0,
        COUNTED,
        "the three pods are not all steered"
    );
    let run = plain
        .load(&client.pod, &web_app, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(run.requests[0].status, 200, "{:?}", run.requests[0]);
    check_whole(&otlp, &run.requests[0], 1, Propagation::TraceContext);
    assert_eventually!(
        propagation(&agent, "web", "linked") == 1.0,
        COUNTED,
        "{}",
        propagation_samples(&agent, "web")
    );
    assert_eq!(propagation(&agent, "backend", "linked"), 0.0);
}
