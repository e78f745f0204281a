//! `cargo xtask`: the project's build, setup and test driver (Linux only).
//!
//! - `setup`: install what builds and tests need (idempotent), including
//!   `kube-apiserver`: the real API server of the discovery tests, built once from
//!   Debian's kubernetes source (in target/kube/) and cached in
//!   ~/.cache/hoptrace/kube/ (also alone: `kube-apiserver`).
//! - `build [--no-pgo]`: the eBPF object and the release `hoptrace` binary, guided by
//!   the committed profile agent/pgo/hoptrace.profdata.
//! - `pgo`: a new profile from the bench lab's workloads (root; docs/BENCH.md).
//! - `test`: setup, then every test (unit and netns-lab end to end); needs root.
//! - `demo [--otlp-endpoint URL]`: a two-node lab: echo traffic through the agents and
//!   their metrics, then traced requests printed as waterfalls (and sent to URL).
//! - `image`: the agent's container image (`deploy/Dockerfile`); needs a Docker engine.
//! - `kind`: the agent, Jaeger and a demo app in a two-node kind cluster, checked
//!   end to end through Jaeger's API; needs a Docker engine, kind and kubectl.
//! - `cluster`: the same check without Docker, on a real one-node cluster of this
//!   machine (kubelet, containerd, the control plane of the discovery tests);
//!   `kube-node` builds its kubelet, kube-controller-manager and kube-scheduler.
//! - `bench [--rounds N] [--duration SECS] [--quick] [--callgrind] [--scaling] ...`: the
//!   release agent against a direct path, the sidecar model and an L4 relay in the lab,
//!   instructions per request under callgrind, one agent serving many pods (docs/BENCH.md).
//! - `vm-test [--kernel 6.1] [--tests ...]`: lab tests inside a qemu VM running a
//!   Debian kernel, against the agent built here (docs/KERNELS.md).

mod cluster;
mod fuzz;

