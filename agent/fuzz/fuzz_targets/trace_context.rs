//! `hoptrace::trace::context::{extract, inject}` on hostile request headers.
//!
//! The input is a header block (`name:value` lines, see `common.rs`); the seeds and
//! `dicts/trace_context.dict` give the fuzzer the trace headers' names and shapes.
//! The new span id is derived from the input. Asserted:
//!
//! - `extract` never panics and is deterministic;
//! - a context it returns has non-zero ids, a 64-bit B3 trace id only with its high
//!   8 bytes zero, `flags()` as `TraceContext` documents for its format, and agrees
//!   with the format's own parser;
//! - after `inject` with a new span id, `extract` gives back the same context with
//!   the new span id (same format, trace id, sampled flag, flags and B3 state), the
//!   format's headers are present exactly once, and every other header is unchanged.
#![no_main]

use hoptrace::trace::context::{
    extract, inject, parse_b3_single, parse_traceparent, B3Sampling, Format, Propagation,
    SpanId, TraceContext, B3, TRACEPARENT, X_B3_PARENTSPANID, X_B3_SPANID, X_B3_TRACEID,
};
use http::header::HeaderMap;
use libfuzzer_sys::fuzz_target;

mod common;

/// Every (name, value) of the map except the names in `skip`, in map order.
fn snapshot_except(h: &HeaderMap, skip: &[&str]) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .filter(|(n, _)| !skip.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn one_value<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    let mut all = h.get_all(name).iter();
    let v = all.next().unwrap_or_else(|| panic!("{name} missing"));
    assert!(all.next().is_none(), "{name} present more than once");
    v.to_str().expect("visible ASCII")
}

fn check_context(h: &HeaderMap, ctx: &TraceContext) {
    assert!(ctx.trace_id.is_valid(), "zero trace id: {ctx:?}");
    assert!(ctx.span_id.is_valid(), "zero span id: {ctx:?}");
    match ctx.propagation {
        Propagation::W3c { flags } => {
            assert_eq!(ctx.sampled(), flags & 1 != 0, "{ctx:?}");
            let parsed = parse_traceparent(one_value(h, TRACEPARENT)).expect("parses");
            assert_eq!(parsed, (ctx.trace_id, ctx.span_id, flags));
        }
        Propagation::B3Single(b3) | Propagation::B3Multi(b3) => {
            if b3.short_trace_id {
                assert_eq!(ctx.trace_id.0[..8], [0u8; 8], "{ctx:?}");
            }
            let sampled = matches!(b3.sampling, B3Sampling::Accept | B3Sampling::Debug);
            assert_eq!(ctx.flags(), u8::from(sampled), "{ctx:?}");
            assert_eq!(ctx.sampled(), sampled, "{ctx:?}");
            if ctx.format() == Format::B3Single {
                assert_eq!(parse_b3_single(one_value(h, B3)).as_ref(), Some(ctx));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = common::header_block(data);
    let Some(ctx) = extract(&h) else {
        return;
    };
    check_context(&h, &ctx);
    assert_eq!(
        extract(&h).as_ref(),
        Some(&ctx),
        "extract is not deterministic"
    );

    let new_span = SpanId(common::fnv(data).to_be_bytes());
    let new_span = if new_span.is_valid() {
        new_span
    } else {
        SpanId([0, 0, 0, 0, 0, 0, 0, 1])
    };
    let touched: &[&str] = match ctx.format() {
        Format::W3c => &[TRACEPARENT],
        Format::B3Single => &[B3],
        // x-b3-sampled / x-b3-flags are written only when both are missing, which a
        // context extracted from these headers never needs (absent both = defer).
        Format::B3Multi => &[X_B3_TRACEID, X_B3_SPANID, X_B3_PARENTSPANID],
    };
    let before = snapshot_except(&h, touched);
    inject(&mut h, &ctx, new_span);
    for name in touched {
        one_value(&h, name);
    }
    assert_eq!(
        snapshot_except(&h, touched),
        before,
        "inject changed other headers"
    );

    let back = extract(&h).expect("the injected context is extracted again");
    check_context(&h, &back);
    assert_eq!(back.format(), ctx.format());
    assert_eq!(back.trace_id, ctx.trace_id);
    assert_eq!(back.sampled(), ctx.sampled());
    assert_eq!(back.span_id, new_span);
    assert_eq!(
        back,
        TraceContext {
            span_id: new_span,
            ..ctx
        }
    );
});
