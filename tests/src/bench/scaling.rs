//! `cargo xtask bench --scaling`: one agent serving many pods (issue 10, item 6).
//!
//! A node of its own (`node-scale`) with up to 50 client pods, all enrolled in one
//! agent, and a server node (`node-srv`, not enrolled) with two server pods running
//! the bench's nginx app. Each client pod runs its own `labapp load` (every request
//! with a sampled `traceparent`), to server pod `i mod 2`. The agent serves the
//! outbound leg of every request (2 spans each; the servers' node has no agent).
//!
//! - **Scaling**: 1, 10 and 50 pods sending at once, each closed loop on
//!   `conns_per_pod` connections for the run's duration. Total throughput, the
//!   agent's CPU (its cgroup) per request, latency (median of the pods' p50, median
//!   and worst of their p99), and the spread of the pods' rates.
//! - **Fairness under overload**: `fairness_pods` pods; `quiet` ones (all but one)
//!   send at a modest fixed rate (open loop), first alone, then while the remaining
//!   one floods (closed loop on `flood_conns` connections). Each quiet pod's achieved
//!   share of its offered rate and its p99, with and without the flooder; Jain's
//!   fairness index over the shares.

use super::confgen;
use super::confgen::NginxRole;
use super::loadgen::LoadReport;
use super::run::{nginx_custom, nginx_name, BenchLab, Proxy};
use super::{procstat, stats, APP_PORT};
use crate::{Agent, Pod};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub use super::scaling_report::markdown;

const CLIENT_NODE: &str = "node-scale";
const SERVER_NODE: &str = "node-srv";
const SERVERS: usize = 2;

/// Settings of the scaling phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScalingOptions {
    /// Pod counts of the scaling table.
    pub pods: Vec<u32>,
    /// Connections of each pod's closed-loop client.
    pub conns_per_pod: u32,
    /// Seconds of each run.
    pub duration_secs: u64,
    /// Pods of the fairness runs (one floods, the others are quiet).
    pub fairness_pods: u32,
    /// Requests per second each quiet pod offers.
    pub quiet_rate: u32,
    /// Connections of the flooding pod.
    pub flood_conns: u32,
}

impl Default for ScalingOptions {
    fn default() -> ScalingOptions {
        ScalingOptions {
            pods: vec![1, 10, 50],
            conns_per_pod: 2,
            duration_secs: 5,
            fairness_pods: 10,
            quiet_rate: 100,
            flood_conns: 32,
        }
    }
}

/// One pod's load in one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodLoad {
    /// The pod.
    pub pod: String,
    /// What `labapp load` reported.
    pub report: LoadReport,
}

/// Spans of one scaling run (2 per request: the outbound leg's two spans).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct SpanCount {
    /// 2 × requests.
    pub expected: u64,
    /// What the receiver got.
    pub received: u64,
    /// The agent's `hoptrace_spans_exported_total` delta.
    pub exported: u64,
    /// The agent's `hoptrace_spans_dropped_total` delta (queue full).
    pub dropped: u64,
}

/// What [`ScaleLab::measured`] returns.
struct Measured {
    pods: Vec<PodLoad>,
    /// Agent CPU from the start until the spans arrived.
    cpu: Duration,
    /// Seconds the load ran.
    load_s: f64,
    spans: SpanCount,
}

/// One row of the scaling table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScalePoint {
    /// Pods sending.
    pub pods: u32,
    /// Requests answered, all pods.
    pub requests: u64,
    /// Failed requests, all pods.
    pub errors: u64,
    /// Sum of the pods' rates, requests per second.
    pub total_rps: f64,
    /// Agent CPU (user+system, its cgroup) per request, µs, until every span arrived.
    pub agent_cpu_us: f64,
    /// Agent CPU time / the load's wall time.
    pub agent_cpus: f64,
    /// Median of the pods' p50, µs.
    pub p50_us: f64,
    /// Median of the pods' p99, µs.
    pub p99_us: f64,
    /// Worst pod's p99, µs.
    pub p99_max_us: f64,
    /// Slowest pod's rate / median pod's rate.
    pub min_share: f64,
    /// Jain's index over the pods' rates (1 = all equal).
    pub jain: f64,
    /// Spans of the run.
    pub spans: SpanCount,
    /// Per pod.
    pub per_pod: Vec<PodLoad>,
}

