//! `cargo xtask bench`: hoptrace against a direct path, the sidecar model and an L4
//! relay, measured in the lab in one run with the scenarios interleaved (DESIGN §6).
//!
//! Topology: a client pod on node-1 and a server pod on node-2 (`--same-node`: on
//! node-1). Two pairs of such pods exist side by side: `client`/`server` are never
//! enrolled (direct, sidecar and L4 scenarios), `hclient`/`hserver` are enrolled in
//! the agents that run on both nodes for the whole run (the hoptrace scenarios). Both
//! server pods run the same app: nginx answering `200 ok` on port 8080 and the
//! `labapp` echo server on port 7000.
//!
//! | scenario | path of one request |
//! | --- | --- |
//! | `direct` | client → server:8080 |
//! | `sidecar` | client → nginx on the client pod's loopback → nginx in the server pod (keepalive upstreams both) → app on the server pod's loopback |
//! | `sidecar-pinned` | the same through a second pair of nginx whose workers are pinned one per CPU |
//! | `l4` | client → haproxy `mode tcp` on the client pod's loopback → server:8080 |
//! | `hoptrace-http` | hclient → (agent node-1, outbound) → (agent node-2, inbound) → hserver:8080, every request with a sampled `traceparent`, four spans exported |
//! | `hoptrace-http-nometrics`, `-hyper`, `-twopass`, `-propagation`, `-1worker`, `-pinned`, `-podskip` | the same path with the agents restarted in another mode ([`Scenario::agent_mode`]) |
//! | `hoptrace-http-compare` | the same path with the agents run from another build (`--compare-agent`): a before/after in one run ([`compare`]) |
//! | `hoptrace-tcp-compare` | `hoptrace-tcp-userspace` with the agents run from another build (`--compare-agent`) |
//! | `direct-tcp`, `l4-tcp`, `hoptrace-tcp` | the same paths for a non-HTTP ping-pong (64 bytes each way, echoed) on port 7000 |
//!
//! Per scenario and round: saturation throughput (`wrk` for HTTP, [`loadgen`]
//! closed-loop for TCP), then latency at a fixed rate ([`loadgen`] open loop, timed
//! from each request's scheduled send time), with the proxies' CPU time
//! (`/proc/PID/stat`) per request in both, and their memory afterwards. A separate
//! phase measures agent RSS against the number of enrolled pods ([`memory`]).
//! Optional phases: instructions per request under callgrind ([`callgrind`],
//! `--callgrind`) and one agent serving 1..50 pods, with per-pod fairness under
//! overload ([`scaling`], `--scaling`).
//! Medians over rounds, ratios against baselines of the same round ([`stats`]).

pub mod callgrind;
pub mod callgrind_control;
pub mod callgrind_report;
pub mod compare;
pub mod confgen;
pub mod loadgen;
pub mod measure;
pub mod memory;
pub mod procstat;
pub mod profile;
pub mod profile_diff;
pub mod report;
pub mod run;
pub mod scaling;
pub mod scaling_report;
pub mod stats;
pub mod syscalls;
pub mod wrk;

use serde::{Deserialize, Serialize};

/// Port of the HTTP app (nginx `return 200`) in both server pods.
pub const APP_PORT: u16 = 8080;
/// Port of the echo server (TCP ping-pong) in both server pods.
pub const ECHO_PORT: u16 = 7000;
/// The client-side sidecar nginx, on the client pod's loopback.
pub const SIDECAR_OUT_PORT: u16 = 4140;
/// The server-side sidecar nginx, on the server pod's address.
pub const SIDECAR_IN_PORT: u16 = 4143;
/// `sidecar-pinned`'s client-side nginx (workers pinned), on the client pod's loopback.
pub const SIDECAR_OUT_PINNED_PORT: u16 = 4141;
/// `sidecar-pinned`'s server-side nginx (workers pinned), on the server pod's address.
pub const SIDECAR_IN_PINNED_PORT: u16 = 4144;
/// haproxy `mode tcp` on the client pod's loopback, relaying to the app.
pub const L4_HTTP_PORT: u16 = 4150;
/// haproxy `mode tcp` on the client pod's loopback, relaying to the echo server.
pub const L4_TCP_PORT: u16 = 4151;
/// Bytes each way of one TCP ping-pong exchange.
pub const TCP_MESSAGE: usize = 64;
/// The `traceparent` every wrk request carries (every scenario sends the same bytes).
pub const WRK_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The workload a scenario carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// HTTP/1.1 keep-alive `GET /` answered `200 ok`.
    Http,
    /// A non-HTTP request/response exchange of [`TCP_MESSAGE`] bytes each way.
    Tcp,
}

