//! Builds the eBPF object (agent-ebpf) with the nightly toolchain via aya-build and
//! places it in OUT_DIR, where `src/ebpf/mod.rs` embeds it.

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    // One clear line instead of a wall of linker errors when the toolchain is missing.
    if which::which("bpf-linker").is_err() {
        return Err(anyhow!(
            "bpf-linker not found on PATH: run `cargo xtask setup` once (it installs the eBPF toolchain), then build again"
        ));
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("agent-ebpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    println!("cargo:rerun-if-changed={manifest_dir}/../agent-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs failed; if the nightly toolchain or rust-src is missing, run `cargo xtask setup`")
}
