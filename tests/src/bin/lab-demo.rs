//! `cargo xtask demo [--otlp-endpoint URL] [--keep]`: a two-node lab with an echo
//! app, traffic through the agent, and what each agent saw; then a traced
//! three-service app whose traces are printed as waterfalls and, with
//! `--otlp-endpoint`, also sent to that collector (e.g. Jaeger's OTLP port); then the
//! `hoptrace dashboard` of that app under steady traffic (one path failing), whose URL
//! is printed, kept running until Ctrl-C with `--keep` or on an interactive terminal.
//! Everything is torn down at the end.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use hoptrace_tests::{
    forward::{self, Forwarder},
    otlp::{OtlpReceiver, ReceiverOptions},
    plainapp::{PlainApps, WebKind},
    pyapp::ClientOptions,
    traces::{views, waterfall},
    Agent, Lab, LabApp, Propagation, PyApps,
};

const ECHO_PORT: u16 = 7000;
const WHOAMI_PORT: u16 = 7001;

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let keep = {
        let before = args.len();
        args.retain(|a| a != "--keep");
        args.len() != before || std::io::IsTerminal::is_terminal(&std::io::stdin())
    };
    let forward_to = match args.as_slice() {
        [] => None,
        [flag, url] if flag == "--otlp-endpoint" => Some(url.clone()),
        other => {
            bail!("usage: lab-demo [--otlp-endpoint http://host:4317] [--keep] (got {other:?})")
        }
    };
    // Fail before building anything when the user's collector is unreachable.
    let forwarder = match &forward_to {
        Some(url) => Some(
            Forwarder::connect(url)
                .with_context(|| format!("--otlp-endpoint {url}: is the collector running?"))?,
        ),
        None => None,
    };
    if !hoptrace_tests::require_root() {
        bail!("the demo needs root (network namespaces, cgroups, eBPF)");
    }
    // CARGO_BIN_EXE_* exists only for tests; xtask passes the path instead.
    let app = LabApp::new(
        std::env::var_os("HOPTRACE_LABAPP")
            .context("HOPTRACE_LABAPP is not set: run `cargo xtask demo`")?,
    );
    let mut lab = Lab::new().context("creating the lab")?;
    lab.add_node("node-1")?;
    lab.add_node("node-2")?;
    let client = lab.add_pod("node-1", "client")?;
    let local = lab.add_pod("node-1", "echo-local")?;
    let remote = lab.add_pod("node-2", "echo-remote")?;
    println!(
        "lab {}: node-1 = [client {}, echo-local {}], node-2 = [echo-remote {}]",
        lab.id(),
        ip(&client),
        ip(&local),
        ip(&remote)
    );

    let _s1 = app.echo_server(&local, local.addr(ECHO_PORT))?;
    let _s2 = app.echo_server(&remote, remote.addr(ECHO_PORT))?;
    let _w2 = app.whoami_server(&remote, remote.addr(WHOAMI_PORT))?;

    let mut agents = Vec::new();
    for node in ["node-1", "node-2"] {
        let file = lab.write_workloads(node)?;
        println!(
            "\n$ hoptrace run --workloads-file {} --node-name {node}",
            file.display()
        );
        println!("{}", std::fs::read_to_string(&file)?.trim_end());
        let mut agent = Agent::start(&lab, node, &file)?;
        agent.wait_ready(Duration::from_secs(30))?;
        println!(
            "agent for {node} ready, admin on http://{}",
            agent.admin_addr()
        );
        agents.push(agent);
    }

    println!("\n== traffic (from the client pod, which knows nothing about the agent)");
    for (what, target) in [
        ("same node", local.addr(ECHO_PORT)),
        ("cross node", remote.addr(ECHO_PORT)),
    ] {
        let r = app.echo_client(&client, target, 4 * 1024 * 1024, 8, false)?;
        println!("echo {what:10} -> {target}: {} connections ok, {} failed, {} bytes echoed and compared",
            r.ok, r.failed, r.bytes);
    }
    let seen = app.whoami(&client, remote.addr(WHOAMI_PORT))?;
    println!("whoami on echo-remote saw the caller as {seen} (the client pod's own address)");

    println!("\n== what the agents saw (GET /metrics)");
    for agent in &agents {
        println!("-- {}", agent.node());
        let m = agent.metrics()?;
        for s in m.samples() {
            let interesting = s.name.starts_with("hoptrace_connections_accepted")
                || s.name.starts_with("hoptrace_bytes_from_client")
                || s.name.starts_with("hoptrace_ebpf_");
            if interesting && s.value > 0.0 {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                if labels.is_empty() {
                    println!("{} {}", s.name, s.value);
                } else {
                    println!("{}{{{}}} {}", s.name, labels.join(","), s.value);
                }
            }
        }
    }
    drop(agents);
    lab.teardown().context("tearing the lab down")?;
    println!("\nlab torn down");
    traces(forwarder, keep)
}

