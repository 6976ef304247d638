//! Reference programs the benchmark compares ingress-xdp against.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};

/// The XDP floor: BPF_PROG_TEST_RUN's own per-run cost (a fixed verdict).
#[xdp]
pub fn floor_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The TC floor (an skb test run costs more than an XDP one).
#[classifier]
pub fn floor_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// The ceiling of the drop path: drops everything, reads nothing.
#[xdp]
pub fn bare_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The port the benchmark blocks (frames::BLOCKED_PORT on the host side).
const BLOCKED_PORT: u16 = 8080;
/// Ethernet + IPv4 without options: the TCP destination port's offset.
const DPORT_OFFSET: usize = 14 + 20 + 2;

/// The TCP destination port at the fixed offset, if the frame holds it.
#[inline(always)]
fn fixed_dport(ctx: &XdpContext) -> Option<u16> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + DPORT_OFFSET + 2 > end {
        return None;
    }
    // SAFETY: bounds-checked against data_end just above.
    let dport = unsafe { core::ptr::read_unaligned((data + DPORT_OFFSET) as *const [u8; 2]) };
    Some(u16::from_be_bytes(dport))
}

/// The least a port filter must do: read the destination port at the fixed
/// offset of an untagged IPv4/TCP frame without options, and drop it if it
/// is the blocked one. No parsing, no map, no counter. It tells the cost of
/// touching the packet (on another CPU than the one that wrote it, a cache
/// miss bare_drop never pays) from the cost of ingress-xdp's work.
#[xdp]
pub fn minimal_drop(ctx: XdpContext) -> u32 {
    match fixed_dport(&ctx) {
        Some(BLOCKED_PORT) => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Ethernet's EtherType offset, the first byte any parser must read.
const ETHERTYPE_OFFSET: usize = 12;

/// The minimal port check that also reads the EtherType first, as every
/// parser must: the header bytes from 12 to 37, which may span two cache
/// lines of the frame where `minimal_drop` touches one. Beside it, what the
/// second line costs live (the frame was written on another CPU).
#[xdp]
pub fn minimal_ethertype(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + DPORT_OFFSET + 2 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds-checked against data_end just above.
    let (ethertype, dport) = unsafe {
        (
            core::ptr::read_unaligned((data + ETHERTYPE_OFFSET) as *const [u8; 2]),
            core::ptr::read_unaligned((data + DPORT_OFFSET) as *const [u8; 2]),
        )
    };
    if ethertype == [0x08, 0x00] && u16::from_be_bytes(dport) == BLOCKED_PORT {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Maps shaped like ingress-xdp's (layout 2): the attach point's per-CPU
/// buckets, the rule array, the per-rule per-CPU counters.
#[map]
static BUCKETS: PerCpuArray<[u64; 5]> = PerCpuArray::with_max_entries(64, 0);
#[map]
static SLOTS: Array<u32> = Array::with_max_entries(3 * 65536, 0);

/// The least a table-driven port filter must do: the minimal port check
/// whose verdict comes from the port's slot in a rule array shaped like
/// ours (the loader marks the blocked port's slot). One map access, no
/// counter, no parser: beside `minimal_drop` it prices the one lookup no
/// filter that follows a rule table can skip, a floor for ours live.
#[xdp]
pub fn minimal_lookup(ctx: XdpContext) -> u32 {
    let Some(dport) = fixed_dport(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    match SLOTS.get(u32::from(dport)) {
        Some(slot) if slot & 0xff != 0 => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Rule counters in per-CPU chunks with a drop tally per attach point
/// beside them, shaped like ingress-xdp's `CounterChunk`.
#[repr(C)]
pub struct Chunk {
    drops: [u64; 64],
    rules: [[u64; 2]; 128],
}
#[map]
static CHUNKS: PerCpuArray<Chunk> = PerCpuArray::with_max_entries(33, 0);

/// The minimal port check plus exactly the memory ingress-xdp touches: for
/// a blocked port, the port's rule slot and then the chunk holding both
/// the counter slot it names and the attach point's drop tally; for an
/// open one, the slot and the point's bucket. Beside `minimal_drop` it
/// prices those accesses; beside ingress-xdp, what remains is the parser.
#[xdp]
pub fn minimal_maps(ctx: XdpContext) -> u32 {
    let Some(dport) = fixed_dport(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let counter = SLOTS.get(u32::from(dport)).copied().unwrap_or(0) >> 16;
    if dport == BLOCKED_PORT {
        if let Some(c) = CHUNKS.get_ptr_mut(counter >> 7) {
            // SAFETY: this CPU's value.
            unsafe {
                let r = &mut (*c).rules[(counter & 127) as usize];
                r[0] += 1;
                r[1] += (ctx.data_end() - ctx.data()) as u64;
                (*c).drops[0] += 1;
            }
        }
        return xdp_action::XDP_DROP;
    }
    if let Some(b) = BUCKETS.get_ptr_mut(0) {
        // SAFETY: this CPU's value.
        unsafe { (*b)[1] += 1 };
    }
    xdp_action::XDP_PASS
}

/// The traffic generator: run with BPF_PROG_TEST_RUN in live-frames mode, it
/// sends its input frame out of the `ingress_ifindex` device.
#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
