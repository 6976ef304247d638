//! The pin directory: every map and link the data plane needs lives there, so
//! that the CLI and the agent can exit without the drops stopping.
//!
//! ```text
//! <pin-dir>/v3/RULES          array (proto plane, port) -> Rule (mmapable)
//! <pin-dir>/v3/COUNTERS       percpu array chunk -> 128 rule counters, drops per point
//! <pin-dir>/v3/COUNTER_BASE   array counter slot -> where its count starts
//! <pin-dir>/v3/ALLOW_V4|V6    LPM trie (rule, source prefix) -> 1
//! <pin-dir>/v3/ATTACH_STATS   percpu array attach id -> counters
//! <pin-dir>/v3/ATTACH_INFO    array attach id -> where, which build
//! <pin-dir>/v3/RULE_ORIGIN    hash RuleKey -> who wants the rule (CLI, agent)
//! <pin-dir>/v3/STATE          array[1] layout version, build that wrote it
//! <pin-dir>/v3/EVENT*         drop events: ring, switch, per-CPU rate limit
//! <pin-dir>/links/ap<ID>      the bpf_link of attach point ID
//! ```
//!
//! The maps of layout N live in `vN/`, so a binary binds only maps of the
//! layout it was built for. A layout is created (or migrated) in `vN-staging/`
//! and becomes real by one rename (bpffs refuses dots in names). Release
//! 0.1.0 (layout 1) kept its maps at the top of the directory, release 0.2.0
//! (layout 2) in `v2/`; [`crate::upgrade`] migrates both.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::{Ebpf, EbpfLoader, maps::MapInfo};
use ingress_xdp_common::{
    COUNTER_CHUNKS, CounterChunk, LAYOUT_VERSION, MAX_ALLOW_PREFIXES, MAX_ATTACH_POINTS,
    MAX_ORIGINS, MAX_RULE_COUNTERS, RULE_SLOTS, RuleCounters, StateInfo,
};

use crate::{fixed::to_fixed, sys};

/// Map names, as the eBPF object defines (and pins) them.
pub const MAP_RULES: &str = "RULES";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_COUNTER_BASE: &str = "COUNTER_BASE";
pub const MAP_ALLOW_V4: &str = "ALLOW_V4";
pub const MAP_ALLOW_V6: &str = "ALLOW_V6";
pub const MAP_ATTACH_STATS: &str = "ATTACH_STATS";
pub const MAP_ATTACH_INFO: &str = "ATTACH_INFO";
pub const MAP_RULE_ORIGIN: &str = "RULE_ORIGIN";
pub const MAP_STATE: &str = "STATE";
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_EVENT_CONFIG: &str = "EVENT_CONFIG";
pub const MAP_EVENT_LIMITER: &str = "EVENT_LIMITER";

/// Kernel map types (enum bpf_map_type) that the layout uses.
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LPM_TRIE: u32 = 11;
    pub const RINGBUF: u32 = 27;
}

