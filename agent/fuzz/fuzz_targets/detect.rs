//! Protocol detection (`hoptrace::proxy::detect`) on arbitrary first bytes.
//!
//! `detect()` peeks at a growing prefix of the client's stream (at most 8 KiB) and
//! returns as soon as `classify` decides; `server_first()` does the same with the
//! server's first bytes and `classify_server`. Input: 2 bytes that pick a cut point,
//! then the stream. Asserted:
//!
//! - no panic, for any bytes;
//! - `NeedMore` only below the peek window (else `detect` would wait for bytes that
//!   can never be peeked), `Http2` only for the full HTTP/2 preface, `Http1` only for
//!   a method token, a space and a first line that ends in `HTTP/1.x` (after
//!   empty lines, which HTTP/1 parsers skip);
//! - a decision taken on a prefix is the decision on the whole stream: the result
//!   does not depend on how the bytes were split into segments;
//! - the same for `classify_server` (`None` only for fewer than 9 bytes,
//!   `H2Settings` only for a non-ACK SETTINGS frame header on stream 0 whose length
//!   is a multiple of 6, never `Reset`, which stands for a failed connection).
#![no_main]

use hoptrace::proxy::detect::{classify, classify_server, Protocol, ServerFirst, Verdict};
use libfuzzer_sys::fuzz_target;

/// `detect::MAX_PEEK`: the most bytes `detect` ever peeks.
const MAX_PEEK: usize = 8 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// RFC 9110 `tchar`: the characters of a method token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_client(buf: &[u8], v: &Verdict) {
    match v {
        Verdict::NeedMore => assert!(buf.len() < MAX_PEEK, "NeedMore at {} bytes", buf.len()),
        Verdict::Is(Protocol::Http2) => assert!(buf.starts_with(H2_PREFACE)),
        Verdict::Is(Protocol::Http1) => {
            let start = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            let buf = &buf[start..];
            let method = buf.iter().take_while(|&&b| is_tchar(b)).count();
            assert!(
                method > 0 && buf.get(method) == Some(&b' '),
                "Http1 without a method: {buf:?}"
            );
            let eol = buf.iter().position(|&b| b == b'\n').expect("a full line");
            let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
            assert!(line.len() >= 8 && line[line.len() - 8..].starts_with(b"HTTP/1."));
        }
        Verdict::Is(Protocol::Opaque) => {}
    }
}

fn check_server(buf: &[u8], v: Option<ServerFirst>) {
    match v {
        None => assert!(buf.len() < 9),
        Some(ServerFirst::H2Settings) => {
            assert!(buf.len() >= 9);
            assert_eq!(buf[3..9], [4, 0, 0, 0, 0, 0]);
            assert_eq!(u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) % 6, 0);
        }
        Some(ServerFirst::Other) => {}
        Some(ServerFirst::Reset) => panic!("Reset stands for a failed connection, not for bytes"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (cut, stream) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let buf = &stream[..stream.len().min(MAX_PEEK)];
    let whole = classify(buf);
    check_client(buf, &whole);
    let prefix = &buf[..cut % (buf.len() + 1)];
    let early = classify(prefix);
    check_client(prefix, &early);
    if let Verdict::Is(p) = early {
        assert_eq!(
            whole,
            Verdict::Is(p),
            "decided {p:?} on {} bytes, not on {}",
            prefix.len(),
            buf.len()
        );
    }

    let sbuf = &stream[..stream.len().min(64)];
    let whole = classify_server(sbuf);
    check_server(sbuf, whole);
    let sprefix = &sbuf[..cut % (sbuf.len() + 1)];
    let early = classify_server(sprefix);
    check_server(sprefix, early);
    if early.is_some() {
        assert_eq!(
            whole,
            early,
            "server: {} vs {} bytes",
            sprefix.len(),
            sbuf.len()
        );
    }
});
