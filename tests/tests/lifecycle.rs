//! A block's whole life against the real pair: expiry (BLOCK_TIMEOUT), `sentryctl unblock`,
//! re-blocking after an unblock, and SIGHUP re-reading the ignore list.

use std::net::IpAddr;
use std::time::Duration;

use sentry_proto::{Mode, Protocol};
use sentry_tests::netns::{Side, SCANNER2_V4, SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, require_tool, wait_until, AuditDecision, Sentry, Settings};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "hping3") && require_tool(test, "nft")
}

fn syns(s: &Sentry, src: IpAddr, first_port: u16) {
    let target = TARGET_V4.to_string();
    let (port, src) = (format!("++{first_port}"), src.to_string());
    s.hping(&[
        "-a", &src, "-S", "-p", &port, "-c", "3", "-i", "u10000", &target,
    ]);
}

/// Keep scanning (new ports each round, bounded) until a second `blocked` record and the
/// set element appear. The sensor reports a source once per SCAN_WINDOW, so this also shows
/// that a returning scanner is blocked again after an unblock or expiry.
fn rescan_until_blocked_again(s: &Sentry) {
    let mut port = 100;
    wait_until(
        Duration::from_secs(20),
        "a new block of the returning scanner",
        || {
            syns(s, SCANNER, port);
            port += 10;
            (s.audit_for(SCANNER, AuditDecision::Blocked).len() >= 2
                && s.nft_elements().contains(&SCANNER))
            .then_some(())
        },
        || s.diag(),
    );
}

/// Gone from the nft set, hosts.deny and `sentryctl blocked`.
fn wait_gone(s: &Sentry, ip: IpAddr, why: &str) {
    wait_until(
        Duration::from_secs(20),
        &format!("{ip} to be unblocked everywhere ({why})"),
        || {
            (!s.nft_elements().contains(&ip)
                && !s.hosts_deny_has(ip)
                && !s.blocked_list().contains(&ip))
            .then_some(())
        },
        || s.diag(),
    );
}

#[test]
fn block_timeout_expires_everywhere() {
    let test = "block_timeout_expires_everywhere";
    if !ready(test) {
        return;
    }
    // SCAN_WINDOW=2: the sensor forgets the source soon after, so it reports it again.
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"])
            .set("BLOCK_TIMEOUT", "3")
            .set("SCAN_WINDOW", "2"),
    );
    syns(&s, SCANNER, 20);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    wait_gone(&s, SCANNER, "BLOCK_TIMEOUT=3");
    s.wait_decision(SCANNER, AuditDecision::Expired);
    assert_eq!(s.status()["active_blocks"], 0);
    assert!(s.counter("expired") >= 1);
    // After expiry the same scanner, scanning again, is blocked afresh.
    rescan_until_blocked_again(&s);
}

#[test]
fn sentryctl_unblock_removes_every_trace_and_allows_a_new_block() {
    let test = "sentryctl_unblock_removes_every_trace_and_allows_a_new_block";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"])
            .set("BLACKHOLE_ROUTE", "1")
            .set("SCAN_WINDOW", "2"),
    );
    syns(&s, SCANNER, 20);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    let routes = || {
        sentry_tests::run_ok(
            s.net
                .command(sentry_tests::Side::Target, "ip")
                .args(["route", "show", "table", "all"]),
            Duration::from_secs(10),
        )
        .stdout
    };
    assert!(
        routes().contains("blackhole 10.203.0.1"),
        "no blackhole route: {}",
        routes()
    );
    let out = s.sentryctl(&["unblock", "10.203.0.1"]);
    assert!(out.success(), "unblock: {out}");
    wait_gone(&s, SCANNER, "sentryctl unblock");
    assert!(
        !routes().contains("blackhole 10.203.0.1"),
        "blackhole route left: {}",
        routes()
    );
    s.wait_decision(SCANNER, AuditDecision::Unblocked);
    assert!(s.counter("unblocked") >= 1);
    // Unblocking something that is not blocked says so (idempotent, nothing changes).
    let out = s.sentryctl(&["unblock", "192.0.2.200"]);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("not blocked"),
        "{out}"
    );
    let out = s.sentryctl(&["unblock", "not-an-address"]);
    assert!(!out.success(), "unblock accepted garbage: {out}");
    // The host comes back after SCAN_WINDOW (the sensor has forgotten it): blocked again,
    // not "already_blocked". (The wait is the configured window, not a guess.)
    std::thread::sleep(Duration::from_secs(3));
    rescan_until_blocked_again(&s);
}

#[test]
fn sighup_rereads_the_ignore_list() {
    let test = "sighup_rereads_the_ignore_list";
    if !ready(test) {
        return;
    }
    let mut s = Sentry::start(test, Settings::new(&["atcp"]));
    s.settings.ignore.push("10.203.0.1".into());
    s.write_config();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(s.enforcer_pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    // The enforcer loads the new list into the detection chain's kernel set, so the
    // ignored host's probes no longer even reach the sensor (which still has the old
    // list). Poll: SIGHUP handling is asynchronous.
    wait_until(
        Duration::from_secs(15),
        "the detection chain's ignore set to hold 10.203.0.1 after SIGHUP",
        || {
            let out = sentry_tests::cmd::run(
                s.net.command(Side::Target, "nft").args([
                    "list",
                    "set",
                    "inet",
                    sentry_tests::sentry::NFT_TABLE,
                    "detect_ign4",
                ]),
                Duration::from_secs(10),
            );
            out.stdout.contains("10.203.0.1").then_some(())
        },
        || s.diag(),
    );
    for port in [20, 30, 40] {
        syns(&s, SCANNER, port);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s.audit_for(SCANNER, AuditDecision::Blocked).is_empty(),
        "ignored host blocked after SIGHUP\n{}",
        s.diag()
    );
    s.assert_not_blocked(SCANNER);
    // Others are still blocked.
    let other = IpAddr::V4(SCANNER2_V4);
    syns(&s, other, 500);
    s.wait_blocked(other);
}

#[test]
fn a_scanner_still_scanning_after_its_block_expired_is_blocked_again() {
    // BLOCK_TIMEOUT lets a (possibly spoofed) block heal; a source that is still scanning
    // when its block expires must be blocked again, not left free because the sensor
    // already reported it once. Scans continue without pause across the expiry.
    let test = "a_scanner_still_scanning_after_its_block_expired_is_blocked_again";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"])
            .set("BLOCK_TIMEOUT", "3")
            .set("SCAN_WINDOW", "60"),
    );
    syns(&s, SCANNER, 20);
    s.wait_blocked(SCANNER);
    let mut port = 100;
    wait_until(
        Duration::from_secs(30),
        "a second block of the scanner that kept scanning past its expiry",
        || {
            syns(&s, SCANNER, port);
            port = if port > 900 { 100 } else { port + 10 };
            std::thread::sleep(Duration::from_millis(200));
            (s.audit_for(SCANNER, AuditDecision::Blocked).len() >= 2
                && s.nft_elements().contains(&SCANNER))
            .then_some(())
        },
        || s.diag(),
    );
}
