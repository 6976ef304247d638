//! The rule table: a typed view of the pinned `RULES`, `RULE_STATS` and
//! allowlist maps.
//!
//! Changes are ordered so that a port that stays blocked is never open in
//! between: a new allowlist is filled before the rule points at it, and old
//! prefixes go only after the rule stopped using them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use aya::maps::{
    Array, HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use ingress_xdp_common::{
    ALLOW_RULE_PREFIX_BITS, AllowKeyV4, AllowKeyV6, ORIGIN_SERVICE_LEN, ORIGIN_WHY_LEN, Rule,
    RuleCounters, RuleKey, RuleOrigin, action, proto_plane, rule_flags, rule_slot,
};
use serde::Serialize;

use crate::{
    cidr::Cidr,
    fixed::{from_fixed, to_fixed},
    pins::{MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_RULE_ORIGIN, MAP_RULE_STATS, MAP_RULES, Pins},
    spec::{PortSpec, Protocol},
    sys,
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

/// One rule as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleEntry {
    pub proto: Protocol,
    pub port: u16,
    pub mode: Mode,
    pub allow_from: Vec<Cidr>,
    pub packets: u64,
    pub bytes: u64,
    pub origin: Origin,
}

pub(crate) fn open_map(pins: &Pins, name: &str) -> Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
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

