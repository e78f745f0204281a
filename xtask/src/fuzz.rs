//! `cargo xtask fuzz [--seconds N] [--target NAME]`: the cargo-fuzz targets of
//! `agent/fuzz` (docs/FUZZING.md), one after another, N seconds each.
//!
//! Installs what it needs: the setup steps (nightly `rust-src` and `bpf-linker`, which
//! the agent's build script needs), then the pinned `cargo-fuzz`. Builds once with
//! `cargo +nightly fuzz build -O -a` (release, debug assertions, AddressSanitizer)
//! into `agent/fuzz/target`, then runs each target on its own growing corpus
//! (`agent/fuzz/target/corpus/<target>`, git-ignored) plus the committed seeds
//! (`agent/fuzz/corpus/<target>`) and regression inputs (`agent/fuzz/regressions/<target>`).
//! Everything runs at niceness 15, so other work on the machine keeps priority.
//! libFuzzer's output goes to `agent/fuzz/target/logs/<target>.log`; a crash fails
//! the task with the path of the input libFuzzer saved under `agent/fuzz/artifacts/`.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};

use crate::{cargo_bin, run, setup};

/// The fuzz targets (`[[bin]]` of agent/fuzz/Cargo.toml), in the order they run.
pub const TARGETS: &[&str] = &["trace_context", "detect", "workload_file", "http_head"];

/// The cargo-fuzz release installed when missing (`cargo install --locked`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Niceness of the build and the fuzzing processes.
const NICENESS: libc::c_int = 15;

/// A single input that runs longer than this is reported as a hang (libFuzzer `-timeout`).
const INPUT_TIMEOUT_SECS: u32 = 10;

/// What one target's run did, read from libFuzzer's final statistics.
#[derive(Debug, Default, PartialEq)]
pub struct Stats {
    /// `stat::number_of_executed_units`.
    pub executions: u64,
    /// `stat::average_exec_per_sec`.
    pub exec_per_sec: u64,
    /// Inputs in the corpus at the end (the last status line's `corp:`).
    pub corpus: Option<u64>,
    /// The input libFuzzer saved for a crash, timeout or out-of-memory.
    pub crash: Option<String>,
}

