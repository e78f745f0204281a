//! Writing the context back: W3C, B3 multi and single, new roots.

use super::*;

// ---------- inject ----------

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
