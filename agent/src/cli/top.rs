//! `hoptrace top`: the agents' live requests (`GET /tap`) aggregated by route,
//! redrawn in place every second like `top` (or printed once at the end of
//! `--duration`, for scripts).

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::Value;

use super::tap::TapSource;

/// `hoptrace top` arguments.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub source: TapSource,

    /// Stop after this long and print the table once (default: run until interrupted,
    /// redrawing every second).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub duration: Option<Duration>,
}

/// One row: requests of one (server, route, method).
#[derive(Debug, Default, Clone, PartialEq)]
struct Row {
    count: u64,
    success: u64,
    best_ms: f64,
    worst_ms: f64,
    last_ms: f64,
}

type Key = (String, String, String, String);

/// `hoptrace top`.
pub fn top(args: TopArgs) -> ExitCode {
    super::block_on(1, async { run(&args, &mut std::io::stdout()).await })
}

/// Aggregates the agents' requests; redraws `out` every second (clearing the screen
/// first) until `duration`, then prints the final table.
pub async fn run(args: &TopArgs, out: &mut impl std::io::Write) -> Result<()> {
    let mut rx = super::tap::subscribe(&args.source);
    let mut rows: BTreeMap<Key, Row> = BTreeMap::new();
    let mut dropped = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        let done = args.duration.map(|d| start + d);
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => add(&mut rows, &mut dropped, &line?)?,
                None => break,
            },
            _ = tick.tick(), if args.duration.is_none() => {
                write!(out, "\x1b[H\x1b[2J{}", table(&rows, dropped))?;
                out.flush()?;
            }
            () = sleep_until(done) => break,
        }
    }
    write!(out, "{}", table(&rows, dropped))?;
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn add(rows: &mut BTreeMap<Key, Row>, dropped: &mut u64, line: &str) -> Result<()> {
    let v: Value = serde_json::from_str(line).with_context(|| format!("bad tap line {line:?}"))?;
    if let Some(n) = v.get("dropped").and_then(Value::as_u64) {
        *dropped += n;
        return Ok(());
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let ms = v.get("latency_ms").and_then(Value::as_f64).unwrap_or(0.0);
    let row = rows
        .entry((s("server_namespace"), s("server"), s("route"), s("method")))
        .or_insert(Row {
            best_ms: f64::MAX,
            ..Row::default()
        });
    row.count += 1;
    row.success += u64::from(s("outcome") == "success");
    row.best_ms = row.best_ms.min(ms);
    row.worst_ms = row.worst_ms.max(ms);
    row.last_ms = ms;
    Ok(())
}

/// The rows, busiest first.
fn table(rows: &BTreeMap<Key, Row>, dropped: u64) -> String {
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let mut out = format!(
        "{:<28} {:<32} {:<7} {:>7} {:>8} {:>9} {:>9} {:>9}\n",
        "SERVER", "ROUTE", "METHOD", "COUNT", "SUCCESS", "BEST", "WORST", "LAST"
    );
    for ((ns, server, route, method), r) in sorted {
        out.push_str(&format!(
            "{:<28} {:<32} {:<7} {:>7} {:>7.2}% {:>7.1}ms {:>7.1}ms {:>7.1}ms\n",
            format!("{ns}/{server}"),
            route,
            method,
            r.count,
            100.0 * r.success as f64 / r.count.max(1) as f64,
            r.best_ms,
            r.worst_ms,
            r.last_ms
        ));
    }
    if dropped > 0 {
        out.push_str(&format!(
            "({dropped} requests dropped by the agents: this reader fell behind)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_by_route() {
        let mut rows = BTreeMap::new();
        let mut dropped = 0;
        for (route, outcome, ms) in [
            ("/a", "success", 2.0),
            ("/a", "failure", 4.0),
            ("/b", "success", 1.0),
        ] {
            let line = format!(
                r#"{{"server_namespace":"lab","server":"s","route":"{route}","method":"GET","outcome":"{outcome}","latency_ms":{ms}}}"#
            );
            add(&mut rows, &mut dropped, &line).expect("line");
        }
        add(&mut rows, &mut dropped, r#"{"dropped":3}"#).expect("dropped");
        let t = table(&rows, dropped);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("lab/s") && lines[1].contains("/a"),
            "{t}"
        );
        assert!(
            lines[1].contains(" 2 ") && lines[1].contains("50.00%"),
            "{t}"
        );
        assert!(
            lines[1].contains("2.0ms") && lines[1].contains("4.0ms"),
            "{t}"
        );
        assert!(
            lines[2].contains("/b") && lines[2].contains("100.00%"),
            "{t}"
        );
        assert!(lines[3].contains("3 requests dropped"), "{t}");
    }
}
