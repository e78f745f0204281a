//! The desired-set builder fed with plain watch updates: a temp dir stands in for the
//! cgroup tree, and the test process itself is every pod's "pause" process (its
//! network namespace is the one the pods resolve to; no host namespace is excluded).

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    time::Instant,
};

use prometheus_client::metrics::gauge::Gauge;

use super::*;
use crate::k8s::{
    policy::Inject,
    records::{NamespaceRecord, Owner, PodRecord},
    watch::{Change, Update},
};

struct Fixture {
    dir: tempfile::TempDir,
    set: DesiredSet,
    pending: Gauge,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let pending = Gauge::default();
        let set = DesiredSet::new(
            Policy {
                node: "node-1".into(),
                default: Inject::Disabled,
                own_pod: None,
            },
            CgroupResolver::new(dir.path().to_path_buf()),
            NetnsResolver::new(PathBuf::from("/proc"), HashSet::new()),
            pending.clone(),
        );
        Self { dir, set, pending }
    }

    /// Creates the pod's cgroup (systemd, BestEffort) with the test process in it.
    fn start(&self, uid: &str) -> PathBuf {
        let u = uid.replace('-', "_");
        let pod = self.dir.path().join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
        ));
        let container = pod.join(format!("cri-containerd-{}.scope", "a".repeat(64)));
        std::fs::create_dir_all(&container).expect("mkdir");
        std::fs::write(
            container.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .expect("procs");
        pod
    }

    fn pods(&mut self, changes: Vec<Change<PodRecord>>) {
        for c in changes {
            self.set.apply(Update::Pod(Box::new(c)));
        }
    }

    fn namespaces(&mut self, changes: Vec<Change<NamespaceRecord>>) {
        for c in changes {
            self.set.apply(Update::Namespace(c));
        }
    }

    fn poll(&mut self) -> Option<Vec<Workload>> {
        self.set.poll(Instant::now())
    }

    fn names(&mut self) -> Vec<String> {
        self.set
            .last
            .iter()
            .flatten()
            .map(|w| w.key().to_string())
            .collect()
    }
}

fn pod(name: &str, uid: &str, ip: &str, created: i64) -> PodRecord {
    PodRecord {
        name: name.into(),
        namespace: "shop".into(),
        uid: uid.into(),
        node: Some("node-1".into()),
        host_network: false,
        phase: Some("Running".into()),
        ips: vec![ip.parse().expect("ip")],
        deleting: false,
        created: Some(created),
        qos_class: Some("BestEffort".into()),
        inject: Some("enabled".into()),
        trace_sampling: None,
        context_propagation: None,
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        owner: None,
    }
}

fn shop(inject: Option<&str>) -> NamespaceRecord {
    NamespaceRecord {
        name: "shop".into(),
        inject: inject.map(String::from),
    }
}

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const C: &str = "cccccccc-0000-4000-8000-000000000003";

#[test]
fn nothing_until_both_lists_are_complete_then_the_full_set() {
    let mut f = Fixture::new();
    let dir = f.start(A);
    let mut web = pod("web-7d9f8c6b5-x2x4q", A, "10.1.1.5", 1);
    web.owner = Some(Owner {
        kind: "ReplicaSet".into(),
        name: "web-7d9f8c6b5".into(),
    });
    web.labels
        .insert("pod-template-hash".into(), "7d9f8c6b5".into());
    web.trace_sampling = Some("0.25".into());
    f.pods(vec![Change::Init, Change::InitApply(web), Change::InitDone]);
    assert_eq!(f.poll(), None, "namespaces not listed yet");
    f.namespaces(vec![Change::Init, Change::InitDone]);
    let set = f.poll().expect("first set");
    assert_eq!(set.len(), 1);
    let w = &set[0];
    assert_eq!(w.key().to_string(), "shop/web-7d9f8c6b5-x2x4q");
    assert_eq!(w.uid.as_deref(), Some(A));
    assert_eq!(w.service_name(), "web");
    assert_eq!(w.cgroup, dir);
    assert_eq!(
        w.netns,
        PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
    );
    assert!(w.netns_inode.is_some());
    assert_eq!(w.trace_sampling, Some(0.25));
    assert_eq!(
        w.labels.get("app").map(String::as_str),
        Some("web-7d9f8c6b5-x2x4q")
    );
    assert_eq!(f.pending.get(), 0);
    assert_eq!(f.poll(), None, "unchanged");
}

#[test]
fn pending_pods_wait_outside_the_set() {
    let mut f = Fixture::new();
    f.start(A);
    f.pods(vec![
        Change::Init,
        Change::InitApply(pod("a", A, "10.1.1.5", 1)),
        Change::InitApply(pod("b", B, "10.1.1.6", 2)),
        Change::InitDone,
    ]);
    f.namespaces(vec![Change::Init, Change::InitDone]);
    f.poll().expect("first set");
    assert_eq!(f.names(), ["shop/a"]);
    assert_eq!(f.pending.get(), 1, "b has no cgroup yet");
    // b's cgroup exists but has no process: still pending.
    let dir = f.start(B);
    let procs = dir.join(format!(
        "cri-containerd-{}.scope/cgroup.procs",
        "a".repeat(64)
    ));
    std::fs::write(&procs, "").expect("empty");
    assert_eq!(f.poll(), None);
    assert_eq!(f.pending.get(), 1);
    // Its process appears.
    std::fs::write(&procs, format!("{}\n", std::process::id())).expect("procs");
    f.poll().expect("b enrolled");
    assert_eq!(f.names(), ["shop/a", "shop/b"]);
    assert_eq!(f.pending.get(), 0);
}

