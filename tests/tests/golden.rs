//! Golden metrics from the proxy alone (issue 11): every request of an enrolled pod,
//! traced or not, is counted per edge (client workload → server workload), route,
//! status and outcome, with its latency, on both legs.
//!
//! Lab: `client` → backend.py in `server`, both on node-1 (one agent sees both legs).
//! The backend answers `/status/<code>` with that code and `/delay/<ms>` after that
//! long, so the expected counts, outcomes and latency buckets are known.

mod common;

use common::pychain::{agent_with_otlp, APP_PORT};
use common::*;
use hoptrace_tests::{
    assert_eventually, require_root, Agent, ClientContext, ClientOptions, OtlpReceiver, PyApps,
    ReceiverOptions, LAB_NAMESPACE,
};
use std::time::Duration;

const REQUESTS: &str = "hoptrace_http_requests_total";
const LATENCY: &str = "hoptrace_http_request_duration_seconds_bucket";
const HEADERS: &str = "hoptrace_http_response_headers_duration_seconds_bucket";
const TRACED: &str = "hoptrace_http_traced_requests_total";
const OPENED: &str = "hoptrace_tcp_connections_opened_total";

fn edge<'a>(direction: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![
        ("direction", direction),
        ("client_namespace", LAB_NAMESPACE),
        ("client", "client"),
        ("server_namespace", LAB_NAMESPACE),
        ("server", "server"),
    ];
    labels.extend_from_slice(extra);
    labels
}

fn value(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent.metrics().expect("metrics").value(name, labels)
}

#[test]
fn requests_are_counted_per_edge_route_and_outcome_with_their_latency() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(false);
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&server, APP_PORT).expect("backend.py");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent = agent_with_otlp(&lab, "node-1", &otlp, &["--otlp-metrics-interval", "1s"]);

    let run = |path: &str, count: usize, context: ClientContext| {
        let r = apps
            .client(
                &client,
                &backend.url(path),
                &ClientOptions {
                    count,
                    context,
                    ..ClientOptions::default()
                },
            )
            .expect("client.py");
        assert_eq!(r.requests.len(), count, "{path}");
    };
    run("/users/17", 10, ClientContext::Sampled);
    run("/orders/5/status/503", 5, ClientContext::None);
    run("/slow/delay/300", 3, ClientContext::None);
    // Two uploads of 1000 bytes.
    let upload = apps
        .client(
            &client,
            &backend.url("/upload"),
            &ClientOptions {
                count: 2,
                context: ClientContext::None,
                method: Some("POST".into()),
                data: Some("x".repeat(1000)),
                ..ClientOptions::default()
            },
        )
        .expect("client.py");
    assert_eq!(upload.requests.len(), 2);

    for direction in ["outbound", "inbound"] {
        let ok = edge(
            direction,
            &[
                ("route", "/users/{id}"),
                ("method", "GET"),
                ("status_code", "200"),
                ("outcome", "success"),
            ],
        );
        assert_eventually!(
            value(&agent, REQUESTS, &ok) == 10.0,
            Duration::from_secs(10),
            "{direction} /users: {}",
            value(&agent, REQUESTS, &ok)
        );
        let failed = edge(
            direction,
            &[
                ("route", "/orders/{id}/status/{id}"),
                ("status_code", "503"),
                ("outcome", "failure"),
            ],
        );
        assert_eventually!(
            value(&agent, REQUESTS, &failed) == 5.0,
            Duration::from_secs(10),
            "{direction} /orders: {}",
            value(&agent, REQUESTS, &failed)
        );
        // The delayed route: none within 250 ms, all three within 500 ms.
        let slow = |le| edge(direction, &[("route", "/slow/delay/{id}"), ("le", le)]);
        assert_eventually!(
            value(&agent, LATENCY, &slow("0.5")) == 3.0,
            Duration::from_secs(10),
            "{direction} /slow: {}",
            value(&agent, LATENCY, &slow("0.5"))
        );
        assert_eq!(value(&agent, LATENCY, &slow("0.25")), 0.0, "{direction}");
        // The delay is before the response head: time to headers is as long.
        let headers = edge(direction, &[("route", "/slow/delay/{id}"), ("le", "0.25")]);
        assert_eq!(value(&agent, HEADERS, &headers), 0.0, "{direction}");
        let headers = edge(direction, &[("route", "/slow/delay/{id}"), ("le", "0.5")]);
        assert_eq!(value(&agent, HEADERS, &headers), 3.0, "{direction}");
        // Request bodies are counted as they pass (only the uploads have one).
        assert_eq!(
            value(
                &agent,
                "hoptrace_http_request_body_bytes_total",
                &edge(direction, &[])
            ),
            2000.0,
            "{direction}"
        );
        // Only the sampled requests were traced; the untraced ones are counted anyway.
        assert_eq!(
            value(&agent, TRACED, &edge(direction, &[])),
            10.0,
            "{direction}"
        );
        assert!(
            value(&agent, OPENED, &edge(direction, &[])) >= 1.0,
            "{direction}"
        );
    }
    // The same counts reach the collector as OTLP metrics (a cumulative sum).
    let users = [
        ("direction", "inbound"),
        ("http.route", "/users/{id}"),
        ("outcome", "success"),
    ];
    assert_eventually!(
        otlp.metrics().latest("hoptrace_http_requests", &users) == Some(10.0),
        Duration::from_secs(10),
        "OTLP metrics: {:?} ({} requests)",
        otlp.metrics().latest("hoptrace_http_requests", &users),
        otlp.metrics().requests()
    );
    // Nothing was attributed to an unknown peer: both pods are known.
    let metrics = agent.metrics().expect("metrics");
    let unknown = metrics.value(REQUESTS, &[("client", "unknown")])
        + metrics.value(REQUESTS, &[("server", "unknown")]);
    assert_eq!(unknown, 0.0);
}

