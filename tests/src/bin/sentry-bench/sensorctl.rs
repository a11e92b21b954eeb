//! Starting the sensor with a short statistics interval, and reading the counters of both
//! daemons from `sentryctl status --json`.
//!
//! The capture and flood scenarios need fresher counters than the sensor's default 5 s
//! statistics interval, so the sensor is started through the harness (user `sentry`, only
//! CAP_NET_RAW, as the unit) with `--stats-interval-ms`.

use std::time::{Duration, Instant};

use sentry_tests::Sentry;
use serde_json::Value;

pub const STATS_INTERVAL_MS: u64 = 200;

/// Start the sensor of `s` (which must have been started `without_sensor`) through the
/// harness, with `--stats-interval-ms`, and wait until it has connected and reported
/// statistics; returns its pid (the harness's `sensor_pid()` only knows sensors its own
/// `start_sensor` waited for).
pub fn start_sensor(s: &mut Sentry) -> Result<u32, String> {
    s.settings.sensor_args = vec!["--stats-interval-ms".into(), STATS_INTERVAL_MS.to_string()];
    let pid = s.spawn_sensor().map_err(|e| format!("spawn sensor: {e}"))?;
    // No pid registration: the emergency cleanup kills everything in our namespaces.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(st) = s.try_status() {
            if st.pointer("/sensor/pid").and_then(Value::as_u64) == Some(u64::from(pid))
                && st.pointer("/sensor/stats").is_some_and(|v| !v.is_null())
            {
                return Ok(pid);
            }
        }
        if !sentry_tests::sentry::pid_alive(pid) || Instant::now() >= deadline {
            return Err(format!(
                "sensor did not connect (and report statistics):\n{}",
                s.diag()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counters of both daemons at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sensor: Value,
    pub counters: Value,
    pub active_blocks: u64,
}

impl Snapshot {
    pub fn sensor_u64(&self, k: &str) -> u64 {
        self.sensor.get(k).and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn counter(&self, k: &str) -> u64 {
        self.counters.get(k).and_then(Value::as_u64).unwrap_or(0)
    }
}

pub fn snapshot(s: &Sentry) -> Result<Snapshot, String> {
    let st = s.try_status()?;
    Ok(Snapshot {
        sensor: st.pointer("/sensor/stats").cloned().unwrap_or(Value::Null),
        counters: st.get("counters").cloned().unwrap_or(Value::Null),
        active_blocks: st.get("active_blocks").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// The outcome of [`settle`].
#[derive(Debug, Clone)]
pub struct Settled {
    pub last: Snapshot,
    /// When any watched counter last moved.
    pub changed: Instant,
    /// When the enforcer's `blocked` counter last moved.
    pub blocked_changed: Instant,
    /// `max` ran out while the counters were still moving.
    pub timed_out: bool,
    /// `sentryctl status` calls that got no answer within its 10 s (the enforcer's control
    /// thread waits for the engine lock while another thread holds it).
    pub unanswered: u32,
}

/// Wait until the sensor's packet counter and the enforcer's request counter have not
/// moved for `quiet` (the sensor has drained its ring and the enforcer its queue), at
/// most `max`.
pub fn settle(s: &Sentry, quiet: Duration, max: Duration) -> Result<Settled, String> {
    let start = Instant::now();
    let mut last = snapshot(s)?;
    let mut changed = Instant::now();
    let mut blocked_changed = Instant::now();
    let mut unanswered = 0;
    loop {
        std::thread::sleep(Duration::from_millis(STATS_INTERVAL_MS + 50));
        let now = match snapshot(s) {
            Ok(n) => n,
            // Unanswered is busy, not finished: count it and ask again (within `max`).
            Err(e) if e.contains("TIMED OUT") => {
                unanswered += 1;
                changed = Instant::now();
                if start.elapsed() >= max {
                    return Ok(Settled {
                        last,
                        changed,
                        blocked_changed,
                        timed_out: true,
                        unanswered,
                    });
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let key = |x: &Snapshot| {
            (
                x.sensor_u64("packets"),
                x.counter("requests"),
                x.active_blocks,
            )
        };
        if key(&now) != key(&last) {
            changed = Instant::now();
        }
        if now.counter("blocked") != last.counter("blocked") {
            blocked_changed = Instant::now();
        }
        last = now;
        // A sensor whose statistics have not arrived yet (all zero: its Stats frames wait
        // behind queued block requests) is not settled either.
        let stats_in = last.sensor.is_null() || last.sensor_u64("packets") > 0;
        if (changed.elapsed() >= quiet && stats_in) || start.elapsed() >= max {
            return Ok(Settled {
                last,
                changed,
                blocked_changed,
                timed_out: changed.elapsed() < quiet || !stats_in,
                unanswered,
            });
        }
    }
}
