//! AUDIT_RATE: how many audit records (and enforcer log lines) per wall-clock second may
//! be spent on block requests that changed nothing.
//!
//! A spoofed-source flood makes the sensor send one block request per fake source; almost
//! all of them end `rate_limited` or `capped`. Without a bound, each one costs an audit
//! line and a syslog line, so attacker input would decide how fast the disk under
//! `/var/log/sentry` and the journal fill. Within one second the first `AUDIT_RATE`
//! no-change records are written as before; the rest are only counted, per decision kind,
//! with the first [`SAMPLE_MAX`] distinct sources kept as a sample. When the second is
//! over (seen on the next request or on the daemon's one-second tick) one summary per
//! kind that had suppressed records is handed back to be written.
//!
//! Decisions that changed something (`blocked`, `command_only`, `failed`) never go
//! through the budget: they are already bounded by BLOCK_RATE and MAX_BLOCKS.
//!
//! Memory is fixed: [`KINDS`] slots of at most [`SAMPLE_MAX`] addresses each.

use std::net::IpAddr;

use sentry_proto::Decision;

use crate::time::WallUs;

/// Sources kept per decision kind in one second's summary.
pub const SAMPLE_MAX: usize = 8;

/// The decisions that change nothing, in the order their summaries are written.
pub const KINDS: [Decision; 7] = [
    Decision::Rejected,
    Decision::NeverBlock,
    Decision::Ignored,
    Decision::LogOnly,
    Decision::AlreadyBlocked,
    Decision::RateLimited,
    Decision::Capped,
];

/// Index of `d` in [`KINDS`]; `None` for decisions that changed something.
fn slot(d: Decision) -> Option<usize> {
    match d {
        Decision::Blocked | Decision::CommandOnly | Decision::Failed => None,
        Decision::Rejected => Some(0),
        Decision::NeverBlock => Some(1),
        Decision::Ignored => Some(2),
        Decision::LogOnly => Some(3),
        Decision::AlreadyBlocked => Some(4),
        Decision::RateLimited => Some(5),
        Decision::Capped => Some(6),
    }
}

/// Records of one kind not written individually in one second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub decision: Decision,
    /// How many records were not written.
    pub suppressed: u64,
    /// Time of the first and the last of them, microseconds since the epoch.
    pub first_us: u64,
    pub last_us: u64,
    /// The first distinct sources among them, at most [`SAMPLE_MAX`].
    pub sample: Vec<IpAddr>,
}

/// Per-kind tally for the current second.
#[derive(Debug, Clone, Copy)]
struct Tally {
    suppressed: u64,
    first_us: u64,
    last_us: u64,
    sample: [Option<IpAddr>; SAMPLE_MAX],
}

impl Tally {
    const EMPTY: Self = Self {
        suppressed: 0,
        first_us: 0,
        last_us: 0,
        sample: [None; SAMPLE_MAX],
    };

    fn add(&mut self, now_us: u64, source: IpAddr) {
        if self.suppressed == 0 {
            self.first_us = now_us;
        }
        self.suppressed = self.suppressed.saturating_add(1);
        self.last_us = now_us;
        for s in &mut self.sample {
            match s {
                Some(a) if *a == source => return,
                Some(_) => {}
                None => {
                    *s = Some(source);
                    return;
                }
            }
        }
    }
}

/// The per-second budget. `rate` is AUDIT_RATE.
#[derive(Debug)]
pub struct AuditBudget {
    rate: u32,
    /// The wall-clock second (since the epoch) being counted.
    second: u64,
    /// No-change records written in `second`.
    used: u32,
    tallies: [Tally; KINDS.len()],
}

impl AuditBudget {
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            second: 0,
            used: 0,
            tallies: [Tally::EMPTY; KINDS.len()],
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// End the counted second if `now_us` lies in another one (also when the clock went
    /// back), returning the summaries of what it suppressed, in [`KINDS`] order. Call
    /// before [`AuditBudget::admit`] so the summaries are written before the new second's
    /// records, and periodically so they are not held back when requests stop.
    pub fn roll(&mut self, now: WallUs) -> Vec<Summary> {
        let now_us = now.0;
        let sec = now_us / 1_000_000;
        if sec == self.second {
            return Vec::new();
        }
        self.second = sec;
        self.used = 0;
        self.take()
    }

