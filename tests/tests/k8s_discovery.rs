//! Kubernetes pod discovery end to end: the agent runs without a workload file,
//! against the stand-in API server (`hoptrace_tests::kubeapi`), with lab pods whose
//! cgroups are laid out like the kubelet's (systemd and cgroupfs drivers, and a
//! kind-style nested tree) under a fake cgroup root inside the lab's cgroup dir.
//! Each pod gets a long-running `sleep` as its "pause" process, which is how the
//! agent finds the pod's network namespace.

mod common;

use common::realkube::agent_listens_in;
use common::*;
use hoptrace_tests::kubeapi::{namespace, pod, PodSpec, Resource};
use hoptrace_tests::metrics::ACCEPTED;
use hoptrace_tests::{assert_eventually, labapp, require_root};
use hoptrace_tests::{Agent, KubeApi, Lab, LabApp, Pod, PodProcess, LAB_NAMESPACE};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Discovery polls every 250 ms; slack for the watch and the enrollment.
const FOLLOW: Duration = Duration::from_secs(5);
/// A watch that failed is retried with backoff (0.8 s, doubling, jittered).
const RECOVER: Duration = Duration::from_secs(30);
const NODE: &str = "node-1";

/// Where a pod's cgroup sits in the fake kubelet tree.
#[derive(Clone, Copy)]
enum Layout {
    /// systemd driver, `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice`
    /// (or `kubepods-pod<uid_>.slice` for Guaranteed), containerd container scope.
    Systemd(&'static str),
    /// cgroupfs driver, `kubepods/<qos>/pod<uid>` (or `kubepods/pod<uid>`), containerd id.
    Cgroupfs(&'static str),
    /// kind: `kubelet.slice/kubelet-kubepods.slice/...`, CRI-O container scope.
    Kind(&'static str),
}

impl Layout {
    fn qos(self) -> &'static str {
        match self {
            Layout::Systemd(q) | Layout::Cgroupfs(q) | Layout::Kind(q) => q,
        }
    }

    /// The container cgroup (where the pod's processes go) below `root`.
    fn container_dir(self, root: &Path, uid: &str) -> PathBuf {
        let u = uid.replace('-', "_");
        let tier = match self.qos() {
            "Guaranteed" => None,
            "Burstable" => Some("burstable"),
            _ => Some("besteffort"),
        };
        let id = format!("{:0>64}", uid.replace('-', ""));
        let systemd = |stem: &str| match tier {
            Some(t) => format!("{stem}.slice/{stem}-{t}.slice/{stem}-{t}-pod{u}.slice"),
            None => format!("{stem}.slice/{stem}-pod{u}.slice"),
        };
        match self {
            Layout::Systemd(_) => root
                .join(systemd("kubepods"))
                .join(format!("cri-containerd-{id}.scope")),
            Layout::Cgroupfs(_) => {
                let pod = format!("pod{uid}");
                let dir = match tier {
                    Some(t) => root.join("kubepods").join(t).join(pod),
                    None => root.join("kubepods").join(pod),
                };
                dir.join(id)
            }
            Layout::Kind(_) => root
                .join("kubelet.slice")
                .join(systemd("kubelet-kubepods"))
                .join(format!("crio-{id}.scope")),
        }
    }
}

/// A lab pod with a kubelet-shaped cgroup, and how the API describes it.
struct KubePod {
    pod: Pod,
    uid: String,
    layout: Layout,
}

impl KubePod {
    fn add(lab: &mut Lab, root: &Path, name: &str, n: u32, layout: Layout) -> KubePod {
        let uid = format!("{n:08x}-7e57-4d15-8c0e-{n:012x}");
        let dir = layout.container_dir(root, &uid);
        let pod = lab
            .add_pod_in(NODE, name, &dir)
            .unwrap_or_else(|e| panic!("pod {name}: {e:#}"));
        KubePod { pod, uid, layout }
    }

    /// Its "pause" process: the agent finds the pod's netns through it.
    fn pause(&self) -> PodProcess {
        let mut cmd = Command::new("sleep");
        cmd.arg("infinity");
        self.pod.spawn(cmd).expect("pause process")
    }

    fn spec<'a>(&'a self, namespace: &'a str) -> PodSpec<'a> {
        let mut spec = PodSpec::new(&self.pod.name, namespace, &self.uid, NODE);
        spec.ips = self.pod.ips();
        spec.qos_class = self.layout.qos();
        spec
    }

    /// In namespace `lab`, annotated `hoptrace.io/inject: enabled`.
    fn annotated(&self) -> Value {
        let mut spec = self.spec(LAB_NAMESPACE);
        spec.annotations = vec![("hoptrace.io/inject", "enabled")];
        pod(&spec)
    }

    /// In namespace `lab`, no annotation.
    fn plain(&self) -> Value {
        pod(&self.spec(LAB_NAMESPACE))
    }
}

fn connect(app: &LabApp, pod: &Pod, target: SocketAddr) {
    app.whoami(pod, target)
        .unwrap_or_else(|e| panic!("connection from {} failed: {e:#}", pod.name));
}

/// Everything the agent did before now is visible: a connection of the
/// always-enrolled `anchor` pod shows up in its counter.
fn barrier(app: &LabApp, agent: &Agent, anchor: &Pod, target: SocketAddr) {
    let before = accepted(agent, "outbound", &anchor.name);
    connect(app, anchor, target);
    assert_counted(agent, "outbound", &anchor.name, before, 1);
}

fn metric(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent
        .metrics()
        .unwrap_or_else(|e| panic!("scraping: {e:#}"))
        .value(name, labels)
}

fn workloads(agent: &Agent, state: &str) -> f64 {
    metric(agent, "hoptrace_workloads", &[("state", state)])
}

fn start_agent(lab: &Lab, api: &KubeApi, root: &Path) -> Agent {
    let root = root.to_str().expect("utf-8 path");
    let mut agent = Agent::start_kubernetes(lab, NODE, api.kubeconfig(), &["--cgroup-root", root])
        .expect("start the agent");
    agent.wait_ready(READY).expect("agent ready");
    agent
}

#[test]
fn pods_follow_the_kubernetes_api() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let mut lab = Lab::new().expect("create lab");
    lab.add_node(NODE).expect("node");
    let root = lab.cgroup_dir().join("k8s-root");
    let server = KubePod::add(&mut lab, &root, "server", 1, Layout::Cgroupfs("BestEffort"));
    let client = KubePod::add(&mut lab, &root, "client", 2, Layout::Systemd("Burstable"));
    let plain = KubePod::add(&mut lab, &root, "plain", 3, Layout::Systemd("Guaranteed"));
    let hostnet = KubePod::add(&mut lab, &root, "hostnet", 4, Layout::Cgroupfs("Burstable"));
    let web = KubePod::add(&mut lab, &root, "web", 5, Layout::Systemd("BestEffort"));
    let waiting = KubePod::add(&mut lab, &root, "waiting", 6, Layout::Kind("BestEffort"));
    let late = KubePod::add(&mut lab, &root, "late", 7, Layout::Kind("Burstable"));
    let _pauses: Vec<PodProcess> = [&server, &client, &plain, &hostnet, &web, &late]
        .iter()
        .map(|p| p.pause())
        .collect();
    let target = server.pod.addr(WHOAMI_PORT);
    let _whoami = app
        .whoami_server(&server.pod, target)
        .expect("whoami server");

    let api = KubeApi::start(lab.tmp_dir()).expect("API server");
    api.apply(namespace(LAB_NAMESPACE, &[])).expect("ns");
    api.apply(namespace("optin", &[("hoptrace.io/inject", "enabled")]))
        .expect("ns");
    api.apply(server.plain()).expect("server");
    let mut c = client.spec(LAB_NAMESPACE);
    c.annotations = vec![("hoptrace.io/inject", "enabled")];
    c.labels = vec![("app", "client"), ("pod-template-hash", "5d8f7c9b4")];
    c.owner = Some(("ReplicaSet", "client-5d8f7c9b4"));
    api.apply(pod(&c)).expect("client");
    api.apply(plain.plain()).expect("plain");
    let mut h = hostnet.spec(LAB_NAMESPACE);
    h.annotations = vec![("hoptrace.io/inject", "enabled")];
    h.host_network = true;
    api.apply(pod(&h)).expect("hostnet");
    api.apply(pod(&web.spec("optin"))).expect("web");
    api.apply(waiting.annotated()).expect("waiting");
    // Another node's pod: the field selector keeps it away from this agent.
    let mut other = PodSpec::new("elsewhere", LAB_NAMESPACE, "e15e", "node-2");
    other.ips = vec!["10.250.2.9".parse().expect("ip")];
    other.annotations = vec![("hoptrace.io/inject", "enabled")];
    api.apply(pod(&other)).expect("elsewhere");

    let mut agent = start_agent(&lab, &api, &root);
    let pid = agent.pid();
    assert!(
        api.requests()
            .iter()
            .any(|r| r.resource == Some(Resource::Pods)
                && r.target.contains("spec.nodeName")
                && r.target.contains(NODE)),
        "pods were not listed with a node field selector: {:?}",
        api.requests()
    );

    // Annotated: steered from the first ready moment.
    barrier(&app, &agent, &client.pod, target);
    // Not annotated (default: disabled) and host-network: not steered.
    let total0 = accepted_all(&agent);
    connect(&app, &plain.pod, target);
    connect(&app, &hostnet.pod, target);
    barrier(&app, &agent, &client.pod, target);
    assert_eq!(
        accepted(&agent, "outbound", "plain"),
        0.0,
        "plain pod steered"
    );
    assert_eq!(
        accepted(&agent, "outbound", "hostnet"),
        0.0,
        "host-network pod steered"
    );
    assert_eq!(
        accepted_all(&agent),
        total0 + 1.0,
        "only the barrier may be counted"
    );
    // Enrolled through its namespace's label.
    let web_labels = [
        ("direction", "outbound"),
        ("namespace", "optin"),
        ("pod", "web"),
    ];
    connect(&app, &web.pod, target);
    assert_eventually!(
        metric(&agent, ACCEPTED, &web_labels) == 1.0,
        COUNTED,
        "the pod of the opted-in namespace is not steered"
    );
    // `waiting` has no process yet: pending, reported, not steered.
    assert_eq!(workloads(&agent, "steered"), 2.0);
    assert_eq!(workloads(&agent, "pending"), 1.0);
    assert_eq!(workloads(&agent, "failed"), 0.0);

    // Its first process appears: it is enrolled.
    let _waiting_pause = waiting.pause();
    assert_eventually!(
        workloads(&agent, "steered") == 3.0 && workloads(&agent, "pending") == 0.0,
        FOLLOW,
        "the pod whose process appeared is not enrolled"
    );
    let before = accepted(&agent, "outbound", "waiting");
    connect(&app, &waiting.pod, target);
    assert_counted(&agent, "outbound", "waiting", before, 1);

    // The watch breaks mid-stream: the agent watches again, and a pod added after
    // the break is steered.
    let watches = api.watches(Resource::Pods);
    api.break_watches();
    api.apply(late.annotated()).expect("late");
    assert_eventually!(
        workloads(&agent, "steered") == 4.0,
        FOLLOW,
        "the pod added after the watch broke is not enrolled"
    );
    let before = accepted(&agent, "outbound", "late");
    connect(&app, &late.pod, target);
    assert_counted(&agent, "outbound", "late", before, 1);
    assert!(api.watches(Resource::Pods) > watches, "no new watch");

    // DELETED: released, its connections go direct, no listener left in its netns.
    assert_eventually!(
        agent_listens_in(&client.pod),
        Duration::from_secs(3),
        "the agent does not listen in the client pod before its deletion"
    );
    api.delete(Resource::Pods, "lab/client").expect("delete");
    assert_eventually!(
        workloads(&agent, "steered") == 3.0 && !agent_listens_in(&client.pod),
        FOLLOW,
        "the deleted pod is still enrolled"
    );
    for _ in 0..3 {
        connect(&app, &client.pod, target);
    }
    barrier(&app, &agent, &late.pod, target);
    assert_eq!(
        accepted(&agent, "outbound", "client"),
        0.0,
        "deleted pod steered"
    );

    assert_eq!(agent.pid(), pid, "agent was restarted");
    assert!(agent.is_running(), "agent exited");
}

#[test]
fn api_outage_keeps_pods_steered_then_relists() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let mut lab = Lab::new().expect("create lab");
    lab.add_node(NODE).expect("node");
    let root = lab.cgroup_dir().join("k8s-root");
    let server = KubePod::add(&mut lab, &root, "server", 1, Layout::Systemd("BestEffort"));
    let client = KubePod::add(&mut lab, &root, "client", 2, Layout::Systemd("Burstable"));
    let gone = KubePod::add(&mut lab, &root, "gone", 3, Layout::Cgroupfs("Burstable"));
    let newcomer = KubePod::add(
        &mut lab,
        &root,
        "newcomer",
        4,
        Layout::Cgroupfs("Guaranteed"),
    );
    let _pauses: Vec<PodProcess> = [&server, &client, &gone, &newcomer]
        .iter()
        .map(|p| p.pause())
        .collect();
    let target = server.pod.addr(WHOAMI_PORT);
    let _whoami = app
        .whoami_server(&server.pod, target)
        .expect("whoami server");
    let api = KubeApi::start(lab.tmp_dir()).expect("API server");
    api.apply(namespace(LAB_NAMESPACE, &[])).expect("ns");
    api.apply(server.plain()).expect("server");
    api.apply(client.annotated()).expect("client");
    api.apply(gone.annotated()).expect("gone");
    let agent = start_agent(&lab, &api, &root);
    barrier(&app, &agent, &client.pod, target);
    let before = accepted(&agent, "outbound", "gone");
    connect(&app, &gone.pod, target);
    assert_counted(&agent, "outbound", "gone", before, 1);
    let lists = api.lists(Resource::Pods);

