//! A handle on one `hoptrace run` agent process serving one lab node.

use crate::http::{self, Response};
use crate::{pod::format_pid, Lab, Metrics};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where an agent gets its pods from.
#[derive(Clone, Debug)]
enum Source {
    /// `--workloads-file`.
    File(PathBuf),
    /// The Kubernetes API, through this kubeconfig.
    Kubernetes(PathBuf),
}

/// How long `stop()` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running (or killed) agent for one node. It runs in the host netns and in
/// its own cgroup (`<lab cgroup>/_agents/<node>`), never a pod's. Dropping it
/// stops the agent (SIGTERM, then SIGKILL); when dropped during a panic it
/// first prints its log path and the last 50 log lines.
pub struct Agent {
    node: String,
    bin: PathBuf,
    source: Source,
    cgroup: PathBuf,
    log: PathBuf,
    admin: SocketAddr,
    extra_args: Vec<String>,
    prefix: Vec<String>,
    child: Option<Child>,
    starts: u32,
}

impl Agent {
    /// The agent binary: `$HOPTRACE_BIN`, else `<target>/release/hoptrace`,
    /// else `<target>/debug/hoptrace` (`<target>` is `$CARGO_TARGET_DIR` or
    /// the workspace's `target/`).
    pub fn binary() -> Result<PathBuf> {
        if let Some(bin) = std::env::var_os("HOPTRACE_BIN") {
            let bin = PathBuf::from(bin);
            if !bin.is_file() {
                bail!("HOPTRACE_BIN={} is not a file", bin.display());
            }
            return Ok(bin);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("tests crate has no parent dir")?;
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let candidates = [
            target.join("release/hoptrace"),
            target.join("debug/hoptrace"),
        ];
        match candidates.iter().find(|p| p.is_file()) {
            Some(p) => Ok(p.clone()),
            None => bail!(
                "hoptrace agent binary not found (looked at $HOPTRACE_BIN, {}, {}): \
                 run `cargo xtask build` first",
                candidates[0].display(),
                candidates[1].display()
            ),
        }
    }

    /// Starts `hoptrace run --workloads-file <workloads> --node-name <node>
    /// --admin-addr 127.0.0.1:<free port> --log debug`, logging to
    /// `<lab tmp>/agent-<node>.log`. Does not wait for readiness.
    pub fn start(lab: &Lab, node: &str, workloads: &Path) -> Result<Agent> {
        Agent::start_with_args(lab, node, workloads, &[])
    }

    /// Like [`Agent::start`] with extra `hoptrace run` flags appended. When they
    /// include `--log`, it replaces the default `--log debug`.
    pub fn start_with_args(
        lab: &Lab,
        node: &str,
        workloads: &Path,
        extra_args: &[&str],
    ) -> Result<Agent> {
        Agent::launch(
            lab,
            node,
            Source::File(workloads.to_owned()),
            &[],
            extra_args,
        )
    }

    /// Like [`Agent::start_with_args`], run through the command line `prefix`
    /// (e.g. `["setpriv", "--bounding-set=-all,+sys_admin", "--"]`), which must
    /// end up exec'ing its arguments in the same process, so the pid stays the
    /// agent's (signals, cgroup placement).
    pub fn start_wrapped(
        lab: &Lab,
        node: &str,
        workloads: &Path,
        prefix: &[&str],
        extra_args: &[&str],
    ) -> Result<Agent> {
        Agent::launch(
            lab,
            node,
            Source::File(workloads.to_owned()),
            prefix,
            extra_args,
        )
    }

    /// Starts an agent that discovers its pods from the Kubernetes API: no
    /// `--workloads-file`, `KUBERNETES_SERVICE_HOST` set, `KUBECONFIG=<kubeconfig>`
    /// (e.g. [`crate::KubeApi::kubeconfig`]) and `NODE_NAME=<node>` in its
    /// environment, then `--admin-addr`, `--log debug` and `extra_args` (typically
    /// `--cgroup-root`).
    pub fn start_kubernetes(
        lab: &Lab,
        node: &str,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> Result<Agent> {
        Agent::launch(
            lab,
            node,
            Source::Kubernetes(kubeconfig.to_owned()),
            &[],
            extra_args,
        )
    }

    fn launch(
        lab: &Lab,
        node: &str,
        source: Source,
        prefix: &[&str],
        extra_args: &[&str],
    ) -> Result<Agent> {
        if lab.node(node).is_none() {
            bail!("no node {node:?} in lab {}", lab.id());
        }
        let cgroup = lab.agent_cgroup(node);
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating {}", cgroup.display()))?;
        let mut agent = Agent {
            node: node.to_owned(),
            bin: Agent::binary()?,
            source,
            cgroup,
            log: lab.tmp_dir().join(format!("agent-{node}.log")),
            admin: free_port()?,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            child: None,
            starts: 0,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("run");
        match &self.source {
            Source::File(workloads) => {
                cmd.arg("--workloads-file")
                    .arg(workloads)
                    .args(["--node-name", &self.node])
                    .env_remove("KUBERNETES_SERVICE_HOST");
            }
            Source::Kubernetes(kubeconfig) => {
                // The kubeconfig wins over the in-cluster settings (kube::Config::infer).
                cmd.env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
                    .env("KUBERNETES_SERVICE_PORT", "443")
                    .env("KUBECONFIG", kubeconfig)
                    .env("NODE_NAME", &self.node);
            }
        }
        cmd.args(["--admin-addr", &self.admin.to_string()]);
        // Tests log at debug; callers that pass their own `--log` (the bench) win.
        if !self.extra_args.iter().any(|a| a == "--log") {
            cmd.args(["--log", "debug"]);
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?);
        writeln!(
            log,
            "=== start #{} of the agent for {}: {cmd:?}",
            self.starts, self.node
        )?;
        let procs_path = self.cgroup.join("cgroup.procs");
        let procs: File = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .with_context(|| format!("opening {}", procs_path.display()))?;
        let procs_fd = procs.as_raw_fd();
        // SAFETY: async-signal-safe calls only (getpid, write) on an fd that
        // stays open until spawn returns; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                let mut buf = [0u8; 16];
                let len = format_pid(libc::getpid(), &mut buf);
                if libc::write(procs_fd, buf.as_ptr().cast(), len) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        drop(procs);
        self.child = Some(child);
        Ok(())
    }

    /// The node this agent serves.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Waits up to `timeout` for the current agent process to exit and returns
    /// its status (`None` if it is still running then).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let start = Instant::now();
        let Some(child) = self.child.as_mut() else {
            bail!("the agent for {} was not started", self.node);
        };
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if start.elapsed() > timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pid of the current agent process (None once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Context switches (voluntary + involuntary) of each of the agent's threads
    /// whose name starts with `prefix`, by thread name (`/proc/PID/task/*/status`).
    pub fn thread_switches(&self, prefix: &str) -> Result<std::collections::BTreeMap<String, u64>> {
        let pid = self.pid().context("the agent is not running")?;
        let mut out = std::collections::BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let status = std::fs::read_to_string(task?.path().join("status"))?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            let Some(comm) = field("Name:").filter(|n| n.starts_with(prefix)) else {
                continue;
            };
            let count = |name| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let n = count("voluntary_ctxt_switches:") + count("nonvoluntary_ctxt_switches:");
            out.insert(comm.to_owned(), n);
        }
        Ok(out)
    }

    /// The admin address (`127.0.0.1:<port>`) of the current process.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The agent's log file (stdout and stderr of every start).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// True while the current agent process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `GET <path>` on the admin address.
    pub fn get(&self, path: &str) -> Result<Response> {
        http::get(self.admin, path, Duration::from_secs(2))
    }

    /// Polls `GET /ready` every 50 ms until it answers 200. Fails at once if
    /// the agent exits, or after `timeout`; the error includes the log tail.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last;
        loop {
            if !self.is_running() {
                let status = self.child.as_mut().map(|c| c.try_wait());
                bail!(
                    "agent for {} is not running ({status:?}); log {}:\n{}",
                    self.node,
                    self.log.display(),
                    self.log_tail(50)
                );
            }
            match self.get("/ready") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status, r.body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            if start.elapsed() > timeout {
                bail!(
                    "agent for {} not ready after {timeout:?} (last /ready: {last}); log {}:\n{}",
                    self.node,
                    self.log.display(),
                    self.log_tail(50)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Scrapes and parses `GET /metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        let r = self.get("/metrics")?;
        if r.status != 200 {
            bail!("GET /metrics answered {}: {}", r.status, r.body.trim());
        }
        Metrics::parse(&r.body)
    }

    /// SIGKILLs the agent (no cleanup by the agent) and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().context("reaping the agent")?;
        }
        Ok(())
    }

    /// Stops the agent gracefully: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while child.try_wait()?.is_none() {
            if start.elapsed() > STOP_GRACE {
                eprintln!(
                    "agent for {} ignored SIGTERM for {STOP_GRACE:?}; killing",
                    self.node
                );
                child.kill().ok();
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Runs `bin` instead from the next (re)start on: e.g. another build of the agent,
    /// for a before/after in one lab.
    pub fn set_binary(&mut self, bin: &Path) {
        self.bin = bin.to_owned();
    }

    /// Stops the agent gracefully and starts it again with `extra_args` in place of
    /// its flags (same workload source, fresh admin port).
    pub fn restart_with_args(&mut self, extra_args: &[&str]) -> Result<()> {
        self.stop()?;
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        self.admin = free_port()?;
        self.spawn()
    }

    /// Starts the agent again (stopping it first with SIGKILL if it is still
    /// running) with the same workload source, on a fresh admin port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.admin = free_port()?;
        self.spawn()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- agent for {} (log {}), last 50 lines:\n{}\n----",
                self.node,
                self.log.display(),
                self.log_tail(50)
            );
        }
        if let Err(e) = self.stop() {
            eprintln!("stopping the agent for {}: {e:#}", self.node);
        }
    }
}

/// A free TCP address on 127.0.0.1 for the agent's admin endpoint ([`crate::ports`]).
fn free_port() -> Result<SocketAddr> {
    Ok(SocketAddr::from((
        [127, 0, 0, 1],
        crate::ports::free_port()?,
    )))
}
