//! Types shared by the eBPF programs and the loader: map keys, map values and
//! the layout constants both sides must agree on.
//!
//! Everything here is `#[repr(C)]` and free of padding holes the kernel could
//! leave uninitialised, so the loader can read the maps back byte for byte.
#![cfg_attr(not(test), no_std)]

/// IANA protocol numbers of the transports whose destination port we match.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// Number of protocols the rule table has a plane for (tcp, udp, sctp).
pub const PROTO_PLANES: u32 = 3;
/// Entries in the `RULES` array: one per (protocol, port).
pub const RULE_SLOTS: u32 = PROTO_PLANES * 65536;

/// Version of the pinned state's layout (map types, sizes, value layouts).
/// Every change to one of them bumps it and ships a migration.
/// 1: release 0.1.0, maps at the top of the pin directory.
/// 2: per-rule counters in a per-CPU array, build strings, maps in `v2/`,
///    drop events (`EVENTS`, `EVENT_CONFIG`, `EVENT_LIMITER`).
/// 3: rule counters and each point's drop tally share per-CPU chunks
///    (`COUNTERS`, [`CounterChunk`]), zeroed by loader-side bases
///    (`COUNTER_BASE`); maps in `v3/`.
pub const LAYOUT_VERSION: u32 = 3;

/// Attach points one pin directory can hold (host NICs + sbox veths).
pub const MAX_ATTACH_POINTS: u32 = 64;
/// Rule counter slots. Slot 0 is the shared sink of rules that have no
/// counter of their own (the table was full), so the fast path never
/// branches on "has a counter"; 4,096 rules can be counted.
pub const MAX_RULE_COUNTERS: u32 = 4097;
/// Rule counters per [`CounterChunk`] (a power of two: the chunk and the
/// place in it are a shift and a mask of the counter's index).
pub const CHUNK_RULES: u32 = 128;
/// Chunks in `COUNTERS`: enough for every counter slot. Each is 2,560
/// bytes per possible CPU: 82.5 KiB per CPU, 20.6 MiB at 256 CPUs.
pub const COUNTER_CHUNKS: u32 = MAX_RULE_COUNTERS.div_ceil(CHUNK_RULES);
/// The counter slot of an uncounted rule.
pub const NO_COUNTER: u16 = 0;
/// Rules that may have an origin entry (one per port the agent or both
/// owners want).
pub const MAX_ORIGINS: u32 = 65536;
/// Source prefixes across all allowlists, per address family.
pub const MAX_ALLOW_PREFIXES: u32 = 16384;

/// The plane of the rule table a transport protocol uses, or `None` for a
/// protocol we do not filter.
#[inline(always)]
pub fn proto_plane(ip_proto: u8) -> Option<u32> {
    match ip_proto {
        IPPROTO_TCP => Some(0),
        IPPROTO_UDP => Some(1),
        IPPROTO_SCTP => Some(2),
        _ => None,
    }
}

/// Index of (protocol plane, port) in the `RULES` array.
#[inline(always)]
pub fn rule_slot(plane: u32, port: u16) -> u32 {
    (plane << 16) | port as u32
}

/// What a rule does with a matching packet.
pub mod action {
    /// No rule: the slot is empty.
    pub const NONE: u8 = 0;
    /// Drop the packet.
    pub const BLOCK: u8 = 1;
    /// Count the packet as "would drop" and let it through.
    pub const AUDIT: u8 = 2;
}

/// Bits of [`Rule::flags`].
pub mod rule_flags {
    /// Sources in the allowlist tries (keyed by this rule) go through.
    pub const HAS_ALLOWLIST: u8 = 1;
    /// Drop events are on: a copy of `EventConfig::enabled` in every rule
    /// slot, so that with events off a matched packet reads no other map
    /// (live, each map access costs more than the parser). The loader sets
    /// it on every write and on every switch, under the pin lock.
    pub const REPORT: u8 = 2;
}

/// One slot of the `RULES` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub action: u8,
    pub flags: u8,
    /// Counter slot (see [`CounterChunk`]); every port of one rule (a
    /// range) shares it.
    /// [`NO_COUNTER`] when the rule is not counted.
    pub counter: u16,
}

impl Rule {
    /// The slot from its 4 bytes read as one little-endian word (BPF on
    /// x86-64 and arm64 is little-endian).
    #[inline(always)]
    pub const fn from_word(word: u32) -> Self {
        Self {
            action: word as u8,
            flags: (word >> 8) as u8,
            counter: (word >> 16) as u16,
        }
    }
}

