//! HTTP/1.1 edge cases on the wire, for `labapp http-edge-server` and
//! `labapp http-edge-client`: chunked bodies streamed in both directions,
//! trailers both ways, and `Expect: 100-continue`. Written on raw sockets so the
//! test controls every byte and every wait, which an HTTP library would hide.
//!
//! The server answers every request at once (status line and headers right
//! after the request head, after a `100 Continue` if asked), then echoes each
//! piece of the request body as a chunk as soon as it arrives, and ends with
//! the trailers `x-body-fnv` (FNV-1a 64 of the body, hex) and `x-echo-trailers`
//! (the request's trailers as `name=value;...`). It also reports the request's
//! `traceparent` in the response header `x-seen-traceparent`.
//!
//! The client's scenarios, on one keep-alive connection:
//! * `stream`: a chunked POST sent one chunk at a time, each only after the
//!   echo of the previous one came back (so a proxy that buffers either body
//!   stalls the exchange and fails it), then a request trailer;
//! * `expect`: a `Content-Length` POST with `Expect: 100-continue` whose body is
//!   sent only after the `100 Continue` arrived;
//! * `upgrade`: `Upgrade: hoptrace-echo` answered with `101 Switching Protocols`,
//!   after which the connection is a raw byte echo (as with WebSocket): the client
//!   sends bytes that look like HTTP and random ones, checks the echo, half-closes
//!   and expects EOF. It ends the connection, so it runs last.
//!
//! Each prints one [`EdgeReport`] JSON line.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long the client waits for any one answer (echo, 100 Continue).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest head or trailer section accepted.
const MAX_HEAD: usize = 64 * 1024;

