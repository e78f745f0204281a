//! The golden-metric rows of `hoptrace stat` and `hoptrace edges`, computed either
//! from two scrapes of the agents (deltas over the window) or from PromQL answers,
//! and rendered as a table or JSON.

use std::collections::{BTreeMap, HashMap};

use crate::metrics::text::Sample;

/// `hoptrace_http_requests_total` (counter; `outcome` = `success` | `failure`).
pub const REQUESTS: &str = "hoptrace_http_requests_total";
/// `hoptrace_http_request_duration_seconds` (histogram).
pub const DURATION: &str = "hoptrace_http_request_duration_seconds";
/// `hoptrace_http_traced_requests_total` (counter).
pub const TRACED: &str = "hoptrace_http_traced_requests_total";
/// `hoptrace_tcp_connections_active` (gauge).
pub const TCP_ACTIVE: &str = "hoptrace_tcp_connections_active";
/// `hoptrace_pod_http_requests_total` (counter per enrolled pod; `outcome`).
pub const POD_REQUESTS: &str = "hoptrace_pod_http_requests_total";
/// `hoptrace_pod_http_request_duration_seconds` (histogram per enrolled pod).
pub const POD_DURATION: &str = "hoptrace_pod_http_request_duration_seconds";
/// `hoptrace_connections_active` (gauge per enrolled pod).
pub const POD_TCP_ACTIVE: &str = "hoptrace_connections_active";

/// What one row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Per server workload.
    Deploy,
    /// Per (server workload, route).
    Route,
    /// Per (client workload, server workload).
    Edges,
    /// Per enrolled server pod.
    Pod,
}

impl View {
    /// The labels that make a row's key.
    pub fn group(self) -> &'static [&'static str] {
        match self {
            View::Deploy => &["server_namespace", "server"],
            View::Route => &["server_namespace", "server", "route"],
            View::Edges => &["client_namespace", "client", "server_namespace", "server"],
            View::Pod => &["namespace", "pod"],
        }
    }

    /// The series a view reads: (requests counter, duration histogram, active
    /// connections gauge).
    pub fn series(self) -> (&'static str, &'static str, &'static str) {
        match self {
            View::Pod => (POD_REQUESTS, POD_DURATION, POD_TCP_ACTIVE),
            _ => (REQUESTS, DURATION, TCP_ACTIVE),
        }
    }

    fn key(self, labels: &BTreeMap<String, String>) -> Key {
        self.group()
            .iter()
            .map(|l| labels.get(*l).cloned().unwrap_or_default())
            .collect()
    }

    /// Whether a row of this key is in namespace `ns` (the server's; for edges either end).
    pub fn in_namespace(self, key: &Key, ns: &str) -> bool {
        match self {
            View::Edges => key[0] == ns || key[2] == ns,
            _ => key[0] == ns,
        }
    }
}

/// A row's key: the values of [`View::group`], in order.
pub type Key = Vec<String>;

/// The golden metrics of one row over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Requests per second.
    pub rps: f64,
    /// Successful requests per second.
    pub success_rps: f64,
    /// Latency quantiles (seconds); `None` when no request ended in the window.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Active TCP connections (deploy and pod views).
    pub tcp: Option<f64>,
    /// Whether traced requests were seen (edges view only).
    pub traced: Option<bool>,
}

impl Stats {
    /// Success rate in [0, 1]; `None` without requests.
    pub fn success(&self) -> Option<f64> {
        (self.rps > 0.0).then(|| (self.success_rps / self.rps).min(1.0))
    }
}

/// The rows of a view, sorted by key.
pub type Rows = BTreeMap<Key, Stats>;

/// A series: name and labels.
pub type Series = (String, BTreeMap<String, String>);

/// One (summed) scrape: a value per series.
pub type Scrape = HashMap<Series, f64>;

/// The inbound series stat and edges read, summed over agents (same name and labels).
pub fn sum_agents(scrapes: &[Vec<Sample>]) -> HashMap<Series, f64> {
    let buckets = [
        format!("{DURATION}_bucket"),
        format!("{POD_DURATION}_bucket"),
    ];
    let mut out = HashMap::new();
    for s in scrapes.iter().flatten() {
        let wanted = [REQUESTS, TRACED, TCP_ACTIVE, POD_REQUESTS, POD_TCP_ACTIVE]
            .contains(&s.name.as_str())
            || buckets.contains(&s.name);
        if wanted && s.labels.get("direction").map(String::as_str) == Some("inbound") {
            *out.entry((s.name.clone(), s.labels.clone())).or_insert(0.0) += s.value;
        }
    }
    out
}

