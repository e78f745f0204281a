//! `labapp`: the small TCP test program the lab runs inside pods.
//!
//! ```text
//! labapp echo-server   --listen ADDR
//! labapp whoami-server --listen ADDR
//! labapp echo-client   --addr ADDR --bytes N --conns C [--half-close] [--seed S]
//! labapp connect-loop  --addr ADDR --interval-ms I --duration-ms D [--count N] [--timeout-ms T]
//! labapp http-edge-server --listen ADDR
//! labapp http-edge-client --addr ADDR --trace-seed S [--retry-eagain]
//! labapp load --addr ADDR --proto http|tcp --duration-ms D --conns C [--rate R] [--trace-seed S]
//!              [--requests N] [--distinct-paths | --id-paths] [--requests-per-conn K]
//! labapp http-ok-server --listen ADDR
//! labapp hold-server --listen ADDR --hold-ms H
//! labapp flood-client --addr ADDR --bytes N --sample-ms S [--seed K]
//! labapp idle-client --addr ADDR --wait-ms W
//! ```
//!
//! * `echo-server` echoes bytes until EOF, then shuts down its write side (so a
//!   proxy that mishandles half-close is visible to the client).
//! * `whoami-server` writes `peer=<peer socket address>\n` (IPv6 as
//!   `[ip]:port`) and closes.
//! * `echo-client` runs C concurrent connections; each sends N bytes from a
//!   per-connection seeded RNG while reading the echo concurrently and checks
//!   it byte for byte. With `--half-close` it shuts down its write side after
//!   sending and then requires the echo followed by EOF. Prints
//!   `{"ok":..,"failed":..,"bytes":..}` and exits 1 if any connection failed.
//! * `connect-loop` opens a fresh connection every I ms for D ms (at least
//!   one; at most N with `--count`), each given T ms (default 2000) to connect
//!   and T ms per read, reads the answer to EOF, and prints
//!   `<CLOCK_MONOTONIC ms> ok <answer>` or `<ms> error <reason>` per attempt.
//! * `http-edge-server` / `http-edge-client`: HTTP/1.1 chunked streaming,
//!   trailers and `Expect: 100-continue` on the wire (see `hoptrace_tests::h1edge`).
//!   The client sends the scenarios `stream`, `expect` and `upgrade` on one connection, each
//!   with the sampled `traceparent` `00-<S as 16 hex><scenario no. as 16 hex>-
//!   <scenario no. as 16 hex>-01`, prints one JSON report per scenario and
//!   exits 1 if one failed.
//! * `load`: the bench's load generator (`hoptrace_tests::bench::loadgen`): open loop
//!   at R requests/s, or closed loop without `--rate`; at most N requests; HTTP paths
//!   `/p<i>x` all distinct with `--distinct-paths`, `/p/<i>` with `--id-paths`; a new connection every K requests;
//!   prints one JSON report.
//! * `http-ok-server`: HTTP/1.1 keep-alive, `200 ok` to every request.
//! * `hold-server`, `flood-client`, `idle-client`: see [`stream`].

mod stream;

use anyhow::{bail, Context, Result};
use hoptrace_tests::clock::monotonic_ms;
use rand::{rngs::StdRng, RngCore, SeedableRng};
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `connect-loop`'s default time to connect, and to read the answer, per attempt.
const LOOP_TIMEOUT_MS: u64 = 2000;
const CHUNK: usize = 64 * 1024;

