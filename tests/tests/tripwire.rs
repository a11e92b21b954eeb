//! The in-kernel first hit (issue #13): with SCAN_TRIGGER=0 and BLOCK_TCP=1 the detection
//! chain puts a probing source into the kernel's `hit4`/`hit6` map and drops the probe, so
//! no port answers at all; the enforcer still decides (it records the block, or takes a
//! refused one back) and audits a block the kernel made while the sensor was down.
//!
//! Every test counts what the target sends back with its own nftables counter in the
//! target namespace, so "nothing answered" is measured, not inferred from nmap's output.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use sentry_tests::netns::{Side, SCANNER2_V4, SCANNER_IF, SCANNER_V4, TARGET_V4};
use sentry_tests::sentry::NFT_TABLE;
use sentry_tests::{require_root, require_tool, run, run_ok, wait_until, AuditDecision, Sentry};
use sentry_tests::{AuditLine, Settings};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);
const WAIT: Duration = Duration::from_secs(15);

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "nmap") && require_tool(test, "hping3")
}

fn nft(s: &Sentry, args: &[&str]) -> String {
    run_ok(
        s.net.command(Side::Target, "nft").args(args),
        Duration::from_secs(10),
    )
    .stdout
}

/// The sources in the kernel's first-hit map `map` (`hit4`/`hit6`).
fn hits(s: &Sentry, map: &str) -> String {
    nft(s, &["list", "map", "inet", NFT_TABLE, map])
}

/// Count every TCP segment and ICMP message the target sends to the scanners' IPv4
/// addresses: what a scanner would see as an answer (IPv6's own neighbour discovery and
/// MLD chatter would count too, so IPv6 is left out).
fn count_answers(s: &Sentry) {
    s.count_answers(&["oifname != \"lo\" ip daddr 10.203.0.0/16 meta l4proto { tcp, icmp }"]);
}

fn answers(s: &Sentry) -> u64 {
    s.answers()
}

/// One SYN from `src` to `port`.
fn syn(s: &Sentry, src: Ipv4Addr, port: u16) {
    s.hping(&[
        "-a",
        &src.to_string(),
        "-S",
        "-p",
        &port.to_string(),
        "-c",
        "1",
        &TARGET_V4.to_string(),
    ]);
}

fn kernel_peer(r: &AuditLine) -> bool {
    r.peer.is_some_and(|p| p.uid == 0 && p.pid == 0)
}

/// nmap -sS over 200 ports: not one answer leaves the target, the kernel's map holds the
/// scanner, and the enforcer recorded the block in its own set.
#[test]
fn no_port_answers_a_first_probe_block() {
    let test = "no_port_answers_a_first_probe_block";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "stcp"]));
    count_answers(&s);
    let target = TARGET_V4.to_string();
    // 113 and 139 are ADVANCED_EXCLUDE_TCP: the host answers them by design (nmap sends
    // its popular ports first, so one of them may be the first probe); every other port
    // is a tripwire.
    s.nmap(&[
        "-sS",
        "-e",
        SCANNER_IF,
        "-p",
        "1-112,114-138,140-200",
        &target,
    ]);
    let rec = s.wait_decision(SCANNER, AuditDecision::Blocked);
    assert!(!kernel_peer(&rec), "the sensor reported it: {rec:?}");
    assert_eq!(answers(&s), 0, "ports answered\n{}", s.diag());
    assert!(
        hits(&s, "hit4").contains(&SCANNER_V4.to_string()),
        "{}",
        s.diag()
    );
    assert!(s.nft_has(SCANNER), "{}", s.diag());
    // `sentryctl unblock` takes the kernel's element back too: the scanner is answered.
    let out = s.sentryctl(&["unblock", &SCANNER_V4.to_string()]);
    assert!(out.success(), "{out}");
    assert!(
        !hits(&s, "hit4").contains(&SCANNER_V4.to_string()),
        "the kernel's element outlived the unblock\n{}",
        s.diag()
    );
    assert!(!s.nft_has(SCANNER), "{}", s.diag());
}

