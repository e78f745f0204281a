//! `cargo xtask cluster [--keep]`: the project's DaemonSet and demo app as real pods
//! on a real one-node Kubernetes cluster on this machine, without Docker
//! (`hoptrace_tests::node`: kubelet, containerd, bridge CNI, the control plane of
//! the discovery tests), checked as `cargo xtask kind` checks kind: one trace of
//! loadgen → frontend → backend with four proxy spans on each hop, exact parents,
//! received by the run's OTLP receiver. Everything is torn down at the end (at
//! Ctrl-C too); `--keep` keeps it running until Ctrl-C.
//!
//! Environment (set by `cargo xtask cluster`): `HOPTRACE_BIN`, the agent binary put
//! in the image; `HOPTRACE_CLUSTER_DIR`, the run's directory (state, logs).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use hoptrace_tests::{
    cluster::{ControlPlane, Options},
    hops::{self, HopSpan},
    node::{
        deploy::{self, DEMO_NS, DEMO_PATH},
        host::{Bridge, GATEWAY},
        images, Node,
    },
    otlp::{OtlpReceiver, ReceiverOptions},
};

/// How long to wait for a complete trace once everything runs.
const TRACE_BUDGET: Duration = Duration::from_secs(180);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stopped() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Ctrl-C and SIGTERM stop the run through the normal path, so that every guard's
    // teardown runs (containerd's shims outlive a killed parent).
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let keep = std::env::args().skip(1).any(|a| a == "--keep");
    let started = Instant::now();
    match run(keep) {
        Ok(()) => {
            println!(
                "lab-cluster: passed; {:.0} s including teardown",
                started.elapsed().as_secs_f64()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lab-cluster: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(keep: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (containerd, the kubelet, eBPF)");
    }
    let hoptrace =
        PathBuf::from(std::env::var_os("HOPTRACE_BIN").context("HOPTRACE_BIN is not set")?);
    let dir = PathBuf::from(
        std::env::var_os("HOPTRACE_CLUSTER_DIR").context("HOPTRACE_CLUSTER_DIR is not set")?,
    );
    Node::cleanup(&dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let image_dir = dir.join("images");
    std::fs::create_dir_all(&image_dir)?;
    println!(
        "lab-cluster: making the images (pause, python, agent from {})",
        hoptrace.display()
    );
    let pause = images::pause_rootfs(&image_dir.join("pause"))?;
    images::python_rootfs(&image_dir.join("python"))?;
    images::agent_rootfs(&image_dir.join("agent"), &hoptrace)?;
    let mut archives = Vec::new();
    for (name, tree, entry) in [
        (images::PAUSE, "pause", pause),
        (images::PYTHON, "python", Vec::new()),
        (
            images::AGENT,
            "agent",
            vec!["/hoptrace".into(), "run".into()],
        ),
    ] {
        let tar = image_dir.join(format!("{tree}.tar"));
        images::archive(name, &image_dir.join(tree), &entry, &tar)?;
        std::fs::remove_dir_all(image_dir.join(tree))?;
        archives.push(tar);
    }
    stopped()?;

    let bridge = Bridge::create()?;
    println!("lab-cluster: starting etcd and kube-apiserver on {GATEWAY}");
    let cp = ControlPlane::start_with(
        &dir,
        &Options {
            addr: GATEWAY.into(),
            service_accounts: true,
        },
    )?;
    let otlp = OtlpReceiver::start(ReceiverOptions {
        bind: (GATEWAY, 0).into(),
        ..ReceiverOptions::default()
    })?;
    println!(
        "lab-cluster: starting containerd, kube-controller-manager, kube-scheduler and the kubelet"
    );
    let node_started = Instant::now();
    let mut node = Node::start(&cp, &bridge, &dir, &archives)?;
    // Imported: containerd holds the images now.
    std::fs::remove_dir_all(&image_dir)?;
    println!(
        "lab-cluster: node Ready in {:.0} s (logs: {})",
        node_started.elapsed().as_secs_f64(),
        dir.join("logs").display()
    );
    let result = deploy_and_verify(&mut node, &otlp, &cp);
    if result.is_err() {
        deploy::diagnostics(&node);
    }
    if keep && !STOP.load(Ordering::Relaxed) {
        println!(
            "lab-cluster: kept running: kubectl --kubeconfig {} get pods -A; Ctrl-C tears it down",
            cp.admin_kubeconfig().display()
        );
        while !STOP.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("lab-cluster: tearing down");
    drop(node);
    drop(otlp);
    drop(cp);
    drop(bridge);
    result
}

fn deploy_and_verify(node: &mut Node, otlp: &OtlpReceiver, cp: &ControlPlane) -> Result<()> {
    println!(
        "lab-cluster: deploying the agent (deploy/base) with spans to {}",
        otlp.endpoint()
    );
    deploy::agent(node, otlp.addr(), cp.addr())?;
    stopped()?;
    println!("lab-cluster: deploying the demo app (deploy/examples: backend, frontend, loadgen)");
    deploy::demo(node)?;
    let start = Instant::now();
    let mut last = String::from("no spans yet");
    while start.elapsed() < TRACE_BUDGET {
        stopped()?;
        node.check_running()?;
        let spans: Vec<HopSpan> = otlp.spans().iter().map(HopSpan::from).collect();
        match hops::verify_path(&spans, DEMO_NS, DEMO_PATH) {
            Ok(v) => {
                println!(
                    "lab-cluster: trace {} ({} traces checked) has four proxy spans on every hop:",
                    v.trace_id, v.checked
                );
                for hop in &v.hops {
                    println!("  {hop}: {}", hop.spans.join(" -> "));
                }
                return Ok(());
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    bail!(
        "no trace with four proxy spans per hop along {} after {TRACE_BUDGET:?}; last check:\n{last}",
        DEMO_PATH.join(" -> ")
    )
}
