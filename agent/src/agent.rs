//! The daemon: load the datapath, serve admin, keep the set of enrolled pods equal to
//! the workload source (file or Kubernetes API, see [`crate::source`]), and shut down
//! cleanly.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::{
    admin::{self, AdminState},
    config::RunArgs,
    cores::Cores,
    ebpf::{Datapath, DatapathConfig},
    enrollment::{PodTable, TableConfig, DRAIN, RETRY},
    export::{self, ExportConfig},
    golden::Golden,
    metrics::Metrics,
    netns,
    proxy::Limits,
    source::Source,
    workloads::{self, Workload},
};

/// What enrollment takes from the command line.
fn table_config(args: &RunArgs, cores: Arc<Cores>) -> TableConfig {
    TableConfig {
        cores,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        node: args.node_name.clone(),
        service_name: args.service_name.clone(),
        limits: limits(args),
    }
}

/// The proxy's limits from the command line.
fn limits(args: &RunArgs) -> Limits {
    Limits {
        max_connections_per_pod: args.max_connections_per_pod as usize,
        header_read_timeout: args.header_read_timeout,
        http_idle_timeout: args.http_idle_timeout,
        tcp_idle_timeout: args.tcp_idle_timeout,
        pool_max_lifetime: args.pool_max_lifetime,
        lean_http1: args.http1_proxy == crate::config::Http1Proxy::Lean,
        one_pass: args.same_node_one_pass,
        opaque_in_kernel: args.opaque_tcp != crate::config::OpaqueTcp::Userspace,
    }
}

/// The agent's own cgroup (v2), opened; never the root (a sock_ops program there runs
/// for every socket of the node).
fn agent_cgroup() -> Result<std::fs::File, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 entry in /proc/self/cgroup")?
        .trim();
    if path == "/" {
        return Err("the agent runs in the root cgroup: run it in a cgroup of its own".into());
    }
    let mount = crate::check::cgroup2_mount().ok_or("no cgroup2 mount")?;
    let dir = std::path::Path::new(&mount).join(path.trim_start_matches('/'));
    std::fs::File::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Whether the kernel splice of opaque TCP is asked for (`None`: not, the default) and
/// loaded: with `--opaque-tcp kernel` on kernels with the sockmap fix it needs
/// (`kernel::SPLICE_FEATURE`), with `--opaque-tcp kernel-always` on any.
fn splice_supported(mode: crate::config::OpaqueTcp) -> Option<bool> {
    if mode == crate::config::OpaqueTcp::Userspace {
        return None;
    }
    let name = if mode == crate::config::OpaqueTcp::Kernel {
        "kernel"
    } else {
        "kernel-always"
    };
    tracing::warn!(
        "--opaque-tcp {name} (experimental): a spliced connection whose reader falls behind goes on in userspace, and on 6.18 such a connection has been seen to get a segment twice (docs/ARCHITECTURE.md, \"Opaque TCP in the kernel\")"
    );
    let tested = crate::kernel::has(crate::kernel::SPLICE_FEATURE);
    if mode == crate::config::OpaqueTcp::KernelAlways && !tested {
        tracing::warn!(
            "--opaque-tcp kernel-always: splicing opaque TCP on a kernel without {} (Linux {}): a spliced connection may get bytes twice under backpressure (docs/KERNELS.md)",
            crate::kernel::SPLICE_FEATURE,
            crate::kernel::splice_releases()
        );
        return Some(true);
    }
    Some(tested)
}

/// Raises the soft open-file limit to the hard one: every proxied connection costs two
/// descriptors, and container runtimes often start processes with a soft limit of
/// 1024 under a hard limit of a million. Per-pod connection slots
/// (`--max-connections-per-pod`) keep one pod from taking them all.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let before = lim.rlim_cur;
        if before < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!(
                    "could not raise the open-file limit from {before}: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
        }
        tracing::info!(
            "open-file limit {} (each proxied connection uses two)",
            lim.rlim_cur
        );
    }
}

