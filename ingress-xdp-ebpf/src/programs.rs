//! The data plane: an XDP program and a TC classifier that drop packets whose
//! (protocol, destination port) has a `block` rule, before netfilter and IPVS.
//!
//! Both programs share the parser and the maps. The loader loads one instance
//! per attach point with `ATTACH_ID` set, so each attach point has its own
//! counters while all share one rule table (maps are pinned by name).
//!
//! Per-packet memory, the budget the design is held to: a frame with no
//! port to judge touches the packet and its point's `ATTACH_STATS` line; an
//! open port adds the rule's 4-byte `RULES` slot; a blocked port reads its
//! slot and then makes one per-CPU access, to the rule's `COUNTERS` chunk,
//! where both its counter and the point's drop tally live (and not
//! `ATTACH_STATS`). With events on, which the slot's `REPORT` bit says,
//! it also reads `EVENT_CONFIG`, this CPU's `EVENT_LIMITER` line and, when
//! its bucket allows, writes a ring buffer record. Every lookup is into an
//! array, which the verifier inlines into an address computation (no helper call, no hashing), and
//! no load depends on a previous map load except the counter's index, read
//! from the rule slot already in hand.
use crate::{
    WITH_EVENTS,
    parse::{self, Frame, Judgeable, Parsed},
};
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_map_lookup_elem},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use ingress_xdp_common::{
    ALLOW_RULE_PREFIX_BITS, AllowKeyV4, AllowKeyV6, AttachCounters, AttachInfo, CHUNK_RULES,
    COUNTER_CHUNKS, CounterChunk, EVENT_RING_BYTES, Event, EventConfig, EventLimiter, IPPROTO_SCTP,
    IPPROTO_TCP, IPPROTO_UDP, MAX_ALLOW_PREFIXES, MAX_ATTACH_POINTS, MAX_ORIGINS,
    MAX_RULE_COUNTERS, RULE_SLOTS, Rule, RuleCounters, RuleKey, RuleOrigin, StateInfo, action,
    event_verdict, rule_flags, rule_slot,
};

/// Set by the loader for each attach point (index into `ATTACH_STATS` and
/// into each counter chunk's drop tallies).
#[unsafe(no_mangle)]
static ATTACH_ID: u32 = 0;

/// BPF_F_MMAPABLE: the loader reads the whole table from a mapping instead
/// of 196,608 lookups (`list`, `stats`); the programs' lookups are unchanged.
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
static RULES: Array<Rule> = Array::pinned(RULE_SLOTS, BPF_F_MMAPABLE);

/// Rule counters (one per rule as the operator wrote it: a range shares
/// one), `CHUNK_RULES` to a chunk, with the points' drop tallies beside
/// them; `Rule::counter` says which.
#[map]
static COUNTERS: PerCpuArray<CounterChunk> = PerCpuArray::pinned(COUNTER_CHUNKS, 0);

/// What each counter slot's sum stood at when it was given to its rule
/// (minus counts a migration carried over); loader-only.
#[map]
static COUNTER_BASE: Array<RuleCounters> = Array::pinned(MAX_RULE_COUNTERS, 0);

#[map]
static ALLOW_V4: LpmTrie<AllowKeyV4, u8> = LpmTrie::pinned(MAX_ALLOW_PREFIXES, 0);

#[map]
static ALLOW_V6: LpmTrie<AllowKeyV6, u8> = LpmTrie::pinned(MAX_ALLOW_PREFIXES, 0);

#[map]
static ATTACH_STATS: PerCpuArray<AttachCounters> = PerCpuArray::pinned(MAX_ATTACH_POINTS, 0);

/// Describes each attach point for `status`; written and read by the loader
/// only, kept in bpffs so that all state lives in one pinned place.
#[map]
static ATTACH_INFO: Array<AttachInfo> = Array::pinned(MAX_ATTACH_POINTS, 0);

/// Who owns each rule (CLI, agent, or both); loader-only, like ATTACH_INFO.
#[map]
static RULE_ORIGIN: HashMap<RuleKey, RuleOrigin> = HashMap::pinned(MAX_ORIGINS, BPF_F_NO_PREALLOC);

/// The layout version and the build that wrote it; loader-only.
#[map]
static STATE: Array<StateInfo> = Array::pinned(1, 0);

/// Drop and audit events for `events` and `top`, rate-limited per CPU.
#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENT_RING_BYTES, 0);

/// Whether events are on, and the rate limit; set by the loader at run time.
#[map]
static EVENT_CONFIG: Array<EventConfig> = Array::pinned(1, 0);