/// Across nodes each agent sees one leg, and names the other node's pod from the
/// workload file's peer entries (`node:`): the edge is the same on both agents.
#[test]
fn edges_across_nodes_name_both_workloads() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(true);
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&server, APP_PORT).expect("backend.py");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent1 = agent_with_otlp(&lab, "node-1", &otlp, &[]);
    let agent2 = agent_with_otlp(&lab, "node-2", &otlp, &[]);

    // One request in four fails: 12 to /items/<n>, 4 of them to the failing path.
    for (path, count) in [("/items/1", 9), ("/items/2/status/500", 3)] {
        let r = apps
            .client(
                &client,
                &backend.url(path),
                &ClientOptions {
                    count,
                    context: ClientContext::None,
                    ..ClientOptions::default()
                },
            )
            .expect("client.py");
        assert_eq!(r.requests.len(), count, "{path}");
    }
    for (agent, direction) in [(&agent1, "outbound"), (&agent2, "inbound")] {
        let total = |outcome| value(agent, REQUESTS, &edge(direction, &[("outcome", outcome)]));
        assert_eventually!(
            total("success") == 9.0 && total("failure") == 3.0,
            Duration::from_secs(10),
            "{direction}: {} ok, {} failed",
            total("success"),
            total("failure")
        );
        let metrics = agent.metrics().expect("metrics");
        assert_eq!(metrics.value(REQUESTS, &[("client", "unknown")]), 0.0);
        assert_eq!(metrics.value(REQUESTS, &[("server", "unknown")]), 0.0);
    }
}

