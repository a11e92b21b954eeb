//! Which (mode, destination port, destination address) is watched.
//!
//! Stealth modes watch TCP_PORTS / UDP_PORTS; advanced modes watch every port below
//! ADVANCED_PORTS_* except ADVANCED_EXCLUDE_*. In both, a port where a real service listens
//! on a matching address is not watched ("inverse binding", as PortSentry's SmartVerify
//! did, but learnt from the kernel's socket tables instead of by binding a socket per
//! packet; see [`crate::listeners`]). The sensor's own basic-mode sockets are not "real
//! services". Port 0 is never watched.

use std::net::IpAddr;

use sentry_proto::{Mode, Protocol};

use crate::listeners::Listeners;

/// A set of 65536 ports, one bit each.
#[derive(Clone)]
pub struct PortBits(Box<[u64; 1024]>);

impl std::fmt::Debug for PortBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortBits({} ports)", self.len())
    }
}

impl Default for PortBits {
    fn default() -> Self {
        Self::new()
    }
}

impl PortBits {
    pub fn new() -> Self {
        Self(Box::new([0u64; 1024]))
    }

    pub fn insert(&mut self, port: u16) {
        if let Some(w) = self.0.get_mut(usize::from(port >> 6)) {
            *w |= 1u64 << (port & 63);
        }
    }

    #[inline]
    pub fn contains(&self, port: u16) -> bool {
        self.0
            .get(usize::from(port >> 6))
            .is_some_and(|w| w & (1u64 << (port & 63)) != 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|&p| self.contains(p))
    }
}

impl FromIterator<u16> for PortBits {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut b = Self::new();
        for p in iter {
            b.insert(p);
        }
        b
    }
}

/// The watched ports of one protocol: stealth set and advanced set (each present only when
/// its mode runs).
#[derive(Debug, Clone, Default)]
pub struct ProtoPolicy {
    stealth: Option<PortBits>,
    advanced: Option<PortBits>,
}

impl ProtoPolicy {
    pub fn is_active(&self) -> bool {
        self.stealth.is_some() || self.advanced.is_some()
    }
}

#[derive(Debug, Clone, Default)]
pub struct PortPolicy {
    tcp: ProtoPolicy,
    udp: ProtoPolicy,
}

/// Everything the policy needs from the configuration.
#[derive(Debug, Clone)]
pub struct PortConfig {
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    /// Advanced modes watch ports `1 .. advanced_ports_*` (exclusive).
    pub advanced_ports_tcp: u16,
    pub advanced_ports_udp: u16,
    pub advanced_exclude_tcp: Vec<u16>,
    pub advanced_exclude_udp: Vec<u16>,
}

fn advanced_set(limit: u16, exclude: &[u16]) -> PortBits {
    let ex: PortBits = exclude.iter().copied().collect();
    (1..limit).filter(|p| !ex.contains(*p)).collect()
}

impl PortPolicy {
    pub fn new(modes: &[Mode], cfg: &PortConfig) -> Self {
        let stealth =
            |ports: &[u16]| -> PortBits { ports.iter().copied().filter(|&p| p != 0).collect() };
        let mut p = Self::default();
        for m in modes {
            match m {
                Mode::Stcp => p.tcp.stealth = Some(stealth(&cfg.tcp_ports)),
                Mode::Sudp => p.udp.stealth = Some(stealth(&cfg.udp_ports)),
                Mode::Atcp => {
                    p.tcp.advanced = Some(advanced_set(
                        cfg.advanced_ports_tcp,
                        &cfg.advanced_exclude_tcp,
                    ))
                }
                Mode::Audp => {
                    p.udp.advanced = Some(advanced_set(
                        cfg.advanced_ports_udp,
                        &cfg.advanced_exclude_udp,
                    ))
                }
                Mode::Tcp | Mode::Udp => {}
            }
        }
        p
    }

    /// Probes of `proto` are watched at all. SCTP INITs are watched on the TCP modes'
    /// ports; IP-protocol probes by the advanced modes.
    pub fn captures(&self, proto: Protocol) -> bool {
        match proto {
            Protocol::Tcp | Protocol::Sctp => self.tcp.is_active(),
            Protocol::Udp => self.udp.is_active(),
            Protocol::Ip => self.tcp.advanced.is_some() || self.udp.advanced.is_some(),
        }
    }