/// Key of a rule in the hash-keyed maps (counters, allowlists).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// Destination port, host byte order.
    pub port: u16,
    /// IANA protocol number (6, 17 or 132).
    pub proto: u8,
    pub pad: u8,
}

impl RuleKey {
    pub const fn new(proto: u8, port: u16) -> Self {
        Self {
            port,
            proto,
            pad: 0,
        }
    }
}

/// Packet and byte counts of one rule: drops for `block`, would-be drops
/// for `audit`. Per CPU in a [`CounterChunk`]; a plain sum in
/// `COUNTER_BASE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// One per-CPU value of `COUNTERS`: the counters of [`CHUNK_RULES`] rules
/// and, beside them, each attach point's drops of packets those rules
/// matched. A dropped packet then makes one per-CPU map access, not two
/// (live, each costs more than the whole parser). Counter slot `c` is
/// `rules[c % CHUNK_RULES]` of chunk `c / CHUNK_RULES`.
///
/// The programs only add. A slot is zeroed by the loader recording its
/// current sum as a base (`COUNTER_BASE`, `AttachCounters::dropped`), never
/// by writing the chunk, which running programs update at the same time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterChunk {
    /// Drops per attach point (`ATTACH_ID`), of this chunk's rules.
    pub dropped: [u64; MAX_ATTACH_POINTS as usize],
    pub rules: [RuleCounters; CHUNK_RULES as usize],
}

impl Default for CounterChunk {
    fn default() -> Self {
        Self {
            dropped: [0; MAX_ATTACH_POINTS as usize],
            rules: [RuleCounters::default(); CHUNK_RULES as usize],
        }
    }
}

/// Per-CPU counts of one attach point. The buckets are disjoint: every packet
/// the program sees lands in exactly one, so "seen" is their sum.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachCounters {
    /// Dropped by a `block` rule: kept in `COUNTERS` by the programs. Here
    /// the loader keeps what the point's count starts from: minus the
    /// chunks' tally when the point was made, plus counts a migration
    /// carried over (sums wrap).
    pub dropped: u64,
    /// Parsed and passed: no rule, not a filtered protocol, or a later fragment.
    pub passed: u64,
    /// Passed because the rule is in audit mode.
    pub audited: u64,
    /// Passed because the source is in the rule's allowlist.
    pub allowed: u64,
    /// Malformed or truncated headers: passed to the kernel untouched.
    pub not_parsed: u64,
}

/// LPM-trie key data for an IPv4 source allowlist: the rule, then the address.
/// Lookups use a prefix of 32 + 32 bits, entries 32 + the CIDR length, so
/// the rule part always matches exactly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowKeyV4 {
    pub rule: RuleKey,
    pub addr: [u8; 4],
}

/// LPM-trie key data for an IPv6 source allowlist.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowKeyV6 {
    pub rule: RuleKey,
    pub addr: [u8; 16],
}

/// Bits of the LPM prefix taken by the rule part of an allowlist key.
pub const ALLOW_RULE_PREFIX_BITS: u32 = 32;

/// Which hook an attach point uses ([`AttachInfo::hook`]).
pub mod hook {
    pub const XDP: u8 = 1;
    pub const TC: u8 = 2;
}

/// How an XDP program is attached ([`AttachInfo::xdp_mode`]).
pub mod xdp_mode {
    pub const NONE: u8 = 0;
    pub const NATIVE: u8 = 1;
    pub const GENERIC: u8 = 2;
}

/// Bytes kept of a build identity ("0.2.0+1a2b3c4d5e6f"): the release and a
/// digest of the eBPF object, so that two builds of the same programs agree.
pub const BUILD_LEN: usize = 48;

/// Bytes of an interface name, NUL included (IFNAMSIZ).
pub const IFNAME_LEN: usize = 16;
/// Bytes kept of a network namespace path (NUL padded).
pub const NETNS_PATH_LEN: usize = 256;

