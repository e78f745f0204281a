//! The lab of the context-propagation tests (issue 13): `client` on node-1, `web`
//! on node-1 (or node-2: [`prop_lab_on`]), `backend` (the instrumented backend.py)
//! on node-2, one agent per node exporting to an OTLP receiver. `web` runs a plain app (tests/apps/plain_web.*,
//! no tracing library, forwards nothing) or the instrumented web.py, and is opted
//! in with `context_propagation: auto` unless the test says otherwise.

use super::pychain::{agent_with_otlp, APP_PORT, SETTLE, SPANS};
use hoptrace_tests::hops::{hops, Hop, HopSpan};
use hoptrace_tests::otlp::{summarize, ReceivedSpan};
use hoptrace_tests::plainapp::{
    LoadOptions, LoadRequest, LoadRun, PlainApps, PlainServer, WebKind,
};
use hoptrace_tests::pyapp::PyServer;
use hoptrace_tests::{
    Agent, Lab, OtlpReceiver, Pod, Propagation, PyApps, ReceiverOptions, LAB_NAMESPACE,
};

/// The propagation counter on the agents' `/metrics`.
pub const PROPAGATION: &str = "hoptrace_propagation_total";

/// What runs in the `web` pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebApp {
    /// A plain app that forwards no header.
    Plain(WebKind),
    /// web.py: the OpenTelemetry SDK forwards its own context.
    Otel,
}

/// The running web app.
pub enum Web {
    /// tests/apps/plain_web.*.
    Plain(PlainServer),
    /// tests/apps/web.py.
    Otel(PyServer),
}

/// Lab, apps, receiver and agents. Fields drop in order: agents, receiver, apps, lab.
pub struct PropLab {
    /// node-1's agent (client and web).
    pub agent1: Agent,
    /// node-2's agent (backend).
    pub agent2: Agent,
    /// Where both agents export.
    pub otlp: OtlpReceiver,
    /// The web app.
    pub web: Web,
    /// backend.py.
    pub backend: PyServer,
    /// Starts plain apps and the load client.
    pub plain: PlainApps,
    /// Starts the instrumented apps.
    pub py: PyApps,
    /// The trace-context format of the apps (and what the client should send).
    pub propagation: Propagation,
    /// Pods.
    pub client_pod: Pod,
    pub web_pod: Pod,
    pub backend_pod: Pod,
    pub lab: Lab,
}

/// Builds the lab with `app` in `web` on node-1 (opted in when `opt_in`), starts
/// backend.py, the web app and both agents, and waits for them.
pub fn prop_lab(app: WebApp, opt_in: bool) -> PropLab {
    prop_lab_on(app, opt_in, "node-1")
}

/// Like [`prop_lab`] with `web` on `web_node`: on node-1 the client→web hop is
/// served in one pass and web→backend crosses nodes; on node-2 the other way round.
pub fn prop_lab_on(app: WebApp, opt_in: bool, web_node: &str) -> PropLab {
    prop_lab_with(app, opt_in, web_node, Propagation::TraceContext)
}

/// Like [`prop_lab_on`], with backend.py (and web.py) reading and writing
/// `propagation` (the format the load client should send: [`PropLab::propagation`]).
pub fn prop_lab_with(
    app: WebApp,
    opt_in: bool,
    web_node: &str,
    propagation: Propagation,
) -> PropLab {
    let mut lab = Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    lab.add_node("node-2").expect("node-2");
    let client_pod = lab.add_pod("node-1", "client").expect("client pod");
    lab.add_pod(web_node, "web").expect("web pod");
    let web_pod = lab
        .set_context_propagation("web", opt_in)
        .expect("opt web in");
    let backend_pod = lab.add_pod("node-2", "backend").expect("backend pod");
    let py = PyApps::new(&lab)
        .expect("python test apps (run `cargo xtask setup`)")
        .with_propagation(propagation);
    let plain = PlainApps::new(&lab).expect("plain apps");
    let backend = py.backend(&backend_pod, APP_PORT).expect("backend.py");
    let web = match app {
        WebApp::Plain(kind) => Web::Plain(
            plain
                .web(kind, &web_pod, APP_PORT, &backend.url(""))
                .unwrap_or_else(|e| panic!("{}: {e:#}", kind.name())),
        ),
        WebApp::Otel => Web::Otel(
            py.web(&web_pod, APP_PORT, &backend.url(""))
                .expect("web.py"),
        ),
    };
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("OTLP receiver");
    let agent1 = agent_with_otlp(&lab, "node-1", &otlp, &[]);
    let agent2 = agent_with_otlp(&lab, "node-2", &otlp, &[]);
    PropLab {
        agent1,
        agent2,
        otlp,
        web,
        backend,
        plain,
        py,
        propagation,
        client_pod,
        web_pod,
        backend_pod,
        lab,
    }
}

