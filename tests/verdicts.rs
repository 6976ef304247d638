//! Verdicts of both data-plane programs (`ingress_xdp` and `ingress_tc`) on
//! crafted frames, run through the kernel's BPF_PROG_TEST_RUN: no interface
//! is involved.
//!
//! Every case runs one frame through both programs, checks that they agree
//! (XDP_DROP/XDP_PASS against TC_ACT_SHOT/TC_ACT_UNSPEC), and checks which
//! bucket of each program's attach-point counters moved. Frames come from
//! `etherparse`, an independent packet builder; the few shapes it cannot
//! build are patched by hand where noted.
//!
//! Needs root (it loads programs and pins maps under /sys/fs/bpf/ixt*).

#[path = "support/mod.rs"]
mod support;

use aya::{
    Ebpf,
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use frames::{Ext, Family, L4, SPORT, Tags};
use ingress_xdp::{
    attach::{PointCounters, Registry},
    pins::{PROG_TC, PROG_XDP, load_object},
    rules::{Mode, RuleEntry, RuleSpec, RuleTable},
    spec::PortSpec,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_SHOT: u32 = 2;
/// TC_ACT_UNSPEC is -1; the test run reports the return value as a u32.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// Attach ids the two programs are loaded with, so their counters stay apart.
const XDP_ID: u32 = 0;
const TC_ID: u32 = 1;

/// The kernel refuses (EINVAL) test runs of either program on input shorter
/// than an Ethernet header; see also [`tc_min_len`].
const ETH_HLEN: usize = 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Drop,
    Pass,
}

/// Which attach-point counter bucket a frame is expected to land in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Dropped,
    /// Parsed and passed: no rule, no port, or a later fragment.
    Passed,
    Audited,
    Allowed,
    /// Headers not readable with certainty: passed untouched.
    NotParsed,
}

use Outcome::{Allowed, Audited, Dropped, NotParsed, Passed};

impl Outcome {
    fn verdict(self) -> Verdict {
        match self {
            Dropped => Verdict::Drop,
            _ => Verdict::Pass,
        }
    }

    /// How one frame with this outcome moves an attach point's counters
    /// (`passed` counts everything handed to the kernel).
    fn delta(self) -> PointCounters {
        let mut d = PointCounters {
            seen: 1,
            ..Default::default()
        };
        match self {
            Dropped => d.dropped = 1,
            Passed => d.passed = 1,
            Audited => (d.passed, d.audited) = (1, 1),
            Allowed => (d.passed, d.allowed) = (1, 1),
            NotParsed => (d.passed, d.not_parsed) = (1, 1),
        }
        d
    }
}

