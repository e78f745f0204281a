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

/// Address → workload, replaced as a whole when the set of known pods changes.
#[derive(Debug, Default)]
pub struct PeerIndex {
    by_ip: RwLock<Arc<HashMap<IpAddr, Peer>>>,
}

impl PeerIndex {
    /// The workload at `ip`, or [`Peer::unknown`]. v4-mapped v6 addresses are looked
    /// up as their v4 address.
    pub fn lookup(&self, ip: IpAddr) -> Peer {
        let ip = ip.to_canonical();
        let map = self.by_ip.read().unwrap_or_else(|e| e.into_inner()).clone();
        match map.get(&ip) {
            Some(p) => p.clone(),
            None => {
                tracing::trace!(%ip, "no known pod at this address");
                Peer::unknown()
            }
        }
    }

    /// Replaces the index with `pods` (address, namespace, workload). Names are
    /// shared between a workload's addresses and pods.
    pub fn replace<'a>(&self, pods: impl IntoIterator<Item = (IpAddr, &'a str, &'a str)>) {
        let mut names: HashMap<(&str, &str), Peer> = HashMap::new();
        let mut map = HashMap::new();
        for (ip, ns, workload) in pods {
            let peer = names
                .entry((ns, workload))
                .or_insert_with(|| Peer::new(ns, workload))
                .clone();
            map.insert(ip.to_canonical(), peer);
        }
        *self.by_ip.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// Addresses indexed.
    pub fn len(&self) -> usize {
        self.by_ip.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no address is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        index.replace([]);
        assert_eq!(index.lookup(a), Peer::unknown());
    }
}
