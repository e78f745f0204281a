//! Helpers of the discovery tests against the real API server (tests/k8s_real.rs):
//! lab pods that the API server knows, with a kubelet-shaped (cgroupfs driver) cgroup
//! named after the UID the API server gave the pod.

use super::{COUNTED, READY};
use hoptrace_tests::cluster::ControlPlane;
use hoptrace_tests::metrics::ACCEPTED;
use hoptrace_tests::{assert_eventually, netns, Agent, Lab, LabApp, Pod, PodProcess};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The lab node the pods and the agent are on.
pub const NODE: &str = "node-1";

/// A pod in the API server and in the lab.
pub struct KubePod {
    /// The lab pod (network namespace, cgroup, address).
    pub pod: Pod,
    /// Its namespace in the API.
    pub namespace: String,
    /// Its name in the API.
    pub name: String,
    /// The UID the API server gave it.
    pub uid: String,
    /// Its "pause" process: the agent finds the pod's netns through it.
    pub pause: PodProcess,
}

/// `<root>/kubepods/besteffort/pod<uid>/<container id>`: the kubelet's cgroupfs
/// layout for a BestEffort pod (what the API server computes for a pod without
/// resources).
pub fn container_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("kubepods/besteffort")
        .join(format!("pod{uid}"))
        .join(format!("{:0>64}", uid.replace('-', "")))
}

/// Starts a pause process in `pod`.
pub fn pause(pod: &Pod) -> PodProcess {
    let mut cmd = Command::new("sleep");
    cmd.arg("infinity");
    pod.spawn(cmd).expect("pause process")
}

impl KubePod {
    /// Creates pod `namespace/name` in the API (scheduled on [`NODE`]), then its
    /// sandbox in the lab (`lab_name`: netns, cgroup under `root`, pause process), then
    /// reports it Running with the sandbox's address, as the kubelet would.
    pub fn add(
        lab: &mut Lab,
        cp: &ControlPlane,
        root: &Path,
        (namespace, name): (&str, &str),
        lab_name: &str,
        annotations: &[(&str, &str)],
    ) -> KubePod {
        let uid = cp
            .admin()
            .create_pod(namespace, name, NODE, annotations)
            .expect("create pod");
        let pod = lab
            .add_pod_in(NODE, lab_name, &container_dir(root, &uid))
            .unwrap_or_else(|e| panic!("lab pod {lab_name}: {e:#}"));
        let pause = pause(&pod);
        cp.admin()
            .set_running(namespace, name, &pod.ips())
            .expect("pod status");
        KubePod {
            pod,
            namespace: namespace.into(),
            name: name.into(),
            uid,
            pause,
        }
    }

    /// Outbound connections the agent accepted from it.
    pub fn accepted(&self, agent: &Agent) -> f64 {
        metric(
            agent,
            ACCEPTED,
            &[
                ("direction", "outbound"),
                ("namespace", &self.namespace),
                ("pod", &self.name),
            ],
        )
    }

    /// Right after a sandbox change: the agent listening in the new sandbox comes a
    /// moment before its steering entry is written, so connections are made until one is
    /// proxied (each must still connect), within `within`.
    pub fn assert_steered_within(
        &self,
        app: &LabApp,
        agent: &Agent,
        target: SocketAddr,
        within: Duration,
    ) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let before = self.accepted(agent);
            app.whoami(&self.pod, target)
                .unwrap_or_else(|e| panic!("connection from {} failed: {e:#}", self.name));
            std::thread::sleep(Duration::from_millis(200));
            if self.accepted(agent) > before {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}/{} not steered within {within:?}",
                self.namespace,
                self.name
            );
        }
    }

    /// Connects from its sandbox to `target` and asserts whether the agent proxied it.
    pub fn assert_steered(&self, app: &LabApp, agent: &Agent, target: SocketAddr, steered: bool) {
        let before = self.accepted(agent);
        app.whoami(&self.pod, target)
            .unwrap_or_else(|e| panic!("connection from {} failed: {e:#}", self.name));
        if steered {
            assert_eventually!(
                self.accepted(agent) == before + 1.0,
                COUNTED,
                "{}/{} not steered (accepted {} → {})",
                self.namespace,
                self.name,
                before,
                self.accepted(agent)
            );
        } else {
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                self.accepted(agent),
                before,
                "{}/{} steered",
                self.namespace,
                self.name
            );
        }
    }
}

/// A metric's value now.
pub fn metric(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent
        .metrics()
        .unwrap_or_else(|e| panic!("scraping: {e:#}"))
        .value(name, labels)
}

/// `hoptrace_workloads{state}`.
pub fn workloads(agent: &Agent, state: &str) -> f64 {
    metric(agent, "hoptrace_workloads", &[("state", state)])
}

/// `hoptrace_kube_watch_errors_total{resource}`.
pub fn watch_errors(agent: &Agent, resource: &str) -> f64 {
    metric(
        agent,
        "hoptrace_kube_watch_errors_total",
        &[("resource", resource)],
    )
}

/// `hoptrace_kube_forbidden{resource}`.
pub fn forbidden(agent: &Agent, resource: &str) -> f64 {
    metric(agent, "hoptrace_kube_forbidden", &[("resource", resource)])
}

/// `/ready`'s status code now.
pub fn ready_status(agent: &Agent) -> u16 {
    agent.get("/ready").map(|r| r.status).unwrap_or(0)
}

/// True when the agent listens on its outbound or inbound port in `pod`'s netns. It
/// reads the netns's socket table rather than connecting, so the probe never shows up
/// in the agent's connection counts. The listeners come a moment before the steering
/// entry: after a new enrollment, check steering with [`KubePod::assert_steered_within`].
pub fn agent_listens_in(pod: &Pod) -> bool {
    netns::listens_on(&pod.netns_path, &[15001, 15006]).expect("reading the pod's sockets")
}

/// The lines of the agent's log that contain `needle`.
pub fn log_lines(agent: &Agent, needle: &str) -> Vec<String> {
    std::fs::read_to_string(agent.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Starts the agent against `cp` with the DaemonSet's service account and waits
/// until its admin port answers `/live` (not for `/ready`).
pub fn start_agent(lab: &Lab, cp: &ControlPlane, root: &Path, extra: &[&str]) -> Agent {
    let root = root.to_str().expect("utf-8 path");
    let mut args = vec!["--cgroup-root", root];
    args.extend_from_slice(extra);
    let agent =
        Agent::start_kubernetes(lab, NODE, cp.agent_kubeconfig(), &args).expect("start the agent");
    assert_eventually!(
        agent.get("/live").map(|r| r.status == 200).unwrap_or(false),
        READY,
        "the agent's admin port does not answer:\n{}",
        agent.log_tail(30)
    );
    agent
}

/// [`start_agent`], then waits for `/ready`.
pub fn start_ready_agent(lab: &Lab, cp: &ControlPlane, root: &Path) -> Agent {
    let mut agent = start_agent(lab, cp, root, &[]);
    agent.wait_ready(READY).expect("agent ready");
    agent
}

/// A lab with one node, its fake kubelet cgroup root, and a control plane whose
/// state is in the lab's temp dir.
pub fn lab_with_control_plane() -> (Lab, PathBuf, ControlPlane) {
    let mut lab = Lab::new().expect("create lab");
    lab.add_node(NODE).expect("node");
    let root = lab.cgroup_dir().join("k8s-root");
    let cp = ControlPlane::start(lab.tmp_dir())
        .unwrap_or_else(|e| panic!("starting etcd and kube-apiserver: {e:#}"));
    (lab, root, cp)
}