    /// The mode that watches a probe to `dst`:`port`, if any. Stealth wins over advanced
    /// when both watch the port.
    #[inline]
    pub fn watched(
        &self,
        proto: Protocol,
        dst: IpAddr,
        port: u16,
        listeners: &Listeners,
    ) -> Option<Mode> {
        let (pp, stealth, advanced) = match proto {
            Protocol::Tcp | Protocol::Sctp => (&self.tcp, Mode::Stcp, Mode::Atcp),
            Protocol::Udp => (&self.udp, Mode::Sudp, Mode::Audp),
            // `port` is the protocol number; the advanced modes watch every protocol the
            // host does not use (sentry_proto::NOT_PROBE_PROTOCOLS, checked before), and
            // no socket serves a bare IP protocol.
            Protocol::Ip if self.tcp.advanced.is_some() => return Some(Mode::Atcp),
            Protocol::Ip if self.udp.advanced.is_some() => return Some(Mode::Audp),
            Protocol::Ip => return None,
        };
        let mode = if pp.stealth.as_ref().is_some_and(|s| s.contains(port)) {
            stealth
        } else if pp.advanced.as_ref().is_some_and(|s| s.contains(port)) {
            advanced
        } else {
            return None;
        };
        if listeners.serves(proto, dst, port) {
            return None;
        }
        Some(mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listeners::Listeners;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn cfg() -> PortConfig {
        PortConfig {
            tcp_ports: vec![1, 23, 31337],
            udp_ports: vec![137, 31337],
            advanced_ports_tcp: 1024,
            advanced_ports_udp: 1024,
            advanced_exclude_tcp: vec![113, 139],
            advanced_exclude_udp: vec![520, 138, 137, 67],
        }
    }

    const D4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2));

