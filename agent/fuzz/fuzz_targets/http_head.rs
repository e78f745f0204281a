//! `hoptrace::proxy::http::strip_hop_by_hop` on hostile request/response heads.
//!
//! The input is a header block (`name:value` lines, see `common.rs`), preceded by a
//! line `101` to call the function with `keep_upgrade` (a 101 response or an upgrade
//! request). Asserted afterwards, against what the function documents (RFC 9110
//! §7.6.1):
//!
//! - no `Transfer-Encoding`, `Keep-Alive` or `Proxy-Connection` field;
//! - without `keep_upgrade`: no `Connection`, `Upgrade` or `HTTP2-Settings`; with
//!   it: `Connection` is exactly `upgrade` (`upgrade, http2-settings` when
//!   `HTTP2-Settings` is there) and `Upgrade` / `HTTP2-Settings` are unchanged;
//! - `TE` is absent, or exactly `trailers` and only when a `TE` value listed
//!   `trailers` (and then it is kept);
//! - no field named by any element of a `Connection` value remains, except the
//!   documented exceptions: `Host` (never hop-by-hop), `TE: trailers`, and with
//!   `keep_upgrade` `Upgrade` and `HTTP2-Settings`;
//! - every other field, and `Host`, is left exactly as it was (same values, order).
#![no_main]

use std::collections::HashSet;

use hoptrace::proxy::http::strip_hop_by_hop;
use http::header::{HeaderMap, HeaderName};
use libfuzzer_sys::fuzz_target;

mod common;

fn values(h: &HeaderMap, name: &HeaderName) -> Vec<Vec<u8>> {
    h.get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

/// The field names a `Connection` value lists: its comma-separated elements,
/// surrounding spaces/tabs removed, that are valid field names.
fn connection_names(h: &HeaderMap) -> HashSet<HeaderName> {
    h.get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect()
}

/// True when some `TE` value lists `trailers` (parameters allowed, any case).
fn te_lists_trailers(h: &HeaderMap) -> bool {
    h.get_all("te").iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            t.split(|&b| b == b';')
                .next()
                .unwrap_or(b"")
                .trim_ascii()
                .eq_ignore_ascii_case(b"trailers")
        })
    })
}

fuzz_target!(|data: &[u8]| {
    // A first line `101` stands for an upgrade: a 101 response, or a request that
    // asks for one (the proxy then passes `keep_upgrade`).
    let (keep_upgrade, block) = match data.strip_prefix(b"101\n") {
        Some(rest) => (true, rest),
        None => (false, data),
    };
    let mut h = common::header_block(block);
    let before = h.clone();
    strip_hop_by_hop(&mut h, keep_upgrade);

    for gone in ["transfer-encoding", "keep-alive", "proxy-connection"] {
        assert!(!h.contains_key(gone), "{gone} kept: {h:?}");
    }
    let connection = HeaderName::from_static("connection");
    let upgrade = HeaderName::from_static("upgrade");
    let te = HeaderName::from_static("te");
    let host = HeaderName::from_static("host");
    let h2_settings = HeaderName::from_static("http2-settings");
    // Fields the function keeps as they came even when `Connection` names them.
    let exempt =
        |n: &HeaderName| *n == host || (keep_upgrade && (*n == upgrade || *n == h2_settings));
    if keep_upgrade {
        let expect: &[u8] = if h.contains_key(&h2_settings) {
            b"upgrade, http2-settings"
        } else {
            b"upgrade"
        };
        assert_eq!(values(&h, &connection), [expect.to_vec()]);
    } else {
        for gone in [&connection, &upgrade, &h2_settings] {
            assert!(!h.contains_key(gone), "{gone} kept: {h:?}");
        }
    }
    let te_after = values(&h, &te);
    assert!(
        te_after.is_empty() || te_after == [b"trailers".to_vec()],
        "{te_after:?}"
    );
    if !te_after.is_empty() {
        assert!(
            te_lists_trailers(&before),
            "TE: trailers invented: {before:?}"
        );
    }
    // `TE: trailers` is kept whenever a visible-ASCII TE value lists it.
    let te_visible = before.get_all(&te).iter().all(|v| v.to_str().is_ok());
    if te_visible && te_lists_trailers(&before) {
        assert_eq!(te_after, [b"trailers".to_vec()], "{before:?}");
    }

    let named = connection_names(&before);
    for n in &named {
        if !(exempt(n) || *n == connection || *n == te) {
            assert!(
                !h.contains_key(n),
                "{n} is listed in Connection but was forwarded: before {before:?}, after {h:?}"
            );
        }
    }
    let hop: HashSet<HeaderName> = [
        "connection",
        "te",
        "transfer-encoding",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "http2-settings",
    ]
    .into_iter()
    .map(HeaderName::from_static)
    .collect();
    for n in before.keys() {
        if exempt(n) || !(hop.contains(n) || named.contains(n)) {
            assert_eq!(values(&h, n), values(&before, n), "{n} changed");
        }
    }
    for n in h.keys() {
        assert!(
            before.contains_key(n) || *n == connection || *n == te,
            "{n} added"
        );
    }
});
