//! The sensor's packet path as one object, [`Detector`]: a frame the input path copied (or
//! a basic-mode hit) goes in, at most one report for the enforcer comes out. Inside, in
//! order: parse → classify → ignore list → port policy ([`candidate`], shared with the
//! benchmark and the fuzz target) → the listener re-check of held-back probes → the state
//! engine ([`crate::state`]) → the detection line.
//!
//! The input is what the host's own input path accepted (see [`crate::nflog`]):
//! reassembled, routed to this host, not a reply to one of its flows. So there is no
//! fragment pairing and no table of our own outgoing flows here: the kernel's
//! defragmentation and conntrack do both, exactly as the host's stack judges the packet.

use std::collections::HashSet;

use policy::IgnoreList;
use sentry_proto::{Protocol, ScanKind, NOT_PROBE_PROTOCOLS};

use crate::classify::classify_tcp;
use crate::listeners::{ListenerSource, Listeners};
use crate::log::{detection_line, ip_options_line_for, Logger};
use crate::nflog::{l4_checksum_ok, CtState};
use crate::packet::{self, Parsed, Transport};
use crate::ports::PortPolicy;
use crate::state::{Hit, Outcome, Report, State};
use crate::time::{Mono, Wall};

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

/// Everything up to the state engine for one packet that the input path copied: the hit,
/// if it is a probe of a watched port.
#[inline]
pub fn candidate(
    frame: &[u8],
    state: CtState,
    policy: &PortPolicy,
    listeners: &Listeners,
    ignore: &IgnoreList,
    c: &mut Counters,
) -> Option<Hit> {
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
    Some(Hit {
        src: probe.src,
        dst: probe.dst,
        port,
        scan,
        mode,
        ip_options: probe.ip_options,
    })
}

/// Probes to ports the (possibly stale) table says are unserved are held back and judged
/// against a table read *after* they were captured, so a probe of a socket bound a moment
/// ago (a service that just started on a stealth port, or any advanced port when the
/// kernel has no `socket` expression to check it in the chain) never counts. The table is
/// re-read at most this often for that purpose, which bounds the cost under a flood of
/// probes (at most 1000/LISTENER_RECHECK_MS reads per second) and the extra detection
/// delay while probes keep arriving; an isolated probe is judged at once.
pub const LISTENER_RECHECK_MS: u64 = 2;
/// Most held-back probes; beyond this the table is re-read early.
const MAX_PENDING: usize = 65_536;

/// The packet path: see the module documentation.
#[derive(Debug)]
pub struct Detector {
    policy: PortPolicy,
    listeners: Listeners,
    listener_src: Option<ListenerSource>,
    /// The sensor's own basic-mode sockets, which are no services.
    own_inodes: HashSet<u64>,
    last_refresh: Mono,
    ignore: IgnoreList,
    state: State,
    pending: Vec<(Hit, Wall)>,
    pub counters: Counters,
    /// Hits on watched ports, and reports made.
    pub hits: u64,
    pub reports: u64,
}

