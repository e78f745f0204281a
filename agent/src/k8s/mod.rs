//! Kubernetes pod discovery: the desired workload set from the API server.
//!
//! [`watch`] keeps this node's pods (`spec.nodeName=<NODE_NAME>`) and all namespaces
//! (for their labels) up to date, cut down to [`records`]; [`policy`] decides which pods to enroll and names
//! them; [`cgroup`] and [`netns`] find each enrolled pod's cgroup v2 directory and
//! network namespace on this host. [`Discovery::poll`] turns all of that into the
//! `Vec<Workload>` that the agent's `PodTable` reconciles, exactly like the workload
//! file does.
//!
//! A pod that should be enrolled but whose cgroup or network namespace cannot be
//! found yet (the kubelet or runtime has not created it, no process yet) is *pending*:
//! it is left out of the desired set (never half-steered), logged at debug level,
//! counted in `hoptrace_workloads{state="pending"}` and looked up again every tick.
//! Readiness: [`Discovery::poll`] returns its first set once both initial lists are
//! complete.

pub mod cgroup;
pub mod netns;
pub mod policy;
pub mod records;
pub mod watch;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Instant,
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::{sync::mpsc, task::JoinHandle};

use self::{
    cgroup::{CgroupError, CgroupResolver},
    netns::NetnsResolver,
    policy::Policy,
    records::{NamespaceRecord, PodRecord},
    watch::{Change, Update, WatchErrors},
};
use crate::{
    config::RunArgs,
    metrics::{Metrics, StateLabels},
    workloads::Workload,
};

/// How many watch updates may queue before the watchers wait for the agent.
const QUEUE: usize = 1024;

/// Errors starting Kubernetes discovery. Each says what to set or fix.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `NODE_NAME` is not set.
    #[error("Kubernetes discovery needs this node's name: set NODE_NAME (or --node-name), in a DaemonSet from the downward API field spec.nodeName")]
    NoNodeName,
    /// Only one of `--pod-name` / `--pod-namespace` is set.
    #[error("set both POD_NAME and POD_NAMESPACE (--pod-name, --pod-namespace) or neither; the agent uses them to never enroll its own pod")]
    HalfOwnPod,
    /// The cgroup root is unusable.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// No kubeconfig and no in-cluster configuration.
    #[error("cannot configure the Kubernetes client: {0}; run the agent in a pod with a service account (in-cluster config) or set KUBECONFIG to a kubeconfig file")]
    Config(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("cannot create the Kubernetes client: {0}; check the kubeconfig's server URL and TLS settings")]
    Client(#[source] kube::Error),
}

/// One watched collection, keyed by uid (pods) or name (namespaces). A relist is
/// buffered and swapped in whole at `InitDone`, so the last good set stays in force
/// while it runs.
#[derive(Debug)]
struct Store<T> {
    items: HashMap<String, T>,
    relist: Option<HashMap<String, T>>,
    synced: bool,
    key: fn(&T) -> String,
}

impl<T> Store<T> {
    fn new(key: fn(&T) -> String) -> Self {
        Self {
            items: HashMap::new(),
            relist: None,
            synced: false,
            key,
        }
    }

    fn apply(&mut self, change: Change<T>) {
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

/// The Kubernetes workload source.
pub struct Discovery {
    policy: Policy,
    client: kube::Client,
    api_url: String,
    rx: mpsc::Receiver<Update>,
    tx: Option<mpsc::Sender<Update>>,
    tasks: Vec<JoinHandle<()>>,
    pods: Store<PodRecord>,
    namespaces: Store<NamespaceRecord>,
    cgroups: CgroupResolver,
    netns: NetnsResolver,
    last: Option<Vec<Workload>>,
    pending: Option<Gauge>,
    notes: HashMap<String, String>,
}

impl Discovery {
    /// Validates the settings and builds the API client (from `KUBECONFIG` /
    /// `~/.kube/config`, else the in-cluster service account). Nothing is watched
    /// before [`Discovery::start`].
    pub async fn connect(args: &RunArgs) -> Result<Self, DiscoveryError> {
        let node = args.node_name.clone().ok_or(DiscoveryError::NoNodeName)?;
        let own_pod = match (&args.pod_namespace, &args.pod_name) {
            (Some(ns), Some(name)) => Some((ns.clone(), name.clone())),
            (None, None) => None,
            _ => return Err(DiscoveryError::HalfOwnPod),
        };
        let root = cgroup::effective_root(&args.cgroup_root, cgroup::is_cgroup2)?;
        let mut config = kube::Config::infer()
            .await
            .map_err(DiscoveryError::Config)?;
        // kube's client retries 429/503/504 inside each request (up to 15 times, with
        // delays up to 1000 s), which would hide an unavailable API server from the
        // logs and metrics. Errors go to the watcher instead, whose backoff
        // (0.8 s doubling to 30 s) retries them visibly.
        config.default_retry = false;
        let api_url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(DiscoveryError::Client)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(Self {
            policy: Policy {
                node,
                default: args.inject_default,
                own_pod,
            },
            client,
            api_url,
            rx,
            tx: Some(tx),
            tasks: Vec::new(),
            pods: Store::new(|p: &PodRecord| p.uid.clone()),
            namespaces: Store::new(|n: &NamespaceRecord| n.name.clone()),
            cgroups: CgroupResolver::new(root),
            netns: NetnsResolver::new(
                args.proc_root.clone(),
                NetnsResolver::host_inodes(&args.proc_root),
            ),
            last: None,
            pending: None,
            notes: HashMap::new(),
        })
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        format!(
            "Kubernetes API {} (pods of node {}, cgroups under {}, --inject-default {:?})",
            self.api_url,
            self.policy.node,
            self.cgroups.root().display(),
            self.policy.default
        )
    }

    /// Starts the watches. `metrics` receives the pending gauge and error counters.
    pub fn start(&mut self, metrics: &Metrics) {
        let Some(tx) = self.tx.take() else { return };
        self.pending = Some(
            metrics
                .workloads
                .get_or_create(&StateLabels { state: "pending" })
                .clone(),
        );
        let errors = WatchErrors {
            pods: metrics.kube_watch_errors("pods"),
            namespaces: metrics.kube_watch_errors("namespaces"),
        };
        self.tasks = watch::spawn(self.client.clone(), &self.policy.node, tx, errors);
    }

    /// Applies queued watch updates and returns the desired set when it differs from
    /// the last one returned (the first time: once both initial lists are complete).
    pub fn poll(&mut self) -> Option<Vec<Workload>> {
        while let Ok(update) = self.rx.try_recv() {
            match update {
                Update::Pod(c) => self.pods.apply(*c),
                Update::Namespace(c) => self.namespaces.apply(c),
            }
        }
        if !(self.pods.synced && self.namespaces.synced) {
            return None;
        }
        let desired = self.desired(Instant::now());
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
        for pod in self.pods.items.values() {
            let verdict = self
                .policy
                .decide(pod, self.namespaces.items.get(&pod.namespace));
            let state = match verdict.decision {
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
            desired.push(Workload {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                uid: Some(pod.uid.clone()),
                service: Some(policy::service_name(pod)),
                ips: pod.ips.clone(),
                cgroup: dir.clone(),
                netns: ns.path,
                labels: pod.labels.clone(),
                trace_sampling,
                netns_inode: Some(ns.inode),
            });
        }
        desired.sort_by_key(Workload::key);
        if let Some(g) = &self.pending {
            g.set(pending);
        }
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

impl Drop for Discovery {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