// The four-spans-per-hop check shared with the lab tests. Compiled from the tests
// crate's source rather than depending on that crate, which would put the lab's
// dependencies (tonic, tokio, ...) in front of `cargo xtask setup` on a fresh machine.
#[path = "../../tests/src/hops.rs"]
mod hops;
mod image;
mod jaeger;
mod kind;
mod kube;
mod pgo;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hoptrace build, setup and test tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and packages builds and tests need (idempotent).
    Setup,
    /// Build kube-apiserver (the version the discovery tests run against) from
    /// Debian's kubernetes source package (in target/kube/), unless cached in
    /// ~/.cache/hoptrace/kube/.
    /// `setup` runs it.
    KubeApiserver,
    /// Build kubelet, kube-controller-manager and kube-scheduler (the one-node cluster
    /// of `cluster`) from the same source, unless cached next to kube-apiserver.
    KubeNode,
    /// Build the eBPF programs and the release `hoptrace` binary, guided by the
    /// committed profile agent/pgo/hoptrace.profdata when it is there.
    Build {
        /// Build without the profile (plain `cargo build --release`).
        #[arg(long)]
        no_pgo: bool,
    },
    /// Make a new agent/pgo/hoptrace.profdata: an instrumented agent through the bench
    /// lab's traced HTTP/1.1 and opaque TCP workloads (root; docs/BENCH.md).
    Pgo,
    /// Run setup, then all tests: unit tests and the netns-lab end-to-end tests (root).
    Test {
        /// Extra arguments for `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// A two-node lab: an echo app through the agents, then a traced three-service
    /// app printed as trace waterfalls (root).
    Demo {
        /// Also send the demo's traces (the agents' and the apps' spans) to this
        /// OTLP/gRPC collector, e.g. Jaeger: `http://localhost:4317`.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// Keep the lab, its traffic and the dashboard running until Ctrl-C (the
        /// default when the terminal is interactive).
        #[arg(long)]
        keep: bool,
    },
    /// Build the agent's container image from deploy/Dockerfile (needs a Docker engine).
    Image {
        /// Image name and tag.
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
    /// Run the agent, Jaeger and a demo app in a two-node kind cluster and check
    /// that Jaeger holds traces with four proxy spans per hop (needs a Docker
    /// engine, kind and kubectl).
    Kind {
        /// Leave the cluster running afterwards (it is deleted otherwise).
        #[arg(long)]
        keep: bool,
    },
    /// Run the agent's DaemonSet and the demo app as real pods on a one-node cluster
    /// of this machine (no Docker: kubelet, containerd, bridge CNI; root) and check
    /// one trace with four proxy spans per hop. Installs what it needs.
    Cluster {
        /// Keep the cluster running until Ctrl-C (it is torn down otherwise).
        #[arg(long)]
        keep: bool,
    },
    /// Measure the release agent against no proxy, the sidecar model (two nginx) and an
    /// L4 relay (haproxy), interleaved in one lab run; writes target/bench/report.{md,json}
    /// (root). See docs/BENCH.md.
    Bench(BenchArgs),
    /// Run every fuzz target of agent/fuzz for N seconds each, one after another
    /// (installs cargo-fuzz; needs the nightly toolchain); fails with the path of the
    /// input that crashed. See docs/FUZZING.md.
    Fuzz {
        /// Seconds per target.
        #[arg(long, value_name = "N", default_value_t = 30)]
        seconds: u32,
        /// Run only this target (trace_context, detect, workload_file, http_head).
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
    },
    /// Boot a Debian kernel under qemu (TCG) with the host's filesystem as its root and
    /// run a subset of the lab tests in it, as root, against the agent built here
    /// (docs/KERNELS.md).
    VmTest(vm::VmArgs),
}

/// `cargo xtask bench` flags (passed on to the `lab-bench` program).
#[derive(clap::Args)]
struct BenchArgs {
    /// Rounds; each runs every scenario once (medians are over rounds) [default: 5; --quick: 1];
    /// 0 skips the rounds (with --callgrind or --scaling).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds of each run (saturation and fixed rate, each) [default: 5; --quick: 1].
    #[arg(long, value_name = "SECS")]
    duration: Option<u32>,
    /// A short smoke run of every scenario (the numbers mean little).
    #[arg(long)]
    quick: bool,
    /// Also profile both agents (perf) under one hoptrace-http saturation run: writes
    /// target/bench/flamegraph-hoptrace-http.svg and profile-top.txt.
    #[arg(long)]
    profile: bool,
    /// Also count instructions per request (valgrind --tool=callgrind) of the sidecar
    /// model's nginx and of both agents (hoptrace-http), and their ratio.
    #[arg(long)]
    callgrind: bool,
    /// Requests of the first counted callgrind window (the second has twice as many)
    /// [default: 2000; --quick: 200]; implies --callgrind.
    #[arg(long, value_name = "N")]
    callgrind_requests: Option<u64>,
    /// Give every callgrind request a path of its own (`/p<i>x`, a new route each: past
    /// a server's first 100 routes all are `other`), the worst case for the route and
    /// attribute caches, instead of one path; implies --callgrind.
    #[arg(long)]
    callgrind_distinct_paths: bool,
    /// Give every callgrind request an id of its own in one route (`/p/<i>`, route
    /// `/p/{id}`), as REST APIs do; implies --callgrind.
    #[arg(long, conflicts_with = "callgrind_distinct_paths")]
    callgrind_id_paths: bool,
    /// Also run the scaling phase: one agent serving 1, 10 and 50 sending pods, then
    /// per-pod fairness with one pod flooding.
    #[arg(long)]
    scaling: bool,
    /// Pod counts of the scaling phase, e.g. 1,10,50; implies --scaling.
    #[arg(long, value_name = "LIST")]
    scaling_pods: Option<String>,
    /// Put the server pods on the client's node (one agent serves both legs).
    #[arg(long)]
    same_node: bool,
    /// Connections of the saturation runs [default: 32].
    #[arg(long)]
    connections: Option<u32>,
    /// Requests per second of the latency runs [default: 1000].
    #[arg(long, value_name = "RPS")]
    rate: Option<u32>,
    /// Pods enrolled in the memory phase, 0 to skip it [default: 100; --quick: 10].
    #[arg(long, value_name = "N")]
    mem_pods: Option<u32>,
    /// Comma-separated scenarios (docs/BENCH.md "Scenarios"), e.g. direct,sidecar,hoptrace-http.
    #[arg(long, value_name = "LIST")]
    scenarios: Option<String>,
    /// Run every bench process at this niceness (e.g. -10: ahead of other work on a
    /// shared machine; the report says so).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    nice: Option<i32>,
    /// Also run hoptrace-http-compare and hoptrace-tcp-compare: hoptrace-http and
    /// hoptrace-tcp-userspace with both agents run from this other build (e.g.
    /// target/release/hoptrace copied before a change), so a before/after of two builds
    /// comes from one run, round by round.
    #[arg(long, value_name = "PATH")]
    compare_agent: Option<PathBuf>,
}

impl BenchArgs {
    /// The `lab-bench` command line.
    fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.quick {
            v.push("--quick".to_string());
        }
        if self.same_node {
            v.push("--same-node".to_string());
        }
        if self.profile {
            v.push("--profile".to_string());
        }
        if self.callgrind {
            v.push("--callgrind".to_string());
        }
        if self.callgrind_id_paths {
            v.push("--callgrind-id-paths".to_string());
        }
        if self.callgrind_distinct_paths {
            v.push("--callgrind-distinct-paths".to_string());
        }
        if self.scaling {
            v.push("--scaling".to_string());
        }
        let opt = [
            ("--rounds", self.rounds.map(|x| x.to_string())),
            ("--duration", self.duration.map(|x| x.to_string())),
            ("--connections", self.connections.map(|x| x.to_string())),
            ("--rate", self.rate.map(|x| x.to_string())),
            ("--mem-pods", self.mem_pods.map(|x| x.to_string())),
            ("--scenarios", self.scenarios.clone()),
            ("--nice", self.nice.map(|x| x.to_string())),
            (
                "--callgrind-requests",
                self.callgrind_requests.map(|x| x.to_string()),
            ),
            ("--scaling-pods", self.scaling_pods.clone()),
            (
                "--compare-agent",
                self.compare_agent.as_ref().map(|p| p.display().to_string()),
            ),
        ];
        for (flag, value) in opt {
            if let Some(value) = value {
                v.push(flag.to_string());
                v.push(value);
            }
        }
        v
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::KubeApiserver => {
            for bin in kube::ensure(&[kube::APISERVER])? {
                println!("{}", bin.display());
            }
            Ok(())
        }
        Cmd::KubeNode => {
            for bin in kube::ensure(kube::NODE)? {
                println!("{}", bin.display());
            }
            Ok(())
        }
        Cmd::Build { no_pgo } => {
            setup::check_ready()?;
            let bin = pgo::release_agent(&root, !no_pgo)?;
            println!("built {}", bin.display());
            Ok(())
        }
        Cmd::Pgo => pgo::generate(&root),
        Cmd::Test { args } => {
            require_root("the tests create network namespaces, cgroups and load eBPF programs")?;
            setup::run()?;
            // One profile for everything: the lab tests run the debug agent binary
            // that `cargo test` builds anyway, so dependencies compile once.
            cargo(&root, &["build", "-p", "hoptrace", "-p", "hoptrace-tests"])?;
            let bin = root.join("target/debug/hoptrace");
            let mut cmd = Command::new(cargo_bin());
            cmd.current_dir(&root)
                .args(["test", "--no-fail-fast"])
                .env("HOPTRACE_BIN", &bin)
                .env("HOPTRACE_LABAPP", root.join("target/debug/labapp"))
                .env("HOPTRACE_KUBE_APISERVER", kube::binary(kube::APISERVER)?);
            if !args.is_empty() {
                cmd.arg("--").args(&args);
            }
            run(&mut cmd)
        }
        Cmd::Demo {
            otlp_endpoint,
            keep,
        } => {
            require_root("the demo creates network namespaces and loads eBPF programs")?;
            setup::run()?;
            cargo(&root, &["build", "-p", "hoptrace", "-p", "hoptrace-tests"])?;
            let mut cmd = Command::new(root.join("target/debug/lab-demo"));
            cmd.env("HOPTRACE_BIN", root.join("target/debug/hoptrace"))
                .env("HOPTRACE_LABAPP", root.join("target/debug/labapp"));
            if let Some(url) = otlp_endpoint {
                cmd.args(["--otlp-endpoint", &url]);
            }
            if keep {
                cmd.arg("--keep");
            }
            run(&mut cmd)
        }
        Cmd::Image { tag } => {
            image::require("image", &[image::DOCKER])?;
            image::build(&root, &tag)
        }
        Cmd::Kind { keep } => kind::run_kind(&root, keep),
        Cmd::Cluster { keep } => {
            require_root("the cluster runs containerd and a kubelet and loads eBPF programs")?;
            cluster::run(&root, keep)
        }
        Cmd::Bench(args) => bench(&root, &args),
        Cmd::Fuzz { seconds, target } => fuzz::run_fuzz(&root, seconds, target.as_deref()),
        Cmd::VmTest(args) => vm::run(&root, &args),
    }
}

