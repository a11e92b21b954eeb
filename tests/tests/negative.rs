//! What must NOT be blocked: ignored hosts, legitimate clients of real services, replies to
//! the target's own connections, BLOCK_TCP=0 / =2, and sources below SCAN_TRIGGER.
//!
//! Every negative check is ordered after a positive "canary" from another address: once the
//! canary is blocked, the sensor has processed the earlier traffic, so the absence of a
//! block is meaningful and no blind sleep is needed.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sentry_proto::{Mode, Protocol};
use sentry_tests::netns::{SCANNER2_V4, SCANNER4_V4, SCANNER_IF, SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, require_tool, AuditDecision, Sentry, Settings, Side};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);
const CANARY: IpAddr = IpAddr::V4(SCANNER2_V4);

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "hping3") && require_tool(test, "nft")
}

/// SYNs from `src` to a few ports; returns once sent.
fn syns(s: &Sentry, src: IpAddr, first_port: u16, count: u32) {
    let target = TARGET_V4.to_string();
    let port = format!("++{first_port}");
    let count = count.to_string();
    let src = src.to_string();
    s.hping(&[
        "-a", &src, "-S", "-p", &port, "-c", &count, "-i", "u10000", &target,
    ]);
}

fn canary(s: &Sentry, port: u16) {
    syns(s, CANARY, port, 3);
    s.wait_blocked(CANARY);
}

#[test]
fn ignored_hosts_and_networks_are_never_blocked() {
    let test = "ignored_hosts_and_networks_are_never_blocked";
    if !ready(test) || !require_tool(test, "nmap") {
        return;
    }
    // An unmasked prefix (PortSentry mishandled these): covers 10.203.0.0-3.
    let s = Sentry::start(
        test,
        Settings::new(&["atcp", "audp"]).ignore("10.203.0.1/30"),
    );
    let target = TARGET_V4.to_string();
    s.nmap(&["-sS", "-e", SCANNER_IF, "-p", "1-100", &target]);
    s.nmap(&["-sU", "-e", SCANNER_IF, "-p", "1-20", &target]);
    syns(&s, CANARY, 200, 5); // 10.203.0.3, inside the ignored /30 too
    let outside = IpAddr::V4(SCANNER4_V4); // 10.203.0.5
    syns(&s, outside, 300, 3);
    s.wait_blocked(outside);
    s.assert_not_blocked(SCANNER);
    s.assert_not_blocked(CANARY);
}

/// A real TCP service in the target namespace; answers every connection with "hello".
fn serve(s: &Sentry, port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    let l: TcpListener = s.net.in_ns(Side::Target, move || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind service")
    });
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut served = 0;
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.write_all(b"hello\n");
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        served
    })
}

fn client(s: &Sentry, port: u16) {
    s.net.in_ns(Side::Scanner, move || {
        let addr = SocketAddr::from((TARGET_V4, port));
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("legitimate client connects");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 6];
        c.read_exact(&mut buf).expect("service answers");
        assert_eq!(&buf, b"hello\n");
    });
}

#[test]
fn legitimate_clients_of_real_services_are_not_scans() {
    let test = "legitimate_clients_of_real_services_are_not_scans";
    if !ready(test) {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut s = Sentry::start(test, Settings::new(&["atcp", "audp"]).without_sensor());
    // Services started before the sensor...
    let before = serve(&s, 80, stop.clone());
    let udp = s.net.in_ns(Side::Target, || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 53)).expect("bind udp service")
    });
    s.start_sensor();
    // ...and one started after it.
    let after = serve(&s, 443, stop.clone());
    for _ in 0..5 {
        client(&s, 80);
        client(&s, 443);
    }
    s.net.in_ns(Side::Scanner, || {
        let u = UdpSocket::bind((SCANNER_V4, 0)).unwrap();
        for _ in 0..5 {
            u.send_to(b"query", (TARGET_V4, 53)).unwrap();
        }
    });
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    udp.recv_from(&mut buf).expect("udp service got the query");
    canary(&s, 600);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(before.join().unwrap(), 5);
    assert_eq!(after.join().unwrap(), 5);
    s.assert_not_blocked(SCANNER);
}