fn is_missing(err: &MapError) -> bool {
    matches!(err, MapError::KeyNotFound)
        || matches!(err, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
}

pub struct RuleTable {
    rules: Array<MapData, Rule>,
    stats: PerCpuHashMap<MapData, RuleKey, RuleCounters>,
    allow_v4: LpmTrie<MapData, AllowKeyV4, u8>,
    allow_v6: LpmTrie<MapData, AllowKeyV6, u8>,
    origins: HashMap<MapData, RuleKey, RuleOrigin>,
    cpus: usize,
}

impl RuleTable {
    pub fn open(pins: &Pins) -> Result<Self> {
        pins.require()?;
        let cpus = sys::possible_cpus()?;
        Ok(Self {
            rules: open_map(pins, MAP_RULES)?.try_into()?,
            stats: open_map(pins, MAP_RULE_STATS)?.try_into()?,
            allow_v4: open_map(pins, MAP_ALLOW_V4)?.try_into()?,
            allow_v6: open_map(pins, MAP_ALLOW_V6)?.try_into()?,
            origins: open_map(pins, MAP_RULE_ORIGIN)?.try_into()?,
            cpus,
        })
    }

    pub fn get(&self, proto: Protocol, port: u16) -> Result<Option<Mode>> {
        let rule = self
            .rules
            .get(&slot_of(proto, port), 0)
            .with_context(|| format!("reading rule {port}/{proto}"))?;
        Ok(Mode::from_action(rule.action))
    }

    /// Every allowlisted prefix, grouped by rule.
    fn allowlists(&self) -> Result<BTreeMap<RuleKey, BTreeSet<Cidr>>> {
        let mut out: BTreeMap<RuleKey, BTreeSet<Cidr>> = BTreeMap::new();
        for key in self.allow_v4.keys() {
            let key = key.context("iterating ALLOW_V4")?;
            let data = key.data();
            let len = key.prefix_len().saturating_sub(ALLOW_RULE_PREFIX_BITS) as u8;
            if let Some(c) = Cidr::new(IpAddr::from(data.addr), len) {
                out.entry(data.rule).or_default().insert(c);
            }
        }
        for key in self.allow_v6.keys() {
            let key = key.context("iterating ALLOW_V6")?;
            let data = key.data();
            let len = key.prefix_len().saturating_sub(ALLOW_RULE_PREFIX_BITS) as u8;
            if let Some(c) = Cidr::new(IpAddr::from(data.addr), len) {
                out.entry(data.rule).or_default().insert(c);
            }
        }
        Ok(out)
    }

    fn insert_prefix(&mut self, rule: RuleKey, cidr: &Cidr) -> Result<()> {
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

    /// Sets every port of `specs` to `spec`. Existing counters are kept.
    pub fn apply(&mut self, specs: &[PortSpec], spec: &RuleSpec) -> Result<()> {
        let mut allowlists = self.allowlists()?;
        for ps in specs {
            for port in ps.ports() {
                let key = key_of(ps.proto, port);
                let old = allowlists.remove(&key).unwrap_or_default();
                for cidr in spec.allow_from.difference(&old) {
                    self.insert_prefix(key, cidr)?;
                }
                self.ensure_counters(key)?;
                let rule = Rule {
                    action: spec.mode.action(),
                    flags: if spec.allow_from.is_empty() {
                        0
                    } else {
                        rule_flags::HAS_ALLOWLIST
                    },
                    reserved: 0,
                };
                self.rules
                    .set(slot_of(ps.proto, port), rule, 0)
                    .with_context(|| format!("writing rule {port}/{}", ps.proto))?;
                for cidr in old.difference(&spec.allow_from) {
                    self.remove_prefix(key, cidr)?;
                }
                if let Some(mut origin) = self.origin(&key)? {
                    origin.manual = rule.action;
                    self.put_origin(key, &origin)?;
                }
            }
        }
        Ok(())
    }

    fn origin(&self, key: &RuleKey) -> Result<Option<RuleOrigin>> {
        match self.origins.get(key, 0) {
            Ok(origin) => Ok(Some(origin)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e).context("reading RULE_ORIGIN"),
        }
    }

    fn put_origin(&mut self, key: RuleKey, origin: &RuleOrigin) -> Result<()> {
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

    fn ensure_counters(&mut self, key: RuleKey) -> Result<()> {
        if self.stats.get(&key, 0).is_err() {
            let zero = PerCpuValues::try_from(vec![RuleCounters::default(); self.cpus])
                .context("building per-CPU zero counters")?;
            // Counters are best effort: a full counter map must not stop a block.
            if let Err(e) = self.stats.insert(key, zero, 0) {
                tracing::warn!("no counters for {}/{}: {e}", key.port, key.proto);
            }
        }
        Ok(())
    }

    fn drop_counters(&mut self, key: &RuleKey) -> Result<()> {
        match self.stats.remove(key) {
            Err(e) if !is_missing(&e) => Err(e).context("removing rule counters"),
            _ => Ok(()),
        }
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
        let current = self.rules.get(&slot, 0).context("reading RULES")?;
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
                    self.ensure_counters(key)?;
                    let block = Rule {
                        action: action::BLOCK,
                        flags: 0,
                        reserved: 0,
                    };
                    self.rules
                        .set(slot, block, 0)
                        .with_context(|| format!("writing rule {port}/{proto}"))?;
                }
            }
            None => {
                let Some(mut origin) = origin else {
                    return Ok(());
                };
                if origin.manual == action::NONE {
                    self.rules
                        .set(slot, Rule::default(), 0)
                        .with_context(|| format!("clearing rule {port}/{proto}"))?;
                    self.drop_counters(&key)?;
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
        for item in self.origins.iter() {
            let (key, origin) = item.context("iterating RULE_ORIGIN")?;
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
        let mut allowlists = self.allowlists()?;
        let mut removal = Removal::default();
        for ps in specs {
            for port in ps.ports() {
                let key = key_of(ps.proto, port);
                let slot = slot_of(ps.proto, port);
                let origin = self.origin(&key)?;
                let manual = match &origin {
                    Some(o) => o.manual != action::NONE,
                    None => self.get(ps.proto, port)?.is_some(),
                };
                if manual {
                    removal.manual_rules += 1;
                }
                match origin {
                    Some(mut origin) if origin.docker != action::NONE => {
                        let docker = Rule {
                            action: origin.docker,
                            flags: 0,
                            reserved: 0,
                        };
                        self.rules
                            .set(slot, docker, 0)
                            .with_context(|| format!("writing rule {port}/{}", ps.proto))?;
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
                        self.rules
                            .set(slot, Rule::default(), 0)
                            .with_context(|| format!("clearing rule {port}/{}", ps.proto))?;
                        self.drop_counters(&key)?;
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
        Ok(removal)
    }

    fn counters(&self, key: &RuleKey) -> RuleCounters {
        self.stats
            .get(key, 0)
            .map(|values| {
                values
                    .iter()
                    .fold(RuleCounters::default(), |acc, v| RuleCounters {
                        packets: acc.packets + v.packets,
                        bytes: acc.bytes + v.bytes,
                    })
            })
            .unwrap_or_default()
    }

    /// Every rule, ordered by protocol then port.
    pub fn list(&self) -> Result<Vec<RuleEntry>> {
        let allowlists = self.allowlists()?;
        let mut out = Vec::new();
        for proto in Protocol::ALL {
            for port in 1..=u16::MAX {
                let rule = self
                    .rules
                    .get(&slot_of(proto, port), 0)
                    .with_context(|| format!("reading rule {port}/{proto}"))?;
                let Some(mode) = Mode::from_action(rule.action) else {
                    continue;
                };
                let key = key_of(proto, port);
                let counters = self.counters(&key);
                let origin = match self.origin(&key)? {
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
                out.push(RuleEntry {
                    proto,
                    port,
                    mode,
                    allow_from: allowlists
                        .get(&key)
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default(),
                    packets: counters.packets,
                    bytes: counters.bytes,
                    origin,
                });
            }
        }
        out.sort_by_key(|e| (e.proto, e.port));
        Ok(out)
    }
}

/// What [`RuleTable::remove`] did.
#[derive(Debug, Default)]
pub struct Removal {
    /// Manual rules that existed among the ports.
    pub manual_rules: usize,
    /// Ports that stay blocked because the agent's policy wants them.
    pub kept_by_docker: Vec<(PortSpec, DockerRule)>,
}

/// Consecutive ports of one protocol with the same mode and allowlist,
/// folded into a range for display; counters are summed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRange {
    pub proto: Protocol,
    pub low: u16,
    pub high: u16,
    pub mode: Mode,
    pub allow_from: Vec<Cidr>,
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

/// Folds sorted entries into ranges (pure; unit-tested).
pub fn fold_ranges(entries: &[RuleEntry]) -> Vec<RuleRange> {
    let mut out: Vec<RuleRange> = Vec::new();
    for e in entries {
        if let Some(last) = out.last_mut()
            && last.proto == e.proto
            && u32::from(last.high) + 1 == u32::from(e.port)
            && last.mode == e.mode
            && last.allow_from == e.allow_from
            && last.origin == e.origin
        {
            last.high = e.port;
            last.packets += e.packets;
            last.bytes += e.bytes;
            continue;
        }
        out.push(RuleRange {
            proto: e.proto,
            low: e.port,
            high: e.port,
            mode: e.mode,
            allow_from: e.allow_from.clone(),
            packets: e.packets,
            bytes: e.bytes,
            origin: e.origin.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: Protocol, port: u16, mode: Mode, packets: u64) -> RuleEntry {
        RuleEntry {
            proto,
            port,
            mode,
            allow_from: vec![],
            packets,
            bytes: packets * 60,
            origin: Origin::default(),
        }
    }

    #[test]
    fn folds_consecutive_ports_with_equal_rules() {
        let entries = vec![
            entry(Protocol::Tcp, 80, Mode::Block, 1),
            entry(Protocol::Tcp, 81, Mode::Block, 2),
            entry(Protocol::Tcp, 82, Mode::Audit, 0),
            entry(Protocol::Tcp, 84, Mode::Audit, 0),
            entry(Protocol::Udp, 85, Mode::Audit, 0),
        ];
        let ranges = fold_ranges(&entries);
        assert_eq!(ranges.len(), 4);
        assert_eq!(
            (ranges[0].low, ranges[0].high, ranges[0].packets),
            (80, 81, 3)
        );
        assert_eq!(ranges[0].spec().to_string(), "80-81/tcp");
        assert_eq!((ranges[1].low, ranges[1].high), (82, 82));
        assert_eq!((ranges[2].low, ranges[3].proto), (84, Protocol::Udp));
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
}
