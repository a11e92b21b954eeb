//! Fault cases: the enforcer SIGKILLed and restarted mid-scan, the sensor killed and
//! restarted, hostile local clients on the enforcer socket, and spoofed-source floods.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use sentry_proto::{Mode, Protocol};
use sentry_tests::netns::{SCANNER2_V4, SCANNER3_V4, SCANNER_V4, TARGET_V4};
use sentry_tests::sentry::{pid_alive, NFT_TABLE};
use sentry_tests::{
    require_root, require_tool, run, run_ok, wait_until, AuditDecision, Sentry, Settings, Side,
};
use serde_json::Value;

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "hping3") && require_tool(test, "nft")
}

fn syns(s: &Sentry, src: IpAddr, first_port: u16, count: u32) {
    let target = TARGET_V4.to_string();
    let (port, count, src) = (
        format!("++{first_port}"),
        count.to_string(),
        src.to_string(),
    );
    s.hping(&[
        "-a", &src, "-S", "-p", &port, "-c", &count, "-i", "u10000", &target,
    ]);
}

/// Delete the sentry table in the target namespace, as a reboot would.
fn drop_nft_table(s: &Sentry) {
    let out = run_ok(
        s.net.command(Side::Target, "nft").args(["list", "tables"]),
        Duration::from_secs(10),
    );
    for line in out.stdout.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["table", family, name] = parts.as_slice() {
            if *name == NFT_TABLE {
                run_ok(
                    s.net
                        .command(Side::Target, "nft")
                        .args(["delete", "table", family, name]),
                    Duration::from_secs(10),
                );
            }
        }
    }
    assert!(!s.nft_elements().contains(&SCANNER));
}

#[test]
fn enforcer_sigkill_restart_restores_blocks_and_delivers_queued_requests() {
    let test = "enforcer_sigkill_restart_restores_blocks_and_delivers_queued_requests";
    if !ready(test) {
        return;
    }
    let mut s = Sentry::start(test, Settings::new(&["atcp"]));
    syns(&s, SCANNER, 20, 3);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    s.kill_enforcer();
    // Scans while the enforcer is down: the detection chain and the sensor's NFLOG socket
    // outlive the enforcer, so the sensor still sees them and must queue them.
    let queued = [IpAddr::V4(SCANNER2_V4), IpAddr::V4(SCANNER3_V4)];
    for (i, src) in queued.iter().enumerate() {
        syns(&s, *src, 100 + 10 * u16::try_from(i).unwrap(), 3);
    }
    // Then the table is lost too (as with `nft flush ruleset`): blocks come back from the
    // state directory.
    drop_nft_table(&s);
    s.start_enforcer();
    // The earlier block is restored from the state dir...
    wait_until(
        Duration::from_secs(15),
        "the block of 10.203.0.1 to be restored after SIGKILL",
        || s.nft_elements().contains(&SCANNER).then_some(()),
        || s.diag(),
    );
    assert!(
        !s.audit_for(SCANNER, AuditDecision::Restored).is_empty(),
        "no `restored` audit record\n{}",
        s.diag()
    );
    // ...and the sensor reconnects and delivers what it queued.
    for src in queued {
        s.wait_blocked(src);
    }
    // No duplicate hosts.deny lines after the restart.
    let line = Sentry::hosts_deny_line(SCANNER);
    let n = s
        .hosts_deny_text()
        .lines()
        .filter(|l| l.trim() == line)
        .count();
    assert_eq!(n, 1, "hosts.deny line duplicated:\n{}", s.hosts_deny_text());
    assert!(s.blocked_list().contains(&SCANNER));
}

#[test]
fn sensor_killed_enforcer_keeps_state_and_serves_sentryctl() {
    let test = "sensor_killed_enforcer_keeps_state_and_serves_sentryctl";
    if !ready(test) {
        return;
    }
    let mut s = Sentry::start(test, Settings::new(&["atcp"]));
    syns(&s, SCANNER, 20, 3);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    let enforcer = s.enforcer_pid();
    s.kill_sensor();
    wait_until(
        Duration::from_secs(10),
        "status to show no sensor",
        || {
            s.status()
                .get("sensor")
                .is_some_and(Value::is_null)
                .then_some(())
        },
        || s.diag(),
    );
    assert!(pid_alive(enforcer));
    assert!(s.blocked_list().contains(&SCANNER));
    assert!(s.nft_elements().contains(&SCANNER));
    assert!(s.status()["active_blocks"].as_u64().unwrap_or(0) >= 1);
    s.start_sensor();
    let second = IpAddr::V4(SCANNER2_V4);
    syns(&s, second, 100, 3);
    s.wait_blocked(second);
    assert_eq!(s.enforcer_pid(), enforcer, "the enforcer restarted");
}

