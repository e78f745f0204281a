//! Parsed `/metrics` scrapes, with the agent's own parser (`hoptrace::metrics::text`, the
//! one `hoptrace stat --agent` uses) for the Prometheus text exposition format and the
//! OpenMetrics text the `prometheus-client` crate emits.

use crate::LAB_NAMESPACE;
use anyhow::Result;
use std::collections::BTreeMap;

/// Connections accepted by the agent's listeners.
pub const ACCEPTED: &str = "hoptrace_connections_accepted_total";
/// Connections currently proxied.
pub const ACTIVE: &str = "hoptrace_connections_active";
/// Connections that failed in the agent.
pub const FAILED: &str = "hoptrace_connections_failed_total";

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name as exposed (e.g. with `_total`).
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A parsed `/metrics` scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses exposition text; `#` lines (HELP, TYPE, EOF) are skipped.
    pub fn parse(text: &str) -> Result<Metrics> {
        let samples = hoptrace::metrics::text::parse(text)
            .map_err(|e| anyhow::anyhow!("metrics {e}"))?
            .into_iter()
            .map(|s| Sample {
                name: s.name,
                labels: s.labels,
                value: s.value,
            })
            .collect();
        Ok(Metrics { samples })
    }

    /// All samples in exposition order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Sum of the samples called `name` whose labels include all of `labels`;
    /// `None` when there is no such sample.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.name == name) {
            if labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// Like [`Metrics::get`], with 0 for "no such sample" (a counter never incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    fn conn(&self, name: &str, direction: &str, pod: &str) -> f64 {
        self.value(
            name,
            &[
                ("direction", direction),
                ("namespace", LAB_NAMESPACE),
                ("pod", pod),
            ],
        )
    }

    /// `hoptrace_connections_accepted_total{direction,namespace="lab",pod}`.
    pub fn accepted(&self, direction: &str, pod: &str) -> f64 {
        self.conn(ACCEPTED, direction, pod)
    }

    /// `hoptrace_connections_active{direction,namespace="lab",pod}`.
    pub fn active(&self, direction: &str, pod: &str) -> f64 {
        self.conn(ACTIVE, direction, pod)
    }

    /// `hoptrace_connections_failed_total{direction,namespace="lab",pod}`.
    pub fn failed(&self, direction: &str, pod: &str) -> f64 {
        self.conn(FAILED, direction, pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP hoptrace_connections_accepted Connections accepted.
# TYPE hoptrace_connections_accepted counter
hoptrace_connections_accepted_total{direction="outbound",namespace="lab",pod="client"} 3
hoptrace_connections_accepted_total{direction="inbound",namespace="lab",pod="server"} 2 1700000000000
hoptrace_connections_accepted_total{pod="x",namespace="other",direction="inbound",} 1.5e1
hoptrace_connections_active{direction="outbound",namespace="lab",pod="client"} 0
weird{path="a\"b\\c\nd"} +Inf
up 1
# EOF
"#;

    #[test]
    fn parses_prometheus_text() {
        let m = Metrics::parse(TEXT).expect("parse");
        assert_eq!(m.samples().len(), 6);
        assert_eq!(m.accepted("outbound", "client"), 3.0);
        assert_eq!(m.accepted("inbound", "server"), 2.0);
        assert_eq!(m.accepted("inbound", "client"), 0.0);
        assert_eq!(m.get(ACCEPTED, &[("direction", "inbound")]), Some(17.0));
        assert_eq!(m.get(ACCEPTED, &[]), Some(20.0));
        assert_eq!(m.active("outbound", "client"), 0.0);
        assert_eq!(m.get(ACTIVE, &[("pod", "client")]), Some(0.0));
        assert_eq!(m.get(FAILED, &[]), None);
        assert_eq!(m.value("up", &[]), 1.0);
        let weird = &m.samples()[4];
        assert_eq!(weird.labels["path"], "a\"b\\c\nd");
        assert!(weird.value.is_infinite());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Metrics::parse("foo{bar=\"x} 1").is_err());
        assert!(Metrics::parse("foo notanumber").is_err());
        assert!(Metrics::parse("foo").is_err());
    }
}
