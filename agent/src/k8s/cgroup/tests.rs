//! Unit tests of cgroup resolution over temp dir trees shaped like both kubelet
//! drivers, unified and hybrid layouts, nested (kind) trees and each runtime's names.

use super::*;

const UID: &str = "0c1d9a4e-2f0b-4c7e-9a61-3b5e8f7d2a10";
const UID_: &str = "0c1d9a4e_2f0b_4c7e_9a61_3b5e8f7d2a10";

fn mkdir(root: &Path, rel: &str) -> PathBuf {
    let dir = root.join(rel);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn pod_dir_names_for_both_drivers() {
    let n = PodDirNames::new(UID);
    assert_eq!(n.cgroupfs, format!("pod{UID}"));
    assert!(n.matches(&format!("kubepods-burstable-pod{UID_}.slice")));
    assert!(n.matches(&format!("kubepods-pod{UID_}.slice")));
    assert!(n.matches(&format!("kubelet-kubepods-besteffort-pod{UID_}.slice")));
    assert!(n.matches(&format!("pod{UID}")));
    assert!(
        !n.matches(&format!("pod{UID_}.slice")),
        "no prefix: not a kubelet name"
    );
    assert!(!n.matches(&format!("pod{UID_}")));
    assert!(!PodDirNames::new("other").matches(&format!("pod{UID}")));

    let sd = n.candidates("kubepods.slice", Some("Burstable"));
    assert_eq!(
        sd[0],
        PathBuf::from(format!(
            "kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
        ))
    );
    assert_eq!(
        n.candidates("kubepods.slice", Some("Guaranteed"))[0],
        PathBuf::from(format!("kubepods-pod{UID_}.slice"))
    );
    assert_eq!(
        n.candidates("kubelet-kubepods.slice", Some("BestEffort"))[0],
        PathBuf::from(format!(
            "kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice"
        ))
    );
    let fs = n.candidates("kubepods", None);
    assert_eq!(fs.len(), 3);
    assert!(fs.contains(&PathBuf::from(format!("burstable/pod{UID}"))));
    assert!(fs.contains(&PathBuf::from(format!("besteffort/pod{UID}"))));
    assert!(fs.contains(&PathBuf::from(format!("pod{UID}"))));
}

#[test]
fn container_dirs_of_each_runtime() {
    let id = "a".repeat(64);
    assert_eq!(
        container_dir(&format!("cri-containerd-{id}.scope")),
        ContainerDir::Container(&id)
    );
    assert_eq!(
        container_dir(&format!("crio-{id}.scope")),
        ContainerDir::Container(&id)
    );
    assert_eq!(
        container_dir(&format!("crio-conmon-{id}.scope")),
        ContainerDir::Monitor(&id)
    );
    assert_eq!(
        container_dir(&format!("docker-{id}.scope")),
        ContainerDir::Container(&id)
    );
    assert_eq!(container_dir(&id), ContainerDir::Container(&id));
    assert_eq!(container_dir("cgroup.procs"), ContainerDir::Other);
    assert_eq!(container_dir("init.scope"), ContainerDir::Other);
}

#[test]
fn unified_and_hybrid_layouts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    // Unified: the root itself is cgroup2.
    let r = effective_root(root, |p| p == root).expect("unified");
    assert_eq!(r, root);
    // Hybrid: the root is a tmpfs of v1 controllers, cgroup2 is at <root>/unified.
    let unified = root.join("unified");
    let r = effective_root(root, |p| p == unified).expect("hybrid");
    assert_eq!(r, unified);
    // Neither: a clear error naming the flag.
    let err = effective_root(root, |_| false)
        .expect_err("v1 only")
        .to_string();
    assert!(
        err.contains("--cgroup-root") && err.contains("HOPTRACE_CGROUP_ROOT"),
        "{err}"
    );
    // The real check on a temp dir (not cgroup2).
    assert!(!is_cgroup2(root));
}

#[test]
fn finds_pods_under_each_driver_without_walking() {
    let tmp = tempfile::tempdir().expect("tmp");
    let now = Instant::now();
    let uids = [
        "11111111-1111-1111-1111-111111111111",
        "22222222-2222-2222-2222-222222222222",
        "33333333-3333-3333-3333-333333333333",
    ];
    let u = |i: usize| uids[i].replace('-', "_");
    // systemd driver
    let sd = tmp.path().join("systemd");
    let b = mkdir(
        &sd,
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            u(0)
        ),
    );
    let e = mkdir(
        &sd,
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            u(1)
        ),
    );
    let g = mkdir(&sd, &format!("kubepods.slice/kubepods-pod{}.slice", u(2)));
    mkdir(&b, &format!("cri-containerd-{}.scope", "f".repeat(64)));
    let mut r = CgroupResolver::new(sd);
    // QoS hints are only an order: a wrong one still finds the pod.
    let pods = [
        (uids[0], Some("Burstable")),
        (uids[1], None),
        (uids[2], Some("BestEffort")),
    ];
    let found = r.resolve(&pods, now);
    assert_eq!(found.get(uids[0]), Some(&b));
    assert_eq!(found.get(uids[1]), Some(&e));
    assert_eq!(found.get(uids[2]), Some(&g));
    assert_eq!(r.walks(), 0);

    // cgroupfs driver (hybrid: under unified/)
    let fs = tmp.path().join("cgroupfs/unified");
    let b = mkdir(&fs, &format!("kubepods/burstable/pod{}", uids[0]));
    let e = mkdir(&fs, &format!("kubepods/besteffort/pod{}", uids[1]));
    let g = mkdir(&fs, &format!("kubepods/pod{}", uids[2]));
    mkdir(&g, &"0".repeat(64));
    let mut r = CgroupResolver::new(fs);
    let found = r.resolve(&pods, now);
    assert_eq!(found.get(uids[0]), Some(&b));
    assert_eq!(found.get(uids[1]), Some(&e));
    assert_eq!(found.get(uids[2]), Some(&g));
    assert_eq!(r.walks(), 0);
}

