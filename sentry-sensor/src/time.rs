//! The sensor's two clocks as types, so that a monotonic instant is never passed where a
//! wall-clock time is meant (or the other way round) and the unit is in the name.
//!
//! [`Mono`] runs windows, latches, rate limits and retries: it never jumps. [`Wall`] only
//! stamps what leaves the sensor (a report's first and last probe), because the enforcer
//! and its audit log speak Unix time.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds on the sensor's monotonic clock (since [`Clock`] started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mono(pub u64);

impl Mono {
    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn ms_since(self, earlier: Mono) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// `ms` milliseconds later.
    pub fn plus_ms(self, ms: u64) -> Mono {
        Mono(self.0.saturating_add(ms))
    }
}

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Wall(pub u64);

impl Wall {
    /// Now (1 ms after the epoch if the clock is before it: 0 is not a valid time on the
    /// wire).
    pub fn now() -> Wall {
        Wall(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(1),
        )
    }
}

/// The monotonic clock, started when the sensor starts.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    pub fn now(&self) -> Mono {
        Mono(u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Mono(5).ms_since(Mono(3)), 2);
        assert_eq!(Mono(3).ms_since(Mono(5)), 0);
        assert_eq!(Mono(u64::MAX).plus_ms(1), Mono(u64::MAX));
        assert!(Wall::now().0 > 1_700_000_000_000);
        let c = Clock::start();
        assert!(c.now() <= c.now());
    }
}
