//! Kernels for the VM: which packages a name means (Debian's, or Ubuntu's through
//! [`super::ubuntu`]), and their cached, pruned unpacking under
//! `target/vm/kernels/<image package>/`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::ubuntu;
use crate::run as exec;

/// An unpacked kernel.
pub struct Kernel {
    pub package: String,
    /// `uname -r` in the guest, e.g. `6.1.0-57-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` with a busybox-made `modules.dep`.
    pub modules: PathBuf,
}

/// Whether `pkg` is a Debian amd64 kernel image of version `want` (`6.1`, `6.12`):
/// `linux-image-6.1.0-57-amd64`, `linux-image-6.12.117+deb12-amd64` (not `-cloud-`,
/// `-rt-`, `-dbg`, unsigned or meta packages).
pub fn matches(want: &str, pkg: &str) -> bool {
    let Some(rest) = pkg
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-amd64"))
    else {
        return false;
    };
    let Some(tail) = rest.strip_prefix(want).and_then(|t| t.strip_prefix('.')) else {
        return false;
    };
    // 6.1: "0-57"; 6.12: "117+deb12"
    let digits_then = |s: &str, sep: char| {
        s.split_once(sep).is_some_and(|(a, b)| {
            !a.is_empty()
                && a.chars().all(|c| c.is_ascii_digit())
                && !b.is_empty()
                && b.chars().all(|c| c.is_ascii_alphanumeric())
        })
    };
    digits_then(tail, '-')
        && tail
            .split('-')
            .nth(1)
            .is_some_and(|b| b.chars().all(|c| c.is_ascii_digit()))
        || digits_then(tail, '+') && tail.contains("+deb")
}

/// The numbers in a package name, for picking the newest.
fn version_key(pkg: &str) -> Vec<u64> {
    pkg.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The newest Debian package among `candidates` that [`matches`] `want`.
pub fn pick<'a>(want: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    newest(candidates, |p| matches(want, p))
}

/// The newest package among `candidates` that `fits` (by the numbers in its name).
pub(super) fn newest<'a>(
    candidates: impl IntoIterator<Item = &'a str>,
    fits: impl Fn(&str) -> bool,
) -> Option<String> {
    candidates
        .into_iter()
        .filter(|p| fits(p))
        .max_by_key(|p| version_key(p))
        .map(str::to_string)
}

fn resolve(name: &str) -> anyhow::Result<String> {
    if name.starts_with("linux-image-") {
        return Ok(name.to_string());
    }
    let candidates = || -> anyhow::Result<Option<String>> {
        let out = Command::new("apt-cache")
            .args(["pkgnames", &format!("linux-image-{name}")])
            .output()
            .context("apt-cache (Debian) is needed to find kernel packages")?;
        Ok(pick(name, String::from_utf8_lossy(&out.stdout).lines()))
    };
    if let Some(p) = candidates()? {
        return Ok(p);
    }
    // A fresh machine may have no package lists yet.
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    candidates()?.with_context(|| {
        format!("the Debian archive offers no linux-image-{name}*-amd64 (name the package instead)")
    })
}

/// Where a kernel's packages come from.
enum Archive {
    /// The host's apt sources (Debian).
    Debian,
    Ubuntu(ubuntu::Apt),
}

impl Archive {
    fn download(&self, dir: &Path, packages: &[String]) -> anyhow::Result<()> {
        let mut cmd = match self {
            Self::Debian => Command::new("apt-get"),
            Self::Ubuntu(apt) => apt.command("apt-get"),
        };
        exec(cmd.current_dir(dir).args(["download", "-q"]).args(packages))
    }
}

