//! The OTLP protobuf wire format, written by hand for the span path.
//!
//! A traced request leg encodes its two spans straight into bytes, once, when its
//! response is over: the attributes are written once and copied into both spans, and
//! nothing on the way to the collector allocates per attribute or encodes again. The
//! export task only frames the pods' span bytes into one `ExportTraceServiceRequest`
//! (`export.rs`).
//!
//! The bytes are exactly what prost writes for the same `opentelemetry-proto`
//! messages (fields in number order, proto3 defaults left out, `oneof` values always
//! written): the tests compare them byte for byte and decode them with the official
//! protos.

use bytes::BufMut;

/// Protobuf wire types.
const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

/// Appends `v` as a varint.
pub fn varint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Bytes of `v` as a varint.
pub fn varint_len(v: u64) -> usize {
    // 1 byte per started 7 bits; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(out: &mut impl BufMut, field: u32, wire: u32) {
    varint(out, u64::from((field << 3) | wire));
}

/// Bytes of a length-delimited field of `len` bytes (tag, length, content).
pub fn len_field_size(field: u32, len: usize) -> usize {
    varint_len(u64::from(field << 3)) + varint_len(len as u64) + len
}

/// Appends the tag and length of a length-delimited field of `len` bytes; the caller
/// appends the content.
pub fn len_prefix(out: &mut impl BufMut, field: u32, len: usize) {
    tag(out, field, LEN);
    varint(out, len as u64);
}

/// Appends a `bytes`/`string`/message field whose content is `b` (always, even empty).
fn len_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    len_prefix(out, field, b.len());
    out.extend_from_slice(b);
}

/// A proto3 `string`/`bytes` field: left out when empty.
fn opt_len_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        len_field(out, field, b);
    }
}

/// Bytes of a proto3 `string`/`bytes` field (none when empty).
fn opt_len_field_size(field: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len_field_size(field, len)
    }
}

/// Bytes of a tagged varint field.
fn varint_field_size(field: u32, v: u64) -> usize {
    varint_len(u64::from(field << 3)) + varint_len(v)
}

/// `AnyValue { string_value = 1 }`: the content's length.
fn any_string_len(value: &str) -> usize {
    len_field_size(1, value.len())
}

/// `KeyValue { key = 1, value = 2 }`: the content's length, for a value of `any` bytes.
fn key_value_len(key: &str, any: usize) -> usize {
    opt_len_field_size(1, key.len()) + len_field_size(2, any)
}

/// Bytes an attribute may take to be staged whole ([`Staging`]).
const STAGED: usize = 96;
/// Bytes of one length-delimited prefix at most (a 1-byte tag, a 10-byte length).
const PREFIX_MAX: usize = 11;

/// An attribute's bytes gathered on the stack and appended to the `Vec` in one copy:
/// at most [`STAGED`] bytes; a key or value that would not fit is appended on its own
/// ([`Attributes::stage_key`] leaves room for two more prefixes after the key).
struct Staging {
    buf: [u8; STAGED],
    len: usize,
}

impl Default for Staging {
    fn default() -> Self {
        Self {
            buf: [0; STAGED],
            len: 0,
        }
    }
}

