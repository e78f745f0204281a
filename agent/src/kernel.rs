//! What the agent needs from the kernel, and since which release (docs/KERNELS.md).
//!
//! `hoptrace check` names each feature a kernel lacks with the release that brought
//! it; `hoptrace run` refuses to start on such a kernel with the same message, so
//! the agent never runs half-working (a missing `SO_NETNS_COOKIE`, say, would
//! leave every pod unsteered while the agent looks healthy).
//!
//! Versions are upstream's first release with the feature. A distribution kernel
//! with backports (RHEL) may have a feature earlier; this check goes by the version
//! its release string states, and the eBPF load in `hoptrace check` is the proof.

use std::fmt;

/// A kernel release, `major.minor.sublevel` (the sublevel counts stable updates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release(pub u32, pub u32, pub u32);

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.2 {
            0 => write!(f, "{}.{}", self.0, self.1),
            sub => write!(f, "{}.{}.{sub}", self.0, self.1),
        }
    }
}

impl Release {
    /// The release of a `uname -r` string (`6.12.117+deb12-amd64`, `6.18.44-fc-v445`,
    /// `5.4`). Distributions that number their own updates after a `.0` sublevel
    /// (Debian's `6.1.0-57-amd64`, Ubuntu's `6.8.0-151-generic`) read as sublevel 0:
    /// their stable fixes cannot be told from the string.
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.split('.');
        let major = parts.next()?.parse().ok()?;
        let digits = |p: Option<&str>| -> Option<u32> {
            let d: String = p?.chars().take_while(char::is_ascii_digit).collect();
            d.parse().ok()
        };
        let minor = digits(parts.next())?;
        Some(Self(major, minor, digits(parts.next()).unwrap_or(0)))
    }

    /// Whether this release has a change made in `since` and backported to the
    /// stable releases `backports` (one per stable branch: from that sublevel on).
    pub fn has(self, since: Release, backports: &[Release]) -> bool {
        self >= since
            || backports
                .iter()
                .any(|b| (b.0, b.1) == (self.0, self.1) && self.2 >= b.2)
    }
}

impl Feature {
    /// The releases that have it: `6.16, 6.12.34+, 6.15.3+`.
    pub fn releases(&self) -> String {
        let mut s = self.since.to_string();
        for b in self.backports {
            s.push_str(&format!(", {b}+"));
        }
        s
    }
}

/// One kernel feature the agent depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// What it is.
    pub what: &'static str,
    /// The first upstream release that has it.
    pub since: Release,
    /// Older stable branches that got it later, from the given sublevel on.
    pub backports: &'static [Release],
    /// What the agent does with it.
    pub used_for: &'static str,
    /// Optional features only disable what they serve (`--ebpf-log`).
    pub required: bool,
}

/// Every kernel feature the agent uses, oldest first. Sources (docs/KERNELS.md):
/// bcc's "BPF Features by Linux Kernel Version" (docs/kernel-versions.md) for
/// program, map and helper introductions; the upstream commits for per-program-type
/// helper availability and socket options.
pub const FEATURES: &[Feature] = &[
    Feature {
        what: "BPF per-CPU array maps",
        since: Release(4, 6, 0),
        backports: &[],
        used_for: "the programs' event counters",
        required: true,
    },
    Feature {
        what: "BPF LRU hash maps",
        since: Release(4, 10, 0),
        backports: &[],
        used_for: "original destinations, bounded without cleanup",
        required: true,
    },
    Feature {
        what: "sock_ops programs (BPF_PROG_TYPE_SOCK_OPS)",
        since: Release(4, 13, 0),
        backports: &[],
        used_for: "moving a steered connection's original destination to its final key",
        required: true,
    },
    Feature {
        what: "cgroup/connect4 and connect6 programs (BPF_PROG_TYPE_CGROUP_SOCK_ADDR)",
        since: Release(4, 17, 0),
        backports: &[],
        used_for: "steering a pod's outbound connections to its listener",
        required: true,
    },
    Feature {
        what: "BPF sockhash maps (BPF_MAP_TYPE_SOCKHASH)",
        since: Release(4, 18, 0),
        backports: &[],
        used_for: "the inbound listeners sk_lookup hands connections to",
        required: true,
    },
    Feature {
        what: "bpf_get_socket_cookie() in sock_addr and sock_ops programs",
        since: Release(4, 19, 0),
        backports: &[],
        used_for: "keying a connection's original destination",
        required: true,
    },
    Feature {
        what: "bpf_get_netns_cookie() in cgroup sock_addr programs",
        since: Release(5, 7, 0),
        backports: &[],
        used_for: "finding the pod (network namespace) of a connect()",
        required: true,
    },
    Feature {
        what: "BPF ring buffer (BPF_MAP_TYPE_RINGBUF)",
        since: Release(5, 8, 0),
        backports: &[],
        used_for: "the eBPF decision log (--ebpf-log) only",
        required: false,
    },
    Feature {
        what: "sk_lookup programs (BPF_PROG_TYPE_SK_LOOKUP, bpf_sk_assign, sockhash lookups there)",
        since: Release(5, 9, 0),
        backports: &[],
        used_for: "steering a pod's inbound connections to its listener",
        required: true,
    },
    Feature {
        what: "SO_NETNS_COOKIE socket option",
        since: Release(5, 14, 0),
        backports: &[],
        used_for: "learning a pod network namespace's cookie from the agent's listener in it",
        required: true,
    },
    Feature {
        what: "bpf_get_netns_cookie() in sock_ops programs",
        since: Release(5, 15, 0),
        backports: &[],
        used_for: "keying the original destination by network namespace",
        required: true,
    },
    Feature {
        what: SOCK_LENGTH_TRACEPOINTS,
        since: Release(6, 3, 0),
        backports: &[],
        used_for: "context propagation's by-thread rule (without them: exclusivity alone), and --skip-pod-tcp's bound (without them: in-pod connections stay on TCP)",
        required: false,
    },
    Feature {
        what: SPLICE_FEATURE,
        since: Release(6, 16, 0),
        backports: &[Release(6, 12, 34), Release(6, 15, 3)],
        used_for: "opaque TCP spliced in the kernel only (without it: relayed in userspace)",
        required: false,
    },
];

