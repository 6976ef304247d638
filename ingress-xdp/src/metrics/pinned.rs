//! The pinned state as metrics, read from bpffs at every scrape: per rule,
//! per attach point, and map pressure. [`Snapshot::read`] does the syscalls;
//! [`Snapshot::encode`] is pure.

use std::collections::{BTreeMap, BTreeSet};

use ingress_xdp_common::{MAX_ALLOW_PREFIXES, MAX_ATTACH_POINTS, MAX_RULE_COUNTERS, RULE_SLOTS};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::{
    attach::{AttachPoint, NetnsHere, PointCounters, Registry},
    pins::Pins,
    rules::{Mode, RuleRange, RuleTable},
};

/// Default cap on per-rule series (`--metrics-max-rules`).
pub const DEFAULT_MAX_RULE_SERIES: usize = 500;

type Labels = Vec<(&'static str, String)>;

/// One attach point's labels and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointSample {
    pub iface: String,
    /// The namespace as this process opens it; "host" for its own.
    pub netns: String,
    pub hook: String,
    /// "native", "generic", or "none" (TC).
    pub xdp_mode: String,
    /// The build of the program running there.
    pub build: String,
    pub counters: PointCounters,
}

/// A rule's labels and counters (one series per rule, a range included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSample {
    pub protocol: String,
    /// "80" or "30000-32767"; "other" for the rules beyond the cap.
    pub port: String,
    pub mode: String,
    /// "manual", "agent" or "both".
    pub origin: String,
    pub packets: u64,
    pub bytes: u64,
}

/// used/capacity of one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pressure {
    pub map: &'static str,
    pub used: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub points: Vec<PointSample>,
    pub rules: Vec<RuleSample>,
    /// Rules in the map by mode (every rule, counted or not).
    pub rules_by_mode: BTreeMap<String, u64>,
    /// Rules that block without a counter (the counter table was full).
    pub uncounted: u64,
    pub pressure: Vec<Pressure>,
}

fn origin_label(r: &RuleRange) -> &'static str {
    match (r.origin.manual, r.origin.service.is_some()) {
        (true, true) => "both",
        (false, true) => "agent",
        _ => "manual",
    }
}

fn mode_label(m: Mode) -> &'static str {
    match m {
        Mode::Block => "block",
        Mode::Audit => "audit",
    }
}

impl Snapshot {
    pub fn read(pins: &Pins) -> anyhow::Result<Self> {
        let registry = Registry::open(pins)?;
        let table = RuleTable::open(pins)?;
        let mut points = Vec::new();
        let tally = table.tally()?;
        for point in registry.points()? {
            points.push(point_sample(
                &point,
                registry.counters_with(point.id, &tally)?,
            ));
        }
        let entries = table.list_with(&tally)?;
        let counters: BTreeSet<u16> = entries
            .iter()
            .filter(|e| e.counted)
            .map(|e| e.counter)
            .collect();
        let prefixes: usize = entries.iter().map(|e| e.allow_from.len()).sum();
        let ranges = crate::rules::fold_ranges(&entries);
        let pressure = vec![
            Pressure {
                map: "rule_slots",
                used: entries.len() as u64,
                capacity: u64::from(RULE_SLOTS),
            },
            Pressure {
                map: "rule_counters",
                used: counters.len() as u64,
                // Slot 0 means "no counter".
                capacity: u64::from(MAX_RULE_COUNTERS - 1),
            },
            Pressure {
                map: "allow_prefixes",
                used: prefixes as u64,
                // IPv4 and IPv6 tries, each this size.
                capacity: 2 * u64::from(MAX_ALLOW_PREFIXES),
            },
            Pressure {
                map: "attach_points",
                used: points.len() as u64,
                capacity: u64::from(MAX_ATTACH_POINTS),
            },
        ];
        Ok(Self::from_parts(points, &ranges, pressure))
    }

    /// The samples of `ranges` (pure).
    pub fn from_parts(
        points: Vec<PointSample>,
        ranges: &[RuleRange],
        pressure: Vec<Pressure>,
    ) -> Self {
        let mut rules_by_mode = BTreeMap::new();
        for r in ranges {
            *rules_by_mode
                .entry(mode_label(r.mode).to_string())
                .or_insert(0) += 1;
        }
        let rules = ranges
            .iter()
            .filter(|r| r.counted)
            .map(|r| RuleSample {
                protocol: r.proto.to_string(),
                port: if r.low == r.high {
                    r.low.to_string()
                } else {
                    format!("{}-{}", r.low, r.high)
                },
                mode: mode_label(r.mode).to_string(),
                origin: origin_label(r).to_string(),
                packets: r.packets,
                bytes: r.bytes,
            })
            .collect();
        Self {
            points,
            rules,
            rules_by_mode,
            uncounted: ranges.iter().filter(|r| !r.counted).count() as u64,
            pressure,
        }
    }

