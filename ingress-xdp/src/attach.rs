//! Attach points: loading one program instance per interface, attaching it
//! (inside another network namespace when asked), pinning its link, swapping
//! a newer build's program into that link in place, and the `ATTACH_INFO` /
//! `ATTACH_STATS` registry that describes them afterwards.

use std::{
    fmt,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink},
};
use ingress_xdp_common::{
    AttachCounters, AttachInfo, BUILD_LEN, IFNAME_LEN, MAX_ATTACH_POINTS, NETNS_PATH_LEN, hook,
    xdp_mode,
};
use serde::{Deserialize, Serialize};

use crate::{
    bpf,
    counters::{Counters, Tally},
    fixed::{from_fixed, to_fixed},
    mountinfo,
    pins::{self, MAP_ATTACH_INFO, MAP_ATTACH_STATS, PROG_TC, PROG_XDP, Pins},
    rules::open_map_at,
    sys::{self, NetnsId},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// XDP: in the driver, before an skb exists (fastest).
    Xdp,
    /// TC ingress (TCX): after the skb is built, before netfilter.
    Tc,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native if the driver supports it, else generic.
    #[default]
    Auto,
    /// Driver (native) mode only; fail if unsupported.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        })
    }
}

/// An interface, in the loader's namespace (`netns: None`) or another one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub netns: Option<PathBuf>,
    pub iface: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.netns {
            Some(ns) => write!(f, "{} in {}", self.iface, ns.display()),
            None => write!(f, "{}", self.iface),
        }
    }
}

/// An attach point as recorded in `ATTACH_INFO`.
#[derive(Clone, Debug, Serialize)]
pub struct AttachPoint {
    pub id: u32,
    pub netns: Option<String>,
    pub iface: String,
    pub ifindex: u32,
    pub hook: Hook,
    pub mode: Option<AttachedMode>,
    pub program_id: u32,
    pub link_id: u32,
    pub attached_at: u64,
    /// Build of the program running here ([`pins::build`] of its loader).
    pub build: String,
    #[serde(skip)]
    netns_id: NetnsId,
    #[serde(skip)]
    link_pin: PathBuf,
}

impl AttachPoint {
    pub fn target(&self) -> Target {
        Target {
            netns: self.netns.as_ref().map(PathBuf::from),
            iface: self.iface.clone(),
        }
    }

    /// Where this point's namespace can be entered from this process.
    ///
    /// The recorded path names it when this process sees the files the loader
    /// saw. An agent in a container records its own view of the exec root
    /// (/var/run/docker/netns/ingress_sbox for the host's
    /// /run/docker-b/netns/ingress_sbox, say), so otherwise the namespace is
    /// found by its identity: this process's own, or a namespace bind in the
    /// mount table (Docker binds every sandbox in the host's mount namespace).
    pub fn netns_here(&self) -> NetnsHere {
        if let Some(recorded) = self.netns.as_deref().map(Path::new)
            && NetnsId::of_path(recorded).ok() == Some(self.netns_id)
        {
            return NetnsHere::At(recorded.to_path_buf());
        }
        if NetnsId::current().ok() == Some(self.netns_id) {
            return NetnsHere::Current;
        }
        mountinfo::netns_paths(&mountinfo::read(), self.netns_id.ino)
            .into_iter()
            .find(|p| NetnsId::of_path(p).ok() == Some(self.netns_id))
            .map_or(NetnsHere::NotVisible, NetnsHere::At)
    }

    /// Whether the interface this point was attached to still exists, in the
    /// same namespace (Docker recreates ingress_sbox under the same path).
    /// The pinned link must still hold an interface too: a namespace Docker
    /// recreates can reuse the old inode number and interface index.
    pub fn presence(&self) -> Presence {
        if sys::link_detached(&self.link_pin) {
            return Presence::Gone;
        }
        let netns = match self.netns_here() {
            NetnsHere::Current => None,
            NetnsHere::At(path) => Some(path),
            // The link still holds an interface, so the namespace lives; a
            // process holds it without a bind this process can see.
            NetnsHere::NotVisible => return Presence::Unknown,
        };
        let found = sys::in_netns(netns.as_deref(), || {
            Ok(sys::ifindex(&self.iface).ok() == Some(self.ifindex))
        })
        .unwrap_or(false);
        if found {
            Presence::Attached
        } else {
            Presence::Gone
        }
    }

