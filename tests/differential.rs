//! Differential test of the data plane: generated frames go through both
//! programs (BPF_PROG_TEST_RUN) and through the reference verdict
//! (`support/reference.rs`, built on etherparse), under generated rule sets.
//! The verdict and the attach-point counter bucket of every frame must agree.
//!
//! - Frames: valid frames of every shape the programs parse (VLAN stacks,
//!   IPv4 with options, IPv6 with extension chains, fragments, TCP/UDP/SCTP and
//!   other protocols, ARP, other EtherTypes), then mutations (truncations,
//!   wrong length fields, bad IHL/version, edited extension headers, flipped
//!   bits, unknown EtherTypes, trailing bytes), and plain random bytes.
//! - Rule sets: block and audit rules on single ports and ranges of the three
//!   protocols, with IPv4/IPv6 allowlists, applied with the product's
//!   `RuleTable`.
//! - Per frame, exactly: each program's return value, and the bucket its
//!   attach-point counters moved (each frame runs in a program instance of its
//!   own attach id, and 16 frames' slots are read back with one batched map
//!   lookup). Per rule set: every rule's packet and byte counters.
//! - A disagreement is shrunk (proptest's shrinking of the frame, then of the
//!   rule set), saved under `tests/fixtures/differential/` and fails the test.
//!   Saved cases are replayed before anything else.
//!
//! Frames: a fixed seed for [`CI_FRAMES`] frames, then a random seed (printed)
//! for [`RANDOM_FRAMES`]. `INGRESS_XDP_DIFF_SEED=S INGRESS_XDP_DIFF_FRAMES=N`
//! runs just seed S for N frames (`cargo xtask fuzz` uses this for soaks).
//!
//! Needs root (it loads programs and pins maps under /sys/fs/bpf/ixt*).

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::MapData,
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ingress_xdp::{
    cidr::Cidr,
    counters::Counters,
    pins::{MAP_ATTACH_STATS, PROG_TC, PROG_XDP, load_object},
    rules::{Mode, RuleSpec, RuleTable},
    spec::{PortSpec, Protocol},
};
use proptest::{
    strategy::{Strategy, ValueTree},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use support::reference::{self, Outcome, Prefix, Proto, Rule, Rules};

/// Frames of the fixed-seed run in CI.
const CI_FRAMES: u64 = 1_000_000;
const CI_SEED: u64 = 0x1d9e_55ed_2026_0004;
/// Frames of the random-seed run that follows it.
const RANDOM_FRAMES: u64 = 100_000;
/// Frames judged under one rule set.
const EPOCH: u64 = 8192;
/// Frames run per batch: one attach slot each per program.
const BATCH: usize = 16;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_SHOT: u32 = 2;
/// TC_ACT_UNSPEC (-1) as the test run reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const ETH_HLEN: usize = 14;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/differential")
}

