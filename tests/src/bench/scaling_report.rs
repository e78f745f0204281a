//! The scaling phase's section of the report (see [`super::scaling`]).

use super::scaling::ScalingResult;
use std::fmt::Write as _;

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "–".into()
    }
}

/// The Markdown section.
pub fn markdown(r: &ScalingResult) -> String {
    let mut out = String::new();
    let o = r.options.clone().unwrap_or_default();
    let _ = writeln!(out, "\n### One agent, many pods (scaling)\n");
    let _ = writeln!(
        out,
        "One agent on a node of its own with {} client pods enrolled; the pods that send run `labapp load` each, closed loop on {} connections for {} s, \
         every request with a sampled `traceparent`, to two server pods on another node (not enrolled: the agent serves the outbound leg, 2 spans per request). \
         Agent CPU: user+system time of its cgroup per request until every span arrived. p50: median of the pods' p50; p99: median (worst) of the pods' p99. \
         Rate spread: slowest pod's rate / median pod's rate, and Jain's index over the pods' rates.\n",
        o.pods.iter().copied().chain([o.fairness_pods]).max().unwrap_or(0),
        o.conns_per_pod,
        o.duration_secs
    );
    let _ = writeln!(
        out,
        "| pods sending | total rps | agent CPU µs/req | agent CPUs busy | p50 µs | p99 µs (worst) | slowest / median pod rate | Jain | errors | spans received / exported / dropped / expected |"
    );
    let _ = writeln!(out, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for p in &r.points {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} / {} / {} / {} |",
            p.pods,
            num(p.total_rps, 0),
            num(p.agent_cpu_us, 1),
            num(p.agent_cpus, 2),
            num(p.p50_us, 0),
            num(p.p99_us, 0),
            num(p.p99_max_us, 0),
            num(p.min_share, 2),
            num(p.jain, 3),
            p.errors,
            p.spans.received,
            p.spans.exported,
            p.spans.dropped,
            p.spans.expected
        );
    }
    let _ = writeln!(
        out,
        "\n**Fairness under overload**: {} pods; {} quiet pods at {} req/s each (open loop, latency from the scheduled send time), \
         without and then with one pod flooding (closed loop, {} connections). Share: a quiet pod's achieved rate / its offered rate.\n",
        o.fairness_pods,
        o.fairness_pods.saturating_sub(1),
        o.quiet_rate,
        o.flood_conns
    );
    let _ = writeln!(
        out,
        "| flooder | flooder rps | quiet pods' share: min | Jain | quiet p99 µs: median | worst | quiet errors |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|");
    for f in &r.fairness {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            if f.flooder { "on" } else { "off" },
            f.flood
                .as_ref()
                .map(|l| num(l.report.rps, 0))
                .unwrap_or_else(|| "–".into()),
            num(f.min_share, 3),
            num(f.jain, 3),
            num(f.p99_us, 0),
            num(f.p99_max_us, 0),
            f.quiet.iter().map(|p| p.report.errors).sum::<u64>()
        );
    }
    if let [off, on] = &r.fairness[..] {
        let _ = writeln!(out, "\nPer quiet pod, without → with the flooder:\n");
        for (a, b) in off.quiet.iter().zip(&on.quiet) {
            let _ = writeln!(
                out,
                "- {}: {} → {} req/s, p99 {} → {} µs",
                a.pod,
                num(a.report.rps, 1),
                num(b.report.rps, 1),
                num(a.report.p99_us, 0),
                num(b.report.p99_us, 0)
            );
        }
    }
    let _ = writeln!(out, "\nThe scaling phase took {:.0} s.", r.elapsed_s);
    out
}

#[cfg(test)]
mod tests {
    use super::super::loadgen::LoadReport;
    use super::super::scaling::{FairnessRun, PodLoad, ScalePoint, ScalingOptions};
    use super::*;

    #[test]
    fn renders_the_section() {
        let pod = |name: &str, rps: f64, p99: f64| PodLoad {
            pod: name.into(),
            report: LoadReport {
                rps,
                p99_us: p99,
                ..Default::default()
            },
        };
        let r = ScalingResult {
            options: Some(ScalingOptions::default()),
            points: vec![ScalePoint {
                pods: 10,
                total_rps: 12345.0,
                agent_cpu_us: 31.25,
                min_share: 0.5,
                jain: 0.9,
                ..Default::default()
            }],
            fairness: vec![
                FairnessRun {
                    quiet: vec![pod("sc2", 100.0, 900.0)],
                    ..Default::default()
                },
                FairnessRun {
                    flooder: true,
                    flood: Some(pod("sc1", 9000.0, 5000.0)),
                    quiet: vec![pod("sc2", 99.5, 2000.0)],
                    ..Default::default()
                },
            ],
            elapsed_s: 60.0,
        };
        let md = markdown(&r);
        assert!(md.contains("| 10 | 12345 | 31.2 |"), "{md}");
        assert!(md.contains("| on | 9000 |"), "{md}");
        assert!(
            md.contains("- sc2: 100.0 → 99.5 req/s, p99 900 → 2000 µs"),
            "{md}"
        );
    }
}
