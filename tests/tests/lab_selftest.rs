//! Checks the lab itself, without an agent: routing between pods on one node
//! and across nodes (IPv4 and IPv6), source addresses, cgroup and netns
//! placement of pod processes, workload files, teardown and stale-run reaping.

mod common;

use common::{assert_echo, ECHO_PORT, MIB, WHOAMI_PORT};
use hoptrace_tests::{cgroup, labapp, netns, reap_stale, require_root, Lab};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Env var that turns `crash_child` into a lab-building process that aborts.
const CRASH_ENV: &str = "HOPTRACE_LAB_CRASH_CHILD";

fn two_node_lab() -> Lab {
    let mut lab = Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    lab.add_node("node-2").expect("node-2");
    lab.add_pod("node-1", "client").expect("client pod");
    lab.add_pod("node-1", "local").expect("local pod");
    lab.add_pod("node-2", "remote").expect("remote pod");
    lab
}

#[test]
fn echo_8mib_same_and_cross_node_v4_v6() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let lab = two_node_lab();
    let client = lab.pod("client").expect("client").clone();
    let mut servers = Vec::new();
    for name in ["local", "remote"] {
        let pod = lab.pod(name).expect("server pod");
        for addr in [
            pod.addr(ECHO_PORT),
            pod.addr6(ECHO_PORT).expect("dual stack"),
        ] {
            servers.push(app.echo_server(pod, addr).expect("echo server"));
            let r = app
                .echo_client(&client, addr, 8 * MIB, 1, false)
                .expect("echo client");
            assert_echo(&r, 1, 8 * MIB);
            let r = app
                .echo_client(&client, addr, 256 * 1024, 4, true)
                .expect("echo client --half-close");
            assert_echo(&r, 4, 256 * 1024);
        }
    }
}

#[test]
fn whoami_sees_client_pod_ip() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let lab = two_node_lab();
    let client = lab.pod("client").expect("client").clone();
    let mut servers = Vec::new();
    for name in ["local", "remote"] {
        let pod = lab.pod(name).expect("server pod");
        for addr in [
            pod.addr(WHOAMI_PORT),
            pod.addr6(WHOAMI_PORT).expect("dual stack"),
        ] {
            servers.push(app.whoami_server(pod, addr).expect("whoami server"));
            let peer = app.whoami(&client, addr).expect("whoami");
            let want = if addr.is_ipv4() {
                std::net::IpAddr::V4(client.ipv4)
            } else {
                std::net::IpAddr::V6(client.ipv6.expect("v6"))
            };
            assert_eq!(peer.ip(), want, "{name} at {addr} saw {peer}");
        }
    }
}

#[test]
fn pod_processes_start_in_pod_cgroup_and_netns() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    let pod = lab.add_pod("node-1", "client").expect("pod");
    let mut cat = Command::new("cat");
    cat.arg("/proc/self/cgroup");
    let out = pod.run(cat, Duration::from_secs(10)).expect("run cat");
    let out = out.ensure_success().expect("cat ok");
    let want = format!("0::/hoptrace-lab/{}/node-1/client", lab.id());
    assert!(
        out.stdout.lines().any(|l| l == want),
        "cgroup of a pod process:\n{}",
        out.stdout
    );

    let mut readlink = Command::new("readlink");
    readlink.arg("/proc/self/ns/net");
    let out = pod
        .run(readlink, Duration::from_secs(10))
        .expect("run readlink");
    let ino = netns::inode(&pod.netns_path).expect("netns inode");
    assert_eq!(out.stdout.trim(), format!("net:[{ino}]"));
    assert!(pod.cgroup.starts_with(lab.cgroup2_mount()));
}

#[test]
fn workload_file_lists_pods() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new().expect("create lab");
    lab.add_node("node-1").expect("node-1");
    lab.add_node("node-2").expect("node-2");
    let client = lab.add_pod("node-1", "client").expect("client");
    lab.add_pod("node-1", "server").expect("server");
    lab.add_pod("node-2", "other").expect("other");

    let path = lab.write_workloads("node-1").expect("write");
    let doc: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
    assert_eq!(doc["node"], "node-1");
    let names = |local: bool| -> Vec<&str> {
        doc["workloads"]
            .as_sequence()
            .expect("list")
            .iter()
            .filter(|w| w.get("node").is_none() == local)
            .filter_map(|w| w["name"].as_str())
            .collect()
    };
    assert_eq!(names(true), ["client", "server"]);
    // Other nodes' pods are listed as peers: named by their own node, not enrolled.
    assert_eq!(names(false), ["other"]);
    assert_eq!(doc["workloads"][2]["node"], "node-2");
    assert!(doc["workloads"][2].get("cgroup").is_none());
    let w = &doc["workloads"][0];
    assert_eq!(w["namespace"], "lab");
    assert_eq!(w["ips"][0].as_str(), Some(client.ipv4.to_string().as_str()));
    assert_eq!(
        w["ips"][1].as_str(),
        client.ipv6.map(|i| i.to_string()).as_deref()
    );
    for key in ["cgroup", "netns"] {
        let p = w[key].as_str().expect("path");
        assert!(Path::new(p).exists(), "{key} {p} does not exist");
    }

    let path = lab
        .write_workloads_only("node-1", &["server"])
        .expect("subset");
    let doc: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
    assert_eq!(doc["workloads"].as_sequence().map(Vec::len), Some(1));
    assert_eq!(doc["workloads"][0]["name"], "server");
    assert!(
        lab.write_workloads_only("node-1", &["other"]).is_err(),
        "pod of another node"
    );
}