/// The tracepoints after every socket send and receive: context propagation notes the
/// threads there, and `--skip-pod-tcp` counts what a socket read from its redirected
/// queue (so it can bound it). The sk_msg program `--skip-pod-tcp` also needs is
/// older: sk_msg 4.17, ingress redirects 4.19, `bpf_get_netns_cookie()` there 5.15.
pub const SOCK_LENGTH_TRACEPOINTS: &str = "sock_send_length and sock_recv_length tracepoints";

/// The feature the kernel splice of opaque TCP needs (docs/ARCHITECTURE.md, "Opaque
/// TCP in the kernel", and docs/KERNELS.md): verdict-only sockmap programs read
/// through `tcp_read_skb` (6.0), whose redirects resume a partial send where it
/// stopped. Before upstream commit 3b4f14b79428 ("bpf, sockmap: fix duplicated data
/// transmission": 6.16, stable 6.12.34 and 6.15.3) the kernel's redirect worker sent
/// the whole segment again after the target's send buffer filled mid-segment, so the
/// receiver got bytes twice: `cargo xtask vm-test --kernel ubuntu-6.8` shows it in the
/// backpressure test. Debian's 6.1 also stalled connections now and then. Kernels
/// without it relay opaque TCP in userspace.
pub const SPLICE_FEATURE: &str =
    "sk_skb stream verdict redirects that resume a partial send (no duplicated bytes)";

/// The releases with the kernel splice's fix: `6.16, 6.12.34+, 6.15.3+`.
pub fn splice_releases() -> String {
    FEATURES
        .iter()
        .find(|f| f.what == SPLICE_FEATURE)
        .map(Feature::releases)
        .unwrap_or_default()
}

/// Whether the running kernel has `what` (by release; `false` when unknown).
pub fn has(what: &str) -> bool {
    let Ok(release) = running_release() else {
        return false;
    };
    missing(&release).is_ok_and(|m| !m.iter().any(|f| f.what == what))
}

/// The oldest release that has every required feature.
pub fn minimum() -> Release {
    FEATURES
        .iter()
        .filter(|f| f.required)
        .map(|f| f.since)
        .max()
        .unwrap_or(Release(0, 0, 0))
}

/// The features `release` lacks (required and optional), or an error when the
/// release string cannot be read.
pub fn missing(release: &str) -> Result<Vec<&'static Feature>, String> {
    let have = Release::parse(release)
        .ok_or_else(|| format!("cannot read a kernel version from {release:?}"))?;
    Ok(FEATURES
        .iter()
        .filter(|f| !have.has(f.since, f.backports))
        .collect())
}

/// The `hoptrace run` gate: an error naming every required feature `release` lacks.
pub fn require(release: &str) -> Result<(), String> {
    let lacking: Vec<String> = missing(release)?
        .into_iter()
        .filter(|f| f.required)
        .map(|f| format!("{} (Linux {}; {})", f.what, f.releases(), f.used_for))
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    Err(format!(
        "kernel {release} is too old for hoptrace (needs Linux ≥ {}): it lacks {}. `hoptrace check` shows the whole report",
        minimum(),
        lacking.join("; ")
    ))
}

