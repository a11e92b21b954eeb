//! The per-packet path shared by the daemon and the benchmark: parse → classify → ignore
//! list → port policy. The state engine ([`crate::state`]) comes after it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
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
    /// First fragments too short to hold the TCP flags (`nmap -f`).
    pub tiny_fragments: u64,
    /// Of those, completed by the fragment carrying the flags.
    pub fragments_completed: u64,
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

/// Slots in the fragment table.
pub const FRAG_SLOTS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FragEntry {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    port: u16,
    mode: Mode,
}

/// Tiny first fragments (ports but no TCP flags) waiting for the fragment that carries the
/// flags. Direct-mapped on a keyed hash of (source, destination, id) with [`FRAG_SLOTS`]
/// slots: memory is fixed, and a flood of fragments can only overwrite entries.
#[derive(Debug)]
pub struct FragTable {
    slots: Vec<Option<FragEntry>>,
    hasher: RandomState,
}

impl Default for FragTable {
    fn default() -> Self {
        Self {
            slots: vec![None; FRAG_SLOTS],
            hasher: RandomState::new(),
        }
    }
}

impl FragTable {
    fn slot(&self, src: IpAddr, dst: IpAddr, id: u32) -> usize {
        let h = self.hasher.hash_one((src, dst, id));
        usize::try_from(h % FRAG_SLOTS as u64).unwrap_or(0)
    }

    fn insert(&mut self, e: FragEntry) {
        let i = self.slot(e.src, e.dst, e.id);
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(e);
        }
    }

    fn take(&mut self, src: IpAddr, dst: IpAddr, id: u32) -> Option<FragEntry> {
        let i = self.slot(src, dst, id);
        let s = self.slots.get_mut(i)?;
        match s {
            Some(e) if e.src == src && e.dst == dst && e.id == id => s.take(),
            _ => None,
        }
    }
}

/// Everything up to the state engine for one captured frame.
#[inline]
pub fn candidate(
    frame: &[u8],
    policy: &PortPolicy,
    listeners: &Listeners,
    ignore: &IgnoreList,
    frags: &mut FragTable,
    c: &mut Counters,
) -> Option<Verdict> {
    c.packets += 1;
    let probe = match packet::parse(frame) {
        Ok(Parsed::Probe(p)) => p,
        Ok(Parsed::TinyFragment(t)) => {
            c.tiny_fragments += 1;
            let port = t.dst_port?;
            if ignore.contains(t.src) {
                c.ignored += 1;
                return None;
            }
            if t.protocol != 6 {
                // UDP has no flags: the ports alone make it a probe.
                let mode = policy.watched(Protocol::Udp, t.dst, port, listeners)?;
                return Some(Verdict::Probe(Candidate {
                    src: t.src,
                    dst: t.dst,
                    proto: Protocol::Udp,
                    port,
                    scan: ScanKind::Udp,
                    mode,
                    ip_options: false,
                }));
            }
            let mode = policy.watched(Protocol::Tcp, t.dst, port, listeners)?;
            frags.insert(FragEntry {
                src: t.src,
                dst: t.dst,
                id: t.id,
                port,
                mode,
            });
            return Some(Verdict::Evasion(Evasion {
                src: t.src,
                proto: Protocol::Tcp,
                port,
                mode,
            }));
        }
        Ok(Parsed::SecondFragment(f)) => {
            // Only ever paired with a recorded tiny first fragment; on its own a
            // non-first fragment is never interpreted.
            let e = frags.take(f.src, f.dst, f.id)?;
            c.fragments_completed += 1;
            let scan = classify_tcp(f.flags?)?;
            return Some(Verdict::Probe(Candidate {
                src: e.src,
                dst: e.dst,
                proto: Protocol::Tcp,
                port: e.port,
                scan,
                mode: e.mode,
                ip_options: false,
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
        let mut f = FragTable::default();
        let a = Ipv4Addr::new(192, 0, 2, 1);
        let me = Ipv4Addr::new(192, 0, 2, 2);
        let Some(Verdict::Probe(got)) = candidate(
            &tcp4(a, me, 1, 23, 0x02),
            &policy,
            &l,
            &ignore,
            &mut f,
            &mut c,
        ) else {
            panic!("no probe");
        };
        assert_eq!(
            (got.mode, got.scan, got.port),
            (Mode::Stcp, ScanKind::Syn, 23)
        );
        assert!(candidate(
            &tcp4(a, me, 1, 24, 0x02),
            &policy,
            &l,
            &ignore,
            &mut f,
            &mut c
        )
        .is_none());
        assert!(candidate(
            &tcp4(a, me, 1, 23, 0x12),
            &policy,
            &l,
            &ignore,
            &mut f,
            &mut c
        )
        .is_none());
        let ig = Ipv4Addr::new(10, 1, 2, 3);
        assert!(candidate(
            &tcp4(ig, me, 1, 23, 0x02),
            &policy,
            &l,
            &ignore,
            &mut f,
            &mut c
        )
        .is_none());
        let Some(Verdict::Probe(u)) =
            candidate(&udp4(a, me, 1, 53), &policy, &l, &ignore, &mut f, &mut c)
        else {
            panic!("no probe");
        };
        assert_eq!(u.mode, Mode::Audp);
        assert!(candidate(&udp4(a, me, 1, 137), &policy, &l, &ignore, &mut f, &mut c).is_none());
        assert!(candidate(&[0x45, 0], &policy, &l, &ignore, &mut f, &mut c).is_none());
        // nmap -f: a first fragment with only 8 bytes of TCP, to a watched port.
        let mut tiny = ipv4_header(a, me, 6, 8, &[]);
        tiny.extend_from_slice(&tcp_header(1, 23, 0x02)[..8]);
        tiny[6] = 0x20;
        assert_eq!(
            candidate(&tiny, &policy, &l, &ignore, &mut f, &mut c),
            Some(Verdict::Evasion(Evasion {
                src: IpAddr::V4(a),
                proto: Protocol::Tcp,
                port: 23,
                mode: Mode::Stcp
            }))
        );
        // The fragment at offset 8 carries the flags: together they are a SYN probe.
        let mut second = ipv4_header(a, me, 6, 8, &[]);
        second.extend_from_slice(&tcp_header(1, 23, 0x02)[8..16]);
        second[7] = 1; // offset 1 (8 bytes)
        let Some(Verdict::Probe(p)) = candidate(&second, &policy, &l, &ignore, &mut f, &mut c)
        else {
            panic!("fragments not paired");
        };
        assert_eq!(
            (p.src, p.port, p.scan, p.mode),
            (IpAddr::V4(a), 23, ScanKind::Syn, Mode::Stcp)
        );
        // Replayed or unmatched second fragments are never interpreted.
        assert!(candidate(&second, &policy, &l, &ignore, &mut f, &mut c).is_none());
        assert_eq!(
            c,
            Counters {
                packets: 10,
                malformed: 1,
                tiny_fragments: 1,
                fragments_completed: 1,
                skipped: 0,
                ignored: 1
            }
        );
    }
}
