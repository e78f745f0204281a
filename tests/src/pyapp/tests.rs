use super::*;

#[test]
fn parses_span_lines_and_answers() {
    let dir = std::env::temp_dir().join(format!("hoptrace-pyapp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("s.jsonl");
    assert!(read_span_file(&path).expect("missing file").is_empty());
    std::fs::write(
        &path,
        concat!(
            r#"{"attributes": {"http.response.status_code": 200, "url.path": "/x"}, "end_ns": 20, "kind": "SERVER", "name": "GET /x", "parent_span_id": "", "service": "web", "span_id": "00000000000000aa", "start_ns": 10, "status": "UNSET", "trace_id": "0000000000000000000000000000000b"}"#,
            "\n",
            r#"{"attributes": {}, "end_ns": 2"#
        ),
    )
    .expect("write");
    let spans = read_span_file(&path).expect("read");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_kind(), SpanKind::Server);
    assert_eq!(
        spans[0].attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(spans[0].attr("url.path").as_deref(), Some("/x"));

    let answer: AppAnswer = serde_json::from_str(
        r#"{"app": "web", "method": "GET", "path": "/x", "request_body": "", "headers": [["Host", "10.1.1.3:8080"], ["traceparent", "00-ab-cd-03"], ["Connection", "keep-alive"]],
            "peer": "10.1.1.2:40000", "status": 200, "trace_id": "ab", "span_id": "ef", "parent_span_id": "cd", "sampled": true,
            "backend": {"status": 200, "body": {"app": "backend", "method": "GET", "path": "/x", "headers": [], "peer": "fd00:1:1::3:4242", "status": 200, "trace_id": "ab", "span_id": "12", "parent_span_id": "34", "sampled": true}}}"#,
    )
    .expect("answer");
    assert_eq!(answer.header("TRACEPARENT"), Some("00-ab-cd-03"));
    assert_eq!(answer.peer_ip().expect("ip").to_string(), "10.1.1.2");
    let backend = answer.backend_answer().expect("backend");
    assert_eq!(backend.peer_ip().expect("ip6").to_string(), "fd00:1:1::3");
    assert_eq!(
        end_to_end(&answer.headers, &["traceparent"]),
        vec![("host".to_owned(), "10.1.1.3:8080".to_owned())]
    );
}

#[test]
fn grpc_calls_and_outcomes() {
    let calls = [
        GrpcCall::say("hi").with_delay(5),
        GrpcCall::count(3, 10).with_code(10),
    ];
    let json = serde_json::to_value(&calls).expect("json");
    assert_eq!(json[0]["method"], "Say");
    assert_eq!(json[0]["delay_ms"], 5);
    assert_eq!(
        (json[1]["n"].clone(), json[1]["code"].clone()),
        (3.into(), 10.into())
    );

    let line = r#"{"method": "Count", "trace_id": "ab", "span_id": "cd", "sampled": true,
        "sent_metadata": [["traceparent", "00-ab-cd-01"]], "code": "ABORTED", "code_value": 10,
        "details": "x", "replies": [{"text": "0", "seq": 0, "peer": "ipv4:10.1.1.2:4000",
        "trace_id": "ab", "span_id": "ef", "parent_span_id": "12",
        "metadata": [["user-agent", "u"], ["traceparent", "00-ab-12-01"]]}]}"#;
    let out: Vec<GrpcCallOutcome> =
        json_lines(&format!("noise\n{}\n", line.replace('\n', " ")), "t").expect("parse");
    assert_eq!(out[0].code_value, 10);
    assert_eq!(
        out[0].replies[0].metadata("TraceParent"),
        Some("00-ab-12-01")
    );
}
