//! A collector that goes down and comes back (DESIGN §3.5): the apps' traffic
//! is unaffected, the agents hold at most twice `--span-queue` spans, only what
//! the bounded queue could not hold is lost (`hoptrace_spans_dropped_total`),
//! nothing is lost to failed requests, and what was held is exported once the
//! collector is back.
//!
//! Lab: `client` (node-1) → backend.py in `backend` (node-2), one agent per
//! node, each producing two spans per request (outbound or inbound SERVER +
//! CLIENT).

mod common;

use common::pychain::APP_PORT;
use common::READY;
use hoptrace_tests::{
    assert_eventually, require_root, Agent, ClientOptions, Lab, OtlpReceiver, Pod, PyApps,
    ReceiverOptions,
};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The agents' `--span-queue`.
const QUEUE: u64 = 50;
/// Requests made while the collector is down (2 spans each per agent), well
/// beyond what the agents may hold.
const OUTAGE_REQUESTS: usize = 400;
/// How long held spans may take to go out after the collector is back
/// (retry backoff is at most 5 s, plus batching).
const RECOVERY: Duration = Duration::from_secs(30);
/// How long spans may take to reach the receiver in normal operation.
const SPANS: Duration = Duration::from_secs(20);

const EXPORTED: &str = "hoptrace_spans_exported_total";
const DROPPED: &str = "hoptrace_spans_dropped_total";
const FAILED: &str = "hoptrace_spans_export_failed_total";

/// (exported, dropped, failed) of one agent.
fn export_counts(agent: &Agent) -> (u64, u64, u64) {
    let m = agent
        .metrics()
        .unwrap_or_else(|e| panic!("scraping {}: {e:#}", agent.node()));
    (
        m.value(EXPORTED, &[]) as u64,
        m.value(DROPPED, &[]) as u64,
        m.value(FAILED, &[]) as u64,
    )
}

