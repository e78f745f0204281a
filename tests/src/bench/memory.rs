//! Agent memory against the number of enrolled pods (DESIGN §6: RSS ≤ 30 MB + ≤ 100 KB
//! per enrolled pod), on a node of its own with a fresh agent that carries no traffic:
//! RSS with 2 pods enrolled, then with N, and the slope between them. The agents of
//! the scenario rounds are reported too, after their load: RSS right after the last
//! run, RSS after 2 s of quiet (the figure the budget is checked against: memory the
//! agent keeps once the load is gone, as the idle figures are read), and peak RSS.
//!
//! MB and KB are decimal here (10^6 and 10^3 bytes), as the budget is written.

use super::procstat;
use super::stats::{Goal, Verdict};
use crate::{Agent, Lab};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Fixed part of the budget, bytes.
pub const BASE_BUDGET: f64 = 30e6;
/// Per enrolled pod, bytes.
pub const PER_POD_BUDGET: f64 = 100e3;
/// Pods enrolled in the small measurement.
pub const SMALL: u32 = 2;

/// An agent of the scenario rounds, after the load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadedAgent {
    /// Its node.
    pub node: String,
    /// Pods it had enrolled.
    pub pods: u32,
    /// `VmRSS` right after the rounds, bytes.
    pub rss: u64,
    /// `VmRSS` after 2 s of quiet (median of five readings), bytes.
    #[serde(default)]
    pub settled_rss: u64,
    /// `VmHWM` (peak RSS), bytes.
    pub peak_rss: u64,
}

/// What the memory phase measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemoryResult {
    /// Pods enrolled first ([`SMALL`]).
    pub small_pods: u32,
    /// RSS then, bytes.
    pub small_rss: u64,
    /// Pods enrolled next (0: phase skipped).
    pub large_pods: u32,
    /// RSS then, bytes.
    pub large_rss: u64,
    /// `(large_rss - small_rss) / (large_pods - small_pods)`, bytes.
    pub slope_per_pod: f64,
    /// Seconds from rewriting the workload file to every large pod steered.
    pub enroll_secs: f64,
    /// The scenario agents after their load.
    pub loaded: Vec<LoadedAgent>,
}

