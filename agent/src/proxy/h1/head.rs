//! HTTP/1.1 heads for the lean path: what a request or response head says about its
//! framing and connection, decided from `httparse`'s view of the bytes, and the head
//! as it is sent on. Pure functions over byte slices; offsets ([`Span`]) point into the
//! buffer the head was parsed from, so the caller keeps no borrow across its awaits.
//!
//! The lean path takes only the heads whose meaning is plain (RFC 9112): anything
//! unusual — HTTP/1.0, an upgrade, `Expect`, a `Transfer-Encoding` other than exactly
//! `chunked`, `Content-Length` repeated or next to `Transfer-Encoding`, `Connection`
//! naming other fields, a target not in origin form, more than [`MAX_HEADERS`] fields
//! or a head over the buffer — is [`Request::Fallback`]: the connection goes on in
//! hyper, which answers it exactly as before.

use std::mem::MaybeUninit;

use crate::trace::context;

/// Header fields a head may have for the lean path (hyper's limit is 100).
pub const MAX_HEADERS: usize = 64;

/// A byte range in the buffer the head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    fn of(buf: &[u8], part: &[u8]) -> Self {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        Self {
            start,
            end: start + part.len(),
        }
    }

    /// The bytes of `buf` in this range.
    pub fn get<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.start..self.end]
    }

    /// As text (`""` when not UTF-8).
    pub fn str<'b>(&self, buf: &'b [u8]) -> &'b str {
        let b = self.get(buf);
        if b.is_ascii() {
            // SAFETY: ASCII is UTF-8. (Checking for ASCII costs about half of a full
            // UTF-8 validation on the short values of a head: a path, a host.)
            return unsafe { std::str::from_utf8_unchecked(b) };
        }
        std::str::from_utf8(b).unwrap_or("")
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes (responses only).
    UntilClose,
}

/// One header field of a head: its name and value ranges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Field {
    /// The name.
    pub name: Span,
    /// The value.
    pub value: Span,
}

/// The fields a head loses on the way (`Connection` and the ones like it): how many,
/// and the lines of the first [`Dropped::KNOWN`], so that the head can go on as it came
/// without them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Dropped {
    count: usize,
    /// Each line from its name to its LF, in order.
    lines: [Span; Dropped::KNOWN],
}

impl Dropped {
    /// Lines remembered; a head dropping more is written again field by field.
    pub const KNOWN: usize = 4;

    /// Fields dropped.
    pub fn count(&self) -> usize {
        self.count
    }

    fn clear(&mut self) {
        self.count = 0;
    }

    /// Notes that `field` (of the head in `buf`) is dropped.
    fn add(&mut self, buf: &[u8], field: &Field) {
        if let Some(line) = self.lines.get_mut(self.count) {
            // A value never holds a LF: the line ends at the first one after it.
            let lf = memchr::memchr(b'\n', &buf[field.value.end..]).unwrap_or(0);
            *line = Span {
                start: field.name.start,
                end: field.value.end + lf + 1,
            };
        }
        self.count += 1;
    }

    /// Appends `buf[..end]` without the dropped lines; `false` (nothing appended) when
    /// some were not remembered.
    pub fn copy_without(&self, out: &mut Vec<u8>, buf: &[u8], end: usize) -> bool {
        let Some(lines) = self.lines.get(..self.count) else {
            return false;
        };
        let mut at = 0;
        for l in lines {
            out.extend_from_slice(&buf[at..l.start]);
            at = l.end;
        }
        out.extend_from_slice(&buf[at..end]);
        true
    }
}

/// A request head the lean path forwards.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// Bytes of the head, its final CRLF included.
    pub len: usize,
    /// The method token.
    pub method: Span,
    /// The request target (origin form: path and query).
    pub target: Span,
    /// The request line, without its CRLF.
    pub line: Span,
    /// `Host`.
    pub host: Option<Span>,
    /// `User-Agent`.
    pub user_agent: Option<Span>,
    /// `Content-Type` starts with `application/grpc`.
    pub grpc: bool,
    /// Body framing.
    pub framing: Option<Framing>,
    /// `Connection: close`.
    pub close: bool,
    /// Fields forwarded as they are.
    pub fields: Vec<Field>,
    /// Trace-context fields (W3C `traceparent`, B3), in order.
    pub trace: Vec<Field>,
    /// Fields the proxy does not forward (`Connection`).
    pub dropped: Dropped,
}

