//! The reference verdict: what the data plane should do with a frame, computed
//! in user space without any of its code.
//!
//! Header fields are decoded by etherparse (an independent, well-kept packet
//! parser); this module only strings its header slices together under the
//! documented semantics of the programs (README "What the programs parse",
//! and the module doc of `ingress-xdp-ebpf/src/parse.rs`):
//!
//! - Ethernet, then at most two 802.1Q / 802.1ad tags; a third tag is not
//!   parsed. (etherparse also treats the pre-standard 0x9100 as a VLAN tag; the
//!   programs do not, so here it is an unknown EtherType: no port.)
//! - IPv4: version 4, IHL >= 5, total length >= the header. Options are
//!   skipped, never read, so they need not be in the frame unless the port is
//!   (etherparse wants the whole header: it is given the fixed part padded).
//! - IPv6: version 6; hop-by-hop, routing, destination options, fragment and
//!   AH headers are walked in any order and repetition, at most 8; a 9th is not
//!   parsed. Only the fields needed to go on (next header and length; the
//!   offset of a fragment header) must be in the frame. etherparse's chain
//!   parser insists on RFC 8200 order (hop-by-hop first), so the chain is
//!   walked here header by header with its single-header slices.
//! - An AH whose payload length is 0 is shorter than AH's own fixed fields
//!   (RFC 4302: at least 12 bytes): malformed, as etherparse says.
//! - A fragment with a non-zero offset has no port (it passes); an offset-0
//!   fragment is judged by its port.
//! - The four port bytes must lie inside the frame and inside the datagram
//!   (IPv4 total length, IPv6 payload length); a datagram claiming more than
//!   the frame holds is still judged by the port the frame does hold.
//! - TCP, UDP and SCTP are judged by their destination port; other protocols
//!   and EtherTypes have no port.
//! - Malformed => passed, counted as not parsed.
//!
//! Rules are applied like `RuleTable::apply`: in order, each setting every
//! port of its range (mode and allowlist), later rules replacing earlier ones.
//! An allowlisted source (a prefix of the packet's own family) is allowed and
//! not counted; otherwise a `block` rule drops, an `audit` rule counts and
//! passes, and both count the packet against the rule.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice, UdpHeaderSlice, err::ip_auth::HeaderError as AuthError,
};

/// VLAN tags walked before the EtherType must be IP.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the next header must be final.
pub const MAX_EXT_HEADERS: usize = 8;

/// The attach-point counter bucket a frame lands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Dropped,
    Passed,
    Audited,
    Allowed,
    NotParsed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Dropped,
        Outcome::Passed,
        Outcome::Audited,
        Outcome::Allowed,
        Outcome::NotParsed,
    ];

    pub fn drops(self) -> bool {
        self == Outcome::Dropped
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Dropped => "dropped",
            Outcome::Passed => "passed",
            Outcome::Audited => "audited",
            Outcome::Allowed => "allowed",
            Outcome::NotParsed => "not_parsed",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A transport protocol the rules filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];

    pub fn number(self) -> IpNumber {
        match self {
            Proto::Tcp => IpNumber::TCP,
            Proto::Udp => IpNumber::UDP,
            Proto::Sctp => IpNumber::SCTP,
        }
    }

    pub fn from_number(n: IpNumber) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.number() == n)
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A source prefix: address and length, host bits clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// `addr/len` with the bits beyond `len` cleared.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let bits = u32::from(a) & v4_mask(len);
                Self {
                    addr: IpAddr::V4(Ipv4Addr::from(bits)),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let bits = u128::from(a) & v6_mask(len);
                Self {
                    addr: IpAddr::V6(Ipv6Addr::from(bits)),
                    len,
                }
            }
        }
    }

    pub fn contains(&self, source: IpAddr) -> bool {
        match (self.addr, source) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & v4_mask(self.len) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & v6_mask(self.len) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn v4_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn v6_mask(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// One rule as an operator sets it: a port range of one protocol, its mode,
/// and the sources that bypass it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub proto: Proto,
    pub low: u16,
    pub high: u16,
    pub audit: bool,
    pub allow: Vec<Prefix>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}/{}", self.low, self.proto.name())?;
        } else {
            write!(f, "{}-{}/{}", self.low, self.high, self.proto.name())?;
        }
        f.write_str(if self.audit { " audit" } else { " block" })?;
        if !self.allow.is_empty() {
            f.write_str(" allow")?;
            for p in &self.allow {
                write!(f, " {p}")?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct Entry {
    audit: bool,
    allow: Vec<Prefix>,
}

/// The rule table after applying a list of rules in order.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    table: HashMap<(Proto, u16), Entry>,
}

impl Rules {
    pub fn new(rules: &[Rule]) -> Self {
        let mut table = HashMap::new();
        for rule in rules {
            // The allowlist is a set (duplicates collapse).
            let mut allow = rule.allow.clone();
            allow.sort();
            allow.dedup();
            for port in rule.low..=rule.high {
                table.insert(
                    (rule.proto, port),
                    Entry {
                        audit: rule.audit,
                        allow: allow.clone(),
                    },
                );
            }
        }
        Self { table }
    }

    /// Every (protocol, port) that has a rule.
    pub fn keys(&self) -> impl Iterator<Item = (Proto, u16)> + '_ {
        self.table.keys().copied()
    }
}

