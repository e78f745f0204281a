//! Finding a pod's network namespace from its cgroup.
//!
//! Kubernetes does not publish where a pod's network namespace is, but every process
//! of the pod is in it (host-network pods are never enrolled), and every process of
//! the pod is in the pod's cgroup subtree. So: read `cgroup.procs` of the pod's
//! directory and its descendants, and open `<proc-root>/<pid>/ns/net`.
//!
//! A namespace is identified by its nsfs inode. Once chosen, a path is kept while it
//! still resolves to the same inode, so the same namespace is never "changed" just
//! because another process could name it. The process chosen is the oldest one (by
//! start time, then pid): the sandbox's `pause` process, which lives as long as the
//! namespace. When the path stops resolving (the process exited, or its pid now
//! names something else), it is resolved again: the same inode through another
//! process means the same namespace (no re-enrollment, see
//! `Workload::same_target`); a new inode means the sandbox was recreated and the pod
//! is re-enrolled.
//!
//! Once found, a pod's namespace stays chosen while no usable process can be found
//! (the gap between a sandbox's death and its replacement), so that gap does not
//! churn the pod; the pod leaves the desired set when its cgroup directory or its API
//! object goes away.
//!
//! Processes in the host's network namespace (CRI-O's `conmon`, or a process caught
//! between joining the cgroup and joining the pod's netns) are never chosen.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::cgroup::{container_dir, ContainerDir};

/// How deep below the pod's cgroup processes are looked for (pod → container → ...).
const MAX_DEPTH: usize = 3;

/// Why a pod's network namespace cannot be found yet (the agent retries every tick).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetnsPending {
    /// No process in the pod's cgroup subtree.
    #[error("no process in the pod's cgroup {0} yet")]
    NoProcess(String),
    /// Processes exist but none could be used.
    #[error("none of the {count} processes in {cgroup} has a usable network namespace ({reason}); the agent needs hostPID and --proc-root pointing at the host's /proc")]
    Unusable {
        /// The pod's cgroup.
        cgroup: String,
        /// How many processes were tried.
        count: usize,
        /// Why the last one was rejected.
        reason: String,
    },
}

/// A pod's network namespace as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetns {
    /// `<proc-root>/<pid>/ns/net`.
    pub path: PathBuf,
    /// The process it was found through.
    pub pid: u32,
    /// The namespace's nsfs inode.
    pub inode: u64,
}

/// Finds and remembers pod network namespaces.
#[derive(Debug)]
pub struct NetnsResolver {
    proc_root: PathBuf,
    host: HashSet<u64>,
    chosen: HashMap<String, PodNetns>,
}

impl NetnsResolver {
    /// A resolver reading processes from `proc_root`; namespaces whose inodes are in
    /// `host` (the agent's and the host's own) are never chosen.
    pub fn new(proc_root: PathBuf, host: HashSet<u64>) -> Self {
        Self {
            proc_root,
            host,
            chosen: HashMap::new(),
        }
    }

