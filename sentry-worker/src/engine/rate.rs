//! BLOCK_RATE's one-minute window, with the shares that keep spoofed sources from
//! spending it: single-probe requests (one forged SYN or datagram each) may use at most
//! half of it, and the single-probe blocks of one /24 (IPv4) or /64 (IPv6) at most a
//! quarter, so a real many-port scanner always finds room, also one whose own /24 a forger
//! filled, and no prefix takes the whole budget. The fleet's FLEET_BLOCK_RATE is a window
//! of its own.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

// The judge's vocabulary (Evidence, Usage) lives in the judge; this window only counts in
// it, so the dependency runs one way: engine -> judge.
use crate::judge::{Evidence, Usage};
use crate::time::WallMs;

/// The prefix a source's share is counted under: its /24 or /64.
pub fn share_prefix(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & 0xffff_ff00)),
        IpAddr::V6(a) => IpAddr::V6(policy::mask6(a, 64)),
    }
}

/// Blocks and commands started in the last minute.
#[derive(Debug, Default)]
pub struct RateWindow {
    entries: VecDeque<(WallMs, Evidence, IpAddr)>,
    single_probe: usize,
    per_prefix: HashMap<IpAddr, usize>,
}

impl RateWindow {
    /// Forget entries a minute old or older.
    pub fn prune(&mut self, now: WallMs) {
        let cutoff = WallMs(now.0.saturating_sub(60_000));
        while let Some(&(t, ev, prefix)) = self.entries.front() {
            if t > cutoff {
                break;
            }
            self.entries.pop_front();
            if ev == Evidence::SingleProbe {
                self.single_probe -= 1;
            }
            if ev == Evidence::SingleProbe {
                if let Some(n) = self.per_prefix.get_mut(&prefix) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_prefix.remove(&prefix);
                    }
                }
            }
        }
    }

    pub fn usage(&self, source: IpAddr) -> Usage {
        Usage {
            all: self.entries.len(),
            single_probe: self.single_probe,
            same_prefix: self
                .per_prefix
                .get(&share_prefix(source))
                .copied()
                .unwrap_or(0),
        }
    }

    pub fn record(&mut self, now: WallMs, ev: Evidence, source: IpAddr) {
        let prefix = share_prefix(source);
        self.entries.push_back((now, ev, prefix));
        if ev == Evidence::SingleProbe {
            self.single_probe += 1;
            *self.per_prefix.entry(prefix).or_insert(0) += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_by_kind_and_prefix_and_forgets_after_a_minute() {
        let mut w = RateWindow::default();
        w.record(WallMs(1_000), Evidence::SingleProbe, ip("192.0.2.1"));
        w.record(WallMs(2_000), Evidence::Ports, ip("192.0.2.200"));
        w.record(WallMs(3_000), Evidence::SingleProbe, ip("2001:db8:1:2::1"));
        let u = w.usage(ip("192.0.2.77"));
        // The multi-port block spends BLOCK_RATE but not its prefix's single-probe share.
        assert_eq!((u.all, u.single_probe, u.same_prefix), (3, 2, 1));
        assert_eq!(w.usage(ip("2001:db8:1:2:ffff::9")).same_prefix, 1);
        assert_eq!(w.usage(ip("2001:db8:1:3::1")).same_prefix, 0);
        w.prune(WallMs(61_000));
        let u = w.usage(ip("192.0.2.77"));
        assert_eq!((u.all, u.single_probe, u.same_prefix), (2, 1, 0));
        w.prune(WallMs(63_000));
        assert_eq!(w.usage(ip("192.0.2.77")), Usage::default());
        assert!(w.per_prefix.is_empty());
    }
}
