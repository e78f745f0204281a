//! Bodies relayed by their framing, byte for byte: a `Content-Length` body is counted
//! through, a chunked one is followed by a strict chunk parser (so the proxy knows
//! where the message ends and how many data bytes it carried) but never re-encoded.

use crate::trace::span::UnixNanos;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::head::Framing;

/// Longest chunk extension, and trailer section, the parser accepts.
const MAX_CHUNK_META: usize = 16 * 1024;
/// Read size while a body streams.
pub const READ_SIZE: usize = 16 * 1024;

/// Why a body could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The sending side's bytes are not a valid chunked body.
    #[error("malformed chunked body: {0}")]
    Malformed(&'static str),
    /// The sending side closed before the body's end.
    #[error("closed before the end of the body")]
    Truncated,
    /// Reading from the sending side failed.
    #[error("read: {0}")]
    Read(std::io::Error),
    /// Writing to the receiving side failed.
    #[error("write: {0}")]
    Write(std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the size line: the size so far and its digits.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size digits.
    SizeWs {
        size: u64,
    },
    /// In a chunk extension (`;...`) until CR.
    Ext {
        size: u64,
        len: usize,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// Data bytes left in the chunk.
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section: bytes of the current line, bytes of the section.
    Trailer {
        line: usize,
        total: usize,
    },
    TrailerLf {
        total: usize,
        end: bool,
    },
    Done,
}

/// Where a body stands: how much of the next bytes belong to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyState(State);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Remaining(u64),
    Chunked(Chunk),
    UntilClose,
}

impl BodyState {
    /// The state at the start of a body framed as `framing`.
    pub fn new(framing: Framing) -> Self {
        Self(match framing {
            Framing::Empty => State::Remaining(0),
            Framing::Length(n) => State::Remaining(n),
            Framing::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            Framing::UntilClose => State::UntilClose,
        })
    }

    /// Whether the body has ended.
    pub fn done(&self) -> bool {
        matches!(self.0, State::Remaining(0) | State::Chunked(Chunk::Done))
    }

    /// Consumes the body's share of `input`: returns how many bytes belong to the body
    /// and how many of those are data (not chunk framing).
    pub fn consume(&mut self, input: &[u8]) -> Result<(usize, u64), BodyError> {
        match &mut self.0 {
            State::Remaining(n) => {
                let take = (*n).min(input.len() as u64);
                *n -= take;
                Ok((take as usize, take))
            }
            State::UntilClose => Ok((input.len(), input.len() as u64)),
            State::Chunked(c) => chunked(c, input),
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

fn chunked(c: &mut Chunk, input: &[u8]) -> Result<(usize, u64), BodyError> {
    use Chunk::*;
    let mut i = 0;
    let mut data = 0u64;
    while i < input.len() && *c != Done {
        let b = input[i];
        *c = match *c {
            Data(n) => {
                let take = n.min((input.len() - i) as u64);
                i += take as usize;
                data += take;
                *c = if n == take { DataCr } else { Data(n - take) };
                continue;
            }
            Size { size, digits } => match (hex(b), b) {
                (Some(d), _) if digits < 15 => Size {
                    size: size << 4 | d,
                    digits: digits + 1,
                },
                (Some(_), _) => return Err(BodyError::Malformed("chunk size too large")),
                (None, b' ' | b'\t') if digits > 0 => SizeWs { size },
                (None, b';') if digits > 0 => Ext { size, len: 0 },
                (None, b'\r') if digits > 0 => SizeLf { size },
                _ => return Err(BodyError::Malformed("invalid chunk size")),
            },
            SizeWs { size } => match b {
                b' ' | b'\t' => SizeWs { size },
                b';' => Ext { size, len: 0 },
                b'\r' => SizeLf { size },
                _ => return Err(BodyError::Malformed("invalid chunk size")),
            },
            Ext { size, len } => match b {
                b'\r' => SizeLf { size },
                b'\n' => return Err(BodyError::Malformed("bare LF in chunk extension")),
                _ if len >= MAX_CHUNK_META => {
                    return Err(BodyError::Malformed("chunk extension too long"))
                }
                _ => Ext { size, len: len + 1 },
            },
            SizeLf { size } => match b {
                b'\n' if size == 0 => Trailer { line: 0, total: 0 },
                b'\n' => Data(size),
                _ => return Err(BodyError::Malformed("chunk size line not ended by CRLF")),
            },
            DataCr => match b {
                b'\r' => DataLf,
                _ => return Err(BodyError::Malformed("chunk data not followed by CRLF")),
            },
            DataLf => match b {
                b'\n' => Size { size: 0, digits: 0 },
                _ => return Err(BodyError::Malformed("chunk data not followed by CRLF")),
            },
            Trailer { line, total } => match b {
                _ if total >= MAX_CHUNK_META => {
                    return Err(BodyError::Malformed("trailer section too long"))
                }
                b'\r' => TrailerLf {
                    total: total + 1,
                    end: line == 0,
                },
                b'\n' => return Err(BodyError::Malformed("bare LF in trailer section")),
                _ => Trailer {
                    line: line + 1,
                    total: total + 1,
                },
            },
            TrailerLf { total, end } => match b {
                b'\n' if end => Done,
                b'\n' => Trailer { line: 0, total },
                _ => return Err(BodyError::Malformed("trailer line not ended by CRLF")),
            },
            Done => Done,
        };
        i += 1;
    }
    Ok((i, data))
}

/// Writes `out` (a head, possibly empty), then the body that follows it: first its
/// share of `buf` (bytes already read from `src`), then what `src` sends until the
/// body's end. Bytes after the body stay in `buf`. `on_data` is told the data bytes
/// as they pass. `Framing::UntilClose` ends at `src`'s EOF. Returns when the body's
/// last bytes were handed to `dst` (taken just before that write, so that a span
/// ending then nests inside the peer's, which ends once it has read them).
pub async fn forward<R, W>(
    state: &mut BodyState,
    out: &mut Vec<u8>,
    buf: &mut BytesMut,
    src: &mut R,
    dst: &mut W,
    on_data: &mut impl FnMut(u64),
) -> Result<UnixNanos, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let (take, data) = state.consume(buf)?;
        on_data(data);
        let last = state.done().then(UnixNanos::now);
        if out.is_empty() {
            if take > 0 {
                dst.write_all(&buf[..take])
                    .await
                    .map_err(BodyError::Write)?;
            }
        } else {
            // The head and the first body bytes in one write (one segment when small).
            out.extend_from_slice(&buf[..take]);
            dst.write_all(out).await.map_err(BodyError::Write)?;
            out.clear();
        }
        buf.advance(take);
        if let Some(at) = last {
            return Ok(at);
        }
        if buf.capacity() - buf.len() < READ_SIZE / 4 {
            buf.reserve(READ_SIZE);
        }
        let n = src.read_buf(buf).await.map_err(BodyError::Read)?;
        if n == 0 {
            if state.0 == State::UntilClose {
                return Ok(UnixNanos::now());
            }
            return Err(BodyError::Truncated);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framing: Framing, input: &[u8]) -> Result<(usize, u64, bool), BodyError> {
        let mut s = BodyState::new(framing);
        let (n, d) = s.consume(input)?;
        Ok((n, d, s.done()))
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let end = body.len() - "GET / HTTP/1.1\r\n".len();
        assert_eq!(run(Framing::Chunked, body).unwrap(), (end, 11, true));
        // Trailers, and sizes in either case with whitespace before the CR.
        let body = b"A \r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(run(Framing::Chunked, body).unwrap(), (body.len(), 10, true));
        // A request hidden in chunk data is data.
        let hidden = b"0\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        let mut body = format!("{:x}\r\n", hidden.len()).into_bytes();
        body.extend_from_slice(hidden);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(
            run(Framing::Chunked, &body).unwrap(),
            (body.len(), hidden.len() as u64, true)
        );
    }

    #[test]
    fn chunked_bodies_split_anywhere() {
        let body = b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nt: v\r\n\r\n";
        for split in 0..body.len() {
            let mut s = BodyState::new(Framing::Chunked);
            let (a, da) = s.consume(&body[..split]).unwrap();
            assert_eq!(a, split, "all of a prefix belongs to the body");
            assert!(!s.done());
            let (b, db) = s.consume(&body[split..]).unwrap();
            assert_eq!(a + b, body.len());
            assert_eq!(da + db, 21);
            assert!(s.done());
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello",
            b"5\r\nhelloX",
            b"1234567890abcdef0\r\n",
            b"0\r\nbad\nline\r\n\r\n",
            b"5;a\nb\r\n",
        ] {
            assert!(
                matches!(run(Framing::Chunked, bad), Err(BodyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lengths_count_through() {
        assert_eq!(run(Framing::Length(3), b"abcdef").unwrap(), (3, 3, true));
        assert_eq!(run(Framing::Length(10), b"abc").unwrap(), (3, 3, false));
        assert_eq!(run(Framing::Empty, b"GET").unwrap(), (0, 0, true));
        assert_eq!(run(Framing::UntilClose, b"abc").unwrap(), (3, 3, false));
    }

    #[tokio::test]
    async fn forward_writes_head_and_body_and_keeps_the_rest() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut src: &[u8] = b"lo\r\n0\r\n\r\nNEXT";
        let mut buf = BytesMut::from(&b"5\r\nhel"[..]);
        let mut out = b"HEAD\r\n\r\n".to_vec();
        let mut seen = 0;
        let mut state = BodyState::new(Framing::Chunked);
        // The source hands out everything at once: "NEXT" stays buffered.
        forward(&mut state, &mut out, &mut buf, &mut src, &mut a, &mut |n| {
            seen += n
        })
        .await
        .unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HEAD\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(&buf[..], b"NEXT");
        assert_eq!(seen, 5);
        // Cut short: an error, not a silent end.
        let mut src: &[u8] = b"ab";
        let mut buf = BytesMut::new();
        let mut state = BodyState::new(Framing::Length(5));
        let (mut a, _b) = tokio::io::duplex(1024);
        let r = forward(
            &mut state,
            &mut Vec::new(),
            &mut buf,
            &mut src,
            &mut a,
            &mut |_| {},
        )
        .await;
        assert!(matches!(r, Err(BodyError::Truncated)), "{r:?}");
    }
}
