//! Protocol detection on an accepted connection, by peeking (nothing is consumed).
//!
//! - `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` → HTTP/2 with prior knowledge (gRPC);
//! - an HTTP/1.x request line (`METHOD SP target SP HTTP/1.x`) → HTTP/1;
//! - anything else, including TLS (first byte 0x16) → opaque TCP.
//!
//! Server-first protocols (MySQL, SMTP, …) send nothing until the server speaks: after
//! [`DETECT_TIMEOUT`] without a decision the connection is proxied opaquely.

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
enum Verdict {
    Is(Protocol),
    NeedMore,
}

fn classify(buf: &[u8]) -> Verdict {
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

/// Bytes peeked at most: a request line longer than this is proxied opaquely.
const MAX_PEEK: usize = 8 * 1024;

/// Peeks at the client's first bytes until the protocol is known or the timeout passes.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Protocol {
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
}
