//! The probes PortSentry never saw (issue #13, breadth): ACK-family (`nmap -sA`, `-sW`,
//! `-sM`), IP-protocol (`-sO`) and SCTP INIT (`-sY`). Each is reported with a sensor line
//! and an audit record, `log_only` by default (BLOCK_TCP=1 does not block them) and
//! `blocked` with BLOCK_OTHER_SCANS=1. Negative: the target's own outgoing TCP connection
//! (its SYN/ACK, ACK and FIN/ACK replies, to ephemeral ports that are watched here) never
//! counts, checked before a canary that must be seen.
//!
//! Every test runs in the kit's scanner/target namespaces, bounded in packets (a port or
//! protocol range given to nmap, no retries) and time, cleaned up by the kit on failure.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::Duration;

use sentry_tests::netns::{SCANNER2_V4, SCANNER_IF, SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, require_tool, AuditDecision, AuditLine, Sentry, Settings, Side};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);
const CANARY: IpAddr = IpAddr::V4(SCANNER2_V4);

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "nft") && require_tool(test, "nmap")
}

/// One kind: the nmap arguments, the audit record's `scan`, and the sensor line's start.
struct Kind {
    nmap: &'static [&'static str],
    scan: &'static str,
    line: &'static str,
}

const ACK: Kind = Kind {
    nmap: &["-sA", "-p", "1-60"],
    scan: "ack",
    line: "attackalert: TCP ACK scan from host: ",
};
const WINDOW: Kind = Kind {
    nmap: &["-sW", "-p", "1-60"],
    scan: "ack",
    line: "attackalert: TCP ACK scan from host: ",
};
const MAIMON: Kind = Kind {
    nmap: &["-sM", "-p", "1-60"],
    scan: "maimon",
    line: "attackalert: TCP FIN/ACK (Maimon) scan from host: ",
};
/// nmap -sO's `-p` is a list of protocol numbers; 1 (ICMP) is in it on purpose: it is never
/// an IP-protocol probe. 6 is not: nmap's probe for it is a TCP ACK to port 80, an ACK-family
/// probe that, reported first, would be the record (and with BLOCK_OTHER_SCANS=1 the block)
/// instead of the IP-protocol one.
const IPPROTO: Kind = Kind {
    nmap: &["-sO", "-p", "1,200-255"],
    scan: "ipproto",
    line: "attackalert: IP protocol scan from host: ",
};
const SCTP: Kind = Kind {
    nmap: &["-sY", "-p", "1-60"],
    scan: "sctp_init",
    line: "attackalert: SCTP INIT scan from host: ",
};

/// nmap from the scanner namespace, bounded like the kit's `Sentry::nmap`, but without
/// its "some port answered" check: against a kernel without SCTP every INIT is answered
/// with an ICMP protocol-unreachable, which nmap calls filtered.
fn nmap(s: &Sentry, args: &[&str]) {
    let target = TARGET_V4.to_string();
    let mut all = vec!["-e", SCANNER_IF];
    all.extend_from_slice(args);
    all.push(&target);
    s.nmap_any(&all);
}

fn records(s: &Sentry, ip: IpAddr, scan: &str, decision: AuditDecision) -> Vec<AuditLine> {
    s.audit_for(ip, decision)
        .into_iter()
        .filter(|r| r.scan.as_deref() == Some(scan))
        .collect()
}

/// Scan with `kind` and check the sensor line and the audit record; with `block`,
/// BLOCK_OTHER_SCANS=1 and the scanner must end up blocked.
fn run(test: &str, kind: &Kind, block: bool) {
    if !ready(test) {
        return;
    }
    let mut settings = Settings::new(&["atcp", "stcp"]);
    if block {
        settings = settings.set("BLOCK_OTHER_SCANS", "1");
    }
    let s = Sentry::start(test, settings);
    nmap(&s, kind.nmap);
    let rec = if block {
        let r = s.wait_blocked(SCANNER);
        assert_eq!(r.scan.as_deref(), Some(kind.scan), "{r:?}\n{}", s.diag());
        r
    } else {
        let r = s.wait_decision(SCANNER, AuditDecision::LogOnly);
        assert_eq!(r.scan.as_deref(), Some(kind.scan), "{r:?}\n{}", s.diag());
        assert!(
            r.reason.contains("BLOCK_OTHER_SCANS=0"),
            "{r:?}\n{}",
            s.diag()
        );
        // BLOCK_TCP=1 and FIREWALL=nftables are set: still nothing is blocked.
        s.assert_not_blocked(SCANNER);
        r
    };
    let line = format!("{}{SCANNER}/{SCANNER}", kind.line);
    assert!(
        s.sensor_log().lines().any(|l| l.contains(&line)),
        "no sensor line `{line}`\n{}",
        s.diag()
    );
    if kind.scan == "ipproto" {
        // The protocols the host uses are never IP-protocol probes: 1 (ICMP) was scanned,
        // and the record's "port" is a protocol number nmap sent.
        let all = records(&s, SCANNER, "ipproto", rec.decision);
        assert!(
            all.iter().all(|r| r.port.is_some_and(|p| p >= 200)),
            "{all:?}"
        );
        assert!(!s.sensor_log().contains("to IP protocol: 1\n"));
    }
}

