//! Ubuntu 24.04 ("noble") kernels for the VM: `--kernel ubuntu-6.8`, `ubuntu-6.11`.
//!
//! Debian's archive has no release between 6.1 and 6.12; Ubuntu's has the 6.8 that
//! Ubuntu 24.04 nodes run and its 6.11 hardware-enablement kernel. apt fetches them
//! with a configuration of its own under `target/vm/apt-ubuntu/` (the host's sources
//! are not touched) and checks every file as for any archive: the `InRelease` files
//! against the Ubuntu archive's signing key, the package lists and the `.deb`s against
//! the hashes they list. The key comes from Ubuntu's `ubuntu-keyring` package, found
//! through noble's unsigned package list and accepted only if its fingerprint is
//! [`ARCHIVE_KEY`], so that fingerprint is what the chain trusts.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::run as exec;

const ARCHIVE: &str = "http://archive.ubuntu.com/ubuntu";
/// The suites a noble kernel may be in (the release, then its updates).
const SUITES: &[&str] = &["noble", "noble-updates", "noble-security"];
/// Primary key fingerprint of "Ubuntu Archive Automatic Signing Key (2018)
/// <ftpmaster@ubuntu.com>", which signs noble's `InRelease` files.
pub const ARCHIVE_KEY: &str = "F6ECB3762474EDA9D21B7022871920D1991BC93C";
/// The key's file in the `ubuntu-keyring` package.
const KEY_FILE: &str = "etc/apt/trusted.gpg.d/ubuntu-keyring-2018-archive.gpg";

/// apt, configured for Ubuntu's archive alone.
pub struct Apt {
    options: Vec<String>,
}

impl Apt {
    /// Writes the configuration under `dir` (fetching the key the first time) and
    /// updates its package lists.
    pub fn setup(dir: &Path) -> anyhow::Result<Self> {
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for d in [lists.join("partial"), cache.join("archives/partial")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let key = keyring(dir)?;
        let sources = dir.join("sources.list");
        let lines: String = SUITES
            .iter()
            .map(|s| {
                format!(
                    "deb [arch=amd64 signed-by={}] {ARCHIVE} {s} main\n",
                    key.display()
                )
            })
            .collect();
        std::fs::write(&sources, lines)?;
        let o = |k: &str, v: &Path| format!("{k}={}", v.display());
        let options = vec![
            o("Dir::Etc::SourceList", &sources),
            o("Dir::Etc::SourceParts", &dir.join("sources.list.d")),
            o("Dir::State::Lists", &lists),
            o("Dir::Cache", &cache),
            "APT::Architectures=amd64".into(),
            // A lock of our own directories only; the host's apt may run meanwhile.
            "Debug::NoLocking=1".into(),
        ];
        let apt = Self { options };
        println!(
            "vm-test: updating Ubuntu's package lists ({})",
            SUITES.join(", ")
        );
        exec(apt.command("apt-get").args(["update", "-q"]))?;
        Ok(apt)
    }

    /// `program` (apt-get, apt-cache) with this configuration.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for o in &self.options {
            c.arg("-o").arg(o);
        }
        c
    }

    /// The newest generic kernel of version `want` (`6.8`): its image and modules
    /// packages.
    pub fn resolve(&self, want: &str) -> anyhow::Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["pkgnames", &format!("linux-image-{want}.")])
            .output()
            .context("apt-cache is needed to find kernel packages")?;
        let image = pick(want, String::from_utf8_lossy(&out.stdout).lines())
            .with_context(|| format!("Ubuntu noble offers no linux-image-{want}.0-<n>-generic"))?;
        let modules = image.replacen("linux-image-", "linux-modules-", 1);
        Ok(vec![image, modules])
    }
}

/// Whether `pkg` is an Ubuntu generic kernel image of version `want`:
/// `linux-image-6.8.0-151-generic` (not `-lowlatency`, `-aws`, `unsigned-`, `-64k`...).
pub fn matches(want: &str, pkg: &str) -> bool {
    pkg.strip_prefix("linux-image-")
        .and_then(|r| r.strip_prefix(want))
        .and_then(|r| r.strip_prefix(".0-"))
        .and_then(|r| r.strip_suffix("-generic"))
        .is_some_and(|abi| !abi.is_empty() && abi.chars().all(|c| c.is_ascii_digit()))
}

/// The newest Ubuntu package among `candidates` that [`matches`] `want`.
pub fn pick<'a>(want: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    super::kernel::newest(candidates, |p| matches(want, p))
}

