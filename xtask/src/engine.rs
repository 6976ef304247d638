//! The second Docker Engine the tests run against: Debian 13's docker.io
//! (26.1, API 1.45), unpacked beside the system's 20.10 without touching the
//! system's apt configuration (its own sources list, lists and cache under
//! [`DIR`]). Its dockerd runs with the system's containerd and runc.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::status;

/// Outside the checkout, so that clones share one download.
const DIR: &str = "/var/cache/ingress-xdp/engine-trixie";

/// The unpacked dockerd of the newer engine.
pub fn dockerd() -> PathBuf {
    PathBuf::from(DIR).join("root/usr/sbin/dockerd")
}

/// Fetches and unpacks it unless it is there already.
pub fn ensure() -> Result<PathBuf> {
    let bin = dockerd();
    if bin.exists() {
        return Ok(bin);
    }
    let dir = PathBuf::from(DIR);
    for sub in ["lists/partial", "cache/archives/partial", "root"] {
        fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {DIR}/{sub}"))?;
    }
    // The mirror the system already uses, with the trixie suite.
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let mirror = sources
        .lines()
        .find_map(|l| l.strip_prefix("URIs:"))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| "http://deb.debian.org/debian".into());
    fs::write(
        dir.join("sources.list"),
        format!("deb {mirror} trixie main\n"),
    )?;
    let opts = [
        format!("-o=Dir::Etc::SourceList={DIR}/sources.list"),
        "-o=Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("-o=Dir::State::Lists={DIR}/lists"),
        format!("-o=Dir::Cache={DIR}/cache"),
    ];
    eprintln!("setup: fetching Debian 13's docker.io (the second test engine) into {DIR}");
    status(Command::new("apt-get").arg("update").arg("-qq").args(&opts))?;
    status(
        Command::new("apt-get")
            .arg("download")
            .arg("-qq")
            .args(&opts)
            .arg("docker.io")
            .current_dir(&dir),
    )?;
    let deb = fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("docker.io_") && n.ends_with(".deb"))
        })
        .context("apt-get download left no docker.io_*.deb")?;
    status(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")),
    )?;
    if !bin.exists() {
        bail!("{} has no usr/sbin/dockerd", deb.display());
    }
    Ok(bin)
}
