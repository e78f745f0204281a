//! The hoptrace lab: Kubernetes-like "nodes" and "pods" made of network
//! namespaces, veth pairs, bridges and cgroup v2 directories on one machine,
//! plus handles for the agent under test and the `labapp` test program.
//!
//! Topology built by [`Lab`] (run id `<id>`, second octet `<a>`):
//!
//! ```text
//!   pod netns ht<id>-client          node netns ht<id>-node-1          underlay netns ht<id>-_underlay
//!   eth0 10.<a>.1.2/24  <-veth->  vp2 -- br0 10.<a>.1.1/24
//!        fd00:<a>:1::2/64                   fd00:<a>:1::1/64
//!                                      ul0 10.<a>.0.1/24  <-veth->  n1 -- br0 -- n2  <-> node-2 ...
//!                                          fd00:<a>::1/64
//! ```
//!
//! Pods route everything via their node; nodes forward and route the other
//! nodes' pod CIDRs over the underlay bridge. Everything lives in namespaces the
//! lab created, so no traffic touches the host's interfaces.
//!
//! Every lab test starts with `if !require_root() { return; }`.

pub mod agent;
pub mod app;
pub mod bench;
pub mod cgroup;
pub mod clock;
pub mod cluster;
pub mod forward;
pub mod h1edge;
pub mod hops;
pub mod http;
pub mod kubeapi;
pub mod lab;
pub mod metrics;
pub mod mockotlp;
pub mod netns;
pub mod node;
pub mod otlp;
mod otlp_count;
pub mod otlp_metrics;
pub mod plainapp;
pub mod pod;
pub mod ports;
pub mod pyapp;
mod state;
pub mod tlsapp;
pub mod traces;
pub mod webdriver;
pub mod workloads;

pub use agent::Agent;
pub use app::{Attempt, ConnectLoop, EchoReport, FloodReport, IdleReport, LabApp};
pub use kubeapi::KubeApi;
pub use lab::{Lab, LabOptions};
pub use metrics::Metrics;
pub use otlp::{OtlpReceiver, ReceivedSpan, ReceiverOptions, TlsMode};
pub use pod::{Pod, PodProcess, RunOutput};
pub use pyapp::{ClientContext, ClientOptions, GrpcCall, GrpcOptions, Propagation, PyApps};
pub use state::reap_stale;

/// The Kubernetes namespace every lab pod is placed in (the `namespace` field
/// of the workload file and the `namespace` label of the agent's metrics).
pub const LAB_NAMESPACE: &str = "lab";

/// Returns `true` when the tests can build a lab (effective uid 0).
///
/// When not root: with `CI=true` (or `CI=1`) it panics, so a CI run can never
/// pass by skipping; otherwise it prints `skipping: needs root` and returns
/// `false` so the caller can `return` early.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let ci = std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false);
    if ci {
        panic!(
            "the hoptrace lab needs root (network namespaces, cgroup v2, eBPF) and CI=true is set: \
             refusing to skip; run the tests as root"
        );
    }
    eprintln!("skipping: needs root");
    false
}

/// Retries `cond` every ~20 ms until it is true; panics with the message when
/// `timeout` (a [`std::time::Duration`]) passes first. The condition is always
/// evaluated at least once and once more at the deadline.
///
/// ```ignore
/// assert_eventually!(agent.metrics()?.accepted("outbound", "client") >= 1.0,
///                    Duration::from_secs(1), "client connection not counted");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let timeout: ::std::time::Duration = $timeout;
        let start = ::std::time::Instant::now();
        loop {
            let done = start.elapsed() >= timeout;
            if $cond {
                break;
            }
            if done {
                panic!(
                    "assert_eventually: not true after {:?}: {}",
                    timeout,
                    format_args!($($msg)+)
                );
            }
            ::std::thread::sleep(::std::time::Duration::from_millis(20));
        }
    }};
}

/// A [`LabApp`] for the `labapp` binary of this crate. Only usable from this
/// crate's integration tests (it expands `env!("CARGO_BIN_EXE_labapp")`).
#[macro_export]
macro_rules! labapp {
    () => {
        $crate::app::LabApp::new(env!("CARGO_BIN_EXE_labapp"))
    };
}