#[test]
fn policy_changes_deletes_and_relists() {
    let mut f = Fixture::new();
    f.start(A);
    f.start(B);
    let mut b = pod("b", B, "10.1.1.6", 2);
    b.inject = None;
    f.pods(vec![
        Change::Init,
        Change::InitApply(pod("a", A, "10.1.1.5", 1)),
        Change::InitApply(b.clone()),
        Change::InitDone,
    ]);
    f.namespaces(vec![
        Change::Init,
        Change::InitApply(shop(None)),
        Change::InitDone,
    ]);
    f.poll().expect("first");
    assert_eq!(f.names(), ["shop/a"]);
    // The namespace opts in: b (no annotation) joins.
    f.namespaces(vec![Change::Apply(shop(Some("enabled")))]);
    f.poll().expect("b joins");
    assert_eq!(f.names(), ["shop/a", "shop/b"]);
    // a is deleted.
    f.pods(vec![Change::Delete(pod("a", A, "10.1.1.5", 1))]);
    f.poll().expect("a leaves");
    assert_eq!(f.names(), ["shop/b"]);
    // A relist in progress keeps the current set; its end replaces it.
    f.pods(vec![
        Change::Init,
        Change::InitApply(pod("a", A, "10.1.1.5", 1)),
    ]);
    assert_eq!(f.poll(), None, "relist not complete");
    f.pods(vec![Change::InitDone]);
    f.poll().expect("relisted");
    assert_eq!(f.names(), ["shop/a"], "b was not in the new list");
    // A pod being deleted leaves before its DELETED event.
    let mut a = pod("a", A, "10.1.1.5", 1);
    a.deleting = true;
    f.pods(vec![Change::Apply(a)]);
    assert_eq!(f.poll(), Some(Vec::new()));
}

#[test]
fn an_address_or_name_goes_to_the_newest_pod() {
    let mut f = Fixture::new();
    f.start(A);
    f.start(B);
    f.start(C);
    f.pods(vec![
        Change::Init,
        Change::InitApply(pod("old", A, "10.1.1.5", 1)),
        Change::InitApply(pod("new", B, "10.1.1.5", 2)),
        // Same name as `new`, older: a StatefulSet pod not yet gone.
        Change::InitApply(pod("new", C, "10.1.1.7", 0)),
        Change::InitDone,
    ]);
    f.namespaces(vec![Change::Init, Change::InitDone]);
    let set = f.poll().expect("set");
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].uid.as_deref(), Some(B));
}

#[test]
fn a_bad_sampling_annotation_is_ignored_not_fatal() {
    let mut f = Fixture::new();
    f.start(A);
    let mut a = pod("a", A, "10.1.1.5", 1);
    a.trace_sampling = Some("lots".into());
    f.pods(vec![Change::Init, Change::InitApply(a), Change::InitDone]);
    f.namespaces(vec![Change::Init, Change::InitDone]);
    let set = f.poll().expect("set");
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].trace_sampling, None);
}

#[test]
fn namespaces_forbidden_enroll_by_pod_annotation_alone() {
    let mut f = Fixture::new();
    // --inject-default enabled: it must not decide while the namespace label is unknown
    // (the namespace could say disabled).
    f.set.policy.default = Inject::Enabled;
    f.start(A);
    f.start(B);
    let annotated = pod("annotated", A, "10.1.1.5", 1);
    let mut unannotated = pod("unannotated", B, "10.1.1.6", 2);
    unannotated.inject = None;
    f.pods(vec![
        Change::Init,
        Change::InitApply(annotated),
        Change::InitApply(unannotated),
        Change::InitDone,
    ]);
    // Init then a refused list: not progress, the set waits.
    f.namespaces(vec![Change::Init]);
    assert_eq!(f.poll(), None);
    f.set.apply(Update::NamespacesForbidden(true));
    f.poll().expect("ready on the pod list alone");
    assert_eq!(f.names(), ["shop/annotated"]);
    // The permission comes back: the namespace list decides again.
    f.set.apply(Update::NamespacesForbidden(false));
    f.namespaces(vec![
        Change::Init,
        Change::InitApply(shop(None)),
        Change::InitDone,
    ]);
    f.poll().expect("changed");
    assert_eq!(f.names(), ["shop/annotated", "shop/unannotated"]);
    // Refused again later: the last known labels stay in force.
    f.set.apply(Update::NamespacesForbidden(true));
    f.namespaces(vec![Change::Apply(shop(Some("disabled")))]);
    f.poll().expect("changed");
    assert_eq!(f.names(), ["shop/annotated"]);
}
