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

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage},
    AddressFamily, RouteNetlinkMessage,
};
use procfs::MountEntry;

use crate::{
    netlink::Netlink,
    netns::{Netns, NetnsError},
};

pub use crate::socket::MARK;
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
        let nl = Netlink::open(netlink_sys::protocols::NETLINK_ROUTE).map_err(|source| {
            InpodError::Netlink {
                what: "netlink socket",
                source,
            }
        })?;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            // Create-only: an existing entry answers EEXIST, which is what we want.
            nl.request(NLM_F_CREATE | NLM_F_EXCL, rule(family))
                .or_else(exists_ok)
                .map_err(|source| InpodError::Netlink {
                    what: "ip rule add fwmark",
                    source,
                })?;
            nl.request(NLM_F_CREATE | NLM_F_EXCL, route(family))
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
            let mounts = procfs::mounts().unwrap_or_default();
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

/// Mount points of read-write procfs mounts other than `/proc` (and its submounts).
fn writable_proc_mounts(mounts: &[MountEntry]) -> Vec<String> {
    mounts
        .iter()
        .filter(|m| {
            let own = m.fs_file == "/proc" || m.fs_file.starts_with("/proc/");
            m.fs_vfstype == "proc" && m.fs_mntops.contains_key("rw") && !own
        })
        // procfs unescapes tabs, newlines, backslashes and `#`, not spaces.
        .map(|m| m.fs_file.replace("\\040", " "))
        .collect()
}

fn exists_ok(e: io::Error) -> io::Result<()> {
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(e)
    }
}

/// `ip rule add fwmark MARK/MARK_MASK lookup TABLE priority RULE_PRIORITY`.
fn rule(family: AddressFamily) -> RouteNetlinkMessage {
    let mut msg = RuleMessage::default();
    msg.header = RuleHeader {
        family,
        action: RuleAction::ToTable,
        ..Default::default()
    };
    msg.attributes = vec![
        RuleAttribute::Priority(RULE_PRIORITY),
        RuleAttribute::FwMark(MARK),
        RuleAttribute::FwMask(MARK_MASK),
        RuleAttribute::Table(TABLE),
    ];
    RouteNetlinkMessage::NewRule(msg)
}

/// `ip route add local default dev lo table TABLE`.
fn route(family: AddressFamily) -> RouteNetlinkMessage {
    const LOOPBACK_IFINDEX: u32 = 1;
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: family,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..Default::default()
    };
    msg.attributes = vec![
        RouteAttribute::Table(TABLE),
        RouteAttribute::Oif(LOOPBACK_IFINDEX),
    ];
    RouteNetlinkMessage::NewRoute(msg)
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
                      proc /host\\040x/proc proc rw,relatime 0 0\n\
                      proc /ro/proc proc ro,relatime 0 0\n";
        let mounts: Vec<MountEntry> =
            procfs::FromBufRead::from_buf_read(mounts.as_bytes()).expect("mounts");
        assert_eq!(
            writable_proc_mounts(&mounts),
            ["/host/proc", "/host x/proc"]
        );
        assert!(writable_proc_mounts(&[]).is_empty());
    }

    #[test]
    fn messages_are_what_ip_would_send() {
        use netlink_packet_core::Emitable as _;
        let RouteNetlinkMessage::NewRule(r) = rule(AddressFamily::Inet6) else {
            panic!("not a rule")
        };
        assert_eq!(r.header.family, AddressFamily::Inet6);
        assert_eq!(r.header.action, RuleAction::ToTable);
        // fib_rule_hdr (12) + 4 u32 attributes (8 each)
        assert_eq!(r.buffer_len(), 12 + 4 * 8);
        let RouteNetlinkMessage::NewRoute(r) = route(AddressFamily::Inet) else {
            panic!("not a route")
        };
        assert_eq!(r.header.kind, RouteType::Local);
        assert_eq!(r.header.scope, RouteScope::Host);
        assert_eq!(r.header.destination_prefix_length, 0);
        assert_eq!(r.buffer_len(), 12 + 2 * 8);
    }
}
