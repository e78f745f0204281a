//! The bench's result (JSON) and its report (Markdown, also printed to the terminal).

use super::callgrind::{self, CallgrindResult};
use super::memory::{self, MemoryResult};
use super::scaling::{self, ScalingResult};
use super::stats::{self, Goal, Sample, Summary};
use super::{BenchOptions, Scenario, Workload};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The machine and how busy it was.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Host {
    /// `uname -r`.
    pub kernel: String,
    /// CPUs available.
    pub cpus: usize,
    /// `/proc/loadavg` before the run.
    pub loadavg_before: String,
    /// `/proc/loadavg` after the rounds.
    pub loadavg_after: String,
    /// Busy share of all CPUs during the rounds, percent.
    pub busy_pct: f64,
    /// Of which this bench (the lab's cgroups and this process), percent of all CPUs.
    pub bench_pct: f64,
    /// Versions of the third-party programs.
    pub versions: Vec<String>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BenchResult {
    /// When (UTC).
    pub date: String,
    /// `git describe` of the tree that was measured.
    pub commit: String,
    /// Settings.
    pub options: Option<BenchOptions>,
    /// The machine.
    pub host: Host,
    /// Every measurement.
    pub samples: Vec<Sample>,
    /// Medians per scenario.
    pub summaries: Vec<Summary>,
    /// The memory phase.
    pub memory: Option<MemoryResult>,
    /// DESIGN §6 goals.
    pub goals: Vec<Goal>,
    /// The callgrind phase (`--callgrind`).
    #[serde(default)]
    pub callgrind: Option<CallgrindResult>,
    /// The scaling phase (`--scaling`).
    #[serde(default)]
    pub scaling: Option<ScalingResult>,
    /// Wall time of the whole run, seconds.
    pub elapsed_s: f64,
}

impl BenchResult {
    /// Fills `summaries` and `goals` from `samples` and `memory`.
    pub fn evaluate(&mut self) {
        let order = self
            .options
            .as_ref()
            .map(|o| o.scenarios.clone())
            .unwrap_or_else(|| Scenario::ALL.to_vec());
        self.summaries = order
            .iter()
            .map(|&s| stats::summarize(&self.samples, s))
            .filter(|s| s.rounds > 0)
            .collect();
        self.goals = if self.samples.is_empty() {
            Vec::new()
        } else {
            let same_node = self.options.as_ref().is_some_and(|o| o.same_node);
            stats::scenario_goals(&self.samples, same_node)
        };
        if let Some(m) = &self.memory {
            self.goals.extend(memory::goals(m));
        }
    }
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "–".into()
    }
}

fn rows(r: &BenchResult, w: Workload) -> impl Iterator<Item = &Summary> {
    r.summaries
        .iter()
        .filter(move |s| Scenario::parse(&s.scenario).is_some_and(|x| x.workload() == w))
}

/// Saturation seen per CPU: what the path costs the whole lab, and whether the run
/// had the CPUs (a shared machine gives a run only a share of them).
fn capacity(out: &mut String, r: &BenchResult) {
    let _ = writeln!(
        out,
        "| scenario | lab CPU µs/req | machine CPU µs/req | lab CPUs busy | req per lab CPU-s | × reference |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|");
    for w in [Workload::Http, Workload::Tcp] {
        for s in rows(r, w) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} ({}) |",
                s.scenario,
                num(s.sat_lab_cpu_us, 1),
                num(s.sat_machine_cpu_us, 1),
                num(s.sat_lab_cpus, 2),
                num(s.per_cpu_s, 0),
                num(s.per_cpu_s_vs_ref, 2),
                stats::reference_of(w).name()
            );
        }
    }
}

