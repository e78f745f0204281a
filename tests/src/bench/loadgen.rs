//! The bench's load generator (`labapp load`): HTTP/1.1 keep-alive or a non-HTTP TCP
//! ping-pong over raw blocking sockets, one thread per connection, no pipelining.
//!
//! - **Open loop** (`rate` set): request `i` is scheduled at `start + i / rate`. A free
//!   connection takes the next index, sleeps until its scheduled time and sends it;
//!   when every connection is busy the request goes out late. Latency is measured from
//!   the *scheduled* time, so a stalled path is charged for the requests it delayed
//!   (no coordinated omission). Timer slack is set to 1 ns so sleeps end on time;
//!   `late` counts requests sent more than 1 ms after their schedule.
//! - **Closed loop** (no rate): every connection sends the next request as soon as
//!   the previous answer is in, for saturation throughput.
//!
//! Connections are opened before the clock starts. At the end no new request starts
//! and the ones in flight complete, so `requests` is exact. HTTP requests carry a
//! sampled `traceparent` with a distinct trace id per request when `trace_seed` is set.
//! A TCP exchange is [`super::TCP_MESSAGE`] bytes starting with a zero byte (never
//! taken for HTTP), echoed back and compared.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const LATE: Duration = Duration::from_millis(1);

/// What is exchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// `GET /` over HTTP/1.1 keep-alive; any 2xx answer with a body length counts.
    Http,
    /// A non-HTTP ping-pong of [`super::TCP_MESSAGE`] bytes.
    Tcp,
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Target.
    pub addr: SocketAddr,
    /// Protocol.
    pub proto: Proto,
    /// Requests per second (open loop), or `None` for closed loop.
    pub rate: Option<u32>,
    /// How long new requests start.
    pub duration: Duration,
    /// Connections (threads).
    pub conns: usize,
    /// HTTP: add `traceparent: 00-<seed><i>-<i>-01` (i = 1, 2, ...) to request i.
    pub trace_seed: Option<u64>,
    /// Stop after this many requests in all (else only the duration ends the run).
    pub requests: Option<u64>,
    /// HTTP: request i goes to `/p<i>x` (every path distinct) instead of `/`.
    pub distinct_paths: bool,
    /// With `distinct_paths`: to `/p/<i>` instead, an id in one route (`/p/{id}`).
    pub id_paths: bool,
    /// Close each connection after this many requests, so the run uses many client
    /// ports (else connections are kept).
    pub requests_per_conn: Option<u64>,
}

/// The JSON line `labapp load` prints. Latencies in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests answered correctly.
    pub requests: u64,
    /// Requests that failed (connect, I/O, non-2xx, wrong echo).
    pub errors: u64,
    /// Open-loop requests sent more than 1 ms after their scheduled time.
    pub late: u64,
    /// Seconds from start until the last answer.
    pub elapsed_s: f64,
    /// `requests / elapsed_s`.
    pub rps: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// The first error, if any.
    pub first_error: Option<String>,
}

#[derive(Default)]
struct WorkerResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    late: u64,
    first_error: Option<String>,
}

/// Runs `spec` and reports. Fails only when no connection could be opened.
pub fn run(spec: &LoadSpec) -> Result<LoadReport> {
    if spec.conns == 0 || spec.rate == Some(0) {
        bail!("loadgen: need at least one connection and a positive rate");
    }
    set_timer_slack();
    let next = Arc::new(AtomicU64::new(0));
    let start: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let ready = Arc::new(Barrier::new(spec.conns + 1));
    let go = Arc::new(Barrier::new(spec.conns + 1));
    let mut handles = Vec::new();
    for _ in 0..spec.conns {
        let (spec, next, start) = (spec.clone(), next.clone(), start.clone());
        let (ready, go) = (ready.clone(), go.clone());
        handles.push(
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    set_timer_slack();
                    let conn = connect(spec.addr);
                    ready.wait();
                    go.wait();
                    let t0 = *start.get().unwrap_or(&Instant::now());
                    worker(&spec, conn, &next, t0)
                })
                .context("spawning a loadgen thread")?,
        );
    }
    ready.wait();
    let t0 = Instant::now() + Duration::from_millis(10);
    let _ = start.set(t0);
    go.wait();
    let mut all = WorkerResult::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("loadgen thread panicked"))?;
        all.latencies_ns.extend(r.latencies_ns);
        all.errors += r.errors;
        all.late += r.late;
        all.first_error = all.first_error.or(r.first_error);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if all.latencies_ns.is_empty() && all.errors > 0 {
        bail!(
            "loadgen: every request to {} failed ({} errors), first: {}",
            spec.addr,
            all.errors,
            all.first_error.unwrap_or_default()
        );
    }
    all.latencies_ns.sort_unstable();
    let l = &all.latencies_ns;
    Ok(LoadReport {
        requests: l.len() as u64,
        errors: all.errors,
        late: all.late,
        elapsed_s: elapsed,
        rps: l.len() as f64 / elapsed.max(1e-9),
        p50_us: percentile_us(l, 0.50),
        p90_us: percentile_us(l, 0.90),
        p99_us: percentile_us(l, 0.99),
        p999_us: percentile_us(l, 0.999),
        max_us: percentile_us(l, 1.0),
        first_error: all.first_error,
    })
}