/// What a request buffer holds.
#[derive(Debug)]
pub enum Request {
    /// Not a whole head yet.
    Partial,
    /// A head the lean path forwards.
    Lean,
    /// Anything else: hyper serves the connection from here on (the reason is logged).
    Fallback(&'static str),
}

/// Whether the field name `name` is `lower` in any case. `name` is a token (httparse
/// checks every name), `lower` a lowercase name of letters, digits and `-`: setting
/// bit 0x20 of a token character lowercases a letter and turns no other token
/// character into one of those, so names compare eight bytes at a time (every head
/// compares each of its names with several; a byte at a time this was the largest
/// part of parsing a response).
fn eq(name: &str, lower: &str) -> bool {
    let (a, b) = (name.as_bytes(), lower.as_bytes());
    debug_assert!(b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-'));
    if a.len() != b.len() {
        return false;
    }
    if a.len() < 8 {
        return a.iter().zip(b).all(|(x, y)| x | 0x20 == *y);
    }
    const LOWER: u64 = u64::from_ne_bytes([0x20; 8]);
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let mut at = 0;
    while at + 8 < a.len() {
        if word(a, at) | LOWER != word(b, at) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes (overlapping the word before when the length is not a
    // multiple of eight).
    let last = a.len() - 8;
    word(a, last) | LOWER == word(b, last)
}

fn is_trace_field(name: &str) -> bool {
    context::FIELDS.iter().any(|n| eq(name, n))
}

/// The start line of a complete head: up to its first LF, without the CR before it (a
/// response head may end its lines with a bare LF; it is written again with CRLF).
fn start_line(buf: &[u8]) -> Span {
    let lf = buf.iter().position(|b| *b == b'\n').unwrap_or(0);
    let end = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Span { start: 0, end }
}

/// Whether a line of `head` ends in a LF without the CR before it: one pass without
/// early exit over byte pairs, which the compiler turns into SIMD.
fn has_bare_lf(head: &[u8]) -> bool {
    let Some(first) = head.first() else {
        return false;
    };
    let pairs = head[1..].iter().zip(head);
    *first == b'\n'
        || pairs.fold(false, |bad, (b, prev)| {
            bad | (*b == b'\n') & (*prev != b'\r')
        })
}

/// Whether a `Content-Length` value is digits only (no sign, no list).
fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Tokens of a comma-separated field value, trimmed.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Parses the request head at the start of `buf` into `head` (reused between requests,
/// so a connection allocates its field lists once). `max` is the largest head the lean
/// path buffers: a partial head already that long falls back.
pub fn parse_request(buf: &[u8], max: usize, head: &mut RequestHead) -> Request {
    // Left uninitialised: httparse writes the fields it finds (no 2 KiB to zero).
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max => return Request::Fallback("head"),
        Ok(httparse::Status::Partial) => return Request::Partial,
        Err(httparse::Error::TooManyHeaders) => return Request::Fallback("fields"),
        Err(_) => return Request::Fallback("malformed"),
    };
    if req.version != Some(1) {
        return Request::Fallback("version");
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Request::Fallback("malformed");
    };
    if method == "CONNECT" || !path.starts_with('/') {
        return Request::Fallback("target");
    }
    // httparse accepts lines ended by a bare LF; an app might not read them the same
    // way, so such a head is hyper's (which writes it again with CRLF).
    if has_bare_lf(&buf[..len]) {
        return Request::Fallback("bare LF");
    }
    head.len = len;
    head.method = Span::of(buf, method.as_bytes());
    head.target = Span::of(buf, path.as_bytes());
    head.line = start_line(buf);
    head.host = None;
    head.user_agent = None;
    head.grpc = false;
    head.close = false;
    head.fields.clear();
    head.trace.clear();
    head.dropped.clear();
    let mut length = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        let field = Field {
            name: Span::of(buf, h.name.as_bytes()),
            value: Span::of(buf, h.value),
        };
        let name = h.name;
        if eq(name, "content-length") {
            match (length, content_length(h.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Request::Fallback("content-length"),
            }
        } else if eq(name, "transfer-encoding") {
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Request::Fallback("transfer-encoding");
            }
            chunked = true;
        } else if eq(name, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    return Request::Fallback("connection");
                }
            }
            head.dropped.add(buf, &field);
            continue;
        } else if eq(name, "te") {
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"trailers") {
                return Request::Fallback("te");
            }
        } else if [
            "upgrade",
            "expect",
            "http2-settings",
            "keep-alive",
            "proxy-connection",
        ]
        .iter()
        .any(|n| eq(name, n))
        {
            return Request::Fallback("hop-by-hop");
        } else if eq(name, "host") {
            head.host = Some(field.value);
        } else if eq(name, "user-agent") {
            head.user_agent = Some(field.value);
        } else if eq(name, "content-type") {
            head.grpc = h.value.starts_with(b"application/grpc");
        } else if is_trace_field(name) {
            head.trace.push(field);
            continue;
        }
        head.fields.push(field);
    }
    head.framing = Some(match (length, chunked) {
        (Some(_), true) => return Request::Fallback("content-length and transfer-encoding"),
        (Some(0) | None, false) => Framing::Empty,
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
    });
    Request::Lean
}

