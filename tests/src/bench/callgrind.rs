//! `cargo xtask bench --callgrind`: instructions per request, a figure that noise on a
//! shared machine cannot move (issue 10, item 1).
//!
//! The proxies of a scenario run under `valgrind --tool=callgrind` (every process and
//! thread: nginx's master and forked workers, the agent's threads). After a warm-up,
//! their counters are zeroed (`callgrind_control --zero PID`, which reaches a process
//! blocked in a syscall through vgdb), a fixed number of requests is driven through
//! them (`labapp load`, closed loop on a few keep-alive connections, each request with
//! its own sampled `traceparent`), and the counters are dumped
//! (`callgrind_control --dump PID`). For hoptrace the dump waits until the bench's
//! OTLP receiver holds every span of the window (4 per request), so the export is
//! inside the window, as in the wall-clock CPU figure. Two windows run, N and 2N
//! requests: their ratio (≈ 2) shows that the count is per request, not per second.
//!
//! Valgrind 3.19's gdbserver, which `callgrind_control` talks to, does not exist in a
//! child that a process forks without exec'ing: nginx's workers cannot be zeroed or
//! dumped. The nginx of this phase therefore run as a single process
//! (`master_process off`): the process that serves requests is then the one that was
//! started, running the same event loop and proxy module a worker runs.
//!
//! | scenario | processes under callgrind |
//! | --- | --- |
//! | `sidecar` | a second pair of nginx (client pod :4240 → server pod :4243 → app), started for this phase with the scenario's configuration but `master_process off` (one process, see below) |
//! | `hoptrace-http` (and the other traced hoptrace scenarios, e.g. `hoptrace-http-hyper`) | both agents, stopped and started again under valgrind in the scenario's mode |

use super::confgen;
use super::confgen::NginxRole;
use super::loadgen::LoadReport;
use super::run::{loopback, nginx_custom, nginx_name, BenchLab, Proxy};
use super::{BenchOptions, Scenario, APP_PORT};
use crate::{Agent, Pod};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::callgrind_control::{control, dump, kill_cgroup};
pub use super::callgrind_control::{parse_ir, valgrind_prefix};
pub use super::callgrind_report::markdown;

/// The client-side nginx of the callgrind phase (client pod loopback).
pub const CG_SIDECAR_OUT_PORT: u16 = 4240;
/// The server-side nginx of the callgrind phase (server pod address).
pub const CG_SIDECAR_IN_PORT: u16 = 4243;
/// Everything under valgrind starts and runs ~50× slower than natively.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the spans of one window.
const SPAN_TIMEOUT: Duration = Duration::from_secs(600);

/// Settings of the callgrind phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallgrindOptions {
    /// Requests of the first counted window (the second has twice as many).
    pub requests: u64,
    /// Requests before counting (connections, pools, valgrind's code translation).
    pub warmup: u64,
    /// Keep-alive connections of the closed-loop client.
    pub conns: u32,
    /// Every request with a path of its own (`labapp load --distinct-paths`).
    #[serde(default)]
    pub distinct_paths: bool,
    /// Those paths with an id in one route (`labapp load --id-paths`: `/p/<i>`).
    #[serde(default)]
    pub id_paths: bool,
}

impl Default for CallgrindOptions {
    fn default() -> CallgrindOptions {
        CallgrindOptions {
            requests: 2000,
            warmup: 300,
            conns: 4,
            distinct_paths: false,
            id_paths: false,
        }
    }
}

/// Instructions of one process in one window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcessIr {
    /// What it is (`nginx out worker`, `agent node-1`).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Instructions executed in the window (all its threads).
    pub ir: u64,
    /// The dump file (`callgrind_annotate FILE` lists the functions).
    pub file: PathBuf,
}

/// One counted window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Window {
    /// Requests answered (exactly the requests asked for, else the phase fails).
    pub requests: u64,
    /// Instructions of all the scenario's proxies in the window.
    pub ir: u64,
    /// `ir / requests`.
    pub ir_per_request: f64,
    /// Spans the receiver got in the window (hoptrace: 4 per request).
    pub spans: u64,
    /// Wall time from zeroing to dumping, seconds.
    pub wall_s: f64,
    /// Per process.
    pub processes: Vec<ProcessIr>,
}

