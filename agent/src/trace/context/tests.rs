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

// ---------- W3C traceparent ----------

#[test]
fn w3c_spec_examples_are_valid() {
    // "Examples of HTTP traceparent Headers": sampled / not sampled.
    assert_eq!(
        parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Some((tid(TRACE), sid(SPAN), 0x01))
    );
    assert_eq!(
        parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        Some((tid(TRACE), sid(SPAN), 0x00))
    );
    // "Relationship Between the Headers" examples.
    assert_eq!(
        parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        Some((
            tid("0af7651916cd43dd8448eb211c80319c"),
            sid("b7ad6b7169203331"),
            0x01
        ))
    );
    // Test suite: test_traceparent_included_tracestate_missing.
    assert_eq!(
        parse_traceparent("00-12345678901234567890123456789012-1234567890123456-01"),
        Some((tid(SUITE_TRACE), sid("1234567890123456"), 0x01))
    );
}

#[test]
fn w3c_flags_are_kept_verbatim() {
    // "trace-flags": a bit field; 01 and 03 are sampled, 02 and 03 random.
    for (flags, sampled) in [
        (0x00, false),
        (0x01, true),
        (0x02, false),
        (0x03, true),
        (0x09, true),
        (0xfe, false),
        (0xff, true),
    ] {
        let value = format!("00-{TRACE}-{SPAN}-{flags:02x}");
        assert_eq!(
            parse_traceparent(&value),
            Some((tid(TRACE), sid(SPAN), flags))
        );
        let ctx = extract(&headers(&[("traceparent", &value)])).expect("ctx");
        assert_eq!(ctx.flags(), flags);
        assert_eq!(ctx.sampled(), sampled, "{value}");
        assert_eq!(ctx.propagation, Propagation::W3c { flags });
    }
}

#[test]
fn w3c_version_ff_is_invalid() {
    // "version": Version ff is forbidden (test_traceparent_version_0xff).
    assert_eq!(
        parse_traceparent("ff-12345678901234567890123456789012-1234567890123456-01"),
        None
    );
    assert_eq!(
        parse_traceparent("ff-12345678901234567890123456789012-1234567890123456-01-00"),
        None
    );
}

#[test]
fn w3c_future_version_is_parsed_per_versioning_rules() {
    // "Versioning of traceparent" (test_traceparent_version_0xcc).
    let expect = Some((tid(SUITE_TRACE), sid("1234567890123456"), 0x01));
    assert_eq!(
        parse_traceparent("cc-12345678901234567890123456789012-1234567890123456-01"),
        expect
    );
    assert_eq!(
        parse_traceparent(
            "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like"
        ),
        expect
    );
    assert_eq!(
        parse_traceparent("01-12345678901234567890123456789012-1234567890123456-01-"),
        expect
    );
    assert_eq!(
        parse_traceparent("fe-12345678901234567890123456789012-1234567890123456-01"),
        expect
    );
    // The flags must be at the end or followed by a dash.
    assert_eq!(
        parse_traceparent(
            "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like"
        ),
        None
    );
    assert_eq!(
        parse_traceparent("cc-12345678901234567890123456789012-1234567890123456-012"),
        None
    );
    // Shorter than 55 characters: not parsed.
    assert_eq!(
        parse_traceparent("cc-12345678901234567890123456789012-1234567890123456-1"),
        None
    );
    // The version-00 field rules still apply to the first 55 characters.
    assert_eq!(
        parse_traceparent("cc-00000000000000000000000000000000-1234567890123456-01"),
        None
    );
    assert_eq!(
        parse_traceparent("cc-12345678901234567890123456789012-123456789012345X-01"),
        None
    );
    // Only the flags version 00 knows are kept (re-emitted as version 00).
    assert_eq!(
        parse_traceparent("cc-12345678901234567890123456789012-1234567890123456-ff-x"),
        Some((tid(SUITE_TRACE), sid("1234567890123456"), 0x03))
    );
    assert_eq!(
        parse_traceparent("02-12345678901234567890123456789012-1234567890123456-04"),
        Some((tid(SUITE_TRACE), sid("1234567890123456"), 0x00))
    );
}

