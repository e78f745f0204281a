//! The Kubernetes API watches: this node's pods and all namespaces.
//!
//! Each runs a `kube` watcher (list, then watch from the list's resourceVersion;
//! after a broken watch it resumes from the last version seen, after `410 Gone` it
//! lists again) with the default exponential backoff on errors. Objects are cut down
//! to the records discovery needs before they are queued, so a large cluster costs
//! little memory. Errors never stop the agent: they are logged (once per distinct
//! error, and once more on recovery), counted in `hoptrace_kube_watch_errors_total`,
//! and the last known set stays in force (fail open).

use std::fmt::Debug;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Resource,
};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};

use super::records::{NamespaceRecord, PeerRecord, PodRecord};

/// One change of a watched collection, mirroring `kube::runtime::watcher::Event`.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// A (re)list starts: the objects that follow, up to [`Change::InitDone`],
    /// replace the whole collection.
    Init,
    /// An object of the (re)list.
    InitApply(T),
    /// The (re)list is complete.
    InitDone,
    /// An object was added or modified.
    Apply(T),
    /// An object was deleted.
    Delete(T),
}

/// A change of either watched collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// This node's pods (boxed: a pod record is much larger than a namespace's).
    Pod(Box<Change<PodRecord>>),
    /// Namespaces.
    Namespace(Change<NamespaceRecord>),
    /// Every pod of the cluster, to name peers (golden metrics).
    Peer(Change<PeerRecord>),
}

/// Error counters, one per watched resource.
#[derive(Debug, Clone)]
pub struct WatchErrors {
    /// Errors of the pod watch.
    pub pods: Counter,
    /// Errors of the namespace watch.
    pub namespaces: Counter,
    /// Errors of the cluster-wide pod watch that names peers.
    pub peers: Counter,
}

/// Starts the watches (this node's pods, namespaces, and with `peers` every pod of
/// the cluster); their changes arrive on `tx`. The tasks end when the receiver is
/// dropped.
pub fn spawn(
    client: Client,
    node: &str,
    peers: bool,
    tx: mpsc::Sender<Update>,
    errors: WatchErrors,
) -> Vec<JoinHandle<()>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let pod_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let namespaces: Api<Namespace> = Api::all(client);
    let mut tasks = Vec::new();
    if peers {
        tasks.push(tokio::spawn(run(
            pods.clone(),
            watcher::Config::default(),
            "pods (all nodes, to name peers)",
            |p: &Pod| PeerRecord::from_pod(p),
            Update::Peer,
            tx.clone(),
            errors.peers,
        )));
    }
    tasks.extend([
        tokio::spawn(run(
            pods,
            pod_cfg,
            "pods",
            |p: &Pod| PodRecord::from_pod(p),
            |c| Update::Pod(Box::new(c)),
            tx.clone(),
            errors.pods,
        )),
        tokio::spawn(run(
            namespaces,
            watcher::Config::default(),
            "namespaces",
            |n: &Namespace| NamespaceRecord::from_namespace(n),
            Update::Namespace,
            tx,
            errors.namespaces,
        )),
    ]);
    tasks
}

async fn run<K, T>(
    api: Api<K>,
    cfg: watcher::Config,
    what: &'static str,
    convert: fn(&K) -> Option<T>,
    wrap: fn(Change<T>) -> Update,
    tx: mpsc::Sender<Update>,
    errors: Counter,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Send,
{
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut failing: Option<String> = None;
    while let Some(item) = stream.next().await {
        let change = match item {
            Ok(event) => {
                if failing.take().is_some() {
                    tracing::info!("Kubernetes API watch of {what} recovered");
                }
                match event {
                    watcher::Event::Init => Change::Init,
                    watcher::Event::InitDone => Change::InitDone,
                    watcher::Event::InitApply(o) => match convert(&o) {
                        Some(r) => Change::InitApply(r),
                        None => continue,
                    },
                    watcher::Event::Apply(o) => match convert(&o) {
                        Some(r) => Change::Apply(r),
                        None => continue,
                    },
                    watcher::Event::Delete(o) => match convert(&o) {
                        Some(r) => Change::Delete(r),
                        None => continue,
                    },
                }
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                // The resource version expired (etcd compaction): an ordinary event,
                // the watcher lists again; the current set stays until that list is in.
                tracing::info!(
                    "Kubernetes API watch of {what}: resource version expired, listing again"
                );
                continue;
            }
            Err(err) => {
                errors.inc();
                let msg = err.to_string();
                if failing.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(
                        "Kubernetes API watch of {what} failed: {msg}; retrying with backoff, \
                         keeping the last known pods steered (check the API server address and \
                         the agent's RBAC: get/list/watch on pods and namespaces)"
                    );
                    failing = Some(msg);
                } else {
                    tracing::debug!("Kubernetes API watch of {what} still failing: {msg}");
                }
                continue;
            }
        };
        if tx.send(wrap(change)).await.is_err() {
            return;
        }
    }
}
