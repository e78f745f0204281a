//! OTLP attribute constructors (span attributes and pod resources).

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

/// A string attribute.
pub fn string(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

/// An integer attribute.
pub fn int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}
