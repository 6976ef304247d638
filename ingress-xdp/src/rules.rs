//! The rule table: a typed view of the pinned `RULES`, `RULE_ORIGIN` and
//! allowlist maps, and of the rules' counters ([`crate::counters`]).
//!
//! Changes are ordered so that a port that stays blocked is never open in
//! between: a new allowlist is filled before the rule points at it, and old
//! prefixes go only after the rule stopped using them.
//!
//! Each rule as the operator sees it (one `block` spec, a range included, or
//! one port the agent blocks) has one counter slot, shared by its ports'
//! `RULES` entries. Slots are allocated and freed under the pin lock by
//! looking at which ones the rule table still uses; a full counter table
//! leaves the rule uncounted (slot 0), never unenforced. Reads go through a
//! mapping of `RULES` and batched lookups, so listing costs a few syscalls
//! whatever the number of rules.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{
    Array, HashMap, Map, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use ingress_xdp_common::{
    ALLOW_RULE_PREFIX_BITS, AllowKeyV4, AllowKeyV6, EventConfig, MAX_ORIGINS, MAX_RULE_COUNTERS,
    NO_COUNTER, ORIGIN_SERVICE_LEN, ORIGIN_WHY_LEN, RULE_SLOTS, Rule, RuleCounters, RuleKey,
    RuleOrigin, action, proto_plane, rule_flags, rule_slot,
};
use serde::Serialize;

use crate::{
    bpf::{self, MappedArray, records},
    cidr::Cidr,
    counters::{Counters, Tally},
    fixed::{from_fixed, to_fixed},
    pins::{MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_EVENT_CONFIG, MAP_RULE_ORIGIN, MAP_RULES, Pins},
    spec::{PortSpec, Protocol},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop matching packets.
    Block,
    /// Count matching packets as would-drop; drop nothing.
    Audit,
}

impl Mode {
    fn action(self) -> u8 {
        match self {
            Mode::Block => action::BLOCK,
            Mode::Audit => action::AUDIT,
        }
    }

    fn from_action(a: u8) -> Option<Self> {
        match a {
            action::BLOCK => Some(Mode::Block),
            action::AUDIT => Some(Mode::Audit),
            _ => None,
        }
    }
}

/// What a rule should do: its mode and the sources that bypass it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub mode: Mode,
    pub allow_from: BTreeSet<Cidr>,
}

/// Who wants a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Origin {
    /// Set with the CLI (`block`); the agent never removes it.
    pub manual: bool,
    /// The service whose policy blocks the port (the agent's rule).
    pub service: Option<String>,
    /// Why that policy blocks it (the deciding label, pattern or default).
    pub why: Option<String>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.service, self.manual) {
            (None, _) => f.write_str("manual"),
            (Some(service), manual) => {
                if manual {
                    f.write_str("manual; also ")?;
                }
                write!(f, "service {service}")?;
                if let Some(why) = &self.why {
                    write!(f, ": {why}")?;
                }
                Ok(())
            }
        }
    }
}

/// A rule the agent's policy wants: the service and the reason.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DockerRule {
    pub service: String,
    pub why: String,
}

/// One port's rule as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleEntry {
    pub proto: Protocol,
    pub port: u16,
    pub mode: Mode,
    pub allow_from: Vec<Cidr>,
    /// False when the counter table was full as the rule was made.
    pub counted: bool,
    /// Packets and bytes of the whole rule this port belongs to (a range
    /// shares one counter): do not add them up over a range's ports.
    pub packets: u64,
    pub bytes: u64,
    pub origin: Origin,
    /// The rule's counter slot ([`NO_COUNTER`] when uncounted).
    #[serde(skip)]
    pub counter: u16,
}