    /// The inodes of the agent's network namespace and of `<proc_root>/1`'s (the
    /// host's init when `proc_root` is the host's /proc), whichever can be read.
    pub fn host_inodes(proc_root: &Path) -> HashSet<u64> {
        [
            PathBuf::from("/proc/self/ns/net"),
            proc_root.join("1/ns/net"),
        ]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.ino()))
        .collect()
    }

    /// Forgets pods whose UIDs are not in `keep` (deleted pods).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.chosen.retain(|uid, _| keep(uid));
    }

    /// The network namespace of pod `uid` whose cgroup is `cgroup`: the previous
    /// choice while its path still names the same namespace, else the oldest usable
    /// process's.
    pub fn resolve(&mut self, uid: &str, cgroup: &Path) -> Result<PodNetns, NetnsPending> {
        if let Some(prev) = self.chosen.get(uid) {
            if inode(&prev.path) == Some(prev.inode) {
                return Ok(prev.clone());
            }
        }
        match self.find(cgroup) {
            Ok(ns) => {
                if let Some(prev) = self.chosen.get(uid) {
                    if prev.inode == ns.inode {
                        tracing::debug!(pod_uid = uid, old = %prev.path.display(), new = %ns.path.display(), "same network namespace through another process");
                    } else {
                        tracing::info!(
                            pod_uid = uid,
                            old_inode = prev.inode,
                            new_inode = ns.inode,
                            "the pod's network namespace was replaced (sandbox restarted)"
                        );
                    }
                }
                self.chosen.insert(uid.to_string(), ns.clone());
                Ok(ns)
            }
            // Found before, no usable process now (e.g. between a sandbox's death and
            // its replacement): keep the last choice rather than churn the pod. The
            // agent checks the inode again before it ever enrolls from this path.
            Err(why) => match self.chosen.get(uid) {
                Some(prev) => {
                    tracing::debug!(
                        pod_uid = uid,
                        "keeping the last network namespace found: {why}"
                    );
                    Ok(prev.clone())
                }
                None => Err(why),
            },
        }
    }

    fn find(&self, cgroup: &Path) -> Result<PodNetns, NetnsPending> {
        let mut pids = Vec::new();
        collect_pids(cgroup, 0, &mut pids);
        if pids.is_empty() {
            return Err(NetnsPending::NoProcess(cgroup.display().to_string()));
        }
        let mut procs: Vec<(u64, u32)> = pids
            .iter()
            .map(|&pid| (self.start_time(pid).unwrap_or(u64::MAX), pid))
            .collect();
        procs.sort_unstable();
        let mut reason = String::new();
        for (_, pid) in &procs {
            let path = self.proc_root.join(pid.to_string()).join("ns/net");
            match std::fs::metadata(&path) {
                Ok(m) if self.host.contains(&m.ino()) => {
                    reason = format!("process {pid} is in the host network namespace");
                }
                Ok(m) => {
                    return Ok(PodNetns {
                        path,
                        pid: *pid,
                        inode: m.ino(),
                    })
                }
                Err(e) => reason = format!("{}: {e}", path.display()),
            }
        }
        Err(NetnsPending::Unusable {
            cgroup: cgroup.display().to_string(),
            count: procs.len(),
            reason,
        })
    }

    /// Start time (clock ticks since boot) of `pid` from `<proc_root>/<pid>/stat`.
    fn start_time(&self, pid: u32) -> Option<u64> {
        procfs::process::Process::new_with_root(self.proc_root.join(pid.to_string()))
            .and_then(|p| p.stat())
            .map(|s| s.starttime)
            .ok()
    }
}

