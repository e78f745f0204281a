//! The Kubernetes API watches: this node's pods and all namespaces.
//!
//! Each runs a `kube` watcher (list, then watch from the list's resourceVersion;
//! after a broken watch it resumes from the last version seen, after `410 Gone` it
//! lists again). After an error it waits 0.8 s doubling to 30 s (jittered), reset only
//! by real progress ([`super::retry`]). Objects are cut down to the records discovery
//! needs before they are queued, so a large cluster costs little memory. Errors never
//! stop the agent: they are logged (once per distinct error, and once on recovery),
//! counted in `hoptrace_kube_watch_errors_total`, a refusal (403: a missing RBAC
//! permission) is named with its verb and resource and shown in
//! `hoptrace_kube_forbidden`, and the last known set stays in force (fail open).

use std::fmt::Debug;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{runtime::watcher, Api, Client, Resource};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    records::{NamespaceRecord, PeerRecord, PodRecord},
    retry::{self, Report, Retry},
};

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
    /// The namespace list or watch was refused (403, `true`), or made progress
    /// again after that (`false`).
    NamespacesForbidden(bool),
}

/// Error metrics of one watch.
#[derive(Debug, Clone, Default)]
pub struct ResourceErrors {
    /// Failed list/watch attempts.
    pub errors: Counter,
    /// 1 from a refused (403) attempt until the next failure of another kind or the
    /// next progress (a complete list, an object change), else 0.
    pub forbidden: Gauge,
}

/// Error metrics, one set per watched resource.
#[derive(Debug, Clone)]
pub struct WatchErrors {
    /// The pod watch.
    pub pods: ResourceErrors,
    /// The namespace watch.
    pub namespaces: ResourceErrors,
    /// The cluster-wide pod watch that names peers.
    pub peers: ResourceErrors,
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
    errors: ResourceErrors,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Send,
{
    let namespaces = what == "namespaces";
    let mut stream = watcher(api, cfg).boxed();
    let mut retry = Retry::default();
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                // The resource version expired (etcd compaction): an ordinary event,
                // the watcher lists again; the current set stays until that list is in.
                tracing::info!(
                    "Kubernetes API watch of {what}: resource version expired, listing again"
                );
                continue;
            }
            Err(err) => {
                errors.errors.inc();
                let refused = retry::forbidden(&err);
                errors.forbidden.set(i64::from(refused.is_some()));
                if namespaces
                    && tx
                        .send(Update::NamespacesForbidden(refused.is_some()))
                        .await
                        .is_err()
                {
                    return;
                }
                let msg = match refused {
                    Some((verb, message)) => format!(
                        "forbidden to {verb} {what}: {message}; the agent's service account \
                         needs get, list and watch on pods and namespaces (deploy/base/rbac.yaml)"
                    ),
                    None => err.to_string(),
                };
                let (report, delay) = retry.failed(msg);
                match report {
                    Report::New(msg) => tracing::warn!(
                        "Kubernetes API watch of {what} failed: {msg}; retrying with backoff \
                         (0.8 s doubling to 30 s), keeping the last known pods steered"
                    ),
                    Report::Again(msg) => {
                        tracing::debug!("Kubernetes API watch of {what} still failing: {msg}")
                    }
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if retry.event(&event) {
            tracing::info!("Kubernetes API watch of {what} recovered");
            errors.forbidden.set(0);
            if namespaces && tx.send(Update::NamespacesForbidden(false)).await.is_err() {
                return;
            }
        }
        let change = match event {
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
        };
        if tx.send(wrap(change)).await.is_err() {
            return;
        }
    }
}
