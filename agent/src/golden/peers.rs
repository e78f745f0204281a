//! Who is on the other end: a compact index from an address to a workload identity,
//! so every request and connection is labelled with a bounded source and destination.
//!
//! Filled from the desired set (this node's pods) and from the workload file's
//! entries for other nodes; an address that matches no pod is [`Peer::unknown`] (the
//! address itself only goes to the debug log, never into a label).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
};

/// A workload as a label pair. Cloning costs two refcounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Kubernetes namespace.
    pub namespace: Arc<str>,
    /// Workload (service) name.
    pub workload: Arc<str>,
}

impl Peer {
    /// A workload from its names.
    pub fn new(namespace: &str, workload: &str) -> Self {
        Self {
            namespace: Arc::from(namespace),
            workload: Arc::from(workload),
        }
    }

    /// An address that matches no known pod.
    pub fn unknown() -> Self {
        Self::new(UNKNOWN, UNKNOWN)
    }
}

/// The label value of an address that matches no known pod.
pub const UNKNOWN: &str = "unknown";

/// Address → workload, in two layers each replaced as a whole: this node's pods
/// (from the desired set) and the other pods the source knows (the workload file's
/// other-node entries, or the cluster-wide pod watch). This node's win.
#[derive(Debug, Default)]
pub struct PeerIndex {
    by_ip: RwLock<Arc<HashMap<IpAddr, Peer>>>,
    remote: RwLock<Arc<HashMap<IpAddr, Peer>>>,
    /// Addresses in both layers (`hoptrace_peer_addresses`).
    pub size: prometheus_client::metrics::gauge::Gauge,
}

impl PeerIndex {
    /// The workload at `ip`, or [`Peer::unknown`]. v4-mapped v6 addresses are looked
    /// up as their v4 address.
    pub fn lookup(&self, ip: IpAddr) -> Peer {
        let ip = ip.to_canonical();
        for layer in [&self.by_ip, &self.remote] {
            let map = layer.read().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = map.get(&ip) {
                return p.clone();
            }
        }
        tracing::trace!(%ip, "no known pod at this address");
        Peer::unknown()
    }

    /// Replaces this node's layer with `pods` (address, namespace, workload).
    pub fn replace<'a>(&self, pods: impl IntoIterator<Item = (IpAddr, &'a str, &'a str)>) {
        *self.by_ip.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(build(pods));
        self.size.set(self.len() as i64);
    }

    /// Replaces the other pods' layer.
    pub fn replace_remote<'a>(&self, pods: impl IntoIterator<Item = (IpAddr, &'a str, &'a str)>) {
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(build(pods));
        self.size.set(self.len() as i64);
    }

    /// Addresses indexed (both layers).
    pub fn len(&self) -> usize {
        [&self.by_ip, &self.remote]
            .iter()
            .map(|l| l.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no address is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The map of `pods`; names are shared between a workload's addresses and pods.
fn build<'a>(pods: impl IntoIterator<Item = (IpAddr, &'a str, &'a str)>) -> HashMap<IpAddr, Peer> {
    let mut names: HashMap<(&str, &str), Peer> = HashMap::new();
    let mut map = HashMap::new();
    for (ip, ns, workload) in pods {
        let peer = names
            .entry((ns, workload))
            .or_insert_with(|| Peer::new(ns, workload))
            .clone();
        map.insert(ip.to_canonical(), peer);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_name_known_pods_and_bound_the_rest() {
        let index = PeerIndex::default();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "fd00::2".parse().expect("ip");
        index.replace([(a, "shop", "web"), (b, "shop", "db")]);
        assert_eq!(index.lookup(a), Peer::new("shop", "web"));
        assert_eq!(
            index.lookup("::ffff:10.0.0.1".parse().expect("ip")),
            Peer::new("shop", "web")
        );
        assert_eq!(index.lookup(b), Peer::new("shop", "db"));
        assert_eq!(
            index.lookup("10.9.9.9".parse().expect("ip")),
            Peer::unknown()
        );
        // Another node's pods: named, but this node's entry wins for an address.
        let c: IpAddr = "10.0.2.3".parse().expect("ip");
        index.replace_remote([(c, "shop", "cache"), (a, "old", "gone")]);
        assert_eq!(index.lookup(c), Peer::new("shop", "cache"));
        assert_eq!(index.lookup(a), Peer::new("shop", "web"));
        index.replace([]);
        assert_eq!(index.lookup(a), Peer::new("old", "gone"));
        index.replace_remote([]);
        assert_eq!(index.lookup(a), Peer::unknown());
    }
}
