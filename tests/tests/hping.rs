//! hping3: crafted flag combinations and spoofed sources.

use std::net::IpAddr;

use sentry_proto::{Mode, Protocol};
use sentry_tests::netns::{SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, require_tool, Sentry, Settings};

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "hping3") && require_tool(test, "nft")
}

fn crafted(test: &str, flags: &[&str], scan: &str) {
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let target = TARGET_V4.to_string();
    let mut args = flags.to_vec();
    args.extend(["-p", "++30", "-c", "5", "-i", "u20000", &target]);
    s.hping(&args);
    let rec = s.assert_scan_blocked(IpAddr::V4(SCANNER_V4), Protocol::Tcp, scan, Mode::Atcp);
    let port = rec.port.unwrap_or(0);
    assert!(
        (30..35).contains(&port),
        "reported port {port} was not probed: {rec:?}"
    );
}

#[test]
fn hping_syn_fin() {
    crafted("hping_syn_fin", &["-S", "-F"], "oddball");
}

#[test]
fn hping_xmas() {
    crafted("hping_xmas", &["-F", "-P", "-U"], "xmas");
}

#[test]
fn hping_null() {
    crafted("hping_null", &[], "null");
}

#[test]
fn hping_urg_only() {
    crafted("hping_urg_only", &["-U"], "oddball");
}

#[test]
fn hping_ack_probes_are_not_scans() {
    // ACK-bearing segments look like replies; they are never reported. The canary from a
    // second address proves the sensor was watching.
    let test = "hping_ack_probes_are_not_scans";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let target = TARGET_V4.to_string();
    s.hping(&["-A", "-p", "++30", "-c", "5", "-i", "u20000", &target]);
    s.hping(&["-R", "-A", "-p", "++40", "-c", "5", "-i", "u20000", &target]);
    s.hping(&[
        "-a",
        "10.203.0.3",
        "-S",
        "-p",
        "++50",
        "-c",
        "3",
        "-i",
        "u20000",
        &target,
    ]);
    s.wait_blocked("10.203.0.3".parse().unwrap());
    s.assert_not_blocked(IpAddr::V4(SCANNER_V4));
}

#[test]
fn hping_spoofed_source_is_blocked_but_never_protected_addresses() {
    let test = "hping_spoofed_source_is_blocked_but_never_protected_addresses";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "audp"]).ignore("10.203.0.50"));
    let target = TARGET_V4.to_string();
    // Addresses that must never be blocked whatever arrives: loopback, unspecified, the
    // target's own address, multicast, broadcast, link-local, and an ignored host.
    let protected = [
        "127.0.0.1",
        "0.0.0.0",
        "10.203.0.2",
        "224.0.0.1",
        "255.255.255.255",
        "169.254.7.7",
        "10.203.0.50",
    ];
    for (i, src) in protected.iter().enumerate() {
        let port = format!("++{}", 100 + i * 10);
        s.hping(&[
            "-a", src, "-S", "-p", &port, "-c", "3", "-i", "u10000", &target,
        ]);
        s.hping(&[
            "-a", src, "--udp", "-p", &port, "-c", "2", "-i", "u10000", &target,
        ]);
    }
    // A spoofed, otherwise unremarkable address is blocked: that is what a spoofed scan
    // achieves, and why BLOCK_TIMEOUT/BLOCK_RATE/MAX_BLOCKS exist.
    let spoofed: IpAddr = "198.51.100.77".parse().unwrap();
    s.hping(&[
        "-a",
        "198.51.100.77",
        "-S",
        "-p",
        "++300",
        "-c",
        "3",
        "-i",
        "u10000",
        &target,
    ]);
    s.assert_scan_blocked(spoofed, Protocol::Tcp, "syn", Mode::Atcp);
    for src in protected {
        s.assert_not_blocked(src.parse().unwrap());
    }
}

#[test]
fn stealth_mode_detects_every_probe_kind() {
    // -stcp: each kind from its own source address to a listed port.
    let test = "stealth_mode_detects_every_probe_kind";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["stcp"]).set("TCP_PORTS", "79,111,143"),
    );
    let target = TARGET_V4.to_string();
    let cases: [(&str, &[&str], &str); 4] = [
        ("10.203.0.1", &["-S"], "syn"),
        ("10.203.0.3", &["-F"], "fin"),
        ("10.203.0.4", &[], "null"),
        ("10.203.0.5", &["-F", "-P", "-U"], "xmas"),
    ];
    for (src, flags, _) in cases {
        let mut args = vec!["-a", src];
        args.extend_from_slice(flags);
        args.extend(["-p", "79", "-c", "2", "-i", "u10000", &target]);
        s.hping(&args);
    }
    for (src, _, scan) in cases {
        let rec = s.assert_scan_blocked(src.parse().unwrap(), Protocol::Tcp, scan, Mode::Stcp);
        assert_eq!(rec.port, Some(79), "{rec:?}");
    }
}

#[test]
fn ip_options_are_detected_and_logged() {
    // hping3 --rroute adds the record-route IP option: still parsed, blocked, and logged
    // with PortSentry's "has IP options set" line.
    let test = "ip_options_are_detected_and_logged";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let target = TARGET_V4.to_string();
    s.hping(&[
        "-S", "--rroute", "-p", "++30", "-c", "3", "-i", "u10000", &target,
    ]);
    s.assert_scan_blocked(IpAddr::V4(SCANNER_V4), Protocol::Tcp, "syn", Mode::Atcp);
    let log = s.sensor_log();
    assert!(
        log.lines()
            .any(|l| l.contains("10.203.0.1") && l.contains("has IP options set")),
        "no IP-options line:\n{log}"
    );
}