    pub fn is_present(&self) -> bool {
        self.presence() == Presence::Attached
    }
}

/// Where an attach point's network namespace is, seen from this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsHere {
    /// The namespace this process runs in.
    Current,
    /// A file that opens it (the recorded path, or another bind of it).
    At(PathBuf),
    /// Alive (its link holds an interface) but not bound where we can see.
    NotVisible,
}

/// What `status` can tell about an attach point's interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Attached,
    /// The interface or its namespace no longer exists.
    Gone,
    /// Its namespace cannot be entered from here (no bind of it is visible).
    Unknown,
}

impl fmt::Display for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Presence::Attached => "attached",
            Presence::Gone => "interface gone",
            Presence::Unknown => "netns not visible here",
        })
    }
}

fn decode(pins: &Pins, id: u32, info: &AttachInfo) -> Option<AttachPoint> {
    if info.in_use == 0 {
        return None;
    }
    let netns = from_fixed(&info.netns_path);
    Some(AttachPoint {
        id,
        netns: (!netns.is_empty()).then_some(netns),
        iface: from_fixed(&info.ifname),
        ifindex: info.ifindex,
        hook: hook_of(info),
        mode: match info.xdp_mode {
            xdp_mode::NATIVE => Some(AttachedMode::Native),
            xdp_mode::GENERIC => Some(AttachedMode::Generic),
            _ => None,
        },
        program_id: info.prog_id,
        link_id: info.link_id,
        attached_at: info.attached_at,
        build: from_fixed(&info.build),
        netns_id: NetnsId {
            dev: info.netns_dev,
            ino: info.netns_ino,
        },
        link_pin: pins.link(id),
    })
}

/// Summed per-CPU counters of one attach point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PointCounters {
    pub seen: u64,
    pub dropped: u64,
    pub passed: u64,
    pub audited: u64,
    pub allowed: u64,
    pub not_parsed: u64,
}

impl PointCounters {
    pub fn from_buckets(b: &AttachCounters) -> Self {
        Self {
            seen: b.dropped + b.passed + b.audited + b.allowed + b.not_parsed,
            dropped: b.dropped,
            // Everything that went on to the kernel.
            passed: b.passed + b.audited + b.allowed + b.not_parsed,
            audited: b.audited,
            allowed: b.allowed,
            not_parsed: b.not_parsed,
        }
    }
}

pub struct Registry {
    pins: Pins,
    info: Array<MapData, AttachInfo>,
    stats: PerCpuArray<MapData, AttachCounters>,
    /// Where the programs count drops (see [`crate::counters`]).
    counters: Counters,
    cpus: usize,
}

impl Registry {
    pub fn open(pins: &Pins) -> Result<Self> {
        pins.require()?;
        Self::open_dir(pins, &pins.layout_dir())
    }

    /// The registry whose maps are pinned in `dir` (a layout a migration is
    /// building, or the current one).
    pub fn open_dir(pins: &Pins, dir: &Path) -> Result<Self> {
        let cpus = sys::possible_cpus()?;
        Ok(Self {
            pins: pins.clone(),
            info: open_map_at(&dir.join(MAP_ATTACH_INFO))?.try_into()?,
            stats: open_map_at(&dir.join(MAP_ATTACH_STATS))?.try_into()?,
            counters: Counters::open_dir(dir)?,
            cpus,
        })
    }

    pub fn points(&self) -> Result<Vec<AttachPoint>> {
        let mut out = Vec::new();
        for id in 0..MAX_ATTACH_POINTS {
            out.extend(decode(&self.pins, id, &self.info(id)?));
        }
        Ok(out)
    }

    pub fn info(&self, id: u32) -> Result<AttachInfo> {
        self.info
            .get(&id, 0)
            .with_context(|| format!("reading ATTACH_INFO slot {id}"))
    }

    pub(crate) fn set_info(&mut self, id: u32, info: AttachInfo) -> Result<()> {
        self.info
            .set(id, info, 0)
            .with_context(|| format!("writing ATTACH_INFO slot {id}"))
    }