fn hostile(s: &Sentry, as_sensor_user: bool, args: &[&str]) -> Value {
    s.hostile(as_sensor_user, args, Duration::from_secs(60))
}

#[test]
fn hostile_clients_on_the_enforcer_socket() {
    let test = "hostile_clients_on_the_enforcer_socket";
    if !ready(test) {
        return;
    }
    let mut s = Sentry::start(test, Settings::new(&["atcp"]).without_sensor());
    let pid = s.enforcer_pid();
    // Malformed frames from the right uid: the connection is closed, the daemon lives on.
    for mode in [
        "garbage",
        "huge",
        "zero",
        "truncated",
        "bad-version",
        "no-hello",
        "trailing",
    ] {
        let r = hostile(&s, true, &[mode]);
        assert_eq!(
            r["closed"], true,
            "enforcer kept a `{mode}` connection open: {r}"
        );
        assert!(pid_alive(pid), "enforcer died on `{mode}`\n{}", s.diag());
        s.status();
    }
    // A well-formed Hello from the wrong uid (root is not the sensor user) is refused.
    let r = hostile(&s, false, &["hello"]);
    assert_eq!(r["closed"], true, "wrong uid accepted: {r}");
    assert!(
        !r["replies"].to_string().contains("Welcome"),
        "wrong uid got a Welcome: {r}"
    );
    // Another unprivileged user cannot even connect (socket mode 0660 root:sentry).
    let out = run(
        Command::new("setpriv")
            .args([
                "--reuid",
                "nobody",
                "--regid",
                "nogroup",
                "--clear-groups",
                env!("CARGO_BIN_EXE_sentry-hostile"),
            ])
            .arg(s.runtime_dir.join("enforcer.sock"))
            .arg("hello"),
        Duration::from_secs(20),
    );
    assert!(
        !out.success() && out.stderr.contains("connect"),
        "nobody could connect: {out}"
    );
    // A client sitting on half a header must not stall anyone else.
    let sock = s.runtime_dir.join("enforcer.sock");
    let mut holder = Command::new("setpriv")
        .args([
            "--reuid",
            "sentry",
            "--regid",
            "sentry",
            "--clear-groups",
            env!("CARGO_BIN_EXE_sentry-hostile"),
        ])
        .arg(&sock)
        .args(["hold", "6"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It stalls nobody: sentryctl answers (its own 10 s deadline) and the real sensor gets
    // in while the holder sits there, or at the latest once the enforcer has dropped it.
    s.status();
    s.start_sensor();
    let _ = holder.wait();
    let st = s.status();
    let rejected = st
        .pointer("/counters/rejected")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        + st.pointer("/counters/errors")
            .and_then(Value::as_u64)
            .unwrap_or(0);
    assert!(rejected >= 7, "hostile connections not counted: {st}");
    assert!(
        s.audit()
            .iter()
            .any(|r| r.decision == AuditDecision::Rejected),
        "no `rejected` audit record for the hostile connections"
    );
    syns(&s, SCANNER, 20, 3);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    assert_eq!(s.enforcer_pid(), pid);
}

#[test]
fn forged_requests_for_protected_addresses_are_never_blocked() {
    // A compromised sensor asks for blocks of addresses that must never be blocked.
    let test = "forged_requests_for_protected_addresses_are_never_blocked";
    if !require_root(test) || !require_tool(test, "nft") {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"])
            .ignore("192.0.2.0/24")
            .hostile_sensor(),
    );
    let protected = [
        "127.0.0.1",
        "127.5.5.5",
        "0.0.0.0",
        "224.0.0.1",
        "239.1.2.3",
        "255.255.255.255",
        "169.254.1.1",
        "10.203.0.2",
        "::1",
        "::",
        "ff02::1",
        "fe80::1",
        "fd00:203::2",
        "192.0.2.9",
    ];
    let mut args = vec!["flood", "2800"];
    args.extend(protected);
    let r = hostile(&s, true, &args);
    let decisions = r["decisions"].as_object().cloned().unwrap_or_default();
    let total: u64 = decisions.values().filter_map(Value::as_u64).sum();
    assert_eq!(total, 2800, "not every request was answered: {r}");
    for (d, _) in &decisions {
        assert!(
            ["never_block", "ignored", "rejected"].contains(&d.as_str()),
            "forged request got decision `{d}`: {r}"
        );
    }
    assert!(
        s.nft_elements().is_empty(),
        "something was blocked: {:?}",
        s.nft_elements()
    );
    assert_eq!(s.status()["active_blocks"], 0);
    for a in protected {
        s.assert_not_blocked(a.parse().unwrap());
    }
    let rss = Sentry::rss_kib(s.enforcer_pid());
    assert!(rss < 64 * 1024, "enforcer RSS {rss} KiB after the flood");
}

#[test]
fn spoofed_source_flood_is_bounded() {
    let test = "spoofed_source_flood_is_bounded";
    if !ready(test) {
        return;
    }
    let max_blocks = 25u64;
    let s = Sentry::start(
        test,
        Settings::new(&["atcp", "audp"])
            .set("MAX_BLOCKS", &max_blocks.to_string())
            .set("BLOCK_RATE", "600")
            .set("STATE_MAX_SOURCES", "1000")
            .ignore("10.0.0.0/8"),
    );
    let target = TARGET_V4.to_string();
    // 3000 SYNs from random sources to incrementing ports, about 1.5 s.
    s.hping(&[
        "--rand-source",
        "-S",
        "-p",
        "++1",
        "-c",
        "3000",
        "-i",
        "u500",
        &target,
    ]);
    s.hping(&[
        "--rand-source",
        "--udp",
        "-p",
        "++1",
        "-c",
        "1000",
        "-i",
        "u500",
        &target,
    ]);
    // Let the enforcer work through what the sensor sent: wait until the request counter
    // is stable for a second (bounded).
    let mut last = (u64::MAX, Instant::now());
    wait_until(
        Duration::from_secs(30),
        "the request counter to settle",
        || {
            let n = s.counter("requests");
            if n != last.0 {
                last = (n, Instant::now());
                return None;
            }
            (last.1.elapsed() > Duration::from_secs(1)).then_some(())
        },
        || s.diag(),
    );
    let st = s.status();
    let active = st["active_blocks"].as_u64().unwrap_or(u64::MAX);
    assert!(
        active <= max_blocks,
        "{active} active blocks > MAX_BLOCKS {max_blocks}: {st}"
    );
    assert!(active >= 1, "nothing blocked at all: {st}");
    let refused = s.counter("capped") + s.counter("rate_limited");
    assert!(
        refused >= 1,
        "neither MAX_BLOCKS nor BLOCK_RATE engaged: {st}"
    );
    let elems: BTreeSet<IpAddr> = s.nft_elements();
    assert!(
        elems.len() as u64 <= max_blocks,
        "{} nft elements",
        elems.len()
    );
    for ip in &elems {
        let bad = match ip {
            IpAddr::V4(a) => {
                a.is_loopback()
                    || a.is_multicast()
                    || a.is_broadcast()
                    || a.is_unspecified()
                    || a.is_link_local()
                    || a.octets()[0] == 10
            }
            IpAddr::V6(a) => a.is_loopback() || a.is_multicast() || a.is_unspecified(),
        };
        assert!(!bad, "blocked a protected or ignored address {ip}");
    }
    // Memory stays bounded on both sides.
    for (what, pid) in [("sensor", s.sensor_pid()), ("enforcer", s.enforcer_pid())] {
        let rss = Sentry::rss_kib(pid);
        assert!(rss < 96 * 1024, "{what} RSS {rss} KiB after the flood");
    }
    if let Some(tracked) = st
        .pointer("/sensor/stats/tracked_sources")
        .and_then(Value::as_u64)
    {
        assert!(
            tracked <= 1000,
            "sensor tracks {tracked} sources > STATE_MAX_SOURCES"
        );
    }
}
