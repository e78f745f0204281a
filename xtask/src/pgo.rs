//! Profile-guided optimisation (PGO) of the release agent (docs/BENCH.md, "A build
//! guided by a profile").
//!
//! - `cargo xtask pgo` builds an instrumented agent, runs it through the bench lab's
//!   traced HTTP/1.1 and opaque TCP workloads (a cross-node hop, then a same-node one),
//!   and merges what it counted into [`PROFILE`], which is committed.
//! - `cargo xtask build` and `cargo xtask bench` build the release agent with that
//!   profile when it is there ([`release_agent`]); `cargo xtask build --no-pgo` without.
//!
//! A profile never changes what the code does, only how it is laid out and inlined.
//! A function changed since the profile was taken simply has no counts (it is built
//! as without PGO), so a stale profile loses speed, never correctness; run `cargo
//! xtask pgo` again after changing the data path.
//!
//! `cargo xtask pgo` also writes [`SOURCES`], a digest of what the profile was taken
//! from; `cargo xtask build` says so when the agent's sources differ from it.
//!
//! Both builds name the host target explicitly (`--target <host>`), so the profile
//! flags reach the agent and its dependencies but not build scripts, proc macros or
//! the eBPF crate, and the instrumented and the final build name every function alike.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{cargo_bin, require_root, run, setup};

/// The committed profile, relative to the workspace root.
pub const PROFILE: &str = "agent/pgo/hoptrace.profdata";

/// A digest of the agent's sources the profile was taken from ([`sources_digest`]),
/// written by `cargo xtask pgo` next to [`PROFILE`].
pub const SOURCES: &str = "agent/pgo/hoptrace.sources";

/// The first bytes of an LLVM indexed profile (`llvm-profdata merge`'s output).
#[cfg(test)]
const INDEXED_MAGIC: [u8; 8] = [0xff, b'l', b'p', b'r', b'o', b'f', b'i', 0x81];

/// Flags of every training run: one short round, no memory phase.
const COMMON: &[&str] = &["--rounds", "1", "--duration", "5", "--mem-pods", "0"];

/// The training workloads: `lab-bench` flags after [`COMMON`], one run each, counts
/// accumulated.
const TRAINING: &[&[&str]] = &[
    &["--scenarios", "hoptrace-http,hoptrace-tcp-userspace"],
    &["--same-node", "--scenarios", "hoptrace-http"],
];

/// The host's target triple (`rustc -vV`).
fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    host_of(&String::from_utf8_lossy(&out.stdout)).context("rustc -vV printed no host line")
}

fn host_of(rustc_vv: &str) -> Option<String> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
}

/// Cargo's environment variable for `target.<triple>.rustflags`.
fn rustflags_var(triple: &str) -> String {
    format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        triple.to_uppercase().replace(['-', '.'], "_")
    )
}

/// `cargo build --release -p hoptrace --target <host>` with `flags` for the host target.
fn build_agent(root: &Path, triple: &str, flags: &str, target_dir: &Path) -> anyhow::Result<()> {
    if std::env::var_os("RUSTFLAGS").is_some()
        || std::env::var_os("CARGO_ENCODED_RUSTFLAGS").is_some()
    {
        bail!(
            "RUSTFLAGS is set, and cargo would use it instead of the profile flags \
             ({flags}); unset it, or build with `cargo xtask build --no-pgo`"
        );
    }
    run(Command::new(cargo_bin())
        .current_dir(root)
        .args(["build", "--release", "-p", "hoptrace", "--target", triple])
        .env("CARGO_TARGET_DIR", target_dir)
        .env(rustflags_var(triple), flags))
}

/// A digest (FNV-1a, 64 bits, hex) of what the profile-guided build compiles from this
/// workspace: every `.rs` file under `agent/src` except tests in files of their own
/// (`tests.rs`, `*_tests.rs`, anything under a `tests/` directory), by path and content,
/// and `Cargo.lock`. Not a security measure: it only tells a stale profile apart.
pub fn sources_digest(root: &Path) -> anyhow::Result<String> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if name != "tests" {
                    walk(&path, files)?;
                }
            } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(&root.join("agent/src"), &mut files)?;
    files.sort();
    files.push(root.join("Cargo.lock"));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes.iter().chain([0u8].iter()) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in &files {
        let rel = file.strip_prefix(root).unwrap_or(file);
        feed(rel.to_string_lossy().as_bytes());
        feed(&std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    }
    Ok(format!("{hash:016x}"))
}

