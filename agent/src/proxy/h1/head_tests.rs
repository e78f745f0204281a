use super::*;

fn req(raw: &str) -> (Request, RequestHead) {
    let mut h = RequestHead::default();
    let r = parse_request(raw.as_bytes(), 16 * 1024, &mut h);
    (r, h)
}

fn fallback(raw: &str) -> &'static str {
    match req(raw).0 {
        Request::Fallback(why) => why,
        other => panic!("{raw:?}: {other:?}"),
    }
}

#[test]
fn plain_requests_are_lean() {
    let raw = "GET /a?b=1 HTTP/1.1\r\nHost: web:8080\r\nUser-Agent: t\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nConnection: keep-alive\r\n\r\nNEXT";
    let (r, h) = req(raw);
    assert!(matches!(r, Request::Lean), "{r:?}");
    let b = raw.as_bytes();
    assert_eq!(h.len, raw.len() - 4);
    assert_eq!(h.method.str(b), "GET");
    assert_eq!(h.target.str(b), "/a?b=1");
    assert_eq!(h.line.str(b), "GET /a?b=1 HTTP/1.1");
    assert_eq!(h.host.map(|s| s.str(b)), Some("web:8080"));
    assert_eq!(h.user_agent.map(|s| s.str(b)), Some("t"));
    assert_eq!(h.trace.len(), 1);
    assert_eq!(h.trace[0].name.str(b), "traceparent");
    assert_eq!(h.fields.len(), 2, "Host and User-Agent; Connection dropped");
    assert_eq!(h.dropped.count(), 1);
    assert!(!h.close);
    assert_eq!(h.framing, Some(Framing::Empty));

    let (r, h) = req("POST / HTTP/1.1\r\nContent-Length: 12\r\nConnection: close\r\n\r\n");
    assert!(matches!(r, Request::Lean));
    assert_eq!(h.framing, Some(Framing::Length(12)));
    assert!(h.close);
    let (_, h) = req("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nTE: trailers\r\n\r\n");
    assert_eq!(h.framing, Some(Framing::Chunked));
    let (r, _) = req("GET / HTTP/1.1\r\nHost: a\r\n");
    assert!(matches!(r, Request::Partial));
}