    /// A point's per-CPU buckets (a migration carries them over).
    pub(crate) fn buckets(&self, id: u32) -> Result<Vec<AttachCounters>> {
        let values = self
            .stats
            .get(&id, 0)
            .with_context(|| format!("reading ATTACH_STATS slot {id}"))?;
        Ok(values.iter().copied().collect())
    }

    pub(crate) fn set_buckets(&mut self, id: u32, per_cpu: &[AttachCounters]) -> Result<()> {
        let values = PerCpuValues::try_from(per_cpu.to_vec()).context("building counters")?;
        self.stats
            .set(id, values, 0)
            .with_context(|| format!("writing ATTACH_STATS slot {id}"))
    }

    /// What the chunks hold: read once for [`Registry::counters_with`]
    /// over many points.
    pub fn tally(&self) -> Result<Tally> {
        self.counters.tally()
    }

    pub fn counters(&self, id: u32) -> Result<PointCounters> {
        self.counters_with(id, &self.tally()?)
    }

    /// A point's counters: its buckets, and its drops as the chunks in
    /// `tally` hold them from its base on.
    pub fn counters_with(&self, id: u32, tally: &Tally) -> Result<PointCounters> {
        let values = self
            .stats
            .get(&id, 0)
            .with_context(|| format!("reading ATTACH_STATS slot {id}"))?;
        let mut sum = values
            .iter()
            .fold(AttachCounters::default(), |a, v| AttachCounters {
                dropped: a.dropped.wrapping_add(v.dropped),
                passed: a.passed + v.passed,
                audited: a.audited + v.audited,
                allowed: a.allowed + v.allowed,
                not_parsed: a.not_parsed + v.not_parsed,
            });
        let counted = tally.dropped.get(id as usize).copied().unwrap_or(0);
        sum.dropped = sum.dropped.wrapping_add(counted);
        Ok(PointCounters::from_buckets(&sum))
    }

    /// Empties a slot for a new point: no record, and counters that start
    /// at zero (its drop base cancels what the chunks hold for the id).
    pub(crate) fn clear(&mut self, id: u32) -> Result<()> {
        self.info
            .set(id, AttachInfo::default(), 0)
            .context("clearing ATTACH_INFO")?;
        let counted = self.tally()?.dropped.get(id as usize).copied().unwrap_or(0);
        let mut zero = vec![AttachCounters::default(); self.cpus];
        zero[0].dropped = counted.wrapping_neg();
        let zero = PerCpuValues::try_from(zero).context("building zero counters")?;
        self.stats.set(id, zero, 0).context("clearing ATTACH_STATS")
    }

    fn free_slot(&self) -> Result<u32> {
        for id in 0..MAX_ATTACH_POINTS {
            if self.info.get(&id, 0).context("reading ATTACH_INFO")?.in_use == 0 {
                return Ok(id);
            }
        }
        bail!("all {MAX_ATTACH_POINTS} attach slots are in use; detach first")
    }
}

/// What `attach` did for one target.
#[derive(Clone, Debug, Serialize)]
pub struct AttachReport {
    pub point: AttachPoint,
    /// True when it was attached already, by this build, and nothing changed.
    pub already: bool,
    /// The build whose program this one replaced in place, if any.
    pub upgraded_from: Option<String>,
}

/// Loads this build's program for attach point `id` (the object's maps bound
/// to `maps_dir`), ready to attach or to swap into a link.
pub fn load_program(maps_dir: &Path, id: u32, hook_choice: Hook) -> Result<Ebpf> {
    let mut ebpf = pins::load_object(maps_dir, id)?;
    let loaded = match hook_choice {
        Hook::Xdp => {
            let prog: &mut Xdp = ebpf
                .program_mut(PROG_XDP)
                .context("XDP program missing from the eBPF object")?
                .try_into()?;
            prog.load()
        }
        Hook::Tc => {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(PROG_TC)
                .context("TC program missing from the eBPF object")?
                .try_into()?;
            prog.load()
        }
    };
    loaded
        .map_err(|e| pins::explain_bpf_refusal(e.into()))
        .with_context(|| format!("loading the {hook_choice} program (BPF_PROG_LOAD)"))?;
    Ok(ebpf)
}

