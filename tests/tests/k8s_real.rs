//! Kubernetes pod discovery against a real API server: kube-apiserver v1.20.2 (built
//! from Debian's source by `cargo xtask kube-apiserver`) on Debian's etcd, over HTTPS,
//! with the project's own `deploy/base` RBAC and a service-account token for the agent
//! (`hoptrace_tests::cluster`). The tests play the kubelet: they create each pod's
//! sandbox in the lab (netns, cgroup named after the UID the API server gave the pod,
//! a pause process) and report it Running with its address.
//!
//! Needs root and the built API server; under `CI=true` neither is skipped.

mod common;

use common::realkube::*;
use common::{COUNTED, WHOAMI_PORT};
use hoptrace_tests::{assert_eventually, labapp, require_root};
use std::time::Duration;

/// Discovery polls every 250 ms; slack for the watch and the enrollment.
const FOLLOW: Duration = Duration::from_secs(10);
/// A watch that failed is retried after 0.8 s doubling to 30 s (jittered up to 2×).
const RECOVER: Duration = Duration::from_secs(70);
const ENABLED: &[(&str, &str)] = &[("hoptrace.io/inject", "enabled")];
const DISABLED: &[(&str, &str)] = &[("hoptrace.io/inject", "disabled")];
/// Full read access to pods and namespaces: deploy/base/rbac.yaml.
const ALL: &[&str] = &["get", "list", "watch"];

#[test]
fn enrollment_precedence_deletion_recreation_and_sandbox_change() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (mut lab, root, cp) = lab_with_control_plane();
    let admin = cp.admin();
    admin.create_namespace("lab", &[]).expect("ns");
    admin.create_namespace("optin", ENABLED).expect("ns");
    admin.create_namespace("optout", DISABLED).expect("ns");
    let server = KubePod::add(&mut lab, &cp, &root, ("lab", "server"), "server", &[]);
    let client = KubePod::add(&mut lab, &cp, &root, ("lab", "client"), "client", ENABLED);
    let plain = KubePod::add(&mut lab, &cp, &root, ("lab", "plain"), "plain", &[]);
    let web = KubePod::add(&mut lab, &cp, &root, ("optin", "web"), "web", &[]);
    let quiet = KubePod::add(&mut lab, &cp, &root, ("optin", "quiet"), "quiet", DISABLED);
    let forced = KubePod::add(
        &mut lab,
        &cp,
        &root,
        ("optout", "forced"),
        "forced",
        ENABLED,
    );
    let shy = KubePod::add(&mut lab, &cp, &root, ("optout", "shy"), "shy", &[]);
    let mut moving = KubePod::add(&mut lab, &cp, &root, ("lab", "moving"), "moving", ENABLED);
    let target = server.pod.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server.pod, target).expect("whoami");

    let agent = start_ready_agent(&lab, &cp, &root);
    // 1. annotation, 2. namespace label, 3. --inject-default (disabled).
    for (pod, steered) in [
        (&client, true), // annotation enabled
        (&web, true),    // namespace label enabled
        (&quiet, false), // annotation disabled beats the namespace's enabled
        (&forced, true), // annotation enabled beats the namespace's disabled
        (&shy, false),   // namespace label disabled
        (&plain, false), // neither: the default
        (&moving, true), // annotation enabled
    ] {
        pod.assert_steered(&app, &agent, target, steered);
    }
    assert_eq!(workloads(&agent, "steered"), 4.0);

    // Graceful deletion: the API server only sets deletionTimestamp (the kubelet has
    // not confirmed): the agent releases the pod at once.
    // Eventually: the fake kubelet's status update right after creation may still be
    // re-enrolling the pod (its listeners are replaced), as the other checks allow.
    assert_eventually!(
        agent_listens_in(&client.pod),
        COUNTED,
        "the agent's listeners in lab/client"
    );
    admin.delete_pod("lab", "client", None).expect("delete");
    let marked = admin
        .pod("lab", "client")
        .expect("get")
        .expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eventually!(
        workloads(&agent, "steered") == 3.0 && !agent_listens_in(&client.pod),
        FOLLOW,
        "the pod being deleted is still enrolled"
    );
    client.assert_steered(&app, &agent, target, false);
    // The kubelet confirms: the object goes.
    admin.delete_pod("lab", "client", Some(0)).expect("confirm");
    assert_eventually!(
        admin.pod("lab", "client").expect("get").is_none(),
        FOLLOW,
        "pod not removed"
    );

    // Forced deletion: gone at once, released.
    admin
        .delete_pod("optin", "web", Some(0))
        .expect("force delete");
    assert_eventually!(
        workloads(&agent, "steered") == 2.0 && !agent_listens_in(&web.pod),
        FOLLOW,
        "the force-deleted pod is still enrolled"
    );

    // Recreated under the same name (a StatefulSet's pod): a new UID, a new sandbox.
    admin
        .delete_pod("optout", "forced", Some(0))
        .expect("delete");
    assert_eventually!(
        workloads(&agent, "steered") == 1.0,
        FOLLOW,
        "the deleted pod is still enrolled"
    );
    let reborn = KubePod::add(
        &mut lab,
        &cp,
        &root,
        ("optout", "forced"),
        "forced2",
        ENABLED,
    );
    assert_ne!(reborn.uid, forced.uid, "the API server reused the UID");
    assert_eventually!(
        workloads(&agent, "steered") == 2.0 && agent_listens_in(&reborn.pod),
        FOLLOW,
        "the recreated pod is not enrolled"
    );
    reborn.assert_steered_within(&app, &agent, target, COUNTED);
    forced.assert_steered(&app, &agent, target, false);

    // Same pod (UID), new sandbox: a new network namespace and address.
    let sandbox = lab
        .add_pod_in(NODE, "moving2", &moving.pod.cgroup)
        .expect("new sandbox");
    moving.pause.kill().expect("stop the old sandbox");
    let _pause2 = pause(&sandbox);
    admin
        .set_running("lab", "moving", &sandbox.ips())
        .expect("new status");
    let old = std::mem::replace(&mut moving.pod, sandbox);
    assert_eventually!(
        agent_listens_in(&moving.pod) && !agent_listens_in(&old),
        FOLLOW,
        "the pod's new sandbox is not enrolled (or the old one not released)"
    );
    moving.assert_steered_within(&app, &agent, target, FOLLOW);
    assert_eq!(workloads(&agent, "steered"), 2.0);
}

