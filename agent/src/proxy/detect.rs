//! Protocol detection on an accepted connection, by peeking (nothing is consumed).
//!
//! - `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` → HTTP/2 with prior knowledge (gRPC);
//! - an HTTP/1.x request line (`METHOD SP target SP HTTP/1.x`) → HTTP/1;
//! - anything else, including TLS (first byte 0x16) → opaque TCP.
//!
//! Server-first protocols (MySQL, SMTP, …) send nothing until the server speaks: after
//! [`DETECT_TIMEOUT`] without a decision the connection is proxied opaquely. An HTTP/2
//! server may speak first too — its SETTINGS frame ([`server_first`]) — without making
//! the connection server-first: then the client's bytes still decide.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long to wait for the client's first bytes before falling back to opaque.
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(300);

/// HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods recognised as the start of an HTTP/1 request line.
const METHODS: &[&[u8]] = &[
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];

/// The detected application protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// Anything else: proxied byte for byte.
    Opaque,
}

/// What a prefix of the stream says.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The protocol is decided.
    Is(Protocol),
    /// Too few bytes to tell: peek again.
    NeedMore,
}

/// Classifies the client's first bytes (a prefix of the stream, at most `MAX_PEEK`
/// bytes). Public for the fuzz targets (`agent/fuzz`).
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    // HTTP/2 preface (or a prefix of it).
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Is(Protocol::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    // HTTP/1: a known method followed by a space, then the line ends in HTTP/1.x.
    let mut method_prefix = false;
    for m in METHODS {
        let k = buf.len().min(m.len());
        if buf[..k] == m[..k] {
            method_prefix = true;
            if buf.len() > m.len() && buf[m.len()] == b' ' {
                return match buf.iter().position(|&b| b == b'\n') {
                    Some(eol) => {
                        let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
                        if line.len() >= 8 && line[line.len() - 8..].starts_with(b"HTTP/1.") {
                            Verdict::Is(Protocol::Http1)
                        } else {
                            Verdict::Is(Protocol::Opaque)
                        }
                    }
                    // Request line not complete yet (or longer than what we peeked).
                    None if buf.len() >= MAX_PEEK => Verdict::Is(Protocol::Opaque),
                    None => Verdict::NeedMore,
                };
            }
        }
    }
    if method_prefix && buf.len() < 8 {
        Verdict::NeedMore
    } else {
        Verdict::Is(Protocol::Opaque)
    }
}

/// Whether `buf` starts with a known method and a space (an HTTP/1 request line).
fn is_method_start(buf: &[u8]) -> bool {
    METHODS
        .iter()
        .any(|m| buf.len() > m.len() && buf.starts_with(m) && buf[m.len()] == b' ')
}

/// Bytes peeked at most: a request line longer than this is proxied opaquely.
const MAX_PEEK: usize = 8 * 1024;

/// Peeks at the client's first bytes until the protocol is known or the timeout passes.
/// An HTTP/1 request line longer than the peek window is relayed opaquely (untraced)
/// and counted in `too_large`.
pub async fn detect(
    stream: &TcpStream,
    timeout: Duration,
    too_large: &prometheus_client::metrics::counter::Counter,
) -> Protocol {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_PEEK];
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            // Error or timeout: let the opaque path deal with the connection.
            Ok(Err(_)) | Err(_) => return Protocol::Opaque,
        };
        if n == 0 {
            return Protocol::Opaque; // EOF before any byte
        }
        if let Verdict::Is(p) = classify(&buf[..n]) {
            if p == Protocol::Opaque && n >= MAX_PEEK && is_method_start(&buf[..n]) {
                too_large.inc();
            }
            return p;
        }
        if n == last {
            // No new bytes since the last peek: wait a little instead of spinning.
            if tokio::time::Instant::now() >= deadline {
                return Protocol::Opaque;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        last = n;
    }
}

/// What the server's first bytes say when it speaks before the client's protocol is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFirst {
    /// An HTTP/2 SETTINGS frame: the server connection preface (RFC 9113 §3.4), which an
    /// HTTP/2 server may send as soon as the connection is up, before the client's
    /// preface has arrived (gRPC servers do). Only an HTTP/2 client can be talking to it.
    H2Settings,
    /// Anything else, or EOF: a server-first protocol.
    Other,
    /// The connection failed (reset) before the server sent a byte: the client's
    /// connection is reset too (reading on would report a clean EOF, the error
    /// having been consumed here).
    Reset,
}