/// The kernel fd of the program [`load_program`] loaded.
pub fn program_fd(ebpf: &Ebpf, hook_choice: Hook) -> Result<std::os::fd::BorrowedFd<'_>> {
    let name = match hook_choice {
        Hook::Xdp => PROG_XDP,
        Hook::Tc => PROG_TC,
    };
    let prog = ebpf
        .program(name)
        .with_context(|| format!("{name} missing from the eBPF object"))?;
    Ok(prog.fd().context("the program is not loaded")?.as_fd())
}

/// Puts `ebpf`'s program on the pinned link of point `id`, atomically
/// (BPF_LINK_UPDATE: the interface is never without a program), and returns
/// the id of the program that now runs there.
pub fn swap_program(pins: &Pins, id: u32, ebpf: &Ebpf, hook_choice: Hook) -> Result<u32> {
    let link = pins.link(id);
    bpf::link_update(&link, program_fd(ebpf, hook_choice)?, None)?;
    Ok(bpf::pinned_link_info(&link)?.prog_id)
}

fn hook_of(info: &AttachInfo) -> Hook {
    if info.hook == hook::TC {
        Hook::Tc
    } else {
        Hook::Xdp
    }
}

fn attach_xdp(
    prog: &mut Xdp,
    iface: &str,
    choice: XdpModeChoice,
) -> Result<(FdLink, AttachedMode)> {
    let try_mode = |prog: &mut Xdp, mode: XdpMode| -> Result<FdLink> {
        let id = prog
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP ({mode:?} mode) to {iface}"))?;
        let link = prog.take_link(id)?;
        link.try_into()
            .context("the kernel attached XDP without a bpf_link, which cannot be pinned")
    };
    match choice {
        XdpModeChoice::Native => Ok((try_mode(prog, XdpMode::Driver)?, AttachedMode::Native)),
        XdpModeChoice::Generic => Ok((try_mode(prog, XdpMode::Skb)?, AttachedMode::Generic)),
        XdpModeChoice::Auto => match try_mode(prog, XdpMode::Driver) {
            Ok(link) => Ok((link, AttachedMode::Native)),
            Err(native_err) => {
                tracing::info!(
                    "native XDP unavailable on {iface} ({native_err:#}); trying generic"
                );
                Ok((try_mode(prog, XdpMode::Skb)?, AttachedMode::Generic))
            }
        },
    }
}

/// Attaches to `target` unless that interface already has our program.
/// The maps must exist ([`Pins::create`]); the caller holds the pin lock.
pub fn attach(
    pins: &Pins,
    target: &Target,
    hook_choice: Hook,
    mode_choice: XdpModeChoice,
) -> Result<AttachReport> {
    let netns = target.netns.as_deref();
    let (netns_id, ifindex) = sys::in_netns(netns, || {
        Ok((NetnsId::current()?, sys::ifindex(&target.iface)?))
    })
    .with_context(|| format!("looking up {target}"))?;

    let mut registry = Registry::open(pins)?;
    for point in registry.points()? {
        if point.netns_id != netns_id || point.ifindex != ifindex {
            continue;
        }
        let link_alive = !sys::link_detached(&pins.link(point.id));
        if link_alive && point.hook == hook_choice && point.is_present() {
            if point.build == pins::build() {
                return Ok(AttachReport {
                    point,
                    already: true,
                    upgraded_from: None,
                });
            }
            return upgrade_point(pins, &mut registry, point);
        }
        if link_alive && point.is_present() {
            bail!(
                "{target} already has ingress-xdp attached with --hook {}; run `ingress-xdp detach` first to switch to {hook_choice}",
                point.hook
            );
        }
        // A stale slot (the link or the interface is gone): reuse it.
        let _ = std::fs::remove_file(pins.link(point.id));
        registry.clear(point.id)?;
    }

    let id = registry.free_slot()?;
    let mut ebpf = load_program(&pins.layout_dir(), id, hook_choice)?;
    // Counters of an earlier attach point in this slot must not leak in.
    registry.clear(id)?;

    let (link, mode) = match hook_choice {
        Hook::Xdp => {
            let prog: &mut Xdp = ebpf
                .program_mut(PROG_XDP)
                .context("XDP program missing from the eBPF object")?
                .try_into()?;
            let (link, mode) =
                sys::in_netns(netns, || attach_xdp(prog, &target.iface, mode_choice))?;
            (link, Some(mode))
        }
        Hook::Tc => {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(PROG_TC)
                .context("TC program missing from the eBPF object")?
                .try_into()?;
            let link = sys::in_netns(netns, || {
                let id = prog
                    .attach(&target.iface, TcAttachType::Ingress)
                    .with_context(|| format!("attaching TC ingress to {}", target.iface))?;
                let link: FdLink = prog
                    .take_link(id)?
                    .try_into()
                    .context("TC attached without TCX (kernel < 6.6?): cannot pin the link")?;
                Ok(link)
            })?;
            (link, None)
        }
    };
    let link_info = link.info().context("reading link info")?;
    let link_path = pins.link(id);
    link.pin(&link_path)
        .with_context(|| format!("pinning link at {}", link_path.display()))?;

    let info = AttachInfo {
        in_use: 1,
        hook: match hook_choice {
            Hook::Xdp => hook::XDP,
            Hook::Tc => hook::TC,
        },
        xdp_mode: match mode {
            Some(AttachedMode::Native) => xdp_mode::NATIVE,
            Some(AttachedMode::Generic) => xdp_mode::GENERIC,
            None => xdp_mode::NONE,
        },
        pad: 0,
        ifindex,
        prog_id: link_info.program_id(),
        link_id: link_info.id(),
        netns_dev: netns_id.dev,
        netns_ino: netns_id.ino,
        attached_at: sys::now_secs(),
        ifname: to_fixed::<IFNAME_LEN>(&target.iface),
        netns_path: to_fixed::<NETNS_PATH_LEN>(
            &netns.map(|p| p.display().to_string()).unwrap_or_default(),
        ),
        build: to_fixed::<BUILD_LEN>(pins::build()),
    };
    registry
        .set_info(id, info)
        .context("recording the attach point in ATTACH_INFO")?;
    let point = decode(pins, id, &info).context("decoding the new attach point")?;
    Ok(AttachReport {
        point,
        already: false,
        upgraded_from: None,
    })
}

