//! Building the bench lab: pods, apps, the third-party proxies and the agents.

use super::confgen::{self, NginxRole, Relay};
use super::{AgentMode, BenchOptions, Scenario, Workload};
use super::{APP_PORT, ECHO_PORT, L4_HTTP_PORT, L4_TCP_PORT, SIDECAR_IN_PORT, SIDECAR_OUT_PORT};
use super::{SIDECAR_IN_PINNED_PORT, SIDECAR_OUT_PINNED_PORT};
use crate::otlp::{OtlpReceiver, ReceiverOptions};
use crate::{Agent, Lab, LabApp, LabOptions, Pod, PodProcess};
use anyhow::{Context, Result};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A third-party proxy (or app) process in a pod: its master pid, its files.
pub struct Proxy {
    /// What it is (`nginx sidecar-out`, ...).
    pub name: String,
    /// The process (killed on drop; the lab's teardown reaps forked workers).
    pub process: PodProcess,
    /// Its config/log dir.
    pub dir: PathBuf,
    /// Its own cgroup (below the pod's): CPU time of every process and thread in it.
    pub cgroup: PathBuf,
}

/// The running bench lab (see the module docs of [`super`]).
pub struct BenchLab {
    /// The collector the agents export to (counts spans only).
    pub otlp: OtlpReceiver,
    /// Client pod of the direct, sidecar and L4 scenarios (never enrolled).
    pub client: Pod,
    /// Server pod of those.
    pub server: Pod,
    /// Client pod of the hoptrace scenarios (enrolled).
    pub hclient: Pod,
    /// Server pod of those (enrolled).
    pub hserver: Pod,
    /// Agents, one per node that has enrolled pods, with the pods they enrolled.
    pub agents: Vec<(Agent, u32)>,
    /// How the agents run now (see [`BenchLab::set_agent_mode`]).
    pub agent_mode: AgentMode,
    /// The build under test, and the other one (`--compare-agent`) if any.
    pub agent_bins: (PathBuf, Option<PathBuf>),
    /// Client-pod nginx (sidecar model, outbound).
    pub sidecar_out: Proxy,
    /// Server-pod nginx (sidecar model, inbound).
    pub sidecar_in: Proxy,
    /// The same two with their workers pinned (`sidecar-pinned`): outbound, inbound.
    pub sidecar_pinned: (Proxy, Proxy),
    /// haproxy `mode tcp` in the client pod.
    pub l4: Proxy,
    /// Apps: nginx and echo servers in both server pods (kept running).
    pub apps: Vec<Proxy>,
    /// The `labapp` binary (echo server, load generator).
    pub labapp: LabApp,
    /// The lab (last field, so dropped last: its teardown kills whatever is left
    /// in its cgroups, e.g. nginx workers).
    pub lab: Lab,
}

impl BenchLab {
    /// Builds everything and waits until every server listens and every agent is ready.
    pub fn start(opts: &BenchOptions, labapp: LabApp) -> Result<BenchLab> {
        let otlp = OtlpReceiver::start(ReceiverOptions {
            keep_spans: false,
            ..Default::default()
        })
        .context("starting the OTLP receiver")?;
        let mut lab = Lab::with_options(LabOptions { dual_stack: false })?;
        lab.add_node("node-1")?;
        let server_node = if opts.same_node {
            "node-1"
        } else {
            lab.add_node("node-2")?;
            "node-2"
        };
        let client = lab.add_pod("node-1", "client")?;
        let hclient = lab.add_pod("node-1", "hclient")?;
        let server = lab.add_pod(server_node, "server")?;
        let hserver = lab.add_pod(server_node, "hserver")?;
        let tmp = lab.tmp_dir().to_owned();

        let mut apps = Vec::new();
        for pod in [&server, &hserver] {
            let dir = tmp.join(format!("nginx-app-{}", pod.name));
            apps.push(nginx(
                pod,
                &dir,
                NginxRole::App { port: APP_PORT },
                APP_PORT,
            )?);
            let mut cmd =
                labapp.command(&["echo-server", "--listen", &pod.addr(ECHO_PORT).to_string()]);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            let mut process = pod.spawn(cmd)?;
            process.wait_listening(ECHO_PORT, LISTEN_TIMEOUT)?;
            apps.push(Proxy {
                name: format!("echo-server in {}", pod.name),
                process,
                dir: tmp.clone(),
                cgroup: pod.cgroup.clone(),
            });
        }
        let sidecars = |suffix: &str, out_port: u16, in_port: u16, pinned: bool| {
            let inbound = nginx(
                &server,
                &tmp.join(format!("nginx-sidecar-in{suffix}")),
                NginxRole::Proxy {
                    listen: server.addr(in_port),
                    upstream: loopback(APP_PORT),
                    pinned,
                },
                in_port,
            )?;
            let outbound = nginx(
                &client,
                &tmp.join(format!("nginx-sidecar-out{suffix}")),
                NginxRole::Proxy {
                    listen: loopback(out_port),
                    upstream: server.addr(in_port),
                    pinned,
                },
                out_port,
            )?;
            anyhow::Ok((outbound, inbound))
        };
        let (sidecar_out, sidecar_in) = sidecars("", SIDECAR_OUT_PORT, SIDECAR_IN_PORT, false)?;
        let sidecar_pinned = sidecars(
            "-pinned",
            SIDECAR_OUT_PINNED_PORT,
            SIDECAR_IN_PINNED_PORT,
            true,
        )?;
        let l4 = haproxy(
            &client,
            &tmp.join("haproxy"),
            &[
                Relay {
                    name: "http".into(),
                    listen: loopback(L4_HTTP_PORT),
                    target: server.addr(APP_PORT),
                },
                Relay {
                    name: "tcp".into(),
                    listen: loopback(L4_TCP_PORT),
                    target: server.addr(ECHO_PORT),
                },
            ],
        )?;

        let mut agent_args = vec!["--log".to_string(), "info".to_string()];
        agent_args.extend(otlp.agent_args());
        let args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
        let mut agents = Vec::new();
        let plan: Vec<(&str, Vec<&str>)> = if opts.same_node {
            vec![("node-1", vec!["hclient", "hserver"])]
        } else {
            vec![("node-1", vec!["hclient"]), ("node-2", vec!["hserver"])]
        };
        for (node, pods) in plan {
            let file = lab.write_workloads_only(node, &pods)?;
            let mut agent = Agent::start_with_args(&lab, node, &file, &args)?;
            agent.wait_ready(READY_TIMEOUT)?;
            agents.push((agent, pods.len() as u32));
        }
        let agent_bins = (Agent::binary()?, opts.compare_agent.clone());
        Ok(BenchLab {
            agent_mode: AgentMode::default(),
            agent_bins,
            otlp,
            client,
            server,
            hclient,
            hserver,
            agents,
            sidecar_out,
            sidecar_in,
            sidecar_pinned,
            l4,
            apps,
            labapp,
            lab,
        })
    }