const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// What a pinned map of the current layout must be. Binding a map by name
/// alone would hand the programs any map that happens to carry the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// Every map of layout [`LAYOUT_VERSION`] (checked against the eBPF object
/// by tests/verifier.rs).
pub const LAYOUT: [MapSpec; 12] = [
    MapSpec {
        name: MAP_RULES,
        map_type: map_type::ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: RULE_SLOTS,
        flags: BPF_F_MMAPABLE,
    },
    MapSpec {
        name: MAP_COUNTERS,
        map_type: map_type::PERCPU_ARRAY,
        key_size: 4,
        value_size: size_of::<CounterChunk>() as u32,
        max_entries: COUNTER_CHUNKS,
        flags: 0,
    },
    MapSpec {
        name: MAP_COUNTER_BASE,
        map_type: map_type::ARRAY,
        key_size: 4,
        value_size: size_of::<RuleCounters>() as u32,
        max_entries: MAX_RULE_COUNTERS,
        flags: 0,
    },
    MapSpec {
        name: MAP_ALLOW_V4,
        map_type: map_type::LPM_TRIE,
        key_size: 4 + 8,
        value_size: 1,
        max_entries: MAX_ALLOW_PREFIXES,
        flags: BPF_F_NO_PREALLOC,
    },
    MapSpec {
        name: MAP_ALLOW_V6,
        map_type: map_type::LPM_TRIE,
        key_size: 4 + 20,
        value_size: 1,
        max_entries: MAX_ALLOW_PREFIXES,
        flags: BPF_F_NO_PREALLOC,
    },
    MapSpec {
        name: MAP_ATTACH_STATS,
        map_type: map_type::PERCPU_ARRAY,
        key_size: 4,
        value_size: 40,
        max_entries: MAX_ATTACH_POINTS,
        flags: 0,
    },
    MapSpec {
        name: MAP_ATTACH_INFO,
        map_type: map_type::ARRAY,
        key_size: 4,
        value_size: size_of::<ingress_xdp_common::AttachInfo>() as u32,
        max_entries: MAX_ATTACH_POINTS,
        flags: 0,
    },
    MapSpec {
        name: MAP_RULE_ORIGIN,
        map_type: map_type::HASH,
        key_size: 4,
        value_size: 256,
        max_entries: MAX_ORIGINS,
        flags: BPF_F_NO_PREALLOC,
    },
    MapSpec {
        name: MAP_STATE,
        map_type: map_type::ARRAY,
        key_size: 4,
        value_size: size_of::<StateInfo>() as u32,
        max_entries: 1,
        flags: 0,
    },
    MapSpec {
        name: MAP_EVENTS,
        map_type: map_type::RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: ingress_xdp_common::EVENT_RING_BYTES,
        flags: 0,
    },
    MapSpec {
        name: MAP_EVENT_CONFIG,
        map_type: map_type::ARRAY,
        key_size: 4,
        value_size: size_of::<ingress_xdp_common::EventConfig>() as u32,
        max_entries: 1,
        flags: 0,
    },
    MapSpec {
        name: MAP_EVENT_LIMITER,
        map_type: map_type::PERCPU_ARRAY,
        key_size: 4,
        value_size: size_of::<ingress_xdp_common::EventLimiter>() as u32,
        max_entries: 1,
        flags: 0,
    },
];

/// Program names in the eBPF object.
pub const PROG_XDP: &str = "ingress_xdp";
pub const PROG_TC: &str = "ingress_tc";

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ingress-xdp";

/// The release that wrote layout 1 (the only one that did).
pub const LAYOUT_1_BUILD: &str = "0.1.0";

/// The release that wrote an older layout, for messages.
pub fn release_of_layout(version: u32) -> &'static str {
    match version {
        1 => LAYOUT_1_BUILD,
        2 => "0.2.0",
        _ => "an older release",
    }
}

/// Who built these programs: the release and a digest of the eBPF object,
/// so a rebuild of the same programs is the same build and any change to
/// them is a new one.
pub fn build() -> &'static str {
    static BUILD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILD.get_or_init(|| {
        // FNV-1a: stable across compilers, unlike std's hasher.
        let digest = crate::EBPF_OBJECT
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        format!("{}+{:012x}", env!("CARGO_PKG_VERSION"), digest >> 16)
    })
}

