//! The project's manifests on the [`Node`]: the DaemonSet of `deploy/base` and the
//! demo app of `deploy/examples`, each through a kustomize overlay written into the
//! run's directory and applied with `kubectl` (kustomize renders them exactly as
//! `kubectl apply -k` would). What the overlays change, and why:
//!
//! - the agent: the image ([`images::AGENT`]); `OTEL_EXPORTER_OTLP_ENDPOINT`, the
//!   run's OTLP receiver on the node's address; `HOPTRACE_CGROUP_ROOT`, the cgroup2
//!   mount under `/host` (`/host/sys/fs/cgroup/unified` on a hybrid layout);
//!   `KUBERNETES_SERVICE_HOST`/`_PORT`, the API server itself (no kube-proxy serves
//!   the `kubernetes` Service's cluster IP);
//! - the demo: the image ([`images::PYTHON`] for `python:3.13-slim`), without
//!   Jaeger (the spans go to the run's receiver); no cluster DNS or kube-proxy serve
//!   the `backend` and `frontend` Services, so backend is started first, frontend's
//!   `DOWNSTREAM` is a backend pod's address, then loadgen's `TARGET` a frontend
//!   pod's.
//!
//! `kubectl apply --validate=false`: the manifests use fields newer than the API
//! server (e.g. `appArmorProfile`, Kubernetes 1.30), which 1.20 drops.

use super::{images, Node};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The demo's namespace (deploy/examples).
pub const DEMO_NS: &str = "hoptrace-demo";
/// The demo app's request path, as Deployments.
pub const DEMO_PATH: &[&str] = &["loadgen", "frontend", "backend"];
/// How long a rollout may take.
const ROLLOUT: Duration = Duration::from_secs(180);

/// The repository's `deploy/`.
fn deploy_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    std::fs::canonicalize(&dir).with_context(|| format!("{}", dir.display()))
}

/// `to` relative to the directory `from` (both absolute): kustomize wants
/// relative paths to bases.
fn relative(from: &Path, to: &Path) -> String {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

fn write_overlay(dir: &Path, kustomization: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("kustomization.yaml"), kustomization)?;
    Ok(())
}

/// Runs `kubectl` with `args`; its standard output.
fn kubectl(node: &Node, args: &[&str]) -> Result<String> {
    let out = node
        .kubectl()
        .args(args)
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apply(node: &Node, yaml: &str, name: &str) -> Result<()> {
    let file = node.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml)?;
    kubectl(
        node,
        &[
            "apply",
            "--validate=false",
            "-f",
            &file.display().to_string(),
        ],
    )?;
    Ok(())
}

fn rollout(node: &Node, namespace: &str, what: &str) -> Result<()> {
    kubectl(
        node,
        &[
            "-n",
            namespace,
            "rollout",
            "status",
            what,
            &format!("--timeout={}s", ROLLOUT.as_secs()),
        ],
    )
    .map(|_| ())
}

/// Deploys the agent (deploy/base) and waits for the DaemonSet's rollout.
pub fn agent(node: &Node, otlp: SocketAddr, apiserver: SocketAddr) -> Result<()> {
    let overlay = node.dir().join("overlays/agent");
    let base = relative(&overlay, &deploy_dir()?.join("base"));
    let (image, tag) = images::AGENT
        .rsplit_once(':')
        .context("image name without a tag")?;
    let cgroup_root = Path::new("/host").join(
        node.cgroup2_mount()
            .strip_prefix("/")
            .context("cgroup2 mount is not absolute")?,
    );
    write_overlay(
        &overlay,
        &format!(
            r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
images:
  - name: ghcr.io/hoptrace/hoptrace
    newName: {image}
    newTag: {tag}
patches:
  - patch: |
      apiVersion: v1
      kind: ConfigMap
      metadata: {{name: hoptrace-config, namespace: hoptrace}}
      data:
        OTEL_EXPORTER_OTLP_ENDPOINT: http://{otlp}
        HOPTRACE_CGROUP_ROOT: {cgroup_root}
        RUST_LOG: info,hoptrace=debug
  - patch: |
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {{name: hoptrace, namespace: hoptrace}}
      spec:
        template:
          spec:
            containers:
              - name: agent
                env:
                  - {{name: KUBERNETES_SERVICE_HOST, value: "{host}"}}
                  - {{name: KUBERNETES_SERVICE_PORT, value: "{port}"}}
"#,
            cgroup_root = cgroup_root.display(),
            host = apiserver.ip(),
            port = apiserver.port(),
        ),
    )?;
    let yaml = kubectl(node, &["kustomize", &overlay.display().to_string()])?;
    apply(node, &yaml, "agent")?;
    rollout(node, "hoptrace", "daemonset/hoptrace")
}