fn diff(after: PointCounters, before: PointCounters) -> PointCounters {
    PointCounters {
        seen: after.seen - before.seen,
        dropped: after.dropped - before.dropped,
        passed: after.passed - before.passed,
        audited: after.audited - before.audited,
        allowed: after.allowed - before.allowed,
        not_parsed: after.not_parsed - before.not_parsed,
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// Both programs loaded against one private pin directory.
struct Harness {
    xdp: Ebpf,
    tc: Ebpf,
    rules: RuleTable,
    registry: Registry,
    // Last, so the directory goes after everything using it.
    _pins: support::TestPins,
}

impl Harness {
    fn new(tag: &str) -> Self {
        let pins = support::TestPins::new(tag);

        let mut xdp =
            load_object(&pins.pins.layout_dir(), XDP_ID).expect("open the eBPF object for XDP");
        let prog: &mut Xdp = xdp
            .program_mut(PROG_XDP)
            .expect("ingress_xdp in the object")
            .try_into()
            .expect("ingress_xdp is an XDP program");
        prog.load().expect("the verifier accepts ingress_xdp");

        let mut tc =
            load_object(&pins.pins.layout_dir(), TC_ID).expect("open the eBPF object for TC");
        let prog: &mut SchedClassifier = tc
            .program_mut(PROG_TC)
            .expect("ingress_tc in the object")
            .try_into()
            .expect("ingress_tc is a classifier");
        prog.load().expect("the verifier accepts ingress_tc");

        let rules = RuleTable::open(&pins.pins).expect("open the rule table");
        let registry = Registry::open(&pins.pins).expect("open the attach registry");
        Self {
            xdp,
            tc,
            rules,
            registry,
            _pins: pins,
        }
    }

    /// Sets `ports` (comma-separated port specs) to `mode`, bypassed by
    /// sources in `allow_from`.
    fn rule(&mut self, ports: &str, mode: Mode, allow_from: &[&str]) {
        let specs: Vec<PortSpec> = ports
            .split(',')
            .map(|s| s.parse().expect("port spec"))
            .collect();
        let allow_from = allow_from
            .iter()
            .map(|c| c.parse().expect("cidr"))
            .collect();
        self.rules
            .apply(&specs, &RuleSpec { mode, allow_from })
            .expect("apply rule");
    }

    fn block(&mut self, ports: &str) {
        self.rule(ports, Mode::Block, &[]);
    }

    /// The listed rule of `port/proto`, with its counters.
    fn entry(&self, spec: &str) -> Option<RuleEntry> {
        let spec: PortSpec = spec.parse().expect("port spec");
        self.rules
            .list()
            .expect("list rules")
            .into_iter()
            .find(|e| e.proto == spec.proto && e.port == spec.low)
    }

    fn run_xdp(&self, frame: &[u8]) -> Result<u32, ProgramError> {
        let prog: &Xdp = self.xdp.program(PROG_XDP).unwrap().try_into().unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        Ok(prog.test_run(opts)?.return_value)
    }

    fn run_tc(&self, frame: &[u8]) -> Result<u32, ProgramError> {
        let prog: &SchedClassifier = self.tc.program(PROG_TC).unwrap().try_into().unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        Ok(prog.test_run(opts)?.return_value)
    }

    /// Runs `frame` through both programs and returns their common verdict.
    #[track_caller]
    fn verdict(&self, frame: &[u8]) -> Verdict {
        let xdp = match self.run_xdp(frame).expect("XDP test run") {
            XDP_DROP => Verdict::Drop,
            XDP_PASS => Verdict::Pass,
            other => panic!("XDP returned {other} for {}", hex(frame)),
        };
        let tc = match self.run_tc(frame).expect("TC test run") {
            TC_ACT_SHOT => Verdict::Drop,
            TC_ACT_UNSPEC => Verdict::Pass,
            other => panic!("TC returned {other:#x} for {}", hex(frame)),
        };
        assert_eq!(xdp, tc, "XDP and TC disagree on {}", hex(frame));
        xdp
    }

    /// (XDP, TC) attach-point counters.
    fn counters(&self) -> (PointCounters, PointCounters) {
        let read = |id| self.registry.counters(id).expect("read ATTACH_STATS");
        (read(XDP_ID), read(TC_ID))
    }

    /// Runs `frame` through both programs: both must reach `want`, and each
    /// must count the frame in exactly the bucket of `want`.
    #[track_caller]
    fn check(&self, what: &str, frame: &[u8], want: Outcome) {
        let before = self.counters();
        let got = self.verdict(frame);
        let after = self.counters();
        let frame = hex(frame);
        assert_eq!(got, want.verdict(), "{what}: verdict (frame {frame})");
        assert_eq!(
            diff(after.0, before.0),
            want.delta(),
            "{what}: XDP counters, expected {want:?} (frame {frame})"
        );
        assert_eq!(
            diff(after.1, before.1),
            want.delta(),
            "{what}: TC counters, expected {want:?} (frame {frame})"
        );
    }
}

/// Frames built with etherparse. Every frame ends with its transport header
/// (no payload unless asked for), so the destination port ends
/// `header_len - 4` bytes before the end of the frame.
mod frames {
    use std::net::Ipv6Addr;

    use etherparse::{
        ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, IpAuthHeader,
        IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader,
        Ipv6Header, Ipv6RawExtHeader, Ipv6RoutingExtensions, PacketBuilder, PacketBuilderStep,
        TcpHeader, UdpHeader, VlanId,
    };

    pub const SPORT: u16 = 40000;
    const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    pub const CLIENT_V4: [u8; 4] = [203, 0, 113, 7];
    const SERVER_V4: [u8; 4] = [198, 51, 100, 1];
    pub const CLIENT_V6: [u8; 16] = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7).octets();
    const SERVER_V6: [u8; 16] = Ipv6Addr::new(0x2001, 0xdb8, 0x5, 0, 0, 0, 0, 1).octets();

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Family {
        V4,
        V6,
    }

    impl Family {
        pub const ALL: [Family; 2] = [Family::V4, Family::V6];
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum L4 {
        Tcp,
        Udp,
        Sctp,
    }

    impl L4 {
        pub const ALL: [L4; 3] = [L4::Tcp, L4::Udp, L4::Sctp];

        pub fn name(self) -> &'static str {
            match self {
                L4::Tcp => "tcp",
                L4::Udp => "udp",
                L4::Sctp => "sctp",
            }
        }

        pub fn number(self) -> IpNumber {
            match self {
                L4::Tcp => IpNumber::TCP,
                L4::Udp => IpNumber::UDP,
                L4::Sctp => IpNumber::SCTP,
            }
        }

        /// Length of the header as written here.
        pub fn header_len(self) -> usize {
            match self {
                L4::Tcp => TcpHeader::MIN_LEN,
                L4::Udp => UdpHeader::LEN,
                L4::Sctp => 12,
            }
        }

        /// The transport header alone, for frames whose IP layer is finished
        /// by hand (extension chains, later fragments).
        pub fn header(self, sport: u16, dport: u16) -> Vec<u8> {
            match self {
                L4::Tcp => TcpHeader::new(sport, dport, 1, 1024).to_bytes().to_vec(),
                L4::Udp => UdpHeader {
                    source_port: sport,
                    destination_port: dport,
                    length: UdpHeader::LEN as u16,
                    checksum: 0,
                }
                .to_bytes()
                .to_vec(),
                L4::Sctp => sctp_header(sport, dport),
            }
        }
    }

    /// etherparse has no SCTP: the 12-byte common header (ports,
    /// verification tag, checksum) is written by hand. The programs only read
    /// its ports.
    fn sctp_header(sport: u16, dport: u16) -> Vec<u8> {
        let mut h = Vec::with_capacity(12);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        h.extend_from_slice(&[0; 4]);
        h
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Tags {
        None,
        /// One 802.1Q tag.
        Dot1q,
        /// 802.1ad outer tag, 802.1Q inner tag.
        QinQ,
    }

    impl Tags {
        pub fn len(self) -> usize {
            match self {
                Tags::None => 0,
                Tags::Dot1q => 4,
                Tags::QinQ => 8,
            }
        }
    }

    fn vlan(id: u16) -> VlanId {
        VlanId::try_new(id).expect("vlan id")
    }

    pub fn v4_from(src: [u8; 4]) -> IpHeaders {
        // Length, protocol and checksum are filled in by the builder.
        let ip = Ipv4Header::new(0, 64, IpNumber::TCP, src, SERVER_V4).expect("ipv4 header");
        IpHeaders::Ipv4(ip, Default::default())
    }

    pub fn v4() -> IpHeaders {
        v4_from(CLIENT_V4)
    }

    /// IPv4 with `options` (a multiple of 4 bytes, at most 40).
    pub fn v4_options(options: &[u8]) -> IpHeaders {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT_V4, SERVER_V4).unwrap();
        ip.options = options.try_into().expect("ipv4 options");
        IpHeaders::Ipv4(ip, Default::default())
    }

    /// An IPv4 fragment: `offset` in 8-byte units, `more` the MF flag.
    pub fn v4_fragment(offset: u16, more: bool, dont: bool) -> IpHeaders {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT_V4, SERVER_V4).unwrap();
        ip.identification = 0x4242;
        ip.fragment_offset = IpFragOffset::try_new(offset).expect("fragment offset");
        ip.more_fragments = more;
        ip.dont_fragment = dont;
        IpHeaders::Ipv4(ip, Default::default())
    }

    pub fn v6_ext_from(src: [u8; 16], exts: Ipv6Extensions) -> IpHeaders {
        let ip = Ipv6Header {
            hop_limit: 64,
            source: src,
            destination: SERVER_V6,
            ..Default::default()
        };
        IpHeaders::Ipv6(ip, exts)
    }

    pub fn v6_from(src: [u8; 16]) -> IpHeaders {
        v6_ext_from(src, Default::default())
    }

    pub fn v6() -> IpHeaders {
        v6_from(CLIENT_V6)
    }

    pub fn v6_ext(exts: Ipv6Extensions) -> IpHeaders {
        v6_ext_from(CLIENT_V6, exts)
    }

    pub fn ip(family: Family) -> IpHeaders {
        match family {
            Family::V4 => v4(),
            Family::V6 => v6(),
        }
    }

    /// Options header of `8 + payload_len - 6` bytes (hop-by-hop,
    /// destination options or routing); `payload_len` is 6 mod 8.
    fn raw_ext(next: IpNumber, payload_len: usize) -> Ipv6RawExtHeader {
        Ipv6RawExtHeader::new_raw(next, &vec![0; payload_len]).expect("extension header")
    }

    /// Bytes 2..4 of an IPv6 fragment header (RFC 8200 4.5): the offset in
    /// the top 13 bits, the M flag in the lowest.
    ///
    /// Written by hand as well, to check etherparse's encoding: 0.19 got this
    /// word wrong (M in bit 7 of byte 3, the offset's low bits unshifted; its
    /// parser mirrored the mistake, JulianSchmid/etherparse#150), fixed in
    /// 0.20; the reference verdict (support/reference.rs) relies on the fix.
    fn fragment_word(offset: u16, more: bool) -> [u8; 2] {
        assert!(offset <= 0x1FFF, "fragment offset");
        ((offset << 3) | u16::from(more)).to_be_bytes()
    }

    /// An IPv6 fragment header, as etherparse writes it.
    fn fragment(next: IpNumber, offset: u16, more: bool) -> [u8; 8] {
        let offset_field = IpFragOffset::try_new(offset).expect("fragment offset");
        let bytes = Ipv6FragmentHeader::new(next, offset_field, more, 0x4242).to_bytes();
        assert_eq!(bytes[2..4], fragment_word(offset, more), "etherparse#150");
        bytes
    }

    /// AH with an 8-byte ICV: 20 bytes, payload length field 3, counted in
    /// 4-byte units unlike the other extension headers.
    fn auth(next: IpNumber) -> IpAuthHeader {
        IpAuthHeader::new(next, 0x100, 1, &[0xAA; 8]).expect("auth header")
    }

    /// Every extension header etherparse's `Ipv6Extensions` holds, in its
    /// order: hop-by-hop (8 bytes), destination options (24), routing (16),
    /// fragment (8), AH (20), destination options (8). The fragment header
    /// has offset 0 and no M flag; [`all_exts_packet`] sets other values.
    fn all_exts() -> Ipv6Extensions {
        // Next-header fields are placeholders: the builder links the chain.
        let next = IpNumber::TCP;
        Ipv6Extensions {
            hop_by_hop_options: Some(raw_ext(next, 6)),
            destination_options: Some(raw_ext(next, 22)),
            routing: Some(Ipv6RoutingExtensions {
                routing: raw_ext(next, 14),
                final_destination_options: Some(raw_ext(next, 6)),
            }),
            fragment: Some(Ipv6FragmentHeader::new(
                next,
                IpFragOffset::ZERO,
                false,
                0x4242,
            )),
            auth: Some(auth(next)),
        }
    }

    /// `tags`, IPv6 with [`all_exts`], then `l4` to `dport`; the fragment
    /// header carries `offset` and `more`.
    pub fn all_exts_packet(tags: Tags, l4: L4, dport: u16, offset: u16, more: bool) -> Vec<u8> {
        let mut frame = packet(tags, v6_ext(all_exts()), l4, dport);
        // The fragment header follows IPv6 (40), hop-by-hop (8), destination
        // options (24) and routing (16); routing announces it.
        let ip = 14 + tags.len();
        assert_eq!(
            frame[ip + 40 + 8 + 24],
            44,
            "routing is followed by fragment"
        );
        let word = ip + 40 + 8 + 24 + 16 + 2;
        assert_eq!(frame[word..word + 2], [0, 0]);
        frame[word..word + 2].copy_from_slice(&fragment_word(offset, more));
        frame
    }

    fn ip_step(tags: Tags, ip: IpHeaders) -> PacketBuilderStep<IpHeaders> {
        let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        match tags {
            Tags::None => eth.ip(ip),
            Tags::Dot1q => eth.single_vlan(vlan(100)).ip(ip),
            Tags::QinQ => eth.double_vlan(vlan(200), vlan(100)).ip(ip),
        }
    }

    /// Ethernet, `tags`, `ip`, then a transport header and `payload`.
    pub fn packet_with(
        tags: Tags,
        ip: IpHeaders,
        l4: L4,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let step = ip_step(tags, ip);
        let mut out = Vec::new();
        match l4 {
            L4::Tcp => step.tcp(sport, dport, 1, 1024).write(&mut out, payload),
            L4::Udp => step.udp(sport, dport).write(&mut out, payload),
            L4::Sctp => {
                let mut body = sctp_header(sport, dport);
                body.extend_from_slice(payload);
                step.write(&mut out, IpNumber::SCTP, &body)
            }
        }
        .expect("etherparse writes the frame");
        out
    }

    pub fn packet(tags: Tags, ip: IpHeaders, l4: L4, dport: u16) -> Vec<u8> {
        packet_with(tags, ip, l4, SPORT, dport, &[])
    }

    /// An untagged frame to `dport`.
    pub fn to(family: Family, l4: L4, dport: u16) -> Vec<u8> {
        packet(Tags::None, ip(family), l4, dport)
    }

    /// A frame whose IP payload is `payload`, announced as `proto` (set in
    /// the last extension header, or in the IP header).
    pub fn ip_payload(tags: Tags, ip: IpHeaders, proto: IpNumber, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ip_step(tags, ip)
            .write(&mut out, proto, payload)
            .expect("etherparse writes the frame");
        out
    }

    pub fn icmpv4() -> Vec<u8> {
        let mut out = Vec::new();
        ip_step(Tags::None, v4())
            .icmpv4_echo_request(1, 1)
            .write(&mut out, &[0; 8])
            .unwrap();
        out
    }

    pub fn icmpv6() -> Vec<u8> {
        let mut out = Vec::new();
        ip_step(Tags::None, v6())
            .icmpv6_echo_request(1, 1)
            .write(&mut out, &[0; 8])
            .unwrap();
        out
    }

    pub fn arp(tags: Tags) -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &SRC_MAC,
            &CLIENT_V4,
            &[0; 6],
            &SERVER_V4,
        )
        .expect("arp packet");
        let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        let mut out = Vec::new();
        match tags {
            Tags::None => eth.arp(arp).write(&mut out),
            Tags::Dot1q => eth.single_vlan(vlan(100)).arp(arp).write(&mut out),
            Tags::QinQ => eth
                .double_vlan(vlan(200), vlan(100))
                .arp(arp)
                .write(&mut out),
        }
        .expect("etherparse writes the frame");
        out
    }

    /// An Ethernet header with `ether_type`, then `body`.
    pub fn ethernet(ether_type: u16, body: &[u8]) -> Vec<u8> {
        let eth = Ethernet2Header {
            source: SRC_MAC,
            destination: DST_MAC,
            ether_type: EtherType(ether_type),
        };
        let mut out = eth.to_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// An IPv6 extension header in a hand-ordered chain.
    #[derive(Clone, Copy, Debug)]
    pub enum Ext {
        /// Hop-by-hop options, 8 bytes.
        Hop,
        /// Routing, 16 bytes.
        Routing,
        /// Destination options, 24 bytes.
        Dest,
        /// Fragment header: offset in 8-byte units, M flag.
        Frag(u16, bool),
        /// Authentication header, 20 bytes.
        Auth,
    }

    impl Ext {
        fn number(self) -> IpNumber {
            match self {
                Ext::Hop => IpNumber::IPV6_HEADER_HOP_BY_HOP,
                Ext::Routing => IpNumber::IPV6_ROUTE_HEADER,
                Ext::Dest => IpNumber::IPV6_DESTINATION_OPTIONS,
                Ext::Frag(..) => IpNumber::IPV6_FRAGMENTATION_HEADER,
                Ext::Auth => IpNumber::AUTHENTICATION_HEADER,
            }
        }

        fn bytes(self, next: IpNumber) -> Vec<u8> {
            match self {
                Ext::Hop => raw_ext(next, 6).to_bytes().to_vec(),
                Ext::Routing => raw_ext(next, 14).to_bytes().to_vec(),
                Ext::Dest => raw_ext(next, 22).to_bytes().to_vec(),
                Ext::Frag(offset, more) => fragment(next, offset, more).to_vec(),
                Ext::Auth => auth(next).to_bytes().to_vec(),
            }
        }
    }

    /// An IPv6 frame whose extension headers are exactly `chain`, in order
    /// and with repeats, followed by `payload` announced as `last`.
    ///
    /// etherparse's `Ipv6Extensions` holds each kind at most once, in RFC
    /// 8200 order, so the chain is serialized header by header (each with
    /// etherparse's own header type) and given to the builder as the IPv6
    /// payload. A leading hop-by-hop header must go through
    /// `Ipv6Extensions` (the builder insists on writing that one itself).
    pub fn v6_chain_then(chain: &[Ext], last: IpNumber, payload: &[u8]) -> Vec<u8> {
        let (lead_hop, rest) = match chain.split_first() {
            Some((Ext::Hop, rest)) => (true, rest),
            _ => (false, chain),
        };
        let mut next = last;
        let mut body = payload.to_vec();
        for ext in rest.iter().rev() {
            let mut bytes = ext.bytes(next);
            bytes.extend_from_slice(&body);
            body = bytes;
            next = ext.number();
        }
        let mut exts = Ipv6Extensions::default();
        if lead_hop {
            exts.hop_by_hop_options = Some(raw_ext(next, 6));
        }
        ip_payload(Tags::None, v6_ext(exts), next, &body)
    }

    /// An IPv6 frame with extension headers `chain`, then a transport header.
    pub fn v6_chain(chain: &[Ext], l4: L4, dport: u16) -> Vec<u8> {
        v6_chain_then(chain, l4.number(), &l4.header(SPORT, dport))
    }

    /// Offset just past the destination port in a frame built here with no
    /// payload after its `l4` header.
    pub fn port_end(frame: &[u8], l4: L4) -> usize {
        frame.len() - l4.header_len() + 4
    }
}