/// One line for `cargo xtask build` when the sources differ from those the committed
/// profile was taken from, `None` when they match.
fn staleness(root: &Path) -> anyhow::Result<Option<String>> {
    let recorded = match std::fs::read_to_string(root.join(SOURCES)) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {SOURCES}")),
    };
    if recorded == sources_digest(root)? {
        return Ok(None);
    }
    Ok(Some(format!(
        "note: the agent's sources differ from those {PROFILE} was taken from ({SOURCES}): \
         the build is correct, but changed functions are built as without a profile; \
         `cargo xtask pgo` (root) takes a new one"
    )))
}

/// Builds the release agent, guided by [`PROFILE`] when it exists and `pgo` is set,
/// and returns `target/release/hoptrace`.
pub fn release_agent(root: &Path, pgo: bool) -> anyhow::Result<PathBuf> {
    let out = root.join("target/release/hoptrace");
    let profile = root.join(PROFILE);
    if !pgo || !profile.exists() {
        if pgo {
            println!("no {PROFILE}: building without a profile (`cargo xtask pgo` makes one)");
        }
        crate::cargo(root, &["build", "--release", "-p", "hoptrace"])?;
        return Ok(out);
    }
    let triple = host_triple()?;
    build_agent(
        root,
        &triple,
        &format!("-Cprofile-use={}", profile.display()),
        &root.join("target"),
    )?;
    let built = root.join("target").join(&triple).join("release/hoptrace");
    // Not a copy over the old file: cargo hard-links target/release/hoptrace to its
    // own copy in deps/, which writing through the link would change too.
    match std::fs::remove_file(&out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", out.display())),
    }
    std::fs::create_dir_all(root.join("target/release"))?;
    std::fs::copy(&built, &out)
        .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    println!("built with the profile {PROFILE}");
    if let Some(note) = staleness(root)? {
        println!("{note}");
    }
    Ok(out)
}

/// `llvm-profdata` of the toolchain that builds the agent (rustup's `llvm-tools`,
/// added when missing: its format must match that rustc's LLVM).
fn llvm_profdata(triple: &str) -> anyhow::Result<PathBuf> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let tool = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(triple)
        .join("bin/llvm-profdata");
    if !tool.exists() {
        run(Command::new("rustup").args(["component", "add", "llvm-tools"]))
            .context("installing rustup's llvm-tools (llvm-profdata)")?;
    }
    if !tool.exists() {
        bail!(
            "{} is missing after `rustup component add llvm-tools`",
            tool.display()
        );
    }
    Ok(tool)
}

