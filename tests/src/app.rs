//! Driving the `labapp` test program (src/bin/labapp/) inside pods.

use crate::{Pod, PodProcess};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a server may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one echo-client run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// The `labapp` binary. Build it with the [`crate::labapp!`] macro in tests.
#[derive(Clone, Debug)]
pub struct LabApp {
    path: PathBuf,
}

/// Result line of `labapp echo-client`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoReport {
    /// Connections whose echo came back byte-exact.
    pub ok: u64,
    /// Connections that failed (connect, I/O, mismatch, missing EOF).
    pub failed: u64,
    /// Bytes echoed intact, over all connections.
    pub bytes: u64,
    /// The client's stderr (per-connection errors).
    pub stderr: String,
}

/// Result line of `labapp flood-client`.
#[derive(Clone, Debug)]
pub struct FloodReport {
    /// Bytes the path between the apps had taken while the server read nothing.
    pub buffered: u64,
    /// The server received every byte, in order.
    pub ok: bool,
    /// The client's stderr.
    pub stderr: String,
}

/// Result line of `labapp idle-client`.
#[derive(Clone, Debug)]
pub struct IdleReport {
    /// How long after the last byte the connection was closed (or the wait, if open).
    pub after: Duration,
    /// `eof`, `reset` or `open`.
    pub how: &'static str,
}

/// One attempt of `labapp connect-loop`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// `CLOCK_MONOTONIC` ms when the attempt started (see [`crate::clock`]).
    pub t_ms: u64,
    /// Connected and read a non-empty answer up to EOF.
    pub ok: bool,
    /// The answer (e.g. `peer=10.61.1.2:40112`) or the error.
    pub detail: String,
}

/// A running `labapp connect-loop`, writing its attempts to a file.
pub struct ConnectLoop {
    /// The process (killed on drop).
    pub process: PodProcess,
    out: PathBuf,
}

impl LabApp {
    /// A `LabApp` for the binary at `path`.
    pub fn new(path: impl Into<PathBuf>) -> LabApp {
        LabApp { path: path.into() }
    }