fn spec(l4: L4, port: u16) -> String {
    format!("{port}/{}", l4.name())
}

// ---------------------------------------------------------------------------
// Protocols, families and ports
// ---------------------------------------------------------------------------

#[test]
fn blocked_port_dropped_per_protocol_and_family() {
    let mut h = Harness::new("vproto");
    let blocked = [(L4::Udp, 53), (L4::Tcp, 80), (L4::Sctp, 9899)];
    for (l4, port) in blocked {
        h.block(&spec(l4, port));
    }
    // Every protocol to every blocked port, plus a port with no rule: only
    // the exact (protocol, port) pair drops. 53/tcp, 80/udp, ... pass.
    for family in Family::ALL {
        for l4 in L4::ALL {
            for port in [53, 80, 9899, 443] {
                let want = if blocked.contains(&(l4, port)) {
                    Dropped
                } else {
                    Passed
                };
                let what = format!("{family:?} {}", spec(l4, port));
                h.check(&what, &frames::to(family, l4, port), want);
            }
        }
    }
}

#[test]
fn destination_port_is_read_in_network_byte_order() {
    let mut h = Harness::new("vport");
    h.block("80/tcp,4660/tcp,1/udp,65535/sctp");
    for family in Family::ALL {
        let ip = || frames::ip(family);
        let cases: [(&str, Vec<u8>, Outcome); 9] = [
            ("tcp 80", frames::to(family, L4::Tcp, 80), Dropped),
            (
                "tcp source port 80, destination 8080",
                frames::packet_with(Tags::None, ip(), L4::Tcp, 80, 8080, &[]),
                Passed,
            ),
            ("tcp 0x1234", frames::to(family, L4::Tcp, 0x1234), Dropped),
            ("tcp 0x3412", frames::to(family, L4::Tcp, 0x3412), Passed),
            ("udp 1", frames::to(family, L4::Udp, 1), Dropped),
            (
                "udp 256 (1 byte-swapped)",
                frames::to(family, L4::Udp, 256),
                Passed,
            ),
            ("udp 2", frames::to(family, L4::Udp, 2), Passed),
            ("sctp 65535", frames::to(family, L4::Sctp, 65535), Dropped),
            ("sctp 65534", frames::to(family, L4::Sctp, 65534), Passed),
        ];
        for (what, frame, want) in cases {
            h.check(&format!("{family:?} {what}"), &frame, want);
        }
    }
}

