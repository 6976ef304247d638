//! The pin directory: every map and link the data plane needs lives there, so
//! that the CLI (and later the agent) can exit without the drops stopping.
//!
//! ```text
//! <pin-dir>/RULES          array   (proto plane, port) -> Rule
//! <pin-dir>/RULE_STATS     percpu hash RuleKey -> packets, bytes
//! <pin-dir>/ALLOW_V4|V6    LPM trie (rule, source prefix) -> 1
//! <pin-dir>/ATTACH_STATS   percpu array attach id -> counters
//! <pin-dir>/ATTACH_INFO    array attach id -> where it is attached
//! <pin-dir>/RULE_ORIGIN    hash RuleKey -> who wants the rule (CLI, agent)
//! <pin-dir>/links/ap<ID>   the bpf_link of attach point ID
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::{Ebpf, EbpfLoader};

use crate::sys;

/// Map names, as the eBPF object defines (and pins) them.
pub const MAP_RULES: &str = "RULES";
pub const MAP_RULE_STATS: &str = "RULE_STATS";
pub const MAP_ALLOW_V4: &str = "ALLOW_V4";
pub const MAP_ALLOW_V6: &str = "ALLOW_V6";
pub const MAP_ATTACH_STATS: &str = "ATTACH_STATS";
pub const MAP_ATTACH_INFO: &str = "ATTACH_INFO";
pub const MAP_RULE_ORIGIN: &str = "RULE_ORIGIN";
pub const ALL_MAPS: [&str; 7] = [
    MAP_RULES,
    MAP_RULE_STATS,
    MAP_ALLOW_V4,
    MAP_ALLOW_V6,
    MAP_ATTACH_STATS,
    MAP_ATTACH_INFO,
    MAP_RULE_ORIGIN,
];

/// Program names in the eBPF object.
pub const PROG_XDP: &str = "ingress_xdp";
pub const PROG_TC: &str = "ingress_tc";

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ingress-xdp";

#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn link(&self, attach_id: u32) -> PathBuf {
        self.links_dir().join(format!("ap{attach_id}"))
    }

    /// True once `attach` (or [`Pins::create`]) has created the maps.
    pub fn exists(&self) -> bool {
        self.map(MAP_RULES).exists()
    }

    /// Fails with the operator-facing message when there is no state yet.
    pub fn require(&self) -> Result<()> {
        if !self.exists() {
            bail!(
                "nothing attached: no rule map at {} (run `ingress-xdp attach` first, or pass the --pin-dir it used)",
                self.map(MAP_RULES).display()
            );
        }
        Ok(())
    }

    /// Creates the directory and the pinned maps (reusing any that exist).
    pub fn create(&self) -> Result<()> {
        sys::ensure_bpffs_mounted()?;
        sys::create_pin_dir(&self.dir)?;
        sys::create_pin_dir(&self.links_dir())?;
        // Loading the object creates and pins the maps; programs stay unloaded.
        load_object(self, 0).map(drop)
    }

    /// Takes the directory's lock for a read-modify-write of pinned state.
    pub fn lock(&self) -> Result<sys::DirLock> {
        sys::DirLock::acquire(&self.dir)
    }
}

/// Opens the eBPF object with its maps bound to (or created in) the pin dir
/// and `ATTACH_ID` set. Programs are not loaded into the kernel yet.
pub fn load_object(pins: &Pins, attach_id: u32) -> Result<Ebpf> {
    EbpfLoader::new()
        .default_map_pin_directory(pins.dir())
        .override_global("ATTACH_ID", &attach_id, true)
        .load(crate::EBPF_OBJECT)
        .map_err(anyhow::Error::from)
        .map_err(explain_bpf_refusal)
        .with_context(|| {
            format!(
                "loading the eBPF object with maps pinned in {}",
                pins.dir().display()
            )
        })
}

/// Turns the kernel's terse refusals of bpf(2) into what the operator can do.
pub fn explain_bpf_refusal(err: anyhow::Error) -> anyhow::Error {
    let errno = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .and_then(|e| e.raw_os_error());
    match errno {
        Some(libc::ENOSYS) => err.context(
            "this kernel has no BPF support (bpf(2) returned ENOSYS: CONFIG_BPF_SYSCALL is off)",
        ),
        Some(libc::EPERM) => err.context(
            "the kernel refused BPF (EPERM): run as root with CAP_BPF/CAP_SYS_ADMIN, outside a seccomp sandbox that blocks bpf(2)",
        ),
        _ => err,
    }
}
