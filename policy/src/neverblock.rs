//! Addresses the enforcer never blocks, whatever the configuration or the sensor says.
//! A spoofed probe "from" one of these would otherwise turn the blocker against the host
//! itself or against whole groups of hosts.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeverBlockReason {
    Unspecified,
    Loopback,
    Multicast,
    Broadcast,
    LinkLocal,
    OwnAddress,
    /// Reserved ranges no real peer uses as a source (0.0.0.0/8, 240.0.0.0/4, IPv4-mapped,
    /// documentation-free special cases are *not* included: 192.0.2.0/24 etc. stay blockable).
    Reserved,
}

impl NeverBlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified address",
            Self::Loopback => "loopback address",
            Self::Multicast => "multicast address",
            Self::Broadcast => "broadcast address",
            Self::LinkLocal => "link-local address",
            Self::OwnAddress => "one of this host's addresses",
            Self::Reserved => "reserved address",
        }
    }
}

impl fmt::Display for NeverBlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fixed never-block rules plus this host's own addresses (kept current by the
/// enforcer through [`NeverBlock::set_own`]).
#[derive(Debug, Clone, Default)]
pub struct NeverBlock {
    own: HashSet<IpAddr>,
    /// Directed broadcast addresses of our own IPv4 networks.
    broadcasts: HashSet<Ipv4Addr>,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl NeverBlock {
    pub fn new(own: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut nb = Self::default();
        nb.set_own(own);
        nb
    }

    /// Replace the set of this host's addresses.
    pub fn set_own(&mut self, own: impl IntoIterator<Item = IpAddr>) {
        self.own = own.into_iter().map(canonical).collect();
    }

    /// Replace the set of directed broadcast addresses of our own networks.
    pub fn set_broadcasts(&mut self, b: impl IntoIterator<Item = Ipv4Addr>) {
        self.broadcasts = b.into_iter().collect();
    }

    pub fn own_addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.own.iter()
    }

    /// `Some(reason)` when `ip` must never be blocked.
    pub fn check(&self, ip: IpAddr) -> Option<NeverBlockReason> {
        let ip = canonical(ip);
        if self.own.contains(&ip) {
            return Some(NeverBlockReason::OwnAddress);
        }
        match ip {
            IpAddr::V4(a) => self.check_v4(a),
            IpAddr::V6(a) => check_v6(a),
        }
    }

    fn check_v4(&self, a: Ipv4Addr) -> Option<NeverBlockReason> {
        use NeverBlockReason::*;
        let o = a.octets();
        if a.is_unspecified() {
            Some(Unspecified)
        } else if a.is_loopback() {
            Some(Loopback)
        } else if a.is_multicast() {
            Some(Multicast)
        } else if a.is_broadcast() || self.broadcasts.contains(&a) {
            Some(Broadcast)
        } else if a.is_link_local() {
            Some(LinkLocal)
        } else if o[0] == 0 || o[0] >= 240 {
            Some(Reserved)
        } else {
            None
        }
    }
}

fn check_v6(a: Ipv6Addr) -> Option<NeverBlockReason> {
    use NeverBlockReason::*;
    let seg0 = a.segments()[0];
    if a.is_unspecified() {
        Some(Unspecified)
    } else if a.is_loopback() {
        Some(Loopback)
    } else if a.is_multicast() {
        Some(Multicast)
    } else if seg0 & 0xffc0 == 0xfe80 {
        Some(LinkLocal)
    } else if a.segments()[..6] == [0; 6] {
        // ::a.b.c.d (deprecated IPv4-compatible) — never a real source.
        Some(Reserved)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nb() -> NeverBlock {
        let mut n = NeverBlock::new([
            "192.0.2.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        ]);
        n.set_broadcasts(["192.0.2.255".parse().unwrap()]);
        n
    }

    fn reason(s: &str) -> Option<NeverBlockReason> {
        nb().check(s.parse().unwrap())
    }

    #[test]
    fn fixed_rules() {
        use NeverBlockReason::*;
        assert_eq!(reason("0.0.0.0"), Some(Unspecified));
        assert_eq!(reason("::"), Some(Unspecified));
        assert_eq!(reason("127.3.4.5"), Some(Loopback));
        assert_eq!(reason("::1"), Some(Loopback));
        assert_eq!(reason("224.0.0.1"), Some(Multicast));
        assert_eq!(reason("ff02::1"), Some(Multicast));
        assert_eq!(reason("255.255.255.255"), Some(Broadcast));
        assert_eq!(reason("192.0.2.255"), Some(Broadcast));
        assert_eq!(reason("169.254.1.1"), Some(LinkLocal));
        assert_eq!(reason("fe80::1"), Some(LinkLocal));
        assert_eq!(reason("0.1.2.3"), Some(Reserved));
        assert_eq!(reason("250.1.1.1"), Some(Reserved));
        assert_eq!(reason("::ffff:127.0.0.1"), Some(Loopback));
    }

    #[test]
    fn own_addresses_any_form() {
        use NeverBlockReason::*;
        assert_eq!(reason("192.0.2.10"), Some(OwnAddress));
        assert_eq!(reason("::ffff:192.0.2.10"), Some(OwnAddress));
        assert_eq!(reason("2001:db8::10"), Some(OwnAddress));
    }

    #[test]
    fn ordinary_sources_are_blockable() {
        for s in [
            "192.0.2.9",
            "10.1.2.3",
            "203.0.113.5",
            "2001:db8::9",
            "fd00::1",
        ] {
            assert_eq!(reason(s), None, "{s}");
        }
    }
}
