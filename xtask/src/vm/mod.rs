//! `cargo xtask vm-test --kernel <name>`: the lab tests inside a VM running a
//! distribution kernel (docs/KERNELS.md).
//!
//! The kernel comes from Debian's archive, or Ubuntu's (`--kernel ubuntu-6.8`,
//! `ubuntu.rs`), (`apt-get download`, `dpkg-deb -x`) into
//! `target/vm/kernels/<package>/`, pruned to the modules a lab can use. qemu boots it
//! (TCG by default: KVM hangs under nested virtualization here) with a hand-made
//! initramfs (`init.sh`, busybox and the virtio/9p modules) that mounts the host's
//! filesystem read-only over 9p as the guest's root and runs `guest.sh` from it.
//! That script mounts tmpfs, cgroup2, bpffs, loads the lab's modules and runs each
//! test binary (built on the host) as root, writing its exit code to a writable 9p
//! share that this task reads afterwards.

mod cpio;
mod kernel;
mod ubuntu;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// The lab tests run in the VM by default: one of each kind of path (same node,
/// cross node, four HTTP spans per hop, fail-open when the agent dies, the
/// DaemonSet's exact capabilities and `hoptrace check`, context propagation — on 6.1,
/// without the `sock_*_length` tracepoints, by exclusivity alone). TCG runs ~10-50x slower
/// than the host, so the whole suite does not fit a CI budget.
pub const DEFAULT_TESTS: &[&str] = &[
    "same_node",
    "cross_node",
    "http_spans:tracecontext_chain_has_four_spans_per_hop",
    "fail_open:agent_kill_fails_open_and_restart_resumes_steering",
    "capabilities",
    "propagation:threaded_python_web_trace_is_whole",
];

/// Modules the initramfs loads to mount the host's filesystem.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// Modules guest.sh loads before the tests (the kernel asks for others itself).
const PRELOAD: &[&str] = &["veth", "bridge", "inet_diag", "tcp_diag", "udp_diag"];

/// `cargo xtask vm-test` options.
#[derive(clap::Args)]
pub struct VmArgs {
    /// Kernel: a Debian version (`6.1`, `6.12`: the newest `linux-image-<v>...-amd64`
    /// the archive offers), an exact Debian package name (`linux-image-6.1.0-57-amd64`),
    /// or an Ubuntu 24.04 version (`ubuntu-6.8`, `ubuntu-6.11`: the newest
    /// `linux-image-<v>.0-<n>-generic` and its modules from Ubuntu's archive).
    #[arg(long, default_value = "6.1")]
    pub kernel: String,
    /// Comma-separated tests: `<test target>` or `<test target>:<name filter>`
    /// [default: same_node, cross_node, http_spans:tracecontext_chain_has_four_spans_per_hop,
    /// fail_open:agent_kill_fails_open_and_restart_resumes_steering, capabilities,
    /// propagation:threaded_python_web_trace_is_whole].
    #[arg(long, value_delimiter = ',')]
    pub tests: Vec<String>,
    /// qemu accelerator: `tcg` (works everywhere) or `kvm`.
    #[arg(long, default_value = "tcg")]
    pub accel: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Give up on the whole VM after this many minutes.
    #[arg(long, default_value_t = 30)]
    pub timeout_minutes: u64,
    /// Give up on one test binary after this many minutes (inside the guest).
    #[arg(long, default_value_t = 10)]
    pub test_timeout_minutes: u64,
    /// `NAME=VALUE` set for the tests in the guest (and the agents they start), e.g.
    /// `HOPTRACE_OPAQUE_TCP=kernel-always` to splice on a kernel below the tested
    /// releases. Repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
}

/// A `--env NAME=VALUE` pair, checked to be safe in the guest's shell file.
pub fn parse_env(s: &str) -> anyhow::Result<(String, String)> {
    let Some((name, value)) = s.split_once('=') else {
        bail!("bad --env {s:?}: want NAME=VALUE");
    };
    let name_ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok || value.contains(['\'', '\n']) {
        bail!("bad --env {s:?}: the name takes letters, digits and _, the value no ' or newline");
    }
    Ok((name.to_string(), value.to_string()))
}

/// One test binary to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSpec {
    /// The `tests/tests/<target>.rs` target.
    pub target: String,
    /// A test name filter (libtest substring match), if any.
    pub filter: Option<String>,
}

