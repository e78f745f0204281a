//! `hoptrace dashboard` (issue 12) in a real browser: headless Chromium driven over
//! WebDriver (tests/src/webdriver.rs) against a lab with known traffic.
//!
//! Lab: `client` (node-1) → backend.py in `server` (node-1), all answered 200, and
//! `client` → backend.py in `other` (node-2), all answered 500; one agent per node
//! (with `--tap`). The page must show exactly those three workloads and two edges, the
//! failing edge `bad`, a workload's routes and traced requests when it is clicked, and
//! keep refreshing. A screenshot goes to target/dashboard.png.

mod common;

use common::pychain::{agent_with_otlp, APP_PORT};
use hoptrace_tests::webdriver::Browser;
use hoptrace_tests::{
    assert_eventually, require_root, Agent, ClientContext, ClientOptions, Lab, OtlpReceiver,
    PyApps, ReceiverOptions,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The `hoptrace dashboard` process, killed on drop.
struct Dashboard(std::process::Child);

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    hoptrace_tests::ports::free_port().expect("a free port")
}

fn api(addr: SocketAddr, path: &str) -> Value {
    let r = hoptrace_tests::http::get(addr, path, Duration::from_secs(5)).expect("dashboard API");
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
}

/// What the graph shows: `{nodes: {key: health}, edges: {key: health}, count}`.
const GRAPH: &str = r#"
    const nodes = {}, edges = {};
    for (const n of document.querySelectorAll('[data-node]')) nodes[n.dataset.node] = n.dataset.health;
    for (const e of document.querySelectorAll('[data-edge]')) edges[e.dataset.edge] = e.dataset.health;
    return { nodes, edges, count: Number(document.getElementById('updated').dataset.count) };
"#;

/// The workload panel: title, route rows (route, success cell), trace links, tap rows.
const PANEL: &str = r#"
    const routes = [...document.querySelectorAll('#routes tbody tr[data-route]')]
        .map((tr) => [tr.dataset.route, tr.children[1].textContent]);
    const traces = [...document.querySelectorAll('#traces a')].map((a) => a.href);
    return { title: document.getElementById('workload-title').textContent, routes, traces,
             tap: document.querySelectorAll('#tap tbody tr').length };
"#;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn the_dashboard_shows_the_live_topology_in_a_browser() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    lab.add_node("node-2").expect("node-2");
    let client = lab.add_pod("node-1", "client").expect("client pod");
    let server = lab.add_pod("node-1", "server").expect("server pod");
    let other = lab.add_pod("node-2", "other").expect("other pod");
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let ok = apps
        .backend(&server, APP_PORT)
        .expect("backend.py in server");
    let failing = apps.backend(&other, APP_PORT).expect("backend.py in other");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent1 = agent_with_otlp(&lab, "node-1", &otlp, &["--tap"]);
    let agent2 = agent_with_otlp(&lab, "node-2", &otlp, &["--tap"]);

    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let bin = Agent::binary().expect("hoptrace binary");
    let _dashboard = Dashboard(
        std::process::Command::new(&bin)
            .args([
                "dashboard",
                "--listen",
                &addr.to_string(),
                "--agent",
                &format!("http://{}", agent1.admin_addr()),
                "--agent",
                &format!("http://{}", agent2.admin_addr()),
                "--window",
                "6s",
                "--trace-url",
                "http://jaeger.invalid:16686/trace/{trace_id}",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("hoptrace dashboard"),
    );

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Traffic until the checks are done: traced requests to `server` (200),
        // untraced ones to `other` (500).
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for (url, context) in [
                    (ok.url("/items/1"), ClientContext::Sampled),
                    (failing.url("/items/2/status/500"), ClientContext::None),
                ] {
                    let opts = ClientOptions {
                        count: 3,
                        context,
                        ..ClientOptions::default()
                    };
                    let _ = apps.client(&client, &url, &opts);
                }
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check(addr);
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    });
}

