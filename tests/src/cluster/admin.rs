//! The tests' admin client of the real API server (a `system:masters` client
//! certificate; kube-rs, blocking on a runtime of its own): applies `deploy/base`,
//! mints service-account tokens, creates namespaces and pods, and does what the
//! kubelet would (report a pod running with its IPs, confirm a graceful deletion).

use anyhow::{bail, Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;

/// The agent's ClusterRole in deploy/base/rbac.yaml.
pub const CLUSTER_ROLE: &str = "hoptrace";

/// A blocking admin client. See the module docs.
pub struct Admin {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
}

fn map<'a>(pairs: &[(&'a str, &'a str)]) -> Option<BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

impl Admin {
    /// A client for the API server of `kubeconfig` (nothing is connected yet).
    pub fn connect(kubeconfig: &Path) -> Result<Admin> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let kc = Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let client = rt.block_on(async {
            let config =
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
            anyhow::Ok(kube::Client::try_from(config)?)
        })?;
        Ok(Admin { rt, client })
    }

    fn run<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        self.rt.block_on(f)
    }

    /// True when the API server answers `/readyz` with `ok`.
    pub fn ready(&self) -> bool {
        let Ok(req) = hyper::Request::get("/readyz").body(Vec::new()) else {
            return false;
        };
        let answer = self.rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                self.client.request_text(req),
            )
            .await
        });
        matches!(answer, Ok(Ok(text)) if text.trim() == "ok")
    }

    /// Creates the namespace, service account and RBAC of the project's `deploy/base`.
    pub fn apply_deploy_base(&self) -> Result<()> {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
        let pp = PostParams::default();
        for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            for doc in serde_norway::Deserializer::from_str(&text) {
                let value = serde_json::Value::deserialize(doc)
                    .with_context(|| format!("parsing {}", path.display()))?;
                let kind = value["kind"].as_str().unwrap_or_default().to_string();
                let c = self.client.clone();
                self.run(async {
                    match kind.as_str() {
                        "Namespace" => {
                            Api::<Namespace>::all(c)
                                .create(&pp, &serde_json::from_value(value)?)
                                .await?;
                        }
                        "ServiceAccount" => {
                            let sa: ServiceAccount = serde_json::from_value(value)?;
                            let ns = sa.metadata.namespace.clone().unwrap_or_default();
                            Api::<ServiceAccount>::namespaced(c, &ns)
                                .create(&pp, &sa)
                                .await?;
                        }
                        "ClusterRole" => {
                            Api::<ClusterRole>::all(c)
                                .create(&pp, &serde_json::from_value(value)?)
                                .await?;
                        }
                        "ClusterRoleBinding" => {
                            Api::<ClusterRoleBinding>::all(c)
                                .create(&pp, &serde_json::from_value(value)?)
                                .await?;
                        }
                        other => bail!("{}: unexpected kind {other:?}", path.display()),
                    }
                    Ok(())
                })
                .with_context(|| format!("applying {kind} of {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// A token of service account `namespace/name` from the TokenRequest API (1 h).
    pub fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec!["https://kubernetes.default.svc.cluster.local".into()]),
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = self
            .run(async {
                Ok(api
                    .create_token_request(name, &PostParams::default(), &req)
                    .await?)
            })
            .context("TokenRequest")?;
        answer
            .status
            .and_then(|s| s.token)
            .context("TokenRequest answered without a token")
    }

    /// Replaces the rules of the agent's ClusterRole: `(resources, verbs)` of the core
    /// API group.
    pub fn set_agent_permissions(&self, rules: &[(&[&str], &[&str])]) -> Result<()> {
        let api: Api<ClusterRole> = Api::all(self.client.clone());
        let rules: Vec<PolicyRule> = rules
            .iter()
            .map(|(resources, verbs)| PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(resources.iter().map(|s| s.to_string()).collect()),
                verbs: verbs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .collect();
        let patch = json!({ "rules": rules });
        self.run(async {
            api.patch(CLUSTER_ROLE, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
        .context("patching the agent's ClusterRole")
    }

    /// Creates namespace `name` with `labels`.
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: map(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.run(async {
            api.create(&PostParams::default(), &ns).await?;
            Ok(())
        })
        .with_context(|| format!("creating namespace {name}"))
    }

    /// Creates pod `namespace/name` scheduled on `node` (one container, never run:
    /// no kubelet) and returns the UID the API server gave it.
    pub fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        annotations: &[(&str, &str)],
    ) -> Result<String> {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: map(annotations),
                labels: map(&[("app", name)]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("registry.invalid/app:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let created = self
            .run(async { Ok(api.create(&PostParams::default(), &pod).await?) })
            .with_context(|| format!("creating pod {namespace}/{name}"))?;
        created
            .metadata
            .uid
            .context("the API server gave the pod no UID")
    }

    /// What the kubelet reports once the pod's sandbox is up: `Running` with `ips`.
    pub fn set_running(&self, namespace: &str, name: &str, ips: &[IpAddr]) -> Result<()> {
        let ips: Vec<_> = ips
            .iter()
            .map(|ip| json!({ "ip": ip.to_string() }))
            .collect();
        let patch = json!({
            "status": {
                "phase": "Running",
                "podIP": ips.first().map(|v| v["ip"].clone()),
                "podIPs": ips,
                "hostIP": "127.0.0.1",
                "conditions": [{ "type": "Ready", "status": "True" }],
            }
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        self.run(async {
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
        .with_context(|| format!("setting the status of pod {namespace}/{name}"))
    }

    /// Deletes pod `namespace/name`: `grace` `None` is the pod's own grace period
    /// (the API server only marks it, the kubelet confirms), `Some(0)` forces it.
    pub fn delete_pod(&self, namespace: &str, name: &str, grace: Option<u32>) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let dp = DeleteParams {
            grace_period_seconds: grace,
            ..Default::default()
        };
        self.run(async {
            api.delete(name, &dp).await?;
            Ok(())
        })
        .with_context(|| format!("deleting pod {namespace}/{name}"))
    }

    /// Pod `namespace/name` if it exists.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        self.run(async { Ok(api.get_opt(name).await?) })
    }
}
