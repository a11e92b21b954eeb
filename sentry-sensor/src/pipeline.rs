//! The per-packet path shared by the daemon and the benchmark: parse → classify → ignore
//! list → port policy. The state engine ([`crate::state`]) comes after it.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
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
    /// This host's own outgoing UDP datagrams seen (not counted in `packets`).
    pub outgoing: u64,
    /// Inbound UDP datagrams that answered one of them.
    pub udp_replies: u64,
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

/// A fixed-size table indexed by a keyed hash of the key (sources are attacker-chosen):
/// memory never grows, a flood can only overwrite slots, and every slot keeps its full
/// key, so a collision makes the table forget an entry, never confuse two.
#[derive(Debug)]
struct DirectMap<K, V> {
    slots: Vec<Option<(K, V)>>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone, V: Clone> DirectMap<K, V> {
    fn new(slots: usize) -> Self {
        Self {
            slots: vec![None; slots.max(1)],
            hasher: RandomState::new(),
        }
    }

    fn slot(&self, k: &K) -> usize {
        let n = u64::try_from(self.slots.len()).unwrap_or(1);
        usize::try_from(self.hasher.hash_one(k) % n).unwrap_or(0)
    }

    fn insert(&mut self, k: K, v: V) {
        let i = self.slot(&k);
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some((k, v));
        }
    }

    fn get(&self, k: &K) -> Option<&V> {
        match self.slots.get(self.slot(k))? {
            Some((key, v)) if key == k => Some(v),
            _ => None,
        }
    }

    fn take(&mut self, k: &K) -> Option<V> {
        let i = self.slot(k);
        let s = self.slots.get_mut(i)?;
        if s.as_ref().is_some_and(|(key, _)| key == k) {
            s.take().map(|(_, v)| v)
        } else {
            None
        }
    }
}

/// Tiny first fragments (ports but no TCP flags) waiting for the fragment that carries the
/// flags, keyed by (source, destination, id), [`FRAG_SLOTS`] slots.
#[derive(Debug)]
pub struct FragTable(DirectMap<(IpAddr, IpAddr, u32), FragEntry>);

impl Default for FragTable {
    fn default() -> Self {
        Self(DirectMap::new(FRAG_SLOTS))
    }
}

impl FragTable {
    fn insert(&mut self, e: FragEntry) {
        self.0.insert((e.src, e.dst, e.id), e);
    }

    fn take(&mut self, src: IpAddr, dst: IpAddr, id: u32) -> Option<FragEntry> {
        self.0.take(&(src, dst, id))
    }
}

/// Slots in the table of this host's recent outgoing UDP flows.
pub const FLOW_SLOTS: usize = 8192;
/// How long after an outgoing UDP datagram a datagram coming back on the same flow is
/// taken as its reply.
pub const UDP_REPLY_WINDOW_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
}

/// This host's recent outgoing UDP flows (DNS queries, NTP, ...), so that their replies,
/// which arrive at ports no socket may be bound to any more by the time the sensor looks,
/// are never counted as probes. [`FLOW_SLOTS`] slots; a collision can only forget a flow
/// (its reply then counts as a probe of the remote host, which the ignore list and trigger
/// still govern).
#[derive(Debug)]
pub struct UdpFlows(DirectMap<FlowKey, u64>);

impl Default for UdpFlows {
    fn default() -> Self {
        Self(DirectMap::new(FLOW_SLOTS))
    }
}

impl UdpFlows {
    fn record(&mut self, k: FlowKey, now: u64) {
        self.0.insert(k, now);
    }

    fn is_reply(&self, k: &FlowKey, now: u64) -> bool {
        self.0
            .get(k)
            .is_some_and(|t| now.saturating_sub(*t) <= UDP_REPLY_WINDOW_MS)
    }
}

/// Per-sensor tables the per-packet path keeps.
#[derive(Debug, Default)]
pub struct Tables {
    pub frags: FragTable,
    pub flows: UdpFlows,
}