/// Runs the targets (`only`: one of them) for `seconds` each.
pub fn run_fuzz(root: &Path, seconds: u32, only: Option<&str>) -> anyhow::Result<()> {
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    lower_priority();
    setup::run()?;
    install_cargo_fuzz()?;

    let dir = root.join("agent/fuzz");
    let target_dir = dir.join("target");
    let logs = target_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    println!("xtask fuzz: building the fuzz targets (nightly, release, ASan)");
    let mut build = fuzz_cmd(&dir, "build");
    if let Some(t) = only {
        build.arg(t);
    }
    run(&mut build)?;

    let mut results = Vec::new();
    for t in &targets {
        let corpus = target_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let log_path = logs.join(format!("{t}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = fuzz_cmd(&dir, "run");
        cmd.arg(t).arg(&corpus);
        for extra in [dir.join("corpus").join(t), dir.join("regressions").join(t)] {
            if extra.is_dir() {
                cmd.arg(extra);
            }
        }
        cmd.arg("--").args([
            format!("-max_total_time={seconds}"),
            format!("-timeout={INPUT_TIMEOUT_SECS}"),
            "-print_final_stats=1".to_string(),
        ]);
        let dict = dir.join("dicts").join(format!("{t}.dict"));
        if dict.is_file() {
            cmd.arg(format!("-dict={}", dict.display()));
        }
        cmd.stdout(log.try_clone()?).stderr(log);
        println!(
            "xtask fuzz: {t}: {seconds} s (log: {})",
            rel(root, &log_path)
        );
        let start = Instant::now();
        let status = cmd
            .status()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let secs = start.elapsed().as_secs_f64();
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let stats = parse_stats(&text);
        println!(
            "xtask fuzz: {t}: {} executions in {secs:.0} s ({} exec/s), corpus {}{}",
            stats.executions,
            stats.exec_per_sec,
            stats.corpus.map_or("?".to_string(), |c| c.to_string()),
            if status.success() { "" } else { ", FAILED" }
        );
        if !status.success() {
            eprintln!("--- last lines of {}:", log_path.display());
            for line in tail(&text, 40) {
                eprintln!("{line}");
            }
            match &stats.crash {
                Some(input) => bail!(
                    "fuzz target {t} crashed; input: {} (reproduce: `cargo +nightly fuzz run --fuzz-dir agent/fuzz -O -a {t} {}`)",
                    abs(&dir, input).display(),
                    abs(&dir, input).display()
                ),
                None => bail!("fuzz target {t} failed ({status}); see {}", log_path.display()),
            }
        }
        results.push((t, stats, secs));
    }
    println!("xtask fuzz: all targets passed");
    println!("| target | executions | exec/s | seconds | corpus |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (t, s, secs) in &results {
        println!(
            "| {t} | {} | {} | {secs:.0} | {} |",
            s.executions,
            s.exec_per_sec,
            s.corpus.map_or("?".to_string(), |c| c.to_string())
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz <sub> -O -a --fuzz-dir agent/fuzz --target-dir agent/fuzz/target`.
fn fuzz_cmd(dir: &Path, sub: &str) -> Command {
    // The rustup proxy on PATH (not $CARGO, which is the stable toolchain's cargo)
    // understands `+nightly`: cargo-fuzz needs nightly's sanitizer flags.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args(["+nightly", "fuzz", sub, "-O", "-a", "--fuzz-dir"])
        .arg(dir)
        .arg("--target-dir")
        .arg(dir.join("target"))
        .stdin(Stdio::null());
    // Drop what `cargo run` set for xtask itself: build scripts (ring's, through the cc
    // crate) ask to rerun when CARGO_MANIFEST_DIR, CARGO_PKG_* or OUT_DIR change, so
    // each switch between `cargo xtask fuzz` and a `cargo fuzz` typed in a shell
    // would rebuild a third of the tree.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Installs the pinned cargo-fuzz unless that version is already there.
fn install_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new(cargo_bin())
        .args(["fuzz", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if installed.as_deref() == Some(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}")) {
        return Ok(());
    }
    println!("xtask fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    run(Command::new(cargo_bin()).args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// Runs this process (and so every child) at [`NICENESS`] unless it is already nicer.
fn lower_priority() {
    // SAFETY: getpriority/setpriority on the calling process; no memory is involved.
    unsafe {
        if libc::getpriority(libc::PRIO_PROCESS, 0) < NICENESS {
            libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS);
        }
    }
}

/// Reads libFuzzer's `-print_final_stats=1` lines, the last `corp:` and the crash path.
pub fn parse_stats(log: &str) -> Stats {
    let mut s = Stats::default();
    for line in log.lines() {
        let stat = |name: &str| {
            line.strip_prefix(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(v) = stat("stat::number_of_executed_units:") {
            s.executions = v;
        } else if let Some(v) = stat("stat::average_exec_per_sec:") {
            s.exec_per_sec = v;
        }
        if let Some(rest) = line.split(" corp: ").nth(1) {
            if let Some(n) = rest.split('/').next().and_then(|n| n.parse().ok()) {
                s.corpus = Some(n);
            }
        }
        if let Some(rest) = line.split("Test unit written to ").nth(1) {
            s.crash = rest.split_whitespace().next().map(str::to_string);
        }
    }
    s
}

fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn abs(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_output() {
        let log = "\
#1048576\tpulse  cov: 310 ft: 1200 corp: 95/4371b lim: 4096 exec/s: 149796 rss: 60Mb
#2097152\tpulse  cov: 311 ft: 1210 corp: 97/4501b lim: 4096 exec/s: 149796 rss: 61Mb
Done 2995130 runs in 21 second(s)
stat::number_of_executed_units: 2995130
stat::average_exec_per_sec:     142625
stat::new_units_added:          87
";
        assert_eq!(
            parse_stats(log),
            Stats {
                executions: 2995130,
                exec_per_sec: 142625,
                corpus: Some(97),
                crash: None,
            }
        );
        let crash = "\
==1== ERROR: libFuzzer: deadly signal
artifact_prefix='/w/agent/fuzz/artifacts/http_head/'; Test unit written to /w/agent/fuzz/artifacts/http_head/crash-b680a8
stat::number_of_executed_units: 141
";
        let s = parse_stats(crash);
        assert_eq!(
            s.crash.as_deref(),
            Some("/w/agent/fuzz/artifacts/http_head/crash-b680a8")
        );
        assert_eq!(s.executions, 141);
    }

    #[test]
    fn targets_match_the_fuzz_crate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/fuzz");
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        let mut bins: Vec<&str> = manifest
            .split("[[bin]]")
            .skip(1)
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ")))
            .map(|n| n.trim_matches('"'))
            .collect();
        let mut want = TARGETS.to_vec();
        bins.sort_unstable();
        want.sort_unstable();
        assert_eq!(bins, want);
        for t in TARGETS {
            let seeds = dir.join("corpus").join(t);
            let n = std::fs::read_dir(&seeds).expect("seed corpus").count();
            assert!(n > 0, "{} is empty", seeds.display());
        }
    }
}
