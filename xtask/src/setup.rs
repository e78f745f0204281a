//! `cargo xtask setup`: everything a fresh machine needs to build and test hoptrace.
//! Each step checks first and does nothing when already done.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::run as exec;

/// bpf-linker release known to build against the nightly toolchain's LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The nightly toolchain that compiles the eBPF crate (must match bpf-linker's LLVM).
const NIGHTLY: &str = "nightly";

/// Debian packages the lab, tests and `cargo xtask bench` use: (binary to probe, package).
/// util-linux: `setpriv` and `unshare` run the agent as its container would
/// (tests/tests/capabilities.rs). The bench runs its own nginx and haproxy instances
/// with its own config files, tests/tests/stat.rs its own Prometheus; the packages'
/// system services are never started (see
/// [`debian_packages`]).
const DEBIAN: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("unshare", "util-linux"),
    ("wrk", "wrk"),
    ("nginx", "nginx"),
    ("haproxy", "haproxy"),
    // `cargo xtask bench --callgrind`: instructions per request (valgrind's callgrind,
    // driven with callgrind_control).
    ("valgrind", "valgrind"),
    // `hoptrace stat --prometheus` is tested against a real Prometheus
    // (tests/tests/stat.rs runs the binary with its own config, never the service).
    ("prometheus", "prometheus"),
    // `hoptrace dashboard` is tested in a real browser: headless Chromium driven over
    // WebDriver (tests/tests/dashboard.rs, tests/src/webdriver.rs).
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    // The real Kubernetes API server of tests/tests/k8s_real.rs stores in an etcd the
    // test starts itself (tests/src/kube/), never the package's service.
    ("etcd", "etcd-server"),
    // `cargo xtask vm-test` (docs/KERNELS.md): qemu (TCG) boots Debian kernels; the
    // static busybox is the guest's initramfs userland and makes its modules.dep.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("xz", "xz-utils"),
    // The plain apps of the context-propagation tests (tests/tests/propagation.rs): a
    // Java thread-pool server (tests/apps/PlainWeb.java, compiled by the test with
    // javac) and a Node.js event-loop server (tests/apps/plain_web.js).
    ("javac", "default-jdk-headless"),
    ("node", "nodejs"),
    // tests/tests/relay_syscalls.rs counts the agents' `recvfrom` calls with `strace -c`.
    ("strace", "strace"),
];

/// Debian's hook that `invoke-rc.d` asks before starting a service; exit 101 = "not now".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Python packages of the instrumented test apps (tests/apps, Python 3.11):
/// (module to probe with `python3 -c 'import ...'`, pinned requirement).
/// The contrib 0.66b1 instrumentations go with the 1.45.1 API/SDK.
const PYTHON: &[(&str, &str)] = &[
    ("opentelemetry.trace", "opentelemetry-api==1.45.1"),
    ("opentelemetry.sdk.trace", "opentelemetry-sdk==1.45.1"),
    (
        "opentelemetry.propagators.b3",
        "opentelemetry-propagator-b3==1.45.1",
    ),
    (
        "opentelemetry.instrumentation.requests",
        "opentelemetry-instrumentation-requests==0.66b1",
    ),
    ("requests", "requests==2.34.2"),
    // The gRPC apps (grpc_server.py, grpc_client.py): grpcio-tools compiles
    // their .proto in memory at start (grpc.protos_and_services).
    ("grpc", "grpcio==1.85.1"),
    ("grpc_tools.protoc", "grpcio-tools==1.85.1"),
    ("google.protobuf", "protobuf==7.36.2"),
    (
        "opentelemetry.instrumentation.grpc",
        "opentelemetry-instrumentation-grpc==0.66b1",
    ),
];

/// Runs every setup step.
pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    python_packages()?;
    node_packages()?;
    // After the Debian packages: etcd; it installs Go 1.19 itself.
    crate::kube::ensure(&[crate::kube::APISERVER])?;
    println!("xtask setup: done");
    Ok(())
}

