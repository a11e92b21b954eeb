//! The per-packet path shared by the daemon and the benchmark: parse → classify → ignore
//! list → port policy. The state engine ([`crate::state`]) comes after it.

use std::net::IpAddr;

use policy::IgnoreList;
use sentry_proto::{Mode, Protocol, ScanKind};

use crate::classify::classify_tcp;
use crate::listeners::Listeners;
use crate::packet::{self, Parsed, Transport};
use crate::ports::PortPolicy;
use crate::state::Hit;

/// Per-packet counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    /// Parser rejections.
    pub malformed: u64,
    /// First fragments too short to hold the transport header (`nmap -f`), also counted
    /// in `malformed` for the enforcer's statistics.
    pub tiny_fragments: u64,
    /// Well-formed but not a probe (other protocol, non-first fragment).
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

/// A tiny first fragment aimed at a watched port: logged as a detection-avoidance
/// technique; it cannot count towards the trigger because its TCP flags are unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evasion {
    pub src: IpAddr,
    pub proto: Protocol,
    pub port: u16,
    pub mode: Mode,
}

/// What one frame amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Probe(Candidate),
    Evasion(Evasion),
}

/// Everything up to the state engine for one captured frame.
#[inline]
pub fn candidate(
    frame: &[u8],
    policy: &PortPolicy,
    listeners: &Listeners,
    ignore: &IgnoreList,
    c: &mut Counters,
) -> Option<Verdict> {
    c.packets += 1;
    let probe = match packet::parse(frame) {
        Ok(Parsed::Probe(p)) => p,
        Ok(Parsed::TinyFragment(t)) => {
            c.malformed += 1;
            c.tiny_fragments += 1;
            let proto = match t.protocol {
                6 => Protocol::Tcp,
                _ => Protocol::Udp,
            };
            let port = t.dst_port?;
            if ignore.contains(t.src) {
                c.ignored += 1;
                return None;
            }
            let mode = policy.watched(proto, t.dst, port, listeners)?;
            return Some(Verdict::Evasion(Evasion {
                src: t.src,
                proto,
                port,
                mode,
            }));
        }
        Err(_) => {
            c.malformed += 1;
            return None;
        }
        Ok(Parsed::Skip(_)) => {
            c.skipped += 1;
            return None;
        }
    };
    let (proto, scan, port) = match probe.transport {
        Transport::Tcp {
            dst_port, flags, ..
        } => (Protocol::Tcp, classify_tcp(flags)?, dst_port),
        Transport::Udp { dst_port, .. } => (Protocol::Udp, ScanKind::Udp, dst_port),
    };
    if ignore.contains(probe.src) {
        c.ignored += 1;
        return None;
    }
    let mode = policy.watched(proto, probe.dst, port, listeners)?;
    Some(Verdict::Probe(Candidate {
        src: probe.src,
        dst: probe.dst,
        proto,
        port,
        scan,
        mode,
        ip_options: probe.ip_options,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::*;
    use crate::ports::PortConfig;
    use std::net::Ipv4Addr;
    use std::path::Path;

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
        let Some(Verdict::Probe(got)) =
            candidate(&tcp4(a, me, 1, 23, 0x02), &policy, &l, &ignore, &mut c)
        else {
            panic!("no probe");
        };
        assert_eq!(
            (got.mode, got.scan, got.port),
            (Mode::Stcp, ScanKind::Syn, 23)
        );
        assert!(candidate(&tcp4(a, me, 1, 24, 0x02), &policy, &l, &ignore, &mut c).is_none());
        assert!(candidate(&tcp4(a, me, 1, 23, 0x12), &policy, &l, &ignore, &mut c).is_none());
        let ig = Ipv4Addr::new(10, 1, 2, 3);
        assert!(candidate(&tcp4(ig, me, 1, 23, 0x02), &policy, &l, &ignore, &mut c).is_none());
        let Some(Verdict::Probe(u)) = candidate(&udp4(a, me, 1, 53), &policy, &l, &ignore, &mut c)
        else {
            panic!("no probe");
        };
        assert_eq!(u.mode, Mode::Audp);
        assert!(candidate(&udp4(a, me, 1, 137), &policy, &l, &ignore, &mut c).is_none());
        assert!(candidate(&[0x45, 0], &policy, &l, &ignore, &mut c).is_none());
        // nmap -f: a first fragment with only 8 bytes of TCP, to a watched port.
        let mut tiny = ipv4_header(a, me, 6, 8, &[]);
        tiny.extend_from_slice(&tcp_header(1, 23, 0x02)[..8]);
        tiny[6] = 0x20;
        assert_eq!(
            candidate(&tiny, &policy, &l, &ignore, &mut c),
            Some(Verdict::Evasion(Evasion {
                src: IpAddr::V4(a),
                proto: Protocol::Tcp,
                port: 23,
                mode: Mode::Stcp
            }))
        );
        assert_eq!(
            c,
            Counters {
                packets: 8,
                malformed: 2,
                tiny_fragments: 1,
                skipped: 0,
                ignored: 1
            }
        );
    }
}