/// The rows from two summed scrapes `secs` apart. Counters: the increase (a series
/// absent before counts from 0; one that went down was reset and counts from 0, as
/// Prometheus' `rate`); gauges: the later value.
pub fn from_scrapes(
    view: View,
    before: &HashMap<Series, f64>,
    after: &HashMap<Series, f64>,
    secs: f64,
) -> Rows {
    let (requests, duration, tcp_active) = view.series();
    let bucket = format!("{duration}_bucket");
    let mut rows = Rows::new();
    let mut buckets: BTreeMap<Key, BTreeMap<String, f64>> = BTreeMap::new();
    for ((name, labels), now) in after {
        let prev = before.get(&(name.clone(), labels.clone())).copied();
        let delta = match prev {
            Some(p) if p <= *now => now - p,
            _ => *now,
        };
        let key = view.key(labels);
        if name == requests {
            let row = rows.entry(key).or_default();
            row.rps += delta / secs;
            if labels.get("outcome").map(String::as_str) == Some("success") {
                row.success_rps += delta / secs;
            }
        } else if *name == bucket {
            let le = labels.get("le").cloned().unwrap_or_default();
            *buckets.entry(key).or_default().entry(le).or_insert(0.0) += delta;
        } else if name == TRACED && view == View::Edges {
            let row = rows.entry(key).or_default();
            row.traced = Some(row.traced.unwrap_or(false) || delta > 0.0);
        } else if name == tcp_active && matches!(view, View::Deploy | View::Pod) {
            let row = rows.entry(key).or_default();
            *row.tcp.get_or_insert(0.0) += now;
        }
    }
    for (key, les) in buckets {
        let mut b: Vec<(f64, f64)> = les
            .into_iter()
            .filter_map(|(le, n)| Some((crate::metrics::text::parse_value(&le)?, n)))
            .collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let row = rows.entry(key).or_default();
        row.p50 = histogram_quantile(0.5, &b);
        row.p95 = histogram_quantile(0.95, &b);
        row.p99 = histogram_quantile(0.99, &b);
    }
    if view == View::Edges {
        for row in rows.values_mut() {
            row.traced.get_or_insert(false);
        }
    }
    rows
}

/// The `q` quantile of cumulative buckets `(upper bound, count)` sorted by bound, as
/// Prometheus' `histogram_quantile` computes it: linear interpolation inside the
/// bucket that holds the rank (from 0 for the first bucket when its bound is
/// positive); the lowest bucket's bound when it is ≤ 0; the highest finite bound
/// when the rank falls in `+Inf`. `None` (Prometheus: NaN) without a `+Inf` bucket,
/// with fewer than two buckets or with no observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) || buckets.len() < 2 {
        return None;
    }
    // Counts made monotonic (rates of buckets scraped at different instants can dip).
    let mut counts = Vec::with_capacity(buckets.len());
    let mut max = f64::NEG_INFINITY;
    for &(_, c) in buckets {
        max = max.max(c);
        counts.push(max);
    }
    let total = counts[counts.len() - 1];
    if total <= 0.0 || total.is_nan() {
        return None;
    }
    let mut rank = q * total;
    let b = counts[..counts.len() - 1]
        .iter()
        .position(|c| *c >= rank)
        .unwrap_or(counts.len() - 1);
    if b == buckets.len() - 1 {
        return Some(buckets[b - 1].0);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return Some(buckets[0].0);
    }
    let end = buckets[b].0;
    let (start, mut count) = (0.0, counts[b]);
    let start = if b > 0 {
        count -= counts[b - 1];
        rank -= counts[b - 1];
        buckets[b - 1].0
    } else {
        start
    };
    Some(start + (end - start) * (rank / count))
}

/// What a PromQL answer fills in a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Field {
    /// [`Stats::rps`].
    Rps,
    /// [`Stats::success_rps`].
    SuccessRps,
    /// [`Stats::p50`] etc. (the quantile).
    Quantile(f64),
    /// [`Stats::tcp`].
    Tcp,
    /// [`Stats::traced`] (the increase of the traced counter).
    Traced,
}