/// A response head as the lean path forwards it.
#[derive(Debug, Default)]
pub struct ResponseHead {
    /// Bytes of the head, its final CRLF included.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// The status line, without its CRLF.
    pub line: Span,
    /// Body framing.
    pub framing: Option<Framing>,
    /// The server keeps the connection open for another request.
    pub reusable: bool,
    /// Fields forwarded as they are.
    pub fields: Vec<Field>,
    /// Fields the proxy does not forward (`Connection`, `Keep-Alive`, and the ones
    /// `Connection` names).
    pub dropped: Dropped,
    /// Every line ends in CRLF: the head can go on as it came, without the dropped
    /// fields ([`ResponseHead::write`]).
    pub crlf: bool,
}

/// What a response buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Not a whole head yet.
    Partial,
    /// A head.
    Complete,
    /// Not a response the proxy can forward.
    Invalid(&'static str),
}

/// Parses the response head at the start of `buf` into `head`; `head_request`: the
/// request was `HEAD` (no body whatever the fields say).
pub fn parse_response(
    buf: &[u8],
    max: usize,
    head_request: bool,
    head: &mut ResponseHead,
) -> Response {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max => {
            return Response::Invalid("response head too large")
        }
        Ok(httparse::Status::Partial) => return Response::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Response::Invalid("too many response header fields")
        }
        Err(_) => return Response::Invalid("malformed response head"),
    };
    let Some(status) = resp.code else {
        return Response::Invalid("malformed response head");
    };
    head.len = len;
    head.status = status;
    head.line = start_line(buf);
    head.fields.clear();
    head.dropped.clear();
    let mut reusable = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    // Fields named by `Connection` are dropped too (RFC 9110 §7.6.1).
    let mut named: [&[u8]; 4] = [b""; 4];
    let mut n_named = 0;
    for h in resp.headers.iter() {
        if eq(h.name, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    if n_named == named.len() {
                        return Response::Invalid("too many fields named in Connection");
                    }
                    named[n_named] = t;
                    n_named += 1;
                }
            }
        }
    }
    for h in resp.headers.iter() {
        let name = h.name;
        let field = Field {
            name: Span::of(buf, name.as_bytes()),
            value: Span::of(buf, h.value),
        };
        if eq(name, "connection")
            || eq(name, "keep-alive")
            || eq(name, "proxy-connection")
            || named[..n_named]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        {
            head.dropped.add(buf, &field);
            continue;
        }
        if eq(name, "content-length") {
            let Some(n) = content_length(h.value) else {
                return Response::Invalid("invalid Content-Length in response");
            };
            if length.is_some_and(|l| l != n) {
                return Response::Invalid("conflicting Content-Length in response");
            }
            length = Some(n);
        } else if eq(name, "transfer-encoding") {
            // The final coding decides (RFC 9112 §6.3).
            chunked = Some(
                tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        }
        head.fields.push(field);
    }
    let framing = if head_request || status == 204 || status == 304 || (100..200).contains(&status)
    {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }
    head.reusable = reusable;
    head.framing = Some(framing);
    head.crlf = !has_bare_lf(&buf[..len]);
    Response::Complete
}

impl ResponseHead {
    /// Appends the head as it is sent on (from `buf`, where it was parsed), with
    /// `Connection: close` added when `close`: the bytes as they came without the
    /// dropped fields' lines when every line ends in CRLF, else the status line and the
    /// fields kept, each written again.
    pub fn write(&self, out: &mut Vec<u8>, buf: &[u8], close: bool) {
        // Without the final CRLF, which is written after `Connection`.
        if !(self.crlf && self.dropped.copy_without(out, buf, self.len - 2)) {
            write_head(out, buf, self.line, &self.fields);
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `line` and the fields to `out` (the caller adds its own fields and the
/// final CRLF).
pub fn write_head(out: &mut Vec<u8>, buf: &[u8], line: Span, fields: &[Field]) {
    out.extend_from_slice(line.get(buf));
    out.extend_from_slice(b"\r\n");
    write_head_fields(out, buf, fields);
}

/// Appends `fields` (in `buf`) to a head being written, each `name: value\r\n`.
pub fn write_head_fields(out: &mut Vec<u8>, buf: &[u8], fields: &[Field]) {
    for f in fields {
        out.extend_from_slice(f.name.get(buf));
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