/// The shortest frame the kernel runs the TC program on (see
/// `tc_min_len` in tests/verdicts.rs, which asserts these refusals): an
/// Ethernet header, and the fixed IP header when the EtherType is IP.
fn tc_min_len(frame: &[u8]) -> usize {
    if frame.len() < ETH_HLEN {
        return ETH_HLEN;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => ETH_HLEN + 20,
        0x86DD => ETH_HLEN + 40,
        _ => ETH_HLEN,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Frame and rule-set strategies. A frame is generated as a [`FrameSpec`]
/// (its shape, then mutations), serialized with etherparse's header types,
/// so shrinking works on the shape and the bytes follow.
mod generate {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use etherparse::{
        EtherType, Ethernet2Header, IpAuthHeader, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options,
        Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader,
        VlanId, VlanPcp,
    };
    use proptest::{
        collection::vec,
        prelude::*,
        sample::{Index, select},
    };

    use super::{Prefix, Proto, Rule};

    /// Ports rules and frames favour, so that rules get hit: well-known
    /// ones, the extremes, and byte-swapped pairs (0x1234 / 0x3412, 1 / 256).
    const PORTS: &[u16] = &[1, 53, 80, 256, 443, 4660, 13330, 65535];
    const V4_POOL: &[[u8; 4]] = &[
        [10, 1, 2, 3],
        [10, 0, 0, 0],
        [10, 255, 255, 255],
        [11, 0, 0, 0],
        [203, 0, 113, 7],
        [192, 0, 2, 9],
        [198, 18, 0, 1],
        [0, 0, 0, 0],
        [255, 255, 255, 255],
    ];
    const V6_POOL: &[&str] = &[
        "2001:db8:a::5",
        "2001:db8:a:ffff::1",
        "2001:db8:b::",
        "2001:db8::",
        "::ffff:10.1.2.3",
        "a01:203::",
        "fe80::1",
        "::",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ];
    const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const DST_V4: [u8; 4] = [198, 51, 100, 1];
    const DST_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    fn v6_addr(text: &str) -> [u8; 16] {
        text.parse::<Ipv6Addr>().expect("pool address").octets()
    }

    #[derive(Clone, Debug)]
    pub struct FrameSpec {
        pub tags: Vec<Tag>,
        pub body: Body,
        pub mutations: Vec<Mutation>,
    }

    #[derive(Clone, Debug)]
    pub struct Tag {
        pub tpid: u16,
        pub vid: u16,
    }

    #[derive(Clone, Debug)]
    pub enum Body {
        V4(V4),
        V6(V6),
        Arp,
        /// Another EtherType, then bytes.
        Other(u16, Vec<u8>),
        /// The whole frame (Ethernet header included) is these bytes.
        Raw(Vec<u8>),
    }

    #[derive(Clone, Debug)]
    pub struct V4 {
        /// Option bytes: a multiple of 4, at most 40.
        pub options: Vec<u8>,
        pub proto: u8,
        pub frag_offset: u16,
        pub more: bool,
        pub dont: bool,
        pub src: [u8; 4],
        pub l4: L4,
    }

    #[derive(Clone, Debug)]
    pub struct V6 {
        pub src: [u8; 16],
        pub exts: Vec<Ext>,
        /// Next header after the chain.
        pub last: u8,
        pub l4: L4,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Ext {
        /// Options-style headers of (units + 1) * 8 bytes.
        Hop(u8),
        Dest(u8),
        Routing(u8),
        Frag {
            offset: u16,
            more: bool,
        },
        /// AH with `words` 4-byte words of ICV (payload length words + 1).
        Auth(u8),
    }

    /// The transport header: ports, then payload bytes. Written as TCP, UDP
    /// or SCTP when the protocol is one of them, else as UDP-shaped bytes (a
    /// parser that ignores the protocol would find a port there).
    #[derive(Clone, Debug)]
    pub struct L4 {
        pub sport: u16,
        pub dport: u16,
        pub payload: u8,
    }

    /// Offsets in a built frame that mutations aim at.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Anchor {
        IpStart,
        /// End of the fixed IP header (20 / 40 bytes).
        IpFixedEnd,
        L4Start,
        /// Just past the destination port.
        PortEnd,
    }

    #[derive(Clone, Copy, Debug)]
    pub enum LenEdit {
        /// This many bytes more (or fewer) than the length that just covers
        /// the destination port.
        AroundPort(i16),
        Set(u16),
    }

    #[derive(Clone, Copy, Debug)]
    pub enum ExtEdit {
        Next(u8),
        Len(u8),
        /// Bytes 2..4 (a fragment header's offset word).
        Word(u16),
    }

    #[derive(Clone, Debug)]
    pub enum Mutation {
        Truncate(Index),
        TruncateAt(Anchor, i8),
        SetByte(Index, u8),
        FlipBit(Index, u8),
        /// IPv4 total length or IPv6 payload length.
        IpLen(LenEdit),
        /// The IPv4 IHL nibble.
        Ihl(u8),
        /// The IP version nibble.
        Version(u8),
        /// The EtherType after the tags.
        EtherType(u16),
        /// An IPv6 extension header's fields (which one: the index).
        Ext(Index, ExtEdit),
        Append(Vec<u8>),
    }

    /// Where things ended up in a built frame.
    #[derive(Clone, Debug, Default)]
    pub struct Layout {
        /// Offset of the innermost EtherType.
        ether_type_at: usize,
        ip: Option<usize>,
        ip_version: u8,
        exts: Vec<usize>,
        l4: Option<usize>,
    }

    impl Layout {
        fn anchor(&self, a: Anchor) -> Option<usize> {
            match a {
                Anchor::IpStart => self.ip,
                Anchor::IpFixedEnd => self
                    .ip
                    .map(|ip| ip + if self.ip_version == 4 { 20 } else { 40 }),
                Anchor::L4Start => self.l4,
                Anchor::PortEnd => self.l4.map(|l4| l4 + 4),
            }
        }
    }

    fn l4_bytes(proto: u8, l4: &L4) -> Vec<u8> {
        let mut out = match IpNumber(proto) {
            IpNumber::TCP => TcpHeader::new(l4.sport, l4.dport, 0x0102_0304, 1024)
                .to_bytes()
                .to_vec(),
            IpNumber::SCTP => {
                // etherparse has no SCTP: the 12-byte common header.
                let mut h = Vec::with_capacity(12);
                h.extend_from_slice(&l4.sport.to_be_bytes());
                h.extend_from_slice(&l4.dport.to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0]);
                h
            }
            _ => UdpHeader {
                source_port: l4.sport,
                destination_port: l4.dport,
                length: 8 + u16::from(l4.payload),
                checksum: 0,
            }
            .to_bytes()
            .to_vec(),
        };
        out.extend((0..l4.payload).map(|i| i.wrapping_mul(37)));
        out
    }

    fn ext_number(e: Ext) -> IpNumber {
        match e {
            Ext::Hop(_) => IpNumber::IPV6_HEADER_HOP_BY_HOP,
            Ext::Dest(_) => IpNumber::IPV6_DESTINATION_OPTIONS,
            Ext::Routing(_) => IpNumber::IPV6_ROUTE_HEADER,
            Ext::Frag { .. } => IpNumber::IPV6_FRAGMENTATION_HEADER,
            Ext::Auth(_) => IpNumber::AUTHENTICATION_HEADER,
        }
    }

    fn ext_bytes(e: Ext, next: IpNumber) -> Vec<u8> {
        match e {
            Ext::Hop(u) | Ext::Dest(u) | Ext::Routing(u) => {
                let payload = vec![0u8; usize::from(u) * 8 + 6];
                Ipv6RawExtHeader::new_raw(next, &payload)
                    .expect("extension payload")
                    .to_bytes()
                    .to_vec()
            }
            Ext::Frag { offset, more } => Ipv6FragmentHeader::new(
                next,
                IpFragOffset::try_new(offset & 0x1FFF).expect("13 bits"),
                more,
                0x4242,
            )
            .to_bytes()
            .to_vec(),
            Ext::Auth(words) => {
                let icv = vec![0xAA; usize::from(words) * 4];
                IpAuthHeader::new(next, 0x100, 1, &icv)
                    .expect("icv")
                    .to_bytes()
                    .to_vec()
            }
        }
    }

    /// Serializes `spec` without its mutations.
    pub fn build_clean(spec: &FrameSpec) -> (Vec<u8>, Layout) {
        let mut layout = Layout::default();
        if let Body::Raw(bytes) = &spec.body {
            return (bytes.clone(), layout);
        }
        let inner_type = match &spec.body {
            Body::V4(_) => EtherType::IPV4,
            Body::V6(_) => EtherType::IPV6,
            Body::Arp => EtherType::ARP,
            Body::Other(t, _) => EtherType(*t),
            Body::Raw(_) => unreachable!(),
        };
        // Each tag's TPID is the EtherType before it.
        let mut types: Vec<EtherType> = spec.tags.iter().map(|t| EtherType(t.tpid)).collect();
        types.push(inner_type);
        let mut out = Ethernet2Header {
            source: SRC_MAC,
            destination: DST_MAC,
            ether_type: types[0],
        }
        .to_bytes()
        .to_vec();
        layout.ether_type_at = 12;
        for (i, tag) in spec.tags.iter().enumerate() {
            let h = SingleVlanHeader {
                pcp: VlanPcp::try_new(3).unwrap(),
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(tag.vid & 0xFFF).unwrap(),
                ether_type: types[i + 1],
            };
            layout.ether_type_at = out.len() + 2;
            out.extend_from_slice(&h.to_bytes());
        }
        let ip = out.len();
        match &spec.body {
            Body::V4(v4) => {
                let body = l4_bytes(v4.proto, &v4.l4);
                let mut h =
                    Ipv4Header::new(body.len() as u16, 64, IpNumber(v4.proto), v4.src, DST_V4)
                        .expect("ipv4 header");
                h.options = Ipv4Options::try_from(&v4.options[..]).expect("options");
                h.set_payload_len(body.len()).expect("length");
                h.identification = 0x4242;
                h.fragment_offset = IpFragOffset::try_new(v4.frag_offset & 0x1FFF).unwrap();
                h.more_fragments = v4.more;
                h.dont_fragment = v4.dont;
                h.header_checksum = h.calc_header_checksum();
                let bytes = h.to_bytes();
                layout.ip = Some(ip);
                layout.ip_version = 4;
                layout.l4 = Some(ip + bytes.len());
                out.extend_from_slice(&bytes);
                out.extend_from_slice(&body);
            }
            Body::V6(v6) => {
                let mut chain = Vec::new();
                let mut offsets = Vec::new();
                let mut nexts: Vec<IpNumber> = v6.exts.iter().map(|e| ext_number(*e)).collect();
                nexts.push(IpNumber(v6.last));
                for (i, e) in v6.exts.iter().enumerate() {
                    offsets.push(chain.len());
                    chain.extend_from_slice(&ext_bytes(*e, nexts[i + 1]));
                }
                let l4_at = chain.len();
                chain.extend_from_slice(&l4_bytes(v6.last, &v6.l4));
                let mut h = Ipv6Header {
                    hop_limit: 64,
                    source: v6.src,
                    destination: DST_V6,
                    next_header: nexts[0],
                    ..Default::default()
                };
                h.set_payload_length(chain.len()).expect("length");
                layout.ip = Some(ip);
                layout.ip_version = 6;
                layout.exts = offsets.iter().map(|o| ip + 40 + o).collect();
                layout.l4 = Some(ip + 40 + l4_at);
                out.extend_from_slice(&h.to_bytes());
                out.extend_from_slice(&chain);
            }
            Body::Arp => {
                let arp = etherparse::ArpPacket::new(
                    etherparse::ArpHardwareId::ETHERNET,
                    EtherType::IPV4,
                    etherparse::ArpOperation::REQUEST,
                    &SRC_MAC,
                    &[203, 0, 113, 7],
                    &[0; 6],
                    &DST_V4,
                )
                .expect("arp");
                out.extend_from_slice(&arp.to_bytes());
            }
            Body::Other(_, bytes) => out.extend_from_slice(bytes),
            Body::Raw(_) => unreachable!(),
        }
        (out, layout)
    }

    /// Serializes `spec` and applies its mutations, in order.
    pub fn build(spec: &FrameSpec) -> Vec<u8> {
        let (mut f, layout) = build_clean(spec);
        for m in &spec.mutations {
            mutate(&mut f, &layout, m);
        }
        f
    }

    fn set_u16(f: &mut [u8], at: usize, v: u16) {
        if at + 2 <= f.len() {
            f[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
    }

    fn mutate(f: &mut Vec<u8>, layout: &Layout, m: &Mutation) {
        match m {
            Mutation::Truncate(i) => {
                let at = i.index(f.len() + 1);
                f.truncate(at);
            }
            Mutation::TruncateAt(anchor, delta) => {
                if let Some(at) = layout.anchor(*anchor) {
                    let at = (at as isize + isize::from(*delta)).max(0) as usize;
                    f.truncate(at);
                }
            }
            Mutation::SetByte(i, v) => {
                if !f.is_empty() {
                    let at = i.index(f.len());
                    f[at] = *v;
                }
            }
            Mutation::FlipBit(i, bit) => {
                if !f.is_empty() {
                    let at = i.index(f.len());
                    f[at] ^= 1 << (bit & 7);
                }
            }
            Mutation::IpLen(edit) => {
                let Some(ip) = layout.ip else { return };
                let (field, counted_from) = if layout.ip_version == 4 {
                    (ip + 2, ip)
                } else {
                    (ip + 4, ip + 40)
                };
                let value = match edit {
                    LenEdit::Set(v) => *v,
                    LenEdit::AroundPort(d) => {
                        let Some(port_end) = layout.anchor(Anchor::PortEnd) else {
                            return;
                        };
                        let needed = port_end as i64 - counted_from as i64;
                        (needed + i64::from(*d)).clamp(0, 65535) as u16
                    }
                };
                set_u16(f, field, value);
            }
            Mutation::Ihl(ihl) => {
                if let Some(ip) = layout.ip
                    && ip < f.len()
                {
                    f[ip] = (f[ip] & 0xF0) | (ihl & 0x0F);
                }
            }
            Mutation::Version(v) => {
                if let Some(ip) = layout.ip
                    && ip < f.len()
                {
                    f[ip] = (f[ip] & 0x0F) | (v << 4);
                }
            }
            Mutation::EtherType(t) => set_u16(f, layout.ether_type_at, *t),
            Mutation::Ext(i, edit) => {
                if layout.exts.is_empty() {
                    return;
                }
                let at = layout.exts[i.index(layout.exts.len())];
                match edit {
                    ExtEdit::Next(n) if at < f.len() => f[at] = *n,
                    ExtEdit::Len(n) if at + 1 < f.len() => f[at + 1] = *n,
                    ExtEdit::Word(w) => set_u16(f, at + 2, *w),
                    _ => {}
                }
            }
            Mutation::Append(bytes) => f.extend_from_slice(bytes),
        }
    }

    fn port() -> impl Strategy<Value = u16> + Clone {
        prop_oneof![8 => select(PORTS), 1 => Just(0u16), 1 => any::<u16>()]
    }

    fn l4() -> impl Strategy<Value = L4> + Clone {
        (
            port(),
            port(),
            prop_oneof![6 => Just(0u8), 3 => 1u8..=16, 1 => 17u8..=64],
        )
            .prop_map(|(sport, dport, payload)| L4 {
                sport,
                dport,
                payload,
            })
    }

    fn src_v4() -> impl Strategy<Value = [u8; 4]> + Clone {
        prop_oneof![6 => select(V4_POOL), 4 => any::<[u8; 4]>()]
    }

    fn src_v6() -> impl Strategy<Value = [u8; 16]> + Clone {
        let pool: Vec<[u8; 16]> = V6_POOL.iter().map(|a| v6_addr(a)).collect();
        prop_oneof![6 => select(pool), 4 => any::<[u8; 16]>()]
    }

    /// Transport protocols: mostly filtered ones, then others (including
    /// IPv6 extension header numbers, for IPv4 and after a chain).
    fn proto() -> impl Strategy<Value = u8> + Clone {
        prop_oneof![
            30 => Just(6u8),
            25 => Just(17u8),
            15 => Just(132u8),
            10 => select(&[1u8, 58, 47, 50, 59, 41, 4, 135, 253][..]),
            5 => select(&[0u8, 43, 44, 51, 60][..]),
            5 => any::<u8>(),
        ]
    }

    fn frag_offset() -> impl Strategy<Value = u16> + Clone {
        prop_oneof![8 => Just(0u16), 1 => Just(1u16), 1 => 0u16..0x2000]
    }

    fn options() -> impl Strategy<Value = Vec<u8>> + Clone {
        prop_oneof![
            6 => Just(vec![]),
            4 => (1usize..=10).prop_flat_map(|words| vec(any::<u8>(), words * 4)),
        ]
    }

    fn v4() -> impl Strategy<Value = V4> + Clone {
        (
            options(),
            proto(),
            frag_offset(),
            any::<bool>(),
            any::<bool>(),
            src_v4(),
            l4(),
        )
            .prop_map(|(options, proto, frag_offset, more, dont, src, l4)| V4 {
                options,
                proto,
                frag_offset,
                more,
                dont,
                src,
                l4,
            })
    }

    fn ext() -> impl Strategy<Value = Ext> + Clone {
        prop_oneof![
            (0u8..=3).prop_map(Ext::Hop),
            (0u8..=3).prop_map(Ext::Dest),
            (0u8..=3).prop_map(Ext::Routing),
            (frag_offset(), any::<bool>()).prop_map(|(offset, more)| Ext::Frag { offset, more }),
            (0u8..=4).prop_map(Ext::Auth),
        ]
    }

    /// Extension chains: short ones, ones around the limit of 8, any up to
    /// 12, and one header repeated (a chain that "loops" past the limit).
    fn exts() -> impl Strategy<Value = Vec<Ext>> + Clone {
        prop_oneof![
            4 => Just(vec![]),
            4 => vec(ext(), 1..=3),
            3 => vec(ext(), 7..=9),
            1 => vec(ext(), 0..=12),
            1 => (ext(), 6usize..=12).prop_map(|(e, n)| vec![e; n]),
        ]
    }

    fn v6() -> impl Strategy<Value = V6> + Clone {
        (src_v6(), exts(), proto(), l4()).prop_map(|(src, exts, last, l4)| V6 {
            src,
            exts,
            last,
            l4,
        })
    }

    fn tags() -> impl Strategy<Value = Vec<Tag>> + Clone {
        let tag = (
            prop_oneof![6 => Just(0x8100u16), 3 => Just(0x88A8u16), 1 => Just(0x9100u16)],
            0u16..4096,
        )
            .prop_map(|(tpid, vid)| Tag { tpid, vid });
        prop_oneof![
            60 => Just(vec![]),
            20 => vec(tag.clone(), 1),
            15 => vec(tag.clone(), 2),
            5 => vec(tag, 3..=4),
        ]
    }

    fn ether_type() -> impl Strategy<Value = u16> + Clone {
        prop_oneof![
            3 => select(&[0x0800u16, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x0806, 0x88CC, 0x8847, 0x88E5, 0x0000, 0xFFFF][..]),
            1 => any::<u16>(),
        ]
    }

    fn body() -> impl Strategy<Value = Body> + Clone {
        prop_oneof![
            35 => v4().prop_map(Body::V4),
            40 => v6().prop_map(Body::V6),
            4 => Just(Body::Arp),
            4 => (ether_type(), vec(any::<u8>(), 0..=64)).prop_map(|(t, b)| Body::Other(t, b)),
            5 => vec(any::<u8>(), 0..=96).prop_map(Body::Raw),
        ]
    }

    fn mutation() -> impl Strategy<Value = Mutation> + Clone {
        let anchor = select(
            &[
                Anchor::IpStart,
                Anchor::IpFixedEnd,
                Anchor::L4Start,
                Anchor::PortEnd,
            ][..],
        );
        let len_edit = prop_oneof![
            6 => (-8i16..=8).prop_map(LenEdit::AroundPort),
            1 => Just(LenEdit::Set(0)),
            2 => any::<u16>().prop_map(LenEdit::Set),
        ];
        let ext_edit = prop_oneof![
            3 => select(&[0u8, 43, 44, 51, 60, 6, 17, 132, 58, 59, 50][..]).prop_map(ExtEdit::Next),
            1 => any::<u8>().prop_map(ExtEdit::Next),
            3 => prop_oneof![Just(0u8), Just(1), Just(2), Just(255), any::<u8>()].prop_map(ExtEdit::Len),
            2 => prop_oneof![Just(0u16), Just(1), Just(8), Just(0xFFF8), any::<u16>()].prop_map(ExtEdit::Word),
        ];
        prop_oneof![
            10 => any::<Index>().prop_map(Mutation::Truncate),
            10 => (anchor, -6i8..=6).prop_map(|(a, d)| Mutation::TruncateAt(a, d)),
            8 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
            6 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
            10 => len_edit.prop_map(Mutation::IpLen),
            5 => (0u8..16).prop_map(Mutation::Ihl),
            3 => (0u8..16).prop_map(Mutation::Version),
            3 => ether_type().prop_map(Mutation::EtherType),
            10 => (any::<Index>(), ext_edit).prop_map(|(i, e)| Mutation::Ext(i, e)),
            4 => vec(any::<u8>(), 1..=32).prop_map(Mutation::Append),
        ]
    }

    pub fn frame() -> impl Strategy<Value = FrameSpec> + Clone {
        (
            tags(),
            body(),
            prop_oneof![60 => Just(vec![]), 40 => vec(mutation(), 1..=3)],
        )
            .prop_map(|(tags, body, mutations)| FrameSpec {
                tags,
                body,
                mutations,
            })
    }

    fn prefix() -> impl Strategy<Value = Prefix> + Clone {
        let v4 = (
            prop_oneof![9 => select(V4_POOL), 1 => any::<[u8; 4]>()],
            prop_oneof![3 => select(&[0u8, 8, 16, 24, 31, 32][..]), 1 => 0u8..=32],
        )
            .prop_map(|(a, len)| Prefix::new(Ipv4Addr::from(a).into(), len));
        let pool: Vec<[u8; 16]> = V6_POOL.iter().map(|a| v6_addr(a)).collect();
        let v6 = (
            prop_oneof![9 => select(pool), 1 => any::<[u8; 16]>()],
            prop_oneof![3 => select(&[0u8, 32, 48, 64, 96, 127, 128][..]), 1 => 0u8..=128],
        )
            .prop_map(|(a, len)| Prefix::new(Ipv6Addr::from(a).into(), len));
        prop_oneof![v4, v6]
    }

    fn rule() -> impl Strategy<Value = Rule> + Clone {
        let low = prop_oneof![9 => select(PORTS), 1 => 1u16..=65535];
        (
            select(Proto::ALL.to_vec()),
            low,
            prop_oneof![8 => Just(0u16), 2 => 1u16..=16],
            proptest::bool::weighted(0.3),
            prop_oneof![4 => Just(vec![]), 6 => vec(prefix(), 1..=3)],
        )
            .prop_map(|(proto, low, extra, audit, allow)| Rule {
                proto,
                low,
                high: low.saturating_add(extra),
                audit,
                allow,
            })
    }

    pub fn rules() -> impl Strategy<Value = Vec<Rule>> + Clone {
        prop_oneof![1 => Just(vec![]), 9 => vec(rule(), 1..=12)]
    }
}

// ---------------------------------------------------------------------------
// The kernel side
// ---------------------------------------------------------------------------

/// What one program did with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// The kernel refused the test run (EINVAL: too short for this hook).
    Refused,
    /// The program's return value and how its attach-point counters moved
    /// (dropped, passed, audited, allowed, not_parsed).
    Ran(u32, [u64; 5]),
}

#[derive(Clone, Copy, Debug)]
struct Observed {
    xdp: Run,
    tc: Run,
}

fn bucket(o: Outcome) -> usize {
    match o {
        Outcome::Dropped => 0,
        Outcome::Passed => 1,
        Outcome::Audited => 2,
        Outcome::Allowed => 3,
        Outcome::NotParsed => 4,
    }
}

fn unit(o: Outcome) -> [u64; 5] {
    let mut d = [0; 5];
    d[bucket(o)] = 1;
    d
}

fn describe_delta(d: &[u64; 5]) -> String {
    let moved: Vec<String> = Outcome::ALL
        .iter()
        .filter(|o| d[bucket(**o)] != 0)
        .map(|o| format!("{}+{}", o.name(), d[bucket(*o)]))
        .collect();
    if moved.is_empty() {
        "no counter".into()
    } else {
        moved.join(",")
    }
}

/// Everything wrong with one frame's observations, or None.
fn compare(frame: &[u8], want: Outcome, seen: &Observed) -> Option<String> {
    let mut problems = Vec::new();
    let hooks = [
        (
            "XDP",
            seen.xdp,
            frame.len() < ETH_HLEN,
            if want.drops() { XDP_DROP } else { XDP_PASS },
        ),
        (
            "TC",
            seen.tc,
            frame.len() < tc_min_len(frame),
            if want.drops() {
                TC_ACT_SHOT
            } else {
                TC_ACT_UNSPEC
            },
        ),
    ];
    for (hook, run, refused, want_ret) in hooks {
        match (run, refused) {
            (Run::Refused, true) => {}
            (Run::Refused, false) => problems.push(format!("{hook}: the kernel refused the run")),
            (Run::Ran(ret, delta), refused) => {
                if refused {
                    problems.push(format!(
                        "{hook}: ran a frame the kernel should refuse ({} bytes)",
                        frame.len()
                    ));
                }
                if ret != want_ret {
                    problems.push(format!("{hook}: returned {ret:#x}, expected {want_ret:#x}"));
                }
                if delta != unit(want) {
                    problems.push(format!(
                        "{hook}: counted {}, expected {want}",
                        describe_delta(&delta)
                    ));
                }
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// `BPF_MAP_LOOKUP_BATCH` (bpf_cmd 24) and its part of `union bpf_attr`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn protocol(p: Proto) -> Protocol {
    match p {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
        Proto::Sctp => Protocol::Sctp,
    }
}

fn proto_of_number(n: u8) -> Proto {
    Proto::from_number(etherparse::IpNumber(n)).expect("rule key protocol")
}

/// Both programs, several instances of each, against one private pin
/// directory.
struct Kernel {
    xdp: Vec<Ebpf>,
    tc: Vec<Ebpf>,
    rules: RuleTable,
    attach_stats: MapData,
    /// Where the programs count drops: the chunks beside the rule counters.
    counters: Counters,
    cpus: usize,
    /// The rules currently applied, to remove them again.
    applied: Vec<Rule>,
    batch: usize,
    /// Counters of every slot after the last read.
    slots: Vec<[u64; 5]>,
    // Last, so the directory goes after everything using it.
    _pins: support::TestPins,
}

impl Kernel {
    /// `batch` instances of each program: XDP in attach slots 0..batch, TC
    /// in batch..2*batch.
    fn new(tag: &str, batch: usize) -> Self {
        let pins = support::TestPins::new(tag);
        let mut xdp = Vec::new();
        let mut tc = Vec::new();
        for i in 0..batch {
            let mut obj = load_object(&pins.pins.layout_dir(), i as u32).expect("eBPF object");
            let prog: &mut Xdp = obj.program_mut(PROG_XDP).unwrap().try_into().unwrap();
            prog.load().expect("the verifier accepts ingress_xdp");
            xdp.push(obj);
            let mut obj =
                load_object(&pins.pins.layout_dir(), (batch + i) as u32).expect("eBPF object");
            let prog: &mut SchedClassifier = obj.program_mut(PROG_TC).unwrap().try_into().unwrap();
            prog.load().expect("the verifier accepts ingress_tc");
            tc.push(obj);
        }
        let rules = RuleTable::open(&pins.pins).expect("rule table");
        let attach_stats = MapData::from_pin(pins.pins.map(MAP_ATTACH_STATS)).expect("stats");
        let counters = Counters::open_dir(&pins.pins.layout_dir()).expect("counter chunks");
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let mut k = Self {
            xdp,
            tc,
            rules,
            attach_stats,
            counters,
            cpus,
            applied: Vec::new(),
            slots: vec![[0; 5]; 2 * batch],
            batch,
            _pins: pins,
        };
        k.slots = k.read_slots();
        k
    }

    fn set_rules(&mut self, rules: &[Rule]) {
        let old: Vec<PortSpec> = self
            .applied
            .iter()
            .map(|r| PortSpec {
                proto: protocol(r.proto),
                low: r.low,
                high: r.high,
            })
            .collect();
        self.rules.remove(&old).expect("remove rules");
        for r in rules {
            let spec = PortSpec {
                proto: protocol(r.proto),
                low: r.low,
                high: r.high,
            };
            let allow_from = r
                .allow
                .iter()
                .map(|p| Cidr::new(p.addr, p.len).expect("masked prefix"))
                .collect();
            let mode = if r.audit { Mode::Audit } else { Mode::Block };
            self.rules
                .apply(&[spec], &RuleSpec { mode, allow_from })
                .expect("apply rule");
        }
        self.applied = rules.to_vec();
    }

    /// Every slot's counters, summed over CPUs, with one syscall, and its
    /// drops from the counter chunks (no slot was cleared: no bases).
    fn read_slots(&self) -> Vec<[u64; 5]> {
        let drops = self.counters.tally().expect("read COUNTERS").dropped;
        let per_value = 5 * self.cpus;
        let slots = 2 * self.batch;
        let mut keys = vec![0u32; slots];
        let mut values = vec![0u64; slots * per_value];
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: &raw mut out_batch as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: slots as u32,
            map_fd: self.attach_stats.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the buffers outlive the call and hold `count` keys and
        // values (a per-CPU value is one 40-byte AttachCounters per CPU).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = std::io::Error::last_os_error();
        assert!(
            ret == 0 || err.raw_os_error() == Some(libc::ENOENT),
            "BPF_MAP_LOOKUP_BATCH on ATTACH_STATS: {err}"
        );
        assert_eq!(attr.count as usize, slots, "slots read");
        (0..slots)
            .map(|i| {
                assert_eq!(keys[i] as usize, i, "slot order");
                let mut sum = [0u64; 5];
                for cpu in 0..self.cpus {
                    let at = i * per_value + cpu * 5;
                    for (b, s) in sum.iter_mut().enumerate() {
                        *s += values[at + b];
                    }
                }
                assert_eq!(
                    sum[0], 0,
                    "slot {i}: the programs wrote ATTACH_STATS' drops"
                );
                sum[0] = drops[i];
                sum
            })
            .collect()
    }

    fn run(&self, slot: usize, hook_tc: bool, frame: &[u8]) -> Result<u32, ProgramError> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        if hook_tc {
            let prog: &SchedClassifier =
                self.tc[slot].program(PROG_TC).unwrap().try_into().unwrap();
            prog.test_run(opts).map(|r| r.return_value)
        } else {
            let prog: &Xdp = self.xdp[slot]
                .program(PROG_XDP)
                .unwrap()
                .try_into()
                .unwrap();
            prog.test_run(opts).map(|r| r.return_value)
        }
    }

    /// Runs up to `batch` frames, frame i in slot i of each program.
    fn run_batch(&mut self, frames: &[Vec<u8>]) -> Vec<Observed> {
        let batch = self.batch;
        assert!(frames.len() <= batch);
        let rets: Vec<(Option<u32>, Option<u32>)> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    ret_or_refused(self.run(i, false, f)),
                    ret_or_refused(self.run(i, true, f)),
                )
            })
            .collect();
        let after = self.read_slots();
        let delta = |slot: usize| -> [u64; 5] {
            std::array::from_fn(|b| after[slot][b] - self.slots[slot][b])
        };
        let observed = rets
            .iter()
            .enumerate()
            .map(|(i, (x, t))| Observed {
                xdp: x.map_or(Run::Refused, |r| Run::Ran(r, delta(i))),
                tc: t.map_or(Run::Refused, |r| Run::Ran(r, delta(batch + i))),
            })
            .collect();
        // A refused run must not have counted either.
        for (i, (x, t)) in rets.iter().enumerate() {
            assert!(x.is_some() || delta(i) == [0; 5], "refused XDP run counted");
            assert!(
                t.is_some() || delta(batch + i) == [0; 5],
                "refused TC run counted"
            );
        }
        self.slots = after;
        observed
    }

    /// Packets and bytes of every rule counter, summed over CPUs, keyed by
    /// the first port of the rule (a range shares one counter).
    fn rule_counters(&self) -> BTreeMap<(Proto, u16), (u64, u64)> {
        let groups = self.port_groups();
        let mut out = BTreeMap::new();
        for e in self.rules.list().expect("list rules") {
            let key = (proto_of_number(e.proto.number()), e.port);
            if e.counted && groups.get(&key) == Some(&key) && (e.packets, e.bytes) != (0, 0) {
                out.insert(key, (e.packets, e.bytes));
            }
        }
        out
    }

    /// Each counted port's rule, as its first port: the grouping the
    /// kernel's counters use.
    fn port_groups(&self) -> BTreeMap<(Proto, u16), (Proto, u16)> {
        let mut first_of_counter = BTreeMap::new();
        let mut out = BTreeMap::new();
        for e in self.rules.list().expect("list rules") {
            if !e.counted {
                continue;
            }
            let key = (proto_of_number(e.proto.number()), e.port);
            let first = *first_of_counter.entry(e.counter).or_insert(key);
            out.insert(key, first);
        }
        out
    }

    /// Per-port expected counts, summed per rule as the kernel counts them.
    fn by_rule(
        &self,
        per_port: &BTreeMap<(Proto, u16), (u64, u64)>,
    ) -> BTreeMap<(Proto, u16), (u64, u64)> {
        let groups = self.port_groups();
        let mut out: BTreeMap<(Proto, u16), (u64, u64)> = BTreeMap::new();
        for (key, (p, b)) in per_port {
            let rule = groups.get(key).copied().unwrap_or(*key);
            let sum = out.entry(rule).or_default();
            sum.0 += p;
            sum.1 += b;
        }
        out.retain(|_, v| *v != (0, 0));
        out
    }
}

fn ret_or_refused(res: Result<u32, ProgramError>) -> Option<u32> {
    match res {
        Ok(r) => Some(r),
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            None
        }
        Err(e) => panic!("BPF_PROG_TEST_RUN: {e}"),
    }
}

