//! A source unblocked with `sentryctl unblock` that scans again is blocked again at once:
//! the enforcer tells the sensor the block ended, so the sensor's latch (which stops
//! duplicate requests of a source still scanning) does not hold the new report back.
//! Needs root, hping3 and nft.

use std::net::IpAddr;
use std::time::Duration;

use sentry_tests::netns::{SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, require_tool, wait_until, AuditDecision, Sentry, Settings};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

fn syns(s: &Sentry, first_port: u16) {
    let (port, src, target) = (
        format!("++{first_port}"),
        SCANNER.to_string(),
        TARGET_V4.to_string(),
    );
    s.hping(&[
        "-a", &src, "-S", "-p", &port, "-c", "3", "-i", "u10000", &target,
    ]);
}

#[test]
fn an_unblocked_scanner_that_scans_again_is_blocked_again_at_once() {
    let test = "an_unblocked_scanner_that_scans_again_is_blocked_again_at_once";
    if !require_root(test) || !require_tool(test, "hping3") || !require_tool(test, "nft") {
        return;
    }
    // The default latch is min(SCAN_WINDOW, 5 s); a long window makes it the full 5 s.
    let s = Sentry::start(test, Settings::new(&["atcp"]).set("SCAN_WINDOW", "60"));
    syns(&s, 20);
    s.wait_blocked(SCANNER);
    let out = s.sentryctl(&["unblock", &SCANNER.to_string()]);
    assert!(out.success(), "{out}");
    assert!(!s.nft_elements().contains(&SCANNER));
    // Scanning again right away (well inside the 5 s latch) blocks it again.
    syns(&s, 40);
    wait_until(
        Duration::from_secs(3),
        "the scanner to be blocked again within 3 s of its new probes",
        || s.nft_elements().contains(&SCANNER).then_some(()),
        || s.diag(),
    );
    assert_eq!(
        s.audit_for(SCANNER, AuditDecision::Blocked).len(),
        2,
        "{}",
        s.diag()
    );
}