#[test]
fn non_ip_and_portless_protocols_pass() {
    let mut h = Harness::new("vnonip");
    h.block("80/tcp,80/udp,80/sctp");
    // An IP payload that would read as a TCP header to port 80.
    let lookalike = L4::Tcp.header(SPORT, 80);
    let cases: [(&str, Vec<u8>); 7] = [
        ("ARP", frames::arp(Tags::None)),
        ("ARP in 802.1Q", frames::arp(Tags::Dot1q)),
        ("ARP in QinQ", frames::arp(Tags::QinQ)),
        // LLDP, with bytes after the Ethernet header that would read as an
        // IPv4 header: only the EtherType decides.
        (
            "LLDP",
            frames::ethernet(0x88CC, &frames::to(Family::V4, L4::Tcp, 80)[14..]),
        ),
        ("ICMP", frames::icmpv4()),
        ("ICMPv6", frames::icmpv6()),
        (
            "IPv4 GRE",
            frames::ip_payload(
                Tags::None,
                frames::v4(),
                etherparse::IpNumber::GRE,
                &lookalike,
            ),
        ),
    ];
    for (what, frame) in cases {
        h.check(what, &frame, Passed);
    }
}

// ---------------------------------------------------------------------------
// VLAN tags
// ---------------------------------------------------------------------------

#[test]
fn vlan_and_qinq_tags_are_walked() {
    let mut h = Harness::new("vvlan");
    h.block("80/tcp,53/udp,9899/sctp");
    for tags in [Tags::Dot1q, Tags::QinQ] {
        for family in Family::ALL {
            for (l4, port, want) in [
                (L4::Tcp, 80, Dropped),
                (L4::Udp, 53, Dropped),
                (L4::Sctp, 9899, Dropped),
                (L4::Tcp, 53, Passed),
                (L4::Udp, 80, Passed),
            ] {
                let frame = frames::packet(tags, frames::ip(family), l4, port);
                let what = format!("{tags:?} {family:?} {}", spec(l4, port));
                h.check(&what, &frame, want);
            }
        }
    }

    // Shapes etherparse does not build, patched by hand from its frames.
    // A single 802.1ad tag (EtherType 0x88A8 then IPv4).
    let mut frame = frames::packet(Tags::Dot1q, frames::v4(), L4::Tcp, 80);
    frame[12..14].copy_from_slice(&0x88A8u16.to_be_bytes());
    h.check("single 802.1ad tag", &frame, Dropped);

    // Two 802.1Q tags (0x8100 outside as well as inside).
    let mut frame = frames::packet(Tags::QinQ, frames::v6(), L4::Udp, 53);
    assert_eq!(frame[12..14], 0x88A8u16.to_be_bytes());
    frame[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    h.check("802.1Q in 802.1Q", &frame, Dropped);

    // Three tags: a third 802.1Q tag inserted between the QinQ pair. The
    // parser walks two, so this is not parsed and passes, blocked port or not.
    for family in Family::ALL {
        let mut frame = frames::packet(Tags::QinQ, frames::ip(family), L4::Tcp, 80);
        let third = [0x00, 0x2A, 0x81, 0x00]; // TCI (VLAN 42), then 802.1Q
        frame.splice(18..18, third);
        assert_eq!(frame[12..14], 0x88A8u16.to_be_bytes());
        assert_eq!(frame[16..18], 0x8100u16.to_be_bytes());
        assert_eq!(frame[20..22], 0x8100u16.to_be_bytes());
        h.check(&format!("three tags {family:?}"), &frame, NotParsed);
    }
}

// ---------------------------------------------------------------------------
// IPv4 header
// ---------------------------------------------------------------------------

#[test]
fn ipv4_options_are_skipped() {
    let mut h = Harness::new("vopt");
    h.block("80/tcp,80/udp,80/sctp");
    // Options whose bytes 2..4 read as port 81 (NOP, NOP, EOL, padding),
    // and the reverse: a parser reading the ports at a fixed offset of 20
    // would judge the options instead of the transport header.
    let reads_as_81 = [1, 1, 0, 81];
    for l4 in L4::ALL {
        let frame = frames::packet(Tags::None, frames::v4_options(&reads_as_81), l4, 80);
        assert_eq!(frame[14] & 0x0F, 6);
        h.check(&format!("IHL 6 {}", l4.name()), &frame, Dropped);
    }
    let reads_as_80 = [1, 1, 0, 80];
    let frame = frames::packet(Tags::None, frames::v4_options(&reads_as_80), L4::Tcp, 81);
    h.check("IHL 6, options reading as 80, port 81", &frame, Passed);

    // The longest header: IHL 15, 40 bytes of options.
    let mut longest = [1u8; 40];
    longest[39] = 0;
    for (port, want) in [(80, Dropped), (81, Passed)] {
        let frame = frames::packet(Tags::QinQ, frames::v4_options(&longest), L4::Udp, port);
        assert_eq!(frame[22] & 0x0F, 15);
        h.check(&format!("QinQ IHL 15 udp {port}"), &frame, want);
    }
}

#[test]
fn ipv4_bad_ihl_or_version_is_not_parsed() {
    let mut h = Harness::new("vihl");
    h.block("80/tcp");
    let good = frames::to(Family::V4, L4::Tcp, 80);
    assert_eq!(good[14], 0x45);
    h.check("well-formed", &good, Dropped);

    // etherparse only writes valid headers: the version/IHL byte is patched
    // (the stale header checksum is not looked at by the programs).
    for ihl in 0..5u8 {
        let mut frame = good.clone();
        frame[14] = 0x40 | ihl;
        h.check(&format!("IHL {ihl}"), &frame, NotParsed);
    }
    for version in [0u8, 1, 5, 6, 15] {
        let mut frame = good.clone();
        frame[14] = (version << 4) | 5;
        h.check(
            &format!("IPv4 EtherType, version {version}"),
            &frame,
            NotParsed,
        );
    }

    // Likewise for IPv6: the version nibble must be 6.
    let good = frames::to(Family::V6, L4::Tcp, 80);
    h.check("well-formed IPv6", &good, Dropped);
    for version in [0u8, 4, 7, 15] {
        let mut frame = good.clone();
        frame[14] = (version << 4) | (frame[14] & 0x0F);
        h.check(
            &format!("IPv6 EtherType, version {version}"),
            &frame,
            NotParsed,
        );
    }
}

// ---------------------------------------------------------------------------
// IPv6 extension headers
// ---------------------------------------------------------------------------

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut h = Harness::new("vext");
    h.block("80/tcp,80/udp,80/sctp");
    let each = [
        Ext::Hop,
        Ext::Routing,
        Ext::Dest,
        Ext::Frag(0, true),
        Ext::Auth,
    ];
    for l4 in L4::ALL {
        for ext in each {
            let what = format!("{ext:?} {}", l4.name());
            h.check(&what, &frames::v6_chain(&[ext], l4, 80), Dropped);
            h.check(&what, &frames::v6_chain(&[ext], l4, 81), Passed);
        }
        // Everything etherparse's Ipv6Extensions can hold: six headers.
        for (port, want) in [(80, Dropped), (81, Passed)] {
            let frame = frames::all_exts_packet(Tags::None, l4, port, 0, true);
            h.check(
                &format!("etherparse chain {}", spec(l4, port)),
                &frame,
                want,
            );
        }
        let frame = frames::all_exts_packet(Tags::Dot1q, l4, 80, 0, false);
        h.check(
            &format!("802.1Q etherparse chain {}", l4.name()),
            &frame,
            Dropped,
        );
    }

    // Other next headers after extension headers: no port, pass.
    let lookalike = L4::Tcp.header(SPORT, 80);
    let esp = etherparse::IpNumber::ENCAPSULATING_SECURITY_PAYLOAD;
    let none = etherparse::IpNumber::IPV6_NO_NEXT_HEADER;
    h.check(
        "ESP after hop-by-hop",
        &frames::v6_chain_then(&[Ext::Hop], esp, &lookalike),
        Passed,
    );
    h.check(
        "no next header",
        &frames::v6_chain_then(&[Ext::Dest], none, &lookalike),
        Passed,
    );
}