/// What a pin directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// No state (or an empty directory).
    Nothing,
    /// The layout this binary was built for.
    Current,
    /// An older layout, to be migrated by `attach` or `run`.
    Older(u32),
    /// A layout from a newer release: this binary must not touch it.
    Newer(u32),
}

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

    /// Where layout `version`'s maps are pinned.
    pub fn layout_dir_of(&self, version: u32) -> PathBuf {
        if version <= 1 {
            self.dir.clone()
        } else {
            self.dir.join(format!("v{version}"))
        }
    }

    /// Where the current layout's maps are pinned.
    pub fn layout_dir(&self) -> PathBuf {
        self.layout_dir_of(LAYOUT_VERSION)
    }

    /// Where the current layout is built before the rename that makes it real.
    pub fn staging_dir(&self) -> PathBuf {
        self.dir.join(format!("v{LAYOUT_VERSION}-staging"))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.layout_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn link(&self, attach_id: u32) -> PathBuf {
        self.links_dir().join(format!("ap{attach_id}"))
    }

    /// True once the current layout exists.
    pub fn exists(&self) -> bool {
        self.map(MAP_STATE).exists()
    }

    /// Which layout the directory holds.
    pub fn found(&self) -> Found {
        let versions: Vec<u32> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix('v')?
                    .parse::<u32>()
                    .ok()
            })
            .collect();
        if let Some(&v) = versions.iter().filter(|&&v| v > LAYOUT_VERSION).max() {
            return Found::Newer(v);
        }
        if self.exists() {
            return Found::Current;
        }
        // Layouts 2 and up keep STATE in their own directory.
        let older = versions
            .iter()
            .filter(|&&v| (2..LAYOUT_VERSION).contains(&v))
            .filter(|&&v| self.layout_dir_of(v).join(MAP_STATE).exists())
            .max();
        match older {
            Some(&v) => Found::Older(v),
            // 0.1.0 pinned RULE_STATS beside RULES at the top.
            None if self.dir.join(MAP_RULES).exists() && self.dir.join("RULE_STATS").exists() => {
                Found::Older(1)
            }
            None => Found::Nothing,
        }
    }

    /// Fails unless the current layout is there, saying what to do.
    pub fn require(&self) -> Result<()> {
        match self.found() {
            Found::Current => self.check_maps(&self.layout_dir()),
            Found::Nothing => bail!(
                "nothing attached: no state in {} (run `ingress-xdp attach` first, or pass the --pin-dir it used)",
                self.dir.display()
            ),
            Found::Older(v) => bail!(
                "the state in {} has layout {v} (written by ingress-xdp {}); this is ingress-xdp {} (layout {LAYOUT_VERSION}): run `ingress-xdp attach` (or restart the agent) to upgrade it in place; the drops stay on meanwhile",
                self.dir.display(),
                release_of_layout(v),
                env!("CARGO_PKG_VERSION"),
            ),
            Found::Newer(v) => Err(newer_layout(&self.dir, v)),
        }
    }

    /// Checks every pinned map of the layout in `dir` against [`LAYOUT`].
    pub fn check_maps(&self, dir: &Path) -> Result<()> {
        for spec in &LAYOUT {
            let path = dir.join(spec.name);
            let info = MapInfo::from_pin(&path)
                .with_context(|| format!("reading map info of {}", path.display()))?;
            let got = MapSpec {
                name: spec.name,
                map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                flags: info.map_flags(),
            };
            if got != *spec {
                bail!(
                    "pinned map {} is not what layout {LAYOUT_VERSION} needs (found type {}, key {} B, value {} B, {} entries, flags {:#x}; want type {}, key {} B, value {} B, {} entries, flags {:#x}): the pin directory was changed by hand or by another build",
                    path.display(),
                    got.map_type,
                    got.key_size,
                    got.value_size,
                    got.max_entries,
                    got.flags,
                    spec.map_type,
                    spec.key_size,
                    spec.value_size,
                    spec.max_entries,
                    spec.flags
                );
            }
        }
        Ok(())
    }

    /// Makes sure the current layout exists: creates it fresh if there is no
    /// state, and refuses an older (see [`crate::upgrade`]) or newer one.
    pub fn create(&self) -> Result<()> {
        self.create_dirs()?;
        let lock = self.lock()?;
        self.create_locked(&lock)
    }

    /// Creates the directories (and mounts bpffs when it is missing).
    pub fn create_dirs(&self) -> Result<()> {
        sys::ensure_bpffs_mounted()?;
        sys::create_pin_dir(&self.dir)?;
        sys::create_pin_dir(&self.links_dir())
    }

    /// [`Pins::create`] for a caller that holds the lock.
    pub fn create_locked(&self, _lock: &sys::DirLock) -> Result<()> {
        match self.found() {
            Found::Current => self.check_maps(&self.layout_dir()),
            Found::Nothing => {
                let staging = self.fresh_staging()?;
                write_state(&staging, 0)?;
                self.commit_staging()
            }
            Found::Older(_) | Found::Newer(_) => self.require(),
        }
    }

    /// An empty staging directory with the current layout's maps created
    /// in it (a leftover of an interrupted attempt is discarded first).
    pub fn fresh_staging(&self) -> Result<PathBuf> {
        let staging = self.staging_dir();
        remove_map_dir(&staging)?;
        sys::create_pin_dir(&staging)?;
        // Loading the object creates and pins the maps; programs stay unloaded.
        load_object(&staging, 0)?;
        self.check_maps(&staging)?;
        Ok(staging)
    }

    /// Makes the staged layout the real one: a single rename.
    pub fn commit_staging(&self) -> Result<()> {
        let (from, to) = (self.staging_dir(), self.layout_dir());
        std::fs::rename(&from, &to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
    }

    /// Takes the directory's lock for a read-modify-write of pinned state.
    pub fn lock(&self) -> Result<sys::DirLock> {
        sys::DirLock::acquire(&self.dir)
    }
}

