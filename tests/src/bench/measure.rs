//! Measuring one scenario in one round: saturation, then the fixed rate, each with the
//! proxies' CPU time per request; for hoptrace-http, the span accounting of each run.
//!
//! CPU time is read from cgroups (`cpu.stat` `usage_usec`: user + system time of
//! every process and thread in them, with microsecond resolution): each third-party
//! proxy runs in a cgroup of its own below its pod's, each agent in its own.
//!
//! The CPU window of a traced run lasts until the collector has received every span
//! (the receiver's count is polled in-process; the agents' `/metrics` are scraped once
//! at each end, not while measuring), so the agents' export work is charged to the
//! requests that caused it.

use super::loadgen::LoadReport;
use super::procstat;
use super::run::BenchLab;
use super::stats::{Sample, SpanCheck};
use super::wrk::WrkReport;
use super::{confgen, BenchOptions, Scenario, Workload, WRK_TRACEPARENT};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the receiver's span count must stay unchanged to call an export finished
/// (three times the agent's 500 ms flush interval).
const QUIET: Duration = Duration::from_millis(1500);
/// Longest wait for the spans of one run.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// One saturation run.
struct Saturation {
    requests: u64,
    rps: f64,
    errors: u64,
    /// Requests possibly in flight when the generator stopped (wrk's connections plus
    /// its socket errors): they may or may not have produced spans.
    in_flight_max: u64,
}

/// Cumulative span counters of both agents and the receiver.
#[derive(Clone, Copy, Default)]
struct Spans {
    exported: u64,
    dropped: u64,
    failed: u64,
    received: u64,
}

/// Runs scenario `s` once, unrecorded, to open connections and fill pools.
pub fn warm_up(bl: &BenchLab, opts: &BenchOptions, s: Scenario) -> Result<()> {
    let short = BenchOptions {
        duration_secs: 1,
        ..opts.clone()
    };
    let sat = saturate(bl, &short, s)?;
    if sat.requests == 0 {
        bail!("warm-up of {}: no request answered", s.name());
    }
    if s.is_traced() {
        wait_received(bl, None);
    }
    Ok(())
}

/// CPU time so far of the proxies' cgroups, of the whole lab (pods and agents), and
/// of this process (the OTLP receiver).
#[derive(Clone, Copy)]
struct Cpu {
    proxies: Duration,
    lab: Duration,
    me: Duration,
    machine: Duration,
}

fn cpu(bl: &BenchLab, cgroups: &[PathBuf]) -> Result<Cpu> {
    let mut proxies = Duration::ZERO;
    for cg in cgroups {
        proxies += procstat::cgroup_cpu(cg)?;
    }
    Ok(Cpu {
        proxies,
        lab: procstat::cgroup_cpu(&bl.lab.cgroup_dir())?,
        me: procstat::process_cpu(),
        machine: procstat::machine_cpu()?.0,
    })
}