fn main() {
    if let Err(e) = run() {
        eprintln!("labapp: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let sub = args
        .next()
        .context("usage: labapp <echo-server|whoami-server|echo-client|connect-loop> [flags]")?;
    let flags = Flags::parse(args)?;
    match sub.as_str() {
        "echo-server" => serve(flags.addr("listen")?, echo),
        "whoami-server" => serve(flags.addr("listen")?, whoami),
        "http-ok-server" => serve(flags.addr("listen")?, http_ok),
        "echo-client" => echo_client(&flags),
        "connect-loop" => connect_loop(&flags),
        "http-edge-server" => serve(flags.addr("listen")?, edge_conn),
        "http-edge-client" => edge_client(&flags),
        "load" => load(&flags),
        "hold-server" => {
            let hold = Duration::from_millis(flags.num("hold-ms", None)?);
            serve_with(flags.addr("listen")?, move |s, _| {
                stream::hold_conn(s, hold)
            })
        }
        "flood-client" => stream::flood_client(&flags),
        "idle-client" => stream::idle_client(&flags),
        other => bail!("unknown subcommand {other:?}"),
    }
}

/// `--key value` flags and bare `--switch`es.
struct Flags(HashMap<String, Option<String>>);

impl Flags {
    fn parse(args: impl Iterator<Item = String>) -> Result<Flags> {
        let mut map = HashMap::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let key = arg
                .strip_prefix("--")
                .with_context(|| format!("unexpected argument {arg:?}"))?;
            let value = match args.peek() {
                Some(v) if !v.starts_with("--") => args.next(),
                _ => None,
            };
            map.insert(key.to_owned(), value);
        }
        Ok(Flags(map))
    }

    fn get(&self, key: &str) -> Result<&str> {
        match self.0.get(key) {
            Some(Some(v)) => Ok(v),
            _ => bail!("--{key} VALUE is required"),
        }
    }

    fn addr(&self, key: &str) -> Result<SocketAddr> {
        let v = self.get(key)?;
        v.parse()
            .with_context(|| format!("--{key} {v:?}: not an IP:port"))
    }

    fn num(&self, key: &str, default: Option<u64>) -> Result<u64> {
        match (self.0.get(key), default) {
            (None, Some(d)) => Ok(d),
            _ => {
                let v = self.get(key)?;
                v.parse()
                    .with_context(|| format!("--{key} {v:?}: not a number"))
            }
        }
    }

    fn switch(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

fn serve(listen: SocketAddr, handler: fn(TcpStream, SocketAddr)) -> Result<()> {
    serve_with(listen, handler)
}

fn serve_with(
    listen: SocketAddr,
    handler: impl Fn(TcpStream, SocketAddr) + Clone + Send + 'static,
) -> Result<()> {
    let socket = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if listen.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket
        .bind(&listen.into())
        .with_context(|| format!("bind {listen}"))?;
    socket.listen(1024)?;
    let listener: TcpListener = socket.into();
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let handler = handler.clone();
                std::thread::spawn(move || handler(stream, peer));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

fn echo(mut stream: TcpStream, peer: SocketAddr) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                if let Err(e) = stream.shutdown(Shutdown::Write) {
                    eprintln!("echo {peer}: shutdown: {e}");
                }
                return;
            }
            Ok(n) => {
                if let Err(e) = stream.write_all(&buf[..n]) {
                    eprintln!("echo {peer}: write: {e}");
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("echo {peer}: read: {e}");
                return;
            }
        }
    }
}

fn edge_conn(stream: TcpStream, peer: SocketAddr) {
    if let Err(e) = hoptrace_tests::h1edge::serve_conn(stream) {
        eprintln!("http-edge {peer}: {e:#}");
    }
}

fn edge_client(flags: &Flags) -> Result<()> {
    let seed = flags.num("trace-seed", None)?;
    let tp = |n: u64| format!("00-{seed:016x}{n:016x}-{n:016x}-01");
    let mut client = hoptrace_tests::h1edge::EdgeClient::connect(flags.addr("addr")?)?;
    client.retry_eagain = flags.switch("retry-eagain");
    let reports = [
        client.stream(&tp(1), 5, 1500),
        client.expect(&tp(2), 20_000),
        client.upgrade(&tp(3), 200_000),
    ];
    for r in &reports {
        println!("{}", serde_json::to_string(r)?);
    }
    if reports.iter().any(|r| !r.ok) {
        std::process::exit(1);
    }
    Ok(())
}

fn load(flags: &Flags) -> Result<()> {
    use hoptrace_tests::bench::loadgen::{self, LoadSpec, Proto};
    let proto = match flags.get("proto")? {
        "http" => Proto::Http,
        "tcp" => Proto::Tcp,
        other => bail!("--proto {other:?}: http or tcp"),
    };
    let spec = LoadSpec {
        addr: flags.addr("addr")?,
        proto,
        rate: match flags.0.get("rate") {
            Some(_) => Some(u32::try_from(flags.num("rate", None)?)?),
            None => None,
        },
        duration: Duration::from_millis(flags.num("duration-ms", None)?),
        conns: usize::try_from(flags.num("conns", Some(1))?)?,
        trace_seed: match flags.0.get("trace-seed") {
            Some(_) => Some(flags.num("trace-seed", None)?),
            None => None,
        },
        requests: match flags.0.get("requests") {
            Some(_) => Some(flags.num("requests", None)?),
            None => None,
        },
        distinct_paths: flags.0.contains_key("distinct-paths") || flags.0.contains_key("id-paths"),
        id_paths: flags.0.contains_key("id-paths"),
        requests_per_conn: match flags.0.get("requests-per-conn") {
            Some(_) => Some(flags.num("requests-per-conn", None)?),
            None => None,
        },
    };
    println!("{}", serde_json::to_string(&loadgen::run(&spec)?)?);
    Ok(())
}

/// HTTP/1.1 keep-alive: answers every request head (no body expected) `200 ok`.
fn http_ok(stream: TcpStream, _peer: SocketAddr) {
    use std::io::BufRead as _;
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    loop {
        // The head: lines up to the empty one.
        let mut head = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => head = true,
            }
        }
        if head
            && writer
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                .is_err()
        {
            return;
        }
    }
}

fn whoami(mut stream: TcpStream, peer: SocketAddr) {
    if let Err(e) = stream.write_all(format!("peer={peer}\n").as_bytes()) {
        eprintln!("whoami {peer}: write: {e}");
    }
}