/// Builds the release agent and the lab programs (profile `lab`), then runs `lab-bench`.
fn bench(root: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    require_root("the bench creates network namespaces and loads eBPF programs")?;
    if let Some(other) = &args.compare_agent {
        // Before the build: `target/release/hoptrace` itself is about to be rebuilt.
        if std::fs::canonicalize(other).ok()
            == std::fs::canonicalize(root.join("target/release/hoptrace")).ok()
        {
            bail!(
                "--compare-agent {}: that is the build under test; copy it elsewhere first \
                 (e.g. cp target/release/hoptrace /tmp/hoptrace-before)",
                other.display()
            );
        }
    }
    setup::run()?;
    // Two invocations, so the agent is built exactly as `cargo xtask build` builds it
    // (features are unified across the packages of one invocation), with its profile.
    let agent = pgo::release_agent(root, true)?;
    let lab = build_lab(root)?;
    let commit = Command::new("git")
        .current_dir(root)
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut cmd = Command::new(lab.join("lab-bench"));
    cmd.args(args.to_args())
        .args(["--out", &root.join("target/bench").display().to_string()])
        .env("HOPTRACE_BIN", agent)
        .env("HOPTRACE_LABAPP", lab.join("labapp"))
        .env("HOPTRACE_BENCH_COMMIT", commit);
    run(&mut cmd)
}

