//! The kernel-side counters (`COUNTERS`, per CPU) on `/metrics`.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, MetricType},
    registry::Registry,
};

use super::Datapath;

/// Exposes the eBPF per-CPU counters as `hoptrace_ebpf_<name>_total`, read at
/// scrape time.
#[derive(Debug, Clone)]
pub struct KernelCounters(pub Arc<Datapath>);

impl crate::metrics::Source for KernelCounters {
    fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }
}

impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (counter, value) in self.0.counters() {
            let name = format!("ebpf_{}", counter.name());
            let metric = ConstCounter::new(value);
            let m = encoder.encode_descriptor(
                &name,
                "Kernel-side steering events (summed over CPUs)",
                None,
                MetricType::Counter,
            )?;
            metric.encode(m)?;
        }
        Ok(())
    }
}