fn check(addr: SocketAddr) {
    assert_eventually!(
        hoptrace_tests::http::get(addr, "/api/status", Duration::from_secs(2)).is_ok(),
        Duration::from_secs(20),
        "the dashboard does not answer on {addr}"
    );
    // The JSON API first: both edges, with the failing one failing.
    let edge = |edges: &Value, dst: &str| {
        edges
            .as_array()
            .and_then(|a| a.iter().find(|e| e["src"] == "client" && e["dst"] == dst))
            .cloned()
    };
    assert_eventually!(
        {
            let edges = api(addr, "/api/edges");
            edge(&edges, "server").is_some()
                && edge(&edges, "other").is_some_and(|e| e["success_rate"] == 0.0)
        },
        Duration::from_secs(60),
        "edges: {}, status: {}",
        api(addr, "/api/edges"),
        api(addr, "/api/status")
    );
    let workloads = api(addr, "/api/workloads");
    eprintln!("/api/workloads: {workloads}");
    let routes = api(addr, "/api/routes?namespace=lab&name=other");
    assert!(
        routes
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|r| r["name"] == "other")),
        "{routes}"
    );

    let browser = Browser::start().expect("headless Chromium (`cargo xtask setup`)");
    browser
        .goto(&format!("http://{addr}/"))
        .expect("open the dashboard");
    let expected_nodes: BTreeSet<String> = ["lab/client", "lab/other", "lab/server"]
        .map(String::from)
        .into();
    let expected_edges: BTreeSet<String> = ["lab/client->lab/other", "lab/client->lab/server"]
        .map(String::from)
        .into();
    let deadline = Instant::now() + Duration::from_secs(30);
    let graph = loop {
        let g = browser.execute(GRAPH, json!([])).expect("read the graph");
        if (keys(&g["nodes"]) == expected_nodes && keys(&g["edges"]) == expected_edges)
            || Instant::now() > deadline
        {
            break g;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("graph: {graph}");
    assert_eq!(keys(&graph["nodes"]), expected_nodes, "{graph}");
    assert_eq!(keys(&graph["edges"]), expected_edges, "{graph}");
    assert_eq!(graph["edges"]["lab/client->lab/other"], "bad", "{graph}");
    assert_eq!(graph["edges"]["lab/client->lab/server"], "ok", "{graph}");
    assert_eq!(graph["nodes"]["lab/other"], "bad", "{graph}");
    assert_eq!(graph["nodes"]["lab/server"], "ok", "{graph}");

    // Clicking `other`: its failing route.
    let panel = open(&browser, "lab/other", |p| {
        !p["routes"].as_array().is_some_and(Vec::is_empty)
    });
    assert_eq!(panel["routes"][0][0], "/items/{id}/status/{id}", "{panel}");
    assert_eq!(panel["routes"][0][1], "0.00%", "{panel}");

    // Clicking `server`: its routes and its recent traced requests, linked.
    let panel = open(&browser, "lab/server", |p| {
        !p["routes"].as_array().is_some_and(Vec::is_empty)
            && !p["traces"].as_array().is_some_and(Vec::is_empty)
            && p["tap"].as_u64().is_some_and(|n| n > 0)
    });
    assert!(
        panel["title"]
            .as_str()
            .is_some_and(|t| t.contains("lab/server")),
        "{panel}"
    );
    assert_eq!(panel["routes"][0][0], "/items/{id}", "{panel}");
    assert_eq!(panel["routes"][0][1], "100.00%", "{panel}");
    assert!(
        panel["traces"][0]
            .as_str()
            .is_some_and(|h| h.starts_with("http://jaeger.invalid:16686/trace/")),
        "{panel}"
    );
    assert!(
        panel["tap"].as_u64().is_some_and(|n| n > 0),
        "tap rows: {panel}"
    );

    // It keeps updating without a reload.
    let count = |b: &Browser| {
        b.execute(GRAPH, json!([])).expect("read the graph")["count"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = count(&browser);
    std::thread::sleep(Duration::from_secs(6));
    let after = count(&browser);
    assert!(after >= before + 2, "refreshes: {before} then {after}");

    let png = browser.screenshot().expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dashboard.png");
    std::fs::write(path, &png).expect("write target/dashboard.png");
    eprintln!("screenshot: {path} ({} bytes)", png.len());
}

/// Clicks a workload's node (retrying while the graph is redrawn under the pointer)
/// until the panel satisfies `done`; the panel.
fn open(browser: &Browser, node: &str, done: impl Fn(&Value) -> bool) -> Value {
    let css = format!("[data-node=\"{node}\"] rect");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut clicked = false;
    loop {
        if !clicked {
            match browser.click(&css) {
                Ok(()) => clicked = true,
                Err(e) => eprintln!("click {css}: {e:#}"),
            }
        }
        let panel = browser.execute(PANEL, json!([])).expect("read the panel");
        let shown = panel["title"].as_str().is_some_and(|t| t.contains(node));
        if !shown {
            clicked = false;
        }
        if (shown && done(&panel)) || Instant::now() > deadline {
            return panel;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
