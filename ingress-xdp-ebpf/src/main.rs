//! The data plane: an XDP program and a TC classifier that drop packets whose
//! (protocol, destination port) has a `block` rule, before netfilter and IPVS.
//!
//! Both programs share the parser and the maps. The loader loads one instance
//! per attach point with `ATTACH_ID` set, so each attach point has its own
//! counters while all share one rule table (maps are pinned by name).
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use ingress_xdp_common::{
    ALLOW_RULE_PREFIX_BITS, AllowKeyV4, AllowKeyV6, AttachCounters, AttachInfo, MAX_ALLOW_PREFIXES,
    MAX_ATTACH_POINTS, MAX_COUNTED_RULES, RULE_SLOTS, Rule, RuleCounters, RuleKey, RuleOrigin,
    action, proto_plane, rule_flags, rule_slot,
};
use parse::{Frame, Judgeable, Parsed, Source};

/// Set by the loader for each attach point (index into `ATTACH_STATS`).
#[unsafe(no_mangle)]
static ATTACH_ID: u32 = 0;

#[map]
static RULES: Array<Rule> = Array::pinned(RULE_SLOTS, 0);

// BPF_F_NO_PREALLOC: per-CPU memory only for rules that exist.
#[map]
static RULE_STATS: PerCpuHashMap<RuleKey, RuleCounters> =
    PerCpuHashMap::pinned(MAX_COUNTED_RULES, 1);

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
static RULE_ORIGIN: HashMap<RuleKey, RuleOrigin> = HashMap::pinned(MAX_COUNTED_RULES, 1);

enum Outcome {
    Dropped,
    Passed,
    Audited,
    Allowed,
    NotParsed,
}

#[inline(always)]
fn source_allowed(key: RuleKey, source: Source) -> bool {
    match source {
        Source::V4(addr) => {
            let key = Key::new(ALLOW_RULE_PREFIX_BITS + 32, AllowKeyV4 { rule: key, addr });
            ALLOW_V4.get(&key).is_some()
        }
        Source::V6(addr) => {
            let key = Key::new(ALLOW_RULE_PREFIX_BITS + 128, AllowKeyV6 { rule: key, addr });
            ALLOW_V6.get(&key).is_some()
        }
    }
}

#[inline(always)]
fn count_rule(key: RuleKey, bytes: u64) {
    if let Some(counters) = RULE_STATS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value of this CPU; no other writer while we run.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
    }
}

#[inline(always)]
fn judge(pkt: Judgeable, bytes: u64) -> Outcome {
    let Some(plane) = proto_plane(pkt.proto) else {
        return Outcome::Passed;
    };
    let rule = match RULES.get(rule_slot(plane, pkt.dport)) {
        Some(rule) if rule.action != action::NONE => *rule,
        _ => return Outcome::Passed,
    };
    let key = RuleKey::new(pkt.proto, pkt.dport);
    if rule.flags & rule_flags::HAS_ALLOWLIST != 0 && source_allowed(key, pkt.source) {
        return Outcome::Allowed;
    }
    count_rule(key, bytes);
    if rule.action == action::BLOCK {
        Outcome::Dropped
    } else {
        Outcome::Audited
    }
}

#[inline(always)]
fn record(outcome: &Outcome) {
    // SAFETY: a read of a loader-set constant; volatile so it is not folded.
    let id = unsafe { core::ptr::read_volatile(&raw const ATTACH_ID) };
    if let Some(counters) = ATTACH_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            match outcome {
                Outcome::Dropped => (*counters).dropped += 1,
                Outcome::Passed => (*counters).passed += 1,
                Outcome::Audited => (*counters).audited += 1,
                Outcome::Allowed => (*counters).allowed += 1,
                Outcome::NotParsed => (*counters).not_parsed += 1,
            }
        }
    }
}

#[inline(always)]
fn classify(frame: &Frame, bytes: u64) -> Outcome {
    match parse::parse(frame) {
        Ok(Parsed::Port(pkt)) => judge(pkt, bytes),
        Ok(Parsed::NoPort) => Outcome::Passed,
        Err(_) => Outcome::NotParsed,
    }
}

#[xdp]
pub fn ingress_xdp(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let outcome = classify(&frame, (ctx.data_end() - ctx.data()) as u64);
    record(&outcome);
    match outcome {
        Outcome::Dropped => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Headers beyond this many bytes are not pulled into the linear area.
const TC_PULL_LEN: u32 = 512;

#[classifier]
pub fn ingress_tc(ctx: TcContext) -> i32 {
    let bytes = ctx.len();
    let mut outcome = classify(&Frame::new(ctx.data(), ctx.data_end()), bytes as u64);
    // An skb may hold its headers outside the linear area; only then pay for a
    // pull, and parse again.
    if matches!(outcome, Outcome::NotParsed)
        && (bytes as usize) > ctx.data_end() - ctx.data()
        && ctx.pull_data(bytes.min(TC_PULL_LEN)).is_ok()
    {
        outcome = classify(&Frame::new(ctx.data(), ctx.data_end()), bytes as u64);
    }
    record(&outcome);
    match outcome {
        Outcome::Dropped => TC_ACT_SHOT,
        // UNSPEC lets later TCX programs and filters run.
        _ => TC_ACT_UNSPEC,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