/// Fails with the one-line fix when the eBPF toolchain is missing.
pub fn check_ready() -> anyhow::Result<()> {
    if which::which("bpf-linker").is_err() {
        bail!("bpf-linker is not installed: run `cargo xtask setup` first");
    }
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("rustup is required (the nightly toolchain builds the eBPF programs)")?;
    if !out.status.success() {
        bail!("the `{NIGHTLY}` toolchain is not installed: `rustup toolchain install {NIGHTLY}`");
    }
    if String::from_utf8_lossy(&out.stdout).contains("rust-src") {
        return Ok(());
    }
    println!("xtask setup: adding rust-src to {NIGHTLY}");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// The LLVM major version of the nightly toolchain (`LLVM version: 22.1.4`).
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let out = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "-vV"])
        .output()
        .context("running rustc +nightly -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ver = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV printed no LLVM version")?;
    ver.split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("unparseable LLVM version {ver:?}"))
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output() {
        if out.status.success() {
            return Ok(());
        }
    }
    // No prebuilt bpf-linker can be downloaded here: build it against the nightly
    // toolchain's own libLLVM, so its bitcode version matches what rustc emits.
    let major = nightly_llvm_major()?;
    let sysroot = String::from_utf8(
        Command::new("rustc")
            .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
            .output()
            .context("rustc +nightly --print sysroot")?
            .stdout,
    )?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", libdir.display()))?;
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let prefix = PathBuf::from(home).join(".cache/hoptrace/llvm-prefix");
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for name in ["libLLVM.so".to_string(), lib.clone()] {
        let link = plib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&lib), &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    println!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} ({lib}); takes a few minutes");
    exec(
        Command::new(crate::cargo_bin())
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
}

fn debian_packages() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(bin, _)| which::which(bin).is_err())
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install("xtask setup", &missing)
}

/// `apt-get update` and `apt-get install` of `packages` (`who` prefixes the message).
/// Packages that would start a system service on install (nginx, haproxy, etcd-server,
/// containerd) do not: a temporary policy-rc.d forbids it, unless the machine already
/// has one, which then decides.
pub fn apt_install(who: &str, packages: &[&str]) -> anyhow::Result<()> {
    println!("{who}: installing Debian packages {packages:?}");
    exec(Command::new("apt-get").arg("update").arg("-q"))?;
    let own_policy = !std::path::Path::new(POLICY_RC_D).exists();
    if own_policy {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# written by cargo xtask\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if own_policy {
        std::fs::remove_file(POLICY_RC_D).with_context(|| format!("removing {POLICY_RC_D}"))?;
    }
    result
}

fn python_packages() -> anyhow::Result<()> {
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    if python.is_none() {
        bail!("python3 (3.11) is required by the instrumented test apps in tests/apps");
    }
    let missing: Vec<&str> = PYTHON
        .iter()
        .filter(|(module, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // Install the whole pinned set together so pip resolves one consistent set
    // (the instrumentations pin the API/SDK they go with).
    let all: Vec<&str> = PYTHON.iter().map(|(_, req)| *req).collect();
    println!("xtask setup: installing Python packages {all:?} (missing: {missing:?})");
    exec(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--root-user-action=ignore"])
            .args(&all),
    )
}

/// The third-party OTLP receiver of the tests (`tests/collector`: @elastic/mockotlpserver
/// from the npm registry, versions locked in its package-lock.json).
fn node_packages() -> anyhow::Result<()> {
    let dir = crate::workspace_root()?.join("tests/collector");
    if dir
        .join("node_modules/@elastic/mockotlpserver/package.json")
        .exists()
    {
        return Ok(());
    }
    if which::which("npm").is_err() || which::which("node").is_err() {
        bail!("node and npm are required for the third-party OTLP receiver in tests/collector (Debian: `apt-get install nodejs npm`)");
    }
    println!("xtask setup: installing tests/collector (npm ci)");
    exec(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
    )
}