    /// The binary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `labapp <args>` command.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.args(args);
        cmd
    }

    fn server(&self, sub: &str, pod: &Pod, listen: SocketAddr) -> Result<PodProcess> {
        self.server_with(&[sub], pod, listen)
    }

    fn server_with(&self, args: &[&str], pod: &Pod, listen: SocketAddr) -> Result<PodProcess> {
        let listen_arg = listen.to_string();
        let mut all = args.to_vec();
        all.extend(["--listen", &listen_arg]);
        let mut cmd = self.command(&all);
        cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut proc = pod.spawn(cmd)?;
        proc.wait_listening(listen.port(), LISTEN_TIMEOUT)?;
        Ok(proc)
    }

    /// Starts `echo-server --listen <listen>` in `pod` and waits until it listens.
    pub fn echo_server(&self, pod: &Pod, listen: SocketAddr) -> Result<PodProcess> {
        self.server("echo-server", pod, listen)
    }

    /// Starts `hold-server` in `pod`: each connection is read only after `hold`.
    pub fn hold_server(&self, pod: &Pod, listen: SocketAddr, hold: Duration) -> Result<PodProcess> {
        let ms = hold.as_millis().to_string();
        self.server_with(&["hold-server", "--hold-ms", &ms], pod, listen)
    }

    /// Runs `flood-client` in `pod` against a hold-server at `addr`: `bytes` sent,
    /// what the path had taken after `sample` noted. `Err` only when there is no report.
    pub fn flood_client(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        bytes: u64,
        sample: Duration,
    ) -> Result<FloodReport> {
        self.flood_client_with(pod, addr, bytes, sample, &[])
    }

    /// [`LabApp::flood_client`] with more `flood-client` flags (`--retry-eagain`).
    pub fn flood_client_with(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        bytes: u64,
        sample: Duration,
        extra: &[&str],
    ) -> Result<FloodReport> {
        let (addr, bytes, ms) = (
            addr.to_string(),
            bytes.to_string(),
            sample.as_millis().to_string(),
        );
        let args = [
            "flood-client",
            "--addr",
            &addr,
            "--bytes",
            &bytes,
            "--sample-ms",
            &ms,
        ];
        let args: Vec<&str> = args.iter().chain(extra).copied().collect();
        let out = pod.run(self.command(&args), CLIENT_TIMEOUT)?;
        let line = report_line(&out.stdout, "flood-client", &out.status, &out.stderr)?;
        Ok(FloodReport {
            buffered: json_u64(line, "buffered")?,
            ok: line.contains("\"ok\":true"),
            stderr: out.stderr,
        })
    }

    /// Runs `idle-client` in `pod` against an echo-server at `addr`: how long until
    /// the idle connection was closed (`None`: still open after `wait`) and how.
    pub fn idle_client(&self, pod: &Pod, addr: SocketAddr, wait: Duration) -> Result<IdleReport> {
        let (addr, ms) = (addr.to_string(), wait.as_millis().to_string());
        let args = ["idle-client", "--addr", &addr, "--wait-ms", &ms];
        let out = pod.run(self.command(&args), CLIENT_TIMEOUT)?;
        let line = report_line(&out.stdout, "idle-client", &out.status, &out.stderr)?;
        let how = ["eof", "reset", "open"]
            .into_iter()
            .find(|h| line.contains(&format!("\"how\":\"{h}\"")))
            .with_context(|| format!("idle-client: no \"how\" in {line:?}"))?;
        Ok(IdleReport {
            after: Duration::from_millis(json_u64(line, "closed_after_ms")?),
            how,
        })
    }

    /// Starts `whoami-server --listen <listen>` in `pod` and waits until it listens.
    pub fn whoami_server(&self, pod: &Pod, listen: SocketAddr) -> Result<PodProcess> {
        self.server("whoami-server", pod, listen)
    }

    /// Starts `http-ok-server --listen <listen>` in `pod` and waits until it listens.
    pub fn http_ok_server(&self, pod: &Pod, listen: SocketAddr) -> Result<PodProcess> {
        self.server("http-ok-server", pod, listen)
    }

    /// Starts `http-edge-server --listen <listen>` in `pod` and waits until it listens.
    pub fn http_edge_server(&self, pod: &Pod, listen: SocketAddr) -> Result<PodProcess> {
        self.server("http-edge-server", pod, listen)
    }

    /// Runs `http-edge-client` in `pod` against `addr` (trace ids from `seed`);
    /// returns its reports (`stream`, `expect`, `upgrade`), failed ones included.
    pub fn http_edge_client(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        seed: u64,
        extra: &[&str],
    ) -> Result<Vec<crate::h1edge::EdgeReport>> {
        let (addr, seed) = (addr.to_string(), seed.to_string());
        let args = ["http-edge-client", "--addr", &addr, "--trace-seed", &seed];
        let args: Vec<&str> = args.iter().chain(extra).copied().collect();
        let out = pod.run(self.command(&args), CLIENT_TIMEOUT)?;
        let reports = out
            .stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad report {l}")))
            .collect::<Result<Vec<_>>>()?;
        if reports.len() != 3 {
            anyhow::bail!(
                "http-edge-client printed {} reports ({}): {}",
                reports.len(),
                out.status,
                out.stderr.trim()
            );
        }
        Ok(reports)
    }

    /// Runs `echo-client` in `pod` to completion. A run where connections
    /// failed is still `Ok` (check the report); `Err` means no report at all.
    pub fn echo_client(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        bytes: usize,
        conns: usize,
        half_close: bool,
    ) -> Result<EchoReport> {
        let (addr, bytes, conns) = (addr.to_string(), bytes.to_string(), conns.to_string());
        let mut args = vec![
            "echo-client",
            "--addr",
            &addr,
            "--bytes",
            &bytes,
            "--conns",
            &conns,
        ];
        if half_close {
            args.push("--half-close");
        }
        let out = pod.run(self.command(&args), CLIENT_TIMEOUT)?;
        let line = out
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| {
                format!(
                    "echo-client printed no report ({}): {}",
                    out.status,
                    out.stderr.trim()
                )
            })?;
        Ok(EchoReport {
            ok: json_u64(line, "ok")?,
            failed: json_u64(line, "failed")?,
            bytes: json_u64(line, "bytes")?,
            stderr: out.stderr,
        })
    }

    /// One connection from `pod` to a whoami-server at `addr`; returns the
    /// peer address the server saw. Fails if the connection fails.
    pub fn whoami(&self, pod: &Pod, addr: SocketAddr) -> Result<SocketAddr> {
        let a = addr.to_string();
        let args = [
            "connect-loop",
            "--addr",
            &a,
            "--interval-ms",
            "1",
            "--duration-ms",
            "0",
            "--count",
            "1",
        ];
        let out = pod.run(self.command(&args), Duration::from_secs(30))?;
        let attempts = parse_attempts(&out.stdout)?;
        let Some(attempt) = attempts.first() else {
            bail!("connect-loop made no attempt: {}", out.stderr.trim());
        };
        if !attempt.ok {
            bail!(
                "connection from {} to {addr} failed: {}",
                pod.name,
                attempt.detail
            );
        }
        let peer = attempt
            .detail
            .strip_prefix("peer=")
            .with_context(|| format!("unexpected whoami answer {:?}", attempt.detail))?;
        peer.parse()
            .with_context(|| format!("bad peer address {peer:?}"))
    }

    /// Starts `connect-loop` in `pod` (a fresh connection to a whoami-server
    /// every `interval_ms` for `duration_ms`, each given `timeout_ms` to connect and
    /// to be answered), its stdout going to `out`.
    pub fn connect_loop(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        (interval_ms, duration_ms, timeout_ms): (u64, u64, u64),
        out: &Path,
    ) -> Result<ConnectLoop> {
        let (a, i, d, t) = (
            addr.to_string(),
            interval_ms.to_string(),
            duration_ms.to_string(),
            timeout_ms.to_string(),
        );
        let mut cmd = self.command(&[
            "connect-loop",
            "--addr",
            &a,
            "--interval-ms",
            &i,
            "--duration-ms",
            &d,
            "--timeout-ms",
            &t,
        ]);
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        cmd.stdout(file).stderr(Stdio::inherit());
        Ok(ConnectLoop {
            process: pod.spawn(cmd)?,
            out: out.to_owned(),
        })
    }
}

