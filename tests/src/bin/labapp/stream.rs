//! Long-stream subcommands: backpressure through a relay and idle connections.
//!
//! * `hold-server --listen ADDR --hold-ms H`: per connection, reads nothing for H ms,
//!   then reads to EOF and answers `{"bytes":N,"hash":X}` (the [`Digest`] of all it
//!   read) and closes.
//! * `flood-client --addr ADDR --bytes N --sample-ms S [--seed K]`: sends N bytes of a
//!   seeded stream to a hold-server, notes how many the kernel had taken after S ms
//!   (`buffered`: what the path between the two apps holds while the server reads
//!   nothing), half-closes, and checks the server's count and digest. Prints
//!   `{"buffered":B,"bytes":N,"ok":true|false}`; exits 1 when not ok.
//! * `idle-client --addr ADDR --wait-ms W`: against an echo-server, sends 4 bytes,
//!   reads their echo, then waits up to W ms for the connection to be closed. Prints
//!   `{"closed_after_ms":T,"how":"eof"|"reset"|"open"}`.

use anyhow::{bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Flags, CHUNK, CONNECT_TIMEOUT, IO_TIMEOUT};

/// An order-sensitive digest of a byte stream, cheap enough for a debug build.
#[derive(Default)]
struct Digest {
    h: u64,
    len: u64,
}

impl Digest {
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.h = (self.h ^ u64::from(b) ^ self.len).wrapping_mul(0x100_0000_01b3);
            self.len += 1;
        }
    }
}

/// The seeded stream: xorshift64, 8 bytes at a time.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

pub fn hold_conn(mut stream: TcpStream, hold: Duration) {
    std::thread::sleep(hold);
    let mut digest = Digest::default();
    let mut buf = vec![0u8; CHUNK];
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => digest.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("hold-server: read: {e}");
                return;
            }
        }
    }
    let _ = writeln!(stream, "{{\"bytes\":{},\"hash\":{}}}", digest.len, digest.h);
}

pub fn flood_client(flags: &Flags) -> Result<()> {
    let addr = flags.addr("addr")?;
    let total = flags.num("bytes", None)?;
    let sample = Duration::from_millis(flags.num("sample-ms", None)?);
    let seed = flags.num("seed", Some(7))?.max(1);
    // Read the answer as readiness-based I/O does: `EAGAIN` means "not yet" until
    // the deadline (a blocking read takes it for its timeout).
    let retry_eagain = flags.switch("retry-eagain");
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let written = Arc::new(AtomicU64::new(0));
    let mut writer = stream.try_clone()?;
    let progress = Arc::clone(&written);
    let sender = std::thread::spawn(move || -> Result<Digest> {
        let mut digest = Digest::default();
        let mut gen = Stream(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            gen.fill(&mut buf[..n]);
            writer.write_all(&buf[..n]).context("write")?;
            digest.update(&buf[..n]);
            left -= n as u64;
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        writer
            .shutdown(Shutdown::Write)
            .context("shutdown(write)")?;
        Ok(digest)
    });
    std::thread::sleep(sample);
    let buffered = written.load(Ordering::Relaxed);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let mut answer = String::new();
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        match stream.read_to_string(&mut answer) {
            Ok(_) => break,
            Err(e)
                if retry_eagain
                    && e.kind() == ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline => {}
            Err(e) => return Err(e).context("reading the server's answer"),
        }
    }
    let expected = format!("{{\"bytes\":{},\"hash\":{}}}", sent.len, sent.h);
    let ok = answer.trim() == expected;
    if !ok {
        eprintln!("flood-client: sent {expected}, server answered {answer:?}");
    }
    println!("{{\"buffered\":{buffered},\"bytes\":{total},\"ok\":{ok}}}");
    std::io::stdout().flush()?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

pub fn idle_client(flags: &Flags) -> Result<()> {
    let addr = flags.addr("addr")?;
    let wait = Duration::from_millis(flags.num("wait-ms", None)?);
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"ping")?;
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).context("reading the echo")?;
    if &echo != b"ping" {
        bail!("echo was {echo:?}");
    }
    let start = Instant::now();
    stream.set_read_timeout(Some(wait))?;
    let mut byte = [0u8; 1];
    let how = match stream.read(&mut byte) {
        Ok(0) => "eof",
        Ok(_) => bail!("unexpected bytes while idle"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => "open",
        Err(_) => "reset",
    };
    println!(
        "{{\"closed_after_ms\":{},\"how\":\"{how}\"}}",
        start.elapsed().as_millis()
    );
    Ok(())
}
