//! `cargo xtask`: the project's build, setup and test driver (Linux only).
//!
//! - `setup`: install what builds and tests need (idempotent).
//! - `build`: the eBPF object and the release `hoptrace` binary.
//! - `test`: setup, then every test (unit and netns-lab end to end); needs root.
//! - `demo [--otlp-endpoint URL]`: a two-node lab: echo traffic through the agents and
//!   their metrics, then traced requests printed as waterfalls (and sent to URL).
//! - `image`: the agent's container image (`deploy/Dockerfile`); needs a Docker engine.
//! - `kind`: the agent, Jaeger and a demo app in a two-node kind cluster, checked
//!   end to end through Jaeger's API; needs a Docker engine, kind and kubectl.

// The four-spans-per-hop check shared with the lab tests. Compiled from the tests
// crate's source rather than depending on that crate, which would put the lab's
// dependencies (tonic, tokio, ...) in front of `cargo xtask setup` on a fresh machine.
#[path = "../../tests/src/hops.rs"]
mod hops;
mod image;
mod jaeger;
mod kind;
mod setup;

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
    /// Build the eBPF programs and the release `hoptrace` binary.
    Build,
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::check_ready()?;
            cargo(&root, &["build", "--release", "-p", "hoptrace"])?;
            println!("built {}", root.join("target/release/hoptrace").display());
            Ok(())
        }
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
                .env("HOPTRACE_LABAPP", root.join("target/debug/labapp"));
            if !args.is_empty() {
                cmd.arg("--").args(&args);
            }
            run(&mut cmd)
        }
        Cmd::Demo { otlp_endpoint } => {
            require_root("the demo creates network namespaces and loads eBPF programs")?;
            setup::run()?;
            cargo(&root, &["build", "-p", "hoptrace", "-p", "hoptrace-tests"])?;
            let mut cmd = Command::new(root.join("target/debug/lab-demo"));
            cmd.env("HOPTRACE_BIN", root.join("target/debug/hoptrace"))
                .env("HOPTRACE_LABAPP", root.join("target/debug/labapp"));
            if let Some(url) = otlp_endpoint {
                cmd.args(["--otlp-endpoint", &url]);
            }
            run(&mut cmd)
        }
        Cmd::Image { tag } => {
            image::require("image", &[image::DOCKER])?;
            image::build(&root, &tag)
        }
        Cmd::Kind { keep } => kind::run_kind(&root, keep),
    }
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
