//! RESTART_GRACE (issue #21): a service that restarts is not a scan target. A TCP and a UDP
//! service in the target namespace stop, stay down for 0.6 s and start again while a
//! client keeps retrying them; under the shipped policy (the kernel's first hit,
//! SCAN_TRIGGER=0) the client is not blocked, and a probe of a port never served, in the
//! same run, is still blocked at the first packet with nothing answered. With
//! RESTART_GRACE=0 the same client is blocked: the test does exercise the gap.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentry_tests::netns::{Side, SCANNER2_V4, SCANNER_V4, TARGET_V4};
use sentry_tests::sentry::DETECT_TIMEOUT;
use sentry_tests::sentry::NFT_TABLE;
use sentry_tests::Settings;
use sentry_tests::{require_root, require_tool, run_ok, wait_until, AuditDecision, Sentry};

/// Advanced-mode ports (below ADVANCED_PORTS_*, not excluded, not in the stealth lists).
const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 500;
const GAP: Duration = Duration::from_millis(600);
const WAIT: Duration = Duration::from_secs(15);

fn nft(s: &Sentry, args: &[&str]) -> String {
    run_ok(
        s.net.command(Side::Target, "nft").args(args),
        Duration::from_secs(10),
    )
    .stdout
}

/// Count what the target sends to SCANNER2 (the never-served probe's source).
fn count_answers(s: &Sentry) {
    let path = s.path("answers.nft");
    std::fs::write(
        &path,
        format!(
            "table inet answers {{}}\ndelete table inet answers\n\
             table inet answers {{\n counter sent {{}}\n chain out {{\n  type filter hook output priority 0; policy accept;\n  ip daddr {SCANNER2_V4} meta l4proto {{ tcp, udp, icmp }} counter name sent\n }}\n}}\n"
        ),
    )
    .unwrap();
    run_ok(
        s.net.command(Side::Target, "nft").arg("-f").arg(&path),
        Duration::from_secs(10),
    );
}

