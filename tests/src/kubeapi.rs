//! A stand-in Kubernetes API server that serves hand-written objects the way the
//! real one does, for testing the agent's pod discovery without a cluster.
//!
//! [`KubeApi`] listens on `127.0.0.1:<free port>` (plain HTTP/1.1, keep-alive; a
//! hyper server on its own tokio runtime) and writes a kubeconfig pointing at itself (`KUBECONFIG` for the agent). It holds a
//! set of `Pod` and `Namespace` objects (JSON, as `kubectl get -o json` shows them)
//! and an event log, and answers:
//!
//! - `GET /api/v1/{pods,namespaces}?...` (list): a `PodList` / `NamespaceList` with
//!   `metadata.resourceVersion` = the current version; `fieldSelector=spec.nodeName=X`
//!   is honoured for pods, paging parameters are ignored (one page).
//! - `...&watch=true&resourceVersion=N` (watch): HTTP 200, chunked, one JSON event per
//!   line (`{"type":"ADDED|MODIFIED|DELETED|BOOKMARK","object":...}`): every logged
//!   change after N, then new ones as the test makes them. A version older than the
//!   last [`KubeApi::compact`] gets what the real server sends: one
//!   `{"type":"ERROR","object":{"kind":"Status",...,"code":410}}` event, then the end
//!   of the stream (the client must list again).
//!
//! The test drives it: [`KubeApi::apply`] (ADDED, or MODIFIED when it exists),
//! [`KubeApi::delete`], [`KubeApi::bookmark`], [`KubeApi::break_watches`] (closes
//! every open watch connection mid-stream, like a dropped connection),
//! [`KubeApi::set_unavailable`] (every request answers `503` with a `Status`), and
//! [`KubeApi::requests`] to see what the client asked. Each mutation bumps the
//! resource version and stamps it into the object. [`pod`] and [`namespace`] build
//! objects shaped like the API server's.

mod objects;
mod wire;

pub use objects::{namespace, pod, PodSpec};
use wire::{key_of, serve};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// A collection the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// `/api/v1/pods` (kind `Pod`).
    Pods,
    /// `/api/v1/namespaces` (kind `Namespace`).
    Namespaces,
}

impl Resource {
    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Namespaces => "Namespace",
        }
    }

    fn from_kind(kind: &str) -> Result<Resource> {
        match kind {
            "Pod" => Ok(Resource::Pods),
            "Namespace" => Ok(Resource::Namespaces),
            other => bail!("the stand-in API server serves Pod and Namespace, not {other:?}"),
        }
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Request {
    /// The request target, e.g. `/api/v1/pods?fieldSelector=...`.
    pub target: String,
    /// `pods` or `namespaces` when it was a list or watch of one of them.
    pub resource: Option<Resource>,
    /// It was a watch.
    pub watch: bool,
}

struct Event {
    /// Position in the log (never reused, also across [`KubeApi::compact`]).
    seq: u64,
    rv: u64,
    resource: Resource,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    seq: u64,
    objects: BTreeMap<(Resource, String), Value>,
    log: Vec<Event>,
    compacted: u64,
    /// Bumped by [`KubeApi::break_watches`]: watches opened before it end.
    generation: u64,
    unavailable: bool,
    requests: Vec<Request>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped (after the state changed) by every mutation, bookmark and break:
    /// watch streams and connections look at the state again.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection task must not take the server down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The stand-in API server. Stops (closing every connection) on drop.
pub struct KubeApi {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KubeApi {
    /// Starts the server and writes `<dir>/kubeconfig` for it.
    pub fn start(dir: &Path) -> Result<KubeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the API server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://{addr}\n\
                 contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
                 current-context: lab\nusers:\n- name: lab\n  user: {{}}\n"
            ),
        )
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kubeapi")
            .enable_all()
            .build()
            .context("building the API server's runtime")?;
        let listener = {
            let _runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let s = shared.clone();
        runtime.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        tokio::spawn(serve(s.clone(), conn));
                    }
                    // Out of descriptors, say: try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        Ok(KubeApi {
            addr,
            kubeconfig,
            shared,
            runtime: Some(runtime),
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The kubeconfig file pointing at the server.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn mutate(&self, resource: Resource, key: String, kind: &'static str, object: Option<Value>) {
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        let object = match object {
            Some(o) => Some(o),
            None => st.objects.remove(&(resource, key.clone())),
        };
        if let Some(mut object) = object {
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            if kind != "DELETED" {
                st.objects.insert((resource, key), object.clone());
            }
            st.seq += 1;
            let seq = st.seq;
            st.log.push(Event {
                seq,
                rv,
                resource,
                kind,
                object,
            });
        }
        drop(st);
        self.shared.notify();
    }

    /// Adds `object` (a `Pod` or `Namespace`, by its `kind`), or replaces it when
    /// one with its namespace/name exists: an `ADDED` or `MODIFIED` event.
    pub fn apply(&self, object: Value) -> Result<()> {
        let resource = Resource::from_kind(object["kind"].as_str().unwrap_or_default())?;
        let key = key_of(&object).context("the object has no metadata.name")?;
        let exists = self
            .shared
            .lock()
            .objects
            .contains_key(&(resource, key.clone()));
        let kind = if exists { "MODIFIED" } else { "ADDED" };
        self.mutate(resource, key, kind, Some(object));
        Ok(())
    }

    /// Deletes a pod (`namespace/name`) or namespace (`name`): a `DELETED` event
    /// carrying the object's last state.
    pub fn delete(&self, resource: Resource, key: &str) -> Result<()> {
        if !self
            .shared
            .lock()
            .objects
            .contains_key(&(resource, key.to_string()))
        {
            bail!("no {resource:?} {key:?} to delete");
        }
        self.mutate(resource, key.to_string(), "DELETED", None);
        Ok(())
    }

    /// Sends a `BOOKMARK` with the current version on every watch.
    pub fn bookmark(&self) {
        let mut st = self.shared.lock();
        let rv = st.rv;
        for resource in [Resource::Pods, Resource::Namespaces] {
            let object = json!({"kind": resource.kind(), "apiVersion": "v1",
                                "metadata": {"resourceVersion": rv.to_string()}});
            st.seq += 1;
            let seq = st.seq;
            st.log.push(Event {
                seq,
                rv,
                resource,
                kind: "BOOKMARK",
                object,
            });
        }
        drop(st);
        self.shared.notify();
    }

    /// Forgets the event log up to now: watches from an older version get `410 Gone`.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
        st.log.clear();
    }

    /// Closes every open watch connection abruptly (no final chunk).
    pub fn break_watches(&self) {
        self.shared.lock().generation += 1;
        self.shared.notify();
    }

    /// While `true`, every request is answered `503 Service Unavailable`.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.lock().unavailable = unavailable;
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// How many watch requests of `resource` were made so far.
    pub fn watches(&self, resource: Resource) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.watch && r.resource == Some(resource))
            .count()
    }

    /// How many list requests of `resource` were made so far.
    pub fn lists(&self, resource: Resource) -> usize {
        self.requests()
            .iter()
            .filter(|r| !r.watch && r.resource == Some(resource))
            .count()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.break_watches();
        // Dropping the runtime's tasks closes the listener and every connection.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests;
