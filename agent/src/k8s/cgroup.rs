//! Finding a pod's cgroup v2 directory from its UID.
//!
//! The kubelet names pod cgroups after the pod UID, under a `kubepods` tree whose
//! shape depends on its cgroup driver:
//!
//! | driver | Guaranteed | Burstable / BestEffort |
//! | --- | --- | --- |
//! | systemd | `kubepods.slice/kubepods-pod<uid_>.slice` | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice` |
//! | cgroupfs | `kubepods/pod<uid>` | `kubepods/burstable/pod<uid>` |
//!
//! (`<uid_>` is the UID with `-` replaced by `_`.) The tree itself may sit below a
//! prefix: kind and other nested setups use e.g.
//! `kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/...` or a
//! per-node container's cgroup. The resolver therefore keeps a list of *kubepods
//! roots* (directories named `kubepods` or `…kubepods.slice`): it starts with the
//! ones directly under the cgroup root, tries the exact paths under each root
//! first, and only when a pod cannot be found that way walks the tree (bounded in
//! depth and size, at most once per [`WALK_INTERVAL`]) to discover more roots or the
//! pod's directory itself. Found directories are cached per UID.
//!
//! Processes live in the container cgroups below the pod's directory: containerd
//! `cri-containerd-<id>.scope` (systemd) or `<id>` (cgroupfs), CRI-O
//! `crio-<id>.scope`; CRI-O's `crio-conmon-<id>.scope` holds the container monitor,
//! which runs in the host network namespace.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How often at most the cgroup tree is walked for pods not found at known paths.
pub const WALK_INTERVAL: Duration = Duration::from_secs(2);
/// How deep below the cgroup root the walk looks.
pub const WALK_MAX_DEPTH: usize = 7;
/// How many directories one walk visits at most.
pub const WALK_MAX_DIRS: usize = 20_000;

/// Errors setting up cgroup resolution.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither the root nor `<root>/unified` is cgroup v2.
    #[error("--cgroup-root {root}: neither it nor {root}/unified is a cgroup v2 filesystem; set --cgroup-root (HOPTRACE_CGROUP_ROOT) to the host's cgroup mount (mount the host's /sys/fs/cgroup into the agent's pod); cgroup v1-only hosts are not supported")]
    NotCgroup2 {
        /// The configured root.
        root: String,
    },
}

/// The cgroup v2 directory to search: `root` when it is cgroup2 (unified layout),
/// else `<root>/unified` when that is (hybrid layout). `is_cgroup2` tells whether a
/// path is on a cgroup2 filesystem ([`is_cgroup2`] outside tests).
pub fn effective_root(
    root: &Path,
    is_cgroup2: impl Fn(&Path) -> bool,
) -> Result<PathBuf, CgroupError> {
    if is_cgroup2(root) {
        return Ok(root.to_path_buf());
    }
    let unified = root.join("unified");
    if is_cgroup2(&unified) {
        return Ok(unified);
    }
    Err(CgroupError::NotCgroup2 {
        root: root.display().to_string(),
    })
}

/// True when `path` is a directory on a cgroup2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    nix::sys::statfs::statfs(path)
        .map(|st| st.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// What a directory below a pod's cgroup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerDir<'a> {
    /// A container (its processes are the pod's): runtime-independent id.
    Container(&'a str),
    /// CRI-O's container monitor (`crio-conmon-<id>.scope`): runs in the host netns.
    Monitor(&'a str),
    /// Something else.
    Other,
}

/// Classifies a directory name below a pod's cgroup.
pub fn container_dir(name: &str) -> ContainerDir<'_> {
    if let Some(id) = name
        .strip_prefix("crio-conmon-")
        .and_then(|s| s.strip_suffix(".scope"))
    {
        return ContainerDir::Monitor(id);
    }
    for prefix in ["cri-containerd-", "crio-", "docker-"] {
        if let Some(id) = name
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(".scope"))
        {
            return ContainerDir::Container(id);
        }
    }
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return ContainerDir::Container(name);
    }
    ContainerDir::Other
}

/// The directory names a pod with `uid` can have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDirNames {
    /// cgroupfs driver: `pod<uid>`.
    pub cgroupfs: String,
    /// systemd driver, without the slice prefix: `pod<uid_>.slice` (the full name is
    /// `<prefix>-pod<uid_>.slice`, e.g. `kubepods-burstable-pod<uid_>.slice`).
    pub systemd_suffix: String,
}

impl PodDirNames {
    /// Names for `uid`.
    pub fn new(uid: &str) -> Self {
        Self {
            cgroupfs: format!("pod{uid}"),
            systemd_suffix: format!("pod{}.slice", uid.replace('-', "_")),
        }
    }

    /// True when `name` is this pod's directory name under either driver.
    pub fn matches(&self, name: &str) -> bool {
        name == self.cgroupfs
            || name
                .strip_suffix(&self.systemd_suffix)
                .is_some_and(|p| p.ends_with('-'))
    }