    /// The summaries of what the current second suppressed so far, now (on shutdown, so
    /// that no count is lost). The budget already used in this second stays used.
    pub fn finish(&mut self) -> Vec<Summary> {
        self.take()
    }

    fn take(&mut self) -> Vec<Summary> {
        let mut out = Vec::new();
        for (kind, t) in KINDS.iter().zip(self.tallies.iter_mut()) {
            if t.suppressed > 0 {
                out.push(Summary {
                    decision: *kind,
                    suppressed: t.suppressed,
                    first_us: t.first_us,
                    last_us: t.last_us,
                    sample: t.sample.iter().flatten().copied().collect(),
                });
            }
            *t = Tally::EMPTY;
        }
        out
    }

    /// Whether the record of `decision` for `source` at `now_us` may be written (and its
    /// log line logged). Decisions that changed something are always admitted and do not
    /// use the budget. A refused one is counted for the summary of its second. Assumes
    /// [`AuditBudget::roll`] was called for `now_us`; if it was not, a record from another
    /// second is admitted or counted against the current one, never lost.
    pub fn admit(&mut self, now: WallUs, decision: Decision, source: IpAddr) -> bool {
        let now_us = now.0;
        let Some(i) = slot(decision) else {
            return true;
        };
        if self.used < self.rate {
            self.used += 1;
            return true;
        }
        if let Some(t) = self.tallies.get_mut(i) {
            t.add(now_us, source);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the budget applies to `d` at all.
    fn gated(d: Decision) -> bool {
        slot(d).is_some()
    }

    const SEC: u64 = 1_700_000_000_000_000;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0200 + n))
    }

    #[test]
    fn exactly_rate_admitted_then_suppressed() {
        let mut b = AuditBudget::new(3);
        assert!(b.roll(WallUs(SEC)).is_empty());
        for i in 0..3 {
            assert!(
                b.admit(WallUs(SEC + i), Decision::RateLimited, ip(1)),
                "record {i}"
            );
        }
        assert!(!b.admit(WallUs(SEC + 3), Decision::RateLimited, ip(1)));
        assert!(!b.admit(WallUs(SEC + 4), Decision::Capped, ip(2)));
    }

    #[test]
    fn budget_is_shared_by_the_no_change_kinds() {
        let mut b = AuditBudget::new(2);
        b.roll(WallUs(SEC));
        assert!(b.admit(WallUs(SEC), Decision::Ignored, ip(1)));
        assert!(b.admit(WallUs(SEC), Decision::NeverBlock, ip(1)));
        assert!(!b.admit(WallUs(SEC), Decision::Rejected, ip(1)));
        assert!(!b.admit(WallUs(SEC), Decision::LogOnly, ip(1)));
        assert!(!b.admit(WallUs(SEC), Decision::AlreadyBlocked, ip(1)));
    }

    #[test]
    fn changes_are_never_suppressed_and_use_no_budget() {
        let mut b = AuditBudget::new(1);
        b.roll(WallUs(SEC));
        for d in [Decision::Blocked, Decision::CommandOnly, Decision::Failed] {
            assert!(!gated(d));
            for _ in 0..100 {
                assert!(b.admit(WallUs(SEC), d, ip(1)));
            }
        }
        // The one no-change record of this second is still available.
        assert!(b.admit(WallUs(SEC), Decision::Capped, ip(1)));
        assert!(!b.admit(WallUs(SEC), Decision::Capped, ip(1)));
        assert!(b.admit(WallUs(SEC), Decision::Blocked, ip(1)));
        let s = b.roll(WallUs(SEC + 1_000_000));
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].decision, s[0].suppressed), (Decision::Capped, 1));
    }

    #[test]
    fn summary_contents_per_kind_in_fixed_order() {
        let mut b = AuditBudget::new(1);
        b.roll(WallUs(SEC));
        assert!(b.admit(WallUs(SEC + 10), Decision::Capped, ip(9)));
        for i in 0..5u32 {
            assert!(!b.admit(WallUs(SEC + 100 + u64::from(i)), Decision::Capped, ip(i)));
        }
        assert!(!b.admit(WallUs(SEC + 200), Decision::RateLimited, ip(7)));
        assert!(!b.admit(WallUs(SEC + 300), Decision::RateLimited, ip(7)));
        // Same second: nothing to summarise yet.
        assert!(b.roll(WallUs(SEC + 999_999)).is_empty());
        let s = b.roll(WallUs(SEC + 1_000_000));
        assert_eq!(
            s,
            vec![
                Summary {
                    decision: Decision::RateLimited,
                    suppressed: 2,
                    first_us: SEC + 200,
                    last_us: SEC + 300,
                    sample: vec![ip(7)],
                },
                Summary {
                    decision: Decision::Capped,
                    suppressed: 5,
                    first_us: SEC + 100,
                    last_us: SEC + 104,
                    sample: (0..5).map(ip).collect(),
                },
            ]
        );
        // Summaries are handed out once.
        assert!(b.roll(WallUs(SEC + 2_000_000)).is_empty());
    }

    #[test]
    fn rollover_restores_the_budget() {
        let mut b = AuditBudget::new(2);
        b.roll(WallUs(SEC));
        assert!(b.admit(WallUs(SEC), Decision::RateLimited, ip(1)));
        assert!(b.admit(WallUs(SEC), Decision::RateLimited, ip(1)));
        assert!(!b.admit(WallUs(SEC), Decision::RateLimited, ip(1)));
        let s = b.roll(WallUs(SEC + 1_500_000));
        assert_eq!(s.len(), 1);
        assert!(b.admit(WallUs(SEC + 1_500_000), Decision::RateLimited, ip(1)));
        assert!(b.admit(WallUs(SEC + 1_500_001), Decision::RateLimited, ip(1)));
        assert!(!b.admit(WallUs(SEC + 1_500_002), Decision::RateLimited, ip(1)));
        // A clock stepped back is another second too.
        assert_eq!(b.roll(WallUs(SEC - 5_000_000)).len(), 1);
        assert!(b.admit(WallUs(SEC - 5_000_000), Decision::RateLimited, ip(1)));
    }

    #[test]
    fn finish_hands_out_the_current_second_once() {
        let mut b = AuditBudget::new(1);
        b.roll(WallUs(SEC));
        assert!(b.admit(WallUs(SEC), Decision::Capped, ip(1)));
        assert!(!b.admit(WallUs(SEC + 5), Decision::Capped, ip(2)));
        let s = b.finish();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].suppressed, s[0].first_us, s[0].last_us),
            (1, SEC + 5, SEC + 5)
        );
        assert!(b.finish().is_empty());
        // Still the same second: its budget stays used.
        assert!(!b.admit(WallUs(SEC + 6), Decision::Capped, ip(3)));
        assert_eq!(b.roll(WallUs(SEC + 1_000_000))[0].suppressed, 1);
    }

    #[test]
    fn samples_bounded_and_distinct() {
        let mut b = AuditBudget::new(1);
        b.roll(WallUs(SEC));
        assert!(b.admit(WallUs(SEC), Decision::RateLimited, ip(1000)));
        for i in 0..100_000u32 {
            assert!(!b.admit(WallUs(SEC + u64::from(i)), Decision::RateLimited, ip(i % 3)));
        }
        for i in 0..100_000u32 {
            assert!(!b.admit(WallUs(SEC + 200_000), Decision::RateLimited, ip(i)));
        }
        let s = b.roll(WallUs(SEC + 1_000_000));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].suppressed, 200_000);
        assert_eq!(s[0].sample.len(), SAMPLE_MAX);
        // The three repeated sources first, then the first new ones, each once.
        let want: Vec<IpAddr> = [0, 1, 2, 3, 4, 5, 6, 7].into_iter().map(ip).collect();
        assert_eq!(s[0].sample, want);
        assert_eq!((s[0].first_us, s[0].last_us), (SEC, SEC + 200_000));
    }

    #[test]
    fn every_no_change_kind_has_its_own_slot() {
        let mut b = AuditBudget::new(1);
        b.roll(WallUs(SEC));
        assert!(b.admit(WallUs(SEC), Decision::Ignored, ip(0)));
        for (i, d) in KINDS.iter().enumerate() {
            assert!(gated(*d));
            assert_eq!(slot(*d), Some(i));
            assert!(!b.admit(WallUs(SEC), *d, ip(1)));
        }
        let s = b.roll(WallUs(SEC + 1_000_000));
        let kinds: Vec<Decision> = s.iter().map(|s| s.decision).collect();
        assert_eq!(kinds, KINDS.to_vec());
        assert!(s.iter().all(|s| s.suppressed == 1));
    }
}
