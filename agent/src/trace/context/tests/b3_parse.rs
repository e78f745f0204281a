//! B3, single and multiple headers: the spec's examples and invalid values.

use super::*;

// ---------- B3 single ----------

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
