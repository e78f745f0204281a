//! The DaemonSet's capability list (`deploy/base/daemonset.yaml`,
//! `capabilities.add`) is the agent's minimal set, verified for real in the lab.
//!
//! The agent runs the way its container runs it: uid 0 whose capability bounding
//! set is exactly the list (`setpriv`, as a container runtime does with
//! `drop: [ALL]` + `add`), in its own mount namespace where `/proc/sys` is
//! read-only (as runtimes mount it in unprivileged containers), with the host's
//! `/proc` and cgroup2 tree bind-mounted elsewhere (the DaemonSet's `/host/proc`,
//! read-write, and `/host/sys/fs/cgroup`, read-only). The workload file names pods
//! the way Kubernetes discovery does: `<host proc>/<pid>/ns/net` of a "pause"
//! process running as uid 65535 (the pause image's user), and the pod cgroup
//! under the host cgroup mount.
//!
//! With the list the agent steers and counts traffic like `same_node.rs`. Without
//! any one of them it refuses to start, naming the capability; and with the
//! preflight skipped the capability proves needed: the agent fails or leaves the
//! pods unsteered.

mod common;
#[path = "common/deploy.rs"]
mod deploy;

use common::*;
use hoptrace_tests::{assert_eventually, labapp, require_root, Agent, Lab, Pod, PodProcess};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How long a refusing agent may take to exit.
const EXIT: Duration = Duration::from_secs(20);

/// Mounts what the DaemonSet mounts, makes /proc/sys read-only, then execs the
/// agent (appended as "$@") with only the given capabilities.
/// Arguments: host proc dir, host cgroup dir, cgroup2 mount, setpriv cap list.
const CONTAINER: &str = r#"
hp=$1 hc=$2 cg2=$3 caps=$4
shift 4
mount --bind /proc "$hp"
mount --bind "$cg2" "$hc"
mount -o remount,bind,ro "$hc"
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set="-all,$caps" -- "$@"
"#;

/// The DaemonSet's `capabilities.add` (`SYS_ADMIN`, ...).
fn deployed_capabilities() -> Vec<String> {
    let docs = deploy::load().unwrap_or_else(|e| panic!("deploy/: {e:#}"));
    let ds = deploy::agent_daemonset(&docs).expect("agent DaemonSet");
    let caps = deploy::added_capabilities(ds).expect("capabilities.add");
    assert!(!caps.is_empty(), "the DaemonSet adds no capabilities");
    caps
}

/// The capability number of `SYS_ADMIN` etc. (from the agent's own table).
fn cap_bit(name: &str) -> u32 {
    hoptrace::check::REQUIRED
        .iter()
        .find(|c| c.cap.to_string().trim_start_matches("CAP_") == name)
        .map(|c| u32::from(c.cap.index()))
        .unwrap_or_else(|| panic!("{name} is not one of the agent's capabilities"))
}

/// A lab node with `client` and `server` pods, each with a pause process running
/// as uid 65535, and echo and whoami servers in `server`.
struct Setup {
    pauses: Vec<(Pod, PodProcess)>,
    _servers: [PodProcess; 2],
    host_proc: PathBuf,
    host_cgroup: PathBuf,
    client: Pod,
    server: Pod,
    lab: Lab,
}

impl Setup {
    fn new() -> Setup {
        let (lab, client, server) = client_server_lab(false);
        let app = labapp!();
        let servers = [
            app.echo_server(&server, server.addr(ECHO_PORT))
                .expect("echo server"),
            app.whoami_server(&server, server.addr(WHOAMI_PORT))
                .expect("whoami server"),
        ];
        let pauses = [&client, &server]
            .into_iter()
            .map(|pod| {
                let mut cmd = Command::new("setpriv");
                cmd.args(["--reuid=65535", "--regid=65535", "--clear-groups", "--"])
                    .args(["sleep", "infinity"]);
                (pod.clone(), pod.spawn(cmd).expect("pause process"))
            })
            .collect();
        let host_proc = lab.tmp_dir().join("host-proc");
        let host_cgroup = lab.tmp_dir().join("host-cgroup");
        for d in [&host_proc, &host_cgroup] {
            std::fs::create_dir_all(d).expect("mount point");
        }
        Setup {
            pauses,
            _servers: servers,
            host_proc,
            host_cgroup,
            client,
            server,
            lab,
        }
    }

    /// The workload file as the agent in its container would see the pods.
    fn write_workloads(&self) -> PathBuf {
        let mut yaml = String::from("node: node-1\nworkloads:\n");
        for (pod, pause) in &self.pauses {
            let cgroup = pod
                .cgroup
                .strip_prefix(self.lab.cgroup2_mount())
                .expect("pod cgroup under the cgroup2 mount");
            let ips: Vec<String> = pod.ips().iter().map(|ip| format!("\"{ip}\"")).collect();
            yaml.push_str(&format!(
                "  - name: {}\n    namespace: lab\n    ips: [{}]\n    cgroup: {}\n    netns: {}\n",
                pod.name,
                ips.join(", "),
                self.host_cgroup.join(cgroup).display(),
                self.host_proc
                    .join(pause.pid().to_string())
                    .join("ns/net")
                    .display(),
            ));
        }
        let path = self.lab.tmp_dir().join("workloads-container.yaml");
        hoptrace_tests::workloads::write_atomic(&path, &yaml).expect("workload file");
        path
    }