/// Downloads and unpacks the kernel once; later runs reuse the cache. `name` is a
/// Debian version or package name, or `ubuntu-<version>` (`ubuntu-6.8`).
pub fn fetch(vm_dir: &Path, name: &str, busybox: &Path) -> anyhow::Result<Kernel> {
    let (archive, packages) = match name.strip_prefix("ubuntu-") {
        Some(version) => {
            let apt = ubuntu::Apt::setup(&vm_dir.join("apt-ubuntu"))?;
            let packages = apt.resolve(version)?;
            (Archive::Ubuntu(apt), packages)
        }
        None => (Archive::Debian, vec![resolve(name)?]),
    };
    let package = packages[0].clone();
    let dir = vm_dir.join("kernels").join(&package);
    if !dir.join(".complete").exists() {
        unpack(&archive, &packages, &dir, busybox)?;
    }
    let release = std::fs::read_dir(dir.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .next()
        .context("the kernel package has no lib/modules/<release>")?;
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} is missing", vmlinuz.display());
    }
    Ok(Kernel {
        package,
        modules: dir.join("lib/modules").join(&release),
        release,
        vmlinuz,
    })
}

/// Downloads `packages` (an image, and its modules where they are apart) and unpacks
/// them together into `dir`.
fn unpack(
    archive: &Archive,
    packages: &[String],
    dir: &Path,
    busybox: &Path,
) -> anyhow::Result<()> {
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&tmp)?;
    println!("vm-test: downloading {}", packages.join(", "));
    archive.download(&tmp, packages)?;
    let debs: Vec<PathBuf> = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    if debs.len() != packages.len() {
        bail!(
            "apt-get download left {} .deb files for {} packages",
            debs.len(),
            packages.len()
        );
    }
    let root = tmp.join("root");
    for deb in &debs {
        exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        std::fs::remove_file(deb)?;
    }
    let _ = std::fs::remove_dir_all(root.join("usr"));
    let modules = root.join("lib/modules");
    let release = std::fs::read_dir(&modules)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .next()
        .context("no lib/modules/<release> in the package")?;
    prune(&modules.join(&release).join("kernel"))?;
    decompress(&modules.join(&release))?;
    // busybox's depmod writes the modules.dep its own modprobe (in the guest) reads.
    exec(
        Command::new(busybox)
            .args(["depmod", "-b"])
            .arg(&root)
            .arg(&release),
    )?;
    std::fs::rename(&root, dir)?;
    std::fs::remove_dir_all(&tmp)?;
    std::fs::write(dir.join(".complete"), packages.join("\n"))?;
    Ok(())
}

/// Keeps the modules a lab VM can use (network, filesystems, virtio) and drops the
/// rest (sound, GPUs, hardware NICs...): ~100 MB instead of ~400 MB.
fn prune(kernel: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(kernel.join("sound"));
    let drivers = kernel.join("drivers");
    for e in std::fs::read_dir(&drivers)?.filter_map(|e| e.ok()) {
        let n = e.file_name().to_string_lossy().to_string();
        if !["virtio", "net", "block", "char"].contains(&n.as_str()) {
            std::fs::remove_dir_all(e.path())?;
        }
    }
    // drivers/net: keep the virtual devices at its top level (veth, dummy, tun, ...).
    for e in std::fs::read_dir(drivers.join("net"))?.filter_map(|e| e.ok()) {
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// busybox's insmod/modprobe load plain `.ko` files: decompress `.ko.xz` / `.ko.zst`.
fn decompress(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-name", "*.ko.xz", "-o", "-name", "*.ko.zst"])
        .output()?;
    let files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for chunk in files.chunks(200) {
        let xz: Vec<&String> = chunk.iter().filter(|f| f.ends_with(".xz")).collect();
        let zst: Vec<&String> = chunk.iter().filter(|f| f.ends_with(".zst")).collect();
        if !xz.is_empty() {
            exec(Command::new("xz").arg("-d").args(&xz))?;
        }
        if !zst.is_empty() {
            exec(Command::new("zstd").args(["-d", "-q", "--rm"]).args(&zst))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_plain_amd64_image_is_picked() {
        let names = [
            "linux-image-6.1.0-50-amd64",
            "linux-image-6.1.0-57-amd64",
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.1.0-57-rt-amd64",
            "linux-image-6.1.0-57-amd64-dbg",
            "linux-image-6.1.0-57-amd64-unsigned",
            "linux-image-6.12-amd64",
            "linux-image-6.12.100+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
        ];
        assert_eq!(
            pick("6.1", names).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(
            pick("6.12", names).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        assert_eq!(pick("5.10", names), None);
    }
}
