//! `cargo xtask bench`: hoptrace against a direct path, the sidecar model (two nginx)
//! and an L4 relay (haproxy), interleaved in one run in the lab; see
//! `hoptrace_tests::bench` and docs/BENCH.md.
//!
//! ```text
//! lab-bench [--rounds N] [--duration SECS] [--quick] [--same-node] [--connections N]
//!           [--rate RPS] [--mem-pods N] [--scenarios a,b,...] [--nice N] [--out DIR]
//!           [--profile] [--callgrind] [--callgrind-requests N]
//!           [--callgrind-distinct-paths | --callgrind-id-paths] [--scaling]
//!           [--scaling-pods 1,10,50] [--compare-agent PATH]
//! ```
//! `--compare-agent PATH` adds scenarios `hoptrace-http-compare` and
//! `hoptrace-tcp-compare` (for those of `hoptrace-http` and `hoptrace-tcp-userspace`
//! the run has): the same with the agents run from another build (a before/after of
//! two builds in one run).
//! `--rounds 0` skips the interleaved rounds (with `--callgrind`, `--scaling` or `--profile`).
//! Needs root, `HOPTRACE_BIN` (the release agent) and `HOPTRACE_LABAPP`.

use anyhow::{bail, Context as _, Result};
use hoptrace_tests::bench::callgrind::{self, CallgrindOptions};
use hoptrace_tests::bench::report::{self, BenchResult, Host};
use hoptrace_tests::bench::scaling::{self, ScalingOptions};
use hoptrace_tests::bench::{measure, memory, procstat, run::BenchLab, BenchOptions, Scenario};
use hoptrace_tests::LabApp;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("lab-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

/// What the command line asks for besides [`BenchOptions`].
#[derive(Debug)]
struct Extra {
    out: PathBuf,
    profile: bool,
    callgrind: Option<CallgrindOptions>,
    scaling: Option<ScalingOptions>,
}

/// Parses the command line into options, the output dir and the optional phases.
fn parse_args(args: &[String]) -> Result<(BenchOptions, Extra)> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut opts = if quick {
        BenchOptions::quick()
    } else {
        BenchOptions::full()
    };
    let mut x = Extra {
        out: PathBuf::from("target/bench"),
        profile: false,
        callgrind: None,
        scaling: None,
    };
    let mut cg = CallgrindOptions::default();
    if quick {
        (cg.requests, cg.warmup) = (200, 100);
    }
    let mut sc = ScalingOptions::default();
    let (mut want_cg, mut want_sc) = (false, false);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => {}
            "--profile" => x.profile = true,
            "--callgrind" => want_cg = true,
            "--scaling" => want_sc = true,
            "--callgrind-distinct-paths" => {
                cg.distinct_paths = true;
                want_cg = true;
            }
            "--callgrind-id-paths" => {
                (cg.distinct_paths, cg.id_paths) = (true, true);
                want_cg = true;
            }
            "--callgrind-requests" => {
                cg.requests = value()?.parse().context("--callgrind-requests")?;
                want_cg = true;
            }
            "--scaling-pods" => {
                sc.pods = value()?
                    .split(',')
                    .map(|n| n.trim().parse().context("--scaling-pods"))
                    .collect::<Result<_>>()?;
                want_sc = true;
            }
            "--same-node" => opts.same_node = true,
            "--rounds" => opts.rounds = value()?.parse().context("--rounds")?,
            "--duration" => opts.duration_secs = value()?.parse().context("--duration")?,
            "--connections" => opts.connections = value()?.parse().context("--connections")?,
            "--rate" => opts.rate = value()?.parse().context("--rate")?,
            "--mem-pods" => opts.mem_pods = value()?.parse().context("--mem-pods")?,
            "--nice" => opts.nice = Some(value()?.parse().context("--nice")?),
            "--compare-agent" => opts.compare_agent = Some(PathBuf::from(value()?)),
            "--out" => x.out = PathBuf::from(value()?),
            "--scenarios" => {
                opts.scenarios = value()?
                    .split(',')
                    .map(|n| {
                        Scenario::parse(n.trim()).with_context(|| format!("unknown scenario {n:?}"))
                    })
                    .collect::<Result<_>>()?;
            }
            other => bail!("unknown flag {other:?} (see the docs of lab-bench.rs)"),
        }
    }
    if opts.duration_secs == 0 || opts.connections == 0 || opts.rate == 0 {
        bail!("--duration, --connections and --rate must be positive");
    }
    if opts.rounds == 0 && !(want_cg || want_sc || x.profile) {
        bail!("--rounds 0 (no rounds) needs --callgrind, --scaling or --profile");
    }
    if cg.requests == 0 || sc.pods.is_empty() || sc.pods.contains(&0) {
        bail!("--callgrind-requests and --scaling-pods must be positive");
    }
    add_compare_scenarios(&mut opts)?;
    sc.duration_secs = opts.duration_secs;
    x.callgrind = want_cg.then_some(cg);
    x.scaling = want_sc.then_some(sc);
    Ok((opts, x))
}