/// The terminal views against a real agent: `hoptrace tap` shows the requests as they
/// happen (an untraced one too), `hoptrace stat` and `edges` the rates and success.
#[test]
fn tap_stat_and_edges_from_a_real_agent() {
    if !require_root() {
        return;
    }
    let (lab, client, server) = client_server_lab(false);
    let apps = PyApps::new(&lab).expect("python test apps (run `cargo xtask setup`)");
    let backend = apps.backend(&server, APP_PORT).expect("backend.py");
    let otlp = OtlpReceiver::start(ReceiverOptions::default()).expect("receiver");
    let agent = agent_with_otlp(&lab, "node-1", &otlp, &["--tap"]);
    let url = format!("http://{}", agent.admin_addr());
    let bin = Agent::binary().expect("hoptrace binary");

    // `tap` first (it sees what finishes while it is connected), then traffic until it
    // has printed its lines.
    let tap = std::process::Command::new(&bin)
        .args([
            "tap", "--agent", &url, "--to", "server", "--path", "/tapped", "--count", "4", "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("hoptrace tap");
    let send = |path: &str, count: usize, context: ClientContext| {
        apps.client(
            &client,
            &backend.url(path),
            &ClientOptions {
                count,
                context,
                ..ClientOptions::default()
            },
        )
        .expect("client.py");
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut tap = tap;
    loop {
        send("/tapped/7", 1, ClientContext::None);
        send("/elsewhere", 1, ClientContext::None);
        if tap.try_wait().expect("tap").is_some() || std::time::Instant::now() > deadline {
            break;
        }
    }
    let out = tap.wait_with_output().expect("tap output");
    assert!(out.status.success(), "hoptrace tap: {out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        assert_eq!(l["path"], "/tapped/7", "{l}");
        assert_eq!(l["route"], "/tapped/{id}", "{l}");
        assert_eq!(l["server"], "server", "{l}");
        assert_eq!(l["client"], "client", "{l}");
        assert_eq!(l["status"], 200, "{l}");
        assert!(l.get("trace_id").is_none(), "untraced: {l}");
    }

    // `stat` over a window with traffic in it: 1 request in 3 fails.
    let window = std::thread::scope(|s| {
        let stat = s.spawn(|| {
            std::process::Command::new(&bin)
                .args(["stat", "--agent", &url, "--window", "4s", "-o", "json"])
                .output()
                .expect("hoptrace stat")
        });
        let edges = s.spawn(|| {
            std::process::Command::new(&bin)
                .args(["edges", "--agent", &url, "--window", "4s", "-o", "json"])
                .output()
                .expect("hoptrace edges")
        });
        let pods = s.spawn(|| {
            std::process::Command::new(&bin)
                .args([
                    "stat", "pod", "--agent", &url, "--window", "4s", "-o", "json",
                ])
                .output()
                .expect("hoptrace stat pod")
        });
        let top = s.spawn(|| {
            std::process::Command::new(&bin)
                .args(["top", "--agent", &url, "--to", "server", "--duration", "4s"])
                .output()
                .expect("hoptrace top")
        });
        // The table a person sees (printed for the README and for debugging).
        let table = s.spawn(|| {
            std::process::Command::new(&bin)
                .args(["stat", "route", "--agent", &url, "--window", "4s"])
                .output()
                .expect("hoptrace stat route")
        });
        for _ in 0..6 {
            send("/ok/1", 2, ClientContext::Sampled);
            send("/bad/status/500", 1, ClientContext::None);
        }
        let table = table.join().expect("stat route");
        let top = top.join().expect("top");
        let pods = pods.join().expect("stat pod");
        assert!(pods.status.success(), "{pods:?}");
        let pods: serde_json::Value = serde_json::from_slice(&pods.stdout).expect("JSON");
        let pod = pods
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == "server"))
            .unwrap_or_else(|| panic!("no row for pod server: {pods}"));
        let success = pod["success_rate"].as_f64().expect("success_rate");
        assert!(
            success > 0.5 && success < 0.8,
            "about 2 of 3 succeed: {pod}"
        );
        let top_text = String::from_utf8_lossy(&top.stdout).into_owned();
        eprintln!("$ hoptrace top --agent {url} --to server --duration 4s\n{top_text}");
        assert!(top.status.success(), "{top:?}");
        // Both routes of the window (this one agent sees each request on both legs).
        let row = |route: &str| {
            top_text
                .lines()
                .find(|l| l.contains(route))
                .unwrap_or_else(|| panic!("no {route} row:\n{top_text}"))
                .to_owned()
        };
        assert!(row("/ok/{id}").contains("100.00%"), "{top_text}");
        assert!(row("/bad/status/{id}").contains(" 0.00%"), "{top_text}");
        eprintln!(
            "$ hoptrace stat route --agent {url} --window 4s\n{}{}",
            String::from_utf8_lossy(&table.stdout),
            String::from_utf8_lossy(&table.stderr)
        );
        assert!(table.status.success(), "{table:?}");
        (stat.join().expect("stat"), edges.join().expect("edges"))
    });
    let (stat, edges) = window;
    assert!(stat.status.success(), "hoptrace stat: {stat:?}");
    assert!(edges.status.success(), "hoptrace edges: {edges:?}");
    let stat: serde_json::Value = serde_json::from_slice(&stat.stdout).expect("stat JSON");
    let row = stat
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "server"))
        .unwrap_or_else(|| panic!("no row for server: {stat}"));
    eprintln!("stat: {row}");
    let success = row["success_rate"].as_f64().expect("success_rate");
    assert!(
        success > 0.5 && success < 0.8,
        "about 2 of 3 succeed: {row}"
    );
    assert!(row["rps"].as_f64().expect("rps") > 0.0, "{row}");
    let edges: serde_json::Value = serde_json::from_slice(&edges.stdout).expect("edges JSON");
    let edge = edges
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["dst"] == "server" && r["src"] == "client")
        })
        .unwrap_or_else(|| panic!("no client → server edge: {edges}"));
    eprintln!("edge: {edge}");
    assert_eq!(edge["traced"], true, "sampled requests were seen: {edge}");
}