/// A frame the programs can judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub proto: Proto,
    pub dport: u16,
    pub source: IpAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    Port(Port),
    /// Well formed, but no port to judge (and why).
    NoPort(&'static str),
}

/// Not parsed, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// The reference's answer for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub outcome: Outcome,
    /// The rule counted against (drops and audits).
    pub counted: Option<(Proto, u16)>,
    pub parsed: Result<Parsed, Malformed>,
}

pub fn judge(rules: &Rules, frame: &[u8]) -> Judgement {
    let parsed = parse(frame);
    let (outcome, counted) = match parsed {
        Err(_) => (Outcome::NotParsed, None),
        Ok(Parsed::NoPort(_)) => (Outcome::Passed, None),
        Ok(Parsed::Port(p)) => match rules.table.get(&(p.proto, p.dport)) {
            None => (Outcome::Passed, None),
            Some(e) if e.allow.iter().any(|a| a.contains(p.source)) => (Outcome::Allowed, None),
            Some(e) if e.audit => (Outcome::Audited, Some((p.proto, p.dport))),
            Some(_) => (Outcome::Dropped, Some((p.proto, p.dport))),
        },
    };
    Judgement {
        outcome,
        counted,
        parsed,
    }
}

fn is_vlan(t: EtherType) -> bool {
    t == EtherType::VLAN_TAGGED_FRAME || t == EtherType::PROVIDER_BRIDGING
}

fn is_walked_ext(n: IpNumber) -> bool {
    [
        IpNumber::IPV6_HEADER_HOP_BY_HOP,
        IpNumber::IPV6_ROUTE_HEADER,
        IpNumber::IPV6_DESTINATION_OPTIONS,
        IpNumber::IPV6_FRAGMENTATION_HEADER,
        IpNumber::AUTHENTICATION_HEADER,
    ]
    .contains(&n)
}

/// Longest extension header: an options-style header of length byte 255.
const EXT_PAD: usize = 256 * 8;
/// Longest IPv4 header (IHL 15).
const IPV4_PAD: usize = 60;

/// The first `N` bytes of `bytes`, zero-filled past its end: for etherparse's
/// header slices, which want a whole header where the semantics need only
/// some of its fields. Callers check that the fields they use are real bytes.
fn padded<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut buf = [0u8; N];
    let n = bytes.len().min(N);
    buf[..n].copy_from_slice(&bytes[..n]);
    buf
}

pub fn parse(frame: &[u8]) -> Result<Parsed, Malformed> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Malformed("short Ethernet"))?;
    let mut ether_type = eth.ether_type();
    let mut rest = &frame[eth.slice().len()..];
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
            break;
        }
        let tag =
            SingleVlanHeaderSlice::from_slice(rest).map_err(|_| Malformed("short VLAN tag"))?;
        ether_type = tag.ether_type();
        rest = &rest[tag.slice().len()..];
    }
    match ether_type {
        EtherType::IPV4 => ipv4(rest),
        EtherType::IPV6 => ipv6(rest),
        t if is_vlan(t) => Err(Malformed("more than two VLAN tags")),
        _ => Ok(Parsed::NoPort("not IP")),
    }
}