/// The sensor is stopped: the kernel still blocks the first probe, and the enforcer
/// audits that block from the map (peer uid 0, pid 0) and makes it its own.
#[test]
fn the_kernel_blocks_while_the_sensor_is_stopped() {
    let test = "the_kernel_blocks_while_the_sensor_is_stopped";
    if !ready(test) {
        return;
    }
    let mut s = Sentry::start(test, Settings::new(&["atcp", "stcp"]));
    s.kill_sensor();
    count_answers(&s);
    let src = IpAddr::V4(SCANNER2_V4);
    syn(&s, SCANNER2_V4, 23);
    assert_eq!(answers(&s), 0, "the probe was answered\n{}", s.diag());
    assert!(
        hits(&s, "hit4").contains(&SCANNER2_V4.to_string()),
        "{}",
        s.diag()
    );
    let rec = s.wait_decision_within(src, AuditDecision::Blocked, WAIT);
    assert!(kernel_peer(&rec), "not the kernel's block: {rec:?}");
    assert_eq!(rec.port, Some(23), "{rec:?}");
    assert_eq!(rec.scan.as_deref(), Some("syn"), "{rec:?}");
    assert!(s.nft_has(src), "not in the enforcer's set\n{}", s.diag());
    assert!(
        s.enforcer_log()
            .contains("kernel first hit from 10.203.0.3"),
        "{}",
        s.enforcer_log()
    );
}

/// The host's default gateway is in the kernel's never-block set: its probe is answered
/// and only copied, and the enforcer says never_block.
#[test]
fn the_gateway_is_never_blocked_in_the_kernel() {
    let test = "the_gateway_is_never_blocked_in_the_kernel";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "stcp"]));
    run_ok(
        s.net.command(Side::Target, "ip").args([
            "route",
            "replace",
            "default",
            "via",
            &SCANNER2_V4.to_string(),
        ]),
        Duration::from_secs(10),
    );
    wait_until(
        WAIT,
        "the gateway in the kernel's never-block set",
        || {
            // Membership, not the listing's text: adjacent items are printed merged.
            run(
                s.net.command(Side::Target, "nft").args([
                    "get",
                    "element",
                    "inet",
                    NFT_TABLE,
                    "detect_never4",
                    &format!("{{ {SCANNER2_V4} }}"),
                ]),
                Duration::from_secs(10),
            )
            .success()
            .then_some(())
        },
        || s.diag(),
    );
    count_answers(&s);
    syn(&s, SCANNER2_V4, 23);
    let src = IpAddr::V4(SCANNER2_V4);
    s.wait_decision_within(src, AuditDecision::NeverBlock, WAIT);
    // Its probe of a port nothing serves is dropped like any other (the source only
    // decides who is blocked, never which port answers), and it is not blocked.
    assert_eq!(
        answers(&s),
        0,
        "the gateway's probe was answered\n{}",
        s.diag()
    );
    assert!(
        !hits(&s, "hit4").contains(&SCANNER2_V4.to_string()),
        "{}",
        s.diag()
    );
    s.assert_not_blocked(src);
}

/// A service started after the enforcer: its port is served, so connecting to it is
/// never a probe, neither in the kernel (socket lookup) nor in the sensor.
#[test]
fn a_listener_started_after_the_enforcer_is_never_a_probe() {
    let test = "a_listener_started_after_the_enforcer_is_never_a_probe";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "stcp"]));
    // Port 1 is a stealth port, 555 an advanced one.
    let listeners = s.net.in_ns(Side::Target, || {
        (
            std::net::TcpListener::bind("0.0.0.0:1").unwrap(),
            std::net::TcpListener::bind("0.0.0.0:555").unwrap(),
        )
    });
    for port in [1u16, 555] {
        let out = run(
            s.net.command(Side::Scanner, "bash").args([
                "-c",
                &format!("exec 3<>/dev/tcp/{TARGET_V4}/{port} && echo connected"),
            ]),
            Duration::from_secs(10),
        );
        assert!(
            out.stdout.contains("connected"),
            "port {port} not reachable: {out}\n{}",
            s.diag()
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !hits(&s, "hit4").contains(&SCANNER_V4.to_string()),
        "{}",
        s.diag()
    );
    assert!(
        s.audit_for(SCANNER, AuditDecision::Blocked).is_empty(),
        "a connection to a served port blocked its client\n{}",
        s.diag()
    );
    drop(listeners);
}