#[test]
fn nested_trees_are_found_by_a_bounded_walk_then_cached() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let t0 = Instant::now();
    // kind: kubelet.slice/kubelet-kubepods.slice/...
    let kind = mkdir(
        root,
        &format!("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice"),
    );
    mkdir(&kind, &format!("crio-{}.scope", "c".repeat(64)));
    mkdir(&kind, &format!("crio-conmon-{}.scope", "c".repeat(64)));
    // a per-node container cgroup holding a cgroupfs kubelet tree
    let other = "44444444-4444-4444-4444-444444444444";
    let nested = mkdir(
        root,
        &format!("system.slice/docker-abc.scope/kubepods/burstable/pod{other}"),
    );
    // unrelated noise
    for i in 0..50 {
        mkdir(root, &format!("system.slice/svc{i}.service"));
    }
    let mut r = CgroupResolver::new(root.to_path_buf());
    let found = r.resolve(&[(UID, None), (other, Some("Burstable"))], t0);
    assert_eq!(found.get(UID), Some(&kind));
    assert_eq!(found.get(other), Some(&nested));
    assert_eq!(r.walks(), 1);

    // Later pods in the same trees are direct hits: no more walks.
    let third = "55555555-5555-5555-5555-555555555555";
    let third_dir = mkdir(
        root,
        &format!(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{}.slice",
            third.replace('-', "_")
        ),
    );
    let later = t0 + WALK_INTERVAL * 10;
    let found = r.resolve(&[(UID, None), (third, Some("Guaranteed"))], later);
    assert_eq!(found.get(third), Some(&third_dir));
    assert_eq!(r.walks(), 1);

    // A missing pod walks at most once per interval.
    let ghost = "66666666-6666-6666-6666-666666666666";
    assert!(r.resolve(&[(ghost, None)], later).is_empty());
    assert!(r
        .resolve(&[(ghost, None)], later + Duration::from_millis(300))
        .is_empty());
    assert_eq!(r.walks(), 2);
    assert!(r
        .resolve(&[(ghost, None)], later + WALK_INTERVAL)
        .is_empty());
    assert_eq!(r.walks(), 3);

    // A pod created below a not-yet-known root after a walk: found by the next one.
    let late = mkdir(root, &format!("late.slice/pod{ghost}"));
    let found = r.resolve(&[(ghost, None)], later + WALK_INTERVAL * 2);
    assert_eq!(found.get(ghost), Some(&late));

    // A deleted pod directory is dropped from the cache.
    std::fs::remove_dir_all(&third_dir).expect("rm");
    assert!(r.resolve(&[(third, None)], later).is_empty());
}

#[test]
fn the_walk_is_bounded_in_depth() {
    let tmp = tempfile::tempdir().expect("tmp");
    let deep = (0..WALK_MAX_DEPTH)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    mkdir(tmp.path(), &format!("{deep}/pod{UID}"));
    let mut r = CgroupResolver::new(tmp.path().to_path_buf());
    assert!(r.resolve(&[(UID, None)], Instant::now()).is_empty());
    let shallow = (0..WALK_MAX_DEPTH - 1)
        .map(|i| format!("s{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let dir = mkdir(tmp.path(), &format!("{shallow}/pod{UID}"));
    let found = r.resolve(&[(UID, None)], Instant::now() + WALK_INTERVAL);
    assert_eq!(found.get(UID), Some(&dir));
}

#[test]
fn pod_like_names() {
    assert!(looks_like_pod_dir(&format!("pod{UID}")));
    assert!(looks_like_pod_dir(&format!(
        "kubepods-besteffort-pod{UID_}.slice"
    )));
    assert!(!looks_like_pod_dir("podman.slice"));
    assert!(!looks_like_pod_dir("kubepods-besteffort.slice"));
    assert!(is_kubepods_root("kubepods") && is_kubepods_root("kubelet-kubepods.slice"));
    assert!(!is_kubepods_root("kubepods-burstable.slice"));
}