/// The archive key, fetched once into `dir/ubuntu-archive.gpg`.
fn keyring(dir: &Path) -> anyhow::Result<PathBuf> {
    let key = dir.join("ubuntu-archive.gpg");
    if key.exists() {
        check_fingerprint(&key, dir)?;
        return Ok(key);
    }
    let tmp = dir.join("keyring.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    println!("vm-test: fetching Ubuntu's archive key (ubuntu-keyring)");
    let list = tmp.join("Packages.gz");
    curl(
        &format!("{ARCHIVE}/dists/noble/main/binary-amd64/Packages.gz"),
        &list,
    )?;
    let text = Command::new("gzip")
        .arg("-dc")
        .arg(&list)
        .output()
        .context("gzip is needed to read Ubuntu's package list")?;
    let path = package_file(&String::from_utf8_lossy(&text.stdout), "ubuntu-keyring")
        .context("noble's package list has no ubuntu-keyring")?;
    let deb = tmp.join("ubuntu-keyring.deb");
    curl(&format!("{ARCHIVE}/{path}"), &deb)?;
    let root = tmp.join("root");
    exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let found = root.join(KEY_FILE);
    check_fingerprint(&found, &tmp)?;
    std::fs::rename(&found, &key)?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(key)
}

/// Fails unless `keyring` holds exactly the key [`ARCHIVE_KEY`].
fn check_fingerprint(keyring: &Path, scratch: &Path) -> anyhow::Result<()> {
    let home = scratch.join("gnupg");
    std::fs::create_dir_all(&home)?;
    let out = Command::new("gpg")
        .arg("--homedir")
        .arg(&home)
        .args(["--batch", "--with-colons", "--show-keys"])
        .arg(keyring)
        .output()
        .context("gpg is needed to check Ubuntu's archive key")?;
    let _ = std::fs::remove_dir_all(&home);
    let fprs = fingerprints(&String::from_utf8_lossy(&out.stdout));
    if fprs != [ARCHIVE_KEY] {
        bail!(
            "{} holds keys {fprs:?}, not only the Ubuntu archive key {ARCHIVE_KEY}: refusing it",
            keyring.display()
        );
    }
    Ok(())
}

/// The `fpr` records of `gpg --with-colons` output.
pub fn fingerprints(colons: &str) -> Vec<String> {
    colons
        .lines()
        .filter_map(|l| l.strip_prefix("fpr:"))
        .filter_map(|l| l.split(':').find(|f| !f.is_empty()))
        .map(str::to_string)
        .collect()
}

/// The `Filename:` of package `name` in a `Packages` list.
pub fn package_file(packages: &str, name: &str) -> Option<String> {
    packages
        .split("\n\n")
        .find(|stanza| stanza.lines().any(|l| l == format!("Package: {name}")))?
        .lines()
        .find_map(|l| l.strip_prefix("Filename: "))
        .map(|f| f.trim().to_string())
}

fn curl(url: &str, to: &Path) -> anyhow::Result<()> {
    exec(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-m", "300", "-o"])
            .arg(to)
            .arg(url),
    )
    .with_context(|| format!("downloading {url} (curl)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_generic_image_is_picked() {
        let names = [
            "linux-image-6.8.0-149-generic",
            "linux-image-6.8.0-151-generic",
            "linux-image-6.8.0-31-generic",
            "linux-image-6.8.0-151-lowlatency",
            "linux-image-6.8.0-1040-aws",
            "linux-image-unsigned-6.8.0-151-generic",
            "linux-image-6.8.0-151-generic-64k",
            "linux-image-6.11.0-29-generic",
            "linux-image-6.11.0-17-generic",
        ];
        assert_eq!(
            pick("6.8", names).as_deref(),
            Some("linux-image-6.8.0-151-generic")
        );
        assert_eq!(
            pick("6.11", names).as_deref(),
            Some("linux-image-6.11.0-29-generic")
        );
        assert_eq!(pick("6.1", names), None);
    }

    #[test]
    fn reads_package_lists_and_gpg_output() {
        let list = "Package: ubuntu-keyring-extra\nFilename: pool/x.deb\n\n\
                    Package: ubuntu-keyring\nVersion: 1\nFilename: pool/main/u/k_1_all.deb\n\n";
        assert_eq!(
            package_file(list, "ubuntu-keyring").as_deref(),
            Some("pool/main/u/k_1_all.deb")
        );
        assert_eq!(package_file(list, "absent"), None);
        let colons = "pub:-:4096:1:871920D1991BC93C:1537196506:::-:::scSC::::::23::0:\n\
                      fpr:::::::::F6ECB3762474EDA9D21B7022871920D1991BC93C:\n\
                      uid:-::::1537196506::BE43::Ubuntu Archive Automatic Signing Key (2018):::\n";
        assert_eq!(fingerprints(colons), [ARCHIVE_KEY]);
    }
}