/// One slot of `ATTACH_INFO`: where an attach point is, so that `status`,
/// `stats` and `detach` can describe it after the attaching process is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachInfo {
    /// 1 while the slot describes a live (pinned) attach point.
    pub in_use: u8,
    pub hook: u8,
    pub xdp_mode: u8,
    pub pad: u8,
    pub ifindex: u32,
    pub prog_id: u32,
    pub link_id: u32,
    /// Identity of the network namespace (st_dev, st_ino of its nsfs file).
    pub netns_dev: u64,
    pub netns_ino: u64,
    /// Seconds since the Unix epoch.
    pub attached_at: u64,
    pub ifname: [u8; IFNAME_LEN],
    /// Empty for the namespace the loader ran in.
    pub netns_path: [u8; NETNS_PATH_LEN],
    /// Build of the program attached here (NUL padded).
    pub build: [u8; BUILD_LEN],
}

impl Default for AttachInfo {
    fn default() -> Self {
        Self {
            in_use: 0,
            hook: 0,
            xdp_mode: 0,
            pad: 0,
            ifindex: 0,
            prog_id: 0,
            link_id: 0,
            netns_dev: 0,
            netns_ino: 0,
            attached_at: 0,
            ifname: [0; IFNAME_LEN],
            netns_path: [0; NETNS_PATH_LEN],
            build: [0; BUILD_LEN],
        }
    }
}

/// The single slot of `STATE`: what wrote this state (loader-only).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateInfo {
    /// [`LAYOUT_VERSION`] of the maps beside it.
    pub layout: u32,
    /// The layout this state was migrated from, 0 if created fresh.
    pub migrated_from: u32,
    /// Seconds since the Unix epoch when the layout was created or migrated.
    pub created_at: u64,
    /// Build that created or migrated it (NUL padded).
    pub build: [u8; BUILD_LEN],
}

impl Default for StateInfo {
    fn default() -> Self {
        Self {
            layout: 0,
            migrated_from: 0,
            created_at: 0,
            build: [0; BUILD_LEN],
        }
    }
}

/// Bytes kept of a service name in [`RuleOrigin`].
pub const ORIGIN_SERVICE_LEN: usize = 64;
/// Bytes kept of the reason in [`RuleOrigin`].
pub const ORIGIN_WHY_LEN: usize = 184;

/// Who wants a rule (`RULE_ORIGIN`, read and written by the loader only).
///
/// A rule slot with no origin entry belongs to the CLI alone. With an entry,
/// `manual` and `docker` record each owner's wish; the slot in `RULES` holds
/// the manual rule when there is one, else the agent's. So the agent never
/// removes a manual rule and the CLI never loses a Docker-derived one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleOrigin {
    /// Action of the manual rule ([`action`]), NONE if there is none.
    pub manual: u8,
    /// Action the agent's policy wants ([`action`]), NONE if none.
    pub docker: u8,
    pub pad: [u8; 6],
    /// Service whose policy caused the Docker-derived rule (NUL padded).
    pub service: [u8; ORIGIN_SERVICE_LEN],
    /// Why the policy blocks it, e.g. the label that decided (NUL padded).
    pub why: [u8; ORIGIN_WHY_LEN],
}

impl Default for RuleOrigin {
    fn default() -> Self {
        Self {
            manual: 0,
            docker: 0,
            pad: [0; 6],
            service: [0; ORIGIN_SERVICE_LEN],
            why: [0; ORIGIN_WHY_LEN],
        }
    }
}

/// Bytes of the `EVENTS` ring buffer (a power of two pages): 4,096 events.
pub const EVENT_RING_BYTES: u32 = 256 * 1024;

/// The single slot of `EVENT_CONFIG`, written by the loader at run time (no
/// re-attach): whether drop and audit events are sent, and each CPU's token
/// bucket. A token is `ns_per_event` nanoseconds of budget, so refilling is
/// an addition and a cap, with no division in the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventConfig {
    /// 1: send events; 0: off (the fast path reads only this word).
    pub enabled: u32,
    /// Nanoseconds per jiffy (the coarse clock's resolution, from
    /// clock_getres): the bucket runs on `bpf_jiffies64`, a fraction of the
    /// cost of either ktime helper.
    pub ns_per_jiffy: u32,
    /// Nanoseconds between events at the sustained rate, per CPU.
    pub ns_per_event: u64,
    /// Budget a CPU may save up: the burst, in nanoseconds.
    pub burst_ns: u64,
}