fn echo_client(flags: &Flags) -> Result<()> {
    let addr = flags.addr("addr")?;
    let bytes = usize::try_from(flags.num("bytes", None)?)?;
    let conns = flags.num("conns", Some(1))?;
    let seed = flags.num("seed", Some(1))?;
    let half_close = flags.switch("half-close");
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let conn_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i;
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || echo_conn(addr, bytes, conn_seed, half_close))
        })
        .collect();
    let (mut ok, mut failed, mut total) = (0u64, 0u64, 0u64);
    for (i, handle) in handles.into_iter().enumerate() {
        let result = match handle {
            Ok(h) => h.join().unwrap_or_else(|_| Err("thread panicked".into())),
            Err(e) => Err(format!("spawning thread: {e}")),
        };
        match result {
            Ok(n) => {
                ok += 1;
                total += n;
            }
            Err(reason) => {
                failed += 1;
                eprintln!("conn {i}: {reason}");
            }
        }
    }
    println!("{{\"ok\":{ok},\"failed\":{failed},\"bytes\":{total}}}");
    std::io::stdout().flush()?;
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Where an echo that returned more than was sent went wrong: the first byte that
/// differs, and where in what was sent the extra bytes appear (a repeat shows there).
fn where_from(sent: &[u8], received: &[u8], extra: &[u8]) -> String {
    let differs = received.iter().zip(sent).position(|(a, b)| a != b);
    let probe = &extra[..extra.len().min(64)];
    let repeats = sent.windows(probe.len()).position(|w| w == probe);
    let differs = differs.map_or("every echoed byte matched".into(), |at| {
        // What came instead: where in what was sent those bytes are from.
        let got = &received[at..received.len().min(at + 64)];
        let from = sent.windows(got.len()).position(|w| w == got);
        let from = from.map_or("bytes not sent".into(), |q| format!("sent bytes from {q}"));
        format!("first difference at byte {at}, which has {from}")
    });
    let repeats = repeats.map_or("the extra bytes are not from what was sent".into(), |at| {
        format!("the extra bytes repeat what was sent from byte {at}")
    });
    format!("{differs}; {repeats}")
}

/// One echo connection; returns the number of bytes echoed intact.
fn echo_conn(addr: SocketAddr, bytes: usize, seed: u64, half_close: bool) -> Result<u64, String> {
    let mut data = vec![0u8; bytes];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let data = Arc::new(data);
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let io = |e: std::io::Error| e.to_string();
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let to_send = Arc::clone(&data);
    let sender = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || -> Result<(), String> {
            for chunk in to_send.chunks(CHUNK) {
                writer.write_all(chunk).map_err(|e| format!("write: {e}"))?;
            }
            if half_close {
                writer
                    .shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown(write): {e}"))?;
            }
            Ok(())
        })
        .map_err(|e| format!("spawning writer: {e}"))?;
    let mut received = vec![0u8; bytes];
    let mut got = 0;
    let mut read_result = Ok(());
    while got < bytes {
        match stream.read(&mut received[got..]) {
            Ok(0) => {
                read_result = Err(format!("EOF after {got} of {bytes} bytes"));
                break;
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                read_result = Err(format!("read after {got} of {bytes} bytes: {e}"));
                break;
            }
        }
    }
    if read_result.is_ok() && half_close {
        // The server saw our FIN, echoed everything and shut down: expect EOF.
        let mut extra = [0u8; 1024];
        read_result = match stream.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "{n} unexpected bytes after the echo ({})",
                where_from(&data, &received, &extra[..n])
            )),
            Err(e) => Err(format!("waiting for EOF after the echo: {e}")),
        };
    }
    if read_result.is_err() {
        // Unblock the writer if it is stuck on a full window.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let sent = sender
        .join()
        .unwrap_or_else(|_| Err("writer panicked".into()));
    read_result?;
    sent?;
    if let Some(at) = received.iter().zip(data.iter()).position(|(a, b)| a != b) {
        return Err(format!("echo differs from what was sent at byte {at}"));
    }
    Ok(bytes as u64)
}

fn connect_loop(flags: &Flags) -> Result<()> {
    let addr = flags.addr("addr")?;
    let interval = Duration::from_millis(flags.num("interval-ms", None)?);
    let duration = Duration::from_millis(flags.num("duration-ms", None)?);
    let count = flags.num("count", Some(u64::MAX))?;
    let timeout = Duration::from_millis(flags.num("timeout-ms", Some(LOOP_TIMEOUT_MS))?);
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    for n in 0..count {
        let began = Instant::now();
        let t = monotonic_ms();
        match attempt(addr, timeout) {
            Ok(answer) => writeln!(out, "{t} ok {answer}")?,
            Err(reason) => writeln!(out, "{t} error {}", reason.replace('\n', " "))?,
        }
        out.flush()?;
        let next = began + interval;
        if n + 1 == count || next.duration_since(start) >= duration {
            break;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

fn attempt(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("set timeout: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e} (after {} bytes)", answer.len()))?;
    let text = String::from_utf8_lossy(&answer).trim().to_owned();
    if text.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok(text.replace('\n', " "))
}
