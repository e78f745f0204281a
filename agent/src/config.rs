//! Command line (DESIGN §3.1). Every flag is also an environment variable.

use std::time::Duration;
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::k8s::policy::Inject;

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
    /// Success rate, requests per second, latency quantiles and TCP connections per
    /// server workload or route, from the agents or a Prometheus server.
    Stat(crate::cli::StatArgs),
    /// Who calls whom: requests per second, success rate, p99 latency and whether
    /// traced requests were seen, per (source, destination) workload.
    Edges(crate::cli::EdgesArgs),
    /// Live requests (method, path, status, latency, trace id) from agents started with
    /// `--tap`, as they finish.
    Tap(crate::cli::tap::TapArgs),
    /// Live requests aggregated by route (count, success, best/worst/last latency),
    /// redrawn every second; from agents started with `--tap`.
    Top(crate::cli::top::TopArgs),
    /// A read-only web UI: the live topology (workloads and the calls between them,
    /// coloured by success rate), each workload's golden metrics, routes and recent
    /// traces, and the live requests; from the agents or a Prometheus server.
    Dashboard(crate::cli::dashboard::DashboardArgs),
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

    /// Also send every agent metric (the golden metrics included) to the collector as
    /// OTLP metrics, every `--otlp-metrics-interval`. A collector that does not take
    /// metrics (e.g. Jaeger) stops it after one log line.
    #[arg(long, env = "HOPTRACE_OTLP_METRICS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub otlp_metrics: bool,

    /// How often the OTLP metrics are sent.
    #[arg(long, env = "HOPTRACE_OTLP_METRICS_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub otlp_metrics_interval: Duration,

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

    /// Compression of export requests: `none` (the OTLP default) or `gzip` (for a
    /// remote collector).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_COMPRESSION", default_value = "none", value_parser = ["gzip", "none"])]
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

    /// Log filter (tracing-subscriber syntax, e.g. `info,hoptrace=debug`). Naming the
    /// target `hoptrace::ebpf` at debug or trace (`info,hoptrace::ebpf=debug`) also
    /// turns on `--ebpf-log`; a blanket `debug` or `hoptrace=debug` does not.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// Log the eBPF programs' steering decisions (connect4/6 steered or not ready,
    /// sk_lookup steered, bypass, no app listener, no record; sock_ops record moved
    /// or missing) at debug level under the target `hoptrace::ebpf`, for diagnosis.
    /// Off by default: when off the programs skip logging entirely (docs/BENCH.md).
    #[arg(long, env = "HOPTRACE_EBPF_LOG")]
    pub ebpf_log: bool,

    /// Start even when capabilities the agent needs are missing (diagnosis only: the
    /// operations that need them then fail per pod, which stays unsteered and is reported).
    #[arg(long, env = "HOPTRACE_SKIP_CAPABILITY_CHECK")]
    pub skip_capability_check: bool,

    /// Connections proxied at once per pod and direction; beyond, new ones are reset
    /// at once and counted (`hoptrace_connections_refused_total{reason="pod_limit"}`).
    #[arg(long, env = "HOPTRACE_MAX_CONNECTIONS_PER_POD", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_pod: u32,

    /// HTTP/1: time allowed for a request head, counted from when the agent starts
    /// waiting for it (connection start, or the end of the previous response: also the
    /// keep-alive idle time). Units: ms, s, m, h.
    #[arg(long, env = "HOPTRACE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// HTTP (both versions): a client connection with no request in flight for this
    /// long is closed gracefully (HTTP/2: GOAWAY).
    #[arg(long, env = "HOPTRACE_HTTP_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// Opaque TCP: a connection with no byte either way for this long is closed.
    #[arg(long, env = "HOPTRACE_TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub tcp_idle_timeout: Duration,

    /// Pooled upstream HTTP connections are not reused past this age, so connections
    /// made while a peer's agent was down are replaced by steered ones within it.
    #[arg(long, env = "HOPTRACE_POOL_MAX_LIFETIME", default_value = "30s", value_parser = parse_duration)]
    pub pool_max_lifetime: Duration,

    /// On SIGTERM: stop accepting, then let connections in flight finish for at most
    /// this long (keep it below the pod's terminationGracePeriodSeconds).
    #[arg(long, env = "HOPTRACE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Admin connections open at once, in all (each peer address gets at most an eighth).
    #[arg(long, env = "HOPTRACE_ADMIN_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..))]
    pub admin_max_connections: u32,

    /// Count every request and connection of the enrolled pods (the golden metrics:
    /// docs/METRICS.md). `false` only to measure what counting costs (the bench's
    /// `hoptrace-http-nometrics`).
    #[arg(long, env = "HOPTRACE_GOLDEN_METRICS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub golden_metrics: bool,

    /// In Kubernetes, watch every pod of the cluster (not only this node's) to name the
    /// other end of connections in the golden metrics (`client`/`server` labels). Each
    /// agent then lists and watches all pods; turn it off in very large clusters to
    /// spare the API server (peers on other nodes are then `unknown`).
    #[arg(long, env = "HOPTRACE_PEER_WATCH", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub peer_watch: bool,

    /// Serve live requests (method, raw path, status, latency, trace id) as JSON lines
    /// at `GET /tap` on the admin port (`hoptrace tap`). Off by default: raw paths can
    /// carry personal data. Readers that fall behind lose events; requests never wait.
    #[arg(long, env = "HOPTRACE_TAP", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tap: bool,

    /// How HTTP/1.1 is proxied: `lean` (default; heads parsed with httparse, the trace
    /// header rewritten in place, bodies relayed by their framing; anything unusual is
    /// handed to hyper) or `hyper` (every request through hyper, as before; for
    /// comparison in `cargo xtask bench`, docs/BENCH.md).
    #[arg(long, env = "HOPTRACE_HTTP1_PROXY", value_enum, default_value_t = Http1Proxy::Lean)]
    pub http1_proxy: Http1Proxy,

    /// Serve a hop between two enrolled pods of this node in one pass: the caller's
    /// outbound leg connects to the destination's app itself (from the caller's
    /// address, in the destination's netns) and emits the hop's four spans, instead of
    /// going through the inbound leg's second accept and parse. `false` only to compare
    /// (`cargo xtask bench --same-node`).
    #[arg(long, env = "HOPTRACE_SAME_NODE_ONE_PASS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub same_node_one_pass: bool,

    /// Experimental: let the connections between an app and the agent inside a pod
    /// skip TCP: an `sk_msg` program puts what one end sends straight into the other
    /// end's receive queue (docs/ARCHITECTURE.md, "In-pod connections without TCP").
    /// A blocking read in an app can then fail with `EAGAIN` (after a half-close, or
    /// an upload larger than 256 KiB): for measuring in `cargo xtask bench`, not for
    /// production. Needs the `sock_recv_length` tracepoint (6.3+) and kernel BTF;
    /// opaque TCP is then relayed in userspace.
    #[arg(long, env = "HOPTRACE_SKIP_POD_TCP", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub skip_pod_tcp: bool,

    /// Data path threads (one single-threaded runtime each, docs/ARCHITECTURE.md
    /// "Threads"); `0`: one per CPU the agent may run on.
    #[arg(long, env = "HOPTRACE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Pin each data path thread to one CPU of those the agent may run on (thread `i`
    /// to the `i`-th, in turn), as nginx's `worker_cpu_affinity auto` does: a thread
    /// is then always woken where its caches are. Off by default: on CPUs shared with
    /// busy pods a pinned thread cannot move away from them. For nodes that give the
    /// agent CPUs of its own (docs/BENCH.md, "Pinned data path threads").
    #[arg(long, env = "HOPTRACE_PIN_CORES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub pin_cores: bool,

    /// Let the allocator use transparent huge pages. Off by default: a 2 MiB page
    /// stays resident until all of it is free, which kept the agent's RSS after load
    /// at 30–36 MB instead of 19–22. On, the data path spent about 7% less CPU per
    /// request at saturation in the bench (fewer TLB misses; docs/BENCH.md, sixth
    /// session): for nodes where CPU counts more than the agent's memory.
    #[arg(long, env = "HOPTRACE_HUGE_PAGES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub huge_pages: bool,

    /// How opaque TCP (not HTTP, or TLS) is relayed: `userspace` (default; the agent
    /// copies the bytes), `kernel` (experimental: the two sockets are spliced by an
    /// eBPF program and the bytes never reach the agent, on Linux 6.16, 6.12.34+ or
    /// 6.15.3+, docs/KERNELS.md; a connection whose reader falls behind goes on in
    /// userspace, and on 6.18 about one such connection in a hundred got a segment
    /// twice there, docs/ARCHITECTURE.md "Opaque TCP in the kernel") or
    /// `kernel-always` (splices on any kernel that loads the program: for trying a
    /// kernel in `cargo xtask vm-test`, never in production).
    #[arg(long, env = "HOPTRACE_OPAQUE_TCP", value_enum, default_value_t = OpaqueTcp::Userspace)]
    pub opaque_tcp: OpaqueTcp,
}