#[test]
fn ipv6_extension_chain_limit() {
    let mut h = Harness::new("vlim");
    h.block("80/tcp,80/udp,80/sctp");
    let eight = [
        Ext::Hop,
        Ext::Dest,
        Ext::Routing,
        Ext::Dest,
        Ext::Frag(0, true),
        Ext::Auth,
        Ext::Dest,
        Ext::Routing,
    ];
    let nine: Vec<Ext> = eight.iter().copied().chain([Ext::Dest]).collect();
    let twelve: Vec<Ext> = nine.iter().copied().chain([Ext::Auth; 3]).collect();
    let dest8 = [Ext::Dest; 8];
    let dest9 = [Ext::Dest; 9];
    let cases: [(&str, &[Ext], u16, Outcome); 6] = [
        ("8 headers", &eight, 80, Dropped),
        ("8 headers, other port", &eight, 81, Passed),
        // Past the limit: not parsed, so passed even to a blocked port.
        ("9 headers", &nine, 80, NotParsed),
        ("12 headers", &twelve, 80, NotParsed),
        ("8 destination options", &dest8, 80, Dropped),
        ("9 destination options", &dest9, 80, NotParsed),
    ];
    for l4 in L4::ALL {
        for (what, chain, port, want) in cases {
            let frame = frames::v6_chain(chain, l4, port);
            h.check(&format!("{what} {}", l4.name()), &frame, want);
        }
    }
    // ICMPv6 after 8 headers is a well-formed portless packet; after 9 the
    // walk gives up before it sees what follows.
    let icmp = etherparse::IpNumber::IPV6_ICMP;
    let body = [128, 0, 0, 0, 0, 1, 0, 1];
    h.check(
        "8 headers, ICMPv6",
        &frames::v6_chain_then(&eight, icmp, &body),
        Passed,
    );
    h.check(
        "9 headers, ICMPv6",
        &frames::v6_chain_then(&nine, icmp, &body),
        NotParsed,
    );
}

// ---------------------------------------------------------------------------
// Fragments
// ---------------------------------------------------------------------------

#[test]
fn ipv4_fragments() {
    let mut h = Harness::new("vfrag4");
    h.block("80/tcp,80/udp,80/sctp");
    for l4 in L4::ALL {
        let name = l4.name();
        // A first fragment carries the transport header: judged by its port.
        for (port, want) in [(80, Dropped), (81, Passed)] {
            let frame = frames::packet(Tags::None, frames::v4_fragment(0, true, false), l4, port);
            h.check(&format!("first fragment {name} {port}"), &frame, want);
        }
        let frame = frames::packet(Tags::None, frames::v4_fragment(0, false, true), l4, 80);
        h.check(&format!("DF, unfragmented {name}"), &frame, Dropped);

        // Later fragments carry no transport header, whatever their payload
        // looks like: here a header to the blocked port.
        let lookalike = l4.header(SPORT, 80);
        for (offset, more) in [(1, true), (1, false), (185, true), (0x1FFF, false)] {
            let ip = frames::v4_fragment(offset, more, false);
            let frame = frames::ip_payload(Tags::None, ip, l4.number(), &lookalike);
            let what = format!("later fragment {name} offset {offset} MF {more}");
            h.check(&what, &frame, Passed);
        }
    }
}

#[test]
fn ipv6_fragments() {
    let mut h = Harness::new("vfrag6");
    h.block("80/tcp,80/udp,80/sctp");
    for l4 in L4::ALL {
        let name = l4.name();
        for chain in [
            vec![Ext::Frag(0, true)],
            vec![Ext::Frag(0, false)], // atomic fragment
            vec![Ext::Hop, Ext::Dest, Ext::Frag(0, true), Ext::Auth],
        ] {
            let what = format!("first fragment {chain:?} {name}");
            h.check(&what, &frames::v6_chain(&chain, l4, 80), Dropped);
            h.check(&what, &frames::v6_chain(&chain, l4, 81), Passed);
        }
        let frame = frames::all_exts_packet(Tags::None, l4, 80, 0, true);
        h.check(
            &format!("etherparse chain, first fragment {name}"),
            &frame,
            Dropped,
        );

        // Later fragments: the "transport header" after the fragment header
        // reads as the blocked port but is not one.
        for chain in [
            vec![Ext::Frag(1, true)],
            vec![Ext::Frag(1, false)],
            vec![Ext::Frag(0x1FFF, false)],
            vec![Ext::Hop, Ext::Routing, Ext::Frag(185, true)],
        ] {
            let what = format!("later fragment {chain:?} {name}");
            h.check(&what, &frames::v6_chain(&chain, l4, 80), Passed);
        }
        let frame = frames::all_exts_packet(Tags::None, l4, 80, 7, true);
        h.check(
            &format!("etherparse chain, later fragment {name}"),
            &frame,
            Passed,
        );
    }
}

// ---------------------------------------------------------------------------
// Allowlists, audit rules and counters
// ---------------------------------------------------------------------------

fn v4_from(addr: [u8; 4], l4: L4, port: u16) -> Vec<u8> {
    frames::packet(Tags::None, frames::v4_from(addr), l4, port)
}

fn v6_from(addr: &str, l4: L4, port: u16) -> Vec<u8> {
    let addr: std::net::Ipv6Addr = addr.parse().unwrap();
    frames::packet(Tags::None, frames::v6_from(addr.octets()), l4, port)
}

