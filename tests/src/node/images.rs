//! The node's container images, made from files of this machine (nothing is pulled)
//! and written as `docker save` archives for `ctr images import`:
//!
//! - [`PAUSE`]: Debian's `busybox-static` running `sleep` (the pod sandbox);
//! - [`PYTHON`]: the machine's `python3` with its standard library and the shared
//!   libraries it and its extension modules link (the demo app's scripts);
//! - [`AGENT`]: the `hoptrace` binary (stripped) with the libraries it links (glibc,
//!   libgcc), entrypoint `hoptrace run`, as the Dockerfile's distroless image.
//!
//! Layers are made with `tar`, digests with `sha256sum`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The sandbox image (containerd's `sandbox_image`).
pub const PAUSE: &str = "hoptrace.local/pause:1";
/// The demo app's image, in place of `python:3.13-slim`.
pub const PYTHON: &str = "hoptrace.local/python:3";
/// The agent's image, in place of `ghcr.io/hoptrace/hoptrace`.
pub const AGENT: &str = "hoptrace.local/hoptrace:dev";

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256(file: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(file))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// Writes `out`: a one-layer `docker save` archive of `rootfs` named `name`.
pub fn archive(name: &str, rootfs: &Path, entrypoint: &[String], out: &Path) -> Result<()> {
    let work = out.with_extension("d");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "--sort=name"])
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let layer_sha = sha256(&layer)?;
    std::fs::create_dir_all(work.join(&layer_sha))?;
    std::fs::rename(&layer, work.join(&layer_sha).join("layer.tar"))?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_sha}")]},
    });
    let config_path = work.join("config.json");
    std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
    let config_sha = sha256(&config_path)?;
    let config_name = format!("{config_sha}.json");
    std::fs::rename(&config_path, work.join(&config_name))?;
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [name],
        "Layers": [format!("{layer_sha}/layer.tar")],
    }]);
    std::fs::write(work.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    run(Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(out)
        .args(["manifest.json", &config_name, &layer_sha]))?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// The shared libraries `ldd` lists for `bin` (absolute paths).
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").arg(bin))?;
    Ok(out
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Copies `src` (symlinks followed) to the same path under `rootfs`.
fn copy_in(rootfs: &Path, src: &Path) -> Result<()> {
    let rel = src.strip_prefix("/").unwrap_or(src);
    let dest = rootfs.join(rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(src, &dest)
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    Ok(())
}

fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// The pause image's tree (busybox where the machine has it, and `sleep` next to
/// it); returns the entrypoint.
pub fn pause_rootfs(dir: &Path) -> Result<Vec<String>> {
    fresh(dir)?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("no busybox (Debian: busybox-static)")?;
    copy_in(dir, busybox)?;
    let sleep = busybox.with_file_name("sleep");
    std::os::unix::fs::symlink("busybox", dir.join(sleep.strip_prefix("/")?))?;
    Ok(vec![sleep.display().to_string(), "2147483647".into()])
}

/// The python image's tree: the interpreter, its standard library (without tests
/// and tools) and the libraries they link.
pub fn python_rootfs(dir: &Path) -> Result<()> {
    fresh(dir)?;
    let python = std::fs::canonicalize("/usr/bin/python3").context("no /usr/bin/python3")?;
    let name = python
        .file_name()
        .and_then(|n| n.to_str())
        .context("python3's name")?
        .to_owned();
    copy_in(dir, &python)?;
    std::os::unix::fs::symlink(&name, dir.join("usr/bin/python3"))?;
    let stdlib = Path::new("/usr/lib").join(&name);
    std::fs::create_dir_all(dir.join("usr/lib"))?;
    run(Command::new("cp")
        .arg("-a")
        .arg(&stdlib)
        .arg(dir.join("usr/lib")))?;
    let copy = dir.join("usr/lib").join(&name);
    for skip in [
        "test",
        "idlelib",
        "tkinter",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
    ] {
        let _ = std::fs::remove_dir_all(copy.join(skip));
    }
    let mut libs = libraries(&python)?;
    for e in std::fs::read_dir(stdlib.join("lib-dynload"))?.flatten() {
        if e.path().extension().is_some_and(|x| x == "so") {
            libs.extend(libraries(&e.path())?);
        }
    }
    libs.sort();
    libs.dedup();
    for lib in libs {
        copy_in(dir, &lib)?;
    }
    std::fs::create_dir_all(dir.join("tmp"))?;
    Ok(())
}

/// The agent image's tree: `/hoptrace` (stripped when `strip` is there) and the
/// libraries it links.
pub fn agent_rootfs(dir: &Path, hoptrace: &Path) -> Result<()> {
    fresh(dir)?;
    let bin = dir.join("hoptrace");
    std::fs::copy(hoptrace, &bin).with_context(|| format!("copying {}", hoptrace.display()))?;
    let _ = Command::new("strip").arg(&bin).status();
    for lib in libraries(hoptrace)? {
        copy_in(dir, &lib)?;
    }
    Ok(())
}
