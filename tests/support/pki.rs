//! Certificate fixtures: a test directory that cleans itself up, and the
//! `openssl` CLI (Debian package openssl) as an independent certificate
//! maker, so the certificates a test presents are not made by the code under
//! test.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Field 22 of /proc/self/stat (this process's start time).
fn own_starttime() -> u64 {
    let stat = fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    after_comm
        .split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .expect("starttime")
}

/// The test's own directory `/tmp/ixt-<unique>`, removed on drop. It carries
/// the fixture's `owner` record (pid, start time), so that if this process
/// is killed, the first fixture of a later test process sweeps it.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = PathBuf::from(format!("/tmp/ixt-{}", super::unique(tag)));
        fs::create_dir_all(&path).expect("mkdir temp dir");
        fs::write(
            path.join("owner"),
            format!("owner {} {}\n", std::process::id(), own_starttime()),
        )
        .expect("write owner");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Runs `openssl ARGS` in `dir`; panics with its output on failure.
#[track_caller]
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .env_remove("OPENSSL_CONF")
        .output()
        .expect("spawn openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
