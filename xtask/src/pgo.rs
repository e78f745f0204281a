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
    println!(
        "wrote {} from {count} raw profile(s); commit it, then `cargo xtask build` uses it",
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
}
