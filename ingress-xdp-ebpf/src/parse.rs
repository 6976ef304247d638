//! One bounds-checked header walk shared by the XDP and TC programs.
//!
//! The walk answers one question: does this frame carry a TCP, UDP or SCTP
//! destination port we can read with certainty, and from which source? Every
//! read is preceded by a check against the end of the frame that the verifier
//! can follow. Anything we cannot read with certainty is `Malformed`, which the
//! programs pass to the kernel (and count): a filter must never drop a packet
//! because it misread it.
//!
//! Semantics (the reference parser in the tests follows the same rules):
//! - Ethernet, then at most [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags, counting
//!   a tag the kernel already moved into the skb's metadata (TC); a deeper
//!   stack is `Malformed`.
//! - IPv4: version 4, IHL >= 5, total length covering the header; options are
//!   skipped. IPv6: version 6; hop-by-hop, routing, destination options,
//!   fragment and AH headers are walked, at most [`MAX_EXT_HEADERS`]; a longer
//!   chain is `Malformed`, and so is an AH whose payload length is 0 (8 bytes,
//!   less than AH's fixed 12).
//! - A fragment whose offset is not zero carries no transport header: it is
//!   `NoPort` and passes. That is safe because the destination port sits in
//!   bytes 2..4 of the transport header, which only an offset-0 fragment can
//!   hold (offsets count 8-byte units), and every offset-0 fragment is judged
//!   by its own port. The kernel's reassembly drops overlapping fragments, so a
//!   later fragment cannot rewrite a port that was already judged.
//! - The four port bytes must lie inside both the frame and the IP datagram
//!   (IPv4 total length, IPv6 payload length); otherwise `Malformed`.
//! - Other EtherTypes and other transport protocols are `NoPort`.

use core::mem::size_of;

use ingress_xdp_common::proto_plane;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

pub const MAX_VLAN_TAGS: usize = 2;
pub const MAX_EXT_HEADERS: usize = 8;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// A packet we can judge: the rule plane of its transport protocol (see
/// [`proto_plane`]), its destination port, and where its IP header starts.
/// Only a rule with an allowlist reads the source address, from `l3` (see
/// [`source_offset`]), so the common path carries one offset, not a copy.
#[derive(Clone, Copy)]
pub struct Judgeable {
    pub plane: u32,
    pub dport: u16,
    pub l3: usize,
    /// Start of the transport header (its first two bytes: the source port).
    pub l4: usize,
}

/// Where the source address of a judged packet sits: (offset, is IPv6).
/// The header's version was checked by the walk that produced `l3`.
#[inline(always)]
pub fn source_offset(frame: &Frame, l3: usize) -> Option<(usize, bool)> {
    let version = frame.bytes::<1>(l3)?[0] >> 4;
    // IPv4 src_addr is bytes 12..16, IPv6 bytes 8..24 of the fixed header.
    Some(if version == 6 {
        (l3 + 8, true)
    } else {
        (l3 + 12, false)
    })
}

pub enum Parsed {
    /// Carries a destination port we filter on.
    Port(Judgeable),
    /// Well formed, but nothing for us: not IP, another protocol, or a
    /// non-first fragment.
    NoPort,
}

/// Headers we could not read with certainty.
pub struct Malformed;

/// The frame between `start` and `end` (packet pointers, as usize).
#[derive(Clone, Copy)]
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The `N` bytes at `offset`, if they lie inside the frame.
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let ptr: *const [u8; N] = self.at(offset).ok()?;
        // SAFETY: `at` checked the N bytes are inside the frame.
        Some(unsafe { *ptr })
    }

    /// A pointer to a `T` at `offset`, if the whole `T` lies inside the frame.
    #[inline(always)]
    fn at<T>(&self, offset: usize) -> Result<*const T, Malformed> {
        let ptr = self.start + offset;
        if ptr + size_of::<T>() > self.end {
            // Laid out away from the path of every well-formed packet.
            core::hint::cold_path();
            return Err(Malformed);
        }
        Ok(ptr as *const T)
    }
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// A big-endian 16-bit field at `ptr`, read with one 2-byte load.
///
/// Every field read this way sits at an even offset from the frame's start
/// (Ethernet 14, VLAN tags 4, IPv4 headers multiples of 4, IPv6 40 and
/// extension headers multiples of 8), and both hooks hand us 2-aligned frame
/// starts, so the load is aligned. Through a `[u8; 2]` LLVM emits two byte
/// loads, a shift and an or, on the path of every packet.
///
/// # Safety
/// The two bytes at `ptr` must be inside the frame (checked by the caller).
#[inline(always)]
unsafe fn be16_at(ptr: usize) -> u16 {
    // SAFETY: in bounds per the caller; aligned as argued above.
    u16::from_be(unsafe { core::ptr::read(ptr as *const u16) })
}

/// Destination port from the first four bytes of a TCP, UDP or SCTP header.
#[inline(always)]
fn dport_at(frame: &Frame, offset: usize) -> Result<u16, Malformed> {
    let ports: *const [u8; 4] = frame.at(offset)?;
    // SAFETY: `at` checked the four bytes are inside the frame.
    Ok(unsafe { be16_at(ports as usize + 2) })
}