    #[test]
    fn port_bits() {
        let b: PortBits = [0u16, 1, 63, 64, 65535].into_iter().collect();
        assert_eq!(b.len(), 5);
        assert!(b.contains(0) && b.contains(65535) && b.contains(64));
        assert!(!b.contains(2) && !b.contains(65534));
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 1, 63, 64, 65535]);
        assert!(PortBits::new().is_empty());
    }

    #[test]
    fn stealth_only_listed_ports() {
        let p = PortPolicy::new(&[Mode::Stcp, Mode::Sudp], &cfg());
        let l = Listeners::default();
        assert_eq!(p.watched(Protocol::Tcp, D4, 23, &l), Some(Mode::Stcp));
        assert_eq!(p.watched(Protocol::Tcp, D4, 24, &l), None);
        assert_eq!(p.watched(Protocol::Udp, D4, 137, &l), Some(Mode::Sudp));
        assert_eq!(p.watched(Protocol::Udp, D4, 23, &l), None);
        assert!(p.captures(Protocol::Tcp) && p.captures(Protocol::Udp));
        let none = PortPolicy::new(&[Mode::Tcp, Mode::Udp], &cfg());
        assert!(!none.captures(Protocol::Tcp) && !none.captures(Protocol::Udp));
    }

    #[test]
    fn advanced_below_limit_minus_exclusions() {
        let p = PortPolicy::new(&[Mode::Atcp, Mode::Audp], &cfg());
        let l = Listeners::default();
        assert_eq!(p.watched(Protocol::Tcp, D4, 0, &l), None);
        assert_eq!(p.watched(Protocol::Tcp, D4, 1, &l), Some(Mode::Atcp));
        assert_eq!(p.watched(Protocol::Tcp, D4, 1023, &l), Some(Mode::Atcp));
        assert_eq!(p.watched(Protocol::Tcp, D4, 1024, &l), None);
        assert_eq!(p.watched(Protocol::Tcp, D4, 113, &l), None);
        assert_eq!(p.watched(Protocol::Udp, D4, 137, &l), None);
        assert_eq!(p.watched(Protocol::Udp, D4, 53, &l), Some(Mode::Audp));
        // The stealth-only port 31337 is not watched by advanced mode.
        assert_eq!(p.watched(Protocol::Tcp, D4, 31337, &l), None);
    }

    #[test]
    fn stealth_wins_over_advanced() {
        let p = PortPolicy::new(&[Mode::Atcp, Mode::Stcp], &cfg());
        let l = Listeners::default();
        assert_eq!(p.watched(Protocol::Tcp, D4, 23, &l), Some(Mode::Stcp));
        assert_eq!(p.watched(Protocol::Tcp, D4, 22, &l), Some(Mode::Atcp));
        assert_eq!(p.watched(Protocol::Tcp, D4, 31337, &l), Some(Mode::Stcp));
    }

    #[test]
    fn inverse_binding() {
        let p = PortPolicy::new(&[Mode::Atcp, Mode::Audp, Mode::Stcp], &cfg());
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut l = Listeners::default();
        // sshd on 0.0.0.0:22, cupsd on 127.0.0.1:631 (above limit anyway) and on
        // 127.0.0.1:25, a v6-only service on [fd00::2]:80, a DNS server on UDP [::]:53.
        l.add(Protocol::Tcp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 22);
        l.add(Protocol::Tcp, lo, 25);
        let v6: Ipv6Addr = "fd00::2".parse().unwrap();
        l.add(Protocol::Tcp, IpAddr::V6(v6), 80);
        l.add(Protocol::Udp, IpAddr::V6(Ipv6Addr::UNSPECIFIED), 53);
        l.add(Protocol::Tcp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 23);

        assert_eq!(p.watched(Protocol::Tcp, D4, 22, &l), None);
        assert_eq!(
            p.watched(Protocol::Tcp, IpAddr::V6(v6), 22, &l),
            Some(Mode::Atcp)
        );
        // 25 is only served on loopback: a probe to the external address is a hit.
        assert_eq!(p.watched(Protocol::Tcp, D4, 25, &l), Some(Mode::Atcp));
        assert_eq!(p.watched(Protocol::Tcp, lo, 25, &l), None);
        assert_eq!(p.watched(Protocol::Tcp, IpAddr::V6(v6), 80, &l), None);
        assert_eq!(p.watched(Protocol::Tcp, D4, 80, &l), Some(Mode::Atcp));
        // [::] dual-stack covers IPv4 too.
        assert_eq!(p.watched(Protocol::Udp, D4, 53, &l), None);
        // Listener protocol must match.
        assert_eq!(p.watched(Protocol::Udp, D4, 22, &l), Some(Mode::Audp));
        // Stealth also respects real services.
        assert_eq!(p.watched(Protocol::Tcp, D4, 23, &l), None);
    }

    /// SCTP INITs are watched on the TCP modes' ports, against SCTP services only; IP
    /// protocols by the advanced modes.
    #[test]
    fn sctp_and_ip_protocols() {
        let mut l = Listeners::default();
        l.add(Protocol::Tcp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 22);
        l.add(Protocol::Sctp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80);
        let p = PortPolicy::new(&[Mode::Atcp, Mode::Stcp], &cfg());
        assert_eq!(p.watched(Protocol::Sctp, D4, 23, &l), Some(Mode::Stcp));
        // A TCP service on 22 does not serve SCTP; an SCTP one on 80 does.
        assert_eq!(p.watched(Protocol::Sctp, D4, 22, &l), Some(Mode::Atcp));
        assert_eq!(p.watched(Protocol::Sctp, D4, 80, &l), None);
        assert_eq!(p.watched(Protocol::Tcp, D4, 80, &l), Some(Mode::Atcp));
        assert_eq!(p.watched(Protocol::Sctp, D4, 2000, &l), None);
        assert!(p.captures(Protocol::Sctp) && p.captures(Protocol::Ip));
        assert_eq!(p.watched(Protocol::Ip, D4, 0, &l), Some(Mode::Atcp));
        let u = PortPolicy::new(&[Mode::Audp], &cfg());
        assert_eq!(u.watched(Protocol::Ip, D4, 253, &l), Some(Mode::Audp));
        assert!(!u.captures(Protocol::Sctp));
        let stealth = PortPolicy::new(&[Mode::Stcp, Mode::Sudp], &cfg());
        assert!(!stealth.captures(Protocol::Ip));
        assert_eq!(stealth.watched(Protocol::Ip, D4, 253, &l), None);
    }
}