#[test]
fn allowlisted_sources_pass() {
    let mut h = Harness::new("vallow");
    h.rule("8080/tcp", Mode::Block, &["10.0.0.0/8", "2001:db8:a::/48"]);
    h.rule("8080/udp", Mode::Block, &["192.0.2.0/24"]);
    h.block("9090/tcp");

    let tcp = L4::Tcp;
    let v4 = |addr| v4_from(addr, tcp, 8080);
    let v6 = |addr| v6_from(addr, tcp, 8080);
    // All to 8080/tcp.
    let rule_8080 = [
        ("v4 inside", v4([10, 1, 2, 3]), Allowed),
        ("v4 first address", v4([10, 0, 0, 0]), Allowed),
        ("v4 last address", v4([10, 255, 255, 255]), Allowed),
        ("v4 just below", v4([9, 255, 255, 255]), Dropped),
        ("v4 just above", v4([11, 0, 0, 0]), Dropped),
        ("v4 elsewhere", v4(frames::CLIENT_V4), Dropped),
        ("v6 inside", v6("2001:db8:a:ffff::5"), Allowed),
        ("v6 just above", v6("2001:db8:b::"), Dropped),
        // The v4 prefix does not cover v6 addresses with similar bits.
        ("v4-mapped v6", v6("::ffff:10.1.2.3"), Dropped),
        ("v6 with v4 prefix bits", v6("a01:203::"), Dropped),
        // Another rule's prefix.
        ("udp rule's prefix", v4([192, 0, 2, 9]), Dropped),
    ];
    for (what, frame, want) in &rule_8080 {
        h.check(what, frame, *want);
    }
    // Allowlists belong to their rule: not to other ports or protocols.
    let others = [
        ("other port", v4_from([10, 1, 2, 3], tcp, 9090), Dropped),
        (
            "other protocol",
            v4_from([10, 1, 2, 3], L4::Udp, 8080),
            Dropped,
        ),
        ("udp rule", v4_from([192, 0, 2, 9], L4::Udp, 8080), Allowed),
        ("no rule", v4_from([10, 1, 2, 3], tcp, 8081), Passed),
    ];
    for (what, frame, want) in &others {
        h.check(what, frame, *want);
    }

    // Allowed packets are not counted against the rule; dropped ones are,
    // once by each program.
    let drops: Vec<&Vec<u8>> = rule_8080
        .iter()
        .filter(|c| c.2 == Dropped)
        .map(|c| &c.1)
        .collect();
    let rule = h.entry("8080/tcp").expect("8080/tcp listed");
    assert_eq!(rule.packets, 2 * drops.len() as u64);
    assert_eq!(
        rule.bytes,
        2 * drops.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    let rule = h.entry("8080/udp").expect("8080/udp listed");
    assert_eq!(rule.packets, 2, "one udp drop");

    // Dropping the allowlist from the rule closes it for everyone.
    h.block("8080/tcp");
    h.check("allowlist removed", &v4([10, 1, 2, 3]), Dropped);
    h.check("allowlist removed v6", &v6("2001:db8:a::1"), Dropped);
}

#[test]
fn audit_rules_count_and_pass() {
    let mut h = Harness::new("vaudit");
    h.rule("8443/tcp", Mode::Audit, &[]);
    h.rule("5353/udp", Mode::Audit, &["203.0.113.0/24"]);

    let v4 = frames::to(Family::V4, L4::Tcp, 8443);
    let v6 = frames::packet_with(Tags::Dot1q, frames::v6(), L4::Tcp, SPORT, 8443, &[7; 100]);
    h.check("audit v4", &v4, Audited);
    h.check("audit v6 with payload", &v6, Audited);
    h.check(
        "audit, other port",
        &frames::to(Family::V4, L4::Tcp, 8444),
        Passed,
    );
    let rule = h.entry("8443/tcp").unwrap();
    assert_eq!(rule.mode, Mode::Audit);
    assert_eq!(rule.packets, 4, "two frames, each counted by both programs");
    assert_eq!(rule.bytes, 2 * (v4.len() + v6.len()) as u64);

    // An allowlisted source is allowed, not audited, and not counted.
    let inside = frames::to(Family::V4, L4::Udp, 5353); // from 203.0.113.7
    h.check("audit, allowlisted source", &inside, Allowed);
    let outside = v4_from([198, 18, 0, 1], L4::Udp, 5353);
    h.check("audit, other source", &outside, Audited);
    let rule = h.entry("5353/udp").unwrap();
    assert_eq!((rule.packets, rule.bytes), (2, 2 * outside.len() as u64));

    // Turning audit into block drops from then on and keeps counting.
    h.block("8443/tcp");
    h.check("now blocked", &v4, Dropped);
    let rule = h.entry("8443/tcp").unwrap();
    assert_eq!(rule.mode, Mode::Block);
    assert_eq!(rule.packets, 6);
    assert_eq!(rule.bytes, 2 * (2 * v4.len() + v6.len()) as u64);
}

#[test]
fn counters_add_up() {
    let mut h = Harness::new("vcount");
    h.block("80/tcp");
    h.rule("443/tcp", Mode::Audit, &[]);
    h.rule("22/tcp", Mode::Block, &["203.0.113.0/24"]);
    let zero = PointCounters::default();
    assert_eq!(h.counters(), (zero, zero), "fresh pin directory");

    let dropped = frames::packet_with(Tags::None, frames::v4(), L4::Tcp, SPORT, 80, &[1; 300]);
    let dropped_v6 = frames::to(Family::V6, L4::Tcp, 80);
    let audited = frames::to(Family::V6, L4::Tcp, 443);
    let allowed = frames::to(Family::V4, L4::Tcp, 22);
    let passed = frames::to(Family::V4, L4::Tcp, 81);
    let mut not_parsed = frames::to(Family::V4, L4::Tcp, 80);
    not_parsed[14] = 0x44; // IHL 4

    let runs: [(&[u8], Outcome, usize); 7] = [
        (&dropped, Dropped, 3),
        (&dropped_v6, Dropped, 2),
        (&audited, Audited, 2),
        (&allowed, Allowed, 1),
        (&passed, Passed, 4),
        (&frames::arp(Tags::None), Passed, 1),
        (&not_parsed, NotParsed, 5),
    ];
    for (frame, want, times) in runs {
        for _ in 0..times {
            h.check(&format!("{want:?}"), frame, want);
        }
    }

    // Each program counted every frame once, in its own slot.
    let expected = PointCounters {
        seen: 18,
        dropped: 5,
        passed: 13,
        audited: 2,
        allowed: 1,
        not_parsed: 5,
    };
    assert_eq!(h.counters(), (expected, expected));
    // Nothing leaked into other attach slots.
    for id in 2..8 {
        assert_eq!(h.registry.counters(id).unwrap(), zero, "slot {id}");
    }

    // Rule counters are shared by both programs: two counts per frame.
    let rule = h.entry("80/tcp").unwrap();
    assert_eq!(rule.packets, 2 * 5);
    assert_eq!(
        rule.bytes,
        2 * (3 * dropped.len() + 2 * dropped_v6.len()) as u64
    );
    let rule = h.entry("443/tcp").unwrap();
    assert_eq!((rule.packets, rule.bytes), (4, 4 * audited.len() as u64));
    let rule = h.entry("22/tcp").unwrap();
    assert_eq!((rule.packets, rule.bytes), (0, 0), "allowed is not counted");

    // A removed rule stops dropping, and is gone with its counters.
    let spec: PortSpec = "80/tcp".parse().unwrap();
    assert_eq!(h.rules.remove(&[spec]).unwrap().manual_rules, 1);
    h.check("rule removed", &dropped, Passed);
    assert!(h.entry("80/tcp").is_none());
    h.block("80/tcp");
    h.check("rule back", &dropped, Dropped);
    let rule = h.entry("80/tcp").unwrap();
    assert_eq!((rule.packets, rule.bytes), (2, 2 * dropped.len() as u64));
}

// ---------------------------------------------------------------------------
// Truncated frames and short IP lengths
// ---------------------------------------------------------------------------

/// Blocked frames used by the sweeps: (name, frame, transport, tags).
fn sweep_frames() -> Vec<(&'static str, Vec<u8>, L4, Tags)> {
    let mut longest_options = [1u8; 40];
    longest_options[39] = 0;
    vec![
        (
            "IPv4/TCP",
            frames::to(Family::V4, L4::Tcp, 80),
            L4::Tcp,
            Tags::None,
        ),
        (
            "IPv6 + 6 extension headers/TCP",
            frames::all_exts_packet(Tags::None, L4::Tcp, 80, 0, true),
            L4::Tcp,
            Tags::None,
        ),
        (
            "QinQ IPv4 IHL 15/SCTP",
            frames::packet(
                Tags::QinQ,
                frames::v4_options(&longest_options),
                L4::Sctp,
                80,
            ),
            L4::Sctp,
            Tags::QinQ,
        ),
        (
            "802.1Q IPv6/UDP",
            frames::packet(Tags::Dot1q, frames::v6(), L4::Udp, 80),
            L4::Udp,
            Tags::Dot1q,
        ),
    ]
}

fn is_einval(res: &Result<u32, ProgramError>) -> bool {
    matches!(res, Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL))
}

/// The shortest frame the kernel runs the TC classifier on. Besides the
/// Ethernet-header minimum both hooks share, the skb test run (observed on
/// 6.18) refuses with EINVAL a frame whose EtherType is IPv4 or IPv6 but
/// which cannot hold the fixed IP header. Tagged frames have a VLAN
/// EtherType, so only the Ethernet minimum applies to them.
fn tc_min_len(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => ETH_HLEN + 20,
        0x86DD => ETH_HLEN + 40,
        _ => ETH_HLEN,
    }
}

#[test]
fn kernel_refuses_short_test_runs() {
    let mut h = Harness::new("vmin");
    h.block("80/tcp");
    let v4 = frames::to(Family::V4, L4::Tcp, 80);
    let v6 = frames::to(Family::V6, L4::Tcp, 80);
    let arp = frames::arp(Tags::None);
    let tagged = frames::packet(Tags::Dot1q, frames::v4(), L4::Tcp, 80);
    for (name, frame, tc_min) in [
        ("IPv4", &v4, 34),
        ("IPv6", &v6, 54),
        ("ARP", &arp, 14),
        ("802.1Q IPv4", &tagged, 14),
    ] {
        assert_eq!(tc_min_len(frame), tc_min, "{name}");
        for len in 0..=tc_min {
            let cut = &frame[..len];
            let xdp = h.run_xdp(cut);
            let tc = h.run_tc(cut);
            // XDP: refused below an Ethernet header, runs from there on.
            if len < ETH_HLEN {
                assert!(is_einval(&xdp), "{name} {len} bytes: XDP gave {xdp:?}");
            } else {
                assert_eq!(xdp.ok(), Some(XDP_PASS), "{name} {len} bytes: XDP");
            }
            // TC: refused below its minimum, runs at it.
            if len < tc_min {
                assert!(is_einval(&tc), "{name} {len} bytes: TC gave {tc:?}");
            } else {
                assert_eq!(tc.ok(), Some(TC_ACT_UNSPEC), "{name} {len} bytes: TC");
            }
        }
    }
}

#[test]
fn truncated_frames_never_drop_without_the_port() {
    let mut h = Harness::new("vtrunc");
    h.block("80/tcp,80/udp,80/sctp");
    let mut all = sweep_frames();
    all.push((
        "IPv6 + 8 destination options/TCP",
        frames::v6_chain(&[Ext::Dest; 8], L4::Tcp, 80),
        L4::Tcp,
        Tags::None,
    ));
    all.push((
        "802.1Q IPv4/TCP",
        frames::packet(Tags::Dot1q, frames::v4(), L4::Tcp, 80),
        L4::Tcp,
        Tags::Dot1q,
    ));

    for (name, frame, l4, _) in all {
        let port_end = frames::port_end(&frame, l4);
        assert_eq!(
            frame[port_end - 2..port_end],
            80u16.to_be_bytes(),
            "{name}: the destination port ends at {port_end}"
        );
        let tc_min = tc_min_len(&frame);
        assert!(tc_min < port_end);

        // Every cut, from nothing to the whole frame: not parsed while any
        // byte of the destination port is missing, dropped once it is there.
        for len in 0..=frame.len() {
            let cut = &frame[..len];
            let what = format!("{name} cut to {len} of {}", frame.len());
            let want = if len >= port_end { Dropped } else { NotParsed };
            if len >= tc_min {
                h.check(&what, cut, want);
                continue;
            }
            // The kernel refuses TC runs this short (see tc_min_len), and
            // XDP runs under ETH_HLEN: assert the refusals, and check XDP
            // alone where it does run.
            let before = h.counters();
            let tc = h.run_tc(cut);
            assert!(is_einval(&tc), "{what}: TC run gave {tc:?}");
            let xdp = h.run_xdp(cut);
            let after = h.counters();
            assert_eq!(after.1, before.1, "{what}: TC must not have run");
            if len < ETH_HLEN {
                assert!(is_einval(&xdp), "{what}: XDP run gave {xdp:?}");
                assert_eq!(after.0, before.0, "{what}: XDP must not have run");
            } else {
                assert_eq!(xdp.ok(), Some(XDP_PASS), "{what}: XDP");
                assert_eq!(
                    diff(after.0, before.0),
                    want.delta(),
                    "{what}: XDP counters"
                );
            }
        }
    }
}

