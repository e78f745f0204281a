//! Samples of a run, their medians and ratios, and the DESIGN §6 goals.
//!
//! Ratios are taken per round, against the baseline measured in the same round, and
//! the median over rounds is reported (slow drifts in the machine's load cancel out).
//! Added latency is `p50(scenario) - p50(direct)` per round, median over rounds.

use super::loadgen::LoadReport;
use super::{Scenario, Workload};
use serde::{Deserialize, Serialize};

/// One scenario measured in one round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Scenario name.
    pub scenario: String,
    /// Round (1-based).
    pub round: u32,
    /// Saturation: answered requests per second.
    pub sat_rps: f64,
    /// Saturation: answered requests.
    pub sat_requests: u64,
    /// Saturation: failed requests.
    pub sat_errors: u64,
    /// Saturation: CPU time of the proxies per answered request, µs.
    pub sat_cpu_us: f64,
    /// The fixed-rate run.
    pub fixed: LoadReport,
    /// Fixed rate: CPU time of the proxies per answered request, µs.
    pub fixed_cpu_us: f64,
    /// Saturation: CPU time of everything in the lab (client, server, proxies,
    /// agents) per answered request, µs.
    pub sat_lab_cpu_us: f64,
    /// Fixed rate: the same.
    pub fixed_lab_cpu_us: f64,
    /// Saturation: busy CPU time of the whole machine per answered request, µs. Unlike
    /// the cgroups' times it includes softirqs and kernel workers, which move a spliced
    /// connection's bytes (and every proxy's, in part). Includes the machine's other
    /// work: compare within a run.
    #[serde(default)]
    pub sat_machine_cpu_us: f64,
    /// Saturation: context switches of the proxies' threads per answered request.
    #[serde(default)]
    pub sat_switches: f64,
    /// Fixed rate: the same (at a modest rate nearly every switch is a thread going
    /// to sleep for want of work, to be woken by the next event).
    #[serde(default)]
    pub fixed_switches: f64,
    /// Saturation: minor page faults of the proxies' threads per answered request.
    #[serde(default)]
    pub sat_faults: f64,
    /// Fixed rate: the same.
    #[serde(default)]
    pub fixed_faults: f64,
    /// Fixed rate: the proxies' threads' moves to another CPU per answered request.
    #[serde(default)]
    pub fixed_migrations: f64,
    /// Proportional set size of the proxies after both runs, bytes.
    pub proxy_pss: u64,
    /// Resident set size of the proxies after both runs (summed per process), bytes.
    pub proxy_rss: u64,
    /// CPU time of the in-process OTLP receiver per request (hoptrace-http), µs.
    pub collector_cpu_us: Option<f64>,
    /// Span accounting of both runs (hoptrace-http).
    pub spans: Vec<SpanCheck>,
}

/// Spans of one run of hoptrace-http: the agents' counters and the receiver's count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanCheck {
    /// `saturation` or `fixed`.
    pub phase: String,
    /// Answered requests of the run.
    pub requests: u64,
    /// The fewest spans the run must have produced (4 per answered request).
    pub expected_min: u64,
    /// The most (4 per request, also counting those wrk abandoned in flight).
    pub expected_max: u64,
    /// `hoptrace_spans_exported_total`, both agents, during the run.
    pub exported: u64,
    /// Spans the OTLP receiver got during the run.
    pub received: u64,
    /// `hoptrace_spans_dropped_total`, both agents.
    pub dropped: u64,
    /// `hoptrace_spans_export_failed_total`, both agents.
    pub export_failed: u64,
}

impl SpanCheck {
    /// Everything produced was exported and received, nothing dropped or lost.
    pub fn ok(&self) -> bool {
        self.dropped == 0
            && self.export_failed == 0
            && self.received == self.exported
            && (self.expected_min..=self.expected_max).contains(&self.exported)
    }
}

/// Median of the finite values (NaN when there are none).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// JSON has no NaN (serde_json writes it as `null`): read `null` back as NaN.
fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nan() -> f64 {
    f64::NAN
}