/// With `--compare-agent`, adds the `-compare` twin of each scenario it has one for
/// (`hoptrace-http`, `hoptrace-tcp-userspace`); without, refuses the twins.
fn add_compare_scenarios(opts: &mut BenchOptions) -> Result<()> {
    let twins: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| s.compared_with().is_some())
        .collect();
    let Some(bin) = &opts.compare_agent else {
        if let Some(s) = twins.iter().find(|s| opts.scenarios.contains(s)) {
            bail!(
                "scenario {} runs another build of the agent: give it with --compare-agent PATH",
                s.name()
            );
        }
        return Ok(());
    };
    if !bin.is_file() {
        bail!(
            "--compare-agent {}: no such file (give the path of another hoptrace build, \
             e.g. target/release/hoptrace copied before a change)",
            bin.display()
        );
    }
    for twin in twins {
        let base = twin.compared_with().filter(|b| opts.scenarios.contains(b));
        if base.is_some() && !opts.scenarios.contains(&twin) {
            opts.scenarios.push(twin);
        }
    }
    if !opts.scenarios.iter().any(|s| s.compared_with().is_some()) {
        bail!("--compare-agent compares hoptrace-http or hoptrace-tcp-userspace: put one in --scenarios");
    }
    Ok(())
}

fn run() -> Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (opts, extra) = parse_args(&args)?;
    let (out_dir, profile) = (extra.out.clone(), extra.profile);
    if !hoptrace_tests::require_root() {
        bail!("the bench needs root (network namespaces, cgroups, eBPF)");
    }
    if let Some(n) = opts.nice {
        // Before any thread or process exists: all of them inherit it.
        // SAFETY: setpriority on this (still single-threaded) process.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } != 0 {
            bail!("--nice {n}: {}", std::io::Error::last_os_error());
        }
    }
    let labapp = LabApp::new(
        std::env::var_os("HOPTRACE_LABAPP")
            .context("HOPTRACE_LABAPP is not set: run `cargo xtask bench`")?,
    );
    let started = Instant::now();
    let mut result = BenchResult {
        date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        commit: std::env::var("HOPTRACE_BENCH_COMMIT").unwrap_or_else(|_| "unknown".into()),
        options: Some(opts.clone()),
        host: Host {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")?
                .trim()
                .into(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            loadavg_before: loadavg(),
            versions: versions()?,
            ..Default::default()
        },
        ..Default::default()
    };
    println!(
        "bench: {} ({}), {}",
        result.date,
        result.commit,
        result.host.versions.join(", ")
    );
    let mut bl = BenchLab::start(&opts, labapp)?;
    println!("bench: lab {} up; warming up every scenario", bl.lab.id());
    let rounds_scenarios: &[Scenario] = if opts.rounds == 0 {
        &[]
    } else {
        &opts.scenarios
    };
    for &s in rounds_scenarios {
        bl.set_agent_mode(s.agent_mode())?;
        measure::warm_up(&bl, &opts, s).with_context(|| format!("warming up {}", s.name()))?;
    }
    let me = [std::process::id()];
    let (busy0, total0) = procstat::machine_cpu()?;
    let (lab0, self0) = (
        procstat::cgroup_cpu(&bl.lab.cgroup_dir())?,
        procstat::cpu_time(&me),
    );
    for round in 1..=opts.rounds {
        for &s in rounds_scenarios {
            // The agents restart between scenarios that run them differently:
            // warm the path up again so neither pays for cold pools.
            if bl.set_agent_mode(s.agent_mode())? {
                measure::warm_up(&bl, &opts, s)
                    .with_context(|| format!("warming up {} again", s.name()))?;
            }
            let x = measure::measure(&bl, &opts, s, round)
                .with_context(|| format!("round {round}, {}", s.name()))?;
            println!(
                "round {round}/{} {:14} {:>7.0} rps  p50 {:>5.0} µs  p99 {:>6.0} µs  CPU {:>5.1} / {:>5.1} µs/req{}",
                opts.rounds,
                s.name(),
                x.sat_rps,
                x.fixed.p50_us,
                x.fixed.p99_us,
                x.sat_cpu_us,
                x.fixed_cpu_us,
                flags(&x)
            );
            result.samples.push(x);
        }
    }
    let (busy1, total1) = procstat::machine_cpu()?;
    let (lab1, self1) = (
        procstat::cgroup_cpu(&bl.lab.cgroup_dir())?,
        procstat::cpu_time(&me),
    );
    let total = (total1 - total0).as_secs_f64().max(1e-9);
    result.host.busy_pct = 100.0 * (busy1 - busy0).as_secs_f64() / total;
    result.host.bench_pct = 100.0 * ((lab1 - lab0) + (self1 - self0)).as_secs_f64() / total;
    result.host.loadavg_after = loadavg();

    // The agents as the rounds left them: measured before the default mode is restored,
    // which restarts them when the last scenario ran them in another mode (a fresh
    // agent's RSS is no figure of memory after load).
    let mut mem = memory::MemoryResult::default();
    if opts.rounds > 0 {
        for (agent, pods) in &bl.agents {
            mem.loaded.push(memory::loaded(agent, *pods)?);
        }
        for ((agent, _), loaded) in bl.agents.iter().zip(&mut mem.loaded) {
            memory::settle(agent, loaded)?;
        }
    }
    bl.set_agent_mode(Default::default())?;
    if profile {
        println!("bench: profiling both agents under one hoptrace-http saturation run");
        let p = hoptrace_tests::bench::profile::run(&bl, &opts, &out_dir)?;
        println!(
            "bench: flame graph {} and top functions {} ({} requests)",
            p.svg.display(),
            p.top.display(),
            p.requests
        );
        print!("{}", std::fs::read_to_string(&p.top).unwrap_or_default());
        println!("bench: profiling both models alike, sidecar and hoptrace-http, interleaved");
        let diff = hoptrace_tests::bench::profile_diff::run(&bl, &opts, &out_dir)?;
        println!("bench: {}", diff.display());
        print!("{}", std::fs::read_to_string(&diff).unwrap_or_default());
    }
    if let Some(sc) = &extra.scaling {
        println!(
            "bench: scaling, one agent serving {:?} pods, then fairness",
            sc.pods
        );
        result.scaling = Some(scaling::run(&mut bl, sc)?);
    }
    if let Some(cg) = &extra.callgrind {
        result.callgrind = Some(callgrind::run(&mut bl, &opts, cg, &out_dir)?);
    }
    if opts.mem_pods > 0 {
        println!(
            "bench: memory phase, a fresh agent enrolling {} pods",
            opts.mem_pods
        );
        let args = bl.agent_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let loaded = std::mem::take(&mut mem.loaded);
        mem = memory::measure(&mut bl.lab, "node-mem", opts.mem_pods, &args)?;
        mem.loaded = loaded;
    }
    result.memory = Some(mem);
    drop(bl);
    result.elapsed_s = started.elapsed().as_secs_f64();
    result.evaluate();

    let md = report::markdown(&result);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    std::fs::write(out_dir.join("report.md"), &md)?;
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    println!("\n{md}");
    println!(
        "bench: wrote {0}/report.md and {0}/report.json ({1:.0} s)",
        out_dir.display(),
        result.elapsed_s
    );
    let complete = result.samples.iter().flat_map(|s| &s.spans).all(|c| c.ok());
    if !complete {
        eprintln!("bench: some traced runs did not export every span (see the report)");
    }
    Ok(complete)
}