/// Resident memory of the agent process in KiB.
fn rss_kib(agent: &Agent) -> u64 {
    let pid = agent.pid().expect("agent running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Runs client.py with `count` sampled requests; asserts every one got a 200.
/// Returns the trace ids and how long the run took.
fn requests(apps: &PyApps, client: &Pod, url: &str, count: usize) -> (Vec<String>, Duration) {
    let start = Instant::now();
    let run = apps
        .client(
            client,
            url,
            &ClientOptions {
                count,
                ..ClientOptions::default()
            },
        )
        .expect("client.py");
    let took = start.elapsed();
    let mut ids = Vec::new();
    for r in &run.requests {
        assert_eq!(
            (r.status, r.error.as_deref()),
            (200, None),
            "a request failed: the apps' traffic must not depend on the collector\n{}",
            run.stderr
        );
        ids.push(r.trace_id().expect("trace id").to_owned());
    }
    (ids, took)
}

fn start_agent(lab: &Lab, node: &str, otlp: &OtlpReceiver) -> Agent {
    let file = lab.write_workloads(node).expect("workload file");
    let mut args = otlp.agent_args();
    args.extend(["--span-queue".to_owned(), QUEUE.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::start_with_args(lab, node, &file, &args).expect("start the agent");
    agent.wait_ready(READY).expect("agent ready");
    agent
}

#[test]
fn collector_down_and_back_loses_only_the_overflow() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.add_node("node-1").expect("node-1");
    lab.add_node("node-2").expect("node-2");
    let client = lab.add_pod("node-1", "client").expect("client pod");
    let backend_pod = lab.add_pod("node-2", "backend").expect("backend pod");
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&backend_pod, APP_PORT).expect("backend.py");
    let url = backend.url("/outage");
    let mut otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agents = [
        start_agent(&lab, "node-1", &otlp),
        start_agent(&lab, "node-2", &otlp),
    ];

    // Baseline with the collector up. A small queue may overflow even now when the
    // client outpaces one export round trip on a loaded machine, so count from what
    // was exported and dropped once every span is accounted for.
    let (ids, baseline) = requests(&apps, &client, &url, OUTAGE_REQUESTS);
    let last = ids.last().expect("ids").clone();
    otlp.wait_for_trace(&last, 4, SPANS)
        .expect("baseline spans");
    let spans_per_agent = 2 * OUTAGE_REQUESTS as u64;
    let mut base = Vec::new();
    for agent in &agents {
        assert_eventually!(
            {
                let (e, d, _) = export_counts(agent);
                e + d == spans_per_agent
            },
            SPANS,
            "{}: {:?} (exported, dropped, failed), want {spans_per_agent} accounted for",
            agent.node(),
            export_counts(agent)
        );
        let (exported, dropped, failed) = export_counts(agent);
        assert_eq!(failed, 0, "{}: failed with the collector up", agent.node());
        base.push((exported, dropped));
    }

    // The collector goes away abruptly; the apps keep going at the same pace.
    otlp.stop();
    let rss_before: Vec<u64> = agents.iter().map(rss_kib).collect();
    let (outage_ids, outage) = requests(&apps, &client, &url, OUTAGE_REQUESTS);
    assert!(
        outage < baseline * 2 + Duration::from_secs(5),
        "requests slowed down while the collector was down: {outage:?} vs {baseline:?} before"
    );
    let mut held = Vec::new();
    for ((agent, rss0), (exported0, dropped0)) in agents.iter().zip(&rss_before).zip(&base) {
        let (exported, dropped, failed) = export_counts(agent);
        assert_eq!(
            exported,
            *exported0,
            "{}: nothing can be exported",
            agent.node()
        );
        assert_eq!(
            failed,
            0,
            "{}: no span may be lost to a failed request (retried instead)",
            agent.node()
        );
        // Held = the batches being retried (up to 4) + one gathered + the queue, never
        // more than 2 × QUEUE (batches are a fifth of the queue);
        // and the queue did fill (the outage outlasted it).
        let dropped = dropped - dropped0;
        let kept = spans_per_agent - dropped;
        assert!(
            (QUEUE..=2 * QUEUE).contains(&kept),
            "{}: {kept} spans held during the outage ({dropped} dropped of {spans_per_agent}); want between {QUEUE} and {}",
            agent.node(),
            2 * QUEUE
        );
        let grown = rss_kib(agent).saturating_sub(*rss0);
        assert!(
            grown < 16 * 1024,
            "{}: resident memory grew by {grown} KiB during the outage",
            agent.node()
        );
        held.push(kept);
    }

    // Back on the same port: exactly what was held arrives, all from the outage.
    otlp.clear();
    otlp.restart().expect("restart the receiver");
    for ((agent, kept), (exported0, _)) in agents.iter().zip(&held).zip(&base) {
        let want = exported0 + kept;
        assert_eventually!(
            export_counts(agent).0 == want,
            RECOVERY,
            "{}: exported {:?} (exported, dropped, failed) after the collector came back, want {want} exported",
            agent.node(),
            export_counts(agent)
        );
        assert_eq!(export_counts(agent).2, 0, "{}: failed", agent.node());
    }
    let total: u64 = held.iter().sum();
    let received = otlp
        .wait_for_spans(total as usize, SPANS)
        .expect("held spans at the receiver");
    assert_eq!(
        received.len() as u64,
        total,
        "spans received after the outage"
    );
    let outage_set: BTreeSet<&str> = outage_ids.iter().map(String::as_str).collect();
    for s in &received {
        assert!(
            outage_set.contains(s.trace_id.as_str()),
            "span {} of trace {} is not from the outage",
            s.name,
            s.trace_id
        );
    }

    // And export works as before for new traffic.
    let (ids, _) = requests(&apps, &client, &url, 1);
    otlp.wait_for_trace(&ids[0], 4, SPANS)
        .expect("spans of a request after the outage");
}
