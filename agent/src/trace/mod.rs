//! Tracing: trace-context formats (`context`), the span model and the queue to the
//! exporter (`span`), and the span layer of an HTTP request leg (`http`).

pub mod context;
pub mod http;
pub mod span;