/// Builds the lab programs (load generator, echo server, lab-bench) in profile `lab`
/// and returns their directory: the release profile without its whole-program LTO,
/// which would add minutes per build and change the lab's own cost between runs.
pub(crate) fn build_lab(root: &Path) -> anyhow::Result<PathBuf> {
    cargo(
        root,
        &[
            "build",
            "--profile",
            "lab",
            "-p",
            "hoptrace-tests",
            "--bins",
        ],
    )?;
    Ok(root.join("target/lab"))
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").context("run through `cargo xtask`")?;
    Ok(Path::new(&dir)
        .parent()
        .context("xtask has no parent dir")?
        .to_path_buf())
}

fn require_root(why: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this task must run as root: {why}. Run it as root (e.g. `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

pub(crate) fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub(crate) fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(cargo_bin()).current_dir(root).args(args))
}

pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_flags_pass_through() {
        let cli = Cli::try_parse_from([
            "cargo xtask",
            "bench",
            "--quick",
            "--rounds",
            "2",
            "--scenarios",
            "direct,sidecar",
            "--nice",
            "-10",
            "--callgrind",
            "--scaling-pods",
            "1,2",
            "--compare-agent",
            "/tmp/hoptrace-before",
        ])
        .expect("parse");
        let Cmd::Bench(args) = cli.cmd else {
            panic!("not bench")
        };
        assert_eq!(
            args.to_args(),
            [
                "--quick",
                "--callgrind",
                "--rounds",
                "2",
                "--scenarios",
                "direct,sidecar",
                "--nice",
                "-10",
                "--scaling-pods",
                "1,2",
                "--compare-agent",
                "/tmp/hoptrace-before"
            ]
        );
    }
}