impl PropLab {
    /// The plain web app (panics for web.py).
    pub fn plain_web(&self) -> &PlainServer {
        match &self.web {
            Web::Plain(w) => w,
            Web::Otel(_) => panic!("web runs web.py, not a plain app"),
        }
    }

    /// Runs the load client in `client` against the plain web app; every request
    /// must be answered 200.
    pub fn load(&self, opts: &LoadOptions) -> LoadRun {
        let web = self.plain_web();
        let run = self
            .plain
            .load(&self.client_pod, web, opts)
            .unwrap_or_else(|e| panic!("plain_load.py: {e:#}\nweb log:\n{}", web.log()));
        for req in &run.requests {
            assert_eq!(
                req.status,
                200,
                "request {} ({:?}): {}\nweb log:\n{}",
                req.tag,
                req.error,
                req.body,
                web.log()
            );
        }
        run
    }

    /// The agent of web's node.
    pub fn web_agent(&self) -> &Agent {
        if self.web_pod.node == "node-1" {
            &self.agent1
        } else {
            &self.agent2
        }
    }

    /// `hoptrace_propagation_total{namespace="lab",pod="web",result}` on web's agent.
    pub fn propagation(&self, result: &str) -> f64 {
        propagation(self.web_agent(), "web", result)
    }

    /// linked + ambiguous + none for `web`.
    pub fn propagation_total(&self) -> f64 {
        ["linked", "ambiguous", "none"]
            .iter()
            .map(|r| self.propagation(r))
            .sum()
    }
}

/// `hoptrace_propagation_total{namespace="lab",pod,result}` on `agent` (0 when absent).
pub fn propagation(agent: &Agent, pod: &str, result: &str) -> f64 {
    agent
        .metrics()
        .unwrap_or_else(|e| panic!("scraping the agent for {}: {e:#}", agent.node()))
        .value(
            PROPAGATION,
            &[
                ("namespace", LAB_NAMESPACE),
                ("pod", pod),
                ("result", result),
            ],
        )
}

/// Every `hoptrace_propagation_total` sample of `pod` on `agent`, as text (for messages).
pub fn propagation_samples(agent: &Agent, pod: &str) -> String {
    agent
        .metrics()
        .map(|m| {
            m.samples()
                .iter()
                .filter(|s| {
                    s.name == PROPAGATION && s.labels.get("pod").map(String::as_str) == Some(pod)
                })
                .map(|s| format!("{:?} {}", s.labels, s.value))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|e| format!("{e:#}"))
}

/// The `url.path` of proxy span `id` among `spans`.
pub fn path_of<'a>(spans: &'a [ReceivedSpan], id: &str) -> &'a str {
    spans
        .iter()
        .find(|s| s.span_id == id)
        .and_then(|s| s.attr("url.path"))
        .unwrap_or("")
}

