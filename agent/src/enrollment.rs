//! Enrollment: the pods this agent steers ([`PodTable`]), kept equal to the desired
//! set. Enrolling a pod opens its listeners, attaches the programs, lists its listening
//! ports and turns steering on, each step held by a guard (`ebpf::pod`,
//! `proxy::PodListeners`) so that a failure at any step, or a release, undoes every
//! step before it.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    net::IpAddr,
    os::fd::{AsRawFd as _, RawFd},
    path::Path,
    sync::Arc,
    time::Duration,
};

use agent_common::{PodSteer, STEER_LOCAL, STEER_PROPAGATE, STEER_V4, STEER_V6};
use tokio::sync::{watch, Semaphore};

use crate::{
    cores::Cores,
    ebpf::{AttachedPod, Datapath, DatapathError, SteeringGuard},
    golden::{Golden, Peer},
    inpod, listeners,
    metrics::{Metrics, StateLabels},
    netns::{Netns, NetnsError},
    pod::Direction,
    proxy::{
        local::{LocalPods, LocalRegistration},
        pool::Pool,
        propagation::Propagation,
        InFlightCount, Limits, PodContext, PodListeners,
    },
    socket::{self, SocketError},
    trace::span::{PodIdentity, SpanSink},
    workloads::{ContextPropagation, PodKey, Workload},
};

/// How long a released pod's listeners keep accepting after steering stopped, so
/// connections steered just before the release are still served, not reset.
pub const DRAIN: Duration = Duration::from_millis(250);
/// How often pods that failed to enroll are retried (e.g. netns not created yet).
pub const RETRY: Duration = Duration::from_secs(2);

