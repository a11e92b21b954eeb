//! Migration: Debian's own portsentry.conf, unchanged except for file locations, drives the
//! real pair with PortSentry's behaviour (log-only by default; blocking through its
//! KILL_ROUTE and KILL_HOSTS_DENY when BLOCK_TCP is turned on).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use sentry_proto::Protocol;
use sentry_tests::netns::{SCANNER_IF, SCANNER_V4, SCANNER_V6, TARGET_V4, TARGET_V6};
use sentry_tests::{
    require_root, require_tool, run_ok, ActionKind, ActionStatus, AuditDecision, Sentry, Settings,
    Side,
};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

fn debian_conf() -> String {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/fixtures/debian-package.conf");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "nmap") && require_tool(test, "nft")
}

#[test]
fn debian_portsentry_conf_logs_only_like_portsentry() {
    let test = "debian_portsentry_conf_logs_only_like_portsentry";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::portsentry(&debian_conf(), &["atcp", "audp"]),
    );
    let target = TARGET_V4.to_string();
    s.nmap(&["-sS", "-e", SCANNER_IF, "-p", "1-100", &target]);
    let rec = s.wait_decision(SCANNER, AuditDecision::LogOnly);
    assert_eq!(rec.protocol, Some(Protocol::Tcp), "{rec:?}");
    s.assert_not_blocked(SCANNER);
    // PortSentry's own alert line, so existing log watchers keep matching.
    let log = s.sensor_log();
    assert!(
        log.lines().any(|l| l.contains("attackalert:")
            && l.contains("scan from host: 10.203.0.1/10.203.0.1 to TCP port:")),
        "no PortSentry-format alert line:\n{log}"
    );
}

#[test]
fn debian_portsentry_conf_blocks_with_its_kill_route() {
    let test = "debian_portsentry_conf_blocks_with_its_kill_route";
    if !ready(test) || !require_tool(test, "route") {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::portsentry(&debian_conf(), &["atcp"]).set("BLOCK_TCP", "1"),
    );
    let target = TARGET_V4.to_string();
    s.nmap(&["-sS", "-e", SCANNER_IF, "-p", "1-100", &target]);
    // No FIREWALL key in Debian's file: the native set first (the kernel drops the
    // scanner within microseconds), then its KILL_ROUTE and KILL_HOSTS_DENY.
    let rec = s.wait_block_actions(SCANNER);
    assert_eq!(
        rec.action_kinds().first(),
        Some(&ActionKind::Nftables),
        "the set is not first: {rec:?}"
    );
    assert!(s.nft_has(SCANNER), "not in the nftables set\n{}", s.diag());
    assert!(rec.all_ok(), "{rec:?}");
    assert!(
        s.hosts_deny_has(SCANNER),
        "no hosts.deny line\n{}",
        s.diag()
    );
    assert!(
        rec.action_kinds().contains(&ActionKind::KillRoute),
        "KILL_ROUTE did not run: {rec:?}"
    );
    let out = run_ok(
        s.net
            .command(Side::Target, "ip")
            .args(["route", "show", "table", "all"]),
        Duration::from_secs(10),
    );
    assert!(
        out.stdout.lines().any(|l| l.contains("10.203.0.1")
            && (l.contains("unreachable") || l.contains("prohibit") || l.contains("blackhole"))),
        "no reject route for the scanner: {out}"
    );
    let history = std::fs::read_to_string(s.state_dir.join("sentry.history")).unwrap_or_default();
    assert!(
        history
            .lines()
            .any(|l| l.contains("Host: 10.203.0.1/10.203.0.1 Port:") && l.ends_with("TCP Blocked")),
        "no PortSentry-format history line:\n{history}"
    );
}

/// Debian's file unchanged but for BLOCK_TCP: its KILL_ROUTE (`route add -host $TARGET$
/// reject`) cannot take an IPv6 address, and the IPv6 scanner is blocked all the same, in
/// the native set: the decision is `blocked`, the failed template stays in the record with
/// its error and counts in `errors`.
#[test]
fn debian_portsentry_conf_blocks_an_ipv6_scanner_natively() {
    let test = "debian_portsentry_conf_blocks_an_ipv6_scanner_natively";
    if !ready(test) || !require_tool(test, "route") {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::portsentry(&debian_conf(), &["atcp"]).set("BLOCK_TCP", "1"),
    );
    let scanner = IpAddr::V6(SCANNER_V6);
    let target = TARGET_V6.to_string();
    s.nmap(&["-6", "-sS", "-e", SCANNER_IF, "-p", "1-100", &target]);
    let rec = s.wait_block_actions(scanner);
    assert!(s.nft_has(scanner), "not in the nftables set\n{}", s.diag());
    let nft = rec.actions.first().expect("actions");
    assert_eq!(
        (nft.action, nft.status),
        (ActionKind::Nftables, ActionStatus::Ok),
        "{rec:?}"
    );
    let route = rec
        .actions
        .iter()
        .find(|a| a.action == ActionKind::KillRoute)
        .unwrap_or_else(|| panic!("KILL_ROUTE did not run: {rec:?}"));
    assert_eq!(route.status, ActionStatus::Error, "{rec:?}");
    assert!(s.counter("errors") >= 1, "{}", s.diag());
    assert_eq!(s.counter("failed"), 0, "{}", s.diag());
}
