//! Loading `deploy/`: every YAML document of every file, parsed into its
//! Kubernetes type (k8s-openapi) or, for kustomize and kind files, into a strict
//! struct of this module. Used by `manifests.rs` and `capabilities.rs`
//! (`#[path = "common/deploy.rs"] mod deploy;`).
#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One parsed document.
#[derive(Clone, Debug)]
pub enum Manifest {
    /// `apps/v1 DaemonSet`.
    DaemonSet(Box<DaemonSet>),
    /// `apps/v1 Deployment`.
    Deployment(Box<Deployment>),
    /// `v1 ConfigMap`.
    ConfigMap(Box<ConfigMap>),
    /// `v1 Namespace`.
    Namespace(Box<Namespace>),
    /// `v1 Service`.
    Service(Box<Service>),
    /// `v1 ServiceAccount`.
    ServiceAccount(Box<ServiceAccount>),
    /// `rbac.authorization.k8s.io/v1 ClusterRole`.
    ClusterRole(Box<ClusterRole>),
    /// `rbac.authorization.k8s.io/v1 ClusterRoleBinding`.
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    /// `kustomize.config.k8s.io/v1beta1 Kustomization`.
    Kustomization(Box<Kustomization>),
    /// `kind.x-k8s.io/v1alpha4 Cluster`.
    KindCluster(Box<KindCluster>),
}

/// A document and where it came from.
#[derive(Clone, Debug)]
pub struct Doc {
    /// The file, relative to `deploy/`.
    pub file: PathBuf,
    /// 0-based index of the document in the file.
    pub index: usize,
    /// The parsed document.
    pub manifest: Manifest,
}

/// The subset of a kustomization these manifests use. Unknown fields are errors.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    /// `kustomize.config.k8s.io/v1beta1`.
    pub api_version: String,
    /// `Kustomization`.
    pub kind: String,
    /// Namespace set on every resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Files and directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Labels added to every resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<KustomizeLabels>,
    /// Image rewrites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<KustomizeImage>,
    /// Patch files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<KustomizePatch>,
}

/// A `labels` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeLabels {
    /// The labels.
    pub pairs: BTreeMap<String, String>,
    /// Also in selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_selectors: Option<bool>,
    /// Also in pod templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_templates: Option<bool>,
}

/// An `images` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeImage {
    /// Image name to match.
    pub name: String,
    /// Replacement name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
    /// Replacement tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tag: Option<String>,
}

/// A `patches` entry (file patches only).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizePatch {
    /// The patch file, relative to the kustomization.
    pub path: String,
}

/// The subset of a kind cluster config `deploy/kind/cluster.yaml` uses.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KindCluster {
    /// `Cluster`.
    pub kind: String,
    /// `kind.x-k8s.io/v1alpha4`.
    pub api_version: String,
    /// Cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The nodes.
    pub nodes: Vec<KindNode>,
}

/// A kind node.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KindNode {
    /// `control-plane` or `worker`.
    pub role: String,
    /// Node image (`kindest/node:vX.Y.Z@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("deploy"))
        .unwrap_or_else(|| PathBuf::from("deploy"))
}

/// Every `*.yaml` / `*.yml` file under `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Parses every document of every YAML file under `deploy/`.
pub fn load() -> Result<Vec<Doc>> {
    let dir = deploy_dir();
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for path in yaml_files(&dir)? {
        let rel = path.strip_prefix(&dir).unwrap_or(&path).to_path_buf();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        match parse_docs(&text) {
            Ok(parsed) => {
                docs.extend(parsed.into_iter().enumerate().map(|(index, manifest)| Doc {
                    file: rel.clone(),
                    index,
                    manifest,
                }))
            }
            Err(e) => errors.push(format!("{}: {e:#}", rel.display())),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(docs)
}

/// Parses a multi-document YAML text; empty documents are skipped.
pub fn parse_docs(text: &str) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value =
            serde_norway::Value::deserialize(doc).with_context(|| format!("document {i}"))?;
        if value.is_null() {
            continue;
        }
        out.push(parse_value(&value).with_context(|| format!("document {i}"))?);
    }
    Ok(out)
}

/// Dispatches one document on `apiVersion` and `kind`; unknown kinds are errors.
pub fn parse_value(value: &serde_norway::Value) -> Result<Manifest> {
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    Ok(match (api_version, kind) {
        ("apps/v1", "DaemonSet") => Manifest::DaemonSet(strict(value)?),
        ("apps/v1", "Deployment") => Manifest::Deployment(strict(value)?),
        ("v1", "ConfigMap") => Manifest::ConfigMap(strict(value)?),
        ("v1", "Namespace") => Manifest::Namespace(strict(value)?),
        ("v1", "Service") => Manifest::Service(strict(value)?),
        ("v1", "ServiceAccount") => Manifest::ServiceAccount(strict(value)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Manifest::ClusterRole(strict(value)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Manifest::ClusterRoleBinding(strict(value)?)
        }
        ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
            Manifest::Kustomization(strict(value)?)
        }
        ("kind.x-k8s.io/v1alpha4", "Cluster") => Manifest::KindCluster(strict(value)?),
        _ => bail!("unknown apiVersion/kind {api_version:?}/{kind:?} (add it to tests/tests/common/deploy.rs)"),
    })
}

/// Deserializes `value` into `T`, then checks that serializing it again gives
/// back exactly `value`: k8s-openapi ignores unknown fields, so a typo such as
/// `contianers` would otherwise vanish silently.
pub fn strict<T: DeserializeOwned + Serialize>(value: &serde_norway::Value) -> Result<Box<T>> {
    let typed: T = serde_norway::from_value(value.clone()).context("does not parse")?;
    let back = serde_json::to_value(&typed)?;
    let orig = serde_json::to_value(value).context("not representable as JSON")?;
    let mut diffs = Vec::new();
    diff("", &orig, &back, &mut diffs);
    if !diffs.is_empty() {
        bail!(
            "fields lost or changed by the typed parse (typo or wrong type?):\n  {}",
            diffs.join("\n  ")
        );
    }
    Ok(Box::new(typed))
}

fn diff(path: &str, orig: &serde_json::Value, back: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (orig, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(vb) => diff(&p, va, vb, out),
                    None => out.push(format!("{p}: unknown field")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the typed parse"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

/// The one object of type `T` in `docs` matching `pick`, or an error.
pub fn one<'a, T>(
    docs: &'a [Doc],
    what: &str,
    pick: impl Fn(&'a Manifest) -> Option<&'a T>,
) -> Result<&'a T> {
    let found: Vec<&T> = docs.iter().filter_map(|d| pick(&d.manifest)).collect();
    match found.as_slice() {
        [one] => Ok(one),
        _ => bail!(
            "want exactly one {what} under deploy/, found {}",
            found.len()
        ),
    }
}

/// The agent DaemonSet (`deploy/base/daemonset.yaml`).
pub fn agent_daemonset(docs: &[Doc]) -> Result<&DaemonSet> {
    one(docs, "DaemonSet", |m| match m {
        Manifest::DaemonSet(d) => Some(d.as_ref()),
        _ => None,
    })
}

/// The capabilities the agent container adds (`SYS_ADMIN`, ...), as listed.
pub fn added_capabilities(ds: &DaemonSet) -> Result<Vec<String>> {
    let container = ds
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .context("DaemonSet has no container")?;
    Ok(container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default())
}
