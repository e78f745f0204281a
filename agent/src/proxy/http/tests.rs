use super::*;

#[test]
fn hop_by_hop_fields_are_removed() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-private"),
    );
    h.insert("x-private", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    h.insert("traceparent", HeaderValue::from_static("00-x"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    strip_hop_by_hop(&mut h, false);
    assert!(h.get(header::CONNECTION).is_none());
    assert!(h.get("x-private").is_none());
    assert!(h.get("keep-alive").is_none());
    assert!(h.get(header::TRANSFER_ENCODING).is_none());
    assert!(h.get(header::UPGRADE).is_none());
    assert_eq!(
        h.get(header::TE).map(|v| v.as_bytes()),
        Some(&b"trailers"[..])
    );
    assert_eq!(
        h.get("traceparent").map(|v| v.as_bytes()),
        Some(&b"00-x"[..])
    );
}

#[test]
fn te_trailers_survives_connection_te() {
    // RFC 9110 §10.1.4: TE is announced with `Connection: TE`.
    let mut h = HeaderMap::new();
    h.insert(header::CONNECTION, HeaderValue::from_static("TE"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    strip_hop_by_hop(&mut h, false);
    assert_eq!(
        h.get(header::TE).map(|v| v.as_bytes()),
        Some(&b"trailers"[..])
    );
    let mut h = HeaderMap::new();
    h.insert(header::CONNECTION, HeaderValue::from_static("te"));
    h.insert(header::TE, HeaderValue::from_static("deflate;q=0.5"));
    strip_hop_by_hop(&mut h, false);
    assert!(h.get(header::TE).is_none());
}

#[test]
fn fields_named_next_to_obs_text_are_removed() {
    // Found by the `http_head` fuzz target (agent/fuzz/regressions/http_head).
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_bytes(b"\x80, x-a").expect("obs-text is a valid value"),
    );
    h.insert("x-a", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut h, false);
    assert!(h.get("x-a").is_none());
    assert!(h.get(header::CONNECTION).is_none());
}

#[test]
fn host_named_in_connection_is_kept() {
    let mut h = HeaderMap::new();
    h.insert(header::CONNECTION, HeaderValue::from_static("host, x-a"));
    h.insert(header::HOST, HeaderValue::from_static("web:8080"));
    h.insert("x-a", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut h, false);
    assert_eq!(
        h.get(header::HOST).map(|v| v.as_bytes()),
        Some(&b"web:8080"[..])
    );
    assert!(h.get("x-a").is_none());
}

#[test]
fn h2c_upgrade_keeps_http2_settings() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("Upgrade, HTTP2-Settings"),
    );
    h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    h.insert(
        HTTP2_SETTINGS,
        HeaderValue::from_static("AAMAAABkAAQCAAAAAAIAAAAA"),
    );
    assert!(is_upgrade(&h));
    strip_hop_by_hop(&mut h, true);
    assert_eq!(
        h.get(HTTP2_SETTINGS).map(|v| v.as_bytes()),
        Some(&b"AAMAAABkAAQCAAAAAAIAAAAA"[..])
    );
    assert_eq!(
        h.get(header::CONNECTION).map(|v| v.as_bytes()),
        Some(&b"upgrade, http2-settings"[..])
    );
    // Not an upgrade: the field is connection-specific and goes.
    let mut h = HeaderMap::new();
    h.insert(
        HTTP2_SETTINGS,
        HeaderValue::from_static("AAMAAABkAAQCAAAAAAIAAAAA"),
    );
    strip_hop_by_hop(&mut h, false);
    assert!(h.get(HTTP2_SETTINGS).is_none());
}

#[test]
fn upgrade_handshake_keeps_upgrade() {
    let mut h = HeaderMap::new();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(is_upgrade(&h));
    strip_hop_by_hop(&mut h, true);
    assert_eq!(
        h.get(header::UPGRADE).map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    assert_eq!(
        h.get(header::CONNECTION).map(|v| v.as_bytes()),
        Some(&b"upgrade"[..])
    );
}
