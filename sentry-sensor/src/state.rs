//! Per-source state: distinct watched ports touched within a sliding window.
//!
//! A source is reported once it touched `trigger + 1` distinct watched ports within
//! `window` (trigger 0 = first hit). After a report the source is *latched* for
//! `rereport_ms`: further hits only refresh it, so a scan produces one request, not one
//! per packet. A source still scanning after that is counted afresh and reported again
//! when it crosses the trigger again, so a block that expired (BLOCK_TIMEOUT) or was lost
//! is renewed while the scan goes on; the enforcer answers "already blocked" cheaply
//! otherwise. A source that stays silent for a whole window is forgotten.
//!
//! When the enforcer refuses a report for want of budget (rate-limited or capped), the
//! source is *escalated* instead of latched: its ports keep being counted and it is
//! reported again once it has touched twice as many (up to [`ESCALATE_MAX_PORTS`]). A
//! forged single packet never comes back with more ports; a real scanner does, at once,
//! and the enforcer weighs the better evidence (its single-probe budget cannot be spent
//! by forgers for the requests of a many-port source).
//!
//! Memory is bounded: at most `max_sources` entries, each holding at most `trigger + 1`
//! ports (escalated ones up to [`ESCALATE_MAX_PORTS`]). When full, a new source evicts
//! the weakest of a random sample of entries (expired first, then the fewest distinct
//! ports, then the longest idle), and never an entry that has already seen more than one
//! port: a flood of spoofed single-packet sources displaces only other single-packet
//! sources (the newcomer is dropped instead), never a slow real scanner that has made
//! progress. The map uses std's `RandomState` (SipHash with
//! a per-process random key): source addresses are attacker-chosen.

use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use sentry_proto::{Mode, ScanKind};

use crate::time::{Mono, Wall};

/// How many entries an eviction looks at.
pub const EVICTION_SAMPLE: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateConfig {
    /// SCAN_TRIGGER: report on the (trigger+1)-th distinct port.
    pub trigger: u32,
    pub window_ms: u64,
    /// STATE_MAX_SOURCES (at least 1).
    pub max_sources: usize,
    /// How long a report latches a source that keeps scanning (see the module docs).
    pub rereport_ms: u64,
}

/// Default latch: a still-scanning source is reported at most this often.
pub const DEFAULT_REREPORT_MS: u64 = 5_000;

/// Most ports an escalated source is counted to before its last re-report.
pub const ESCALATE_MAX_PORTS: u32 = 64;

/// Most distinct ports a reported source is counted to: the evidence that keeps growing
/// after its block (the kernel keeps copying a blocked source's probes, rate-limited per
/// source). It is reported again each time its count doubles, so the enforcer's record,
/// `sentryctl blocked` and the fleet see how much of the host it tried.
pub const EVIDENCE_MAX_PORTS: usize = 1024;

/// Most ports held outside the entries' inline arrays, over all sources together
/// (16 bytes each: 4 MiB): memory stays bounded however many blocked sources go on
/// scanning; past it a source's count stops growing.
pub const SPILL_BUDGET: usize = 256 * 1024;

/// One classified probe of a watched port: what the parser and the port policy make of a
/// frame, and what a basic-mode socket reports. The only hit type of the sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub src: IpAddr,
    /// The address probed (for a basic-mode hit, the listening socket's wildcard).
    pub dst: IpAddr,
    /// The destination port, or the protocol number of an IP-protocol probe; the protocol
    /// is `scan.protocol()`.
    pub port: u16,
    pub scan: ScanKind,
    pub mode: Mode,
    pub ip_options: bool,
}

/// A source that crossed the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub src: IpAddr,
    pub port: u16,
    pub scan: ScanKind,
    pub mode: Mode,
    pub distinct_ports: u32,
    pub first_seen: Wall,
    pub last_seen: Wall,
    pub ip_options: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted; `distinct` ports so far, below the trigger.
    Counted { distinct: u32 },
    /// Crossed the trigger now.
    Report(Report),
    /// Reported less than `rereport_ms` ago; nothing to do.
    Latched,
    /// The table is full of sources with more evidence: this one is not tracked.
    Untracked,
}

