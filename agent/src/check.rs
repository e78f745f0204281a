//! `hoptrace check`: a preflight report of what the agent needs from this host.

use std::{path::Path, process::ExitCode};

use caps::{CapSet, Capability as Cap, CapsHashSet};
use procfs::MountEntry;

use crate::config::CheckArgs;

struct Report {
    failures: usize,
}

impl Report {
    fn line(&mut self, ok: bool, what: &str, detail: &str) {
        let mark = if ok { "ok  " } else { "FAIL" };
        println!("[{mark}] {what}: {detail}");
        if !ok {
            self.failures += 1;
        }
    }
}

/// A Linux capability the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// The capability (its `Display` is the `CAP_*` name, `index()` its number).
    pub cap: Cap,
    /// What the agent does with it.
    pub why: &'static str,
}

/// The minimal set `hoptrace run` needs (verified in the lab by
/// `tests/tests/capabilities.rs`, which runs the agent with exactly the DaemonSet's
/// `capabilities.add`). CAP_BPF and CAP_PERFMON are not in it: the kernel accepts
/// CAP_SYS_ADMIN in their place, and setns needs CAP_SYS_ADMIN anyway.
pub const REQUIRED: &[Capability] = &[
    Capability {
        cap: Cap::CAP_SYS_ADMIN,
        why: "enter pod network namespaces (setns), and load the eBPF programs and maps in place of CAP_BPF and CAP_PERFMON",
    },
    Capability {
        cap: Cap::CAP_NET_ADMIN,
        why: "set IP_TRANSPARENT and SO_MARK on inbound-leg sockets and install the fwmark rule and route in each pod netns",
    },
    Capability {
        cap: Cap::CAP_SYS_PTRACE,
        why: "open /proc/PID/ns/net of pod processes running as another user, such as the pause container (uid 65535)",
    },
];

/// Capabilities that `hoptrace check` reports too, and the capability that covers
/// each when it is absent.
const COVERED: &[(Capability, Cap)] = &[
    (
        Capability {
            cap: Cap::CAP_BPF,
            why: "load eBPF programs and create maps",
        },
        Cap::CAP_SYS_ADMIN,
    ),
    (
        Capability {
            cap: Cap::CAP_PERFMON,
            why: "let the verifier accept pointer arithmetic in the eBPF programs",
        },
        Cap::CAP_SYS_ADMIN,
    ),
];

/// The calling thread's effective capability set.
pub fn effective_capabilities() -> Result<CapsHashSet, caps::errors::CapsError> {
    caps::read(None, CapSet::Effective)
}

/// The [`REQUIRED`] capabilities missing from `effective`.
pub fn missing_capabilities(effective: &CapsHashSet) -> Vec<Capability> {
    REQUIRED
        .iter()
        .filter(|c| !effective.contains(&c.cap))
        .copied()
        .collect()
}

/// The `hoptrace run` preflight: an error naming every missing capability and why
/// it is needed, so a misconfigured DaemonSet fails at once with the reason instead
/// of leaving every pod unsteered.
pub fn require_capabilities() -> anyhow::Result<()> {
    let effective = effective_capabilities()
        .map_err(|e| anyhow::anyhow!("reading the agent's capabilities: {e}"))?;
    let missing = missing_capabilities(&effective);
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|c| format!("{} (needed to {})", c.cap, c.why))
        .collect();
    let names: Vec<String> = REQUIRED
        .iter()
        .map(|c| c.cap.to_string().trim_start_matches("CAP_").to_string())
        .collect();
    anyhow::bail!(
        "missing capabilities: {}. Run as root, or grant all of [{}] (Kubernetes: securityContext.capabilities.add, see deploy/README.md); `hoptrace check` shows the whole report",
        list.join("; "),
        names.join(", ")
    )
}

