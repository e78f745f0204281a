//! Trace-context propagation formats: W3C Trace Context (`traceparent`) and
//! Zipkin B3 (multi-header `x-b3-*` and single-header `b3`).
//!
//! The proxy calls [`extract`] on every HTTP request it forwards, creates its
//! own span as a child of the caller's span, and calls [`inject`] so that the
//! next hop sees the proxy's span as its parent, in the format the request came
//! with. Everything that is not understood is treated as absent and forwarded
//! untouched.
//!
//! The rules, every one of them, are in docs/TRACING.md ("Header rules"); the tests
//! (`tests.rs`) pin each to the specifications' examples.

use std::fmt;

use http::header::{HeaderMap, HeaderValue};

mod b3;
mod hex;
mod w3c;

pub use b3::parse_b3_single;
use b3::{b3_trace_hex, extract_b3_multi, extract_b3_single, format_b3_single};
use hex::{decode_hex, encode_hex, hex_into};
use w3c::extract_w3c;
pub use w3c::{
    format_traceparent, parse_traceparent, w3c_context, w3c_context_bytes, write_traceparent,
};

/// `traceparent` header name (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate` header name (W3C Trace Context); never modified by this module.
pub const TRACESTATE: &str = "tracestate";
/// B3 single header name.
pub const B3: &str = "b3";
/// B3 multi: trace id (32 or 16 lowercase hex digits).
pub const X_B3_TRACEID: &str = "x-b3-traceid";
/// B3 multi: span id (16 lowercase hex digits).
pub const X_B3_SPANID: &str = "x-b3-spanid";
/// B3 multi: parent span id (16 lowercase hex digits, optional).
pub const X_B3_PARENTSPANID: &str = "x-b3-parentspanid";
/// B3 multi: sampling decision (`1`/`0`, leniently `true`/`false`; absent = defer).
pub const X_B3_SAMPLED: &str = "x-b3-sampled";
/// B3 multi: debug flag (`1`).
pub const X_B3_FLAGS: &str = "x-b3-flags";

/// The fields that carry trace context in any format ([`TRACESTATE`] is not one: it
/// goes with `traceparent` and is never parsed or changed).
pub const FIELDS: [&str; 7] = [
    TRACEPARENT,
    B3,
    X_B3_TRACEID,
    X_B3_SPANID,
    X_B3_PARENTSPANID,
    X_B3_SAMPLED,
    X_B3_FLAGS,
];

/// W3C trace-flags bit 0: the caller may have recorded trace data.
pub const FLAG_SAMPLED: u8 = 0x01;
/// W3C trace-flags bit 1 (Trace Context Level 2): at least the right-most 7
/// bytes of the trace id are random.
pub const FLAG_RANDOM_TRACE_ID: u8 = 0x02;
/// The trace-flags bits that version `00` defines; the only ones kept from a
/// higher `traceparent` version.
const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM_TRACE_ID;

/// Length of a version-00 `traceparent` value, and the minimum length of any
/// version's value.
/// The length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// 16-byte trace id, never all-zero when valid.
///
/// A 64-bit B3 trace id is stored right-aligned (the first 8 bytes are zero),
/// as OpenTelemetry does; [`B3State::short_trace_id`] remembers the width.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TraceId(pub [u8; 16]);

/// 8-byte span id, never all-zero when valid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Parses exactly 32 lowercase hex digits (W3C `HEXDIGLC`; uppercase is
    /// rejected). Returns `None` for any other input, including the all-zero id.
    pub fn from_hex(s: &str) -> Option<Self> {
        decode_hex::<16>(s.as_bytes())
            .map(TraceId)
            .filter(TraceId::is_valid)
    }

    /// A random, non-zero trace id (all 16 bytes random, so the W3C
    /// random-trace-id flag may be set for it).
    pub fn random() -> Self {
        loop {
            let id = TraceId(random_bytes::<16>());
            if id.is_valid() {
                return id;
            }
        }
    }

    /// `false` for the all-zero id, which every format forbids.
    pub fn is_valid(&self) -> bool {
        self.0.iter().any(|&b| b != 0)
    }

    /// The 16-hex-digit (64-bit) form: the low 8 bytes.
    fn to_short_hex(self) -> String {
        encode_hex(&self.0[8..])
    }

    /// A B3 trace id: 32 or 16 lowercase hex digits, not all zero. Returns the id
    /// and whether it was the 16-digit (64-bit) form.
    fn from_b3_hex(s: &str) -> Option<(Self, bool)> {
        let id = match s.len() {
            32 => (TraceId(decode_hex::<16>(s.as_bytes())?), false),
            16 => {
                let low = decode_hex::<8>(s.as_bytes())?;
                let mut bytes = [0u8; 16];
                bytes[8..].copy_from_slice(&low);
                (TraceId(bytes), true)
            }
            _ => return None,
        };
        id.0.is_valid().then_some(id)
    }
}