/// Ports held inline per source; larger triggers spill to the heap.
const INLINE_PORTS: usize = 6;

/// Distinct ports with the monotonic time of their first hit in the window. Up to
/// [`INLINE_PORTS`] live inside the entry (no allocation per source, one cache line less
/// per packet); beyond that they spill into a Vec.
#[derive(Debug, Clone, Default)]
struct PortList {
    len: u8,
    ports: [u16; INLINE_PORTS],
    times: [u64; INLINE_PORTS],
    spill: Vec<(u16, u64)>,
}

impl PortList {
    fn len(&self) -> usize {
        usize::from(self.len) + self.spill.len()
    }

    fn clear(&mut self) {
        self.len = 0;
        self.spill.clear();
    }

    fn inline(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.ports
            .iter()
            .copied()
            .zip(self.times.iter().copied())
            .take(usize::from(self.len))
    }

    fn contains(&self, port: u16) -> bool {
        self.inline().any(|(p, _)| p == port) || self.spill.iter().any(|&(p, _)| p == port)
    }

    fn oldest(&self) -> Option<u64> {
        self.inline()
            .map(|(_, t)| t)
            .chain(self.spill.iter().map(|&(_, t)| t))
            .min()
    }

    /// Keep only ports first hit within `window` of `now`.
    fn retain_recent(&mut self, now: u64, window: u64) {
        let n = usize::from(self.len);
        let mut w = 0;
        for r in 0..n {
            let (Some(&p), Some(&t)) = (self.ports.get(r), self.times.get(r)) else {
                break;
            };
            if now.saturating_sub(t) <= window {
                if let (Some(pp), Some(tt)) = (self.ports.get_mut(w), self.times.get_mut(w)) {
                    *pp = p;
                    *tt = t;
                }
                w += 1;
            }
        }
        self.len = u8::try_from(w).unwrap_or(0);
        self.spill.retain(|&(_, t)| now.saturating_sub(t) <= window);
    }

    /// Add a port (if below `cap` entries).
    fn push(&mut self, port: u16, now: u64, cap: usize) {
        if self.len() >= cap {
            return;
        }
        let n = usize::from(self.len);
        if self.spill.is_empty() && n < INLINE_PORTS {
            if let (Some(pp), Some(tt)) = (self.ports.get_mut(n), self.times.get_mut(n)) {
                *pp = port;
                *tt = now;
                self.len += 1;
            }
        } else {
            self.spill.push((port, now));
        }
    }
}

#[derive(Debug, Clone)]
struct Source {
    ip: IpAddr,
    /// Distinct ports in the window, at most trigger+1 entries.
    ports: PortList,
    last_ms: u64,
    reported: bool,
    /// Monotonic time of the latest report.
    reported_ms: u64,
    /// Escalated (see the module docs): report again at this many distinct ports.
    escalate_at: u32,
    /// Distinct ports in the latest report: a reported source is reported again when it
    /// has twice as many.
    reported_ports: u32,
}

/// The state engine. Times are monotonic milliseconds (for the window) plus the wall clock
/// at the same instant (for the timestamps in reports).
#[derive(Debug)]
pub struct State {
    cfg: StateConfig,
    index: HashMap<IpAddr, usize, RandomState>,
    slots: Vec<Source>,
    rng: u64,
    evictions: u64,
    /// New sources not tracked because every candidate for eviction had more evidence.
    untracked: u64,
    /// BLOCK_PREFIX6: IPv6 sources are counted by this network (an IPv6 scanner can take
    /// a new address from its /64 for every probe); 128 counts each address.
    prefix6: u8,
    /// Ports held in the entries' spill vectors, bounded by [`SPILL_BUDGET`].
    spilled: usize,
}