/// One scenario under callgrind.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CgScenario {
    /// Scenario name.
    pub scenario: String,
    /// The N and 2N windows.
    pub windows: Vec<Window>,
    /// Instructions per request over both windows: `Σ ir / Σ requests`.
    pub ir_per_request: f64,
    /// `ir(2N) / ir(N)`: 2.0 when the count is all per request.
    pub linearity: f64,
    /// Seconds from starting the processes under valgrind to the end of the warm-up.
    pub startup_s: f64,
}

/// What the callgrind phase measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CallgrindResult {
    /// `valgrind --version`.
    pub valgrind: String,
    /// Settings.
    pub requests: u64,
    /// Warm-up requests.
    pub warmup: u64,
    /// Client connections.
    pub conns: u32,
    /// Every request had a path of its own.
    #[serde(default)]
    pub distinct_paths: bool,
    /// Those paths were ids in one route.
    #[serde(default)]
    pub id_paths: bool,
    /// Per scenario.
    pub scenarios: Vec<CgScenario>,
    /// `hoptrace-http / sidecar` instructions per request, when both were measured.
    pub ratio: Option<f64>,
    /// Scenarios that could not be measured, with the reason.
    pub failures: Vec<String>,
    /// Wall time of the phase, seconds.
    pub elapsed_s: f64,
}

/// Runs the callgrind phase for the scenarios of `opts` it supports (`sidecar` and
/// the traced hoptrace ones, e.g. `hoptrace-http`, `hoptrace-http-hyper`; `sidecar`
/// and `hoptrace-http` when `opts` names none of them). Replaces the scenario agents of
/// `bl` with agents under valgrind (they stay so until the lab is dropped).
pub fn run(
    bl: &mut BenchLab,
    opts: &BenchOptions,
    cg: &CallgrindOptions,
    out_dir: &Path,
) -> Result<CallgrindResult> {
    let started = Instant::now();
    let version = Command::new("valgrind")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .context("--callgrind needs valgrind (`cargo xtask setup` installs it)")?;
    let dir = out_dir.join("callgrind");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut scenarios: Vec<Scenario> = opts
        .scenarios
        .iter()
        .copied()
        .filter(|s| *s == Scenario::Sidecar || s.is_traced())
        .collect();
    if scenarios.is_empty() {
        scenarios = vec![Scenario::Sidecar, Scenario::HoptraceHttp];
    }
    let mut result = CallgrindResult {
        valgrind: version,
        requests: cg.requests,
        warmup: cg.warmup,
        conns: cg.conns,
        distinct_paths: cg.distinct_paths,
        id_paths: cg.id_paths,
        ..Default::default()
    };
    for s in scenarios {
        println!("bench: callgrind, {} (everything ~50x slower)", s.name());
        let measured = match s {
            Scenario::Sidecar => sidecar(bl, cg, &dir),
            _ => hoptrace(bl, s, cg, &dir),
        };
        match measured {
            Ok(x) => {
                println!(
                    "bench: callgrind {}: {:.0} instructions per request (2N/N = {:.3})",
                    s.name(),
                    x.ir_per_request,
                    x.linearity
                );
                result.scenarios.push(x);
            }
            Err(e) => {
                eprintln!("bench: callgrind {}: {e:#}", s.name());
                result.failures.push(format!("{}: {e:#}", s.name()));
            }
        }
    }
    let per_req = |name: &str| {
        result
            .scenarios
            .iter()
            .find(|x| x.scenario == name)
            .map(|x| x.ir_per_request)
    };
    result.ratio = match (per_req("hoptrace-http"), per_req("sidecar")) {
        (Some(h), Some(s)) if s > 0.0 => Some(h / s),
        _ => None,
    };
    result.elapsed_s = started.elapsed().as_secs_f64();
    Ok(result)
}

