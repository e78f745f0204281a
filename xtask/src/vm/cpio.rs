//! The guest's initramfs: a `newc` cpio archive written directly (so no `cpio` tool
//! and no root are needed for its `/dev/console` node), and the load order of the
//! kernel modules it carries, from the package's `modules.dep`.

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, Context as _};

/// Builds a `newc` ("070701") cpio archive in memory.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, S_IFREG | mode, (0, 0), data);
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | 0o600, (major, minor), &[]);
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // The kernel reads the archive in 512-byte blocks, as cpio writes it.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

/// `modules.dep` as module name (file stem, `-` and `_` alike) → (path, dependency paths).
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let (path, deps) = l.split_once(':')?;
            let path = path.trim().to_string();
            let deps = deps.split_whitespace().map(str::to_string).collect();
            Some((module_name(&path), (path, deps)))
        })
        .collect()
}

/// `kernel/net/9p/9pnet_virtio.ko` → `9pnet_virtio`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module paths to `insmod`, in order, so that each comes after what it needs.
/// A wanted module absent from `modules.dep` is an error unless the kernel has it
/// built in (listed in `builtin`, the package's `modules.builtin`).
pub fn load_order(
    dep: &BTreeMap<String, (String, Vec<String>)>,
    builtin: &str,
    wanted: &[&str],
) -> anyhow::Result<Vec<String>> {
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for w in wanted {
        let name = w.replace('-', "_");
        if dep.contains_key(&name) {
            visit(dep, &name, &mut seen, &mut order, 0)?;
        } else if !builtin.contains(&name) {
            bail!("the kernel has no module {w} and does not build it in");
        }
    }
    Ok(order)
}

fn visit(
    dep: &BTreeMap<String, (String, Vec<String>)>,
    name: &str,
    seen: &mut HashSet<String>,
    order: &mut Vec<String>,
    depth: usize,
) -> anyhow::Result<()> {
    if depth > 64 {
        bail!("module dependency loop at {name}");
    }
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let (path, deps) = dep
        .get(name)
        .with_context(|| format!("modules.dep names {name} but has no line for it"))?;
    for d in deps {
        visit(dep, &module_name(d), seen, order, depth + 1)?;
    }
    order.push(path.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio.ko kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
";

    #[test]
    fn modules_load_after_their_dependencies() {
        let dep = parse_modules_dep(DEP);
        let order = load_order(
            &dep,
            "kernel/net/unix/unix.ko\n",
            &["9pnet_virtio", "9p", "unix"],
        )
        .expect("order");
        let pos = |m: &str| {
            order
                .iter()
                .position(|p| p.ends_with(&format!("/{m}.ko")))
                .unwrap_or_else(|| panic!("{m} missing from {order:?}"))
        };
        assert!(pos("virtio") < pos("9pnet_virtio"));
        assert!(pos("virtio_ring") < pos("9pnet_virtio"));
        assert!(pos("9pnet") < pos("9pnet_virtio"));
        assert!(pos("netfs") < pos("fscache"));
        assert!(pos("fscache") < pos("9p"));
        assert_eq!(order.len(), 7, "each module once, builtin unix not loaded");
        assert!(load_order(&dep, "", &["virtiofs"]).is_err());
    }

    #[test]
    fn cpio_entries_are_aligned_newc() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.char_dev("dev/console", 5, 1);
        let a = c.finish();
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 512, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("init\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // A header is 110 bytes; "bin\0" ends at 114, padded to 116 where the second
        // header starts.
        assert_eq!(&a[116..122], b"070701");
    }
}
