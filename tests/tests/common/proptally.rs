//! Counting what the agent linked in a load run through the plain web of the
//! propagation lab ([`super::propchain`]), and checking that nothing was linked to the
//! wrong request.

use super::propchain::{hops_of, propagation_samples, settle, PropLab, SPAN_WAIT};
use hoptrace_tests::assert_eventually;
use hoptrace_tests::hops::Hop;
use hoptrace_tests::otlp::ReceivedSpan;
use hoptrace_tests::plainapp::LoadRun;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long the metric may take to count a finished request.
pub const COUNTED: Duration = Duration::from_secs(30);

/// The propagation counter of `web` at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// `result="linked"`.
    pub linked: f64,
    /// `result="ambiguous"`.
    pub ambiguous: f64,
    /// `result="none"`.
    pub none: f64,
}

impl Counts {
    /// Now.
    pub fn now(p: &PropLab) -> Counts {
        Counts {
            linked: p.propagation("linked"),
            ambiguous: p.propagation("ambiguous"),
            none: p.propagation("none"),
        }
    }

    /// linked + ambiguous + none.
    pub fn total(&self) -> f64 {
        self.linked + self.ambiguous + self.none
    }

    /// The growth since `before`.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            linked: self.linked - before.linked,
            ambiguous: self.ambiguous - before.ambiguous,
            none: self.none - before.none,
        }
    }
}

/// What a load run through the plain web produced.
#[derive(Debug)]
pub struct Tally {
    /// Backend calls made (requests × calls).
    pub calls: usize,
    /// The metric's counts for this run.
    pub counts: Counts,
    /// web→backend hops found in the requests' traces.
    pub linked_hops: usize,
    /// Backend calls the web made while serving more than one request.
    pub overlapped: usize,
    /// Of them, those that arrived with a context.
    pub overlapped_linked: usize,
    /// The most requests the web served at once at a call.
    pub max_in_flight: u32,
}

/// After `run`: waits until the metric counted every backend call and the spans of
/// every linked one arrived, then checks that no backend hop (by proxy span or by
/// what backend.py received) is in another request's trace or under another parent.
pub fn tally(p: &PropLab, run: &LoadRun, calls: usize, before: &Counts) -> Tally {
    let total = run.requests.len() * calls;
    assert_eventually!(
        Counts::now(p).since(before).total() >= total as f64,
        COUNTED,
        "propagation metric of web counted {} of {total} backend calls:\n{}",
        Counts::now(p).since(before).total(),
        propagation_samples(p.web_agent(), "web")
    );
    let counts = Counts::now(p).since(before);
    assert_eq!(
        counts.total(),
        total as f64,
        "linked+ambiguous+none must equal the backend calls: {counts:?}"
    );
    let tid: HashMap<&str, &str> = run
        .requests
        .iter()
        .map(|r| (r.tag.as_str(), r.trace_id.as_str()))
        .collect();
    let traces: HashSet<&str> = tid.values().copied().collect();
    let ours = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|s| traces.contains(s.trace_id.as_str()))
            .cloned()
            .collect()
    };
    let want = 4 * run.requests.len() + 4 * counts.linked as usize;
    assert_eventually!(
        ours(&p.otlp.spans()).len() >= want,
        SPAN_WAIT * 3,
        "{} of {want} proxy spans arrived (4 per request, 4 per linked call)",
        ours(&p.otlp.spans()).len()
    );
    settle();
    let all = p.otlp.spans();
    let spans = ours(&all);
    assert_eq!(spans.len(), want, "proxy spans of the run's traces");

    // No proxy span of a backend call anywhere but in its own request's trace.
    let mut wrong = Vec::new();
    for s in &all {
        let Some(tag) = s.attr("url.path").and_then(|p| p.strip_prefix("/echo/")) else {
            continue;
        };
        let tag = tag.split('/').next().unwrap_or_default();
        if let Some(t) = tid.get(tag) {
            if s.trace_id != *t {
                wrong.push(format!(
                    "span {} of /echo/{tag} in trace {}, want {t}",
                    s.span_id, s.trace_id
                ));
            }
        }
    }
    // Every backend hop under its own request's client→web hop.
    let hops = hops_of(&spans);
    let first: HashMap<&str, &Hop> = hops
        .iter()
        .filter(|h| h.client == "lab/client")
        .map(|h| (h.trace_id.as_str(), h))
        .collect();
    assert_eq!(
        first.len(),
        run.requests.len(),
        "a client→web hop per request"
    );
    let mut linked_hops = 0;
    for hop in hops.iter().filter(|h| h.client == "lab/web") {
        linked_hops += 1;
        match first.get(hop.trace_id.as_str()) {
            Some(f) if hop.follows(f) => {}
            _ => wrong.push(format!(
                "backend hop {:?} in trace {} is not under its client→web hop",
                hop.spans, hop.trace_id
            )),
        }
    }
    // What backend.py received: a context only of its own request.
    let mut backend_with_context = 0;
    let (mut overlapped, mut overlapped_linked, mut max_in_flight) = (0, 0, 0);
    for req in &run.requests {
        let answer = req.answer().expect("web answer");
        assert_eq!(answer.calls.len(), calls, "{}: {:?}", req.tag, answer.calls);
        for call in &answer.calls {
            let seen = call.backend().expect("backend answer");
            max_in_flight = max_in_flight.max(call.in_flight);
            overlapped += usize::from(call.in_flight > 1);
            if let Some(tp) = seen.header("traceparent") {
                backend_with_context += 1;
                overlapped_linked += usize::from(call.in_flight > 1);
                if seen.trace_id != req.trace_id {
                    wrong.push(format!(
                        "{} reached backend.py with {tp} (request {} has trace {})",
                        call.path, req.tag, req.trace_id
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong parents:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(
        linked_hops, counts.linked as usize,
        "backend hops vs linked {counts:?}"
    );
    assert_eq!(
        backend_with_context, linked_hops,
        "backend calls with a context vs linked hops"
    );
    Tally {
        calls: total,
        counts,
        linked_hops,
        overlapped,
        overlapped_linked,
        max_in_flight,
    }
}
