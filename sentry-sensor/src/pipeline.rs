//! The per-packet path shared by the daemon, the benchmark and the fuzz target: parse →
//! classify → ignore list → port policy. The state engine ([`crate::state`]) comes after it.
//!
//! One packet in, at most one candidate out. The input is what the host's own input path
//! accepted (see [`crate::nflog`]): reassembled, routed to this host, not a reply to one of
//! its flows. So there is no fragment pairing and no table of our own outgoing flows here
//! any more: the kernel's defragmentation and conntrack do both, exactly as the host's stack
//! judges the packet.

use std::net::IpAddr;

use policy::IgnoreList;
use sentry_proto::{Mode, Protocol, ScanKind, NOT_PROBE_PROTOCOLS};

use crate::classify::classify_tcp;
use crate::listeners::Listeners;
use crate::nflog::{l4_checksum_ok, CtState};
use crate::packet::{self, Parsed, Transport};
use crate::ports::PortPolicy;
use crate::state::Hit;

/// Per-packet counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    /// Parser rejections (and NFLOG messages that were not packets).
    pub malformed: u64,
    /// Packets conntrack found invalid whose transport checksum is wrong: the host's stack
    /// drops them, so they are no evidence (`nmap --badsum`).
    pub bad_checksum: u64,
    /// Invalid packets whose checksum cannot be verified (the segment is longer than the
    /// snap length, or it is SCTP or another protocol, which the chain copies only when
    /// conntrack found them new): they do not count.
    pub unverifiable: u64,
    /// Well-formed but not a probe (a protocol the host uses, a fragment, RST, an ACK
    /// that is not a bare ACK or FIN+ACK, an SCTP packet that is not an INIT).
    pub skipped: u64,
    /// Probes from sources on the ignore list.
    pub ignored: u64,
}

/// A probe to a watched port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Protocol,
    pub port: u16,
    pub scan: ScanKind,
    pub mode: Mode,
    pub ip_options: bool,
}

impl Candidate {
    pub fn hit(&self) -> Hit {
        Hit {
            src: self.src,
            port: self.port,
            scan: self.scan,
            mode: self.mode,
            ip_options: self.ip_options,
        }
    }
}

