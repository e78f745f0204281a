//! What a node changes on the machine, each undone on drop: the bridge the pods
//! hang off, the cgroup trees of the pods and of the container runtime, and the
//! mount points created for the runtime's private mounts. [`cleanup`] removes what an
//! interrupted run left, before a run starts.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The pods' bridge (a name of its own: other labs on the machine use theirs).
pub const BRIDGE: &str = "htk0";
/// The bridge's address: the node's address, where the API server and the OTLP
/// receiver listen for the pods. The pods' subnet is its /24 (10.244.77.0/24).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 77, 1);
/// The subnet's prefix length.
pub const PREFIX: u8 = 24;
/// The kubelet's `--cgroup-root` (one directory in every hierarchy).
pub const POD_CGROUP: &str = "hoptrace-cluster";
/// containerd's cgroup (unified hierarchy), which its shims inherit.
pub const RUNTIME_CGROUP: &str = "hoptrace-cluster-runtime";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// The bridge `htk0` with [`GATEWAY`]/24, deleted on drop.
pub struct Bridge(());

impl Bridge {
    /// Creates the bridge (an earlier one of that name is deleted first).
    pub fn create() -> Result<Bridge> {
        if bridge_exists() {
            ip(&["link", "del", BRIDGE])?;
        }
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        let bridge = Bridge(());
        ip(&["addr", "add", &format!("{GATEWAY}/{PREFIX}"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        Ok(bridge)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if bridge_exists() {
            if let Err(e) = ip(&["link", "del", BRIDGE]) {
                eprintln!("node teardown: {e:#}");
            }
        }
    }
}

/// The machine's cgroup mounts.
#[derive(Clone, Debug)]
pub struct Cgroups {
    /// The cgroup2 mount: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
    /// layout.
    pub unified: PathBuf,
    /// cgroup v1 hierarchies (empty on a pure cgroup2 layout).
    pub v1: Vec<PathBuf>,
}

impl Cgroups {
    /// Reads `/proc/self/mountinfo`.
    pub fn detect() -> Result<Cgroups> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut unified = None;
        let mut v1 = Vec::new();
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split(' ').nth(4) else {
                continue;
            };
            match right.split(' ').next() {
                Some("cgroup2") => unified = Some(PathBuf::from(point)),
                Some("cgroup") => v1.push(PathBuf::from(point)),
                _ => {}
            }
        }
        let unified = unified.context("no cgroup2 mount in /proc/self/mountinfo")?;
        Ok(Cgroups { unified, v1 })
    }

    /// True for a hybrid (or legacy) layout: the kubelet uses cgroup v1.
    pub fn hybrid(&self) -> bool {
        !self.v1.is_empty()
    }

    /// Every hierarchy.
    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.v1.iter().chain(std::iter::once(&self.unified))
    }
}

/// The kubelet's cgroup root in every hierarchy and containerd's in the unified
/// one: every process in them is killed and the directories are removed on drop.
pub struct CgroupTrees {
    cgroups: Cgroups,
}

impl CgroupTrees {
    /// Creates them (after removing what an earlier run left).
    pub fn create(cgroups: &Cgroups) -> Result<CgroupTrees> {
        remove_trees(cgroups);
        let trees = CgroupTrees {
            cgroups: cgroups.clone(),
        };
        for h in cgroups.all() {
            let dir = h.join(POD_CGROUP);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // A new cpuset cgroup has no CPUs or memory nodes: its parent's.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(h.join(file)) {
                    std::fs::write(dir.join(file), v.trim())
                        .with_context(|| format!("writing {}", dir.join(file).display()))?;
                }
            }
        }
        if !cgroups.hybrid() {
            // cgroup2 only: the kubelet needs these controllers below its root (those
            // the machine's root delegates; the root itself is left as it is).
            let dir = cgroups.unified.join(POD_CGROUP);
            for c in ["cpu", "cpuset", "memory", "pids", "io", "hugetlb"] {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
        let runtime = cgroups.unified.join(RUNTIME_CGROUP);
        std::fs::create_dir_all(&runtime)
            .with_context(|| format!("creating {}", runtime.display()))?;
        Ok(trees)
    }

    /// Moves `pid` into containerd's cgroup.
    pub fn enter_runtime(&self, pid: u32) -> Result<()> {
        let procs = self
            .cgroups
            .unified
            .join(RUNTIME_CGROUP)
            .join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .with_context(|| format!("writing {}", procs.display()))
    }
}

impl Drop for CgroupTrees {
    fn drop(&mut self) {
        remove_trees(&self.cgroups);
    }
}

/// Kills every process of a unified-hierarchy cgroup tree (`cgroup.kill`, Linux
/// 5.14) and waits until it is empty.
fn kill_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Err(e) = std::fs::write(dir.join("cgroup.kill"), "1") {
        eprintln!("node teardown: {}: {e}", dir.join("cgroup.kill").display());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if !events.lines().any(|l| l == "populated 1") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "node teardown: {} still has processes after 10 s",
        dir.display()
    );
}

/// Removes a directory tree of cgroups, deepest first (retrying while the kernel
/// still releases killed tasks).
fn rmdir_tree(dir: &Path) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    if !dir.exists() {
        return;
    }
    let mut dirs = Vec::new();
    walk(dir, &mut dirs);
    for d in dirs {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = std::fs::remove_dir(&d) {
            if Instant::now() > deadline {
                eprintln!("node teardown: rmdir {}: {e}", d.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Pods first, then containerd and its shims; then every directory.
fn remove_trees(cgroups: &Cgroups) {
    kill_tree(&cgroups.unified.join(POD_CGROUP));
    kill_tree(&cgroups.unified.join(RUNTIME_CGROUP));
    for h in cgroups.all() {
        rmdir_tree(&h.join(POD_CGROUP));
    }
    rmdir_tree(&cgroups.unified.join(RUNTIME_CGROUP));
}

/// Host directories the runtime's private mounts go over ([`super::PRIVATE_DIRS`]):
/// those missing are created, and removed on drop (they are empty on the host: the
/// mounts live in the runtime's own mount namespace). The list of created ones is
/// kept in a file, so that [`cleanup`] can remove them after an interrupted run.
pub struct MountPoints {
    created: Vec<PathBuf>,
    record: PathBuf,
}

impl MountPoints {
    /// Creates the missing ones of `dirs`.
    pub fn create(dirs: &[&str], record: &Path) -> Result<MountPoints> {
        let mut points = MountPoints {
            created: Vec::new(),
            record: record.to_path_buf(),
        };
        for d in dirs {
            let p = PathBuf::from(d);
            if !p.exists() {
                std::fs::create_dir_all(&p).with_context(|| format!("creating {d}"))?;
                points.created.push(p);
                let list: Vec<String> = points
                    .created
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                std::fs::write(record, list.join("\n"))?;
            }
        }
        Ok(points)
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        for p in self.created.iter().rev() {
            if let Err(e) = std::fs::remove_dir(p) {
                eprintln!("node teardown: rmdir {}: {e}", p.display());
            }
        }
        let _ = std::fs::remove_file(&self.record);
    }
}

/// Removes what an interrupted run left: processes and cgroups, the bridge, the
/// mount points it created (listed in `record`).
pub fn cleanup(cgroups: &Cgroups, record: &Path) {
    remove_trees(cgroups);
    if bridge_exists() {
        let _ = ip(&["link", "del", BRIDGE]);
    }
    if let Ok(list) = std::fs::read_to_string(record) {
        for p in list.lines().rev() {
            let _ = std::fs::remove_dir(p);
        }
        let _ = std::fs::remove_file(record);
    }
}