/// Rule counters a set of frames should have moved: per (protocol, port),
/// packets and bytes, one count per program that ran the frame.
fn expected_counts(
    counts: &mut BTreeMap<(Proto, u16), (u64, u64)>,
    judgement: &reference::Judgement,
    frame: &[u8],
    seen: &Observed,
) {
    if let Some(key) = judgement.counted {
        let runs = [seen.xdp, seen.tc]
            .iter()
            .filter(|r| matches!(r, Run::Ran(..)))
            .count() as u64;
        if runs > 0 {
            let e = counts.entry(key).or_default();
            e.0 += runs;
            e.1 += runs * frame.len() as u64;
        }
    }
}

fn diff_counts(
    want: &BTreeMap<(Proto, u16), (u64, u64)>,
    got: &BTreeMap<(Proto, u16), (u64, u64)>,
) -> Option<String> {
    let mut problems = Vec::new();
    for key in want.keys().chain(got.keys()) {
        let w = want.get(key).copied().unwrap_or_default();
        let g = got.get(key).copied().unwrap_or_default();
        if w != g {
            problems.push(format!(
                "rule {}/{}: counted {} packets {} bytes, expected {} packets {} bytes",
                key.1,
                key.0.name(),
                g.0,
                g.1,
                w.0,
                w.1
            ));
        }
    }
    problems.dedup();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// One frame under `rules`, through slot 0 of each program, checked on its
/// own: verdicts, buckets, and the rule counters it moved.
fn check_one(kernel: &mut Kernel, rules: &Rules, frame: &[u8]) -> Option<String> {
    let before = kernel.rule_counters();
    let seen = kernel.run_batch(&[frame.to_vec()])[0];
    let after = kernel.rule_counters();
    let judgement = reference::judge(rules, frame);
    let mut problems: Vec<String> = compare(frame, judgement.outcome, &seen)
        .into_iter()
        .collect();
    let mut moved = BTreeMap::new();
    for (k, (p, b)) in &after {
        let (p0, b0) = before.get(k).copied().unwrap_or_default();
        if (*p, *b) != (p0, b0) {
            moved.insert(*k, (p - p0, b - b0));
        }
    }
    let mut want = BTreeMap::new();
    expected_counts(&mut want, &judgement, frame, &seen);
    problems.extend(diff_counts(&kernel.by_rule(&want), &moved));
    (!problems.is_empty()).then(|| problems.join("; "))
}

// ---------------------------------------------------------------------------
// Regression cases
// ---------------------------------------------------------------------------

struct Case {
    rules: Vec<Rule>,
    frame: Vec<u8>,
}

fn parse_rule(line: &str) -> Option<Rule> {
    let mut words = line.split_whitespace();
    let spec = words.next()?;
    let (ports, proto) = spec.split_once('/')?;
    let (low, high) = match ports.split_once('-') {
        Some((l, h)) => (l.parse().ok()?, h.parse().ok()?),
        None => {
            let p = ports.parse().ok()?;
            (p, p)
        }
    };
    let audit = match words.next()? {
        "audit" => true,
        "block" => false,
        _ => return None,
    };
    let mut allow = Vec::new();
    if let Some(w) = words.next() {
        if w != "allow" {
            return None;
        }
        for p in words {
            let (addr, len) = p.split_once('/')?;
            let addr: IpAddr = addr.parse().ok()?;
            allow.push(Prefix::new(addr, len.parse().ok()?));
        }
    }
    Some(Rule {
        proto: Proto::from_name(proto)?,
        low,
        high,
        audit,
        allow,
    })
}

fn parse_case(text: &str) -> Result<Case, String> {
    let mut rules = Vec::new();
    let mut frame = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("rule ") {
            rules.push(parse_rule(rest).ok_or_else(|| format!("bad rule line {line:?}"))?);
        } else if let Some(rest) = line.strip_prefix("frame ") {
            frame = Some(unhex(rest).ok_or_else(|| format!("bad frame line {line:?}"))?);
        } else {
            return Err(format!("unknown line {line:?}"));
        }
    }
    Ok(Case {
        rules,
        frame: frame.ok_or("no frame line")?,
    })
}

