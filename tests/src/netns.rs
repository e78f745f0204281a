//! Named network namespaces (`ip netns`, i.e. bind mounts under
//! `/var/run/netns`) and running things inside them.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Path of the named network namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `ip <args>` and fails with its stderr when it exits non-zero.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `ip -n <ns> <args>`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Creates the named network namespace `name`.
pub fn add(name: &str) -> Result<()> {
    ip(&["netns", "add", name])
}

/// Deletes the named network namespace `name`; a missing one is fine.
pub fn delete(name: &str) -> Result<()> {
    if !path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

/// Names of all named network namespaces.
pub fn list() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("listing /var/run/netns"),
    };
    let mut names = Vec::new();
    for entry in dir {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns`
/// (`setns(CLONE_NEWNET)`); the calling thread is never moved.
pub fn in_netns<T, F>(ns: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send,
    T: Send,
{
    let file = File::open(ns).with_context(|| format!("opening netns {}", ns.display()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            // SAFETY: `file` is an open netns fd for the whole call; setns only
            // affects this (scoped, short-lived) thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
            }
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(_) => bail!("thread inside netns {} panicked", ns.display()),
        }
    })
}

/// Writes sysctls (`("net/ipv4/ip_forward", "1")`, paths under `/proc/sys`)
/// inside the namespace `ns`. `/proc/sys/net` resolves to the netns of the
/// opening thread, so no mount namespace is needed.
pub fn sysctls(ns: &Path, settings: &[(&str, &str)]) -> Result<()> {
    in_netns(ns, || {
        for (key, value) in settings {
            let file = Path::new("/proc/sys").join(key);
            std::fs::write(&file, value)
                .with_context(|| format!("writing {} = {value}", file.display()))?;
        }
        Ok(())
    })
}

/// The inode of the network namespace file `ns` (what `/proc/<pid>/ns/net`
/// points at as `net:[<inode>]`).
pub fn inode(ns: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(ns)
        .with_context(|| format!("stat {}", ns.display()))?
        .ino())
}
