//! The state migration: brings a pin directory that an older release wrote
//! up to this build's layout, in place, while its programs keep dropping.
//!
//! Steps (each named in errors, and `INGRESS_XDP_FAIL_AFTER=<step>` makes a
//! debug build fail right after one, for the tests):
//! 1. `create`: the new layout's maps, empty, in `vN-staging/`.
//! 2. `copy`: every rule (mode, allowlist, origin), each operator rule given
//!    a counter slot, and every attach point's record.
//! 3. `swap`: on every live attach point, this build's program (bound to the
//!    new maps) replaces the old one in its pinned link with BPF_LINK_UPDATE;
//!    the old program keeps running until that instant, the new one from it.
//!    If any swap fails, the points already swapped get their old program
//!    back: nothing changed.
//! 4. `commit`: the old counts are added to the new counters (the old
//!    programs are gone, so they no longer move; the new ones are running,
//!    so the counts go into the counters' bases, never into the per-CPU
//!    chunks the programs write), STATE records the layout,
//!    and `vN-staging/` is renamed to `vN/`: from here on the new layout is the
//!    state.
//! 5. The old maps are unpinned (a leftover is removed on the next run).
//!
//! From layout 1 (release 0.1.0, maps at the top of the pin directory) and
//! layout 2 (release 0.2.0, maps in `v2/`).
//!
//! Until `commit` the old maps are the state: a failed or interrupted
//! migration leaves them, and the old programs, as they were (an interrupted
//! swap leaves new programs running on a full copy of the rules), and the
//! next attempt starts again from `create`. All of it runs under the pin
//! directory's lock, so a CLI and an agent upgrading at once take turns.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use ingress_xdp_common::{
    AttachCounters, AttachInfo, BUILD_LEN, EventConfig, IFNAME_LEN, LAYOUT_VERSION,
    MAX_ATTACH_POINTS, MAX_RULE_COUNTERS, NETNS_PATH_LEN, NO_COUNTER, RULE_SLOTS, Rule,
    RuleCounters, RuleKey, RuleOrigin, action,
};

use crate::{
    attach::{self, AttachPoint, Registry},
    bpf::{self, records},
    counters::{Counters, plus},
    fixed::to_fixed,
    pins::{self, Found, LAYOUT_1_BUILD, Pins},
    rules::{RuleTable, open_map_at, port_of, read_allowlists},
    sys,
};

/// What [`prepare`] did.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The layout migrated from, if a migration ran.
    pub migrated_from: Option<u32>,
    /// Points whose program was replaced in place.
    pub upgraded: Vec<Upgraded>,
    /// Things the operator should know (e.g. counters that did not carry).
    pub notes: Vec<String>,
}

impl Prepared {
    /// What was done, a line each, for `attach`'s output and the agent's log.
    pub fn describe(&self, pins: &Pins) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(from) = self.migrated_from {
            lines.push(format!(
                "migrated {} from layout {from} to layout {LAYOUT_VERSION}: every rule, mode, allowlist and owner carried over; counters carried over",
                pins.dir().display()
            ));
        }
        for u in &self.upgraded {
            lines.push(format!(
                "upgraded {}: {}, program {} (build {}) -> {} (build {}), in place",
                u.point.target(),
                u.point.hook,
                u.from_program,
                u.from_build,
                u.point.program_id,
                u.point.build
            ));
        }
        lines.extend(self.notes.iter().map(|n| format!("note: {n}")));
        lines
    }
}

#[derive(Clone, Debug)]
pub struct Upgraded {
    pub point: AttachPoint,
    pub from_build: String,
    pub from_program: u32,
}

