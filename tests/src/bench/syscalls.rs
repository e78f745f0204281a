//! `cargo xtask bench --profile`, third part: the system calls each model makes per
//! request at the fixed rate, side by side (`strace -f -c` on the processes of the
//! proxies' cgroups during one fixed-rate run each).
//!
//! At the fixed rate every request wakes the proxies' threads from sleep, so what they
//! do per wake-up is what a request costs; a call one model makes and the other does
//! not (a read that finds nothing, a wait that returns at once, a lock) shows here as
//! a count, which noise cannot move. strace slows every call it sees, so only the
//! counts are reported, not the times.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{measure, run::BenchLab, BenchOptions, Scenario};

/// How long strace may take to attach to every thread.
const ATTACH: Duration = Duration::from_secs(10);

/// One model's system calls during one fixed-rate run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Census {
    pub scenario: String,
    pub requests: u64,
    /// System call → (calls, errors).
    pub calls: BTreeMap<String, (u64, u64)>,
}

/// Counts the system calls of scenario `s`'s proxies during one fixed-rate run.
pub fn census(bl: &BenchLab, opts: &BenchOptions, s: Scenario, pids: &[String]) -> Result<Census> {
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-c", "-p", &pids.join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting strace (Debian: strace; `cargo xtask setup` installs it)")?;
    let attached = wait_attached(&mut strace, pids);
    let requests = attached.and_then(|()| measure::fixed_only(bl, opts, s));
    if let Ok(None) = strace.try_wait() {
        // SAFETY: kill(2) on our own child, still running; SIGINT makes strace detach
        // and print its summary.
        unsafe { libc::kill(strace.id() as libc::pid_t, libc::SIGINT) };
    }
    let out = strace.wait_with_output().context("waiting for strace")?;
    let requests = requests?;
    let text = String::from_utf8_lossy(&out.stderr);
    let calls = parse_summary(&text);
    if calls.is_empty() {
        bail!("strace counted no system call of {}: {text}", s.name());
    }
    Ok(Census {
        scenario: s.name().into(),
        requests,
        calls,
    })
}

/// Waits until strace traces every thread of `pids` (their `TracerPid`).
fn wait_attached(strace: &mut Child, pids: &[String]) -> Result<()> {
    let tracer = strace.id();
    let deadline = Instant::now() + ATTACH;
    loop {
        if let Ok(Some(status)) = strace.try_wait() {
            bail!("strace exited before attaching ({status})");
        }
        if pids.iter().all(|pid| traced_by(pid, tracer)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("strace did not attach to every thread of {pids:?} in {ATTACH:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every thread of process `pid` has `tracer` as its `TracerPid` (false when the
/// process is gone).
pub fn traced_by(pid: &str, tracer: u32) -> bool {
    let tracer = tracer.to_string();
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("TracerPid:"))
                    .is_some_and(|v| v.trim() == tracer)
            })
        })
    })
}

/// Parses strace's `-c` table (`% time seconds usecs/call calls [errors] syscall`).
pub fn parse_summary(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut calls = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (n, errors, name) = match f.as_slice() {
            [_, _, _, n, e, name] => (n, e.parse().ok(), name),
            [_, _, _, n, name] => (n, Some(0), name),
            _ => continue,
        };
        if *name == "total" || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let (Ok(n), Some(e)) = (n.parse::<u64>(), errors) {
            calls.insert((*name).to_owned(), (n, e));
        }
    }
    calls
}

/// Calls per request for both models, every system call either made at least
/// 0.01 times per request, most frequent (in `this`) first.
pub fn markdown(this: &Census, base: &Census) -> String {
    let per = |c: &Census, name: &str| {
        let (n, e) = c.calls.get(name).copied().unwrap_or_default();
        let r = c.requests.max(1) as f64;
        (n as f64 / r, e as f64 / r)
    };
    let (a, b) = (&this.scenario, &base.scenario);
    let mut names: Vec<&String> = this.calls.keys().chain(base.calls.keys()).collect();
    names.sort();
    names.dedup();
    // (call, (calls, errors) per request in `this`, the same in `base`)
    type Row<'a> = (&'a String, (f64, f64), (f64, f64));
    let mut rows: Vec<Row> = names
        .into_iter()
        .map(|n| (n, per(this, n), per(base, n)))
        .filter(|(_, x, y)| x.0 >= 0.01 || y.0 >= 0.01)
        .collect();
    rows.sort_by(|x, y| y.1 .0.total_cmp(&x.1 .0).then(y.2 .0.total_cmp(&x.2 .0)));
    let mut out = format!(
        "System calls per request at the fixed rate (`strace -f -c`; {} and {} requests): \
         calls (of which failed)\n\n| call | {a} | {b} |\n|---|--:|--:|\n",
        this.requests, base.requests
    );
    let cell = |(n, e): (f64, f64)| {
        if e >= 0.005 {
            format!("{n:.2} ({e:.2})")
        } else {
            format!("{n:.2}")
        }
    };
    let (mut ta, mut tb) = (0.0, 0.0);
    for (name, x, y) in rows {
        ta += x.0;
        tb += y.0;
        out.push_str(&format!("| `{name}` | {} | {} |\n", cell(x), cell(y)));
    }
    out.push_str(&format!("| **all of these** | {ta:.2} | {tb:.2} |\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 76.10    0.001522         380      2000         2 epoll_wait
 14.05    0.000281           3      4000      1000 recvfrom
  4.75    0.000095           1      4000           sendto
------ ----------- ----------- --------- --------- ----------------
100.00    0.002000           0     10000      1002 total
";

    #[test]
    fn summary_parses_calls_and_errors() {
        let c = parse_summary(SUMMARY);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c["epoll_wait"], (2000, 2));
        assert_eq!(c["recvfrom"], (4000, 1000));
        assert_eq!(c["sendto"], (4000, 0));
        assert!(parse_summary("strace: Process 12 attached\n").is_empty());
    }

    #[test]
    fn markdown_gives_calls_per_request_side_by_side() {
        let this = Census {
            scenario: "hoptrace-http".into(),
            requests: 1000,
            calls: parse_summary(SUMMARY),
        };
        let mut base = Census {
            scenario: "sidecar".into(),
            requests: 2000,
            ..Census::default()
        };
        base.calls.insert("writev".into(), (4000, 0));
        base.calls.insert("epoll_wait".into(), (4000, 0));
        base.calls.insert("rare".into(), (10, 0));
        let md = markdown(&this, &base);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| `")).collect();
        assert_eq!(
            rows,
            [
                "| `recvfrom` | 4.00 (1.00) | 0.00 |",
                "| `sendto` | 4.00 | 0.00 |",
                "| `epoll_wait` | 2.00 | 2.00 |",
                "| `writev` | 0.00 | 2.00 |",
            ],
            "{md}"
        );
        assert!(md.contains("| **all of these** | 10.00 | 4.00 |"), "{md}");
    }
}
