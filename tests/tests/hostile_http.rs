//! Hostile HTTP through the agent (issue 8, continued): `attacker` sends request
//! smuggling attempts, oversize heads and HTTP/2 floods to `victim` (the plain
//! `apps/hostile.py serve` server) through the agent. Each case checks
//!
//! - what the attacker got back: what a careful proxy answers (a 4xx or a closed
//!   connection; never an answer to a second request hidden in the first);
//! - what the app saw: the server's `GET /count` lists every request line it parsed,
//!   and no `/smuggled-*` line may ever be among them;
//! - that the agent still serves the attacker (that `GET /count` is a normal request
//!   from the attacker, through the agent);
//! - that the agent is alive with bounded fds and memory, and the neighbours'
//!   connect loop (`bg-client` → `bg-server`) saw no failure.
//!
//! Attackers and the server are `apps/hostile.py` (`raw --read-all`, `h2`).

mod common;

use common::hostile::*;
use hoptrace_tests::{assert_eventually, require_root};
use serde_json::Value;
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// How long `raw --read-all` waits for more after its request: a careful proxy
/// answers and closes at once, so only a connection left open costs this much.
const READ_ALL_TIMEOUT_S: &str = "2";

/// Resident memory the agent must stay under through every case.
const MAX_RSS_MIB: f64 = 150.0;

/// The request a confused parser would find inside the attacker's bytes.
fn smuggled(case: &str) -> String {
    format!("GET /smuggled-{case} HTTP/1.1\r\nHost: victim\r\n\r\n")
}

/// Pipelined after a request that must be answered: its answer closes the exchange.
const END: &str = "GET /end HTTP/1.1\r\nHost: victim\r\nConnection: close\r\n\r\n";