#[map]
static EVENT_LIMITER: PerCpuArray<EventLimiter> = PerCpuArray::pinned(1, 0);

/// Where a packet ended up. The discriminant is the index of its bucket in
/// [`AttachCounters`] (its fields are five `u64`s in this order), so recording
/// an outcome is one indexed add rather than a branch per bucket.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Outcome {
    Dropped = 0,
    Passed = 1,
    Audited = 2,
    Allowed = 3,
    NotParsed = 4,
}

const ATTACH_BUCKETS: usize = 5;
const _: () = assert!(core::mem::size_of::<AttachCounters>() == ATTACH_BUCKETS * 8);

/// The protocol of a rule plane (the inverse of `proto_plane`), for the
/// allowlist's key; off the common path.
#[inline(always)]
fn plane_proto(plane: u32) -> u8 {
    match plane {
        0 => IPPROTO_TCP,
        1 => IPPROTO_UDP,
        _ => IPPROTO_SCTP,
    }
}

#[inline(always)]
fn source_allowed(packet: &impl Packet) -> bool {
    let frame = packet.frame();
    let Some(pkt) = reparse(&frame, packet.offloaded_tags()) else {
        return false;
    };
    let key = RuleKey::new(plane_proto(pkt.plane), pkt.dport);
    match parse::source_offset(&frame, pkt.l3) {
        Some((at, false)) => frame.bytes::<4>(at).is_some_and(|addr| {
            let key = Key::new(ALLOW_RULE_PREFIX_BITS + 32, AllowKeyV4 { rule: key, addr });
            ALLOW_V4.get(&key).is_some()
        }),
        Some((at, true)) => frame.bytes::<16>(at).is_some_and(|addr| {
            let key = Key::new(ALLOW_RULE_PREFIX_BITS + 128, AllowKeyV6 { rule: key, addr });
            ALLOW_V6.get(&key).is_some()
        }),
        None => false,
    }
}

const CHUNK_SHIFT: u32 = CHUNK_RULES.trailing_zeros();
const _: () = assert!(CHUNK_RULES.is_power_of_two() && MAX_ATTACH_POINTS.is_power_of_two());

/// Counts a matched packet in its rule's counter and, when it is dropped,
/// in this point's tally of the same chunk: one per-CPU access either way.
#[inline(always)]
fn count_rule(counter: u16, packet: &impl Packet, dropped: bool) {
    // Uncounted rules share slot 0, so this never branches on a flag.
    let Some(chunk) = COUNTERS.get_ptr_mut(u32::from(counter) >> CHUNK_SHIFT) else {
        return;
    };
    // SAFETY: per-CPU value of this CPU; no other writer while we run.
    unsafe {
        let rule = &mut (*chunk).rules[usize::from(counter) & (CHUNK_RULES as usize - 1)];
        rule.packets += 1;
        // Read after the lookup, so that it does not cross it.
        rule.bytes += packet.len();
        if dropped {
            // A loader-set constant; volatile so that it is not folded.
            let point = core::ptr::read_volatile(&raw const ATTACH_ID) as usize;
            (*chunk).dropped[point & (MAX_ATTACH_POINTS as usize - 1)] += 1;
        }
    }
}

/// The packet's port, parsed again: the rare paths (allowlists, events)
/// call this rather than have the common path carry the parse across its
/// map lookups (see [`Packet`]): carried, the parse (plane, port, offsets)
/// and the length went to the stack on every matched packet.
#[inline(always)]
fn reparse(frame: &Frame, offloaded_tags: usize) -> Option<Judgeable> {
    match parse::parse(frame, offloaded_tags) {
        Ok(Parsed::Port(pkt)) => Some(pkt),
        _ => None,
    }
}

#[inline(always)]
fn judge(packet: &impl Packet, slot: u32) -> Outcome {
    let Some(rule) = RULES.get(slot) else {
        return Outcome::Passed;
    };
    // The slot as one word, tested in place: one register carries it across
    // the counter lookup (see `Packet`), and no field is shifted out that a
    // mask can test.
    // SAFETY: `Rule` is 4 bytes, `repr(C)`, and 4-aligned in the array.
    let word = unsafe { core::ptr::read(core::ptr::from_ref(rule).cast::<u32>()) };
    // The common rule, a plain block (no allowlist, no events), in one test.
    if word & SLOT_ACTION_AND_FLAGS == u32::from(action::BLOCK) {
        count_rule(Rule::from_word(word).counter, packet, true);
        return Outcome::Dropped;
    }
    if word & SLOT_ACTION == u32::from(action::NONE) {
        return Outcome::Passed;
    }
    if word & SLOT_HAS_ALLOWLIST != 0 && source_allowed(packet) {
        return Outcome::Allowed;
    }
    let outcome = if word & u32::from(action::AUDIT) == 0 {
        Outcome::Dropped
    } else {
        Outcome::Audited
    };
    count_rule(
        Rule::from_word(word).counter,
        packet,
        outcome == Outcome::Dropped,
    );
    if WITH_EVENTS && word & SLOT_REPORT != 0 {
        report(packet, outcome);
    }
    outcome
}