/// Measures scenario `s` (round `round`).
pub fn measure(bl: &BenchLab, opts: &BenchOptions, s: Scenario, round: u32) -> Result<Sample> {
    let pids = procstat::trees(&bl.proxy_roots(s));
    let cgroups = bl.proxy_cgroups(s);
    let traced = s.is_traced();

    let (span0, cpu0) = (spans(bl, traced)?, cpu(bl, &cgroups)?);
    let counts0 = procstat::thread_counts(&pids);
    let sat = saturate(bl, opts, s)?;
    if traced {
        wait_received(bl, None);
    }
    let cpu1 = cpu(bl, &cgroups)?;
    let counts1 = procstat::thread_counts(&pids);
    let span1 = spans(bl, traced)?;

    let seed = (u64::from(round) << 40) | ((s as u64 + 1) << 32) | u64::from(rand::random::<u16>());
    let fixed = {
        // The receiver stands in for a collector elsewhere: at the fixed rate it takes
        // only the CPU time the lab leaves idle, so it delays no request it measures.
        let _idle = bl.otlp.idle_while();
        let fixed = load(bl, opts, s, Some(opts.rate), Some(seed))?;
        if traced {
            wait_received(bl, Some(span1.received + 4 * fixed.requests));
        }
        fixed
    };
    let cpu2 = cpu(bl, &cgroups)?;
    let counts2 = procstat::thread_counts(&pids);
    let span2 = spans(bl, traced)?;

    let per_req = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    let per = |count: u64, n: u64| count as f64 / n.max(1) as f64;
    let (nsat, nfixed) = (sat.requests, fixed.requests);
    let mut sample = Sample {
        scenario: s.name().into(),
        round,
        sat_rps: sat.rps,
        sat_requests: nsat,
        sat_errors: sat.errors,
        sat_cpu_us: per_req(cpu1.proxies - cpu0.proxies, nsat),
        fixed_cpu_us: per_req(cpu2.proxies - cpu1.proxies, nfixed),
        sat_lab_cpu_us: per_req(cpu1.lab - cpu0.lab, nsat),
        fixed_lab_cpu_us: per_req(cpu2.lab - cpu1.lab, nfixed),
        sat_machine_cpu_us: per_req(cpu1.machine.saturating_sub(cpu0.machine), nsat),
        sat_switches: per(counts1.since(counts0).switches, nsat),
        fixed_switches: per(counts2.since(counts1).switches, nfixed),
        sat_faults: per(counts1.since(counts0).faults, nsat),
        fixed_faults: per(counts2.since(counts1).faults, nfixed),
        fixed_migrations: per(counts2.since(counts1).migrations, nfixed),
        proxy_pss: procstat::pss(&pids),
        proxy_rss: pids.iter().filter_map(|&p| procstat::rss(p).ok()).sum(),
        fixed,
        ..Default::default()
    };
    if traced {
        sample.collector_cpu_us = Some(per_req(cpu2.me - cpu0.me, nsat + nfixed));
        sample.spans = vec![
            check("saturation", nsat, sat.in_flight_max, span0, span1),
            check("fixed", nfixed, sample.fixed.errors, span1, span2),
        ];
    }
    Ok(sample)
}

fn check(phase: &str, requests: u64, uncertain: u64, a: Spans, b: Spans) -> SpanCheck {
    SpanCheck {
        phase: phase.into(),
        requests,
        expected_min: 4 * requests,
        expected_max: 4 * (requests + uncertain),
        exported: b.exported - a.exported,
        received: b.received - a.received,
        dropped: b.dropped - a.dropped,
        export_failed: b.failed - a.failed,
    }
}

/// The saturation run of `s`: wrk for HTTP, the closed-loop load generator for TCP.
/// One saturation run of `s` (as in [`measure`], without measuring): the load a
/// profile is taken under. Returns the requests answered.
pub fn saturate_only(bl: &BenchLab, opts: &BenchOptions, s: Scenario) -> Result<u64> {
    Ok(saturate(bl, opts, s)?.requests)
}

/// One run of `s` at the fixed rate (`opts.rate`), the receiver idle as in the rounds;
/// returns the requests answered.
pub fn fixed_only(bl: &BenchLab, opts: &BenchOptions, s: Scenario) -> Result<u64> {
    let _idle = bl.otlp.idle_while();
    Ok(load(bl, opts, s, Some(opts.rate), None)?.requests)
}

fn saturate(bl: &BenchLab, opts: &BenchOptions, s: Scenario) -> Result<Saturation> {
    let (pod, addr) = bl.route(s);
    match s.workload() {
        Workload::Http => {
            let url = format!("http://{addr}/");
            let mut cmd = Command::new("wrk");
            cmd.args(confgen::wrk_args(
                &url,
                opts.connections,
                opts.duration_secs,
                &format!("traceparent: {WRK_TRACEPARENT}"),
            ));
            let out = pod
                .run(cmd, Duration::from_secs(opts.duration_secs + 60))?
                .ensure_success()
                .with_context(|| format!("wrk against {url} ({})", s.name()))?;
            let r = WrkReport::parse(&out.stdout)?;
            Ok(Saturation {
                requests: r.requests,
                rps: r.rps,
                errors: r.errors(),
                in_flight_max: u64::from(opts.connections) + r.socket_errors,
            })
        }
        Workload::Tcp => {
            let r = load(bl, opts, s, None, None)?;
            Ok(Saturation {
                requests: r.requests,
                rps: r.rps,
                errors: r.errors,
                in_flight_max: r.errors,
            })
        }
    }
}