#[test]
fn ip_length_must_cover_the_port() {
    let mut h = Harness::new("vlen");
    h.block("80/tcp,80/udp,80/sctp");
    for (name, frame, l4, tags) in sweep_frames() {
        let ip = ETH_HLEN + tags.len();
        let port_end = frames::port_end(&frame, l4);
        // The length field, the bytes it counts from, and its real value.
        let (field, counted_from) = match frame[ip] >> 4 {
            4 => (ip + 2, ip),      // total length, header included
            6 => (ip + 4, ip + 40), // payload length
            v => panic!("{name}: IP version {v}"),
        };
        let real = u16::from_be_bytes([frame[field], frame[field + 1]]);
        assert_eq!(usize::from(real), frame.len() - counted_from, "{name}");

        // A length field that stops short of the port's last byte makes the
        // packet not parsed, though the frame itself holds the port. One
        // claiming more than the frame holds is still judged by the port it
        // does hold (the kernel drops such packets itself). The IPv4 header
        // checksum goes stale; the programs do not check it.
        let needed = port_end - counted_from;
        for len in (0..=real).chain([real + 1, u16::MAX]) {
            let mut patched = frame.clone();
            patched[field..field + 2].copy_from_slice(&len.to_be_bytes());
            let want = if usize::from(len) >= needed {
                Dropped
            } else {
                NotParsed
            };
            h.check(&format!("{name}, IP length {len}"), &patched, want);
        }
    }
}

// ---------------------------------------------------------------------------
// VLAN tags, live: the kernel takes the outer tag out of the frame before TC
// ---------------------------------------------------------------------------

