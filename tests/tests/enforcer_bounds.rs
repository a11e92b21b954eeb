//! Bounds a local client of the sensor's uid cannot get around: one deadline for the
//! whole handshake (not per read), and a bounded number of "connected" log lines however
//! fast it reconnects. Runs the real enforcer; needs root (the `sentry` user, setpriv).

use std::time::{Duration, Instant};

use sentry_tests::{require_root, AuditDecision, Sentry, Settings};
use serde_json::Value;

fn hostile_as_sensor(s: &Sentry, args: &[&str], limit: Duration) -> Value {
    s.hostile(true, args, limit)
}

#[test]
fn a_handshake_dripped_byte_by_byte_is_cut_off_at_its_deadline() {
    let test = "a_handshake_dripped_byte_by_byte_is_cut_off_at_its_deadline";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]).hostile_sensor());
    // One byte every 400 ms: each read returns well within any per-read timeout, the whole
    // Hello (over 20 bytes) takes longer than the 5 s handshake deadline.
    let t = Instant::now();
    let r = hostile_as_sensor(&s, &["drip", "400"], Duration::from_secs(40));
    assert_eq!(r["closed"], true, "a dripped handshake was kept open: {r}");
    assert!(
        !r["replies"].to_string().contains("Welcome"),
        "a dripped handshake was welcomed: {r}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "cut off late: {:?}",
        t.elapsed()
    );
    assert!(
        s.audit()
            .iter()
            .any(|a| a.decision == AuditDecision::Rejected
                && a.reason == "no handshake within the time limit"),
        "no audit record for the cut-off handshake"
    );
}

#[test]
fn a_reconnect_loop_cannot_flood_the_log() {
    let test = "a_reconnect_loop_cannot_flood_the_log";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]).hostile_sensor());
    let t = Instant::now();
    let r = hostile_as_sensor(&s, &["reconnect", "300"], Duration::from_secs(60));
    let secs = t.elapsed().as_secs() + 1;
    // The one-second tick summarises the last second even with no connection after it.
    std::thread::sleep(Duration::from_millis(2_100));
    // A reconnect can arrive before the previous connection's slot is free: that one is
    // refused (one sensor at a time), the loop goes on.
    let welcomed = r["decisions"]["welcomed"].as_u64().unwrap_or(0);
    assert!(welcomed >= 100, "reconnects not served: {r}");
    let log = s.enforcer_log();
    let connected = log.matches("sensor hostile connected").count() as u64;
    let refused = log.matches("connection refused").count() as u64;
    assert!(connected >= 1, "no connected line at all:\n{log}");
    // At most 5 connected and 20 refusal lines a second (one second more for the
    // boundaries), however many reconnects there were.
    assert!(
        connected <= 5 * (secs + 1) && refused <= 20 * (secs + 1),
        "{connected} connected and {refused} refusal lines in {secs} s for {welcomed} of 300 reconnects:\n{log}"
    );
    assert!(
        log.contains("further sensor connections not logged individually") || welcomed <= 5 * secs,
        "suppressed connections were not summarised:\n{log}"
    );
}
