//! cgroup v2 helpers: find the mount, move/kill processes, remove trees.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup v2 mount point, read from `/proc/mounts`.
///
/// Prefers `/sys/fs/cgroup` when that is itself cgroup2 (unified layout), else
/// the first cgroup2 mount (the hybrid layout's `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let found: Vec<&str> = mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then_some(dir)
        })
        .collect();
    if found.contains(&"/sys/fs/cgroup") {
        return Ok(PathBuf::from("/sys/fs/cgroup"));
    }
    match found.first() {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => bail!("no cgroup2 filesystem in /proc/mounts: the lab needs cgroup v2"),
    }
}

/// True when no process is left in `dir` or below (`populated 0` in
/// `cgroup.events`). A missing directory counts as empty.
pub fn is_empty(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => !events.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => true,
    }
}

/// SIGKILLs every process in `dir` and its descendants (`cgroup.kill`), then
/// waits up to `timeout` for the tree to become empty.
pub fn kill_all(dir: &Path, timeout: Duration) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    fs::write(dir.join("cgroup.kill"), "1")
        .with_context(|| format!("writing {}/cgroup.kill", dir.display()))?;
    let start = Instant::now();
    while !is_empty(dir) {
        if start.elapsed() > timeout {
            bail!("processes left in {} after cgroup.kill", dir.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Removes the cgroup directory `dir` and all its sub-cgroups, deepest
/// first. Retries `EBUSY` (exiting tasks) for up to `timeout`. Missing is fine.
pub fn remove_tree(dir: &Path, timeout: Duration) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path(), timeout)?;
        }
    }
    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).with_context(|| format!("rmdir {}", dir.display())),
        }
    }
}

/// The cgroup v2 path (relative to the mount, e.g. `/hoptrace-lab/..`) of
/// process `pid`, from `/proc/<pid>/cgroup`.
pub fn of_pid(pid: u32) -> Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .with_context(|| format!("process {pid} has no cgroup v2 entry"))
}
