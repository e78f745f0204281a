//! Enrollment cannot leak (issue 9): when enrolling a pod fails at any step, every
//! step before it is undone (listeners closed, programs detached, map entries
//! removed, accept loops stopped), the pod is left completely unsteered, and the
//! retries every 2 s do not accumulate anything. Descriptors are the witness: every
//! listener and every bpf_link the agent holds is one.

mod common;

use common::*;
use hoptrace_tests::{assert_eventually, labapp, require_root, Agent, Lab};
use std::{process::Command, time::Duration};

/// The open descriptor numbers of a process.
fn fd_numbers(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    fd_numbers(pid).len()
}

/// The soft `RLIMIT_NOFILE` that leaves a process exactly `free` new descriptors
/// (new descriptors take the lowest free numbers).
fn limit_leaving(pid: u32, free: usize) -> u64 {
    let open: std::collections::BTreeSet<i32> = fd_numbers(pid).into_iter().collect();
    let mut found = 0;
    let mut n = 0;
    loop {
        if !open.contains(&n) {
            found += 1;
            if found == free {
                return n as u64 + 1;
            }
        }
        n += 1;
    }
}

fn set_nofile(pid: u32, soft: u64) -> u64 {
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: libc::RLIM_INFINITY,
    };
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Keep the hard limit as it is: read it first.
    // SAFETY: prlimit on a live child process with valid pointers.
    unsafe {
        assert_eq!(
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                std::ptr::null(),
                &mut old
            ),
            0
        );
        let new = libc::rlimit {
            rlim_max: old.rlim_max,
            ..new
        };
        assert_eq!(
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &new,
                std::ptr::null_mut()
            ),
            0,
            "prlimit: {}",
            std::io::Error::last_os_error()
        );
    }
    old.rlim_cur
}

#[test]
fn failed_enrollments_leave_nothing_behind() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let mut lab = Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    let client = lab.add_pod("node-1", "client").expect("client");
    let squatted = lab.add_pod("node-1", "squatted").expect("squatted");
    let starved = lab.add_pod("node-1", "starved").expect("starved");
    let server = lab.add_pod("node-1", "server").expect("server");
    let target = server.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server, target).expect("whoami server");

    let file = lab
        .write_workloads_only("node-1", &["client"])
        .expect("workloads");
    let mut agent = Agent::start(&lab, "node-1", &file).expect("agent");
    agent.wait_ready(READY).expect("ready");
    let pid = agent.pid().expect("pid");
    app.whoami(&client, target).expect("client connects");
    let base = fds(pid);

    // 1. A taken port: something in the pod listens on the agent's inbound port, so
    //    enrolling fails after the outbound listeners were opened.
    let mut squatter = squatted
        .spawn({
            let mut c = Command::new(hoptrace_tests::pyapp::python());
            c.args([
                "-c",
                "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',15006))\ns.listen()\nprint('up',flush=True)\ntime.sleep(600)",
            ]);
            c
        })
        .expect("squatter");
    squatter
        .wait_listening(15006, Duration::from_secs(10))
        .expect("squatter listening");
    lab.write_workloads_only("node-1", &["client", "squatted"])
        .expect("workloads");
    assert_eventually!(
        scrape_failed(&agent) == 1.0,
        Duration::from_secs(5),
        "the squatted pod is not reported as failed"
    );
    // Three retries later, nothing has accumulated.
    std::thread::sleep(Duration::from_secs(7));
    let now = fds(pid);
    assert!(
        now <= base + 2,
        "descriptors grew from {base} to {now} over failed retries"
    );
    // Its traffic goes direct meanwhile, never half-steered.
    let before = accepted(&agent, "outbound", "squatted");
    app.whoami(&squatted, target)
        .expect("the squatted pod connects");
    assert_eq!(accepted(&agent, "outbound", "squatted"), before);
    // Once the port is free the next retry enrolls it.
    squatter.kill().expect("kill squatter");
    assert_enrolled_again(&app, &agent, &squatted, target, "its port is free");

    // 2. Out of descriptors part-way: the agent's limit leaves it `free` new
    //    descriptors, so enrolling `starved` fails at a different step each time —
    //    3: at the second listener; 7: after the listeners, at the second program's
    //    link; 10: after every program is attached, listing the pod's listening
    //    sockets — on every retry. Each failure must undo everything before it.
    let open = fds(pid);
    lab.write_workloads_only("node-1", &["client", "squatted", "starved"])
        .expect("workloads");
    let mut original = None;
    for free in [3, 7, 10] {
        let old = set_nofile(pid, limit_leaving(pid, free));
        original.get_or_insert(old);
        // Two or three retries at this level.
        std::thread::sleep(Duration::from_secs(5));
        let now = fds(pid);
        assert!(
            now <= open + 2,
            "with {free} descriptors free, descriptors grew from {open} to {now} (a leak per failed retry, or a half-done enrollment)"
        );
    }
    set_nofile(pid, original.expect("limit"));
    // Each level failed at its own step (the agent logs a reason when it changes).
    let reasons: Vec<String> = agent
        .log_tail(400)
        .lines()
        .filter(|l| l.contains("lab/starved") && l.contains("not steered"))
        .map(str::to_string)
        .collect();
    assert!(
        !reasons.is_empty(),
        "the starved pod's failure is not logged:\n{}",
        agent.log_tail(20)
    );
    for step in ["socket", "bpf_link_create", "sock_diag"] {
        assert!(
            reasons.iter().any(|r| r.contains(step)),
            "no failure at the {step:?} step:\n{}",
            reasons.join("\n")
        );
    }
    assert_enrolled_again(&app, &agent, &starved, target, "descriptors are available");
}

/// Once the cause of its failures is gone, `pod` is enrolled at the next retry and its
/// next connection is steered.
fn assert_enrolled_again(
    app: &hoptrace_tests::LabApp,
    agent: &Agent,
    pod: &hoptrace_tests::Pod,
    target: std::net::SocketAddr,
    when: &str,
) {
    assert_eventually!(
        scrape_failed(agent) == 0.0,
        Duration::from_secs(5),
        "{} is not enrolled once {when}",
        pod.name
    );
    let before = accepted(agent, "outbound", &pod.name);
    app.whoami(pod, target).expect("connects");
    assert_counted(agent, "outbound", &pod.name, before, 1);
}

fn scrape_failed(agent: &Agent) -> f64 {
    agent
        .metrics()
        .map(|m| m.value("hoptrace_workloads", &[("state", "failed")]))
        .unwrap_or(-1.0)
}