#[test]
fn ack_scan_is_logged_only() {
    run("ack_scan_is_logged_only", &ACK, false);
}

#[test]
fn ack_scan_is_blocked_with_the_key() {
    run("ack_scan_is_blocked_with_the_key", &ACK, true);
}

#[test]
fn window_scan_is_logged_only() {
    run("window_scan_is_logged_only", &WINDOW, false);
}

#[test]
fn window_scan_is_blocked_with_the_key() {
    run("window_scan_is_blocked_with_the_key", &WINDOW, true);
}

#[test]
fn maimon_scan_is_logged_only() {
    run("maimon_scan_is_logged_only", &MAIMON, false);
}

#[test]
fn maimon_scan_is_blocked_with_the_key() {
    run("maimon_scan_is_blocked_with_the_key", &MAIMON, true);
}

#[test]
fn ip_protocol_scan_is_logged_only() {
    run("ip_protocol_scan_is_logged_only", &IPPROTO, false);
}

#[test]
fn ip_protocol_scan_is_blocked_with_the_key() {
    run("ip_protocol_scan_is_blocked_with_the_key", &IPPROTO, true);
}

/// nmap -sY writes its INITs on a raw socket, so neither side needs the sctp module
/// (this kernel has none: the INITs are answered with ICMP protocol-unreachable); the
/// chain needs conntrack to call an INIT new, which its SCTP tracker does, and without
/// that tracker the generic one does too. So this case never has to be skipped.
#[test]
fn sctp_init_scan_is_logged_only() {
    run("sctp_init_scan_is_logged_only", &SCTP, false);
}

#[test]
fn sctp_init_scan_is_blocked_with_the_key() {
    run("sctp_init_scan_is_blocked_with_the_key", &SCTP, true);
}

/// The target's own outgoing TCP connections: their SYN/ACK, bare ACKs and FIN/ACK come
/// back to ephemeral ports, watched here (ADVANCED_PORTS_TCP=65535), and are the very
/// shapes of -sA and -sM; a connection refused comes back as RST/ACK. None may count,
/// not even as log_only. The canary afterwards (a real ACK probe from another address)
/// shows the sensor had processed everything before it.
#[test]
fn own_outgoing_connections_never_count() {
    let test = "own_outgoing_connections_never_count";
    if !ready(test) || !require_tool(test, "hping3") {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"])
            .set("ADVANCED_PORTS_TCP", "65535")
            .set("BLOCK_OTHER_SCANS", "1"),
    );
    let listener = s.net.in_ns(Side::Scanner, || {
        TcpListener::bind((SCANNER_V4, 8080)).unwrap()
    });
    let server = std::thread::spawn(move || {
        // Answer and close first: the scanner side sends data, then FIN/ACK.
        for _ in 0..3 {
            let (mut c, _) = listener.accept().expect("accept");
            c.write_all(b"hello\n").unwrap();
        }
    });
    s.net.in_ns(Side::Target, || {
        for _ in 0..3 {
            let mut c =
                TcpStream::connect_timeout(&(SCANNER_V4, 8080).into(), Duration::from_secs(5))
                    .expect("outgoing connect");
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            c.read_to_end(&mut buf)
                .expect("read until the server's FIN");
            assert_eq!(buf, b"hello\n");
        }
        let refused =
            TcpStream::connect_timeout(&(SCANNER_V4, 8081).into(), Duration::from_secs(5));
        assert!(
            refused.is_err(),
            "port 8081 on the scanner side should be closed"
        );
    });
    server.join().unwrap();
    // A real ACK probe, from another address, to a watched port.
    let target = TARGET_V4.to_string();
    let canary = CANARY.to_string();
    s.hping(&[
        "-a", &canary, "-A", "-p", "++700", "-c", "3", "-i", "u10000", &target,
    ]);
    let r = s.wait_blocked(CANARY);
    assert_eq!(r.scan.as_deref(), Some("ack"), "{r:?}");
    let about_scanner: Vec<AuditLine> = s
        .audit()
        .into_iter()
        .filter(|r| r.source == Some(SCANNER))
        .collect();
    assert!(
        about_scanner.is_empty(),
        "replies to the target's own connections were reported: {about_scanner:?}\n{}",
        s.diag()
    );
    let needle = format!("host: {SCANNER}/{SCANNER}");
    assert!(
        !s.sensor_log().lines().any(|l| l.contains(&needle)),
        "the sensor reported {SCANNER}\n{}",
        s.diag()
    );
    s.assert_not_blocked(SCANNER);
}
