//! `hoptrace stat` and `hoptrace edges`: the golden metrics for a person at a terminal
//! (like `linkerd viz stat/edges`), from the agents' `/metrics` (`--agent`, scraped twice
//! a window apart) or from a Prometheus server (`--prometheus`, PromQL). Uses nothing
//! of the agent's runtime: only the metric contract (names and labels, `stat.rs`).

pub mod dashboard;
pub mod query;
pub mod render;
pub mod stat;
pub mod tap;
pub mod top;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use stat::{Rows, View};

/// Where the numbers come from (`stat`, `edges`, `dashboard`).
#[derive(Debug, Clone, Args)]
pub struct Sources {
    /// An agent's admin address (`http://127.0.0.1:9990`), scraped twice a window
    /// apart; repeat for several agents (their numbers are summed).
    #[arg(
        long = "agent",
        value_name = "URL",
        required_unless_present = "prometheus"
    )]
    pub agents: Vec<String>,

    /// A Prometheus server that scrapes the agents (`http://prometheus:9090`).
    #[arg(long, value_name = "URL", conflicts_with = "agents")]
    pub prometheus: Option<String>,

    /// The window rates and quantiles are computed over (`500ms`, `10s`, `1m`, `1h`);
    /// default 10s with `--agent`, 1m with `--prometheus`.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub window: Option<Duration>,
}

impl Sources {
    /// The window: as given, else 1m with Prometheus (its scrape interval needs a few
    /// samples) and 10s with agents (two scrapes of our own).
    pub fn window(&self) -> Duration {
        self.window.unwrap_or(match self.prometheus {
            Some(_) => Duration::from_secs(60),
            None => Duration::from_secs(10),
        })
    }

    /// The source, for messages: the Prometheus URL or the agents' URLs.
    pub fn describe(&self) -> String {
        match &self.prometheus {
            Some(url) => url.clone(),
            None => self.agents.join(", "),
        }
    }
}

/// Where the numbers come from, and how to show them.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    #[command(flatten)]
    pub from: Sources,

    /// Only this namespace (the server's; for edges, either end's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// An aligned table.
    Table,
    /// A JSON array of rows.
    Json,
}

/// What `hoptrace stat` shows a row per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    /// Server workload.
    Deploy,
    /// Enrolled server pod.
    Pod,
    /// Server workload and route.
    Route,
}

/// `hoptrace stat` arguments.
#[derive(Debug, Clone, Args)]
pub struct StatArgs {
    /// Rows per server workload (`deploy`), per route (`route`) or per enrolled
    /// server pod (`pod`).
    #[arg(value_enum, default_value_t = Resource::Deploy)]
    pub resource: Resource,

    #[command(flatten)]
    pub source: SourceArgs,
}

/// `hoptrace edges` arguments.
#[derive(Debug, Clone, Args)]
pub struct EdgesArgs {
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `hoptrace stat`.
pub fn stat(args: StatArgs) -> ExitCode {
    let view = match args.resource {
        Resource::Deploy => View::Deploy,
        Resource::Route => View::Route,
        Resource::Pod => View::Pod,
    };
    main(view, &args.source)
}

/// `hoptrace edges`.
pub fn edges(args: EdgesArgs) -> ExitCode {
    main(View::Edges, &args.source)
}

fn main(view: View, source: &SourceArgs) -> ExitCode {
    block_on(1, async {
        print!("{}", run(view, source).await?);
        Ok(())
    })
}

/// Runs a command's future on a runtime of `workers` threads (1: the current thread)
/// and turns its result into the exit code, the error on stderr.
pub fn block_on(
    workers: usize,
    command: impl std::future::Future<Output = Result<()>>,
) -> ExitCode {
    let runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hoptrace: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hoptrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The rendered output of a view.
pub async fn run(view: View, source: &SourceArgs) -> Result<String> {
    let (window, from) = (source.from.window(), source.from.describe());
    let mut rows = match &source.from.prometheus {
        Some(url) => from_prometheus(view, url, window).await?,
        None => from_agents(view, &source.from.agents, window).await?,
    };
    if let Some(ns) = &source.namespace {
        rows.retain(|k, _| view.in_namespace(k, ns));
    }
    if rows.is_empty() {
        let scope = source
            .namespace
            .as_ref()
            .map(|n| format!(" in namespace {n:?}"))
            .unwrap_or_default();
        bail!(
            "no data: {from} reported no inbound HTTP requests or TCP connections{scope} \
             in the last {window:?}; no traffic to enrolled pods was seen in that window \
             (is traffic flowing? try a longer --window)"
        );
    }
    Ok(match source.output {
        Output::Table => render::table(view, &rows),
        Output::Json => format!("{:#}\n", render::json(view, &rows)),
    })
}

/// One scrape of every agent, summed ([`stat::sum_agents`]).
pub async fn scrape_agents(http: &query::Http, agents: &[String]) -> Result<stat::Scrape> {
    let mut all = Vec::with_capacity(agents.len());
    for result in
        futures_util::future::join_all(agents.iter().map(|a| query::scrape(http, a))).await
    {
        all.push(result?);
    }
    Ok(stat::sum_agents(&all))
}

/// Two scrapes of every agent, `window` apart; the rows from their deltas.
async fn from_agents(view: View, agents: &[String], window: Duration) -> Result<Rows> {
    let http = query::Http::default();
    let start = Instant::now();
    let before = scrape_agents(&http, agents).await?;
    tokio::time::sleep_until((start + window).into()).await;
    let secs = start.elapsed().as_secs_f64();
    let after = scrape_agents(&http, agents).await?;
    Ok(stat::from_scrapes(view, &before, &after, secs))
}

/// The view's PromQL queries over `window`.
pub async fn from_prometheus(view: View, url: &str, window: Duration) -> Result<Rows> {
    let http = query::Http::default();
    let range = format!("{}ms", window.as_millis());
    let mut rows = Rows::new();
    for (field, promql) in stat::promql(view, &range) {
        let answer = query::instant(&http, url, &promql).await?;
        stat::fill(view, &mut rows, field, &answer);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        use crate::config::parse_duration as parse_window;
        assert_eq!(parse_window("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_window("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_window("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_window("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_window("0s").is_err());
        assert!(parse_window("1.5m").is_err());
        assert!(parse_window("m").is_err());
    }
}
