use super::b3::*;
use super::w3c::*;
use super::*;
use http::header::HeaderName;
use proptest::prelude::*;

// Test vectors: W3C Trace Context (https://www.w3.org/TR/trace-context/),
// section "Traceparent Header" > "Examples of HTTP traceparent Headers" and
// "Versioning of traceparent", plus the cases of the W3C test suite
// (w3c/trace-context test/test.py, `test_traceparent_*`). B3 vectors come from
// openzipkin/b3-propagation README, "Multiple Headers" and "Single Header".

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const SUITE_TRACE: &str = "12345678901234567890123456789012";

fn tid(s: &str) -> TraceId {
    TraceId::from_hex(s).expect("valid trace id")
}

fn sid(s: &str) -> SpanId {
    SpanId::from_hex(s).expect("valid span id")
}

fn short_tid(s: &str) -> TraceId {
    TraceId::from_hex(&format!("0000000000000000{s}")).expect("valid trace id")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    h
}

/// Every (name, value bytes) pair, in map order.
fn snapshot(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// The snapshot without the named headers.
fn snapshot_except(h: &HeaderMap, names: &[&str]) -> Vec<(String, Vec<u8>)> {
    snapshot(h)
        .into_iter()
        .filter(|(n, _)| !names.contains(&n.as_str()))
        .collect()
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().expect("ascii"))
}

// ---------- ids ----------

#[test]
fn ids_hex_round_trip_and_reject_bad_input() {
    assert_eq!(tid(TRACE).to_hex(), TRACE);
    assert_eq!(sid(SPAN).to_hex(), SPAN);
    assert_eq!(tid(TRACE).to_string(), TRACE);
    assert_eq!(sid(SPAN).to_string(), SPAN);
    assert_eq!(TraceId::from_hex(&TRACE.to_uppercase()), None);
    assert_eq!(SpanId::from_hex(&SPAN.to_uppercase()), None);
    assert_eq!(TraceId::from_hex(&"0".repeat(32)), None);
    assert_eq!(SpanId::from_hex(&"0".repeat(16)), None);
    assert_eq!(TraceId::from_hex(&TRACE[..31]), None);
    assert_eq!(TraceId::from_hex(&format!("{TRACE}0")), None);
    assert_eq!(TraceId::from_hex(SPAN), None);
    assert_eq!(SpanId::from_hex("00f067aa0ba902bg"), None);
    assert_eq!(SpanId::from_hex(""), None);
    assert_eq!(SpanId::from_hex("00f067aa0ba902b\u{e9}"), None);
}

#[test]
fn random_ids_are_valid_and_distinct() {
    let a = TraceId::random();
    let b = TraceId::random();
    assert!(a.is_valid() && b.is_valid());
    assert_ne!(a, b);
    let c = SpanId::random();
    let d = SpanId::random();
    assert!(c.is_valid() && d.is_valid());
    assert_ne!(c, d);
    assert_eq!(TraceId::from_hex(&a.to_hex()), Some(a));
    assert_eq!(SpanId::from_hex(&c.to_hex()), Some(c));
}

const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";
const B3_PARENT: &str = "05e3ac9a4f6e3b90";
const M_TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const M_SPAN: &str = "a2fb4a1d1a96d312";
const M_PARENT: &str = "0020000000000001";

// ---------- precedence ----------

#[test]
fn w3c_wins_over_b3() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let b3 = format!("{B3_TRACE}-{B3_SPAN}-1");
    let h = headers(&[
        ("b3", &b3),
        ("x-b3-traceid", M_TRACE),
        ("x-b3-spanid", M_SPAN),
        ("traceparent", &tp),
    ]);
    let ctx = extract(&h).expect("ctx");
    assert_eq!(ctx.format(), Format::W3c);
    assert_eq!(ctx.trace_id, tid(TRACE));
}

#[test]
fn invalid_w3c_falls_back_to_b3() {
    let bad_tp = format!("ff-{TRACE}-{SPAN}-01");
    let b3 = format!("{B3_TRACE}-{B3_SPAN}-1");
    let h = headers(&[("traceparent", &bad_tp), ("b3", &b3)]);
    let ctx = extract(&h).expect("ctx");
    assert_eq!(ctx.format(), Format::B3Single);
    assert_eq!(ctx.trace_id, tid(B3_TRACE));

    let h = headers(&[
        ("traceparent", &bad_tp),
        ("x-b3-traceid", M_TRACE),
        ("x-b3-spanid", M_SPAN),
    ]);
    let ctx = extract(&h).expect("ctx");
    assert_eq!(ctx.format(), Format::B3Multi);
    assert_eq!(ctx.trace_id, tid(M_TRACE));

    // A repeated traceparent is invalid too.
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let h = headers(&[("traceparent", &tp), ("traceparent", &tp), ("b3", &b3)]);
    assert_eq!(extract(&h).map(|c| c.format()), Some(Format::B3Single));
}

#[test]
fn b3_single_wins_over_multi_unless_sampling_only_or_invalid() {
    let b3 = format!("{B3_TRACE}-{B3_SPAN}-0");
    let multi = [("x-b3-traceid", M_TRACE), ("x-b3-spanid", M_SPAN)];
    let mut pairs = multi.to_vec();
    pairs.push(("b3", &b3));
    assert_eq!(
        extract(&headers(&pairs)).map(|c| c.format()),
        Some(Format::B3Single)
    );

    for single in ["0", "d", "garbage"] {
        let mut pairs = multi.to_vec();
        pairs.push(("b3", single));
        let ctx = extract(&headers(&pairs)).expect("ctx");
        assert_eq!(ctx.format(), Format::B3Multi, "{single}");
        assert_eq!(ctx.trace_id, tid(M_TRACE));
    }
}

#[test]
fn no_context() {
    assert_eq!(extract(&HeaderMap::new()), None);
    let h = headers(&[("tracestate", "congo=t61rcWkgMzE"), ("host", "b:8080")]);
    assert_eq!(extract(&h), None);
}

fn b3_expect(
    format: Format,
    trace_id: TraceId,
    span_id: SpanId,
    short: bool,
    state: &str,
) -> TraceContext {
    let sampling = match state {
        "defer" => B3Sampling::Defer,
        "0" => B3Sampling::Deny,
        "1" => B3Sampling::Accept,
        "d" => B3Sampling::Debug,
        other => panic!("bad state {other}"),
    };
    let b3 = B3State {
        short_trace_id: short,
        sampling,
    };
    TraceContext {
        trace_id,
        span_id,
        propagation: match format {
            Format::B3Single => Propagation::B3Single(b3),
            Format::B3Multi => Propagation::B3Multi(b3),
            Format::W3c => panic!("not a B3 format"),
        },
    }
}

fn noise() -> Vec<(&'static str, &'static str)> {
    vec![
        ("host", "b.default.svc:8080"),
        ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ("tracestate", " , foo=1 \t"),
        ("x-request-id", "abc-123"),
        ("baggage", "userId=alice"),
        ("accept", "*/*"),
    ]
}

mod b3_parse;
mod inject;
mod properties;
mod w3c_parse;