fn format_case(case: &Case, comment: &str) -> String {
    let mut out = String::from(
        "# A disagreement found by tests/differential.rs, replayed by it before\n\
         # every run. Lines: `rule SPEC block|audit [allow PREFIX...]`, `frame HEX`.\n",
    );
    for line in comment.lines() {
        let _ = writeln!(out, "# {line}");
    }
    for r in &case.rules {
        let _ = writeln!(out, "rule {r}");
    }
    let _ = writeln!(out, "frame {}", hex(&case.frame));
    out
}

/// Saves a case; returns where.
fn save_case(case: &Case, comment: &str) -> PathBuf {
    let text = format_case(case, comment);
    // FNV-1a of the case (rules and frame), for a stable file name.
    let body: String = text.lines().filter(|l| !l.starts_with('#')).collect();
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = fixtures_dir();
    std::fs::create_dir_all(&dir).expect("create fixtures dir");
    let path = dir.join(format!("case-{hash:016x}.txt"));
    std::fs::write(&path, text).expect("write fixture");
    path
}

fn load_cases() -> Vec<(PathBuf, Case)> {
    let Ok(entries) = std::fs::read_dir(fixtures_dir()) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("fixture entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read fixture");
            let case = parse_case(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, case)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Stats {
    frames: u64,
    outcomes: BTreeMap<Outcome, u64>,
    reasons: BTreeMap<&'static str, u64>,
    tc_refused: u64,
    xdp_refused: u64,
    rule_sets: u64,
    time_setup: Duration,
    time_gen: Duration,
    time_kernel: Duration,
    time_reference: Duration,
}

impl Stats {
    fn add(&mut self, other: Stats) {
        self.frames += other.frames;
        self.tc_refused += other.tc_refused;
        self.xdp_refused += other.xdp_refused;
        self.rule_sets += other.rule_sets;
        self.time_setup += other.time_setup;
        self.time_gen += other.time_gen;
        self.time_kernel += other.time_kernel;
        self.time_reference += other.time_reference;
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
    }

    fn report(&self) -> String {
        let mut s = format!(
            "{} frames under {} rule sets; XDP refused {} (< 14 bytes), TC refused {}\n  outcomes:",
            self.frames, self.rule_sets, self.xdp_refused, self.tc_refused
        );
        for (o, n) in &self.outcomes {
            let _ = write!(s, " {o}={n}");
        }
        let _ = write!(
            s,
            "\n  time summed over workers: loading {:.1?}, generating {:.1?}, test runs {:.1?}, reference {:.1?}",
            self.time_setup, self.time_gen, self.time_kernel, self.time_reference
        );
        s.push_str("\n  why not judged by port:");
        for (r, n) in &self.reasons {
            let _ = write!(s, "\n    {n:>9}  {r}");
        }
        s
    }
}

/// A deterministic generator for `seed` (shrinking is driven by hand, see
/// [`shrink`], so the runner's own settings do not matter).
fn runner(seed: u64) -> TestRunner {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(&(seed ^ 0x9E37_79B9_7F4A_7C15).to_le_bytes());
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::XorShift, &bytes),
    )
}

