//! Per-pod network namespace setup for the transparent inbound leg.
//!
//! The inbound leg connects to the app from the *client's* address (IP_TRANSPARENT +
//! SO_MARK), so the app sees the real client pod as its peer. The app's replies to
//! that address must come back to the agent's socket instead of leaving through the
//! pod's eth0; inside the pod netns the agent installs, via rtnetlink:
//!
//! - `ip rule add fwmark MARK lookup TABLE` (v4 and v6)
//! - `ip route add local default dev lo table TABLE` (v4 and v6)
//! - `net.ipv4.tcp_fwmark_accept = 1`, so the app's accepted socket inherits the
//!   mark of the agent's SYN (it applies to IPv6 too).
//! - `net.ipv4.fwmark_reflect = 1` and `net.ipv6.fwmark_reflect = 1`, so the replies
//!   the kernel sends without a socket carry the mark of the packet they answer: the
//!   RST for the agent's SYN to a port where nothing listens routes back to the agent
//!   (its connect fails at once with "refused", as the caller's would without the
//!   agent) instead of leaving through eth0 while the agent waits out its connect
//!   timeout. Unmarked packets (all of the pod's own traffic) get unmarked replies,
//!   as before.
//!
//! Only packets carrying MARK are affected: the pod's own traffic is untouched. The
//! entries stay after release (connections still proxied need them, re-enrollment
//! reuses them) and go away with the pod's netns.

use std::io;

use crate::{
    netlink::{message, Netlink},
    netns::{Netns, NetnsError},
};

/// Socket mark of inbound-leg upstream sockets (and their replies).
pub const MARK: u32 = 0x4854_0000;
/// Mask of [`MARK`] in the rule.
pub const MARK_MASK: u32 = 0xffff_0000;
/// Routing table holding the `local default dev lo` route.
pub const TABLE: u32 = 0x4854;
/// Priority of the fwmark rule: before the `main` table (32766).
pub const RULE_PRIORITY: u32 = 3100;

/// Errors configuring a pod netns.
#[derive(Debug, thiserror::Error)]
pub enum InpodError {
    /// Entering the netns failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink request failed.
    #[error("configuring the pod network namespace ({what}): {source}; the agent needs CAP_NET_ADMIN in the pod's netns")]
    Netlink {
        /// Which request.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
}

/// Installs the rules, routes and sysctl in `netns` (idempotent).
pub fn install(netns: &Netns) -> Result<(), InpodError> {
    netns.run(|| -> Result<(), InpodError> {
        for (name, what) in [
            (
                "ipv4/tcp_fwmark_accept",
                "sysctl net.ipv4.tcp_fwmark_accept",
            ),
            ("ipv4/fwmark_reflect", "sysctl net.ipv4.fwmark_reflect"),
        ] {
            write_net_sysctl(name, b"1").map_err(|source| InpodError::Netlink { what, source })?;
        }
        // Absent when IPv6 is disabled in the pod: then there is nothing to reflect.
        match write_net_sysctl("ipv6/fwmark_reflect", b"1") {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(InpodError::Netlink {
                    what: "sysctl net.ipv6.fwmark_reflect",
                    source: e,
                })
            }
            _ => {}
        }
        let nl = Netlink::open(libc::NETLINK_ROUTE).map_err(|source| InpodError::Netlink {
            what: "netlink socket",
            source,
        })?;
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            nl.request(&rule_msg(libc::RTM_NEWRULE, family))
                .or_else(exists_ok)
                .map_err(|source| InpodError::Netlink {
                    what: "ip rule add fwmark",
                    source,
                })?;
            nl.request(&route_msg(libc::RTM_NEWROUTE, family))
                .or_else(exists_ok)
                .map_err(|source| InpodError::Netlink {
                    what: "ip route add local default dev lo",
                    source,
                })?;
        }
        Ok(())
    })?
}

