//! Forger-proof blocking (issue #19), each attack as it was measured, against the shipped
//! policy's shape (SCAN_TRIGGER=0, BLOCK_RATE=600, the kernel's first hit):
//! * forged SYNs from the scanner's own /24, then its real scan;
//! * 200 forged SYNs a second during the scan;
//! * MAX_BLOCKS filled with fleet blocks, plus a forged flood;
//! * a forged probe "from" a server the host downloads from and exchanges UDP with;
//! * a scan blocked on its first probe still shows how much of the host it tried;
//! * an administrator's `notrack` rule; link-local, broadcast and network sources.
//!
//! "Ports answered" is what the target itself sends back to the scanner (an nftables
//! counter of SYN-ACKs and RSTs in the target namespace's output hook), never inferred
//! from nmap's output. Needs root, nmap, hping3, python3 and scapy (make test-deps).

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sentry_tests::netns::{Side, SCANNER2_V4, SCANNER_V4, TARGET_V4};
use sentry_tests::sentry::NFT_TABLE;
use sentry_tests::Settings;
use sentry_tests::{require_root, require_tool, run, run_ok, wait_until, AuditDecision, Sentry};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);
const WAIT: Duration = Duration::from_secs(20);
/// The most unserved ports a real scanner may see answered in any attack (0 expected).
const MAX_ANSWERED: u64 = 5;

fn ready(test: &str) -> bool {
    require_root(test)
        && require_tool(test, "nmap")
        && require_tool(test, "hping3")
        && require_tool(test, "python3")
}

fn flows() -> String {
    format!("{}/scripts/flows.py", env!("CARGO_MANIFEST_DIR"))
}

/// The shipped policy's shape: the kernel's first hit, BLOCK_RATE=600, advanced and
/// stealth TCP.
fn shipped() -> Settings {
    Settings::new(&["atcp", "stcp"])
        .set("SCAN_TRIGGER", "0")
        .set("BLOCK_RATE", "600")
        .set("MAX_BLOCKS", "10000")
}

/// A process in a namespace, killed (and reaped) when dropped: a test that fails half way
/// leaves nothing running.
struct Bg(Child);

impl Bg {
    fn spawn(mut c: Command) -> Bg {
        Bg(c.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"))
    }

    fn output(mut self, limit: Duration) -> String {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                let mut s = String::new();
                if let Some(mut o) = self.0.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut o, &mut s);
                }
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("background process still running after {limit:?}");
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Count what the target sends the real scanner as an answer to a probe: SYN-ACKs and
/// RSTs (TCP) and ICMP errors.
fn count_answers(s: &Sentry) {
    let (tcp, icmp) = (
        format!("ip daddr {SCANNER_V4} tcp flags & (syn | rst) != 0"),
        format!("ip daddr {SCANNER_V4} icmp type destination-unreachable"),
    );
    s.count_answers(&[&tcp, &icmp]);
}

fn answers(s: &Sentry) -> u64 {
    s.answers()
}

/// The real scan: nmap SYN scan of 1-1024, one probe a port.
fn real_scan(s: &Sentry) {
    s.nmap(&["-sS", "-p", "1-1024", &TARGET_V4.to_string()]);
}

/// The scanner is blocked and saw at most [`MAX_ANSWERED`] answers.
fn assert_blocked_unanswered(s: &Sentry, what: &str) {
    wait_until(
        WAIT,
        &format!("the real scanner to be blocked ({what})"),
        || s.blocked_list().contains(&SCANNER).then_some(()),
        || s.diag(),
    );
    let n = answers(s);
    // How many of its probes it took: the ports of the request that blocked it (1: the
    // kernel's first hit; 2: the sensor's second report, after forgers spent a share).
    let probes = s
        .audit_for(SCANNER, AuditDecision::Blocked)
        .first()
        .and_then(|r| r.distinct_ports)
        .unwrap_or(0);
    eprintln!(
        "FIGURE {what}: the real scanner got {n} answers (from ports: {}), blocked on its probe #{probes}; {} blocks in all",
        s.answered_ports(),
        s.counter("blocked")
    );
    assert!(
        n <= MAX_ANSWERED,
        "{what}: {n} answers to the real scanner\n{}",
        s.diag()
    );
}

#[test]
fn forgers_in_the_scanners_own_24_cannot_shield_it() {
    let test = "forgers_in_the_scanners_own_24_cannot_shield_it";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, shipped());
    count_answers(&s);
    // One forged SYN from each of 240 neighbours of the scanner (10.203.0.10-249), each
    // to another watched port: far more than the /24's single-probe share (150).
    run_ok(
        s.net.command(Side::Scanner, "/usr/bin/python3").args([
            &flows(),
            "syns",
            &TARGET_V4.to_string(),
            "10",
            "249",
            "30",
        ]),
        Duration::from_secs(60),
    );
    wait_until(
        WAIT,
        "the forgeries to spend the /24's single-probe share",
        || (s.counter("rate_limited") >= 1).then_some(()),
        || s.diag(),
    );
    let forged = s.counter("blocked");
    assert!(
        forged <= 150,
        "{forged} forged single-probe blocks: more than the /24's share of BLOCK_RATE"
    );
    real_scan(&s);
    assert_blocked_unanswered(&s, "forged /24");
}