/// Why a pod could not be enrolled. The pod is left unsteered (never half-steered).
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Netns problem.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The cgroup directory is missing or not cgroup v2.
    #[error("cgroup {path}: {reason}")]
    Cgroup {
        /// Path.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The netns path now names another namespace than the source resolved.
    #[error("{path} is no longer the pod's network namespace (inode {got}, expected {want}); the pod's sandbox changed, the agent resolves it again")]
    NetnsMoved {
        /// The path.
        path: String,
        /// Inode the source resolved.
        want: u64,
        /// Inode found now.
        got: u64,
    },
    /// A listener could not be opened.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Attaching or map updates failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// Pod netns routing setup failed.
    #[error(transparent)]
    Inpod(#[from] inpod::InpodError),
    /// The pod's listening sockets could not be listed.
    #[error("listing the pod's listening sockets (sock_diag): {0}")]
    Listeners(std::io::Error),
    /// Other I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// An enrolled pod. Fields drop in order: same-node callers stop passing through it,
/// steering off, then the programs, then the context; the listeners are stopped by
/// [`PodTable::release`] after [`DRAIN`] (dropping them anywhere else stops them at
/// once).
struct Enrolled {
    local: LocalRegistration,
    spec: Workload,
    steering: SteeringGuard,
    attached: AttachedPod,
    ctx: Arc<PodContext>,
    listeners: PodListeners,
}

/// What enrollment needs from the command line.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// The data path's threads (accept loops and connections run there).
    pub cores: Arc<Cores>,
    /// Outbound listener port in each pod.
    pub outbound_port: u16,
    /// Inbound listener port in each pod.
    pub inbound_port: u16,
    /// `k8s.node.name` of the spans.
    pub node: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The proxy's limits and timeouts.
    pub limits: Limits,
}

/// The pods this agent steers, and the ones it could not.
pub struct PodTable {
    datapath: Arc<Datapath>,
    metrics: Arc<Metrics>,
    outbound_port: u16,
    inbound_port: u16,
    enrolled: BTreeMap<PodKey, Enrolled>,
    failed: BTreeMap<PodKey, (Workload, String)>,
    next_index: u32,
    node: Option<String>,
    service_name: String,
    spans: Option<SpanSink>,
    limits: Arc<Limits>,
    shutdown: watch::Receiver<bool>,
    inflight: Arc<InFlightCount>,
    golden: Arc<Golden>,
    local: Arc<LocalPods>,
    cores: Arc<Cores>,
}

impl PodTable {
    /// An empty table. `shutdown` turning `true` closes HTTP client connections once idle.
    pub fn new(
        datapath: Arc<Datapath>,
        metrics: Arc<Metrics>,
        config: TableConfig,
        spans: Option<SpanSink>,
        shutdown: watch::Receiver<bool>,
        golden: Arc<Golden>,
    ) -> Self {
        Self {
            golden,
            datapath,
            metrics,
            outbound_port: config.outbound_port,
            inbound_port: config.inbound_port,
            enrolled: BTreeMap::new(),
            failed: BTreeMap::new(),
            next_index: 0,
            node: config.node,
            service_name: config.service_name,
            spans,
            limits: Arc::new(config.limits),
            shutdown,
            inflight: Arc::default(),
            local: Arc::default(),
            cores: config.cores,
        }
    }

    /// Connections being proxied on the node now.
    pub fn inflight(&self) -> Arc<InFlightCount> {
        self.inflight.clone()
    }

    /// Makes the enrolled set equal to `desired`: releases pods that vanished or
    /// changed, enrolls new ones. Pods that fail are reported and retried later.
    pub fn reconcile(&mut self, desired: &[Workload]) {
        let want: HashMap<PodKey, &Workload> = desired.iter().map(|w| (w.key(), w)).collect();
        let gone: Vec<PodKey> = self
            .enrolled
            .iter()
            .filter(|(k, e)| want.get(*k).is_none_or(|w| !e.spec.same_target(w)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(e) = self.enrolled.remove(&key) {
                tracing::info!(pod = %key, "releasing");
                self.release(e);
            }
        }
        // Same namespace reached through another path: record it, nothing to redo.
        for (key, e) in self.enrolled.iter_mut() {
            if let Some(w) = want.get(key) {
                if **w != e.spec {
                    tracing::debug!(pod = %key, netns = %w.netns.display(), "same network namespace, new path");
                    e.spec = (*w).clone();
                }
            }
        }
        self.failed.retain(|k, _| want.contains_key(k));
        for w in desired {
            let key = w.key();
            if self.enrolled.contains_key(&key) {
                continue;
            }
            self.try_enroll(w.clone());
        }
        self.update_gauges();
    }

    /// Retries pods that failed to enroll.
    pub fn retry_failed(&mut self) {
        let failed: Vec<Workload> = self.failed.values().map(|(w, _)| w.clone()).collect();
        for w in failed {
            self.try_enroll(w);
        }
        self.update_gauges();
    }

    fn try_enroll(&mut self, w: Workload) {
        let key = w.key();
        match self.enroll(&w) {
            Ok(e) => {
                // The netns cookie names the pod in the eBPF decision log (`--ebpf-log`).
                tracing::info!(pod = %key, netns = %w.netns.display(), netns_cookie = e.ctx.netns_cookie, cgroup = %w.cgroup.display(), ips = ?w.ips, "steering");
                self.failed.remove(&key);
                self.enrolled.insert(key, e);
            }
            Err(err) => {
                let reason = err.to_string();
                let known = self
                    .failed
                    .get(&key)
                    .map(|(_, r)| r == &reason)
                    .unwrap_or(false);
                if !known {
                    tracing::warn!(pod = %key, "not steered (traffic flows direct; retrying every {RETRY:?}): {reason}");
                }
                self.failed.insert(key, (w, reason));
            }
        }
    }

    fn update_gauges(&self) {
        let m = &self.metrics.workloads;
        m.get_or_create(&StateLabels { state: "steered" })
            .set(self.enrolled.len() as i64);
        m.get_or_create(&StateLabels { state: "failed" })
            .set(self.failed.len() as i64);
    }

    /// Opens the pod's listeners, attaches the programs, then turns steering on. Each
    /// step is held by a guard: an error at any point undoes every earlier step (the
    /// pod stays completely unsteered), and nothing is retried on top of leftovers.
    fn enroll(&mut self, w: &Workload) -> Result<Enrolled, EnrollError> {
        let netns = Netns::open(&w.netns)?;
        if let Some(want) = w.netns_inode {
            use std::os::unix::fs::MetadataExt as _;
            let got = netns.file().metadata()?.ino();
            if got != want {
                return Err(EnrollError::NetnsMoved {
                    path: w.netns.display().to_string(),
                    want,
                    got,
                });
            }
        }
        let cgroup = open_cgroup2(&w.cgroup)?;
        // Return routing for the transparent inbound leg; inert until steering starts.
        inpod::install(&netns)?;
        let has_v6 = w.ips.iter().any(IpAddr::is_ipv6);

        // Listeners first: nothing is steered until they exist.
        let out_v4 = socket::listen_in(&netns, socket::loopback(false, self.outbound_port))?;
        let out_v6 = optional_v6(
            socket::listen_in(&netns, socket::loopback(true, self.outbound_port)),
            has_v6,
        )?;
        let in_v4 = socket::listen_in(&netns, socket::loopback(false, self.inbound_port))?;
        let in_v6 = optional_v6(
            socket::listen_in(&netns, socket::loopback(true, self.inbound_port)),
            has_v6,
        )?;
        let netns_cookie = socket::netns_cookie(&out_v4)?;
        let inbound_fds: Vec<(IpAddr, RawFd)> = w
            .ips
            .iter()
            .map(|ip| {
                let l = match ip {
                    IpAddr::V4(_) => &in_v4,
                    IpAddr::V6(_) => in_v6.as_ref().unwrap_or(&in_v4),
                };
                (*ip, l.as_raw_fd())
            })
            .collect();
        let mut flags = STEER_V4;
        if out_v6.is_some() {
            flags |= STEER_V6;
        }
        if self.datapath.pod_tcp_skipped() {
            flags |= STEER_LOCAL;
        }
        let propagation = match w.context_propagation {
            ContextPropagation::Off => None,
            ContextPropagation::Auto => {
                flags |= STEER_PROPAGATE;
                let probes = self.datapath.thread_probes();
                Some(Arc::new(Propagation::new(
                    self.datapath.clone(),
                    self.metrics.propagation(&w.key()),
                    probes,
                )))
            }
        };

        let attached = self.datapath.attach_pod_guarded(&cgroup, netns.file())?;
        // Ports already listening (sock_ops records the ones opened from now on): only
        // these are steered inbound; closed ports stay refused by the pod itself.
        let dump_started = listeners::monotonic_ns();
        let ports = netns
            .run(listeners::listening_ports)?
            .map_err(EnrollError::Listeners)?;
        self.datapath
            .add_listeners(netns_cookie, &ports, dump_started);
        let slots = || Arc::new(Semaphore::new(self.limits.max_connections_per_pod));
        let ctx = Arc::new(PodContext {
            key: w.key(),
            netns,
            netns_cookie,
            datapath: self.datapath.clone(),
            outbound: self.metrics.conn(&w.key(), Direction::Outbound),
            inbound: self.metrics.conn(&w.key(), Direction::Inbound),
            identity: Arc::new(PodIdentity::new(
                w.key(),
                w.uid.as_deref(),
                w.service_name(),
                self.node.as_deref(),
                &self.service_name,
            )),
            spans: self.spans.clone(),
            ips: w.ips.clone(),
            outbound_pool: Arc::new(Pool::new(self.limits.pool_max_lifetime)),
            inbound_pool: Arc::new(Pool::new(self.limits.pool_max_lifetime)),
            trace_sampling: w.trace_sampling.unwrap_or(0.0),
            limits: self.limits.clone(),
            slots: [slots(), slots()],
            shutdown: self.shutdown.clone(),
            node_inflight: self.inflight.clone(),
            golden: self.golden.clone(),
            workload: Peer::new(&w.namespace, w.service_name()),
            local: self.local.clone(),
            propagation,
        });
        // The accept loops own the listeners; the raw fds above stay valid while they run.
        // Each pod's accept loops start on the next cores in turn.
        let listeners = PodListeners::start(
            ctx.clone(),
            &self.cores,
            self.next_index as usize,
            std::iter::once(out_v4).chain(out_v6).collect(),
            std::iter::once(in_v4).chain(in_v6).collect(),
        )?;
        let steering = self.datapath.steer_pod(
            netns_cookie,
            PodSteer {
                pod_index: self.next_index,
                outbound_port: self.outbound_port,
                flags,
            },
            &inbound_fds,
        )?;
        self.next_index = self.next_index.wrapping_add(1);
        let local = self.local.register(&ctx);
        Ok(Enrolled {
            local,
            spec: w.clone(),
            steering,
            attached,
            ctx,
            listeners,
        })
    }

    /// Stops steering a pod: new connections go direct at once; connections already
    /// steered are still accepted for [`DRAIN`], and proxied ones run to their end.
    fn release(&self, e: Enrolled) {
        let Enrolled {
            steering,
            attached,
            ctx,
            listeners,
            local,
            ..
        } = e;
        // Same-node callers stop passing through this pod at once.
        drop(local);
        drop(steering);
        drop(attached);
        self.metrics.remove_pod(&ctx.key);
        self.golden.remove_pod(&ctx.key);
        // The pod netns' fwmark rule and route (inpod) stay: connections still being
        // proxied need them, a re-enrollment reuses them, they match only the agent's
        // mark, and they go away with the pod's netns.
        tokio::spawn(async move {
            tokio::time::sleep(DRAIN).await;
            drop(listeners);
        });
    }

    /// Releases every pod (shutdown).
    pub fn release_all(&mut self) {
        let all = std::mem::take(&mut self.enrolled);
        for (_, e) in all {
            self.release(e);
        }
    }

    /// Brings every enrolled pod's listening ports up to date (ports that closed stop
    /// being steered; see `crate::listeners`). A pod whose dump fails keeps its entries.
    pub fn sync_listeners(&self) {
        let mut dumps = HashMap::new();
        let mut keep = std::collections::BTreeSet::new();
        for (key, e) in &self.enrolled {
            let cookie = e.ctx.netns_cookie;
            keep.insert(cookie);
            let started = listeners::monotonic_ns();
            match e.ctx.netns.run(listeners::listening_ports) {
                Ok(Ok(ports)) => {
                    dumps.insert(cookie, (ports, started));
                }
                Ok(Err(err)) => tracing::debug!(pod = %key, "listing listening sockets: {err}"),
                Err(err) => tracing::debug!(pod = %key, "listing listening sockets: {err}"),
            }
        }
        self.datapath.sync_listeners(&dumps, &keep);
    }

    /// Number of pods steered now.
    pub fn steered(&self) -> usize {
        self.enrolled.len()
    }
}

/// A missing `::1` (IPv6 disabled in the pod) is fine unless the pod has v6 addresses.
fn optional_v6(
    r: Result<std::net::TcpListener, SocketError>,
    required: bool,
) -> Result<Option<std::net::TcpListener>, SocketError> {
    match r {
        Ok(l) => Ok(Some(l)),
        Err(err) if required => Err(err),
        Err(err) => {
            tracing::debug!("no IPv6 loopback listener: {err}");
            Ok(None)
        }
    }
}

fn open_cgroup2(path: &Path) -> Result<File, EnrollError> {
    let cg_err = |reason: String| EnrollError::Cgroup {
        path: path.display().to_string(),
        reason,
    };
    let file = File::open(path).map_err(|e| {
        cg_err(format!(
            "{e}; the pod may be gone or not started yet (the agent retries)"
        ))
    })?;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let st = nix::sys::statfs::fstatfs(&file).map_err(|e| cg_err(e.to_string()))?;
    if st.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
        return Err(cg_err(
            "not a cgroup v2 directory; use the pod's directory under the cgroup2 mount (e.g. /sys/fs/cgroup/... or /sys/fs/cgroup/unified/...)".into(),
        ));
    }
    Ok(file)
}