/// Replaces an older build's program on `point` with this build's, in place.
fn upgrade_point(pins: &Pins, registry: &mut Registry, point: AttachPoint) -> Result<AttachReport> {
    let mut info = registry.info(point.id)?;
    let ebpf = load_program(&pins.layout_dir(), point.id, hook_of(&info))?;
    let prog_id = swap_program(pins, point.id, &ebpf, hook_of(&info))
        .with_context(|| format!("upgrading the program on {}", point.target()))?;
    info.prog_id = prog_id;
    info.build = to_fixed::<BUILD_LEN>(pins::build());
    registry.set_info(point.id, info)?;
    let upgraded = decode(pins, point.id, &info).context("decoding the upgraded attach point")?;
    Ok(AttachReport {
        point: upgraded,
        already: false,
        upgraded_from: Some(point.build),
    })
}

fn unpin_link(pins: &Pins, id: u32) -> Result<()> {
    let path = pins.link(id);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("unpinning {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes every attach point's link (which detaches the program) and its
/// record. Returns the points that were detached.
pub fn detach_all(pins: &Pins) -> Result<Vec<AttachPoint>> {
    let mut registry = Registry::open(pins)?;
    let points = registry.points()?;
    for point in &points {
        unpin_link(pins, point.id)?;
        registry.clear(point.id)?;
    }
    Ok(points)
}

/// Forgets attach points whose interface or namespace is gone (Docker
/// recreated ingress_sbox): their links no longer drop anything.
pub fn forget_gone(pins: &Pins) -> Result<Vec<AttachPoint>> {
    let mut registry = Registry::open(pins)?;
    let mut gone = Vec::new();
    for point in registry.points()? {
        if point.presence() == Presence::Gone {
            unpin_link(pins, point.id)?;
            registry.clear(point.id)?;
            gone.push(point);
        }
    }
    Ok(gone)
}

/// Removes the maps and the directory too (`detach --purge`).
pub fn purge(pins: &Pins) -> Result<()> {
    pins::remove_map_dir(&pins.layout_dir())?;
    pins::remove_map_dir(&pins.staging_dir())?;
    crate::upgrade::remove_layout_1_maps(pins)?;
    let links = pins.links_dir();
    if links.exists() {
        std::fs::remove_dir(&links).with_context(|| format!("removing {}", links.display()))?;
    }
    std::fs::remove_dir(pins.dir()).with_context(|| format!("removing {}", pins.dir().display()))
}
