//! Starting the sensor with a short statistics interval, and reading the counters of both
//! daemons from `sentryctl status --json`.
//!
//! The sentry-tests harness starts the sensor with its default 5 s statistics interval;
//! the capture and flood scenarios need fresher counters, so this starts the sensor the
//! same way the harness does (user `sentry`, only CAP_NET_RAW, via setpriv, in the target
//! namespace) with `--stats-interval-ms`.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sentry_tests::netns::Side;
use sentry_tests::{Sentry, SENSOR_USER};
use serde_json::Value;

pub const STATS_INTERVAL_MS: u64 = 200;

/// Start the sensor of `s` (which must have been started `without_sensor`); returns its
/// pid (the harness's `sensor_pid()` only knows sensors it started itself).
pub fn start_sensor(s: &mut Sentry) -> Result<u32, String> {
    let log = fs::File::create(s.dir.path().join("bench-sensor.log")).map_err(|e| e.to_string())?;
    let mut c = s.net.command(Side::Target, "setpriv");
    c.args([
        "--reuid",
        SENSOR_USER,
        "--regid",
        SENSOR_USER,
        "--clear-groups",
        "--bounding-set",
        "-all,+net_raw",
        "--inh-caps",
        "-all,+net_raw",
        "--ambient-caps",
        "+net_raw",
        "--no-new-privs",
    ])
    .arg(&s.bins.sensor)
    .arg("--config")
    .arg(&s.conf)
    .arg("--runtime-dir")
    .arg(&s.runtime_dir)
    .arg("--log-stderr")
    .arg("--stats-interval-ms")
    .arg(STATS_INTERVAL_MS.to_string())
    .args(
        s.settings
            .modes
            .iter()
            .map(|m| format!("-{}", m.trim_start_matches('-'))),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    let child = c.spawn().map_err(|e| format!("spawn sensor: {e}"))?;
    let pid = child.id();
    // No pid registration: the emergency cleanup kills everything in our namespaces.
    s.sensor = Some(child);
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
                "sensor did not connect (and report statistics): {}",
                fs::read_to_string(s.dir.path().join("bench-sensor.log")).unwrap_or_default()
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
}

/// Wait until the sensor's packet counter and the enforcer's request counter have not
/// moved for `quiet` (the sensor has drained its ring and the enforcer its queue), at
/// most `max`.
pub fn settle(s: &Sentry, quiet: Duration, max: Duration) -> Result<Settled, String> {
    let start = Instant::now();
    let mut last = snapshot(s)?;
    let mut changed = Instant::now();
    let mut blocked_changed = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(STATS_INTERVAL_MS + 50));
        let now = snapshot(s)?;
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
            });
        }
    }
}
