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

/// True when a TCP socket in netns `ns` is listening on one of `ports` (any address,
/// IPv4 or IPv6). Reads the namespace's socket table (`/proc/thread-self/net/tcp{,6}`)
/// instead of connecting, so the probe is never counted as a connection by the agent.
pub fn listens_on(ns: &Path, ports: &[u16]) -> Result<bool> {
    in_netns(ns, || {
        for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
            let text =
                std::fs::read_to_string(table).with_context(|| format!("reading {table}"))?;
            if text.lines().skip(1).any(|line| listening_on(line, ports)) {
                return Ok(true);
            }
        }
        Ok(false)
    })
}

/// One row of `/proc/net/tcp{,6}`: `sl local_address rem_address st ...`, the local
/// address as `HEXADDR:HEXPORT` and the state `0A` for LISTEN.
fn listening_on(line: &str, ports: &[u16]) -> bool {
    let mut fields = line.split_whitespace().skip(1);
    let (Some(local), Some(_remote), Some(state)) = (fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let port = local
        .rsplit_once(':')
        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
    state == "0A" && port.is_some_and(|p| ports.contains(&p))
}

#[cfg(test)]
mod tests {
    use super::listening_on;

    #[test]
    fn socket_table_rows() {
        let listen = "   0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        let est = "   1: 0100007F:3A99 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1";
        let v6 = "   0: 00000000000000000000000001000000:3A9E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0";
        assert!(listening_on(listen, &[15001]));
        assert!(!listening_on(listen, &[15006]));
        assert!(!listening_on(est, &[15001]));
        assert!(listening_on(v6, &[15001, 15006]));
        assert!(!listening_on("garbage", &[15001]));
    }
}
