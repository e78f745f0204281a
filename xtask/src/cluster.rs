//! `cargo xtask cluster [--keep]`: the check of `cargo xtask kind` on a machine
//! without Docker. Installs what it needs (Debian's containerd, runc,
//! containernetworking-plugins, busybox-static; `setup`'s etcd and Go), builds and
//! caches the Kubernetes binaries (`kube-apiserver`, `kube-node`), builds the agent
//! and the `lab-cluster` program, and runs it: a real one-node cluster on this
//! machine with the DaemonSet and the demo app as pods, one trace checked for four
//! proxy spans per hop, everything torn down (tests/src/node.rs,
//! tests/src/bin/lab-cluster.rs).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::bail;

use crate::{cargo, kube, run as exec, setup};

/// Debian packages the node needs, each with a file that shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("containerd", "/usr/bin/containerd"),
    ("runc", "/usr/sbin/runc"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("busybox-static", "/bin/busybox"),
];

/// Installs the missing [`PACKAGES`].
fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    setup::apt_install("xtask cluster", &missing)
}

/// Runs the whole check; `keep` leaves the cluster running until Ctrl-C.
pub fn run(root: &Path, keep: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    if which::which("kubectl").is_err() {
        // Debian's own kubectl (1.20) is too old for the overlays' kustomize; a newer
        // one comes from an apt source the machine may have (e.g. Kubernetes' or the
        // Google Cloud SDK's).
        println!("xtask cluster: kubectl not found; trying apt");
        let _ = setup::apt_install("xtask cluster", &["kubectl"]);
        if which::which("kubectl").is_err() {
            bail!("kubectl is not installed (it applies the manifests, kustomize included); install kubectl ≥ 1.27 (https://kubernetes.io/docs/tasks/tools/)");
        }
    }
    setup::run()?;
    packages()?;
    let mut names = vec![kube::APISERVER];
    names.extend_from_slice(kube::NODE);
    let bins = kube::ensure(&names)?;
    // The debug agent of `cargo xtask test` (the same build, reused), put in the image.
    cargo(root, &["build", "-p", "hoptrace", "-p", "hoptrace-tests"])?;
    let debug = root.join("target/debug");
    let mut cmd = Command::new(debug.join("lab-cluster"));
    cmd.env("HOPTRACE_BIN", debug.join("hoptrace"))
        .env("HOPTRACE_CLUSTER_DIR", root.join("target/cluster"))
        .env("HOPTRACE_KUBE_APISERVER", first(&bins)?);
    if keep {
        cmd.arg("--keep");
    }
    let result = exec(&mut cmd);
    println!(
        "xtask cluster: {} in {:.0} s (wall time, builds included)",
        if result.is_ok() { "passed" } else { "failed" },
        started.elapsed().as_secs_f64()
    );
    result
}

fn first(bins: &[PathBuf]) -> anyhow::Result<&PathBuf> {
    match bins.first() {
        Some(b) => Ok(b),
        None => bail!("no kube-apiserver path"),
    }
}