    // The API server goes away: the watches fail and back off, pods stay steered.
    api.set_unavailable(true);
    api.break_watches();
    let errors = |agent: &Agent| {
        metric(
            agent,
            "hoptrace_kube_watch_errors_total",
            &[("resource", "pods")],
        )
    };
    assert_eventually!(errors(&agent) >= 1.0, RECOVER, "watch errors not counted");
    barrier(&app, &agent, &client.pod, target);
    assert_eq!(
        workloads(&agent, "steered"),
        2.0,
        "the last known set is kept"
    );

    // While it is away, a pod goes, another comes, and history is compacted, so
    // the agent cannot resume its watch: it must list again.
    api.delete(Resource::Pods, "lab/gone").expect("delete");
    api.apply(newcomer.annotated()).expect("newcomer");
    api.compact();
    api.set_unavailable(false);
    assert_eventually!(
        api.lists(Resource::Pods) > lists
            && workloads(&agent, "steered") == 2.0
            && accepted(&agent, "outbound", "gone") == 0.0,
        RECOVER,
        "the relist did not replace the pod set ({} lists)",
        api.lists(Resource::Pods)
    );
    let before = accepted(&agent, "outbound", "newcomer");
    connect(&app, &newcomer.pod, target);
    assert_counted(&agent, "outbound", "newcomer", before, 1);
    connect(&app, &gone.pod, target);
    barrier(&app, &agent, &client.pod, target);
    assert_eq!(
        accepted(&agent, "outbound", "gone"),
        0.0,
        "the pod that went is steered"
    );
}