/// Medians of one scenario over the rounds, and its ratios (NaN when not measured).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Rounds measured.
    pub rounds: usize,
    /// Saturation requests/s.
    #[serde(deserialize_with = "nan_from_null")]
    pub rps: f64,
    /// Per-round `rps / rps(direct)`, median.
    #[serde(deserialize_with = "nan_from_null")]
    pub rps_vs_direct: f64,
    /// Per-round `rps / rps(reference)`, median; the reference is `sidecar` for HTTP
    /// and `l4-tcp` for TCP.
    #[serde(deserialize_with = "nan_from_null")]
    pub rps_vs_ref: f64,
    /// p50 at the fixed rate, µs.
    #[serde(deserialize_with = "nan_from_null")]
    pub p50_us: f64,
    /// p99 at the fixed rate, µs.
    #[serde(deserialize_with = "nan_from_null")]
    pub p99_us: f64,
    /// Per-round `p50 - p50(direct)`, median, µs.
    #[serde(deserialize_with = "nan_from_null")]
    pub added_p50_us: f64,
    /// Proxies' CPU per request at saturation, µs.
    #[serde(deserialize_with = "nan_from_null")]
    pub sat_cpu_us: f64,
    /// Proxies' CPU per request at the fixed rate, µs.
    #[serde(deserialize_with = "nan_from_null")]
    pub fixed_cpu_us: f64,
    /// CPU of everything in the lab per request at saturation, µs.
    #[serde(deserialize_with = "nan_from_null")]
    pub sat_lab_cpu_us: f64,
    /// Busy CPU of the whole machine per request at saturation, µs.
    #[serde(default = "nan", deserialize_with = "nan_from_null")]
    pub sat_machine_cpu_us: f64,
    /// CPUs the lab kept busy at saturation (`rps × lab CPU per request`): below the
    /// machine's CPU count, the run got only a share of a contended machine.
    #[serde(deserialize_with = "nan_from_null")]
    pub sat_lab_cpus: f64,
    /// Requests per second of lab CPU time at saturation (`1 / lab CPU per request`):
    /// the path's capacity per CPU, which the machine's other load does not skew.
    #[serde(deserialize_with = "nan_from_null")]
    pub per_cpu_s: f64,
    /// Per-round `per_cpu_s / per_cpu_s(reference)`, median.
    #[serde(deserialize_with = "nan_from_null")]
    pub per_cpu_s_vs_ref: f64,
    /// Proxies' context switches per request at saturation.
    #[serde(default = "nan", deserialize_with = "nan_from_null")]
    pub sat_switches: f64,
    /// Proxies' context switches per request at the fixed rate.
    #[serde(default = "nan", deserialize_with = "nan_from_null")]
    pub fixed_switches: f64,
    /// Proxies' minor page faults per request at saturation.
    #[serde(default = "nan", deserialize_with = "nan_from_null")]
    pub sat_faults: f64,
    /// Proxies' minor page faults per request at the fixed rate.
    #[serde(default = "nan", deserialize_with = "nan_from_null")]
    pub fixed_faults: f64,
    /// Proxies' moves to another CPU per request at the fixed rate.
    #[serde(default = "nan", deserialize_with = "nan_from_null")]
    pub fixed_migrations: f64,
    /// Proxies' PSS, MiB.
    #[serde(deserialize_with = "nan_from_null")]
    pub pss_mib: f64,
    /// Failed requests over all rounds and runs.
    pub errors: u64,
}

/// The direct baseline of a workload.
pub fn direct_of(w: Workload) -> Scenario {
    match w {
        Workload::Http => Scenario::Direct,
        Workload::Tcp => Scenario::DirectTcp,
    }
}

/// The proxy a workload's rows are compared with: the sidecar model for HTTP, the
/// L4 relay for TCP (there is no sidecar for opaque TCP here).
pub fn reference_of(w: Workload) -> Scenario {
    match w {
        Workload::Http => Scenario::Sidecar,
        Workload::Tcp => Scenario::L4Tcp,
    }
}

pub(super) fn of(samples: &[Sample], s: Scenario, round: u32) -> Option<&Sample> {
    samples
        .iter()
        .find(|x| x.scenario == s.name() && x.round == round)
}

/// Median over rounds of `f(sample of s, sample of base)` for rounds that have both.
pub(super) fn per_round(
    samples: &[Sample],
    s: Scenario,
    base: Scenario,
    f: impl Fn(&Sample, &Sample) -> f64,
) -> f64 {
    median(
        samples
            .iter()
            .filter(|x| x.scenario == s.name())
            .filter_map(|x| of(samples, base, x.round).map(|b| f(x, b))),
    )
}