/// This machine's `uname -r`.
pub fn running_release() -> Result<String, String> {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().to_string())
        .map_err(|e| format!("uname: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(Release::parse("6.1.0-57-amd64"), Some(Release(6, 1, 0)));
        assert_eq!(Release::parse("5.15.0-91-generic"), Some(Release(5, 15, 0)));
        assert_eq!(Release::parse("6.18.44-fc-v445"), Some(Release(6, 18, 44)));
        assert_eq!(
            Release::parse("6.12.117+deb12-amd64"),
            Some(Release(6, 12, 117))
        );
        assert_eq!(
            Release::parse("4.18.0-553.el8_10.x86_64"),
            Some(Release(4, 18, 0))
        );
        assert_eq!(Release::parse("5.4"), Some(Release(5, 4, 0)));
        assert_eq!(Release::parse("6.12+rc1"), Some(Release(6, 12, 0)));
        assert_eq!(Release::parse("6.16-rc3"), Some(Release(6, 16, 0)));
        assert_eq!(Release::parse("garbage"), None);
        assert_eq!(Release::parse("6"), None);
        assert!(Release(5, 9, 0) < Release(5, 15, 0));
        assert!(Release(6, 1, 0) > Release(5, 15, 0));
        assert_eq!(Release(6, 12, 34).to_string(), "6.12.34");
        assert_eq!(Release(6, 16, 0).to_string(), "6.16");
    }

    #[test]
    fn stable_backports_count_from_their_sublevel() {
        let (since, backports) = (Release(6, 16, 0), &[Release(6, 12, 34)][..]);
        assert!(Release(6, 16, 0).has(since, backports));
        assert!(Release(7, 0, 0).has(since, backports));
        assert!(Release(6, 12, 34).has(since, backports));
        assert!(Release(6, 12, 117).has(since, backports));
        assert!(!Release(6, 12, 33).has(since, backports));
        assert!(!Release(6, 13, 50).has(since, backports));
        assert!(!Release(6, 8, 0).has(since, backports));
    }

    #[test]
    fn minimum_is_the_newest_required_feature() {
        assert_eq!(minimum(), Release(5, 15, 0));
        assert!(FEATURES.windows(2).all(|w| w[0].since <= w[1].since));
    }

    #[test]
    fn new_kernels_lack_nothing() {
        for r in ["6.12.117+deb12-amd64", "6.18.44", "6.15.3", "6.16.0-rc1"] {
            assert_eq!(missing(r).expect("parses"), Vec::<&Feature>::new(), "{r}");
            assert!(require(r).is_ok(), "{r}");
        }
        // Without the sockmap fix (6.12 before its 34th stable update, 6.13, 6.14, and
        // Ubuntu's 6.8, whose release string says nothing of it) and from 6.3 on, only
        // the kernel splice of opaque TCP is missing; from the floor to 6.2 the by-thread
        // rule of context propagation too: optional features, they run.
        for r in ["6.3.0", "6.8.0-151-generic", "6.12.33", "6.12.0", "6.14.11"] {
            let names: Vec<&str> = missing(r).expect("parses").iter().map(|f| f.what).collect();
            assert_eq!(names, [SPLICE_FEATURE], "{r}");
            assert!(require(r).is_ok(), "{r}");
        }
        for r in ["5.15.0-91-generic", "6.1.0-57-amd64", "6.2.16"] {
            let names: Vec<&str> = missing(r).expect("parses").iter().map(|f| f.what).collect();
            assert_eq!(names, [SOCK_LENGTH_TRACEPOINTS, SPLICE_FEATURE], "{r}");
            assert!(require(r).is_ok(), "{r}");
        }
    }

    #[test]
    fn old_kernels_are_refused_naming_each_gap() {
        // Debian 11 / Ubuntu 20.04 era: sk_lookup present, the cookies not.
        let names: Vec<&str> = missing("5.10.0-30-amd64")
            .expect("parses")
            .iter()
            .map(|f| f.what)
            .collect();
        assert_eq!(
            names,
            [
                "SO_NETNS_COOKIE socket option",
                "bpf_get_netns_cookie() in sock_ops programs",
                SOCK_LENGTH_TRACEPOINTS,
                SPLICE_FEATURE
            ]
        );
        let err = require("5.10.0-30-amd64").expect_err("refused");
        assert!(err.contains("needs Linux ≥ 5.15"), "{err}");
        assert!(
            err.contains("SO_NETNS_COOKIE socket option (Linux 5.14;"),
            "{err}"
        );
        assert!(err.contains("in sock_ops programs (Linux 5.15;"), "{err}");

        // 5.4 (Ubuntu 20.04 GA): no sk_lookup either; the ring buffer is optional
        // so it is reported by `missing` but does not appear in the refusal.
        let err = require("5.4.0-150-generic").expect_err("refused");
        assert!(err.contains("sk_lookup programs"), "{err}");
        assert!(
            err.contains("in cgroup sock_addr programs (Linux 5.7;"),
            "{err}"
        );
        assert!(!err.contains("ring buffer"), "{err}");
        assert!(missing("5.4.0")
            .expect("parses")
            .iter()
            .any(|f| !f.required));

        // RHEL 8's 4.18: everything from 4.19 on.
        assert_eq!(
            missing("4.18.0-553.el8_10.x86_64").expect("parses").len(),
            8
        );
        assert!(require("garbage").is_err());
    }
}
