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

use crate::netlink::{message, Netlink};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;

/// `inet_diag_req_v2` asking for every listening TCP socket of `family`.
fn dump_request(family: u8) -> Vec<u8> {
    // family, protocol, ext, pad, states (u32), then inet_diag_sockid (48 bytes, zero).
    let mut body = vec![family, libc::IPPROTO_TCP as u8, 0, 0];
    body.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    body.extend_from_slice(&[0u8; 48]);
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    message(SOCK_DIAG_BY_FAMILY, flags, &body, &[])
}

/// The listening port of one `inet_diag_msg`, unless it is bound to loopback only
/// (unreachable from other pods).
fn parse_listener(msg: &[u8]) -> Option<u16> {
    // family(1) state(1) timer(1) retrans(1), then inet_diag_sockid: sport(be16)
    // dport(be16) src[16] dst[16] if(4) cookie(8).
    if msg.len() < 4 + 4 + 16 {
        return None;
    }
    let family = msg[0];
    let sport = u16::from_be_bytes([msg[4], msg[5]]);
    let src = &msg[8..24];
    let ip: IpAddr = match family as i32 {
        libc::AF_INET => IpAddr::from([src[0], src[1], src[2], src[3]]),
        libc::AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(src);
            IpAddr::from(a)
        }
        _ => return None,
    };
    let loopback = match ip {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        v4 => v4.is_loopback(),
    };
    (!loopback).then_some(sport)
}

/// The TCP ports listened on (not only on loopback) in the calling thread's netns.
/// Call inside `Netns::run`.
pub fn listening_ports() -> io::Result<BTreeSet<u16>> {
    let nl = Netlink::open(libc::NETLINK_SOCK_DIAG)?;
    let mut ports = BTreeSet::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        match nl.dump(&dump_request(family), |m| {
            if let Some(p) = parse_listener(m) {
                ports.insert(p);
            }
        }) {
            // IPv6 disabled in the pod: no v6 listeners.
            Err(e) if family == libc::AF_INET6 as u8 && e.raw_os_error() == Some(libc::ENOENT) => {}
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

    fn diag_msg(family: i32, port: u16, src: &[u8]) -> Vec<u8> {
        let mut m = vec![family as u8, TCP_LISTEN as u8, 0, 0];
        m.extend_from_slice(&port.to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        let mut a = [0u8; 16];
        a[..src.len()].copy_from_slice(src);
        m.extend_from_slice(&a);
        m.extend_from_slice(&[0u8; 16 + 4 + 8 + 20]);
        m
    }

    #[test]
    fn loopback_listeners_are_not_reachable_ports() {
        assert_eq!(
            parse_listener(&diag_msg(libc::AF_INET, 8080, &[0, 0, 0, 0])),
            Some(8080)
        );
        assert_eq!(
            parse_listener(&diag_msg(libc::AF_INET, 8080, &[10, 1, 2, 3])),
            Some(8080)
        );
        assert_eq!(
            parse_listener(&diag_msg(libc::AF_INET, 8080, &[127, 0, 0, 1])),
            None
        );
        let mut v6_lo = [0u8; 16];
        v6_lo[15] = 1;
        assert_eq!(parse_listener(&diag_msg(libc::AF_INET6, 9, &v6_lo)), None);
        assert_eq!(
            parse_listener(&diag_msg(libc::AF_INET6, 9, &[0u8; 16])),
            Some(9)
        );
        assert_eq!(parse_listener(&[0u8; 8]), None);
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
