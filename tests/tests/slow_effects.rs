//! Issue #21: a slow KILL_* step never holds the decision path or `sentryctl status`. A
//! KILL_RUN_CMD that sleeps 5 s: the scanner is in the firewall within 1 s, a second
//! scanner blocked meanwhile too, `sentryctl status` answers within 1 s, and the
//! command's result arrives later in an `effects` audit record, after the decision's.
//! Real binaries in private namespaces; needs root and hping3.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use sentry_tests::audit::{ActionKind, ActionStatus};
use sentry_tests::netns::{SCANNER2_V4, SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, require_tool, wait_until, AuditDecision, Sentry, Settings};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);
const SCANNER2: IpAddr = IpAddr::V4(SCANNER2_V4);

/// Six SYNs from `src` to consecutive ports from `first_port` (SCAN_TRIGGER=2: the
/// third port reports it).
fn scan(s: &Sentry, src: IpAddr, first_port: u16) {
    let (target, src, port) = (
        TARGET_V4.to_string(),
        src.to_string(),
        format!("++{first_port}"),
    );
    s.hping(&[
        "-a", &src, "-S", "-p", &port, "-c", "6", "-i", "u20000", &target,
    ]);
}

fn in_firewall_within_1s(s: &Sentry, ip: IpAddr) -> Duration {
    let t = Instant::now();
    wait_until(
        Duration::from_secs(1),
        "the scanner in the firewall within 1 s while KILL_RUN_CMD sleeps",
        || s.nft_elements().contains(&ip).then_some(()),
        || s.diag(),
    );
    t.elapsed()
}

#[test]
fn a_sleeping_kill_run_cmd_holds_no_decision_and_no_status() {
    let test = "a_sleeping_kill_run_cmd_holds_no_decision_and_no_status";
    if !(require_root(test) && require_tool(test, "hping3")) {
        return;
    }
    // SCAN_TRIGGER=2: the block is the enforcer's decision, not the kernel's first hit.
    let mut s = Sentry::prepare(test, Settings::new(&["atcp"]).set("SCAN_TRIGGER", "2"));
    let slow = s.path("slow-command");
    std::fs::write(&slow, "#!/bin/sh\nexec sleep 5\n").unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cmd = format!("{} $TARGET$", slow.display());
    s.settings = s.settings.clone().set("KILL_RUN_CMD", &cmd);
    s.write_config();
    s.start_enforcer();
    s.start_sensor();
    let started = Instant::now();
    scan(&s, SCANNER, 40);
    let first = in_firewall_within_1s(&s, SCANNER);
    // A second scanner while the first one's command still sleeps.
    scan(&s, SCANNER2, 60);
    let second = in_firewall_within_1s(&s, SCANNER2);
    let t = Instant::now();
    let st = s.status();
    let status = t.elapsed();
    assert!(
        status < Duration::from_secs(1),
        "sentryctl status took {status:?}"
    );
    assert!(st.get("pid").is_some(), "{st}");
    // The decision is audited at once, with the element only; the hosts.deny line and
    // the command come later, in order, as `effects`.
    let decided = s.wait_decision(SCANNER, AuditDecision::Blocked);
    assert!(
        decided
            .actions
            .iter()
            .all(|a| a.action == ActionKind::Nftables),
        "{decided:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the checks took {:?}",
        started.elapsed()
    );
    assert!(
        s.audit_for(SCANNER, AuditDecision::Effects).is_empty(),
        "the command finished too early: {:?}",
        started.elapsed()
    );
    let effects = s.wait_decision_within(SCANNER, AuditDecision::Effects, Duration::from_secs(10));
    let kinds: Vec<ActionKind> = effects.actions.iter().map(|a| a.action).collect();
    assert_eq!(
        kinds,
        [ActionKind::HostsDeny, ActionKind::KillRunCmd],
        "{effects:?}"
    );
    assert!(
        effects.actions.iter().all(|a| a.status == ActionStatus::Ok),
        "{effects:?}"
    );
    assert!(effects.time_us > decided.time_us + 4_000_000, "{effects:?}");
    assert!(s.hosts_deny_has(SCANNER));
    // The second scanner's effects run after the first's (one worker, in order).
    let effects2 =
        s.wait_decision_within(SCANNER2, AuditDecision::Effects, Duration::from_secs(10));
    assert!(
        effects2.time_us > effects.time_us + 4_000_000,
        "{effects2:?}"
    );
    eprintln!("firewall after {first:?} and {second:?}, status in {status:?}");
}