    /// Paths of the pod's directory relative to the kubepods root `root_name`
    /// (`kubepods`, `kubepods.slice`, `kubelet-kubepods.slice`, ...), the QoS class
    /// (`Guaranteed` | `Burstable` | `BestEffort`) first when known.
    pub fn candidates(&self, root_name: &str, qos: Option<&str>) -> Vec<PathBuf> {
        let tiers = match qos {
            Some("Guaranteed") => [None, Some("burstable"), Some("besteffort")],
            Some("BestEffort") => [Some("besteffort"), Some("burstable"), None],
            _ => [Some("burstable"), Some("besteffort"), None],
        };
        let systemd_stem = root_name.strip_suffix(".slice");
        tiers
            .iter()
            .map(|tier| match (systemd_stem, tier) {
                (Some(stem), Some(t)) => PathBuf::from(format!("{stem}-{t}.slice"))
                    .join(format!("{stem}-{t}-{}", self.systemd_suffix)),
                (Some(stem), None) => PathBuf::from(format!("{stem}-{}", self.systemd_suffix)),
                (None, Some(t)) => Path::new(t).join(&self.cgroupfs),
                (None, None) => PathBuf::from(&self.cgroupfs),
            })
            .collect()
    }
}

/// True for a directory name that roots a kubelet pod tree: `kubepods` (cgroupfs)
/// or `kubepods.slice` / `<prefix>-kubepods.slice` (systemd).
pub fn is_kubepods_root(name: &str) -> bool {
    name == "kubepods" || name == "kubepods.slice" || name.ends_with("-kubepods.slice")
}

/// True for names that are some pod's directory (the walk does not descend into them).
fn looks_like_pod_dir(name: &str) -> bool {
    let uuid_like = |s: &str| {
        s.len() == 36
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
    };
    if let Some(uid) = name.strip_prefix("pod") {
        return uuid_like(uid);
    }
    name.strip_suffix(".slice")
        .and_then(|s| s.rsplit_once("-pod"))
        .is_some_and(|(_, uid)| uuid_like(uid))
}

/// Finds and caches pod cgroup directories.
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    kubepods_roots: Vec<PathBuf>,
    cache: HashMap<String, PathBuf>,
    last_walk: Option<Instant>,
    walks: u64,
}

impl CgroupResolver {
    /// A resolver searching below `root` (already the cgroup v2 directory, see
    /// [`effective_root`]).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            kubepods_roots: Vec::new(),
            cache: HashMap::new(),
            last_walk: None,
            walks: 0,
        }
    }

    /// The directory searched.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many tree walks were made so far.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// Forgets pods whose UIDs are not in `keep` (deleted pods).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.cache.retain(|uid, _| keep(uid));
    }

    /// The cgroup directory of every pod in `pods` (`(uid, qos class)`) that can be
    /// found now; pods missing from the result are not (yet) there.
    pub fn resolve(
        &mut self,
        pods: &[(&str, Option<&str>)],
        now: Instant,
    ) -> HashMap<String, PathBuf> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for &(uid, qos) in pods {
            match self.lookup(uid, qos) {
                Some(dir) => {
                    found.insert(uid.to_string(), dir);
                }
                None => missing.push((uid, qos)),
            }
        }
        let walk_due = self
            .last_walk
            .is_none_or(|t| now.duration_since(t) >= WALK_INTERVAL);
        if missing.is_empty() || !walk_due {
            return found;
        }
        self.last_walk = Some(now);
        self.walk(&missing);
        for (uid, qos) in missing {
            if let Some(dir) = self.lookup(uid, qos) {
                found.insert(uid.to_string(), dir);
            }
        }
        found
    }

    /// Cache, then the exact paths under every known kubepods root.
    fn lookup(&mut self, uid: &str, qos: Option<&str>) -> Option<PathBuf> {
        if let Some(dir) = self.cache.get(uid) {
            if dir.is_dir() {
                return Some(dir.clone());
            }
            self.cache.remove(uid);
        }
        if self.kubepods_roots.is_empty() {
            for name in ["kubepods.slice", "kubepods"] {
                let dir = self.root.join(name);
                if dir.is_dir() {
                    self.kubepods_roots.push(dir);
                }
            }
        }
        let names = PodDirNames::new(uid);
        for root in &self.kubepods_roots {
            let Some(root_name) = root.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            for rel in names.candidates(root_name, qos) {
                let dir = root.join(rel);
                if dir.is_dir() {
                    self.cache.insert(uid.to_string(), dir.clone());
                    return Some(dir);
                }
            }
        }
        None
    }

    /// Breadth-first walk below the root: records new kubepods roots (without
    /// descending into them: the exact paths cover their insides) and caches the
    /// directories of `missing` pods found anywhere else.
    fn walk(&mut self, missing: &[(&str, Option<&str>)]) {
        self.walks += 1;
        let names: Vec<(&str, PodDirNames)> = missing
            .iter()
            .map(|(uid, _)| (*uid, PodDirNames::new(uid)))
            .collect();
        let mut queue = VecDeque::from([(self.root.clone(), 0usize)]);
        let mut visited = 0usize;
        while let Some((dir, depth)) = queue.pop_front() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                visited += 1;
                if visited > WALK_MAX_DIRS {
                    tracing::debug!(root = %self.root.display(), "cgroup walk stopped after {WALK_MAX_DIRS} directories");
                    return;
                }
                let path = entry.path();
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if is_kubepods_root(name) {
                    if !self.kubepods_roots.contains(&path) {
                        tracing::debug!(dir = %path.display(), "found a kubepods cgroup tree");
                        self.kubepods_roots.push(path);
                    }
                    continue;
                }
                if let Some((uid, _)) = names.iter().find(|(_, n)| n.matches(name)) {
                    self.cache.insert((*uid).to_string(), path);
                    continue;
                }
                if depth + 1 < WALK_MAX_DEPTH && !looks_like_pod_dir(name) {
                    queue.push_back((path, depth + 1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