/// One fairness run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FairnessRun {
    /// Whether the flooding pod was sending.
    pub flooder: bool,
    /// The flooding pod's load, when present.
    pub flood: Option<PodLoad>,
    /// The quiet pods' loads.
    pub quiet: Vec<PodLoad>,
    /// Each quiet pod's achieved rate / offered rate, in pod order.
    pub shares: Vec<f64>,
    /// Jain's index over `shares`.
    pub jain: f64,
    /// Smallest share.
    pub min_share: f64,
    /// Median of the quiet pods' p99, µs.
    pub p99_us: f64,
    /// Worst quiet pod's p99, µs.
    pub p99_max_us: f64,
}

/// What the scaling phase measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScalingResult {
    /// Settings.
    pub options: Option<ScalingOptions>,
    /// The scaling table.
    pub points: Vec<ScalePoint>,
    /// Without, then with the flooder.
    pub fairness: Vec<FairnessRun>,
    /// Wall time of the phase, seconds.
    pub elapsed_s: f64,
}

/// Jain's fairness index `(Σx)² / (n Σx²)`: 1 when all equal, 1/n when one has all.
pub fn jain(xs: &[f64]) -> f64 {
    let (sum, sq) = xs.iter().fold((0.0, 0.0), |(s, q), x| (s + x, q + x * x));
    if xs.is_empty() || sq == 0.0 {
        return f64::NAN;
    }
    sum * sum / (xs.len() as f64 * sq)
}

/// Client pods, servers and the agent of the phase.
struct ScaleLab<'a> {
    bl: &'a BenchLab,
    clients: Vec<Pod>,
    servers: Vec<Pod>,
    agent: Agent,
    _apps: Vec<Proxy>,
}

/// Runs the scaling phase in `bl`'s lab (two nodes of its own).
pub fn run(bl: &mut BenchLab, o: &ScalingOptions) -> Result<ScalingResult> {
    let started = Instant::now();
    let max = o
        .pods
        .iter()
        .copied()
        .chain([o.fairness_pods])
        .max()
        .unwrap_or(1);
    if max == 0 || max > 200 || o.fairness_pods < 2 {
        bail!("scaling: pod counts must be 1..=200 and the fairness runs need 2 pods");
    }
    bl.lab.add_node(CLIENT_NODE)?;
    bl.lab.add_node(SERVER_NODE)?;
    let mut clients = Vec::new();
    for i in 1..=max {
        clients.push(bl.lab.add_pod(CLIENT_NODE, &format!("sc{i}"))?);
    }
    let (mut servers, mut apps) = (Vec::new(), Vec::new());
    for i in 1..=SERVERS {
        let pod = bl.lab.add_pod(SERVER_NODE, &format!("ss{i}"))?;
        let dir = bl.lab.tmp_dir().join(format!("nginx-app-ss{i}"));
        let role = NginxRole::App { port: APP_PORT };
        apps.push(nginx_custom(
            &pod,
            &dir,
            &nginx_name(&pod, role),
            &confgen::nginx_conf(&dir, role),
            APP_PORT,
            &[],
            Duration::from_secs(15),
        )?);
        servers.push(pod);
    }
    let names: Vec<&str> = clients.iter().map(|p| p.name.as_str()).collect();
    let file = bl.lab.write_workloads_only(CLIENT_NODE, &names)?;
    let args = bl.agent_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::start_with_args(&bl.lab, CLIENT_NODE, &file, &args)?;
    agent.wait_ready(Duration::from_secs(120))?;
    let sl = ScaleLab {
        bl,
        clients,
        servers,
        agent,
        _apps: apps,
    };
    // Pools and connections warm, unrecorded.
    sl.run_loads(&vec![Load::Closed(o.conns_per_pod); max as usize], 1)?;
    sl.wait_spans(None);
    let mut result = ScalingResult {
        options: Some(o.clone()),
        ..Default::default()
    };
    for &n in &o.pods {
        let p = sl.point(o, n)?;
        println!(
            "scaling {n:>3} pods: {:>7.0} rps  agent CPU {:>5.1} µs/req  p50 {:>6.0} µs  p99 {:>7.0} µs  min share {:.2}",
            p.total_rps, p.agent_cpu_us, p.p50_us, p.p99_us, p.min_share
        );
        result.points.push(p);
    }
    for flooder in [false, true] {
        let f = sl.fairness(o, flooder)?;
        println!(
            "fairness, flooder {}: quiet pods' share min {:.3}, Jain {:.3}, p99 median {:.0} µs, worst {:.0} µs{}",
            if flooder { "on " } else { "off" },
            f.min_share,
            f.jain,
            f.p99_us,
            f.p99_max_us,
            f.flood
                .as_ref()
                .map(|l| format!(", flooder {:.0} rps", l.report.rps))
                .unwrap_or_default()
        );
        result.fairness.push(f);
    }
    drop(sl);
    result.elapsed_s = started.elapsed().as_secs_f64();
    Ok(result)
}

