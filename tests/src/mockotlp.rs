//! A third-party OTLP/gRPC receiver for the tests: `@elastic/mockotlpserver` from
//! the npm registry (installed into `tests/collector` by `cargo xtask setup`), run
//! by `tests/collector/mockotlp.js`, which prints every span the server decoded as
//! one JSON line. Where [`crate::OtlpReceiver`] is ours (built on the official
//! protos), this one is someone else's reading of the same protocol.
//!
//! ```ignore
//! let collector = MockCollector::start()?;
//! // agents: --otlp-endpoint collector.endpoint() --otlp-compression none|gzip
//! let spans = collector.wait_for_trace(trace_id, 4, Duration::from_secs(20))?;
//! ```

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long node may take to start the server.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One span as mockotlpserver decoded it.
#[derive(Clone, Debug, Deserialize)]
pub struct MockSpan {
    /// 32 hex.
    pub trace_id: String,
    /// 16 hex.
    pub span_id: String,
    /// 16 hex or empty.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, ...
    pub kind: String,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_ERROR`, ...
    pub status: String,
    /// Span attributes (strings, numbers, booleans).
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Resource attributes.
    pub resource: BTreeMap<String, serde_json::Value>,
    /// Instrumentation scope name.
    pub scope: String,
}

impl MockSpan {
    /// A span attribute as text (numbers without quotes).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(text)
    }

    /// A resource attribute as text.
    pub fn res(&self, key: &str) -> Option<String> {
        self.resource.get(key).map(text)
    }
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<MockSpan>>,
    changed: Condvar,
}

/// The running mockotlpserver (killed on drop).
pub struct MockCollector {
    child: Child,
    endpoint: String,
    received: Arc<Received>,
}

/// `tests/collector`.
pub fn collector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("collector")
}

impl MockCollector {
    /// Starts it on a free port of 127.0.0.1 and waits until it listens.
    pub fn start() -> Result<MockCollector> {
        let dir = collector_dir();
        if !dir
            .join("node_modules/@elastic/mockotlpserver/package.json")
            .exists()
        {
            bail!(
                "@elastic/mockotlpserver is not installed in {}: run `cargo xtask setup`",
                dir.display()
            );
        }
        let mut child = Command::new("node")
            .arg(dir.join("mockotlp.js"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting node (the third-party collector runs on Node.js)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        let received = Arc::new(Received::default());
        let sink = received.clone();
        std::thread::spawn(move || {
            // The first line is the address, the rest are spans.
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for line in lines.map_while(|l| l.ok()) {
                match serde_json::from_str::<MockSpan>(&line) {
                    Ok(span) => {
                        sink.spans
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(span);
                        sink.changed.notify_all();
                    }
                    Err(e) => eprintln!("mockotlp.js: unexpected line {line:?}: {e}"),
                }
            }
        });
        let first = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                bail!("mockotlp.js did not start within {START_TIMEOUT:?}");
            }
        };
        let Some(url) = first.strip_prefix("listening ") else {
            let _ = child.kill();
            bail!("mockotlp.js: unexpected first line {first:?}");
        };
        Ok(MockCollector {
            child,
            endpoint: url.trim_end_matches('/').to_owned(),
            received,
        })
    }

    /// `http://127.0.0.1:<port>`: the agents' `--otlp-endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Waits until at least `n` spans of `trace_id` arrived; returns them.
    pub fn wait_for_trace(
        &self,
        trace_id: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<MockSpan>> {
        let deadline = Instant::now() + timeout;
        let mut spans = self
            .received
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            let found: Vec<MockSpan> = spans
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if found.len() >= n {
                return Ok(found);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "mockotlpserver at {}: {} spans of trace {trace_id} after {timeout:?} ({} spans in all), wanted {n}",
                    self.endpoint,
                    found.len(),
                    spans.len()
                );
            }
            spans = self
                .received
                .changed
                .wait_timeout(spans, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for MockCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