/// The PromQL instant queries of a view over `range` (a PromQL duration, `60s`).
pub fn promql(view: View, range: &str) -> Vec<(Field, String)> {
    let by = view.group().join(", ");
    let (requests, duration, tcp_active) = view.series();
    let inbound = "direction=\"inbound\"";
    let mut out = vec![
        (
            Field::Rps,
            format!("sum by ({by}) (rate({requests}{{{inbound}}}[{range}]))"),
        ),
        (
            Field::SuccessRps,
            format!("sum by ({by}) (rate({requests}{{{inbound}, outcome=\"success\"}}[{range}]))"),
        ),
    ];
    let quantiles: &[f64] = if view == View::Edges {
        &[0.99]
    } else {
        &[0.5, 0.95, 0.99]
    };
    for q in quantiles {
        out.push((
            Field::Quantile(*q),
            format!(
                "histogram_quantile({q}, sum by ({by}, le) \
                 (rate({duration}_bucket{{{inbound}}}[{range}])))"
            ),
        ));
    }
    match view {
        View::Deploy | View::Pod => out.push((
            Field::Tcp,
            format!("sum by ({by}) ({tcp_active}{{{inbound}}})"),
        )),
        View::Edges => out.push((
            Field::Traced,
            format!("sum by ({by}) (increase({TRACED}{{{inbound}}}[{range}]))"),
        )),
        View::Route => {}
    }
    out
}

