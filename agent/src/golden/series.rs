//! The request series of one connection, resolved once. A connection's requests
//! repeat a few (route, method, status, outcome) combinations, while every family
//! lookup hashes the whole label set (the edge's four names, the route, ...) under the
//! family's lock: four lookups per request were 4–5 % of the agent's CPU on a busy
//! hop. The edge and route series are never removed, so a kept handle stays the
//! registered one.

use std::sync::Arc;

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

use super::{EdgeLabels, Golden, LatencyLabels, Name, RequestLabels};

/// Combinations kept per connection; past that the oldest is replaced.
const KEPT: usize = 8;

/// One connection's resolved series (shared by its requests).
#[derive(Debug, Default)]
pub(super) struct SeriesCache {
    traced: Option<Counter>,
    response_bytes: Option<Counter>,
    requests: Vec<RequestSeries>,
    /// Where the next new combination goes once `requests` is full.
    next: usize,
}

/// The series of one (route, method, status, outcome) on the connection's edge.
#[derive(Debug)]
pub(super) struct RequestSeries {
    route: Arc<str>,
    method: &'static str,
    status: u16,
    outcome: &'static str,
    /// `http_requests`.
    pub requests: Counter,
    /// `http_request_duration_seconds`.
    pub latency: Histogram,
    /// `http_response_headers_duration_seconds`, once a request had a response head
    /// (a series appears only when it has something to show).
    headers: Option<Histogram>,
}

impl RequestSeries {
    /// `http_response_headers_duration_seconds`.
    pub fn headers(&mut self, g: &Golden, edge: &EdgeLabels) -> &Histogram {
        let (route, outcome) = (&self.route, self.outcome);
        self.headers.get_or_insert_with(|| {
            g.headers_latency
                .get_or_create(&LatencyLabels {
                    edge: edge.clone(),
                    route: Name(route.clone()),
                    outcome,
                })
                .clone()
        })
    }
}

impl SeriesCache {
    /// `http_traced_requests` of the edge.
    pub fn traced(&mut self, g: &Golden, edge: &EdgeLabels) -> &Counter {
        self.traced
            .get_or_insert_with(|| g.traced.get_or_create(edge).clone())
    }

    /// `http_response_body_bytes` of the edge.
    pub fn response_bytes(&mut self, g: &Golden, edge: &EdgeLabels) -> &Counter {
        self.response_bytes
            .get_or_insert_with(|| g.response_bytes.get_or_create(edge).clone())
    }

    /// The series of one request's labels.
    pub fn request(
        &mut self,
        g: &Golden,
        edge: &EdgeLabels,
        route: &Arc<str>,
        method: &'static str,
        status: u16,
        outcome: &'static str,
    ) -> &mut RequestSeries {
        // Routes are compared by pointer only: the route table gives a server's
        // template one `Arc` (the connection's server is fixed), so an equal route in
        // another `Arc` is rare (a server forgotten and seen again), and costs only a
        // second entry here resolving to the same registered series. Comparing the
        // strings made a connection whose paths change pay a `memcmp` per kept entry.
        let found = self.requests.iter().position(|s| {
            Arc::ptr_eq(&s.route, route)
                && s.status == status
                && s.method == method
                && s.outcome == outcome
        });
        if let Some(i) = found {
            return &mut self.requests[i];
        }
        let requests = g
            .requests
            .get_or_create(&RequestLabels {
                edge: edge.clone(),
                route: Name(route.clone()),
                method,
                status_code: status,
                outcome,
            })
            .clone();
        let latency = LatencyLabels {
            edge: edge.clone(),
            route: Name(route.clone()),
            outcome,
        };
        let series = RequestSeries {
            route: route.clone(),
            method,
            status,
            outcome,
            requests,
            latency: g.latency.get_or_create(&latency).clone(),
            headers: None,
        };
        let i = if self.requests.len() < KEPT {
            self.requests.push(series);
            self.requests.len() - 1
        } else {
            let i = self.next;
            self.next = (self.next + 1) % KEPT;
            self.requests[i] = series;
            i
        };
        &mut self.requests[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(server: &str) -> EdgeLabels {
        let n = |s: &str| Name(Arc::from(s));
        EdgeLabels {
            direction: "inbound",
            client_namespace: n("ns"),
            client: n("a"),
            server_namespace: n("ns"),
            server: n(server),
        }
    }

    /// A kept handle is the family's own series, and more combinations than are kept
    /// still count where they belong.
    #[test]
    fn kept_series_are_the_registered_ones() {
        let g = Golden::default();
        let e = edge("b");
        let mut cache = SeriesCache::default();
        for i in 0..(KEPT as u16 + 3) {
            for _ in 0..2 {
                let route: Arc<str> = Arc::from(format!("/r{i}"));
                cache
                    .request(&g, &e, &route, "GET", 200, "success")
                    .requests
                    .inc();
            }
        }
        cache.traced(&g, &e).inc();
        cache.traced(&g, &e).inc();
        let count = |route: &str| {
            g.requests
                .get_or_create(&RequestLabels {
                    edge: e.clone(),
                    route: Name(Arc::from(route)),
                    method: "GET",
                    status_code: 200,
                    outcome: "success",
                })
                .get()
        };
        for i in 0..(KEPT + 3) {
            assert_eq!(count(&format!("/r{i}")), 2, "/r{i}");
        }
        assert_eq!(g.traced.get_or_create(&e).get(), 2);
        assert_eq!(cache.requests.len(), KEPT);
    }

    /// An equal route in another `Arc` (a server forgotten and seen again) gets an
    /// entry of its own, resolving to the same registered series.
    #[test]
    fn an_equal_route_elsewhere_counts_in_the_same_series() {
        let g = Golden::default();
        let e = edge("b");
        let mut cache = SeriesCache::default();
        for _ in 0..2 {
            let route: Arc<str> = Arc::from("/same");
            cache
                .request(&g, &e, &route, "GET", 200, "success")
                .requests
                .inc();
        }
        let got = g
            .requests
            .get_or_create(&RequestLabels {
                edge: e.clone(),
                route: Name(Arc::from("/same")),
                method: "GET",
                status_code: 200,
                outcome: "success",
            })
            .get();
        assert_eq!(got, 2);
    }
}
