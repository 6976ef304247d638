//! Builds the reference eBPF programs (crate `ingress-xdp-bench-ebpf`) for
//! the bpf target with the nightly toolchain and bpf-linker, as
//! ingress-xdp/build.rs does for the product's programs.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

#[path = "../ingress-xdp/build_ebpf.rs"]
mod build_ebpf;

fn main() -> anyhow::Result<()> {
    build_reference_programs()?;
    build_programs_without_events()?;
    name_the_agent_binary()
}

fn build_reference_programs() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    build_ebpf::build(
        "ingress-xdp-bench-ebpf",
        "ingress-xdp-bench-progs",
        &Path::new(&manifest_dir).join("ebpf"),
    )
}

/// ingress-xdp's own programs with the drop-event code compiled out (the
/// crate's second binary), for the "events off costs nothing" row.
fn build_programs_without_events() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    build_ebpf::build(
        "ingress-xdp-ebpf",
        "ingress-xdp-no-events",
        &Path::new(&manifest_dir).join("../ingress-xdp-ebpf"),
    )
}

/// tests/support (reused for the control-plane part) names the agent binary
/// with `env!("CARGO_BIN_EXE_ingress-xdp")`, which cargo sets only for
/// ingress-xdp's own tests. Point it at the binary cargo builds in this
/// profile's directory (`cargo xtask bench` builds both in one invocation).
fn name_the_agent_binary() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .with_context(|| format!("no profile directory above {}", out_dir.display()))?;
    println!(
        "cargo:rustc-env=CARGO_BIN_EXE_ingress-xdp={}",
        profile_dir.join("ingress-xdp").display()
    );
    Ok(())
}
