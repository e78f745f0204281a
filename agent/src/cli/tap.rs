//! `hoptrace tap`: live requests from the agents' `GET /tap` (agents started with
//! `--tap`), one line per request, until interrupted or `--count` lines.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

use super::{query, Output};

/// Which agents and which of their requests (`hoptrace tap` and `top`).
#[derive(Debug, Clone, Args)]
pub struct TapSource {
    /// An agent's admin address (`http://127.0.0.1:9990`); repeat for several.
    #[arg(long = "agent", value_name = "URL", required = true)]
    pub agents: Vec<String>,

    /// Only requests with a client or server in this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Only requests to this server workload.
    #[arg(long)]
    pub to: Option<String>,

    /// Only paths starting with this.
    #[arg(long)]
    pub path: Option<String>,
}

/// `hoptrace tap` arguments.
#[derive(Debug, Clone, Args)]
pub struct TapArgs {
    #[command(flatten)]
    pub source: TapSource,

    /// Stop after this many requests.
    #[arg(long)]
    pub count: Option<u64>,

    /// Output format: a line per request, or the agents' JSON lines as they are.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `hoptrace tap`.
pub fn tap(args: TapArgs) -> ExitCode {
    super::block_on(1, async { run(&args, &mut std::io::stdout()).await })
}

/// The agents' JSON lines (all agents at once, as they come); an agent's failure
/// arrives as an error.
pub fn subscribe(args: &TapSource) -> tokio::sync::mpsc::Receiver<Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String>>(256);
    for agent in &args.agents {
        let url = tap_url(agent, args);
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = stream(&url, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
    }
    rx
}

/// Streams the agents' requests to `out`.
pub async fn run(args: &TapArgs, out: &mut impl std::io::Write) -> Result<()> {
    let mut rx = subscribe(&args.source);
    if args.output == Output::Table {
        writeln!(
            out,
            "{:<12} {:<8} {:<28} {:<28} {:<7} {:<32} {:>6} {:>10}  TRACE",
            "TIME", "DIR", "FROM", "TO", "METHOD", "PATH", "STATUS", "LATENCY"
        )?;
    }
    let mut shown = 0u64;
    while let Some(line) = rx.recv().await {
        let line = line?;
        match args.output {
            Output::Json => writeln!(out, "{line}")?,
            Output::Table => writeln!(out, "{}", row(&line)?)?,
        }
        out.flush()?;
        shown += 1;
        if args.count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
    }
    Ok(())
}

/// `<agent>/tap?<filters>`.
fn tap_url(agent: &str, args: &TapSource) -> String {
    let mut query = Vec::new();
    for (k, v) in [
        ("namespace", &args.namespace),
        ("to", &args.to),
        ("path", &args.path),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", query::encode(v)));
        }
    }
    format!("{}/tap?{}", agent.trim_end_matches('/'), query.join("&"))
}

/// Reads one agent's stream, line by line, into `tx`.
async fn stream(url: &str, tx: &tokio::sync::mpsc::Sender<Result<String>>) -> Result<()> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url}: use an http:// URL");
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(uri)
        .await
        .map_err(|e| anyhow!("agent {url} unreachable: {e}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!(
            "agent {url} answered {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("agent {url}: stream broken"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(eol) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=eol).collect();
            let line = String::from_utf8_lossy(&line[..eol]).into_owned();
            if tx.send(Ok(line)).await.is_err() {
                return Ok(());
            }
        }
    }
    bail!("agent {url} closed the tap stream")
}

/// One table line from one JSON line.
fn row(line: &str) -> Result<String> {
    let v: Value = serde_json::from_str(line).with_context(|| format!("bad tap line {line:?}"))?;
    if let Some(n) = v.get("dropped") {
        return Ok(format!(
            "(the agent dropped {n} requests: this reader fell behind)"
        ));
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let ts = v.get("ts_ms").and_then(Value::as_u64).unwrap_or(0);
    let secs = ts / 1000 % 86_400;
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ts % 1000
    );
    Ok(format!(
        "{time:<12} {:<8} {:<28} {:<28} {:<7} {:<32} {:>6} {:>8.1}ms  {}",
        s("direction"),
        format!("{}/{}", s("client_namespace"), s("client")),
        format!("{}/{}", s("server_namespace"), s("server")),
        s("method"),
        s("path"),
        v.get("status").and_then(Value::as_u64).unwrap_or(0),
        v.get("latency_ms").and_then(Value::as_f64).unwrap_or(0.0),
        s("trace_id"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows() {
        let line = r#"{"ts_ms":3723004,"direction":"inbound","client_namespace":"lab","client":"a","server_namespace":"lab","server":"b","method":"GET","path":"/x?y=1","route":"/x","status":200,"outcome":"success","latency_ms":1.25,"trace_id":"4bf9"}"#;
        let r = row(line).expect("row");
        assert!(r.starts_with("01:02:03.004 inbound  lab/a"), "{r}");
        assert!(
            r.contains("/x?y=1") && r.contains("1.2ms") && r.ends_with("4bf9"),
            "{r}"
        );
        assert!(row(r#"{"dropped":7}"#).expect("row").contains("dropped 7"));
        assert!(row("nope").is_err());
    }

    #[test]
    fn urls() {
        let args = TapSource {
            agents: vec![],
            namespace: Some("lab".into()),
            to: None,
            path: Some("/a b".into()),
        };
        assert_eq!(
            tap_url("http://h:9990/", &args),
            "http://h:9990/tap?namespace=lab&path=%2Fa+b"
        );
    }
}
