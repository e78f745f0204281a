use super::*;

fn sample(s: Scenario, round: u32, rps: f64, p50: f64, cpu: f64) -> Sample {
    Sample {
        scenario: s.name().into(),
        round,
        sat_rps: rps,
        sat_requests: (rps * 5.0) as u64,
        sat_cpu_us: cpu,
        sat_lab_cpu_us: cpu + 30.0,
        fixed: LoadReport {
            requests: 5000,
            p50_us: p50,
            p99_us: p50 * 3.0,
            ..Default::default()
        },
        fixed_cpu_us: cpu * 2.0,
        proxy_pss: 10 * 1024 * 1024,
        ..Default::default()
    }
}

fn spans(ok: bool) -> SpanCheck {
    SpanCheck {
        phase: "fixed".into(),
        requests: 100,
        expected_min: 400,
        expected_max: 400,
        exported: 400,
        received: if ok { 400 } else { 399 },
        ..Default::default()
    }
}

#[test]
fn medians_and_ratios() {
    assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
    assert!(median([f64::NAN]).is_nan());

    let mut v = Vec::new();
    // Round 3 is slow for everything: per-round ratios stay put.
    for (r, k) in [(1, 1.0), (2, 1.0), (3, 0.5)] {
        v.push(sample(Scenario::Direct, r, 60_000.0 * k, 100.0, 0.0));
        v.push(sample(Scenario::Sidecar, r, 20_000.0 * k, 400.0, 40.0));
        let mut h = sample(Scenario::HoptraceHttp, r, 40_000.0 * k, 200.0, 15.0);
        h.spans = vec![spans(true)];
        v.push(h);
    }
    let s = summarize(&v, Scenario::HoptraceHttp);
    assert_eq!(s.rounds, 3);
    assert!((s.rps_vs_ref - 2.0).abs() < 1e-9);
    assert!((s.rps_vs_direct - 40.0 / 60.0).abs() < 1e-9);
    assert_eq!((s.p50_us, s.added_p50_us, s.p99_us), (200.0, 100.0, 600.0));
    assert_eq!(
        (s.sat_cpu_us, s.fixed_cpu_us, s.pss_mib),
        (15.0, 30.0, 10.0)
    );

    let goals = scenario_goals(&v, false);
    let verdicts: Vec<Verdict> = goals.iter().map(|g| g.verdict).collect();
    // 2.0x tput (met), per CPU-s 70/45 = 1.56x (not met), added 100/300 (met),
    // CPU 0.375x (met, met), spans ok (met), 160k spans/s without drops (met).
    let mut want = vec![Verdict::Met; 7];
    want[1] = Verdict::NotMet;
    // No hoptrace-http-nometrics, -hyper, -twopass, -propagation or -podskip
    // samples, nor TCP ones: not measured.
    want.extend([Verdict::NotMeasured; 9]);
    assert_eq!(verdicts, want, "{goals:#?}");
    // What was not run prints a dash, not NaN.
    assert!(
        goals.iter().all(|g| !g.measured.contains("NaN")),
        "{goals:#?}"
    );
    assert!(goals[8].measured.starts_with("– "), "{:?}", goals[8]);
    assert!((s.per_cpu_s_vs_ref - 70.0 / 45.0).abs() < 1e-9);
    assert!((s.sat_lab_cpus - 40_000.0 * 45e-6).abs() < 1e-9);

    v[2].spans = vec![spans(false)];
    v[1].sat_cpu_us = 20.0; // round 1 sidecar CPU halves: the median ratio is unchanged
    let goals = scenario_goals(&v, false);
    assert_eq!(goals[5].verdict, Verdict::NotMet);
    assert_eq!(goals[6].verdict, Verdict::NotMet);
    assert_eq!(goals[4].verdict, Verdict::Met);
}

