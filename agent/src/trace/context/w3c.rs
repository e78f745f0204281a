//! W3C Trace Context `traceparent` (docs/TRACING.md has the rules).

use http::header::HeaderMap;

use super::*;

/// Formats a W3C `traceparent` value, always version `00`:
/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, lowercase.
pub fn format_traceparent(trace_id: &TraceId, span_id: &SpanId, flags: u8) -> String {
    let mut out = [0u8; TRACEPARENT_LEN];
    write_traceparent(&mut out, trace_id, span_id, flags);
    // Hex digits and `-` are ASCII: this never falls back.
    std::str::from_utf8(&out).unwrap_or_default().to_owned()
}

/// Writes [`format_traceparent`]'s value into `out`, without allocating.
pub fn write_traceparent(
    out: &mut [u8; TRACEPARENT_LEN],
    trace_id: &TraceId,
    span_id: &SpanId,
    flags: u8,
) {
    out[..3].copy_from_slice(b"00-");
    hex_into(&trace_id.0, &mut out[3..35]);
    out[35] = b'-';
    hex_into(&span_id.0, &mut out[36..52]);
    out[52] = b'-';
    hex_into(&[flags], &mut out[53..55]);
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
    parse_traceparent_bytes(value.as_bytes())
}

/// [`parse_traceparent`] on the field's bytes (nothing but ASCII can be valid).
fn parse_traceparent_bytes(value: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    let v = trim_ows_bytes(value);
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
    w3c_context(single_header(headers, TRACEPARENT).present()?)
}

/// The context of one `traceparent` value ([`parse_traceparent`]).
pub fn w3c_context(value: &str) -> Option<TraceContext> {
    w3c_context_bytes(value.as_bytes())
}

/// [`w3c_context`] on the field's bytes.
pub fn w3c_context_bytes(value: &[u8]) -> Option<TraceContext> {
    let (trace_id, span_id, flags) = parse_traceparent_bytes(value)?;
    Some(TraceContext {
        trace_id,
        span_id,
        propagation: Propagation::W3c { flags },
    })
}
