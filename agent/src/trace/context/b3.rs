//! Zipkin B3, single header `b3` and multi headers `x-b3-*` (docs/TRACING.md has the
//! rules).

use http::header::HeaderMap;

use super::*;

/// Parses one `b3` single-header value:
/// `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`.
///
/// `None` for anything invalid (see the module docs) and for the bare
/// sampling-only forms (`0`, `1`, `d`), which carry no ids. Surrounding
/// spaces/tabs are ignored.
pub fn parse_b3_single(value: &str) -> Option<TraceContext> {
    let mut fields = trim_ows(value).split('-');
    let trace = fields.next()?;
    let span = fields.next()?;
    let sampling = fields.next();
    let parent = fields.next();
    if fields.next().is_some() {
        return None;
    }
    let (trace_id, short_trace_id) = TraceId::from_b3_hex(trace)?;
    let span_id = SpanId::from_hex(span)?;
    if let Some(parent) = parent {
        SpanId::from_hex(parent)?;
    }
    let sampling = match sampling {
        None => B3Sampling::Defer,
        Some("0") => B3Sampling::Deny,
        Some("1") => B3Sampling::Accept,
        Some("d") => B3Sampling::Debug,
        Some(_) => return None,
    };
    Some(TraceContext {
        trace_id,
        span_id,
        propagation: Propagation::B3Single(B3State {
            short_trace_id,
            sampling,
        }),
    })
}

pub(super) fn extract_b3_single(headers: &HeaderMap) -> Option<TraceContext> {
    parse_b3_single(single_header(headers, B3).present()?)
}

pub(super) fn extract_b3_multi(headers: &HeaderMap) -> Option<TraceContext> {
    let (trace_id, short_trace_id) =
        TraceId::from_b3_hex(single_header(headers, X_B3_TRACEID).present()?)?;
    let span_id = SpanId::from_hex(single_header(headers, X_B3_SPANID).present()?)?;
    match single_header(headers, X_B3_PARENTSPANID) {
        Header::Absent => {}
        Header::One(parent) => {
            SpanId::from_hex(parent)?;
        }
        Header::Invalid => return None,
    }
    let sampled = match single_header(headers, X_B3_SAMPLED) {
        Header::Absent => None,
        Header::One("1" | "true") => Some(true),
        Header::One("0" | "false") => Some(false),
        Header::One(_) | Header::Invalid => return None,
    };
    let debug = match single_header(headers, X_B3_FLAGS) {
        Header::Absent | Header::One("0") => false,
        Header::One("1") => true,
        Header::One(_) | Header::Invalid => return None,
    };
    let sampling = match (debug, sampled) {
        (true, _) => B3Sampling::Debug,
        (false, None) => B3Sampling::Defer,
        (false, Some(true)) => B3Sampling::Accept,
        (false, Some(false)) => B3Sampling::Deny,
    };
    Some(TraceContext {
        trace_id,
        span_id,
        propagation: Propagation::B3Multi(B3State {
            short_trace_id,
            sampling,
        }),
    })
}

pub(super) fn b3_trace_hex(trace_id: TraceId, b3: B3State) -> String {
    if b3.short_trace_id {
        trace_id.to_short_hex()
    } else {
        trace_id.to_hex()
    }
}

pub(super) fn format_b3_single(ctx: &TraceContext, b3: B3State, new_span: SpanId) -> String {
    let trace = b3_trace_hex(ctx.trace_id, b3);
    let token = match b3.sampling {
        B3Sampling::Debug => "d",
        B3Sampling::Defer => return format!("{trace}-{new_span}"),
        B3Sampling::Accept => "1",
        B3Sampling::Deny => "0",
    };
    format!("{trace}-{new_span}-{token}-{}", ctx.span_id)
}