/// Everything up to the state engine for one captured frame.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn candidate(
    frame: &[u8],
    outgoing: bool,
    now: u64,
    policy: &PortPolicy,
    listeners: &Listeners,
    ignore: &IgnoreList,
    t: &mut Tables,
    c: &mut Counters,
) -> Option<Verdict> {
    if outgoing {
        // Only UDP headers of our own datagrams get here: remember the flow.
        c.outgoing += 1;
        if let Ok(Parsed::Probe(p)) = packet::parse(frame) {
            if let Transport::Udp { src_port, dst_port } = p.transport {
                t.flows.record(
                    FlowKey {
                        local: p.src,
                        local_port: src_port,
                        remote: p.dst,
                        remote_port: dst_port,
                    },
                    now,
                );
            }
        }
        return None;
    }
    c.packets += 1;
    let frags = &mut t.frags;
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
        Transport::Udp { src_port, dst_port } => {
            let reply = t.flows.is_reply(
                &FlowKey {
                    local: probe.dst,
                    local_port: dst_port,
                    remote: probe.src,
                    remote_port: src_port,
                },
                now,
            );
            if reply {
                c.udp_replies += 1;
                return None;
            }
            (Protocol::Udp, ScanKind::Udp, dst_port)
        }
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
        let mut f = Tables::default();
        let a = Ipv4Addr::new(192, 0, 2, 1);
        let me = Ipv4Addr::new(192, 0, 2, 2);
        let Some(Verdict::Probe(got)) = candidate(
            &tcp4(a, me, 1, 23, 0x02),
            false,
            1,
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
            false,
            1,
            &policy,
            &l,
            &ignore,
            &mut f,
            &mut c
        )
        .is_none());
        assert!(candidate(
            &tcp4(a, me, 1, 23, 0x12),
            false,
            1,
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
            false,
            1,
            &policy,
            &l,
            &ignore,
            &mut f,
            &mut c
        )
        .is_none());
        let Some(Verdict::Probe(u)) = candidate(
            &udp4(a, me, 1, 53),
            false,
            1,
            &policy,
            &l,
            &ignore,
            &mut f,
            &mut c,
        ) else {
            panic!("no probe");
        };
        assert_eq!(u.mode, Mode::Audp);
        assert!(candidate(
            &udp4(a, me, 1, 137),
            false,
            1,
            &policy,
            &l,
            &ignore,
            &mut f,
            &mut c
        )
        .is_none());
        assert!(candidate(&[0x45, 0], false, 1, &policy, &l, &ignore, &mut f, &mut c).is_none());
        // nmap -f: a first fragment with only 8 bytes of TCP, to a watched port.
        let mut tiny = ipv4_header(a, me, 6, 8, &[]);
        tiny.extend_from_slice(&tcp_header(1, 23, 0x02)[..8]);
        tiny[6] = 0x20;
        assert_eq!(
            candidate(&tiny, false, 1, &policy, &l, &ignore, &mut f, &mut c),
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
        let Some(Verdict::Probe(p)) =
            candidate(&second, false, 1, &policy, &l, &ignore, &mut f, &mut c)
        else {
            panic!("fragments not paired");
        };
        assert_eq!(
            (p.src, p.port, p.scan, p.mode),
            (IpAddr::V4(a), 23, ScanKind::Syn, Mode::Stcp)
        );
        // Replayed or unmatched second fragments are never interpreted.
        assert!(candidate(&second, false, 1, &policy, &l, &ignore, &mut f, &mut c).is_none());
        assert_eq!(
            c,
            Counters {
                packets: 10,
                malformed: 1,
                tiny_fragments: 1,
                fragments_completed: 1,
                skipped: 0,
                ignored: 1,
                outgoing: 0,
                udp_replies: 0,
            }
        );
        // Our own DNS query out, its answer back: not a probe; another source's datagram
        // to the same port is.
        let dns = Ipv4Addr::new(192, 0, 2, 53);
        let q = udp4(me, dns, 40000, 53);
        assert!(candidate(&q, true, 100, &policy, &l, &ignore, &mut f, &mut c).is_none());
        let answer = udp4(dns, me, 53, 40000);
        assert!(candidate(&answer, false, 200, &policy, &l, &ignore, &mut f, &mut c).is_none());
        let policy_all = PortPolicy::new(
            &[Mode::Audp],
            &PortConfig {
                tcp_ports: vec![],
                udp_ports: vec![],
                advanced_ports_tcp: 0,
                advanced_ports_udp: 65535,
                advanced_exclude_tcp: vec![],
                advanced_exclude_udp: vec![],
            },
        );
        assert!(candidate(
            &answer,
            false,
            300,
            &policy_all,
            &l,
            &ignore,
            &mut f,
            &mut c
        )
        .is_none());
        let other = udp4(a, me, 53, 40000);
        assert!(matches!(
            candidate(&other, false, 300, &policy_all, &l, &ignore, &mut f, &mut c),
            Some(Verdict::Probe(_))
        ));
        // After the reply window the flow is forgotten.
        let late = 200 + UDP_REPLY_WINDOW_MS + 1;
        assert!(matches!(
            candidate(
                &answer,
                false,
                late,
                &policy_all,
                &l,
                &ignore,
                &mut f,
                &mut c
            ),
            Some(Verdict::Probe(_))
        ));
        assert_eq!((c.outgoing, c.udp_replies), (1, 2));
    }
}