/// `cargo xtask pgo`: a new [`PROFILE`] from the training workloads (root).
pub fn generate(root: &Path) -> anyhow::Result<()> {
    require_root("the training runs the bench lab: network namespaces and eBPF programs")?;
    setup::run()?;
    let triple = host_triple()?;
    let profdata = llvm_profdata(&triple)?;
    let work = root.join("target/pgo");
    let raw = work.join("raw");
    if raw.exists() {
        std::fs::remove_dir_all(&raw).with_context(|| format!("clearing {}", raw.display()))?;
    }
    std::fs::create_dir_all(&raw)?;
    let target_dir = work.join("build");
    build_agent(
        root,
        &triple,
        &format!("-Cprofile-generate={}", raw.display()),
        &target_dir,
    )?;
    let agent = target_dir.join(&triple).join("release/hoptrace");
    let lab = crate::build_lab(root)?;
    for (i, flags) in TRAINING.iter().enumerate() {
        // The agents write their counts when they exit (the bench stops them with
        // SIGTERM), into `raw`.
        run(Command::new(lab.join("lab-bench"))
            .args(COMMON)
            .args(*flags)
            .args([
                "--out",
                &work.join(format!("training-{i}")).display().to_string(),
            ])
            .env("HOPTRACE_BIN", &agent)
            .env("HOPTRACE_LABAPP", lab.join("labapp"))
            .env("HOPTRACE_BENCH_COMMIT", "pgo-training"))?;
    }
    let count = std::fs::read_dir(&raw)?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "profraw"))
        .count();
    if count == 0 {
        bail!(
            "the training left no .profraw file in {}: did the agents exit cleanly?",
            raw.display()
        );
    }
    let out = root.join(PROFILE);
    std::fs::create_dir_all(out.parent().context("profile path has no parent")?)?;
    // Sparse: functions the training never ran are left out (built as without PGO),
    // which keeps the committed file about a tenth of the full profile's size.
    run(Command::new(profdata)
        .args(["merge", "--sparse", "-o"])
        .arg(&out)
        .arg(&raw))?;
    std::fs::write(root.join(SOURCES), format!("{}\n", sources_digest(root)?))
        .with_context(|| format!("writing {SOURCES}"))?;
    println!(
        "wrote {} from {count} raw profile(s) and {SOURCES}; commit both, then `cargo xtask build` uses the profile",
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_triple_and_its_rustflags_variable() {
        let vv = "rustc 1.95.0 (abc 2026-01-01)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";
        let host = host_of(vv).expect("host line");
        assert_eq!(host, "x86_64-unknown-linux-gnu");
        assert_eq!(
            rustflags_var(&host),
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS"
        );
        assert_eq!(
            rustflags_var("thumbv7em-none-eabihf"),
            "CARGO_TARGET_THUMBV7EM_NONE_EABIHF_RUSTFLAGS"
        );
        assert_eq!(host_of("rustc 1.95.0\n"), None);
    }

    /// The committed profile is an LLVM indexed profile (not, say, a Git LFS pointer or
    /// a raw `.profraw`), so `cargo xtask build` can read it.
    #[test]
    fn the_committed_profile_is_an_indexed_llvm_profile() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bytes = std::fs::read(root.join(PROFILE)).expect("agent/pgo/hoptrace.profdata");
        assert_eq!(
            bytes.get(..8),
            Some(&INDEXED_MAGIC[..]),
            "{PROFILE}: not an indexed profile"
        );
        assert!(
            bytes.len() > 100_000,
            "{PROFILE}: {} bytes, too small",
            bytes.len()
        );
    }

    #[test]
    fn every_training_run_uses_the_agents_and_skips_the_memory_phase() {
        assert!(COMMON.windows(2).any(|w| w == ["--mem-pods", "0"]));
        for flags in TRAINING {
            let scenarios = flags
                .iter()
                .skip_while(|f| **f != "--scenarios")
                .nth(1)
                .expect("--scenarios");
            assert!(scenarios.split(',').all(|s| s.starts_with("hoptrace-")));
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// The digest follows the agent's code and `Cargo.lock`, not its test files.
    #[test]
    fn the_sources_digest_follows_code_not_test_files() {
        let dir = std::env::temp_dir().join(format!("hoptrace-pgo-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir.join("Cargo.lock"), "lock v1");
        write(&dir.join("agent/src/lib.rs"), "fn a() {}");
        write(&dir.join("agent/src/proxy/mod.rs"), "fn b() {}");
        let first = sources_digest(&dir).expect("digest");
        assert_eq!(first.len(), 16, "{first}");
        assert_eq!(
            sources_digest(&dir).expect("digest"),
            first,
            "not deterministic"
        );

        write(&dir.join("agent/src/proxy/tests.rs"), "#[test] fn t() {}");
        write(
            &dir.join("agent/src/proxy/head_tests.rs"),
            "#[test] fn t() {}",
        );
        write(
            &dir.join("agent/src/proxy/tests/w3c.rs"),
            "#[test] fn t() {}",
        );
        assert_eq!(
            sources_digest(&dir).expect("digest"),
            first,
            "test files counted"
        );

        write(&dir.join("agent/src/proxy/mod.rs"), "fn b() { 1; }");
        let changed = sources_digest(&dir).expect("digest");
        assert_ne!(changed, first, "a code change not seen");
        write(&dir.join("agent/src/proxy/mod.rs"), "fn b() {}");
        write(&dir.join("agent/src/proxy/pool.rs"), "fn c() {}");
        assert_ne!(
            sources_digest(&dir).expect("digest"),
            first,
            "a new file not seen"
        );
        std::fs::remove_file(dir.join("agent/src/proxy/pool.rs")).expect("rm");
        write(&dir.join("Cargo.lock"), "lock v2");
        assert_ne!(
            sources_digest(&dir).expect("digest"),
            first,
            "a dependency change not seen"
        );
        write(&dir.join("Cargo.lock"), "lock v1");
        assert!(
            staleness(&dir).expect("staleness").is_some(),
            "no record is stale"
        );
        write(&dir.join(SOURCES), &format!("{first}\n"));
        assert_eq!(staleness(&dir).expect("staleness"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The committed record is a digest in the format `cargo xtask pgo` writes.
    #[test]
    fn the_committed_sources_record_is_a_digest() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join(SOURCES)).expect("agent/pgo/hoptrace.sources");
        let digest = text.trim();
        assert!(
            digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{SOURCES}: {text:?}"
        );
    }
}
