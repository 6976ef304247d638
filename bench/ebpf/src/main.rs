//! Reference programs the benchmark compares ingress-xdp against. None of
//! them reads the packet.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
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

/// The least a port filter must do: read the destination port at the fixed
/// offset of an untagged IPv4/TCP frame without options, and drop it if it
/// is the blocked one. No parsing, no map, no counter. It tells the cost of
/// touching the packet (on another CPU than the one that wrote it, a cache
/// miss bare_drop never pays) from the cost of ingress-xdp's work.
#[xdp]
pub fn minimal_drop(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + DPORT_OFFSET + 2 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds-checked against data_end just above.
    let dport = unsafe { core::ptr::read_unaligned((data + DPORT_OFFSET) as *const [u8; 2]) };
    if u16::from_be_bytes(dport) == BLOCKED_PORT {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
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