fn table(out: &mut String, r: &BenchResult, w: Workload) {
    let reference = stats::reference_of(w).name();
    let _ = writeln!(
        out,
        "| scenario | rps | × direct | × {reference} | p50 µs | p99 µs | +p50 µs | proxy CPU µs/req sat | proxy CPU µs/req fixed | PSS MiB | errors |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for s in r
        .summaries
        .iter()
        .filter(|s| Scenario::parse(&s.scenario).is_some_and(|x| x.workload() == w))
    {
        let proxied = !s.scenario.starts_with("direct");
        let cpu = |v: f64| if proxied { num(v, 1) } else { "–".into() };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.scenario,
            num(s.rps, 0),
            num(s.rps_vs_direct, 2),
            num(s.rps_vs_ref, 2),
            num(s.p50_us, 0),
            num(s.p99_us, 0),
            num(s.added_p50_us, 0),
            cpu(s.sat_cpu_us),
            cpu(s.fixed_cpu_us),
            if proxied {
                num(s.pss_mib, 1)
            } else {
                "–".into()
            },
            s.errors
        );
    }
}

/// The Markdown report.
pub fn markdown(r: &BenchResult) -> String {
    let mut out = String::new();
    let o = r.options.clone().unwrap_or_else(BenchOptions::full);
    let _ = writeln!(out, "## hoptrace bench, {} ({})\n", r.date, r.commit);
    let _ = writeln!(
        out,
        "{} rounds, {} s per run, scenarios interleaved; medians over rounds; ratios per round against the same round's baseline. \
         Saturation: {} connections (wrk for HTTP, `labapp load` closed loop for TCP). Fixed rate: {} req/s open loop on up to {} connections, latency from each request's scheduled send time; the OTLP receiver (this process, standing in for a collector elsewhere) runs at `SCHED_IDLE` during these runs. \
         Proxy CPU: user+system time of the proxies' cgroups per answered request (sidecar: both nginx; hoptrace: both agents). Server pods on {}.\n",
        o.rounds,
        o.duration_secs,
        o.connections,
        o.rate,
        o.rate_connections,
        if o.same_node { "the client's node (same-node hop)" } else { "another node (cross-node hop)" }
    );
    if let Some(n) = o.nice {
        let _ = writeln!(out, "Every bench process ran at nice {n}.\n");
    }
    if r.samples.is_empty() {
        let h = &r.host;
        let _ = writeln!(
            out,
            "No interleaved rounds in this run. Machine: {} CPUs, kernel {}; {}. Load average before {}.\n",
            h.cpus,
            h.kernel,
            h.versions.join(", "),
            h.loadavg_before
        );
    } else {
        machine(&mut out, r);
        rounds(&mut out, r);
    }
    if let Some(c) = &r.callgrind {
        out.push_str(&callgrind::markdown(c));
    }
    if let Some(s) = &r.scaling {
        out.push_str(&scaling::markdown(s));
    }
    memory_and_goals(&mut out, r);
    if !r.samples.is_empty() {
        notes(&mut out, r);
    }
    out
}

/// The machine and how busy it was during the rounds.
fn machine(out: &mut String, r: &BenchResult) {
    let h = &r.host;
    let _ = writeln!(
        out,
        "Machine: {} CPUs, kernel {}; {}. During the rounds all CPUs were {:.0}% busy, {:.0}% of them by this bench (lab pods, agents, proxies, collector), so {:.0}% by other work. Load average before {}, after {}.\n",
        h.cpus,
        h.kernel,
        h.versions.join(", "),
        h.busy_pct,
        h.bench_pct,
        (h.busy_pct - h.bench_pct).max(0.0),
        h.loadavg_before,
        h.loadavg_after
    );
}

