//! issue #14: the fleet. Two hosts (each its own pair of namespaces running the real
//! enforcer, sensor and `sentry-share` bridge) and one real CrowdSec LAPI (Debian's
//! 1.4.6, LAPI only, SQLite in a temp dir, loopback). A scan of host A is blocked on
//! host B; unblock propagates; an LAPI outage is queued through; B's enforcer refuses a
//! fleet decision for its own gateway; a forged single SYN stays local; both metrics
//! textfiles pass `promtool check metrics`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use sentry_tests::fleet::{promtool, require_crowdsec, Bridge, Lapi, SHARE_USER};
use sentry_tests::netns::{SCANNER2_V4, SCANNER3_V4, SCANNER4_V4, SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, wait_until, AuditDecision, AuditLine, Sentry, Settings};

/// The fleet tests take turns: each runs two hosts, a LAPI and two bridges.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A host: the pair, with CONTROL_GROUP for the bridge and a metrics textfile.
fn host(name: &str, settings: Settings, gateway: Option<Ipv4Addr>) -> Sentry {
    sentry_tests::fleet::ensure_share_user();
    let mut s = Sentry::prepare(name, settings);
    let metrics = s.dir.path().join("metrics");
    std::fs::create_dir(&metrics).expect("mkdir metrics");
    s.settings = s
        .settings
        .clone()
        .set("CONTROL_GROUP", SHARE_USER)
        .set("METRICS_DIR", &metrics.display().to_string());
    s.write_config();
    if let Some(gw) = gateway {
        s.net.run_ok(
            sentry_tests::Side::Target,
            "ip",
            &["route", "add", "default", "via", &gw.to_string()],
        );
    }
    s.start_enforcer();
    s.start_sensor();
    s
}

fn bridge(s: &Sentry, lapi: &Lapi, machine: &str, key: &str, extra: &str) -> Bridge {
    let b = Bridge::prepare(
        s.dir.path(),
        &s.runtime_dir,
        &lapi.url,
        Some((machine, &format!("pw-{machine}-0123456789"))),
        Some(key),
        &format!("PULL_INTERVAL=\"1s\"\nPUSH_MIN_PORTS=\"5\"\n{extra}"),
    );
    b.start();
    b
}

fn diag(hosts: &[(&Sentry, &Bridge)], lapi: &Lapi) -> String {
    let mut o = String::new();
    for (s, b) in hosts {
        o.push_str(&format!(
            "=== host {} ===\n{}\n--- bridge log ---\n{}\n--- bridge metrics ---\n{}\n",
            s.name,
            s.diag(),
            b.log(),
            b.metrics_text()
        ));
    }
    o.push_str(&format!("=== LAPI log ===\n{}", lapi.log()));
    o
}

fn wait_for(
    what: &str,
    timeout: Duration,
    hosts: &[(&Sentry, &Bridge)],
    lapi: &Lapi,
    mut f: impl FnMut() -> bool,
) {
    wait_until(timeout, what, || f().then_some(()), || diag(hosts, lapi));
}

fn fleet_record(s: &Sentry, ip: IpAddr, d: AuditDecision) -> Option<AuditLine> {
    s.audit_for(ip, d)
        .into_iter()
        .find(|r| r.origin.as_deref() == Some("crowdsec"))
}