/// Nearest-rank percentile of sorted nanosecond samples, in microseconds (0 if empty).
pub fn percentile_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1000.0
}

fn set_timer_slack() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let setup = |s: &TcpStream| -> std::io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))
    };
    setup(&s).map_err(|e| format!("socket options: {e}"))?;
    Ok(s)
}

fn worker(
    spec: &LoadSpec,
    first: Result<TcpStream, String>,
    next: &AtomicU64,
    t0: Instant,
) -> WorkerResult {
    let mut out = WorkerResult::default();
    let fail = |out: &mut WorkerResult, e: String| {
        out.errors += 1;
        out.first_error.get_or_insert(e);
    };
    let mut conn = match first {
        Ok(c) => Some(c),
        Err(e) => {
            fail(&mut out, e);
            None
        }
    };
    let end = t0 + spec.duration;
    let period = spec.rate.map(|r| 1e9 / f64::from(r));
    let (mut req, mut buf) = (Vec::with_capacity(256), vec![0u8; 4096]);
    let mut on_conn = 0u64;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if spec.requests.is_some_and(|n| i >= n) {
            break;
        }
        let scheduled = match period {
            Some(p) => {
                let t = t0 + Duration::from_nanos((p * i as f64) as u64);
                if t >= end {
                    break;
                }
                let now = Instant::now();
                if t > now {
                    std::thread::sleep(t - now);
                }
                t
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        let c = match conn.take() {
            Some(c) => c,
            None => match connect(spec.addr) {
                Ok(c) => c,
                Err(e) => {
                    fail(&mut out, e);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        if period.is_some() && scheduled.elapsed() > LATE {
            out.late += 1;
        }
        let mut c = c;
        match exchange(spec, &mut c, i + 1, &mut req, &mut buf) {
            Ok(keep) => {
                out.latencies_ns
                    .push(u64::try_from(scheduled.elapsed().as_nanos()).unwrap_or(u64::MAX));
                on_conn += 1;
                if keep && spec.requests_per_conn.is_none_or(|k| on_conn < k) {
                    conn = Some(c);
                } else {
                    on_conn = 0;
                }
            }
            Err(e) => fail(&mut out, e),
        }
    }
    out
}

/// One request and its answer; `Ok(false)` when the server closes the connection.
fn exchange(
    spec: &LoadSpec,
    c: &mut TcpStream,
    n: u64,
    req: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) -> Result<bool, String> {
    req.clear();
    match spec.proto {
        Proto::Http => {
            let path = request_path(spec, n);
            write!(req, "GET {path} HTTP/1.1\r\nHost: {}\r\n", spec.addr)
                .map_err(|e| e.to_string())?;
            if let Some(seed) = spec.trace_seed {
                write!(req, "traceparent: 00-{seed:016x}{n:016x}-{n:016x}-01\r\n")
                    .map_err(|e| e.to_string())?;
            }
            req.extend_from_slice(b"\r\n");
        }
        Proto::Tcp => {
            req.push(0);
            req.extend((1..super::TCP_MESSAGE).map(|k| (n as usize + k) as u8));
        }
    }
    c.write_all(req).map_err(|e| format!("write: {e}"))?;
    let mut got = 0;
    loop {
        if got == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let k = c.read(&mut buf[got..]).map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return Err(format!("connection closed after {got} bytes of the answer"));
        }
        got += k;
        match spec.proto {
            Proto::Tcp if got >= req.len() => {
                if buf[..got] != req[..] {
                    return Err("echo differs from the request".into());
                }
                return Ok(true);
            }
            Proto::Tcp => {}
            Proto::Http => {
                if let Some(r) = parse_response(&buf[..got])? {
                    if r.len != got {
                        return Err(format!("{} bytes after the answer", got - r.len));
                    }
                    if !(200..300).contains(&r.status) {
                        return Err(format!("status {}", r.status));
                    }
                    return Ok(!r.close);
                }
            }
        }
    }
}

/// The path of request `n`: `/`, `/p<n>x` (`distinct_paths`) or `/p/<n>` (`id_paths`).
pub fn request_path(spec: &LoadSpec, n: u64) -> String {
    if spec.distinct_paths && spec.id_paths {
        format!("/p/{n}")
    } else if spec.distinct_paths {
        format!("/p{n}x")
    } else {
        "/".to_owned()
    }
}

/// A complete HTTP/1.1 response at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Bytes it spans (head and body).
    pub len: usize,
    /// `Connection: close`.
    pub close: bool,
}

/// Parses a response with a `Content-Length` or chunked body: `Ok(None)` while incomplete.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "non-UTF-8 response head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let len = if chunked {
        // Small bodies only: complete once the last chunk and the empty trailer arrived.
        let body = &buf[head_end..];
        match body.windows(5).position(|w| w == b"0\r\n\r\n") {
            Some(p) if p == 0 || body[p - 1] == b'\n' => head_end + p + 5,
            _ => return Ok(None),
        }
    } else {
        head_end + length.ok_or("response without Content-Length or chunked body")?
    };
    Ok((buf.len() >= len).then_some(Response { status, len, close }))
}

#[cfg(test)]
#[path = "loadgen_tests.rs"]
mod tests;