    /// Restarts the agents in `mode` when they do not already run so; returns whether
    /// it did (the caller warms the path up again).
    pub fn set_agent_mode(&mut self, mode: AgentMode) -> Result<bool> {
        if self.agent_mode == mode {
            return Ok(false);
        }
        let mut args = self.agent_args();
        args.extend(mode.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if mode.propagation != self.agent_mode.propagation {
            self.set_propagation(mode.propagation)?;
        }
        let bin = match (mode.compare, &self.agent_bins) {
            (false, (bin, _)) | (true, (_, Some(bin))) => bin.clone(),
            (true, (_, None)) => {
                anyhow::bail!("the -compare scenarios need --compare-agent PATH")
            }
        };
        for (agent, _) in &mut self.agents {
            agent.set_binary(&bin);
            agent.restart_with_args(&args)?;
            agent.wait_ready(READY_TIMEOUT)?;
            // An opted-in pod has its propagation series from enrollment on.
            let opted_in = agent
                .get("/metrics")?
                .body
                .contains("hoptrace_propagation_total");
            anyhow::ensure!(
                opted_in == mode.propagation,
                "agent of {}: context propagation should be {} but /metrics says otherwise",
                agent.node(),
                if mode.propagation { "on" } else { "off" }
            );
        }
        self.agent_mode = mode;
        Ok(true)
    }

    /// Rewrites the workload files with `context_propagation: auto` on (or off) for
    /// the enrolled pods (the agents read them when they restart).
    pub fn set_propagation(&mut self, on: bool) -> Result<()> {
        for name in [self.hclient.name.clone(), self.hserver.name.clone()] {
            self.lab.set_context_propagation(&name, on)?;
        }
        for (agent, _) in &self.agents {
            let node = agent.node().to_owned();
            let pods: Vec<String> = self
                .lab
                .pods_on(&node)
                .iter()
                .filter(|p| p.name == self.hclient.name || p.name == self.hserver.name)
                .map(|p| p.name.clone())
                .collect();
            let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
            self.lab.write_workloads_only(&node, &pods)?;
        }
        Ok(())
    }

    /// The `hoptrace run` flags of the memory phase's agent.
    pub fn agent_args(&self) -> Vec<String> {
        let mut v = vec!["--log".to_string(), "info".to_string()];
        v.extend(self.otlp.agent_args());
        v
    }

    /// The pod the load comes from and the address it targets in scenario `s`.
    pub fn route(&self, s: Scenario) -> (&Pod, SocketAddr) {
        let port = match s.workload() {
            Workload::Http => APP_PORT,
            Workload::Tcp => ECHO_PORT,
        };
        match s {
            Scenario::Direct | Scenario::DirectTcp => (&self.client, self.server.addr(port)),
            Scenario::Sidecar => (&self.client, loopback(SIDECAR_OUT_PORT)),
            Scenario::SidecarPinned => (&self.client, loopback(SIDECAR_OUT_PINNED_PORT)),
            Scenario::L4 => (&self.client, loopback(L4_HTTP_PORT)),
            Scenario::L4Tcp => (&self.client, loopback(L4_TCP_PORT)),
            _ => (&self.hclient, self.hserver.addr(port)),
        }
    }

    /// The cgroups whose CPU time counts as the proxies' in scenario `s`.
    pub fn proxy_cgroups(&self, s: Scenario) -> Vec<PathBuf> {
        match s {
            Scenario::Direct | Scenario::DirectTcp => Vec::new(),
            Scenario::Sidecar => vec![
                self.sidecar_out.cgroup.clone(),
                self.sidecar_in.cgroup.clone(),
            ],
            Scenario::SidecarPinned => vec![
                self.sidecar_pinned.0.cgroup.clone(),
                self.sidecar_pinned.1.cgroup.clone(),
            ],
            Scenario::L4 | Scenario::L4Tcp => vec![self.l4.cgroup.clone()],
            _ => self
                .agents
                .iter()
                .map(|(a, _)| self.lab.agent_cgroup(a.node()))
                .collect(),
        }
    }

    /// The processes whose memory counts as the proxies' in scenario `s`
    /// (top-level pids; their descendants are added when measuring).
    pub fn proxy_roots(&self, s: Scenario) -> Vec<u32> {
        match s {
            Scenario::Direct | Scenario::DirectTcp => Vec::new(),
            Scenario::Sidecar => vec![
                self.sidecar_out.process.pid(),
                self.sidecar_in.process.pid(),
            ],
            Scenario::SidecarPinned => vec![
                self.sidecar_pinned.0.process.pid(),
                self.sidecar_pinned.1.process.pid(),
            ],
            Scenario::L4 | Scenario::L4Tcp => vec![self.l4.process.pid()],
            _ => self.agents.iter().filter_map(|(a, _)| a.pid()).collect(),
        }
    }
}

/// `127.0.0.1:port` (inside whichever pod uses it).
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts an nginx instance in `pod` with its files in `dir`; waits for `port`.
fn nginx(pod: &Pod, dir: &Path, role: NginxRole, port: u16) -> Result<Proxy> {
    let conf = confgen::nginx_conf(dir, role);
    nginx_custom(
        pod,
        dir,
        &nginx_name(pod, role),
        &conf,
        port,
        &[],
        LISTEN_TIMEOUT,
    )
}

/// What an nginx instance is called in messages.
pub fn nginx_name(pod: &Pod, role: NginxRole) -> String {
    match role {
        NginxRole::App { .. } => format!("nginx app in {}", pod.name),
        NginxRole::Proxy { listen, .. } => format!("nginx proxy {listen} in {}", pod.name),
    }
}

/// Starts nginx in `pod` with the configuration `conf` (written to `dir/nginx.conf`),
/// run through the command line `prefix` (e.g. `valgrind ...`; empty: none); waits up
/// to `timeout` for `port`. Its cgroup is named after `dir`.
pub fn nginx_custom(
    pod: &Pod,
    dir: &Path,
    name: &str,
    conf: &str,
    port: u16,
    prefix: &[String],
    timeout: Duration,
) -> Result<Proxy> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut cmd = match prefix.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg("nginx");
            cmd
        }
        None => Command::new("nginx"),
    };
    cmd.args(confgen::nginx_args(dir, false));
    spawn_logged(pod, cmd, dir, name, port, "error.log", timeout)
}

