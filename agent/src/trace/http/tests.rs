use super::*;
use http::{HeaderValue, Version};
use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};
use prost::Message as _;
use std::convert::Infallible;

/// What a [`SpanBody`] reported: the grpc-status, and each end (its error).
type Seen = (Option<i64>, Vec<Option<String>>);

/// Records what a [`SpanBody`] reports.
#[derive(Clone, Default)]
struct Recorder(Arc<std::sync::Mutex<Seen>>);

impl Finish for Recorder {
    fn grpc_status(&mut self, status: i64) {
        self.0.lock().expect("lock").0 = Some(status);
    }
    fn finish(self, error: Option<String>) {
        self.0.lock().expect("lock").1.push(error);
    }
}

impl Recorder {
    fn seen(&self) -> Seen {
        self.0.lock().expect("lock").clone()
    }
}

/// A body made of the given frames.
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn body(frames: Vec<Frame<Bytes>>, rec: &Recorder) -> SpanBody<Frames, Recorder> {
    SpanBody {
        inner: Frames(frames.into()),
        done: Some(rec.clone()),
    }
}

fn grpc_trailers(status: &'static str) -> Frame<Bytes> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static(status));
    Frame::trailers(t)
}

#[tokio::test]
async fn span_body_reports_the_end_of_the_response() {
    // Messages, then grpc-status in the trailers: complete once the trailers are read.
    let rec = Recorder::default();
    let mut b = body(
        vec![
            Frame::data(Bytes::from_static(b"m1")),
            Frame::data(Bytes::from_static(b"m2")),
            grpc_trailers("10"),
        ],
        &rec,
    );
    let first = b.frame().await.expect("frame").expect("ok");
    assert!(first.is_data());
    assert!(rec.seen().1.is_empty(), "not over after the first message");
    while b.frame().await.is_some() {}
    assert_eq!(rec.seen(), (Some(10), vec![None]));
    drop(b);
    assert_eq!(rec.seen().1.len(), 1, "reported once");

    // A trailers-only gRPC response (or any empty body): hyper drops the body
    // without polling it. Complete, not aborted.
    let rec = Recorder::default();
    drop(body(Vec::new(), &rec));
    assert_eq!(rec.seen(), (None, vec![None]));

    // The client went away mid-stream: aborted.
    let rec = Recorder::default();
    let mut b = body(
        vec![Frame::data(Bytes::from_static(b"m1")), grpc_trailers("0")],
        &rec,
    );
    b.frame().await.expect("frame").expect("ok");
    drop(b);
    let (_, ends) = rec.seen();
    assert_eq!(ends.len(), 1);
    assert!(
        ends[0].as_deref().is_some_and(|e| e.contains("aborted")),
        "{ends:?}"
    );
}

/// A traced gRPC request with every optional attribute, and its emitted spans.
fn traced_grpc_request() -> (Arc<PodIdentity>, Vec<Span>) {
    let (sink, queue) = SpanSink::new(4, 4, Counter::default());
    let leg = Arc::new(LegSpans::new(
        sink,
        Arc::new(PodIdentity::new(
            crate::pod::PodKey {
                namespace: "ns".into(),
                name: "web-1".into(),
            },
            Some("uid-1"),
            "web",
            Some("node-1"),
            "hoptrace-proxy",
        )),
        "inbound",
        "10.0.0.2:8080".parse().expect("addr"),
        "10.0.0.1".parse().expect("ip"),
        Counter::default(),
    ));
    let mut req = Request::builder()
        .uri(format!("/pkg.Svc/{}", "m".repeat(3000)))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("content-type", "application/grpc")
        .header("user-agent", "grpc-python")
        .body(())
        .expect("request");
    let route: Arc<str> = Arc::from("/pkg.Svc/m");
    let mut spans = begin(Some(&leg), &mut req, false, &route, true).expect("traced");
    spans.client_started();
    spans.status = Some(StatusCode::OK);
    spans.grpc_status = Some(5);
    spans.emit(None);
    let [emitted] = &queue.take_batch()[..] else {
        panic!("one submission")
    };
    assert_eq!(emitted.count, 2);
    let decoded = ScopeSpans::decode(&emitted.bytes[..]).expect("valid spans");
    (emitted.pod.clone(), decoded.spans)
}