/// Shrinks `tree` while `fails` holds for its value; returns the last
/// failing value (proptest's own shrinking loop).
fn shrink<T: ValueTree>(
    tree: &mut T,
    limit: u32,
    mut fails: impl FnMut(&T::Value) -> bool,
) -> T::Value {
    let mut last = tree.current();
    let mut iters = 0;
    if !tree.simplify() {
        return last;
    }
    while iters < limit {
        iters += 1;
        let value = tree.current();
        if fails(&value) {
            last = value;
            if !tree.simplify() {
                break;
            }
        } else if !tree.complicate() {
            break;
        }
    }
    last
}

/// Byte-level pass after the structural shrinking: cut bytes off the end,
/// then zero single bytes, as long as the frame still fails.
fn minimize_bytes(mut frame: Vec<u8>, mut fails: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    while !frame.is_empty() && fails(&frame[..frame.len() - 1]) {
        frame.pop();
    }
    for i in 0..frame.len() {
        if frame[i] != 0 {
            let old = std::mem::replace(&mut frame[i], 0);
            if !fails(&frame) {
                frame[i] = old;
            }
        }
    }
    frame
}

/// Shrinks a disagreement (frame first, then rule set), saves it as a
/// fixture and returns the failure message.
fn minimize<F: ValueTree<Value = generate::FrameSpec>, R: ValueTree<Value = Vec<Rule>>>(
    kernel: &mut Kernel,
    mut frame_tree: F,
    mut rules_tree: R,
    seed: u64,
    first: &str,
) -> String {
    let rules = rules_tree.current();
    kernel.set_rules(&rules);
    let reference_rules = Rules::new(&rules);
    let original = generate::build(&frame_tree.current());
    let reproduced = check_one(kernel, &reference_rules, &original);
    let spec = shrink(&mut frame_tree, 4096, |spec| {
        check_one(kernel, &reference_rules, &generate::build(spec)).is_some()
    });
    let frame = minimize_bytes(generate::build(&spec), |f| {
        check_one(kernel, &reference_rules, f).is_some()
    });
    let rules = shrink(&mut rules_tree, 1024, |rules| {
        kernel.set_rules(rules);
        check_one(kernel, &Rules::new(rules), &frame).is_some()
    });
    kernel.set_rules(&rules);
    let reference_rules = Rules::new(&rules);
    let why = check_one(kernel, &reference_rules, &frame)
        .unwrap_or_else(|| "(the shrunk case no longer fails: see the original)".into());
    let judgement = reference::judge(&reference_rules, &frame);
    let comment = format!(
        "seed {seed:#x}: {why}\nreference: {} ({:?})\nfirst seen as: {first}\noriginal frame: {}",
        judgement.outcome,
        judgement.parsed,
        hex(&original)
    );
    let case = Case { rules, frame };
    let path = save_case(&case, &comment);
    format!(
        "disagreement (seed {seed:#x}): {first}\n  original frame {}\n  reproduced alone: {}\n  shrunk to frame {}\n  rules: {:?}\n  shrunk: {why}\n  reference: {} ({:?})\n  saved as {}",
        hex(&original),
        reproduced.as_deref().unwrap_or("no"),
        hex(&case.frame),
        case.rules
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        judgement.outcome,
        judgement.parsed,
        path.display()
    )
}