/// One measured path (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scenario {
    /// HTTP, no proxy.
    #[serde(rename = "direct")]
    Direct,
    /// HTTP through two chained nginx (client pod, server pod).
    #[serde(rename = "sidecar")]
    Sidecar,
    /// The same with each nginx's workers pinned one per CPU (`worker_cpu_affinity
    /// auto`): the baseline of `hoptrace-http-pinned`.
    #[serde(rename = "sidecar-pinned")]
    SidecarPinned,
    /// HTTP through one haproxy `mode tcp`.
    #[serde(rename = "l4")]
    L4,
    /// HTTP through both agents, traced.
    #[serde(rename = "hoptrace-http")]
    HoptraceHttp,
    /// The same with the agents' golden metrics off (`--golden-metrics=false`): what
    /// counting every request costs.
    #[serde(rename = "hoptrace-http-nometrics")]
    HoptraceHttpNoMetrics,
    /// The same with the agents' HTTP/1.1 proxied by hyper (`--http1-proxy hyper`), as
    /// before the lean path: what the lean path saves.
    #[serde(rename = "hoptrace-http-hyper")]
    HoptraceHttpHyper,
    /// The same with `--same-node-one-pass=false`: with `--same-node`, what serving a
    /// same-node hop in one pass saves (cross-node it is `hoptrace-http` again).
    #[serde(rename = "hoptrace-http-twopass")]
    HoptraceHttpTwoPass,
    /// The same with both pods opted into context propagation
    /// (`context_propagation: auto`): what the thread programs (every socket send and
    /// receive of the node) and the in-flight bookkeeping cost.
    #[serde(rename = "hoptrace-http-propagation")]
    HoptraceHttpPropagation,
    /// The same with each agent's runtime on one worker thread (`--worker-threads 1`)
    /// instead of one per CPU: what the multi-threaded runtime's wake-ups cost.
    #[serde(rename = "hoptrace-http-1worker")]
    HoptraceHttpOneWorker,
    /// The same with each agent's data path threads pinned, one per CPU
    /// (`--pin-cores`): what wake-ups on another CPU than the last cost.
    #[serde(rename = "hoptrace-http-pinned")]
    HoptraceHttpPinned,
    /// The same with both agents run from another build of hoptrace (`--compare-agent
    /// PATH`, e.g. main before a change): a before/after of two builds in one run,
    /// interleaved round by round like every other scenario. Only with that flag.
    #[serde(rename = "hoptrace-http-compare")]
    HoptraceHttpCompare,
    /// The same with `--skip-pod-tcp`: the in-pod connections (app ↔ agent) carry
    /// messages put straight into the peer socket's queue instead of TCP segments.
    #[serde(rename = "hoptrace-http-podskip")]
    HoptraceHttpSkipPodTcp,
    /// TCP ping-pong, no proxy.
    #[serde(rename = "direct-tcp")]
    DirectTcp,
    /// TCP ping-pong through one haproxy `mode tcp`.
    #[serde(rename = "l4-tcp")]
    L4Tcp,
    /// TCP ping-pong through both agents, spliced in the kernel (`--opaque-tcp kernel`,
    /// experimental).
    #[serde(rename = "hoptrace-tcp")]
    HoptraceTcp,
    /// The same relayed by the agents in userspace (`--opaque-tcp userspace`, the
    /// default): against `hoptrace-tcp`, what splicing would save.
    #[serde(rename = "hoptrace-tcp-userspace")]
    HoptraceTcpUserspace,
    /// The same with `--skip-pod-tcp` (experimental): the in-pod connections carry
    /// messages instead of TCP segments, so a hop has the one TCP connection between the
    /// agents: against `l4-tcp`, what the opaque target would cost without them.
    #[serde(rename = "hoptrace-tcp-podskip")]
    HoptraceTcpSkipPodTcp,
    /// `hoptrace-tcp-userspace` with both agents run from another build
    /// (`--compare-agent PATH`), as `hoptrace-http-compare` is for HTTP.
    #[serde(rename = "hoptrace-tcp-compare")]
    HoptraceTcpCompare,
}

impl Scenario {
    /// Every scenario, in the order each round runs them.
    pub const ALL: [Scenario; 19] = [
        Scenario::Direct,
        Scenario::Sidecar,
        Scenario::SidecarPinned,
        Scenario::L4,
        Scenario::HoptraceHttp,
        Scenario::HoptraceHttpNoMetrics,
        Scenario::HoptraceHttpHyper,
        Scenario::HoptraceHttpTwoPass,
        Scenario::HoptraceHttpPropagation,
        Scenario::HoptraceHttpOneWorker,
        Scenario::HoptraceHttpPinned,
        Scenario::HoptraceHttpCompare,
        Scenario::HoptraceHttpSkipPodTcp,
        Scenario::DirectTcp,
        Scenario::L4Tcp,
        Scenario::HoptraceTcp,
        Scenario::HoptraceTcpUserspace,
        Scenario::HoptraceTcpSkipPodTcp,
        Scenario::HoptraceTcpCompare,
    ];

