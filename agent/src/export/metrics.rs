//! Every agent metric (the golden metrics included) as OTLP metrics, sent every
//! `--otlp-metrics-interval` to the collector that receives the spans, for setups
//! without a Prometheus. Off the data path: the registry is encoded as it is for a
//! scrape, read back ([`crate::metrics::text`]) and converted — counters (`_total`)
//! into cumulative monotonic sums, histograms (`_bucket`, `_sum`, `_count`) into
//! cumulative explicit-bucket histograms, the rest into gauges.
//!
//! A collector that does not take metrics (Jaeger's OTLP port answers
//! `UNIMPLEMENTED`) stops the export once, with one log line; other failures are
//! logged (once per distinct error) and counted, and the next interval tries again.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
    },
    common::v1::{InstrumentationScope, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point::Value, AggregationTemporality, Gauge, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use tonic::transport::Channel;

use crate::metrics::{text::Sample, Metrics};

/// Starts the periodic export on `channel` (the span exporter's collector).
pub fn spawn(
    channel: Channel,
    metadata: tonic::metadata::MetadataMap,
    registry: Arc<Metrics>,
    interval: Duration,
    resource: Vec<KeyValue>,
    errors: prometheus_client::metrics::counter::Counter,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = MetricsServiceClient::new(channel);
        let start = unix_nanos();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing: Option<String> = None;
        loop {
            tick.tick().await;
            let samples = match crate::metrics::text::parse(&registry.encode()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("OTLP metrics: the agent's own metrics text: {e}");
                    continue;
                }
            };
            let request = ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    resource: Some(Resource {
                        attributes: resource.clone(),
                        ..Default::default()
                    }),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(InstrumentationScope {
                            name: "hoptrace".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        metrics: to_otlp(&samples, start, unix_nanos()),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            let mut req = tonic::Request::new(request);
            *req.metadata_mut() = metadata.clone();
            req.set_timeout(interval.min(Duration::from_secs(10)));
            match client.export(req).await {
                Ok(_) => {
                    if failing.take().is_some() {
                        tracing::info!("OTLP metrics export recovered");
                    }
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        "the OTLP collector does not accept metrics ({}); metrics export stopped \
                         (scrape /metrics instead, or pass --otlp-metrics=false)",
                        status.message()
                    );
                    return;
                }
                Err(status) => {
                    errors.inc();
                    let msg = format!("{:?}: {}", status.code(), status.message());
                    if failing.as_deref() != Some(msg.as_str()) {
                        tracing::warn!("OTLP metrics export failed, retrying next interval: {msg}");
                        failing = Some(msg);
                    }
                }
            }
        }
    })
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What a family is, from its samples' names.
enum Kind {
    Sum,
    Gauge,
    Histogram,
}

