//! Command line (DESIGN §3.1). Every flag is also an environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

/// hoptrace: per-node eBPF-assisted tracing proxy for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "hoptrace", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// Print a preflight report of what the agent needs from this host; exits non-zero
    /// when something is missing.
    Check(CheckArgs),
}

/// `hoptrace run` settings.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Static workload source (YAML, see README). Re-read within 1 s of a change.
    #[arg(long, env = "HOPTRACE_WORKLOADS_FILE")]
    pub workloads_file: Option<PathBuf>,

    /// This node's name; must match the workload file's `node` when that is set.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Admin server: `GET /metrics`, `/live`, `/ready`.
    #[arg(long, env = "HOPTRACE_ADMIN_ADDR", default_value = "127.0.0.1:9990")]
    pub admin_addr: SocketAddr,

    /// Port of the outbound listener opened on loopback inside each pod netns.
    #[arg(long, env = "HOPTRACE_OUTBOUND_PORT", default_value_t = agent_common::OUTBOUND_PORT)]
    pub outbound_port: u16,

    /// Port of the inbound listener opened on loopback inside each pod netns.
    #[arg(long, env = "HOPTRACE_INBOUND_PORT", default_value_t = agent_common::INBOUND_PORT)]
    pub inbound_port: u16,

    /// Log filter (tracing-subscriber syntax, e.g. `info,hoptrace=debug`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

/// `hoptrace check` settings.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let cli =
            Cli::try_parse_from(["hoptrace", "run", "--workloads-file", "/w.yaml"]).expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.outbound_port, 15001);
        assert_eq!(args.inbound_port, 15006);
        assert_eq!(args.admin_addr, "127.0.0.1:9990".parse().expect("addr"));
        assert_eq!(args.workloads_file, Some(PathBuf::from("/w.yaml")));
    }

    #[test]
    fn rejects_bad_admin_addr() {
        let err = Cli::try_parse_from(["hoptrace", "run", "--admin-addr", "nope"])
            .expect_err("must fail");
        assert!(err.to_string().contains("--admin-addr"), "{err}");
    }
}
