//! The node's enrolled pods by address: when a pod calls another enrolled pod of the
//! same node, the outbound leg serves the hop in one pass (`proxy::outbound`), without
//! the second accept and parse of the inbound leg.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock, Weak},
};

use super::PodContext;

/// Enrolled pods of this node by address (weak: a pod's context lives with its
/// enrollment).
#[derive(Debug, Default)]
pub struct LocalPods(RwLock<HashMap<IpAddr, Weak<PodContext>>>);

/// IPv4-mapped IPv6 addresses as IPv4, as pods' addresses are recorded.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl LocalPods {
    /// The enrolled pod with address `ip`, if any.
    pub fn get(&self, ip: IpAddr) -> Option<Arc<PodContext>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(&canonical(ip)).and_then(Weak::upgrade)
    }

    /// Lists `pod` under its addresses until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, pod: &Arc<PodContext>) -> LocalRegistration {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        for ip in &pod.ips {
            map.insert(canonical(*ip), Arc::downgrade(pod));
        }
        LocalRegistration {
            pods: self.clone(),
            pod: Arc::downgrade(pod),
            ips: pod.ips.clone(),
        }
    }
}

/// A pod listed in [`LocalPods`]; dropping it removes the pod's addresses (those still
/// pointing at it: an address a newer pod took stays).
#[derive(Debug)]
pub struct LocalRegistration {
    pods: Arc<LocalPods>,
    pod: Weak<PodContext>,
    ips: Vec<IpAddr>,
}

impl Drop for LocalRegistration {
    fn drop(&mut self) {
        let mut map = self.pods.0.write().unwrap_or_else(|e| e.into_inner());
        for ip in &self.ips {
            let ip = canonical(*ip);
            if map.get(&ip).is_some_and(|w| w.ptr_eq(&self.pod)) {
                map.remove(&ip);
            }
        }
    }
}