/// The OTLP metrics of a scrape's samples, in the order their families appear.
pub fn to_otlp(samples: &[Sample], start_ns: u64, now_ns: u64) -> Vec<Metric> {
    let histograms: Vec<&str> = samples
        .iter()
        .filter(|s| s.labels.contains_key("le"))
        .filter_map(|s| s.name.strip_suffix("_bucket"))
        .collect();
    let family = |s: &Sample| -> (String, Kind) {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = s.name.strip_suffix(suffix) {
                if histograms.contains(&base) {
                    return (base.to_owned(), Kind::Histogram);
                }
            }
        }
        match s.name.strip_suffix("_total") {
            Some(base) => (base.to_owned(), Kind::Sum),
            None => (s.name.clone(), Kind::Gauge),
        }
    };
    let mut order: Vec<String> = Vec::new();
    let mut numbers: BTreeMap<String, (Kind, Vec<NumberDataPoint>)> = BTreeMap::new();
    // Histogram points by (family, labels without `le`).
    type Point = (Vec<(f64, f64)>, f64, u64);
    let mut buckets: BTreeMap<(String, Vec<(String, String)>), Point> = BTreeMap::new();
    for s in samples {
        let (name, kind) = family(s);
        if !order.contains(&name) {
            order.push(name.clone());
        }
        match kind {
            Kind::Histogram => {
                let labels: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let point = buckets.entry((name, labels)).or_default();
                if let Some(le) = s.labels.get("le") {
                    let bound = crate::metrics::text::parse_value(le).unwrap_or(f64::INFINITY);
                    point.0.push((bound, s.value));
                } else if s.name.ends_with("_sum") {
                    point.1 = s.value;
                } else {
                    point.2 = s.value as u64;
                }
            }
            kind => {
                numbers
                    .entry(name)
                    .or_insert_with(|| (kind, Vec::new()))
                    .1
                    .push(NumberDataPoint {
                        attributes: attributes(s.labels.iter()),
                        start_time_unix_nano: start_ns,
                        time_unix_nano: now_ns,
                        value: Some(Value::AsDouble(s.value)),
                        ..Default::default()
                    });
            }
        }
    }
    let mut hist_points: BTreeMap<String, Vec<HistogramDataPoint>> = BTreeMap::new();
    for ((name, labels), (mut cumulative, sum, count)) in buckets {
        cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut previous = 0.0;
        let bucket_counts = cumulative
            .iter()
            .map(|(_, c)| {
                let n = (c - previous).max(0.0) as u64;
                previous = *c;
                n
            })
            .collect();
        hist_points
            .entry(name)
            .or_default()
            .push(HistogramDataPoint {
                attributes: attributes(labels.iter().map(|(k, v)| (k, v))),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                count,
                sum: Some(sum),
                explicit_bounds: cumulative
                    .iter()
                    .map(|(b, _)| *b)
                    .filter(|b| b.is_finite())
                    .collect(),
                bucket_counts,
                ..Default::default()
            });
    }
    let cumulative = AggregationTemporality::Cumulative as i32;
    order
        .into_iter()
        .filter_map(|name| {
            let data = if let Some(points) = hist_points.remove(&name) {
                Data::Histogram(Histogram {
                    data_points: points,
                    aggregation_temporality: cumulative,
                })
            } else {
                match numbers.remove(&name)? {
                    (Kind::Sum, points) => Data::Sum(Sum {
                        data_points: points,
                        aggregation_temporality: cumulative,
                        is_monotonic: true,
                    }),
                    (_, points) => Data::Gauge(Gauge {
                        data_points: points,
                    }),
                }
            };
            Some(Metric {
                unit: unit(&name).into(),
                name,
                data: Some(data),
                ..Default::default()
            })
        })
        .collect()
}

/// Labels as attributes, the HTTP ones under their OpenTelemetry semantic-convention
/// names (`http.request.method`, `http.response.status_code`, `http.route`).
fn attributes<'a>(labels: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<KeyValue> {
    labels
        .map(|(k, v)| {
            let key = match k.as_str() {
                "method" => "http.request.method",
                "status_code" => "http.response.status_code",
                "route" => "http.route",
                other => other,
            };
            crate::attr::string(key, v.as_str())
        })
        .collect()
}

/// The UCUM unit of a Prometheus name's unit suffix.
fn unit(name: &str) -> &'static str {
    if name.ends_with("_seconds") {
        "s"
    } else if name.ends_with("_bytes") || name.contains("_bytes_") {
        "By"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms() {
        let text = "\
# TYPE hoptrace_http_requests counter
hoptrace_http_requests_total{route=\"/a\",outcome=\"success\"} 7
hoptrace_http_requests_total{route=\"/b\",outcome=\"failure\"} 2
# TYPE hoptrace_peer_addresses gauge
hoptrace_peer_addresses 3
# TYPE hoptrace_http_request_duration_seconds histogram
hoptrace_http_request_duration_seconds_sum{route=\"/a\"} 0.5
hoptrace_http_request_duration_seconds_count{route=\"/a\"} 7
hoptrace_http_request_duration_seconds_bucket{le=\"0.01\",route=\"/a\"} 4
hoptrace_http_request_duration_seconds_bucket{le=\"0.1\",route=\"/a\"} 6
hoptrace_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/a\"} 7
# EOF
";
        let samples = crate::metrics::text::parse(text).expect("text");
        let m = to_otlp(&samples, 1, 2);
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "hoptrace_http_requests",
                "hoptrace_peer_addresses",
                "hoptrace_http_request_duration_seconds"
            ]
        );
        match &m[0].data {
            Some(Data::Sum(s)) => {
                assert!(s.is_monotonic);
                assert_eq!(s.data_points.len(), 2);
                assert_eq!(s.data_points[0].value, Some(Value::AsDouble(7.0)));
                assert_eq!(s.data_points[0].start_time_unix_nano, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&m[1].data, Some(Data::Gauge(g)) if g.data_points.len() == 1));
        match &m[2].data {
            Some(Data::Histogram(h)) => {
                let p = &h.data_points[0];
                assert_eq!(p.explicit_bounds, [0.01, 0.1]);
                assert_eq!(p.bucket_counts, [4, 2, 1]);
                assert_eq!((p.count, p.sum), (7, Some(0.5)));
                assert_eq!(p.attributes.len(), 1, "le is not an attribute");
                assert_eq!(p.attributes[0].key, "http.route");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m[2].unit, "s");
    }
}