#[test]
fn api_server_restart_with_expired_history_relists() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (mut lab, root, mut cp) = lab_with_control_plane();
    cp.admin().create_namespace("lab", &[]).expect("ns");
    let server = KubePod::add(&mut lab, &cp, &root, ("lab", "server"), "server", &[]);
    let client = KubePod::add(&mut lab, &cp, &root, ("lab", "client"), "client", ENABLED);
    let gone = KubePod::add(&mut lab, &cp, &root, ("lab", "gone"), "gone", ENABLED);
    let target = server.pod.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server.pod, target).expect("whoami");
    let agent = start_ready_agent(&lab, &cp, &root);
    gone.assert_steered(&app, &agent, target, true);

    // The API server goes away: pods stay steered, /ready stays 200.
    cp.stop_apiserver();
    assert_eventually!(
        watch_errors(&agent, "pods") >= 1.0,
        RECOVER,
        "watch errors not counted"
    );
    client.assert_steered(&app, &agent, target, true);
    assert_eq!(ready_status(&agent), 200);
    assert_eq!(workloads(&agent, "steered"), 2.0);

    // etcd moves on and compacts while it is down: the agent cannot resume its
    // watches (410 Gone) and must list again.
    cp.expire_history().expect("expire etcd history");
    cp.start_apiserver().expect("restart the API server");
    cp.admin()
        .delete_pod("lab", "gone", Some(0))
        .expect("delete");
    let newcomer = KubePod::add(
        &mut lab,
        &cp,
        &root,
        ("lab", "newcomer"),
        "newcomer",
        ENABLED,
    );
    assert_eventually!(
        agent_listens_in(&newcomer.pod) && !agent_listens_in(&gone.pod),
        RECOVER,
        "the agent did not follow the restarted API server"
    );
    newcomer.assert_steered_within(&app, &agent, target, COUNTED);
    gone.assert_steered(&app, &agent, target, false);
    assert!(
        !log_lines(&agent, "resource version expired, listing again").is_empty(),
        "no relist after 410 in the agent log"
    );
    assert_eq!(log_lines(&agent, "watch of pods recovered").len(), 1);
}

