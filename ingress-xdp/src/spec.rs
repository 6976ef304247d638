//! Port specs as operators type them: `PORT[/PROTO]` or `LOW-HIGH[/PROTO]`,
//! with tcp as the default protocol, as in Docker's `--publish`.

use std::{fmt, str::FromStr};

use ingress_xdp_common::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use serde::Serialize;

/// A transport protocol whose destination port we filter.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.number() == number)
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("empty port spec (expected PORT[/tcp|udp|sctp] or LOW-HIGH[/proto])")]
    Empty,
    #[error("unknown protocol {0:?} (expected tcp, udp or sctp)")]
    UnknownProtocol(String),
    #[error("{0:?} is not a port number (expected 1-65535)")]
    NotANumber(String),
    #[error("port {0} is out of range (expected 1-65535)")]
    OutOfRange(u64),
    #[error("range {low}-{high} is inverted (the low port comes first)")]
    Inverted { low: u16, high: u16 },
}

impl FromStr for Protocol {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(SpecError::UnknownProtocol(s.to_string())),
        }
    }
}

/// A contiguous, inclusive port range of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    pub proto: Protocol,
    pub low: u16,
    pub high: u16,
}

impl PortSpec {
    pub fn single(proto: Protocol, port: u16) -> Self {
        Self {
            proto,
            low: port,
            high: port,
        }
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.low..=self.high
    }

    pub fn len(&self) -> usize {
        usize::from(self.high - self.low) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn overlaps(&self, low: u16, high: u16) -> bool {
        self.low <= high && low <= self.high
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}/{}", self.low, self.proto)
        } else {
            write!(f, "{}-{}/{}", self.low, self.high, self.proto)
        }
    }
}

fn parse_port(text: &str) -> Result<u16, SpecError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpecError::NotANumber(text.to_string()));
    }
    // Digits only, so the only failure left is overflow.
    let value: u64 = text.parse().unwrap_or(u64::MAX);
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(SpecError::OutOfRange(value)),
    }
}

impl FromStr for PortSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SpecError::Empty);
        }
        let (ports, proto) = match s.split_once('/') {
            Some((ports, proto)) => (ports, proto.trim().parse()?),
            None => (s, Protocol::Tcp),
        };
        let (low, high) = match ports.split_once('-') {
            Some((low, high)) => (parse_port(low)?, parse_port(high)?),
            None => {
                let port = parse_port(ports)?;
                (port, port)
            }
        };
        if low > high {
            return Err(SpecError::Inverted { low, high });
        }
        Ok(PortSpec { proto, low, high })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<PortSpec, SpecError> {
        s.parse()
    }

    #[test]
    fn single_port_defaults_to_tcp() {
        assert_eq!(spec("8080"), Ok(PortSpec::single(Protocol::Tcp, 8080)));
        assert_eq!(spec(" 1 "), Ok(PortSpec::single(Protocol::Tcp, 1)));
        assert_eq!(spec("65535"), Ok(PortSpec::single(Protocol::Tcp, 65535)));
    }

    #[test]
    fn protocols() {
        assert_eq!(spec("53/udp").unwrap().proto, Protocol::Udp);
        assert_eq!(spec("53/UDP").unwrap().proto, Protocol::Udp);
        assert_eq!(spec("9/sctp").unwrap().proto, Protocol::Sctp);
        assert_eq!(spec("80/tcp").unwrap().proto, Protocol::Tcp);
        assert_eq!(
            spec("80/icmp"),
            Err(SpecError::UnknownProtocol("icmp".into()))
        );
        assert_eq!(spec("80/"), Err(SpecError::UnknownProtocol("".into())));
    }

    #[test]
    fn ranges() {
        let r = spec("30000-32767/udp").unwrap();
        assert_eq!((r.low, r.high, r.proto), (30000, 32767, Protocol::Udp));
        assert_eq!(r.len(), 2768);
        assert_eq!(spec("5-5").unwrap().len(), 1);
        assert_eq!(
            spec("90-80"),
            Err(SpecError::Inverted { low: 90, high: 80 })
        );
    }

    #[test]
    fn out_of_range_and_garbage() {
        assert_eq!(spec("0"), Err(SpecError::OutOfRange(0)));
        assert_eq!(spec("65536"), Err(SpecError::OutOfRange(65536)));
        assert_eq!(
            spec("99999999999999999999999"),
            Err(SpecError::OutOfRange(u64::MAX))
        );
        assert_eq!(spec("0-10"), Err(SpecError::OutOfRange(0)));
        assert_eq!(spec("-5"), Err(SpecError::NotANumber("".into())));
        assert_eq!(spec("+5"), Err(SpecError::NotANumber("+5".into())));
        assert_eq!(spec("http"), Err(SpecError::NotANumber("http".into())));
        assert_eq!(spec("1-2-3"), Err(SpecError::NotANumber("2-3".into())));
        assert_eq!(spec(""), Err(SpecError::Empty));
        assert_eq!(
            spec("80/tcp/udp"),
            Err(SpecError::UnknownProtocol("tcp/udp".into()))
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["80/tcp", "53/udp", "1000-2000/sctp"] {
            assert_eq!(spec(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn overlap() {
        let r = spec("100-200").unwrap();
        assert!(r.overlaps(200, 300));
        assert!(r.overlaps(0, 100));
        assert!(!r.overlaps(201, 300));
    }
}