fn budget(pods: u32) -> f64 {
    BASE_BUDGET + PER_POD_BUDGET * f64::from(pods)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

/// Adds node `node` with `pods` pods, starts a fresh agent for it (with `args`) and
/// measures its RSS with [`SMALL`] and then all pods enrolled.
pub fn measure(lab: &mut Lab, node: &str, pods: u32, args: &[&str]) -> Result<MemoryResult> {
    if !(SMALL + 1..=250).contains(&pods) {
        bail!("memory phase: pods must be {}..=250, not {pods}", SMALL + 1);
    }
    lab.add_node(node)?;
    let names: Vec<String> = (1..=pods).map(|i| format!("mem{i}")).collect();
    for name in &names {
        lab.add_pod(node, name)?;
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let file = lab.write_workloads_only(node, &refs[..SMALL as usize])?;
    let mut agent = Agent::start_with_args(lab, node, &file, args)?;
    agent.wait_ready(Duration::from_secs(60))?;
    wait_steered(&agent, SMALL, Duration::from_secs(60))?;
    let small_rss = settled_rss(&agent)?;
    let started = Instant::now();
    lab.write_workloads_only(node, &refs)?;
    wait_steered(&agent, pods, Duration::from_secs(300))?;
    let enroll_secs = started.elapsed().as_secs_f64();
    let large_rss = settled_rss(&agent)?;
    Ok(MemoryResult {
        small_pods: SMALL,
        small_rss,
        large_pods: pods,
        large_rss,
        slope_per_pod: (large_rss as f64 - small_rss as f64) / f64::from(pods - SMALL),
        enroll_secs,
        loaded: Vec::new(),
    })
}

fn wait_steered(agent: &Agent, n: u32, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let m = agent.metrics()?;
        let steered = m.value("hoptrace_workloads", &[("state", "steered")]);
        let failed = m.value("hoptrace_workloads", &[("state", "failed")]);
        if failed > 0.0 {
            bail!(
                "memory phase: {failed} pods failed to enroll; see {}",
                agent.log_path().display()
            );
        }
        if steered >= f64::from(n) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("memory phase: {steered} of {n} pods steered after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The median of five RSS readings 200 ms apart, after 2 s of quiet.
fn settled_rss(agent: &Agent) -> Result<u64> {
    let pid = agent
        .pid()
        .context("memory phase: the agent is not running")?;
    std::thread::sleep(Duration::from_secs(2));
    let mut v = Vec::new();
    for _ in 0..5 {
        v.push(procstat::rss(pid)?);
        std::thread::sleep(Duration::from_millis(200));
    }
    v.sort_unstable();
    Ok(v[2])
}

/// RSS and peak RSS of a scenario agent now; [`settle`] adds the RSS after quiet.
pub fn loaded(agent: &Agent, pods: u32) -> Result<LoadedAgent> {
    let pid = agent.pid().context("the agent is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(LoadedAgent {
        node: agent.node().to_owned(),
        pods,
        rss: procstat::kb_field(&status, "VmRSS").unwrap_or(0),
        settled_rss: 0,
        peak_rss: procstat::kb_field(&status, "VmHWM").unwrap_or(0),
    })
}

/// Reads `loaded`'s RSS after 2 s of quiet ([`settled_rss`]).
pub fn settle(agent: &Agent, loaded: &mut LoadedAgent) -> Result<()> {
    loaded.settled_rss = settled_rss(agent)?;
    Ok(())
}

/// The memory goals.
pub fn goals(m: &MemoryResult) -> Vec<Goal> {
    let mut goals = Vec::new();
    if m.large_pods > 0 {
        let (s, l) = (m.small_rss as f64, m.large_rss as f64);
        goals.push(Goal {
            goal: format!("idle agent RSS, {} pods enrolled", m.small_pods),
            target: format!("<= {}", mb(budget(m.small_pods))),
            measured: mb(s),
            verdict: Verdict::of(s, s <= budget(m.small_pods)),
        });
        goals.push(Goal {
            goal: "agent RSS per enrolled pod (slope)".into(),
            target: format!("<= {:.0} KB", PER_POD_BUDGET / 1e3),
            measured: format!("{:.1} KB", m.slope_per_pod / 1e3),
            verdict: Verdict::of(m.slope_per_pod, m.slope_per_pod <= PER_POD_BUDGET),
        });
        goals.push(Goal {
            goal: format!("idle agent RSS, {} pods enrolled", m.large_pods),
            target: format!("<= {}", mb(budget(m.large_pods))),
            measured: mb(l),
            verdict: Verdict::of(l, l <= budget(m.large_pods)),
        });
    }
    for a in &m.loaded {
        let r = a.settled_rss as f64;
        goals.push(Goal {
            goal: format!(
                "agent {} RSS 2 s after the rounds' load, {} pod(s) (right after {}, peak {})",
                a.node,
                a.pods,
                mb(a.rss as f64),
                mb(a.peak_rss as f64)
            ),
            target: format!("<= {}", mb(budget(a.pods))),
            measured: mb(r),
            verdict: Verdict::of(r, r <= budget(a.pods)),
        });
    }
    goals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_goals() {
        let m = MemoryResult {
            small_pods: 2,
            small_rss: 20_000_000,
            large_pods: 100,
            large_rss: 29_800_000,
            slope_per_pod: 100_000.0,
            enroll_secs: 3.0,
            loaded: vec![LoadedAgent {
                node: "node-1".into(),
                pods: 1,
                rss: 29_000_000,
                settled_rss: 31_000_000,
                peak_rss: 35_000_000,
            }],
        };
        let g = goals(&m);
        let v: Vec<Verdict> = g.iter().map(|g| g.verdict).collect();
        assert_eq!(
            v,
            [Verdict::Met, Verdict::Met, Verdict::Met, Verdict::NotMet]
        );
        assert_eq!(g[0].target, "<= 30.2 MB");
        assert_eq!(g[2].target, "<= 40.0 MB");
        assert!(goals(&MemoryResult::default()).is_empty());
    }
}
