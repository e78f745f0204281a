//! `cargo xtask kind`: hoptrace in a two-node kind cluster, end to end.
//!
//! Creates the cluster of `deploy/kind/cluster.yaml` (or reuses a running one of
//! that name), builds the image and loads it into the nodes, applies
//! `deploy/overlays/kind`, waits for the DaemonSet, deploys Jaeger and the demo
//! app (`deploy/examples`), then queries Jaeger's `/api/traces` through
//! `kubectl port-forward` until a trace shows loadgen → frontend → backend with
//! four proxy spans on each hop. Deletes the cluster it created unless `--keep`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{hops, image, jaeger, run};

/// The cluster name (`name:` in deploy/kind/cluster.yaml).
const CLUSTER: &str = "hoptrace";
/// kubectl context kind creates for it.
const CONTEXT: &str = "kind-hoptrace";
/// Where the demo app and Jaeger run (deploy/examples).
const DEMO_NS: &str = "hoptrace-demo";
/// The demo app's request path, as Deployments.
const DEMO_PATH: &[&str] = &["loadgen", "frontend", "backend"];
/// `service.name` of the proxy spans (the agent's `--service-name` default).
const PROXY_SERVICE: &str = "hoptrace-proxy";
/// How long to wait for a complete trace once everything runs.
const TRACE_BUDGET: Duration = Duration::from_secs(180);

/// Runs the whole scenario; `keep` leaves the cluster running.
pub fn run_kind(root: &Path, keep: bool) -> anyhow::Result<()> {
    image::require("kind", &[image::DOCKER, image::KIND, image::KUBECTL])?;
    let existed = cluster_exists()?;
    if existed {
        println!("xtask kind: reusing the running kind cluster {CLUSTER:?}");
    } else {
        println!("xtask kind: creating kind cluster {CLUSTER:?} (deploy/kind/cluster.yaml)");
        run(Command::new("kind").current_dir(root).args([
            "create",
            "cluster",
            "--name",
            CLUSTER,
            "--config",
            "deploy/kind/cluster.yaml",
            "--wait",
            "120s",
        ]))?;
    }
    let result = deploy_and_verify(root, existed);
    if result.is_err() {
        diagnostics();
    }
    if keep || existed {
        println!(
            "xtask kind: cluster {CLUSTER:?} left running (kubectl --context {CONTEXT}; \
             Jaeger UI: kubectl --context {CONTEXT} -n {DEMO_NS} port-forward svc/jaeger 16686; \
             delete: kind delete cluster --name {CLUSTER})"
        );
    } else {
        println!("xtask kind: deleting cluster {CLUSTER:?} (--keep leaves it)");
        if let Err(e) = run(Command::new("kind").args(["delete", "cluster", "--name", CLUSTER])) {
            eprintln!("xtask kind: {e:#}");
        }
    }
    result
}

fn cluster_exists() -> anyhow::Result<bool> {
    let out = Command::new("kind")
        .args(["get", "clusters"])
        .output()
        .context("running `kind get clusters`")?;
    if !out.status.success() {
        bail!(
            "`kind get clusters` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == CLUSTER))
}

fn kubectl() -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.args(["--context", CONTEXT]);
    cmd
}

fn deploy_and_verify(root: &Path, reused: bool) -> anyhow::Result<()> {
    image::build(root, image::DEFAULT_TAG)?;
    run(Command::new("kind").args([
        "load",
        "docker-image",
        image::DEFAULT_TAG,
        "--name",
        CLUSTER,
    ]))?;

    println!("xtask kind: deploying the agent (deploy/overlays/kind)");
    run(kubectl()
        .current_dir(root)
        .args(["apply", "-k", "deploy/overlays/kind"]))?;
    if reused {
        // Same tag, new image: restart the agents so they run it.
        run(kubectl().args(["-n", "hoptrace", "rollout", "restart", "daemonset/hoptrace"]))?;
    }
    run(kubectl().args([
        "-n",
        "hoptrace",
        "rollout",
        "status",
        "daemonset/hoptrace",
        "--timeout=180s",
    ]))?;

    println!("xtask kind: deploying Jaeger and the demo app (deploy/examples)");
    run(kubectl()
        .current_dir(root)
        .args(["apply", "-k", "deploy/examples"]))?;
    for deployment in ["jaeger"].iter().chain(DEMO_PATH) {
        run(kubectl().args([
            "-n",
            DEMO_NS,
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "--timeout=300s",
        ]))?;
    }

    let forward = PortForward::start()?;
    println!(
        "xtask kind: querying Jaeger at http://{}/api/traces?service={PROXY_SERVICE}",
        forward.addr
    );
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < TRACE_BUDGET {
        let path = format!("/api/traces?service={PROXY_SERVICE}&lookback=1h&limit=50");
        let outcome = http_get(forward.addr, &path)
            .and_then(|body| jaeger::parse(&body))
            .and_then(|spans| hops::verify_path(&spans, DEMO_NS, DEMO_PATH));
        match outcome {
            Ok(v) => {
                println!(
                    "xtask kind: trace {} ({} traces checked) has four proxy spans on every hop:",
                    v.trace_id, v.checked
                );
                for hop in &v.hops {
                    println!("  {hop}: {}", hop.spans.join(" -> "));
                }
                return Ok(());
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    bail!(
        "no trace with four proxy spans per hop along {} in Jaeger after {TRACE_BUDGET:?}; last check:\n{last}",
        DEMO_PATH.join(" -> ")
    )
}

/// `kubectl port-forward svc/jaeger <free port>:16686`, stopped on drop.
struct PortForward {
    child: Child,
    addr: SocketAddr,
}

impl PortForward {
    fn start() -> anyhow::Result<PortForward> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free local port")?
            .port();
        let child = kubectl()
            .args(["-n", DEMO_NS, "port-forward", "--address", "127.0.0.1"])
            .arg("svc/jaeger")
            .arg(format!("{port}:16686"))
            .stdout(Stdio::null())
            .spawn()
            .context("starting kubectl port-forward")?;
        let mut forward = PortForward {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let start = Instant::now();
        while TcpStream::connect_timeout(&forward.addr, Duration::from_secs(1)).is_err() {
            if let Some(status) = forward.child.try_wait()? {
                bail!("kubectl port-forward exited: {status}");
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("kubectl port-forward to svc/jaeger not listening after 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(forward)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET (the answer is not chunked); the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("GET {path}: {status}: {}", body.trim());
    }
    Ok(body.to_string())
}

/// What helps after a failure: pods, the agents' and the load generator's logs.
fn diagnostics() {
    eprintln!("xtask kind: diagnostics");
    let steps: &[&[&str]] = &[
        &["get", "pods", "-A", "-o", "wide"],
        &["-n", "hoptrace", "logs", "daemonset/hoptrace", "--tail=40"],
        &["-n", DEMO_NS, "logs", "deployment/loadgen", "--tail=10"],
    ];
    for args in steps {
        eprintln!("$ kubectl {}", args.join(" "));
        let _ = kubectl().args(*args).status();
    }
}