/// Makes the pin directory hold this build's layout before `attach` or
/// `run` touch it: creates it when there is none, migrates an older one,
/// refuses a newer one (changing nothing), and clears what an interrupted
/// earlier run left behind.
pub fn prepare(pins: &Pins) -> Result<Prepared> {
    pins.create_dirs()?;
    let lock = pins.lock()?;
    match pins.found() {
        Found::Newer(v) => Err(pins::newer_layout(pins.dir(), v)),
        Found::Nothing => {
            pins.create_locked(&lock)?;
            Ok(Prepared::default())
        }
        Found::Current => {
            pins.check_maps(&pins.layout_dir())?;
            let mut prepared = Prepared::default();
            if pins.staging_dir().exists() {
                pins::remove_map_dir(&pins.staging_dir())?;
            }
            if pins.dir().join(pins::MAP_RULES).exists() {
                remove_layout_1_maps(pins)?;
                prepared
                    .notes
                    .push("removed the layout-1 maps an interrupted upgrade left".into());
            }
            for v in 2..LAYOUT_VERSION {
                if pins.layout_dir_of(v).exists() {
                    pins::remove_map_dir(&pins.layout_dir_of(v))?;
                    prepared.notes.push(format!(
                        "removed the layout-{v} maps an interrupted upgrade left"
                    ));
                }
            }
            Ok(prepared)
        }
        Found::Older(from @ (1 | 2)) => migrate(pins, from),
        Found::Older(v) => bail!(
            "the state in {} has layout {v}, which this build cannot migrate from",
            pins.dir().display()
        ),
    }
}

/// Fails right after `step` when the tests ask for it (debug builds only).
fn injected_failure(step: &str) -> Result<()> {
    if cfg!(debug_assertions) && std::env::var("INGRESS_XDP_FAIL_AFTER").as_deref() == Ok(step) {
        bail!("injected failure after the `{step}` step (INGRESS_XDP_FAIL_AFTER)");
    }
    Ok(())
}

fn step_failed(step: &str, pins: &Pins, from: u32) -> String {
    format!(
        "migrating {} from layout {from} to layout {LAYOUT_VERSION} failed at step `{step}`; the layout-{from} maps and programs are untouched and still dropping",
        pins.dir().display()
    )
}

fn migrate(pins: &Pins, from: u32) -> Result<Prepared> {
    let staging = pins
        .fresh_staging()
        .and_then(|s| injected_failure("create").map(|()| s))
        .with_context(|| step_failed("create", pins, from))?;
    let plan = if from == 1 {
        copy_layout_1(pins, &staging)
    } else {
        copy_layout_2(pins, &staging)
    }
    .and_then(|p| injected_failure("copy").map(|()| p))
    .with_context(|| step_failed("copy", pins, from))?;
    let upgraded =
        swap_programs(pins, &staging).with_context(|| step_failed("swap", pins, from))?;
    let mut prepared = Prepared {
        migrated_from: Some(from),
        upgraded,
        notes: Vec::new(),
    };
    if let Err(e) = carry_counts(pins, &staging, &plan) {
        prepared.notes.push(format!(
            "counters restart at 0: carrying the old counts over failed ({e:#})"
        ));
    }
    pins::write_state(&staging, from)
        .and_then(|()| pins.commit_staging())
        .with_context(|| step_failed("commit", pins, from))?;
    injected_failure("commit").context(
        "after committing the new layout (the new programs run and drop; the old maps are still pinned, and the next attach removes them)",
    )?;
    let removed = if from == 1 {
        remove_layout_1_maps(pins)
    } else {
        pins::remove_map_dir(&plan.old_dir)
    };
    if let Err(e) = removed {
        prepared.notes.push(format!(
            "the layout-{from} maps are still pinned ({e:#}); the next attach removes them"
        ));
    }
    Ok(prepared)
}

/// The maps of layout 1 (release 0.1.0), at the top of the pin directory.
const LAYOUT_1_MAPS: [&str; 7] = [
    "RULES",
    "RULE_STATS",
    "ALLOW_V4",
    "ALLOW_V6",
    "ATTACH_STATS",
    "ATTACH_INFO",
    "RULE_ORIGIN",
];

