//! `deploy/`: every YAML document of every file parses into its Kubernetes type
//! (k8s-openapi at the version kube 5.0.0 uses), with nothing lost on the way
//! (typos such as `contianers` fail), and the manifests agree with the agent:
//! environment variables its command line reads, the admin port the probes hit,
//! the capabilities it checks for, read-only RBAC. No root needed.

#[path = "common/deploy.rs"]
mod deploy;

use clap::CommandFactory as _;
use deploy::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Variables the agent reads outside clap: `RunArgs::otlp_endpoint()` falls back
/// to this one (the test checks that `--otlp-endpoint`'s help still says so).
const FALLBACK_ENV: &[&str] = &["OTEL_EXPORTER_OTLP_ENDPOINT"];

fn docs() -> Vec<Doc> {
    load().unwrap_or_else(|e| panic!("deploy/ does not parse:\n{e:#}"))
}

/// Environment variables `hoptrace run` reads, from its clap definition.
fn agent_env() -> BTreeSet<String> {
    let cli = hoptrace::config::Cli::command();
    let run = cli
        .find_subcommand("run")
        .expect("`hoptrace run` subcommand");
    let mut env: BTreeSet<String> = run
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let otlp_help = run
        .get_arguments()
        .find(|a| a.get_id() == "otlp_endpoint")
        .and_then(|a| a.get_help().or(a.get_long_help()))
        .map(|h| h.to_string())
        .unwrap_or_default();
    for name in FALLBACK_ENV {
        assert!(
            otlp_help.contains(name),
            "--otlp-endpoint's help no longer mentions the {name} fallback: update FALLBACK_ENV"
        );
        env.insert(name.to_string());
    }
    env
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().expect("DaemonSet pod spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container, the agent");
    &spec.containers[0]
}

/// Every ConfigMap called `name` under deploy/ (the base and overlay patches).
fn config_maps<'a>(docs: &'a [Doc], name: &str) -> Vec<(&'a Path, &'a ConfigMap)> {
    docs.iter()
        .filter_map(|d| match &d.manifest {
            Manifest::ConfigMap(c) if c.metadata.name.as_deref() == Some(name) => {
                Some((d.file.as_path(), c.as_ref()))
            }
            _ => None,
        })
        .collect()
}

/// The merged settings of the base ConfigMap the agent reads through `envFrom`.
fn base_settings(docs: &[Doc]) -> BTreeMap<String, String> {
    let ds = agent_daemonset(docs).expect("agent DaemonSet");
    let from = agent_container(ds)
        .env_from
        .as_ref()
        .expect("envFrom")
        .iter()
        .filter_map(|e| e.config_map_ref.as_ref())
        .map(|c| c.name.clone())
        .collect::<Vec<_>>();
    assert_eq!(from.len(), 1, "one ConfigMap in envFrom");
    let base: Vec<_> = config_maps(docs, &from[0])
        .into_iter()
        .filter(|(f, _)| f.starts_with("base"))
        .collect();
    assert_eq!(base.len(), 1, "ConfigMap {} in deploy/base", from[0]);
    base[0].1.data.clone().unwrap_or_default()
}

#[test]
fn every_manifest_parses_strictly() {
    let docs = docs();
    let files: BTreeSet<&Path> = docs.iter().map(|d| d.file.as_path()).collect();
    let all = yaml_files(&deploy_dir()).expect("list deploy/");
    assert_eq!(files.len(), all.len(), "every YAML file holds a document");
    for want in [
        "base/kustomization.yaml",
        "base/daemonset.yaml",
        "base/rbac.yaml",
        "base/configmap.yaml",
        "overlays/kind/kustomization.yaml",
        "examples/jaeger.yaml",
        "examples/demo-app.yaml",
        "kind/cluster.yaml",
    ] {
        assert!(files.contains(Path::new(want)), "deploy/{want} missing");
    }
}

#[test]
fn strict_parse_catches_typos() {
    let ok =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n    - port: 80\n";
    parse_docs(ok).expect("valid Service");
    let typo = ok.replace("ports:", "prots:");
    let err = format!("{:#}", parse_docs(&typo).expect_err("typo"));
    assert!(err.contains(".spec.prots: unknown field"), "{err}");
    let nested = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: a\nspec:\n  selector: {}\n  template:\n    spec:\n      contianers: []\n      containers: []\n";
    let err = format!("{:#}", parse_docs(nested).expect_err("nested typo"));
    assert!(
        err.contains(".spec.template.spec.contianers: unknown field"),
        "{err}"
    );
    let wrong_type = ok.replace("port: 80", "port: eighty");
    assert!(parse_docs(&wrong_type).is_err());
    let unknown = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\n";
    let err = format!("{:#}", parse_docs(unknown).expect_err("unknown kind"));
    assert!(err.contains("unknown apiVersion/kind"), "{err}");
    let kustomize_typo =
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresource:\n  - a.yaml\n";
    assert!(parse_docs(kustomize_typo).is_err());
}

