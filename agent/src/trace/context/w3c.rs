//! W3C Trace Context `traceparent` (docs/TRACING.md has the rules).

use http::header::HeaderMap;

use super::*;

/// Formats a W3C `traceparent` value, always version `00`:
/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, lowercase.
pub fn format_traceparent(trace_id: &TraceId, span_id: &SpanId, flags: u8) -> String {
    format!(
        "00-{}-{}-{:02x}",
        trace_id.to_hex(),
        span_id.to_hex(),
        flags
    )
}

/// Parses one `traceparent` value (W3C Trace Context, "traceparent Header Field
/// Values" and "Versioning of traceparent"). Returns `(trace id, parent span id,
/// flags)`.
///
/// - Surrounding spaces/tabs are ignored; nothing else is trimmed.
/// - `version`: 2 lowercase hex digits then `-`; `ff` is invalid.
/// - Version `00`: exactly `00-<32 hex>-<16 hex>-<2 hex>` (55 characters),
///   lowercase hex, non-zero ids; flags returned verbatim.
/// - Versions `01`..`fe`: at least 55 characters, the first 55 laid out as
///   for `00`, then either the end or a `-` followed by anything. Flags are
///   reduced to the bits version 00 defines (`0x01`, `0x02`).
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, u8)> {
    let v = trim_ows(value).as_bytes();
    if v.len() < TRACEPARENT_LEN || v[2] != b'-' {
        return None;
    }
    let [version] = decode_hex::<1>(&v[..2])?;
    match version {
        0xff => return None,
        0x00 if v.len() != TRACEPARENT_LEN => return None,
        _ if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = TraceId(decode_hex::<16>(&v[3..35])?);
    let span_id = SpanId(decode_hex::<8>(&v[36..52])?);
    let [flags] = decode_hex::<1>(&v[53..55])?;
    if !trace_id.is_valid() || !span_id.is_valid() {
        return None;
    }
    let flags = if version == 0 {
        flags
    } else {
        flags & KNOWN_FLAGS
    };
    Some((trace_id, span_id, flags))
}

pub(super) fn extract_w3c(headers: &HeaderMap) -> Option<TraceContext> {
    let value = single_header(headers, TRACEPARENT).present()?;
    let (trace_id, span_id, flags) = parse_traceparent(value)?;
    Some(TraceContext {
        trace_id,
        span_id,
        propagation: Propagation::W3c { flags },
    })
}
