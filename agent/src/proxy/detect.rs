//! Protocol detection on an accepted connection, by peeking (nothing is consumed).
//!
//! - `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` → HTTP/2 with prior knowledge (gRPC);
//! - an HTTP/1.x request line (`METHOD SP target SP HTTP/1.x`, any method token, as
//!   `httparse` — the parser hyper uses — reads it) → HTTP/1;
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
    // HTTP/1: the request line as hyper's parser reads it (empty lines before it are
    // skipped, as hyper does). Only the first line decides, so the verdict does not
    // depend on how TCP split the stream.
    let start = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let eol = buf[start..].iter().position(|&b| b == b'\n');
    let line = eol.map_or(buf, |eol| &buf[..=start + eol]);
    // With no header slots the parser stops at the end of the line (`Partial`, as it
    // would read on) or at the first header (`TooManyHeaders`).
    match httparse::Request::new(&mut []).parse(line) {
        Ok(httparse::Status::Partial) if eol.is_some() => Verdict::Is(Protocol::Http1),
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            Verdict::Is(Protocol::Http1)
        }
        // Request line not complete yet.
        Ok(httparse::Status::Partial) if buf.len() < MAX_PEEK => Verdict::NeedMore,
        // A request line longer than can be peeked, or not a request line.
        Ok(httparse::Status::Partial) | Err(_) => Verdict::Is(Protocol::Opaque),
    }
}

/// Whether `buf` starts like a request line: a method token and a space.
fn is_method_start(buf: &[u8]) -> bool {
    let token = buf
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        .count();
    token > 0 && buf.get(token) == Some(&b' ')
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
        let n = match tokio::time::timeout_at(deadline, peek_more(stream, &mut buf, last)).await {
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
        last = n;
    }
}

/// Peeks at the stream until more than `seen` bytes are queued (or EOF: 0), without
/// polling: a peek that finds nothing new clears the socket's readiness, so the task
/// sleeps until the kernel reports new data.
async fn peek_more(stream: &TcpStream, buf: &mut [u8], seen: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    let fd = stream.as_raw_fd();
    loop {
        stream.readable().await?;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let flags =
                nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
            match nix::sys::socket::recv(fd, buf, flags) {
                Ok(n) if n == seen && n != 0 => Err(std::io::ErrorKind::WouldBlock.into()),
                Ok(n) => Ok(n),
                Err(e) => Err(std::io::Error::from(e)),
            }
        });
        match peeked {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
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
    let mut last = 0;
    loop {
        match peek_more(upstream, &mut buf, last).await {
            Ok(0) => return ServerFirst::Other,
            Err(_) => return ServerFirst::Reset,
            Ok(n) => match classify_server(&buf[..n]) {
                Some(verdict) => return verdict,
                // A partial frame header: wait for more.
                None => last = n,
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
        // Any method token (extension methods too), as hyper accepts.
        assert_eq!(
            classify(b"PROPFIND /d HTTP/1.1\r\nHost: x\r\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\n\r\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(classify(b"GET / HTTP/1.1"), Verdict::NeedMore);
        assert_eq!(
            classify(b"GET / HTTP/2.0\r\n"),
            Verdict::Is(Protocol::Opaque)
        );
        assert_eq!(classify(b"PING\r\n"), Verdict::Is(Protocol::Opaque));
        assert_eq!(classify(b"\r\n"), Verdict::NeedMore);
        assert_eq!(
            classify(b"\r\nGET / HTTP/1.1\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(
            classify(b"*1\r\n$4\r\nPING\r\n"),
            Verdict::Is(Protocol::Opaque)
        );
        let long = [b"GET /".as_slice(), &[b'a'; MAX_PEEK]].concat();
        assert_eq!(classify(&long), Verdict::Is(Protocol::Opaque));
        assert!(is_method_start(&long) && !is_method_start(b"\x16\x03 "));
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