#[test]
fn every_attribute_is_documented() {
    let doc = include_str!("../../../../docs/TRACING.md");
    let (pod, spans) = traced_grpc_request();
    let keys: Vec<&str> = spans[0]
        .attributes
        .iter()
        .map(|kv| kv.key.as_str())
        .collect();
    assert!(keys.len() >= 14, "{keys:?}");
    for key in &keys {
        assert!(
            doc.contains(&format!("`{key}`")),
            "span attribute {key} is not in docs/TRACING.md"
        );
    }
    for kv in &pod.resource.attributes {
        assert!(
            doc.contains(&format!("`{}`", kv.key)),
            "resource attribute {} is not in docs/TRACING.md",
            kv.key
        );
    }
}

#[test]
fn the_two_spans_chain_and_share_attributes() {
    let (_, spans) = traced_grpc_request();
    use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
    let [client, server] = &spans[..] else {
        panic!("{spans:?}")
    };
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(
        server.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").expect("id").0.to_vec()
    );
    assert_eq!(client.attributes, server.attributes);
    assert_eq!(client.name, format!("pkg.Svc/{}", "m".repeat(2048 - 9)));
    // W3C flags 01; the SERVER span's parent is remote, the CLIENT span's is not.
    use crate::trace::span::{HAS_IS_REMOTE, IS_REMOTE};
    assert_eq!(server.flags, 1 | HAS_IS_REMOTE | IS_REMOTE);
    assert_eq!(client.flags, 1 | HAS_IS_REMOTE);
    // gRPC NOT_FOUND: ERROR on both.
    for s in [client, server] {
        assert_eq!(
            s.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
    }
}

/// The in-place `traceparent` path decides and rewrites as the `HeaderMap` one does.
#[test]
fn begin_traceparent_rewrites_as_begin_head_does() {
    let facts = RequestFacts {
        method: "GET",
        path: "/",
        version: Version::HTTP_11,
        host: None,
        user_agent: None,
    };
    let route: Arc<str> = Arc::from("/");
    let tid = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sid = "00f067aa0ba902b7";
    for (value, flags) in [
        (format!("00-{tid}-{sid}-01"), Some(0x01)),
        (format!("00-{tid}-{sid}-00"), Some(0x00)),
        (format!("00-{tid}-{sid}-09"), Some(0x09)),
        (format!("01-{tid}-{sid}-ff"), Some(0x03)),
        (format!("00-{}-{sid}-01", tid.to_uppercase()), None),
        (format!("00-{}-{sid}-01", "0".repeat(32)), None),
        (format!("ff-{tid}-{sid}-01"), None),
    ] {
        let mut bytes: [u8; context::TRACEPARENT_LEN] =
            value.as_bytes().try_into().expect("55 bytes");
        let fast = begin_traceparent(
            None,
            &mut bytes,
            facts,
            UnixNanos::now(),
            false,
            &route,
            false,
        );
        let mut map = HeaderMap::new();
        map.insert(
            context::TRACEPARENT,
            HeaderValue::from_str(&value).expect("value"),
        );
        let general = begin_head(
            None,
            &mut map,
            facts,
            UnixNanos::now(),
            false,
            &route,
            false,
        );
        assert!(general.is_none(), "no leg, no spans");
        let Some(flags) = flags else {
            assert!(fast.is_none(), "{value}: not valid");
            assert_eq!(&bytes[..], value.as_bytes(), "{value}: untouched");
            assert_eq!(
                map[context::TRACEPARENT],
                value.as_str(),
                "{value}: untouched"
            );
            continue;
        };
        assert!(matches!(fast, Some(None)), "{value}: valid, no leg");
        let fast = context::parse_traceparent(std::str::from_utf8(&bytes).expect("ascii"))
            .expect("rewritten value");
        let general = map[context::TRACEPARENT].to_str().expect("ascii");
        let general = context::parse_traceparent(general).expect("rewritten value");
        for (id, span, f) in [fast, general] {
            assert_eq!(id.to_hex(), tid, "{value}: same trace");
            assert_ne!(span.to_hex(), sid, "{value}: a new parent");
            assert_eq!(f, flags, "{value}: flags");
        }
        assert!(bytes.starts_with(b"00-"), "{value}: written as version 00");
    }
}