impl SpanId {
    /// 16 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Parses exactly 16 lowercase hex digits (uppercase is rejected). Returns
    /// `None` for any other input, including the all-zero id.
    pub fn from_hex(s: &str) -> Option<Self> {
        decode_hex::<8>(s.as_bytes())
            .map(SpanId)
            .filter(SpanId::is_valid)
    }

    /// A random span id; never zero.
    pub fn random() -> Self {
        loop {
            let id = SpanId(random_bytes::<8>());
            if id.is_valid() {
                return id;
            }
        }
    }

    /// `false` for the all-zero id, which every format forbids.
    pub fn is_valid(&self) -> bool {
        self.0.iter().any(|&b| b != 0)
    }

    /// Two random, valid ids from one draw of the generator.
    pub fn random_pair() -> (Self, Self) {
        loop {
            let bytes = random_bytes::<16>();
            let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
            a.copy_from_slice(&bytes[..8]);
            b.copy_from_slice(&bytes[8..]);
            let (a, b) = (SpanId(a), SpanId(b));
            if a.is_valid() && b.is_valid() {
                return (a, b);
            }
        }
    }
}

impl fmt::Display for TraceId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for SpanId {
    /// 16 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The propagation format a context was read from (and is re-emitted in).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    /// W3C Trace Context `traceparent` (+ `tracestate`, forwarded untouched).
    W3c,
    /// B3 multi-header `x-b3-*`.
    B3Multi,
    /// B3 single header `b3`.
    B3Single,
}

/// What arrived on a request: the ids every format has, and what only its format
/// carries ([`Propagation`]), so a B3-only state cannot be set on a W3C context.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TraceContext {
    /// The trace id; for a 64-bit B3 id the first 8 bytes are zero.
    pub trace_id: TraceId,
    /// The caller's span id (the parent of the span the proxy creates).
    pub span_id: SpanId,
    /// The format and its own state; [`inject`] writes the same format.
    pub propagation: Propagation,
}

/// A context's format with the state that only that format carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Propagation {
    /// W3C `traceparent`: the trace-flags byte exactly as received (all bits kept,
    /// e.g. 0x03). For a `traceparent` of a higher version than 00, only the bits
    /// version 00 defines (0x01, 0x02) are kept.
    W3c {
        /// Trace flags; bit 0 is the sampling decision.
        flags: u8,
    },
    /// B3 single header `b3`.
    B3Single(B3State),
    /// B3 multi headers `x-b3-*`.
    B3Multi(B3State),
}

/// What a B3 context carries besides its ids.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct B3State {
    /// The trace id was 64-bit (16 hex chars) on the wire; re-emit it that way.
    pub short_trace_id: bool,
    /// The sampling state, re-emitted as it came.
    pub sampling: B3Sampling,
}

/// B3 sampling state (openzipkin/b3-propagation, "Sampling State").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum B3Sampling {
    /// Absent: the next hop decides; kept absent when re-emitted.
    Defer,
    /// `0`.
    Deny,
    /// `1` (or `true` in the multi headers).
    Accept,
    /// `d` in the single header, `x-b3-flags: 1` in the multi headers; implies accept.
    Debug,
}

impl TraceContext {
    /// The format the context was read from.
    pub fn format(&self) -> Format {
        match self.propagation {
            Propagation::W3c { .. } => Format::W3c,
            Propagation::B3Single(_) => Format::B3Single,
            Propagation::B3Multi(_) => Format::B3Multi,
        }
    }

    /// The caller's sampling decision: W3C flags bit 0; B3 accept or debug.
    pub fn sampled(&self) -> bool {
        self.flags() & FLAG_SAMPLED != 0
    }

    /// The W3C trace-flags equivalent (recorded in the OTLP spans): for W3C the
    /// byte as received; for B3 0x01 when sampled, else 0x00.
    pub fn flags(&self) -> u8 {
        match self.propagation {
            Propagation::W3c { flags } => flags,
            Propagation::B3Single(b3) | Propagation::B3Multi(b3) => {
                if matches!(b3.sampling, B3Sampling::Accept | B3Sampling::Debug) {
                    FLAG_SAMPLED
                } else {
                    0
                }
            }
        }
    }

    /// The B3 state, `None` for a W3C context.
    pub fn b3(&self) -> Option<B3State> {
        match self.propagation {
            Propagation::W3c { .. } => None,
            Propagation::B3Single(b3) | Propagation::B3Multi(b3) => Some(b3),
        }
    }
}

/// Reads the context from request headers.
///
/// W3C `traceparent` wins when valid; otherwise B3 single (`b3`), then B3 multi.
/// Invalid context (bad length, non-hex, uppercase hex, all-zero ids, version
/// `ff`, bad separators, a header repeated, a value that is not visible ASCII)
/// counts as absent for that format. A future W3C version (`01`..`fe`) is parsed
/// as the spec says (first 55 characters, extra fields after a `-` allowed).
/// See the module docs for every rule.
pub fn extract(headers: &HeaderMap) -> Option<TraceContext> {
    extract_w3c(headers)
        .or_else(|| extract_b3_single(headers))
        .or_else(|| extract_b3_multi(headers))
}