/// How opaque TCP is relayed (`--opaque-tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OpaqueTcp {
    /// Spliced in the kernel (sockmap and a stream verdict program); experimental.
    Kernel,
    /// Copied by the agent (the default).
    Userspace,
    /// Spliced on any kernel that loads the program, without the sockmap fix too.
    KernelAlways,
}

/// The HTTP/1.1 proxy implementation (`--http1-proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Proxy {
    /// The lean path (`proxy::h1`), falling back to hyper for unusual heads.
    Lean,
    /// hyper for every request.
    Hyper,
}

impl RunArgs {
    /// The workload source's settings.
    pub fn source(&self) -> crate::source::SourceConfig {
        crate::source::SourceConfig {
            workloads_file: self.workloads_file.clone(),
            discovery: crate::k8s::DiscoveryConfig {
                node_name: self.node_name.clone(),
                own_pod: (self.pod_namespace.clone(), self.pod_name.clone()),
                cgroup_root: self.cgroup_root.clone(),
                proc_root: self.proc_root.clone(),
                inject_default: self.inject_default,
                peers: self.peer_watch,
            },
        }
    }

    /// Whether the eBPF programs log their decisions: `--ebpf-log`, or a `--log`
    /// directive that names [`crate::ebpf::LOG_TARGET`] at debug or trace.
    pub fn ebpf_log_enabled(&self) -> bool {
        self.ebpf_log || names_ebpf_target(&self.log)
    }