/// What one pod sends.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// Closed loop on this many connections.
    Closed(u32),
    /// Open loop at this rate on this many connections.
    Rate(u32, u32),
    /// Nothing.
    Idle,
}

impl ScaleLab<'_> {
    /// Pod `i` runs `loads[i]` for `secs`, all at once; their reports in pod order
    /// (idle pods left out).
    fn run_loads(&self, loads: &[Load], secs: u64) -> Result<Vec<PodLoad>> {
        let mut running = Vec::new();
        for (i, load) in loads.iter().enumerate() {
            let pod = &self.clients[i];
            let server = &self.servers[i % self.servers.len()];
            let (conns, rate) = match *load {
                Load::Closed(c) => (c, None),
                Load::Rate(r, c) => (c, Some(r)),
                Load::Idle => continue,
            };
            let seed = ((i as u64 + 1) << 40) | u64::from(rand::random::<u32>());
            let mut args = vec![
                "load".to_string(),
                "--addr".into(),
                server.addr(APP_PORT).to_string(),
                "--proto".into(),
                "http".into(),
                "--duration-ms".into(),
                (secs * 1000).to_string(),
                "--conns".into(),
                conns.to_string(),
                "--trace-seed".into(),
                seed.to_string(),
            ];
            if let Some(r) = rate {
                args.extend(["--rate".into(), r.to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = self.bl.labapp.command(&args);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            running.push((pod.name.clone(), pod.spawn(cmd)?));
        }
        let mut out = Vec::new();
        for (pod, process) in running {
            let o = process
                .wait_output(Duration::from_secs(secs + 120))?
                .ensure_success()
                .with_context(|| format!("labapp load in {pod}"))?;
            let line = o
                .stdout
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .with_context(|| format!("labapp load in {pod} printed no report"))?;
            let report =
                serde_json::from_str(line).with_context(|| format!("bad load report {line}"))?;
            out.push(PodLoad { pod, report });
        }
        Ok(out)
    }

    /// `loads` with the agent's CPU and the spans accounted.
    fn measured(&self, loads: &[Load], secs: u64) -> Result<Measured> {
        let cgroup = self.bl.lab.agent_cgroup(CLIENT_NODE);
        let counters0 = self.counters()?;
        let (cpu0, spans0, t0) = (
            procstat::cgroup_cpu(&cgroup)?,
            self.bl.otlp.span_count() as u64,
            Instant::now(),
        );
        let pods = self.run_loads(loads, secs)?;
        let load_s = t0.elapsed().as_secs_f64();
        let requests: u64 = pods.iter().map(|p| p.report.requests).sum();
        self.wait_spans(Some(spans0 + 2 * requests));
        let cpu = procstat::cgroup_cpu(&cgroup)? - cpu0;
        let received = self.bl.otlp.span_count() as u64 - spans0;
        let counters1 = self.counters()?;
        Ok(Measured {
            pods,
            cpu,
            load_s,
            spans: SpanCount {
                expected: 2 * requests,
                received,
                exported: counters1.0 - counters0.0,
                dropped: counters1.1 - counters0.1,
            },
        })
    }

    /// The agent's `hoptrace_spans_exported_total` and `_dropped_total`.
    fn counters(&self) -> Result<(u64, u64)> {
        let m = self.agent.metrics()?;
        Ok((
            m.value("hoptrace_spans_exported_total", &[]) as u64,
            m.value("hoptrace_spans_dropped_total", &[]) as u64,
        ))
    }

    /// Waits until the receiver holds `target` spans, or its count stayed unchanged
    /// for 1.5 s (three export intervals), or a minute passed.
    fn wait_spans(&self, target: Option<u64>) {
        let start = Instant::now();
        let (mut last, mut since) = (self.bl.otlp.span_count() as u64, Instant::now());
        while start.elapsed() < Duration::from_secs(60) {
            let now = self.bl.otlp.span_count() as u64;
            if target.is_some_and(|t| now >= t) {
                return;
            }
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= Duration::from_millis(1500) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn point(&self, o: &ScalingOptions, n: u32) -> Result<ScalePoint> {
        let loads = vec![Load::Closed(o.conns_per_pod); n as usize];
        let Measured {
            pods,
            cpu,
            load_s,
            spans,
        } = self.measured(&loads, o.duration_secs)?;
        let requests: u64 = pods.iter().map(|p| p.report.requests).sum();
        let rates: Vec<f64> = pods.iter().map(|p| p.report.rps).collect();
        let median_rate = stats::median(rates.iter().copied());
        let min_rate = rates.iter().copied().fold(f64::INFINITY, f64::min);
        Ok(ScalePoint {
            pods: n,
            requests,
            errors: pods.iter().map(|p| p.report.errors).sum(),
            total_rps: rates.iter().sum(),
            agent_cpu_us: cpu.as_secs_f64() * 1e6 / requests.max(1) as f64,
            agent_cpus: cpu.as_secs_f64() / load_s.max(1e-9),
            p50_us: stats::median(pods.iter().map(|p| p.report.p50_us)),
            p99_us: stats::median(pods.iter().map(|p| p.report.p99_us)),
            p99_max_us: pods.iter().map(|p| p.report.p99_us).fold(0.0, f64::max),
            min_share: min_rate / median_rate,
            jain: jain(&rates),
            spans,
            per_pod: pods,
        })
    }

    fn fairness(&self, o: &ScalingOptions, flooder: bool) -> Result<FairnessRun> {
        // Pod 0 floods (or stays silent), the others are quiet.
        let quiet = Load::Rate(o.quiet_rate, 4);
        let mut loads = vec![quiet; o.fairness_pods as usize];
        loads[0] = Load::Closed(o.flood_conns);
        if !flooder {
            loads[0] = Load::Idle;
        }
        let mut pods = self.measured(&loads, o.duration_secs)?.pods;
        let flood = if flooder { Some(pods.remove(0)) } else { None };
        let shares: Vec<f64> = pods
            .iter()
            .map(|p| p.report.rps / f64::from(o.quiet_rate))
            .collect();
        Ok(FairnessRun {
            flooder,
            flood,
            jain: jain(&shares),
            min_share: shares.iter().copied().fold(f64::INFINITY, f64::min),
            p99_us: stats::median(pods.iter().map(|p| p.report.p99_us)),
            p99_max_us: pods.iter().map(|p| p.report.p99_us).fold(0.0, f64::max),
            shares,
            quiet: pods,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index() {
        assert!((jain(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert!((jain(&[2.0, 1.0]) - 0.9).abs() < 1e-12);
        assert!(jain(&[]).is_nan());
    }
}
