//! A tiny W3C WebDriver client (blocking) for the browser tests: starts `chromedriver`
//! (Debian `chromium-driver`) on a free port, opens one headless Chromium session and
//! speaks the protocol's JSON over hyper's HTTP/1 client (one connection per command).

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// A command's time bound.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium session behind its own chromedriver; both end on drop.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    session: String,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver and a headless session (`--no-sandbox`: the tests run as root).
    pub fn start() -> Result<Browser> {
        let port = crate::ports::free_port().context("a free port for chromedriver")?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "starting chromedriver (Debian package chromium-driver; `cargo xtask setup`)",
            )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("runtime")?;
        let mut browser = Browser {
            runtime,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            driver,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match browser.call("GET", "/status", None) {
                Ok(v) if v["ready"] == true => break,
                _ if Instant::now() > deadline => bail!("chromedriver not ready after 20 s"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            },
        }}});
        let v = browser.call("POST", "/session", Some(caps))?;
        browser.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {v}"))?
            .to_owned();
        Ok(browser)
    }

    fn path(&self, tail: &str) -> String {
        format!("/session/{}{tail}", self.session)
    }

    /// One command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let addr = self.addr;
        let fut = async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, addr.to_string())
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, bytes))
        };
        let (status, bytes) = self
            .runtime
            .block_on(async { tokio::time::timeout(TIMEOUT, fut).await })
            .map_err(|_| anyhow!("{method} {path}: timed out"))?
            .with_context(|| format!("{method} {path}"))?;
        let v: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: {}", String::from_utf8_lossy(&bytes)))?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", &self.path("/url"), Some(json!({ "url": url })))
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.call(
            "POST",
            &self.path("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Clicks the first element matching a CSS selector (a real pointer click).
    pub fn click(&self, css: &str) -> Result<()> {
        let v = self.call(
            "POST",
            &self.path("/element"),
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        let id = v[ELEMENT]
            .as_str()
            .ok_or_else(|| anyhow!("no element {css:?}: {v}"))?
            .to_owned();
        self.call(
            "POST",
            &self.path(&format!("/element/{id}/click")),
            Some(json!({})),
        )
        .map(drop)
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        let v = self.call("GET", &self.path("/screenshot"), None)?;
        base64(v.as_str().ok_or_else(|| anyhow!("no screenshot: {v}"))?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &self.path(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding, no line breaks).
fn base64(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {c:?}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::base64("aGVsbG8=").expect("b64"), b"hello");
        assert_eq!(super::base64("AAEC/w==").expect("b64"), [0, 1, 2, 255]);
    }
}
