//! A real one-node Kubernetes cluster on this machine, without Docker: the
//! [`ControlPlane`] (etcd, kube-apiserver) serving on the node's bridge address, plus
//! kube-controller-manager, kube-scheduler and a kubelet (v1.20.2, built from
//! Debian's source by `cargo xtask kube-node`) over Debian's containerd 1.6, runc
//! and the `bridge` CNI plugin. `cargo xtask cluster` runs the project's DaemonSet
//! and demo app in it ([`deploy`]).
//!
//! What it takes, and what keeps the machine as it was:
//!
//! - **Network**: the bridge `htk0` with 10.244.77.1/24 ([`host::Bridge`]); pods get
//!   addresses of that /24 from `host-local` and reach the node's address on-link
//!   (no gateway, no masquerading, no iptables rule, `ip_forward` untouched). No
//!   kube-proxy and no cluster DNS: the agent is pointed at the API server by
//!   `KUBERNETES_SERVICE_HOST`/`_PORT`, the demo apps at each other's pod address.
//! - **Mounts**: containerd runs in a mount namespace of its own
//!   (`unshare --mount --propagation slave`) and the kubelet joins it (`nsenter`), so
//!   every mount they make (container root filesystems, volumes, network namespace
//!   files) is invisible to the machine and goes away with them. The directories
//!   the kubelet and containerd insist on (`/var/lib/kubelet`, `/var/log/pods`,
//!   `/run/containerd`, `/var/lib/cni`, ...) are bind mounts of directories of the
//!   run there ([`PRIVATE_DIRS`]).
//! - **sysctls**: the kubelet 1.20 sets `vm.overcommit_memory`, `kernel.panic`,
//!   `kernel.panic_on_oops`, ... at start (or, with `--protect-kernel-defaults`,
//!   refuses to start unless they have its values). In the namespace those files
//!   are bind mounts of plain files holding its values, so it starts and the
//!   machine's settings stay; `--make-iptables-util-chains=false` keeps it off
//!   the machine's iptables.
//! - **cgroups**: the kubelet's `--cgroup-root` is `hoptrace-cluster` (cgroupfs
//!   driver) and containerd (with its shims) runs in `hoptrace-cluster-runtime`;
//!   teardown kills both trees (`cgroup.kill`) and removes them
//!   ([`host::CgroupTrees`]).
//! - containerd's `restrict_oom_score_adj`: this machine's root has no
//!   `CAP_SYS_RESOURCE`, and runc fails to start any sandbox at the kubelet's
//!   `oom_score_adj` of -998 ("can't get final child's PID from pipe: EOF").
//!
//! Everything is undone on drop, in order; [`Node::start`] first removes what an
//! interrupted run left.

pub mod deploy;
pub mod host;
pub mod images;

use crate::cluster::{ControlPlane, Proc, KUBE_VERSION};
use crate::ports::free_port_on;
use anyhow::{bail, Context, Result};
use host::{Bridge, CgroupTrees, Cgroups, MountPoints, GATEWAY, POD_CGROUP};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The node's name.
pub const NODE_NAME: &str = "hoptrace-node";
/// Where containerd keeps its sockets and task state (short: socket paths).
const RUN_DIR: &str = "/run/hoptrace-cluster";
/// Host directories the kubelet, containerd or the CNI plugins use whatever their
/// configuration says: private to the runtime's mount namespace.
pub const PRIVATE_DIRS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/run/containerd",
    "/var/lib/cni",
    "/run/netns",
];
/// The kubelet's kernel settings (pkg/kubelet/cm/container_manager_linux.go),
/// shown to it in its namespace only.
const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];
/// How long the node may take to be Ready.
const READY: Duration = Duration::from_secs(120);

/// A node binary of [`KUBE_VERSION`] where `cargo xtask kube-node` caches it
/// (`${XDG_CACHE_HOME:-$HOME/.cache}/hoptrace/kube/<name>-v1.20.2`).
pub fn kube_binary(name: &str) -> Result<PathBuf> {
    let api = crate::cluster::apiserver_binary()?;
    let bin = api.with_file_name(format!("{name}-{KUBE_VERSION}"));
    if !bin.exists() {
        bail!(
            "no {name} at {}: run `cargo xtask kube-node`",
            bin.display()
        );
    }
    Ok(bin)
}

/// The node. See the module docs. Fields drop in order: the kubelet and
/// controllers, containerd, then the cgroups (killing what is left) and mount points.
pub struct Node {
    kubelet: Proc,
    controllers: Vec<Proc>,
    containerd: Proc,
    _cgroups: CgroupTrees,
    _mount_points: MountPoints,
    dir: PathBuf,
    kubeconfig: PathBuf,
    cgroup_layout: Cgroups,
    _state: State,
}