    /// The name used in tables, JSON and `--scenarios`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Sidecar => "sidecar",
            Scenario::SidecarPinned => "sidecar-pinned",
            Scenario::L4 => "l4",
            Scenario::HoptraceHttp => "hoptrace-http",
            Scenario::HoptraceHttpNoMetrics => "hoptrace-http-nometrics",
            Scenario::HoptraceHttpHyper => "hoptrace-http-hyper",
            Scenario::HoptraceHttpTwoPass => "hoptrace-http-twopass",
            Scenario::HoptraceHttpPropagation => "hoptrace-http-propagation",
            Scenario::HoptraceHttpOneWorker => "hoptrace-http-1worker",
            Scenario::HoptraceHttpPinned => "hoptrace-http-pinned",
            Scenario::HoptraceHttpCompare => "hoptrace-http-compare",
            Scenario::HoptraceHttpSkipPodTcp => "hoptrace-http-podskip",
            Scenario::DirectTcp => "direct-tcp",
            Scenario::L4Tcp => "l4-tcp",
            Scenario::HoptraceTcp => "hoptrace-tcp",
            Scenario::HoptraceTcpUserspace => "hoptrace-tcp-userspace",
            Scenario::HoptraceTcpSkipPodTcp => "hoptrace-tcp-podskip",
            Scenario::HoptraceTcpCompare => "hoptrace-tcp-compare",
        }
    }

    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What it carries.
    pub fn workload(self) -> Workload {
        match self {
            Scenario::Direct
            | Scenario::Sidecar
            | Scenario::SidecarPinned
            | Scenario::L4
            | Scenario::HoptraceHttp
            | Scenario::HoptraceHttpNoMetrics
            | Scenario::HoptraceHttpHyper
            | Scenario::HoptraceHttpTwoPass
            | Scenario::HoptraceHttpPropagation
            | Scenario::HoptraceHttpOneWorker
            | Scenario::HoptraceHttpPinned
            | Scenario::HoptraceHttpCompare
            | Scenario::HoptraceHttpSkipPodTcp => Workload::Http,
            Scenario::DirectTcp
            | Scenario::L4Tcp
            | Scenario::HoptraceTcp
            | Scenario::HoptraceTcpUserspace
            | Scenario::HoptraceTcpSkipPodTcp
            | Scenario::HoptraceTcpCompare => Workload::Tcp,
        }
    }

    /// True for the scenarios served by the agents (enrolled pods).
    pub fn is_hoptrace(self) -> bool {
        self.is_traced()
            || matches!(
                self,
                Scenario::HoptraceTcp
                    | Scenario::HoptraceTcpUserspace
                    | Scenario::HoptraceTcpSkipPodTcp
                    | Scenario::HoptraceTcpCompare
            )
    }

    /// True for the traced HTTP scenarios (spans are accounted).
    pub fn is_traced(self) -> bool {
        matches!(
            self,
            Scenario::HoptraceHttp
                | Scenario::HoptraceHttpNoMetrics
                | Scenario::HoptraceHttpHyper
                | Scenario::HoptraceHttpTwoPass
                | Scenario::HoptraceHttpPropagation
                | Scenario::HoptraceHttpOneWorker
                | Scenario::HoptraceHttpPinned
                | Scenario::HoptraceHttpCompare
                | Scenario::HoptraceHttpSkipPodTcp
        )
    }

    /// For the scenarios that run another build (`--compare-agent`): the scenario of
    /// the build under test they are compared with.
    pub fn compared_with(self) -> Option<Scenario> {
        match self {
            Scenario::HoptraceHttpCompare => Some(Scenario::HoptraceHttp),
            Scenario::HoptraceTcpCompare => Some(Scenario::HoptraceTcpUserspace),
            _ => None,
        }
    }

    /// How the agents run in this scenario.
    pub fn agent_mode(self) -> AgentMode {
        AgentMode {
            golden_metrics: self != Scenario::HoptraceHttpNoMetrics,
            lean_http1: self != Scenario::HoptraceHttpHyper,
            one_pass: self != Scenario::HoptraceHttpTwoPass,
            propagation: self == Scenario::HoptraceHttpPropagation,
            opaque_in_kernel: self == Scenario::HoptraceTcp,
            skip_pod_tcp: matches!(
                self,
                Scenario::HoptraceHttpSkipPodTcp | Scenario::HoptraceTcpSkipPodTcp
            ),
            worker_threads: if self == Scenario::HoptraceHttpOneWorker {
                1
            } else {
                0
            },
            pin_cores: self == Scenario::HoptraceHttpPinned,
            compare: self.compared_with().is_some(),
        }
    }
}