/// 100,000 distinct raw paths over 3,125 connections (as many client ports) cannot
/// blow up the series: the server gets at most 100 routes, then `other`
/// (docs/METRICS.md "The bound"), and every request is still counted.
#[test]
fn distinct_paths_and_ports_stay_within_the_series_bound() {
    if !require_root() {
        return;
    }
    const N: u64 = 100_000;
    let (lab, client, server) = client_server_lab(false);
    let app = hoptrace_tests::labapp!();
    let target = server.addr(APP_PORT);
    let _ok = app.http_ok_server(&server, target).expect("http-ok-server");
    let agent = hoptrace_tests::Agent::start(
        &lab,
        "node-1",
        &lab.write_workloads("node-1").expect("workloads"),
    )
    .expect("agent");
    let mut agent = agent;
    agent.wait_ready(Duration::from_secs(30)).expect("ready");
    let (addr, n) = (target.to_string(), N.to_string());
    let args = [
        "load",
        "--proto",
        "http",
        "--addr",
        &addr,
        "--conns",
        "8",
        "--duration-ms",
        "600000",
        "--requests",
        &n,
        "--distinct-paths",
        "--requests-per-conn",
        "32",
    ];
    let out = client
        .run(app.command(&args), Duration::from_secs(600))
        .expect("labapp load");
    let report: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(report["requests"], N, "{report}");
    assert_eq!(report["errors"], 0, "{report}");

    let metrics = agent.metrics().expect("metrics");
    for direction in ["outbound", "inbound"] {
        let labels = edge(direction, &[]);
        assert_eventually!(
            value(&agent, REQUESTS, &labels) == N as f64,
            Duration::from_secs(10),
            "{direction}: {} of {N} requests counted",
            value(&agent, REQUESTS, &labels)
        );
    }
    let series: Vec<_> = metrics
        .samples()
        .iter()
        .filter(|s| s.name == REQUESTS)
        .collect();
    let routes: std::collections::BTreeSet<&str> = series
        .iter()
        .filter_map(|s| s.labels.get("route").map(String::as_str))
        .collect();
    assert_eq!(
        routes.len(),
        101,
        "100 routes and `other`: {}",
        routes.len()
    );
    assert!(routes.contains("other"));
    // Per direction: 101 routes × one method, status and outcome.
    assert!(series.len() <= 2 * 101, "{} request series", series.len());
    let other: f64 = series
        .iter()
        .filter(|s| s.labels.get("route").map(String::as_str) == Some("other"))
        .map(|s| s.value)
        .sum();
    assert_eq!(
        other,
        2.0 * (N - 100) as f64,
        "both legs beyond the first 100 routes"
    );
    // Histograms: per direction at most 101 routes × 2 outcomes each.
    for histogram in [
        "hoptrace_http_request_duration_seconds_count",
        "hoptrace_http_response_headers_duration_seconds_count",
    ] {
        let n = metrics
            .samples()
            .iter()
            .filter(|s| s.name == histogram)
            .count();
        assert!(n <= 2 * 101 * 2, "{histogram}: {n} series");
    }
    // The labels are the documented ones (no address, port or raw path).
    let keys: std::collections::BTreeSet<&str> = series
        .iter()
        .flat_map(|s| s.labels.keys().map(String::as_str))
        .collect();
    let documented = [
        "client",
        "client_namespace",
        "direction",
        "method",
        "outcome",
        "route",
        "server",
        "server_namespace",
        "status_code",
    ];
    assert_eq!(keys, documented.into_iter().collect());
}