#[test]
fn unusual_heads_go_to_hyper() {
    for raw in [
        "GET / HTTP/1.0\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: x-private\r\nx-private: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nKeep-Alive: timeout=5\r\n\r\n",
        "GET / HTTP/1.1\r\nTE: gzip\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\x01bad\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n",
        "GET / HTTP/1.1\r\nHost: a\n\r\n",
    ] {
        fallback(raw);
    }
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..MAX_HEADERS + 1 {
        many.push_str(&format!("x-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(fallback(&many), "fields");
    // A head still partial at the buffer's size: hyper reads the rest.
    let mut h = RequestHead::default();
    let long = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(100));
    assert!(matches!(
        parse_request(long.as_bytes(), 64, &mut h),
        Request::Fallback("head")
    ));
}

fn resp(raw: &str, head_request: bool) -> (Response, ResponseHead) {
    let mut h = ResponseHead::default();
    let r = parse_response(raw.as_bytes(), 64 * 1024, head_request, &mut h);
    (r, h)
}

#[test]
fn responses_are_framed_as_rfc_9112_says() {
    let raw = "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nok";
    let (r, h) = resp(raw, false);
    assert_eq!(r, Response::Complete);
    assert_eq!(h.status, 200);
    assert_eq!(h.framing, Some(Framing::Length(2)));
    assert!(h.reusable);
    assert_eq!(h.dropped.count(), 2);
    let mut out = Vec::new();
    write_head(&mut out, raw.as_bytes(), h.line, &h.fields);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n"
    );

    let framing = |raw: &str, head: bool| resp(raw, head).1.framing;
    assert_eq!(
        framing(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false
        ),
        Some(Framing::Chunked)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
        Some(Framing::UntilClose)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\n\r\n", false),
        Some(Framing::UntilClose)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
        Some(Framing::Empty)
    );
    assert_eq!(
        framing("HTTP/1.1 204 No Content\r\n\r\n", false),
        Some(Framing::Empty)
    );
    assert_eq!(
        framing(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false
        ),
        Some(Framing::Empty)
    );
    assert_eq!(
        framing("HTTP/1.1 100 Continue\r\n\r\n", false),
        Some(Framing::Empty)
    );

    let (_, h) = resp(
        "HTTP/1.1 200 OK\r\nConnection: close, x-a\r\nx-a: 1\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    assert!(!h.reusable);
    assert_eq!(h.dropped.count(), 2, "Connection and the field it names");
    // A bare-LF response head is written again with CRLF.
    let raw = "HTTP/1.1 200 OK\nA: b\nContent-Length: 0\n\n";
    let (r, h) = resp(raw, false);
    assert_eq!(r, Response::Complete);
    let mut out = Vec::new();
    write_head(&mut out, raw.as_bytes(), h.line, &h.fields);
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 0\r\n");
    let (_, h) = resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
    assert!(!h.reusable, "HTTP/1.0 closes by default");
    let (_, h) = resp("HTTP/1.1 200 OK\r\n\r\n", false);
    assert!(!h.reusable, "a body until close ends the connection");

    for bad in [
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
    ] {
        assert!(
            matches!(resp(bad, false).0, Response::Invalid(_)),
            "{bad:?}"
        );
    }
    assert_eq!(
        resp("HTTP/1.1 200 OK\r\nA: b\r\n", false).0,
        Response::Partial
    );
}

#[test]
fn response_heads_go_on_as_they_came_unless_something_is_dropped() {
    let write = |raw: &str, close: bool| {
        let (r, h) = resp(raw, false);
        assert_eq!(r, Response::Complete, "{raw:?}");
        let mut out = Vec::new();
        h.write(&mut out, raw.as_bytes(), close);
        String::from_utf8(out).expect("utf-8")
    };
    // Nothing dropped, CRLF throughout: the same bytes, spacing and case kept.
    let raw = "HTTP/1.1 200 OK\r\nServer:nginx\r\ncontent-length:  2\r\n\r\n";
    assert_eq!(write(raw, false), raw);
    assert_eq!(
        write(raw, true),
        "HTTP/1.1 200 OK\r\nServer:nginx\r\ncontent-length:  2\r\nconnection: close\r\n\r\n"
    );
    // A dropped field: written again without it.
    assert_eq!(
        write(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
            false
        ),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    );
    // A bare LF anywhere: written again with CRLF.
    assert_eq!(
        write("HTTP/1.1 200 OK\r\nA: b\nContent-Length: 0\r\n\r\n", true),
        "HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
    );
}

#[test]
fn dropped_lines_are_cut_out_of_the_bytes() {
    let raw =
        "GET / HTTP/1.1\r\nConnection: keep-alive\r\nHost: a\r\nconnection:close \r\nX: y\r\n\r\n";
    let (r, h) = req(raw);
    assert!(matches!(r, Request::Lean));
    assert_eq!(h.dropped.count(), 2);
    let mut out = Vec::new();
    assert!(h.dropped.copy_without(&mut out, raw.as_bytes(), h.len));
    assert_eq!(out, b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n");
    // More dropped lines than remembered: the caller writes the head again.
    let many = format!(
        "HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n",
        "Keep-Alive: 1\r\n".repeat(Dropped::KNOWN + 1)
    );
    let (_, h) = resp(&many, false);
    let mut out = Vec::new();
    assert!(!h.dropped.copy_without(&mut out, many.as_bytes(), h.len));
    assert!(out.is_empty());
    h.write(&mut out, many.as_bytes(), false);
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
}

#[test]
fn values_read_as_text_only_when_they_are_utf8() {
    let mut raw = b"GET / HTTP/1.1\r\nUser-Agent: caf\xc3\xa9\r\nHost: h\xff\r\n\r\n".to_vec();
    let mut h = RequestHead::default();
    assert!(matches!(parse_request(&raw, 1024, &mut h), Request::Lean));
    assert_eq!(h.user_agent.map(|s| s.str(&raw)), Some("café"));
    assert_eq!(h.host.map(|s| s.str(&raw)), Some(""), "not UTF-8");
    raw[11] = b'\xff';
    assert_eq!(
        h.user_agent.map(|s| s.str(&raw)),
        Some("café"),
        "outside the span"
    );
}

#[test]
fn names_compare_as_case_insensitive_tokens() {
    const TCHAR: &[u8] =
        b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let names = [
        "te",
        "host",
        "upgrade",
        "x-b3-spanid",
        "connection",
        "content-length",
        "proxy-connection",
        "transfer-encoding",
        "x-b3-parentspanid",
    ];
    for lower in names {
        // Every token character in every position, against the plain rule.
        for at in 0..lower.len() {
            for &c in TCHAR {
                let mut name = lower.as_bytes().to_vec();
                name[at] = c;
                let name = std::str::from_utf8(&name).expect("ASCII");
                assert_eq!(
                    eq(name, lower),
                    name.eq_ignore_ascii_case(lower),
                    "{name} / {lower}"
                );
            }
        }
        assert!(eq(&lower.to_uppercase(), lower));
        assert!(!eq(&lower[1..], lower), "length");
    }
}