/// Fills `rows` with one query's answer.
pub fn fill(view: View, rows: &mut Rows, field: Field, answer: &[super::query::Element]) {
    for (labels, value) in answer {
        let row = rows.entry(view.key(labels)).or_default();
        let value = *value;
        let finite = (!value.is_nan()).then_some(value);
        match field {
            Field::Rps => row.rps = value,
            Field::SuccessRps => row.success_rps = value,
            Field::Quantile(0.5) => row.p50 = finite,
            Field::Quantile(0.95) => row.p95 = finite,
            Field::Quantile(_) => row.p99 = finite,
            Field::Tcp => row.tcp = Some(value),
            Field::Traced => row.traced = Some(value > 0.0),
        }
    }
    if view == View::Edges {
        for row in rows.values_mut() {
            row.traced.get_or_insert(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::text::parse;

    const INF: f64 = f64::INFINITY;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [
            (0.005, 0.0),
            (0.01, 5.0),
            (0.025, 9.0),
            (0.05, 10.0),
            (0.1, 10.0),
            (0.25, 10.0),
            (0.5, 12.0),
            (INF, 12.0),
        ];
        assert!(close(histogram_quantile(0.5, &b), 0.01375));
        assert!(close(histogram_quantile(0.95, &b), 0.425));
        assert!(close(histogram_quantile(0.99, &b), 0.485));
        // In the first bucket: from 0.
        assert!(close(
            histogram_quantile(0.5, &[(0.005, 5.0), (INF, 5.0)]),
            0.0025
        ));
        // In +Inf: the highest finite bound.
        assert!(close(
            histogram_quantile(0.99, &[(0.1, 1.0), (INF, 10.0)]),
            0.1
        ));
        // A first bound ≤ 0 is returned as is.
        assert!(close(
            histogram_quantile(0.1, &[(0.0, 5.0), (INF, 5.0)]),
            0.0
        ));
        // Counts made monotonic.
        assert!(close(
            histogram_quantile(0.5, &[(1.0, 4.0), (2.0, 3.0), (INF, 4.0)]),
            0.5
        ));
        assert_eq!(histogram_quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(0.1, 1.0), (1.0, 1.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(INF, 1.0)]), None);
    }

    const BEFORE: &str = r#"# TYPE hoptrace_http_requests counter
hoptrace_http_requests_total{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",method="GET",status_code="200",outcome="success"} 100
hoptrace_http_requests_total{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",method="GET",status_code="500",outcome="failure"} 50
hoptrace_http_requests_total{direction="outbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",method="GET",status_code="200",outcome="success"} 100
hoptrace_http_request_duration_seconds_bucket{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",outcome="success",le="0.01"} 10
hoptrace_http_request_duration_seconds_bucket{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",outcome="success",le="+Inf"} 100
hoptrace_http_traced_requests_total{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web"} 7
hoptrace_tcp_connections_active{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web"} 9
# EOF
"#;

    /// 10 s later: /a +18 successes, +2 failures (one new series), buckets +20;
    /// a second agent adds /b; traced unchanged; the failure counter was reset.
    const AFTER: &str = r#"hoptrace_http_requests_total{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",method="GET",status_code="200",outcome="success"} 118
hoptrace_http_requests_total{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",method="GET",status_code="500",outcome="failure"} 1
hoptrace_http_requests_total{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",method="GET",status_code="0",outcome="failure"} 1
hoptrace_http_requests_total{direction="outbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",method="GET",status_code="200",outcome="success"} 1000
hoptrace_http_request_duration_seconds_bucket{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",outcome="success",le="0.01"} 20
hoptrace_http_request_duration_seconds_bucket{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web",route="/a",outcome="success",le="+Inf"} 120
hoptrace_http_traced_requests_total{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web"} 7
hoptrace_tcp_connections_active{direction="inbound",client_namespace="lab",client="client",server_namespace="lab",server="web"} 3
# EOF
"#;

    const SECOND_AGENT: &str = r#"hoptrace_http_requests_total{direction="inbound",client_namespace="lab",client="other",server_namespace="lab",server="web",route="/b",method="GET",status_code="200",outcome="success"} 10
hoptrace_tcp_connections_active{direction="inbound",client_namespace="lab",client="other",server_namespace="lab",server="web"} 1
# EOF
"#;

    fn scrapes() -> (HashMap<Series, f64>, HashMap<Series, f64>) {
        let before = parse(BEFORE).expect("before");
        let after = parse(AFTER).expect("after");
        let second = parse(SECOND_AGENT).expect("second");
        (sum_agents(&[before]), sum_agents(&[after, second]))
    }

    #[test]
    fn deltas_make_rates() {
        let (before, after) = scrapes();
        let key = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Key>();
        let rows = from_scrapes(View::Deploy, &before, &after, 10.0);
        assert_eq!(rows.len(), 1);
        let web = &rows[&key(&["lab", "web"])];
        // 18 + 1 (reset) + 1 (new) + 10 (second agent, new) in 10 s.
        assert!((web.rps - 3.0).abs() < 1e-9, "{web:?}");
        assert!((web.success_rps - 2.8).abs() < 1e-9, "{web:?}");
        assert_eq!(web.tcp, Some(4.0));
        // 20 observations, 10 ≤ 10 ms: the median is the 10 ms bound.
        assert!(close(web.p50, 0.01), "{web:?}");
        assert!(close(web.p99, 0.01), "highest finite bound: {web:?}");
        assert_eq!(web.traced, None);

        let rows = from_scrapes(View::Route, &before, &after, 10.0);
        assert_eq!(rows.len(), 2);
        assert!((rows[&key(&["lab", "web", "/a"])].rps - 2.0).abs() < 1e-9);
        assert!((rows[&key(&["lab", "web", "/b"])].rps - 1.0).abs() < 1e-9);
        assert_eq!(rows[&key(&["lab", "web", "/b"])].p50, None);

        let rows = from_scrapes(View::Edges, &before, &after, 10.0);
        let edge = &rows[&key(&["lab", "client", "lab", "web"])];
        assert_eq!(edge.traced, Some(false), "no traced request in the window");
        assert_eq!(
            rows[&key(&["lab", "other", "lab", "web"])].traced,
            Some(false)
        );
        assert!(View::Edges.in_namespace(&key(&["x", "a", "lab", "b"]), "lab"));
        assert!(!View::Deploy.in_namespace(&key(&["x", "a"]), "lab"));
    }

    #[test]
    fn promql_answers_fill_rows() {
        let queries = promql(View::Deploy, "60000ms");
        assert_eq!(
            queries[0].1,
            "sum by (server_namespace, server) \
             (rate(hoptrace_http_requests_total{direction=\"inbound\"}[60000ms]))"
        );
        assert!(queries.iter().any(|(_, q)| q
            == "histogram_quantile(0.95, sum by (server_namespace, server, le) \
                (rate(hoptrace_http_request_duration_seconds_bucket{direction=\"inbound\"}[60000ms])))"));
        let labels = |s: &str| {
            [("server_namespace", "lab"), ("server", s)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let mut rows = Rows::new();
        fill(View::Edges, &mut rows, Field::Rps, &[(labels("web"), 2.0)]);
        fill(
            View::Edges,
            &mut rows,
            Field::Quantile(0.99),
            &[(labels("web"), f64::NAN)],
        );
        let row = rows.values().next().expect("row");
        assert_eq!((row.rps, row.p99, row.traced), (2.0, None, Some(false)));
    }
}
