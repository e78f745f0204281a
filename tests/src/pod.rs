//! Pods: a network namespace plus a cgroup v2 directory, and the processes
//! run inside them.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One lab pod. Cheap to clone; it does not own the namespace or cgroup (the
/// [`crate::Lab`] does).
#[derive(Clone, Debug)]
pub struct Pod {
    /// Pod name (also the workload `name`).
    pub name: String,
    /// Name of the node the pod runs on.
    pub node: String,
    /// Named netns (`ht<id>-<pod>`).
    pub netns_name: String,
    /// `/var/run/netns/ht<id>-<pod>`.
    pub netns_path: PathBuf,
    /// The pod's cgroup v2 directory.
    pub cgroup: PathBuf,
    /// IPv4 address of eth0.
    pub ipv4: Ipv4Addr,
    /// IPv6 address of eth0 (dual-stack labs only).
    pub ipv6: Option<Ipv6Addr>,
    /// The workload file says `context_propagation: auto` for this pod (issue 13:
    /// the agent links the pod's context-less outbound requests to the inbound
    /// request that caused them). Off by default; see [`crate::Lab::set_context_propagation`].
    pub context_propagation: bool,
}

impl Pod {
    /// The pod's IPv4 socket address for `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ipv4), port)
    }

    /// The pod's IPv6 socket address for `port` (None in a v4-only lab).
    pub fn addr6(&self, port: u16) -> Option<SocketAddr> {
        self.ipv6.map(|ip| SocketAddr::new(IpAddr::V6(ip), port))
    }

    /// The pod's addresses, IPv4 first.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips = vec![IpAddr::V4(self.ipv4)];
        ips.extend(self.ipv6.map(IpAddr::V6));
        ips
    }

    /// Spawns `cmd` inside the pod: between fork and exec the child writes its
    /// own pid into the pod's `cgroup.procs` and enters the pod's netns, so
    /// the program is in both from its first instruction. Stdio is whatever
    /// `cmd` was configured with (stdin defaults to null here). The command is
    /// consumed so its pre-exec hook (which uses fds opened here) can't be reused.
    pub fn spawn(&self, mut cmd: Command) -> Result<PodProcess> {
        let netns = File::open(&self.netns_path)
            .with_context(|| format!("opening {}", self.netns_path.display()))?;
        let procs_path = self.cgroup.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .with_context(|| format!("opening {}", procs_path.display()))?;
        let (netns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_raw_fd());
        let label = format!("{:?} in pod {}", cmd.get_program(), self.name);
        // SAFETY: the hook only makes async-signal-safe calls (getpid, write,
        // setns) on fds that stay open until spawn returns (`netns`, `procs`
        // are dropped after it) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let mut buf = [0u8; 16];
                let len = format_pid(libc::getpid(), &mut buf);
                if libc::write(procs_fd, buf.as_ptr().cast(), len) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("spawning {label}"))?;
        drop((netns, procs));
        Ok(PodProcess { child, label })
    }

    /// Runs `cmd` in the pod to completion (killed after `timeout`) and
    /// captures its stdout and stderr.
    pub fn run(&self, mut cmd: Command, timeout: Duration) -> Result<RunOutput> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.spawn(cmd)?.wait_output(timeout)
    }
}

/// Writes the decimal digits of `pid` into `buf` without allocating and
/// returns their length.
pub(crate) fn format_pid(pid: libc::pid_t, buf: &mut [u8; 16]) -> usize {
    let mut digits = [0u8; 16];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    len
}

/// A process running in a pod. Killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct PodProcess {
    child: Child,
    label: String,
}

/// Exit status and captured output of a finished process.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
}

impl RunOutput {
    /// Fails with the stderr when the process did not exit 0.
    pub fn ensure_success(self) -> Result<RunOutput> {
        if !self.status.success() {
            bail!(
                "{}\nstdout: {}\nstderr: {}",
                self.status,
                self.stdout.trim(),
                self.stderr.trim()
            );
        }
        Ok(self)
    }
}

impl PodProcess {
    /// The process id (in the host pid namespace).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if self.is_running() {
            self.child
                .kill()
                .with_context(|| format!("killing {}", self.label))?;
        }
        self.child.wait()?;
        Ok(())
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: plain kill(2) on our own (unreaped) child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// Waits until the process has a TCP socket listening on `port` in its
    /// network namespace (from `/proc/<pid>/net/tcp{,6}`). Fails if it exits.
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening on {port}",
                    self.label
                );
            }
            if listening(self.pid(), port) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("{} not listening on {port} after {timeout:?}", self.label);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit (SIGKILL after `timeout`, which is an error) and
    /// returns the output captured from piped stdout/stderr (empty if not piped).
    pub fn wait_output(mut self, timeout: Duration) -> Result<RunOutput> {
        let out = reader(self.child.stdout.take());
        let err = reader(self.child.stderr.take());
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break Some(status);
            }
            if start.elapsed() > timeout {
                self.child.kill()?;
                self.child.wait()?;
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = join(out);
        let stderr = join(err);
        match status {
            Some(status) => Ok(RunOutput {
                status,
                stdout,
                stderr,
            }),
            None => bail!(
                "{} timed out after {timeout:?}\nstdout: {}\nstderr: {}",
                self.label,
                stdout.trim(),
                stderr.trim()
            ),
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<String>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
}

fn join(handle: Option<JoinHandle<String>>) -> String {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Whether the process `pid` itself has a socket listening on `port` (another
/// process, or another listener of the pod on the same port for another address,
/// does not count: a v6 server started beside a v4 one on the same port must wait
/// for its own socket).
fn listening(pid: u32, port: u16) -> bool {
    let own: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let want = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .map(|t| {
                t.lines().skip(1).any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    let (local, state, inode) = (
                        cols.get(1).copied().unwrap_or_default(),
                        cols.get(3).copied().unwrap_or_default(),
                        cols.get(9).copied().unwrap_or_default(),
                    );
                    local.ends_with(&want) && state == "0A" && own.contains(inode)
                })
            })
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn pid_digits() {
        let mut buf = [0u8; 16];
        for (pid, text) in [
            (0, "0"),
            (7, "7"),
            (4194304, "4194304"),
            (i32::MAX, "2147483647"),
        ] {
            let n = super::format_pid(pid, &mut buf);
            assert_eq!(&buf[..n], text.as_bytes());
        }
    }
}
