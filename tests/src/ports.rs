//! Ports for servers the tests start as child processes (an API server, etcd, an
//! agent's admin endpoint), which bind the port themselves after we pick it.
//!
//! A port the kernel picks (`bind` to port 0) comes from its ephemeral range, the
//! same range every outgoing connection of every parallel test draws its source port
//! from, so one of them may take it before the child binds it: CI saw kube-apiserver
//! exit with "bind: address already in use". Ports below that range are never handed
//! out implicitly; only another explicit `bind` can take one, and [`free_port_on`]
//! picks them at random and checks each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use anyhow::{Context, Result};
use rand::Rng;

/// Lowest port tried: above the well-known and most registered service ports.
const LOWEST: u16 = 10_000;
/// The kernel's default ephemeral range starts here
/// (`/proc/sys/net/ipv4/ip_local_port_range`).
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;
/// Random ports tried before falling back to one the kernel picks.
const TRIES: usize = 64;

/// A TCP port free on `addr` now, below the kernel's ephemeral range.
pub fn free_port_on(addr: IpAddr) -> Result<u16> {
    let below = ephemeral_low().unwrap_or(DEFAULT_EPHEMERAL_LOW);
    if below > LOWEST + 1 {
        let mut rng = rand::thread_rng();
        for _ in 0..TRIES {
            let port = rng.gen_range(LOWEST..below);
            if TcpListener::bind(SocketAddr::new(addr, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    // No room below the range (a host that widened it): what the kernel gives.
    Ok(TcpListener::bind(SocketAddr::new(addr, 0))
        .with_context(|| format!("finding a free port on {addr}"))?
        .local_addr()?
        .port())
}

/// [`free_port_on`] 127.0.0.1.
pub fn free_port() -> Result<u16> {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The first port of this netns's ephemeral range.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_below_the_ephemeral_range_and_are_free() {
        let below = ephemeral_low().unwrap_or(DEFAULT_EPHEMERAL_LOW);
        for _ in 0..20 {
            let port = free_port().expect("a free port");
            assert!(
                (LOWEST..below).contains(&port),
                "{port} not in {LOWEST}..{below}"
            );
            TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }
}