/// Masks of a `RULES` slot read as one little-endian word (see
/// [`Rule::from_word`]).
const SLOT_ACTION: u32 = 0xff;
const SLOT_ACTION_AND_FLAGS: u32 = 0xffff;
const SLOT_HAS_ALLOWLIST: u32 = (rule_flags::HAS_ALLOWLIST as u32) << 8;
const SLOT_REPORT: u32 = (rule_flags::REPORT as u32) << 8;
// A set rule is BLOCK or AUDIT, and AUDIT's one bit tells them apart.
const _: () = assert!(action::BLOCK & action::AUDIT == 0 && action::AUDIT.is_power_of_two());

/// Sends an event for a dropped or audited packet when events are on and
/// this CPU's token bucket allows; called only for a rule whose slot says
/// events are on (`REPORT`), so off it costs nothing but that bit, in a
/// byte already read. `EVENT_CONFIG` is checked again: a slot may lag the
/// switch by a moment. A full ring or an empty bucket is counted, never
/// waited for.
#[inline(always)]
fn report(packet: &impl Packet, outcome: Outcome) {
    let Some(config) = EVENT_CONFIG.get(0) else {
        return;
    };
    if config.enabled == 0 {
        return;
    }
    let Some(limiter) = EVENT_LIMITER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; no other writer while we run.
    let limiter = unsafe { &mut *limiter };
    // The bucket runs on jiffies (a tick's resolution): in a VM here either
    // ktime helper cost 25 ns or more per packet, held back or not. Only a
    // sent event reads the precise time.
    let now = unsafe { bpf_jiffies64() } * u64::from(config.ns_per_jiffy);
    let saved = limiter.budget_ns + now.wrapping_sub(limiter.last_ns);
    let budget = if saved > config.burst_ns {
        config.burst_ns
    } else {
        saved
    };
    limiter.last_ns = now;
    if budget < config.ns_per_event {
        limiter.budget_ns = budget;
        limiter.limited += 1;
        return;
    }
    limiter.budget_ns = budget - config.ns_per_event;
    let frame = packet.frame();
    let Some(pkt) = reparse(&frame, packet.offloaded_tags()) else {
        // Cannot happen (this frame was judged by its port), but an event
        // that is not sent is counted.
        limiter.lost += 1;
        return;
    };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        limiter.lost += 1;
        return;
    };
    // The offsets pass through the entry's memory, which the verifier does
    // not track: read back, they are bounded unknowns, so every parser path
    // that reaches here is one state to the verifier, not one each (inlined
    // with exact offsets, this tail doubled the programs' verification).
    let scratch = entry.as_mut_ptr().cast::<u64>();
    // SAFETY: the entry holds an Event, larger than two u64s.
    let (l3, l4) = unsafe {
        core::ptr::write_volatile(scratch, pkt.l3 as u64);
        core::ptr::write_volatile(scratch.add(1), pkt.l4 as u64);
        (
            (core::ptr::read_volatile(scratch) & 0x3ff) as usize,
            (core::ptr::read_volatile(scratch.add(1)) & 0x3ff) as usize,
        )
    };
    // Two bytes, not one: a one-byte bounds check compiles to `ptr >= end`,
    // which proves no byte readable at a variable offset.
    let ipv6 = frame.bytes::<2>(l3).map_or(0, |b| u8::from(b[0] >> 4 == 6));
    let src_addr = if ipv6 == 1 {
        frame.bytes::<16>(l3 + 8).unwrap_or([0; 16])
    } else {
        let mut addr = [0u8; 16];
        if let Some(v4) = frame.bytes::<4>(l3 + 12) {
            addr[..4].copy_from_slice(&v4);
        }
        addr
    };
    let src_port = frame.bytes::<2>(l4).map_or(0, u16::from_be_bytes);
    // SAFETY: a read of a loader-set constant; volatile so it is not folded.
    let attach_id = unsafe { core::ptr::read_volatile(&raw const ATTACH_ID) };
    entry.write(Event {
        time_ns: unsafe { bpf_ktime_get_ns() },
        src_addr,
        frame_len: packet.len() as u32,
        attach_id,
        src_port,
        dst_port: pkt.dport,
        proto: plane_proto(pkt.plane),
        ipv6,
        verdict: if outcome == Outcome::Dropped {
            event_verdict::DROPPED
        } else {
            event_verdict::AUDITED
        },
        pad: 0,
    });
    entry.submit(0);
    limiter.sent += 1;
}

