use super::*;
use crate::{
    trace::{
        context::{SpanId, TraceId},
        span::{Kind, PodIdentity, SpanParts, Status, HAS_IS_REMOTE, IS_REMOTE},
        wire::Attributes,
    },
    workloads::PodKey,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    trace::v1::{span::SpanKind, ScopeSpans, Span},
};
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

/// One span with a `user_agent.original` of `attr_len` bytes, encoded.
fn encoded(attr_len: usize, parent: Option<SpanId>) -> Vec<u8> {
    let mut attributes = Attributes::default();
    attributes.string("user_agent.original", &"u".repeat(attr_len));
    let parts = SpanParts {
        trace_id: TraceId([1; 16]),
        span_id: SpanId([2; 8]),
        parent,
        flags: 1,
        kind: Kind::Server,
        name: "GET",
        start: crate::trace::span::UnixNanos::EPOCH,
        end: crate::trace::span::UnixNanos::EPOCH,
        status: &Status::Unset,
    };
    let mut out = Vec::new();
    parts.encode([&attributes, &Attributes::default()], &mut out);
    out
}

fn span(pod: &Arc<PodIdentity>, attr_len: usize, parent: Option<SpanId>) -> PodSpans {
    PodSpans {
        pod: pod.clone(),
        count: 1,
        bytes: encoded(attr_len, parent),
    }
}

fn decode(e: &Encoded) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(&e.parts.to_vec()[..]).expect("a valid request")
}

fn scope() -> Arc<[u8]> {
    InstrumentationScope {
        name: "hoptrace".into(),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

const LIMITS: Limits = Limits {
    bytes: MAX_REQUEST_BYTES,
    spans: 512,
};

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
    let spans: Vec<PodSpans> = (0..1000).map(|_| span(&p, 2048, None)).collect();
    let requests = encode(spans, &scope(), LIMITS);
    assert!(requests.len() > 1);
    assert_eq!(requests.iter().map(|r| r.spans).sum::<usize>(), 1000);
    for r in &requests {
        assert!(r.parts.len <= MAX_REQUEST_BYTES, "{}", r.parts.len);
        let spans: usize = decode(r).resource_spans[0].scope_spans[0].spans.len();
        assert_eq!(spans, r.spans);
    }
    // Small spans: one request.
    let small: Vec<PodSpans> = (0..512).map(|_| span(&p, 10, None)).collect();
    assert_eq!(encode(small, &scope(), LIMITS).len(), 1);
    // A span over the limit on its own still goes (alone).
    let huge = vec![
        span(&p, 10, None),
        span(&p, MAX_REQUEST_BYTES, None),
        span(&p, 10, None),
    ];
    let counts: Vec<usize> = encode(huge, &scope(), LIMITS)
        .iter()
        .map(|r| r.spans)
        .collect();
    assert_eq!(counts, [1, 1, 1]);
    assert!(encode(Vec::new(), &scope(), LIMITS).is_empty());
    // At most `spans` spans per request.
    let many: Vec<PodSpans> = (0..5).map(|_| span(&p, 10, None)).collect();
    let limits = Limits { spans: 2, ..LIMITS };
    let counts: Vec<usize> = encode(many, &scope(), limits)
        .iter()
        .map(|r| r.spans)
        .collect();
    assert_eq!(counts, [2, 2, 1]);
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
    let requests = encode(batch, &scope(), LIMITS);
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

fn decode_span(bytes: &[u8]) -> Span {
    let mut s = ScopeSpans::decode(bytes).expect("spans").spans;
    assert_eq!(s.len(), 1);
    s.remove(0)
}

#[test]
fn span_fields() {
    let root = decode_span(&encoded(1, None));
    assert!(root.parent_span_id.is_empty(), "a root span has no parent");
    assert_eq!(root.flags, 1 | HAS_IS_REMOTE);
    let child = decode_span(&encoded(1, Some(SpanId([9; 8]))));
    assert_eq!(child.parent_span_id, vec![9; 8]);
    assert_eq!(
        child.flags,
        1 | HAS_IS_REMOTE | IS_REMOTE,
        "SERVER: remote parent"
    );
    assert_eq!(child.kind, SpanKind::Server as i32);
    assert_eq!(child.trace_id, vec![1; 16]);
    assert_eq!(child.name, "GET");
    assert_eq!(child.attributes[0].key, "user_agent.original");
}

#[test]
fn pods_resources_frame_the_spans_exactly() {
    // Resources of different sizes (length prefixes of 1 and 2 bytes), several pods.
    let big = Arc::new(PodIdentity::new(
        PodKey {
            namespace: "ns".into(),
            name: "x".repeat(200),
        },
        Some("uid"),
        "web",
        Some("node-1"),
        "svc",
    ));
    let batch = vec![
        span(&big, 300, None),
        span(&pod("a"), 1, None),
        span(&big, 1, Some(SpanId([3; 8]))),
    ];
    let requests = encode(batch, &scope(), LIMITS);
    let message = decode(&requests[0]);
    assert_eq!(message.resource_spans.len(), 2);
    assert_eq!(
        message.resource_spans[0].resource.as_ref(),
        Some(&big.resource)
    );
    let spans = &message.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[1].parent_span_id, vec![3; 8]);
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