/// Every name of run `id` that should be gone after teardown.
fn leftovers(id: &str, cgroup_dir: &Path, tmp: &Path) -> Vec<String> {
    let prefix = format!("ht{id}-");
    let mut left: Vec<String> = netns::list()
        .expect("list netns")
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    for p in [cgroup_dir, tmp, &Path::new("/run/hoptrace-lab").join(id)] {
        if p.exists() {
            left.push(p.display().to_string());
        }
    }
    left
}

/// Starts a `sleep` in `pod` that is not our child (the shell exits), so
/// only the lab's cgroup kill can stop it. Returns its pid.
fn orphan_sleep(pod: &hoptrace_tests::Pod) -> u32 {
    let mut sh = Command::new("sh");
    sh.args(["-c", "sleep 1000 >/dev/null 2>&1 </dev/null & echo $!"]);
    let out = pod.run(sh, Duration::from_secs(10)).expect("sh");
    out.stdout.trim().parse().expect("pid of sleep")
}

fn gone(pid: u32) -> bool {
    // Gone, or a zombie waiting for its new parent to reap it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
                == Some(true)
        }
    }
}

#[test]
fn teardown_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let lab = two_node_lab();
    let (id, cg, tmp) = (
        lab.id().to_owned(),
        lab.cgroup_dir(),
        lab.tmp_dir().to_owned(),
    );
    let pod = lab.pod("remote").expect("remote").clone();
    let sleeper = orphan_sleep(&pod);
    assert_eq!(
        cgroup::of_pid(sleeper).expect("cgroup of sleep"),
        format!("/hoptrace-lab/{id}/node-2/remote")
    );
    let before = leftovers(&id, &cg, &tmp);
    assert_eq!(
        before.len(),
        9,
        "6 netns + cgroup, tmp and state dirs: {before:?}"
    );
    lab.teardown().expect("teardown");
    let after = leftovers(&id, &cg, &tmp);
    assert!(after.is_empty(), "left behind: {after:?}");
    assert!(gone(sleeper), "pod process {sleeper} survived teardown");
}

#[test]
fn drop_during_panic_tears_down() {
    if !require_root() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let lab = two_node_lab();
        let sleeper = orphan_sleep(lab.pod("client").expect("client"));
        tx.send((
            lab.id().to_owned(),
            lab.cgroup_dir(),
            lab.tmp_dir().to_owned(),
            sleeper,
        ))
        .expect("send");
        panic!("deliberate panic with a live lab");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let (id, cg, tmp, sleeper) = rx.recv().expect("lab info");
    // Files are kept for debugging when a test panics; everything else goes.
    let left: Vec<String> = leftovers(&id, &cg, &tmp)
        .into_iter()
        .filter(|p| Path::new(p) != tmp)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(gone(sleeper), "pod process {sleeper} survived");
    std::fs::remove_dir_all(&tmp).expect("remove kept tmp dir");
}

/// Not a test on its own: run by `reap_stale_removes_crashed_runs` in a child
/// process, where it builds a lab, prints its id and aborts (no destructors).
#[test]
fn crash_child() {
    if std::env::var_os(CRASH_ENV).is_none() {
        return;
    }
    let lab = two_node_lab();
    let sleeper = orphan_sleep(lab.pod("client").expect("client"));
    println!(
        "LAB={} {} {} {sleeper}",
        lab.id(),
        lab.cgroup_dir().display(),
        lab.tmp_dir().display()
    );
    std::process::abort();
}

#[test]
fn reap_stale_removes_crashed_runs() {
    if !require_root() {
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, "1")
        .output()
        .expect("run crash child");
    assert!(!out.status.success(), "crash child should have aborted");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("LAB=").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "no LAB= line from child: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let f: Vec<&str> = line.split(' ').collect();
    let (id, cg, tmp) = (f[0], Path::new(f[1]), Path::new(f[2]));
    let sleeper: u32 = f[3].parse().expect("pid");
    assert!(
        !leftovers(id, cg, tmp).is_empty(),
        "the crashed run left nothing to reap"
    );
    assert!(
        !gone(sleeper),
        "the crashed run's pod process is already gone"
    );

    reap_stale().expect("reap_stale");
    let left: Vec<String> = leftovers(id, cg, tmp)
        .into_iter()
        .filter(|p| Path::new(p) != tmp)
        .collect();
    assert!(left.is_empty(), "left behind after reap_stale: {left:?}");
    assert!(
        gone(sleeper),
        "pod process {sleeper} of the crashed run survived"
    );
    let _ = std::fs::remove_dir_all(tmp);
}

#[test]
fn live_labs_are_not_reaped() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.add_node("node-1").expect("node");
    let pod = lab.add_pod("node-1", "client").expect("pod");
    reap_stale().expect("reap_stale");
    assert!(
        pod.netns_path.exists(),
        "reap_stale removed a live lab's netns"
    );
    assert!(
        pod.cgroup.exists(),
        "reap_stale removed a live lab's cgroup"
    );
}
