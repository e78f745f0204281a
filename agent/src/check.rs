//! `hoptrace check`: a preflight report of what the agent needs from this host.

use std::{path::Path, process::ExitCode};

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

/// Capability bits the agent needs, with the reason.
const CAPS: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "load eBPF programs and create maps"),
    (
        12,
        "CAP_NET_ADMIN",
        "attach cgroup/sk_lookup programs, sockmap updates",
    ),
    (21, "CAP_SYS_ADMIN", "setns into pod network namespaces"),
    (
        38,
        "CAP_PERFMON",
        "pointer arithmetic in eBPF programs (verifier)",
    ),
];

/// Runs the checks, prints the report, returns non-zero when something is missing.
pub fn run(_args: &CheckArgs) -> ExitCode {
    let mut r = Report { failures: 0 };
    match nix::sys::utsname::uname() {
        Ok(u) => {
            let release = u.release().to_string_lossy().to_string();
            let ok = kernel_at_least(&release, 5, 15);
            r.line(
                ok,
                "kernel",
                &format!(
                    "{release} (need ≥ 5.15: netns cookie in sock_ops, sk_lookup, SO_NETNS_COOKIE)"
                ),
            );
        }
        Err(e) => r.line(false, "kernel", &e.to_string()),
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

    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    for (bit, name, why) in CAPS {
        let ok = cap_eff & (1u64 << bit) != 0;
        let detail = if ok {
            format!("present ({why})")
        } else {
            format!("missing: needed to {why}; run the agent as root or grant {name}")
        };
        r.line(ok, name, &detail);
    }

    match cgroup2_mount() {
        Some(m) => r.line(true, "cgroup v2", &format!("mounted at {m}")),
        None => r.line(false, "cgroup v2", "no cgroup2 mount in /proc/mounts: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy=1"),
    }
    let bpffs = mounts().iter().any(|(fs, _)| fs == "bpf");
    r.line(true, "bpffs", if bpffs { "mounted (not required: hoptrace pins nothing, so its programs go away with the process)" } else { "not mounted (not required: hoptrace pins nothing)" });

    match crate::ebpf::load_programs() {
        Ok(_) => r.line(true, "eBPF programs", "cgroup/connect4, cgroup/connect6, sockops, sk_lookup loaded and verified (helpers: get_netns_cookie, get_socket_cookie, sk_assign)"),
        Err(e) => r.line(false, "eBPF programs", &e.to_string()),
    }

    if r.failures == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("{} check(s) failed", r.failures);
        ExitCode::FAILURE
    }
}

fn mounts() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            let mnt = f.next()?;
            let fs = f.next()?;
            Some((fs.to_string(), mnt.to_string()))
        })
        .collect()
}

/// The first cgroup2 mount point, if any.
pub fn cgroup2_mount() -> Option<String> {
    mounts()
        .into_iter()
        .find(|(fs, _)| fs == "cgroup2")
        .map(|(_, m)| m)
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let ma = parts
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);
    let mi = parts
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_version_compare() {
        assert!(super::kernel_at_least("6.18.44-fc-v445", 5, 15));
        assert!(super::kernel_at_least("5.15.0", 5, 15));
        assert!(!super::kernel_at_least("5.10.2-generic", 5, 15));
        assert!(!super::kernel_at_least("garbage", 5, 15));
    }
}