/// The bug a real API server showed: while a list keeps failing (here 403), the
/// agent retried about once a second and logged a warn/"recovered" pair per attempt
/// (kube-runtime's watcher yields `Init` before each list attempt, and the backoff
/// and the agent took that for progress). Now: 0.8 s doubling, one warning naming
/// the missing verb and resource, no "recovered" until the list succeeds.
#[test]
fn forbidden_pod_list_backs_off_and_names_the_permission() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (mut lab, root, cp) = lab_with_control_plane();
    let admin = cp.admin();
    admin
        .set_agent_permissions(&[(&["pods"], &["get", "watch"]), (&["namespaces"], ALL)])
        .expect("RBAC");
    admin.create_namespace("lab", &[]).expect("ns");
    let server = KubePod::add(&mut lab, &cp, &root, ("lab", "server"), "server", &[]);
    let client = KubePod::add(&mut lab, &cp, &root, ("lab", "client"), "client", ENABLED);
    let target = server.pod.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server.pod, target).expect("whoami");

    let mut agent = start_agent(&lab, &cp, &root, &["--log", "info"]);
    // 20 s: 0.8 s doubling (jitter only lengthens) allows at most 5 attempts; retried
    // every ~1 s it would be about 20.
    std::thread::sleep(Duration::from_secs(20));
    assert!(agent.is_running(), "agent exited:\n{}", agent.log_tail(30));
    let attempts = watch_errors(&agent, "pods");
    assert!(
        (1.0..=6.0).contains(&attempts),
        "{attempts} failed pod lists in 20 s"
    );
    let warned = log_lines(&agent, "watch of pods failed");
    assert_eq!(warned.len(), 1, "one line per distinct error: {warned:#?}");
    assert!(
        warned[0].contains("forbidden to list pods")
            && warned[0].contains("cannot list resource \"pods\""),
        "{}",
        warned[0]
    );
    let recovered = log_lines(&agent, "recovered");
    assert!(recovered.is_empty(), "{recovered:#?}");
    let kube_lines: Vec<String> = [
        log_lines(&agent, "kube_runtime"),
        log_lines(&agent, "kube_client"),
    ]
    .concat();
    assert!(kube_lines.is_empty(), "{kube_lines:#?}");
    assert_eq!(forbidden(&agent, "pods"), 1.0);
    assert_eq!(forbidden(&agent, "namespaces"), 0.0);
    // Without the pod list nothing can be enrolled or reported: not ready.
    assert_eq!(ready_status(&agent), 503);

    // The permission is granted: the next attempt (≤ 30 s + jitter away) succeeds.
    admin
        .set_agent_permissions(&[(&["pods", "namespaces"], ALL)])
        .expect("RBAC");
    agent
        .wait_ready(RECOVER)
        .expect("ready once the list is allowed");
    client.assert_steered(&app, &agent, target, true);
    assert_eq!(forbidden(&agent, "pods"), 0.0);
    assert_eq!(log_lines(&agent, "watch of pods recovered").len(), 1);
}

/// Namespaces may not be listed: the agent is ready on the pod list alone and enrolls
/// by pod annotation; a pod only its namespace's label would enroll is left alone
/// (its label is unknown) until the permission is granted.
#[test]
fn forbidden_namespaces_enroll_by_annotation_alone() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (mut lab, root, cp) = lab_with_control_plane();
    let admin = cp.admin();
    admin
        .set_agent_permissions(&[(&["pods"], ALL)])
        .expect("RBAC");
    admin.create_namespace("lab", &[]).expect("ns");
    admin.create_namespace("optin", ENABLED).expect("ns");
    let server = KubePod::add(&mut lab, &cp, &root, ("lab", "server"), "server", &[]);
    let client = KubePod::add(&mut lab, &cp, &root, ("lab", "client"), "client", ENABLED);
    let web = KubePod::add(&mut lab, &cp, &root, ("optin", "web"), "web", &[]);
    let target = server.pod.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server.pod, target).expect("whoami");

    let agent = start_ready_agent(&lab, &cp, &root);
    client.assert_steered(&app, &agent, target, true);
    web.assert_steered(&app, &agent, target, false);
    assert_eq!(workloads(&agent, "steered"), 1.0);
    assert_eq!(forbidden(&agent, "namespaces"), 1.0);
    let warned = log_lines(&agent, "watch of namespaces failed");
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("cannot list resource \"namespaces\""),
        "{}",
        warned[0]
    );

    admin
        .set_agent_permissions(&[(&["pods", "namespaces"], ALL)])
        .expect("RBAC");
    assert_eventually!(
        workloads(&agent, "steered") == 2.0,
        RECOVER,
        "the namespace-labelled pod is not enrolled once namespaces can be read"
    );
    web.assert_steered(&app, &agent, target, true);
    assert_eq!(forbidden(&agent, "namespaces"), 0.0);
}