/// One CPU's slot of `EVENT_LIMITER` (per-CPU): its token bucket and what
/// became of the events it had to send.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventLimiter {
    /// Time of the last refill, in ns (jiffies times `ns_per_jiffy`).
    pub last_ns: u64,
    /// Saved budget, at most `EventConfig::burst_ns`.
    pub budget_ns: u64,
    /// Events written to the ring.
    pub sent: u64,
    /// Events the rate limit held back.
    pub limited: u64,
    /// Events lost because the ring was full (its reader too slow).
    pub lost: u64,
}

/// Which verdict an [`Event`] reports.
pub mod event_verdict {
    pub const DROPPED: u8 = 1;
    pub const AUDITED: u8 = 2;
}

/// One record of the `EVENTS` ring buffer: a packet to a blocked (or
/// audited) port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the program judged it.
    pub time_ns: u64,
    /// The source address; IPv4 in the first four bytes.
    pub src_addr: [u8; 16],
    /// Bytes of the frame (XDP) or skb (TC).
    pub frame_len: u32,
    /// The attach point (index into `ATTACH_INFO`).
    pub attach_id: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// IANA protocol number (tcp, udp, sctp).
    pub proto: u8,
    /// 1 when `src_addr` is IPv6.
    pub ipv6: u8,
    /// [`event_verdict`].
    pub verdict: u8,
    pub pad: u8,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for RuleKey {}
    unsafe impl aya::Pod for RuleCounters {}
    unsafe impl aya::Pod for CounterChunk {}
    unsafe impl aya::Pod for AttachCounters {}
    unsafe impl aya::Pod for AllowKeyV4 {}
    unsafe impl aya::Pod for AllowKeyV6 {}
    unsafe impl aya::Pod for AttachInfo {}
    unsafe impl aya::Pod for RuleOrigin {}
    unsafe impl aya::Pod for StateInfo {}
    unsafe impl aya::Pod for EventConfig {}
    unsafe impl aya::Pod for EventLimiter {}
    unsafe impl aya::Pod for Event {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<Rule>(), 4);
        assert_eq!(core::mem::size_of::<RuleKey>(), 4);
        assert_eq!(core::mem::size_of::<AllowKeyV4>(), 8);
        assert_eq!(core::mem::size_of::<AllowKeyV6>(), 20);
        assert_eq!(core::mem::size_of::<AttachCounters>(), 40);
        assert_eq!(
            core::mem::size_of::<CounterChunk>(),
            (MAX_ATTACH_POINTS + 2 * CHUNK_RULES) as usize * 8
        );
        assert_eq!(core::mem::size_of::<CounterChunk>(), 2560);
        assert_eq!(COUNTER_CHUNKS, 33);
        assert!(CHUNK_RULES.is_power_of_two() && MAX_ATTACH_POINTS.is_power_of_two());
        assert_eq!(
            core::mem::size_of::<AttachInfo>(),
            16 + 24 + 16 + 256 + BUILD_LEN
        );
        assert_eq!(core::mem::size_of::<StateInfo>(), 16 + BUILD_LEN);
        assert_eq!(core::mem::size_of::<RuleOrigin>(), 256);
        assert_eq!(core::mem::size_of::<EventConfig>(), 24);
        assert_eq!(core::mem::size_of::<EventLimiter>(), 40);
        assert_eq!(core::mem::size_of::<Event>(), 8 + 16 + 8 + 4 + 4);
    }

    #[test]
    fn a_slot_read_as_one_word_is_the_same_rule() {
        for rule in [
            Rule::default(),
            Rule {
                action: action::BLOCK,
                flags: rule_flags::HAS_ALLOWLIST | rule_flags::REPORT,
                counter: 4096,
            },
            Rule {
                action: action::AUDIT,
                flags: rule_flags::REPORT,
                counter: NO_COUNTER,
            },
        ] {
            // SAFETY: `Rule` is 4 bytes of plain data, no padding (above).
            let bytes: [u8; 4] = unsafe { core::mem::transmute(rule) };
            assert_eq!(Rule::from_word(u32::from_le_bytes(bytes)), rule);
        }
    }

    #[test]
    fn slots_are_distinct_per_protocol() {
        let tcp = rule_slot(proto_plane(IPPROTO_TCP).unwrap(), 80);
        let udp = rule_slot(proto_plane(IPPROTO_UDP).unwrap(), 80);
        let sctp = rule_slot(proto_plane(IPPROTO_SCTP).unwrap(), 65535);
        assert_ne!(tcp, udp);
        assert!(sctp < RULE_SLOTS);
        assert_eq!(proto_plane(1), None);
    }
}