/// The first 9 bytes of a SETTINGS frame that is not an ACK: length (24 bits, any),
/// type 4, flags 0, stream 0.
const SETTINGS_HEADER: [Option<u8>; 9] = [
    None,
    None,
    None,
    Some(0x04),
    Some(0),
    Some(0),
    Some(0),
    Some(0),
    Some(0),
];

/// Classifies the server's first bytes. `None`: too few bytes to tell. Public for the
/// fuzz targets (`agent/fuzz`).
pub fn classify_server(buf: &[u8]) -> Option<ServerFirst> {
    let header_matches = buf
        .iter()
        .zip(SETTINGS_HEADER)
        .all(|(b, want)| want.is_none_or(|w| *b == w));
    if !header_matches {
        return Some(ServerFirst::Other);
    }
    if buf.len() < SETTINGS_HEADER.len() {
        return None;
    }
    // A SETTINGS payload is a list of 6-byte settings.
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
    Some(if len.is_multiple_of(6) {
        ServerFirst::H2Settings
    } else {
        ServerFirst::Other
    })
}

/// Waits until the server sends its first bytes (peeked, not consumed) and classifies them.
pub async fn server_first(upstream: &TcpStream) -> ServerFirst {
    let mut buf = [0u8; SETTINGS_HEADER.len()];
    loop {
        match upstream.peek(&mut buf).await {
            Ok(0) => return ServerFirst::Other,
            Err(_) => return ServerFirst::Reset,
            Ok(n) => match classify_server(&buf[..n]) {
                Some(verdict) => return verdict,
                // A partial frame header: wait a little instead of spinning.
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(
            classify(b"POST /a?b=c HTTP/1.0\r\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(classify(b"GE"), Verdict::NeedMore);
        assert_eq!(classify(b"GET /long-path-not-done"), Verdict::NeedMore);
        assert_eq!(
            classify(b"GET / SIP/2.0\r\n"),
            Verdict::Is(Protocol::Opaque)
        );
        assert_eq!(classify(H2_PREFACE), Verdict::Is(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), Verdict::NeedMore);
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Verdict::Is(Protocol::Opaque)
        );
        assert_eq!(
            classify(b"SSH-2.0-OpenSSH\r\n"),
            Verdict::Is(Protocol::Opaque)
        );
        assert_eq!(
            classify(b"GETX / HTTP/1.1\r\n"),
            Verdict::Is(Protocol::Opaque)
        );
        assert_eq!(classify(b"\x00\x00\x00"), Verdict::Is(Protocol::Opaque));
        assert_eq!(classify(b""), Verdict::NeedMore);
    }

    #[test]
    fn recognises_a_server_settings_frame() {
        // Empty SETTINGS, and one with two settings (12 bytes), as gRPC servers send.
        let empty = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        assert_eq!(classify_server(&empty), Some(ServerFirst::H2Settings));
        let two = [0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert_eq!(classify_server(&two), Some(ServerFirst::H2Settings));
        assert_eq!(classify_server(&two[..5]), None);
        // A SETTINGS ACK, another frame type, a stream id, a bad length: not a preface.
        let ack = [0, 0, 0, 4, 1, 0, 0, 0, 0];
        assert_eq!(classify_server(&ack), Some(ServerFirst::Other));
        assert_eq!(
            classify_server(&[0, 0, 8, 6, 0, 0, 0, 0, 0]),
            Some(ServerFirst::Other)
        );
        assert_eq!(
            classify_server(&[0, 0, 0, 4, 0, 0, 0, 0, 1]),
            Some(ServerFirst::Other)
        );
        assert_eq!(
            classify_server(&[0, 0, 7, 4, 0, 0, 0, 0, 0]),
            Some(ServerFirst::Other)
        );
        // Server-first protocols: an SMTP greeting, a MySQL handshake (seq 0, v10).
        assert_eq!(classify_server(b"220 mail ESMTP"), Some(ServerFirst::Other));
        assert_eq!(
            classify_server(&[0x4a, 0, 0, 0, 0x0a, b'8', b'.']),
            Some(ServerFirst::Other)
        );
    }
}