#[test]
fn a_flood_during_the_scan_neither_opens_ports_nor_shields_the_scanner() {
    let test = "a_flood_during_the_scan_neither_opens_ports_nor_shields_the_scanner";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, shipped());
    count_answers(&s);
    // 200 forged SYNs a second from random sources for 15 s, to watched ports.
    let mut c = s.net.command(Side::Scanner, "timeout");
    c.args([
        "20",
        "hping3",
        "-q",
        "--rand-source",
        "-S",
        "-p",
        "++1",
        "-i",
        "u5000",
        "-c",
        "3000",
        &TARGET_V4.to_string(),
    ]);
    let flood = Bg::spawn(c);
    std::thread::sleep(Duration::from_secs(2));
    real_scan(&s);
    assert_blocked_unanswered(&s, "200 forged SYN/s");
    drop(flood);
    // The forgeries spent only the single-probe half of BLOCK_RATE.
    assert!(s.counter("blocked") <= 301, "{}", s.diag());
}

#[test]
fn fleet_blocks_filling_the_table_cannot_switch_local_blocking_off() {
    let test = "fleet_blocks_filling_the_table_cannot_switch_local_blocking_off";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(
        test,
        shipped()
            .set("MAX_BLOCKS", "40")
            .set("FLEET_MAX_BLOCKS", "40"),
    );
    // A compromised LAPI hands out 40 ten-year bans: they fill the table...
    for i in 0..40u32 {
        let a = Ipv4Addr::from(0xc000_0200 + i).to_string(); // 192.0.2.0-39
        let out = s.sentryctl(&["block", &a, "--origin", "crowdsec", "--for", "87600h"]);
        assert!(out.success(), "{out}");
    }
    assert_eq!(s.blocked_list().len(), 40);
    // ... and last a day at most (FLEET_MAX_DURATION).
    let fleet = s.ctl_json(&["blocked"]);
    let until = fleet[0]["expires_ms"].as_u64().expect("an expiry");
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    assert!(until <= now + 86_401_000, "{fleet}");
    // More fleet blocks are refused by the fleet's own cap.
    let out = s.sentryctl(&["block", "192.0.2.200", "--origin", "crowdsec"]);
    assert!(
        out.stdout.contains("capped") || out.stderr.contains("capped"),
        "{out}"
    );
    count_answers(&s);
    s.hping(&[
        "--rand-source",
        "-S",
        "-p",
        "++1",
        "-c",
        "300",
        "-i",
        "u2000",
        &TARGET_V4.to_string(),
    ]);
    real_scan(&s);
    assert_blocked_unanswered(&s, "MAX_BLOCKS of fleet blocks plus a flood");
    // The scanner's multi-port evidence evicted the oldest fleet block.
    assert!(
        !s.blocked_list()
            .contains(&"192.0.2.0".parse::<IpAddr>().unwrap()),
        "{}",
        s.diag()
    );
}

#[test]
fn a_forged_probe_from_a_server_the_host_uses_costs_the_host_nothing() {
    let test = "a_forged_probe_from_a_server_the_host_uses_costs_the_host_nothing";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, shipped());
    let server = SCANNER2_V4.to_string();
    let www = s.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("big"), vec![b'x'; 3 << 20]).unwrap();
    let mut c = s.net.command(Side::Scanner, "/usr/bin/python3");
    c.args([&flows(), "serve", &server]).arg(&www).arg("40");
    let _server = Bg::spawn(c);
    // A service of the host's own, for the forged address to try to reach.
    let mut c = s.net.command(Side::Target, "/usr/bin/python3");
    c.args([&flows(), "listen", &TARGET_V4.to_string(), "2222", "40"]);
    let _listener = Bg::spawn(c);
    std::thread::sleep(Duration::from_millis(800));
    // The host downloads from the server (slowly) and exchanges UDP with it...
    let mark = s.path("forged");
    let mut c = s.net.command(Side::Target, "/usr/bin/python3");
    c.args([&flows(), "client", &server, "6"]).arg(&mark);
    let client = Bg::spawn(c);
    std::thread::sleep(Duration::from_secs(1));
    // ... when one forged SYN "from" the server hits a watched port.
    std::fs::write(&mark, b"").unwrap();
    s.net.hping_from(SCANNER2_V4, 1, &["-S"]);
    let srv = IpAddr::V4(SCANNER2_V4);
    wait_until(
        WAIT,
        "the forged address to be blocked",
        || s.blocked_list().contains(&srv).then_some(()),
        || s.diag(),
    );
    let out = client.output(Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("client output {out:?}: {e}\n{}", s.diag()));
    eprintln!("host's flows across the block: {v}");
    assert!(v["error"].is_null(), "{v}\n{}", s.diag());
    assert_eq!(
        v["bytes"], v["length"],
        "the transfer did not complete: {v}"
    );
    let (sent, answered) = (
        v["udp_sent_after"].as_u64().unwrap(),
        v["udp_answered_after"].as_u64().unwrap(),
    );
    assert!(
        sent >= 10 && answered + 2 >= sent,
        "UDP after the block: {v}"
    );
    // New connections out still work...
    let fetch = run(
        s.net.command(Side::Target, "/usr/bin/python3").args([
            &flows(),
            "connect",
            &TARGET_V4.to_string(),
            &server,
            "8080",
        ]),
        Duration::from_secs(10),
    );
    assert!(fetch.success(), "a new connection out failed: {fetch}");
    // ... while the forged address cannot open one in (another address of the same
    // namespace can: the service is up).
    let inbound = |src: Ipv4Addr| {
        run(
            s.net.command(Side::Scanner, "/usr/bin/python3").args([
                &flows(),
                "connect",
                &src.to_string(),
                &TARGET_V4.to_string(),
                "2222",
            ]),
            Duration::from_secs(10),
        )
        .success()
    };
    assert!(!inbound(SCANNER2_V4), "the blocked address connected in");
    assert!(inbound(SCANNER_V4), "the service is not reachable at all");
}

