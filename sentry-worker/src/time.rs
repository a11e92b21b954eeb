//! The enforcer's clocks as types. Wall-clock time is what is persisted and audited
//! (block start and expiry, audit `time`/`time_us`); it is never compared with monotonic
//! time, which measures how long an action took ([`std::time::Instant`]). Keeping
//! milliseconds and microseconds apart in the type stops the unit slips a bare `u64`
//! invites (a `now_us` passed where `now_ms` was meant is off by a factor of 1000).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallMs(pub u64);

/// Wall-clock microseconds since the Unix epoch (the audit record's `time_us`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallUs(pub u64);

fn since_epoch() -> Duration {
    // A clock before 1970 is a broken clock; 0 keeps every comparison defined.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl WallMs {
    pub fn now() -> Self {
        Self(saturate(since_epoch().as_millis()))
    }

    /// The same instant in microseconds.
    pub fn us(self) -> WallUs {
        WallUs(self.0.saturating_mul(1000))
    }

    /// Whole seconds since the epoch (PortSentry's history lines).
    pub fn secs(self) -> u64 {
        self.0 / 1000
    }

    /// `self + d`, saturating (a permanent block has no expiry; a huge timeout must not
    /// wrap around into the past).
    pub fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(saturate(d.as_millis())))
    }

    /// How long from `self` until `later`, at least 1 ms (a kernel timeout of 0 would
    /// mean "never expires").
    pub fn until(self, later: Self) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0).max(1))
    }
}

impl WallUs {
    pub fn now() -> Self {
        Self(saturate(since_epoch().as_micros()))
    }

    /// The same instant in (truncated) milliseconds.
    pub fn ms(self) -> WallMs {
        WallMs(self.0 / 1000)
    }
}

/// Milliseconds elapsed since `t` on the monotonic clock, to the microsecond (the audit
/// record's per-action `ms`).
pub fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_and_saturation() {
        assert_eq!(WallMs(1_500).us(), WallUs(1_500_000));
        assert_eq!(WallUs(1_500_999).ms(), WallMs(1_500));
        assert_eq!(WallMs(u64::MAX).us(), WallUs(u64::MAX));
        assert_eq!(
            WallMs(u64::MAX - 1).after(Duration::from_secs(5)),
            WallMs(u64::MAX)
        );
        assert_eq!(WallMs(10).until(WallMs(5)), Duration::from_millis(1));
        assert_eq!(WallMs(10).until(WallMs(3_010)), Duration::from_secs(3));
        assert_eq!(WallMs(12_345).secs(), 12);
        assert!(WallMs::now() > WallMs(1_600_000_000_000));
    }
}