#[test]
fn replies_to_own_outgoing_connections_are_not_scans() {
    let test = "replies_to_own_outgoing_connections_are_not_scans";
    if !ready(test) {
        return;
    }
    // Watch every port, so that replies to ephemeral ports would count if misclassified.
    let s = Sentry::start(
        test,
        Settings::new(&["atcp", "audp"])
            .set("ADVANCED_PORTS_TCP", "65535")
            .set("ADVANCED_PORTS_UDP", "65535"),
    );
    // Servers on the scanner side: a TCP service and a UDP echo.
    let tcp = s.net.in_ns(Side::Scanner, || {
        TcpListener::bind((SCANNER_V4, 8080)).unwrap()
    });
    let echo = s.net.in_ns(Side::Scanner, || {
        UdpSocket::bind((SCANNER_V4, 5300)).unwrap()
    });
    echo.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 3 {
            let Ok((len, from)) = echo.recv_from(&mut buf) else {
                break;
            };
            let _ = echo.send_to(&buf[..len], from);
            n += 1;
        }
        n
    });
    s.net.in_ns(Side::Target, move || {
        // TCP: SYN-ACK replies (to ephemeral ports), and a RST-ACK from a closed port.
        for _ in 0..3 {
            let c = TcpStream::connect_timeout(&(SCANNER_V4, 8080).into(), Duration::from_secs(5))
                .expect("outgoing connect");
            drop(c);
        }
        let refused =
            TcpStream::connect_timeout(&(SCANNER_V4, 8081).into(), Duration::from_secs(5));
        assert!(
            refused.is_err(),
            "port 8081 on the scanner side should be closed"
        );
        // UDP: the echo's replies arrive at our ephemeral port.
        let u = UdpSocket::bind((TARGET_V4, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            u.send_to(b"ping", (SCANNER_V4, 5300)).unwrap();
            u.recv_from(&mut buf).expect("echo reply");
        }
    });
    assert_eq!(echo_thread.join().unwrap(), 3);
    drop(tcp);
    canary(&s, 700);
    s.assert_not_blocked(SCANNER);
}

#[test]
fn block_tcp_0_logs_only() {
    let test = "block_tcp_0_logs_only";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]).set("BLOCK_TCP", "0"));
    syns(&s, SCANNER, 20, 5);
    let rec = s.wait_decision(SCANNER, AuditDecision::LogOnly);
    assert_eq!(rec.protocol, Some(Protocol::Tcp), "{rec:?}");
    s.assert_not_blocked(SCANNER);
    assert!(s.counter("log_only") >= 1);
    assert_eq!(s.counter("blocked"), 0);
    let blocked_file =
        std::fs::read_to_string(s.state_dir.join("sentry.blocked")).unwrap_or_default();
    assert!(
        !blocked_file.contains("10.203.0.1"),
        "BLOCK_TCP=0 recorded the host as blocked: {blocked_file}"
    );
}

#[test]
fn block_tcp_2_runs_the_command_only() {
    let test = "block_tcp_2_runs_the_command_only";
    if !ready(test) {
        return;
    }
    let marker_dir = tempfile::tempdir().unwrap();
    let template = format!(
        "/usr/bin/touch {}/ran-$TARGET$-$PORT$-$MODE$",
        marker_dir.path().display()
    );
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"])
            .set("BLOCK_TCP", "2")
            .set("KILL_RUN_CMD", &template),
    );
    syns(&s, SCANNER, 20, 1);
    let rec = s.wait_decision(SCANNER, AuditDecision::CommandOnly);
    assert!(!rec.actions.is_empty(), "{rec:?}");
    let marker = marker_dir.path().join("ran-10.203.0.1-20-tcp");
    assert!(
        marker.exists(),
        "KILL_RUN_CMD did not run with the substituted argv: {rec:?}\n{}",
        s.diag()
    );
    s.assert_not_blocked(SCANNER);
}

#[test]
fn kill_route_command_runs_as_argv() {
    // PortSentry's KILL_ROUTE, here a blackhole route inside the target namespace.
    let test = "kill_route_command_runs_as_argv";
    if !ready(test) {
        return;
    }
    let ip = sentry_tests::which("ip").expect("ip");
    let template = format!("{} route add blackhole $TARGET$", ip.display());
    let s = Sentry::start(test, Settings::new(&["atcp"]).set("KILL_ROUTE", &template));
    syns(&s, SCANNER, 20, 2);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    let out = sentry_tests::run_ok(
        s.net
            .command(Side::Target, "ip")
            .args(["route", "show", "type", "blackhole"]),
        Duration::from_secs(10),
    );
    assert!(
        out.stdout.contains("10.203.0.1"),
        "no blackhole route: {out}"
    );
}

#[test]
fn scan_trigger_needs_more_ports() {
    let test = "scan_trigger_needs_more_ports";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]).set("SCAN_TRIGGER", "3"));
    // 3 distinct ports (repeated): below SCAN_TRIGGER+1 = 4.
    syns(&s, SCANNER, 40, 3);
    syns(&s, SCANNER, 40, 3);
    syns(&s, CANARY, 600, 6);
    s.wait_blocked(CANARY);
    s.assert_not_blocked(SCANNER);
    // The fourth distinct port crosses the trigger.
    syns(&s, SCANNER, 50, 1);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
}