/// Rewrites the headers of a forwarded request so that `new_span` (the proxy's
/// span, child of `ctx.span_id`) is the parent seen by the next hop, in the
/// format the request came with.
///
/// Only the headers of the context's format are written; `tracestate` and every other
/// header stay untouched.
/// - W3C: `traceparent` = version `00`, same trace id, `new_span`, same flags byte.
/// - B3 multi: `x-b3-traceid` = same id in the same width, `x-b3-spanid` =
///   `new_span`, `x-b3-parentspanid` = `ctx.span_id`; `x-b3-sampled` and
///   `x-b3-flags` are kept as they were. (Only when both are missing, which
///   cannot happen for a context [`extract`]ed from these headers unless it
///   was deferred, is the state written from `ctx`: `x-b3-flags: 1` for debug,
///   else `x-b3-sampled: 1`/`0`, nothing when deferred.)
/// - B3 single: `b3` = `{trace}-{new_span}-{sampling}-{ctx.span_id}` with the
///   sampling token as it came (`1`, `0` or `d`); `{trace}-{new_span}` when the
///   sampling state was absent (defer).
pub fn inject(headers: &mut HeaderMap, ctx: &TraceContext, new_span: SpanId) {
    match ctx.propagation {
        Propagation::W3c { flags } => set_header(
            headers,
            TRACEPARENT,
            format_traceparent(&ctx.trace_id, &new_span, flags),
        ),
        Propagation::B3Single(b3) => set_header(headers, B3, format_b3_single(ctx, b3, new_span)),
        Propagation::B3Multi(b3) => {
            set_header(headers, X_B3_TRACEID, b3_trace_hex(ctx.trace_id, b3));
            set_header(headers, X_B3_SPANID, new_span.to_hex());
            set_header(headers, X_B3_PARENTSPANID, ctx.span_id.to_hex());
            if !headers.contains_key(X_B3_SAMPLED) && !headers.contains_key(X_B3_FLAGS) {
                match b3.sampling {
                    B3Sampling::Debug => set_header(headers, X_B3_FLAGS, "1".to_owned()),
                    B3Sampling::Accept => set_header(headers, X_B3_SAMPLED, "1".to_owned()),
                    B3Sampling::Deny => set_header(headers, X_B3_SAMPLED, "0".to_owned()),
                    B3Sampling::Defer => {}
                }
            }
        }
    }
}

/// A new root context (W3C format) for requests that arrive without context
/// when a workload opts into starting traces.
///
/// The trace id is random and non-zero, so the flags carry the random-trace-id
/// bit (`0x02`) plus the sampled bit when `sampled`. `span_id` is a fresh random
/// id that stands for the (unrecorded) originator of the trace: no span with
/// that id is ever reported, so the caller decides whether its first span
/// records it as parent or is recorded as the root.
pub fn new_root(sampled: bool) -> TraceContext {
    TraceContext {
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        propagation: Propagation::W3c {
            flags: FLAG_RANDOM_TRACE_ID | if sampled { FLAG_SAMPLED } else { 0 },
        },
    }
}

/// One header's value as this module reads it.
enum Header<'a> {
    Absent,
    /// Present exactly once, visible ASCII, surrounding OWS removed.
    One(&'a str),
    /// Present more than once, or not visible ASCII.
    Invalid,
}

impl<'a> Header<'a> {
    fn present(self) -> Option<&'a str> {
        match self {
            Header::One(v) => Some(v),
            Header::Absent | Header::Invalid => None,
        }
    }
}

fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Header<'a> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Header::Absent,
        (Some(v), None) => v
            .to_str()
            .map(|s| Header::One(trim_ows(s)))
            .unwrap_or(Header::Invalid),
        (Some(_), Some(_)) => Header::Invalid,
    }
}

/// Replaces every value of `name` with `value`. The values written here are
/// lowercase hex, `-` and digits, so they are always valid header values; the
/// map refuses a new name only past its 32 768-entry limit, in which case the
/// header is left as it was rather than panicking.
fn set_header(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        let _ = headers.try_insert(name, value);
    }
}

/// Strips the optional whitespace (SP, HTAB) around a field value.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// [`trim_ows`] on bytes.
fn trim_ows_bytes(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

thread_local! {
    /// The ids' generator: one per thread (a data path core draws without sharing),
    /// seeded from the OS-seeded `ThreadRng`.
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_rng(rand::thread_rng()).unwrap_or_else(|_| rand::SeedableRng::from_entropy()));
}

/// `N` random bytes for an id. Trace and span ids must be unique and, for the W3C
/// random-trace-id flag, random; they are not secrets, so a fast non-cryptographic
/// generator (xoshiro, `SmallRng`) draws them, as OpenTelemetry's SDKs do, about a
/// tenth of `ThreadRng`'s (ChaCha) cost per id on the request path.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    IDS.with(|r| rand::RngCore::fill_bytes(&mut *r.borrow_mut(), &mut out));
    out
}

#[cfg(test)]
mod tests;