/// A scan of A is blocked on B within 2 s of A's block (B polls every second); the
/// LAPI goes down, A queues the next scanner and sends it once the LAPI is back;
/// `sentryctl unblock` on A (DELETE_ON_UNBLOCK) lifts the fleet block on B.
#[test]
fn a_scan_of_one_host_is_blocked_on_the_other() {
    let test = "a_scan_of_one_host_is_blocked_on_the_other";
    if !require_root(test) || !require_crowdsec(test) {
        return;
    }
    let _turn = serial();
    let mut lapi = Lapi::start();
    for m in ["host-a", "host-b"] {
        lapi.add_machine(m, &format!("pw-{m}-0123456789"));
    }
    let key_a = lapi.add_bouncer("host-a");
    let key_b = lapi.add_bouncer("host-b");
    let settings = Settings::new(&["atcp"]).set("SCAN_TRIGGER", "5");
    let a = host("fleet-a", settings.clone(), None);
    let b = host("fleet-b", settings, None);
    let ba = bridge(&a, &lapi, "host-a", &key_a, "DELETE_ON_UNBLOCK=\"1\"\n");
    let bb = bridge(&b, &lapi, "host-b", &key_b, "");
    let scanner = IpAddr::V4(SCANNER_V4);
    // Both bridges are following their enforcer's stream before the scan.
    wait_for(
        "both bridges to follow the decision stream",
        Duration::from_secs(15),
        &[(&a, &ba), (&b, &bb)],
        &lapi,
        || {
            [&a, &b].iter().all(|s| {
                s.sentryctl(&["metrics"])
                    .stdout
                    .contains("sentry_watch_clients 1")
            })
        },
    );

    a.nmap(&["-sS", "-p", "1-100", &TARGET_V4.to_string()]);
    let on_a = a.wait_blocked(scanner);
    assert_eq!(on_a.origin.as_deref(), Some("sensor"), "{on_a:?}");
    assert!(on_a.distinct_ports.unwrap_or(0) >= 5, "{on_a:?}");
    assert_eq!(on_a.handshake, Some(false), "{on_a:?}");
    let hosts = [(&a, &ba), (&b, &bb)];
    let mut on_b = None;
    wait_for(
        "host B to block A's scanner (fleet decision)",
        Duration::from_secs(15),
        &hosts,
        &lapi,
        || {
            on_b = fleet_record(&b, scanner, AuditDecision::Blocked);
            on_b.is_some()
        },
    );
    let on_b = on_b.expect("record");
    let latency_ms = (on_b.time_us.saturating_sub(on_a.time_us)) / 1000;
    println!("fleet: scan blocked on A -> blocked on B in {latency_ms} ms");
    assert!(
        latency_ms <= 2000,
        "B blocked {latency_ms} ms after A (want <= 2000)\n{}",
        diag(&hosts, &lapi)
    );
    assert!(b.nft_has(scanner), "B's nftables set lacks {scanner}");
    // B's scanner namespace has the same address: its probes are now dropped on B.
    let st = b.ctl_json(&["blocked"]);
    assert!(
        st.as_array().is_some_and(|l| l
            .iter()
            .any(|e| e["addr"] == scanner.to_string() && e["origin"] == "crowdsec")),
        "{st}"
    );
    // The decision came back to A too: A's own block stays A's (already blocked), and
    // A does not push a fleet block back.
    wait_for(
        "A to pull the decision it caused",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || fleet_record(&a, scanner, AuditDecision::AlreadyBlocked).is_some(),
    );
    wait_for(
        "A's metrics to count the push",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || ba.metric("sentry_share_alerts_pushed_total") == Some(1),
    );
    wait_for(
        "B's metrics to count the pull",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || bb.metric("sentry_share_decisions_pulled_total{action=\"block\"}") == Some(1),
    );
    assert_eq!(bb.metric("sentry_share_alerts_pushed_total"), Some(0));
    let alerts = lapi.cscli(&["alerts", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&alerts.stdout).expect("alerts JSON");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "one alert in the fleet: {alerts}"
    );

    // The LAPI goes away: the next scanner is queued on A...
    lapi.stop();
    let second = IpAddr::V4(SCANNER2_V4);
    a.nmap(&[
        "-sS",
        "-S",
        &SCANNER2_V4.to_string(),
        "-e",
        sentry_tests::netns::SCANNER_IF,
        "-p",
        "1-100",
        &TARGET_V4.to_string(),
    ]);
    a.wait_blocked(second);
    wait_for(
        "A's bridge to queue the alert while the LAPI is down",
        Duration::from_secs(20),
        &hosts,
        &lapi,
        || {
            ba.metric("sentry_share_queue_depth") == Some(1)
                && ba
                    .metric("sentry_share_push_failures_total{kind=\"unreachable\"}")
                    .unwrap_or(0)
                    >= 1
        },
    );
    // ... survives a restart of the bridge itself ...
    ba.stop();
    ba.start();
    wait_for(
        "the restarted bridge to find the queued alert",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || ba.log().contains("1 queued alerts from before the restart"),
    );
    assert!(fleet_record(&b, second, AuditDecision::Blocked).is_none());
    // ... and is sent once the LAPI is back.
    lapi.run();
    wait_for(
        "B to block the scanner A queued during the outage",
        Duration::from_secs(60),
        &hosts,
        &lapi,
        || fleet_record(&b, second, AuditDecision::Blocked).is_some(),
    );
    wait_for(
        "A's queue to drain",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || ba.metric("sentry_share_queue_depth") == Some(0),
    );

    // Unblock on A: with DELETE_ON_UNBLOCK the fleet's decisions go, and B lifts its
    // fleet block (and only that).
    assert!(a.sentryctl(&["unblock", &scanner.to_string()]).success());
    wait_for(
        "B to lift the fleet block after the unblock on A",
        Duration::from_secs(20),
        &hosts,
        &lapi,
        || {
            b.audit_for(scanner, AuditDecision::Unblocked)
                .iter()
                .any(|r| r.origin.as_deref() == Some("crowdsec"))
        },
    );
    assert!(!b.nft_has(scanner));
    assert!(b.nft_has(second), "the other fleet block stays");
    assert!(ba.alive(), "bridge A died\n{}", ba.log());
    drop((ba, bb));
    lapi.stop();
}

