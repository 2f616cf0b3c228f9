//! IPv4 networks (`10.42.1.0/24`): the cluster, node and service CIDRs, parsed once here for
//! the master's allocators and the agent's pod network.

use std::net::Ipv4Addr;

/// An IPv4 network: a base address with its host bits clear, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 CIDR like 10.42.0.0/16")]
    Syntax(String),
    #[error("{text:?} has host bits set; did you mean {network}?")]
    HostBits { text: String, network: Cidr },
}

impl Cidr {
    /// Parses `10.42.1.0/24`; the host bits must be clear.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError::Syntax(s.to_string());
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = l.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let c = Cidr { base, prefix };
        let network = Cidr {
            base: Ipv4Addr::from(u32::from(base) & c.mask()),
            prefix,
        };
        if network != c {
            return Err(CidrError::HostBits {
                text: s.to_string(),
                network,
            });
        }
        Ok(c)
    }

    /// The network mask as a number (`/24` → `0xffff_ff00`).
    pub fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        }
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base)
    }

    /// How many addresses the network holds (its network and broadcast addresses too).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix.min(32)))
    }

    /// The last address (the broadcast address).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) | !self.mask())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_contains() {
        let c = Cidr::parse("10.42.1.0/24").unwrap();
        assert_eq!(c.to_string(), "10.42.1.0/24");
        assert_eq!(c.mask(), 0xffff_ff00);
        assert_eq!(c.size(), 256);
        assert_eq!(c.last(), Ipv4Addr::new(10, 42, 1, 255));
        assert!(c.contains(Ipv4Addr::new(10, 42, 1, 7)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 2, 7)));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert_eq!((all.mask(), all.size()), (0, 1 << 32));
        assert!(all.contains(Ipv4Addr::new(192, 0, 2, 1)));
        let one = Cidr::parse("192.0.2.1/32").unwrap();
        assert_eq!((one.size(), one.last()), (1, Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn refuses_what_is_not_a_network() {
        for bad in [
            "",
            "10.42.0.0",
            "10.42.0.0/33",
            "10.42.0/16",
            "10.42.0.0/-1",
            "x/8",
        ] {
            assert!(
                matches!(Cidr::parse(bad), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
        let e = Cidr::parse("10.42.1.1/16").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.42.1.1/16\" has host bits set; did you mean 10.42.0.0/16?"
        );
    }
}
