//! `cargo xtask kube-apiserver` (also run by `cargo xtask setup`) and
//! `cargo xtask kube-node`: build Kubernetes binaries from Debian's `kubernetes`
//! source package, once, and cache them: the real API server the discovery tests run
//! against (tests/tests/k8s_real.rs), and the kubelet, kube-controller-manager and
//! kube-scheduler of the one-node cluster of `cargo xtask cluster`
//! (tests/src/node.rs). One call builds every binary asked for that is missing, from
//! one unpacked source tree.
//!
//! The results are cached outside the checkout, so that CI's fresh clones reuse them:
//! `${XDG_CACHE_HOME:-~/.cache}/hoptrace/kube/<name>-v1.20.2` (tests/src/cluster.rs
//! and tests/src/node.rs look there). A binary that exists and reports the expected
//! version is not built again.
//! The build itself happens under `target/kube/` of the workspace: a private apt
//! configuration (its own `deb-src` list and package lists; the machine's apt sources
//! are not touched), the downloaded source package, and the unpacked source, GOPATH
//! and Go build cache (1.5 GB), which are removed after a successful build. The build (Go 1.19 from Debian, GOPATH mode as
//! Kubernetes 1.20 expects):
//!
//! 1. `apt-get source --download-only kubernetes=<DEBIAN_VERSION>`, `dpkg-source -x`;
//! 2. the reflect2 fix for Go ≥ 1.18 (`xtask/patches/`): the vendored
//!    `modern-go/reflect2` 1.0.1 calls `reflect.mapiterinit` with the pre-1.18
//!    signature and crashes (nil pointer in `mapiternext`) when iterating a map;
//! 3. for kube-apiserver only: `pkg/generated/openapi/zz_generated.openapi.go`,
//!    absent from the tarball, generated with the vendored `openapi-gen` over every
//!    package tagged `+k8s:openapi-gen=` (the selection of Kubernetes'
//!    `Makefile.generated_files`); the other binaries do not import it;
//! 4. `go build ./cmd/<name>` with the version stamped in (`-X` ldflags; without
//!    them `/version` says v0.0.0), statically (`CGO_ENABLED=0`).
//!
//! On 2 cores: kube-apiserver about 2.5 minutes; kubelet about 4, then
//! kube-scheduler and kube-controller-manager 1.5 more (they share most packages).
//!
//! etcd comes from Debian's `etcd-server` (3.4), installed by `cargo xtask setup`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};

use crate::run as exec;

/// The Kubernetes version the tests run against (tests/src/cluster.rs looks for the
/// binaries under this name).
pub const KUBE_VERSION: &str = "v1.20.2";
/// The API server of the discovery tests.
pub const APISERVER: &str = "kube-apiserver";
/// The node's binaries (`cargo xtask kube-node`, `cargo xtask cluster`).
pub const NODE: &[&str] = &["kubelet", "kube-controller-manager", "kube-scheduler"];
/// Debian bookworm's source package that holds it.
const DEBIAN_VERSION: &str = "1.20.5+really1.20.2-1.1+deb12u1";
/// Debian's Go that builds it (golang-1.19-go installs here, without /usr/bin/go).
const GO_ROOT: &str = "/usr/lib/go-1.19";
const GO_PACKAGE: &str = "golang-1.19-go";
/// Its major and minor version, as `/version` reports them.
const KUBE_MAJOR_MINOR: (&str, &str) = ("1", "20");
/// The build date stamped into `/version` (the date of the source tarball's files).
const BUILD_DATE: &str = "2021-01-13T00:00:00Z";
const REFLECT2_PATCH: &str = "xtask/patches/reflect2-go1.18-mapiter.patch";

/// `target/kube` of the workspace: where the build happens.
fn cache_dir() -> anyhow::Result<PathBuf> {
    Ok(crate::workspace_root()?.join("target/kube"))
}

/// The cached binary `name`'s path: `${XDG_CACHE_HOME:-$HOME/.cache}/hoptrace/kube/`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(cache
        .join("hoptrace/kube")
        .join(format!("{name}-{KUBE_VERSION}")))
}

/// True when `bin` runs and says it is [`KUBE_VERSION`] (`Kubernetes v1.20.2`; the
/// kubelet and the others print the same).
fn is_built(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == format!("Kubernetes {KUBE_VERSION}")
        })
        .unwrap_or(false)
}

