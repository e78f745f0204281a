//! Properties: what is parsed is written back the same.

use super::*;

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
