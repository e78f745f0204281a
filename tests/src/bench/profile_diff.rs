//! `cargo xtask bench --profile`, second part: where the traced hop's CPU per request
//! goes against the sidecar model's, function by function.
//!
//! The flame graph ([`super::profile`]) shows where the agents spend their time, not
//! where they spend *more than the two nginx* for the same work. Here both models are
//! sampled alike: `perf record` with a fixed period of CPU time (`cpu-clock`, one
//! sample per [`PERIOD_US`] µs a thread runs, kernel included; no call graphs) on the
//! processes of the proxies' cgroups, during runs of `sidecar` and `hoptrace-http`,
//! interleaved ([`RUNS`] each), at saturation and at the fixed rate. A function's
//! samples × the period / the requests answered is its CPU µs per request, for each
//! model; the report sets them side by side, sorted by the difference, with the totals
//! in the kernel and in userspace, one table per phase. Then the system calls per
//! request at the fixed rate, counted for each model ([`syscalls`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::{measure, profile, run::BenchLab, syscalls, BenchOptions, Scenario};

/// CPU time per sample, µs (`perf record -c`, in ns of `cpu-clock`).
pub const PERIOD_US: u64 = 250;
/// Saturation runs per model, interleaved.
pub const RUNS: usize = 2;
/// Functions listed (largest differences either way).
const ROWS: usize = 30;

/// One function's samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The symbol as perf names it (an address when it has none).
    pub symbol: String,
    /// A kernel function (`[k]`), else userspace.
    pub kernel: bool,
    pub samples: u64,
}

/// One model's samples, summed over its runs.
#[derive(Debug, Default)]
pub struct Side {
    pub scenario: String,
    pub requests: u64,
    /// Symbol → (kernel, samples).
    pub samples: HashMap<String, (bool, u64)>,
}

impl Side {
    fn add(&mut self, rows: Vec<Row>, requests: u64) {
        self.requests += requests;
        for r in rows {
            self.samples.entry(r.symbol).or_insert((r.kernel, 0)).1 += r.samples;
        }
    }

    /// CPU µs per request of the samples that `keep` selects.
    fn us_per_request(&self, keep: impl Fn(bool) -> bool) -> f64 {
        let s: u64 = self
            .samples
            .values()
            .filter(|(k, _)| keep(*k))
            .map(|(_, n)| n)
            .sum();
        us(s, self.requests)
    }

    fn of(&self, symbol: &str) -> f64 {
        us(
            self.samples.get(symbol).map_or(0, |(_, n)| *n),
            self.requests,
        )
    }
}

fn us(samples: u64, requests: u64) -> f64 {
    (samples * PERIOD_US) as f64 / requests.max(1) as f64
}

/// A phase of the rounds.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Saturation,
    Fixed,
}

/// Samples both models in both phases and writes `profile-diff.md` under `out_dir`;
/// returns its path.
pub fn run(bl: &BenchLab, opts: &BenchOptions, out_dir: &Path) -> Result<PathBuf> {
    let models = [Scenario::Sidecar, Scenario::HoptraceHttp];
    for s in models {
        measure::warm_up(bl, opts, s).with_context(|| format!("warming up {}", s.name()))?;
    }
    let mut md = String::new();
    for (phase, title) in [
        (
            Phase::Saturation,
            format!("saturation ({} connections)", opts.connections),
        ),
        (Phase::Fixed, format!("{} req/s", opts.rate)),
    ] {
        let mut sides: Vec<Side> = models
            .iter()
            .map(|s| Side {
                scenario: s.name().into(),
                ..Side::default()
            })
            .collect();
        for run in 0..RUNS {
            for (s, side) in models.iter().zip(&mut sides) {
                let data = out_dir.join(format!("perf-diff-{}-{phase:?}-{run}.data", s.name()));
                let requests = record(bl, opts, *s, phase, &data)?;
                side.add(symbols(&data)?, requests);
            }
        }
        md.push_str(&format!(
            "### {title}\n\n{}\n",
            markdown(&sides[1], &sides[0], ROWS)
        ));
    }
    let census = models
        .iter()
        .map(|&s| syscalls::census(bl, opts, s, &pids(bl, s)?))
        .collect::<Result<Vec<_>>>()?;
    md.push_str(&format!(
        "### {} req/s: system calls\n\n{}",
        opts.rate,
        syscalls::markdown(&census[1], &census[0])
    ));
    let path = out_dir.join("profile-diff.md");
    std::fs::write(&path, md)?;
    Ok(path)
}

/// The processes of scenario `s`'s proxies (every process in their cgroups).
fn pids(bl: &BenchLab, s: Scenario) -> Result<Vec<String>> {
    let mut pids = Vec::new();
    for cg in bl.proxy_cgroups(s) {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs"))
            .with_context(|| format!("reading {}/cgroup.procs", cg.display()))?;
        pids.extend(procs.lines().map(|l| l.trim().to_owned()));
    }
    pids.retain(|p| !p.is_empty());
    if pids.is_empty() {
        bail!("no process in the cgroups of {}'s proxies", s.name());
    }
    Ok(pids)
}

/// One run of `s` in `phase` under `perf record`; returns the requests answered.
fn record(
    bl: &BenchLab,
    opts: &BenchOptions,
    s: Scenario,
    phase: Phase,
    data: &Path,
) -> Result<u64> {
    let period = (PERIOD_US * 1000).to_string();
    profile::perf_record(
        &["-e", "cpu-clock", "-c", &period],
        data,
        &pids(bl, s)?,
        || match phase {
            Phase::Saturation => measure::saturate_only(bl, opts, s),
            Phase::Fixed => measure::fixed_only(bl, opts, s),
        },
    )
    .with_context(|| format!("profiling {}", s.name()))
}