/// The runtime's state, removed on drop after everything stopped: containerd's
/// task state ([`RUN_DIR`]), its images and snapshots, the kubelet's directory,
/// the private directories, the CNI plugin's address leases (the logs stay).
struct State(Vec<PathBuf>);

impl Drop for State {
    fn drop(&mut self) {
        for d in &self.0 {
            if d.exists() {
                if let Err(e) = std::fs::remove_dir_all(d) {
                    eprintln!("node teardown: removing {}: {e}", d.display());
                }
            }
        }
    }
}

impl Node {
    /// Removes what an interrupted run left (processes, cgroups, the bridge,
    /// created mount points). Call before creating the [`Bridge`].
    pub fn cleanup(dir: &Path) -> Result<()> {
        host::cleanup(&Cgroups::detect()?, &dir.join("created-dirs"));
        if Path::new(RUN_DIR).exists() {
            std::fs::remove_dir_all(RUN_DIR).with_context(|| format!("removing {RUN_DIR}"))?;
        }
        Ok(())
    }

    /// Starts containerd, the controllers and the kubelet with state under `dir`,
    /// imports `images` (`docker save` archives) and waits for the node to be Ready.
    pub fn start(
        cp: &ControlPlane,
        _bridge: &Bridge,
        dir: &Path,
        images: &[PathBuf],
    ) -> Result<Node> {
        let layout = Cgroups::detect()?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        std::fs::create_dir_all(RUN_DIR)?;
        let mount_points = MountPoints::create(PRIVATE_DIRS, &dir.join("created-dirs"))?;
        let cgroups = CgroupTrees::create(&layout)?;
        let kubeconfig = cp.admin_kubeconfig().to_path_buf();

        let containerd = start_containerd(dir, &cgroups)?;
        let sock = Path::new(RUN_DIR).join("containerd.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!("containerd did not create {} in 30 s", sock.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for image in images {
            let out = Command::new("ctr")
                .arg("-a")
                .arg(&sock)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(image)
                .output()
                .context("running ctr")?;
            if !out.status.success() {
                bail!(
                    "ctr images import {}: {}",
                    image.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }

        let mut controllers = Vec::new();
        let c = cp.certs();
        let mut kcm = Command::new(kube_binary("kube-controller-manager")?);
        kcm.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--controllers=daemonset,deployment,replicaset,nodelifecycle,serviceaccount-token,serviceaccount,namespace,garbagecollector")
            .arg(format!("--service-account-private-key-file={}", c.sa_key.display()))
            .arg(format!("--root-ca-file={}", c.ca.display()))
            .args(["--use-service-account-credentials=false", "--leader-elect=false"])
            .args(["--port=0", "--secure-port=0"]);
        controllers.push(Proc::spawn(
            "kube-controller-manager",
            kcm,
            &logs.join("kube-controller-manager.log"),
        )?);
        let mut sched = Command::new(kube_binary("kube-scheduler")?);
        sched
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["--leader-elect=false", "--port=0", "--secure-port=0"]);
        controllers.push(Proc::spawn(
            "kube-scheduler",
            sched,
            &logs.join("kube-scheduler.log"),
        )?);

        let kubelet = start_kubelet(dir, &kubeconfig, cp, containerd.pid(), &layout)?;
        let node = Node {
            kubelet,
            controllers,
            containerd,
            _cgroups: cgroups,
            _mount_points: mount_points,
            dir: dir.to_path_buf(),
            kubeconfig,
            cgroup_layout: layout,
            _state: State(
                [
                    RUN_DIR.into(),
                    dir.join("containerd"),
                    dir.join("kubelet"),
                    dir.join("private"),
                    dir.join("cni-ipam"),
                ]
                .into_iter()
                .collect(),
            ),
        };
        node.wait_ready()?;
        Ok(node)
    }

    /// `kubectl` as the admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// The run's directory (logs under `logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup2 mount (the agent's `HOPTRACE_CGROUP_ROOT` is this under `/host`).
    pub fn cgroup2_mount(&self) -> &Path {
        &self.cgroup_layout.unified
    }

    /// Fails when the kubelet, containerd or a controller has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let logs = self.dir.join("logs");
        self.kubelet.check_running(&logs.join("kubelet.log"))?;
        self.containerd
            .check_running(&logs.join("containerd.log"))?;
        for (p, name) in self
            .controllers
            .iter_mut()
            .zip(["kube-controller-manager", "kube-scheduler"])
        {
            p.check_running(&logs.join(format!("{name}.log")))?;
        }
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY;
        loop {
            let out = self
                .kubectl()
                .args(["get", "node", NODE_NAME, "-o"])
                .arg("jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")
                .output()?;
            if String::from_utf8_lossy(&out.stdout).trim() == "True" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {NODE_NAME} not Ready within {READY:?}: see {}",
                    self.dir.join("logs/kubelet.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// containerd in a new mount namespace: the private directories and the kubelet's
/// sysctl files bind-mounted there, then `exec containerd`.
fn start_containerd(dir: &Path, cgroups: &CgroupTrees) -> Result<Proc> {
    let private = dir.join("private");
    let mut script = String::from("set -e\n");
    for d in PRIVATE_DIRS {
        let src = private.join(d.trim_start_matches('/').replace('/', "_"));
        std::fs::create_dir_all(&src)?;
        script.push_str(&format!("mount --bind '{}' '{d}'\n", src.display()));
    }
    let sysctl = dir.join("sysctl");
    std::fs::create_dir_all(&sysctl)?;
    for (name, value) in KUBELET_SYSCTLS {
        let file = sysctl.join(name.replace('/', "_"));
        std::fs::write(&file, format!("{value}\n"))?;
        script.push_str(&format!(
            "mount --bind '{}' /proc/sys/{name}\n",
            file.display()
        ));
    }
    let config = dir.join("containerd.toml");
    std::fs::write(&config, containerd_config(dir))?;
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni)?;
    std::fs::write(cni.join("10-hoptrace.conflist"), cni_config(dir))?;
    script.push_str(&format!(
        "exec containerd --config '{}'\n",
        config.display()
    ));
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "slave",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let proc = Proc::spawn("containerd", cmd, &dir.join("logs/containerd.log"))?;
    // unshare and sh exec: this pid becomes containerd, whose shims inherit the cgroup.
    cgroups.enter_runtime(proc.pid())?;
    Ok(proc)
}

fn containerd_config(dir: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{RUN_DIR}/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{RUN_DIR}/containerd.sock"
[ttrpc]
  address = "{RUN_DIR}/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#,
        root = dir.join("containerd").display(),
        pause = images::PAUSE,
        cni = dir.join("cni").display(),
    )
}

/// The bridge plugin on `htk0` (no gateway: no forwarding or masquerading on the
/// machine), addresses from `host-local` with its state in the run's directory.
fn cni_config(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "hoptrace-cluster",
        "plugins": [
            {
                "type": "bridge",
                "bridge": host::BRIDGE,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("cni-ipam").display().to_string(),
                    "ranges": [[{"subnet": format!("{}/{}", subnet(), host::PREFIX), "gateway": GATEWAY.to_string()}]],
                },
            },
            {"type": "loopback"},
        ],
    })
    .to_string()
}

