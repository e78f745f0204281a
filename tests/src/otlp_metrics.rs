//! The OTLP metrics side of the test receiver ([`crate::otlp::OtlpReceiver`] serves
//! it on the same port as the traces): every `MetricsService/Export` request is kept.

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use std::sync::{Arc, Mutex};

/// The metrics export requests received so far.
#[derive(Clone, Default)]
pub struct MetricsStore(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

impl MetricsStore {
    /// The gRPC service that fills this store.
    pub fn service(&self) -> MetricsServiceServer<MetricsStore> {
        MetricsServiceServer::new(self.clone())
    }

    /// Requests received.
    pub fn requests(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The latest value of the sum or gauge `name` whose data point has all of
    /// `attributes` (string values), summed over matching points of the latest
    /// request that has the metric; `None` if no request had it.
    pub fn latest(&self, name: &str, attributes: &[(&str, &str)]) -> Option<f64> {
        let requests = self.0.lock().unwrap_or_else(|e| e.into_inner());
        requests.iter().rev().find_map(|req| {
            let metrics = req
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .filter(|m| m.name == name);
            let mut found = None;
            for m in metrics {
                let points = match &m.data {
                    Some(Data::Sum(s)) => &s.data_points,
                    Some(Data::Gauge(g)) => &g.data_points,
                    _ => continue,
                };
                for p in points {
                    let matches = attributes.iter().all(|(k, v)| {
                        p.attributes.iter().any(|kv| {
                            kv.key == *k
                                && matches!(
                                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                                    Some(any_value::Value::StringValue(s)) if s == v
                                )
                        })
                    });
                    if matches {
                        let v = match p.value {
                            Some(number_data_point::Value::AsDouble(d)) => d,
                            Some(number_data_point::Value::AsInt(i)) => i as f64,
                            None => 0.0,
                        };
                        *found.get_or_insert(0.0) += v;
                    }
                }
            }
            found
        })
    }
}

#[tonic::async_trait]
impl MetricsService for MetricsStore {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}