/// A FIN scan: conntrack calls the probes invalid and their checksum is unverified, so the
/// kernel drops them (nothing serves those ports) but leaves the block to the sensor, which
/// checks the checksum: still no port answers, the block is the sensor's, the map stays
/// empty.
#[test]
fn a_flag_probe_is_dropped_and_left_to_the_sensor() {
    let test = "a_flag_probe_is_dropped_and_left_to_the_sensor";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    count_answers(&s);
    let target = TARGET_V4.to_string();
    s.nmap(&["-sF", "-e", SCANNER_IF, "-p", "1-100,140-150", &target]);
    let rec = s.wait_decision(SCANNER, AuditDecision::Blocked);
    assert!(!kernel_peer(&rec), "{rec:?}");
    assert_eq!(rec.scan.as_deref(), Some("fin"), "{rec:?}");
    assert_eq!(answers(&s), 0, "ports answered\n{}", s.diag());
    assert!(
        !hits(&s, "hit4").contains(&SCANNER_V4.to_string()),
        "{}",
        s.diag()
    );
}

/// A flag probe (FIN, NULL, XMAS) of a port no mode watches (ADVANCED_EXCLUDE_TCP's 113
/// and 139) is dropped, not answered: its RST would tell `nmap -sF/-sN/-sX` the host is
/// there before a watched port gets the scanner blocked. It is no evidence either. A SYN
/// there still gets its RST at once (an ident lookup must not wait), and ANSWER_PROBES=1
/// lets the stack answer the flag probe too, as PortSentry did.
#[test]
fn flag_probes_of_unwatched_ports_are_not_answered() {
    let test = "flag_probes_of_unwatched_ports_are_not_answered";
    if !ready(test) {
        return;
    }
    let target = TARGET_V4.to_string();
    let probe = |s: &Sentry, port: &str, flags: &[&str]| {
        let mut args = vec!["-c", "1", "-p", port];
        args.extend_from_slice(flags);
        args.push(&target);
        s.hping(&args);
    };
    {
        let s = Sentry::start(test, Settings::new(&["atcp", "stcp"]));
        count_answers(&s);
        probe(&s, "113", &["-F"]);
        probe(&s, "113", &[]);
        probe(&s, "139", &["-F", "-P", "-U"]);
        assert_eq!(answers(&s), 0, "flag probes answered\n{}", s.diag());
        assert!(!s.nft_has(SCANNER), "{}", s.diag());
        assert!(
            s.audit().iter().all(|r| r.source != Some(SCANNER)),
            "an unwatched port's probe counted\n{}",
            s.diag()
        );
        probe(&s, "113", &["-S"]);
        wait_until(
            WAIT,
            "the SYN to 113 to get its RST",
            || (answers(&s) == 1).then_some(()),
            || s.diag(),
        );
        assert!(!s.nft_has(SCANNER), "{}", s.diag());
    }
    let mut settings = Settings::new(&["atcp", "stcp"]);
    settings.keys.insert("ANSWER_PROBES".into(), "1".into());
    let s = Sentry::start(test, settings);
    count_answers(&s);
    probe(&s, "113", &["-F"]);
    wait_until(
        WAIT,
        "ANSWER_PROBES=1: the FIN to 113 to get its RST",
        || (answers(&s) == 1).then_some(()),
        || s.diag(),
    );
}