/// `offloaded_tags`: tags no longer in the frame (0 or 1) that still count
/// against [`MAX_VLAN_TAGS`].
#[inline(always)]
pub fn parse(frame: &Frame, offloaded_tags: usize) -> Result<Parsed, Malformed> {
    let eth: *const EthHdr = frame.at(0)?;
    // SAFETY: bounds checked by `at`; all header fields are byte arrays or
    // unaligned-safe reads of packed network data.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    // Untagged IPv4 first: one compare on the commonest path.
    if ether_type == ETH_P_IP {
        return ipv4(frame, EthHdr::LEN);
    }
    let mut offset = EthHdr::LEN;
    for tag in 0..MAX_VLAN_TAGS {
        if tag + offloaded_tags >= MAX_VLAN_TAGS || !is_vlan(ether_type) {
            break;
        }
        let vlan: *const VlanHdr = frame.at(offset)?;
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => ipv4(frame, offset),
        ETH_P_IPV6 => ipv6(frame, offset),
        t if is_vlan(t) => Err(Malformed),
        _ => Ok(Parsed::NoPort),
    }
}

#[inline(always)]
fn ipv4(frame: &Frame, offset: usize) -> Result<Parsed, Malformed> {
    // Most IPv4 has no options. With IHL 5 known, the header and the port
    // are one bounds check and the port sits at a fixed offset; the general
    // walk below gives the same answers, one compare later.
    if let Ok(ip) = frame.at::<[u8; Ipv4Hdr::LEN + 4]>(offset) {
        // SAFETY: `at` checked the 24 bytes are inside the frame.
        if unsafe { (*ip)[0] } == 0x45 {
            return ipv4_rest(frame, ip.cast(), offset, Ipv4Hdr::LEN);
        }
    }
    let ip: *const Ipv4Hdr = frame.at(offset)?;
    // SAFETY: the fixed 20-byte header is inside the frame.
    let vihl = unsafe { (*ip).vihl };
    // Version 4 and IHL >= 5 (20 bytes) in one compare: 0x45..=0x4F.
    if u32::from(vihl).wrapping_sub(0x45) > 0x0A {
        return Err(Malformed);
    }
    ipv4_rest(frame, ip, offset, ((vihl & 0x0F) as usize) << 2)
}

/// The IPv4 walk once the header's length is known: `ip` at `offset` has
/// its fixed 20 bytes inside the frame, and `header_len` >= 20.
#[inline(always)]
fn ipv4_rest(
    frame: &Frame,
    ip: *const Ipv4Hdr,
    offset: usize,
    header_len: usize,
) -> Result<Parsed, Malformed> {
    let at = ip as usize;
    // SAFETY: the fixed 20-byte header is inside the frame (the caller's
    // check). Only the fields used are read: a copy of the header would
    // cost loads and spills.
    let (total_len, frags, proto) =
        unsafe { (be16_at(at + 2) as usize, be16_at(at + 6), (*ip).proto) };
    // Without a port to read, the datagram must still cover its header.
    let no_port = || {
        if total_len < header_len {
            Err(Malformed)
        } else {
            Ok(Parsed::NoPort)
        }
    };
    // A later fragment carries no port.
    if frags & 0x1FFF != 0 {
        return no_port();
    }
    let Some(plane) = proto_plane(proto) else {
        return no_port();
    };
    // Covers the header too: one compare on the path of every port.
    if header_len + 4 > total_len {
        return Err(Malformed);
    }
    let l4 = offset + header_len;
    let dport = dport_at(frame, l4)?;
    Ok(Parsed::Port(Judgeable {
        plane,
        dport,
        l3: offset,
        l4,
    }))
}

#[inline(always)]
fn ipv6(frame: &Frame, offset: usize) -> Result<Parsed, Malformed> {
    let ip: *const Ipv6Hdr = frame.at(offset)?;
    // SAFETY: the fixed 40-byte header is inside the frame.
    let (vcf0, payload_len, mut next) = unsafe {
        (
            (*ip).vcf[0],
            be16_at(ip as usize + 4) as usize,
            (*ip).next_hdr,
        )
    };
    if vcf0 >> 4 != 6 {
        return Err(Malformed);
    }
    // Bytes of extension headers walked so far (relative to the payload).
    let mut ext_len: usize = 0;
    let payload = offset + Ipv6Hdr::LEN;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let hdr: *const [u8; 2] = frame.at(payload + ext_len)?;
                let hdr = unsafe { *hdr };
                next = hdr[0];
                ((hdr[1] as usize) + 1) << 3
            }
            NEXTHDR_AUTH => {
                let hdr: *const [u8; 2] = frame.at(payload + ext_len)?;
                let hdr = unsafe { *hdr };
                // Payload length 0 would make AH 8 bytes, shorter than its
                // own fixed fields (12 bytes, RFC 4302): malformed.
                if hdr[1] == 0 {
                    return Err(Malformed);
                }
                next = hdr[0];
                ((hdr[1] as usize) + 2) << 2
            }
            NEXTHDR_FRAGMENT => {
                let hdr: *const [u8; 4] = frame.at(payload + ext_len)?;
                // SAFETY: `at` checked the four bytes are inside the frame.
                if unsafe { be16_at(hdr as usize + 2) } & 0xFFF8 != 0 {
                    return Ok(Parsed::NoPort);
                }
                next = unsafe { (*hdr)[0] };
                8
            }
            _ => break,
        };
        ext_len += len;
    }
    let Some(plane) = proto_plane(next) else {
        return match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT => {
                Err(Malformed)
            }
            _ => Ok(Parsed::NoPort),
        };
    };
    if ext_len + 4 > payload_len {
        return Err(Malformed);
    }
    let l4 = payload + ext_len;
    let dport = dport_at(frame, l4)?;
    Ok(Parsed::Port(Judgeable {
        plane,
        dport,
        l3: offset,
        l4,
    }))
}
