//! One request's observation: created at the request head ([`super::Edge::request`]),
//! carried by the response body, recorded exactly once when dropped.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http::{Method, StatusCode};

use super::{Edge, TapEvent};

/// One request, recorded exactly once: when it is dropped (the response body done,
/// or the exchange abandoned, which counts as a failure unless the response had
/// completed).
#[derive(Debug)]
pub struct RequestObservation {
    edge: Edge,
    /// The raw path, when the request started while someone tapped.
    tap_path: Option<String>,
    /// The trace id, when traced and tapped.
    trace_id: Option<String>,
    route: Arc<str>,
    method: &'static str,
    grpc: bool,
    start: Instant,
    status: Option<StatusCode>,
    /// When the response head arrived, after `start`.
    headers_after: Option<Duration>,
    grpc_status: Option<i64>,
    response_bytes: u64,
    complete: bool,
}

impl RequestObservation {
    pub(super) fn new(
        edge: Edge,
        route: Arc<str>,
        method: &'static str,
        grpc: bool,
        tap_path: Option<String>,
    ) -> Self {
        Self {
            tap_path,
            trace_id: None,
            edge,
            route,
            method,
            grpc,
            start: Instant::now(),
            status: None,
            headers_after: None,
            grpc_status: None,
            response_bytes: 0,
            complete: false,
        }
    }

    /// The route (shared with the span layer: `http.route`).
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// The request carries trace context the agent records spans for; `trace_id`
    /// (its hex form) is asked for only while someone taps.
    pub fn traced(&mut self, trace_id: impl FnOnce() -> String) {
        let (g, labels) = (&self.edge.golden, &self.edge.labels);
        self.edge.series().traced(g, labels).inc();
        if self.tap_path.is_some() {
            self.trace_id = Some(trace_id());
        }
    }

    /// The response head arrived (or the proxy answered itself) with `status`;
    /// `grpc_status` from a trailers-only response.
    pub fn response(&mut self, status: StatusCode, grpc_status: Option<i64>) {
        self.status = Some(status);
        self.headers_after = Some(self.start.elapsed());
        self.grpc_status = grpc_status;
        // A `101` ends the HTTP exchange (the upgraded bytes are relayed opaquely); a
        // proxy-made answer has no upstream body to wait for.
        if status == StatusCode::SWITCHING_PROTOCOLS {
            self.complete = true;
        }
    }

    /// `grpc-status` from the trailers.
    pub fn trailers(&mut self, grpc_status: Option<i64>) {
        if grpc_status.is_some() {
            self.grpc_status = grpc_status;
        }
    }

    /// Response body bytes handed downstream.
    pub fn response_data(&mut self, n: usize) {
        self.response_bytes += n as u64;
    }

    /// The response body ended normally.
    pub fn complete(&mut self) {
        self.complete = true;
    }

    fn outcome(&self) -> &'static str {
        let status = self.status.map_or(0, |s| s.as_u16());
        let grpc_failed = self.grpc && self.grpc_status.is_some_and(|g| g != 0);
        let no_grpc_status = self.grpc && self.grpc_status.is_none() && self.complete;
        if status == 0 || status >= 500 || grpc_failed || no_grpc_status || !self.complete {
            "failure"
        } else {
            "success"
        }
    }
}

impl Drop for RequestObservation {
    fn drop(&mut self) {
        let g = &self.edge.golden;
        if !g.enabled && self.tap_path.is_none() {
            return;
        }
        let outcome = self.outcome();
        let elapsed: Duration = self.start.elapsed();
        if g.enabled {
            let status = self.status.map_or(0, |s| s.as_u16());
            let mut cache = self.edge.series();
            let series = cache.request(
                g,
                &self.edge.labels,
                &self.route,
                self.method,
                status,
                outcome,
            );
            series.requests.inc();
            if let Some(headers) = self.headers_after {
                series
                    .headers(g, &self.edge.labels)
                    .observe(headers.as_secs_f64());
            }
            series.latency.observe(elapsed.as_secs_f64());
            if self.response_bytes > 0 {
                cache
                    .response_bytes(g, &self.edge.labels)
                    .inc_by(self.response_bytes);
            }
            drop(cache);
            if let Some(pod) = &self.edge.pod {
                match outcome {
                    "success" => pod.success.inc(),
                    _ => pod.failure.inc(),
                };
                pod.latency.observe(elapsed.as_secs_f64());
            }
        }
        if let Some(path) = self.tap_path.take() {
            let l = &self.edge.labels;
            g.tap.publish(TapEvent {
                ts_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                direction: l.direction,
                client_namespace: l.client_namespace.0.clone(),
                client: l.client.0.clone(),
                server_namespace: l.server_namespace.0.clone(),
                server: l.server.0.clone(),
                method: self.method,
                path,
                route: self.route.clone(),
                status: self.status.map_or(0, |s| s.as_u16()),
                grpc_status: self.grpc_status.filter(|_| self.grpc),
                outcome,
                latency_ms: elapsed.as_secs_f64() * 1000.0,
                trace_id: self.trace_id.take(),
            });
        }
    }
}

/// The method as a bounded label: the RFC 9110 methods and PATCH, else `_OTHER`
/// (the OpenTelemetry HTTP conventions' value).
pub(super) fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}
