//! Real nmap scans against the real sensor + enforcer pair: every TCP scan kind is detected,
//! blocked in the target's nftables set, written to hosts.deny and audited.

use std::io::Read;
use std::net::{IpAddr, TcpStream};
use std::time::Duration;

use sentry_proto::{Mode, Protocol};
use sentry_tests::netns::{SCANNER_IF, SCANNER_V4, SCANNER_V6, TARGET_V4, TARGET_V6};
use sentry_tests::{require_root, require_tool, Sentry, Settings, Side};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "nmap") && require_tool(test, "nft")
}

fn advanced_scan(test: &str, nmap_args: &[&str], scan: &str) {
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let target = TARGET_V4.to_string();
    let mut args = nmap_args.to_vec();
    args.extend(["-e", SCANNER_IF, "-p", "1-200", &target]);
    s.nmap(&args);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, scan, Mode::Atcp);
}

#[test]
fn nmap_syn_scan_advanced() {
    advanced_scan("nmap_syn_scan_advanced", &["-sS"], "syn");
}

#[test]
fn nmap_connect_scan_advanced() {
    // A connect scan's first packet is an ordinary SYN.
    advanced_scan("nmap_connect_scan_advanced", &["-sT"], "syn");
}

#[test]
fn nmap_fin_scan_advanced() {
    advanced_scan("nmap_fin_scan_advanced", &["-sF"], "fin");
}

#[test]
fn nmap_null_scan_advanced() {
    advanced_scan("nmap_null_scan_advanced", &["-sN"], "null");
}

#[test]
fn nmap_xmas_scan_advanced() {
    advanced_scan("nmap_xmas_scan_advanced", &["-sX"], "xmas");
}

#[test]
fn nmap_scanflags_urg_psh_is_oddball() {
    advanced_scan(
        "nmap_scanflags_urg_psh_is_oddball",
        &["--scanflags", "URGPSH"],
        "oddball",
    );
}

#[test]
fn nmap_fragmented_syn_scan() {
    // -f splits the TCP header over 8-byte IP fragments: the first fragment carries the
    // ports but not the flags (they are at offset 13), so any probe kind is acceptable;
    // non-first fragments must not be parsed as TCP.
    advanced_scan("nmap_fragmented_syn_scan", &["-sS", "-f"], "*");
}

#[test]
fn nmap_ipv6_syn_scan() {
    let test = "nmap_ipv6_syn_scan";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let target = TARGET_V6.to_string();
    s.nmap(&["-6", "-sS", "-e", SCANNER_IF, "-p", "1-200", &target]);
    let ip = IpAddr::V6(SCANNER_V6);
    s.assert_scan_blocked(ip, Protocol::Tcp, "syn", Mode::Atcp);
    // The IPv6 hosts.deny form is bracketed.
    assert!(s.hosts_deny_text().contains(&format!("[{SCANNER_V6}]")));
}

#[test]
fn nmap_slow_scan_with_trigger() {
    // A slow scan (one probe every 300 ms) still crosses SCAN_TRIGGER inside the window.
    let test = "nmap_slow_scan_with_trigger";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]).set("SCAN_TRIGGER", "3"));
    let target = TARGET_V4.to_string();
    s.nmap(&[
        "-sS",
        "--scan-delay",
        "300ms",
        "-e",
        SCANNER_IF,
        "-p",
        "20-27",
        &target,
    ]);
    let rec = s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    let port = rec.port.unwrap_or(0);
    assert!(
        (20..=27).contains(&port),
        "reported port {port} was not probed: {rec:?}"
    );
}

#[test]
fn nmap_stealth_mode_watches_only_listed_ports() {
    let test = "nmap_stealth_mode_watches_only_listed_ports";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["stcp"]).set("TCP_PORTS", "79,111,143"),
    );
    let target = TARGET_V4.to_string();
    // Unlisted ports first: not a hit in stealth mode.
    s.nmap(&["-sS", "-e", SCANNER_IF, "-p", "20-30", &target]);
    // Then a listed one, from a second address: once it is blocked the sensor has
    // certainly processed the earlier probes too.
    s.nmap(&[
        "-sS",
        "-S",
        "10.203.0.3",
        "-e",
        SCANNER_IF,
        "-p",
        "79",
        &target,
    ]);
    let second: IpAddr = "10.203.0.3".parse().unwrap();
    let rec = s.assert_scan_blocked(second, Protocol::Tcp, "syn", Mode::Stcp);
    assert_eq!(rec.port, Some(79), "{rec:?}");
    s.assert_not_blocked(SCANNER);
}

#[test]
fn basic_tcp_mode_connect_with_banner() {
    let test = "basic_tcp_mode_connect_with_banner";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["tcp"])
            .set("TCP_PORTS", "12345,31337")
            .set("PORT_BANNER", "** UNAUTHORIZED ACCESS PROHIBITED **"),
    );
    let banner = s.net.in_ns(Side::Scanner, || {
        let c = TcpStream::connect_timeout(&(TARGET_V4, 31337).into(), Duration::from_secs(5))
            .expect("connect to the basic-mode port");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = c.take(4096).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    assert!(
        banner.contains("UNAUTHORIZED ACCESS PROHIBITED"),
        "banner not sent: {banner:?}"
    );
    let rec = s.assert_scan_blocked(SCANNER, Protocol::Tcp, "connect", Mode::Tcp);
    assert_eq!(rec.port, Some(31337), "{rec:?}");
}
