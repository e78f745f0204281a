//! The desired workload set: the watched pods and namespaces, run through the
//! policy, each enrolled pod's cgroup and network namespace resolved on this host.
//! Kept apart from the API client so it can be tested with plain updates.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::Path,
    time::Instant,
};

use prometheus_client::metrics::gauge::Gauge;

use super::{
    cgroup::CgroupResolver,
    netns::NetnsResolver,
    policy::{self, DecidedBy, Policy, Skip},
    records::{NamespaceRecord, PodRecord},
    watch::{Change, Update},
};
use crate::workloads::{ContextPropagation, Workload};

/// One watched collection, keyed by uid (pods) or name (namespaces). A relist is
/// buffered and swapped in whole at `InitDone`, so the last good set stays in force
/// while it runs.
#[derive(Debug)]
pub(super) struct Store<T, K = String> {
    pub(super) items: HashMap<K, T>,
    relist: Option<HashMap<K, T>>,
    pub(super) synced: bool,
    /// Bumped by every change of `items`.
    pub(super) generation: u64,
    key: fn(&T) -> K,
}

impl<T, K: std::hash::Hash + Eq> Store<T, K> {
    pub(super) fn new(key: fn(&T) -> K) -> Self {
        Self {
            items: HashMap::new(),
            relist: None,
            synced: false,
            generation: 0,
            key,
        }
    }

    pub(super) fn apply(&mut self, change: Change<T>) {
        if !matches!(change, Change::Init | Change::InitApply(_)) {
            self.generation += 1;
        }
        match change {
            Change::Init => self.relist = Some(HashMap::new()),
            Change::InitApply(o) => {
                let k = (self.key)(&o);
                self.relist.get_or_insert_with(HashMap::new).insert(k, o);
            }
            Change::InitDone => {
                self.items = self.relist.take().unwrap_or_default();
                self.synced = true;
            }
            Change::Apply(o) => {
                self.items.insert((self.key)(&o), o);
            }
            Change::Delete(o) => {
                self.items.remove(&(self.key)(&o));
            }
        }
    }
}

/// Builds the desired set from watch updates.
#[derive(Debug)]
pub struct DesiredSet {
    policy: Policy,
    pods: Store<PodRecord>,
    namespaces: Store<NamespaceRecord>,
    /// The namespace list or watch is refused (403).
    namespaces_forbidden: bool,
    cgroups: CgroupResolver,
    netns: NetnsResolver,
    last: Option<Vec<Workload>>,
    pending: Gauge,
    notes: HashMap<String, String>,
}

impl DesiredSet {
    /// An empty set deciding with `policy`, resolving with `cgroups` and `netns`, and
    /// reporting the number of pending pods in `pending`.
    pub fn new(
        policy: Policy,
        cgroups: CgroupResolver,
        netns: NetnsResolver,
        pending: Gauge,
    ) -> Self {
        Self {
            policy,
            pods: Store::new(|p: &PodRecord| p.uid.clone()),
            namespaces: Store::new(|n: &NamespaceRecord| n.name.clone()),
            namespaces_forbidden: false,
            cgroups,
            netns,
            last: None,
            pending,
            notes: HashMap::new(),
        }
    }

