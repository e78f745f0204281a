//! Reading wrk's report.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What one wrk run reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WrkReport {
    /// Completed requests (`N requests in ...`). Requests still in flight when wrk
    /// stopped are not counted (nor are their answers).
    pub requests: u64,
    /// `Requests/sec:`.
    pub rps: f64,
    /// Socket errors (connect, read, write, timeout), summed.
    pub socket_errors: u64,
    /// `Non-2xx or 3xx responses:`.
    pub non_2xx: u64,
}

impl WrkReport {
    /// Parses wrk's standard output.
    pub fn parse(text: &str) -> Result<WrkReport> {
        let mut report = WrkReport::default();
        let (mut got_requests, mut got_rps) = (false, false);
        for line in text.lines().map(str::trim) {
            if let Some((n, _)) = line.split_once(" requests in ") {
                report.requests = n
                    .trim()
                    .parse()
                    .with_context(|| format!("wrk: bad request count in {line:?}"))?;
                got_requests = true;
            } else if let Some(v) = line.strip_prefix("Requests/sec:") {
                report.rps = v
                    .trim()
                    .parse()
                    .with_context(|| format!("wrk: bad rate in {line:?}"))?;
                got_rps = true;
            } else if let Some(v) = line.strip_prefix("Socket errors:") {
                for part in v.split(',') {
                    let n = part.split_whitespace().last().unwrap_or_default();
                    report.socket_errors += n
                        .parse::<u64>()
                        .with_context(|| format!("wrk: bad socket errors in {line:?}"))?;
                }
            } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
                report.non_2xx = v
                    .trim()
                    .parse()
                    .with_context(|| format!("wrk: bad non-2xx count in {line:?}"))?;
            }
        }
        if !(got_requests && got_rps) {
            bail!("wrk printed no request count or rate:\n{text}");
        }
        Ok(report)
    }

    /// Requests that failed (socket errors plus non-2xx answers).
    pub fn errors(&self) -> u64 {
        self.socket_errors + self.non_2xx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_report() {
        let out = "Running 5s test @ http://10.9.2.2:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.33us  200.12us   5.00ms   80.00%
    Req/Sec    30.00k     2.00k   35.00k    70.00%
  300123 requests in 5.00s, 45.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 12
Requests/sec:  60024.60
Transfer/sec:      9.00MB
";
        let r = WrkReport::parse(out).expect("parse");
        assert_eq!(r.requests, 300123);
        assert!((r.rps - 60024.60).abs() < 1e-6);
        assert_eq!((r.socket_errors, r.non_2xx, r.errors()), (6, 12, 18));

        let clean = "  10 requests in 1.00s, 1.00KB read\nRequests/sec:     10.00\n";
        assert_eq!(WrkReport::parse(clean).expect("parse").errors(), 0);
        assert!(WrkReport::parse("unable to connect to 10.9.2.2:8080 Connection refused").is_err());
    }
}