/// `hoptrace run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    // On a kernel without every feature the agent would half-work: refuse (check.rs).
    let release = crate::kernel::running_release().map_err(anyhow::Error::msg)?;
    crate::kernel::require(&release).map_err(anyhow::Error::msg)?;
    if args.skip_capability_check {
        tracing::warn!("capability preflight skipped (--skip-capability-check)");
    } else {
        crate::check::require_capabilities()?;
    }
    raise_fd_limit();
    // Capture the host netns on the main thread, before any worker thread exists.
    netns::init_host().context("reading the agent's own network namespace")?;
    // The data path's threads, one per core (cores.rs); the control plane runs on
    // this thread's own runtime.
    let cores = Cores::start(args.worker_threads, args.pin_cores)
        .context("starting the data path's threads")?;
    let rt = crate::cores::runtime().context("starting the async runtime")?;
    let result = rt.block_on(run_async(args, cores.clone()));
    // Connections still open after the grace period close with their cores' tasks.
    drop(rt);
    drop(cores);
    result
}

async fn run_async(args: RunArgs, cores: Arc<Cores>) -> anyhow::Result<()> {
    let (mut source, initial) = Source::open(&args.source()).await?;

    let ebpf_log = args.ebpf_log_enabled();
    let datapath = Arc::new(Datapath::load(DatapathConfig {
        log: ebpf_log,
        splice: splice_supported(args.opaque_tcp),
    })?);
    if args.skip_pod_tcp {
        let enabled = if crate::kernel::has(crate::kernel::SOCK_LENGTH_TRACEPOINTS) {
            agent_cgroup().and_then(|f| datapath.skip_pod_tcp(&f).map_err(|e| e.to_string()))
        } else {
            Err(format!(
                "this kernel lacks the {} (Linux 6.3) that bound the redirected queues",
                crate::kernel::SOCK_LENGTH_TRACEPOINTS
            ))
        };
        match enabled {
            Ok(()) => {
                // Ask the kernel what the apps' blocking reads will do (half a second).
                let probe = tokio::task::spawn_blocking(crate::ebpf::read_probe::blocking_read)
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                let reads = match &probe {
                    Ok(read) => read.describe().to_string(),
                    Err(e) => format!("what a blocking read in an app does could not be probed ({e}): assume it can fail with EAGAIN"),
                };
                let msg = format!("--skip-pod-tcp (experimental): in-pod connections skip TCP; {reads}; opaque TCP is relayed in userspace (docs/ARCHITECTURE.md)");
                if matches!(probe, Ok(crate::ebpf::read_probe::BlockingRead::Waits)) {
                    tracing::info!("{msg}");
                } else {
                    tracing::warn!("{msg}");
                }
            }
            Err(err) => tracing::warn!("--skip-pod-tcp: {err}; in-pod connections use TCP"),
        }
    }
    if ebpf_log {
        tracing::info!(
            "eBPF decision log on: steering decisions are logged at debug, target {}",
            crate::ebpf::LOG_TARGET
        );
    }
    let export_metrics = export::ExportMetrics::default();
    let golden = Arc::new(Golden::new(args.golden_metrics, args.tap));
    let metrics = Arc::new(Metrics::new(&[
        &crate::ebpf::KernelCounters(datapath.clone()),
        &export_metrics,
        &golden,
    ]));
    let state = Arc::new(AdminState {
        ready: false.into(),
        metrics: metrics.clone(),
        golden: golden.clone(),
    });
    let admin_addr = admin::serve(
        args.admin_addr,
        state.clone(),
        admin::AdminLimits::new(args.admin_max_connections as usize),
    )
    .await?;
    tracing::info!(%admin_addr, workloads = %source.describe(), "hoptrace agent started");

    let export_config = ExportConfig {
        endpoint: args.otlp_endpoint(),
        ca_file: args.otlp_ca_file.clone(),
        client_cert: args.otlp_client_cert.clone(),
        client_key: args.otlp_client_key.clone(),
        headers: args.otlp_headers.clone(),
        gzip: args.otlp_compression == "gzip",
        queue_size: args.span_queue,
        // The queue, plus up to MAX_IN_FLIGHT batches in flight and one being gathered:
        // at most twice --span-queue spans held.
        batch_size: (args.span_queue / (export::MAX_IN_FLIGHT + 1)).clamp(1, 512),
        flush_interval: Duration::from_millis(500),
        timeout: Duration::from_secs(5),
    };
    let _metrics_export = if args.otlp_metrics {
        let mut resource = vec![crate::attr::string("service.name", "hoptrace-agent")];
        if let Some(node) = &args.node_name {
            resource.push(crate::attr::string("k8s.node.name", node.as_str()));
        }
        Some(export::start_metrics(
            &export_config,
            metrics.clone(),
            args.otlp_metrics_interval,
            resource,
            export_metrics.metric_errors.clone(),
        )?)
    } else {
        None
    };
    let spans = export::start(export_config, export_metrics)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut table = PodTable::new(
        datapath.clone(),
        metrics.clone(),
        table_config(&args, cores),
        Some(spans),
        shutdown_rx,
        golden.clone(),
    );
    source.start(&metrics);
    // Ready once the first complete desired set (the file, or the first full lists
    // from the API server) has been reconciled: every pod in it steered or reported.
    let mut ready = false;
    let mut reconcile = |table: &mut PodTable, desired: &[Workload]| {
        golden.peers.replace(desired.iter().flat_map(|w| {
            w.ips
                .iter()
                .map(move |ip| (*ip, w.namespace.as_str(), w.service_name()))
        }));
        // Entries for other nodes' pods only name addresses (docs/METRICS.md).
        if desired.iter().all(|w| w.is_local()) {
            table.reconcile(desired);
        } else {
            let local: Vec<Workload> = desired.iter().filter(|w| w.is_local()).cloned().collect();
            table.reconcile(&local);
        }
        if !ready {
            ready = true;
            state.ready.store(true, Ordering::Release);
            tracing::info!(steered = table.steered(), "ready");
        }
    };
    if let Some(desired) = initial {
        reconcile(&mut table, &desired);
    }

    let mut tick = tokio::time::interval(workloads::POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_retry = Instant::now();
    let mut last_collect: Option<Instant> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        // This loop runs on the main thread (the control plane): its heap (startup's:
        // the kernel BTF parsed to load the programs, tens of MB at peak) is collected
        // here every second, sooner than its park would.
        if last_collect.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_collect = Some(Instant::now());
            crate::park::collect_heap(true);
        }
        if let Some(desired) = source.poll(&metrics) {
            reconcile(&mut table, &desired);
        }
        source.poll_peers(&golden.peers);
        if last_retry.elapsed() >= RETRY {
            last_retry = Instant::now();
            table.retry_failed();
            table.sync_listeners();
        }
    }
    tracing::info!("shutting down: releasing pods (new connections go direct)");
    state.ready.store(false, Ordering::Release);
    let deadline = tokio::time::Instant::now() + args.shutdown_grace;
    table.release_all();
    drop(source);
    // Listeners accept what was steered before the release for DRAIN, then close.
    tokio::time::sleep(DRAIN + Duration::from_millis(50)).await;
    // HTTP connections close once their requests in flight are answered; opaque ones
    // run until they end or the grace period does.
    let _ = shutdown_tx.send(true);
    let inflight = table.inflight();
    while inflight.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match inflight.get() {
        0 => tracing::info!("every connection finished; exiting"),
        n => tracing::warn!(
            "{n} connections still open after --shutdown-grace {:?}; closing them",
            args.shutdown_grace
        ),
    }
    Ok(())
}