    /// Reports the number of pending pods in `gauge` from now on.
    pub fn report_pending_to(&mut self, gauge: Gauge) {
        gauge.set(self.pending.get());
        self.pending = gauge;
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The cgroup directory searched.
    pub fn cgroup_root(&self) -> &Path {
        self.cgroups.root()
    }

    /// Applies one watch update.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Pod(c) => self.pods.apply(*c),
            Update::Namespace(c) => self.namespaces.apply(c),
            Update::NamespacesForbidden(forbidden) => self.namespaces_forbidden = forbidden,
            // Discovery keeps the peers itself (`Discovery::poll`).
            Update::Peer(_) => {}
        }
    }

    /// True once both initial lists are complete, or the pod list is and the
    /// namespaces may not be listed (pods are then enrolled by annotation alone).
    pub fn synced(&self) -> bool {
        self.pods.synced && (self.namespaces.synced || self.namespaces_forbidden)
    }

    /// True when namespace labels cannot decide: never listed, and refused.
    /// (Once listed, the last known labels stay in force through later refusals.)
    fn namespaces_unknown(&self) -> bool {
        !self.namespaces.synced && self.namespaces_forbidden
    }

    /// The desired set when it differs from the last one returned (the first time:
    /// as soon as both initial lists are complete). Resolves pending pods again.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<Workload>> {
        if !self.synced() {
            return None;
        }
        let desired = self.desired(now);
        if self.last.is_none() {
            tracing::info!(
                node = %self.policy.node,
                pods = self.pods.items.len(),
                enrolling = desired.len(),
                pending = self.pending.get(),
                "first complete pod list from the Kubernetes API"
            );
        }
        if self.last.as_ref() == Some(&desired) {
            return None;
        }
        self.last = Some(desired.clone());
        Some(desired)
    }

    /// Builds the desired set from the current pods: policy, then cgroup and netns.
    fn desired(&mut self, now: Instant) -> Vec<Workload> {
        let mut notes: HashMap<String, (String, Vec<String>)> = HashMap::new();
        let mut chosen: Vec<&PodRecord> = Vec::new();
        let namespaces_unknown = self.namespaces_unknown();
        for pod in self.pods.items.values() {
            let verdict = self
                .policy
                .decide(pod, self.namespaces.items.get(&pod.namespace));
            let decision = match verdict.decision {
                Ok(DecidedBy::Default) | Err(Skip::Disabled(DecidedBy::Default))
                    if namespaces_unknown =>
                {
                    Err(Skip::NamespaceUnknown)
                }
                d => d,
            };
            let state = match decision {
                Ok(by) => {
                    chosen.push(pod);
                    format!("enroll ({by})")
                }
                Err(skip) => format!("not enrolled: {skip}"),
            };
            notes.insert(pod.uid.clone(), (state, verdict.warnings));
        }
        let wanted: Vec<(&str, Option<&str>)> = chosen
            .iter()
            .map(|p| (p.uid.as_str(), p.qos_class.as_deref()))
            .collect();
        let dirs = self.cgroups.resolve(&wanted, now);

        // Newest first, so an address or name still claimed by an older pod goes to
        // the newer one.
        chosen.sort_by(|a, b| b.created.cmp(&a.created).then(a.uid.cmp(&b.uid)));
        let mut desired = Vec::new();
        let mut pending = 0i64;
        let mut taken_ips: HashMap<IpAddr, String> = HashMap::new();
        let mut taken_keys = HashSet::new();
        for pod in chosen {
            let note = notes.entry(pod.uid.clone()).or_default();
            let Some(dir) = dirs.get(&pod.uid) else {
                pending += 1;
                note.0 = format!(
                    "pending: cgroup of pod uid {} not found under {} yet",
                    pod.uid,
                    self.cgroups.root().display()
                );
                continue;
            };
            let ns = match self.netns.resolve(&pod.uid, dir) {
                Ok(ns) => ns,
                Err(why) => {
                    pending += 1;
                    note.0 = format!("pending: {why}");
                    continue;
                }
            };
            if let Some((ip, other)) = pod
                .ips
                .iter()
                .find_map(|ip| taken_ips.get(ip).map(|o| (ip, o)))
            {
                note.0 = format!("not enrolled: address {ip} belongs to the newer pod {other}");
                continue;
            }
            let key = (pod.namespace.clone(), pod.name.clone());
            if !taken_keys.insert(key) {
                note.0 = "not enrolled: a newer pod has the same name".into();
                continue;
            }
            for ip in &pod.ips {
                taken_ips.insert(*ip, format!("{}/{}", pod.namespace, pod.name));
            }
            let trace_sampling = policy::trace_sampling(pod).unwrap_or_else(|warning| {
                note.1.push(warning);
                None
            });
            let context_propagation = policy::context_propagation(pod).unwrap_or_else(|warning| {
                note.1.push(warning);
                ContextPropagation::Off
            });
            desired.push(Workload {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                uid: Some(pod.uid.clone()),
                service: Some(policy::service_name(pod)),
                ips: pod.ips.clone(),
                node: None,
                cgroup: dir.clone(),
                netns: ns.path,
                labels: pod.labels.clone(),
                trace_sampling,
                context_propagation,
                netns_inode: Some(ns.inode),
            });
        }
        desired.sort_by_key(Workload::key);
        self.pending.set(pending);
        self.log_changes(notes);
        let live = &self.pods.items;
        self.cgroups.retain(|uid| live.contains_key(uid));
        self.netns.retain(|uid| live.contains_key(uid));
        desired
    }

    /// Logs each pod's state and warnings when they differ from the last tick's.
    fn log_changes(&mut self, notes: HashMap<String, (String, Vec<String>)>) {
        let mut next = HashMap::with_capacity(notes.len());
        for (uid, (state, warnings)) in notes {
            let line = format!("{state} {warnings:?}");
            if self.notes.get(&uid) != Some(&line) {
                let pod = self
                    .pods
                    .items
                    .get(&uid)
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .unwrap_or_default();
                for w in &warnings {
                    tracing::warn!(%pod, "{w}");
                }
                tracing::debug!(%pod, pod_uid = %uid, "{state}");
            }
            next.insert(uid, line);
        }
        self.notes = next;
    }
}

#[cfg(test)]
mod tests;