    /// At most `max` rule series: the rest is summed per protocol, mode and
    /// origin under port="other", so totals stay exact (pure).
    pub fn capped_rules(&self, max: usize) -> Vec<RuleSample> {
        if self.rules.len() <= max {
            return self.rules.clone();
        }
        let mut out: Vec<RuleSample> = self.rules[..max].to_vec();
        let mut rest: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
        for r in &self.rules[max..] {
            let sum = rest
                .entry((r.protocol.clone(), r.mode.clone(), r.origin.clone()))
                .or_default();
            sum.0 += r.packets;
            sum.1 += r.bytes;
        }
        for ((protocol, mode, origin), (packets, bytes)) in rest {
            out.push(RuleSample {
                protocol,
                port: "other".into(),
                mode,
                origin,
                packets,
                bytes,
            });
        }
        out
    }

    pub fn encode(
        &self,
        encoder: &mut DescriptorEncoder,
        max_rules: usize,
    ) -> Result<(), std::fmt::Error> {
        let rules = self.capped_rules(max_rules);
        let rule_labels = |r: &RuleSample| -> Labels {
            vec![
                ("protocol", r.protocol.clone()),
                ("port", r.port.clone()),
                ("mode", r.mode.clone()),
                ("origin", r.origin.clone()),
            ]
        };
        counters(
            encoder,
            "rule_packets",
            "Packets that matched a rule: dropped (mode block) or would-be-dropped (mode audit); \
             a port range is one rule",
            rules.iter().map(|r| (rule_labels(r), r.packets)),
        )?;
        counters(
            encoder,
            "rule_bytes",
            "Bytes (frame lengths) of the packets that matched a rule",
            rules.iter().map(|r| (rule_labels(r), r.bytes)),
        )?;
        gauges(
            encoder,
            "rules",
            "Rules in the map, by mode",
            self.rules_by_mode
                .iter()
                .map(|(mode, n)| (vec![("mode", mode.clone())], *n as i64)),
        )?;
        gauges(
            encoder,
            "rules_uncounted",
            "Rules that block without a counter because the counter table was full",
            [(Labels::new(), self.uncounted as i64)],
        )?;

        let point_labels = |p: &PointSample| -> Labels {
            vec![
                ("iface", p.iface.clone()),
                ("netns", p.netns.clone()),
                ("hook", p.hook.clone()),
                ("xdp_mode", p.xdp_mode.clone()),
                ("build", p.build.clone()),
            ]
        };
        type Field = fn(&PointCounters) -> u64;
        let per_point: [(&str, &str, Field); 6] = [
            (
                "attach_seen_packets",
                "Packets the program saw at this attach point",
                |c| c.seen,
            ),
            (
                "attach_dropped_packets",
                "Packets dropped at this attach point",
                |c| c.dropped,
            ),
            (
                "attach_passed_packets",
                "Packets handed on to the kernel (no rule, allowed, audited or not parsed)",
                |c| c.passed,
            ),
            (
                "attach_not_parsed_packets",
                "Packets passed because their headers could not be judged (not IP, fragments, \
                 too many VLAN tags, truncated)",
                |c| c.not_parsed,
            ),
            (
                "attach_audited_packets",
                "Packets an audit rule matched (passed, counted as would-drop)",
                |c| c.audited,
            ),
            (
                "attach_allowed_packets",
                "Packets to a blocked port passed because the source is in its allowlist",
                |c| c.allowed,
            ),
        ];
        for (name, help, field) in per_point {
            counters(
                encoder,
                name,
                help,
                self.points
                    .iter()
                    .map(|p| (point_labels(p), field(&p.counters))),
            )?;
        }

        gauges(
            encoder,
            "map_entries",
            "Entries in use in a pinned map (rule_slots: ports with a rule; rule_counters; \
             allow_prefixes: allowlist prefixes over both tries; attach_points)",
            self.pressure
                .iter()
                .map(|p| (vec![("map", p.map.to_string())], p.used as i64)),
        )?;
        gauges(
            encoder,
            "map_capacity",
            "Capacity of a pinned map, in the units of ingress_xdp_map_entries",
            self.pressure
                .iter()
                .map(|p| (vec![("map", p.map.to_string())], p.capacity as i64)),
        )
    }
}

