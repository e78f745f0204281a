//! The callgrind phase's section of the report (see [`super::callgrind`]).

use super::callgrind::CallgrindResult;
use std::fmt::Write as _;

/// Thousands separated by a thin space, for long instruction counts.
fn count(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn spans(n: u64) -> String {
    if n == 0 {
        "–".into()
    } else {
        n.to_string()
    }
}

/// The Markdown section.
pub fn markdown(c: &CallgrindResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n### Instructions per request (callgrind)\n");
    let _ = writeln!(
        out,
        "{}: the proxies under `valgrind --tool=callgrind` (every process and thread), counters zeroed after {} warm-up requests and dumped after the counted ones; \
         `labapp load` closed loop on {} keep-alive connections, every request with its own sampled `traceparent`{}. Two windows, N = {} and 2N requests; \
         for the hoptrace scenarios each window lasts until the OTLP receiver holds its 4 spans per request (export included). \
         Instruction counts do not depend on how busy the machine is.\n",
        c.valgrind,
        c.warmup,
        c.conns,
        if c.id_paths {
            " and a path of its own with an id in one route (`/p/<i>`, route `/p/{id}`)"
        } else if c.distinct_paths {
            " and a path of its own (`/p<i>x`)"
        } else {
            ""
        },
        c.requests
    );
    let _ = writeln!(
        out,
        "| scenario | Ir/request | Ir/request (N) | Ir/request (2N) | Ir(2N) / Ir(N) | spans (N / 2N) | wall s (N / 2N) | start-up + warm-up s |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for s in &c.scenarios {
        let w = |i: usize, f: &dyn Fn(&super::callgrind::Window) -> String| {
            s.windows.get(i).map(f).unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.3} | {} / {} | {} / {} | {:.0} |",
            s.scenario,
            count(s.ir_per_request),
            w(0, &|w| count(w.ir_per_request)),
            w(1, &|w| count(w.ir_per_request)),
            s.linearity,
            w(0, &|w| spans(w.spans)),
            w(1, &|w| spans(w.spans)),
            w(0, &|w| format!("{:.1}", w.wall_s)),
            w(1, &|w| format!("{:.1}", w.wall_s)),
            s.startup_s
        );
    }
    if let Some(r) = c.ratio {
        let _ = writeln!(
            out,
            "\n**hoptrace-http / sidecar: {r:.2}×** instructions per request (issue 10's target: ≤ 1.0×)."
        );
    }
    let _ = writeln!(
        out,
        "\nPer process, instructions per request in the 2N window (`callgrind_annotate FILE` lists the functions):\n"
    );
    for s in &c.scenarios {
        if let Some(w) = s.windows.last() {
            let parts: Vec<String> = w
                .processes
                .iter()
                .map(|p| {
                    format!(
                        "{} {} (`{}`)",
                        p.name,
                        count(p.ir as f64 / w.requests.max(1) as f64),
                        p.file.display()
                    )
                })
                .collect();
            let _ = writeln!(out, "- {}: {}", s.scenario, parts.join("; "));
        }
    }
    for f in &c.failures {
        let _ = writeln!(out, "- **not measured**: {f}");
    }
    let _ = writeln!(out, "\nThe callgrind phase took {:.0} s.", c.elapsed_s);
    out
}

#[cfg(test)]
mod tests {
    use super::super::callgrind::{parse_ir, valgrind_prefix, CgScenario, Window};
    use super::*;
    use std::process::Command;

    /// A dump as callgrind 3.19 writes it (`callgrind_control --zero`, then `--dump`,
    /// of `sleep 30`): the header's `summary:` is written before the costs, `totals:`
    /// at the end is the figure.
    const DUMP: &str = "# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 15467
cmd:  sleep 30
part: 1


desc: I1 cache: 
desc: D1 cache: 
desc: LL cache: 

desc: Timerange: Basic block 0 - 70250
desc: Trigger: dump

positions: line
events: Ir
summary: 0


ob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
fl=(220) ./posix/../sysdeps/unix/sysv/linux/nanosleep.c
fn=(970) nanosleep

ob=(5) /usr/bin/sleep
fl=(139) ???
fn=(958) 0x0000000000006420
0 5

totals: 5
";

    #[test]
    fn parses_callgrind_files() {
        assert_eq!(parse_ir(DUMP).expect("parse"), 5);
        // Several events, Ir not first; an older writer's `summary:` only.
        let multi = "events: Dr Ir Dw\nsummary: 7 1234 9\nfn=(1) x\n0 7 1234 9\n";
        assert_eq!(parse_ir(multi).expect("parse"), 1234);
        // Trailing zero costs may be omitted.
        assert_eq!(parse_ir("events: Dr Ir\ntotals: 3\n").expect("parse"), 0);
        assert!(parse_ir("events: Ir\n").is_err(), "an incomplete dump");
        assert!(parse_ir("events: Dr\ntotals: 1\n").is_err());
        assert!(parse_ir("").is_err());
    }

    #[test]
    fn renders_the_section() {
        let w = |n: u64, ir: u64| Window {
            requests: n,
            ir,
            ir_per_request: ir as f64 / n as f64,
            ..Default::default()
        };
        let c = CallgrindResult {
            valgrind: "valgrind-3.19.0".into(),
            requests: 10,
            scenarios: vec![CgScenario {
                scenario: "sidecar".into(),
                windows: vec![w(10, 1_000_000), w(20, 2_000_000)],
                ir_per_request: 100_000.0,
                linearity: 2.0,
                startup_s: 3.0,
            }],
            ratio: Some(2.5),
            failures: vec!["hoptrace-http: nope".into()],
            ..Default::default()
        };
        let md = markdown(&c);
        assert!(
            md.contains("| sidecar | 100,000 | 100,000 | 100,000 | 2.000 |"),
            "{md}"
        );
        assert!(md.contains("2.50×") && md.contains("not measured**: hoptrace-http: nope"));
        assert_eq!(count(1234567.0), "1,234,567");
        assert_eq!(count(999.0), "999");
    }

    /// A real valgrind run of a real program, read back with the same parser (skipped
    /// without valgrind).
    #[test]
    fn counts_a_real_program() {
        if Command::new("valgrind").arg("--version").output().is_err() {
            eprintln!("skipping: valgrind is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("hoptrace-cg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let prefix = valgrind_prefix(&dir, "t");
        let status = Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(["/bin/sh", "-c", ":"])
            .status()
            .expect("valgrind");
        assert!(status.success());
        let file = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().contains("t.callgrind.out."))
            .expect("an output file");
        let ir = parse_ir(&std::fs::read_to_string(&file).expect("read")).expect("parse");
        std::fs::remove_dir_all(&dir).ok();
        // The dynamic loader alone runs tens of thousands of instructions.
        assert!((10_000..100_000_000).contains(&ir), "{ir}");
    }
}