#[inline(always)]
fn record(outcome: Outcome) {
    // The key is `ATTACH_ID` in place: the helper reads the loader-set
    // constant itself, so it is not loaded and stored to the stack first.
    // SAFETY: the map's address is its definition (`repr(transparent)`), and
    // the key is a valid u32 for the whole run.
    let value = unsafe {
        bpf_map_lookup_elem(
            core::ptr::from_ref(&ATTACH_STATS).cast_mut().cast(),
            (&raw const ATTACH_ID).cast(),
        )
    };
    if !value.is_null() {
        let buckets = value.cast::<[u64; ATTACH_BUCKETS]>();
        // SAFETY: this CPU's value, five u64 buckets (asserted above).
        unsafe { (*buckets)[outcome as usize] += 1 };
    }
}

/// The packet as the hook hands it over. Only the context pointer crosses a
/// map lookup: to the compiler each lookup is a call that clobbers r0-r5,
/// so every value carried across one takes one of the four callee-saved
/// registers or a stack slot. What a later step needs (the frame for the
/// rare paths, the length for the counter) is read from the context again,
/// an L1 load, rather than carried.
trait Packet {
    fn frame(&self) -> Frame;
    /// VLAN tags the kernel already took out of the frame (TC only), which
    /// count against the same limit as the tags still in it.
    fn offloaded_tags(&self) -> usize;
    /// The length the rule counters add up.
    fn len(&self) -> u64;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn frame(&self) -> Frame {
        Frame::new(self.data(), self.data_end())
    }

    #[inline(always)]
    fn offloaded_tags(&self) -> usize {
        0
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        (self.data_end() - self.data()) as u64
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn frame(&self) -> Frame {
        Frame::new(self.data(), self.data_end())
    }

    /// Before TCX runs the kernel moves the outer VLAN tag into the skb's
    /// metadata; XDP sees it in the frame. Counting it keeps "at most two
    /// tags" the same on both hooks.
    #[inline(always)]
    fn offloaded_tags(&self) -> usize {
        // SAFETY: the context's __sk_buff is valid for the program's run.
        unsafe { (*self.skb.skb).vlan_present as usize & 1 }
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        u64::from(TcContext::len(self))
    }
}

/// Records the outcome in the attach point's bucket and returns the hook's
/// verdict. A drop was counted with its rule (`count_rule`), so the blocked
/// path touches no `ATTACH_STATS` line.
#[inline(always)]
fn verdict<T>(outcome: Outcome, drop: T, pass: T) -> T {
    if outcome == Outcome::Dropped {
        drop
    } else {
        record(outcome);
        pass
    }
}

#[inline(always)]
fn classify(packet: &impl Packet) -> Outcome {
    match parse::parse(&packet.frame(), packet.offloaded_tags()) {
        Ok(Parsed::Port(pkt)) => judge(packet, rule_slot(pkt.plane, pkt.dport)),
        Ok(Parsed::NoPort) => Outcome::Passed,
        Err(_) => Outcome::NotParsed,
    }
}

// Inlined by force into the macro's entry point, as `ingress_tc` is.
#[xdp]
#[inline(always)]
pub fn ingress_xdp(ctx: XdpContext) -> u32 {
    verdict(classify(&ctx), xdp_action::XDP_DROP, xdp_action::XDP_PASS)
}

/// Headers beyond this many bytes are not pulled into the linear area.
const TC_PULL_LEN: u32 = 512;

// The macro wraps this function in the entry point; inlined by force, as
// left to the compiler a body this size becomes a BPF-to-BPF call, which
// costs 5-6 ns a packet here.
#[classifier]
#[inline(always)]
pub fn ingress_tc(ctx: TcContext) -> i32 {
    let mut outcome = classify(&ctx);
    // An skb may hold its headers outside the linear area; only then pay for a
    // pull, and parse again.
    if matches!(outcome, Outcome::NotParsed)
        && (ctx.len() as usize) > ctx.data_end() - ctx.data()
        && ctx.pull_data(ctx.len().min(TC_PULL_LEN)).is_ok()
    {
        outcome = classify(&ctx);
    }
    // UNSPEC lets later TCX programs and filters run.
    verdict(outcome, TC_ACT_SHOT, TC_ACT_UNSPEC)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