fn answers(s: &Sentry) -> u64 {
    let out = nft(s, &["-j", "list", "counter", "inet", "answers", "sent"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft -j");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|i| i.pointer("/counter/packets").and_then(|p| p.as_u64()))
        .expect("the answers counter")
}

/// A TCP and a UDP service in the target namespace, each up, down for [`GAP`], up again.
/// Returns their threads, which end once both have restarted (their second run goes on
/// in threads of their own for `up_after`).
fn restart_services(
    s: &Sentry,
    up_before: Duration,
    up_after: Duration,
) -> [std::thread::JoinHandle<()>; 2] {
    let tcp = s.net.spawn_in_ns(Side::Target, move || {
        let serve = |how_long: Duration| {
            let l = TcpListener::bind(("0.0.0.0", TCP_PORT)).expect("bind tcp");
            l.set_nonblocking(true).unwrap();
            let end = Instant::now() + how_long;
            while Instant::now() < end {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(b"hi\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        };
        serve(up_before);
        std::thread::sleep(GAP);
        serve(up_after);
    });
    let udp = s.net.spawn_in_ns(Side::Target, move || {
        let serve = |how_long: Duration| {
            let u = UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("bind udp");
            u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let end = Instant::now() + how_long;
            let mut buf = [0u8; 64];
            while Instant::now() < end {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        };
        serve(up_before);
        std::thread::sleep(GAP);
        serve(up_after);
    });
    [tcp, udp]
}

/// What the retrying client got: TCP connections and UDP echoes, before and after the
/// gap.
#[derive(Debug, Default)]
struct Client {
    tcp_ok: AtomicU64,
    tcp_failed: AtomicU64,
    udp_ok: AtomicU64,
    udp_sent: AtomicU64,
    /// Successes after `late` was set (the services are back).
    late_tcp_ok: AtomicU64,
    late_udp_ok: AtomicU64,
    late: AtomicBool,
    stop: AtomicBool,
}

/// From SCANNER_V4: a TCP connect and a UDP datagram every 50 ms until `stop`.
fn client(s: &Sentry, c: Arc<Client>) -> std::thread::JoinHandle<()> {
    s.net.spawn_in_ns(Side::Scanner, move || {
        let tcp_to = SocketAddr::new(IpAddr::V4(TARGET_V4), TCP_PORT);
        let udp = UdpSocket::bind((SCANNER_V4, 0)).expect("client udp");
        udp.set_read_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        let mut buf = [0u8; 64];
        while !c.stop.load(Ordering::SeqCst) {
            let late = c.late.load(Ordering::SeqCst);
            match TcpStream::connect_timeout(&tcp_to, Duration::from_millis(200)) {
                Ok(mut t) => {
                    let _ = t.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = t.read(&mut buf);
                    c.tcp_ok.fetch_add(1, Ordering::SeqCst);
                    if late {
                        c.late_tcp_ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(_) => {
                    c.tcp_failed.fetch_add(1, Ordering::SeqCst);
                }
            }
            if udp.send_to(b"ping", (TARGET_V4, UDP_PORT)).is_ok() {
                c.udp_sent.fetch_add(1, Ordering::SeqCst);
            }
            if udp.recv_from(&mut buf).is_ok() {
                c.udp_ok.fetch_add(1, Ordering::SeqCst);
                if late {
                    c.late_udp_ok.fetch_add(1, Ordering::SeqCst);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Both services are in the kernel's served sets (the enforcer polled them).
fn wait_served(s: &Sentry) {
    wait_until(
        WAIT,
        "the services in detect_served",
        || {
            let l = nft(s, &["list", "set", "inet", NFT_TABLE, "detect_served"]);
            (l.contains(&format!("tcp . {TCP_PORT}")) && l.contains(&format!("udp . {UDP_PORT}")))
                .then_some(())
        },
        || s.diag(),
    );
}

/// The restart with a client retrying through it; returns the client's tally.
fn restart_with_client(s: &Sentry, served_first: bool) -> Arc<Client> {
    let (up, after) = (Duration::from_millis(1500), Duration::from_millis(2500));
    let c = Arc::new(Client::default());
    let t0 = Instant::now();
    let services = restart_services(s, up, after);
    // The client starts once the services are served (and, with the grace, once the
    // kernel knows them), so its first tries succeed.
    std::thread::sleep(Duration::from_millis(300));
    if served_first {
        wait_served(s);
    }
    let cl = client(s, Arc::clone(&c));
    // Through the gap, then 1.2 s of the restarted services.
    let back = t0 + up + GAP + Duration::from_millis(300);
    std::thread::sleep(back.saturating_duration_since(Instant::now()));
    c.late.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1200));
    c.stop.store(true, Ordering::SeqCst);
    cl.join().unwrap();
    for h in services {
        h.join()
            .unwrap_or_else(|_| panic!("a service failed\n{}", s.diag()));
    }
    c
}

#[test]
fn a_restarted_service_is_not_a_scan_target() {
    let test = "a_restarted_service_is_not_a_scan_target";
    if !(require_root(test) && require_tool(test, "hping3")) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "stcp", "audp", "sudp"]));
    count_answers(&s);
    let c = restart_with_client(&s, true);
    let scanner = IpAddr::V4(SCANNER_V4);
    assert!(
        c.tcp_failed.load(Ordering::SeqCst) > 0,
        "the client never hit the gap: {c:?}"
    );
    assert!(
        c.late_tcp_ok.load(Ordering::SeqCst) > 0 && c.late_udp_ok.load(Ordering::SeqCst) > 0,
        "the client lost the restarted services: {c:?}\n{}",
        s.diag()
    );
    let hits = nft(&s, &["list", "map", "inet", NFT_TABLE, "hit4"]);
    assert!(
        !hits.contains(&SCANNER_V4.to_string()),
        "{hits}\n{}",
        s.diag()
    );
    s.assert_not_blocked(scanner);
    // A port never served, in the same run: blocked at the first probe, nothing answered.
    s.hping(&[
        "-a",
        &SCANNER2_V4.to_string(),
        "-S",
        "-p",
        "23",
        "-c",
        "1",
        &TARGET_V4.to_string(),
    ]);
    let hits = nft(&s, &["list", "map", "inet", NFT_TABLE, "hit4"]);
    assert!(
        hits.contains(&SCANNER2_V4.to_string()),
        "{hits}\n{}",
        s.diag()
    );
    s.wait_decision_within(
        IpAddr::V4(SCANNER2_V4),
        AuditDecision::Blocked,
        DETECT_TIMEOUT,
    );
    assert_eq!(
        answers(&s),
        0,
        "the never-served port answered\n{}",
        s.diag()
    );
    // And the client still is not blocked.
    s.assert_not_blocked(scanner);
}

/// The control: without the grace the same retrying client is blocked in the gap.
#[test]
fn without_the_grace_the_gap_blocks_the_client() {
    let test = "without_the_grace_the_gap_blocks_the_client";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["atcp", "stcp", "audp", "sudp"]).set("RESTART_GRACE", "0"),
    );
    let c = restart_with_client(&s, false);
    assert!(c.tcp_failed.load(Ordering::SeqCst) > 0, "{c:?}");
    s.wait_decision_within(IpAddr::V4(SCANNER_V4), AuditDecision::Blocked, WAIT);
}