impl State {
    pub fn new(cfg: StateConfig) -> Self {
        let max = cfg.max_sources.max(1);
        let hasher = RandomState::new();
        let mut h = hasher.build_hasher();
        h.write_u64(0x5eed);
        let seed = h.finish() | 1;
        Self {
            cfg: StateConfig {
                max_sources: max,
                ..cfg
            },
            index: HashMap::with_capacity_and_hasher(max.min(1 << 16), hasher),
            slots: Vec::with_capacity(max.min(1 << 16)),
            rng: seed,
            evictions: 0,
            untracked: 0,
            prefix6: 128,
            spilled: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Count IPv6 sources by their `len`-bit network (BLOCK_PREFIX6), as the enforcer
    /// blocks them.
    pub fn with_prefix6(mut self, len: u8) -> Self {
        self.prefix6 = len.clamp(1, 128);
        self
    }

    /// The key a source is counted under: its address, or its IPv6 network.
    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(a) if self.prefix6 < 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix6))
                    .unwrap_or(0);
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & mask))
            }
            other => other,
        }
    }

    /// The enforcer refused `ip`'s report of `reported` distinct ports for want of budget
    /// (rate-limited, capped): report it again when it has shown twice as many.
    pub fn escalate(&mut self, ip: IpAddr, reported: u32) {
        let Some(&i) = self.index.get(&self.key(ip)) else {
            return;
        };
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        let at = reported.saturating_mul(2).max(reported.saturating_add(1));
        if reported >= ESCALATE_MAX_PORTS {
            return;
        }
        s.escalate_at = at.min(ESCALATE_MAX_PORTS);
        s.reported = false;
    }

    fn capacity_ports(&self) -> usize {
        usize::try_from(self.cfg.trigger)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
            .min(65_536)
    }

    fn expired(&self, s: &Source, now: u64) -> bool {
        now.saturating_sub(s.last_ms) > self.cfg.window_ms
    }

    /// Record a hit at monotonic `now` (wall clock `wall`).
    pub fn hit(&mut self, h: &Hit, now: Mono, wall: Wall) -> Outcome {
        self.hit_at(h, now.0, wall.0)
    }

    /// [`State::hit`] in plain milliseconds (the arithmetic below, and the tests).
    fn hit_at(&mut self, h: &Hit, now: u64, wall: u64) -> Outcome {
        let key = self.key(h.src);
        let idx = match self.index.get(&key) {
            Some(&i) => i,
            None => match self.insert(key, now) {
                Some(i) => i,
                None => return Outcome::Untracked,
            },
        };
        let window = self.cfg.window_ms;
        let cap = self.capacity_ports();
        let trigger_at = self.cfg.trigger.saturating_add(1);
        let rereport = self.cfg.rereport_ms;
        let Some(s) = self.slots.get_mut(idx) else {
            // Unreachable by construction (index and slots are kept in step); treat as a
            // fresh, uncounted hit rather than panic.
            return Outcome::Counted { distinct: 0 };
        };
        let spilled_before = s.ports.spill.len();
        if now.saturating_sub(s.last_ms) > window {
            // Silent for a whole window: start over.
            s.ports.clear();
            s.reported = false;
            s.escalate_at = 0;
            s.reported_ports = 0;
        }
        let (cap, trigger_at) = match s.escalate_at {
            0 => (cap, trigger_at),
            at => (cap.max(at as usize), at),
        };
        s.last_ms = now;
        // Sliding window: forget ports first hit longer than a window ago.
        s.ports.retain_recent(now, window);
        // A reported source goes on being counted (its block's evidence), up to
        // EVIDENCE_MAX_PORTS and while the shared spill budget lasts.
        let growing = s.reported && s.ports.len() >= cap;
        let cap = if s.reported {
            EVIDENCE_MAX_PORTS.max(cap)
        } else {
            cap
        };
        let budget_spent = growing && self.spilled >= SPILL_BUDGET;
        if !budget_spent && !s.ports.contains(h.port) {
            s.ports.push(h.port, now, cap);
        }
        self.spilled = (self.spilled + s.ports.spill.len()).saturating_sub(spilled_before);
        let distinct = u32::try_from(s.ports.len()).unwrap_or(u32::MAX);
        if s.reported {
            let latched = now.saturating_sub(s.reported_ms) < rereport;
            let grown = distinct >= s.reported_ports.saturating_mul(2).max(2);
            if latched && !grown {
                return Outcome::Latched;
            }
            // Twice the evidence of the last report, or still scanning after the latch
            // (a block that expired or was lost is renewed while the scan goes on).
            s.reported = false;
        }
        if distinct >= trigger_at {
            s.reported = true;
            s.reported_ms = now;
            s.reported_ports = distinct;
            s.escalate_at = 0;
            let oldest = s.ports.oldest().unwrap_or(now);
            let first_seen_ms = wall.saturating_sub(now.saturating_sub(oldest)).max(1);
            Outcome::Report(Report {
                src: h.src,
                port: h.port,
                scan: h.scan,
                mode: h.mode,
                distinct_ports: distinct.min(65_535),
                first_seen: Wall(first_seen_ms),
                last_seen: Wall(wall.max(first_seen_ms)),
                ip_options: h.ip_options,
            })
        } else {
            Outcome::Counted { distinct }
        }
    }

    fn insert(&mut self, ip: IpAddr, now: u64) -> Option<usize> {
        if self.slots.len() >= self.cfg.max_sources && !self.evict_one(now) {
            self.untracked += 1;
            return None;
        }
        let idx = self.slots.len();
        self.slots.push(Source {
            ip,
            ports: PortList::default(),
            last_ms: now,
            reported: false,
            reported_ms: 0,
            escalate_at: 0,
            reported_ports: 0,
        });
        self.index.insert(ip, idx);
        Some(idx)
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: only used to pick eviction candidates; the seed comes from the
        // randomly keyed hasher, so an attacker cannot predict which slots are sampled.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Eviction rank: lower is evicted first. Fewest distinct ports first; among equals,
    /// unreported before reported (a reported source's latch stops duplicate requests),
    /// then the longest idle.
    fn rank(&self, s: &Source, now: u64) -> (u8, usize, u8, u64) {
        if self.expired(s, now) {
            return (0, 0, 0, 0);
        }
        (
            1,
            s.ports.len(),
            u8::from(s.reported || s.escalate_at > 0),
            s.last_ms,
        )
    }

    /// Whether a newcomer (one port so far) may displace `s`: only if `s` has no more
    /// evidence than it (at most one port) or is expired. An escalated single-port source
    /// stays evictable: otherwise a flood of forged sources, each refused and escalated,
    /// would fill the table for good.
    fn evictable(&self, s: &Source, now: u64) -> bool {
        self.expired(s, now) || s.ports.len() <= 1
    }

    /// Make room for a new source. `false` when the weakest candidate has more evidence
    /// than the newcomer can have: then nothing is evicted.
    fn evict_one(&mut self, now: u64) -> bool {
        let n = self.slots.len();
        if n == 0 {
            return true;
        }
        // EVICTION_SAMPLE distinct slots from a random starting point (all of them when
        // the table is smaller than the sample).
        let start = usize::try_from(self.next_rand() % n as u64).unwrap_or(0);
        let mut best: Option<(usize, (u8, usize, u8, u64))> = None;
        for k in 0..EVICTION_SAMPLE.min(n) {
            let i = (start + k) % n;
            if let Some(s) = self.slots.get(i) {
                let r = self.rank(s, now);
                if best.is_none_or(|(_, br)| r < br) {
                    best = Some((i, r));
                }
            }
        }
        let Some((i, _)) = best else { return false };
        if !self.slots.get(i).is_some_and(|s| self.evictable(s, now)) {
            return false;
        }
        self.remove_at(i);
        self.evictions += 1;
        true
    }

    fn remove_at(&mut self, i: usize) {
        if i >= self.slots.len() {
            return;
        }
        let removed = self.slots.swap_remove(i);
        self.spilled = self.spilled.saturating_sub(removed.ports.spill.len());
        self.index.remove(&removed.ip);
        if let Some(moved) = self.slots.get(i) {
            if let MapEntry::Occupied(mut e) = self.index.entry(moved.ip) {
                e.insert(i);
            }
        }
    }

    /// Drop every source idle for longer than the window. Returns how many were dropped.
    pub fn expire(&mut self, now: Mono) -> usize {
        self.expire_at(now.0)
    }

    fn expire_at(&mut self, now: u64) -> usize {
        let mut dropped = 0;
        let mut i = 0;
        while i < self.slots.len() {
            let expired = self
                .slots
                .get(i)
                .is_some_and(|s| now.saturating_sub(s.last_ms) > self.cfg.window_ms);
            if expired {
                self.remove_at(i);
                dropped += 1;
            } else {
                i += 1;
            }
        }
        dropped
    }

    /// Whether a hit from `ip` at `now` would only refresh its latch (reported less than
    /// `rereport_ms` ago and not silent for a window).
    pub fn is_latched(&self, ip: IpAddr, now: Mono) -> bool {
        self.is_latched_at(ip, now.0)
    }

    fn is_latched_at(&self, ip: IpAddr, now: u64) -> bool {
        self.index
            .get(&self.key(ip))
            .and_then(|&i| self.slots.get(i))
            .is_some_and(|s| {
                s.reported
                    && now.saturating_sub(s.reported_ms) < self.cfg.rereport_ms
                    && now.saturating_sub(s.last_ms) <= self.cfg.window_ms
            })
    }

    /// Forget everything about `ip` (its block ended: if it scans again, it is counted
    /// and reported afresh, not latched).
    pub fn forget(&mut self, ip: IpAddr) {
        if let Some(&i) = self.index.get(&self.key(ip)) {
            self.remove_at(i);
        }
    }

    /// Whether `ip` is currently tracked (tests, diagnostics).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.index.contains_key(&self.key(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn cfg(trigger: u32, window_ms: u64, max: usize) -> StateConfig {
        StateConfig {
            trigger,
            window_ms,
            max_sources: max,
            rereport_ms: u64::MAX,
        }
    }

    fn hit(src: IpAddr, port: u16) -> Hit {
        Hit {
            src,
            dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254)),
            port,
            scan: ScanKind::Syn,
            mode: Mode::Stcp,
            ip_options: false,
        }
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    const WALL: u64 = 1_700_000_000_000;

    #[test]
    fn trigger_zero_reports_first_hit() {
        let mut s = State::new(cfg(0, 1000, 10));
        match s.hit_at(&hit(v4(1), 23), 5, WALL) {
            Outcome::Report(r) => {
                assert_eq!(r.distinct_ports, 1);
                assert_eq!(r.port, 23);
                assert_eq!(r.first_seen.0, WALL);
                assert_eq!(r.last_seen.0, WALL);
            }
            o => panic!("{o:?}"),
        }
        // A second port doubles the evidence: reported again (the block's record
        // grows); a third does not.
        assert!(
            matches!(s.hit_at(&hit(v4(1), 24), 6, WALL + 1), Outcome::Report(r) if r.distinct_ports == 2)
        );
        assert_eq!(s.hit_at(&hit(v4(1), 25), 7, WALL + 2), Outcome::Latched);
        assert_eq!(s.hit_at(&hit(v4(1), 23), 8, WALL + 3), Outcome::Latched);
    }

    #[test]
    fn a_refused_report_comes_back_with_twice_the_ports() {
        let mut s = State::new(cfg(0, 10_000, 10));
        let a = v4(7);
        assert!(
            matches!(s.hit_at(&hit(a, 1), 0, WALL), Outcome::Report(r) if r.distinct_ports == 1)
        );
        // Rate-limited by the enforcer: escalate instead of latching.
        s.escalate(a, 1);
        assert!(
            matches!(s.hit_at(&hit(a, 2), 1, WALL + 1), Outcome::Report(r) if r.distinct_ports == 2)
        );
        s.escalate(a, 2);
        assert_eq!(
            s.hit_at(&hit(a, 3), 2, WALL + 2),
            Outcome::Counted { distinct: 3 }
        );
        assert_eq!(
            s.hit_at(&hit(a, 3), 3, WALL + 3),
            Outcome::Counted { distinct: 3 }
        );
        assert!(
            matches!(s.hit_at(&hit(a, 4), 4, WALL + 4), Outcome::Report(r) if r.distinct_ports == 4)
        );
        // Accepted this time (no escalate call): latched as before.
        assert_eq!(s.hit_at(&hit(a, 5), 5, WALL + 5), Outcome::Latched);
        // Escalation stops at ESCALATE_MAX_PORTS.
        s.escalate(a, ESCALATE_MAX_PORTS);
        assert_eq!(s.hit_at(&hit(a, 6), 6, WALL + 6), Outcome::Latched);
        // An unknown source is ignored.
        s.escalate(v4(99), 1);
        assert!(!s.contains(v4(99)));
        // Its block ended: reported again at once, not latched.
        s.forget(a);
        assert!(!s.contains(a));
        assert!(matches!(
            s.hit_at(&hit(a, 7), 7, WALL + 7),
            Outcome::Report(_)
        ));
        s.forget(v4(98));
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_network() {
        let mut s = State::new(cfg(2, 10_000, 10)).with_prefix6(64);
        let a = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, n));
        // A new address from the /64 per probe: still one source, reported at 3 ports.
        assert_eq!(
            s.hit_at(&hit(a(1), 1), 0, WALL),
            Outcome::Counted { distinct: 1 }
        );
        assert_eq!(
            s.hit_at(&hit(a(2), 2), 1, WALL),
            Outcome::Counted { distinct: 2 }
        );
        match s.hit_at(&hit(a(3), 3), 2, WALL) {
            Outcome::Report(r) => assert_eq!(r.src, a(3), "the report names the real source"),
            o => panic!("{o:?}"),
        }
        assert_eq!(s.len(), 1);
        assert!(s.contains(a(99)));
        // Another /64 is another source; IPv4 is untouched.
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert_eq!(
            s.hit_at(&hit(other, 1), 3, WALL),
            Outcome::Counted { distinct: 1 }
        );
        assert_eq!(
            s.hit_at(&hit(v4(1), 1), 3, WALL),
            Outcome::Counted { distinct: 1 }
        );
        assert_eq!(s.len(), 3);
        // The enforcer's notice names the network: forgetting it forgets the /64.
        s.forget(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0)));
        assert!(!s.contains(a(1)));
    }

    #[test]
    fn single_packet_sources_never_displace_a_source_with_more_ports() {
        let mut s = State::new(cfg(3, 100_000, 4));
        // Four slow scanners, two ports each, tracked (trigger 3: not yet reported).
        for n in 0..4 {
            s.hit_at(&hit(v4(n), 1), 0, WALL);
            assert_eq!(
                s.hit_at(&hit(v4(n), 2), 1, WALL),
                Outcome::Counted { distinct: 2 }
            );
        }
        // A flood of forged single packets: none of them gets a slot.
        for n in 100..1_100 {
            assert_eq!(s.hit_at(&hit(v4(n), 9), 2, WALL), Outcome::Untracked);
        }
        assert_eq!(s.untracked(), 1_000);
        assert_eq!(s.evictions(), 0);
        // And the slow scanners are reported when they get there.
        for n in 0..4 {
            assert_eq!(
                s.hit_at(&hit(v4(n), 3), 3, WALL),
                Outcome::Counted { distinct: 3 }
            );
            assert!(matches!(
                s.hit_at(&hit(v4(n), 4), 4, WALL),
                Outcome::Report(_)
            ));
        }
        // Single-packet sources still displace each other (trigger 0 under a flood keeps
        // reporting new sources).
        let mut s = State::new(cfg(0, 100_000, 4));
        for n in 0..100 {
            assert!(
                matches!(s.hit_at(&hit(v4(n), 9), 0, WALL), Outcome::Report(_)),
                "{n}"
            );
        }
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn trigger_counts_distinct_ports_only() {
        let mut s = State::new(cfg(2, 1000, 10));
        let a = v4(1);
        assert_eq!(
            s.hit_at(&hit(a, 1), 0, WALL),
            Outcome::Counted { distinct: 1 }
        );
        assert_eq!(
            s.hit_at(&hit(a, 1), 1, WALL + 1),
            Outcome::Counted { distinct: 1 }
        );
        assert_eq!(
            s.hit_at(&hit(a, 2), 2, WALL + 2),
            Outcome::Counted { distinct: 2 }
        );
        match s.hit_at(&hit(a, 3), 10, WALL + 10) {
            Outcome::Report(r) => {
                assert_eq!(r.distinct_ports, 3);
                assert_eq!(r.port, 3);
                assert_eq!(r.first_seen.0, WALL);
                assert_eq!(r.last_seen.0, WALL + 10);
            }
            o => panic!("{o:?}"),
        }
        // Further ports are latched until the evidence doubles: one request each time.
        let mut again = Vec::new();
        for p in 4..100 {
            match s.hit_at(&hit(a, p), 11, WALL + 11) {
                Outcome::Report(r) => again.push(r.distinct_ports),
                o => assert_eq!(o, Outcome::Latched),
            }
        }
        assert_eq!(again, [6, 12, 24, 48, 96]);
        // Another source is independent.
        assert_eq!(
            s.hit_at(&hit(v4(2), 3), 12, WALL),
            Outcome::Counted { distinct: 1 }
        );
    }

    #[test]
    fn sliding_window_decays_old_ports() {
        let mut s = State::new(cfg(1, 100, 10));
        let a = v4(7);
        assert_eq!(
            s.hit_at(&hit(a, 1), 0, WALL),
            Outcome::Counted { distinct: 1 }
        );
        // Port 1 is 150 ms old at t=150: forgotten; port 2 alone does not trigger.
        assert_eq!(
            s.hit_at(&hit(a, 2), 150, WALL),
            Outcome::Counted { distinct: 1 }
        );
        assert!(matches!(
            s.hit_at(&hit(a, 3), 200, WALL),
            Outcome::Report(_)
        ));
    }

    #[test]
    fn latch_releases_after_a_silent_window() {
        let mut s = State::new(cfg(0, 100, 10));
        let a = v4(9);
        assert!(matches!(s.hit_at(&hit(a, 1), 0, WALL), Outcome::Report(_)));
        // Continuous activity keeps the latch.
        for t in (10..=500).step_by(50) {
            assert_eq!(s.hit_at(&hit(a, 1), t, WALL), Outcome::Latched);
        }
        // Silent for more than a window: reported again.
        assert!(matches!(
            s.hit_at(&hit(a, 3), 700, WALL),
            Outcome::Report(_)
        ));
    }

    /// A source still scanning is reported again each time its evidence doubles, and
    /// after each latch (a block that expired is renewed); otherwise it is not.
    #[test]
    fn continuing_scanner_is_reported_as_its_evidence_doubles_and_after_the_latch() {
        let mut s = State::new(StateConfig {
            rereport_ms: 1_000,
            ..cfg(1, 60_000, 10)
        });
        let a = v4(3);
        s.hit_at(&hit(a, 1), 0, WALL);
        assert!(matches!(s.hit_at(&hit(a, 2), 10, WALL), Outcome::Report(_)));
        let mut t = 10;
        let mut reports = vec![(10u64, 2u32)];
        let mut port = 3;
        while t < 3_500 {
            t += 50;
            port += 1;
            if let Outcome::Report(r) = s.hit_at(&hit(a, port), t, WALL + t) {
                reports.push((t, r.distinct_ports));
            }
        }
        // One new port each 50 ms: doubled at 4, 8, 16, 32; after that the latch of
        // 1000 ms runs out first (52, 72).
        assert_eq!(
            reports,
            [
                (10, 2),
                (110, 4),
                (310, 8),
                (710, 16),
                (1510, 32),
                (2510, 52),
                (3510, 72)
            ]
        );
        assert!(s.is_latched_at(a, 3600));
        // The same port over and over: renewed after each latch only.
        let b = v4(4);
        s.hit_at(&hit(b, 1), 0, WALL);
        assert!(matches!(s.hit_at(&hit(b, 2), 0, WALL), Outcome::Report(_)));
        let renewals = (1..=60)
            .filter(|i| matches!(s.hit_at(&hit(b, 2), i * 50, WALL), Outcome::Report(_)))
            .count();
        assert_eq!(renewals, 3);
    }

    #[test]
    fn ports_per_source_are_bounded() {
        let mut s = State::new(cfg(9, 1_000_000, 2));
        for p in 1..=9 {
            s.hit_at(&hit(v4(1), p), 1, WALL);
        }
        assert!(matches!(
            s.hit_at(&hit(v4(1), 10), 1, WALL),
            Outcome::Report(_)
        ));
        // A reported source's evidence grows up to EVIDENCE_MAX_PORTS, no further.
        for p in 11..=2000 {
            s.hit_at(&hit(v4(1), p), 1, WALL);
        }
        assert_eq!(s.slots[0].ports.len(), EVIDENCE_MAX_PORTS);
        assert_eq!(s.spilled, EVIDENCE_MAX_PORTS - INLINE_PORTS);
        // An unreported one stays at the trigger's count.
        for p in 1..=20 {
            s.hit_at(&hit(v4(2), p), 1, WALL);
        }
        let two = s.index[&v4(2)];
        assert!(s.slots[two].ports.len() <= EVIDENCE_MAX_PORTS);
        // Once the shared spill budget is spent, no source's evidence grows.
        s.spilled = SPILL_BUDGET;
        let before = s.slots[two].ports.len();
        for p in 100..200 {
            s.hit_at(&hit(v4(2), p), 1, WALL);
        }
        assert_eq!(s.slots[two].ports.len(), before);
        // Forgetting a source gives its spill back.
        s.spilled = EVIDENCE_MAX_PORTS - INLINE_PORTS + (before - INLINE_PORTS);
        s.forget(v4(1));
        assert_eq!(s.spilled, before - INLINE_PORTS);
    }

    #[test]
    fn port_list_inline_and_spill() {
        let mut l = PortList::default();
        for p in 1..=10u16 {
            l.push(p, u64::from(p) * 10, 8);
        }
        assert_eq!(l.len(), 8, "capped");
        assert!(l.contains(1) && l.contains(8) && !l.contains(9));
        assert_eq!(l.oldest(), Some(10));
        // At t=100 with a 35 ms window, ports first hit at 70 and 80 survive (6 inline,
        // 2 spilled before).
        l.retain_recent(100, 35);
        assert_eq!(l.len(), 2);
        assert!(l.contains(7) && l.contains(8) && !l.contains(6));
        assert_eq!(l.oldest(), Some(70));
        l.clear();
        assert_eq!(l.len(), 0);
        assert_eq!(l.oldest(), None);
    }
}