/// Sends `frame` `count` times out of `iface` in `netns`, raw (AF_PACKET).
fn send_raw(netns: &std::path::Path, iface: &str, frame: &[u8], count: usize) {
    let iface = iface.to_string();
    let frame = frame.to_vec();
    ingress_xdp::sys::in_netns(Some(netns), move || {
        let ifindex = ingress_xdp::sys::ifindex(&iface)?;
        // SAFETY: plain socket calls with valid arguments; fd closed below.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            for _ in 0..count {
                let sent = libc::sendto(
                    fd,
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    sent,
                    frame.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
        Ok(())
    })
    .expect("send raw frames");
}

/// (audited, not parsed) of the only attach point of `pins`.
fn audited_and_not_parsed(pins: &ingress_xdp::pins::Pins) -> (u64, u64) {
    let registry = Registry::open(pins).expect("registry");
    let point = registry.points().expect("points").remove(0);
    let c = registry.counters(point.id).expect("counters");
    (c.audited, c.not_parsed)
}

/// Waits (briefly) for counters to reach `want`: frames cross the veth
/// asynchronously.
#[track_caller]
fn expect_counts(what: &str, pins: &ingress_xdp::pins::Pins, want: (u64, u64)) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let got = audited_and_not_parsed(pins);
        if got == want {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("{what}: (audited, not parsed) = {got:?}, want {want:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// XDP sees every tag in the frame; TCX sees the frame after the kernel
/// moved the outer tag into the skb's metadata. Both must count at most two
/// tags in all: a 3-tag frame is not parsed by either, a 2-tag one is judged
/// by both. BPF_PROG_TEST_RUN does not strip tags, so this needs real frames
/// through a veth: XDP and TC on the same receiving interface, each with its
/// own pin directory and the same audit rule (audit passes the frame on from
/// XDP to TC, and counts it).
#[test]
fn vlan_tags_count_the_same_on_both_hooks_live() {
    use support::{Netns, TestPins};
    let rx = Netns::new("vlr");
    let tx = Netns::new("vlt");
    support::sh(&format!(
        "ip link add vlrx netns {} type veth peer name vltx netns {}",
        rx.name, tx.name
    ));
    rx.exec("ip link set vlrx up");
    tx.exec("ip link set vltx up");
    let xdp = TestPins::new("vlx");
    let tc = TestPins::new("vlc");
    let cli = |pins: &TestPins, args: &str| {
        rx.exec(&format!(
            "{} --pin-dir {} {args}",
            support::bin(),
            pins.dir().display()
        ))
    };
    cli(&xdp, "attach --iface vlrx --no-sbox --xdp-mode native");
    cli(&tc, "attach --iface vlrx --no-sbox --hook tc");
    cli(&xdp, "block 80 --audit");
    cli(&tc, "block 80 --audit");

    let one = frames::packet(Tags::Dot1q, frames::v4(), L4::Tcp, 80);
    let two = frames::packet(Tags::QinQ, frames::v4(), L4::Tcp, 80);
    let mut three = two.clone();
    three.splice(18..18, [0x00, 0x2A, 0x81, 0x00]);

    send_raw(&tx.path(), "vltx", &one, 5);
    expect_counts("one tag, XDP", &xdp.pins, (5, 0));
    expect_counts("one tag, TC", &tc.pins, (5, 0));
    send_raw(&tx.path(), "vltx", &two, 5);
    expect_counts("two tags, XDP", &xdp.pins, (10, 0));
    expect_counts(
        "two tags (one of them in skb metadata), TC",
        &tc.pins,
        (10, 0),
    );
    send_raw(&tx.path(), "vltx", &three, 5);
    expect_counts("three tags, XDP", &xdp.pins, (10, 5));
    expect_counts("three tags (one in skb metadata), TC", &tc.pins, (10, 5));
}

// ---------------------------------------------------------------------------
// Rule counters: one per rule as the operator wrote it
// ---------------------------------------------------------------------------

#[test]
fn a_range_is_one_rule_with_one_counter() {
    let mut h = Harness::new("vrng");
    h.block("30000-30009");
    for port in [30000, 30005, 30009] {
        let frame = frames::packet(Tags::None, frames::v4(), L4::Tcp, port);
        h.check(&format!("{port} in the range"), &frame, Dropped);
    }
    let ranges = h.rules.ranges().unwrap();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_eq!(
        (ranges[0].packets, ranges[0].counted),
        (6, true),
        "three frames through two programs, all in the range's one counter"
    );

    // Unblocking the middle port leaves two rules: the head keeps the
    // counter and its count, the tail gets a counter of its own.
    h.rules.remove(&["30005".parse().unwrap()]).unwrap();
    let ranges = h.rules.ranges().unwrap();
    let shape: Vec<_> = ranges
        .iter()
        .map(|r| (r.low, r.high, r.packets, r.counted))
        .collect();
    assert_eq!(
        shape,
        vec![(30000, 30004, 6, true), (30006, 30009, 0, true)]
    );
    let frame = frames::packet(Tags::None, frames::v4(), L4::Tcp, 30008);
    h.check("the tail still blocks", &frame, Dropped);
    assert_eq!(h.rules.ranges().unwrap()[1].packets, 2);

    // Blocking the same ports again (here: as audit) keeps their counter.
    h.rule("30000-30004", Mode::Audit, &[]);
    let head = &h.rules.ranges().unwrap()[0];
    assert_eq!((head.mode, head.packets), (Mode::Audit, 6));
}

#[test]
fn a_full_counter_table_still_blocks() {
    let mut h = Harness::new("vful");
    let capacity = ingress_xdp_common::MAX_RULE_COUNTERS as u16 - 1;
    let specs: Vec<String> = (1..=capacity).map(|p| format!("{p}/udp")).collect();
    h.block(&specs.join(","));
    assert!(h.entry(&format!("{capacity}/udp")).unwrap().counted);

    h.block("8080");
    let rule = h.entry("8080").unwrap();
    assert!(!rule.counted, "no counter left for 8080: {rule:?}");
    let frame = frames::packet(Tags::None, frames::v4(), L4::Tcp, 8080);
    h.check("an uncounted rule", &frame, Dropped);
    assert_eq!(h.entry("8080").unwrap().packets, 0);
    let listing = ingress_xdp::cli::render_rules(&h.rules.ranges().unwrap());
    assert!(
        listing.contains("1 rule(s) shown with '-' have no counter"),
        "list must say which rules are uncounted:\n{}",
        listing.lines().last().unwrap_or_default()
    );

    // A freed counter goes to the next rule.
    h.rules.remove(&["1/udp".parse().unwrap()]).unwrap();
    h.block("8081");
    assert!(h.entry("8081").unwrap().counted);
}

// ---------------------------------------------------------------------------
// Drop events
// ---------------------------------------------------------------------------

mod drop_events {
    use std::{
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        time::{Duration, Instant},
    };

    use aya::programs::{TestRun, TestRunOptions, Xdp};
    use ingress_xdp::{
        events::{Record, Settings, Stream, Switch, Verdict},
        pins::PROG_XDP,
        rules::Mode,
        spec::Protocol,
    };

    use super::{Family, Harness, L4, SPORT, TC_ID, XDP_ID, frames, spec};

    fn protocol(l4: L4) -> Protocol {
        match l4 {
            L4::Tcp => Protocol::Tcp,
            L4::Udp => Protocol::Udp,
            L4::Sctp => Protocol::Sctp,
        }
    }

    fn client(family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(frames::CLIENT_V4)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(frames::CLIENT_V6)),
        }
    }

    fn unix_now_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    /// Everything in the ring within `wait` of the first event.
    fn collect(stream: &mut Stream, wait: Duration) -> Vec<Record> {
        let mut all = stream.next_batch(wait).expect("read EVENTS");
        loop {
            let more = stream
                .next_batch(Duration::from_millis(20))
                .expect("read EVENTS");
            if more.is_empty() {
                return all;
            }
            all.extend(more);
        }
    }

    const ON: Settings = Settings {
        enabled: true,
        rate: 1_000_000,
        burst: 100_000,
    };

    /// Every protocol and family through both hooks: one event each, with
    /// the packet's source, ports, length, hook and verdict. Off (the
    /// default) and switched off again, nothing is sent: the same loaded
    /// programs, only the map changed.
    #[test]
    fn events_carry_the_packet_per_family_protocol_and_hook() {
        let mut h = Harness::new("vev");
        for l4 in L4::ALL {
            h.block(&spec(l4, 8080));
        }
        h.rule("9090/udp", Mode::Audit, &[]);
        let pins = h._pins.pins.clone();
        let mut switch = Switch::open(&pins).expect("open the event switch");
        let mut stream = Stream::open(&pins).expect("open EVENTS");

        let probe = frames::to(Family::V4, L4::Tcp, 8080);
        h.run_xdp(&probe).unwrap();
        assert!(
            collect(&mut stream, Duration::from_millis(50)).is_empty(),
            "off by default"
        );

        switch.set(ON).unwrap();
        for family in Family::ALL {
            for l4 in L4::ALL {
                let frame = frames::to(family, l4, 8080);
                for (hook, id) in [("xdp", XDP_ID), ("tc", TC_ID)] {
                    let before = unix_now_ns();
                    if hook == "xdp" {
                        h.run_xdp(&frame).unwrap();
                    } else {
                        h.run_tc(&frame).unwrap();
                    }
                    let got = collect(&mut stream, Duration::from_secs(1));
                    let what = format!("{family:?} {} via {hook}", l4.name());
                    assert_eq!(got.len(), 1, "{what}: {got:?}");
                    let e = &got[0];
                    assert_eq!(e.attach_id, id, "{what}");
                    assert_eq!(e.protocol, protocol(l4), "{what}");
                    assert_eq!(e.src, client(family), "{what}");
                    assert_eq!((e.src_port, e.dst_port), (SPORT, 8080), "{what}");
                    assert_eq!(e.verdict, Verdict::Dropped, "{what}");
                    assert_eq!(e.frame_len as usize, frame.len(), "{what}");
                    let skew = e.time_unix_ns.abs_diff(before);
                    assert!(skew < 2_000_000_000, "{what}: time off by {skew} ns");
                }
            }
        }

        h.run_xdp(&frames::to(Family::V6, L4::Udp, 9090)).unwrap();
        let audited = collect(&mut stream, Duration::from_secs(1));
        assert_eq!(audited.len(), 1, "{audited:?}");
        assert_eq!(audited[0].verdict, Verdict::Audited);

        h.run_xdp(&frames::to(Family::V4, L4::Tcp, 8081)).unwrap();
        assert!(
            collect(&mut stream, Duration::from_millis(50)).is_empty(),
            "an open port sends nothing"
        );

        // The programs look at the switch's copy in the rule's own slot:
        // a rule written after `events on` carries it too.
        h.block("7070/tcp");
        h.run_xdp(&frames::to(Family::V4, L4::Tcp, 7070)).unwrap();
        let late = collect(&mut stream, Duration::from_secs(1));
        assert_eq!(late.len(), 1, "a rule blocked after events on: {late:?}");

        switch
            .set(Settings {
                enabled: false,
                ..ON
            })
            .unwrap();
        h.run_xdp(&probe).unwrap();
        h.run_tc(&probe).unwrap();
        assert!(
            collect(&mut stream, Duration::from_millis(50)).is_empty(),
            "switched off live"
        );
        let counts = switch.counts().unwrap();
        assert_eq!(counts.sent, 14, "{counts:?}");
        assert_eq!((counts.limited, counts.lost), (0, 0), "{counts:?}");
    }

    /// `repeat` runs of one blocked SYN in one BPF_PROG_TEST_RUN.
    fn flood(h: &Harness, frames_n: u32) -> Duration {
        let prog: &Xdp = h.xdp.program(PROG_XDP).unwrap().try_into().unwrap();
        let frame = frames::to(Family::V4, L4::Tcp, 8080);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.repeat = frames_n;
        let start = Instant::now();
        prog.test_run(opts).expect("test run");
        start.elapsed()
    }

    /// Under a flood the token bucket lets through the burst and the rate,
    /// no more; the rest is counted as held back, and the rule counter still
    /// counts every packet. With the limit out of the way a full ring is
    /// counted as lost, and every event sent is in the ring.
    #[test]
    fn the_rate_limit_holds_under_a_flood_and_losses_are_counted() {
        let mut h = Harness::new("vevr");
        h.block("8080/tcp");
        let pins = h._pins.pins.clone();
        let mut switch = Switch::open(&pins).unwrap();
        let mut stream = Stream::open(&pins).unwrap();

        const FLOOD: u32 = 200_000;
        let (rate, burst) = (1000u32, 50u32);
        switch.reset_counts().unwrap();
        switch
            .set(Settings {
                enabled: true,
                rate,
                burst,
            })
            .unwrap();
        let took = flood(&h, FLOOD);
        let counts = switch.counts().unwrap();
        let allowed = u64::from(burst) + (f64::from(rate) * took.as_secs_f64()).ceil() as u64 + 1;
        eprintln!(
            "REPORT events: {FLOOD} blocked SYNs in {took:?} at {rate}/s, burst {burst}: {} sent, {} held back",
            counts.sent, counts.limited
        );
        assert!(
            counts.sent >= u64::from(burst) && counts.sent <= allowed,
            "sent {} (allowed {allowed} in {took:?})",
            counts.sent
        );
        assert_eq!(counts.sent + counts.limited, u64::from(FLOOD), "{counts:?}");
        assert_eq!(counts.lost, 0);
        let rule = h.entry("8080/tcp").unwrap();
        assert_eq!(
            rule.packets,
            u64::from(FLOOD),
            "the rule counts every packet"
        );
        let read = collect(&mut stream, Duration::from_secs(1));
        assert_eq!(
            read.len() as u64,
            counts.sent,
            "every event sent is in the ring"
        );

        // No limit to speak of: the ring (256 KiB) fills and the rest is lost.
        switch.reset_counts().unwrap();
        switch.set(ON).unwrap();
        flood(&h, 20_000);
        let counts = switch.counts().unwrap();
        eprintln!(
            "REPORT events: 20000 events into an unread ring: {} sent, {} lost",
            counts.sent, counts.lost
        );
        assert!(counts.lost > 0, "{counts:?}");
        assert_eq!(counts.sent + counts.lost, 20_000, "{counts:?}");
        let read = collect(&mut stream, Duration::from_secs(1));
        assert_eq!(read.len() as u64, counts.sent);
        assert_eq!(
            h.entry("8080/tcp").unwrap().packets,
            u64::from(FLOOD) + 20_000,
            "the counters stay exact when events are lost"
        );
    }
}