/// FNV-1a 64 of `data`, as 16 hex digits.
pub fn fnv(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A request or response head.
#[derive(Debug, Clone)]
pub struct Head {
    /// Request line or status line.
    pub start: String,
    /// Fields in order, as received.
    pub fields: Vec<(String, String)>,
}

impl Head {
    /// First value of field `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Status code of a status line.
    pub fn status(&self) -> Result<u16> {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {:?}", self.start))
    }

    fn chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

fn read_line(r: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(*budget as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    *budget = budget.saturating_sub(n);
    if !line.ends_with(b"\n") {
        bail!("line too long or connection closed mid-line");
    }
    let text = String::from_utf8(line).context("non-UTF-8 line")?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Reads `name: value` lines up to the empty line.
fn read_fields(r: &mut impl BufRead, budget: &mut usize) -> Result<Vec<(String, String)>> {
    let mut fields = Vec::new();
    loop {
        let line = read_line(r, budget)?.context("connection closed in a header section")?;
        if line.is_empty() {
            return Ok(fields);
        }
        let (k, v) = line
            .split_once(':')
            .with_context(|| format!("bad field line {line:?}"))?;
        fields.push((k.trim().to_owned(), v.trim().to_owned()));
    }
}

/// Reads a head; `None` on a clean close before its first byte.
pub fn read_head(r: &mut impl BufRead) -> Result<Option<Head>> {
    let mut budget = MAX_HEAD;
    let Some(start) = read_line(r, &mut budget)? else {
        return Ok(None);
    };
    let fields = read_fields(r, &mut budget)?;
    Ok(Some(Head { start, fields }))
}

/// Reads one chunk; `None` at the last chunk, whose trailers are then read and
/// returned through `trailers`.
pub fn read_chunk(
    r: &mut impl BufRead,
    trailers: &mut Vec<(String, String)>,
) -> Result<Option<Vec<u8>>> {
    let mut budget = MAX_HEAD;
    let line = read_line(r, &mut budget)?.context("connection closed before a chunk")?;
    let size = line.split(';').next().unwrap_or_default().trim();
    let size =
        usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size {line:?}"))?;
    if size == 0 {
        *trailers = read_fields(r, &mut budget)?;
        return Ok(None);
    }
    let mut data = vec![0; size];
    r.read_exact(&mut data)?;
    let mut crlf = [0; 2];
    r.read_exact(&mut crlf)?;
    if &crlf != b"\r\n" {
        bail!("chunk not followed by CRLF");
    }
    Ok(Some(data))
}

fn write_chunk(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

fn write_last_chunk(w: &mut impl Write, trailers: &[(String, String)]) -> std::io::Result<()> {
    let mut out = b"0\r\n".to_vec();
    for (k, v) in trailers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    w.flush()
}

/// Serves one connection of `http-edge-server` until the client closes it.
pub fn serve_conn(stream: TcpStream) -> Result<()> {
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    while let Some(head) = read_head(&mut r)? {
        if head.get("upgrade").is_some() {
            let seen = head.get("traceparent").unwrap_or("").to_owned();
            w.write_all(
                format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: hoptrace-echo\r\nx-seen-traceparent: {seen}\r\n\r\n").as_bytes(),
            )?;
            w.flush()?;
            // From here on the connection is the upgraded protocol: a raw echo to EOF.
            let mut buf = vec![0; 16 * 1024];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    w.shutdown(std::net::Shutdown::Write)?;
                    return Ok(());
                }
                w.write_all(&buf[..n])?;
            }
        }
        if head
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let seen = head.get("traceparent").unwrap_or("").to_owned();
        w.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-body-fnv, x-echo-trailers\r\nx-seen-traceparent: {seen}\r\n\r\n"
            )
            .as_bytes(),
        )?;
        w.flush()?;
        let mut body = Vec::new();
        let mut trailers = Vec::new();
        if head.chunked() {
            while let Some(chunk) = read_chunk(&mut r, &mut trailers)? {
                write_chunk(&mut w, &chunk)?;
                body.extend_from_slice(&chunk);
            }
        } else {
            let mut left: usize = head
                .get("content-length")
                .map(|v| v.parse())
                .transpose()
                .context("bad Content-Length")?
                .unwrap_or(0);
            let mut buf = vec![0; 16 * 1024];
            while left > 0 {
                let n = r.read(&mut buf[..left.min(16 * 1024)])?;
                if n == 0 {
                    bail!("connection closed with {left} body bytes to go");
                }
                write_chunk(&mut w, &buf[..n])?;
                body.extend_from_slice(&buf[..n]);
                left -= n;
            }
        }
        let echoed = trailers
            .iter()
            .map(|(k, v)| format!("{}={v}", k.to_ascii_lowercase()))
            .collect::<Vec<_>>()
            .join(";");
        write_last_chunk(
            &mut w,
            &[
                ("x-body-fnv".into(), fnv(&body)),
                ("x-echo-trailers".into(), echoed),
            ],
        )?;
    }
    Ok(())
}

/// The outcome of one client scenario (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeReport {
    /// `stream` or `expect`.
    pub scenario: String,
    /// Everything checked out.
    pub ok: bool,
    /// What went wrong.
    pub error: Option<String>,
    /// The `traceparent` the request was sent with.
    pub traceparent: String,
    /// The `traceparent` the server received.
    pub seen_traceparent: Option<String>,
    /// Response trailers as received.
    pub trailers: Vec<(String, String)>,
    /// Body bytes sent (= echoed when `ok`).
    pub bytes: usize,
}

/// The connection of `http-edge-client`.
pub struct EdgeClient {
    w: TcpStream,
    r: BufReader<TcpStream>,
    host: String,
    /// The wait for EOF after the half-close takes `EAGAIN` for "not yet", as
    /// readiness-based I/O does, until the step's timeout (docs/ARCHITECTURE.md, "In-pod
    /// connections without TCP": a blocked read there can be woken without data).
    pub retry_eagain: bool,
}

impl EdgeClient {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Result<EdgeClient> {
        let stream = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
            .with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(STEP_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(EdgeClient {
            w: stream.try_clone()?,
            r: BufReader::new(stream),
            host: addr.to_string(),
            retry_eagain: false,
        })
    }