fn point_sample(p: &AttachPoint, counters: PointCounters) -> PointSample {
    PointSample {
        iface: p.iface.clone(),
        netns: match p.netns_here() {
            NetnsHere::Current => "host".into(),
            NetnsHere::At(path) => path.display().to_string(),
            NetnsHere::NotVisible => p.netns.clone().unwrap_or_else(|| "host".into()),
        },
        hook: p.hook.to_string(),
        xdp_mode: p
            .mode
            .map(|m| m.to_string())
            .unwrap_or_else(|| "none".into()),
        build: p.build.clone(),
        counters,
    }
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The collector `run` and `metrics` register: a fresh [`Snapshot`] per
/// scrape (the maps are reopened, so a migration is followed), except that
/// a snapshot already read is used for the first.
#[derive(Debug)]
pub struct PinnedState {
    pins: Pins,
    max_rules: usize,
    taken: std::sync::Mutex<Option<Snapshot>>,
}

impl PinnedState {
    pub fn new(pins: Pins, max_rules: usize, taken: Option<Snapshot>) -> Self {
        Self {
            pins,
            max_rules,
            taken: std::sync::Mutex::new(taken),
        }
    }
}

impl Collector for PinnedState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let taken = self.taken.lock().ok().and_then(|mut t| t.take());
        let snapshot = taken.map_or_else(|| Snapshot::read(&self.pins), Ok);
        gauges(
            &mut encoder,
            "pinned_state_up",
            "1 when the pinned maps could be read for this scrape",
            [(Labels::new(), i64::from(snapshot.is_ok()))],
        )?;
        match snapshot {
            Ok(s) => s.encode(&mut encoder, self.max_rules),
            Err(e) => {
                tracing::warn!("metrics: reading {}: {e:#}", self.pins.dir().display());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{rules::Origin, spec::Protocol};
    use prometheus_client::registry::Registry;

    fn range(
        low: u16,
        high: u16,
        mode: Mode,
        manual: bool,
        service: bool,
        packets: u64,
    ) -> RuleRange {
        RuleRange {
            proto: Protocol::Tcp,
            low,
            high,
            mode,
            allow_from: vec![],
            counted: packets != u64::MAX,
            packets: if packets == u64::MAX { 0 } else { packets },
            bytes: packets.wrapping_mul(60),
            origin: Origin {
                manual,
                service: service.then(|| "web".into()),
                why: None,
            },
        }
    }

    #[derive(Debug)]
    struct Fixed(Snapshot, usize);
    impl Collector for Fixed {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            self.0.encode(&mut e, self.1)
        }
    }

    fn text(s: Snapshot, max: usize) -> String {
        let mut r = Registry::with_prefix("ingress_xdp");
        r.register_collector(Box::new(Fixed(s, max)));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn rules_are_one_series_each_with_their_labels() {
        let ranges = [
            range(80, 80, Mode::Block, true, false, 5),
            range(30000, 32767, Mode::Audit, false, true, 7),
            range(8080, 8080, Mode::Block, true, true, 1),
            range(9000, 9000, Mode::Block, true, false, u64::MAX),
        ];
        let s = Snapshot::from_parts(vec![], &ranges, vec![]);
        assert_eq!(s.uncounted, 1);
        let out = text(s, 100);
        assert!(
            out.contains("# TYPE ingress_xdp_rule_packets_total counter"),
            "{out}"
        );
        assert!(
            out.contains(r#"ingress_xdp_rule_packets_total{protocol="tcp",port="30000-32767",mode="audit",origin="agent"} 7"#),
            "{out}"
        );
        assert!(
            out.contains(r#"port="8080",mode="block",origin="both"} 1"#),
            "{out}"
        );
        assert!(out.contains(r#"ingress_xdp_rule_bytes_total{protocol="tcp",port="80",mode="block",origin="manual"} 300"#), "{out}");
        assert!(
            !out.contains(r#"port="9000""#),
            "an uncounted rule has no counter series"
        );
        assert!(
            out.contains(r#"ingress_xdp_rules{mode="block"} 3"#),
            "{out}"
        );
        assert!(out.contains("ingress_xdp_rules_uncounted 1"), "{out}");
    }

    #[test]
    fn the_cap_sums_the_rest_exactly() {
        let ranges: Vec<_> = (1..=10)
            .map(|p| range(p, p, Mode::Block, true, false, u64::from(p)))
            .collect();
        let s = Snapshot::from_parts(vec![], &ranges, vec![]);
        let capped = s.capped_rules(3);
        assert_eq!(capped.len(), 4);
        assert_eq!(capped[3].port, "other");
        assert_eq!(capped[3].packets, (4..=10).sum::<u64>());
        let total: u64 = capped.iter().map(|r| r.packets).sum();
        assert_eq!(total, (1..=10).sum::<u64>());
    }

    #[test]
    fn points_and_pressure() {
        let point = PointSample {
            iface: "eth0".into(),
            netns: "host".into(),
            hook: "xdp".into(),
            xdp_mode: "native".into(),
            build: "0.2.0+abc".into(),
            counters: PointCounters {
                seen: 10,
                dropped: 4,
                passed: 6,
                audited: 1,
                allowed: 2,
                not_parsed: 3,
            },
        };
        let pressure = vec![Pressure {
            map: "rule_counters",
            used: 2,
            capacity: 4096,
        }];
        let out = text(Snapshot::from_parts(vec![point], &[], pressure), 10);
        let labels =
            r#"{iface="eth0",netns="host",hook="xdp",xdp_mode="native",build="0.2.0+abc"}"#;
        for (name, v) in [
            ("seen", 10),
            ("dropped", 4),
            ("passed", 6),
            ("not_parsed", 3),
            ("audited", 1),
            ("allowed", 2),
        ] {
            let line = format!("ingress_xdp_attach_{name}_packets_total{labels} {v}");
            assert!(out.contains(&line), "{line} in {out}");
        }
        assert!(
            out.contains(r#"ingress_xdp_map_entries{map="rule_counters"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"ingress_xdp_map_capacity{map="rule_counters"} 4096"#),
            "{out}"
        );
    }
}
