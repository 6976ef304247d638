//! `cargo xtask install`: the release binary, the systemd unit, shell
//! completions (bash, zsh, fish) and the man page, at the conventional
//! paths under --prefix, staged under --destdir for packaging.
//!
//! The completions and the man page come from the binary itself
//! (`ingress-xdp completions SHELL`, `ingress-xdp man`), so they describe
//! exactly the CLI that is installed.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{output, workspace_root};

#[derive(clap::Args)]
pub struct InstallArgs {
    /// Installation prefix: bin/, lib/systemd/system/, share/ go under it.
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    prefix: PathBuf,
    /// Stage the files under this directory instead of / (for packages);
    /// the installed files still name --prefix.
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
    /// Install this ingress-xdp binary instead of building the release one.
    #[arg(long, value_name = "PATH")]
    bin: Option<PathBuf>,
}

/// Where each file goes, relative to the prefix.
pub const BIN: &str = "bin/ingress-xdp";
pub const UNIT: &str = "lib/systemd/system/ingress-xdp.service";
pub const BASH: &str = "share/bash-completion/completions/ingress-xdp";
pub const ZSH: &str = "share/zsh/site-functions/_ingress-xdp";
pub const FISH: &str = "share/fish/vendor_completions.d/ingress-xdp.fish";
pub const MAN: &str = "share/man/man1/ingress-xdp.1";

pub fn install(args: InstallArgs) -> Result<()> {
    let bin = match args.bin {
        Some(bin) => bin,
        None => {
            crate::setup(false)?;
            crate::release_build()?;
            workspace_root().join("target/release/ingress-xdp")
        }
    };
    let unit = workspace_root().join("deploy/ingress-xdp.service");
    let root = args.destdir.unwrap_or_else(|| PathBuf::from("/"));
    for path in lay_out(&bin, &unit, &root, &args.prefix)? {
        println!("installed {}", path.display());
    }
    Ok(())
}

/// `prefix` as a path under `root` (both absolute or not).
fn under(root: &Path, prefix: &Path, rel: &str) -> PathBuf {
    root.join(prefix.strip_prefix("/").unwrap_or(prefix))
        .join(rel)
}

/// Writes every file under `root`/`prefix`; returns the paths written.
pub fn lay_out(bin: &Path, unit: &Path, root: &Path, prefix: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = under(root, prefix, rel);
        let dir = path.parent().expect("a file under the prefix");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let binary = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    put(BIN, &binary, 0o755)?;
    // The unit names the binary by its installed path.
    let unit_text =
        fs::read_to_string(unit).with_context(|| format!("reading {}", unit.display()))?;
    let installed_bin = prefix.join(BIN);
    put(
        UNIT,
        unit_text
            .replace(
                "/usr/local/bin/ingress-xdp",
                &installed_bin.display().to_string(),
            )
            .as_bytes(),
        0o644,
    )?;
    for (shell, rel) in [("bash", BASH), ("zsh", ZSH), ("fish", FISH)] {
        let text = output(Command::new(bin).args(["completions", shell]))?;
        put(rel, text.as_bytes(), 0o644)?;
    }
    put(MAN, output(Command::new(bin).arg("man"))?.as_bytes(), 0o644)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the binary that answers `completions` and `man`
    /// (the real output is checked by the ingress-xdp tests/docs.rs).
    fn fake_bin(dir: &Path) -> PathBuf {
        let bin = dir.join("ingress-xdp");
        fs::write(&bin, "#!/bin/sh\necho \"generated: $*\"\n").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    #[test]
    fn install_lays_out_the_files_under_destdir_and_prefix() {
        let tmp = std::env::temp_dir().join(format!("drxtask-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        let bin = fake_bin(&tmp);
        let unit = workspace_root().join("deploy/ingress-xdp.service");
        let dest = tmp.join("dest");
        let written = lay_out(&bin, &unit, &dest, Path::new("/opt/ixdp")).unwrap();
        let want: Vec<PathBuf> = [BIN, UNIT, BASH, ZSH, FISH, MAN]
            .iter()
            .map(|rel| dest.join("opt/ixdp").join(rel))
            .collect();
        assert_eq!(written, want);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&want[0]), 0o755);
        assert_eq!(mode(&want[1]), 0o644);
        let unit_text = fs::read_to_string(&want[1]).unwrap();
        assert!(
            unit_text.contains("ExecStart=/opt/ixdp/bin/ingress-xdp run"),
            "{unit_text}"
        );
        assert_eq!(
            fs::read_to_string(&want[2]).unwrap(),
            "generated: completions bash\n"
        );
        assert_eq!(
            fs::read_to_string(&want[4]).unwrap(),
            "generated: completions fish\n"
        );
        assert_eq!(fs::read_to_string(&want[5]).unwrap(), "generated: man\n");
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn the_default_prefix_is_usr_local() {
        assert_eq!(
            under(Path::new("/"), Path::new("/usr/local"), BIN),
            PathBuf::from("/usr/local/bin/ingress-xdp")
        );
    }
}
