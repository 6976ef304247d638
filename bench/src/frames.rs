//! The frames the benchmark sends, built with etherparse (an independent
//! packet library, as in tests/verdicts.rs).

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader,
    PacketBuilder, VlanId,
};

/// The destination port the rules block (tcp and udp).
pub const BLOCKED_PORT: u16 = 8080;
/// A port no rule mentions.
pub const OPEN_PORT: u16 = 8081;
const SPORT: u16 = 40000;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_V4: [u8; 4] = [203, 0, 113, 7];
const SERVER_V4: [u8; 4] = [198, 51, 100, 1];
const CLIENT_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7,
];
const SERVER_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];

/// Which representative frame (the goals single some out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SynBlocked,
    SynOpen,
    Ipv6Exts,
    QinQ,
    Udp,
    LaterFragment,
}

/// One representative frame of the per-packet cost table.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: Kind,
    /// Short name, for tables and the chart.
    pub name: &'static str,
    /// What ingress-xdp does with it (with the benchmark's rules).
    pub ours: &'static str,
    pub bytes: Vec<u8>,
}

/// The frames of part 1: IPv4 TCP SYN to a blocked and to an open port, IPv6
/// with two extension headers, QinQ, a UDP datagram, a non-first fragment.
pub fn representative() -> Vec<Frame> {
    vec![
        Frame {
            kind: Kind::SynBlocked,
            name: "IPv4 SYN, blocked port",
            ours: "drop",
            bytes: tcp_syn(untagged(v4()), BLOCKED_PORT),
        },
        Frame {
            kind: Kind::SynOpen,
            name: "IPv4 SYN, open port",
            ours: "pass",
            bytes: tcp_syn(untagged(v4()), OPEN_PORT),
        },
        Frame {
            kind: Kind::Ipv6Exts,
            name: "IPv6 + 2 ext hdrs SYN",
            ours: "drop",
            bytes: tcp_syn(untagged(v6_two_exts()), BLOCKED_PORT),
        },
        Frame {
            kind: Kind::QinQ,
            name: "QinQ IPv4 SYN",
            ours: "drop",
            bytes: tcp_syn(qinq(v4()), BLOCKED_PORT),
        },
        Frame {
            kind: Kind::Udp,
            name: "IPv4 UDP datagram",
            ours: "drop",
            bytes: udp(untagged(v4()), BLOCKED_PORT),
        },
        Frame {
            kind: Kind::LaterFragment,
            name: "IPv4 non-first fragment",
            ours: "pass",
            bytes: later_fragment(),
        },
    ]
}

/// A TCP SYN from `src` to `dst`:`dport`, zero-padded to `len` bytes, with
/// valid IP and TCP checksums (the stack verifies both).
pub fn syn_between(
    (src_mac, src_ip): ([u8; 6], [u8; 4]),
    (dst_mac, dst_ip): ([u8; 6], [u8; 4]),
    dport: u16,
    len: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src_ip, dst_ip, 64)
        .tcp(SPORT, dport, 1, 1024)
        .syn()
        .write(&mut out, &[])
        .expect("etherparse writes a SYN");
    out.resize(out.len().max(len), 0);
    out
}

type IpStep = etherparse::PacketBuilderStep<IpHeaders>;

fn untagged(ip: IpHeaders) -> IpStep {
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ip(ip)
}

/// 802.1ad outer tag, 802.1Q inner tag.
fn qinq(ip: IpHeaders) -> IpStep {
    let vlan = |id| VlanId::try_new(id).expect("vlan id");
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .double_vlan(vlan(200), vlan(100))
        .ip(ip)
}

fn v4() -> IpHeaders {
    // Length, protocol and checksum are filled in by the builder.
    let ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT_V4, SERVER_V4).expect("ipv4 header");
    IpHeaders::Ipv4(ip, Default::default())
}

/// IPv6 with a hop-by-hop and a destination-options header (8 bytes each).
fn v6_two_exts() -> IpHeaders {
    // Next-header fields are placeholders: the builder links the chain.
    let ext = || Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[0; 6]).expect("extension header");
    let exts = Ipv6Extensions {
        hop_by_hop_options: Some(ext()),
        destination_options: Some(ext()),
        ..Default::default()
    };
    let ip = Ipv6Header {
        hop_limit: 64,
        source: CLIENT_V6,
        destination: SERVER_V6,
        ..Default::default()
    };
    IpHeaders::Ipv6(ip, exts)
}

fn tcp_syn(step: IpStep, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    step.tcp(SPORT, dport, 1, 1024)
        .syn()
        .write(&mut out, &[])
        .expect("etherparse writes a SYN");
    out
}

fn udp(step: IpStep, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    step.udp(SPORT, dport)
        .write(&mut out, &[0; 32])
        .expect("etherparse writes a datagram");
    out
}

/// A TCP fragment at offset 1480 bytes: no transport header, so no port.
fn later_fragment() -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT_V4, SERVER_V4).expect("ipv4 header");
    ip.identification = 0x4242;
    ip.fragment_offset = IpFragOffset::try_new(185).expect("fragment offset");
    let mut out = Vec::new();
    untagged(IpHeaders::Ipv4(ip, Default::default()))
        .write(&mut out, IpNumber::TCP, &[0xAB; 32])
        .expect("etherparse writes a fragment");
    out
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    fn dport(frame: &[u8]) -> Option<u16> {
        match SlicedPacket::from_ethernet(frame).ok()?.transport? {
            TransportSlice::Tcp(t) => Some(t.destination_port()),
            TransportSlice::Udp(u) => Some(u.destination_port()),
            _ => None,
        }
    }

    #[test]
    fn frames_carry_the_intended_ports() {
        let frames = representative();
        let ports: Vec<Option<u16>> = frames.iter().map(|f| dport(&f.bytes)).collect();
        assert_eq!(
            ports,
            [
                Some(BLOCKED_PORT),
                Some(OPEN_PORT),
                Some(BLOCKED_PORT),
                Some(BLOCKED_PORT),
                Some(BLOCKED_PORT),
                None
            ]
        );
        let v6 = SlicedPacket::from_ethernet(&frames[2].bytes).unwrap();
        let Some(NetSlice::Ipv6(ip)) = v6.net else {
            panic!("not IPv6")
        };
        assert_eq!(
            ip.extensions().first_header(),
            Some(IpNumber::IPV6_HEADER_HOP_BY_HOP)
        );
        assert_eq!(ip.extensions().slice().len(), 16);
        // Both tags, 802.1ad outside.
        assert_eq!(frames[3].bytes[12..14], [0x88, 0xa8]);
        assert_eq!(frames[3].bytes[16..18], [0x81, 0x00]);
    }

    #[test]
    fn syns_are_padded() {
        let f = syn_between(([2; 6], [10, 0, 0, 1]), ([4; 6], [10, 0, 0, 2]), 9, 64);
        assert_eq!(f.len(), 64);
        assert_eq!(dport(&f), Some(9));
    }
}