#[test]
fn kustomizations_reference_every_manifest() {
    let dir = deploy_dir();
    let docs = docs();
    let mut referenced: BTreeSet<PathBuf> = BTreeSet::new();
    for d in &docs {
        let Manifest::Kustomization(k) = &d.manifest else {
            continue;
        };
        let base = dir.join(&d.file);
        let base = base.parent().expect("kustomization dir");
        let paths = k.resources.iter().chain(k.patches.iter().map(|p| &p.path));
        for r in paths {
            let target = base.join(r);
            if target.is_dir() {
                assert!(
                    target.join("kustomization.yaml").is_file(),
                    "{}: {r} is a directory without kustomization.yaml",
                    d.file.display()
                );
            } else {
                assert!(target.is_file(), "{}: {r} does not exist", d.file.display());
                let canonical = target.canonicalize().expect("canonical path");
                referenced.insert(canonical);
            }
        }
    }
    for d in &docs {
        if matches!(
            d.manifest,
            Manifest::Kustomization(_) | Manifest::KindCluster(_)
        ) {
            continue;
        }
        let path = dir.join(&d.file).canonicalize().expect("canonical path");
        assert!(
            referenced.contains(&path),
            "deploy/{} is not listed in any kustomization",
            d.file.display()
        );
    }
}

#[test]
fn agent_env_matches_the_command_line() {
    let docs = docs();
    let known = agent_env();
    let ds = agent_daemonset(&docs).expect("agent DaemonSet");
    let c = agent_container(ds);
    assert!(
        c.args.is_none() && c.command.is_none(),
        "the agent starts with no flags (image entrypoint `hoptrace run`); settings go in the ConfigMap"
    );
    let env = c.env.as_ref().expect("env");
    for e in env {
        assert!(
            known.contains(&e.name),
            "DaemonSet env {} is not read by `hoptrace run` (known: {known:?})",
            e.name
        );
    }
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    // Every ConfigMap key (base and overlay patches) becomes an env var.
    let cms = config_maps(&docs, "hoptrace-config");
    assert!(
        cms.len() >= 2,
        "base ConfigMap and the kind overlay's patch"
    );
    for (file, cm) in cms {
        for key in cm.data.as_ref().expect("data").keys() {
            assert!(
                known.contains(key),
                "deploy/{}: key {key} is not read by `hoptrace run` (known: {known:?})",
                file.display()
            );
        }
    }
    let settings = base_settings(&docs);
    assert_eq!(
        settings.get("HOPTRACE_INJECT_DEFAULT").map(String::as_str),
        Some("disabled"),
        "pods opt in by default"
    );
}

#[test]
fn probes_hit_the_admin_port() {
    let docs = docs();
    let ds = agent_daemonset(&docs).expect("agent DaemonSet");
    let c = agent_container(ds);
    let admin: SocketAddr = base_settings(&docs)
        .get("HOPTRACE_ADMIN_ADDR")
        .expect("HOPTRACE_ADMIN_ADDR in the ConfigMap")
        .parse()
        .expect("admin address");
    assert!(
        admin.ip().is_unspecified(),
        "the kubelet probes the pod IP: the admin server must listen on all addresses, not {admin}"
    );
    let ports = c.ports.as_ref().expect("ports");
    let resolve = |port: &IntOrString| match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .unwrap_or_else(|| panic!("probe port {name} is not a container port")),
    };
    for (what, probe, path) in [
        ("startup", &c.startup_probe, "/live"),
        ("liveness", &c.liveness_probe, "/live"),
        ("readiness", &c.readiness_probe, "/ready"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} probe: httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{what} probe path");
        assert_eq!(
            resolve(&get.port),
            i32::from(admin.port()),
            "{what} probe port vs HOPTRACE_ADMIN_ADDR"
        );
    }
    // Prometheus scrapes the same port (the golden metrics; deploy/README.md).
    let annotations = ds
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .expect("pod template annotations");
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port").map(String::as_str),
        Some(admin.port().to_string().as_str()),
        "scrape port vs HOPTRACE_ADMIN_ADDR"
    );
    assert_eq!(
        annotations.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
}