/// Startup errors in Kubernetes mode name what to set (no root needed: they come
/// before the eBPF programs are loaded).
#[test]
fn startup_errors_say_what_to_set() {
    let bin = Agent::binary().expect("agent binary");
    let dir = std::env::temp_dir().join(format!("hoptrace-k8s-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let api = KubeApi::start(&dir).expect("API server");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(args)
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env_remove("NODE_NAME")
            .env_remove("HOPTRACE_WORKLOADS_FILE")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env("KUBECONFIG", api.kubeconfig());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run hoptrace");
        assert!(!out.status.success(), "hoptrace run {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[], &[]);
    assert!(err.contains("NODE_NAME"), "{err}");
    let err = run(&[("NODE_NAME", NODE), ("POD_NAME", "hoptrace-x")], &[]);
    assert!(err.contains("POD_NAMESPACE"), "{err}");
    let err = run(&[("NODE_NAME", NODE)], &["--cgroup-root", "/nonexistent"]);
    assert!(
        err.contains("--cgroup-root") && err.contains("/nonexistent"),
        "{err}"
    );
    let missing = dir.join("missing-kubeconfig");
    let missing = missing.to_str().expect("utf-8");
    let err = run(&[("NODE_NAME", NODE), ("KUBECONFIG", missing)], &[]);
    assert!(
        err.contains("KUBECONFIG") && err.contains("service account"),
        "{err}"
    );
    // Neither a file nor a cluster.
    let mut cmd = Command::new(&bin);
    let out = cmd
        .args(["run", "--admin-addr", "127.0.0.1:0"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("HOPTRACE_WORKLOADS_FILE")
        .output()
        .expect("run hoptrace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--workloads-file") && err.contains("KUBERNETES_SERVICE_HOST"),
        "{err}"
    );
    drop(api);
    std::fs::remove_dir_all(&dir).expect("rm");
}

/// In Kubernetes the agent names the other end of a connection from a watch of every
/// pod of the cluster: a caller on another node is labelled with its workload (the
/// Deployment behind its ReplicaSet), and 30,000 pods on other nodes cost the agent
/// less than 1 KB each (docs/METRICS.md; 30,000 so that the growth, ~10 MiB at the
/// budget, stands well above the few MiB the agent's RSS moves by itself).
#[test]
fn peers_on_other_nodes_are_named_within_the_memory_budget() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let mut lab = Lab::new().expect("create lab");
    lab.add_node(NODE).expect("node");
    lab.add_node("node-2").expect("node-2");
    let root = lab.cgroup_dir().join("k8s-root");
    let server = KubePod::add(&mut lab, &root, "server", 1, Layout::Cgroupfs("BestEffort"));
    let caller = lab.add_pod("node-2", "caller").expect("caller pod");
    let _pause = server.pause();
    let target = server.pod.addr(WHOAMI_PORT);
    let _whoami = app
        .whoami_server(&server.pod, target)
        .expect("whoami server");

    let api = KubeApi::start(lab.tmp_dir()).expect("API server");
    api.apply(namespace(LAB_NAMESPACE, &[])).expect("ns");
    api.apply(server.annotated()).expect("server");
    // The caller runs on node-2 (no agent there), owned by a Deployment's ReplicaSet.
    let mut c = PodSpec::new("frontend-5d8f7-x2x9q", LAB_NAMESPACE, "ca11e5", "node-2");
    c.ips = caller.ips();
    c.labels = vec![("pod-template-hash", "5d8f7")];
    c.owner = Some(("ReplicaSet", "frontend-5d8f7"));
    api.apply(pod(&c)).expect("caller");

    let agent = start_agent(&lab, &api, &root);
    let opened = |client: &str| {
        metric(
            &agent,
            "hoptrace_tcp_connections_opened_total",
            &[
                ("direction", "inbound"),
                ("client_namespace", LAB_NAMESPACE),
                ("client", client),
                ("server", "server"),
            ],
        )
    };
    assert_eventually!(
        metric(&agent, "hoptrace_peer_addresses", &[]) >= 2.0,
        FOLLOW,
        "the cluster's pods were not indexed"
    );
    connect(&app, &caller, target);
    assert_eventually!(
        opened("frontend") == 1.0,
        FOLLOW,
        "caller not named: frontend {} unknown {}",
        opened("frontend"),
        opened("unknown")
    );

    // 30,000 pods on other nodes: indexed, and under 1 KB each.
    let pid = agent.pid().expect("agent pid");
    // The median of a few samples once the allocator has handed freed memory back.
    let settle = || {
        std::thread::sleep(Duration::from_secs(2));
        let mut samples: Vec<f64> = (0..5)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(400));
                common::hostile::rss_mib(pid)
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[2]
    };
    const N: u32 = 30_000;
    let before = settle();
    let uids: Vec<String> = (0..N)
        .map(|i| format!("{i:08x}-0000-4000-8000-000000000000"))
        .collect();
    let names: Vec<String> = (0..N)
        .map(|i| format!("w{}-abc12-{i:05}", i % 400))
        .collect();
    let owners: Vec<String> = (0..N).map(|i| format!("w{}-abc12", i % 400)).collect();
    for i in 0..N as usize {
        let mut p = PodSpec::new(&names[i], "remote", &uids[i], "node-3");
        p.ips = vec![std::net::IpAddr::from([
            10,
            200,
            (i / 250) as u8,
            (i % 250) as u8 + 1,
        ])];
        p.labels = vec![("pod-template-hash", "abc12")];
        p.owner = Some(("ReplicaSet", &owners[i]));
        api.apply(pod(&p)).expect("remote pod");
    }
    assert_eventually!(
        metric(&agent, "hoptrace_peer_addresses", &[]) >= f64::from(N) + 2.0,
        Duration::from_secs(60),
        "indexed: {}",
        metric(&agent, "hoptrace_peer_addresses", &[])
    );
    let after = settle();
    let per_pod_kb = (after - before) * 1024.0 / f64::from(N);
    eprintln!("agent RSS {before:.1} MiB → {after:.1} MiB with {N} remote pods: {per_pod_kb:.2} KiB per pod");
    assert!(per_pod_kb < 1.0, "{per_pod_kb:.2} KiB per remote pod");
}