/// The sidecar model: a second pair of nginx under valgrind.
fn sidecar(bl: &BenchLab, cg: &CallgrindOptions, dir: &Path) -> Result<CgScenario> {
    let started = Instant::now();
    let prefix = valgrind_prefix(dir, "sidecar");
    let tmp = bl.lab.tmp_dir().to_owned();
    let nginx = |pod: &Pod, dir: &str, role: NginxRole, port: u16| {
        let dir = tmp.join(dir);
        // One process: valgrind's gdbserver (callgrind_control) cannot reach the
        // children a process forks without exec'ing (nginx's workers), and a worker
        // runs the same code per request as the single process does.
        let conf = confgen::nginx_conf(&dir, role)
            .replace("\nmaster_process on;\n", "\nmaster_process off;\n");
        if !conf.contains("\nmaster_process off;\n") {
            bail!("the nginx configuration no longer says `master_process on`");
        }
        nginx_custom(
            pod,
            &dir,
            &nginx_name(pod, role),
            &conf,
            port,
            &prefix,
            START_TIMEOUT,
        )
    };
    let inner = nginx(
        &bl.server,
        "cg-nginx-in",
        NginxRole::Proxy {
            listen: bl.server.addr(CG_SIDECAR_IN_PORT),
            upstream: loopback(APP_PORT),
            pinned: false,
        },
        CG_SIDECAR_IN_PORT,
    )?;
    let outer = nginx(
        &bl.client,
        "cg-nginx-out",
        NginxRole::Proxy {
            listen: loopback(CG_SIDECAR_OUT_PORT),
            upstream: bl.server.addr(CG_SIDECAR_IN_PORT),
            pinned: false,
        },
        CG_SIDECAR_OUT_PORT,
    )?;
    let target = Target {
        bl,
        pod: &bl.client,
        addr: loopback(CG_SIDECAR_OUT_PORT),
        traced: false,
    };
    let measured = (|| {
        target.warm_up(cg)?;
        let startup_s = started.elapsed().as_secs_f64();
        let procs = || -> Result<Vec<(String, u32)>> {
            let mut v = nginx_pids(&outer, "nginx out")?;
            v.extend(nginx_pids(&inner, "nginx in")?);
            Ok(v)
        };
        measure_windows(&target, cg, dir, "sidecar", &procs, startup_s)
    })();
    for p in [&outer, &inner] {
        kill_cgroup(&p.cgroup);
    }
    measured.map(|mut x| {
        x.scenario = Scenario::Sidecar.name().into();
        x
    })
}

/// Both agents, restarted under valgrind in the mode of scenario `s`.
fn hoptrace(
    bl: &mut BenchLab,
    s: Scenario,
    cg: &CallgrindOptions,
    dir: &Path,
) -> Result<CgScenario> {
    let started = Instant::now();
    let tag = s.name();
    let prefix = valgrind_prefix(dir, tag);
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    // The scenario's mode, spelled out as BenchLab::set_agent_mode does.
    let mode = s.agent_mode();
    let mut args = bl.agent_args();
    args.extend(mode.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if mode.propagation != bl.agent_mode.propagation {
        bl.set_propagation(mode.propagation)?;
    }
    for i in 0..bl.agents.len() {
        let node = bl.agents[i].0.node().to_owned();
        bl.agents[i].0.stop()?;
        let file = bl.lab.workloads_path(&node);
        bl.agents[i].0 = Agent::start_wrapped(&bl.lab, &node, &file, &prefix, &args)
            .with_context(|| format!("starting the agent of {node} under valgrind"))?;
    }
    bl.agent_mode = mode;
    for (agent, _) in &mut bl.agents {
        agent.wait_ready(START_TIMEOUT).with_context(|| {
            format!(
                "the agent of {} under valgrind (its valgrind log is in {})",
                agent.node(),
                dir.display()
            )
        })?;
    }
    let bl: &BenchLab = bl;
    let target = Target {
        bl,
        pod: &bl.hclient,
        addr: bl.hserver.addr(APP_PORT),
        traced: true,
    };
    target.warm_up(cg)?;
    let startup_s = started.elapsed().as_secs_f64();
    let procs = || -> Result<Vec<(String, u32)>> {
        bl.agents
            .iter()
            .map(|(a, _)| {
                let pid = a
                    .pid()
                    .with_context(|| format!("the agent of {} is not running", a.node()))?;
                Ok((format!("agent {}", a.node()), pid))
            })
            .collect()
    };
    let mut x = measure_windows(&target, cg, dir, tag, &procs, startup_s)?;
    x.scenario = tag.into();
    Ok(x)
}

/// Where the load goes.
struct Target<'a> {
    bl: &'a BenchLab,
    pod: &'a Pod,
    addr: SocketAddr,
    traced: bool,
}

