//! Builds the eBPF programs (crate `ingress-xdp-ebpf`) for the bpf target with
//! the nightly toolchain and bpf-linker; `cargo xtask setup` installs both.

use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../ingress-xdp-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("eBPF crate at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .context("non-UTF-8 path to the eBPF crate")?;
    if which_bpf_linker().is_none() {
        anyhow::bail!(
            "bpf-linker is not installed: run `cargo xtask setup` (it builds bpf-linker against the nightly toolchain's LLVM)"
        );
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ingress-xdp-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
        .inspect(|linker| println!("cargo:rerun-if-changed={}", linker.display()))
}