/// The nsfs inode `path` names now.
fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Pids in `dir/cgroup.procs` and its descendants' (down to [`MAX_DEPTH`]), skipping
/// container monitors.
fn collect_pids(dir: &Path, depth: usize, out: &mut Vec<u32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        if matches!(
            container_dir(&name.to_string_lossy()),
            ContainerDir::Monitor(_)
        ) {
            continue;
        }
        collect_pids(&entry.path(), depth + 1, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc where `ns/net` of each pid is a plain file: the "namespace" is
    /// that file's inode. `link` makes two pids share one namespace.
    struct FakeProc {
        dir: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tmp"),
            }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("proc")
        }

        fn add(&self, pid: u32, start: u64, share_with: Option<u32>) {
            let dir = self.root().join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).expect("mkdir");
            // Fields: pid (comm) state ppid ... starttime is field 22.
            let mut fields = vec!["0".to_string(); 50];
            fields[18] = start.to_string();
            std::fs::write(
                dir.join("stat"),
                format!("{pid} (p) S {}", fields.join(" ")),
            )
            .expect("stat");
            match share_with {
                Some(other) => std::fs::hard_link(
                    self.root().join(other.to_string()).join("ns/net"),
                    dir.join("ns/net"),
                )
                .expect("link"),
                None => std::fs::write(dir.join("ns/net"), b"").expect("ns"),
            }
        }

        /// Gives `pid` a namespace of its own, guaranteed to be a new inode (the new
        /// file exists before the old one is unlinked).
        fn renew(&self, pid: u32) {
            let net = self.root().join(pid.to_string()).join("ns/net");
            let tmp = net.with_extension("new");
            std::fs::write(&tmp, b"").expect("ns");
            std::fs::rename(&tmp, &net).expect("rename");
        }

        fn remove(&self, pid: u32) {
            std::fs::remove_dir_all(self.root().join(pid.to_string())).expect("rm");
        }

        fn ino(&self, pid: u32) -> u64 {
            inode(&self.root().join(pid.to_string()).join("ns/net")).expect("ino")
        }
    }

    fn cgroup(tmp: &Path, procs: &[(&str, &[u32])]) -> PathBuf {
        let pod = tmp.join("cg/kubepods-pod1.slice");
        for (rel, pids) in procs {
            let dir = if rel.is_empty() {
                pod.clone()
            } else {
                pod.join(rel)
            };
            std::fs::create_dir_all(&dir).expect("mkdir");
            let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
            std::fs::write(dir.join("cgroup.procs"), text).expect("procs");
        }
        pod
    }

    #[test]
    fn picks_the_oldest_process_outside_the_host_netns() {
        let fake = FakeProc::new();
        fake.add(1, 1, None); // host init
        fake.add(300, 50, Some(1)); // crio-conmon, host netns
        fake.add(310, 60, None); // pause
        fake.add(320, 70, Some(310)); // app, same netns
        fake.add(250, 80, Some(310)); // a lower pid that started later
        let sandbox = "a".repeat(64);
        let cg = cgroup(
            fake.dir.path(),
            &[
                ("", &[]),
                (&format!("crio-conmon-{sandbox}.scope"), &[300]),
                (&format!("crio-{sandbox}.scope"), &[310]),
                (&format!("crio-{}.scope", "b".repeat(64)), &[320, 250]),
            ],
        );
        let host = NetnsResolver::host_inodes(&fake.root());
        assert!(host.contains(&fake.ino(1)));
        let mut r = NetnsResolver::new(fake.root(), host);
        let ns = r.resolve("uid", &cg).expect("found");
        assert_eq!(ns.pid, 310);
        assert_eq!(ns.inode, fake.ino(310));
        assert_eq!(ns.path, fake.root().join("310/ns/net"));
    }

    #[test]
    fn pending_until_a_process_appears() {
        let fake = FakeProc::new();
        fake.add(1, 1, None);
        let cg = cgroup(fake.dir.path(), &[("", &[]), ("c1", &[])]);
        let mut r = NetnsResolver::new(fake.root(), NetnsResolver::host_inodes(&fake.root()));
        assert!(matches!(
            r.resolve("uid", &cg),
            Err(NetnsPending::NoProcess(_))
        ));
        // Only a process still in the host netns: pending, with the reason.
        std::fs::write(cg.join("c1/cgroup.procs"), "1\n").expect("procs");
        let err = r.resolve("uid", &cg).expect_err("host netns");
        assert!(err.to_string().contains("host network namespace"), "{err}");
        fake.add(7, 5, None);
        std::fs::write(cg.join("c1/cgroup.procs"), "7\n").expect("procs");
        assert_eq!(r.resolve("uid", &cg).expect("found").pid, 7);
    }

    #[test]
    fn keeps_its_choice_and_tells_replaced_from_renamed() {
        let fake = FakeProc::new();
        fake.add(10, 10, None); // pause
        fake.add(11, 11, Some(10)); // app
        let cg = cgroup(
            fake.dir.path(),
            &[("", &[]), ("sandbox", &[10]), ("app", &[11])],
        );
        let mut r = NetnsResolver::new(fake.root(), HashSet::new());
        let first = r.resolve("uid", &cg).expect("found");
        assert_eq!(first.pid, 10);

        // An older process appears (as far as the sort goes): the choice is kept.
        fake.add(5, 1, Some(10));
        std::fs::write(cg.join("app/cgroup.procs"), "11\n5\n").expect("procs");
        assert_eq!(r.resolve("uid", &cg).expect("kept"), first);

        // The chosen process exits: the same namespace through another process.
        fake.remove(10);
        std::fs::write(cg.join("sandbox/cgroup.procs"), "").expect("procs");
        let moved = r.resolve("uid", &cg).expect("moved");
        assert_ne!(moved.path, first.path);
        assert_eq!(moved.inode, first.inode);

        // The sandbox is recreated: every process is in a new namespace.
        fake.add(20, 20, None);
        fake.remove(5);
        fake.remove(11);
        std::fs::write(cg.join("sandbox/cgroup.procs"), "20\n").expect("procs");
        std::fs::write(cg.join("app/cgroup.procs"), "").expect("procs");
        let replaced = r.resolve("uid", &cg).expect("replaced");
        assert_eq!(replaced.pid, 20);
        assert_ne!(replaced.inode, first.inode);

        // Pid reuse: the chosen path now names another namespace: resolved again.
        fake.renew(20);
        let reused = r.resolve("uid", &cg).expect("re-resolved");
        assert_eq!(reused.pid, 20);
        assert_ne!(reused.inode, replaced.inode);

        // Every process gone: the last choice is kept (no churn), until a new one.
        fake.remove(20);
        std::fs::write(cg.join("sandbox/cgroup.procs"), "").expect("procs");
        assert_eq!(r.resolve("uid", &cg).expect("kept"), reused);

        r.retain(|_| false);
        assert!(r.chosen.is_empty());
        assert!(
            r.resolve("uid", &cg).is_err(),
            "a new pod without processes is pending"
        );
    }
}
