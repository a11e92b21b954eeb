//! UDP scans (nmap -sU, plain datagrams) in the advanced, stealth and basic UDP modes.

use std::net::{IpAddr, UdpSocket};

use sentry_proto::{Mode, Protocol};
use sentry_tests::netns::{SCANNER_IF, SCANNER_V4, SCANNER_V6, TARGET_V4, TARGET_V6};
use sentry_tests::{require_root, require_tool, Sentry, Settings, Side};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "nmap") && require_tool(test, "nft")
}

#[test]
fn nmap_udp_scan_advanced() {
    let test = "nmap_udp_scan_advanced";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["audp"]));
    let target = TARGET_V4.to_string();
    s.nmap(&["-sU", "-e", SCANNER_IF, "-p", "1-40", &target]);
    s.assert_scan_blocked(SCANNER, Protocol::Udp, "udp", Mode::Audp);
}

#[test]
fn nmap_udp_scan_ipv6_advanced() {
    let test = "nmap_udp_scan_ipv6_advanced";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["audp"]));
    let target = TARGET_V6.to_string();
    s.nmap(&["-6", "-sU", "-e", SCANNER_IF, "-p", "1-40", &target]);
    s.assert_scan_blocked(IpAddr::V6(SCANNER_V6), Protocol::Udp, "udp", Mode::Audp);
}

#[test]
fn nmap_udp_scan_stealth_listed_ports() {
    let test = "nmap_udp_scan_stealth_listed_ports";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["sudp"]).set("UDP_PORTS", "69,161"));
    let target = TARGET_V4.to_string();
    s.nmap(&["-sU", "-e", SCANNER_IF, "-p", "20-30", &target]);
    s.nmap(&[
        "-sU",
        "-S",
        "10.203.0.3",
        "-e",
        SCANNER_IF,
        "-p",
        "161",
        &target,
    ]);
    let second: IpAddr = "10.203.0.3".parse().unwrap();
    let rec = s.assert_scan_blocked(second, Protocol::Udp, "udp", Mode::Sudp);
    assert_eq!(rec.port, Some(161), "{rec:?}");
    s.assert_not_blocked(SCANNER);
}

#[test]
fn basic_udp_mode_datagram() {
    let test = "basic_udp_mode_datagram";
    if !require_root(test) || !require_tool(test, "nft") {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["udp"]).set("UDP_PORTS", "31337,32770"),
    );
    s.net.in_ns(Side::Scanner, || {
        let u = UdpSocket::bind((SCANNER_V4, 0)).expect("bind");
        u.send_to(b"probe", (TARGET_V4, 32770)).expect("send");
    });
    let rec = s.assert_scan_blocked(SCANNER, Protocol::Udp, "udp", Mode::Udp);
    assert_eq!(rec.port, Some(32770), "{rec:?}");
}