#[test]
fn rbac_is_read_only_pods_and_namespaces() {
    let docs = docs();
    let role = one(&docs, "ClusterRole", |m| match m {
        Manifest::ClusterRole(r) => Some(r.as_ref()),
        _ => None,
    })
    .expect("ClusterRole");
    let rules = role.rules.as_ref().expect("rules");
    let mut resources = BTreeSet::new();
    for r in rules {
        assert_eq!(
            r.api_groups.as_deref(),
            Some(&[String::new()][..]),
            "core API group only"
        );
        let verbs: BTreeSet<&str> = r.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "verbs");
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
        resources.extend(r.resources.clone().unwrap_or_default());
    }
    assert_eq!(
        resources,
        BTreeSet::from(["namespaces".to_string(), "pods".to_string()])
    );
    let binding = one(&docs, "ClusterRoleBinding", |m| match m {
        Manifest::ClusterRoleBinding(b) => Some(b.as_ref()),
        _ => None,
    })
    .expect("ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let sa = one(&docs, "ServiceAccount", |m| match m {
        Manifest::ServiceAccount(s) => Some(s.as_ref()),
        _ => None,
    })
    .expect("ServiceAccount");
    let subjects = binding.subjects.as_ref().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    let ds = agent_daemonset(&docs).expect("agent DaemonSet");
    assert_eq!(pod_spec(ds).service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
}

#[test]
fn daemonset_runs_everywhere_with_the_minimal_privileges() {
    let docs = docs();
    let ds = agent_daemonset(&docs).expect("agent DaemonSet");
    let spec = pod_spec(ds);
    let c = agent_container(ds);

    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "capabilities, not privileged");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<String> = added_capabilities(ds).expect("caps").into_iter().collect();
    let required: BTreeSet<String> = hoptrace::check::REQUIRED
        .iter()
        .map(|c| c.cap.to_string().trim_start_matches("CAP_").to_string())
        .collect();
    assert_eq!(
        added, required,
        "capabilities.add vs the agent's preflight (hoptrace::check::REQUIRED)"
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));

    assert_eq!(
        spec.host_pid,
        Some(true),
        "pod discovery reads pids from cgroup.procs, visible only in the host PID namespace"
    );
    assert_ne!(spec.host_network, Some(true));
    let tolerations = spec.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration for every taint"
    );
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(spec.termination_grace_period_seconds.is_some());
    let strategy = ds.spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert!(rolling.max_unavailable.is_some());
    assert_eq!(
        rolling.max_surge,
        Some(IntOrString::Int(0)),
        "no surge: one agent per node"
    );

    let resources = c.resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(resources
        .limits
        .as_ref()
        .expect("limits")
        .contains_key("memory"));

    // Host mounts where the ConfigMap says they are; /proc writable (sysctl).
    let settings = base_settings(&docs);
    let volumes = spec.volumes.as_ref().expect("volumes");
    let mounts = c.volume_mounts.as_ref().expect("volumeMounts");
    for (var, host, writable) in [
        ("HOPTRACE_PROC_ROOT", "/proc", true),
        ("HOPTRACE_CGROUP_ROOT", "/sys/fs/cgroup", false),
    ] {
        let at = settings
            .get(var)
            .unwrap_or_else(|| panic!("{var} in the ConfigMap"));
        let mount = mounts
            .iter()
            .find(|m| &m.mount_path == at)
            .unwrap_or_else(|| panic!("no volume mounted at {var}={at}"));
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .expect("the mount's volume");
        let host_path = volume.host_path.as_ref().expect("a hostPath volume");
        assert_eq!(host_path.path, host, "{var}");
        if writable {
            assert_ne!(
                mount.read_only,
                Some(true),
                "{at} must be writable: the net sysctl goes through it"
            );
        } else {
            assert_eq!(mount.read_only, Some(true), "{at} is only read");
        }
    }
}

