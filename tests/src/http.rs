//! A blocking HTTP GET client for the agent's admin endpoints, on hyper's
//! HTTP/1 client (one connection per request, closed after the response).

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONNECTION, HOST};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Status and body of an HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Body (lossy UTF-8; chunked encoding removed).
    pub body: String,
}

/// `GET <path>` from `addr` (HTTP/1.1, `Connection: close`). `timeout` bounds
/// the connect, the wait for the response head and each read of the body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    // A runtime per request: callers are plain threads, and this one is gone
    // (with the connection) when the request is.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the HTTP client's runtime")?;
    runtime
        .block_on(fetch(addr, path, timeout))
        .with_context(|| format!("GET http://{addr}{path}"))
}

async fn within<T>(timeout: Duration, what: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| anyhow!("{what}: timed out after {timeout:?}"))
}

async fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    let stream = within(timeout, "connecting", tokio::net::TcpStream::connect(addr))
        .await?
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    // Its errors also reach the request or the body, where they are reported.
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(HOST, addr.to_string())
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = within(
        timeout,
        "waiting for the response",
        sender.send_request(request),
    )
    .await?
    .context("reading the response head")?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(frame) = within(timeout, "reading the body", body.frame()).await? {
        if let Ok(chunk) = frame.context("reading the body")?.into_data() {
            data.extend_from_slice(&chunk);
        }
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&data).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::get;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    /// Answers one connection with `raw` after reading its request head, then
    /// closes it (or, with `None`, reads the request and never answers).
    fn serve_once(raw: Option<&'static [u8]>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            match raw {
                Some(raw) => conn.write_all(raw).expect("answer"),
                None => std::thread::sleep(Duration::from_secs(3)),
            }
        });
        addr
    }

    #[test]
    fn plain_and_chunked() {
        let t = Duration::from_secs(5);
        let addr = serve_once(Some(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"));
        let r = get(addr, "/live", t).expect("get");
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let addr = serve_once(Some(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n6\r\n ready\r\n0\r\n\r\n"));
        let r = get(addr, "/ready", t).expect("get");
        assert_eq!((r.status, r.body.as_str()), (503, "not ready"));
        let addr = serve_once(Some(b"HTTP/1.0 200 OK\r\n"));
        assert!(get(addr, "/live", t).is_err());
    }

    #[test]
    fn a_silent_server_times_out() {
        let addr = serve_once(None);
        let start = Instant::now();
        let err = get(addr, "/live", Duration::from_millis(300)).expect_err("no answer");
        assert!(start.elapsed() < Duration::from_secs(2), "{err:#}");
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    }
}