pub fn newer_layout(dir: &Path, version: u32) -> anyhow::Error {
    anyhow::anyhow!(
        "the state in {} has layout {version}, newer than this ingress-xdp {} understands (layout {LAYOUT_VERSION}): use the newer binary (or its `detach --purge`); nothing was changed",
        dir.display(),
        env!("CARGO_PKG_VERSION")
    )
}

/// Records the layout version and this build in `dir`'s STATE map.
pub fn write_state(dir: &Path, migrated_from: u32) -> Result<()> {
    let path = dir.join(MAP_STATE);
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut state: aya::maps::Array<_, StateInfo> =
        aya::maps::Map::from_map_data(data)?.try_into()?;
    let info = StateInfo {
        layout: LAYOUT_VERSION,
        migrated_from,
        created_at: sys::now_secs(),
        build: to_fixed(build()),
    };
    state
        .set(0, info, 0)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads `dir`'s STATE map.
pub fn read_state(dir: &Path) -> Result<StateInfo> {
    let path = dir.join(MAP_STATE);
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let state: aya::maps::Array<_, StateInfo> = aya::maps::Map::from_map_data(data)?.try_into()?;
    state
        .get(&0, 0)
        .with_context(|| format!("reading {}", path.display()))
}

/// Unpins every map in `dir` and removes it; a missing `dir` is fine.
pub fn remove_map_dir(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Opens the eBPF object with its maps bound to (or created in) `maps_dir`
/// and `ATTACH_ID` set. Programs are not loaded into the kernel yet.
pub fn load_object(maps_dir: &Path, attach_id: u32) -> Result<Ebpf> {
    load_object_bytes(crate::EBPF_OBJECT, maps_dir, attach_id)
}

/// [`load_object`] for another build of the programs (the benchmark's
/// variant without the event code); the maps are the same pinned ones.
pub fn load_object_bytes(object: &[u8], maps_dir: &Path, attach_id: u32) -> Result<Ebpf> {
    EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .override_global("ATTACH_ID", &attach_id, true)
        .load(object)
        .map_err(anyhow::Error::from)
        .map_err(explain_bpf_refusal)
        .with_context(|| {
            format!(
                "loading the eBPF object with maps pinned in {}",
                maps_dir.display()
            )
        })
}

/// Turns the kernel's terse refusals of bpf(2) into what the operator can do.
pub fn explain_bpf_refusal(err: anyhow::Error) -> anyhow::Error {
    match sys::errno_of(&err) {
        Some(libc::ENOSYS) => err.context(
            "this kernel has no BPF support (bpf(2) returned ENOSYS: CONFIG_BPF_SYSCALL is off)",
        ),
        Some(libc::EPERM) => err.context(
            "the kernel refused BPF (EPERM): run as root with CAP_BPF/CAP_SYS_ADMIN, outside a seccomp sandbox that blocks bpf(2)",
        ),
        _ => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_dirs() {
        let pins = Pins::new("/sys/fs/bpf/x");
        assert_eq!(pins.layout_dir_of(1), PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(pins.layout_dir_of(2), PathBuf::from("/sys/fs/bpf/x/v2"));
        assert_eq!(pins.layout_dir(), PathBuf::from("/sys/fs/bpf/x/v3"));
        assert_eq!(
            pins.staging_dir(),
            PathBuf::from("/sys/fs/bpf/x/v3-staging")
        );
        assert_eq!(pins.map(MAP_RULES), PathBuf::from("/sys/fs/bpf/x/v3/RULES"));
    }

    #[test]
    fn build_names_the_release_and_the_programs() {
        let b = build();
        assert!(
            b.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+")),
            "{b}"
        );
        assert_eq!(b.len(), env!("CARGO_PKG_VERSION").len() + 1 + 12);
        assert!(b.len() < ingress_xdp_common::BUILD_LEN);
    }
}