fn ipv4(rest: &[u8]) -> Result<Parsed, Malformed> {
    if rest.len() < etherparse::Ipv4Header::MIN_LEN {
        return Err(Malformed("short IPv4 header"));
    }
    // The options may be cut off: the fixed header is all that is read.
    let buf = padded::<IPV4_PAD>(rest);
    let ip = Ipv4HeaderSlice::from_slice(&buf[..]).map_err(|_| Malformed("IPv4 version/IHL"))?;
    let header_len = usize::from(ip.ihl()) * 4;
    let total_len = usize::from(ip.total_len());
    if total_len < header_len {
        return Err(Malformed("IPv4 total length < header"));
    }
    let Some(proto) = Proto::from_number(ip.protocol()) else {
        return Ok(Parsed::NoPort("IPv4, unfiltered protocol"));
    };
    if ip.fragments_offset().value() != 0 {
        return Ok(Parsed::NoPort("IPv4 later fragment"));
    }
    if total_len < header_len + 4 {
        return Err(Malformed("IPv4 total length does not cover the port"));
    }
    let dport = dport(proto, &rest[header_len.min(rest.len())..])?;
    Ok(Parsed::Port(Port {
        proto,
        dport,
        source: IpAddr::V4(ip.source_addr()),
    }))
}

fn ipv6(rest: &[u8]) -> Result<Parsed, Malformed> {
    let ip = Ipv6HeaderSlice::from_slice(rest).map_err(|_| Malformed("IPv6 header"))?;
    let payload = &rest[ip.slice().len()..];
    let mut next = ip.next_header();
    // Bytes of extension headers walked, from the start of the payload.
    let mut at = 0usize;
    for _ in 0..MAX_EXT_HEADERS {
        if !is_walked_ext(next) {
            break;
        }
        let here = payload.get(at..).unwrap_or(&[]);
        if next == IpNumber::IPV6_FRAGMENTATION_HEADER {
            // Next header, reserved, offset and M flag.
            if here.len() < 4 {
                return Err(Malformed("short fragment header"));
            }
            let buf = padded::<8>(here);
            let frag = Ipv6FragmentHeaderSlice::from_slice(&buf[..]).expect("8 bytes");
            if frag.fragment_offset().value() != 0 {
                return Ok(Parsed::NoPort("IPv6 later fragment"));
            }
            next = frag.next_header();
            at += frag.slice().len();
            continue;
        }
        // Next header and length.
        if here.len() < 2 {
            return Err(Malformed("short extension header"));
        }
        let buf = padded::<EXT_PAD>(here);
        if next == IpNumber::AUTHENTICATION_HEADER {
            let ah = IpAuthHeaderSlice::from_slice(&buf[..]).map_err(|e| match e {
                etherparse::err::ip_auth::HeaderSliceError::Content(AuthError::ZeroPayloadLen) => {
                    Malformed("AH payload length 0")
                }
                _ => unreachable!("padded AH: {e:?}"),
            })?;
            next = ah.next_header();
            at += ah.slice().len();
        } else {
            let ext = Ipv6RawExtHeaderSlice::from_slice(&buf[..]).expect("padded");
            next = ext.next_header();
            at += ext.slice().len();
        }
    }
    if is_walked_ext(next) {
        return Err(Malformed("more than 8 extension headers"));
    }
    let Some(proto) = Proto::from_number(next) else {
        return Ok(Parsed::NoPort("IPv6, unfiltered next header"));
    };
    if usize::from(ip.payload_length()) < at + 4 {
        return Err(Malformed("IPv6 payload length does not cover the port"));
    }
    let dport = dport(proto, payload.get(at..).unwrap_or(&[]))?;
    Ok(Parsed::Port(Port {
        proto,
        dport,
        source: IpAddr::V6(ip.source_addr()),
    }))
}

/// The destination port of the transport header at the start of `l4`. Only
/// the four port bytes need to be in the frame.
fn dport(proto: Proto, l4: &[u8]) -> Result<u16, Malformed> {
    if l4.len() < 4 {
        return Err(Malformed("port cut off"));
    }
    // A whole, valid TCP header is decoded as TCP; otherwise the ports are
    // read with etherparse's UDP header, whose first four bytes are the two
    // ports, as in TCP and SCTP (etherparse has no SCTP).
    if proto == Proto::Tcp
        && let Ok(tcp) = TcpHeaderSlice::from_slice(l4)
    {
        return Ok(tcp.destination_port());
    }
    let buf = padded::<8>(&l4[..4]);
    let udp = UdpHeaderSlice::from_slice(&buf[..]).expect("8 bytes");
    Ok(udp.destination_port())
}
