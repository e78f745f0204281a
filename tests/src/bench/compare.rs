//! One scenario against another, figure by figure and round by round, where neither is
//! the workload's usual baseline: two builds of the agent in one run (`hoptrace-http`
//! against `hoptrace-http-compare`, `--compare-agent`), so a before/after of a change
//! shares the machine's state, and pinned against pinned (`hoptrace-http-pinned`
//! against `sidecar-pinned`).

use super::stats::{median, of, Sample};
use super::Scenario;
use std::fmt::Write as _;

/// One figure compared: its name and how to read it from a sample.
struct Figure {
    name: &'static str,
    read: fn(&Sample) -> f64,
}

const FIGURES: [Figure; 7] = [
    Figure {
        name: "proxy CPU µs per request, saturation",
        read: |s| s.sat_cpu_us,
    },
    Figure {
        name: "machine CPU µs per request, saturation",
        read: |s| s.sat_machine_cpu_us,
    },
    Figure {
        name: "proxy CPU µs per request, fixed rate",
        read: |s| s.fixed_cpu_us,
    },
    Figure {
        name: "requests per second, saturation",
        read: |s| s.sat_rps,
    },
    Figure {
        name: "p50 µs, fixed rate",
        read: |s| s.fixed.p50_us,
    },
    Figure {
        name: "p99 µs, fixed rate",
        read: |s| s.fixed.p99_us,
    },
    Figure {
        name: "switches per request, fixed rate",
        read: |s| s.fixed_switches,
    },
];

/// Per figure: `this` scenario's median, `other`'s, and the median over rounds of
/// their per-round ratio (this / other). Empty when no round has both.
pub fn ratios(
    samples: &[Sample],
    this: Scenario,
    other: Scenario,
) -> Vec<(&'static str, f64, f64, f64)> {
    let pairs: Vec<(&Sample, &Sample)> = samples
        .iter()
        .filter(|x| x.scenario == this.name())
        .filter_map(|x| of(samples, other, x.round).map(|o| (x, o)))
        .collect();
    if pairs.is_empty() {
        return Vec::new();
    }
    FIGURES
        .iter()
        .map(|f| {
            (
                f.name,
                median(pairs.iter().map(|(a, _)| (f.read)(a))),
                median(pairs.iter().map(|(_, b)| (f.read)(b))),
                median(pairs.iter().map(|(a, b)| (f.read)(a) / (f.read)(b))),
            )
        })
        .collect()
}

/// The report's sections: two builds (`compare_agent`: the other build's path) and
/// pinned against pinned, each only when the run has both of its scenarios.
pub fn markdown(samples: &[Sample], compare_agent: Option<&std::path::Path>) -> String {
    let other = compare_agent.map_or_else(|| "?".into(), |p| p.display().to_string());
    let mut out = section(
        samples,
        &format!(
            "Two builds: hoptrace-http (this build) against hoptrace-http-compare (`{other}`)"
        ),
        Scenario::HoptraceHttp,
        Scenario::HoptraceHttpCompare,
    );
    out.push_str(&section(
        samples,
        &format!("Two builds, opaque TCP: hoptrace-tcp-userspace (this build) against hoptrace-tcp-compare (`{other}`)"),
        Scenario::HoptraceTcpUserspace,
        Scenario::HoptraceTcpCompare,
    ));
    out.push_str(&section(
        samples,
        "Pinned against pinned: hoptrace-http-pinned against sidecar-pinned",
        Scenario::HoptraceHttpPinned,
        Scenario::SidecarPinned,
    ));
    out
}

fn section(samples: &[Sample], title: &str, this: Scenario, other: Scenario) -> String {
    let rows = ratios(samples, this, other);
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| figure | {} | {} | ratio (median of per-round ratios) |\n|---|--:|--:|--:|",
        this.name(),
        other.name()
    );
    for (name, a, b, r) in rows {
        let _ = writeln!(out, "| {name} | {a:.1} | {b:.1} | {r:.3}× |");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(s: Scenario, round: u32, sat_cpu_us: f64) -> Sample {
        Sample {
            scenario: s.name().into(),
            round,
            sat_cpu_us,
            ..Default::default()
        }
    }

    #[test]
    fn ratios_pair_rounds() {
        let (h, c) = (Scenario::HoptraceHttp, Scenario::HoptraceHttpCompare);
        assert!(ratios(&[sample(h, 1, 10.0)], h, c).is_empty());
        assert!(markdown(&[sample(h, 1, 10.0)], None).is_empty());
        // Round 3 has no other-build sample: it is left out of every figure.
        let samples = [
            sample(h, 1, 9.0),
            sample(c, 1, 10.0),
            sample(h, 2, 12.0),
            sample(c, 2, 10.0),
            sample(h, 3, 100.0),
            sample(c, 4, 1.0),
        ];
        let rows = ratios(&samples, h, c);
        let (name, this, other, ratio) = rows[0];
        assert_eq!(name, "proxy CPU µs per request, saturation");
        assert_eq!((this, other), (10.5, 10.0));
        assert!((ratio - 1.05).abs() < 1e-9, "{ratio}");
        let md = markdown(&samples, Some(std::path::Path::new("/tmp/before")));
        assert!(md.contains("`/tmp/before`"), "{md}");
        assert!(!md.contains("Pinned against pinned"), "{md}");
        assert!(
            md.contains("| proxy CPU µs per request, saturation | 10.5 | 10.0 | 1.050× |"),
            "{md}"
        );
    }
}