/// The agents' settings a scenario may change (they restart when it does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentMode {
    /// `--golden-metrics`.
    pub golden_metrics: bool,
    /// `--http1-proxy lean` (else `hyper`).
    pub lean_http1: bool,
    /// `--same-node-one-pass`.
    pub one_pass: bool,
    /// `context_propagation: auto` for the enrolled pods (workload files).
    pub propagation: bool,
    /// `--opaque-tcp kernel` (else `userspace`, the default): `hoptrace-tcp` only.
    pub opaque_in_kernel: bool,
    /// `--worker-threads` (`0`: the agent's default, one per CPU).
    pub worker_threads: usize,
    /// `--skip-pod-tcp`.
    pub skip_pod_tcp: bool,
    /// `--pin-cores`.
    pub pin_cores: bool,
    /// Run the other build (`--compare-agent`) instead of the one under test.
    pub compare: bool,
}

impl AgentMode {
    /// The `hoptrace run` flags of this mode (propagation is in the workload files).
    pub fn args(&self) -> Vec<String> {
        let engine = if self.lean_http1 { "lean" } else { "hyper" };
        let opaque = if self.opaque_in_kernel {
            "kernel"
        } else {
            "userspace"
        };
        vec![
            format!("--golden-metrics={}", self.golden_metrics),
            format!("--http1-proxy={engine}"),
            format!("--same-node-one-pass={}", self.one_pass),
            format!("--opaque-tcp={opaque}"),
            format!("--worker-threads={}", self.worker_threads),
            format!("--skip-pod-tcp={}", self.skip_pod_tcp),
            format!("--pin-cores={}", self.pin_cores),
        ]
    }
}

impl Default for AgentMode {
    fn default() -> Self {
        Self {
            golden_metrics: true,
            lean_http1: true,
            one_pass: true,
            propagation: false,
            opaque_in_kernel: false,
            worker_threads: 0,
            skip_pod_tcp: false,
            pin_cores: false,
            compare: false,
        }
    }
}

/// Settings of one bench run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Rounds; each runs every scenario once.
    pub rounds: u32,
    /// Seconds of each measurement (saturation and fixed rate, each).
    pub duration_secs: u64,
    /// Concurrent connections of the saturation runs.
    pub connections: u32,
    /// Requests per second of the latency runs.
    pub rate: u32,
    /// Connections the latency runs may use (a request waits when all are busy).
    pub rate_connections: u32,
    /// Pods enrolled in the memory phase (0: skip it).
    pub mem_pods: u32,
    /// Server pods on node-1 with the client (one agent serves both legs).
    pub same_node: bool,
    /// The scenarios to run, in round order.
    pub scenarios: Vec<Scenario>,
    /// Niceness of every bench process (lab programs, proxies, agents), e.g. -10 to
    /// take the CPUs from other work on a shared machine; `None`: inherited.
    #[serde(default)]
    pub nice: Option<i32>,
    /// Another build of the agent for `hoptrace-http-compare` (`--compare-agent`).
    #[serde(default)]
    pub compare_agent: Option<std::path::PathBuf>,
}

impl BenchOptions {
    /// The defaults of a full run.
    pub fn full() -> BenchOptions {
        BenchOptions {
            rounds: 5,
            duration_secs: 5,
            connections: 32,
            rate: 1000,
            rate_connections: 16,
            mem_pods: 100,
            same_node: false,
            // The `-compare` scenarios run only when `--compare-agent` names a build.
            scenarios: Scenario::ALL
                .into_iter()
                .filter(|s| s.compared_with().is_none())
                .collect(),
            nice: None,
            compare_agent: None,
        }
    }

    /// `--quick`: a short smoke run of every scenario (numbers are not meaningful).
    pub fn quick() -> BenchOptions {
        BenchOptions {
            rounds: 1,
            duration_secs: 1,
            mem_pods: 10,
            ..BenchOptions::full()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Some(s));
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
        assert_eq!(Scenario::parse("nope"), None);
        assert_eq!(Scenario::HoptraceTcp.workload(), Workload::Tcp);
        let podskip = Scenario::HoptraceTcpSkipPodTcp;
        assert_eq!(podskip.workload(), Workload::Tcp);
        assert!(podskip.is_hoptrace() && !podskip.is_traced());
        let mode = podskip.agent_mode();
        assert!(mode.skip_pod_tcp && !mode.opaque_in_kernel);
        assert!(Scenario::HoptraceHttp.is_hoptrace() && !Scenario::Sidecar.is_hoptrace());
    }
}
