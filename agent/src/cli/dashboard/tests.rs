use super::*;

fn args(agents: &[&str]) -> DashboardArgs {
    DashboardArgs {
        listen: ([127, 0, 0, 1], 0).into(),
        from: crate::cli::Sources {
            agents: agents.iter().map(|s| s.to_string()).collect(),
            prometheus: None,
            window: Some(Duration::from_secs(4)),
        },
        trace_url: Some("http://jaeger:16686/trace/{trace_id}".into()),
    }
}

fn body(resp: Response<Body>) -> (StatusCode, String, String) {
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = futures_util::FutureExt::now_or_never(resp.into_body().collect())
        .expect("a whole body")
        .expect("body")
        .to_bytes();
    (status, ctype, String::from_utf8_lossy(&bytes).into_owned())
}

fn get(state: &State, uri: &str) -> (StatusCode, String, String) {
    let uri: hyper::Uri = uri.parse().expect("uri");
    body(respond(&hyper::Method::GET, &uri, state))
}

fn rows(view: View, keys: &[&[&str]], rps: f64, ok: f64) -> stat::Rows {
    keys.iter()
        .map(|k| {
            (
                k.iter().map(|s| s.to_string()).collect(),
                stat::Stats {
                    rps,
                    success_rps: ok,
                    p99: Some(0.012),
                    tcp: (view == View::Deploy).then_some(1.0),
                    traced: (view == View::Edges).then_some(false),
                    ..stat::Stats::default()
                },
            )
        })
        .collect()
}

#[tokio::test]
async fn serves_the_page_and_the_json_views() {
    // Unreachable agent: the refresh task only records errors.
    let state = start(&args(&["http://127.0.0.1:1"]));
    let (status, ctype, html) = get(&state, "/");
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    for id in [
        "id=\"graph\"",
        "id=\"updated\"",
        "id=\"routes\"",
        "id=\"tap\"",
        "/app.js",
    ] {
        assert!(html.contains(id), "page lacks {id}");
    }
    assert!(
        !html.contains("http://") || !html.contains("<script src=\"http"),
        "no CDN"
    );
    let (status, ctype, js) = get(&state, "/app.js");
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/javascript"), "{ctype}");
    for attr in [
        "data-node",
        "data-edge",
        "data-health",
        "/api/tap",
        "EventSource",
    ] {
        assert!(js.contains(attr), "app.js lacks {attr}");
    }

    publish(
        &state,
        Ok([
            rows(
                View::Edges,
                &[
                    &["lab", "client", "lab", "server"],
                    &["lab", "client", "lab", "other"],
                ],
                4.0,
                2.0,
            ),
            rows(
                View::Deploy,
                &[&["lab", "server"], &["lab", "other"]],
                2.0,
                2.0,
            ),
            rows(
                View::Route,
                &[&["lab", "server", "/a"], &["lab", "other", "/b/{id}"]],
                1.0,
                1.0,
            ),
        ]),
    );
    let (_, ctype, edges) = get(&state, "/api/edges");
    assert_eq!(ctype, "application/json");
    let edges: Value = serde_json::from_str(&edges).expect("JSON");
    assert_eq!(edges.as_array().map(Vec::len), Some(2), "{edges}");
    for field in [
        "src_namespace",
        "src",
        "dst_namespace",
        "dst",
        "rps",
        "success_rate",
    ] {
        assert!(edges[0].get(field).is_some(), "edge lacks {field}: {edges}");
    }
    assert_eq!(edges[0]["success_rate"], 0.5);
    let (_, _, w) = get(&state, "/api/workloads");
    let w: Value = serde_json::from_str(&w).expect("JSON");
    assert_eq!(w[1]["name"], "server");
    assert_eq!(w[1]["success_rate"], 1.0);
    assert_eq!(w[1]["latency_ms_p99"], 12.0);
    let (_, _, r) = get(&state, "/api/routes?namespace=lab&name=other");
    let r: Value = serde_json::from_str(&r).expect("JSON");
    assert_eq!(
        r,
        json!([{"namespace": "lab", "name": "other", "route": "/b/{id}",
        "success_rate": 1.0, "rps": 1.0, "latency_ms_p50": null, "latency_ms_p95": null,
        "latency_ms_p99": 12.0}])
    );
    let (_, _, all) = get(&state, "/api/routes");
    assert_eq!(
        serde_json::from_str::<Value>(&all)
            .expect("JSON")
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let (_, _, s) = get(&state, "/api/status");
    let s: Value = serde_json::from_str(&s).expect("JSON");
    assert!(s["refreshes"].as_u64().expect("refreshes") >= 1, "{s}");
    assert_eq!(s["trace_url"], "http://jaeger:16686/trace/{trace_id}");
    assert_eq!(s["tap"], true);

    let (status, _, _) = get(&state, "/nope");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let uri: hyper::Uri = "/api/edges".parse().expect("uri");
    let resp = respond(&hyper::Method::POST, &uri, &state);
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn tap_is_server_sent_events() {
    let state = start(&args(&["http://127.0.0.1:1"]));
    let uri: hyper::Uri = "/api/tap".parse().expect("uri");
    let resp = respond(&hyper::Method::GET, &uri, &state);
    assert_eq!(
        resp.headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    let first = String::from_utf8_lossy(first.data_ref().expect("data")).into_owned();
    assert!(first.starts_with("retry: 3000\n\n"), "{first:?}");
    let _ = state.tap.send(sse(None, r#"{"server":"b"}"#));
    let next = body.frame().await.expect("a frame").expect("data");
    let next = String::from_utf8_lossy(next.data_ref().expect("data")).into_owned();
    assert_eq!(next, "data: {\"server\":\"b\"}\n\n");
    assert_eq!(
        sse(Some("notice"), "a\nb"),
        "event: notice\ndata: a\ndata: b\n\n"
    );
}

#[test]
fn query_parameters() {
    assert_eq!(
        param("namespace=lab&name=a%2Fb+c", "name").as_deref(),
        Some("a/b c")
    );
    assert_eq!(param("namespace=lab", "name"), None);
    assert_eq!(param("q=100%", "q").as_deref(), Some("100%"));
    assert_eq!(param("q=%zz", "q").as_deref(), Some("%zz"));
}

#[tokio::test]
async fn with_prometheus_the_tap_says_why_it_is_empty() {
    let mut a = args(&[]);
    a.from.window = None;
    a.from.prometheus = Some("http://127.0.0.1:1".into());
    let state = start(&a);
    let uri: hyper::Uri = "/api/tap".parse().expect("uri");
    let mut body = respond(&hyper::Method::GET, &uri, &state).into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    let first = String::from_utf8_lossy(first.data_ref().expect("data")).into_owned();
    assert!(
        first.contains("event: notice\ndata: the tap needs agents"),
        "{first:?}"
    );
    let (_, _, s) = get(&state, "/api/status");
    let s: Value = serde_json::from_str(&s).expect("JSON");
    assert_eq!(s["tap"], false);
    assert_eq!(s["window_s"], 60.0);
}