/// Writes `/proc/sys/net/<name>` of the calling thread's netns (net sysctls resolve
/// by the opening thread's netns, whichever procfs mount the path goes through).
///
/// Container runtimes mount `/proc/sys` read-only in every unprivileged container.
/// Then the write goes through another procfs mount that is writable: the host's
/// `/proc`, which the DaemonSet mounts at `/host/proc` (see deploy/README.md).
fn write_net_sysctl(name: &str, value: &[u8]) -> io::Result<()> {
    let first = std::fs::write(format!("/proc/sys/net/{name}"), value);
    match first {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            for root in writable_proc_mounts(&mounts) {
                if std::fs::write(format!("{root}/sys/net/{name}"), value).is_ok() {
                    return Ok(());
                }
            }
            Err(io::Error::new(
                e.kind(),
                format!("/proc/sys is read-only ({e}) and no other writable procfs mount is available: mount the host's /proc read-write (the DaemonSet mounts it at /host/proc)"),
            ))
        }
        other => other,
    }
}

/// Mount points of read-write procfs mounts other than `/proc` (and its submounts),
/// from `/proc/self/mounts` text.
fn writable_proc_mounts(mounts: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mnt, fs, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let rw = opts.split(',').any(|o| o == "rw");
            let own = mnt == "/proc" || mnt.starts_with("/proc/");
            (fs == "proc" && rw && !own).then(|| mnt.replace("\\040", " "))
        })
        .collect()
}

fn exists_ok(e: io::Error) -> io::Result<()> {
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(e)
    }
}

fn create_flags() -> u16 {
    (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16
}

/// `ip rule add fwmark MARK/MARK_MASK lookup TABLE priority RULE_PRIORITY`.
fn rule_msg(ty: u16, family: u8) -> Vec<u8> {
    const FR_ACT_TO_TBL: u8 = 1;
    const FRA_PRIORITY: u16 = 6;
    const FRA_FWMARK: u16 = 10;
    const FRA_TABLE: u16 = 15;
    const FRA_FWMASK: u16 = 16;
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags(u32)
    let mut body = vec![family, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL];
    body.extend_from_slice(&0u32.to_ne_bytes());
    debug_assert_eq!(body.len(), 12);
    message(
        ty,
        create_flags(),
        &body,
        &[
            (FRA_PRIORITY, RULE_PRIORITY),
            (FRA_FWMARK, MARK),
            (FRA_FWMASK, MARK_MASK),
            (FRA_TABLE, TABLE),
        ],
    )
}

/// `ip route add local default dev lo table TABLE`.
fn route_msg(ty: u16, family: u8) -> Vec<u8> {
    const RTPROT_BOOT: u8 = 3;
    const RT_SCOPE_HOST: u8 = 254;
    const RTN_LOCAL: u8 = 2;
    const RTA_OIF: u16 = 4;
    const RTA_TABLE: u16 = 15;
    const LOOPBACK_IFINDEX: u32 = 1;
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32)
    let mut body = vec![family, 0, 0, 0, 0, RTPROT_BOOT, RT_SCOPE_HOST, RTN_LOCAL];
    body.extend_from_slice(&0u32.to_ne_bytes());
    debug_assert_eq!(body.len(), 12);
    message(
        ty,
        create_flags(),
        &body,
        &[(RTA_TABLE, TABLE), (RTA_OIF, LOOPBACK_IFINDEX)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_writable_host_proc() {
        let mounts = "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
                      proc /proc/sys proc ro,nosuid,nodev,noexec,relatime 0 0\n\
                      tmpfs /dev tmpfs rw,nosuid 0 0\n\
                      proc /host/proc proc rw,relatime 0 0\n\
                      proc /ro/proc proc ro,relatime 0 0\n";
        assert_eq!(super::writable_proc_mounts(mounts), ["/host/proc"]);
        assert!(super::writable_proc_mounts("").is_empty());
    }

    #[test]
    fn messages_are_well_formed() {
        let m = rule_msg(libc::RTM_NEWRULE, libc::AF_INET as u8);
        assert_eq!(m.len(), 16 + 12 + 4 * 8);
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), libc::RTM_NEWRULE);
        let r = route_msg(libc::RTM_NEWROUTE, libc::AF_INET6 as u8);
        assert_eq!(r.len(), 16 + 12 + 2 * 8);
        assert_eq!(r[16], libc::AF_INET6 as u8);
        // create-only: an existing entry answers EEXIST, which install() accepts
        let flags = u16::from_ne_bytes([r[6], r[7]]);
        assert_ne!(flags & libc::NLM_F_EXCL as u16, 0);
    }
}