impl TestSpec {
    /// `same_node` or `http_spans:tracecontext_chain_has_four_spans_per_hop`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (target, filter) = match s.split_once(':') {
            Some((t, f)) => (t, Some(f.to_string())),
            None => (s, None),
        };
        let ok = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !ok(target) || !filter.as_deref().is_none_or(ok) {
            bail!("bad test {s:?}: want <test target>[:<name filter>] (letters, digits, _ and -)");
        }
        Ok(Self {
            target: target.to_string(),
            filter,
        })
    }

    /// The result file stem: unique per spec.
    pub fn name(&self) -> String {
        match &self.filter {
            Some(f) => format!("{}.{f}", self.target),
            None => self.target.clone(),
        }
    }
}

pub fn run(root: &Path, args: &VmArgs) -> anyhow::Result<()> {
    let specs = if args.tests.is_empty() {
        DEFAULT_TESTS
            .iter()
            .map(|s| TestSpec::parse(s))
            .collect::<Result<Vec<_>, _>>()
    } else {
        args.tests.iter().map(|s| TestSpec::parse(s)).collect()
    }?;
    if args.accel != "tcg" && args.accel != "kvm" {
        bail!("--accel must be tcg or kvm");
    }
    crate::setup::run()?;
    let busybox = static_busybox()?;
    let vm_dir = root.join("target/vm");
    let k = kernel::fetch(&vm_dir, &args.kernel, &busybox)?;
    println!("vm-test: kernel {} ({})", k.release, k.package);

    let bins = build_tests(root, &specs)?;
    let run_dir = vm_dir.join(format!("run-{}", k.release));
    let results = prepare_run_dir(root, &run_dir, &k, &busybox, &specs, &bins, args)?;
    let initrd = run_dir.join("initramfs.cpio");
    std::fs::write(&initrd, initramfs(&k, &busybox)?)
        .with_context(|| format!("writing {}", initrd.display()))?;

    let started = Instant::now();
    boot(&run_dir, &k, &initrd, &results, args)?;
    report(&results, &specs, &k, started.elapsed())
}

/// busybox must be static: it runs alone in the initramfs.
fn static_busybox() -> anyhow::Result<PathBuf> {
    let path = which::which("busybox").context("busybox is missing: run `cargo xtask setup`")?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.windows(12).any(|w| w == b"/lib64/ld-li") {
        bail!(
            "{} is dynamically linked: install Debian's busybox-static",
            path.display()
        );
    }
    Ok(path)
}