pub(crate) fn open_map_at(path: &Path) -> Result<Map> {
    let data = MapData::from_pin(path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
}

fn key_of(proto: Protocol, port: u16) -> RuleKey {
    RuleKey::new(proto.number(), port)
}

fn slot_of(proto: Protocol, port: u16) -> u32 {
    // Protocol only has filtered variants, so the plane always exists.
    rule_slot(proto_plane(proto.number()).unwrap_or(0), port)
}

fn allow_key_v4(rule: RuleKey, addr: Ipv4Addr, len: u8) -> Key<AllowKeyV4> {
    Key::new(
        ALLOW_RULE_PREFIX_BITS + u32::from(len),
        AllowKeyV4 {
            rule,
            addr: addr.octets(),
        },
    )
}

fn allow_key_v6(rule: RuleKey, addr: Ipv6Addr, len: u8) -> Key<AllowKeyV6> {
    Key::new(
        ALLOW_RULE_PREFIX_BITS + u32::from(len),
        AllowKeyV6 {
            rule,
            addr: addr.octets(),
        },
    )
}

pub(crate) fn is_missing(err: &MapError) -> bool {
    matches!(err, MapError::KeyNotFound)
        || matches!(err, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
}

pub struct RuleTable {
    rules: Array<MapData, Rule>,
    /// The same `RULES`, mapped: reads without a syscall per slot.
    view: MappedArray,
    counters: Counters,
    allow_v4: AllowV4,
    allow_v6: AllowV6,
    origins: HashMap<MapData, RuleKey, RuleOrigin>,
    /// Whether drop events are on: every slot written carries it
    /// (`rule_flags::REPORT`).
    event_config: Array<MapData, EventConfig>,
    /// Own fd of the map read in batches (the typed map keeps its own).
    origins_fd: OwnedFd,
    /// Warned once per table that counters ran out.
    warned_full: bool,
    /// Counter slots in use, from one scan, kept up to date by allocations.
    /// A slot freed meanwhile stays marked until the next `apply` or
    /// `remove` rescans, which only delays its reuse (and spares a batch of
    /// `set_docker` calls a scan each).
    used: Option<BTreeSet<u16>>,
}

/// What a counter slot is shared by: ports next to each other with equal
/// rules and owners. A slot used by two such runs is split.
type Group = (u8, u8, Option<RuleOrigin>);

impl RuleTable {
    pub fn open(pins: &Pins) -> Result<Self> {
        pins.require()?;
        Self::open_dir(&pins.layout_dir())
    }

    /// The table whose maps are pinned in `dir` (a layout being built by a
    /// migration, or the current one).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let view = MappedArray::new(
            bpf::obj_get(&dir.join(MAP_RULES))?.as_fd(),
            size_of::<Rule>(),
            RULE_SLOTS as usize,
            "RULES",
        )?;
        Ok(Self {
            rules: open_map_at(&dir.join(MAP_RULES))?.try_into()?,
            view,
            counters: Counters::open_dir(dir)?,
            allow_v4: open_map_at(&dir.join(MAP_ALLOW_V4))?.try_into()?,
            allow_v6: open_map_at(&dir.join(MAP_ALLOW_V6))?.try_into()?,
            origins: open_map_at(&dir.join(MAP_RULE_ORIGIN))?.try_into()?,
            event_config: open_map_at(&dir.join(MAP_EVENT_CONFIG))?.try_into()?,
            origins_fd: bpf::obj_get(&dir.join(MAP_RULE_ORIGIN))?,
            warned_full: false,
            used: None,
        })
    }

    /// The rule in `slot` as the loader wrote it: without the `REPORT`
    /// bit, which mirrors the event switch, not the rule.
    fn slot(&self, slot: u32) -> Rule {
        let mut rule: Rule = self.view.get(slot as usize);
        rule.flags &= !rule_flags::REPORT;
        rule
    }

    pub fn get(&self, proto: Protocol, port: u16) -> Result<Option<Mode>> {
        Ok(Mode::from_action(self.slot(slot_of(proto, port)).action))
    }

    /// Every non-empty slot, in slot order (protocol, then port).
    fn scan(&self) -> Vec<(u32, Rule)> {
        (0..RULE_SLOTS)
            .filter_map(|slot| {
                let rule = self.slot(slot);
                (rule.action != action::NONE).then_some((slot, rule))
            })
            .collect()
    }

    fn write(&mut self, slot: u32, mut rule: Rule) -> Result<()> {
        // Read each time: `events on` may have switched since this table
        // was opened (both hold the pin lock while they write).
        if rule.action != action::NONE && self.reporting()? {
            rule.flags |= rule_flags::REPORT;
        }
        self.write_exact(slot, rule)
    }

    fn write_exact(&mut self, slot: u32, rule: Rule) -> Result<()> {
        self.rules.set(slot, rule, 0).with_context(|| {
            let (proto, port) = port_of(slot);
            format!("writing rule {port}/{proto} (RULES slot {slot})")
        })
    }

    fn reporting(&self) -> Result<bool> {
        let config = self
            .event_config
            .get(&0, 0)
            .context("reading EVENT_CONFIG (bpf map lookup)")?;
        Ok(config.enabled != 0)
    }

    /// Sets or clears `REPORT` in every rule's slot, after the event switch
    /// changed (under the pin lock). Returns how many slots changed.
    pub fn mark_reporting(&mut self, on: bool) -> Result<usize> {
        let mut changed = 0;
        for (slot, mut rule) in self.scan() {
            if on {
                rule.flags |= rule_flags::REPORT;
            }
            if self.view.get::<Rule>(slot as usize) != rule {
                self.write_exact(slot, rule)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Every origin entry, in one batched read.
    pub(crate) fn all_origins(&self) -> Result<BTreeMap<RuleKey, RuleOrigin>> {
        let (keys, values) = bpf::lookup_batch(
            self.origins_fd.as_fd(),
            size_of::<RuleKey>(),
            size_of::<RuleOrigin>(),
            MAX_ORIGINS,
            "RULE_ORIGIN",
        )?;
        Ok(records::<RuleKey>(&keys)
            .zip(records::<RuleOrigin>(&values))
            .collect())
    }

    /// Every allowlisted prefix, grouped by rule.
    pub(crate) fn allowlists(&self) -> Result<BTreeMap<RuleKey, BTreeSet<Cidr>>> {
        read_allowlists(&self.allow_v4, &self.allow_v6)
    }

    pub(crate) fn insert_prefix(&mut self, rule: RuleKey, cidr: &Cidr) -> Result<()> {
        match cidr.addr() {
            IpAddr::V4(a) => self
                .allow_v4
                .insert(&allow_key_v4(rule, a, cidr.prefix_len()), 1, 0),
            IpAddr::V6(a) => self
                .allow_v6
                .insert(&allow_key_v6(rule, a, cidr.prefix_len()), 1, 0),
        }
        .with_context(|| format!("adding {cidr} to the allowlist (is it full?)"))
    }

    fn remove_prefix(&mut self, rule: RuleKey, cidr: &Cidr) -> Result<()> {
        let res = match cidr.addr() {
            IpAddr::V4(a) => self
                .allow_v4
                .remove(&allow_key_v4(rule, a, cidr.prefix_len())),
            IpAddr::V6(a) => self
                .allow_v6
                .remove(&allow_key_v6(rule, a, cidr.prefix_len())),
        };
        match res {
            Err(e) if !is_missing(&e) => {
                Err(e).with_context(|| format!("removing {cidr} from the allowlist"))
            }
            _ => Ok(()),
        }
    }

    /// Counter slots some rule uses.
    fn used_counters(&self) -> BTreeSet<u16> {
        self.scan()
            .into_iter()
            .map(|(_, r)| r.counter)
            .filter(|&c| c != NO_COUNTER)
            .collect()
    }

    /// A free counter slot, zeroed, or [`NO_COUNTER`] when all are taken
    /// (the rule then blocks uncounted).
    fn alloc_counter(&mut self) -> Result<u16> {
        let used = match self.used.take() {
            Some(used) => used,
            None => self.used_counters(),
        };
        let free = (1..MAX_RULE_COUNTERS as u16).find(|c| !used.contains(c));
        self.used = Some(used);
        let Some(free) = free else {
            if !self.warned_full {
                tracing::warn!(
                    "all {} rule counters are in use: new rules block without a counter (`list` shows them as uncounted)",
                    MAX_RULE_COUNTERS - 1
                );
                self.warned_full = true;
            }
            return Ok(NO_COUNTER);
        };
        self.counters.reset(free)?;
        self.used.get_or_insert_default().insert(free);
        Ok(free)
    }

    /// How many slots use each counter.
    fn counter_use(&self) -> BTreeMap<u16, usize> {
        let mut out = BTreeMap::new();
        for (_, r) in self.scan() {
            if r.counter != NO_COUNTER {
                *out.entry(r.counter).or_insert(0) += 1;
            }
        }
        out
    }

    /// The counter `ps` can keep: the one its ports share when no other
    /// port uses it (blocking a range again keeps its counts).
    fn reusable_counter(&self, ps: &PortSpec, uses: &BTreeMap<u16, usize>) -> Option<u16> {
        let counter = self.slot(slot_of(ps.proto, ps.low)).counter;
        if counter == NO_COUNTER || uses.get(&counter) != Some(&ps.ports().count()) {
            return None;
        }
        ps.ports()
            .all(|p| self.slot(slot_of(ps.proto, p)).counter == counter)
            .then_some(counter)
    }

    /// Sets every port of `specs` to `spec`. Blocking the same ports again
    /// keeps their counter.
    pub fn apply(&mut self, specs: &[PortSpec], spec: &RuleSpec) -> Result<()> {
        self.used = None;
        let mut allowlists = self.allowlists()?;
        let mut uses = self.counter_use();
        for ps in specs {
            let counter = match self.reusable_counter(ps, &uses) {
                Some(c) => c,
                None => self.alloc_counter()?,
            };
            for port in ps.ports() {
                let key = key_of(ps.proto, port);
                let old = allowlists.remove(&key).unwrap_or_default();
                for cidr in spec.allow_from.difference(&old) {
                    self.insert_prefix(key, cidr)?;
                }
                let rule = Rule {
                    action: spec.mode.action(),
                    flags: if spec.allow_from.is_empty() {
                        0
                    } else {
                        rule_flags::HAS_ALLOWLIST
                    },
                    counter,
                };
                let slot = slot_of(ps.proto, port);
                let before = self.slot(slot).counter;
                if let Some(n) = uses.get_mut(&before) {
                    *n -= 1;
                }
                *uses.entry(counter).or_insert(0) += 1;
                self.write(slot, rule)?;
                for cidr in old.difference(&spec.allow_from) {
                    self.remove_prefix(key, cidr)?;
                }
                if let Some(mut origin) = self.origin(&key)? {
                    origin.manual = rule.action;
                    self.put_origin(key, &origin)?;
                }
            }
        }
        self.normalize()
    }

    fn origin(&self, key: &RuleKey) -> Result<Option<RuleOrigin>> {
        match self.origins.get(key, 0) {
            Ok(origin) => Ok(Some(origin)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e).context("reading RULE_ORIGIN"),
        }
    }

    pub(crate) fn put_origin(&mut self, key: RuleKey, origin: &RuleOrigin) -> Result<()> {
        self.origins
            .insert(key, *origin, 0)
            .context("writing RULE_ORIGIN (is it full?)")
    }

    fn drop_origin(&mut self, key: &RuleKey) -> Result<()> {
        match self.origins.remove(key) {
            Err(e) if !is_missing(&e) => Err(e).context("removing from RULE_ORIGIN"),
            _ => Ok(()),
        }
    }

    /// Writes a slot as a migration carries it over (rule and counter slot
    /// already decided).
    pub(crate) fn put_rule(&mut self, proto: Protocol, port: u16, rule: Rule) -> Result<()> {
        self.write(slot_of(proto, port), rule)
    }

    /// Gives each counter slot to one rule: when a change left one slot on
    /// ports that are no longer one rule (part of a range unblocked, an
    /// owner added to some of its ports), the later parts get slots of
    /// their own. Callers of [`RuleTable::set_docker`] call it once after
    /// their batch of changes; `apply` and `remove` call it themselves.
    pub fn normalize(&mut self) -> Result<()> {
        let origins = self.all_origins()?;
        let items: Vec<(u32, u16, Group)> = self
            .scan()
            .into_iter()
            .map(|(slot, r)| {
                let (proto, port) = port_of(slot);
                let origin = origins.get(&key_of(proto, port)).copied();
                (slot, r.counter, (r.action, r.flags, origin))
            })
            .collect();
        for run in split_plan(&items) {
            let counter = self.alloc_counter()?;
            for slot in run {
                let rule = Rule {
                    counter,
                    ..self.slot(slot)
                };
                self.write(slot, rule)?;
            }
        }
        Ok(())
    }

    /// Records what the agent's policy wants for one port: `Some` blocks it
    /// (unless a manual rule decides the slot), `None` withdraws the agent's
    /// wish (the port opens unless a manual rule holds it).
    pub fn set_docker(
        &mut self,
        proto: Protocol,
        port: u16,
        want: Option<&DockerRule>,
    ) -> Result<()> {
        let key = key_of(proto, port);
        let slot = slot_of(proto, port);
        let current = self.slot(slot);
        let origin = self.origin(&key)?;
        match want {
            Some(rule) => {
                let mut origin = origin.unwrap_or(RuleOrigin {
                    // A slot with no origin entry is a manual rule.
                    manual: current.action,
                    ..RuleOrigin::default()
                });
                origin.docker = action::BLOCK;
                origin.service = to_fixed::<ORIGIN_SERVICE_LEN>(&rule.service);
                origin.why = to_fixed::<ORIGIN_WHY_LEN>(&rule.why);
                self.put_origin(key, &origin)?;
                if origin.manual == action::NONE {
                    let counter = if current.action == action::BLOCK {
                        current.counter
                    } else {
                        self.alloc_counter()?
                    };
                    let block = Rule {
                        action: action::BLOCK,
                        flags: 0,
                        counter,
                    };
                    self.write(slot, block)?;
                }
            }
            None => {
                let Some(mut origin) = origin else {
                    return Ok(());
                };
                if origin.manual == action::NONE {
                    self.write(slot, Rule::default())?;
                    self.drop_origin(&key)?;
                } else {
                    origin.docker = action::NONE;
                    origin.service = [0; ORIGIN_SERVICE_LEN];
                    origin.why = [0; ORIGIN_WHY_LEN];
                    self.put_origin(key, &origin)?;
                }
            }
        }
        Ok(())
    }

    /// The rules the agent currently owns.
    pub fn docker_rules(&self) -> Result<BTreeMap<(Protocol, u16), DockerRule>> {
        let mut out = BTreeMap::new();
        for (key, origin) in self.all_origins()? {
            if origin.docker == action::NONE {
                continue;
            }
            if let Some(proto) = Protocol::from_number(key.proto) {
                out.insert(
                    (proto, key.port),
                    DockerRule {
                        service: from_fixed(&origin.service),
                        why: from_fixed(&origin.why),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Removes the manual rules of every port of `specs`. Ports the agent's
    /// policy blocks stay blocked (its rule takes the slot back); they are
    /// returned with their reason. Also returns how many manual rules existed.
    pub fn remove(&mut self, specs: &[PortSpec]) -> Result<Removal> {
        self.used = None;
        let mut allowlists = self.allowlists()?;
        let mut removal = Removal::default();
        for ps in specs {
            for port in ps.ports() {
                let key = key_of(ps.proto, port);
                let slot = slot_of(ps.proto, port);
                let origin = self.origin(&key)?;
                let manual = match &origin {
                    Some(o) => o.manual != action::NONE,
                    None => self.slot(slot).action != action::NONE,
                };
                if manual {
                    removal.manual_rules += 1;
                }
                match origin {
                    Some(mut origin) if origin.docker != action::NONE => {
                        let counter = if manual {
                            self.alloc_counter()?
                        } else {
                            self.slot(slot).counter
                        };
                        let docker = Rule {
                            action: origin.docker,
                            flags: 0,
                            counter,
                        };
                        self.write(slot, docker)?;
                        origin.manual = action::NONE;
                        self.put_origin(key, &origin)?;
                        removal.kept_by_docker.push((
                            PortSpec::single(ps.proto, port),
                            DockerRule {
                                service: from_fixed(&origin.service),
                                why: from_fixed(&origin.why),
                            },
                        ));
                    }
                    origin => {
                        self.write(slot, Rule::default())?;
                        if origin.is_some() {
                            self.drop_origin(&key)?;
                        }
                    }
                }
                for cidr in allowlists.remove(&key).unwrap_or_default() {
                    self.remove_prefix(key, &cidr)?;
                }
            }
        }
        self.normalize()?;
        Ok(removal)
    }

    /// What the counter chunks hold now: read once, it serves both
    /// [`RuleTable::list_with`] and the attach points' drops
    /// ([`crate::attach::Registry::counters_with`]).
    pub fn tally(&self) -> Result<Tally> {
        self.counters.tally()
    }

    /// Every port's rule, ordered by protocol then port.
    pub fn list(&self) -> Result<Vec<RuleEntry>> {
        self.list_with(&self.tally()?)
    }

    /// [`RuleTable::list`] with the counts in `tally`.
    pub fn list_with(&self, tally: &Tally) -> Result<Vec<RuleEntry>> {
        let slots = self.scan();
        let origins = self.all_origins()?;
        let allowlists = if slots
            .iter()
            .any(|(_, r)| r.flags & rule_flags::HAS_ALLOWLIST != 0)
        {
            self.allowlists()?
        } else {
            BTreeMap::new()
        };
        let sums = self.counters.rule_counts(tally)?;
        let mut out = Vec::with_capacity(slots.len());
        for (slot, rule) in slots {
            let Some(mode) = Mode::from_action(rule.action) else {
                continue;
            };
            let (proto, port) = port_of(slot);
            let key = key_of(proto, port);
            let origin = match origins.get(&key) {
                None => Origin {
                    manual: true,
                    ..Origin::default()
                },
                Some(o) => Origin {
                    manual: o.manual != action::NONE,
                    service: (o.docker != action::NONE).then(|| from_fixed(&o.service)),
                    why: (o.docker != action::NONE).then(|| from_fixed(&o.why)),
                },
            };
            let counted = rule.counter != NO_COUNTER;
            let counts = if counted {
                sums[rule.counter as usize]
            } else {
                RuleCounters::default()
            };
            out.push(RuleEntry {
                proto,
                port,
                mode,
                allow_from: allowlists
                    .get(&key)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default(),
                counted,
                packets: counts.packets,
                bytes: counts.bytes,
                origin,
                counter: rule.counter,
            });
        }
        Ok(out)
    }

    /// Rules as the operator sees them: ranges folded, one counter each.
    pub fn ranges(&self) -> Result<Vec<RuleRange>> {
        self.ranges_with(&self.tally()?)
    }

    /// [`RuleTable::ranges`] with the counts in `tally`.
    pub fn ranges_with(&self, tally: &Tally) -> Result<Vec<RuleRange>> {
        Ok(fold_ranges(&self.list_with(tally)?))
    }
}

pub(crate) type AllowV4 = LpmTrie<MapData, AllowKeyV4, u8>;
pub(crate) type AllowV6 = LpmTrie<MapData, AllowKeyV6, u8>;

/// Every prefix of a pair of allowlist tries, grouped by rule (layouts 1
/// and 2 share the key format).
pub(crate) fn read_allowlists(
    v4: &AllowV4,
    v6: &AllowV6,
) -> Result<BTreeMap<RuleKey, BTreeSet<Cidr>>> {
    let mut out: BTreeMap<RuleKey, BTreeSet<Cidr>> = BTreeMap::new();
    let mut add = |rule: RuleKey, addr: IpAddr, prefix_len: u32| {
        let len = prefix_len.saturating_sub(ALLOW_RULE_PREFIX_BITS) as u8;
        if let Some(c) = Cidr::new(addr, len) {
            out.entry(rule).or_default().insert(c);
        }
    };
    for key in v4.keys() {
        let key = key.context("iterating ALLOW_V4")?;
        add(
            key.data().rule,
            IpAddr::from(key.data().addr),
            key.prefix_len(),
        );
    }
    for key in v6.keys() {
        let key = key.context("iterating ALLOW_V6")?;
        add(
            key.data().rule,
            IpAddr::from(key.data().addr),
            key.prefix_len(),
        );
    }
    Ok(out)
}

/// The (protocol, port) of a `RULES` slot.
pub(crate) fn port_of(slot: u32) -> (Protocol, u16) {
    let proto = match slot >> 16 {
        0 => Protocol::Tcp,
        1 => Protocol::Udp,
        _ => Protocol::Sctp,
    };
    (proto, (slot & 0xFFFF) as u16)
}

/// Which runs of slots need a counter of their own (pure; unit-tested).
/// `items` are (slot, counter, group) in slot order; a run is consecutive
/// slots with the same counter and group. The first run of each counter
/// keeps it; every later run is returned. Uncounted slots stay uncounted.
pub fn split_plan<G: PartialEq>(items: &[(u32, u16, G)]) -> Vec<Vec<u32>> {
    let mut seen: BTreeSet<u16> = BTreeSet::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let (start, counter, group) = (&items[i].0, items[i].1, &items[i].2);
        let mut j = i + 1;
        while j < items.len()
            && items[j].0 == items[j - 1].0 + 1
            && items[j].1 == counter
            && items[j].2 == *group
        {
            j += 1;
        }
        if counter != NO_COUNTER && !seen.insert(counter) {
            out.push(items[i..j].iter().map(|it| it.0).collect());
        }
        let _ = start;
        i = j;
    }
    out
}

/// What [`RuleTable::remove`] did.
#[derive(Debug, Default)]
pub struct Removal {
    /// Manual rules that existed among the ports.
    pub manual_rules: usize,
    /// Ports that stay blocked because the agent's policy wants them.
    pub kept_by_docker: Vec<(PortSpec, DockerRule)>,
}

/// A rule as the operator sees it: consecutive ports of one protocol that
/// share a counter (or, uncounted, the same mode, allowlist and owners).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRange {
    pub proto: Protocol,
    pub low: u16,
    pub high: u16,
    pub mode: Mode,
    pub allow_from: Vec<Cidr>,
    /// False when the counter table was full as the rule was made: it
    /// blocks all the same, but `packets` and `bytes` stay 0.
    pub counted: bool,
    pub packets: u64,
    pub bytes: u64,
    pub origin: Origin,
}

impl RuleRange {
    pub fn spec(&self) -> PortSpec {
        PortSpec {
            proto: self.proto,
            low: self.low,
            high: self.high,
        }
    }
}

/// Folds sorted entries into rules (pure; unit-tested). The ports of one
/// counter are one rule, counted once.
pub fn fold_ranges(entries: &[RuleEntry]) -> Vec<RuleRange> {
    let mut out: Vec<(u16, RuleRange)> = Vec::new();
    for e in entries {
        if let Some((counter, last)) = out.last_mut()
            && last.proto == e.proto
            && u32::from(last.high) + 1 == u32::from(e.port)
            && *counter == e.counter
            && last.mode == e.mode
            && last.allow_from == e.allow_from
            && last.origin == e.origin
        {
            last.high = e.port;
            continue;
        }
        out.push((
            e.counter,
            RuleRange {
                proto: e.proto,
                low: e.port,
                high: e.port,
                mode: e.mode,
                allow_from: e.allow_from.clone(),
                counted: e.counted,
                packets: e.packets,
                bytes: e.bytes,
                origin: e.origin.clone(),
            },
        ));
    }
    out.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: Protocol, port: u16, mode: Mode, counter: u16) -> RuleEntry {
        RuleEntry {
            proto,
            port,
            mode,
            allow_from: vec![],
            counted: counter != NO_COUNTER,
            packets: u64::from(counter) * 10,
            bytes: u64::from(counter) * 600,
            origin: Origin::default(),
            counter,
        }
    }

    #[test]
    fn a_counter_is_one_rule_counted_once() {
        let entries = vec![
            entry(Protocol::Tcp, 80, Mode::Block, 1),
            entry(Protocol::Tcp, 81, Mode::Block, 1),
            entry(Protocol::Tcp, 82, Mode::Block, 2),
            entry(Protocol::Tcp, 84, Mode::Audit, 3),
            entry(Protocol::Udp, 85, Mode::Audit, 4),
        ];
        let ranges = fold_ranges(&entries);
        assert_eq!(ranges.len(), 4);
        assert_eq!(
            (ranges[0].low, ranges[0].high, ranges[0].packets),
            (80, 81, 10)
        );
        assert_eq!(ranges[0].spec().to_string(), "80-81/tcp");
        assert_eq!((ranges[1].low, ranges[1].high), (82, 82));
        assert_eq!((ranges[2].low, ranges[3].proto), (84, Protocol::Udp));
    }

    #[test]
    fn uncounted_ports_fold_by_their_rule() {
        let ranges = fold_ranges(&[
            entry(Protocol::Tcp, 80, Mode::Block, NO_COUNTER),
            entry(Protocol::Tcp, 81, Mode::Block, NO_COUNTER),
            entry(Protocol::Tcp, 82, Mode::Block, 7),
        ]);
        assert_eq!(ranges.len(), 2);
        assert!(!ranges[0].counted);
        assert_eq!(
            (ranges[0].low, ranges[0].high, ranges[0].packets),
            (80, 81, 0)
        );
        assert!(ranges[1].counted);
    }

    #[test]
    fn different_allowlists_do_not_fold() {
        let mut a = entry(Protocol::Tcp, 80, Mode::Block, 0);
        let b = entry(Protocol::Tcp, 81, Mode::Block, 0);
        a.allow_from = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(fold_ranges(&[a, b]).len(), 2);
    }

    #[test]
    fn last_port_does_not_overflow() {
        let ranges = fold_ranges(&[
            entry(Protocol::Tcp, 65535, Mode::Block, 0),
            entry(Protocol::Udp, 1, Mode::Block, 0),
        ]);
        assert_eq!(ranges.len(), 2);
    }

    #[test]
    fn split_plan_gives_later_runs_their_own_counter() {
        // 100-102 share counter 1, 101 unblocked: 102 needs a new one.
        let items = [(100, 1, 'a'), (102, 1, 'a'), (103, 2, 'a')];
        assert_eq!(split_plan(&items), vec![vec![102]]);
        // An owner added to the middle port splits it out, and the tail too.
        let items = [(100, 1, 'a'), (101, 1, 'b'), (102, 1, 'a')];
        assert_eq!(split_plan(&items), vec![vec![101], vec![102]]);
        // One run: nothing to do; uncounted slots are never split.
        assert!(split_plan(&[(5, 3, 'a'), (6, 3, 'a')]).is_empty());
        assert!(split_plan(&[(5, 0, 'a'), (9, 0, 'b')]).is_empty());
    }

    #[test]
    fn slots_map_back_to_ports() {
        for (proto, port) in [
            (Protocol::Tcp, 1),
            (Protocol::Udp, 8080),
            (Protocol::Sctp, 65535),
        ] {
            assert_eq!(port_of(slot_of(proto, port)), (proto, port));
        }
    }
}
