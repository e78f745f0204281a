//! Talking to callgrind: its command line, `callgrind_control` by pid, its dump files
//! (see [`super::callgrind`]).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Instructions (`Ir`) of a callgrind output file: its `totals:` line (or the
/// `summary:` line of older writers), at the position of `Ir` in `events:`.
pub fn parse_ir(text: &str) -> Result<u64> {
    let events = text
        .lines()
        .find_map(|l| l.strip_prefix("events:"))
        .context("callgrind file without an `events:` line")?;
    let index = events
        .split_whitespace()
        .position(|e| e == "Ir")
        .context("callgrind file does not count Ir")?;
    let costs = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("totals:"))
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("summary:")))
        .context("callgrind file without `totals:` or `summary:` (incomplete dump?)")?;
    // Trailing zero costs may be left out (callgrind format specification).
    match costs.split_whitespace().nth(index) {
        Some(v) => v.parse().with_context(|| format!("bad Ir cost {v:?}")),
        None => Ok(0),
    }
}

/// The `valgrind` command line that runs a program under callgrind with its output
/// files `dir/<tag>.callgrind.out.<pid>[.<dump>]` and its log `dir/<tag>.valgrind.<pid>.log`.
pub fn valgrind_prefix(dir: &Path, tag: &str) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!(
            "--callgrind-out-file={}/{tag}.callgrind.out.%p",
            dir.display()
        ),
        format!("--log-file={}/{tag}.valgrind.%p.log", dir.display()),
        // vgdb (callgrind_control) must reach processes blocked in epoll_wait.
        "--vgdb=yes".into(),
        // Counting only: no per-instruction or jump data, smaller dumps.
        "--dump-instr=no".into(),
        "--collect-jumps=no".into(),
    ]
}

/// `callgrind_control <what> PID`.
pub fn control(pid: u32, what: &str) -> Result<()> {
    let out = Command::new("callgrind_control")
        .args([what, &pid.to_string()])
        .output()
        .context("running callgrind_control")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("OK") {
        bail!(
            "callgrind_control {what} {pid}: {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Dumps `pid`'s counters; returns the instructions and the path of the new dump file.
pub fn dump(dir: &Path, tag: &str, pid: u32) -> Result<(u64, PathBuf)> {
    let before = dumps(dir, tag, pid)?.last().map(|d| d.0).unwrap_or(0);
    control(pid, "--dump")?;
    let start = Instant::now();
    loop {
        if let Some((n, path)) = dumps(dir, tag, pid)?.pop() {
            if n > before {
                let text = std::fs::read_to_string(&path)?;
                if let Ok(ir) = parse_ir(&text) {
                    return Ok((ir, path));
                }
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no complete dump of pid {pid} in {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The numbered dump files of `pid`, by number.
fn dumps(dir: &Path, tag: &str, pid: u32) -> Result<Vec<(u32, PathBuf)>> {
    let prefix = format!("{tag}.callgrind.out.{pid}.");
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(n) = name.strip_prefix(&prefix).and_then(|n| n.parse().ok()) {
            v.push((n, path));
        }
    }
    v.sort();
    Ok(v)
}

/// Kills everything in a cgroup of ours (`cgroup.kill`).
pub fn kill_cgroup(dir: &Path) {
    if let Err(e) = std::fs::write(dir.join("cgroup.kill"), "1") {
        eprintln!("bench: killing {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The zero/dump cycle the bench runs, on a real process under valgrind that sits
    /// in a syscall (as an idle proxy does): skipped without valgrind.
    #[test]
    fn zeroes_and_dumps_a_running_process() {
        if Command::new("callgrind_control")
            .arg("-h")
            .output()
            .is_err()
        {
            eprintln!("skipping: valgrind is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("hoptrace-cg-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let prefix = valgrind_prefix(&dir, "s");
        let mut child = Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(["sleep", "30"])
            .spawn()
            .expect("valgrind");
        let pid = child.id();
        // vgdb answers once valgrind has started the program.
        let start = Instant::now();
        while control(pid, "--zero").is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "vgdb never answered"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let first = dump(&dir, "s", pid);
        let second = dump(&dir, "s", pid);
        child.kill().ok();
        child.wait().ok();
        std::fs::remove_dir_all(&dir).ok();
        let ((ir1, f1), (ir2, f2)) = (first.expect("dump 1"), second.expect("dump 2"));
        assert!(f1
            .to_string_lossy()
            .ends_with(&format!("s.callgrind.out.{pid}.1")));
        assert!(f2
            .to_string_lossy()
            .ends_with(&format!("s.callgrind.out.{pid}.2")));
        // Asleep in nanosleep: little runs between zero and dump (what does is the
        // end of start-up and valgrind's answer to vgdb, some 10^4 instructions:
        // per request of a 2000-request window, noise below 0.1 %).
        assert!(ir1 < 1_000_000 && ir2 < 1_000_000, "{ir1} {ir2}");
    }
}
