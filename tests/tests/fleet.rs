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
    // The shipped policy's trigger: the kernel blocks the scanner on its first probe;
    // its later probes (dropped, still copied) are the evidence the bridge shares.
    let settings = Settings::new(&["atcp"]).set("SCAN_TRIGGER", "0");
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
    assert_eq!(on_a.handshake, Some(false), "{on_a:?}");
    let grown = a.wait_decision_within(scanner, AuditDecision::Evidence, Duration::from_secs(10));
    assert!(grown.distinct_ports.unwrap_or(0) >= 2, "{grown:?}");
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
    // The fleet block names its decision: scenario, the LAPI's decision and alert ids,
    // and A as the detecting machine; and no probe B never saw.
    let decisions = lapi.cscli(&["decisions", "list", "-o", "json"]);
    let alerts: serde_json::Value =
        serde_json::from_str(&decisions.stdout).expect("decisions JSON");
    let alert = &alerts[0];
    let (alert_id, decision_id) = (&alert["id"], &alert["decisions"][0]["id"]);
    assert!(
        alert_id.is_u64() && decision_id.is_u64(),
        "cscli decisions list: {decisions}"
    );
    assert_eq!(
        on_b.scenario.as_deref(),
        Some("sentry/portscan"),
        "{on_b:?}"
    );
    assert_eq!(on_b.decision_id, decision_id.as_u64(), "{on_b:?}");
    assert_eq!(on_b.alert_id, alert_id.as_u64(), "{on_b:?}");
    assert_eq!(on_b.machine.as_deref(), Some("host-a"), "{on_b:?}");
    assert_eq!((on_b.mode, on_b.scan.as_deref()), (None, None), "{on_b:?}");
    let st = b.ctl_json(&["blocked"]);
    let entry = st
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|e| e["addr"] == scanner.to_string() && e["origin"] == "crowdsec")
        })
        .unwrap_or_else(|| panic!("no fleet block of {scanner} on B: {st}"));
    let check = |e: &serde_json::Value| {
        assert_eq!(e["scenario"], "sentry/portscan", "{e}");
        assert_eq!(&e["decision_id"], decision_id, "{e}");
        assert_eq!(&e["alert_id"], alert_id, "{e}");
        assert_eq!(e["machine"], "host-a", "{e}");
        for k in ["mode", "scan", "protocol", "port", "distinct_ports"] {
            assert!(e.get(k).is_none_or(serde_json::Value::is_null), "{k}: {e}");
        }
    };
    check(entry);
    let x = b.ctl_json(&["explain", &scanner.to_string()]);
    assert_eq!(x["blocked"], true, "{x}");
    check(&x["entries"][0]);
    let rec = x["decisions"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["decision"] == "blocked"))
        .unwrap_or_else(|| panic!("no blocked record in explain: {x}"));
    check(rec);
    let text = b.sentryctl(&["blocked"]).stdout;
    assert!(
        text.contains(&format!(
            "scenario sentry/portscan, decision {decision_id}, alert {alert_id}, machine host-a"
        )) && !text.contains("stcp"),
        "{text}"
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

    // B's fleet requests by the bridge's origin name, not lumped as "control" (live: the
    // textfile is up to 5 s behind).
    let live = b.sentryctl(&["metrics"]).stdout;
    assert!(
        live.contains("sentry_requests_total{origin=\"crowdsec\"} ")
            && live.contains(
                "sentry_blocks_total{origin=\"crowdsec\",scan=\"none\",protocol=\"none\"} 1\n"
            )
            && !live.contains("origin=\"control\""),
        "{live}"
    );

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
        // The build and the process_* families in both files.
        let share = std::fs::read_to_string(&share_file).unwrap();
        for (t, want) in [
            (&text, "sentry_build_info{version="),
            (&text, "process_resident_memory_bytes "),
            (&share, "sentry_share_build_info{version="),
            (&share, "process_resident_memory_bytes "),
        ] {
            assert!(t.contains(want), "{want}: {t}");
        }
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

/// A `sentryctl watch --json` child whose stdout lines are collected by a thread.
struct Watcher {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watcher {
    fn start(s: &Sentry, extra: &[&str]) -> Watcher {
        use std::io::BufRead;
        let mut child = std::process::Command::new(&s.bins.sentryctl)
            .arg("--runtime-dir")
            .arg(&s.runtime_dir)
            .args(["--json", "watch"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sentryctl watch");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Watcher { child, lines: rx }
    }

    /// The next line as JSON, within 10 s.
    fn next(&self) -> serde_json::Value {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line from sentryctl watch within 10 s");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))
    }

    /// The next record about `addr`, skipping others.
    fn record_for(&self, addr: &str) -> serde_json::Value {
        loop {
            let v = self.next();
            if v["source"] == addr {
                return v;
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The control socket's new commands against the real enforcer: `watch` (origin and
/// evidence on every record, cursors, resuming), `block` (authorised like unblock,
/// through the judge, audited with its origin, strict --for), `metrics`, and a watcher
/// that stops reading is dropped (counted, logged) while decisions go on.
#[test]
fn control_socket_watch_block_and_metrics() {
    let test = "control_socket_watch_block_and_metrics";
    if !require_root(test) {
        return;
    }
    let _turn = serial();
    let s = Sentry::start(
        test,
        Settings::enforcer(&[("AUDIT_RATE", "100000"), ("BLOCK_RATE", "100000")]),
    );
    let w = Watcher::start(&s, &[]);
    let start = w.next();
    assert_eq!(start["event"], "start", "{start}");
    assert_eq!(start["lost"], 0);
    let mut sensor = s.connect_welcomed();
    assert_eq!(
        sensor.block("192.0.2.10", sentry_proto::Protocol::Tcp, 22),
        sentry_proto::Decision::Blocked
    );
    let r = w.record_for("192.0.2.10");
    // The decision-record schema (docs/records.md): the audit log's names.
    assert_eq!(r["schema"], 1, "{r}");
    assert_eq!(r["decision"], "blocked");
    assert_eq!(r["origin"], "sensor");
    assert_eq!(r["distinct_ports"], 3);
    assert_eq!(r["handshake"], false);
    assert_eq!(r["scan"], "syn");
    let cursor_after_first = r["cursor"].as_str().expect("cursor").to_string();

    // block: strict duration, origin recorded, the judge applies.
    let out = s.sentryctl(&["block", "192.0.2.11", "--for", "4d"]);
    assert_eq!(out.status.and_then(|c| c.code()), Some(2), "{out}");
    assert!(out.stderr.contains("unknown unit \"d\""), "{out}");
    let out = s.sentryctl(&[
        "--json",
        "block",
        "192.0.2.11",
        "--for",
        "1h30m",
        "--origin",
        "ops",
    ]);
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["decision"], "blocked", "{v}");
    assert!(s.nft_has("192.0.2.11".parse().unwrap()));
    let r = w.record_for("192.0.2.11");
    assert_eq!(
        (r["decision"].as_str(), r["origin"].as_str()),
        (Some("blocked"), Some("ops"))
    );
    let exp = r["expires_ms"].as_u64().expect("expires");
    let now = sentry_tests::now_ms();
    assert!(exp > now + 5_300_000 && exp <= now + 5_400_000, "{r}");
    assert!(
        r.get("distinct_ports").is_none() && r.get("handshake").is_none(),
        "a control block carries no sensor evidence: {r}"
    );
    let out = s.sentryctl(&["block", "198.51.100.7"]);
    assert_eq!(out.status.and_then(|c| c.code()), Some(1), "{out}");
    assert!(out.stdout.contains("ignored"), "{out}");
    let r = w.record_for("198.51.100.7");
    assert_eq!(
        (r["decision"].as_str(), r["origin"].as_str()),
        (Some("ignored"), Some("manual"))
    );
    let audit = s.audit_for("192.0.2.11".parse().unwrap(), AuditDecision::Blocked);
    assert_eq!(audit[0].origin.as_deref(), Some("ops"));
    assert_eq!(audit[0].peer.map(|p| p.uid), Some(0));
    let list = s.ctl_json(&["blocked"]);
    assert!(
        list.as_array().is_some_and(|l| l
            .iter()
            .any(|b| b["addr"] == "192.0.2.11" && b["origin"] == "ops")),
        "{list}"
    );

    // Resume from a cursor: the records after it, nothing lost.
    let w2 = Watcher::start(&s, &["--from", &cursor_after_first]);
    let st = w2.next();
    assert_eq!(
        (st["event"].as_str(), st["lost"].as_u64()),
        (Some("start"), Some(0)),
        "{st}"
    );
    // (The first block's hosts.deny line comes after its decision, as an `effects`
    // record: issue #21.)
    let mut next = w2.next();
    while next["decision"] == "effects" {
        assert_eq!(next["source"], "192.0.2.10", "{next}");
        next = w2.next();
    }
    assert_eq!(next["source"], "192.0.2.11", "{next}");
    drop(w2);
    // A cursor of another enforcer run says so.
    let run: u64 = cursor_after_first
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let w3 = Watcher::start(&s, &["--from", &format!("{}:5", run + 1)]);
    let st = w3.next();
    assert_eq!(st["run_changed"], true, "{st}");
    drop(w3);

    // A watcher that connects and never reads: dropped once its buffer is full, while
    // every decision is still answered at once.
    let mut slow = std::os::unix::net::UnixStream::connect(s.control_sock()).expect("connect");
    use std::io::Write;
    for req in [
        sentry_proto::ControlRequest::Hello {
            version: sentry_proto::PROTOCOL_VERSION,
        },
        sentry_proto::ControlRequest::Watch { from: None },
    ] {
        slow.write_all(&sentry_proto::encode_frame(&req).unwrap())
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    for i in 0..4000u32 {
        let src = format!("198.51.100.{}", 1 + i % 250);
        assert_eq!(
            sensor.block(&src, sentry_proto::Protocol::Tcp, 22),
            sentry_proto::Decision::Ignored
        );
    }
    println!("4000 decisions with a stuck watcher: {:?}", t.elapsed());
    wait_until(
        Duration::from_secs(15),
        "the stuck watcher to be dropped and counted",
        || {
            let m = s.sentryctl(&["metrics"]).stdout;
            m.contains("sentry_watch_dropped_total 1").then_some(())
        },
        || s.diag(),
    );
    assert!(
        s.enforcer_log()
            .contains("decision-stream client(s) dropped"),
        "{}",
        s.enforcer_log()
    );
    drop(slow);
    // The live watcher kept up (it reads): it saw the last of them.
    let mut last = serde_json::Value::Null;
    while let Ok(l) = w.lines.recv_timeout(Duration::from_secs(2)) {
        last = serde_json::from_str(&l).unwrap();
    }
    assert_eq!(last["decision"], "ignored", "{last}");
    let m = s.sentryctl(&["metrics"]);
    assert!(m.success(), "{m}");
    for family in [
        "# TYPE sentry_decisions_total counter",
        "sentry_decisions_total{decision=\"ignored\"} 4001",
        // Control requests by origin name: `block --origin ops` and root's own
        // (`manual`), not lumped as "control".
        "sentry_requests_total{origin=\"ops\"} 1\n",
        "sentry_requests_total{origin=\"manual\"} 1\n",
        "sentry_active_blocks{origin=\"ops\"} 1\n",
        "sentry_active_blocks{origin=\"sensor\"} 1\n",
        "sentry_blocks_total{origin=\"ops\",scan=\"none\",protocol=\"none\"} 1\n",
    ] {
        assert!(m.stdout.contains(family), "{family}\n{}", m.stdout);
    }
}

/// Throughput (a figure for the README, and a functional check of batching, the
/// cursor and the queue): 1000 strong local blocks are made while the bridge is
/// stopped; started, it resumes from its saved cursor, queues all of them and gets each
/// accepted by the LAPI exactly once.
#[test]
fn a_backlog_of_blocks_reaches_the_lapi_once_each() {
    let test = "a_backlog_of_blocks_reaches_the_lapi_once_each";
    if !require_root(test) || !require_crowdsec(test) {
        return;
    }
    let _turn = serial();
    sentry_tests::fleet::ensure_share_user();
    let lapi = Lapi::start();
    lapi.add_machine("host-a", "pw-host-a-0123456789");
    let s = Sentry::start(
        test,
        Settings::enforcer(&[("BLOCK_RATE", "100000"), ("CONTROL_GROUP", SHARE_USER)]),
    );
    let b = Bridge::prepare(
        s.dir.path(),
        &s.runtime_dir,
        &lapi.url,
        Some(("host-a", "pw-host-a-0123456789")),
        None,
        "",
    );
    // Start once so it saves a cursor, then stop it.
    b.start();
    wait_until(
        Duration::from_secs(15),
        "the bridge to save its cursor",
        || b.dir.join("state/cursor").is_file().then_some(()),
        || b.log(),
    );
    b.stop();
    const N: u32 = 1000;
    let mut sensor = s.connect_welcomed();
    let t = Instant::now();
    for i in 0..N {
        let src = format!("10.60.{}.{}", i / 250, 1 + i % 250);
        let r = sentry_tests::FakeSensor::scan_req(
            src.parse().unwrap(),
            sentry_proto::Protocol::Tcp,
            22,
            sensor.next_seq(),
        )
        .distinct_ports(25)
        .build();
        assert_eq!(sensor.send_req(r), sentry_proto::Decision::Blocked);
    }
    println!("fleet bench: {N} blocks made in {:?}", t.elapsed());
    let t = Instant::now();
    b.start();
    wait_until(
        Duration::from_secs(300),
        "every block to be pushed",
        || (b.log().matches("pushed alert for").count() >= N as usize).then_some(()),
        || format!("{}\n{}", b.log(), lapi.log()),
    );
    let secs = t.elapsed().as_secs_f64();
    println!(
        "fleet bench: {N} alerts queued and accepted by the LAPI in {secs:.2} s = {:.0} alerts/s",
        f64::from(N) / secs
    );
    let alerts = lapi.cscli(&["alerts", "list", "-o", "json", "--limit", "0"]);
    let list: serde_json::Value = serde_json::from_str(&alerts.stdout).expect("json");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(N as usize),
        "each block once"
    );
    wait_until(
        Duration::from_secs(10),
        "the queue to be empty",
        || (b.metric("sentry_share_queue_depth") == Some(0)).then_some(()),
        || b.log(),
    );

    // The enforcer restarts under the bridge: it reconnects, says the cursor named the
    // previous run, and the next block is pushed too.
    drop(sensor);
    let mut s = s;
    s.stop_enforcer().expect("enforcer was running");
    s.start_enforcer();
    let mut sensor = s.connect_welcomed();
    let r = sentry_tests::FakeSensor::scan_req(
        "10.61.0.1".parse().unwrap(),
        sentry_proto::Protocol::Tcp,
        22,
        sensor.next_seq(),
    )
    .distinct_ports(25)
    .build();
    assert_eq!(sensor.send_req(r), sentry_proto::Decision::Blocked);
    wait_until(
        Duration::from_secs(30),
        "the block after the enforcer's restart to be pushed",
        || b.log().contains("pushed alert for 10.61.0.1").then_some(()),
        || b.log(),
    );
    assert!(b.log().contains("the enforcer restarted"), "{}", b.log());
    assert!(b.alive(), "{}", b.log());
}

/// Issue #20: `--check-config` logs in as the machine and tries the bouncer key on the
/// LAPI, as `cscli lapi status` does: a wrong machine password or key fails it with a
/// message naming what to fix; `--offline` checks the files only; a low PUSH_MIN_PORTS is
/// a warning.
#[test]
fn check_config_logs_in_and_tries_the_bouncer_key() {
    let test = "check_config_logs_in_and_tries_the_bouncer_key";
    if !require_root(test) || !require_crowdsec(test) {
        return;
    }
    let _turn = serial();
    let mut lapi = Lapi::start();
    lapi.add_machine("host-a", "pw-host-a-0123456789");
    let key = lapi.add_bouncer("host-a");
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let b = Bridge::prepare(
        work.path(),
        &work.path().join("run"),
        &lapi.url,
        Some(("host-a", "pw-host-a-0123456789")),
        Some(&key),
        "",
    );
    let ok = b.check_config(&[]);
    assert!(ok.success(), "{ok}");
    assert!(
        ok.stdout.contains("machine host-a: login OK") && ok.stdout.contains("bouncer key: OK"),
        "{ok}"
    );

    b.write_secret("machine.password", "not-the-password");
    let bad = b.check_config(&[]);
    assert_eq!(bad.status.and_then(|c| c.code()), Some(1), "{bad}");
    assert!(
        bad.stderr.contains("machine host-a")
            && bad.stderr.contains("incorrect Username or Password")
            && bad.stderr.contains("cscli machines add host-a"),
        "a wrong password must be named: {bad}"
    );
    assert!(bad.stdout.contains("bouncer key: OK"), "{bad}");
    // The files alone are fine.
    let off = b.check_config(&["--offline"]);
    assert!(off.success(), "{off}");
    assert!(off.stdout.contains("no LAPI contacted"), "{off}");

    b.write_secret("machine.password", "pw-host-a-0123456789");
    b.write_secret("bouncer.key", "0123456789abcdef0123456789abcdef");
    let bad = b.check_config(&[]);
    assert_eq!(bad.status.and_then(|c| c.code()), Some(1), "{bad}");
    assert!(
        bad.stderr
            .contains("bouncer key: LAPI refused the credentials")
            && bad.stderr.contains("cscli bouncers add"),
        "{bad}"
    );
    assert!(bad.stdout.contains("login OK"), "{bad}");

    // An LAPI that is down is an error too (not a silent pass).
    b.write_secret("bouncer.key", &key);
    lapi.stop();
    let down = b.check_config(&[]);
    assert_eq!(down.status.and_then(|c| c.code()), Some(1), "{down}");
    assert!(down.stderr.contains("LAPI unreachable"), "{down}");

    // PUSH_MIN_PORTS against the enforcer's trigger (SENTRY_CONFIG).
    let sentry_conf = work.path().join("sentry.conf");
    std::fs::write(&sentry_conf, "SCAN_TRIGGER=\"0\"\n").expect("write");
    std::fs::set_permissions(
        &sentry_conf,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let text = std::fs::read_to_string(&b.config).expect("read");
    std::fs::write(
        &b.config,
        format!(
            "{text}PUSH_MIN_PORTS=\"5\"\nSENTRY_CONFIG=\"{}\"\n",
            sentry_conf.display()
        ),
    )
    .expect("write");
    let low = b.check_config(&["--offline"]);
    assert!(low.success(), "a warning, not an error: {low}");
    assert!(
        low.stdout
            .contains("warning: PUSH_MIN_PORTS=5 is low: fewer than 10 forged packets"),
        "{low}"
    );
}

/// A `sh` script file whose body is `body` (a shim in front of a real program).
fn shim(dir: &std::path::Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("shim");
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
}

/// The `sh` blocks of the README's "Two hosts and one LAPI, step by step".
fn readme_fleet_blocks() -> Vec<String> {
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md");
    let start = text
        .find("### Two hosts and one LAPI, step by step")
        .expect("the README's step-by-step fleet section");
    let rest = &text[start + 4..];
    let end = ["\n## ", "\n### "]
        .iter()
        .filter_map(|h| rest.find(h))
        .min()
        .unwrap_or(rest.len());
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut it = section.split("```");
    it.next();
    while let (Some(code), _) = (it.next(), it.next()) {
        if let Some(body) = code.strip_prefix("sh\n") {
            blocks.push(body.to_string());
        }
    }
    assert_eq!(blocks.len(), 2, "the LAPI's block and a host's block");
    blocks
}

/// Run a README block with `sh -ex` in `cwd`, PATH starting with the shims.
fn run_block(block: &str, cwd: &std::path::Path, shims: &std::path::Path) -> sentry_tests::Output {
    let path = format!(
        "{}:{}",
        shims.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    sentry_tests::run(
        std::process::Command::new("sh")
            .args(["-exc", block])
            .current_dir(cwd)
            .env("PATH", path),
        Duration::from_secs(120),
    )
}

/// Issue #20: the README's fleet steps, run as written with the shipped `share.conf`
/// (the test only sets PULL_INTERVAL and its own directories on top) against a real
/// LAPI; a scan of A is blocked on B; `cscli decisions delete --ip` then lifts it on
/// every host, A included (its own sensor block: its alert caused the decision).
#[test]
fn the_readme_fleet_steps_work_with_the_shipped_files() {
    let test = "the_readme_fleet_steps_work_with_the_shipped_files";
    if !require_root(test) || !require_crowdsec(test) {
        return;
    }
    let _turn = serial();
    sentry_tests::fleet::ensure_share_user();
    let [lapi_block, host_block] = <[String; 2]>::try_from(readme_fleet_blocks()).unwrap();
    let mut lapi = Lapi::start();
    let work = tempfile::tempdir().expect("tempdir");
    let shims = work.path().join("bin");
    std::fs::create_dir(&shims).expect("mkdir");
    let systemctl_log = work.path().join("systemctl.log");
    shim(
        &shims,
        "cscli",
        &format!(
            "exec {} -c {} \"$@\"",
            lapi.cscli_bin().display(),
            lapi.config.display()
        ),
    );
    shim(
        &shims,
        "systemctl",
        &format!("echo \"systemctl $*\" >> {}", systemctl_log.display()),
    );

    // ---- on the LAPI host
    let lapi_etc = format!("{}/etc/", lapi.dir.path().display());
    let o = run_block(
        &lapi_block.replace("/etc/crowdsec/", &lapi_etc),
        work.path(),
        &shims,
    );
    assert!(o.success(), "the README's LAPI block: {o}\n{}", lapi.log());
    let console = std::fs::read_to_string(lapi.dir.path().join("etc/console.yaml")).unwrap();
    assert_eq!(console, "share_custom: false\n");
    // `systemctl restart crowdsec`: the LAPI reads console.yaml again.
    lapi.stop();
    lapi.run();
    for f in ["host-a.pw", "host-b.pw", "host-a.key", "host-b.key"] {
        let t = std::fs::read_to_string(work.path().join(f)).unwrap();
        assert!(t.trim().len() >= 32, "{f}: {t:?}");
    }

    // ---- on each host: the shipped share.conf, the README's edits, check-config.
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sentry-share/dist/share.conf"),
    )
    .expect("shipped share.conf");
    let settings = Settings::new(&["atcp"]).set("SCAN_TRIGGER", "0");
    let mut hosts = Vec::new();
    for (name, machine) in [("fleet-readme-a", "host-a"), ("fleet-readme-b", "host-b")] {
        let mut s = Sentry::prepare(name, settings.clone());
        s.write_config();
        let h = s.dir.path().to_path_buf();
        let etc = h.join("etc/sentry");
        let share = h.join("share");
        let (state, metrics) = (share.join("state"), share.join("metrics"));
        for d in [&etc, &share, &state, &metrics] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
        }
        for d in [&state, &metrics] {
            sentry_tests::run_ok(
                std::process::Command::new("chown")
                    .arg("sentry-share:sentry-share")
                    .arg(d),
                Duration::from_secs(10),
            );
        }
        // Test plumbing only: a 1 s poll and the test's directories (its /etc/sentry).
        assert!(shipped.contains("PULL_INTERVAL=\"10s\""));
        let conf_text = format!(
            "{}RUNTIME_DIR=\"{}\"\nSTATE_DIR=\"{}\"\nMETRICS_DIR=\"{}\"\nSENTRY_CONFIG=\"{}\"\n",
            shipped
                .replace("PULL_INTERVAL=\"10s\"", "PULL_INTERVAL=\"1s\"")
                .replace("/etc/sentry/", &format!("{}/", etc.display())),
            s.runtime_dir.display(),
            state.display(),
            metrics.display(),
            s.conf.display()
        );
        let share_conf = etc.join("share.conf");
        std::fs::write(&share_conf, conf_text).expect("write");
        std::fs::set_permissions(
            &share_conf,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .expect("chmod");
        let b = Bridge::adopt(&share, &share_conf, &metrics);
        shim(
            &shims,
            "sentry-share",
            &format!(
                "exec {} --config {} \"$@\"",
                b.command_line(),
                share_conf.display()
            ),
        );
        let block = host_block
            .replace("host-a", machine)
            .replace("https://lapi.example.net:8080", &lapi.url)
            .replace("/etc/sentry/sentry.conf", &s.conf.display().to_string())
            .replace("/etc/sentry/", &format!("{}/", etc.display()))
            .replace("/etc/systemd/", &format!("{}/systemd/", h.display()));
        let o = run_block(&block, work.path(), &shims);
        assert!(o.success(), "the README's host block on {name}: {o}");
        assert!(
            o.stdout.contains(&format!("machine {machine}: login OK"))
                && o.stdout.contains("bouncer key: OK"),
            "check-config did not log in: {o}"
        );
        assert!(
            !o.stdout.contains("warning:"),
            "the shipped PUSH_MIN_PORTS warns against the shipped trigger: {o}"
        );
        let conf = std::fs::read_to_string(&share_conf).unwrap();
        assert!(
            conf.contains(&format!("MACHINE_ID=\"{machine}\"")),
            "{conf}"
        );
        // `systemctl restart sentry-enforcer` with the README's drop-in: the harness
        // starts the enforcer with the drop-in's SupplementaryGroups= (its config file
        // already has the README's CONTROL_GROUP line, not rewritten here).
        let dropin =
            std::fs::read_to_string(h.join("systemd/system/sentry-enforcer.service.d/share.conf"))
                .unwrap();
        let group = dropin
            .lines()
            .find_map(|l| l.strip_prefix("SupplementaryGroups="))
            .expect("SupplementaryGroups= in the drop-in");
        assert_eq!(group, "sentry-share", "{dropin}");
        s.settings = s.settings.clone().set("CONTROL_GROUP", group);
        // `enable --now sentry-share`: the test starts the bridge itself.
        s.start_enforcer();
        s.start_sensor();
        b.start();
        hosts.push((s, b));
    }
    let log = std::fs::read_to_string(&systemctl_log).unwrap();
    assert!(log.contains("enable --now sentry-share"), "{log}");
    let [(a, ba), (b, bb)] = <[(Sentry, Bridge); 2]>::try_from(hosts).unwrap();
    let hosts = [(&a, &ba), (&b, &bb)];
    wait_for(
        "both bridges to follow the decision stream",
        Duration::from_secs(15),
        &hosts,
        &lapi,
        || {
            [&a, &b].iter().all(|s| {
                s.sentryctl(&["metrics"])
                    .stdout
                    .contains("sentry_watch_clients 1")
            })
        },
    );

    // ---- a scan of A, blocked on B
    let scanner = IpAddr::V4(SCANNER_V4);
    a.nmap(&["-sS", "-p", "1-100", &TARGET_V4.to_string()]);
    let on_a = a.wait_blocked(scanner);
    let mut on_b = None;
    wait_for(
        "host B to block A's scanner",
        Duration::from_secs(20),
        &hosts,
        &lapi,
        || {
            on_b = fleet_record(&b, scanner, AuditDecision::Blocked);
            on_b.is_some()
        },
    );
    let latency_ms = on_b.expect("record").time_us.saturating_sub(on_a.time_us) / 1000;
    println!(
        "fleet (README steps, PUSH_MIN_PORTS=20, PULL_INTERVAL=1s): A -> B in {latency_ms} ms"
    );
    assert!(
        latency_ms <= 3000,
        "{latency_ms} ms\n{}",
        diag(&hosts, &lapi)
    );
    assert!(
        ba.log().contains("not pushed (yet): weak evidence"),
        "the first-probe block is logged as not pushed yet\n{}",
        ba.log()
    );
    assert!(ba.log().contains("pushed alert for"), "{}", ba.log());
    // A learns that the decision followed its own alert when it pulls it (within one
    // PULL_INTERVAL): a decision deleted before that is one A never saw (README).
    wait_for(
        "A to pull the decision it caused",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || fleet_record(&a, scanner, AuditDecision::AlreadyBlocked).is_some(),
    );

    // A's bridge must have pulled the decision too before it is deleted: one it never saw
    // arrive looks ended, not deleted, and A's own block is then kept. Both bridges pull
    // every second, so right after B's block A's pull may still be due (the test failed
    // about every other run, on main as well). Pulled, it is a control request to A's
    // enforcer (answered already_blocked: the sensor's block stands).
    wait_for(
        "A's bridge to pull the decision its alert caused",
        Duration::from_secs(15),
        &hosts,
        &lapi,
        || a.ctl_json(&["status"])["counters"]["control_requests"].as_u64() >= Some(1),
    );
    // ---- cscli decisions delete --ip: lifted on every host, A included.
    let o = lapi.cscli(&["decisions", "delete", "--ip", &scanner.to_string()]);
    assert!(o.success(), "{o}");
    wait_for(
        "B to lift the fleet block",
        Duration::from_secs(15),
        &hosts,
        &lapi,
        || {
            b.audit_for(scanner, AuditDecision::Unblocked)
                .iter()
                .any(|r| r.origin.as_deref() == Some("crowdsec"))
        },
    );
    wait_for(
        "A to lift its own block (its alert caused the deleted decision)",
        Duration::from_secs(30),
        &hosts,
        &lapi,
        || !a.audit_for(scanner, AuditDecision::Unblocked).is_empty(),
    );
    assert!(
        !a.nft_has(scanner),
        "A still blocks\n{}",
        diag(&hosts, &lapi)
    );
    assert!(!b.nft_has(scanner), "B still blocks");
    assert!(
        ba.log().contains("lifted too (DELETE_LIFTS_LOCAL=1)"),
        "{}",
        ba.log()
    );
    assert!(ba.alive() && bb.alive(), "{}", diag(&hosts, &lapi));
}

/// Issue #20: `sentryctl unblock` of a fleet block (on B) and of the detecting host's
/// own block (on A) stay lifted when the bridges restart (their startup poll hands the
/// decision out again); the decision itself stays in the fleet.
#[test]
fn a_bridge_restart_does_not_reblock_what_the_admin_unblocked() {
    let test = "a_bridge_restart_does_not_reblock_what_the_admin_unblocked";
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
    let settings = Settings::new(&["atcp"]).set("SCAN_TRIGGER", "0");
    let a = host("fleet-restart-a", settings.clone(), None);
    let b = host("fleet-restart-b", settings, None);
    let ba = bridge(&a, &lapi, "host-a", &key_a, "");
    let bb = bridge(&b, &lapi, "host-b", &key_b, "");
    let hosts = [(&a, &ba), (&b, &bb)];
    wait_for(
        "both bridges to follow the decision stream",
        Duration::from_secs(15),
        &hosts,
        &lapi,
        || {
            [&a, &b].iter().all(|s| {
                s.sentryctl(&["metrics"])
                    .stdout
                    .contains("sentry_watch_clients 1")
            })
        },
    );
    let scanner = IpAddr::V4(SCANNER_V4);
    a.nmap(&["-sS", "-p", "1-100", &TARGET_V4.to_string()]);
    a.wait_blocked(scanner);
    wait_for(
        "B to block A's scanner",
        Duration::from_secs(20),
        &hosts,
        &lapi,
        || fleet_record(&b, scanner, AuditDecision::Blocked).is_some(),
    );
    wait_for(
        "A to pull the decision it caused",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || fleet_record(&a, scanner, AuditDecision::AlreadyBlocked).is_some(),
    );

    for (s, br) in hosts {
        assert!(s.sentryctl(&["unblock", &scanner.to_string()]).success());
        wait_for(
            "the bridge to remember the unblock",
            Duration::from_secs(10),
            &hosts,
            &lapi,
            || br.log().contains("stay lifted on this host"),
        );
        assert!(!s.nft_has(scanner));
    }
    for (_, br) in hosts {
        br.stop();
        br.start();
    }
    for (_, br) in hosts {
        wait_for(
            "the restarted bridge to skip the lifted decision",
            Duration::from_secs(15),
            &hosts,
            &lapi,
            || {
                br.log()
                    .rsplit("--- restart ---")
                    .next()
                    .is_some_and(|l| l.contains("not enforced: lifted on this host"))
            },
        );
    }
    // A few more polls: still not blocked anywhere, while the decision stays.
    std::thread::sleep(Duration::from_secs(3));
    for (s, _) in hosts {
        assert!(
            !s.nft_has(scanner),
            "{} re-blocked\n{}",
            s.name,
            diag(&hosts, &lapi)
        );
    }
    assert_eq!(
        b.audit_for(scanner, AuditDecision::Blocked).len(),
        1,
        "B blocked it again\n{}",
        diag(&hosts, &lapi)
    );
    let list = lapi.cscli(&["decisions", "list", "-o", "json"]);
    assert!(list.stdout.contains(&scanner.to_string()), "{list}");
    assert!(ba.alive() && bb.alive());
}

/// Helper's note on issue #20: `sentryctl unblock` on the detecting host after its push
/// and before its bridge pulled the decision that followed (less than one PULL_INTERVAL
/// later) knew no decision to keep lifted, and that decision blocked the address again.
/// The bridge remembers the unblock and lifts the decision when it comes.
#[test]
fn an_unblock_before_the_pull_is_not_undone_by_the_decision() {
    let test = "an_unblock_before_the_pull_is_not_undone_by_the_decision";
    if !require_root(test) || !require_crowdsec(test) {
        return;
    }
    let _turn = serial();
    let lapi = Lapi::start();
    lapi.add_machine("host-a", "pw-host-a-0123456789");
    let key_a = lapi.add_bouncer("host-a");
    let a = host(
        "fleet-early-a",
        Settings::new(&["atcp"]).set("SCAN_TRIGGER", "0"),
        None,
    );
    // A long interval, so that the unblock lands between the push and the next pull.
    let ba = Bridge::prepare(
        a.dir.path(),
        &a.runtime_dir,
        &lapi.url,
        Some(("host-a", "pw-host-a-0123456789")),
        Some(&key_a),
        "PULL_INTERVAL=\"20s\"\nPUSH_MIN_PORTS=\"5\"\n",
    );
    ba.start();
    let hosts = [(&a, &ba)];
    wait_for(
        "the bridge to follow the decision stream",
        Duration::from_secs(15),
        &hosts,
        &lapi,
        || {
            a.sentryctl(&["metrics"])
                .stdout
                .contains("sentry_watch_clients 1")
        },
    );
    // The startup poll first (the pull waits up to 5 s for the stream's backlog): an
    // unblock before it is the startup poll's business, not this test's.
    std::thread::sleep(Duration::from_secs(6));
    let scanner = IpAddr::V4(SCANNER_V4);
    a.nmap(&["-sS", "-p", "1-100", &TARGET_V4.to_string()]);
    a.wait_blocked(scanner);
    wait_until(
        Duration::from_secs(15),
        "the push",
        || ba.log().contains("pushed alert for").then_some(()),
        || diag(&hosts, &lapi),
    );
    assert!(a.sentryctl(&["unblock", &scanner.to_string()]).success());
    let early = "before the fleet decision that follows this host's alert was pulled";
    wait_for(
        "the bridge to remember the early unblock",
        Duration::from_secs(10),
        &hosts,
        &lapi,
        || ba.log().contains(early),
    );
    wait_for(
        "the next pull to lift the decision here",
        Duration::from_secs(40),
        &hosts,
        &lapi,
        || {
            ba.log()
                .contains("not enforced: lifted on this host by sentryctl unblock")
        },
    );
    assert!(
        fleet_record(&a, scanner, AuditDecision::Blocked).is_none(),
        "the decision blocked the address again\n{}",
        diag(&hosts, &lapi)
    );
    assert!(!a.nft_has(scanner), "{}", diag(&hosts, &lapi));
    // The decision itself stays in the fleet (DELETE_ON_UNBLOCK is off).
    let d = lapi.cscli(&["decisions", "list", "-o", "json"]);
    assert!(d.stdout.contains(&scanner.to_string()), "{d}");
    assert!(ba.alive(), "{}", ba.log());
}