/// `labapp load` in the scenario's client pod: open loop at `rate`, else closed loop
/// with `opts.connections`.
fn load(
    bl: &BenchLab,
    opts: &BenchOptions,
    s: Scenario,
    rate: Option<u32>,
    seed: Option<u64>,
) -> Result<LoadReport> {
    let (pod, addr) = bl.route(s);
    let args = load_args(addr, s.workload(), opts, rate, seed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pod
        .run(
            bl.labapp.command(&args),
            Duration::from_secs(opts.duration_secs + 60),
        )?
        .ensure_success()
        .with_context(|| format!("labapp load ({})", s.name()))?;
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("labapp load printed no report: {}", out.stderr.trim()))?;
    serde_json::from_str(line).with_context(|| format!("bad load report {line}"))
}

/// Arguments of `labapp load`.
pub fn load_args(
    addr: SocketAddr,
    workload: Workload,
    opts: &BenchOptions,
    rate: Option<u32>,
    seed: Option<u64>,
) -> Vec<String> {
    let proto = match workload {
        Workload::Http => "http",
        Workload::Tcp => "tcp",
    };
    let conns = if rate.is_some() {
        opts.rate_connections
    } else {
        opts.connections
    };
    let mut v: Vec<String> = vec![
        "load".into(),
        "--addr".into(),
        addr.to_string(),
        "--proto".into(),
        proto.into(),
        "--duration-ms".into(),
        (opts.duration_secs * 1000).to_string(),
        "--conns".into(),
        conns.to_string(),
    ];
    if let Some(r) = rate {
        v.extend(["--rate".into(), r.to_string()]);
    }
    if let Some(s) = seed {
        v.extend(["--trace-seed".into(), s.to_string()]);
    }
    v
}

/// The agents' span counters (scraped) and the receiver's count; zeros when not `traced`.
fn spans(bl: &BenchLab, traced: bool) -> Result<Spans> {
    let mut s = Spans::default();
    if !traced {
        return Ok(s);
    }
    for (agent, _) in &bl.agents {
        let m = agent.metrics()?;
        s.exported += m.value("hoptrace_spans_exported_total", &[]) as u64;
        s.dropped += m.value("hoptrace_spans_dropped_total", &[]) as u64;
        s.failed += m.value("hoptrace_spans_export_failed_total", &[]) as u64;
    }
    s.received = bl.otlp.span_count() as u64;
    Ok(s)
}

/// Waits until the receiver's span count reached `target` (if given) and then stays
/// unchanged for a third of [`QUIET`], or stays unchanged for [`QUIET`] anyway, or
/// [`FLUSH_TIMEOUT`] passes (the span check then reports what is missing).
fn wait_received(bl: &BenchLab, target: Option<u64>) {
    let start = Instant::now();
    let (mut last, mut since) = (bl.otlp.span_count() as u64, Instant::now());
    while start.elapsed() < FLUSH_TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
        let now = bl.otlp.span_count() as u64;
        if now != last {
            (last, since) = (now, Instant::now());
            continue;
        }
        let reached = target.is_some_and(|t| now >= t);
        if since.elapsed() >= QUIET || (reached && since.elapsed() >= QUIET / 3) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_arguments() {
        let opts = BenchOptions::full();
        let a = load_args(
            "10.1.2.3:7000".parse().expect("addr"),
            Workload::Tcp,
            &opts,
            None,
            None,
        );
        assert_eq!(
            a.join(" "),
            "load --addr 10.1.2.3:7000 --proto tcp --duration-ms 5000 --conns 32"
        );
        let a = load_args(
            "10.1.2.3:80".parse().expect("addr"),
            Workload::Http,
            &opts,
            Some(1000),
            Some(9),
        );
        assert!(a
            .join(" ")
            .ends_with("--conns 16 --rate 1000 --trace-seed 9"));
        let c = check(
            "fixed",
            10,
            0,
            Spans::default(),
            Spans {
                exported: 40,
                received: 40,
                ..Default::default()
            },
        );
        assert!(c.ok());
    }
}
