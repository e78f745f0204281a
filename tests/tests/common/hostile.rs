//! The hostile-input lab (issue 8): `attacker`, `victim` (an HTTP server), the
//! neighbours `bg-client` → `bg-server` whose connect loop must never fail, and
//! `outsider` (not enrolled). Attackers and the victim server are `apps/hostile.py`.
#![allow(dead_code)]

use super::*;
use hoptrace_tests::{assert_eventually, labapp, Agent, ConnectLoop, Lab, Pod};
use serde_json::Value;
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

/// Port of the victim's HTTP server.
pub const HTTP_PORT: u16 = 8080;
/// The test agent's per-pod connection slots (small, so a flood hits it quickly).
pub const SLOTS: usize = 150;

pub fn hostile_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("apps/hostile.py")
}

pub fn py(args: &[&str]) -> Command {
    let mut cmd = Command::new(hoptrace_tests::pyapp::python());
    cmd.arg(hostile_py()).args(args);
    cmd
}

/// Runs a `hostile.py` client in `pod` and parses its JSON report.
pub fn run(pod: &Pod, args: &[&str], timeout: Duration) -> Value {
    let out = pod
        .run(py(args), timeout)
        .unwrap_or_else(|e| panic!("hostile.py {args:?} in {}: {e:#}", pod.name));
    assert!(
        out.status.success(),
        "hostile.py {args:?} failed: {}",
        out.stderr
    );
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("hostile.py {args:?} printed {:?}: {e}", out.stdout))
}

/// Open descriptors of a process.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of a process in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The lab every case runs in: `attacker`, `victim` (HTTP server), and the
/// neighbours `bg-client` → `bg-server` (whoami) whose loop must never fail.
/// Fields drop in order: processes and the agent before the lab.
pub struct Hostile {
    pub attacker: Pod,
    pub outsider: Pod,
    pub victim: Pod,
    pub neighbour: Pod,
    pub agent: Agent,
    _server: hoptrace_tests::PodProcess,
    _whoami: hoptrace_tests::PodProcess,
    pub bg: ConnectLoop,
    pub lab: Lab,
}

impl Hostile {
    pub fn new(extra_args: &[&str]) -> Hostile {
        let app = labapp!();
        let mut lab = Lab::new().expect("create lab");
        lab.add_node("node-1").expect("node-1");
        let attacker = lab.add_pod("node-1", "attacker").expect("attacker");
        let victim = lab.add_pod("node-1", "victim").expect("victim");
        let bgc = lab.add_pod("node-1", "bg-client").expect("bg-client");
        let bgs = lab.add_pod("node-1", "bg-server").expect("bg-server");
        // Not enrolled: its connections reach enrolled pods only through sk_lookup.
        let outsider = lab.add_pod("node-1", "outsider").expect("outsider");
        let listen = victim.addr(HTTP_PORT).to_string();
        let mut server = victim
            .spawn(py(&["serve", "--listen", &listen]))
            .expect("victim server");
        server
            .wait_listening(HTTP_PORT, Duration::from_secs(10))
            .expect("victim listening");
        let whoami = app
            .whoami_server(&bgs, bgs.addr(WHOAMI_PORT))
            .expect("whoami server");
        let file = lab
            .write_workloads_only("node-1", &["attacker", "victim", "bg-client", "bg-server"])
            .expect("workloads");
        let mut agent = Agent::start_with_args(&lab, "node-1", &file, extra_args).expect("agent");
        agent.wait_ready(READY).expect("agent ready");
        let out = lab.tmp_dir().join("bg-loop.out");
        let bg = app
            .connect_loop(&bgc, bgs.addr(WHOAMI_PORT), (50, 600_000, 2000), &out)
            .expect("background loop");
        assert_eventually!(
            accepted(&agent, "outbound", "bg-client") >= 3.0,
            COUNTED,
            "the background loop is not steered"
        );
        Hostile {
            outsider,
            neighbour: bgc,
            lab,
            attacker,
            victim,
            agent,
            _server: server,
            _whoami: whoami,
            bg,
        }
    }

    pub fn pid(&self) -> u32 {
        self.agent.pid().expect("agent running")
    }

    /// Every background attempt so far succeeded, and there were some since `since`.
    pub fn assert_neighbours_fine(&self, case: &str) {
        let attempts = self.bg.attempts().expect("background attempts");
        let failed: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
        assert!(
            failed.is_empty(),
            "{case}: {} of {} background connections failed, e.g. {:?}",
            failed.len(),
            attempts.len(),
            failed.first().map(|a| &a.detail)
        );
        assert!(attempts.len() > 5, "{case}: the background loop stalled");
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.agent.metrics().expect("metrics").value(name, labels)
    }
}

/// A sampled `traceparent` for trace `n`.
pub fn traceparent(n: u32) -> (String, String) {
    let trace = format!("{n:08x}{:024x}", 0xbad_u32);
    (format!("00-{trace}-{n:016x}-01"), trace)
}

/// Sends `request` from `pod` to `to` (through the agent) and returns the report.
pub fn raw(h: &Hostile, pod: &Pod, to: SocketAddr, name: &str, request: &[u8]) -> Value {
    let file = h.lab.tmp_dir().join(format!("{name}.req"));
    std::fs::write(&file, request).expect("write request");
    let (a, f) = (to.to_string(), file.display().to_string());
    run(
        pod,
        &["raw", "--addr", &a, "--data-file", &f],
        Duration::from_secs(30),
    )
}
