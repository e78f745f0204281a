use super::*;
use crate::attr;
use crate::{
    trace::{
        context::{SpanId, TraceId},
        span::{Kind, PodIdentity, SpanParts, Status, HAS_IS_REMOTE, IS_REMOTE},
    },
    workloads::PodKey,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tonic::Code;

fn pod(name: &str) -> Arc<PodIdentity> {
    Arc::new(PodIdentity {
        key: PodKey {
            namespace: "ns".into(),
            name: name.into(),
        },
        resource: Default::default(),
    })
}

fn parts(attr_len: usize, parent: Option<SpanId>) -> SpanParts {
    SpanParts {
        trace_id: TraceId([1; 16]),
        span_id: SpanId([2; 8]),
        parent,
        flags: 1,
        kind: Kind::Server,
        name: "GET".into(),
        start: std::time::SystemTime::UNIX_EPOCH,
        end: std::time::SystemTime::UNIX_EPOCH,
        attributes: vec![attr::string("user_agent.original", "u".repeat(attr_len))],
        status: Status::Unset,
    }
}

fn span(pod: &Arc<PodIdentity>, attr_len: usize, parent: Option<SpanId>) -> ProxySpan {
    ProxySpan {
        pod: pod.clone(),
        span: parts(attr_len, parent).into_otlp(),
    }
}

fn decode(e: &Encoded) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(e.bytes.clone()).expect("a valid request")
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "hoptrace".into(),
        ..Default::default()
    }
}

#[test]
fn classification_follows_the_otlp_retry_rules() {
    let c = |code| classify(&tonic::Status::new(code, "x"));
    for code in [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Cancelled,
        Code::Aborted,
        Code::OutOfRange,
        Code::DataLoss,
    ] {
        assert_eq!(c(code), Retry::Always, "{code:?}");
    }
    for code in [
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::Unimplemented,
    ] {
        assert_eq!(c(code), Retry::Never, "{code:?}");
    }
    assert_eq!(c(Code::Unknown), Retry::Few);
    assert_eq!(c(Code::Internal), Retry::Few);
    assert_eq!(c(Code::ResourceExhausted), Retry::Few);
    // Too large: permanent, whatever the code.
    let big = tonic::Status::new(
        Code::ResourceExhausted,
        "grpc: received message larger than max (5242880 vs. 4194304)",
    );
    assert_eq!(classify(&big), Retry::Never);
    let big = tonic::Status::new(
        Code::OutOfRange,
        "Error, decoded message length too large: found 5242880 bytes, the limit is: 4194304 bytes",
    );
    assert_eq!(classify(&big), Retry::Never);
}

#[test]
fn requests_stay_below_the_size_limit() {
    let p = pod("a");
    let spans: Vec<ProxySpan> = (0..1000).map(|_| span(&p, 2048, None)).collect();
    let requests = encode(spans, &scope(), MAX_REQUEST_BYTES);
    assert!(requests.len() > 1);
    assert_eq!(requests.iter().map(|r| r.spans).sum::<usize>(), 1000);
    for r in &requests {
        assert!(r.bytes.len() <= MAX_REQUEST_BYTES, "{}", r.bytes.len());
        let spans: usize = decode(r).resource_spans[0].scope_spans[0].spans.len();
        assert_eq!(spans, r.spans);
    }
    // Small spans: one request.
    let small: Vec<ProxySpan> = (0..512).map(|_| span(&p, 10, None)).collect();
    assert_eq!(encode(small, &scope(), MAX_REQUEST_BYTES).len(), 1);
    // A span over the limit on its own still goes (alone).
    let huge = vec![
        span(&p, 10, None),
        span(&p, MAX_REQUEST_BYTES, None),
        span(&p, 10, None),
    ];
    let counts: Vec<usize> = encode(huge, &scope(), MAX_REQUEST_BYTES)
        .iter()
        .map(|r| r.spans)
        .collect();
    assert_eq!(counts, [1, 1, 1]);
    assert!(encode(Vec::new(), &scope(), MAX_REQUEST_BYTES).is_empty());
}

#[test]
fn one_resource_per_pod_in_one_request() {
    let (a, b) = (pod("a"), pod("b"));
    let batch = vec![
        span(&a, 1, None),
        span(&b, 1, None),
        span(&a, 1, None),
        span(&b, 1, None),
        span(&a, 1, None),
    ];
    let requests = encode(batch, &scope(), MAX_REQUEST_BYTES);
    assert_eq!(requests.len(), 1);
    let message = decode(&requests[0]);
    let rs = &message.resource_spans;
    assert_eq!(rs.len(), 2);
    let counts: Vec<usize> = rs.iter().map(|r| r.scope_spans[0].spans.len()).collect();
    assert_eq!(counts, [3, 2]);
    assert_eq!(
        rs[0].scope_spans[0].scope.as_ref().map(|s| s.name.as_str()),
        Some("hoptrace")
    );
}

#[test]
fn span_fields() {
    let root = parts(1, None).into_otlp();
    assert!(root.parent_span_id.is_empty(), "a root span has no parent");
    assert_eq!(root.flags, 1 | HAS_IS_REMOTE);
    let child = parts(1, Some(SpanId([9; 8]))).into_otlp();
    assert_eq!(child.parent_span_id, vec![9; 8]);
    assert_eq!(
        child.flags,
        1 | HAS_IS_REMOTE | IS_REMOTE,
        "SERVER: remote parent"
    );
    assert_eq!(child.kind, SpanKind::Server as i32);
    assert_eq!(child.trace_id, vec![1; 16]);
}

#[test]
fn retry_waits_grow_with_jitter_up_to_the_cap() {
    let waits: Vec<Duration> = retry_delays().take(12).collect();
    assert_eq!(waits.len(), 12, "retries never run out");
    assert!(
        waits[0] >= RETRY_FIRST && waits[0] < RETRY_FIRST * 2,
        "{waits:?}"
    );
    assert!(waits[2] >= RETRY_FIRST * 4, "doubles: {waits:?}");
    for w in &waits {
        assert!(*w < RETRY_MAX * 2, "capped: {waits:?}");
    }
    assert!(waits[11] >= RETRY_MAX, "reaches the cap: {waits:?}");
    // Jitter: two agents retrying do not wait the same.
    let other: Vec<Duration> = retry_delays().take(12).collect();
    assert_ne!(waits, other);
}