/// The hops of `spans` (checked: every proxy span in a complete four-span hop).
pub fn hops_of(spans: &[ReceivedSpan]) -> Vec<Hop> {
    let hop_spans: Vec<HopSpan> = spans.iter().map(HopSpan::from).collect();
    hops(&hop_spans).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits for exactly `n` proxy spans of trace `tid` (no more after a pause).
pub fn exactly(otlp: &OtlpReceiver, tid: &str, n: usize) -> Vec<ReceivedSpan> {
    super::pychain::proxy_spans(otlp, tid, n)
}

/// Checks one request through the plain web with `calls` backend calls, all
/// linked: 4 + 4·calls proxy spans in the request's trace; the client→web hop under
/// the client's span; every web→backend hop (path `/echo/<tag>/<i>`) a child of the
/// client→web hop's inbound CLIENT span (the context web received); backend.py's
/// SERVER span a child of its hop's inbound CLIENT span; web received the
/// context in `propagation`, the format the client sent. Returns the hops.
pub fn check_whole(
    otlp: &OtlpReceiver,
    req: &LoadRequest,
    calls: usize,
    propagation: Propagation,
) -> Vec<Hop> {
    let tid = &req.trace_id;
    let spans = exactly(otlp, tid, 4 + 4 * calls);
    let ctx = || format!("\nspans of trace {tid}:\n{}", summarize(&spans));
    let hops = hops_of(&spans);
    assert_eq!(hops.len(), 1 + calls, "hops{}", ctx());
    let first = hops
        .iter()
        .find(|h| h.client == "lab/client")
        .unwrap_or_else(|| panic!("no hop from the client{}", ctx()));
    assert_eq!(first.server, "lab/web", "first hop{}", ctx());
    assert_eq!(
        first.parent_span_id,
        req.span_id,
        "the client→web hop must be a child of the client's span{}",
        ctx()
    );
    assert_eq!(
        path_of(&spans, &first.spans[0]),
        format!("/work/{}", req.tag)
    );
    let answer = req.answer().expect("web answer");
    let parent = &first.spans[3];
    let h = |name: &str| answer.header(name).map(str::to_owned);
    let (got, want) = match propagation {
        Propagation::TraceContext => (h("traceparent"), Some(format!("00-{tid}-{parent}-01"))),
        Propagation::B3Single => (
            h("b3").map(|v| v.split('-').take(3).collect::<Vec<_>>().join("-")),
            Some(format!("{tid}-{parent}-1")),
        ),
        Propagation::B3Multi => (
            h("x-b3-traceid")
                .zip(h("x-b3-spanid"))
                .map(|(t, s)| format!("{t}-{s}")),
            Some(format!("{tid}-{parent}")),
        ),
    };
    assert_eq!(
        got,
        want,
        "web must receive the context of the inbound CLIENT span ({propagation:?}): {:?}{}",
        answer.headers,
        ctx()
    );
    assert_eq!(answer.calls.len(), calls, "{answer:?}");
    let mut paths = Vec::new();
    for hop in hops.iter().filter(|h| h.spans != first.spans) {
        assert_eq!(
            (hop.client.as_str(), hop.server.as_str()),
            ("lab/web", "lab/backend"),
            "backend hop{}",
            ctx()
        );
        assert!(
            hop.follows(first),
            "web→backend hop {:?} must be a child of the client→web hop's inbound CLIENT span {}{}",
            hop.spans,
            first.spans[3],
            ctx()
        );
        let path = path_of(&spans, &hop.spans[0]).to_owned();
        let i: usize = path
            .strip_prefix(&format!("/echo/{}/", req.tag))
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("backend hop path {path:?}{}", ctx()));
        let seen = answer.calls[i].backend().expect("backend answer");
        assert_eq!(
            (seen.trace_id.as_str(), seen.parent_span_id.as_str()),
            (tid.as_str(), hop.spans[3].as_str()),
            "backend.py's SERVER span for {path} must be a child of its hop's inbound CLIENT span{}",
            ctx()
        );
        paths.push(path);
    }
    paths.sort();
    let want: Vec<String> = (0..calls)
        .map(|i| format!("/echo/{}/{i}", req.tag))
        .collect();
    assert_eq!(paths, want, "one backend hop per call{}", ctx());
    hops
}

/// Lets duplicates or stray spans arrive before counting (the receiver gets
/// batches up to 500 ms apart).
pub fn settle() {
    std::thread::sleep(SETTLE);
}

/// How long spans may take to reach the receiver.
pub const SPAN_WAIT: std::time::Duration = SPANS;