/// The tables of the interleaved rounds.
fn rounds(out: &mut String, r: &BenchResult) {
    let _ = writeln!(out, "### HTTP/1.1 keep-alive\n");
    table(out, r, Workload::Http);
    let _ = writeln!(out, "\n### Opaque TCP (64-byte ping-pong)\n");
    table(out, r, Workload::Tcp);
    let _ = writeln!(
        out,
        "\n### Per CPU at saturation\n\nLab CPU: user+system time of everything in the lab (client, server, proxies, agents; not the collector) per request. \
         Machine CPU: busy time of all CPUs per request, softirqs and kernel workers included (they move a spliced connection's bytes, \
         which no cgroup's time shows), and whatever else ran: compare it within a run. \
         Lab CPUs busy below {} means the run got only a share of a contended machine, and its rps says more about that share than about the path; \
         requests per lab CPU-second do not depend on it.\n",
        r.host.cpus
    );
    capacity(out, r);
    let _ = writeln!(
        out,
        "\n### Context switches of the proxies per request\n\n\
         Voluntary and involuntary switches of every thread of the proxies (the agents; nginx; haproxy), \
         from `/proc/PID/task/TID/status`, per answered request. At the fixed rate nearly every voluntary \
         switch is a thread going to sleep for want of work, so a woken thread, and its cost: \
         CPU µs per switch is the proxies' CPU at the fixed rate divided by their switches. \
         Minor page faults (`minflt` of `/proc/PID/task/TID/stat`) count pages mapped on first touch or \
         again after the allocator gave them back; CPU moves (`se.nr_migrations` of `.../sched`) count \
         a thread woken on another CPU than the one it last ran on, with cold caches there.\n"
    );
    switches(out, r);
    let other = r.options.as_ref().and_then(|o| o.compare_agent.as_deref());
    out.push_str(&super::compare::markdown(&r.samples, other));
}

/// Context switches per request, and the proxies' CPU per switch at the fixed rate.
fn switches(out: &mut String, r: &BenchResult) {
    let _ = writeln!(
        out,
        "| scenario | switches/req sat | switches/req fixed | proxy CPU µs per switch, fixed | \
         page faults/req sat | page faults/req fixed | CPU moves/req fixed |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|");
    for w in [Workload::Http, Workload::Tcp] {
        for s in rows(r, w).filter(|s| !s.scenario.starts_with("direct")) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s.scenario,
                num(s.sat_switches, 2),
                num(s.fixed_switches, 2),
                num(s.fixed_cpu_us / s.fixed_switches, 1),
                num(s.sat_faults, 3),
                num(s.fixed_faults, 3),
                num(s.fixed_migrations, 2),
            );
        }
    }
}

/// Memory and the DESIGN §6 goals.
fn memory_and_goals(out: &mut String, r: &BenchResult) {
    if let Some(m) = r
        .memory
        .as_ref()
        .filter(|m| m.large_pods > 0 || !m.loaded.is_empty())
    {
        let _ = writeln!(out, "\n### Agent memory\n");
        if m.large_pods > 0 {
            let _ = writeln!(
                out,
                "Fresh agent, no traffic: RSS {:.1} MB with {} pods enrolled, {:.1} MB with {} ({:.1} KB per pod; enrolling took {:.1} s).",
                m.small_rss as f64 / 1e6,
                m.small_pods,
                m.large_rss as f64 / 1e6,
                m.large_pods,
                m.slope_per_pod / 1e3,
                m.enroll_secs
            );
        }
        for a in &m.loaded {
            let _ = writeln!(
                out,
                "Agent {} after the rounds: RSS {:.1} MB right after, {:.1} MB after 2 s of quiet, peak {:.1} MB ({} pod(s) enrolled).",
                a.node,
                a.rss as f64 / 1e6,
                a.settled_rss as f64 / 1e6,
                a.peak_rss as f64 / 1e6,
                a.pods
            );
        }
    }
    if r.goals.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n### DESIGN §6 goals\n");
    let _ = writeln!(
        out,
        "| goal | target | measured | verdict |\n|---|---|---|---|"
    );
    for g in &r.goals {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            g.goal,
            g.target,
            g.measured,
            g.verdict.label()
        );
    }
}

