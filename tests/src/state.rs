//! Run ids, ownership records and stale-run reaping.
//!
//! Each lab records its owner under `/run/hoptrace-lab/<id>/` (`owner`: the pid
//! and start time of the test process; `octet`: the second IPv4 octet it uses).
//! Ids are claimed under an exclusive `flock` on `/run/hoptrace-lab/.lock`, and
//! a lab writes its record before creating any namespace or cgroup, so the
//! reaper (which holds the same lock) never mistakes a lab being built for a
//! leftover.

use crate::{cgroup, netns};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Directory holding one ownership record per live lab.
pub(crate) const RUN_DIR: &str = "/run/hoptrace-lab";
/// Directory (under the cgroup2 mount) holding every lab's cgroups.
pub(crate) const CGROUP_DIR: &str = "hoptrace-lab";
/// Lowest and highest second octet handed out (10.<a>.x.x, fd00:<a>:..).
const OCTET_MIN: u32 = 20;
const OCTET_MAX: u32 = 249;

/// A claimed run id and its address block.
pub(crate) struct Claim {
    pub id: String,
    pub octet: u8,
}

/// An exclusive lock on the run directory, released on drop.
struct Lock {
    _file: File,
}

impl Lock {
    fn acquire() -> Result<Lock> {
        fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        let path = Path::new(RUN_DIR).join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: valid open fd; flock blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("flock");
        }
        Ok(Lock { _file: file })
    }
}

/// The ownership record directory of run `id`.
pub(crate) fn state_dir(id: &str) -> PathBuf {
    Path::new(RUN_DIR).join(id)
}

/// The netns name prefix of every namespace of run `id`.
pub(crate) fn netns_prefix(id: &str) -> String {
    format!("ht{id}-")
}

fn is_id(s: &str) -> bool {
    s.len() == 6
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// "<pid> <starttime>" identifying process `pid` (start time guards against pid reuse).
fn identity(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); fields after the ")" that ends comm start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

fn owner_alive(dir: &Path) -> bool {
    let Ok(owner) = fs::read_to_string(dir.join("owner")) else {
        return false;
    };
    let owner = owner.trim();
    let pid = owner.split_whitespace().next().and_then(|p| p.parse().ok());
    pid.and_then(identity).as_deref() == Some(owner)
}

/// Claims a fresh run id and second octet, reaping stale runs first.
pub(crate) fn claim(cg2: &Path) -> Result<Claim> {
    let _lock = Lock::acquire()?;
    if let Err(e) = reap_locked(cg2) {
        eprintln!("hoptrace-lab: reaping stale runs failed (continuing): {e:#}");
    }
    let live_octets: BTreeSet<u32> = live_ids()?
        .iter()
        .filter_map(|id| fs::read_to_string(state_dir(id).join("octet")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let names = netns::list()?;
    for _ in 0..100 {
        let n: u32 = rand::random::<u32>() & 0xff_ffff;
        let id = format!("{n:06x}");
        let prefix = netns_prefix(&id);
        if state_dir(&id).exists()
            || cg2.join(CGROUP_DIR).join(&id).exists()
            || names.iter().any(|name| name.starts_with(&prefix))
        {
            continue;
        }
        let span = OCTET_MAX - OCTET_MIN + 1;
        let octet = (0..span)
            .map(|i| OCTET_MIN + (n + i) % span)
            .find(|o| !live_octets.contains(o))
            .context("no free second octet: too many live labs")?;
        let dir = state_dir(&id);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let me = identity(std::process::id()).context("reading /proc/self/stat")?;
        fs::write(dir.join("owner"), format!("{me}\n"))?;
        fs::write(dir.join("octet"), format!("{octet}\n"))?;
        return Ok(Claim {
            id,
            octet: u8::try_from(octet)?,
        });
    }
    anyhow::bail!("could not find an unused run id")
}

fn live_ids() -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(RUN_DIR).with_context(|| format!("listing {RUN_DIR}"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if is_id(&name) {
            ids.push(name);
        }
    }
    Ok(ids)
}

/// Removes everything of run `id`: kills its processes (pods and agents),
/// deletes its namespaces, removes its cgroups and its ownership record.
/// Keeps going after an error and returns the first one.
pub(crate) fn teardown(id: &str, cg2: &Path) -> Result<()> {
    let mut first: Option<anyhow::Error> = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    let cg = cg2.join(CGROUP_DIR).join(id);
    keep(cgroup::kill_all(&cg, Duration::from_secs(10)));
    let prefix = netns_prefix(id);
    match netns::list() {
        Ok(names) => {
            for name in names.iter().filter(|n| n.starts_with(&prefix)) {
                keep(netns::delete(name));
            }
        }
        Err(e) => keep(Err(e)),
    }
    keep(cgroup::remove_tree(&cg, Duration::from_secs(10)));
    let dir = state_dir(id);
    if dir.exists() {
        keep(fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display())));
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Removes the leftovers (processes, netns, cgroups, records) of lab runs
/// whose owning process is gone, e.g. after a crashed or killed test run.
/// Labs of live processes are never touched. Returns the reaped run ids.
pub fn reap_stale() -> Result<Vec<String>> {
    let cg2 = cgroup::cgroup2_mount()?;
    let _lock = Lock::acquire()?;
    reap_locked(&cg2)
}

fn reap_locked(cg2: &Path) -> Result<Vec<String>> {
    let mut stale = BTreeSet::new();
    for id in live_ids()? {
        if !owner_alive(&state_dir(&id)) {
            stale.insert(id);
        }
    }
    // Orphans whose record is gone (records are written before anything else).
    if let Ok(dir) = fs::read_dir(cg2.join(CGROUP_DIR)) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_id(&name) && !state_dir(&name).exists() {
                stale.insert(name);
            }
        }
    }
    for name in netns::list()? {
        if let Some(id) = name.strip_prefix("ht").and_then(|r| r.get(..6)) {
            if is_id(id) && name.as_bytes().get(8) == Some(&b'-') && !state_dir(id).exists() {
                stale.insert(id.to_owned());
            }
        }
    }
    let mut reaped = Vec::new();
    for id in stale {
        teardown(&id, cg2).with_context(|| format!("reaping stale lab run {id}"))?;
        reaped.push(id);
    }
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_id("0a1b2c"));
        assert!(!is_id("0A1B2C"));
        assert!(!is_id("0a1b2"));
        assert!(!is_id(".lock"));
    }

    #[test]
    fn own_identity_is_alive() {
        let me = identity(std::process::id()).expect("identity");
        assert!(me.starts_with(&format!("{} ", std::process::id())));
    }
}
