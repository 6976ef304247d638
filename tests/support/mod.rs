//! Shared test scaffolding: uniquely named pin directories and network
//! namespaces that clean up after themselves, and a few command helpers.
//!
//! Every name made here starts with `ixt` and carries the test's tag and the
//! process id, so parallel tests and earlier crashed runs never collide.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

pub mod agent;
pub mod docker;
pub mod old_release;
pub mod pki;
pub mod prometheus;
pub mod reference;
pub mod traffic;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names have a
/// 15-byte limit, so keep `tag` short).
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("ixt{tag}{}{n}", std::process::id() % 100_000)
}

pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load BPF programs and create namespaces: run them as root (cargo xtask test)"
    );
}

/// Runs a command, panicking with its output if it fails.
#[track_caller]
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its output whatever the status.
pub fn sh_out(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh")
}

/// A pin directory on bpffs, removed (links, maps, directory) on drop.
pub struct TestPins {
    pub pins: ingress_xdp::pins::Pins,
}

impl TestPins {
    pub fn new(tag: &str) -> Self {
        require_root();
        ingress_xdp::sys::ensure_bpffs_mounted().expect("bpffs");
        let dir = PathBuf::from("/sys/fs/bpf").join(unique(tag));
        let pins = ingress_xdp::pins::Pins::new(&dir);
        pins.create().expect("create pinned maps");
        Self { pins }
    }

    /// Cleans up `dir` on drop without creating anything: for a pin
    /// directory that the command under test creates.
    pub fn removed_on_drop(dir: &Path) -> Self {
        Self {
            pins: ingress_xdp::pins::Pins::new(dir),
        }
    }

    pub fn dir(&self) -> &Path {
        self.pins.dir()
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = ingress_xdp::attach::detach_all(&self.pins);
        let _ = std::fs::remove_dir_all(self.pins.dir());
    }
}

/// A network namespace created with `ip netns add`, deleted on drop (which
/// also deletes the interfaces inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        require_root();
        let name = unique(tag);
        sh(&format!("ip netns add {name}"));
        let ns = Self { name };
        ns.exec("ip link set lo up");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs `cmd` inside the namespace (network namespace only, so bpffs
    /// stays visible), panicking on failure.
    #[track_caller]
    pub fn exec(&self, cmd: &str) -> String {
        sh(&self.wrap(cmd))
    }

    pub fn exec_out(&self, cmd: &str) -> Output {
        sh_out(&self.wrap(cmd))
    }

    pub fn wrap(&self, cmd: &str) -> String {
        format!(
            "nsenter --net={} sh -c '{}'",
            self.path().display(),
            cmd.replace('\'', r"'\''")
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh_out(&format!("ip netns pids {} | xargs -r kill -9", self.name));
        let _ = sh_out(&format!("ip netns del {}", self.name));
    }
}

/// The ingress-xdp binary built alongside these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ingress-xdp")
}
