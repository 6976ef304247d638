//! Source prefixes for `--allow-from`: `ADDR/LEN` or a bare address (a host).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address (expected e.g. 10.0.0.0/8 or 2001:db8::/32)")]
    BadAddress(String),
    #[error("{0:?} is not a prefix length")]
    BadLength(String),
    #[error("prefix length /{len} is too long for {family} (at most /{max})")]
    TooLong {
        len: u8,
        max: u8,
        family: &'static str,
    },
    #[error("{text} has bits set beyond /{len}; did you mean {suggestion}?")]
    HostBits {
        text: String,
        len: u8,
        suggestion: String,
    },
}

/// A network prefix, with no bits set beyond its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

fn mask_v4(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(addr);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(addr: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(addr);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    Ipv6Addr::from(bits & mask)
}

impl Cidr {
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let masked = match addr {
            IpAddr::V4(a) if len <= 32 => IpAddr::V4(mask_v4(a, len)),
            IpAddr::V6(a) if len <= 128 => IpAddr::V6(mask_v6(a, len)),
            _ => return None,
        };
        (masked == addr).then_some(Self { addr, len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.len) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.len) == net,
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::BadAddress(addr_text.to_string()))?;
        let (max, family) = match addr {
            IpAddr::V4(_) => (32u8, "IPv4"),
            IpAddr::V6(_) => (128u8, "IPv6"),
        };
        let len = match len_text {
            None => max,
            Some(l) => {
                if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::BadLength(l.to_string()));
                }
                let len: u16 = l.parse().map_err(|_| CidrError::BadLength(l.to_string()))?;
                if len > u16::from(max) {
                    return Err(CidrError::TooLong {
                        len: len.min(255) as u8,
                        max,
                        family,
                    });
                }
                len as u8
            }
        };
        Cidr::new(addr, len).ok_or_else(|| {
            let masked = match addr {
                IpAddr::V4(a) => IpAddr::V4(mask_v4(a, len)),
                IpAddr::V6(a) => IpAddr::V6(mask_v6(a, len)),
            };
            CidrError::HostBits {
                text: text.to_string(),
                len,
                suggestion: format!("{masked}/{len}"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Result<Cidr, CidrError> {
        s.parse()
    }

    #[test]
    fn parses_v4_and_v6() {
        let c = cidr("10.0.0.0/8").unwrap();
        assert_eq!((c.addr(), c.prefix_len()), ("10.0.0.0".parse().unwrap(), 8));
        assert_eq!(cidr("192.0.2.7").unwrap().prefix_len(), 32);
        assert_eq!(cidr("2001:db8::/32").unwrap().prefix_len(), 32);
        assert_eq!(cidr("::1").unwrap().prefix_len(), 128);
        assert_eq!(cidr("0.0.0.0/0").unwrap().prefix_len(), 0);
        assert_eq!(cidr("::/0").unwrap().to_string(), "::/0");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            cidr("10.0.0/8"),
            Err(CidrError::BadAddress("10.0.0".into()))
        );
        assert_eq!(cidr("banana"), Err(CidrError::BadAddress("banana".into())));
        assert_eq!(cidr("10.0.0.0/"), Err(CidrError::BadLength("".into())));
        assert_eq!(cidr("10.0.0.0/x"), Err(CidrError::BadLength("x".into())));
        assert_eq!(cidr("10.0.0.0/-1"), Err(CidrError::BadLength("-1".into())));
        assert!(matches!(
            cidr("10.0.0.0/33"),
            Err(CidrError::TooLong {
                len: 33,
                max: 32,
                ..
            })
        ));
        assert!(matches!(
            cidr("::/129"),
            Err(CidrError::TooLong { max: 128, .. })
        ));
    }

    #[test]
    fn host_bits_suggest_the_network() {
        let err = cidr("10.1.2.3/8").unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.1.2.3/8 has bits set beyond /8; did you mean 10.0.0.0/8?"
        );
        assert!(matches!(
            cidr("2001:db8::1/64"),
            Err(CidrError::HostBits { .. })
        ));
    }

    #[test]
    fn contains() {
        let c = cidr("192.168.0.0/16").unwrap();
        assert!(c.contains("192.168.200.1".parse().unwrap()));
        assert!(!c.contains("192.169.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(
            cidr("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
    }
}
