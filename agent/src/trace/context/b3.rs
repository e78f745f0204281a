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
    let state = match sampling {
        None => Sampling::Defer,
        Some("0") => Sampling::Deny,
        Some("1") => Sampling::Accept,
        Some("d") => Sampling::Debug,
        Some(_) => return None,
    };
    Some(b3_context(
        Format::B3Single,
        trace_id,
        span_id,
        short_trace_id,
        state,
    ))
}

/// B3 sampling state (openzipkin/b3-propagation, "Sampling State").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Sampling {
    Defer,
    Deny,
    Accept,
    Debug,
}

pub(super) fn b3_context(
    format: Format,
    trace_id: TraceId,
    span_id: SpanId,
    short_trace_id: bool,
    state: Sampling,
) -> TraceContext {
    let sampled = matches!(state, Sampling::Accept | Sampling::Debug);
    TraceContext {
        format,
        trace_id,
        span_id,
        sampled,
        flags: if sampled { FLAG_SAMPLED } else { 0 },
        short_trace_id,
        debug: state == Sampling::Debug,
        sampling_deferred: state == Sampling::Defer,
    }
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
    let state = match (debug, sampled) {
        (true, _) => Sampling::Debug,
        (false, None) => Sampling::Defer,
        (false, Some(true)) => Sampling::Accept,
        (false, Some(false)) => Sampling::Deny,
    };
    Some(b3_context(
        Format::B3Multi,
        trace_id,
        span_id,
        short_trace_id,
        state,
    ))
}

pub(super) fn b3_trace_hex(ctx: &TraceContext) -> String {
    if ctx.short_trace_id {
        ctx.trace_id.to_short_hex()
    } else {
        ctx.trace_id.to_hex()
    }
}

pub(super) fn format_b3_single(ctx: &TraceContext, new_span: SpanId) -> String {
    let trace = b3_trace_hex(ctx);
    let token = if ctx.debug {
        "d"
    } else if ctx.sampling_deferred {
        return format!("{trace}-{new_span}");
    } else if ctx.sampled {
        "1"
    } else {
        "0"
    };
    format!("{trace}-{new_span}-{token}-{}", ctx.span_id)
}
