//! CPU time and memory of processes (from `/proc`), and of the whole machine.
//!
//! The bench reads the proxies' CPU time from their cgroups ([`cgroup_cpu`], µs
//! resolution); [`cpu_time`] is the per-process view.
//!
//! CPU time is `utime + stime` of `/proc/PID/stat` (every thread of the process,
//! exited ones included), summed over a process and its descendants (an nginx master
//! and its workers). The kernel reports it in clock ticks (10 ms at `CLK_TCK` 100).
//! Time the kernel spends for a process in softirq context (packet processing on
//! veths and bridges) is charged to whichever task was running, as always on Linux.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;

/// Parent pid and `utime + stime` (ticks) from the text of `/proc/PID/stat`.
pub fn parse_stat(text: &str) -> Result<(u32, u64)> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .context("no ')' in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    if fields.len() < 13 {
        bail!("short /proc/PID/stat: {text:?}");
    }
    let num = |i: usize| -> Result<u64> {
        fields[i]
            .parse::<u64>()
            .with_context(|| format!("field {} of /proc/PID/stat: {:?}", i + 3, fields[i]))
    };
    Ok((u32::try_from(num(1)?)?, num(11)? + num(12)?))
}

/// Ticks per second of `/proc` times.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Every live descendant of `root` (children, their children, ...).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok((ppid, _)) = std::fs::read_to_string(entry.path().join("stat"))
                .map_err(anyhow::Error::from)
                .and_then(|t| parse_stat(&t))
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, ppid)| *ppid == p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The processes of `roots` and all their descendants.
pub fn trees(roots: &[u32]) -> Vec<u32> {
    let mut pids = Vec::new();
    for &r in roots {
        pids.push(r);
        pids.extend(descendants(r));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// CPU time (user + system) used so far by `pids` (processes that are gone count 0).
pub fn cpu_time(pids: &[u32]) -> Duration {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|t| parse_stat(&t).ok())
        .map(|(_, ticks)| ticks)
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec() as f64)
}

/// What the kernel has counted so far for every live thread of some processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCounts {
    /// Context switches, voluntary (the thread waited: each is a wake-up later) and
    /// involuntary (preempted), from `status`.
    pub switches: u64,
    /// Minor page faults (`minflt` of `stat`): a page mapped on first touch, or again
    /// after the allocator gave it back to the kernel.
    pub faults: u64,
    /// Moves to another CPU (`se.nr_migrations` of `sched`; 0 where the kernel does
    /// not show it).
    pub migrations: u64,
}

impl ThreadCounts {
    /// What was counted after `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            switches: self.switches.saturating_sub(before.switches),
            faults: self.faults.saturating_sub(before.faults),
            migrations: self.migrations.saturating_sub(before.migrations),
        }
    }
}

/// [`ThreadCounts`] of every live thread of `pids`, from `/proc/PID/task/TID/`.
/// Threads that exited are not counted.
pub fn thread_counts(pids: &[u32]) -> ThreadCounts {
    let mut n = ThreadCounts::default();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let c = task_counts(&t.path());
            n.switches += c.switches;
            n.faults += c.faults;
            n.migrations += c.migrations;
        }
    }
    n
}

/// [`ThreadCounts`] of one thread, `/proc/PID/task/TID`.
fn task_counts(task: &std::path::Path) -> ThreadCounts {
    let read = |f: &str| std::fs::read_to_string(task.join(f)).ok();
    ThreadCounts {
        switches: read("status").map_or(0, |t| parse_switches(&t)),
        faults: read("stat").and_then(|t| parse_minflt(&t)).unwrap_or(0),
        migrations: read("sched")
            .and_then(|t| parse_migrations(&t))
            .unwrap_or(0),
    }
}

/// `minflt` (field 10) of a `stat` text; the command name may hold spaces and `)`.
pub fn parse_minflt(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// `se.nr_migrations` of a `sched` text.
pub fn parse_migrations(sched: &str) -> Option<u64> {
    sched.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "se.nr_migrations")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// `voluntary_ctxt_switches + nonvoluntary_ctxt_switches` of a `status` text.
pub fn parse_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        })
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// CPU time (user + system) of this whole process so far, nanosecond resolution.
pub fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The value in bytes of a `Name:   123 kB` line.
pub fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix(':')?;
        let kb: u64 = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Resident set size (`VmRSS`) of one process, bytes.
