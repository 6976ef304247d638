//! Builds an eBPF crate of this workspace for the bpf target, with the
//! nightly toolchain (build-std=core) and bpf-linker, as aya-build does, but
//! into one target directory shared by every profile and by both eBPF crates:
//! `<target>/ebpf`. aya-build keeps a target directory per build-script run,
//! so a clean `cargo xtask test` compiled `core` for bpf six times (clippy,
//! test and release, for each crate), some eight minutes of a 2-CPU CI run.
//!
//! Used by ingress-xdp/build.rs and (through `#[path]`) bench/build.rs.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Builds `package` and copies its binary `bin` to `$OUT_DIR/<bin>`.
pub fn build(package: &str, bin: &str, crate_dir: &Path) -> anyhow::Result<()> {
    let crate_dir = crate_dir
        .canonicalize()
        .with_context(|| format!("eBPF crate at {}", crate_dir.display()))?;
    println!("cargo:rerun-if-changed={}", crate_dir.display());
    require_bpf_linker()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    let target_dir = shared_target_dir(&out_dir)?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb-unknown-none",
        Ok("little") => "bpfel-unknown-none",
        other => bail!("unsupported target endianness {other:?}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64".to_string()
    } else {
        arch
    };

    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo", "build", "--package", package])
        .args(["--bin", bin, "--release", "--target", target])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&crate_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        )
        // The outer build's compiler (or clippy-driver) is not the nightly's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR");
    // Its diagnostics become warnings of the outer build, as with aya-build.
    let out = cargo
        .output()
        .with_context(|| format!("running {cargo:?} (is rustup installed?)"))?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("cargo:warning={line}");
    }
    if !out.status.success() {
        bail!(
            "building the eBPF crate {package} failed ({}): {cargo:?}",
            out.status
        );
    }
    let built = target_dir.join(target).join("release").join(bin);
    let dst = out_dir.join(bin);
    std::fs::copy(&built, &dst)
        .with_context(|| format!("copying {} to {}", built.display(), dst.display()))?;
    Ok(())
}

/// `<target>/ebpf`, from OUT_DIR = `<target>/<profile>/build/<pkg>-<hash>/out`
/// (or `<target>/<triple>/<profile>/...` when the outer build has --target).
fn shared_target_dir(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .with_context(|| format!("no profile directory above {}", out_dir.display()))?;
    let mut target_dir = profile_dir.parent().context("no target directory")?;
    if target_dir.file_name() == env::var_os("TARGET").as_deref() {
        target_dir = target_dir.parent().context("no target directory")?;
    }
    Ok(target_dir.join("ebpf"))
}

fn require_bpf_linker() -> anyhow::Result<()> {
    let path = env::var_os("PATH").unwrap_or_default();
    match env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
    {
        Some(linker) => {
            println!("cargo:rerun-if-changed={}", linker.display());
            Ok(())
        }
        None => bail!(
            "bpf-linker is not installed: run `cargo xtask setup` (it builds bpf-linker against the nightly toolchain's LLVM)"
        ),
    }
}
