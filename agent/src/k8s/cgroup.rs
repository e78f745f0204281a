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
mod tests {
    use super::*;

    const UID: &str = "0c1d9a4e-2f0b-4c7e-9a61-3b5e8f7d2a10";
    const UID_: &str = "0c1d9a4e_2f0b_4c7e_9a61_3b5e8f7d2a10";

    fn mkdir(root: &Path, rel: &str) -> PathBuf {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn pod_dir_names_for_both_drivers() {
        let n = PodDirNames::new(UID);
        assert_eq!(n.cgroupfs, format!("pod{UID}"));
        assert!(n.matches(&format!("kubepods-burstable-pod{UID_}.slice")));
        assert!(n.matches(&format!("kubepods-pod{UID_}.slice")));
        assert!(n.matches(&format!("kubelet-kubepods-besteffort-pod{UID_}.slice")));
        assert!(n.matches(&format!("pod{UID}")));
        assert!(
            !n.matches(&format!("pod{UID_}.slice")),
            "no prefix: not a kubelet name"
        );
        assert!(!n.matches(&format!("pod{UID_}")));
        assert!(!PodDirNames::new("other").matches(&format!("pod{UID}")));

        let sd = n.candidates("kubepods.slice", Some("Burstable"));
        assert_eq!(
            sd[0],
            PathBuf::from(format!(
                "kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
            ))
        );
        assert_eq!(
            n.candidates("kubepods.slice", Some("Guaranteed"))[0],
            PathBuf::from(format!("kubepods-pod{UID_}.slice"))
        );
        assert_eq!(
            n.candidates("kubelet-kubepods.slice", Some("BestEffort"))[0],
            PathBuf::from(format!(
                "kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice"
            ))
        );
        let fs = n.candidates("kubepods", None);
        assert_eq!(fs.len(), 3);
        assert!(fs.contains(&PathBuf::from(format!("burstable/pod{UID}"))));
        assert!(fs.contains(&PathBuf::from(format!("besteffort/pod{UID}"))));
        assert!(fs.contains(&PathBuf::from(format!("pod{UID}"))));
    }

    #[test]
    fn container_dirs_of_each_runtime() {
        let id = "a".repeat(64);
        assert_eq!(
            container_dir(&format!("cri-containerd-{id}.scope")),
            ContainerDir::Container(&id)
        );
        assert_eq!(
            container_dir(&format!("crio-{id}.scope")),
            ContainerDir::Container(&id)
        );
        assert_eq!(
            container_dir(&format!("crio-conmon-{id}.scope")),
            ContainerDir::Monitor(&id)
        );
        assert_eq!(
            container_dir(&format!("docker-{id}.scope")),
            ContainerDir::Container(&id)
        );
        assert_eq!(container_dir(&id), ContainerDir::Container(&id));
        assert_eq!(container_dir("cgroup.procs"), ContainerDir::Other);
        assert_eq!(container_dir("init.scope"), ContainerDir::Other);
    }

    #[test]
    fn unified_and_hybrid_layouts() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        // Unified: the root itself is cgroup2.
        let r = effective_root(root, |p| p == root).expect("unified");
        assert_eq!(r, root);
        // Hybrid: the root is a tmpfs of v1 controllers, cgroup2 is at <root>/unified.
        let unified = root.join("unified");
        let r = effective_root(root, |p| p == unified).expect("hybrid");
        assert_eq!(r, unified);
        // Neither: a clear error naming the flag.
        let err = effective_root(root, |_| false)
            .expect_err("v1 only")
            .to_string();
        assert!(
            err.contains("--cgroup-root") && err.contains("HOPTRACE_CGROUP_ROOT"),
            "{err}"
        );
        // The real check on a temp dir (not cgroup2).
        assert!(!is_cgroup2(root));
    }

