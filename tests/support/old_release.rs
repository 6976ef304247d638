//! Earlier releases of ingress-xdp, built from this repository's own history,
//! so that tests can make the pinned state an older binary leaves on a node
//! and check that the current binary takes it over.
//!
//! [`release_0_1_0`] extracts commit [`COMMIT_0_1_0`] with `git archive` into
//! `<workspace>/target/compat/0.1.0/src` and builds it there (debug, with
//! `--locked`) into `<workspace>/target/compat/0.1.0/target`;
//! [`release_0_2_0`] does the same for [`COMMIT_0_2_0`]. The build is
//! done once per machine: a stamp file records the commit of the binary that
//! is there, and later calls return at once. Callers are serialised within
//! the process (a `OnceLock`) and across test processes (an flock on
//! `<workspace>/target/compat/0.1.0.lock`).
//!
//! The commit must be in the repository: a shallow clone fails loudly (CI
//! runs with CI=true and nothing may be skipped).

use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Instant,
};

/// Release 0.1.0 (layout 1: maps at the top of the pin dir).
pub const COMMIT_0_1_0: &str = "ff897f167735c695217197e17650ca4f82534cee";

/// Release 0.2.0 (layout 2: maps in `v2/`, per-CPU counter array).
pub const COMMIT_0_2_0: &str = "aeb3ed01ae6dc2df452cf79a1a5896d36d82cc78";

/// The workspace the tests run in (the parent of the ingress-xdp package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the ingress-xdp package lives in the workspace")
        .to_path_buf()
}

/// The ingress-xdp binary of release 0.1.0, built on first use.
pub fn release_0_1_0() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built_once(&BIN, "0.1.0", COMMIT_0_1_0)
}

/// The ingress-xdp binary of release 0.2.0, built on first use.
pub fn release_0_2_0() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built_once(&BIN, "0.2.0", COMMIT_0_2_0)
}

/// The release's binary, built by the first caller in this process.
fn built_once(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    version: &str,
    commit: &str,
) -> &'static Path {
    match cell.get_or_init(|| build_release(version, commit)) {
        Ok(bin) => bin,
        Err(e) => panic!("{e}"),
    }
}

/// An flock held until dropped.
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path) -> Result<Self, String> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("opening lock file {}: {e}", path.display()))?;
        // SAFETY: a valid fd; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self { _file: file })
    }
}

/// Whether a variable of the test process would steer a nested cargo (and
/// the rustc it runs) away from a plain build of another workspace.
fn confuses_nested_cargo(key: &str) -> bool {
    const KEEP: [&str; 1] = ["CARGO_HOME"];
    // How cargo reaches the registry: keep, the nested build may need it.
    const KEEP_PREFIXES: [&str; 5] = [
        "CARGO_HTTP_",
        "CARGO_NET_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_SOURCE_",
    ];
    if KEEP.contains(&key) || KEEP_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return false;
    }
    key == "CARGO"
        || key.starts_with("CARGO_")
        || key.starts_with("__CARGO")
        || key.starts_with("RUSTC")
        || key.starts_with("RUSTDOC")
        || key == "RUSTFLAGS"
        || key == "RUSTUP_TOOLCHAIN"
        || key == "OUT_DIR"
}

fn build_release(version: &str, commit: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let compat = root.join("target/compat");
    let base = compat.join(version);
    let src = base.join("src");
    let target = base.join("target");
    let bin = target.join("debug/ingress-xdp");
    let stamp = base.join("stamp");
    fs::create_dir_all(&base).map_err(|e| format!("mkdir {}: {e}", base.display()))?;
    let _lock = FileLock::acquire(&compat.join(format!("{version}.lock")))?;

    let built = || bin.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == commit);
    if built() {
        eprintln!(
            "[ixt-compat] ingress-xdp {version} ({commit:.7}) already built: {}",
            bin.display()
        );
        return Ok(bin);
    }

    let t0 = Instant::now();
    let has_commit = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running git: {e}"))?;
    if !has_commit.success() {
        return Err(format!(
            "commit {commit} (ingress-xdp {version}) is not in the repository at {}: \
             the upgrade tests build that release from git history. A shallow clone \
             lacks it: run `git fetch --unshallow` (or clone with full history)",
            root.display()
        ));
    }

    // A fresh tree every time the stamp does not match: no leftovers of an
    // interrupted extraction or of another commit.
    let _ = fs::remove_file(&stamp);
    if src.exists() {
        fs::remove_dir_all(&src).map_err(|e| format!("rm -r {}: {e}", src.display()))?;
    }
    fs::create_dir_all(&src).map_err(|e| format!("mkdir {}: {e}", src.display()))?;
    let extract = Command::new("sh")
        .arg("-c")
        .arg(r#"git -C "$1" archive "$2" | tar -x -C "$3""#)
        .arg("sh")
        .arg(&root)
        .arg(commit)
        .arg(&src)
        .output()
        .map_err(|e| format!("running git archive: {e}"))?;
    // `sh -c 'a | b'` reports b's status; check a's result by its product.
    if !extract.status.success() || !src.join("Cargo.lock").exists() {
        return Err(format!(
            "git archive {commit} | tar -x -C {} failed ({}): {}",
            src.display(),
            extract.status,
            String::from_utf8_lossy(&extract.stderr)
        ));
    }

    let mut cmd = Command::new("cargo");
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && confuses_nested_cargo(key)
        {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(&src)
        .args(["build", "--locked", "--package", "ingress-xdp"])
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null());
    eprintln!(
        "[ixt-compat] building ingress-xdp {version} ({commit:.7}) in {} (first time only; a few minutes)",
        src.display()
    );
    let out = cmd
        .output()
        .map_err(|e| format!("running cargo build for {version}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(60).collect();
        return Err(format!(
            "building ingress-xdp {version} ({commit}) in {} failed ({}):\n{}",
            src.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    if !bin.exists() {
        return Err(format!(
            "cargo build of {version} succeeded but {} is missing",
            bin.display()
        ));
    }
    fs::write(&stamp, format!("{commit}\n"))
        .map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    eprintln!(
        "[ixt-compat] built ingress-xdp {version} in {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        bin.display()
    );
    Ok(bin)
}
