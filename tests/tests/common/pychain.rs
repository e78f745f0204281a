//! The three-tier lab of the trace tests: `client` and `web` on node-1,
//! `backend` on node-2, with the instrumented Python apps running in `web`
//! (calling the backend) and `backend`.

use hoptrace_tests::otlp::OtlpReceiver;
use hoptrace_tests::pyapp::{AppSpan, ClientRequest, PyServer};
use hoptrace_tests::traces::SpanView;
use hoptrace_tests::{Agent, Lab, Pod, Propagation, PyApps};
use std::time::Duration;

/// Port of web.py and backend.py.
pub const APP_PORT: u16 = 8080;
/// How long app spans may take to show up in the span files.
pub const APP_SPANS: Duration = Duration::from_secs(10);
/// Tolerance for span nesting across processes (clock reads).
pub const NEST_TOLERANCE_NS: u64 = 1_000_000;

/// The lab and the running apps. Fields drop in order: apps first, lab last.
pub struct ChainLab {
    pub web: PyServer,
    pub backend: PyServer,
    pub apps: PyApps,
    pub client_pod: Pod,
    pub web_pod: Pod,
    pub backend_pod: Pod,
    pub lab: Lab,
}

/// Builds the lab and starts backend.py and web.py with `propagation`.
pub fn chain_lab(propagation: Propagation) -> ChainLab {
    let mut lab = Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    lab.add_node("node-2").expect("node-2");
    let client_pod = lab.add_pod("node-1", "client").expect("client pod");
    let web_pod = lab.add_pod("node-1", "web").expect("web pod");
    let backend_pod = lab.add_pod("node-2", "backend").expect("backend pod");
    let apps = PyApps::new(&lab)
        .expect("python test apps (run `cargo xtask setup`)")
        .with_propagation(propagation);
    let backend = apps.backend(&backend_pod, APP_PORT).expect("backend.py");
    let web = apps
        .web(&web_pod, APP_PORT, &backend.url(""))
        .expect("web.py");
    ChainLab {
        web,
        backend,
        apps,
        client_pod,
        web_pod,
        backend_pod,
        lab,
    }
}

/// Writes `node`'s workload file, starts its agent exporting to `otlp` (plus
/// `extra` flags) and waits for `/ready`.
pub fn agent_with_otlp(lab: &Lab, node: &str, otlp: &OtlpReceiver, extra: &[&str]) -> Agent {
    let file = lab.write_workloads(node).expect("write workload file");
    let mut args = otlp.agent_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::start_with_args(lab, node, &file, &args).expect("start the agent");
    agent.wait_ready(super::READY).expect("agent ready");
    agent
}

/// The app spans of the request's trace: the client's, web's (2) and the
/// backend's (1) when `through_web`, else the client's and the backend's.
pub fn app_spans(
    chain: &ChainLab,
    client_spans: &[AppSpan],
    req: &ClientRequest,
    through_web: bool,
) -> Vec<AppSpan> {
    let tid = req.trace_id().expect("trace id");
    let mut spans: Vec<AppSpan> = client_spans
        .iter()
        .filter(|s| s.trace_id == tid)
        .cloned()
        .collect();
    if through_web {
        spans.extend(
            chain
                .web
                .wait_for_trace(tid, 2, APP_SPANS)
                .expect("web spans"),
        );
    }
    spans.extend(
        chain
            .backend
            .wait_for_trace(tid, 1, APP_SPANS)
            .expect("backend spans"),
    );
    spans
}

/// Views of app spans.
pub fn app_views(spans: &[AppSpan]) -> Vec<SpanView> {
    spans.iter().map(SpanView::from).collect()
}

/// How long the agents' spans may take to reach the receiver (batching).
pub const SPANS: Duration = Duration::from_secs(20);
/// Extra time to let duplicates or stray spans arrive before counting.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// Waits for exactly `n` proxy spans of trace `tid` (and no more after a pause).
pub fn proxy_spans(otlp: &OtlpReceiver, tid: &str, n: usize) -> Vec<hoptrace_tests::ReceivedSpan> {
    otlp.wait_for_trace(tid, n, SPANS)
        .unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(SETTLE);
    let spans = otlp.trace(tid);
    assert_eq!(
        spans.len(),
        n,
        "want exactly {n} proxy spans in trace {tid}:\n{}",
        hoptrace_tests::otlp::summarize(&spans)
    );
    spans
}

/// Parses a `traceparent` value into (version, trace id, parent id, flags).
pub fn traceparent(value: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "bad traceparent {value:?}");
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

/// Parses a B3 single header `{trace}-{span}[-{sampled}[-{parent}]]` into
/// (trace id, span id, sampled).
pub fn b3_single(value: &str) -> (String, String, Option<String>) {
    let parts: Vec<&str> = value.split('-').collect();
    assert!(parts.len() >= 2, "bad b3 header {value:?}");
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts.get(2).map(|s| s.to_string()),
    )
}
