//! Self-tests of the stand-in API server over raw HTTP (no root needed).

use super::wire::unescape;
use super::*;
use serde_json::json;
use std::io::Read;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

fn get(api: &KubeApi, target: &str) -> (String, Value) {
    let mut c = TcpStream::connect(api.addr()).expect("connect");
    write!(
        c,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    let mut reader = BufReader::new(c);
    let mut status = String::new();
    reader.read_line(&mut status).expect("status");
    reader.read_to_string(&mut raw).expect("read");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, serde_json::from_str(body).expect("json body"))
}

/// Opens a watch; returns a reader positioned at the first event.
fn watch(api: &KubeApi, target: &str) -> BufReader<TcpStream> {
    let mut c = TcpStream::connect(api.addr()).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(c, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut reader = BufReader::new(c);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("head");
        if line.trim().is_empty() {
            return reader;
        }
    }
}

/// The next event of a chunked watch stream; `None` at its end.
fn next_event(reader: &mut BufReader<TcpStream>) -> Option<Value> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.starts_with('{') {
            return Some(serde_json::from_str(&line).expect("event json"));
        }
        if line.trim() == "0" {
            return None;
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubeapi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn web(node: &str) -> Value {
    let mut spec = PodSpec::new("web", "shop", "u-1", node);
    spec.ips = vec!["10.1.1.5".parse().expect("ip")];
    spec.annotations = vec![("hoptrace.io/inject", "enabled")];
    pod(&spec)
}

#[test]
fn lists_filter_by_node_and_carry_the_version() {
    let dir = scratch("lists");
    let api = KubeApi::start(&dir).expect("start");
    api.apply(namespace("shop", &[("hoptrace.io/inject", "enabled")]))
        .expect("ns");
    api.apply(web("node-1")).expect("pod");
    let mut other = web("node-2");
    other["metadata"]["name"] = json!("db");
    api.apply(other).expect("pod");
    let (status, list) = get(
        &api,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&limit=500",
    );
    assert!(status.contains("200"), "{status}");
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["metadata"]["resourceVersion"], "3");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    assert_eq!(list["items"][0]["metadata"]["resourceVersion"], "2");
    let (_, all) = get(&api, "/api/v1/pods");
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    let (_, ns) = get(&api, "/api/v1/namespaces");
    assert_eq!(ns["kind"], "NamespaceList");
    assert_eq!(
        ns["items"][0]["metadata"]["labels"]["hoptrace.io/inject"],
        "enabled"
    );
    api.set_unavailable(true);
    let (status, body) = get(&api, "/api/v1/pods");
    assert!(status.contains("503"), "{status}");
    assert_eq!(body["code"], 503);
    assert_eq!(api.lists(Resource::Pods), 3);
    api.set_unavailable(false);
    let (status, _) = get(&api, "/api/v1/nodes");
    assert!(status.contains("404"), "{status}");
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).expect("kubeconfig");
    assert!(
        kubeconfig.contains(&format!("server: http://{}", api.addr())),
        "{kubeconfig}"
    );
    drop(api);
    std::fs::remove_dir_all(dir).expect("rm");
}

#[test]
fn watches_replay_then_follow_break_and_expire() {
    let dir = scratch("watches");
    let api = KubeApi::start(&dir).expect("start");
    api.apply(web("node-1")).expect("pod"); // rv 1
    let target = "/api/v1/pods?watch=true&resourceVersion=0&fieldSelector=spec.nodeName%3Dnode-1";
    let mut w = watch(&api, target);
    let e = next_event(&mut w).expect("replayed");
    assert_eq!(
        (
            e["type"].as_str(),
            e["object"]["metadata"]["resourceVersion"].as_str()
        ),
        (Some("ADDED"), Some("1"))
    );
    let mut changed = web("node-1");
    changed["metadata"]["labels"]["app"] = json!("web");
    api.apply(changed).expect("modify"); // rv 2
    let e = next_event(&mut w).expect("modified");
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(e["object"]["metadata"]["labels"]["app"], "web");
    api.bookmark();
    let e = next_event(&mut w).expect("bookmark");
    assert_eq!(e["type"], "BOOKMARK");
    assert_eq!(e["object"]["metadata"]["resourceVersion"], "2");
    api.delete(Resource::Pods, "shop/web").expect("delete"); // rv 3
    let e = next_event(&mut w).expect("deleted");
    assert_eq!(e["type"], "DELETED");
    assert_eq!(e["object"]["metadata"]["resourceVersion"], "3");
    assert!(api.delete(Resource::Pods, "shop/web").is_err());

    api.break_watches();
    assert!(next_event(&mut w).is_none(), "the stream ends when broken");

    // Resume from version 2: only what came after it (the bookmark at 2 is not).
    let mut w = watch(&api, "/api/v1/pods?watch=true&resourceVersion=2");
    let e = next_event(&mut w).expect("after 2");
    assert_eq!(e["type"], "DELETED");
    api.compact();
    let mut w = watch(&api, "/api/v1/pods?watch=true&resourceVersion=2");
    let e = next_event(&mut w).expect("410");
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert!(next_event(&mut w).is_none());
    assert_eq!(api.watches(Resource::Pods), 3);
    assert_eq!(
        unescape("spec.nodeName%3Dnode-1+x%2"),
        "spec.nodeName=node-1 x%2"
    );
}
