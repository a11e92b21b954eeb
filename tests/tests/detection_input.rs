//! Issue #21, the detection input: a process with the sensor's uid that connects before
//! the real sensor gets nothing, is refused and named, and the real sensor that connects
//! after it still detects and blocks a scan (SCAN_TRIGGER=2). Real binaries in private
//! namespaces; needs root, hping3 and nft.

use std::net::IpAddr;
use std::time::Duration;

use sentry_proto::{Mode, Protocol};
use sentry_tests::netns::{SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, require_tool, AuditDecision, Sentry, Settings};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

#[test]
fn an_impostor_of_the_sensor_uid_gets_nothing_and_is_named() {
    let test = "an_impostor_of_the_sensor_uid_gets_nothing_and_is_named";
    if !require_root(test) || !require_tool(test, "hping3") || !require_tool(test, "nft") {
        return;
    }
    let mut s = Sentry::start(
        test,
        Settings::new(&["atcp"])
            .set("SCAN_TRIGGER", "2")
            .without_sensor(),
    );
    // The impostor: the sensor's uid, a well-formed Hello, first on the socket.
    let r = s.hostile(true, &["hello"], Duration::from_secs(20));
    let replies = r["replies"].to_string();
    assert_eq!(r["closed"], true, "the impostor was kept: {r}");
    assert!(
        !replies.contains("Welcome") && !replies.contains("Capture"),
        "the impostor was welcomed or handed the detection input: {r}"
    );
    assert!(replies.contains("NotAuthorized"), "no refusal: {r}");
    // Named: uid, pid and executable, in an adminalert line and an audit record.
    let named = |text: &str| {
        text.contains(&format!("sensor claimant uid {} pid", s.sensor_uid))
            && text.contains("sentry-hostile")
            && text.contains("is not the verified sensor")
    };
    let log = s.enforcer_log();
    assert!(
        log.lines().any(|l| l.contains("adminalert:") && named(l)),
        "the impostor is not named in the log:\n{log}"
    );
    let rec = s
        .audit()
        .into_iter()
        .find(|a| a.decision == AuditDecision::Rejected && named(&a.reason))
        .unwrap_or_else(|| panic!("no audit record names the impostor\n{}", s.diag()));
    assert_eq!(rec.peer.map(|p| p.uid), Some(s.sensor_uid), "{rec:?}");
    assert!(
        s.status().get("sensor").is_none_or(|v| v.is_null()),
        "status says a sensor is connected after the impostor: {}",
        s.status()
    );

    // The real sensor, after it: verified, handed the input, and it detects.
    s.start_sensor();
    let (target, src) = (TARGET_V4.to_string(), SCANNER.to_string());
    s.hping(&[
        "-a", &src, "-S", "-p", "++40", "-c", "6", "-i", "u20000", &target,
    ]);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    assert!(
        s.enforcer_log()
            .lines()
            .any(|l| l.contains("to the verified sensor")),
        "no hand-over to the verified sensor:\n{}",
        s.enforcer_log()
    );
    // A claimant while the real sensor holds the input is refused too, and the sensor
    // stays connected.
    let again = s.hostile(true, &["hello"], Duration::from_secs(20));
    assert_eq!(again["closed"], true, "{again}");
    assert!(!again["replies"].to_string().contains("Welcome"), "{again}");
    let st = s.status();
    assert_eq!(
        st.pointer("/sensor/pid")
            .and_then(serde_json::Value::as_u64),
        Some(u64::from(s.sensor_pid())),
        "{st}"
    );
}

/// Issue #21, the log budget: 1,000 forged sources a second (a few seconds, bounded) plus
/// a real scan: the scanner's `attackalert` line is in the sensor's log, and the
/// suppression summary names sample sources. LOG_RATE_TOTAL is set low so the flood
/// alone could spend it many times over.
#[test]
fn a_forged_flood_does_not_hide_the_scanners_log_line() {
    let test = "a_forged_flood_does_not_hide_the_scanners_log_line";
    if !require_root(test) || !require_tool(test, "hping3") || !require_tool(test, "nft") {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"])
            .set("SCAN_TRIGGER", "2")
            .set("LOG_RATE_TOTAL", "20")
            .set("BLOCK_RATE", "600"),
    );
    let target = TARGET_V4.to_string();
    let src = SCANNER.to_string();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // 3,000 SYNs from random sources over about 3 s.
            s.hping(&[
                "--rand-source",
                "-S",
                "-p",
                "++1",
                "-c",
                "3000",
                "-i",
                "u1000",
                &target,
            ]);
        });
        // The real scan starts once the flood is under way, and spreads over its seconds.
        std::thread::sleep(Duration::from_millis(500));
        s.hping(&[
            "-a", &src, "-S", "-p", "++600", "-c", "20", "-i", "u100000", &target,
        ]);
    });
    let log = s.sensor_log();
    let scanner_line =
        format!("attackalert: TCP SYN/Normal scan from host: {src}/{src} to TCP port: ");
    assert!(
        log.lines().any(|l| l.contains(&scanner_line)),
        "the scanner's attackalert line is missing under the flood:\n{}",
        log.lines()
            .filter(|l| !l.contains("attackalert: TCP SYN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        log.lines()
            .any(|l| l.contains("adminalert: suppressed ") && l.contains("sources include ")),
        "no suppression summary with sample sources:\n{log}"
    );
}
