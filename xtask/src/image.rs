//! `cargo xtask image`: the image `ingress-xdp:<version>` from this checkout,
//! built without a Docker engine or a registry.
//!
//! The image holds only what `run` needs: the release binary and the shared
//! libraries it links (glibc's, from `ldd`), on no base image. It is written
//! as a `docker save` archive (manifest.json, the config, one layer), which
//! any engine imports with `docker load`; `--load HOST` does that.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{output, status, workspace_root};

#[derive(clap::Args, Default)]
pub struct ImageArgs {
    /// Also `docker load` the image into this engine (a DOCKER_HOST URL or
    /// a socket path).
    #[arg(long, value_name = "HOST")]
    load: Option<String>,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the archive goes: target/image/ingress-xdp-<version>.tar.
pub fn archive_path() -> PathBuf {
    workspace_root().join(format!("target/image/ingress-xdp-{VERSION}.tar"))
}

pub fn image(args: ImageArgs) -> Result<()> {
    crate::setup(false)?;
    crate::release_build()?;
    let bin = workspace_root().join("target/release/ingress-xdp");
    let work = workspace_root().join("target/image/build");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let rootfs = work.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    copy_into(&rootfs, &bin, Path::new("/ingress-xdp"))?;
    // Symbols are for debugging on the build machine, not for nodes.
    status(Command::new("strip").arg(rootfs.join("ingress-xdp")))?;
    let libs = linked_libraries(&bin)?;
    for lib in &libs {
        copy_into(&rootfs, lib, lib)?;
    }
    // The agent writes its heartbeat here (`health` reads it).
    fs::create_dir_all(rootfs.join("run/ingress-xdp"))?;
    let layer = work.join("layer.tar");
    status(Command::new("tar").args([
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        "--mtime=@0",
        "--sort=name",
        "-C",
        &rootfs.display().to_string(),
        "-cf",
        &layer.display().to_string(),
        ".",
    ]))?;
    let diff_id = sha256(&layer)?;
    let tag = format!("ingress-xdp:{VERSION}");
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/ingress-xdp"],
            "Cmd": ["run"],
            "Env": ["INGRESS_XDP_LOG=info"],
            "Healthcheck": {
                "Test": ["CMD", "/ingress-xdp", "health"],
                "Interval": 10_000_000_000u64,
                "Timeout": 5_000_000_000u64,
                "StartPeriod": 15_000_000_000u64,
                "Retries": 3,
            },
            "Labels": { "org.opencontainers.image.version": VERSION },
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created_by": "cargo xtask image" }],
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_path = work.join("config.json");
    fs::write(&config_path, &config_bytes)?;
    let config_name = format!("{}.json", sha256(&config_path)?);
    fs::rename(&config_path, work.join(&config_name))?;
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": ["layer.tar"],
    }]);
    fs::write(work.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    let archive = archive_path();
    status(Command::new("tar").args([
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        "-C",
        &work.display().to_string(),
        "-cf",
        &archive.display().to_string(),
        "manifest.json",
        &config_name,
        "layer.tar",
    ]))?;
    let size = fs::metadata(&layer)?.len();
    println!(
        "image {tag}: {} ({:.1} MB uncompressed: the binary and {} libraries, no base image)",
        archive.display(),
        size as f64 / 1e6,
        libs.len()
    );
    if let Some(host) = args.load {
        let host = if host.starts_with('/') {
            format!("unix://{host}")
        } else {
            host
        };
        status(Command::new("docker").args([
            "-H",
            &host,
            "load",
            "-i",
            &archive.display().to_string(),
        ]))?;
    }
    Ok(())
}

/// The shared objects `bin` loads, the dynamic loader included.
fn linked_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(bin))?;
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    if libs.is_empty() {
        bail!("ldd found no libraries for {}", bin.display());
    }
    Ok(libs)
}

/// Copies `from` to `at` inside `rootfs` (following symlinks).
fn copy_into(rootfs: &Path, from: &Path, at: &Path) -> Result<()> {
    let dest = rootfs.join(at.strip_prefix("/").unwrap_or(at));
    fs::create_dir_all(dest.parent().expect("a parent"))?;
    fs::copy(from, &dest).with_context(|| format!("copying {} into the image", from.display()))?;
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let out = output(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}
