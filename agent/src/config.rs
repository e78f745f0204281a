//! Command line (DESIGN §3.1). Every flag is also an environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

pub use crate::k8s::policy::Inject;

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
    Run(Box<RunArgs>),
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

    /// OTLP/gRPC collector for proxy spans: `http://` plaintext, `https://` TLS.
    /// Falls back to `OTEL_EXPORTER_OTLP_ENDPOINT`, then `http://localhost:4317`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// CA bundle (PEM) that signs the collector's certificate (default: system roots).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mTLS to the collector.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")]
    pub otlp_client_cert: Option<PathBuf>,

    /// Client key (PEM) for mTLS to the collector.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_KEY")]
    pub otlp_client_key: Option<PathBuf>,

    /// Extra export metadata `KEY=VALUE` (repeatable; the env var is comma-separated).
    #[arg(long = "otlp-header", env = "OTEL_EXPORTER_OTLP_HEADERS", value_delimiter = ',', value_parser = parse_header)]
    pub otlp_headers: Vec<(String, String)>,

    /// Compression of export requests: `gzip` or `none`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_COMPRESSION", default_value = "gzip", value_parser = ["gzip", "none"])]
    pub otlp_compression: String,

    /// Spans queued at most while waiting for export (plus one batch of at most this
    /// many, or 512, being sent or retried); more are dropped and counted.
    #[arg(long, env = "HOPTRACE_SPAN_QUEUE", default_value_t = 8192)]
    pub span_queue: usize,

    /// `service.name` resource attribute of the proxy spans.
    #[arg(long, env = "HOPTRACE_SERVICE_NAME", default_value = crate::trace::span::DEFAULT_SERVICE_NAME)]
    pub service_name: String,

    /// Kubernetes discovery: whether pods are enrolled when neither their
    /// `hoptrace.io/inject` annotation nor their namespace's `hoptrace.io/inject` label
    /// decides. `disabled` (the default) means opt-in.
    #[arg(long, env = "HOPTRACE_INJECT_DEFAULT", value_enum, default_value_t = Inject::Disabled)]
    pub inject_default: Inject,

    /// Kubernetes discovery: the agent's own pod name (from the downward API), so the
    /// agent never enrolls itself.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Kubernetes discovery: the agent's own pod namespace (from the downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Kubernetes discovery: the host's cgroup mount, where pod cgroups are looked up.
    /// When it is not cgroup2 itself but `<root>/unified` is (hybrid layout), that is used.
    #[arg(long, env = "HOPTRACE_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,

    /// Kubernetes discovery: the host's /proc (pod network namespaces are opened as
    /// `<proc-root>/<pid>/ns/net`), e.g. `/host/proc` when the DaemonSet mounts it there.
    #[arg(long, env = "HOPTRACE_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// Log filter (tracing-subscriber syntax, e.g. `info,hoptrace=debug`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// Start even when capabilities the agent needs are missing (diagnosis only: the
    /// operations that need them then fail per pod, which stays unsteered and is reported).
    #[arg(long, env = "HOPTRACE_SKIP_CAPABILITY_CHECK")]
    pub skip_capability_check: bool,
}

impl RunArgs {
    /// The collector endpoint: flag / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, then the OTLP default.
    pub fn otlp_endpoint(&self) -> String {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .unwrap_or_else(|| "http://localhost:4317".to_string())
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
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
        let args = *args;
        assert_eq!(args.outbound_port, 15001);
        assert_eq!(args.inbound_port, 15006);
        assert_eq!(args.admin_addr, "127.0.0.1:9990".parse().expect("addr"));
        assert_eq!(args.workloads_file, Some(PathBuf::from("/w.yaml")));
        assert_eq!(args.otlp_compression, "gzip");
        assert_eq!(args.service_name, "hoptrace-proxy");
        assert_eq!(args.inject_default, Inject::Disabled);
        assert_eq!(args.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(args.proc_root, PathBuf::from("/proc"));
        assert_eq!(args.pod_name, None);
    }

    #[test]
    fn inject_default_values() {
        let parse = |v: &str| {
            Cli::try_parse_from(["hoptrace", "run", "--inject-default", v]).map(|c| {
                match c.command {
                    Command::Run(a) => a.inject_default,
                    Command::Check(_) => panic!("expected run"),
                }
            })
        };
        assert_eq!(parse("enabled").expect("enabled"), Inject::Enabled);
        assert_eq!(parse("disabled").expect("disabled"), Inject::Disabled);
        let err = parse("yes").expect_err("invalid").to_string();
        assert!(err.contains("enabled") && err.contains("disabled"), "{err}");
    }

    #[test]
    fn otlp_headers_parse() {
        let cli = Cli::try_parse_from([
            "hoptrace",
            "run",
            "--otlp-header",
            "api-key=s3cret",
            "--otlp-header",
            "x-a=b=c",
        ])
        .expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(
            args.otlp_headers,
            vec![
                ("api-key".into(), "s3cret".into()),
                ("x-a".into(), "b=c".into())
            ]
        );
        assert!(Cli::try_parse_from(["hoptrace", "run", "--otlp-header", "novalue"]).is_err());
    }

    #[test]
    fn rejects_bad_admin_addr() {
        let err = Cli::try_parse_from(["hoptrace", "run", "--admin-addr", "nope"])
            .expect_err("must fail");
        assert!(err.to_string().contains("--admin-addr"), "{err}");
    }
}