#[test]
fn a_scan_blocked_on_its_first_probe_shows_how_much_it_tried() {
    let test = "a_scan_blocked_on_its_first_probe_shows_how_much_it_tried";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, shipped());
    count_answers(&s);
    real_scan(&s);
    assert_blocked_unanswered(&s, "a plain scan");
    let ports = || {
        s.ctl_json(&["blocked"])
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["addr"] == SCANNER.to_string())
            .and_then(|b| b["distinct_ports"].as_u64())
    };
    let n = wait_until(
        WAIT,
        "100 distinct ports of evidence",
        || ports().filter(|&n| n >= 100),
        || s.diag(),
    );
    eprintln!("evidence of a scan blocked on its first probe: {n} distinct ports");
    let ev = s.audit_for(SCANNER, AuditDecision::Evidence);
    assert!(
        ev.iter().any(|r| r.distinct_ports.unwrap_or(0) >= 100),
        "{ev:?}"
    );
}

#[test]
fn probes_under_an_administrators_notrack_rule_are_still_seen() {
    let test = "probes_under_an_administrators_notrack_rule_are_still_seen";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, shipped().set("SCAN_TRIGGER", "2"));
    let path = s.path("notrack.nft");
    std::fs::write(
        &path,
        "table inet admin {\n chain raw {\n  type filter hook prerouting priority -300; policy accept;\n  notrack\n }\n}\n",
    )
    .unwrap();
    run_ok(
        s.net.command(Side::Target, "nft").arg("-f").arg(&path),
        Duration::from_secs(10),
    );
    count_answers(&s);
    s.nmap(&["-sS", "-p", "1-1024", &TARGET_V4.to_string()]);
    assert_blocked_unanswered(&s, "notrack");
}

#[test]
fn link_local_broadcast_and_network_sources_are_never_blocked_in_the_kernel() {
    let test = "link_local_broadcast_and_network_sources_are_never_blocked_in_the_kernel";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, shipped());
    // The harness configures 10.203.0.2/24 without a broadcast address.
    let sources = [
        Ipv4Addr::new(169, 254, 7, 7),
        Ipv4Addr::new(10, 203, 0, 255),
        Ipv4Addr::new(10, 203, 0, 0),
    ];
    let in_never = |a: Ipv4Addr| {
        run(
            s.net.command(Side::Target, "nft").args([
                "get",
                "element",
                "inet",
                NFT_TABLE,
                "detect_never4",
                &format!("{{ {a} }}"),
            ]),
            Duration::from_secs(10),
        )
        .success()
    };
    wait_until(
        WAIT,
        "the subnet's ends in the kernel's never-block set",
        || sources.iter().all(|a| in_never(*a)).then_some(()),
        || s.diag(),
    );
    for src in sources {
        s.net.hping_from(src, 1, &["-S"]);
    }
    for src in sources {
        let ip = IpAddr::V4(src);
        s.wait_decision_within(ip, AuditDecision::NeverBlock, WAIT);
        let hits = run_ok(
            s.net
                .command(Side::Target, "nft")
                .args(["list", "map", "inet", NFT_TABLE, "hit4"]),
            Duration::from_secs(10),
        )
        .stdout;
        assert!(!hits.contains(&src.to_string()), "{src} in hit4:\n{hits}");
        s.assert_not_blocked(ip);
    }
}