/// Runs `frames` generated frames from `seed` on `kernel`.
fn soak(kernel: &mut Kernel, seed: u64, frames: u64) -> Result<Stats, String> {
    let mut runner = runner(seed);
    let frame_strategy = generate::frame();
    let rules_strategy = generate::rules();
    let mut stats = Stats::default();
    let mut done = 0;
    while done < frames {
        let rules_tree = rules_strategy.new_tree(&mut runner).expect("rule set");
        let rules = rules_tree.current();
        kernel.set_rules(&rules);
        let reference_rules = Rules::new(&rules);
        stats.rule_sets += 1;
        let epoch = EPOCH.min(frames - done);
        let mut counts = BTreeMap::new();
        let mut epoch_frames: Vec<Vec<u8>> = Vec::new();
        let mut left = epoch;
        while left > 0 {
            let n = (left as usize).min(BATCH);
            left -= n as u64;
            let t0 = Instant::now();
            let trees: Vec<_> = (0..n)
                .map(|_| frame_strategy.new_tree(&mut runner).expect("frame"))
                .collect();
            let batch: Vec<Vec<u8>> = trees
                .iter()
                .map(|t| generate::build(&t.current()))
                .collect();
            let t1 = Instant::now();
            let seen = kernel.run_batch(&batch);
            let t2 = Instant::now();
            let judgements: Vec<_> = batch
                .iter()
                .map(|f| reference::judge(&reference_rules, f))
                .collect();
            let t3 = Instant::now();
            stats.time_gen += t1 - t0;
            stats.time_kernel += t2 - t1;
            stats.time_reference += t3 - t2;
            for (i, tree) in trees.into_iter().enumerate() {
                let frame = &batch[i];
                let judgement = judgements[i];
                if let Some(problem) = compare(frame, judgement.outcome, &seen[i]) {
                    return Err(minimize(kernel, tree, rules_tree, seed, &problem));
                }
                expected_counts(&mut counts, &judgement, frame, &seen[i]);
                *stats.outcomes.entry(judgement.outcome).or_default() += 1;
                match judgement.parsed {
                    Ok(reference::Parsed::NoPort(why)) | Err(reference::Malformed(why)) => {
                        *stats.reasons.entry(why).or_default() += 1;
                    }
                    Ok(reference::Parsed::Port(_)) => {}
                }
                stats.xdp_refused += u64::from(seen[i].xdp == Run::Refused);
                stats.tc_refused += u64::from(seen[i].tc == Run::Refused);
            }
            epoch_frames.extend(batch);
        }
        if let Some(problem) = diff_counts(&kernel.by_rule(&counts), &kernel.rule_counters()) {
            // Find the frame: replay the epoch one frame at a time.
            kernel.set_rules(&rules);
            for frame in &epoch_frames {
                if let Some(p) = check_one(kernel, &reference_rules, frame) {
                    let case = Case {
                        rules: rules.clone(),
                        frame: frame.clone(),
                    };
                    let path = save_case(&case, &format!("seed {seed:#x}: {p}"));
                    return Err(format!(
                        "rule counters disagree (seed {seed:#x}): {problem}\n  first frame: {p}\n  saved as {}",
                        path.display()
                    ));
                }
            }
            return Err(format!(
                "rule counters disagree (seed {seed:#x}) but no single frame reproduces it: {problem}"
            ));
        }
        done += epoch;
        stats.frames += epoch;
    }
    Ok(stats)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("read /dev/urandom");
    u64::from_le_bytes(bytes)
}

