//! The HTTP side of the stand-in API server (hyper's HTTP/1 server): lists and
//! watch streams (chunked, one JSON event per line).

use super::{Event, Request, Resource, Shared};
use http_body_util::{channel::Channel, channel::Sender, Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(super) fn key_of(object: &Value) -> Option<String> {
    let name = object["metadata"]["name"].as_str()?;
    Some(match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    })
}

/// `%XX` decoding of a query value (`+` is a space).
pub(super) fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let (h, l) = (
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        );
        match (bytes[i], h, l) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(target: &str) -> (String, BTreeMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let params = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    (path.to_string(), params)
}

/// True when `object` passes a `spec.nodeName=X` field selector (others are ignored).
fn selected(object: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').all(|term| match term.split_once('=') {
        Some(("spec.nodeName", node)) => object["spec"]["nodeName"].as_str() == Some(node),
        _ => true,
    })
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

type Body = Either<Full<Bytes>, Channel<Bytes, std::io::Error>>;

/// A connection's watch: the break generation it was opened in.
const NOT_WATCHING: u64 = u64::MAX;

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// One watch event line.
fn line(event: &Value) -> Bytes {
    Bytes::from(format!("{event}\n"))
}

/// Serves one connection: requests one after another (keep-alive) until a watch
/// ends, [`super::KubeApi::break_watches`] cuts it, or the client closes.
pub(super) async fn serve(shared: Arc<Shared>, conn: tokio::net::TcpStream) {
    let mut changed = shared.changed.subscribe();
    let watching = Arc::new(AtomicU64::new(NOT_WATCHING));
    let service = {
        let (shared, watching) = (shared.clone(), watching.clone());
        hyper::service::service_fn(move |request| {
            let response = answer(&shared, &watching, request);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        // The real server keeps idle connections; so does this one.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(conn), service);
    let broken = async {
        loop {
            if changed.changed().await.is_err() {
                return;
            }
            let since = watching.load(Ordering::SeqCst);
            if since != NOT_WATCHING && shared.lock().generation != since {
                return;
            }
        }
    };
    // A broken watch drops the connection: closed with no final chunk.
    tokio::select! {
        _ = connection => {}
        _ = broken => {}
    }
}

fn answer(
    shared: &Arc<Shared>,
    watching: &AtomicU64,
    request: hyper::Request<Incoming>,
) -> Response<Body> {
    let target = request.uri().to_string();
    let (path, params) = query(&target);
    let resource = match path.as_str() {
        "/api/v1/pods" => Some(Resource::Pods),
        "/api/v1/namespaces" => Some(Resource::Namespaces),
        _ => None,
    };
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let mut st = shared.lock();
    st.requests.push(Request {
        target: target.clone(),
        resource,
        watch,
    });
    if st.unavailable {
        let body = status(
            503,
            "ServiceUnavailable",
            "the API server is unavailable (test)",
        );
        return respond(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    let Some(resource) = resource else {
        let body = status(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        );
        return respond(StatusCode::NOT_FOUND, &body);
    };
    let selector = params.get("fieldSelector").cloned();
    if !watch {
        let items: Vec<&Value> = st
            .objects
            .iter()
            .filter(|((r, _), o)| *r == resource && selected(o, selector.as_ref()))
            .map(|(_, o)| o)
            .collect();
        let list = json!({"kind": format!("{}List", resource.kind()), "apiVersion": "v1",
                          "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
        return respond(StatusCode::OK, &list);
    }
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (mut tx, body) = Channel::new(16);
    let mut response = Response::new(Either::Right(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // The connection ends with the watch.
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    if from < st.compacted {
        let gone = status(410, "Expired", &format!("too old resource version: {from}"));
        // Fits the channel's buffer; dropping `tx` then ends the stream.
        let _ = tx.try_send(hyper::body::Frame::data(line(
            &json!({"type": "ERROR", "object": gone}),
        )));
        return response;
    }
    let generation = st.generation;
    watching.store(generation, Ordering::SeqCst);
    // Versions and sequence numbers both grow along the log, so the events at or
    // before `from` are a prefix; everything after it is sent, then what comes.
    let cursor = st
        .log
        .iter()
        .filter(|e| e.rv <= from)
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    drop(st);
    tokio::spawn(stream_watch(
        shared.clone(),
        tx,
        resource,
        selector,
        cursor,
        generation,
    ));
    response
}

async fn stream_watch(
    shared: Arc<Shared>,
    mut tx: Sender<Bytes, std::io::Error>,
    resource: Resource,
    selector: Option<String>,
    mut cursor: u64,
    generation: u64,
) {
    let mut changed = shared.changed.subscribe();
    loop {
        changed.borrow_and_update();
        let lines: Vec<Bytes> = {
            let st = shared.lock();
            if st.generation != generation {
                tx.abort(std::io::Error::other("watch broken (test)"));
                return;
            }
            let fresh: Vec<&Event> = st.log.iter().filter(|e| e.seq > cursor).collect();
            if let Some(last) = fresh.last() {
                cursor = last.seq;
            }
            fresh
                .into_iter()
                .filter(|e| e.resource == resource)
                .filter(|e| e.kind == "BOOKMARK" || selected(&e.object, selector.as_ref()))
                .map(|e| line(&json!({"type": e.kind, "object": e.object})))
                .collect()
        };
        for line in lines {
            if tx.send_data(line).await.is_err() {
                return; // the client is gone
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}