pub fn remove_layout_1_maps(pins: &Pins) -> Result<()> {
    for name in LAYOUT_1_MAPS {
        let path = pins.dir().join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("unpinning {}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `ATTACH_INFO`'s value in layout 1: today's without the build.
#[repr(C)]
#[derive(Clone, Copy)]
struct AttachInfoV1 {
    in_use: u8,
    hook: u8,
    xdp_mode: u8,
    pad: u8,
    ifindex: u32,
    prog_id: u32,
    link_id: u32,
    netns_dev: u64,
    netns_ino: u64,
    attached_at: u64,
    ifname: [u8; IFNAME_LEN],
    netns_path: [u8; NETNS_PATH_LEN],
}

// SAFETY: #[repr(C)], no padding (4 + 12 + 24 + 16 + 256 = 312 bytes), every bit
// pattern valid.
unsafe impl aya::Pod for AttachInfoV1 {}

fn batch_of(
    dir: &Path,
    name: &str,
    key_len: usize,
    value_len: usize,
    max: u32,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let path = dir.join(name);
    let map = bpf::obj_get(&path)?;
    bpf::lookup_batch(
        map.as_fd(),
        key_len,
        value_len,
        max,
        &path.display().to_string(),
    )
}

/// Where the old counts are and which new counter slot each goes to.
struct CounterPlan {
    old_dir: PathBuf,
    /// The old map of per-CPU rule counts and its key: layout 1 kept one
    /// per port (`RULE_STATS`, a hash by [`RuleKey`]), layout 2 one per
    /// counter slot (`RULE_COUNTERS`, an array by slot, the same slots).
    old_counters: OldCounters,
}

enum OldCounters {
    PerPort(BTreeMap<RuleKey, u16>),
    PerSlot(BTreeSet<u16>),
}

/// One layout-1 port rule and what it takes with it.
#[derive(PartialEq)]
struct OldRule {
    action: u8,
    flags: u8,
    allow: Option<BTreeSet<crate::cidr::Cidr>>,
    origin: Option<RuleOrigin>,
}

type Origins = BTreeMap<RuleKey, RuleOrigin>;
type Allowlists = BTreeMap<RuleKey, BTreeSet<crate::cidr::Cidr>>;

/// Origins and allowlists, which layouts 1 and 2 keep alike. Copied before
/// the rules, so that no rule ever points at what is not there yet (the new
/// maps are not live, but keep the habit).
fn copy_origins_and_allowlists(old: &Path, table: &mut RuleTable) -> Result<(Origins, Allowlists)> {
    let (keys, values) = batch_of(old, "RULE_ORIGIN", 4, size_of::<RuleOrigin>(), 65536)?;
    let origins: BTreeMap<RuleKey, RuleOrigin> = records::<RuleKey>(&keys)
        .zip(records::<RuleOrigin>(&values))
        .collect();
    for (key, origin) in &origins {
        table.put_origin(*key, origin)?;
    }
    let allow = read_allowlists(
        &open_map_at(&old.join("ALLOW_V4"))?.try_into()?,
        &open_map_at(&old.join("ALLOW_V6"))?.try_into()?,
    )
    .with_context(|| format!("reading the allowlists in {}", old.display()))?;
    for (key, cidrs) in &allow {
        for cidr in cidrs {
            table.insert_prefix(*key, cidr)?;
        }
    }
    Ok((origins, allow))
}

fn copy_layout_1(pins: &Pins, staging: &Path) -> Result<CounterPlan> {
    let old = pins.dir();
    let mut table = RuleTable::open_dir(staging)?;
    let (origins, allow) = copy_origins_and_allowlists(old, &mut table)?;

    // Rules: each run of consecutive ports that 0.1.0's `list` showed as
    // one rule gets one counter slot.
    let (keys, values) = batch_of(old, "RULES", 4, 4, RULE_SLOTS)?;
    let mut slot_of_port = BTreeMap::new();
    let mut next_counter: u16 = 1;
    let mut last: Option<(u32, OldRule, u16)> = None;
    for (slot, rule) in records::<u32>(&keys).zip(records::<Rule>(&values)) {
        if rule.action == action::NONE {
            continue;
        }
        let (proto, port) = port_of(slot);
        let key = RuleKey::new(proto.number(), port);
        let this = OldRule {
            action: rule.action,
            flags: rule.flags,
            allow: allow.get(&key).cloned(),
            origin: origins.get(&key).copied(),
        };
        let counter = match &last {
            Some((prev, prev_rule, c)) if *prev + 1 == slot && *prev_rule == this => *c,
            _ if next_counter < MAX_RULE_COUNTERS as u16 => {
                next_counter += 1;
                next_counter - 1
            }
            _ => NO_COUNTER,
        };
        table.put_rule(
            proto,
            port,
            Rule {
                action: rule.action,
                flags: rule.flags,
                counter,
            },
        )?;
        slot_of_port.insert(key, counter);
        last = Some((slot, this, counter));
    }

    // Attach points: same slots, so each program instance keeps its id.
    let mut registry = Registry::open_dir(pins, staging)?;
    let (keys, values) = batch_of(
        old,
        "ATTACH_INFO",
        4,
        size_of::<AttachInfoV1>(),
        MAX_ATTACH_POINTS,
    )?;
    for (id, v1) in records::<u32>(&keys).zip(records::<AttachInfoV1>(&values)) {
        if v1.in_use == 0 {
            continue;
        }
        registry.set_info(
            id,
            AttachInfo {
                in_use: v1.in_use,
                hook: v1.hook,
                xdp_mode: v1.xdp_mode,
                pad: 0,
                ifindex: v1.ifindex,
                prog_id: v1.prog_id,
                link_id: v1.link_id,
                netns_dev: v1.netns_dev,
                netns_ino: v1.netns_ino,
                attached_at: v1.attached_at,
                ifname: v1.ifname,
                netns_path: v1.netns_path,
                build: to_fixed::<BUILD_LEN>(LAYOUT_1_BUILD),
            },
        )?;
    }
    Ok(CounterPlan {
        old_dir: old.to_path_buf(),
        old_counters: OldCounters::PerPort(slot_of_port),
    })
}

/// Layout 2 has the same rule slots, counter slots and attach records as
/// layout 3: they are copied as they are.
fn copy_layout_2(pins: &Pins, staging: &Path) -> Result<CounterPlan> {
    let old = pins.layout_dir_of(2);
    let mut table = RuleTable::open_dir(staging)?;
    copy_origins_and_allowlists(&old, &mut table)?;

    // The event switch first: every rule slot carries a copy of it.
    let config: aya::maps::Array<_, EventConfig> =
        open_map_at(&old.join(pins::MAP_EVENT_CONFIG))?.try_into()?;
    let config = config
        .get(&0, 0)
        .with_context(|| format!("reading {}/EVENT_CONFIG", old.display()))?;
    let mut new_config: aya::maps::Array<_, EventConfig> =
        open_map_at(&staging.join(pins::MAP_EVENT_CONFIG))?.try_into()?;
    new_config
        .set(0, config, 0)
        .context("writing the new EVENT_CONFIG")?;

    let (keys, values) = batch_of(&old, "RULES", 4, 4, RULE_SLOTS)?;
    let mut used = BTreeSet::new();
    for (slot, rule) in records::<u32>(&keys).zip(records::<Rule>(&values)) {
        if rule.action == action::NONE {
            continue;
        }
        let (proto, port) = port_of(slot);
        table.put_rule(proto, port, rule)?;
        used.insert(rule.counter);
    }

    let mut registry = Registry::open_dir(pins, staging)?;
    let (keys, values) = batch_of(
        &old,
        "ATTACH_INFO",
        4,
        size_of::<AttachInfo>(),
        MAX_ATTACH_POINTS,
    )?;
    for (id, info) in records::<u32>(&keys).zip(records::<AttachInfo>(&values)) {
        if info.in_use != 0 {
            registry.set_info(id, info)?;
        }
    }
    Ok(CounterPlan {
        old_dir: old,
        old_counters: OldCounters::PerSlot(used),
    })
}

/// A swapped point, to put back if a later one fails.
struct Swapped {
    id: u32,
    old_program: OwnedFd,
}

fn swap_programs(pins: &Pins, staging: &Path) -> Result<Vec<Upgraded>> {
    let mut registry = Registry::open_dir(pins, staging)?;
    let mut swapped: Vec<Swapped> = Vec::new();
    let mut upgraded = Vec::new();
    let result = (|| -> Result<()> {
        for point in registry.points()? {
            let link = pins.link(point.id);
            // A point whose interface is gone drops nothing: forget_gone
            // clears it later; there is no link to update.
            let Ok(info) = bpf::pinned_link_info(&link) else {
                continue;
            };
            if info.ifindex == 0 {
                continue;
            }
            let old_program = bpf::prog_fd_by_id(info.prog_id)?;
            let hook_choice = point.hook;
            let ebpf = attach::load_program(staging, point.id, hook_choice)?;
            bpf::link_update(
                &link,
                attach::program_fd(&ebpf, hook_choice)?,
                Some(old_program.as_fd()),
            )
            .with_context(|| format!("swapping the program on {}", point.target()))?;
            swapped.push(Swapped {
                id: point.id,
                old_program,
            });
            let mut record = registry.info(point.id)?;
            record.prog_id = bpf::pinned_link_info(&link)?.prog_id;
            record.build = to_fixed::<BUILD_LEN>(pins::build());
            registry.set_info(point.id, record)?;
            let mut now = point.clone();
            now.program_id = record.prog_id;
            now.build = pins::build().to_string();
            upgraded.push(Upgraded {
                from_build: point.build,
                from_program: info.prog_id,
                point: now,
            });
        }
        injected_failure("swap")
    })();
    if let Err(e) = result {
        for s in swapped.iter().rev() {
            if let Err(back) = bpf::link_update(&pins.link(s.id), s.old_program.as_fd(), None) {
                tracing::error!(
                    "could not put the old program back on attach point {}: {back:#} (it runs this build's program on a full copy of the rules)",
                    s.id
                );
            }
        }
        return Err(e);
    }
    Ok(upgraded)
}

/// Adds the old maps' counts (frozen now that no old program runs) to the
/// new counters, which have counted since the swap.
fn carry_counts(pins: &Pins, staging: &Path, plan: &CounterPlan) -> Result<()> {
    let cpus = sys::possible_cpus()?;
    let old = &plan.old_dir;
    let mut counters = Counters::open_dir(staging)?;
    let per_cpu = size_of::<RuleCounters>();
    let sum_cpus =
        |value: &[u8]| records::<RuleCounters>(value).fold(RuleCounters::default(), plus);
    let mut sums: BTreeMap<u16, RuleCounters> = BTreeMap::new();
    match &plan.old_counters {
        OldCounters::PerPort(slot_of_port) => {
            let (keys, values) = batch_of(old, "RULE_STATS", 4, per_cpu * cpus, 65536)?;
            for (key, value) in records::<RuleKey>(&keys).zip(values.chunks_exact(per_cpu * cpus)) {
                let Some(&slot) = slot_of_port.get(&key) else {
                    continue;
                };
                let sum = sums.entry(slot).or_default();
                *sum = plus(*sum, sum_cpus(value));
            }
        }
        OldCounters::PerSlot(used) => {
            let (keys, values) =
                batch_of(old, "RULE_COUNTERS", 4, per_cpu * cpus, MAX_RULE_COUNTERS)?;
            for (slot, value) in records::<u32>(&keys).zip(values.chunks_exact(per_cpu * cpus)) {
                let Ok(slot) = u16::try_from(slot) else {
                    continue;
                };
                if used.contains(&slot) {
                    sums.insert(slot, sum_cpus(value));
                }
            }
        }
    }
    sums.remove(&NO_COUNTER);
    for (slot, counts) in sums {
        counters.carry(slot, counts)?;
    }

    // Every bucket, drops included: in the new layout the programs count a
    // point's drops in the chunks, and `dropped` here is its base.
    let mut registry = Registry::open_dir(pins, staging)?;
    let value_len = size_of::<AttachCounters>() * cpus;
    let (keys, values) = batch_of(old, "ATTACH_STATS", 4, value_len, MAX_ATTACH_POINTS)?;
    for (id, value) in records::<u32>(&keys).zip(values.chunks_exact(value_len)) {
        if registry.info(id)?.in_use == 0 {
            continue;
        }
        let mut now = registry.buckets(id)?;
        for (n, o) in now.iter_mut().zip(records::<AttachCounters>(value)) {
            n.dropped = n.dropped.wrapping_add(o.dropped);
            n.passed += o.passed;
            n.audited += o.audited;
            n.allowed += o.allowed;
            n.not_parsed += o.not_parsed;
        }
        registry.set_buckets(id, &now)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_1_attach_info_is_today_without_the_build() {
        assert_eq!(
            size_of::<AttachInfoV1>() + BUILD_LEN,
            size_of::<AttachInfo>()
        );
        assert_eq!(size_of::<AttachInfoV1>(), 312);
    }
}
