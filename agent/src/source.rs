//! Where the desired workload set comes from: the workload file (DESIGN §3.2) or,
//! without one and with `KUBERNETES_SERVICE_HOST` set, the Kubernetes API
//! ([`crate::k8s`]). Both feed the same reconcile loop (`agent.rs`).

use std::path::PathBuf;

use crate::{
    k8s::{Discovery, DiscoveryConfig, DiscoveryError},
    metrics::Metrics,
    workloads::{self, FileWatch, Workload, WorkloadError},
};

/// Why no workload source could be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Neither a file nor a cluster.
    #[error("no workload source: pass --workloads-file PATH (or HOPTRACE_WORKLOADS_FILE), or run the agent in Kubernetes (KUBERNETES_SERVICE_HOST set) to discover pods from the API")]
    None,
    /// The workload file is unusable at startup.
    #[error(transparent)]
    File(#[from] WorkloadError),
    /// Kubernetes discovery could not start.
    #[error(transparent)]
    Kubernetes(#[from] DiscoveryError),
}

/// What the workload source takes from the command line (built by `config`).
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `--workloads-file`: when set, the file is the source.
    pub workloads_file: Option<PathBuf>,
    /// Without a file: Kubernetes discovery (when `KUBERNETES_SERVICE_HOST` is set).
    pub discovery: DiscoveryConfig,
}

/// The static workload file, re-read when it changes.
#[derive(Debug)]
pub struct FileSource {
    watch: FileWatch,
    path: PathBuf,
    node: Option<String>,
    last_error: Option<String>,
}

/// A workload source.
pub enum Source {
    /// `--workloads-file`.
    File(FileSource),
    /// The Kubernetes API.
    Kubernetes(Box<Discovery>),
}

impl Source {
    /// Opens the source `args` select. A file is read and validated now (its set is
    /// returned, and a bad file fails startup); the Kubernetes client is configured
    /// but nothing is watched before [`Source::start`].
    pub async fn open(args: &SourceConfig) -> Result<(Source, Option<Vec<Workload>>), SourceError> {
        if let Some(path) = args.workloads_file.clone() {
            let node = args.discovery.node_name.clone();
            let mut watch = FileWatch::new(path.clone());
            let first = watch.poll()?.unwrap_or_default();
            let desired = workloads::parse(&path, &first, node.as_deref())?;
            let file = FileSource {
                watch,
                path,
                node,
                last_error: None,
            };
            return Ok((Source::File(file), Some(desired)));
        }
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            return Err(SourceError::None);
        }
        let discovery = Discovery::connect(&args.discovery).await?;
        Ok((Source::Kubernetes(Box::new(discovery)), None))
    }

    /// What the startup log says about the source.
    pub fn describe(&self) -> String {
        match self {
            Source::File(f) => f.path.display().to_string(),
            Source::Kubernetes(d) => d.describe(),
        }
    }

    /// Starts background work (the Kubernetes watches).
    pub fn start(&mut self, metrics: &Metrics) {
        if let Source::Kubernetes(d) = self {
            d.start(metrics);
        }
    }

    /// Updates the other pods' layer of `index` (Kubernetes: the cluster-wide pod
    /// watch; the file's other-node entries come with the desired set).
    pub fn poll_peers(&mut self, index: &crate::golden::PeerIndex) {
        if let Source::Kubernetes(d) = self {
            d.poll_peers(index);
        }
    }

    /// The new desired set when it changed since the last call. Errors are logged
    /// and counted here; the last good set stays in force.
    pub fn poll(&mut self, metrics: &Metrics) -> Option<Vec<Workload>> {
        match self {
            Source::Kubernetes(d) => d.poll(),
            Source::File(f) => match f.watch.poll().and_then(|t| {
                t.map(|t| workloads::parse(&f.path, &t, f.node.as_deref()))
                    .transpose()
            }) {
                Ok(Some(desired)) => {
                    f.last_error = None;
                    Some(desired)
                }
                Ok(None) => None,
                Err(err) => {
                    let msg = err.to_string();
                    if f.last_error.as_deref() != Some(msg.as_str()) {
                        metrics.workload_file_errors.inc();
                        tracing::error!("{msg}; keeping the last good workload set");
                        f.last_error = Some(msg);
                    }
                    None
                }
            },
        }
    }
}
