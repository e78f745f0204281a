//! Rows as an aligned table (for a person) or JSON (for scripts).

use serde_json::{json, Value};

use super::stat::{Rows, Stats, View};

fn percent(s: &Stats) -> String {
    s.success()
        .map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

/// Milliseconds with 3 significant digits or so: `0.52ms`, `13.8ms`, `485ms`.
fn ms(v: Option<f64>) -> String {
    match v.map(|s| s * 1000.0) {
        None => "-".into(),
        Some(m) if m >= 100.0 => format!("{m:.0}ms"),
        Some(m) if m >= 10.0 => format!("{m:.1}ms"),
        Some(m) => format!("{m:.2}ms"),
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn ms_json(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |s| json!(round(s * 1000.0, 3)))
}

/// The column names of a view.
pub fn header(view: View) -> &'static [&'static str] {
    match view {
        View::Deploy | View::Pod => &[
            "NAMESPACE",
            "NAME",
            "SUCCESS",
            "RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99",
            "TCP_CONN",
        ],
        View::Route => &[
            "NAMESPACE",
            "NAME",
            "ROUTE",
            "SUCCESS",
            "RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99",
        ],
        View::Edges => &[
            "SRC_NS",
            "SRC",
            "DST_NS",
            "DST",
            "RPS",
            "SUCCESS",
            "LATENCY_P99",
            "TRACED",
        ],
    }
}

fn cells(view: View, key: &[String], s: &Stats) -> Vec<String> {
    let mut out: Vec<String> = key.to_vec();
    let rps = format!("{:.2}", s.rps);
    match view {
        View::Deploy | View::Route | View::Pod => {
            out.extend([percent(s), rps, ms(s.p50), ms(s.p95), ms(s.p99)]);
            if view != View::Route {
                out.push(s.tcp.map_or_else(|| "-".into(), |t| format!("{t:.0}")));
            }
        }
        View::Edges => {
            let traced = match s.traced {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            out.extend([rps, percent(s), ms(s.p99), traced.into()]);
        }
    }
    out
}

/// An aligned table: columns separated by at least two spaces, a trailing newline.
pub fn table(view: View, rows: &Rows) -> String {
    let mut lines: Vec<Vec<String>> = vec![header(view).iter().map(|h| h.to_string()).collect()];
    lines.extend(rows.iter().map(|(k, s)| cells(view, k, s)));
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            text.push_str(cell);
            if c + 1 < columns {
                let pad = widths[c] - cell.chars().count() + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// A JSON array of row objects; rates as numbers, latencies in ms, `null` when unknown.
pub fn json(view: View, rows: &Rows) -> Value {
    let items = rows.iter().map(|(k, s)| {
        let success = s.success().map_or(Value::Null, |v| json!(round(v, 6)));
        let rps = json!(round(s.rps, 6));
        match view {
            View::Deploy | View::Route | View::Pod => {
                let mut o = json!({
                    "namespace": k[0],
                    "name": k[1],
                    "success_rate": success,
                    "rps": rps,
                    "latency_ms_p50": ms_json(s.p50),
                    "latency_ms_p95": ms_json(s.p95),
                    "latency_ms_p99": ms_json(s.p99),
                });
                if view == View::Route {
                    o["route"] = json!(k[2]);
                } else {
                    o["tcp_conn"] = s.tcp.map_or(Value::Null, |t| json!(t));
                }
                o
            }
            View::Edges => json!({
                "src_namespace": k[0],
                "src": k[1],
                "dst_namespace": k[2],
                "dst": k[3],
                "rps": rps,
                "success_rate": success,
                "latency_ms_p99": ms_json(s.p99),
                "traced": s.traced,
            }),
        }
    });
    Value::Array(items.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(view: View) -> Rows {
        let mut rows = Rows::new();
        let key: Vec<String> = match view {
            View::Edges => vec!["lab", "client", "lab", "server"],
            View::Route => vec!["lab", "server", "/users/{id}"],
            View::Deploy | View::Pod => vec!["lab", "server"],
        }
        .into_iter()
        .map(String::from)
        .collect();
        let mut other = key.clone();
        other[1] = "a-much-longer-workload-name".into();
        rows.insert(
            key,
            Stats {
                rps: 12.0,
                success_rps: 11.0,
                p50: Some(0.01375),
                p95: Some(0.425),
                p99: Some(0.485),
                tcp: (view == View::Deploy).then_some(4.0),
                traced: (view == View::Edges).then_some(true),
            },
        );
        rows.insert(
            other,
            Stats {
                tcp: (view == View::Deploy).then_some(1.0),
                traced: (view == View::Edges).then_some(false),
                ..Stats::default()
            },
        );
        rows
    }

    #[test]
    fn tables_are_aligned() {
        let t = table(View::Deploy, &rows(View::Deploy));
        assert_eq!(
            t,
            "NAMESPACE  NAME                         SUCCESS  RPS    LATENCY_P50  LATENCY_P95  LATENCY_P99  TCP_CONN\n\
             lab        a-much-longer-workload-name  -        0.00   -            -            -            1\n\
             lab        server                       91.67%   12.00  13.8ms       425ms        485ms        4\n"
        );
        let t = table(View::Edges, &rows(View::Edges));
        assert_eq!(
            t,
            "SRC_NS  SRC                          DST_NS  DST     RPS    SUCCESS  LATENCY_P99  TRACED\n\
             lab     a-much-longer-workload-name  lab     server  0.00   -        -            no\n\
             lab     client                       lab     server  12.00  91.67%   485ms        yes\n"
        );
        let t = table(View::Route, &rows(View::Route));
        assert!(t.starts_with("NAMESPACE  NAME "), "{t}");
        assert!(t.contains("/users/{id}  91.67%"), "{t}");
    }

    #[test]
    fn json_has_numbers_and_nulls() {
        let j = json(View::Deploy, &rows(View::Deploy));
        assert_eq!(j[1]["name"], "server");
        assert_eq!(j[1]["success_rate"], 0.916667);
        assert_eq!(j[1]["rps"], 12.0);
        assert_eq!(j[1]["latency_ms_p50"], 13.75);
        assert_eq!(j[1]["tcp_conn"], 4.0);
        assert_eq!(j[0]["success_rate"], Value::Null);
        assert_eq!(j[0]["latency_ms_p99"], Value::Null);
        let j = json(View::Edges, &rows(View::Edges));
        assert_eq!(j[1]["src"], "client");
        assert_eq!(j[1]["dst"], "server");
        assert_eq!(j[1]["traced"], true);
        assert_eq!(j[0]["traced"], false);
        let j = json(View::Route, &rows(View::Route));
        assert_eq!(j[1]["route"], "/users/{id}");
        assert!(j[1].get("tcp_conn").is_none());
    }
}