impl Target<'_> {
    /// `n` requests, closed loop on `conns` connections, each with its own sampled
    /// `traceparent`.
    fn drive(&self, n: u64, cg: &CallgrindOptions) -> Result<LoadReport> {
        let seed = u64::from(rand::random::<u32>()) << 16;
        let mut args = vec![
            "load".to_string(),
            "--addr".into(),
            self.addr.to_string(),
            "--proto".into(),
            "http".into(),
            "--duration-ms".into(),
            "3600000".into(),
            "--conns".into(),
            cg.conns.to_string(),
            "--requests".into(),
            n.to_string(),
            "--trace-seed".into(),
            seed.to_string(),
        ];
        if cg.id_paths {
            args.push("--id-paths".into());
        } else if cg.distinct_paths {
            args.push("--distinct-paths".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self
            .pod
            .run(
                self.bl.labapp.command(&args),
                START_TIMEOUT + Duration::from_millis(50 * n),
            )?
            .ensure_success()
            .context("labapp load")?;
        let line = out
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("labapp load printed no report: {}", out.stderr.trim()))?;
        serde_json::from_str(line).with_context(|| format!("bad load report {line}"))
    }

    /// Warm-up requests (errors tolerated once: valgrind translates code on first use),
    /// then, when traced, waits for their spans.
    fn warm_up(&self, cg: &CallgrindOptions) -> Result<()> {
        let spans0 = self.bl.otlp.span_count() as u64;
        let mut answered = 0;
        for attempt in 1..=2 {
            let r = self.drive(cg.warmup, cg)?;
            answered += r.requests;
            if r.errors == 0 {
                break;
            }
            if attempt == 2 {
                bail!("warm-up: {} errors (first: {:?})", r.errors, r.first_error);
            }
        }
        if self.traced {
            self.wait_spans(spans0 + 4 * answered)?;
        }
        Ok(())
    }

    /// Waits until the receiver holds `target` spans, then half a second more (the
    /// export call's answer reaches the agent).
    fn wait_spans(&self, target: u64) -> Result<()> {
        let start = Instant::now();
        loop {
            let n = self.bl.otlp.span_count() as u64;
            if n >= target {
                std::thread::sleep(Duration::from_millis(500));
                return Ok(());
            }
            if start.elapsed() > SPAN_TIMEOUT {
                bail!("{n} of {target} spans received after {SPAN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The N and 2N windows: zero, drive, (spans), dump, parse.
fn measure_windows(
    t: &Target,
    cg: &CallgrindOptions,
    dir: &Path,
    tag: &str,
    procs: &dyn Fn() -> Result<Vec<(String, u32)>>,
    startup_s: f64,
) -> Result<CgScenario> {
    let mut windows = Vec::new();
    for n in [cg.requests, 2 * cg.requests] {
        let procs = procs()?;
        for (_, pid) in &procs {
            control(*pid, "--zero")?;
        }
        let (spans0, start) = (t.bl.otlp.span_count() as u64, Instant::now());
        let r = t.drive(n, cg)?;
        if r.errors > 0 || r.requests != n {
            bail!(
                "{} of {n} requests answered, {} errors (first: {:?})",
                r.requests,
                r.errors,
                r.first_error
            );
        }
        if t.traced {
            t.wait_spans(spans0 + 4 * n)?;
        }
        let mut w = Window {
            requests: n,
            spans: t.bl.otlp.span_count() as u64 - spans0,
            ..Default::default()
        };
        for (name, pid) in procs {
            let (ir, file) = dump(dir, tag, pid)?;
            w.ir += ir;
            w.processes.push(ProcessIr {
                name,
                pid,
                ir,
                file,
            });
        }
        w.wall_s = start.elapsed().as_secs_f64();
        w.ir_per_request = w.ir as f64 / n as f64;
        windows.push(w);
    }
    let ir: u64 = windows.iter().map(|w| w.ir).sum();
    let requests: u64 = windows.iter().map(|w| w.requests).sum();
    Ok(CgScenario {
        scenario: String::new(),
        linearity: windows[1].ir as f64 / (windows[0].ir as f64).max(1.0),
        ir_per_request: ir as f64 / requests.max(1) as f64,
        windows,
        startup_s,
    })
}

/// Every process of an nginx (master and workers), from its cgroup.
fn nginx_pids(p: &Proxy, name: &str) -> Result<Vec<(String, u32)>> {
    let master = p.process.pid();
    let procs = std::fs::read_to_string(p.cgroup.join("cgroup.procs"))?;
    Ok(procs
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .map(|pid| {
            let role = if pid == master { "" } else { " (forked)" };
            (format!("{name}{role}"), pid)
        })
        .collect())
}
