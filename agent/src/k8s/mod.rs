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
pub mod desired;
pub mod netns;
pub mod policy;
pub mod records;
pub mod retry;
pub mod watch;

use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use tokio::{sync::mpsc, task::JoinHandle};

use self::{
    cgroup::{CgroupError, CgroupResolver},
    desired::DesiredSet,
    netns::NetnsResolver,
    policy::Policy,
    watch::{ResourceErrors, Update, WatchErrors},
};
use crate::{
    golden::PeerIndex,
    metrics::{Metrics, StateLabels},
    workloads::Workload,
};
use records::PeerRecord;

/// What discovery takes from the command line (built by `config`).
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// This node's name (`--node-name` / `NODE_NAME`); required.
    pub node_name: Option<String>,
    /// The agent's own pod, never enrolled (`POD_NAMESPACE`, `POD_NAME`; both or neither).
    pub own_pod: (Option<String>, Option<String>),
    /// The cgroup v2 mount (`--cgroup-root`).
    pub cgroup_root: std::path::PathBuf,
    /// The host's /proc (`--proc-root`).
    pub proc_root: std::path::PathBuf,
    /// Whether pods without an annotation are traced (`--inject-default`).
    pub inject_default: policy::Inject,
    /// Watch every pod of the cluster to name the other end of connections in the
    /// golden metrics (`--peer-watch`).
    pub peers: bool,
}

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

/// The Kubernetes workload source.
pub struct Discovery {
    client: kube::Client,
    api_url: String,
    rx: mpsc::Receiver<Update>,
    tx: Option<mpsc::Sender<Update>>,
    tasks: Vec<JoinHandle<()>>,
    set: DesiredSet,
    /// Every pod of the cluster, when `peer_watch`.
    peers: desired::Store<PeerRecord, u128>,
    /// `peers.generation` when the index was last rebuilt.
    peers_indexed: u64,
    peer_watch: bool,
}

impl Discovery {
    /// Validates the settings and builds the API client (from `KUBECONFIG` /
    /// `~/.kube/config`, else the in-cluster service account). Nothing is watched
    /// before [`Discovery::start`].
    pub async fn connect(args: &DiscoveryConfig) -> Result<Self, DiscoveryError> {
        let node = args.node_name.clone().ok_or(DiscoveryError::NoNodeName)?;
        let own_pod = match &args.own_pod {
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
        let set = DesiredSet::new(
            Policy {
                node,
                default: args.inject_default,
                own_pod,
            },
            CgroupResolver::new(root),
            NetnsResolver::new(
                args.proc_root.clone(),
                NetnsResolver::host_inodes(&args.proc_root),
            ),
            Gauge::default(),
        );
        Ok(Self {
            client,
            api_url,
            rx,
            tx: Some(tx),
            tasks: Vec::new(),
            set,
            peers: desired::Store::new(|p: &PeerRecord| p.uid),
            peers_indexed: 0,
            peer_watch: args.peers,
        })
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        format!(
            "Kubernetes API {} (pods of node {}, cgroups under {}, --inject-default {:?})",
            self.api_url,
            self.set.policy().node,
            self.set.cgroup_root().display(),
            self.set.policy().default
        )
    }

    /// Starts the watches. `metrics` receives the pending gauge and error counters.
    pub fn start(&mut self, metrics: &Metrics) {
        let Some(tx) = self.tx.take() else { return };
        self.set.report_pending_to(
            metrics
                .workloads
                .get_or_create(&StateLabels { state: "pending" })
                .clone(),
        );
        let resource = |name: &'static str| ResourceErrors {
            errors: metrics.kube_watch_errors(name),
            forbidden: metrics.kube_forbidden(name),
        };
        let errors = WatchErrors {
            pods: resource("pods"),
            namespaces: resource("namespaces"),
            peers: resource("peers"),
        };
        self.tasks = watch::spawn(
            self.client.clone(),
            &self.set.policy().node,
            self.peer_watch,
            tx,
            errors,
        );
    }

    /// Applies queued watch updates and returns the desired set when it differs from
    /// the last one returned (the first time: once both initial lists are complete).
    pub fn poll(&mut self) -> Option<Vec<Workload>> {
        while let Ok(update) = self.rx.try_recv() {
            match update {
                Update::Peer(change) => self.peers.apply(change),
                update => self.set.apply(update),
            }
        }
        self.set.poll(Instant::now())
    }

    /// Rebuilds the other pods' part of `index` when the cluster's pods changed since
    /// the last call (and their first list is complete).
    pub fn poll_peers(&mut self, index: &PeerIndex) {
        if !self.peers.synced || self.peers.generation == self.peers_indexed {
            return;
        }
        self.peers_indexed = self.peers.generation;
        index.replace_remote(self.peers.items.values().flat_map(|p| {
            p.ips
                .iter()
                .map(move |ip| (*ip, &*p.namespace, &*p.workload))
        }));
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