impl Detector {
    pub fn new(
        policy: PortPolicy,
        (listener_src, listeners): (Option<ListenerSource>, Listeners),
        own_inodes: HashSet<u64>,
        ignore: IgnoreList,
        state: State,
    ) -> Self {
        Self {
            policy,
            listeners,
            listener_src,
            own_inodes,
            last_refresh: Mono(0),
            ignore,
            state,
            pending: Vec::new(),
            counters: Counters::default(),
            hits: 0,
            reports: 0,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// Held-back probes are waiting: the caller should call [`Detector::judge_pending`]
    /// once this instant has come.
    pub fn pending_due(&self) -> Option<Mono> {
        (!self.pending.is_empty()).then(|| self.last_refresh.plus_ms(LISTENER_RECHECK_MS))
    }

    /// One frame the input path copied; it yields at most one report, into `out`: at once
    /// when its source is latched (the hit only refreshes the latch), otherwise when its
    /// hold-back for the listener re-check ends ([`Detector::judge_pending`], which this
    /// calls itself when [`MAX_PENDING`] probes wait).
    #[inline]
    pub fn frame(
        &mut self,
        frame: &[u8],
        ct: CtState,
        (now, wall): (Mono, Wall),
        log: &mut Logger,
        out: &mut Vec<Report>,
    ) {
        self.listeners.set_now(now);
        let Some(h) = candidate(
            frame,
            ct,
            &self.policy,
            &self.listeners,
            &self.ignore,
            &mut self.counters,
        ) else {
            return;
        };
        // A latched source's hit only refreshes its latch, whatever the table says.
        if self.state.is_latched(h.src, now) {
            out.extend(self.hit(&h, (now, wall), log));
            return;
        }
        self.pending.push((h, wall));
        if self.pending.len() >= MAX_PENDING {
            self.judge_pending(now, true, log, out);
        }
    }

    /// A connection or datagram on a basic-mode socket (already accepted by the kernel:
    /// no listener check; only the ignore list and the state engine).
    pub fn basic(
        &mut self,
        h: &Hit,
        (now, wall): (Mono, Wall),
        log: &mut Logger,
    ) -> Option<Report> {
        self.counters.packets += 1;
        if self.ignore.contains(h.src) {
            self.counters.ignored += 1;
            return None;
        }
        self.hit(h, (now, wall), log)
    }

    /// Re-read the listener table (if allowed now, or `force`) and count every held-back
    /// probe whose port is still unserved; reports go to `out`.
    pub fn judge_pending(
        &mut self,
        now: Mono,
        force: bool,
        log: &mut Logger,
        out: &mut Vec<Report>,
    ) {
        if self.pending.is_empty() {
            return;
        }
        if !force && now.ms_since(self.last_refresh) < LISTENER_RECHECK_MS {
            return;
        }
        // SCTP endpoints are read with the TCP part.
        let tcp = self
            .pending
            .iter()
            .any(|(h, _)| matches!(h.scan.protocol(), Protocol::Tcp | Protocol::Sctp));
        let udp = self
            .pending
            .iter()
            .any(|(h, _)| h.scan.protocol() == Protocol::Udp);
        self.refresh_listeners(now, (tcp, udp), log);
        let pending = std::mem::take(&mut self.pending);
        for (h, wall) in &pending {
            let watched = self
                .policy
                .watched(h.scan.protocol(), h.dst, h.port, &self.listeners);
            if let Some(mode) = watched {
                let h = Hit { mode, ..*h };
                out.extend(self.hit(&h, (now, *wall), log));
            }
        }
        // Keep the allocation.
        self.pending = pending;
        self.pending.clear();
    }

    /// Re-read the TCP (with SCTP) and/or UDP listener tables.
    pub fn refresh_listeners(&mut self, now: Mono, (tcp, udp): (bool, bool), log: &mut Logger) {
        if let Some(src) = &mut self.listener_src {
            match src.read_some(&self.own_inodes, tcp, udp) {
                Ok(l) => self.listeners.update_at(l, tcp, udp, now),
                Err(e) => log.error(&format!(
                    "adminalert: ERROR: cannot re-read socket tables: {e}"
                )),
            }
        }
        self.last_refresh = now;
    }

    /// The state engine and the detection line for a hit on a watched port.
    fn hit(&mut self, h: &Hit, (now, wall): (Mono, Wall), log: &mut Logger) -> Option<Report> {
        self.hits += 1;
        match self.state.hit(h, now, wall) {
            Outcome::Latched | Outcome::Untracked => None,
            Outcome::Counted { .. } => {
                log_hit(log, h, now);
                None
            }
            Outcome::Report(r) => {
                log_hit(log, h, now);
                self.reports += 1;
                Some(r)
            }
        }
    }
}

/// PortSentry's lines for a hit (the IP-options warning first, as PortSentry did), each
/// under the per-source LOG_RATE.
fn log_hit(log: &mut Logger, h: &Hit, now: Mono) {
    let (scan, mode, src, port) = (h.scan, h.mode, h.src, h.port);
    if h.ip_options {
        log.packet(now, src, || ip_options_line_for(src, scan.protocol(), port));
    }
    log.packet(now, src, || detection_line(scan, mode, src, port));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::*;
    use crate::ports::PortConfig;
    use crate::state::StateConfig;
    use sentry_proto::Mode;
    use std::net::{IpAddr, Ipv4Addr};
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

    /// The tests' port policy: `modes`, stealth TCP ports `tcp`, advanced ranges up to
    /// 1024 with UDP ports `exclude_udp` left out.
    fn test_policy(modes: &[Mode], tcp: &[u16], exclude_udp: &[u16]) -> PortPolicy {
        PortPolicy::new(
            modes,
            &PortConfig {
                tcp_ports: tcp.to_vec(),
                udp_ports: vec![],
                advanced_ports_tcp: 1024,
                advanced_ports_udp: 1024,
                advanced_exclude_tcp: vec![],
                advanced_exclude_udp: exclude_udp.to_vec(),
            },
        )
    }

    #[test]
    fn end_to_end_decisions() {
        let policy = test_policy(&[Mode::Stcp, Mode::Audp], &[23], &[137]);
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
        let policy = test_policy(&[Mode::Stcp, Mode::Atcp], &[23], &[]);
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

    /// The object: a frame in, at most one report out, after the hold-back; a latched
    /// source yields nothing more; basic hits go through the ignore list.
    #[test]
    fn detector_frame_in_report_out() {
        let policy = test_policy(&[Mode::Stcp], &[23, 24], &[]);
        let state = State::new(StateConfig {
            trigger: 0,
            window_ms: 60_000,
            max_sources: 16,
            rereport_ms: 5_000,
        });
        let ignore = IgnoreList::parse("10.0.0.0/8\n", Path::new("t")).unwrap();
        let mut d = Detector::new(
            policy,
            (None, Listeners::default()),
            HashSet::new(),
            ignore,
            state,
        );
        let mut log = Logger::open(true, 50);
        let (a, me) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        let mut out = Vec::new();
        let t0 = (Mono(10), Wall(1_700_000_000_000));
        // The table was read "long ago" (never): judged at the first re-check.
        d.refresh_listeners(Mono(10), (true, true), &mut log);
        d.frame(
            &tcp4(a, me, 1, 23, 0x02),
            CtState::New,
            t0,
            &mut log,
            &mut out,
        );
        assert!(out.is_empty(), "held back for the listener re-check");
        assert_eq!(d.pending_due(), Some(Mono(12)));
        d.judge_pending(Mono(11), false, &mut log, &mut out);
        assert!(out.is_empty(), "not before LISTENER_RECHECK_MS");
        d.judge_pending(Mono(12), false, &mut log, &mut out);
        assert_eq!(out.len(), 1);
        let r = out.pop().unwrap();
        assert_eq!((r.src, r.port, r.scan), (IpAddr::V4(a), 23, ScanKind::Syn));
        assert_eq!(r.first_seen, t0.1);
        assert_eq!(d.pending_due(), None);
        // Latched: the next probe is counted at once, never held; its second port
        // doubles the evidence, reported at once (the block's record grows).
        d.frame(
            &tcp4(a, me, 1, 24, 0x02),
            CtState::New,
            (Mono(13), t0.1),
            &mut log,
            &mut out,
        );
        assert!(d.pending_due().is_none());
        assert_eq!(out.pop().map(|r| r.distinct_ports), Some(2));
        assert!(out.is_empty());
        // Not a probe: nothing, nothing held.
        d.frame(
            &tcp4(a, me, 1, 23, 0x12),
            CtState::New,
            (Mono(14), t0.1),
            &mut log,
            &mut out,
        );
        assert!(out.is_empty() && d.pending_due().is_none());
        let basic = |src: Ipv4Addr| Hit {
            src: IpAddr::V4(src),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 143,
            scan: ScanKind::Connect,
            mode: Mode::Tcp,
            ip_options: false,
        };
        assert!(d
            .basic(
                &basic(Ipv4Addr::new(10, 1, 1, 1)),
                (Mono(15), t0.1),
                &mut log
            )
            .is_none());
        let b = d.basic(
            &basic(Ipv4Addr::new(192, 0, 2, 9)),
            (Mono(15), t0.1),
            &mut log,
        );
        assert_eq!(b.map(|r| r.scan), Some(ScanKind::Connect));
        assert_eq!((d.hits, d.reports), (3, 3));
        assert_eq!(d.counters.ignored, 1);
        assert_eq!(d.counters.packets, 5);
    }
}