#[test]
fn w3c_version_00_rejects_trailing_data() {
    // test_traceparent_version_0x00.
    for v in [
        "00-12345678901234567890123456789012-1234567890123456-01.",
        "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        "00-12345678901234567890123456789012-1234567890123456-01-",
    ] {
        assert_eq!(parse_traceparent(v), None, "{v}");
    }
}

#[test]
fn w3c_invalid_values() {
    let cases = [
        // version: illegal characters, too long, too short, uppercase.
        ".0-12345678901234567890123456789012-1234567890123456-01",
        "0.-12345678901234567890123456789012-1234567890123456-01",
        "000-12345678901234567890123456789012-1234567890123456-01",
        "0000-12345678901234567890123456789012-1234567890123456-01",
        "0-12345678901234567890123456789012-1234567890123456-01",
        "CC-12345678901234567890123456789012-1234567890123456-01",
        "0A-12345678901234567890123456789012-1234567890123456-01",
        // trace-id: all zero, illegal characters, too long, too short, uppercase.
        "00-00000000000000000000000000000000-1234567890123456-01",
        "00-.2345678901234567890123456789012-1234567890123456-01",
        "00-1234567890123456789012345678901.-1234567890123456-01",
        "00-123456789012345678901234567890123-1234567890123456-01",
        "00-1234567890123456789012345678901-1234567890123456-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473G-00f067aa0ba902b7-01",
        // parent-id: all zero, illegal characters, too long, too short, uppercase.
        "00-12345678901234567890123456789012-0000000000000000-01",
        "00-12345678901234567890123456789012-.234567890123456-01",
        "00-12345678901234567890123456789012-123456789012345.-01",
        "00-12345678901234567890123456789012-12345678901234567-01",
        "00-12345678901234567890123456789012-123456789012345-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
        // trace-flags: illegal characters, too long, too short, uppercase.
        "00-12345678901234567890123456789012-1234567890123456-.0",
        "00-12345678901234567890123456789012-1234567890123456-0.",
        "00-12345678901234567890123456789012-1234567890123456-001",
        "00-12345678901234567890123456789012-1234567890123456-1",
        "00-12345678901234567890123456789012-1234567890123456-0A",
        // separators.
        "00_12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012_1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456_01",
        "00-12345678901234567890123456789012--1234567890123456-01",
        "00 12345678901234567890123456789012 1234567890123456 01",
        "00-12345678901234567890123456789012-1234567890123456-01x",
        // whitespace inside the value, other whitespace around it.
        "00 -12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012- 234567890123456-01",
        "\n00-12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456-01\r",
        // empty / garbage.
        "",
        " ",
        "00",
        "00-",
        "---------------------------------------------------------",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b\u{e9}-01",
    ];
    for v in cases {
        assert_eq!(parse_traceparent(v), None, "{v:?}");
        if let Ok(hv) = HeaderValue::from_str(v) {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, hv);
            assert_eq!(extract(&h), None, "{v:?}");
        }
    }
}

#[test]
fn w3c_surrounding_ows_is_ignored() {
    // test_traceparent_ows_handling: HTTP strips OWS around field values.
    for v in [
        " 00-12345678901234567890123456789012-1234567890123456-01",
        "\t00-12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456-01 ",
        "00-12345678901234567890123456789012-1234567890123456-01\t",
        "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
    ] {
        assert_eq!(
            parse_traceparent(v),
            Some((tid(SUITE_TRACE), sid("1234567890123456"), 0x01)),
            "{v:?}"
        );
        let ctx = extract(&headers(&[("traceparent", v)])).expect("ctx");
        assert_eq!(ctx.trace_id, tid(SUITE_TRACE));
    }
}

#[test]
fn w3c_header_name_is_case_insensitive() {
    // test_traceparent_header_name_valid_casing.
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        let h = headers(&[(
            name,
            "00-12345678901234567890123456789012-1234567890123456-01",
        )]);
        assert_eq!(extract(&h).expect("ctx").trace_id, tid(SUITE_TRACE));
    }
    // test_traceparent_header_name: other names are not traceparent.
    for name in ["trace-parent", "trace.parent"] {
        let h = headers(&[(
            name,
            "00-12345678901234567890123456789012-1234567890123456-01",
        )]);
        assert_eq!(extract(&h), None);
    }
}