/// Everything up to the state engine for one packet that the input path copied.
#[inline]
pub fn candidate(
    frame: &[u8],
    state: CtState,
    policy: &PortPolicy,
    listeners: &Listeners,
    ignore: &IgnoreList,
    c: &mut Counters,
) -> Option<Candidate> {
    c.packets += 1;
    let probe = match packet::parse(frame) {
        Ok(Parsed::Probe(p)) => p,
        // Reassembled by the kernel before the input hook: a fragment here is not a
        // packet the stack would deliver whole; never interpreted.
        Ok(Parsed::Skip(_)) => {
            c.skipped += 1;
            return None;
        }
        Err(_) => {
            c.malformed += 1;
            return None;
        }
    };
    let port = probe.dst_port();
    let (proto, scan, l4proto) = match probe.transport {
        Transport::Tcp { flags, .. } => match classify_tcp(flags) {
            Some(scan) => (Protocol::Tcp, scan, 6),
            None => {
                c.skipped += 1;
                return None;
            }
        },
        Transport::Udp { .. } => (Protocol::Udp, ScanKind::Udp, 17),
        Transport::Sctp { init: true, .. } => (Protocol::Sctp, ScanKind::SctpInit, 132),
        Transport::Sctp { init: false, .. } => {
            c.skipped += 1;
            return None;
        }
        Transport::Other { protocol } if NOT_PROBE_PROTOCOLS.contains(&protocol) => {
            c.skipped += 1;
            return None;
        }
        Transport::Other { protocol } => (Protocol::Ip, ScanKind::IpProtocol, protocol),
    };
    if state == CtState::Invalid {
        if matches!(proto, Protocol::Sctp | Protocol::Ip) {
            // Copied only when conntrack found them new (conntrack verified the SCTP
            // CRC32c; nothing here checks it).
            c.unverifiable += 1;
            return None;
        }
        // Conntrack calls both a flag probe and a corrupted packet invalid; only the first
        // reaches the host's stack as a packet.
        match probe.segment(frame) {
            Some(seg) if l4_checksum_ok(probe.src, probe.dst, l4proto, seg) => {}
            Some(_) => {
                c.bad_checksum += 1;
                return None;
            }
            None => {
                c.unverifiable += 1;
                return None;
            }
        }
    }
    if ignore.contains(probe.src) {
        c.ignored += 1;
        return None;
    }
    let mode = policy.watched(proto, probe.dst, port, listeners)?;
    Some(Candidate {
        src: probe.src,
        dst: probe.dst,
        proto,
        port,
        scan,
        mode,
        ip_options: probe.ip_options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::*;
    use crate::ports::PortConfig;
    use std::net::Ipv4Addr;
    use std::path::Path;

    /// Fill in a correct TCP/UDP checksum (the builders leave it 0).
    fn with_checksum(mut p: Vec<u8>) -> Vec<u8> {
        let hl = usize::from(p[0] & 0x0f) * 4;
        let off = if p[9] == 6 { hl + 16 } else { hl + 6 };
        let (s, d) = (
            IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
            IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
        );
        for c in 0..=u16::MAX {
            p[off..off + 2].copy_from_slice(&c.to_be_bytes());
            if l4_checksum_ok(s, d, p[9], &p[hl..]) && c != 0 {
                return p;
            }
        }
        unreachable!()
    }

    #[test]
    fn end_to_end_decisions() {
        let policy = PortPolicy::new(
            &[Mode::Stcp, Mode::Audp],
            &PortConfig {
                tcp_ports: vec![23],
                udp_ports: vec![],
                advanced_ports_tcp: 1024,
                advanced_ports_udp: 1024,
                advanced_exclude_tcp: vec![],
                advanced_exclude_udp: vec![137],
            },
        );
        let ignore = IgnoreList::parse("10.0.0.0/8\n", Path::new("t")).unwrap();
        let l = Listeners::default();
        let mut c = Counters::default();
        let a = Ipv4Addr::new(192, 0, 2, 1);
        let me = Ipv4Addr::new(192, 0, 2, 2);
        let new = CtState::New;
        let got = candidate(&tcp4(a, me, 1, 23, 0x02), new, &policy, &l, &ignore, &mut c)
            .expect("no probe");
        assert_eq!(
            (got.mode, got.scan, got.port),
            (Mode::Stcp, ScanKind::Syn, 23)
        );
        assert!(candidate(&tcp4(a, me, 1, 24, 0x02), new, &policy, &l, &ignore, &mut c).is_none());
        assert!(candidate(&tcp4(a, me, 1, 23, 0x12), new, &policy, &l, &ignore, &mut c).is_none());
        let ig = Ipv4Addr::new(10, 1, 2, 3);
        assert!(candidate(
            &tcp4(ig, me, 1, 23, 0x02),
            new,
            &policy,
            &l,
            &ignore,
            &mut c
        )
        .is_none());
        let u = candidate(&udp4(a, me, 1, 53), new, &policy, &l, &ignore, &mut c).expect("udp");
        assert_eq!(u.mode, Mode::Audp);
        assert!(candidate(&udp4(a, me, 1, 137), new, &policy, &l, &ignore, &mut c).is_none());
        assert!(candidate(&[0x45, 0], new, &policy, &l, &ignore, &mut c).is_none());
        // A fragment never counts (the kernel reassembles before the input hook).
        let mut frag = tcp4(a, me, 1, 23, 0x02);
        frag[6] = 0x20;
        frag[7] = 0;
        let mut tiny = ipv4_header(a, me, 6, 8, &[]);
        tiny.extend_from_slice(&tcp_header(1, 23, 0x02)[..8]);
        tiny[6] = 0x20;
        assert!(candidate(&tiny, new, &policy, &l, &ignore, &mut c).is_none());
        // Invalid (a FIN scan): counted only with a correct checksum.
        let fin = with_checksum(tcp4(a, me, 1, 23, 0x01));
        let inv = CtState::Invalid;
        let f = candidate(&fin, inv, &policy, &l, &ignore, &mut c).expect("fin");
        assert_eq!(f.scan, ScanKind::Fin);
        let mut bad = fin.clone();
        bad[36] ^= 0xff;
        assert!(candidate(&bad, inv, &policy, &l, &ignore, &mut c).is_none());
        // Cut before the end of the segment (after the header): cannot be verified.
        let mut long = tcp4(a, me, 1, 23, 0x01);
        long.extend_from_slice(b"data");
        long[2..4].copy_from_slice(&44u16.to_be_bytes());
        let long = with_checksum(long);
        assert!(candidate(&long, inv, &policy, &l, &ignore, &mut c).is_some());
        assert!(candidate(&long[..42], inv, &policy, &l, &ignore, &mut c).is_none());
        assert_eq!(
            c,
            Counters {
                packets: 12,
                malformed: 1,
                bad_checksum: 1,
                unverifiable: 1,
                skipped: 2,
                ignored: 1,
            }
        );
    }

    /// ACK-family, SCTP INIT and IP-protocol probes: one candidate each, on the same port
    /// policy as SYNs; protocols the host uses and SCTP other than INIT are skipped.
    #[test]
    fn other_kinds() {
        let policy = PortPolicy::new(
            &[Mode::Stcp, Mode::Atcp],
            &PortConfig {
                tcp_ports: vec![23],
                udp_ports: vec![],
                advanced_ports_tcp: 1024,
                advanced_ports_udp: 1024,
                advanced_exclude_tcp: vec![],
                advanced_exclude_udp: vec![],
            },
        );
        let mut l = Listeners::default();
        l.add(Protocol::Tcp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 22);
        let ignore = IgnoreList::empty();
        let mut c = Counters::default();
        let a = Ipv4Addr::new(192, 0, 2, 1);
        let me = Ipv4Addr::new(192, 0, 2, 2);
        let (new, inv) = (CtState::New, CtState::Invalid);
        let mut got = |frame: &[u8], st| {
            candidate(frame, st, &policy, &l, &ignore, &mut c).map(|c| (c.scan, c.mode, c.port))
        };
        assert_eq!(
            got(&tcp4(a, me, 1, 23, 0x10), new),
            Some((ScanKind::Ack, Mode::Stcp, 23))
        );
        // FIN+ACK is invalid to conntrack: counted with a correct checksum only.
        let maimon = with_checksum(tcp4(a, me, 1, 80, 0x11));
        assert_eq!(got(&maimon, inv), Some((ScanKind::Maimon, Mode::Atcp, 80)));
        let mut bad = maimon.clone();
        bad[36] ^= 1;
        assert_eq!(got(&bad, inv), None);
        // A served port does not count, whatever the kind.
        assert_eq!(got(&tcp4(a, me, 1, 22, 0x10), new), None);
        assert_eq!(got(&tcp4(a, me, 1, 80, 0x18), new), None); // PSH+ACK: data
        let init = sctp4(a, me, &sctp_init(5, 80));
        assert_eq!(got(&init, new), Some((ScanKind::SctpInit, Mode::Atcp, 80)));
        // A TCP service on 22 does not serve SCTP.
        let init22 = sctp4(a, me, &sctp_init(5, 22));
        assert_eq!(
            got(&init22, new),
            Some((ScanKind::SctpInit, Mode::Atcp, 22))
        );
        assert_eq!(got(&init, inv), None);
        let mut cookie = sctp_init(5, 80);
        cookie[12] = 10;
        assert_eq!(got(&sctp4(a, me, &cookie), new), None);
        assert_eq!(
            got(&ipv4_header(a, me, 253, 0, &[]), new),
            Some((ScanKind::IpProtocol, Mode::Atcp, 253))
        );
        assert_eq!(
            got(&ipv4_header(a, me, 0, 0, &[]), new),
            Some((ScanKind::IpProtocol, Mode::Atcp, 0))
        );
        for used in [1u8, 47, 50] {
            assert_eq!(
                got(&ipv4_header(a, me, used, 8, &[0; 8]), new),
                None,
                "{used}"
            );
        }
        assert_eq!(
            c,
            Counters {
                packets: 14,
                malformed: 0,
                bad_checksum: 1,
                unverifiable: 1,
                skipped: 5,
                ignored: 0,
            }
        );
    }
}
