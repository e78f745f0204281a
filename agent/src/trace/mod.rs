//! Trace context formats and the span model.

pub mod context;
pub mod span;
