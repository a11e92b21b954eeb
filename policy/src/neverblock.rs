//! Addresses the enforcer never blocks, whatever the configuration or the sensor says.
//! A spoofed probe "from" one of these would otherwise turn the blocker against the host
//! itself or against whole groups of hosts.

use std::collections::{HashMap, HashSet};
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
    /// Something this host depends on (learnt from the kernel's routes and addresses and
    /// from the resolver and DHCP lease files): a forged probe "from" it must not cut the
    /// host off from its gateway, resolver or lease server.
    Infrastructure(InfraReason),
}

/// Why an address is part of this host's infrastructure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InfraReason {
    /// A next hop of a default route (any routing table, multipath nexthops included).
    DefaultGateway,
    /// A `nameserver` of the resolver configuration.
    Nameserver,
    /// The remote end of a point-to-point link (IFA_ADDRESS differing from IFA_LOCAL).
    PointToPointPeer,
    /// The server of one of this host's DHCP leases.
    DhcpServer,
}

impl InfraReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DefaultGateway => "default gateway",
            Self::Nameserver => "nameserver",
            Self::PointToPointPeer => "point-to-point peer",
            Self::DhcpServer => "DHCP server",
        }
    }
}

impl fmt::Display for InfraReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
            Self::Infrastructure(r) => r.as_str(),
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
    /// Infrastructure this host depends on, with the (first) reason it was learnt for.
    infra: HashMap<IpAddr, InfraReason>,
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

    /// The directed broadcast (and network) addresses of our own IPv4 networks.
    pub fn broadcasts(&self) -> impl Iterator<Item = &Ipv4Addr> {
        self.broadcasts.iter()
    }

    pub fn own_addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.own.iter()
    }

    /// Replace the infrastructure entries. When an address is listed for several reasons,
    /// the first one (in [`InfraReason`] order) is the one reported.
    pub fn set_infrastructure(&mut self, infra: impl IntoIterator<Item = (IpAddr, InfraReason)>) {
        self.infra.clear();
        for (ip, why) in infra {
            let e = self.infra.entry(canonical(ip)).or_insert(why);
            *e = (*e).min(why);
        }
    }

    /// The current infrastructure entries, sorted by address.
    pub fn infrastructure(&self) -> Vec<(IpAddr, InfraReason)> {
        let mut v: Vec<(IpAddr, InfraReason)> = self.infra.iter().map(|(a, r)| (*a, *r)).collect();
        v.sort();
        v
    }

    /// `Some(reason)` when `ip` must never be blocked.
    pub fn check(&self, ip: IpAddr) -> Option<NeverBlockReason> {
        let ip = canonical(ip);
        if self.own.contains(&ip) {
            return Some(NeverBlockReason::OwnAddress);
        }
        if let Some(why) = self.infra.get(&ip) {
            return Some(NeverBlockReason::Infrastructure(*why));
        }
        match ip {
            IpAddr::V4(a) => self.check_v4(a),
            IpAddr::V6(a) => check_v6(a),
        }
    }

    /// Why a block of the IPv6 network `net`/`len` would cover something never blocked:
    /// one of this host's addresses or its infrastructure inside it, or a network address
    /// that is itself never blocked (link-local, multicast, ...). `None`: the whole
    /// network may be blocked.
    pub fn check_net6(&self, net: Ipv6Addr, len: u8) -> Option<NeverBlockReason> {
        let base = crate::mask6(net, len);
        let inside = |ip: &IpAddr| matches!(ip, IpAddr::V6(a) if crate::mask6(*a, len) == base);
        if self.own.iter().any(inside) {
            return Some(NeverBlockReason::OwnAddress);
        }
        if let Some((_, why)) = self.infra.iter().find(|(ip, _)| inside(ip)) {
            return Some(NeverBlockReason::Infrastructure(*why));
        }
        check_v6(base)
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

    #[test]
    fn a_network_never_covers_our_own_or_infrastructure() {
        let n = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let mut nb = NeverBlock::new(vec!["2001:db8:1:2::5".parse().unwrap()]);
        nb.set_infrastructure(vec![(
            "2001:db8:9::1".parse().unwrap(),
            InfraReason::DefaultGateway,
        )]);
        assert_eq!(
            nb.check_net6(n("2001:db8:1:2::"), 64),
            Some(NeverBlockReason::OwnAddress)
        );
        assert_eq!(
            nb.check_net6(n("2001:db8:9::77"), 64),
            Some(NeverBlockReason::Infrastructure(
                InfraReason::DefaultGateway
            ))
        );
        assert_eq!(nb.check_net6(n("2001:db8:1:3::9"), 64), None);
        assert_eq!(
            nb.check_net6(n("fe80::1"), 64),
            Some(NeverBlockReason::LinkLocal)
        );
        // /128 is the address alone.
        assert_eq!(nb.check_net6(n("2001:db8:1:2::6"), 128), None);
    }

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
    fn infrastructure_with_reasons() {
        use NeverBlockReason::Infrastructure as I;
        let mut n = nb();
        n.set_infrastructure([
            ("192.0.2.1".parse().unwrap(), InfraReason::DefaultGateway),
            ("2001:db8::53".parse().unwrap(), InfraReason::Nameserver),
            ("192.0.2.1".parse().unwrap(), InfraReason::DhcpServer),
            (
                "::ffff:203.0.113.9".parse().unwrap(),
                InfraReason::PointToPointPeer,
            ),
            ("fe80::1".parse().unwrap(), InfraReason::DefaultGateway),
        ]);
        let r = |s: &str| n.check(s.parse().unwrap());
        assert_eq!(r("192.0.2.1"), Some(I(InfraReason::DefaultGateway)));
        assert_eq!(r("192.0.2.1").unwrap().to_string(), "default gateway");
        assert_eq!(r("2001:db8::53").unwrap().to_string(), "nameserver");
        assert_eq!(r("203.0.113.9").unwrap().to_string(), "point-to-point peer");
        // The more specific reason wins over the generic link-local rule.
        assert_eq!(r("fe80::1"), Some(I(InfraReason::DefaultGateway)));
        assert_eq!(r("192.0.2.2"), None);
        assert_eq!(n.infrastructure().len(), 4);
        // Replaced, not merged: the old gateway is blockable again.
        n.set_infrastructure([("192.0.2.254".parse().unwrap(), InfraReason::DefaultGateway)]);
        assert_eq!(n.check("192.0.2.1".parse().unwrap()), None);
        assert_eq!(
            n.check("192.0.2.254".parse().unwrap()).unwrap().to_string(),
            "default gateway"
        );
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