fn flags(x: &hoptrace_tests::bench::stats::Sample) -> String {
    let mut f = String::new();
    let errors = x.sat_errors + x.fixed.errors;
    if errors > 0 {
        f.push_str(&format!("  {errors} ERRORS"));
    }
    if x.spans.iter().any(|c| !c.ok()) {
        f.push_str("  SPANS INCOMPLETE");
    }
    f
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

/// `nginx/1.22.1, HAProxy 2.6.12-1+deb12u4, wrk 4.1.0`; fails when one is missing.
fn versions() -> Result<Vec<String>> {
    let mut v = Vec::new();
    for (prog, flag) in [("nginx", "-v"), ("haproxy", "-v"), ("wrk", "-v")] {
        let line = first_line(Command::new(prog).arg(flag));
        if line.is_empty() {
            bail!("{prog} is not installed: run `cargo xtask setup`");
        }
        let short = match prog {
            "nginx" => line.trim_start_matches("nginx version: ").to_owned(),
            "haproxy" => line
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
                .replace(" version", ""),
            _ => line
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        };
        v.push(short);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let a = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let (o, x) = parse_args(&a(
            "--quick --rounds 3 --scenarios direct,hoptrace-tcp --nice -5 --out /x --profile",
        ))
        .expect("parse");
        assert!(x.profile && x.callgrind.is_none() && x.scaling.is_none());
        let out = x.out;
        assert!(!parse_args(&a("--quick")).expect("parse").1.profile);
        let (o0, x) = parse_args(&a("--rounds 0 --callgrind-requests 500 --scaling-pods 1,5"))
            .expect("parse");
        assert_eq!(o0.rounds, 0);
        assert_eq!(x.callgrind.map(|c| c.requests), Some(500));
        assert_eq!(x.scaling.map(|s| s.pods), Some(vec![1, 5]));
        let (_, x) = parse_args(&a("--quick --callgrind")).expect("parse");
        assert_eq!(x.callgrind.map(|c| c.requests), Some(200));
        assert!(parse_args(&a("--rounds 0 --quick")).is_err());
        assert_eq!((o.rounds, o.duration_secs, o.mem_pods), (3, 1, 10));
        assert_eq!(o.scenarios, [Scenario::Direct, Scenario::HoptraceTcp]);
        assert_eq!(o.nice, Some(-5));
        assert_eq!(out, PathBuf::from("/x"));
        assert!(parse_args(&a("--rounds 0")).is_err());
        assert!(parse_args(&a("--scenarios nope")).is_err());
        assert!(parse_args(&a("--bogus")).is_err());
    }

    #[test]
    fn compare_agent_adds_its_scenario() {
        let a = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let compare = Scenario::HoptraceHttpCompare;
        assert!(!parse_args(&[])
            .expect("parse")
            .0
            .scenarios
            .contains(&compare));
        let err = parse_args(&a("--scenarios hoptrace-http-compare")).expect_err("no build");
        assert!(format!("{err:#}").contains("--compare-agent"), "{err:#}");
        let err = parse_args(&a("--compare-agent /nonexistent/hoptrace")).expect_err("no file");
        assert!(format!("{err:#}").contains("no such file"), "{err:#}");
        let exe = std::env::current_exe().expect("exe");
        let flags = format!(
            "--scenarios sidecar,hoptrace-http --compare-agent {}",
            exe.display()
        );
        let (o, _) = parse_args(&a(&flags)).expect("parse");
        assert_eq!(
            o.scenarios,
            [Scenario::Sidecar, Scenario::HoptraceHttp, compare]
        );
        assert_eq!(o.compare_agent, Some(exe.clone()));
        let flags = format!(
            "--scenarios l4-tcp,hoptrace-tcp-userspace --compare-agent {}",
            exe.display()
        );
        let (o, _) = parse_args(&a(&flags)).expect("parse");
        assert_eq!(o.scenarios.last(), Some(&Scenario::HoptraceTcpCompare));
        let flags = format!("--scenarios sidecar --compare-agent {}", exe.display());
        assert!(parse_args(&a(&flags)).is_err());
        let (o, _) = parse_args(&a(&format!("--compare-agent {}", exe.display()))).expect("parse");
        assert!(
            o.scenarios.contains(&compare) && o.scenarios.contains(&Scenario::HoptraceTcpCompare)
        );
    }
}