/// The address of a running pod of Deployment `name`.
fn pod_ip(node: &Node, name: &str) -> Result<String> {
    let ip = kubectl(
        node,
        &[
            "-n",
            DEMO_NS,
            "get",
            "pods",
            "-l",
            &format!("app.kubernetes.io/name={name}"),
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ],
    )?;
    let ip = ip.trim();
    if ip.is_empty() {
        bail!("no running pod of {name}");
    }
    Ok(ip.to_string())
}

/// Deploys the demo app (deploy/examples without Jaeger) in three steps (module docs)
/// and waits for each rollout.
pub fn demo(node: &Node) -> Result<()> {
    let overlay = node.dir().join("overlays/demo");
    let examples = deploy_dir()?.join("examples");
    let (image, tag) = images::PYTHON
        .rsplit_once(':')
        .context("image name without a tag")?;
    write_overlay(
        &overlay,
        &format!(
            r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {ns}
  - {app}
images:
  - name: python
    newName: {image}
    newTag: "{tag}"
"#,
            ns = relative(&overlay, &examples.join("namespace.yaml")),
            app = relative(&overlay, &examples.join("demo-app.yaml")),
        ),
    )?;
    let yaml = kubectl(
        node,
        &[
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            &overlay.display().to_string(),
        ],
    )?;
    let docs: Vec<&str> = yaml.split("\n---\n").collect();
    let deployment_of = |doc: &str| -> Option<&'static str> {
        if !doc.contains("kind: Deployment") {
            return None;
        }
        DEMO_PATH
            .iter()
            .copied()
            .find(|d| doc.contains(&format!("\n  name: {d}\n")))
    };
    let first: Vec<&str> = docs
        .iter()
        .copied()
        .filter(|d| deployment_of(d).is_none_or(|n| n == "backend"))
        .collect();
    apply(node, &first.join("\n---\n"), "demo-backend")?;
    rollout(node, DEMO_NS, "deployment/backend")?;
    let find = |name: &str| -> Result<&str> {
        docs.iter()
            .copied()
            .find(|d| deployment_of(d) == Some(name))
            .with_context(|| format!("no Deployment {name} in deploy/examples"))
    };
    let backend = pod_ip(node, "backend")?;
    let frontend =
        find("frontend")?.replace("http://backend:8080", &format!("http://{backend}:8080"));
    apply(node, &frontend, "demo-frontend")?;
    rollout(node, DEMO_NS, "deployment/frontend")?;
    let front = pod_ip(node, "frontend")?;
    let loadgen = find("loadgen")?.replace("http://frontend:8080", &format!("http://{front}:8080"));
    apply(node, &loadgen, "demo-loadgen")?;
    rollout(node, DEMO_NS, "deployment/loadgen")
}

/// What helps after a failure: the pods, the agent's and the demo apps' last log
/// lines.
pub fn diagnostics(node: &Node) {
    let mut steps: Vec<Vec<String>> = vec![
        vec![
            "get".into(),
            "pods".into(),
            "-A".into(),
            "-o".into(),
            "wide".into(),
        ],
        vec![
            "-n".into(),
            "hoptrace".into(),
            "logs".into(),
            "daemonset/hoptrace".into(),
            "--tail=30".into(),
        ],
    ];
    for d in DEMO_PATH {
        steps.push(vec![
            "-n".into(),
            DEMO_NS.into(),
            "logs".into(),
            format!("deployment/{d}"),
            "--tail=10".into(),
        ]);
    }
    for args in steps {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        eprintln!("$ kubectl {}", args.join(" "));
        match kubectl(node, &args) {
            Ok(text) => eprintln!("{text}"),
            Err(e) => eprintln!("{e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::relative;
    use std::path::Path;

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/a/b/c"), Path::new("/a/d")), "../../d");
        assert_eq!(relative(Path::new("/a"), Path::new("/a/x.yaml")), "x.yaml");
    }
}
