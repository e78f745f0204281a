//! The HTTP side of the stand-in API server: request parsing, lists and watch
//! streams (chunked, one JSON event per line).

use super::{Event, Request, Resource, Shared};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

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

fn respond(conn: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn chunk(conn: &mut TcpStream, line: &str) -> std::io::Result<()> {
    write!(conn, "{:x}\r\n{line}\n\r\n", line.len() + 1)?;
    conn.flush()
}

/// Serves one connection: requests one after another (keep-alive) until a watch
/// ends or the client closes.
pub(super) fn serve(shared: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            let h = header.to_ascii_lowercase();
            close |= h.starts_with("connection:") && h.contains("close");
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let (path, params) = query(&target);
        let resource = match path.as_str() {
            "/api/v1/pods" => Some(Resource::Pods),
            "/api/v1/namespaces" => Some(Resource::Namespaces),
            _ => None,
        };
        let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
        let unavailable = {
            let mut st = shared.lock();
            st.requests.push(Request {
                target: target.clone(),
                resource,
                watch,
            });
            st.unavailable
        };
        if unavailable {
            let body = status(
                503,
                "ServiceUnavailable",
                "the API server is unavailable (test)",
            );
            respond(&mut conn, "503 Service Unavailable", &body)?;
            if close {
                return Ok(());
            }
            continue;
        }
        let Some(resource) = resource else {
            let body = status(
                404,
                "NotFound",
                &format!("the server could not find {path}"),
            );
            respond(&mut conn, "404 Not Found", &body)?;
            if close {
                return Ok(());
            }
            continue;
        };
        let selector = params.get("fieldSelector");
        if !watch {
            let st = shared.lock();
            let items: Vec<&Value> = st
                .objects
                .iter()
                .filter(|((r, _), o)| *r == resource && selected(o, selector))
                .map(|(_, o)| o)
                .collect();
            let list = json!({"kind": format!("{}List", resource.kind()), "apiVersion": "v1",
                              "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
            drop(st);
            respond(&mut conn, "200 OK", &list)?;
            if close {
                return Ok(());
            }
            continue;
        }
        let from: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return stream_watch(shared, conn, resource, selector, from);
    }
}

fn stream_watch(
    shared: &Shared,
    mut conn: TcpStream,
    resource: Resource,
    selector: Option<&String>,
    from: u64,
) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let mut st = shared.lock();
    if from < st.compacted {
        drop(st);
        let gone = status(410, "Expired", &format!("too old resource version: {from}"));
        chunk(
            &mut conn,
            &json!({"type": "ERROR", "object": gone}).to_string(),
        )?;
        write!(conn, "0\r\n\r\n")?;
        return conn.flush();
    }
    let generation = st.generation;
    st.open_watches.push(conn.try_clone()?);
    // Versions and sequence numbers both grow along the log, so the events at or
    // before `from` are a prefix; everything after it is sent, then what comes.
    let mut cursor = st
        .log
        .iter()
        .filter(|e| e.rv <= from)
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    loop {
        if st.generation != generation || shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let fresh: Vec<&Event> = st.log.iter().filter(|e| e.seq > cursor).collect();
        let Some(last) = fresh.last().map(|e| e.seq) else {
            st = shared
                .changed
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        };
        cursor = last;
        let lines: Vec<String> = fresh
            .into_iter()
            .filter(|e| e.resource == resource)
            .filter(|e| e.kind == "BOOKMARK" || selected(&e.object, selector))
            .map(|e| json!({"type": e.kind, "object": e.object}).to_string())
            .collect();
        drop(st);
        for line in lines {
            chunk(&mut conn, &line)?;
        }
        st = shared.lock();
    }
}