/// B's enforcer refuses a fleet decision for its own default gateway (never_block,
/// audited with origin crowdsec); a single forged SYN blocked on A is not pushed
/// (counted); both textfiles of each host pass `promtool check metrics`.
#[test]
fn the_fleet_cannot_block_a_gateway_and_forged_probes_stay_local() {
    let test = "the_fleet_cannot_block_a_gateway_and_forged_probes_stay_local";
    if !require_root(test) || !require_crowdsec(test) {
        return;
    }
    let _turn = serial();
    let lapi = Lapi::start();
    for m in ["host-a", "host-b"] {
        lapi.add_machine(m, &format!("pw-{m}-0123456789"));
    }
    let key_a = lapi.add_bouncer("host-a");
    let key_b = lapi.add_bouncer("host-b");
    let gateway = SCANNER4_V4;
    let a = host("fleet-forge-a", Settings::new(&["atcp"]), None);
    let b = host("fleet-gw-b", Settings::new(&["atcp"]), Some(gateway));
    let ba = bridge(&a, &lapi, "host-a", &key_a, "");
    let bb = bridge(&b, &lapi, "host-b", &key_b, "");
    let hosts = [(&a, &ba), (&b, &bb)];

    // A fleet decision for B's gateway (and one for an ordinary address).
    for ip in [gateway.to_string(), "10.203.0.77".to_string()] {
        let o = lapi.cscli(&["decisions", "add", "--ip", &ip, "--duration", "1h"]);
        assert!(o.success(), "{o}");
    }
    let gw = IpAddr::V4(gateway);
    wait_for(
        "B to refuse the decision for its gateway",
        Duration::from_secs(20),
        &hosts,
        &lapi,
        || fleet_record(&b, gw, AuditDecision::NeverBlock).is_some(),
    );
    let rec = fleet_record(&b, gw, AuditDecision::NeverBlock).expect("record");
    assert!(rec.reason.contains("gateway"), "{rec:?}");
    assert!(!b.nft_has(gw));
    let other: IpAddr = "10.203.0.77".parse().unwrap();
    wait_for(
        "B to block the ordinary fleet decision",
        Duration::from_secs(20),
        &hosts,
        &lapi,
        || fleet_record(&b, other, AuditDecision::Blocked).is_some(),
    );
    let rec = fleet_record(&b, other, AuditDecision::Blocked).expect("record");
    assert!(
        rec.expires_ms
            .is_some_and(|e| e > sentry_tests::now_ms() + 3_000_000),
        "a 1h decision: {rec:?}"
    );
    wait_for(
        "B's bridge to count the refused decision",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || bb.metric("sentry_share_decisions_refused_total") == Some(1),
    );

    // One forged SYN from a third address (SCAN_TRIGGER=0 blocks on it locally).
    let forged = IpAddr::V4(SCANNER3_V4);
    a.net.hping_from(SCANNER3_V4, 80, &["-S"]);
    let rec = a.wait_blocked(forged);
    assert_eq!(rec.distinct_ports, Some(1), "{rec:?}");
    wait_for(
        "A's bridge to count the weak block as not pushed",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || ba.metric("sentry_share_not_pushed_total{reason=\"weak_evidence\"}") == Some(1),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ba.metric("sentry_share_alerts_pushed_total"), Some(0));
    let alerts = lapi.cscli(&["alerts", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&alerts.stdout).expect("alerts JSON");
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().all(|a| a["scenario"] != "sentry/portscan")),
        "no alert from a bridge: {alerts}"
    );
    assert!(
        !alerts.stdout.contains(&forged.to_string()),
        "the forged source reached the fleet: {alerts}"
    );
    assert!(fleet_record(&b, forged, AuditDecision::Blocked).is_none());

    // The textfiles: the enforcer's (METRICS_DIR) and the bridge's.
    let promtool = promtool();
    if promtool.is_none() && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("promtool missing (make test-deps unpacks prometheus)");
    }
    for (s, br) in hosts {
        let enforcer_file = s.dir.path().join("metrics/sentry-enforcer.prom");
        let share_file = br.metrics_dir.join("sentry-share.prom");
        wait_for(
            "both textfiles",
            Duration::from_secs(15),
            &hosts,
            &lapi,
            || enforcer_file.is_file() && share_file.is_file(),
        );
        let text = std::fs::read_to_string(&enforcer_file).unwrap();
        assert!(
            text.contains("sentry_decisions_total{decision=\"blocked\"}"),
            "{text}"
        );
        assert!(
            !text.contains("10.203."),
            "no address in the metrics: {text}"
        );
        let Some(p) = &promtool else {
            println!("SKIPPED (promtool not unpacked; run make test-deps): promtool check");
            continue;
        };
        for f in [&enforcer_file, &share_file] {
            let body = std::fs::read(f).unwrap();
            let mut c = std::process::Command::new(p);
            c.args(["check", "metrics"]);
            let out = run_stdin(&mut c, &body);
            assert!(out.0, "promtool check metrics {}: {}", f.display(), out.1);
        }
        // `sentryctl metrics` prints the same families.
        let out = s.sentryctl(&["metrics"]);
        assert!(
            out.success() && out.stdout.contains("# TYPE sentry_active_blocks gauge"),
            "{out}"
        );
    }
}

/// Run `c` with `input` on stdin; (success, stdout+stderr). Bounded: promtool reads a
/// small file and exits.
fn run_stdin(c: &mut std::process::Command, input: &[u8]) -> (bool, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