    /// The log filter to install: `--log`, plus `hoptrace::ebpf=debug` with
    /// `--ebpf-log`, so the decisions are shown whatever the rest of the filter says.
    pub fn log_filter(&self) -> String {
        if !self.ebpf_log || names_ebpf_target(&self.log) {
            return self.log.clone();
        }
        let directive = format!("{}=debug", crate::ebpf::LOG_TARGET);
        if self.log.trim().is_empty() {
            directive
        } else {
            format!("{},{directive}", self.log)
        }
    }

    /// The collector endpoint: flag / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, then the OTLP default.
    pub fn otlp_endpoint(&self) -> String {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .unwrap_or_else(|| "http://localhost:4317".to_string())
    }
}

/// True when one directive of the filter `filter` is `hoptrace::ebpf` (optionally
/// with a span filter) at `debug`, `trace` or no level (which means trace).
fn names_ebpf_target(filter: &str) -> bool {
    filter.split(',').any(|directive| {
        let (target, level) = match directive.trim().split_once('=') {
            Some((t, l)) => (t, Some(l.trim())),
            None => (directive.trim(), None),
        };
        let target = target.split('[').next().unwrap_or("").trim();
        target == crate::ebpf::LOG_TARGET
            && level
                .is_none_or(|l| l.eq_ignore_ascii_case("debug") || l.eq_ignore_ascii_case("trace"))
    })
}

/// `250ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms, 30s, 5m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
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
        assert_eq!(args.otlp_compression, "none", "the OTLP default");
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
                    _ => panic!("expected run"),
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
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "1d", "-1s", "0s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["hoptrace", "run"]).expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.header_read_timeout, Duration::from_secs(30));
        assert_eq!(args.shutdown_grace, Duration::from_secs(10));
        assert_eq!(args.max_connections_per_pod, 4096);
    }

    #[test]
    fn ebpf_log_is_off_by_default_and_on_by_flag_or_target() {
        let run = |extra: &[&str]| {
            let mut argv = vec!["hoptrace", "run"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).expect("parse").command {
                Command::Run(a) => *a,
                _ => panic!("expected run"),
            }
        };
        let off = run(&["--log", "debug"]);
        assert!(
            !off.ebpf_log_enabled(),
            "a blanket debug must not turn it on"
        );
        assert_eq!(off.log_filter(), "debug");
        assert!(!run(&["--log", "info,hoptrace=debug"]).ebpf_log_enabled());
        assert!(!run(&["--log", "info,hoptrace::ebpf=info"]).ebpf_log_enabled());
        assert!(!run(&["--log", "hoptrace::ebpfx=debug"]).ebpf_log_enabled());
        let flag = run(&["--ebpf-log"]);
        assert!(flag.ebpf_log_enabled());
        assert_eq!(flag.log_filter(), "info,hoptrace::ebpf=debug");
        assert_eq!(
            run(&["--ebpf-log", "--log", ""]).log_filter(),
            "hoptrace::ebpf=debug"
        );
        for filter in [
            "info,hoptrace::ebpf=debug",
            "warn,hoptrace::ebpf=TRACE",
            "hoptrace::ebpf",
            "info,hoptrace::ebpf[x]=debug",
        ] {
            let a = run(&["--log", filter]);
            assert!(a.ebpf_log_enabled(), "{filter}");
            assert_eq!(a.log_filter(), filter, "left as given");
        }
    }

    #[test]
    fn rejects_bad_admin_addr() {
        let err = Cli::try_parse_from(["hoptrace", "run", "--admin-addr", "nope"])
            .expect_err("must fail");
        assert!(err.to_string().contains("--admin-addr"), "{err}");
    }
}