/// Builds and caches each of `names` (`kube-apiserver`, `kubelet`, ...) unless the
/// cached one is there; returns their paths.
pub fn ensure(names: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let bins = names
        .iter()
        .map(|n| binary(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let missing: Vec<(&str, &PathBuf)> = names
        .iter()
        .copied()
        .zip(&bins)
        .filter(|(_, bin)| !is_built(bin))
        .collect();
    if missing.is_empty() {
        return Ok(bins);
    }
    let started = Instant::now();
    packages()?;
    let cache = cache_dir()?;
    let src = fetch_source(&cache)?;
    let list: Vec<&str> = missing.iter().map(|(n, _)| *n).collect();
    println!(
        "xtask: building {} {KUBE_VERSION} from Debian's source (a few minutes each on 2 cores)",
        list.join(", ")
    );
    let gopath = cache.join("gopath");
    let link = gopath.join("src/k8s.io/kubernetes");
    std::fs::create_dir_all(gopath.join("src/k8s.io"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&src, &link)
        .with_context(|| format!("symlink {}", link.display()))?;
    let go = |args: &[&str]| {
        let mut cmd = Command::new(Path::new(GO_ROOT).join("bin/go"));
        // GOPATH mode takes the import path from the working directory: it must be
        // the path inside GOPATH, which go reads from $PWD (the kernel's cwd is the
        // symlink's target).
        cmd.args(args)
            .current_dir(&link)
            .env("PWD", &link)
            .env("GOPATH", &gopath)
            .env("GOCACHE", cache.join("gocache"))
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .env("GOTOOLCHAIN", "local")
            .env("PATH", prepend_path(&Path::new(GO_ROOT).join("bin")));
        cmd
    };
    let tools = cache.join("tools");
    std::fs::create_dir_all(&tools)?;
    if list.contains(&APISERVER) {
        let openapi_gen = tools.join("openapi-gen");
        exec(&mut go(&[
            "build",
            "-o",
            path_str(&openapi_gen)?,
            "./vendor/k8s.io/kube-openapi/cmd/openapi-gen",
        ]))?;
        let inputs = openapi_packages(&src)?;
        exec(
            Command::new(&openapi_gen)
                .args(["--logtostderr", "-i", &inputs.join(",")])
                .args(["-p", "k8s.io/kubernetes/pkg/generated/openapi"])
                .args(["-O", "zz_generated.openapi"])
                .args(["-h", "vendor/k8s.io/code-generator/hack/boilerplate.go.txt"])
                .args(["-r", path_str(&tools.join("openapi-violations.report"))?])
                .current_dir(&link)
                .env("PWD", &link)
                .env("GOPATH", &gopath)
                .env("GO111MODULE", "off")
                .env("GOROOT", GO_ROOT),
        )?;
    }
    let mut ldflags = vec!["-s".to_string(), "-w".to_string()];
    for pkg in ["component-base/version", "client-go/pkg/version"] {
        let p = format!("k8s.io/kubernetes/vendor/k8s.io/{pkg}");
        for (var, val) in [
            ("gitVersion", KUBE_VERSION),
            ("gitMajor", KUBE_MAJOR_MINOR.0),
            ("gitMinor", KUBE_MAJOR_MINOR.1),
            ("gitTreeState", "clean"),
            ("buildDate", BUILD_DATE),
        ] {
            ldflags.push(format!("-X {p}.{var}={val}"));
        }
    }
    for (name, bin) in &missing {
        let tmp = bin.with_file_name(format!("{name}-{KUBE_VERSION}.partial"));
        std::fs::create_dir_all(bin.parent().context("binary path has a parent")?)?;
        let one = Instant::now();
        exec(&mut go(&[
            "build",
            "-p",
            "2",
            "-trimpath",
            "-ldflags",
            &ldflags.join(" "),
            "-o",
            path_str(&tmp)?,
            &format!("./cmd/{name}"),
        ]))?;
        std::fs::rename(&tmp, bin)?;
        if !is_built(bin) {
            bail!(
                "{} was built but does not report {KUBE_VERSION}",
                bin.display()
            );
        }
        println!(
            "xtask: {name} built in {:.0} s: {}",
            one.elapsed().as_secs_f64(),
            bin.display()
        );
    }
    // The unpacked source and Go's build cache (1.5 GB) serve no later run: the
    // binary is the cache, and another version would be a cold build anyway.
    for dir in [cache.join("src"), cache.join("gocache"), tools, gopath] {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    println!(
        "xtask: {} {KUBE_VERSION} built in {:.0} s",
        list.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(bins)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(old) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// Debian's Go 1.19, dpkg-source and etcd.
fn packages() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !Path::new(GO_ROOT).join("bin/go").exists() {
        missing.push(GO_PACKAGE);
    }
    if which::which("dpkg-source").is_err() {
        missing.push("dpkg-dev");
    }
    if which::which("patch").is_err() {
        missing.push("patch");
    }
    if missing.is_empty() {
        return Ok(());
    }
    crate::setup::apt_install("xtask", &missing)
}

/// Downloads and unpacks the source package with a private apt configuration, applies
/// the reflect2 patch; returns the source directory. An earlier partial unpack is
/// removed first.
fn fetch_source(cache: &Path) -> anyhow::Result<PathBuf> {
    let apt = cache.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let list = apt.join("sources.list");
    std::fs::write(
        &list,
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n",
    )?;
    let apt_get = |args: &[&str], dir: &Path| {
        let mut cmd = Command::new("apt-get");
        cmd.arg("-q")
            .arg(format!("-oDir::Etc::SourceList={}", list.display()))
            .arg("-oDir::Etc::SourceParts=/dev/null")
            .arg(format!(
                "-oDir::State::Lists={}",
                apt.join("lists").display()
            ))
            .arg(format!("-oDir::Cache={}", apt.join("cache").display()))
            .arg("-oAPT::Sandbox::User=root")
            .args(args)
            .current_dir(dir);
        cmd
    };
    let download = cache.join("download");
    std::fs::create_dir_all(&download)?;
    let dsc = download.join(format!("kubernetes_{DEBIAN_VERSION}.dsc"));
    if !dsc.exists() {
        exec(&mut apt_get(&["update"], &download))?;
        exec(&mut apt_get(
            &[
                "source",
                "--download-only",
                &format!("kubernetes={DEBIAN_VERSION}"),
            ],
            &download,
        ))?;
    }
    let src = cache.join("src/kubernetes");
    if src.exists() {
        std::fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    std::fs::create_dir_all(cache.join("src"))?;
    // Debian's patches only change kubectl's printing: the upstream source is built.
    exec(
        Command::new("dpkg-source")
            .args(["-x", "--skip-patches"])
            .arg(&dsc)
            .arg(&src),
    )?;
    let patch = crate::workspace_root()?.join(REFLECT2_PATCH);
    exec(
        Command::new("patch")
            .args(["-p1", "--forward", "--input"])
            .arg(&patch)
            .current_dir(&src),
    )?;
    Ok(src)
}

/// The Go packages (`k8s.io/kubernetes/...`) whose files carry `+k8s:openapi-gen=`, as
/// Kubernetes' `Makefile.generated_files` selects them for `pkg/generated/openapi`:
/// the tree without `vendor/` and hidden or `_` directories, `staging/src/` named as
/// `vendor/`, minus the code-generator and sample-apiserver examples.
fn openapi_packages(src: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = std::collections::BTreeSet::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut tagged = false;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                let top = dir == src;
                if name.starts_with('.')
                    || name.starts_with('_')
                    || (top && (name == "vendor" || name == "debian"))
                {
                    continue;
                }
                stack.push(entry.path());
            } else if ty.is_file() && name.ends_with(".go") && !tagged {
                let text = std::fs::read(entry.path())?;
                tagged = text
                    .windows(b"+k8s:openapi-gen=".len())
                    .any(|w| w == b"+k8s:openapi-gen=");
            }
        }
        if tagged {
            let rel = dir.strip_prefix(src)?.to_string_lossy().to_string();
            let rel = match rel.strip_prefix("staging/src/") {
                Some(rest) => format!("vendor/{rest}"),
                None => rel,
            };
            if rel.starts_with("vendor/k8s.io/code-generator/")
                || rel.starts_with("vendor/k8s.io/sample-apiserver/")
            {
                continue;
            }
            found.insert(format!("k8s.io/kubernetes/{rel}"));
        }
    }
    if found.len() < 50 {
        bail!(
            "only {} packages tagged +k8s:openapi-gen in {}: not the expected Kubernetes source",
            found.len(),
            src.display()
        );
    }
    Ok(found.into_iter().collect())
}