    /// Starts the agent "in its container" with only `caps` (`SYS_ADMIN`, ...).
    fn agent(&self, caps: &[String], extra: &[&str]) -> Agent {
        let setpriv_caps: Vec<String> = caps
            .iter()
            .map(|c| format!("+{}", c.to_lowercase()))
            .collect();
        let setpriv_caps = setpriv_caps.join(",");
        let cg2 = self.lab.cgroup2_mount().display().to_string();
        let (hp, hc) = (
            self.host_proc.display().to_string(),
            self.host_cgroup.display().to_string(),
        );
        let prefix = [
            "unshare",
            "--mount",
            "--",
            "sh",
            "-ec",
            CONTAINER,
            "sh",
            &hp,
            &hc,
            &cg2,
            &setpriv_caps,
        ];
        Agent::start_wrapped(&self.lab, "node-1", &self.write_workloads(), &prefix, extra)
            .expect("start the agent")
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn workloads(agent: &Agent, state: &str) -> f64 {
    agent
        .metrics()
        .map(|m| m.value("hoptrace_workloads", &[("state", state)]))
        .unwrap_or(-1.0)
}

#[test]
fn agent_steers_with_exactly_the_deployed_capabilities() {
    if !require_root() {
        return;
    }
    let caps = deployed_capabilities();
    let setup = Setup::new();
    let mut agent = setup.agent(&caps, &[]);
    agent.wait_ready(READY).expect("agent ready");

    // It really runs with these capabilities only, and with /proc/sys read-only.
    let pid = agent.pid().expect("agent pid");
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    let eff = u64::from_str_radix(&status_field(pid, "CapEff:"), 16).expect("CapEff");
    assert_eq!(eff, want, "agent CapEff {eff:#x}, want exactly {caps:?}");
    assert_eq!(
        status_field(pid, "Uid:").split_whitespace().next(),
        Some("0")
    );
    // Transparent huge pages off (the default; `park::no_huge_pages` needs no
    // capability).
    assert_eq!(status_field(pid, "THP_enabled:"), "0");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).expect("mounts");
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(" /proc/sys proc ro,") || l.contains(" /proc/sys proc ro ")),
        "/proc/sys is not read-only for the agent:\n{mounts}"
    );
    assert_eventually!(
        workloads(&agent, "steered") == 2.0,
        COUNTED,
        "both pods steered (log:\n{})",
        agent.log_tail(30)
    );

    let app = labapp!();
    let target = setup.server.addr(ECHO_PORT);
    let out0 = accepted(&agent, "outbound", "client");
    let in0 = accepted(&agent, "inbound", "server");
    let r = app
        .echo_client(&setup.client, target, MIB, 2, true)
        .expect("echo client");
    assert_echo(&r, 2, MIB);
    assert_counted(&agent, "outbound", "client", out0, 2);
    assert_counted(&agent, "inbound", "server", in0, 2);
    assert_settled(&agent, "outbound", "client", 0.0);
    assert_settled(&agent, "inbound", "server", 0.0);
    // The inbound leg is transparent (IP_TRANSPARENT, SO_MARK, the fwmark route).
    let seen = app
        .whoami(&setup.client, setup.server.addr(WHOAMI_PORT))
        .expect("whoami");
    assert_eq!(seen.ip(), std::net::IpAddr::V4(setup.client.ipv4));
    agent.stop().expect("stop");
}

/// `--huge-pages` leaves transparent huge pages to the kernel's policy.
#[test]
fn huge_pages_flag_leaves_them_on() {
    if !require_root() {
        return;
    }
    let setup = Setup::new();
    let mut agent = setup.agent(&deployed_capabilities(), &["--huge-pages"]);
    agent.wait_ready(READY).expect("agent ready");
    let pid = agent.pid().expect("agent pid");
    assert_eq!(status_field(pid, "THP_enabled:"), "1");
    agent.stop().expect("stop");
}

#[test]
fn each_deployed_capability_is_needed() {
    if !require_root() {
        return;
    }
    let caps = deployed_capabilities();
    let setup = Setup::new();
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();

        // The preflight refuses to start and names the capability.
        let mut agent = setup.agent(&fewer, &[]);
        let status = agent.wait_exit(EXIT).expect("wait");
        let log = agent.log_tail(20);
        assert!(
            status.is_some_and(|s| !s.success()),
            "without {missing} the agent must exit with an error; status {status:?}, log:\n{log}"
        );
        assert!(
            log.contains(&format!("missing capabilities: CAP_{missing}")),
            "without {missing}: the error must name it; log:\n{log}"
        );
        drop(agent);

        // Past the preflight, the capability proves needed: the agent fails, or
        // some pod stays unsteered.
        let mut agent = setup.agent(&fewer, &["--skip-capability-check"]);
        match agent.wait_ready(READY) {
            Err(e) => {
                assert!(!agent.is_running(), "not ready but running: {e:#}");
                eprintln!("without {missing}: the agent fails: {}", agent.log_tail(3));
            }
            Ok(()) => {
                assert_eventually!(
                    workloads(&agent, "failed") >= 1.0,
                    COUNTED,
                    "without {missing} (preflight skipped) every pod was steered: \
                     the capability is not needed; log:\n{}",
                    agent.log_tail(30)
                );
                eprintln!(
                    "without {missing}: {} pod(s) left unsteered",
                    workloads(&agent, "failed")
                );
            }
        }
    }
}

#[test]
fn check_passes_with_the_deployed_capabilities() {
    if !require_root() {
        return;
    }
    let caps: Vec<String> = deployed_capabilities()
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--ambient-caps=-all"])
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .arg("--")
        .arg(Agent::binary().expect("agent binary"))
        .arg("check")
        .output()
        .expect("setpriv hoptrace check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hoptrace check with {caps:?}:\n{stdout}"
    );
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    // The sockmap read probe works with these capabilities too (and, in
    // `cargo xtask vm-test`, on the VM's kernel).
    assert!(stdout.contains("(probed"), "{stdout}");
}
