//! The TCP ports an enrolled pod's apps listen on (`APP_LISTENERS`).
//!
//! `sk_lookup` steers a connection to a pod only when something in the pod listens on
//! its port: a connection to a closed port is then refused by the pod's own kernel at
//! once, exactly as without the agent (a port scan sees closed ports closed, and costs
//! the agent nothing). The kernel side adds a port when an app calls `listen()`
//! (sock_ops `TCP_LISTEN_CB`); this module adds the ports that were already listening
//! when the pod was enrolled and removes the ones that closed, from a sock_diag dump of
//! the pod's netns ([`listening_ports`]), at enrollment and every few seconds.
//!
//! Races: an entry the kernel added after a dump started is newer than the dump and is
//! kept ([`stale`]). A port that closes is steered until the next sync (its callers are
//! then reset instead of refused); a port that opens between `listen()` and its hook
//! goes direct, untraced, until the hook runs (fail open).

use std::{collections::BTreeSet, io, net::IpAddr};

use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

use crate::netlink::Netlink;

/// A request for every listening TCP socket of `family` (`AF_INET`, `AF_INET6`).
fn dump_request(family: u8) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::LISTEN,
        socket_id: if family == AF_INET6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        },
    })
}

/// The listening port of one socket, unless it is bound to loopback only
/// (unreachable from other pods).
fn reachable_port(socket: &InetResponseHeader) -> Option<u16> {
    let loopback = match socket.socket_id.source_address {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        v4 => v4.is_loopback(),
    };
    (!loopback).then_some(socket.socket_id.source_port)
}

/// The TCP ports listened on (not only on loopback) in the calling thread's netns.
/// Call inside `Netns::run`.
pub fn listening_ports() -> io::Result<BTreeSet<u16>> {
    let nl = Netlink::open(NETLINK_SOCK_DIAG)?;
    let mut ports = BTreeSet::new();
    for family in [AF_INET, AF_INET6] {
        match nl.dump(dump_request(family), |m| {
            if let SockDiagMessage::InetResponse(r) = m {
                ports.extend(reachable_port(&r.header));
            }
        }) {
            // IPv6 disabled in the pod: no v6 listeners.
            Err(e) if family == AF_INET6 && e.raw_os_error() == Some(libc::ENOENT) => {}
            r => r?,
        }
    }
    Ok(ports)
}

/// Whether an entry recorded at `seen_ns` (kernel monotonic time) for a port missing
/// from a dump started at `dump_started_ns` is stale: recorded before the dump began,
/// so the dump would have shown it had it still been listening.
pub fn stale(seen_ns: u64, dump_started_ns: u64) -> bool {
    seen_ns < dump_started_ns
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: &str, port: u16) -> InetResponseHeader {
        let source_address: IpAddr = addr.parse().expect("address");
        let v6 = source_address.is_ipv6();
        let mut socket_id = if v6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        };
        socket_id.source_address = source_address;
        socket_id.source_port = port;
        InetResponseHeader {
            family: if v6 { AF_INET6 } else { AF_INET },
            state: netlink_packet_sock_diag::constants::TCP_LISTEN,
            timer: None,
            socket_id,
            recv_queue: 0,
            send_queue: 0,
            uid: 0,
            inode: 0,
        }
    }

    #[test]
    fn loopback_listeners_are_not_reachable_ports() {
        assert_eq!(reachable_port(&listener("0.0.0.0", 8080)), Some(8080));
        assert_eq!(reachable_port(&listener("10.1.2.3", 8080)), Some(8080));
        assert_eq!(reachable_port(&listener("127.0.0.1", 8080)), None);
        assert_eq!(reachable_port(&listener("::1", 9)), None);
        assert_eq!(reachable_port(&listener("::ffff:127.0.0.1", 9)), None);
        assert_eq!(reachable_port(&listener("::", 9)), Some(9));
    }

    #[test]
    fn entries_newer_than_the_dump_are_kept() {
        assert!(stale(10, 20));
        assert!(!stale(20, 20));
        assert!(!stale(30, 20));
    }

    #[test]
    fn dumps_this_netns() {
        // A listener on a wildcard address shows up; one on loopback does not.
        let any = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
        let lo = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let ports = listening_ports().expect("sock_diag dump");
        assert!(
            ports.contains(&any.local_addr().expect("addr").port()),
            "{ports:?}"
        );
        assert!(
            !ports.contains(&lo.local_addr().expect("addr").port()),
            "{ports:?}"
        );
    }
}
