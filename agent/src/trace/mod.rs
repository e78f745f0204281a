//! Tracing: trace-context formats (`context`), the span model (`span`), the span
//! layer of an HTTP request leg (`http`) and its attributes (`attrs`), spans'
//! protobuf encoding (`wire`) and the queue to the exporter (`queue`).

mod attrs;
pub mod context;
pub mod http;
pub mod queue;
pub mod span;
pub mod wire;