fn subnet() -> std::net::Ipv4Addr {
    let [a, b, c, _] = GATEWAY.octets();
    std::net::Ipv4Addr::new(a, b, c, 0)
}

fn start_kubelet(
    dir: &Path,
    kubeconfig: &Path,
    cp: &ControlPlane,
    containerd_pid: u32,
    layout: &Cgroups,
) -> Result<Proc> {
    let root = dir.join("kubelet");
    std::fs::create_dir_all(&root)?;
    let port = free_port_on(IpAddr::V4(GATEWAY))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--mount=/proc/{containerd_pid}/ns/mnt"))
        .arg("--")
        .arg(kube_binary("kubelet")?)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--root-dir={}", root.display()))
        .arg(format!("--cert-dir={}", root.join("pki").display()))
        .arg(format!(
            "--volume-plugin-dir={}",
            root.join("volume-plugins").display()
        ))
        .args(["--container-runtime=remote", "--runtime-request-timeout=5m"])
        .arg(format!(
            "--container-runtime-endpoint=unix://{RUN_DIR}/containerd.sock"
        ))
        .arg("--cgroup-driver=cgroupfs")
        .arg(format!("--cgroup-root=/{POD_CGROUP}"))
        .args(["--cgroups-per-qos=true", "--enforce-node-allocatable="])
        .args(["--fail-swap-on=false", "--protect-kernel-defaults=true"])
        .arg("--make-iptables-util-chains=false")
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={GATEWAY}"))
        .arg(format!("--address={GATEWAY}"))
        .arg(format!("--port={port}"))
        .args(["--read-only-port=0", "--healthz-port=0"])
        .args([
            "--authentication-token-webhook=false",
            "--authorization-mode=AlwaysAllow",
        ])
        .arg(format!("--client-ca-file={}", cp.certs().ca.display()))
        // Never evict or collect images for lack of disk: the images are local.
        .args([
            "--image-gc-high-threshold=100",
            "--image-gc-low-threshold=99",
        ])
        .args([
            "--eviction-hard=",
            "--resolv-conf=/etc/resolv.conf",
            "--v=1",
        ]);
    if !layout.hybrid() {
        eprintln!(
            "node: cgroup2-only layout: the kubelet 1.20 was run only on a hybrid layout here"
        );
    }
    Proc::spawn("kubelet", cmd, &dir.join("logs/kubelet.log"))
}