    fn read_echo(&mut self, want: usize, trailers: &mut Vec<(String, String)>) -> Result<Vec<u8>> {
        let mut got = Vec::new();
        while got.len() < want {
            match read_chunk(&mut self.r, trailers)
                .context("waiting for the echo (a proxy that buffers the body stalls here)")?
            {
                Some(c) => got.extend_from_slice(&c),
                None => bail!("response ended after {} of {want} echoed bytes", got.len()),
            }
        }
        Ok(got)
    }

    fn finish(&mut self, body: &[u8], trailers: &mut Vec<(String, String)>) -> Result<()> {
        let mut rest = Vec::new();
        while let Some(c) = read_chunk(&mut self.r, trailers)? {
            rest.extend_from_slice(&c);
        }
        if !rest.is_empty() {
            bail!("{} unexpected bytes after the echo", rest.len());
        }
        let get = |k: &str| {
            trailers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let want = fnv(body);
        if get("x-body-fnv").as_deref() != Some(want.as_str()) {
            bail!(
                "response trailer x-body-fnv is {:?}, want {want} (trailers: {trailers:?})",
                get("x-body-fnv")
            );
        }
        Ok(())
    }

    fn response_head(&mut self) -> Result<Head> {
        let head = read_head(&mut self.r)?.context("connection closed instead of a response")?;
        if head.status()? != 200 || !head.chunked() {
            bail!("unexpected response head {head:?}");
        }
        Ok(head)
    }

    /// Scenario `stream`: `pieces` chunks of `size` bytes, ping-pong, then a trailer.
    pub fn stream(&mut self, traceparent: &str, pieces: usize, size: usize) -> EdgeReport {
        let mut report = EdgeReport::new("stream", traceparent);
        let result = (|| -> Result<()> {
            write!(
                self.w,
                "POST /stream HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nTrailer: x-client-fnv\r\nTE: trailers\r\nConnection: TE\r\ntraceparent: {traceparent}\r\n\r\n",
                self.host
            )?;
            let mut body = Vec::new();
            for i in 0..pieces {
                let piece: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
                write_chunk(&mut self.w, &piece)?;
                if i == 0 {
                    let head = self.response_head()?;
                    report.seen_traceparent = head.get("x-seen-traceparent").map(str::to_owned);
                }
                let echo = self.read_echo(piece.len(), &mut report.trailers)?;
                if echo != piece {
                    bail!("echo of chunk {i} differs");
                }
                body.extend_from_slice(&piece);
                report.bytes = body.len();
            }
            let sum = fnv(&body);
            write_last_chunk(&mut self.w, &[("x-client-fnv".into(), sum.clone())])?;
            self.finish(&body, &mut report.trailers)?;
            let echoed = report
                .trailers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-echo-trailers"))
                .map(|(_, v)| v.as_str());
            if echoed != Some(&format!("x-client-fnv={sum}")) {
                bail!("the server got request trailers {echoed:?}, want x-client-fnv={sum}");
            }
            Ok(())
        })();
        report.done(result)
    }

    /// Scenario `expect`: `Expect: 100-continue`, body sent after `100 Continue`.
    pub fn expect(&mut self, traceparent: &str, size: usize) -> EdgeReport {
        let mut report = EdgeReport::new("expect", traceparent);
        let result = (|| -> Result<()> {
            write!(
                self.w,
                "POST /expect HTTP/1.1\r\nHost: {}\r\nContent-Length: {size}\r\nExpect: 100-continue\r\nTE: trailers\r\nConnection: TE\r\ntraceparent: {traceparent}\r\n\r\n",
                self.host
            )?;
            self.w.flush()?;
            let interim = read_head(&mut self.r)
                .context("waiting for 100 Continue")?
                .context("connection closed instead of 100 Continue")?;
            if interim.status()? != 100 {
                bail!("got {:?} instead of 100 Continue", interim.start);
            }
            let body: Vec<u8> = (0..size).map(|j| (j * 13) as u8).collect();
            self.w.write_all(&body)?;
            self.w.flush()?;
            let head = self.response_head()?;
            report.seen_traceparent = head.get("x-seen-traceparent").map(str::to_owned);
            let echo = self.read_echo(size, &mut report.trailers)?;
            if echo != body {
                bail!("echoed body differs");
            }
            report.bytes = size;
            self.finish(&body, &mut report.trailers)
        })();
        report.done(result)
    }
}

impl EdgeClient {
    /// Scenario `upgrade`: 101, then `size` raw bytes echoed, then half-close → EOF.
    pub fn upgrade(&mut self, traceparent: &str, size: usize) -> EdgeReport {
        let mut report = EdgeReport::new("upgrade", traceparent);
        let result = (|| -> Result<()> {
            write!(
                self.w,
                "GET /upgrade HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: hoptrace-echo\r\ntraceparent: {traceparent}\r\n\r\n",
                self.host
            )?;
            self.w.flush()?;
            let head = read_head(&mut self.r)?.context("connection closed instead of 101")?;
            if head.status()? != 101 {
                bail!("got {:?} instead of 101 Switching Protocols", head.start);
            }
            report.seen_traceparent = head.get("x-seen-traceparent").map(str::to_owned);
            // Bytes an HTTP parser would choke on or misread, then random ones.
            let mut data = b"GET /not-a-request HTTP/1.1\r\ntraceparent: bogus\r\n\r\n".to_vec();
            data.extend((0..size).map(|j| ((j * 7919) >> 3) as u8));
            let mut echo = vec![0; data.len()];
            for piece in data.chunks(4096) {
                self.w.write_all(piece)?;
            }
            self.w.flush()?;
            self.r
                .read_exact(&mut echo)
                .context("reading the echo after 101")?;
            if echo != data {
                bail!("echo after 101 differs");
            }
            self.w.shutdown(std::net::Shutdown::Write)?;
            let mut rest = Vec::new();
            let deadline = std::time::Instant::now() + STEP_TIMEOUT;
            loop {
                match self.r.read_to_end(&mut rest) {
                    Ok(_) => break,
                    Err(e)
                        if self.retry_eagain
                            && e.kind() == std::io::ErrorKind::WouldBlock
                            && std::time::Instant::now() < deadline => {}
                    Err(e) => return Err(e).context("waiting for EOF after half-close"),
                }
            }
            if !rest.is_empty() {
                bail!("{} unexpected bytes after the echo", rest.len());
            }
            report.bytes = data.len();
            Ok(())
        })();
        report.done(result)
    }
}

impl EdgeReport {
    fn new(scenario: &str, traceparent: &str) -> EdgeReport {
        EdgeReport {
            scenario: scenario.into(),
            ok: false,
            error: None,
            traceparent: traceparent.into(),
            seen_traceparent: None,
            trailers: Vec::new(),
            bytes: 0,
        }
    }

    fn done(mut self, result: Result<()>) -> EdgeReport {
        match result {
            Ok(()) => self.ok = true,
            Err(e) => self.error = Some(format!("{e:#}")),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// The client against the server directly (no proxy): both scenarios pass.
    #[test]
    fn client_and_server_agree_without_a_proxy() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || serve_conn(s));
            }
        });
        let mut c = EdgeClient::connect(addr).expect("connect");
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let r = c.stream(tp, 4, 1000);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.seen_traceparent.as_deref(), Some(tp));
        assert_eq!(r.bytes, 4000);
        let r = c.expect(tp, 3000);
        assert!(r.ok, "{r:?}");
        let r = c.upgrade(tp, 100_000);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.seen_traceparent.as_deref(), Some(tp));
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv(b""), "cbf29ce484222325");
        assert_eq!(fnv(b"a"), "af63dc4c8601ec8c");
    }
}