/// The summary of scenario `s`.
pub fn summarize(samples: &[Sample], s: Scenario) -> Summary {
    let mine: Vec<&Sample> = samples.iter().filter(|x| x.scenario == s.name()).collect();
    let m = |f: fn(&Sample) -> f64| median(mine.iter().map(|x| f(x)));
    let (direct, reference) = (direct_of(s.workload()), reference_of(s.workload()));
    Summary {
        scenario: s.name().into(),
        rounds: mine.len(),
        rps: m(|x| x.sat_rps),
        rps_vs_direct: per_round(samples, s, direct, |a, b| a.sat_rps / b.sat_rps),
        rps_vs_ref: per_round(samples, s, reference, |a, b| a.sat_rps / b.sat_rps),
        p50_us: m(|x| x.fixed.p50_us),
        p99_us: m(|x| x.fixed.p99_us),
        added_p50_us: per_round(samples, s, direct, |a, b| a.fixed.p50_us - b.fixed.p50_us),
        sat_cpu_us: m(|x| x.sat_cpu_us),
        fixed_cpu_us: m(|x| x.fixed_cpu_us),
        sat_lab_cpu_us: m(|x| x.sat_lab_cpu_us),
        sat_machine_cpu_us: m(|x| x.sat_machine_cpu_us),
        sat_lab_cpus: m(|x| x.sat_rps * x.sat_lab_cpu_us / 1e6),
        per_cpu_s: m(|x| 1e6 / x.sat_lab_cpu_us),
        per_cpu_s_vs_ref: per_round(samples, s, reference, |a, b| {
            b.sat_lab_cpu_us / a.sat_lab_cpu_us
        }),
        sat_switches: m(|x| x.sat_switches),
        fixed_switches: m(|x| x.fixed_switches),
        sat_faults: m(|x| x.sat_faults),
        fixed_faults: m(|x| x.fixed_faults),
        fixed_migrations: m(|x| x.fixed_migrations),
        pss_mib: m(|x| x.proxy_pss as f64 / (1024.0 * 1024.0)),
        errors: mine.iter().map(|x| x.sat_errors + x.fixed.errors).sum(),
    }
}

/// Whether a goal was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Met.
    Met,
    /// Not met.
    NotMet,
    /// Not measured in this run (scenario or phase skipped, or not reached).
    NotMeasured,
}

impl Verdict {
    /// `Met` when `ok`, else `NotMet`; `NotMeasured` when the value is not finite.
    pub fn of(value: f64, ok: bool) -> Verdict {
        match (value.is_finite(), ok) {
            (false, _) => Verdict::NotMeasured,
            (true, true) => Verdict::Met,
            (true, false) => Verdict::NotMet,
        }
    }

    /// How the report prints it.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "NOT MET",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// One checked goal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Goal {
    /// What is checked.
    pub goal: String,
    /// The target.
    pub target: String,
    /// What this run measured.
    pub measured: String,
    /// The verdict.
    pub verdict: Verdict,
}

