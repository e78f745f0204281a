//! HTTP for the terminal views: `GET` an agent's `/metrics`, and PromQL instant
//! queries against a Prometheus server's `/api/v1/query` (JSON).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Time allowed for one request (connect, head and body).
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body read (a big agent's `/metrics`, or a large query result).
const MAX_BODY: usize = 64 << 20;

/// A plain-HTTP client (the agents' admin port and Prometheus are plaintext here).
pub struct Http {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    /// `GET url`: the body of a 2xx answer, else an error with the status and body.
    pub async fn get(&self, url: &str) -> Result<(u16, String)> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("{url}: scheme {other:?} is not supported (use http://)"),
            None => bail!("{url}: no scheme (use http://host:port)"),
        }
        let fetch = async {
            let resp = self.client.get(uri).await.map_err(|e| anyhow!(chain(&e)))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            if body.len() > MAX_BODY {
                bail!("answer larger than {MAX_BODY} bytes");
            }
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(TIMEOUT, fetch)
            .await
            .map_err(|_| anyhow!("no answer within {TIMEOUT:?}"))?
    }
}

/// The error and its sources on one line ("client error (Connect): tcp connect
/// error: Connection refused (os error 111)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// `<base>/metrics` unless `base` already names a path.
pub fn metrics_url(base: &str) -> String {
    let trimmed = base.trim_end_matches('/');
    match trimmed.split_once("://") {
        Some((_, rest)) if rest.contains('/') => trimmed.to_owned(),
        _ => format!("{trimmed}/metrics"),
    }
}

/// Scrapes one agent's `/metrics`.
pub async fn scrape(http: &Http, base: &str) -> Result<Vec<crate::metrics::text::Sample>> {
    let url = metrics_url(base);
    let (status, body) = http
        .get(&url)
        .await
        .with_context(|| format!("agent {url} unreachable"))?;
    if status != 200 {
        bail!("agent {url} answered HTTP {status}: {}", first_line(&body));
    }
    crate::metrics::text::parse(&body).with_context(|| format!("agent {url}: bad metrics text"))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// Encodes a query-string value (`application/x-www-form-urlencoded`, as `form_urlencoded`).
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One element of an instant vector: its labels and value.
pub type Element = (BTreeMap<String, String>, f64);

/// Runs an instant query; the result must be a vector.
pub async fn instant(http: &Http, base: &str, promql: &str) -> Result<Vec<Element>> {
    let url = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        encode(promql)
    );
    let (status, body) = http
        .get(&url)
        .await
        .with_context(|| format!("Prometheus {base} unreachable"))?;
    parse_answer(status, &body).with_context(|| format!("Prometheus {base}: query {promql}"))
}

/// Decodes a `/api/v1/query` answer (`{"status":"success","data":{"resultType":
/// "vector","result":[{"metric":{...},"value":[ts,"v"]}]}}`, or `"status":"error"`
/// with `errorType` and `error`).
pub fn parse_answer(status: u16, body: &str) -> Result<Vec<Element>> {
    let json: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        anyhow!(
            "HTTP {status}, not a Prometheus API answer ({e}): {}",
            first_line(body)
        )
    })?;
    if json["status"] != "success" {
        bail!(
            "Prometheus returned an error (HTTP {status}, {}): {}",
            json["errorType"].as_str().unwrap_or("no errorType"),
            json["error"].as_str().unwrap_or("no error text")
        );
    }
    let data = &json["data"];
    if data["resultType"] != "vector" {
        bail!("expected a vector result, got {}", data["resultType"]);
    }
    let mut out = Vec::new();
    for item in data["result"].as_array().into_iter().flatten() {
        let labels = item["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let text = item["value"][1]
            .as_str()
            .ok_or_else(|| anyhow!("result element without a value: {item}"))?;
        let value =
            crate::metrics::text::parse_value(text).ok_or_else(|| anyhow!("bad value {text:?}"))?;
        out.push((labels, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_encoding() {
        assert_eq!(metrics_url("http://a:1"), "http://a:1/metrics");
        assert_eq!(metrics_url("http://a:1/"), "http://a:1/metrics");
        assert_eq!(metrics_url("http://a:1/x/metrics"), "http://a:1/x/metrics");
        assert_eq!(
            encode("sum by (a) (rate(x{b=\"c\"}[1m]))"),
            "sum+by+%28a%29+%28rate%28x%7Bb%3D%22c%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn decodes_answers_and_errors() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"server":"web"},"value":[1700000000.1,"2.5"]},
            {"metric":{},"value":[1700000000.1,"NaN"]}]}}"#;
        let v = parse_answer(200, ok).expect("ok");
        assert_eq!(v[0].0["server"], "web");
        assert_eq!(v[0].1, 2.5);
        assert!(v[1].1.is_nan());
        let err = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        let e = parse_answer(400, err).expect_err("error").to_string();
        assert!(
            e.contains("bad_data") && e.contains("parse error at char 5"),
            "{e}"
        );
        let e = parse_answer(404, "404 page not found").expect_err("html");
        assert!(e.to_string().contains("HTTP 404"), "{e}");
    }
}