/// Starts haproxy in `pod` with `relays`; waits for the first one's port.
fn haproxy(pod: &Pod, dir: &Path, relays: &[Relay]) -> Result<Proxy> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, confgen::haproxy_conf(relays))?;
    let mut cmd = Command::new("haproxy");
    cmd.args(confgen::haproxy_args(&cfg, false));
    let port = relays.first().map(|r| r.listen.port()).unwrap_or_default();
    spawn_logged(
        pod,
        cmd,
        dir,
        &format!("haproxy in {}", pod.name),
        port,
        "output.log",
        LISTEN_TIMEOUT,
    )
}

fn spawn_logged(
    pod: &Pod,
    mut cmd: Command,
    dir: &Path,
    name: &str,
    port: u16,
    log_name: &str,
    timeout: Duration,
) -> Result<Proxy> {
    let out = File::create(dir.join("output.log"))?;
    cmd.stdout(out.try_clone()?).stderr(out);
    // Its own cgroup below the pod's, named after its dir: CPU time is read from there.
    let mut inside = pod.clone();
    inside.cgroup = pod
        .cgroup
        .join(dir.file_name().context("proxy dir without a name")?);
    std::fs::create_dir_all(&inside.cgroup)
        .with_context(|| format!("creating {}", inside.cgroup.display()))?;
    let mut process = inside
        .spawn(cmd)
        .with_context(|| format!("starting {name}"))?;
    if let Err(e) = process.wait_listening(port, timeout) {
        let log = std::fs::read_to_string(dir.join(log_name)).unwrap_or_default();
        return Err(e.context(format!("{name}: {}", log.trim())));
    }
    Ok(Proxy {
        name: name.to_owned(),
        process,
        dir: dir.to_owned(),
        cgroup: inside.cgroup,
    })
}