/// The §6 goals that come from the scenario measurements (memory goals are in
/// [`super::memory`]). `same_node`: the run put the servers on the client's node
/// (`--same-node`); only then do one pass and two differ.
pub fn scenario_goals(samples: &[Sample], same_node: bool) -> Vec<Goal> {
    let h = Scenario::HoptraceHttp;
    let sc = Scenario::Sidecar;
    let s_h = summarize(samples, h);
    let s_s = summarize(samples, sc);
    let tput = per_round(samples, h, sc, |a, b| a.sat_rps / b.sat_rps);
    let added = s_h.added_p50_us / s_s.added_p50_us;
    let added_ok = s_h.added_p50_us <= 0.5 * s_s.added_p50_us;
    let cpu_fixed = per_round(samples, h, sc, |a, b| a.fixed_cpu_us / b.fixed_cpu_us);
    let cpu_sat = per_round(samples, h, sc, |a, b| a.sat_cpu_us / b.sat_cpu_us);
    let capacity = per_round(samples, h, sc, |a, b| b.sat_lab_cpu_us / a.sat_lab_cpu_us);
    // Requests per lab CPU-second with the golden metrics on, over the same with them off.
    let metrics = per_round(samples, h, Scenario::HoptraceHttpNoMetrics, |a, b| {
        b.sat_lab_cpu_us / a.sat_lab_cpu_us
    });
    // CPU per request of the lean HTTP/1 path over hyper's, at saturation.
    let lean = per_round(samples, h, Scenario::HoptraceHttpHyper, |a, b| {
        a.sat_cpu_us / b.sat_cpu_us
    });
    // CPU per request of a same-node hop in one pass over two passes (with --same-node).
    let one_pass = per_round(samples, h, Scenario::HoptraceHttpTwoPass, |a, b| {
        a.sat_cpu_us / b.sat_cpu_us
    });
    // Requests per lab CPU-second with context propagation on, over the same off.
    let propagation = per_round(samples, h, Scenario::HoptraceHttpPropagation, |off, on| {
        off.sat_lab_cpu_us / on.sat_lab_cpu_us
    });
    // Requests per lab CPU-second with the in-pod connections off TCP (experimental),
    // over the same on TCP, and over the sidecar model.
    let podskip = per_round(samples, Scenario::HoptraceHttpSkipPodTcp, h, |on, off| {
        off.sat_lab_cpu_us / on.sat_lab_cpu_us
    });
    let podskip_capacity = per_round(samples, Scenario::HoptraceHttpSkipPodTcp, sc, |a, b| {
        b.sat_lab_cpu_us / a.sat_lab_cpu_us
    });
    // Opaque TCP: the agents' two legs against haproxy's one relay, and the kernel
    // splice against the userspace relay. By the whole machine's CPU per message at
    // saturation: a spliced message is moved by softirqs and kworkers, which neither
    // the agents' nor the lab's cgroups show.
    // The default path: `--opaque-tcp userspace` (the kernel splice is experimental).
    let tcp_vs_l4 = per_round(
        samples,
        Scenario::HoptraceTcpUserspace,
        Scenario::L4Tcp,
        |a, b| a.sat_machine_cpu_us / b.sat_machine_cpu_us,
    );
    let splice = per_round(
        samples,
        Scenario::HoptraceTcp,
        Scenario::HoptraceTcpUserspace,
        |a, b| a.sat_machine_cpu_us / b.sat_machine_cpu_us,
    );
    // With the in-pod connections off TCP (experimental): one TCP connection per hop.
    let tcp_podskip_vs_l4 = per_round(
        samples,
        Scenario::HoptraceTcpSkipPodTcp,
        Scenario::L4Tcp,
        |a, b| a.sat_machine_cpu_us / b.sat_machine_cpu_us,
    );
    let checks: Vec<&SpanCheck> = samples
        .iter()
        .filter(|x| x.scenario == h.name())
        .flat_map(|x| &x.spans)
        .collect();
    let bad = checks.iter().filter(|c| !c.ok()).count();
    let spans_per_s = 4.0 * s_h.rps;
    vec![
        Goal {
            goal: "throughput of one hoptrace hop (traced) vs the sidecar model".into(),
            target: ">= 1.6x".into(),
            measured: ratio_text(tput, 2),
            verdict: Verdict::of(tput, tput >= 1.6),
        },
        Goal {
            goal: "(derived) requests per lab CPU-second at saturation vs the sidecar model".into(),
            target: ">= 1.6x".into(),
            measured: ratio_text(capacity, 2),
            verdict: Verdict::of(capacity, capacity >= 1.6),
        },
        Goal {
            goal: "added p50 at the fixed rate vs the sidecar model's".into(),
            target: "<= 0.5x".into(),
            measured: format!(
                "{added:.2}x (+{:.0} us vs +{:.0} us over direct)",
                s_h.added_p50_us, s_s.added_p50_us
            ),
            verdict: Verdict::of(added, added_ok && s_s.added_p50_us.is_finite()),
        },
        Goal {
            goal: "proxy CPU per request at the fixed rate vs the sidecar model's".into(),
            target: "<= 0.5x".into(),
            measured: format!(
                "{cpu_fixed:.2}x ({:.1} us vs {:.1} us)",
                s_h.fixed_cpu_us, s_s.fixed_cpu_us
            ),
            verdict: Verdict::of(cpu_fixed, cpu_fixed <= 0.5),
        },
        Goal {
            goal: "proxy CPU per request at saturation vs the sidecar model's".into(),
            target: "<= 0.5x".into(),
            measured: format!(
                "{cpu_sat:.2}x ({:.1} us vs {:.1} us)",
                s_h.sat_cpu_us, s_s.sat_cpu_us
            ),
            verdict: Verdict::of(cpu_sat, cpu_sat <= 0.5),
        },
        Goal {
            goal: "every span exported and received, none dropped (4 per request)".into(),
            target: "all runs".into(),
            measured: format!("{} of {} runs complete", checks.len() - bad, checks.len()),
            verdict: if checks.is_empty() {
                Verdict::NotMeasured
            } else {
                Verdict::of(1.0, bad == 0)
            },
        },
        Goal {
            goal: "spans never the bottleneck up to 50k spans/s".into(),
            target: "no drops at 50k spans/s".into(),
            measured: format!("{spans_per_s:.0} spans/s at saturation (median)"),
            verdict: match (checks.is_empty(), bad == 0, spans_per_s >= 50_000.0) {
                (true, _, _) => Verdict::NotMeasured,
                (false, false, _) => Verdict::NotMet,
                (false, true, true) => Verdict::Met,
                (false, true, false) => Verdict::NotMeasured,
            },
        },
        Goal {
            goal: "requests per lab CPU-second with golden metrics on vs off (hoptrace-http vs hoptrace-http-nometrics)".into(),
            target: ">= 0.95x (counting costs at most 5%)".into(),
            measured: ratio_text(metrics, 3),
            verdict: Verdict::of(metrics, metrics >= 0.95),
        },
        Goal {
            goal: "proxy CPU per request at saturation, lean HTTP/1 path vs hyper (hoptrace-http vs hoptrace-http-hyper)".into(),
            target: "< 1x (the lean path is cheaper)".into(),
            measured: ratio_text(lean, 3),
            verdict: Verdict::of(lean, lean < 1.0),
        },
        Goal {
            goal: "proxy CPU per request at saturation, one pass vs two (hoptrace-http vs hoptrace-http-twopass; a same-node hop with --same-node)".into(),
            target: "< 1x (one pass is cheaper)".into(),
            measured: if same_node {
                ratio_text(one_pass, 3)
            } else if one_pass.is_finite() {
                format!("{one_pass:.3}x, but cross-node both scenarios take the same two-pass path: run with --same-node")
            } else {
                "– (a same-node hop: run with --same-node)".to_string()
            },
            verdict: if same_node {
                Verdict::of(one_pass, one_pass < 1.0)
            } else {
                Verdict::NotMeasured
            },
        },
        Goal {
            goal: "requests per lab CPU-second with context propagation on vs off (hoptrace-http-propagation vs hoptrace-http)".into(),
            target: ">= 0.95x (propagation costs at most 5%)".into(),
            measured: ratio_text(propagation, 3),
            verdict: Verdict::of(propagation, propagation >= 0.95),
        },
        Goal {
            goal: "(experimental) requests per lab CPU-second with the in-pod connections off TCP vs on (hoptrace-http-podskip vs hoptrace-http; --skip-pod-tcp, not the default: docs/ARCHITECTURE.md)".into(),
            target: "> 1x (measured, not a goal)".into(),
            measured: ratio_text(podskip, 3),
            verdict: Verdict::of(podskip, podskip > 1.0),
        },
        Goal {
            goal: "(experimental) requests per lab CPU-second at saturation with --skip-pod-tcp vs the sidecar model (hoptrace-http-podskip vs sidecar)".into(),
            target: ">= 1.6x".into(),
            measured: ratio_text(podskip_capacity, 2),
            verdict: Verdict::of(podskip_capacity, podskip_capacity >= 1.6),
        },
        Goal {
            goal: "opaque TCP hop (two agents, relayed in userspace: the default) vs the L4 relay (one haproxy): machine CPU per message at saturation (hoptrace-tcp-userspace vs l4-tcp)".into(),
            target: "<= 1x".into(),
            measured: ratio_text(tcp_vs_l4, 3),
            verdict: Verdict::of(tcp_vs_l4, tcp_vs_l4 <= 1.0),
        },
        Goal {
            goal: "(experimental, --opaque-tcp kernel) opaque TCP spliced in the kernel vs relayed in userspace: machine CPU per message at saturation (hoptrace-tcp vs hoptrace-tcp-userspace)".into(),
            target: "< 1x (splicing is cheaper)".into(),
            measured: ratio_text(splice, 3),
            verdict: Verdict::of(splice, splice < 1.0),
        },
        Goal {
            goal: "(experimental, --skip-pod-tcp) opaque TCP hop with the in-pod connections off TCP vs the L4 relay (one haproxy): machine CPU per message at saturation (hoptrace-tcp-podskip vs l4-tcp)".into(),
            target: "<= 1x (measured, not the default)".into(),
            measured: ratio_text(tcp_podskip_vs_l4, 3),
            verdict: Verdict::of(tcp_podskip_vs_l4, tcp_podskip_vs_l4 <= 1.0),
        },
    ]
}

/// A per-round ratio as the goal table prints it: a dash when a scenario it needs was
/// not in this run.
fn ratio_text(ratio: f64, digits: usize) -> String {
    if ratio.is_finite() {
        format!("{ratio:.digits$}x (median of per-round ratios)")
    } else {
        "– (a scenario it compares was not run)".to_string()
    }
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