impl ConnectLoop {
    /// The attempts printed so far.
    pub fn attempts(&self) -> Result<Vec<Attempt>> {
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        parse_attempts(&text)
    }

    /// Stops the loop (SIGKILL; every finished attempt is already written)
    /// and returns all attempts.
    pub fn finish(mut self) -> Result<Vec<Attempt>> {
        self.process.kill()?;
        self.attempts()
    }
}

/// Parses `connect-loop` output: `<t_ms> ok <answer>` / `<t_ms> error <reason>`.
/// A trailing partial line (no newline yet) is ignored.
pub fn parse_attempts(text: &str) -> Result<Vec<Attempt>> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let t_ms = parts
                .next()
                .and_then(|t| t.parse().ok())
                .with_context(|| format!("bad connect-loop line {line:?}"))?;
            let ok = match parts.next() {
                Some("ok") => true,
                Some("error") => false,
                _ => bail!("bad connect-loop line {line:?}"),
            };
            Ok(Attempt {
                t_ms,
                ok,
                detail: parts.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// The unsigned integer value of `"key":` in a flat one-line JSON object.
/// The last JSON line of a client's output.
fn report_line<'a>(
    stdout: &'a str,
    what: &str,
    status: &impl std::fmt::Display,
    stderr: &str,
) -> Result<&'a str> {
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no report ({status}): {}", stderr.trim()))
}

fn json_u64(line: &str, key: &str) -> Result<u64> {
    let pat = format!("\"{key}\":");
    let at = line
        .find(&pat)
        .with_context(|| format!("no {key:?} in {line:?}"))?
        + pat.len();
    let digits: String = line[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .with_context(|| format!("bad {key:?} in {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_outputs() {
        let line = r#"{"ok":199,"failed":1,"bytes":13041664}"#;
        assert_eq!(json_u64(line, "ok").ok(), Some(199));
        assert_eq!(json_u64(line, "failed").ok(), Some(1));
        assert_eq!(json_u64(line, "bytes").ok(), Some(13041664));
        assert!(json_u64(line, "nope").is_err());

        let a = parse_attempts(
            "100 ok peer=10.1.1.2:5\n120 error connect: refused (os error 111)\n140 o",
        )
        .expect("parse");
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].t_ms, a[0].ok, a[0].detail.as_str()),
            (100, true, "peer=10.1.1.2:5")
        );
        assert_eq!((a[1].t_ms, a[1].ok), (120, false));
        assert!(parse_attempts("x ok\n").is_err());
    }
}