#[test]
fn w3c_duplicate_or_non_ascii_header_is_invalid() {
    // test_traceparent_duplicated.
    let h = headers(&[
        (
            "traceparent",
            "00-12345678901234567890123456789011-1234567890123456-01",
        ),
        (
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-01",
        ),
    ]);
    assert_eq!(extract(&h), None);

    let mut h = HeaderMap::new();
    let mut bytes = format!("00-{TRACE}-{SPAN}-01").into_bytes();
    bytes.push(0xff);
    h.insert(
        TRACEPARENT,
        HeaderValue::from_bytes(&bytes).expect("obs-text value"),
    );
    assert_eq!(extract(&h), None);
}

#[test]
fn format_traceparent_is_version_00_lowercase() {
    assert_eq!(
        format_traceparent(&tid(TRACE), &sid(SPAN), 0x01),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(
        format_traceparent(&tid(TRACE), &sid(SPAN), 0xab),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ab"
    );
}

// ---------- B3 single ----------

const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";
const B3_PARENT: &str = "05e3ac9a4f6e3b90";

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

#[test]
fn b3_single_spec_examples() {
    // README "Single Header": `b3: {TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}`.
    let cases = [
        (format!("{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}"), "1"),
        (format!("{B3_TRACE}-{B3_PARENT}-1"), "1"),
        (format!("{B3_TRACE}-{B3_PARENT}-d"), "d"),
        (format!("{B3_TRACE}-{B3_PARENT}-0"), "0"),
        (format!("{B3_TRACE}-{B3_PARENT}"), "defer"),
        (format!("{B3_TRACE}-{B3_SPAN}-0-{B3_PARENT}"), "0"),
        (format!("{B3_TRACE}-{B3_SPAN}-d-{B3_PARENT}"), "d"),
    ];
    for (value, state) in cases {
        let span = value.split('-').nth(1).expect("span");
        let got = parse_b3_single(&value).unwrap_or_else(|| panic!("{value}"));
        assert_eq!(
            got,
            b3_expect(Format::B3Single, tid(B3_TRACE), sid(span), false, state),
            "{value}"
        );
        let h = headers(&[("B3", &value)]);
        assert_eq!(extract(&h), Some(got));
    }
}

#[test]
fn b3_single_64_bit_trace_id() {
    let value = "64fe8b2a57d3eff7-05e3ac9a4f6e3b90-1";
    let ctx = parse_b3_single(value).expect("ctx");
    assert!(ctx.b3().expect("b3").short_trace_id);
    assert_eq!(ctx.trace_id, short_tid("64fe8b2a57d3eff7"));
    assert_eq!(ctx.trace_id.to_hex(), "000000000000000064fe8b2a57d3eff7");
    // A 128-bit id whose high half is zero stays 128-bit.
    let ctx = parse_b3_single("000000000000000064fe8b2a57d3eff7-05e3ac9a4f6e3b90-1").expect("ctx");
    assert!(!ctx.b3().expect("b3").short_trace_id);
    assert_eq!(ctx.trace_id, short_tid("64fe8b2a57d3eff7"));
}

#[test]
fn b3_single_invalid_values() {
    let cases = [
        // Sampling-only forms carry no ids.
        "0",
        "1",
        "d",
        "",
        // Bad sampling tokens.
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-2",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-true",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-D",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-",
        // Parent without sampling state, bad parent, extra fields.
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-e457b5a2e4d86bd1",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-1-e457b5a2e4d86bd",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-1-0000000000000000",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-1-E457B5A2E4D86BD1",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-1-e457b5a2e4d86bd1-",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-1-e457b5a2e4d86bd1-x",
        "80f198ee56343ba864fe8b2a57d3eff7--1",
        // Bad trace ids.
        "80F198EE56343BA864FE8B2A57D3EFF7-05e3ac9a4f6e3b90-1",
        "80f198ee56343ba864fe8b2a57d3eff-05e3ac9a4f6e3b90-1",
        "80f198ee56343ba864fe8b2a57d3eff70-05e3ac9a4f6e3b90-1",
        "80f198ee56343ba864fe-05e3ac9a4f6e3b90-1",
        "00000000000000000000000000000000-05e3ac9a4f6e3b90-1",
        "0000000000000000-05e3ac9a4f6e3b90-1",
        "64fe8b2a57d3eff-05e3ac9a4f6e3b90-1",
        // Bad span ids.
        "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1",
        "80f198ee56343ba864fe8b2a57d3eff7-05E3AC9A4F6E3B90-1",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b9-1",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b900-1",
        "80f198ee56343ba864fe8b2a57d3eff7",
        "80f198ee56343ba864fe8b2a57d3eff7-",
        // Whitespace inside.
        "80f198ee56343ba864fe8b2a57d3eff7 -05e3ac9a4f6e3b90-1",
        "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90- 1",
    ];
    for v in cases {
        assert_eq!(parse_b3_single(v), None, "{v:?}");
        let h = headers(&[("b3", v)]);
        assert_eq!(extract(&h), None, "{v:?}");
    }
}

#[test]
fn b3_single_ows_duplicate_non_ascii() {
    let value = format!(" \t{B3_TRACE}-{B3_PARENT}-1\t ");
    assert_eq!(
        extract(&headers(&[("b3", &value)])).map(|c| c.span_id),
        Some(sid(B3_PARENT))
    );
    let v = format!("{B3_TRACE}-{B3_PARENT}-1");
    assert_eq!(extract(&headers(&[("b3", &v), ("b3", &v)])), None);
    let mut h = HeaderMap::new();
    let mut bytes = v.into_bytes();
    bytes.push(0x80);
    h.insert(B3, HeaderValue::from_bytes(&bytes).expect("obs-text"));
    assert_eq!(extract(&h), None);
}

// ---------- B3 multi ----------

const M_TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const M_SPAN: &str = "a2fb4a1d1a96d312";
const M_PARENT: &str = "0020000000000001";

#[test]
fn b3_multi_spec_example() {
    // README "Multiple Headers" examples, with the spec's mixed-case names.
    let h = headers(&[
        ("X-B3-TraceId", M_TRACE),
        ("X-B3-ParentSpanId", M_PARENT),
        ("X-B3-SpanId", M_SPAN),
        ("X-B3-Sampled", "1"),
    ]);
    assert_eq!(
        extract(&h),
        Some(b3_expect(
            Format::B3Multi,
            tid(M_TRACE),
            sid(M_SPAN),
            false,
            "1"
        ))
    );
}

#[test]
fn b3_multi_sampling_states() {
    let cases: [(&[(&str, &str)], &str); 10] = [
        (&[("x-b3-sampled", "1")], "1"),
        (&[("x-b3-sampled", "true")], "1"),
        (&[("x-b3-sampled", "0")], "0"),
        (&[("x-b3-sampled", "false")], "0"),
        (&[], "defer"),
        (&[("x-b3-flags", "1")], "d"),
        (&[("x-b3-flags", "1"), ("x-b3-sampled", "1")], "d"),
        // Debug implies accept, whatever x-b3-sampled says.
        (&[("x-b3-flags", "1"), ("x-b3-sampled", "0")], "d"),
        (&[("x-b3-flags", "0"), ("x-b3-sampled", "1")], "1"),
        (&[("x-b3-flags", "0")], "defer"),
    ];
    for (extra, state) in cases {
        for parent in [None, Some(M_PARENT)] {
            let mut pairs = vec![("x-b3-traceid", M_TRACE), ("x-b3-spanid", M_SPAN)];
            if let Some(p) = parent {
                pairs.push(("x-b3-parentspanid", p));
            }
            pairs.extend_from_slice(extra);
            assert_eq!(
                extract(&headers(&pairs)),
                Some(b3_expect(
                    Format::B3Multi,
                    tid(M_TRACE),
                    sid(M_SPAN),
                    false,
                    state
                )),
                "{pairs:?}"
            );
        }
    }
}

#[test]
fn b3_multi_64_bit_trace_id() {
    let h = headers(&[
        ("x-b3-traceid", "48485a3953bb6124"),
        ("x-b3-spanid", M_SPAN),
        ("x-b3-sampled", "1"),
    ]);
    let ctx = extract(&h).expect("ctx");
    assert!(ctx.b3().expect("b3").short_trace_id);
    assert_eq!(ctx.trace_id, short_tid("48485a3953bb6124"));
}

#[test]
fn b3_multi_invalid() {
    let good = [
        ("x-b3-traceid", M_TRACE),
        ("x-b3-spanid", M_SPAN),
        ("x-b3-parentspanid", M_PARENT),
        ("x-b3-sampled", "1"),
    ];
    let with = |name: &'static str, value: Option<&'static str>| -> HeaderMap {
        let mut pairs: Vec<(&str, &str)> =
            good.iter().copied().filter(|(n, _)| *n != name).collect();
        if let Some(v) = value {
            pairs.push((name, v));
        }
        headers(&pairs)
    };
    assert!(extract(&headers(&good)).is_some());
    let cases: &[(&'static str, Option<&'static str>)] = &[
        ("x-b3-traceid", None),
        ("x-b3-spanid", None),
        ("x-b3-traceid", Some("463AC35C9F6413AD48485A3953BB6124")),
        ("x-b3-traceid", Some("463ac35c9f6413ad48485a3953bb612")),
        ("x-b3-traceid", Some("463ac35c9f6413ad48485a3953bb61240")),
        ("x-b3-traceid", Some("00000000000000000000000000000000")),
        ("x-b3-traceid", Some("0000000000000000")),
        ("x-b3-traceid", Some("")),
        ("x-b3-spanid", Some("0000000000000000")),
        ("x-b3-spanid", Some("A2FB4A1D1A96D312")),
        ("x-b3-spanid", Some("a2fb4a1d1a96d31")),
        ("x-b3-spanid", Some("a2fb4a1d1a96d312a2")),
        ("x-b3-parentspanid", Some("002000000000000")),
        ("x-b3-parentspanid", Some("0000000000000000")),
        ("x-b3-parentspanid", Some("")),
        ("x-b3-sampled", Some("yes")),
        ("x-b3-sampled", Some("d")),
        ("x-b3-sampled", Some("2")),
        ("x-b3-sampled", Some("")),
        ("x-b3-flags", Some("2")),
        ("x-b3-flags", Some("true")),
    ];
    for (name, value) in cases {
        assert_eq!(extract(&with(name, *value)), None, "{name}: {value:?}");
    }
    // Sampling-only multi headers carry no ids.
    assert_eq!(extract(&headers(&[("x-b3-sampled", "0")])), None);
    assert_eq!(extract(&headers(&[("x-b3-flags", "1")])), None);
    // Repeated headers are invalid.
    for (name, _) in good {
        let mut h = headers(&good);
        h.append(name, HeaderValue::from_static("1"));
        assert_eq!(extract(&h), None, "{name} repeated");
    }
    // Non-ASCII value.
    let mut h = headers(&good);
    h.insert(
        X_B3_SPANID,
        HeaderValue::from_bytes(b"a2fb4a1d1a96d31\xe9").expect("obs-text"),
    );
    assert_eq!(extract(&h), None);
}

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

// ---------- inject ----------

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

#[test]
fn inject_w3c() {
    for flags in [0x00u8, 0x01, 0x02, 0x03, 0x09] {
        let tp = format!("00-{TRACE}-{SPAN}-{flags:02x}");
        let b3 = format!("{B3_TRACE}-{B3_SPAN}-1");
        let mut pairs = noise();
        pairs.push(("TraceParent", &tp));
        // B3 headers next to a valid traceparent are not touched.
        pairs.push(("b3", &b3));
        pairs.push(("x-b3-traceid", M_TRACE));
        pairs.push(("x-b3-spanid", M_SPAN));
        let mut h = headers(&pairs);
        let before = snapshot_except(&h, &[TRACEPARENT]);
        let ctx = extract(&h).expect("ctx");
        let new_span = SpanId::random();
        inject(&mut h, &ctx, new_span);

        assert_eq!(snapshot_except(&h, &[TRACEPARENT]), before);
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
        assert_eq!(
            get(&h, TRACEPARENT),
            Some(format!("00-{TRACE}-{new_span}-{flags:02x}").as_str())
        );
        let back = extract(&h).expect("ctx");
        assert_eq!(back.format(), Format::W3c);
        assert_eq!(back.trace_id, ctx.trace_id);
        assert_eq!(back.span_id, new_span);
        assert_eq!(back.flags(), flags);
        assert_eq!(back.sampled(), ctx.sampled());
    }
}

#[test]
fn inject_w3c_future_version_reemits_version_00() {
    let mut h = headers(&[(
        "traceparent",
        "cc-12345678901234567890123456789012-1234567890123456-07-future",
    )]);
    let ctx = extract(&h).expect("ctx");
    let new_span = sid("1111111111111111");
    inject(&mut h, &ctx, new_span);
    assert_eq!(
        get(&h, TRACEPARENT),
        Some("00-12345678901234567890123456789012-1111111111111111-03")
    );
}

#[test]
fn inject_b3_multi() {
    let samplings: [&[(&str, &str)]; 6] = [
        &[("x-b3-sampled", "1")],
        &[("x-b3-sampled", "true")],
        &[("x-b3-sampled", "0")],
        &[("x-b3-sampled", "false")],
        &[],
        &[("x-b3-flags", "1")],
    ];
    for trace in [M_TRACE, "48485a3953bb6124"] {
        for sampling in samplings {
            for parent in [None, Some(M_PARENT)] {
                let tp = format!("ff-{TRACE}-{SPAN}-01"); // invalid: untouched
                let mut pairs = noise();
                pairs.push(("traceparent", &tp));
                pairs.push(("b3", "0")); // sampling-only: untouched
                pairs.push(("X-B3-TraceId", trace));
                pairs.push(("X-B3-SpanId", M_SPAN));
                if let Some(p) = parent {
                    pairs.push(("X-B3-ParentSpanId", p));
                }
                pairs.extend_from_slice(sampling);
                let mut h = headers(&pairs);
                let touched = [X_B3_TRACEID, X_B3_SPANID, X_B3_PARENTSPANID];
                let before = snapshot_except(&h, &touched);
                let ctx = extract(&h).expect("ctx");
                assert_eq!(ctx.format(), Format::B3Multi);
                let new_span = SpanId::random();
                inject(&mut h, &ctx, new_span);

                // Sampled/flags and everything else unchanged byte-for-byte.
                assert_eq!(snapshot_except(&h, &touched), before, "{pairs:?}");
                assert_eq!(get(&h, X_B3_TRACEID), Some(trace));
                assert_eq!(get(&h, X_B3_SPANID), Some(new_span.to_hex().as_str()));
                assert_eq!(get(&h, X_B3_PARENTSPANID), Some(M_SPAN));
                let back = extract(&h).expect("ctx");
                assert_eq!(
                    back,
                    TraceContext {
                        span_id: new_span,
                        ..ctx.clone()
                    }
                );
            }
        }
    }
}

#[test]
fn inject_b3_multi_writes_missing_sampling_state_from_ctx() {
    // A context that did not come from these headers (e.g. built by the
    // proxy): the sampling state is written when neither header is there.
    let with = |sampling| TraceContext {
        trace_id: tid(M_TRACE),
        span_id: sid(M_SPAN),
        propagation: Propagation::B3Multi(B3State {
            short_trace_id: false,
            sampling,
        }),
    };
    let new_span = sid(M_PARENT);
    let cases = [
        (with(B3Sampling::Accept), Some("1"), None),
        (with(B3Sampling::Deny), Some("0"), None),
        (with(B3Sampling::Debug), None, Some("1")),
        (with(B3Sampling::Defer), None, None),
    ];
    for (ctx, sampled, flags) in cases {
        let mut h = HeaderMap::new();
        inject(&mut h, &ctx, new_span);
        assert_eq!(get(&h, X_B3_SAMPLED), sampled);
        assert_eq!(get(&h, X_B3_FLAGS), flags);
        let back = extract(&h).expect("ctx");
        assert_eq!(
            back,
            TraceContext {
                span_id: new_span,
                ..ctx
            }
        );
    }
}

#[test]
fn inject_b3_single() {
    let new_span = sid("1111111111111111");
    let cases = [
        (
            format!("{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}"),
            format!("{B3_TRACE}-1111111111111111-1-{B3_SPAN}"),
        ),
        (
            format!("{B3_TRACE}-{B3_SPAN}-0"),
            format!("{B3_TRACE}-1111111111111111-0-{B3_SPAN}"),
        ),
        (
            format!("{B3_TRACE}-{B3_SPAN}-d"),
            format!("{B3_TRACE}-1111111111111111-d-{B3_SPAN}"),
        ),
        (
            format!("{B3_TRACE}-{B3_SPAN}"),
            format!("{B3_TRACE}-1111111111111111"),
        ),
        (
            format!("64fe8b2a57d3eff7-{B3_SPAN}-1"),
            format!("64fe8b2a57d3eff7-1111111111111111-1-{B3_SPAN}"),
        ),
        (
            format!("64fe8b2a57d3eff7-{B3_SPAN}"),
            "64fe8b2a57d3eff7-1111111111111111".to_owned(),
        ),
    ];
    for (incoming, expected) in cases {
        let tp = format!("00-{TRACE}-{SPAN}"); // invalid: untouched
        let mut pairs = noise();
        pairs.push(("traceparent", &tp));
        pairs.push(("B3", &incoming));
        pairs.push(("x-b3-traceid", M_TRACE));
        pairs.push(("x-b3-spanid", M_SPAN));
        pairs.push(("x-b3-sampled", "1"));
        let mut h = headers(&pairs);
        let before = snapshot_except(&h, &[B3]);
        let ctx = extract(&h).expect("ctx");
        assert_eq!(ctx.format(), Format::B3Single);
        inject(&mut h, &ctx, new_span);
        assert_eq!(snapshot_except(&h, &[B3]), before);
        assert_eq!(get(&h, B3), Some(expected.as_str()));
        let back = extract(&h).expect("ctx");
        assert_eq!(
            back,
            TraceContext {
                span_id: new_span,
                ..ctx
            }
        );
    }
}

#[test]
fn new_root_is_w3c_with_random_flag() {
    for sampled in [true, false] {
        let ctx = new_root(sampled);
        assert_eq!(ctx.sampled(), sampled);
        assert_eq!(
            ctx.propagation,
            Propagation::W3c {
                flags: 0x02 | u8::from(sampled)
            }
        );
        assert!(ctx.trace_id.is_valid() && ctx.span_id.is_valid());
        let mut h = HeaderMap::new();
        let span = SpanId::random();
        inject(&mut h, &ctx, span);
        let back = extract(&h).expect("ctx");
        assert_eq!(back.trace_id, ctx.trace_id);
        assert_eq!(back.span_id, span);
        assert_eq!(back.flags(), ctx.flags());
        assert_eq!(back.sampled(), sampled);
    }
    assert_ne!(new_root(true).trace_id, new_root(true).trace_id);
}

// ---------- properties ----------

fn trace_bytes() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>().prop_filter("non-zero", |b| b.iter().any(|&x| x != 0))
}

