//! Does this kernel keep a blocking read of a socket in a sockmap waiting when the
//! read is woken without data? `--skip-pod-tcp` puts the apps' own sockets into a
//! sockmap, and from then on the kernel reads them through `tcp_bpf_recvmsg`, which
//! (on every kernel tried, up to 6.18) returns `EAGAIN` to such a read instead of
//! waiting on as TCP's own read does (docs/ARCHITECTURE.md, "In-pod connections
//! without TCP"). An app that reads with blocking calls then sees an error it was
//! never meant to see. This module asks the running kernel rather than going by its
//! release, because the fix, when it comes, may be backported.
//!
//! The probe is a loopback connection made and closed here, nothing else: a thread
//! blocks reading the client socket, the client shuts its write side down (which wakes
//! every waiter on the socket without giving it data), and 200 ms later the server
//! sends one byte. A kernel that keeps the read waiting returns that byte; one that
//! does not returns `EAGAIN` at the shutdown. The same steps on a socket outside any
//! sockmap come first, as the control: if the plain socket's read does not wait, the
//! probe cannot tell and says so.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, SockMap};

/// What a blocking read of a socket in a sockmap does when it is woken without data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockingRead {
    /// It waits on, as TCP's own read does: blocking apps are safe.
    Waits,
    /// It fails with `EAGAIN`: only readiness-based apps are safe.
    FailsWithEagain,
}

impl BlockingRead {
    /// One line for logs and `hoptrace check`.
    pub fn describe(self) -> &'static str {
        match self {
            BlockingRead::Waits => "a blocking read of a socket in a sockmap, woken without data, waits on (probed): blocking apps are safe with --skip-pod-tcp",
            BlockingRead::FailsWithEagain => "a blocking read of a socket in a sockmap, woken without data, fails with EAGAIN (probed; tcp_bpf_recvmsg): with --skip-pod-tcp only readiness-based apps are safe",
        }
    }
}

/// How long the probe lets a read wait before the server's byte is sent.
const WAKE_TO_DATA: Duration = Duration::from_millis(200);
/// The read's own timeout (`SO_RCVTIMEO`), so that nothing here can hang.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Probes the running kernel (needs the privileges to create a BPF map; takes about
/// half a second). `Err` says why it could not tell.
pub fn blocking_read() -> Result<BlockingRead, String> {
    match trial(false)? {
        Outcome::Data => {}
        other => {
            return Err(format!(
                "inconclusive: the control (a socket outside any sockmap) did not wait for its data: {other:?}"
            ))
        }
    }
    match trial(true)? {
        Outcome::Data => Ok(BlockingRead::Waits),
        Outcome::EarlyEagain => Ok(BlockingRead::FailsWithEagain),
        other => Err(format!(
            "inconclusive: the read in a sockmap ended with {other:?}"
        )),
    }
}

/// How one trial's blocking read ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// It returned the server's byte.
    Data,
    /// It failed with `EAGAIN` before the byte was sent: woken without data.
    EarlyEagain,
    /// Anything else (an error, end of stream, or the read's own timeout).
    Other(String),
}

fn trial(in_sockmap: bool) -> Result<Outcome, String> {
    let io = |what: &'static str| move |e: io::Error| format!("{what}: {e}");
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("listen on loopback"))?;
    let addr = listener.local_addr().map_err(io("listener address"))?;
    let client = TcpStream::connect(addr).map_err(io("connect on loopback"))?;
    let (mut server, _) = listener.accept().map_err(io("accept on loopback"))?;
    // The map holds the socket until it is dropped at the end of the trial.
    let _map = if in_sockmap {
        let mut map = SockMap::<MapData>::try_from(Map::SockMap(
            MapData::create(
                aya_obj::Map::new_from_params(
                    aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_SOCKMAP as u32,
                    4,
                    4,
                    1,
                    0,
                ),
                "hoptrace_probe",
                None,
            )
            .map_err(|e| format!("create a sockmap: {e}"))?,
        ))
        .map_err(|e| format!("open the sockmap: {e}"))?;
        map.set(0, &client, 0)
            .map_err(|e| format!("insert into the sockmap: {e}"))?;
        Some(map)
    } else {
        None
    };
    client
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(io("SO_RCVTIMEO"))?;
    let mut reader = client.try_clone().map_err(io("dup"))?;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("hoptrace-probe".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            let mut byte = [0u8; 1];
            let _ = done_tx.send((reader.read(&mut byte), Instant::now()));
        })
        .map_err(io("spawn the reader"))?;
    let tid = tid_rx.recv().map_err(|e| format!("reader thread: {e}"))?;
    let asleep = wait_asleep(tid);
    client
        .shutdown(Shutdown::Write)
        .map_err(io("shut the write side down"))?;
    let early = done_rx.recv_timeout(WAKE_TO_DATA);
    let sent = Instant::now();
    let result = match early {
        Ok(done) => Ok(done),
        Err(_) => {
            server.write_all(b"x").map_err(io("send the byte"))?;
            done_rx
                .recv_timeout(READ_TIMEOUT + Duration::from_secs(1))
                .map_err(|e| format!("the reader never returned: {e}"))
        }
    };
    let _ = handle.join();
    if !asleep {
        return Ok(Outcome::Other(
            "the reader did not block within a second".into(),
        ));
    }
    Ok(match result? {
        (Ok(1), at) if at >= sent => Outcome::Data,
        (Err(e), at) if e.kind() == io::ErrorKind::WouldBlock && at < sent => Outcome::EarlyEagain,
        (r, _) => Outcome::Other(format!("{r:?}")),
    })
}

/// Waits (up to a second) until thread `tid` of this process sleeps in the kernel.
fn wait_asleep(tid: libc::pid_t) -> bool {
    let path = format!("/proc/self/task/{tid}/stat");
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let state = std::fs::read_to_string(&path).ok().and_then(|s| {
            // The state follows the command name's closing parenthesis.
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        });
        if state == Some('S') {
            // Asleep; give it a moment to be sure the wait is the read's.
            thread::sleep(Duration::from_millis(20));
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    false
}

#[cfg(test)]
mod tests {
    /// The probe on the running kernel. Needs root (a BPF map); under `CI=true` it
    /// must run. On the kernels this project is tested on (6.1, 6.12, 6.18) the read
    /// fails: the control must wait and the sockmap read must not.
    #[test]
    fn probe_tells_on_this_kernel() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            assert!(!ci, "the sockmap probe needs root and CI=true is set");
            eprintln!("skipping: needs root");
            return;
        }
        assert_eq!(super::trial(false), Ok(super::Outcome::Data));
        let verdict = super::blocking_read();
        let release = crate::kernel::running_release().expect("uname");
        let known = crate::kernel::Release::parse(&release)
            .is_some_and(|r| r <= crate::kernel::Release(6, 18, u32::MAX));
        if known {
            assert_eq!(
                verdict,
                Ok(super::BlockingRead::FailsWithEagain),
                "{release}"
            );
        } else {
            assert!(verdict.is_ok(), "{verdict:?} on {release}");
        }
    }
}