#[test]
fn opaque_tcp_goals_use_the_machine_cpu() {
    let tcp = |s: Scenario, round: u32, machine: f64| Sample {
        sat_machine_cpu_us: machine,
        ..sample(s, round, 40_000.0, 100.0, 1.0)
    };
    let mut v = Vec::new();
    for round in 1..=3 {
        v.push(tcp(Scenario::L4Tcp, round, 40.0));
        v.push(tcp(Scenario::HoptraceTcp, round, 36.0));
        v.push(tcp(Scenario::HoptraceTcpUserspace, round, 38.0));
        v.push(tcp(Scenario::HoptraceTcpSkipPodTcp, round, 41.0));
    }
    let goals = scenario_goals(&v, false);
    let n = goals.len();
    // The default (userspace) 38/40 = 0.95x the L4 relay, the splice 36/38 = 0.947x
    // the userspace relay: both met, though the proxies' own CPU (1 µs each) would say
    // nothing. The in-pod connections off TCP: 41/40 = 1.025x, not met.
    let (userspace, splice, podskip) = (&goals[n - 3], &goals[n - 2], &goals[n - 1]);
    assert!(userspace.goal.contains("hoptrace-tcp-userspace vs l4-tcp"));
    assert!(userspace.measured.starts_with("0.950x"), "{userspace:?}");
    assert!(splice.measured.starts_with("0.947x"), "{splice:?}");
    assert!(podskip.goal.contains("hoptrace-tcp-podskip vs l4-tcp"));
    assert!(podskip.measured.starts_with("1.025x"), "{podskip:?}");
    assert_eq!(userspace.verdict, Verdict::Met);
    assert_eq!(splice.verdict, Verdict::Met);
    assert_eq!(podskip.verdict, Verdict::NotMet);
    v.iter_mut()
        .filter(|x| x.scenario == "hoptrace-tcp-userspace")
        .for_each(|x| x.sat_machine_cpu_us = 44.0);
    assert_eq!(scenario_goals(&v, false)[n - 3].verdict, Verdict::NotMet);
}

#[test]
fn in_pod_goals_compare_lab_cpu() {
    let mut v = Vec::new();
    for round in 1..=3 {
        // Lab CPU per request: sidecar 60, hoptrace-http 60, podskip 54 (cpu + 30).
        v.push(sample(Scenario::Sidecar, round, 30_000.0, 200.0, 30.0));
        v.push(sample(Scenario::HoptraceHttp, round, 30_000.0, 200.0, 30.0));
        v.push(sample(
            Scenario::HoptraceHttpSkipPodTcp,
            round,
            33_000.0,
            180.0,
            24.0,
        ));
    }
    let goals = scenario_goals(&v, false);
    let find = |prefix: &str| {
        goals
            .iter()
            .find(|g| g.goal.starts_with(prefix))
            .unwrap_or_else(|| panic!("no goal {prefix}: {goals:#?}"))
    };
    let vs_tcp = find("(experimental) requests per lab CPU-second with the in-pod");
    assert!(vs_tcp.measured.starts_with("1.111x"), "{vs_tcp:?}");
    assert_eq!(vs_tcp.verdict, Verdict::Met);
    let vs_sidecar = find("(experimental) requests per lab CPU-second at saturation");
    assert!(vs_sidecar.measured.starts_with("1.11x"), "{vs_sidecar:?}");
    assert_eq!(vs_sidecar.verdict, Verdict::NotMet);
}

#[test]
fn missing_scenarios_are_not_measured() {
    let v = vec![sample(Scenario::Direct, 1, 1.0, 1.0, 0.0)];
    for g in scenario_goals(&v, false) {
        assert_eq!(g.verdict, Verdict::NotMeasured, "{g:?}");
    }
    assert!(!spans(false).ok() && spans(true).ok());
}

#[test]
fn one_pass_is_judged_only_on_a_same_node_run() {
    let mut v = Vec::new();
    for round in 1..=3 {
        v.push(sample(Scenario::Sidecar, round, 40_000.0, 300.0, 30.0));
        v.push(sample(Scenario::HoptraceHttp, round, 40_000.0, 300.0, 27.0));
        v.push(sample(
            Scenario::HoptraceHttpTwoPass,
            round,
            40_000.0,
            300.0,
            30.0,
        ));
    }
    let one_pass = |same_node| {
        scenario_goals(&v, same_node)
            .into_iter()
            .find(|g| g.goal.contains("one pass vs two"))
            .expect("the one-pass goal")
    };
    // Cross-node, both scenarios run the same path: a ratio, but no verdict.
    let cross = one_pass(false);
    assert_eq!(cross.verdict, Verdict::NotMeasured);
    assert!(cross.measured.contains("--same-node"), "{cross:?}");
    assert_eq!(one_pass(true).verdict, Verdict::Met);
}