/// What a careful proxy does with a case.
enum Expect {
    /// Refused: a 4xx or no answer at all, and the connection closed; nothing
    /// reaches the app.
    Refused,
    /// `Content-Length` and `Transfer-Encoding: chunked` together: refused as above,
    /// or framed by `Transfer-Encoding` alone (RFC 9112 §6.3: the app sees `line`
    /// with a body of `body_len` bytes) and the connection closed after the answer
    /// (§6.1), so nothing after the chunked body is ever read as a request.
    ChunkedThenClosed { line: &'static str, body_len: u64 },
    /// A valid request whose body holds a request: answered 200 with the whole body
    /// (`body_len` bytes) passed on as a body, then the pipelined [`END`] answered,
    /// then the connection closed.
    Answered { line: &'static str, body_len: u64 },
    /// Over a head limit: a 4xx (431 by hyper's limits) or no answer, and the
    /// connection closed or reset. The agent may relay a head within its own
    /// limits: then the app saw `line` at most (and answered it as it does).
    TooLarge { line: &'static str },
}

/// Every request line the victim's server has parsed so far, from a normal
/// `GET /count` sent by the attacker through the agent (which must answer it).
fn app_lines(h: &Hostile, case: &str) -> Vec<String> {
    let r = raw(
        h,
        &h.attacker,
        h.victim.addr(HTTP_PORT),
        "count",
        b"GET /count HTTP/1.1\r\nHost: victim\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        r["status"].as_u64(),
        Some(200),
        "{case}: the agent no longer serves a normal request from the attacker: {r}"
    );
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{case}: /count answered {r}: {e}"));
    body["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: /count answered {body}"))
        .iter()
        .map(|l| l.as_str().unwrap_or("").to_string())
        .collect()
}

/// Sends `request` from the attacker to the victim through the agent and reads
/// every answer until the connection ends (or [`READ_ALL_TIMEOUT_S`]).
fn raw_all(h: &Hostile, name: &str, request: &[u8]) -> Value {
    let file = h.lab.tmp_dir().join(format!("{name}.req"));
    std::fs::write(&file, request).expect("write request");
    let (a, f) = (
        h.victim.addr(HTTP_PORT).to_string(),
        file.display().to_string(),
    );
    run(
        &h.attacker,
        &[
            "raw",
            "--addr",
            &a,
            "--data-file",
            &f,
            "--read-all",
            "--timeout",
            READ_ALL_TIMEOUT_S,
        ],
        Duration::from_secs(30),
    )
}

/// `body_len` of the first JSON answer in a raw report's body.
fn first_body_len(r: &Value) -> Option<u64> {
    let body = r["body"].as_str()?;
    let first = serde_json::Deserializer::from_str(body)
        .into_iter::<Value>()
        .next()?
        .ok()?;
    first["body_len"].as_u64()
}

/// Runs one HTTP/1 case and checks the attacker's answer and the app's view.
fn check(h: &Hostile, name: &str, request: &[u8], expect: Expect) {
    let before = app_lines(h, name);
    let r = raw_all(h, name, request);
    let after = app_lines(h, name);
    let seen: Vec<&str> = after[before.len().min(after.len())..]
        .iter()
        .map(String::as_str)
        .collect();
    let statuses: Vec<u64> = r["statuses"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let closed = r["closed"].as_bool() == Some(true);
    let outcome = r["outcome"].as_str().unwrap_or("?");
    eprintln!(
        "{name}: attacker got {statuses:?}, connection {} ({outcome}) after {:.0} ms; app saw {seen:?}",
        if closed { "closed" } else { "left open" },
        r["ms"].as_f64().unwrap_or(-1.0),
    );
    let what = format!("attacker got {statuses:?} ({outcome}), app saw {seen:?}; report {r}");
    assert!(
        !seen.iter().any(|l| l.contains("smuggled")),
        "{name}: a smuggled request reached the app: {what}"
    );
    let client_error = |s: &u64| (400..500).contains(s);
    match expect {
        Expect::Refused => {
            assert!(
                statuses.len() <= 1 && statuses.iter().all(client_error),
                "{name}: want a 4xx or no answer: {what}"
            );
            assert!(closed, "{name}: the connection stayed open: {what}");
            assert!(seen.is_empty(), "{name}: the app saw a request: {what}");
        }
        Expect::ChunkedThenClosed { line, body_len } => {
            assert!(closed, "{name}: the connection stayed open: {what}");
            match statuses.as_slice() {
                [] => assert!(seen.is_empty(), "{name}: {what}"),
                [s] if client_error(s) => assert!(seen.is_empty(), "{name}: {what}"),
                [200] => {
                    assert_eq!(seen, [line], "{name}: {what}");
                    assert_eq!(
                        first_body_len(&r),
                        Some(body_len),
                        "{name}: the body was not framed by Transfer-Encoding: {what}"
                    );
                }
                _ => panic!("{name}: want one answer (4xx, or 200 framed as chunked): {what}"),
            }
        }
        Expect::Answered { line, body_len } => {
            assert_eq!(
                statuses,
                [200, 200],
                "{name}: want the request and END answered: {what}"
            );
            assert!(closed, "{name}: the connection stayed open: {what}");
            assert_eq!(seen, [line, "GET /end HTTP/1.1"], "{name}: {what}");
            assert_eq!(
                first_body_len(&r),
                Some(body_len),
                "{name}: the body did not reach the app whole: {what}"
            );
        }
        Expect::TooLarge { line } => {
            assert!(
                statuses.len() <= 1 && statuses.iter().all(client_error),
                "{name}: want a 4xx (431) or no answer: {what}"
            );
            assert!(closed, "{name}: the connection stayed open: {what}");
            assert!(
                seen.is_empty() || seen == [line],
                "{name}: the app saw more than this request: {what}"
            );
        }
    }
}

/// The agent is alive, its fds are back near `base_fds`, its memory is bounded, and
/// the neighbours never noticed.
fn assert_agent_fine(h: &mut Hostile, case: &str, base_fds: usize) {
    assert!(
        h.agent.is_running(),
        "{case}: the agent died; log:\n{}",
        h.agent.log_tail(40)
    );
    let pid = h.pid();
    assert_eventually!(
        fds(pid) < base_fds + 40,
        Duration::from_secs(5),
        "{case}: agent fds {} (base {base_fds})",
        fds(pid)
    );
    let rss = rss_mib(pid);
    assert!(rss < MAX_RSS_MIB, "{case}: agent RSS {rss:.1} MiB");
    h.assert_neighbours_fine(case);
}

#[test]
fn request_smuggling_never_reaches_the_app() {
    if !require_root() {
        return;
    }
    let mut h = Hostile::new(&[]);
    let base_fds = fds(h.pid());

    // CL.TE: Content-Length covers a chunked body's end and a request after it. Framed
    // by Content-Length (and Transfer-Encoding left for the app), the app would read
    // the chunked end, then the hidden request.
    let body = format!("0\r\n\r\n{}", smuggled("cl-te"));
    let req = format!(
        "POST /cl-te HTTP/1.1\r\nHost: victim\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    check(
        &h,
        "cl-te",
        req.as_bytes(),
        Expect::ChunkedThenClosed {
            line: "POST /cl-te HTTP/1.1",
            body_len: 0,
        },
    );

    // TE.CL: one chunk holding a request, `Content-Length: 4` after the
    // Transfer-Encoding. Forwarded with Content-Length (and no Transfer-Encoding),
    // the app would read 4 bytes of body, then the chunk's data as a request.
    let hidden = smuggled("te-cl");
    let req = format!(
        "POST /te-cl HTTP/1.1\r\nHost: victim\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
        hidden.len()
    );
    check(
        &h,
        "te-cl",
        req.as_bytes(),
        Expect::ChunkedThenClosed {
            line: "POST /te-cl HTTP/1.1",
            body_len: hidden.len() as u64,
        },
    );

    // Two Content-Lengths that disagree: whichever the app picks, the proxy may have
    // picked the other one.
    let body = smuggled("double-cl");
    let req = format!(
        "POST /double-cl HTTP/1.1\r\nHost: victim\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    check(&h, "double-cl", req.as_bytes(), Expect::Refused);

    // Obfuscated Transfer-Encodings next to a Content-Length: a parser that takes any
    // of them for chunked disagrees with one that uses the Content-Length.
    for (name, te) in [
        ("te-xchunked", "Transfer-Encoding: xchunked"),
        ("te-space-before-colon", "Transfer-Encoding : chunked"),
        (
            "te-chunked-identity",
            "Transfer-Encoding: chunked, identity",
        ),
    ] {
        let body = format!("0\r\n\r\n{}", smuggled(name));
        let req = format!(
            "POST /{name} HTTP/1.1\r\nHost: victim\r\nContent-Length: {}\r\n{te}\r\n\r\n{body}",
            body.len()
        );
        check(&h, name, req.as_bytes(), Expect::Refused);
    }

    // A request hidden in a GET's body (proxies that ignore GET bodies read it as the
    // next request), and in a chunk's data after a fake last chunk: both are bodies.
    let hidden = smuggled("get-body");
    let req = format!(
        "GET /get-body HTTP/1.1\r\nHost: victim\r\nContent-Length: {}\r\n\r\n{hidden}{END}",
        hidden.len()
    );
    check(
        &h,
        "get-body",
        req.as_bytes(),
        Expect::Answered {
            line: "GET /get-body HTTP/1.1",
            body_len: hidden.len() as u64,
        },
    );
    let data = format!("0\r\n\r\n{}", smuggled("chunk-data"));
    let req = format!(
        "POST /chunk-data HTTP/1.1\r\nHost: victim\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{data}\r\n0\r\n\r\n{END}",
        data.len()
    );
    check(
        &h,
        "chunk-data",
        req.as_bytes(),
        Expect::Answered {
            line: "POST /chunk-data HTTP/1.1",
            body_len: data.len() as u64,
        },
    );

    assert_agent_fine(&mut h, "request smuggling", base_fds);
}

#[test]
fn oversized_heads_are_refused() {
    if !require_root() {
        return;
    }
    let mut h = Hostile::new(&[]);
    let base_fds = fds(h.pid());

    // Each head ends with `Connection: close`: a head the agent relays is answered by
    // the app, and the agent may keep a connection open after it (the app's own
    // `Connection: close` is hop-by-hop); asking to close saves waiting for that.
    //
    // One 100 KiB header line: within hyper's head buffer (~400 KiB), so the agent may
    // relay it; the app (64 KiB lines at most) answers 431 itself.
    let req = format!(
        "GET /big-line HTTP/1.1\r\nHost: victim\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    check(
        &h,
        "100k-header-line",
        req.as_bytes(),
        Expect::TooLarge {
            line: "GET /big-line HTTP/1.1",
        },
    );

    // 200 header fields: over hyper's 100.
    let mut req = String::from("GET /many HTTP/1.1\r\nHost: victim\r\n");
    for i in 0..200 {
        req.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    check(
        &h,
        "200-headers",
        req.as_bytes(),
        Expect::TooLarge {
            line: "GET /many HTTP/1.1",
        },
    );

    // A 1 MiB head (64 fields of 16 KiB): over hyper's head buffer.
    let mut req = String::from("GET /huge HTTP/1.1\r\nHost: victim\r\n");
    for i in 0..64 {
        req.push_str(&format!("X-Huge-{i}: {}\r\n", "h".repeat(16 * 1024)));
    }
    req.push_str("Connection: close\r\n\r\n");
    check(
        &h,
        "1mib-head",
        req.as_bytes(),
        Expect::TooLarge {
            line: "GET /huge HTTP/1.1",
        },
    );

    assert_agent_fine(&mut h, "oversized heads", base_fds);
}

/// Request lines with how often each came, in first-seen order.
fn summarize(lines: &[String]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for l in lines {
        match out.iter_mut().find(|(k, _)| k == l) {
            Some((_, n)) => *n += 1,
            None => out.push((l.clone(), 1)),
        }
    }
    out
}

/// Runs `hostile.py h2 --mode <mode> <args>` in the attacker while sampling the
/// agent's RSS: the report and the peak RSS in MiB.
fn h2_attack(h: &Hostile, mode: &str, args: &[&str]) -> (Value, f64) {
    let pid = h.pid();
    let to = h.victim.addr(HTTP_PORT).to_string();
    let mut argv = vec!["h2", "--addr", &to, "--mode", mode];
    argv.extend_from_slice(args);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0.0_f64;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak.max(rss_mib(pid))
        });
        let r = run(&h.attacker, &argv, Duration::from_secs(60));
        done.store(true, Ordering::Relaxed);
        (r, sampler.join().expect("RSS sampler"))
    })
}

/// What an HTTP/2 flood must end in.
#[derive(Clone, Copy)]
enum H2Expect {
    /// A GOAWAY or the connection closed, within a few seconds of the last frame.
    Ended,
    /// That, or the server kept pace: the connection still answers a request (a
    /// SETTINGS flood is ACKed frame by frame; streams reset after the server took
    /// them up are no more than cancelled requests).
    EndedOrServing,
}

#[test]
fn http2_floods_leave_the_agent_standing() {
    if !require_root() {
        return;
    }
    let mut h = Hostile::new(&[]);
    let base_fds = fds(h.pid());

    for (case, mode, args, expect) in [
        // CVE-2023-44487: 5,000 streams opened and reset at once.
        (
            "rapid reset",
            "rapid-reset",
            &["--count", "5000", "--wait", "3"][..],
            H2Expect::Ended,
        ),
        // 500 streams one at a time, 2 ms apart: the agent has taken each stream up
        // (and started proxying it) before its reset arrives, where h2's limit (which
        // counts resets of streams not yet taken up) does not apply: every stream is
        // cancelled. An agent falling behind that pace gets the GOAWAY above instead.
        (
            "paced rapid reset",
            "rapid-reset",
            &[
                "--count",
                "500",
                "--batch",
                "1",
                "--pause-ms",
                "2",
                "--wait",
                "3",
            ][..],
            H2Expect::EndedOrServing,
        ),
        // CVE-2024-27316 and kin: a header block that never ends.
        (
            "CONTINUATION flood",
            "continuation",
            &["--count", "5000", "--wait", "3"][..],
            H2Expect::Ended,
        ),
        // 10,000 SETTINGS without waiting for their ACKs.
        (
            "SETTINGS flood",
            "settings",
            &["--count", "10000", "--wait", "3"][..],
            H2Expect::EndedOrServing,
        ),
    ] {
        let case = format!("h2 {case}");
        let app_before = app_lines(&h, &case).len();
        let (r, peak) = h2_attack(&h, mode, args);
        eprintln!("{case}: peak agent RSS {peak:.1} MiB; attacker saw {r}");
        assert!(
            peak < MAX_RSS_MIB,
            "{case}: agent RSS peaked at {peak:.1} MiB: {r}"
        );
        let outcome = r["outcome"].as_str().unwrap_or("?");
        let ended = matches!(outcome, "goaway" | "closed" | "reset")
            && r["ms_to_end"].as_f64().unwrap_or(1e9) < 3000.0;
        let serving = r["follow_up"]["answered"].as_bool() == Some(true);
        if mode == "settings" && !ended {
            // Kept pace: every SETTINGS (the preface's and the flood's) was ACKed.
            assert_eq!(
                r["settings_acks"].as_u64(),
                Some(10_001),
                "{case}: SETTINGS left unACKed on an open connection: {r}"
            );
        }
        match expect {
            H2Expect::Ended => assert!(
                ended,
                "{case}: want a GOAWAY or a closed connection within a few seconds, not a hang: {r}"
            ),
            H2Expect::EndedOrServing => assert!(
                ended || serving,
                "{case}: want a GOAWAY, a closed connection or a request still answered, not a hang: {r}"
            ),
        }
        // The agent still serves the attacker (HTTP/1), and nothing else suffered. (The
        // app speaks HTTP/1 only: streams the agent passed on reached it as HTTP/2
        // connections it refused, one request line `PRI * HTTP/2.0` each.)
        let lines = app_lines(&h, &case);
        eprintln!(
            "{case}: the app saw {:?}",
            summarize(&lines[app_before.min(lines.len())..])
        );
        assert_agent_fine(&mut h, &case, base_fds);
    }
}