/// A permission removed while the agent runs shows when its next list or watch starts
/// (RBAC is checked per request; an open watch runs on, here until the API server
/// restarts). The pods it knows stay steered and `/ready` stays 200.
#[test]
fn permission_revoked_while_running() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (mut lab, root, mut cp) = lab_with_control_plane();
    cp.admin().create_namespace("lab", &[]).expect("ns");
    let server = KubePod::add(&mut lab, &cp, &root, ("lab", "server"), "server", &[]);
    let client = KubePod::add(&mut lab, &cp, &root, ("lab", "client"), "client", ENABLED);
    let target = server.pod.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server.pod, target).expect("whoami");
    let agent = start_ready_agent(&lab, &cp, &root);
    client.assert_steered(&app, &agent, target, true);

    cp.admin()
        .set_agent_permissions(&[(&["pods"], &["get", "list"]), (&["namespaces"], ALL)])
        .expect("RBAC");
    cp.stop_apiserver();
    cp.start_apiserver().expect("restart");
    assert_eventually!(
        forbidden(&agent, "pods") == 1.0,
        RECOVER,
        "the refused watch is not reported"
    );
    let warned = log_lines(&agent, "watch of pods failed: forbidden to watch pods");
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("cannot watch resource \"pods\""),
        "{}",
        warned[0]
    );
    assert_eq!(ready_status(&agent), 200);
    client.assert_steered(&app, &agent, target, true);

    cp.admin()
        .set_agent_permissions(&[(&["pods", "namespaces"], ALL)])
        .expect("RBAC");
    let late = KubePod::add(&mut lab, &cp, &root, ("lab", "late"), "late", ENABLED);
    assert_eventually!(
        forbidden(&agent, "pods") == 0.0 && agent_listens_in(&late.pod),
        RECOVER,
        "the pod added after the permission came back is not enrolled"
    );
    late.assert_steered_within(&app, &agent, target, COUNTED);
}

/// The API server is down when the agent starts: not ready, errors counted and logged
/// once; ready and enrolling as soon as it serves.
#[test]
fn api_server_unreachable_at_start() {
    if !require_root() {
        return;
    }
    let app = labapp!();
    let (mut lab, root, mut cp) = lab_with_control_plane();
    cp.admin().create_namespace("lab", &[]).expect("ns");
    let server = KubePod::add(&mut lab, &cp, &root, ("lab", "server"), "server", &[]);
    let client = KubePod::add(&mut lab, &cp, &root, ("lab", "client"), "client", ENABLED);
    let target = server.pod.addr(WHOAMI_PORT);
    let _whoami = app.whoami_server(&server.pod, target).expect("whoami");
    cp.stop_apiserver();

    let mut agent = start_agent(&lab, &cp, &root, &[]);
    assert_eventually!(
        watch_errors(&agent, "pods") >= 2.0,
        FOLLOW,
        "connection errors not counted"
    );
    assert_eq!(ready_status(&agent), 503);
    assert_eq!(log_lines(&agent, "watch of pods failed").len(), 1);
    assert_eq!(forbidden(&agent, "pods"), 0.0);

    cp.start_apiserver().expect("start the API server");
    agent
        .wait_ready(RECOVER)
        .expect("ready once the API server serves");
    client.assert_steered(&app, &agent, target, true);
}
