//! One pod's kernel state, each piece held by a guard that undoes it on drop: the
//! attached programs ([`AttachedPod`]) and the steering entries ([`SteeringGuard`]),
//! plus the pod's listening ports (`APP_LISTENERS`, see `crate::listeners`).

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    net::IpAddr,
    os::fd::RawFd,
    sync::Arc,
};

use agent_common::{maps, ListenKey, PodSteer};

use super::{inbound_key, map_err, Datapath, DatapathError, PodLinks};
use crate::listeners;

/// A pod's attached programs; detached when dropped.
#[derive(Debug)]
pub struct AttachedPod {
    datapath: Arc<Datapath>,
    links: Option<PodLinks>,
}

impl Drop for AttachedPod {
    fn drop(&mut self) {
        if let Some(links) = self.links.take() {
            self.datapath.detach_pod(links);
        }
    }
}

/// A pod's steering entries (readiness, address → netns, inbound listeners); removed
/// when dropped: outbound first, so nothing is steered to listeners about to close.
#[derive(Debug)]
pub struct SteeringGuard {
    datapath: Arc<Datapath>,
    netns_cookie: u64,
    ready: bool,
    ips: Vec<IpAddr>,
}

impl Drop for SteeringGuard {
    fn drop(&mut self) {
        if self.ready {
            self.datapath.clear_ready(self.netns_cookie);
        }
        for ip in &self.ips {
            self.datapath.remove_inbound(*ip);
            let _ = self.datapath.control().pod_netns.remove(&inbound_key(*ip));
        }
        self.datapath.forget_listeners(self.netns_cookie);
    }
}

impl Datapath {
    /// [`Datapath::attach_pod`], held by a guard that detaches on drop.
    pub fn attach_pod_guarded(
        self: &Arc<Self>,
        cgroup: &File,
        netns: &File,
    ) -> Result<AttachedPod, DatapathError> {
        let links = self.attach_pod(cgroup, netns)?;
        Ok(AttachedPod {
            datapath: self.clone(),
            links: Some(links),
        })
    }

    /// Turns steering on for a pod: inbound for each of `ips` (to the listener of its
    /// family), then outbound. The guard turns it off again on drop, so no failure
    /// path can leave a pod half-steered.
    pub fn steer_pod(
        self: &Arc<Self>,
        netns_cookie: u64,
        steer: PodSteer,
        inbound: &[(IpAddr, RawFd)],
    ) -> Result<SteeringGuard, DatapathError> {
        let mut guard = SteeringGuard {
            datapath: self.clone(),
            netns_cookie,
            ready: false,
            ips: Vec::with_capacity(inbound.len()),
        };
        for (ip, fd) in inbound {
            guard.ips.push(*ip);
            self.control()
                .pod_netns
                .insert(inbound_key(*ip), netns_cookie, 0)
                .map_err(map_err(maps::POD_NETNS))?;
            self.add_inbound(*ip, fd)?;
        }
        self.set_ready(netns_cookie, steer)?;
        guard.ready = true;
        Ok(guard)
    }

    /// Records `ports` as listening in the pod of `netns_cookie` (seen by a dump that
    /// started at `dump_started_ns`). Full map: the rest go direct (fail open).
    pub fn add_listeners(&self, netns_cookie: u64, ports: &BTreeSet<u16>, dump_started_ns: u64) {
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for port in ports {
            let _ = map.insert(key(netns_cookie, *port), dump_started_ns, 0);
        }
    }

    /// Makes `APP_LISTENERS` match the dumps in `pods` (netns cookie → (ports, when the
    /// dump started)): adds what they show, removes entries of those pods that they do
    /// not show and that are older than the dump, and every entry of a pod not in
    /// `pods` unless in `keep` (pods enrolled but not dumped this time).
    pub fn sync_listeners(&self, pods: &HashMap<u64, (BTreeSet<u16>, u64)>, keep: &BTreeSet<u64>) {
        for (cookie, (ports, started)) in pods {
            self.add_listeners(*cookie, ports, *started);
        }
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<(ListenKey, u64)> = map.iter().filter_map(Result::ok).collect();
        for (k, seen) in entries {
            let gone = match pods.get(&k.netns_cookie) {
                Some((ports, started)) => {
                    !ports.contains(&(k.port as u16)) && listeners::stale(seen, *started)
                }
                None => !keep.contains(&k.netns_cookie),
            };
            if gone {
                let _ = map.remove(&k);
            }
        }
    }

    /// Removes every listening port of a released pod.
    fn forget_listeners(&self, netns_cookie: u64) {
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mine: Vec<ListenKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == netns_cookie)
            .collect();
        for k in mine {
            let _ = map.remove(&k);
        }
    }
}

fn key(netns_cookie: u64, port: u16) -> ListenKey {
    ListenKey {
        netns_cookie,
        port: u32::from(port),
        _pad: 0,
    }
}