fn span_id() -> impl Strategy<Value = SpanId> {
    any::<[u8; 8]>()
        .prop_filter("non-zero", |b| b.iter().any(|&x| x != 0))
        .prop_map(SpanId)
}

/// A B3 trace id as it goes on the wire: (id, short, hex).
fn b3_trace() -> impl Strategy<Value = (TraceId, bool, String)> {
    prop_oneof![
        trace_bytes().prop_map(|b| {
            let id = TraceId(b);
            (id, false, id.to_hex())
        }),
        any::<[u8; 8]>()
            .prop_filter("non-zero", |b| b.iter().any(|&x| x != 0))
            .prop_map(|low| {
                let mut b = [0u8; 16];
                b[8..].copy_from_slice(&low);
                let hex: String = low.iter().map(|x| format!("{x:02x}")).collect();
                (TraceId(b), true, hex)
            }),
    ]
}

fn state_name(i: usize) -> &'static str {
    ["defer", "0", "1", "d"][i]
}

proptest! {
    #[test]
    fn prop_traceparent_round_trip(t in trace_bytes(), s in span_id(), flags in any::<u8>()) {
        let value = format_traceparent(&TraceId(t), &s, flags);
        prop_assert_eq!(value.len(), 55);
        prop_assert_eq!(parse_traceparent(&value), Some((TraceId(t), s, flags)));
    }

    #[test]
    fn prop_w3c_inject_extract(
        t in trace_bytes(), s in span_id(), new_span in span_id(), flags in any::<u8>()
    ) {
        let mut h = headers(&noise());
        let tp = format_traceparent(&TraceId(t), &s, flags);
        h.insert(TRACEPARENT, HeaderValue::from_str(&tp).expect("value"));
        let before = snapshot_except(&h, &[TRACEPARENT]);
        let ctx = extract(&h).expect("ctx");
        inject(&mut h, &ctx, new_span);
        let back = extract(&h).expect("ctx");
        prop_assert_eq!(back, TraceContext { span_id: new_span, ..ctx });
        prop_assert_eq!(snapshot_except(&h, &[TRACEPARENT]), before);
    }

    #[test]
    fn prop_b3_single_inject_extract(
        (trace, short, hex) in b3_trace(),
        s in span_id(),
        parent in proptest::option::of(span_id()),
        state in 0usize..4,
        new_span in span_id(),
    ) {
        let state = state_name(state);
        let value = match (state, parent) {
            ("defer", _) => format!("{hex}-{s}"),
            (tok, None) => format!("{hex}-{s}-{tok}"),
            (tok, Some(p)) => format!("{hex}-{s}-{tok}-{p}"),
        };
        let expect = b3_expect(Format::B3Single, trace, s, short, state);
        prop_assert_eq!(parse_b3_single(&value), Some(expect.clone()));
        let mut pairs = noise();
        pairs.push(("b3", &value));
        let mut h = headers(&pairs);
        let before = snapshot_except(&h, &[B3]);
        let ctx = extract(&h).expect("ctx");
        prop_assert_eq!(&ctx, &expect);
        inject(&mut h, &ctx, new_span);
        let back = extract(&h).expect("ctx");
        prop_assert_eq!(back, TraceContext { span_id: new_span, ..expect });
        prop_assert_eq!(snapshot_except(&h, &[B3]), before);
        let out = get(&h, B3).expect("b3").to_owned();
        if state == "defer" {
            prop_assert_eq!(out, format!("{hex}-{new_span}"));
        } else {
            prop_assert_eq!(out, format!("{hex}-{new_span}-{state}-{s}"));
        }
    }

    #[test]
    fn prop_b3_multi_inject_extract(
        (trace, short, hex) in b3_trace(),
        s in span_id(),
        parent in proptest::option::of(span_id()),
        sampled_hdr in proptest::option::of(prop_oneof![
            Just("1"), Just("0"), Just("true"), Just("false")
        ]),
        flags_hdr in proptest::option::of(prop_oneof![Just("0"), Just("1")]),
        new_span in span_id(),
    ) {
        let span_hex = s.to_hex();
        let parent_hex = parent.map(|p| p.to_hex());
        let mut pairs = noise();
        pairs.push(("x-b3-traceid", &hex));
        pairs.push(("x-b3-spanid", &span_hex));
        if let Some(p) = &parent_hex {
            pairs.push(("x-b3-parentspanid", p));
        }
        if let Some(v) = sampled_hdr {
            pairs.push(("x-b3-sampled", v));
        }
        if let Some(v) = flags_hdr {
            pairs.push(("x-b3-flags", v));
        }
        let state = match (flags_hdr, sampled_hdr) {
            (Some("1"), _) => "d",
            (_, None) => "defer",
            (_, Some("1" | "true")) => "1",
            _ => "0",
        };
        let mut h = headers(&pairs);
        let touched = [X_B3_SPANID, X_B3_PARENTSPANID];
        let before = snapshot_except(&h, &touched);
        let ctx = extract(&h).expect("ctx");
        let expect = b3_expect(Format::B3Multi, trace, s, short, state);
        prop_assert_eq!(&ctx, &expect);
        inject(&mut h, &ctx, new_span);
        prop_assert_eq!(snapshot_except(&h, &touched), before);
        prop_assert_eq!(get(&h, X_B3_PARENTSPANID), Some(span_hex.as_str()));
        let back = extract(&h).expect("ctx");
        prop_assert_eq!(back, TraceContext { span_id: new_span, ..expect });
    }

    #[test]
    fn prop_parsers_never_panic(s in "\\PC{0,80}") {
        let _ = parse_traceparent(&s);
        let _ = parse_b3_single(&s);
    }

    #[test]
    fn prop_traceparent_like_strings_never_panic(
        s in "[0-9a-fA-F\\- \t.]{50,60}"
    ) {
        if let Some((t, sp, _)) = parse_traceparent(&s) {
            prop_assert!(t.is_valid() && sp.is_valid());
        }
        if let Ok(v) = HeaderValue::from_str(&s) {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, v.clone());
            h.insert(B3, v);
            let _ = extract(&h);
        }
    }
}
