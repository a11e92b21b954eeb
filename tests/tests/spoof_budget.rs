//! Spoofing cannot switch blocking off: a flood of forged single SYNs spends at most the
//! single-probe half of BLOCK_RATE, and a real many-port scanner right after it is still
//! blocked (the sensor re-reports a refused source with twice the ports, which the
//! enforcer weighs as better evidence). Needs root, hping3 and nft.

use std::net::IpAddr;
use std::time::Duration;

use sentry_tests::netns::{SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, require_tool, wait_until, AuditDecision, Sentry, Settings};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

#[test]
fn forged_single_syns_do_not_starve_a_real_scanner() {
    let test = "forged_single_syns_do_not_starve_a_real_scanner";
    if !require_root(test) || !require_tool(test, "hping3") || !require_tool(test, "nft") {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"])
            .set("SCAN_TRIGGER", "0")
            .set("BLOCK_RATE", "40")
            .set("MAX_BLOCKS", "1000"),
    );
    let target = TARGET_V4.to_string();
    // 400 SYNs from random sources, one each: far more than BLOCK_RATE.
    s.hping(&[
        "--rand-source",
        "-S",
        "-p",
        "++1",
        "-c",
        "400",
        "-i",
        "u1000",
        &target,
    ]);
    wait_until(
        Duration::from_secs(20),
        "the forged SYNs to spend the single-probe share",
        || (s.counter("rate_limited") >= 1).then_some(()),
        || s.diag(),
    );
    let forged_blocks = s.counter("blocked");
    assert!(
        forged_blocks <= 20,
        "forged single SYNs got {forged_blocks} blocks, more than half of BLOCK_RATE=40"
    );
    // The real scanner: SYNs to 200 ports from one address.
    let src = SCANNER.to_string();
    s.hping(&[
        "-a", &src, "-S", "-p", "++500", "-c", "200", "-i", "u2000", &target,
    ]);
    let scanner_trace = || {
        let recs: Vec<String> = s
            .audit()
            .iter()
            .filter(|r| r.source == Some(SCANNER))
            .map(|r| format!("{r:?}"))
            .collect();
        let sensor: Vec<String> = s
            .sensor_log()
            .lines()
            .filter(|l| l.contains(src.as_str()))
            .map(str::to_string)
            .collect();
        format!(
            "audit for {src}:\n{}\nsensor lines:\n{}",
            recs.join("\n"),
            sensor.join("\n")
        )
    };
    wait_until(
        Duration::from_secs(15),
        "the real scanner to be blocked",
        || s.blocked_list().contains(&SCANNER).then_some(()),
        scanner_trace,
    );
    let rec = s.wait_blocked(SCANNER);
    let ports = rec.port.unwrap_or(0);
    assert!(ports >= 500, "block record for the scanner: {rec:?}");
    let refused_then_blocked = s.audit_for(SCANNER, AuditDecision::RateLimited).len();
    assert!(
        refused_then_blocked >= 1,
        "the scanner's first, single-probe report should have met the spent share\n{}",
        s.diag()
    );
}
