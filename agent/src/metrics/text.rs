//! A parser for the Prometheus text exposition format and the OpenMetrics text that
//! `prometheus-client` emits: one [`Sample`] per sample line, `#` lines (HELP, TYPE,
//! UNIT, EOF) skipped, exemplars (`# {...} v`) and timestamps ignored. Malformed lines
//! are errors with their line number, never skipped.

use std::collections::BTreeMap;
use std::fmt;

/// One sample: metric name as exposed (with `_total`, `_bucket`, ...), labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name as exposed.
    pub name: String,
    /// Label pairs, unescaped.
    pub labels: BTreeMap<String, String>,
    /// Value (`+Inf`, `-Inf`, `NaN` allowed).
    pub value: f64,
}

/// A malformed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// Parses exposition text. Lines after `# EOF` are an error (OpenMetrics), as is any
/// sample line that is not `name[{labels}] value [timestamp] [# exemplar]`.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    let mut eof = false;
    for (n, raw) in text.lines().enumerate() {
        let err = |reason: String| ParseError {
            line: n + 1,
            reason,
        };
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if eof {
            return Err(err("content after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(line).map_err(|e| err(format!("{e}: {line:?}")))?);
    }
    Ok(samples)
}

fn is_name_char(c: char, first: bool, colon: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .enumerate()
            .all(|(i, c)| is_name_char(c, i == 0, true))
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    if !rest.starts_with(char::is_whitespace) {
        return Err("no space before the value".into());
    }
    // An OpenMetrics exemplar follows " # ".
    let rest = rest.split_once(" # ").map_or(rest, |(before, _)| before);
    let mut fields = rest.split_whitespace();
    let value_text = fields.next().ok_or("no value")?;
    let value = parse_value(value_text).ok_or_else(|| format!("bad value {value_text:?}"))?;
    if let Some(ts) = fields.next() {
        if ts.parse::<f64>().is_err() {
            return Err(format!("bad timestamp {ts:?}"));
        }
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the timestamp"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A sample value: a float, `+Inf`, `-Inf` or `NaN`.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also accepts "inf"/"infinity" in any case: not exposition syntax.
        _ if s
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

/// Parses `k="v",...}` and returns what follows the `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty()
            || !key
                .chars()
                .enumerate()
                .all(|(i, c)| is_name_char(c, i == 0, false))
        {
            return Err(format!("bad label name {key:?}"));
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("value of label {key:?} not quoted"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, c)) => return Err(format!("unknown escape \\{c} in label {key:?}")),
                    None => return Err("unterminated escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated value of label {key:?}")),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("duplicate label {key:?}"));
        }
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP hoptrace_http_requests Requests.
# TYPE hoptrace_http_requests counter
hoptrace_http_requests_total{direction="inbound",server="web",route="/a/{id}"} 3
hoptrace_http_requests_total{direction="outbound",server="web",route="/b"} 2 1700000000000
hoptrace_http_requests_total{server="x",direction="inbound",} 1.5e1
# TYPE hoptrace_http_request_duration_seconds histogram
hoptrace_http_request_duration_seconds_bucket{le="0.005"} 1 # {trace_id="abc"} 0.004 1700000000.1
hoptrace_http_request_duration_seconds_bucket{le="+Inf"} 4
weird{path="a\"b\\c\nd"} +Inf
nan NaN
up 1
# EOF
"#;

    #[test]
    fn parses_openmetrics_text() {
        let s = parse(TEXT).expect("parse");
        assert_eq!(s.len(), 8);
        assert_eq!(s[0].name, "hoptrace_http_requests_total");
        assert_eq!(s[0].labels["route"], "/a/{id}");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].value, 2.0);
        assert_eq!(s[2].value, 15.0);
        assert_eq!(s[2].labels.len(), 2);
        assert_eq!(s[3].value, 1.0);
        assert_eq!(s[4].labels["le"], "+Inf");
        assert_eq!(s[5].labels["path"], "a\"b\\c\nd");
        assert!(s[5].value.is_infinite());
        assert!(s[6].value.is_nan());
        assert_eq!(s[7].name, "up");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("ok 1\nfoo{bar=\"x} 1", 2, "unterminated"),
            ("foo notanumber", 1, "bad value"),
            ("foo inf", 1, "bad value"),
            ("foo", 1, "no value"),
            ("\n\nfoo{a=b} 1", 3, "not quoted"),
            ("foo{a=\"1\",a=\"2\"} 1", 1, "duplicate"),
            ("foo{a=\"\\t\"} 1", 1, "unknown escape"),
            ("foo{a=\"1\" b=\"2\"} 1", 1, "expected ','"),
            ("foo{1a=\"1\"} 1", 1, "bad label name"),
            ("fo-o 1", 1, "bad metric name"),
            ("foo 1 2 3", 1, "unexpected"),
            ("foo{a=\"1\"}1", 1, "no space"),
            ("# EOF\nfoo 1", 2, "after # EOF"),
        ];
        for (text, line, what) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.to_string().contains(what), "{text:?}: {err}");
        }
    }
}
