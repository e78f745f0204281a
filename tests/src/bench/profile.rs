//! `cargo xtask bench --profile`: where the agents' CPU goes under the traced HTTP load.
//!
//! `perf record` (software `cpu-clock` sampling, DWARF call graphs: the release build
//! keeps no frame pointers; hardware counters are
//! not needed) on both agents during one saturation run of `hoptrace-http`, then a
//! flame graph (inferno) and a table of the functions with the most samples of their
//! own. Every optimisation starts from this evidence (docs/BENCH.md).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use inferno::collapse::Collapse as _;

use super::{measure, run::BenchLab, BenchOptions, Scenario};

/// What a profile run wrote (also `stacks.folded`: the collapsed stacks, one per line,
/// for grepping).
#[derive(Debug)]
pub struct Profile {
    /// The flame graph (SVG).
    pub svg: PathBuf,
    /// The top functions by self samples (text).
    pub top: PathBuf,
    /// Requests answered during the profile.
    pub requests: u64,
}

/// Profiles both agents under one saturation run of `hoptrace-http`.
pub fn run(bl: &BenchLab, opts: &BenchOptions, out_dir: &Path) -> Result<Profile> {
    if Command::new("perf").arg("--version").output().is_err() {
        bail!("--profile needs `perf` (Debian: `apt-get install linux-perf`)");
    }
    let pids: Vec<String> = bl
        .agents
        .iter()
        .filter_map(|(a, _)| a.pid())
        .map(|p| p.to_string())
        .collect();
    std::fs::create_dir_all(out_dir)?;
    let data = out_dir.join("perf.data");
    let requests = perf_record(
        &[
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-e",
            "cpu-clock",
        ],
        &data,
        &pids,
        || measure::saturate_only(bl, opts, Scenario::HoptraceHttp),
    )?;
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .context("perf script")?;
    let mut collapsed = Vec::new();
    inferno::collapse::perf::Folder::default()
        .collapse(&script.stdout[..], &mut collapsed)
        .context("collapsing the stacks")?;
    std::fs::write(out_dir.join("stacks.folded"), &collapsed)?;
    let svg = out_dir.join("flamegraph-hoptrace-http.svg");
    let mut fg = inferno::flamegraph::Options::default();
    fg.title = format!("hoptrace agents, hoptrace-http saturation ({requests} requests)");
    inferno::flamegraph::from_reader(
        &mut fg,
        &collapsed[..],
        std::fs::File::create(&svg).with_context(|| format!("creating {}", svg.display()))?,
    )
    .context("drawing the flame graph")?;
    let top = out_dir.join("profile-top.txt");
    std::fs::write(
        &top,
        top_functions(&String::from_utf8_lossy(&collapsed), 30),
    )?;
    Ok(Profile { svg, top, requests })
}

/// Runs `during` under `perf record <args> -o <data> -p <pids>`, then stops perf
/// (SIGINT: it writes its data and exits); returns what `during` returned.
pub(super) fn perf_record<T>(
    args: &[&str],
    data: &Path,
    pids: &[String],
    during: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let mut perf = Command::new("perf")
        .arg("record")
        .args(args)
        .arg("-o")
        .arg(data)
        .args(["-p", &pids.join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf record")?;
    // perf opens its events on every thread before the load starts.
    std::thread::sleep(Duration::from_millis(300));
    let result = during();
    // SAFETY: kill(2) on our own child; SIGINT makes perf write its data and exit.
    unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
    let status = perf.wait().context("waiting for perf record")?;
    let result = result?;
    if !status.success() && !data.is_file() {
        bail!("perf record failed ({status})");
    }
    Ok(result)
}

/// The `n` functions with the most samples of their own (the leaf of each stack),
/// from collapsed stacks (`a;b;c 42` lines), as a text table.
pub fn top_functions(collapsed: &str, n: usize) -> String {
    let mut own: HashMap<&str, u64> = HashMap::new();
    let mut total = 0u64;
    for line in collapsed.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        *own.entry(leaf).or_default() += count;
        total += count;
    }
    let mut rows: Vec<(&str, u64)> = own.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out = format!("{total} samples; functions by samples of their own\n");
    for (f, c) in rows.into_iter().take(n) {
        out.push_str(&format!(
            "{:5.1}%  {c:>7}  {f}\n",
            100.0 * c as f64 / total.max(1) as f64
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_functions_counts_leaves() {
        let t = top_functions(
            "main;a;memcpy 30\nmain;b;memcpy 10\nmain;b 60\nbad line\n",
            2,
        );
        assert!(t.starts_with("100 samples"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].contains("60.0%") && lines[1].ends_with(" b"),
            "{t}"
        );
        assert!(
            lines[2].contains("40.0%") && lines[2].ends_with(" memcpy"),
            "{t}"
        );
        assert_eq!(lines.len(), 3);
    }
}