#[test]
fn examples_opt_in_and_export_to_jaeger() {
    let docs = docs();
    let mut opted_in = BTreeSet::new();
    for d in &docs {
        let Manifest::Deployment(dep) = &d.manifest else {
            continue;
        };
        let name = dep.metadata.name.clone().unwrap_or_default();
        let inject = dep
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("hoptrace.io/inject"))
            .cloned();
        match name.as_str() {
            "jaeger" => assert_eq!(
                inject.as_deref(),
                Some("disabled"),
                "the span sink stays out"
            ),
            _ => {
                assert_eq!(
                    inject.as_deref(),
                    Some("enabled"),
                    "demo Deployment {name} opts in"
                );
                opted_in.insert(name);
            }
        }
    }
    assert_eq!(
        opted_in,
        BTreeSet::from(["backend".into(), "frontend".into(), "loadgen".into()])
    );
    let jaeger = one(&docs, "Service jaeger", |m| match m {
        Manifest::Service(s) if s.metadata.name.as_deref() == Some("jaeger") => Some(s.as_ref()),
        _ => None,
    })
    .expect("jaeger Service");
    let ports: BTreeSet<i32> = jaeger
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .expect("ports")
        .iter()
        .map(|p| p.port)
        .collect();
    assert!(
        ports.contains(&4317) && ports.contains(&16686),
        "OTLP gRPC and query: {ports:?}"
    );
    let ns = jaeger.metadata.namespace.clone().expect("namespace");
    let overlay = config_maps(&docs, "hoptrace-config")
        .into_iter()
        .find(|(f, _)| f.starts_with("overlays/kind"))
        .expect("kind overlay ConfigMap patch");
    assert_eq!(
        overlay
            .1
            .data
            .as_ref()
            .and_then(|d| d.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .map(String::as_str),
        Some(format!("http://jaeger.{ns}.svc.cluster.local:4317").as_str()),
        "the kind overlay exports to the example Jaeger"
    );
}

#[test]
fn kind_cluster_has_two_pinned_nodes() {
    let docs = docs();
    let cluster = one(&docs, "kind Cluster", |m| match m {
        Manifest::KindCluster(c) => Some(c.as_ref()),
        _ => None,
    })
    .expect("kind cluster");
    assert_eq!(
        cluster.name.as_deref(),
        Some("hoptrace"),
        "`cargo xtask kind` uses this name"
    );
    assert_eq!(cluster.nodes.len(), 2);
    for n in &cluster.nodes {
        let image = n.image.as_deref().unwrap_or_default();
        assert!(
            image.starts_with("kindest/node:v") && image.contains("@sha256:"),
            "pin node images by digest (kind release notes): {image:?}"
        );
    }
    let overlay = one(&docs, "kind overlay", |m| match m {
        Manifest::Kustomization(k) if k.images.iter().any(|i| i.new_name.is_some()) => {
            Some(k.as_ref())
        }
        _ => None,
    })
    .expect("kind overlay kustomization");
    let image = &overlay.images[0];
    assert_eq!(
        (image.new_name.as_deref(), image.new_tag.as_deref()),
        (Some("hoptrace"), Some("dev")),
        "the image `cargo xtask kind` builds and loads"
    );
}

/// `kubectl kustomize` (kustomize built into kubectl, no cluster needed) renders
/// every kustomization, and the result parses strictly too. Skipped when kubectl
/// is not installed (it is optional here; `cargo xtask kind` needs it anyway).
#[test]
fn kustomize_renders_every_kustomization() {
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        eprintln!("skipping: kubectl is not installed");
        return;
    }
    let dir = deploy_dir();
    let docs = docs();
    let mut rendered_kind = None;
    for d in &docs {
        if !matches!(d.manifest, Manifest::Kustomization(_)) {
            continue;
        }
        let kdir = dir.join(&d.file);
        let kdir = kdir.parent().expect("kustomization dir");
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(kdir)
            .output()
            .expect("kubectl kustomize");
        assert!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            kdir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let rendered = parse_docs(&text)
            .unwrap_or_else(|e| panic!("kubectl kustomize {}: {e:#}", kdir.display()));
        assert!(!rendered.is_empty());
        if d.file.starts_with("overlays/kind") {
            rendered_kind = Some(rendered);
        }
    }
    let rendered = rendered_kind.expect("the kind overlay rendered");
    for m in &rendered {
        match m {
            Manifest::DaemonSet(ds) => {
                assert_eq!(agent_container(ds).image.as_deref(), Some("hoptrace:dev"));
            }
            Manifest::ConfigMap(cm) => {
                let data = cm.data.as_ref().expect("data");
                assert!(data.contains_key("HOPTRACE_PROC_ROOT"), "base keys kept");
                assert!(data["OTEL_EXPORTER_OTLP_ENDPOINT"].contains("jaeger.hoptrace-demo"));
            }
            _ => {}
        }
    }
}