/// Builds the agent, labapp and the test binaries; returns target → executable.
fn build_tests(
    root: &Path,
    specs: &[TestSpec],
) -> anyhow::Result<std::collections::BTreeMap<String, PathBuf>> {
    crate::cargo(root, &["build", "-p", "hoptrace", "-p", "hoptrace-tests"])?;
    let mut cmd = Command::new(crate::cargo_bin());
    cmd.current_dir(root).args([
        "test",
        "-p",
        "hoptrace-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for s in specs {
        cmd.args(["--test", &s.target]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed: {}", out.status);
    }
    let bins = test_executables(&String::from_utf8_lossy(&out.stdout));
    for s in specs {
        if !bins.contains_key(&s.target) {
            bail!("cargo built no test binary for {}", s.target);
        }
    }
    Ok(bins)
}

/// Test target name → executable, from cargo's JSON messages.
pub fn test_executables(json_lines: &str) -> std::collections::BTreeMap<String, PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["profile"]["test"] == true)
        .filter_map(|v| {
            let name = v["target"]["name"].as_str()?.to_string();
            let exe = v["executable"].as_str()?;
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

fn prepare_run_dir(
    root: &Path,
    run_dir: &Path,
    k: &kernel::Kernel,
    busybox: &Path,
    specs: &[TestSpec],
    bins: &std::collections::BTreeMap<String, PathBuf>,
    args: &VmArgs,
) -> anyhow::Result<PathBuf> {
    if run_dir.exists() {
        std::fs::remove_dir_all(run_dir)
            .with_context(|| format!("removing {}", run_dir.display()))?;
    }
    let results = run_dir.join("results");
    std::fs::create_dir_all(&results)?;
    let dep = std::fs::read_to_string(k.modules.join("modules.dep"))?;
    let builtin = std::fs::read_to_string(k.modules.join("modules.builtin")).unwrap_or_default();
    let preload = cpio::load_order(&cpio::parse_modules_dep(&dep), &builtin, PRELOAD)?
        .iter()
        .map(|p| no_space(&k.modules.join(p)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::write(run_dir.join("guest.sh"), include_str!("guest.sh"))?;
    let mut tests = String::new();
    for s in specs {
        let bin = bins
            .get(&s.target)
            .with_context(|| format!("no test binary for {}", s.target))?;
        tests += &format!(
            "{} {} {}\n",
            s.name(),
            no_space(bin)?,
            s.filter.as_deref().unwrap_or("-")
        );
    }
    std::fs::write(run_dir.join("tests"), tests)?;
    let debug = root.join("target/debug");
    let mut env: Vec<(String, String)> = [
        ("BUSYBOX", no_space(busybox)?),
        ("PROJECT_ROOT", no_space(root)?),
        ("RESULTS", no_space(&results)?),
        ("TESTS", no_space(&run_dir.join("tests"))?),
        ("PRELOAD", preload.join(" ")),
        ("TEST_TIMEOUT", format!("{}m", args.test_timeout_minutes)),
        ("HOPTRACE_BIN", no_space(&debug.join("hoptrace"))?),
        ("HOPTRACE_LABAPP", no_space(&debug.join("labapp"))?),
        ("CI", "true".into()),
        ("RUST_BACKTRACE", "1".into()),
        ("HOME", "/root".into()),
        ("PATH", host_path()?),
        ("TMPDIR", "/tmp".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for e in &args.env {
        env.push(parse_env(e)?);
    }
    let text: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect();
    std::fs::write(run_dir.join("vm.env"), text)?;
    Ok(results)
}

/// The host's PATH, for the guest (the tests find python3, node... as on the host).
fn host_path() -> anyhow::Result<String> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    if path.contains('\'') {
        bail!("PATH has a quote; the VM test cannot pass it");
    }
    Ok(path)
}

/// Paths go through whitespace-split shell lines in the guest.
fn no_space(p: &Path) -> anyhow::Result<String> {
    let s = p.display().to_string();
    if s.chars().any(|c| c.is_whitespace() || c == '\'') {
        bail!("path {s:?} has whitespace or a quote; the VM test cannot pass it");
    }
    Ok(s)
}

/// The initramfs: busybox, /init, /dev/console and the boot modules in load order.
fn initramfs(k: &kernel::Kernel, busybox: &Path) -> anyhow::Result<Vec<u8>> {
    let dep = std::fs::read_to_string(k.modules.join("modules.dep"))?;
    let builtin = std::fs::read_to_string(k.modules.join("modules.builtin")).unwrap_or_default();
    let order = cpio::load_order(&cpio::parse_modules_dep(&dep), &builtin, BOOT_MODULES)?;
    let mut c = cpio::Cpio::default();
    for d in ["bin", "dev", "modules"] {
        c.dir(d);
    }
    c.char_dev("dev/console", 5, 1);
    c.file("bin/busybox", 0o755, &std::fs::read(busybox)?);
    c.file("init", 0o755, include_bytes!("init.sh"));
    let mut names = String::new();
    for path in &order {
        let name = path.rsplit('/').next().unwrap_or(path);
        c.file(
            &format!("modules/{name}"),
            0o644,
            &std::fs::read(k.modules.join(path))?,
        );
        names += name;
        names.push('\n');
    }
    c.file("modules.order", 0o644, names.as_bytes());
    Ok(c.finish())
}

fn boot(
    run_dir: &Path,
    k: &kernel::Kernel,
    initrd: &Path,
    results: &Path,
    args: &VmArgs,
) -> anyhow::Result<()> {
    let stage2 = no_space(&run_dir.join("guest.sh"))?;
    let fs = |id: &str, path: &str, ro: bool| {
        format!(
            "local,id={id},path={path},security_model=none,multidevs=remap{}",
            if ro { ",readonly=on" } else { "" }
        )
    };
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "qemu-system-x86_64"])
        .args(["-accel", &args.accel, "-cpu", "max"])
        .args(["-smp", &args.cpus.to_string()])
        .args(["-m", &args.memory.to_string()])
        .args(["-nodefaults", "-no-reboot", "-display", "none"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("console=ttyS0 rdinit=/init panic=-1 loglevel=4 hoptrace.stage2={stage2}"),
        ])
        .args(["-fsdev", &fs("root", "/", true)])
        .args(["-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot"])
        .args(["-fsdev", &fs("res", &no_space(results)?, false)])
        .args(["-device", "virtio-9p-pci,fsdev=res,mount_tag=results"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("vm-test: booting ({} accel, console below)", args.accel);
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut log = std::fs::File::create(run_dir.join("console.log"))?;
    // Bytes, not `lines()`: a console line that is not UTF-8 must not stop the copy
    // (qemu would block on a full pipe).
    let copier = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end();
            println!("| {line}");
            let _ = writeln!(log, "{line}");
            buf.clear();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(args.timeout_minutes * 60);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            eprintln!(
                "vm-test: the VM ran past {} min; killing qemu",
                args.timeout_minutes
            );
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = copier.join();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => {
            eprintln!("vm-test: qemu exited with {s}");
            Ok(())
        }
        None => Ok(()),
    }
}

fn report(
    results: &Path,
    specs: &[TestSpec],
    k: &kernel::Kernel,
    took: Duration,
) -> anyhow::Result<()> {
    let read = |f: &str| std::fs::read_to_string(results.join(f)).map(|s| s.trim().to_string());
    println!(
        "vm-test: kernel {} ({}), {:.0} s wall time",
        read("kernel").unwrap_or_else(|_| k.release.clone()),
        k.package,
        took.as_secs_f64()
    );
    let mut failed = 0;
    for s in specs {
        let name = s.name();
        let rc = read(&format!("{name}.rc")).ok();
        let secs = read(&format!("{name}.secs")).unwrap_or_else(|_| "?".into());
        let (mark, why) = match rc.as_deref() {
            Some("0") => ("PASS", String::new()),
            Some("124") | Some("137") => ("FAIL", " (timed out)".into()),
            Some(c) => ("FAIL", format!(" (exit {c})")),
            None => ("FAIL", " (did not run: see the console above)".into()),
        };
        if mark != "PASS" {
            failed += 1;
        }
        println!("[{mark}] {name} ({secs} s){why}");
    }
    if read("finished").is_err() {
        failed += 1;
        println!("[FAIL] the guest did not finish its test list");
    }
    if failed > 0 {
        bail!("vm-test: {failed} failure(s) on {}", k.release);
    }
    println!("vm-test: all {} passed on {}", specs.len(), k.release);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_are_checked() {
        assert_eq!(
            parse_env("HOPTRACE_OPAQUE_TCP=kernel-always").expect("ok"),
            ("HOPTRACE_OPAQUE_TCP".into(), "kernel-always".into())
        );
        assert_eq!(parse_env("A=").expect("ok"), ("A".into(), String::new()));
        for bad in ["NOEQUALS", "=x", "1A=x", "A-B=x", "A=it's", "A=a\nb"] {
            assert!(parse_env(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_specs_parse() {
        let s = TestSpec::parse("http_spans:tracecontext_chain").expect("parse");
        assert_eq!(s.target, "http_spans");
        assert_eq!(s.filter.as_deref(), Some("tracecontext_chain"));
        assert_eq!(s.name(), "http_spans.tracecontext_chain");
        assert_eq!(TestSpec::parse("same_node").expect("parse").filter, None);
        assert!(TestSpec::parse("a b").is_err());
        assert!(TestSpec::parse("x:").is_err());
        assert!(TestSpec::parse("$(rm)").is_err());
        for d in DEFAULT_TESTS {
            TestSpec::parse(d).expect("default parses");
        }
    }

    #[test]
    fn executables_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"same_node","kind":["test"]},"profile":{"test":true},"executable":"/t/deps/same_node-abc"}
{"reason":"compiler-artifact","target":{"name":"labapp","kind":["bin"]},"profile":{"test":false},"executable":"/t/labapp"}
{"reason":"build-finished","success":true}"#;
        let m = test_executables(json);
        assert_eq!(m.len(), 1);
        assert_eq!(m["same_node"], PathBuf::from("/t/deps/same_node-abc"));
    }
}