/// Samples per function of a recording (`perf report`).
fn symbols(data: &Path) -> Result<Vec<Row>> {
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "sym",
            "-n",
            "-q",
            "-i",
        ])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("perf report")?;
    if !out.status.success() {
        bail!("perf report -i {} failed ({})", data.display(), out.status);
    }
    Ok(parse_report(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `perf report --sort sym -n -q` lines (`  12.34%   567  [k] tcp_sendmsg`).
pub fn parse_report(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            f.next().filter(|p| p.ends_with('%'))?;
            let samples = f.next()?.parse().ok()?;
            let kernel = match f.next()? {
                "[k]" => true,
                "[.]" => false,
                _ => return None,
            };
            let symbol = f.collect::<Vec<_>>().join(" ");
            (!symbol.is_empty()).then_some(Row {
                symbol,
                kernel,
                samples,
            })
        })
        .collect()
}

/// The comparison as markdown: totals, then the `rows` functions with the largest
/// differences in CPU µs per request (`this` − `base`), largest first either way.
pub fn markdown(this: &Side, base: &Side, rows: usize) -> String {
    let (a, b) = (&this.scenario, &base.scenario);
    let mut out = format!(
        "CPU µs per request by function, `{a}` against `{b}` (perf, one sample per {PERIOD_US} µs \
         of CPU; {} and {} requests)\n\n| | {a} | {b} | difference |\n|---|--:|--:|--:|\n",
        this.requests, base.requests
    );
    for (name, keep) in [
        ("all", (|_| true) as fn(bool) -> bool),
        ("kernel", |k| k),
        ("userspace", |k| !k),
    ] {
        let (x, y) = (this.us_per_request(keep), base.us_per_request(keep));
        out.push_str(&format!(
            "| **{name}** | {x:.2} | {y:.2} | {:+.2} |\n",
            x - y
        ));
    }
    let mut all: Vec<(&str, bool)> = this
        .samples
        .iter()
        .chain(&base.samples)
        .map(|(s, (k, _))| (s.as_str(), *k))
        .collect();
    all.sort_unstable();
    all.dedup_by(|x, y| x.0 == y.0);
    let mut diffs: Vec<(&str, bool, f64, f64)> = all
        .into_iter()
        .map(|(s, k)| (s, k, this.of(s), base.of(s)))
        .collect();
    diffs.sort_by(|x, y| {
        (y.2 - y.3)
            .abs()
            .total_cmp(&(x.2 - x.3).abs())
            .then(x.0.cmp(y.0))
    });
    out.push_str(&format!(
        "\nThe {rows} functions with the largest differences\n\n| function | | {a} | {b} | difference |\n|---|---|--:|--:|--:|\n"
    ));
    for (s, k, x, y) in diffs.into_iter().take(rows) {
        let space = if k { "kernel" } else { "user" };
        out.push_str(&format!(
            "| `{s}` | {space} | {x:.2} | {y:.2} | {:+.2} |\n",
            x - y
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse_and_others_do_not() {
        let rows = parse_report(
            "    26.97%            24  [k] do_syscall_64\n\
             \x20    8.99%             8  [.] __GI___libc_write\n\
             \x20    1.00%             1  [.] 0x00007f12\n\
             # Samples: 89\n\
             \x20    bad\n",
        );
        assert_eq!(
            rows,
            vec![
                Row {
                    symbol: "do_syscall_64".into(),
                    kernel: true,
                    samples: 24
                },
                Row {
                    symbol: "__GI___libc_write".into(),
                    kernel: false,
                    samples: 8
                },
                Row {
                    symbol: "0x00007f12".into(),
                    kernel: false,
                    samples: 1
                },
            ]
        );
    }

    #[test]
    fn markdown_sets_per_request_figures_side_by_side() {
        let mut this = Side {
            scenario: "hoptrace-http".into(),
            ..Side::default()
        };
        // 1000 requests: one sample per request is PERIOD_US µs per request.
        this.add(
            parse_report("50% 2000 [k] tcp_sendmsg\n50% 1000 [.] memcpy\n"),
            1000,
        );
        let mut base = Side {
            scenario: "sidecar".into(),
            ..Side::default()
        };
        // Two runs of 500 requests each: the same 1000 requests in all.
        for _ in 0..2 {
            base.add(
                parse_report("90% 500 [k] tcp_sendmsg\n10% 100 [k] ep_poll\n"),
                500,
            );
        }
        let md = markdown(&this, &base, 2);
        let p = PERIOD_US as f64;
        assert!(
            md.contains(&format!(
                "| **all** | {:.2} | {:.2} | +{:.2} |",
                3.0 * p,
                1.2 * p,
                1.8 * p
            )),
            "{md}"
        );
        assert!(
            md.contains(&format!("| **kernel** | {:.2} | {:.2} |", 2.0 * p, 1.2 * p)),
            "{md}"
        );
        // Largest difference first (tcp_sendmsg +1.0 per request), then memcpy
        // (+1.0, after by name); ep_poll (-0.2) is cut by `rows`.
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| `")).collect();
        assert_eq!(rows.len(), 2, "{md}");
        assert!(rows[0].starts_with("| `memcpy` | user"), "{md}");
        assert!(rows[1].starts_with("| `tcp_sendmsg` | kernel"), "{md}");
        assert!(!md.contains("ep_poll"), "{md}");
    }
}