/// Part two: a three-service app (client → web → backend, instrumented with the
/// OpenTelemetry SDK) across two nodes; the agents' spans go to an embedded OTLP
/// receiver and each trace is printed as a waterfall.
fn traces(forwarder: Option<Forwarder>, keep: bool) -> Result<()> {
    println!("\n== tracing: client (node-1) -> web (node-1) -> backend (node-2)");
    let otlp =
        OtlpReceiver::start(ReceiverOptions::default()).context("starting the OTLP receiver")?;
    let mut lab = Lab::new().context("creating the lab")?;
    lab.add_node("node-1")?;
    lab.add_node("node-2")?;
    let client = lab.add_pod("node-1", "client")?;
    let web = lab.add_pod("node-1", "web")?;
    let backend = lab.add_pod("node-2", "backend")?;
    // An app that forwards no trace header, in a pod that opts into the agent's own
    // context propagation (docs/TRACING.md).
    let plainweb = lab.add_pod("node-1", "plainweb")?;
    lab.set_context_propagation("plainweb", true)?;
    let apps = PyApps::new(&lab)?.with_propagation(Propagation::TraceContext);
    let backend_app = apps.backend(&backend, 8080)?;
    let web_app = apps.web(&web, 8080, &backend_app.url(""))?;
    let plain = PlainApps::new(&lab)?;
    let plain_web = plain.web(WebKind::Threaded, &plainweb, 8080, &backend_app.url(""))?;
    let mut agents = Vec::new();
    for node in ["node-1", "node-2"] {
        let file = lab.write_workloads(node)?;
        let mut args = otlp.agent_args();
        args.push("--tap".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = Agent::start_with_args(&lab, node, &file, &args)?;
        agent.wait_ready(Duration::from_secs(30))?;
        agents.push(agent);
    }
    println!(
        "agents export to the embedded OTLP receiver at {}",
        otlp.endpoint()
    );
    let mut all_app_spans = Vec::new();
    let run = apps.client(
        &client,
        &web_app.url("/checkout"),
        &ClientOptions {
            count: 2,
            ..Default::default()
        },
    )?;
    for req in &run.requests {
        let servers = [(&web_app, 2), (&backend_app, 1)];
        let app_spans = print_trace(&otlp, &run, req, &servers, "GET /checkout")?;
        all_app_spans.extend(app_spans);
    }
    println!("\n(app:* spans come from the apps' own OpenTelemetry SDK; proxy:<direction>:<pod> spans from hoptrace)");
    println!("\n== context propagation: client -> plainweb (node-1: Python, no tracing library, forwards no header; `context_propagation: auto`) -> backend (node-2)");
    let run = apps.client(
        &client,
        &plain_web.url("/work/demo"),
        &ClientOptions {
            count: 1,
            ..Default::default()
        },
    )?;
    for req in &run.requests {
        print_trace(&otlp, &run, req, &[(&backend_app, 1)], "GET /work/demo")?;
    }
    println!("\n(plainweb has no span of its own: the agent linked its call to backend to the request it was serving)");
    if let Some(mut f) = forwarder {
        let requests = otlp.raw_requests();
        let n = requests.len();
        for r in requests {
            f.send(r)?;
        }
        f.send(forward::app_spans_request(&all_app_spans)?)?;
        println!(
            "\nsent the agents' {n} export requests and the apps' {} spans to {}: look for service hoptrace-proxy (and web, backend, client) in its UI",
            all_app_spans.len(),
            f.endpoint()
        );
    }
    dashboard(
        &agents,
        &apps,
        &client,
        &web_app.url("/checkout"),
        &backend_app.url(""),
        keep,
    )?;
    drop(agents);
    drop(plain_web);
    drop(web_app);
    drop(backend_app);
    lab.teardown().context("tearing the lab down")?;
    println!("\nlab torn down");
    Ok(())
}

/// Prints the waterfall of `req`'s trace: the client's spans from `run`, each server's
/// (with how many spans it records), and the agents' 8 proxy spans (two hops);
/// returns the apps' spans.
fn print_trace(
    otlp: &OtlpReceiver,
    run: &hoptrace_tests::pyapp::ClientRun,
    req: &hoptrace_tests::pyapp::ClientRequest,
    servers: &[(&hoptrace_tests::pyapp::PyServer, usize)],
    label: &str,
) -> Result<Vec<hoptrace_tests::pyapp::AppSpan>> {
    let tid = req.trace_id()?.to_string();
    let proxy = otlp.wait_for_trace(&tid, 8, Duration::from_secs(10))?;
    let mut app_spans: Vec<_> = run
        .spans
        .iter()
        .filter(|s| s.trace_id == tid)
        .cloned()
        .collect();
    for (server, n) in servers {
        app_spans.extend(server.wait_for_trace(&tid, *n, Duration::from_secs(10))?);
    }
    println!("\n{label} -> {}", req.status);
    print!("{}", waterfall(&views(&app_spans, &proxy), 48));
    Ok(app_spans)
}

/// Part three: `hoptrace dashboard` over both agents while the client keeps calling
/// web (traced, all fine) and backend directly at a failing path (untraced), so the
/// graph has a healthy and an unhealthy edge. Runs until Ctrl-C when `keep`.
fn dashboard(
    agents: &[Agent],
    apps: &PyApps,
    client: &hoptrace_tests::Pod,
    checkout: &str,
    backend: &str,
    keep: bool,
) -> Result<()> {
    let listen = "127.0.0.1:8084";
    let mut cmd = std::process::Command::new(Agent::binary()?);
    cmd.args(["dashboard", "--listen", listen, "--window", "10s"]);
    for a in agents {
        cmd.args(["--agent", &format!("http://{}", a.admin_addr())]);
    }
    let mut dash = cmd.spawn().context("starting hoptrace dashboard")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failing = format!("{}/orders/7/status/503", backend.trim_end_matches('/'));
    std::thread::scope(|s| -> Result<()> {
        let traffic = s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ok = ClientOptions {
                    count: 5,
                    ..Default::default()
                };
                let bad = ClientOptions {
                    count: 1,
                    context: hoptrace_tests::ClientContext::None,
                    ..Default::default()
                };
                if apps.client(client, checkout, &ok).is_err()
                    || apps.client(client, &failing, &bad).is_err()
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        });
        println!(
            "
== dashboard: http://{listen}/ (topology, workloads, live requests)"
        );
        if keep {
            println!("the lab keeps running with traffic; press Ctrl-C to tear it down");
            wait_for_ctrl_c();
        } else {
            std::thread::sleep(Duration::from_secs(5));
            println!("(not an interactive terminal: stopping; `cargo xtask demo --keep` keeps it running)");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = traffic.join();
        Ok(())
    })?;
    let _ = dash.kill();
    let _ = dash.wait();
    Ok(())
}

static CTRL_C: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_ctrl_c(_: libc::c_int) {
    CTRL_C.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Waits until SIGINT or SIGTERM. A handler (process-wide, whichever thread gets the
/// signal) only sets a flag, so the demo tears its lab down instead of dying;
/// children get default handlers back when they exec.
fn wait_for_ctrl_c() {
    let handler = on_ctrl_c as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    while !CTRL_C.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ip(pod: &hoptrace_tests::Pod) -> std::net::IpAddr {
    pod.addr(0).ip()
}