    #[test]
    fn finds_pods_under_each_driver_without_walking() {
        let tmp = tempfile::tempdir().expect("tmp");
        let now = Instant::now();
        let uids = [
            "11111111-1111-1111-1111-111111111111",
            "22222222-2222-2222-2222-222222222222",
            "33333333-3333-3333-3333-333333333333",
        ];
        let u = |i: usize| uids[i].replace('-', "_");
        // systemd driver
        let sd = tmp.path().join("systemd");
        let b = mkdir(
            &sd,
            &format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                u(0)
            ),
        );
        let e = mkdir(
            &sd,
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                u(1)
            ),
        );
        let g = mkdir(&sd, &format!("kubepods.slice/kubepods-pod{}.slice", u(2)));
        mkdir(&b, &format!("cri-containerd-{}.scope", "f".repeat(64)));
        let mut r = CgroupResolver::new(sd);
        // QoS hints are only an order: a wrong one still finds the pod.
        let pods = [
            (uids[0], Some("Burstable")),
            (uids[1], None),
            (uids[2], Some("BestEffort")),
        ];
        let found = r.resolve(&pods, now);
        assert_eq!(found.get(uids[0]), Some(&b));
        assert_eq!(found.get(uids[1]), Some(&e));
        assert_eq!(found.get(uids[2]), Some(&g));
        assert_eq!(r.walks(), 0);

        // cgroupfs driver (hybrid: under unified/)
        let fs = tmp.path().join("cgroupfs/unified");
        let b = mkdir(&fs, &format!("kubepods/burstable/pod{}", uids[0]));
        let e = mkdir(&fs, &format!("kubepods/besteffort/pod{}", uids[1]));
        let g = mkdir(&fs, &format!("kubepods/pod{}", uids[2]));
        mkdir(&g, &"0".repeat(64));
        let mut r = CgroupResolver::new(fs);
        let found = r.resolve(&pods, now);
        assert_eq!(found.get(uids[0]), Some(&b));
        assert_eq!(found.get(uids[1]), Some(&e));
        assert_eq!(found.get(uids[2]), Some(&g));
        assert_eq!(r.walks(), 0);
    }

    #[test]
    fn nested_trees_are_found_by_a_bounded_walk_then_cached() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        let t0 = Instant::now();
        // kind: kubelet.slice/kubelet-kubepods.slice/...
        let kind = mkdir(
            root,
            &format!("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice"),
        );
        mkdir(&kind, &format!("crio-{}.scope", "c".repeat(64)));
        mkdir(&kind, &format!("crio-conmon-{}.scope", "c".repeat(64)));
        // a per-node container cgroup holding a cgroupfs kubelet tree
        let other = "44444444-4444-4444-4444-444444444444";
        let nested = mkdir(
            root,
            &format!("system.slice/docker-abc.scope/kubepods/burstable/pod{other}"),
        );
        // unrelated noise
        for i in 0..50 {
            mkdir(root, &format!("system.slice/svc{i}.service"));
        }
        let mut r = CgroupResolver::new(root.to_path_buf());
        let found = r.resolve(&[(UID, None), (other, Some("Burstable"))], t0);
        assert_eq!(found.get(UID), Some(&kind));
        assert_eq!(found.get(other), Some(&nested));
        assert_eq!(r.walks(), 1);

        // Later pods in the same trees are direct hits: no more walks.
        let third = "55555555-5555-5555-5555-555555555555";
        let third_dir = mkdir(
            root,
            &format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{}.slice",
                third.replace('-', "_")
            ),
        );
        let later = t0 + WALK_INTERVAL * 10;
        let found = r.resolve(&[(UID, None), (third, Some("Guaranteed"))], later);
        assert_eq!(found.get(third), Some(&third_dir));
        assert_eq!(r.walks(), 1);

        // A missing pod walks at most once per interval.
        let ghost = "66666666-6666-6666-6666-666666666666";
        assert!(r.resolve(&[(ghost, None)], later).is_empty());
        assert!(r
            .resolve(&[(ghost, None)], later + Duration::from_millis(300))
            .is_empty());
        assert_eq!(r.walks(), 2);
        assert!(r
            .resolve(&[(ghost, None)], later + WALK_INTERVAL)
            .is_empty());
        assert_eq!(r.walks(), 3);

        // A pod created below a not-yet-known root after a walk: found by the next one.
        let late = mkdir(root, &format!("late.slice/pod{ghost}"));
        let found = r.resolve(&[(ghost, None)], later + WALK_INTERVAL * 2);
        assert_eq!(found.get(ghost), Some(&late));

        // A deleted pod directory is dropped from the cache.
        std::fs::remove_dir_all(&third_dir).expect("rm");
        assert!(r.resolve(&[(third, None)], later).is_empty());
    }

    #[test]
    fn the_walk_is_bounded_in_depth() {
        let tmp = tempfile::tempdir().expect("tmp");
        let deep = (0..WALK_MAX_DEPTH)
            .map(|i| format!("d{i}"))
            .collect::<Vec<_>>()
            .join("/");
        mkdir(tmp.path(), &format!("{deep}/pod{UID}"));
        let mut r = CgroupResolver::new(tmp.path().to_path_buf());
        assert!(r.resolve(&[(UID, None)], Instant::now()).is_empty());
        let shallow = (0..WALK_MAX_DEPTH - 1)
            .map(|i| format!("s{i}"))
            .collect::<Vec<_>>()
            .join("/");
        let dir = mkdir(tmp.path(), &format!("{shallow}/pod{UID}"));
        let found = r.resolve(&[(UID, None)], Instant::now() + WALK_INTERVAL);
        assert_eq!(found.get(UID), Some(&dir));
    }

    #[test]
    fn pod_like_names() {
        assert!(looks_like_pod_dir(&format!("pod{UID}")));
        assert!(looks_like_pod_dir(&format!(
            "kubepods-besteffort-pod{UID_}.slice"
        )));
        assert!(!looks_like_pod_dir("podman.slice"));
        assert!(!looks_like_pod_dir("kubepods-besteffort.slice"));
        assert!(is_kubepods_root("kubepods") && is_kubepods_root("kubelet-kubepods.slice"));
        assert!(!is_kubepods_root("kubepods-burstable.slice"));
    }
}
