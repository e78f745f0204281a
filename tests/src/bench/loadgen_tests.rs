use super::*;
use std::net::TcpListener;

/// A keep-alive HTTP server answering every request with `answer`, and an echo
/// server, on loopback threads; returns their addresses.
fn servers(answer: &'static [u8]) -> (SocketAddr, SocketAddr) {
    let http = TcpListener::bind("127.0.0.1:0").expect("bind");
    let echo = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (ha, ea) = (
        http.local_addr().expect("addr"),
        echo.local_addr().expect("addr"),
    );
    std::thread::spawn(move || {
        for s in http.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(p) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..p]).to_string();
                        assert!(head.contains("traceparent: 00-"), "{head}");
                        pending.drain(..p + 4);
                        if s.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (ha, ea)
}

#[test]
fn open_loop_http_sends_exactly_the_schedule() {
    let (http, _) = servers(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
    let r = run(&LoadSpec {
        addr: http,
        proto: Proto::Http,
        rate: Some(500),
        duration: Duration::from_millis(300),
        conns: 4,
        trace_seed: Some(7),
        requests: None,
        distinct_paths: false,
        id_paths: false,
        requests_per_conn: None,
    })
    .expect("run");
    // Scheduled at 0, 2, ..., 298 ms: 150 requests.
    assert_eq!((r.requests, r.errors), (150, 0), "{r:?}");
    assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us && r.p99_us <= r.max_us);
}

#[test]
fn closed_loop_tcp_and_errors() {
    let (http, echo) = servers(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
    let r = run(&LoadSpec {
        addr: echo,
        proto: Proto::Tcp,
        rate: None,
        duration: Duration::from_millis(200),
        conns: 2,
        trace_seed: None,
        requests: None,
        distinct_paths: false,
        id_paths: false,
        requests_per_conn: None,
    })
    .expect("run");
    assert!(r.requests > 10 && r.errors == 0, "{r:?}");
    let bad = run(&LoadSpec {
        addr: http,
        proto: Proto::Http,
        rate: Some(100),
        duration: Duration::from_millis(50),
        conns: 1,
        trace_seed: Some(1),
        requests: None,
        distinct_paths: false,
        id_paths: false,
        requests_per_conn: None,
    });
    assert!(
        format!("{:#}", bad.expect_err("all failed")).contains("status 503"),
        "503s are errors"
    );
}

#[test]
fn parses_responses() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
    assert_eq!(
        parse_response(ok),
        Ok(Some(Response {
            status: 200,
            len: ok.len(),
            close: true
        }))
    );
    assert_eq!(parse_response(&ok[..ok.len() - 1]), Ok(None));
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n";
    assert_eq!(
        parse_response(chunked).map(|r| r.map(|r| r.len)),
        Ok(Some(chunked.len()))
    );
    assert_eq!(parse_response(&chunked[..chunked.len() - 2]), Ok(None));
    assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    assert!(parse_response(b"garbage\r\n\r\n").is_err());
    assert_eq!(percentile_us(&[1000, 2000, 3000, 4000], 0.5), 2.0);
    assert_eq!(percentile_us(&[1000, 2000, 3000, 4000], 0.99), 4.0);
    assert_eq!(percentile_us(&[], 0.5), 0.0);
}

#[test]
fn request_limit_distinct_paths_and_reconnects() {
    let (http, _) = servers(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
    let r = run(&LoadSpec {
        addr: http,
        proto: Proto::Http,
        rate: None,
        duration: Duration::from_secs(10),
        conns: 2,
        trace_seed: Some(3),
        requests: Some(20),
        distinct_paths: true,
        id_paths: false,
        requests_per_conn: Some(5),
    })
    .expect("run");
    assert_eq!((r.requests, r.errors), (20, 0), "{r:?}");
}

#[test]
fn request_paths_one_distinct_or_ids() {
    let mut spec = LoadSpec {
        addr: "127.0.0.1:9".parse().expect("addr"),
        proto: Proto::Http,
        rate: None,
        duration: Duration::from_secs(1),
        conns: 1,
        trace_seed: None,
        requests: Some(1),
        distinct_paths: false,
        id_paths: false,
        requests_per_conn: None,
    };
    assert_eq!(request_path(&spec, 7), "/");
    spec.distinct_paths = true;
    assert_eq!(request_path(&spec, 7), "/p7x");
    assert_ne!(request_path(&spec, 7), request_path(&spec, 8));
    spec.id_paths = true;
    assert_eq!(request_path(&spec, 7), "/p/7");
    // The agent's route template makes every one of them one route.
    assert_eq!(
        hoptrace::golden::route::template(&request_path(&spec, 7), false),
        "/p/{id}"
    );
}