pub fn rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    kb_field(&text, "VmRSS").with_context(|| format!("no VmRSS in {path}"))
}

/// Proportional set size (`Pss` of `smaps_rollup`: shared pages split between the
/// processes sharing them) summed over `pids`, bytes. Fair to multi-process proxies
/// (an nginx master and its forked workers share most pages).
pub fn pss(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|t| kb_field(&t, "Pss"))
        .sum()
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, all CPUs).
pub fn machine_cpu() -> Result<(Duration, Duration)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_cpu(&text)
}

/// Busy and total time from the `cpu` line of `/proc/stat` text.
pub fn parse_machine_cpu(text: &str) -> Result<(Duration, Duration)> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let idle = get(3) + get(4);
    let total: u64 = (0..8).map(get).sum();
    let hz = clock_ticks_per_sec() as f64;
    Ok((
        Duration::from_secs_f64((total - idle) as f64 / hz),
        Duration::from_secs_f64(total as f64 / hz),
    ))
}

/// `usage_usec` of a cgroup v2 directory's `cpu.stat` (every process in it and below).
pub fn cgroup_cpu(dir: &Path) -> Result<Duration> {
    let path = dir.join("cpu.stat");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let usec = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .with_context(|| format!("no usage_usec in {}", path.display()))?;
    Ok(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (nginx: worker (x)) S 4241 4241 1 0 -1 4194624 100 0 0 0 250 75 0 0 20 0 1 0 1 2 3";
        assert_eq!(parse_stat(stat).expect("parse"), (4241, 325));
        assert!(parse_stat("1 (x) S 0").is_err());

        let status = "Name:\thoptrace\nVmHWM:\t  20000 kB\nVmRSS:\t   12345 kB\n\
                      voluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_switches(status), 127);
        assert_eq!(parse_switches("Name:\tx\n"), 0);
        assert_eq!(parse_minflt(stat), Some(100));
        assert_eq!(parse_minflt("1 (x) S 0"), None);
        let sched = "x (1, #threads: 1)\n----\nse.exec_start   :   1.5\n\
                     se.nr_migrations                             :                   42\n";
        assert_eq!(parse_migrations(sched), Some(42));
        assert_eq!(parse_migrations("nr_switches : 3\n"), None);
        assert_eq!(kb_field(status, "VmRSS"), Some(12345 * 1024));
        assert_eq!(kb_field(status, "Pss"), None);

        let (busy, total) =
            parse_machine_cpu("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 1 1 1\n").expect("parse");
        let hz = clock_ticks_per_sec() as f64;
        assert!((busy.as_secs_f64() - 150.0 / hz).abs() < 1e-9);
        assert!((total.as_secs_f64() - 1000.0 / hz).abs() < 1e-9);
    }

    #[test]
    fn measures_this_process() {
        let me = std::process::id();
        assert!(rss(me).expect("rss") > 0);
        assert!(pss(&[me]) > 0);
        assert_eq!(trees(&[me, me])[0], me);
        let before = cpu_time(&[me]);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0 && cpu_time(&[me]) > before);
        assert!(process_cpu() >= Duration::from_millis(100));
        // This thread's own counts: other tests' threads come and go.
        // SAFETY: plain syscall.
        let tid = unsafe { libc::gettid() };
        let task = std::path::PathBuf::from(format!("/proc/{me}/task/{tid}"));
        let before = task_counts(&task);
        std::thread::sleep(Duration::from_millis(5));
        // Touching fresh pages faults them in.
        let pages = vec![1u8; 1 << 22];
        assert!(std::hint::black_box(pages).iter().all(|&b| b == 1));
        let d = task_counts(&task).since(before);
        assert!(thread_counts(&[me]).switches > 0);
        assert!(d.switches > 0, "a sleep is a voluntary switch");
        assert!(d.faults > 0, "4 MiB touched: {d:?}");
    }
}