impl Staging {
    fn push(&mut self, b: u8) {
        debug_assert!(self.len < STAGED, "staged past its buffer");
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn put(&mut self, b: &[u8]) {
        debug_assert!(self.len + b.len() <= STAGED, "staged past its buffer");
        if let Some(dst) = self.buf.get_mut(self.len..self.len + b.len()) {
            dst.copy_from_slice(b);
            self.len += b.len();
        }
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.push(v as u8);
    }

    /// The tag and length of a length-delimited field.
    fn prefix(&mut self, field: u32, len: usize) {
        self.varint(u64::from((field << 3) | LEN));
        self.varint(len as u64);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Span attributes (`KeyValue`s, field 9 of `Span`), written once per request leg and
/// copied as bytes into each of its spans.
#[derive(Debug, Default, Clone)]
pub struct Attributes(Vec<u8>);

/// `Span.attributes`.
const SPAN_ATTRIBUTES: u32 = 9;

impl Attributes {
    /// Room for `n` bytes of attributes.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Keeps the first `len` bytes (a length [`Attributes::len`] gave, so whole
    /// attributes), and its buffer.
    pub fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    /// The `KeyValue` framing and key of an attribute whose `AnyValue` has `any` bytes,
    /// with room reserved for the whole attribute; the caller writes the `AnyValue`
    /// (its content only: `AnyValue`'s own framing is written here).
    fn key(&mut self, key: &str, any: usize) {
        let mut s = Staging::default();
        self.stage_key(&mut s, key, any);
        self.0.extend_from_slice(s.bytes());
    }

    /// Reserves room for a whole attribute and stages its framing, key and `AnyValue`
    /// prefix (a key too long to stage is appended at once, its framing before it).
    fn stage_key(&mut self, s: &mut Staging, key: &str, any: usize) {
        let kv = key_value_len(key, any);
        self.0.reserve(len_field_size(SPAN_ATTRIBUTES, kv));
        s.prefix(SPAN_ATTRIBUTES, kv);
        if !key.is_empty() {
            s.prefix(1, key.len());
        }
        if s.len + key.len() + 2 * PREFIX_MAX > STAGED {
            self.0.extend_from_slice(s.bytes());
            self.0.extend_from_slice(key.as_bytes());
            s.len = 0;
        } else {
            s.put(key.as_bytes());
        }
        s.prefix(2, any);
    }

    /// A string attribute: the common one, whose every length fits in one byte, written
    /// straight (four framing bytes, the key, four more, the value); any other staged
    /// and appended in one copy.
    pub fn string(&mut self, key: &str, value: &str) {
        // KeyValue { key = 1, value = 2: AnyValue { string_value = 1 } }: each part's
        // length below 128 when the whole `KeyValue`'s is.
        let any = 2 + value.len();
        let kv = 2 + key.len() + 2 + any;
        if !key.is_empty() && kv < 0x80 {
            let lenf = |field: u32| ((field << 3) | LEN) as u8;
            self.0.reserve(2 + kv);
            let v = &mut self.0;
            v.extend_from_slice(&[lenf(SPAN_ATTRIBUTES), kv as u8, lenf(1), key.len() as u8]);
            v.extend_from_slice(key.as_bytes());
            v.extend_from_slice(&[lenf(2), any as u8, lenf(1), value.len() as u8]);
            v.extend_from_slice(value.as_bytes());
            return;
        }
        let mut s = Staging::default();
        self.stage_key(&mut s, key, any_string_len(value));
        s.prefix(1, value.len());
        if s.len + value.len() <= STAGED {
            s.put(value.as_bytes());
            self.0.extend_from_slice(s.bytes());
        } else {
            self.0.extend_from_slice(s.bytes());
            self.0.extend_from_slice(value.as_bytes());
        }
    }

    /// Appends attributes encoded elsewhere (a connection's, written once).
    pub fn extend(&mut self, other: &Attributes) {
        self.0.extend_from_slice(&other.0);
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No attribute yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An integer attribute.
    pub fn int(&mut self, key: &str, value: i64) {
        // AnyValue { int_value = 3 }
        self.key(key, varint_field_size(3, value as u64));
        tag(&mut self.0, 3, VARINT);
        varint(&mut self.0, value as u64);
    }

    /// A string-array attribute.
    pub fn strings<'a>(&mut self, key: &str, values: impl IntoIterator<Item = &'a str> + Clone) {
        // AnyValue { array_value = 5: ArrayValue { values = 1: AnyValue { string_value = 1 } } }
        let array: usize = values
            .clone()
            .into_iter()
            .map(|s| len_field_size(1, any_string_len(s)))
            .sum();
        self.key(key, len_field_size(5, array));
        len_prefix(&mut self.0, 5, array);
        for s in values {
            len_prefix(&mut self.0, 1, any_string_len(s));
            len_field(&mut self.0, 1, s.as_bytes());
        }
    }

    /// The encoded attributes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One span's fields, borrowed for encoding.
#[derive(Debug, Clone, Copy)]
pub struct SpanFields<'a> {
    /// 16 bytes.
    pub trace_id: &'a [u8; 16],
    /// 8 bytes.
    pub span_id: &'a [u8; 8],
    /// 8 bytes, or none for a root span.
    pub parent_span_id: Option<&'a [u8; 8]>,
    /// `Span.flags`.
    pub flags: u32,
    /// Span name.
    pub name: &'a str,
    /// `SpanKind` value.
    pub kind: i32,
    /// Nanoseconds since the epoch.
    pub start_time_unix_nano: u64,
    /// Nanoseconds since the epoch.
    pub end_time_unix_nano: u64,
    /// Encoded attributes, written one part after the other (a request's, shared by
    /// its spans and by later requests asking the same way, then its response's).
    pub attributes: [&'a Attributes; 2],
    /// `Status.message`.
    pub status_message: &'a str,
    /// `Status.code` value.
    pub status_code: i32,
}

/// `ScopeSpans.spans`: the field each span is framed in.
pub const SCOPE_SPANS_SPANS: u32 = 2;

/// `Status { message = 2, code = 3 }`: the content's length.
fn status_len(span: &SpanFields<'_>) -> usize {
    let code = if span.status_code != 0 {
        varint_field_size(3, span.status_code as u64)
    } else {
        0
    };
    opt_len_field_size(2, span.status_message.len()) + code
}

/// The `Span`'s content length.
fn span_len(span: &SpanFields<'_>) -> usize {
    let kind = if span.kind != 0 {
        varint_field_size(6, span.kind as u64)
    } else {
        0
    };
    let time = |t: u64| if t != 0 { 1 + 8 } else { 0 };
    opt_len_field_size(1, span.trace_id.len())
        + opt_len_field_size(2, span.span_id.len())
        + span
            .parent_span_id
            .map_or(0, |p| opt_len_field_size(4, p.len()))
        + opt_len_field_size(5, span.name.len())
        + kind
        + time(span.start_time_unix_nano)
        + time(span.end_time_unix_nano)
        + span
            .attributes
            .iter()
            .map(|a| a.as_bytes().len())
            .sum::<usize>()
        + len_field_size(15, status_len(span))
        + if span.flags != 0 { 2 + 4 } else { 0 }
}

/// Appends `span` as one `ScopeSpans.spans` entry (tag, length, `Span`): entries of one
/// pod concatenate into its `ScopeSpans` as they are. Every length is computed before
/// its content is written: nothing is moved.
pub fn span(out: &mut Vec<u8>, span: &SpanFields<'_>) {
    let len = span_len(span);
    out.reserve(len_field_size(SCOPE_SPANS_SPANS, len));
    len_prefix(out, SCOPE_SPANS_SPANS, len);
    opt_len_field(out, 1, span.trace_id);
    opt_len_field(out, 2, span.span_id);
    if let Some(parent) = span.parent_span_id {
        opt_len_field(out, 4, parent);
    }
    opt_len_field(out, 5, span.name.as_bytes());
    if span.kind != 0 {
        tag(out, 6, VARINT);
        varint(out, span.kind as u64);
    }
    for (field, t) in [(7, span.start_time_unix_nano), (8, span.end_time_unix_nano)] {
        if t != 0 {
            tag(out, field, I64);
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
    for a in span.attributes {
        out.extend_from_slice(a.as_bytes());
    }
    len_prefix(out, 15, status_len(span));
    opt_len_field(out, 2, span.status_message.as_bytes());
    if span.status_code != 0 {
        tag(out, 3, VARINT);
        varint(out, span.status_code as u64);
    }
    if span.flags != 0 {
        tag(out, 16, I32);
        out.extend_from_slice(&span.flags.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::{any_value::Value, AnyValue, ArrayValue, KeyValue},
        trace::v1::{status::StatusCode, ScopeSpans, Span, Status},
    };
    use prost::Message as _;

    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX.into(), u64::MAX] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    /// Byte-equal to prost's encoding of the same messages, and decodable by it.
    #[test]
    fn spans_are_what_prost_writes() {
        let long = "x".repeat(300);
        let mut attrs = Attributes::default();
        attrs.string("http.request.method", "GET");
        attrs.string("url.path", &long);
        attrs.string("empty", "");
        attrs.int("server.port", 8080);
        attrs.int("zero", 0);
        attrs.int("negative", -3);
        attrs.strings("hoptrace.truncated_attributes", ["url.path", "a"]);
        // Around the stack buffer's size: a long key, values that just fit or just not.
        let long_key = "k".repeat(120);
        // And around the one-byte lengths' limit ("url.scheme": 127 bytes at 111).
        let sizes = [50, 60, 70, 80, 90, 110, 111, 112, 113, 127, 128, 200];
        // The second part, written after the first (a response's attributes).
        let mut more = Attributes::default();
        more.string(&long_key, "v");
        for n in sizes {
            more.string("url.scheme", &"y".repeat(n));
        }
        let mut expected_attrs = vec![
            kv("http.request.method", Value::StringValue("GET".into())),
            kv("url.path", Value::StringValue(long.clone())),
            kv("empty", Value::StringValue(String::new())),
            kv("server.port", Value::IntValue(8080)),
            kv("zero", Value::IntValue(0)),
            kv("negative", Value::IntValue(-3)),
            kv(
                "hoptrace.truncated_attributes",
                Value::ArrayValue(ArrayValue {
                    values: ["url.path", "a"]
                        .map(|s| AnyValue {
                            value: Some(Value::StringValue(s.into())),
                        })
                        .to_vec(),
                }),
            ),
            kv(&long_key, Value::StringValue("v".into())),
        ];
        for n in sizes {
            expected_attrs.push(kv("url.scheme", Value::StringValue("y".repeat(n))));
        }
        let cases = [
            (Some([9u8; 8]), 0x301, "GET /users/{id}", 2, "", 0),
            (None, 0x100, "", 0, "HTTP 503", StatusCode::Error as i32),
            (None, 0, "n", 3, "", StatusCode::Ok as i32),
        ];
        let mut bytes = Vec::new();
        let mut expected = ScopeSpans::default();
        for (parent, flags, name, kind, message, code) in cases {
            let fields = SpanFields {
                trace_id: &[1; 16],
                span_id: &[2; 8],
                parent_span_id: parent.as_ref(),
                flags,
                name,
                kind,
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_000_123_456,
                attributes: [&attrs, &more],
                status_message: message,
                status_code: code,
            };
            span(&mut bytes, &fields);
            expected.spans.push(Span {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                flags,
                name: name.into(),
                kind,
                start_time_unix_nano: fields.start_time_unix_nano,
                end_time_unix_nano: fields.end_time_unix_nano,
                attributes: expected_attrs.clone(),
                status: Some(Status {
                    message: message.into(),
                    code,
                }),
                ..Default::default()
            });
        }
        assert_eq!(bytes, expected.encode_to_vec());
        assert_eq!(ScopeSpans::decode(&bytes[..]).unwrap(), expected);
    }
}