/// Runs each (seed, frames) in turn, split over the CPUs: each worker has
/// its own programs and maps, kept from one seed to the next, and runs the
/// stream `seed + worker`. Panics with every disagreement found.
fn run_seeds(runs: &[(u64, u64)]) -> Stats {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4) as u64;
    let results: Vec<Vec<Result<(Stats, std::time::Duration), String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let setup = Instant::now();
                    let mut kernel = Kernel::new(&format!("df{w}"), BATCH);
                    let setup = setup.elapsed();
                    let mut out = Vec::new();
                    for (i, &(seed, frames)) in runs.iter().enumerate() {
                        let share = frames / workers + u64::from(w < frames % workers);
                        let started = Instant::now();
                        let r = soak(&mut kernel, seed.wrapping_add(w), share);
                        let failed = r.is_err();
                        out.push(r.map(|mut st| {
                            if i == 0 {
                                st.time_setup = setup;
                            }
                            (st, started.elapsed())
                        }));
                        if failed {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for (i, &(seed, _)) in runs.iter().enumerate() {
        let mut stats = Stats::default();
        let mut wall = std::time::Duration::ZERO;
        for worker in &results {
            match worker.get(i) {
                Some(Ok((st, took))) => {
                    wall = wall.max(*took);
                    stats.add(st.clone());
                }
                Some(Err(e)) => failures.push(e.clone()),
                None => {}
            }
        }
        eprintln!(
            "differential: seed {seed:#x}: {:.1?} ({:.0} frames/s, {workers} workers): {}",
            wall,
            stats.frames as f64 / wall.as_secs_f64().max(1e-9),
            stats.report()
        );
        total.add(stats);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    total
}

/// Saved disagreements first, then the generated frames.
#[test]
fn programs_agree_with_the_reference() {
    support::require_root();
    let cases = load_cases();
    if !cases.is_empty() {
        let mut kernel = Kernel::new("dfx", 1);
        let mut failed = Vec::new();
        for (path, case) in &cases {
            kernel.set_rules(&case.rules);
            if let Some(p) = check_one(&mut kernel, &Rules::new(&case.rules), &case.frame) {
                failed.push(format!("{}: {p}", path.display()));
            }
        }
        assert!(
            failed.is_empty(),
            "regression cases fail:\n{}",
            failed.join("\n")
        );
        eprintln!("differential: {} saved cases replayed", cases.len());
    }

    let started = Instant::now();
    let frames = env_u64("INGRESS_XDP_DIFF_FRAMES");
    let runs = match env_u64("INGRESS_XDP_DIFF_SEED") {
        Some(seed) => vec![(seed, frames.unwrap_or(CI_FRAMES))],
        None => {
            let seed = random_seed();
            eprintln!(
                "differential: fixed seed {CI_SEED:#x}, then random seed {seed:#x} \
                 (rerun that one: INGRESS_XDP_DIFF_SEED={seed:#x} INGRESS_XDP_DIFF_FRAMES={RANDOM_FRAMES})"
            );
            vec![
                (CI_SEED, frames.unwrap_or(CI_FRAMES)),
                (seed, RANDOM_FRAMES),
            ]
        }
    };
    let total = run_seeds(&runs);
    eprintln!(
        "differential: {} frames, zero disagreements, in {:.1?}",
        total.frames,
        started.elapsed()
    );
    if frames.is_none() {
        assert!(total.frames >= CI_FRAMES);
    }
}

/// The reference on hand-checked frames, so that a mistake there is not
/// mistaken for agreement with the programs.
#[test]
fn reference_sanity() {
    use generate::{Body, Ext, FrameSpec, L4, Mutation, Tag, V4, V6};
    let rules = Rules::new(&[
        Rule {
            proto: Proto::Tcp,
            low: 80,
            high: 80,
            audit: false,
            allow: vec![Prefix::new("10.0.0.0".parse().unwrap(), 8)],
        },
        Rule {
            proto: Proto::Udp,
            low: 53,
            high: 60,
            audit: true,
            allow: vec![],
        },
    ]);
    let l4 = |dport| L4 {
        sport: 40000,
        dport,
        payload: 0,
    };
    let v4 = |proto, src, dport, frag_offset| {
        Body::V4(V4 {
            options: vec![],
            proto,
            frag_offset,
            more: false,
            dont: false,
            src,
            l4: l4(dport),
        })
    };
    let v6 = |exts: Vec<Ext>, last, dport| {
        Body::V6(V6 {
            src: [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            exts,
            last,
            l4: l4(dport),
        })
    };
    let frame = |tags: &[u16], body, mutations| {
        generate::build(&FrameSpec {
            tags: tags.iter().map(|&tpid| Tag { tpid, vid: 5 }).collect(),
            body,
            mutations,
        })
    };
    let judge = |f: Vec<u8>| reference::judge(&rules, &f).outcome;
    let client = [203, 0, 113, 7];
    use Outcome::*;
    assert_eq!(judge(frame(&[], v4(6, client, 80, 0), vec![])), Dropped);
    assert_eq!(
        judge(frame(&[], v4(6, [10, 9, 9, 9], 80, 0), vec![])),
        Allowed
    );
    assert_eq!(judge(frame(&[], v4(17, client, 55, 0), vec![])), Audited);
    assert_eq!(judge(frame(&[], v4(17, client, 61, 0), vec![])), Passed);
    assert_eq!(judge(frame(&[], v4(6, client, 80, 1), vec![])), Passed);
    assert_eq!(judge(frame(&[], v4(1, client, 80, 0), vec![])), Passed);
    assert_eq!(
        judge(frame(&[0x8100, 0x88A8], v4(6, client, 80, 0), vec![])),
        Dropped
    );
    assert_eq!(
        judge(frame(&[0x8100; 3], v4(6, client, 80, 0), vec![])),
        NotParsed
    );
    assert_eq!(
        judge(frame(&[0x9100], v4(6, client, 80, 0), vec![])),
        Passed
    );
    assert_eq!(
        judge(frame(&[], v4(6, client, 80, 0), vec![Mutation::Ihl(4)])),
        NotParsed
    );
    assert_eq!(
        judge(frame(
            &[],
            v4(6, client, 80, 0),
            vec![Mutation::IpLen(generate::LenEdit::AroundPort(-1))]
        )),
        NotParsed
    );
    assert_eq!(
        judge(frame(
            &[],
            v4(6, client, 80, 0),
            vec![Mutation::IpLen(generate::LenEdit::AroundPort(0))]
        )),
        Dropped
    );
    assert_eq!(
        judge(frame(
            &[],
            v4(6, client, 80, 0),
            vec![Mutation::TruncateAt(generate::Anchor::PortEnd, -1)]
        )),
        NotParsed
    );
    assert_eq!(
        judge(frame(
            &[],
            v4(6, client, 80, 0),
            vec![Mutation::TruncateAt(generate::Anchor::PortEnd, 0)]
        )),
        Dropped
    );
    let eight = vec![
        Ext::Hop(0),
        Ext::Dest(1),
        Ext::Routing(2),
        Ext::Frag {
            offset: 0,
            more: true,
        },
        Ext::Auth(2),
        Ext::Dest(0),
        Ext::Hop(3),
        Ext::Routing(0),
    ];
    assert_eq!(judge(frame(&[], v6(eight.clone(), 6, 80), vec![])), Dropped);
    let mut nine = eight.clone();
    nine.push(Ext::Dest(0));
    assert_eq!(judge(frame(&[], v6(nine, 6, 80), vec![])), NotParsed);
    let later = vec![Ext::Frag {
        offset: 3,
        more: false,
    }];
    assert_eq!(judge(frame(&[], v6(later, 6, 80), vec![])), Passed);
    assert_eq!(
        judge(frame(&[], v6(vec![Ext::Auth(0)], 6, 80), vec![])),
        Dropped
    );
    // AH payload length 0 (8 bytes): shorter than AH's fixed fields.
    let mut ah0 = frame(&[], v6(vec![Ext::Auth(0)], 6, 80), vec![]);
    assert_eq!(ah0[14 + 40 + 1], 1, "AH payload length");
    ah0[14 + 40 + 1] = 0;
    assert_eq!(judge(ah0), NotParsed);
    assert_eq!(judge(frame(&[], v6(vec![], 58, 80), vec![])), Passed);
}