/// Runs the checks, prints the report, returns non-zero when something is missing.
pub fn run(_args: &CheckArgs) -> ExitCode {
    let mut r = Report { failures: 0 };
    match crate::kernel::running_release() {
        Ok(release) => kernel_lines(&mut r, &release),
        Err(e) => r.line(false, "kernel", &e),
    }
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    r.line(
        btf,
        "BTF",
        if btf {
            "/sys/kernel/btf/vmlinux present"
        } else {
            "missing /sys/kernel/btf/vmlinux: use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        },
    );

    let effective = effective_capabilities().unwrap_or_default();
    let has = |cap: Cap| effective.contains(&cap);
    for c in REQUIRED {
        let detail = if has(c.cap) {
            format!("present (needed to {})", c.why)
        } else {
            format!(
                "missing: needed to {}; run the agent as root or grant {}",
                c.why, c.cap
            )
        };
        r.line(has(c.cap), &c.cap.to_string(), &detail);
    }
    for (c, by) in COVERED {
        let (ok, detail) = if has(c.cap) {
            (true, format!("present (needed to {})", c.why))
        } else if has(*by) {
            (
                true,
                format!("absent, CAP_SYS_ADMIN covers it (needed to {})", c.why),
            )
        } else {
            (
                false,
                format!(
                    "missing: needed to {}; grant {} or CAP_SYS_ADMIN",
                    c.why, c.cap
                ),
            )
        };
        r.line(ok, &c.cap.to_string(), &detail);
    }

    match cgroup2_mount() {
        Some(m) => r.line(true, "cgroup v2", &format!("mounted at {m}")),
        None => r.line(false, "cgroup v2", "no cgroup2 mount in /proc/mounts: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy=1"),
    }
    let bpffs = mounts().iter().any(|m| m.fs_vfstype == "bpf");
    r.line(true, "bpffs", if bpffs { "mounted (not required: hoptrace pins nothing, so its programs go away with the process)" } else { "not mounted (not required: hoptrace pins nothing)" });

    match crate::ebpf::load_programs(false, 0) {
        Ok(_) => r.line(true, "eBPF programs", "cgroup/connect4, cgroup/connect6, sockops, sk_lookup loaded and verified (helpers: get_netns_cookie, get_socket_cookie, sk_assign)"),
        Err(e) => r.line(false, "eBPF programs", &e.to_string()),
    }
    // The diagnostic variant: not needed to run, so a failure is a warning only.
    match crate::ebpf::load_programs(true, 0) {
        Ok(_) => println!("[ok  ] eBPF decision log (--ebpf-log): programs with logging on verified (ring buffer)"),
        Err(e) => println!("[warn] eBPF decision log (--ebpf-log) unavailable, the agent runs without it: {e}"),
    }

    // Only --skip-pod-tcp (experimental, off by default) depends on it: a note.
    match crate::ebpf::read_probe::blocking_read() {
        Ok(read) => println!("[note] --skip-pod-tcp: {}", read.describe()),
        Err(e) => println!("[note] --skip-pod-tcp: blocking reads of sockets in a sockmap could not be probed: {e}"),
    }

    if r.failures == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("{} check(s) failed", r.failures);
        ExitCode::FAILURE
    }
}

/// The kernel line, then one line per feature the kernel lacks (crate::kernel).
fn kernel_lines(r: &mut Report, release: &str) {
    let min = crate::kernel::minimum();
    let missing = match crate::kernel::missing(release) {
        Ok(m) => m,
        Err(e) => return r.line(false, "kernel", &e),
    };
    let required = missing.iter().filter(|f| f.required).count();
    r.line(
        required == 0,
        "kernel",
        &if required == 0 {
            format!("{release} (need ≥ {min}: every eBPF feature hoptrace uses is there)")
        } else {
            format!("{release} is too old: hoptrace needs Linux ≥ {min}; {required} required feature(s) missing, below")
        },
    );
    for f in missing {
        let detail = format!(
            "missing (Linux {}); needed for {}",
            f.releases(),
            f.used_for
        );
        if f.required {
            r.line(false, f.what, &detail);
        } else {
            println!("[warn] {}: {detail}", f.what);
        }
    }
}

fn mounts() -> Vec<MountEntry> {
    procfs::mounts().unwrap_or_default()
}

/// The first cgroup2 mount point, if any.
pub fn cgroup2_mount() -> Option<String> {
    mounts()
        .into_iter()
        .find(|m| m.fs_vfstype == "cgroup2")
        .map(|m| m.fs_file)
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_capabilities_are_named() {
        let all: caps::CapsHashSet = super::REQUIRED.iter().map(|c| c.cap).collect();
        assert!(super::missing_capabilities(&all).is_empty());
        assert!(super::missing_capabilities(&caps::all()).is_empty());
        let mut no_net_admin = all.clone();
        no_net_admin.remove(&caps::Capability::CAP_NET_ADMIN);
        let missing = super::missing_capabilities(&no_net_admin);
        assert_eq!(
            missing
                .iter()
                .map(|c| c.cap.to_string())
                .collect::<Vec<_>>(),
            ["CAP_NET_ADMIN"]
        );
        assert_eq!(
            super::missing_capabilities(&Default::default()).len(),
            super::REQUIRED.len()
        );
    }

    #[test]
    fn old_kernel_fails_once_per_missing_feature() {
        // Run with --nocapture to see the lines docs/KERNELS.md shows.
        let mut r = super::Report { failures: 0 };
        super::kernel_lines(&mut r, "5.10.0-30-amd64");
        assert_eq!(
            r.failures, 3,
            "the kernel line and the two features 5.10 lacks"
        );
        let mut r = super::Report { failures: 0 };
        super::kernel_lines(&mut r, "6.1.0-57-amd64");
        assert_eq!(r.failures, 0);
        let mut r = super::Report { failures: 0 };
        super::kernel_lines(&mut r, "5.4.0-150-generic");
        assert_eq!(r.failures, 5, "kernel, netns cookie in sock_addr, sk_lookup, SO_NETNS_COOKIE, netns cookie in sock_ops");
    }
}