fn notes(out: &mut String, r: &BenchResult) {
    let traced: Vec<&Sample> = r
        .samples
        .iter()
        .filter(|s| s.scenario == "hoptrace-http")
        .collect();
    if !traced.is_empty() {
        let collector = stats::median(traced.iter().filter_map(|s| s.collector_cpu_us));
        let checks: Vec<String> = traced
            .iter()
            .flat_map(|s| s.spans.iter().map(move |c| (s.round, c)))
            .map(|(round, c)| {
                format!(
                    "round {round} {}: {} requests, {} spans exported (expected {}{}), {} received, {} dropped, {} failed{}",
                    c.phase,
                    c.requests,
                    c.exported,
                    c.expected_min,
                    if c.expected_max > c.expected_min { format!("..{}", c.expected_max) } else { String::new() },
                    c.received,
                    c.dropped,
                    c.export_failed,
                    if c.ok() { "" } else { " **INCOMPLETE**" }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "\nSpans (hoptrace-http; the collector is this process, sharing the CPUs, at {} µs CPU per request, not counted above):\n",
            num(collector, 1)
        );
        for c in checks {
            let _ = writeln!(out, "- {c}");
        }
    }
    let _ = writeln!(
        out,
        "\n### Per round: saturation rps / p50 µs at the fixed rate\n"
    );
    let names: Vec<&str> = r.summaries.iter().map(|s| s.scenario.as_str()).collect();
    let _ = writeln!(out, "| round | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|{}", "--:|".repeat(names.len()));
    let rounds = r.samples.iter().map(|s| s.round).max().unwrap_or(0);
    for round in 1..=rounds {
        let cells: Vec<String> = names
            .iter()
            .map(|n| {
                r.samples
                    .iter()
                    .find(|s| s.round == round && s.scenario == *n)
                    .map(|s| format!("{:.0} / {:.0}", s.sat_rps, s.fixed.p50_us))
                    .unwrap_or_else(|| "–".into())
            })
            .collect();
        let _ = writeln!(out, "| {round} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::loadgen::LoadReport;

    #[test]
    fn renders_and_round_trips() {
        let mut r = BenchResult {
            date: "2026-01-01".into(),
            commit: "abc".into(),
            options: Some(BenchOptions {
                scenarios: Scenario::ALL.to_vec(),
                compare_agent: Some("/tmp/before".into()),
                ..BenchOptions::quick()
            }),
            ..Default::default()
        };
        for s in Scenario::ALL {
            r.samples.push(Sample {
                scenario: s.name().into(),
                round: 1,
                sat_rps: 1000.0,
                sat_requests: 1000,
                fixed: LoadReport {
                    requests: 1000,
                    p50_us: 100.0,
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        if let Some(h) = r.samples.iter_mut().find(|x| x.scenario == "hoptrace-http") {
            (h.fixed_cpu_us, h.sat_switches, h.fixed_switches) = (50.0, 0.5, 2.5);
            (h.sat_faults, h.fixed_faults, h.fixed_migrations) = (0.01, 0.25, 1.5);
        }
        r.memory = Some(MemoryResult {
            large_pods: 10,
            small_pods: 2,
            ..Default::default()
        });
        r.evaluate();
        assert_eq!(r.summaries.len(), Scenario::ALL.len());
        let md = markdown(&r);
        assert!(
            md.contains("| hoptrace-http | 1000 | 1.00 | 1.00 | 100 |"),
            "{md}"
        );
        assert!(md.contains("| × l4-tcp |"), "{md}");
        assert!(
            md.contains("| hoptrace-tcp | 0.0 | 0.0 | 0.00 | – | – (l4-tcp) |"),
            "{md}"
        );
        assert!(md.contains("| 1 | 1000 / 100 |"), "{md}");
        assert!(
            md.contains("| hoptrace-http | 0.50 | 2.50 | 20.0 | 0.010 | 0.250 | 1.50 |"),
            "{md}"
        );
        assert!(!md.contains("| direct | 0.00"), "{md}");
        assert!(md.contains("agent RSS per enrolled pod"), "{md}");
        assert!(
            md.contains("| p50 µs, fixed rate | 100.0 | 100.0 | 1.000× |"),
            "{md}"
        );
        let json = serde_json::to_string(&r).expect("json");
        let back: BenchResult = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.samples, r.samples);
    }
}
