//! W3C `traceparent`: the spec's examples, versioning and the test suite's invalid values.

use super::*;

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
