//! The enforcer notices its nftables table deleted, flushed or edited by another process
//! and rebuilds it with every active block (audited), instead of leaving the host open
//! until its next restart. Runs the real enforcer in a test namespace; needs root and nft.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sentry_tests::sentry::NFT_TABLE;
use sentry_tests::{
    require_root, require_tool, run_ok, AuditDecision, AuditLine, Sentry, Settings, Side,
};

const BLOCKED: [&str; 3] = ["198.18.0.11", "198.18.0.12", "2001:db8::11"];

/// The elements they are: the IPv6 source as its /64 (BLOCK_PREFIX6), in `v6net`.
fn blocked() -> BTreeSet<IpAddr> {
    ["198.18.0.11", "198.18.0.12", "2001:db8::"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
}

/// Three blocks made through the enforcer socket, as the sensor would ask for them.
fn with_three_blocks(test: &str) -> Sentry {
    let s = Sentry::start(test, Settings::new(&["atcp"]).hostile_sensor());
    let mut args = vec!["flood", "3"];
    args.extend(BLOCKED);
    let r = s.hostile(true, &args, Duration::from_secs(30));
    assert_eq!(r["decisions"]["blocked"], 3, "{r}\n{}", s.diag());
    assert_eq!(s.nft_elements(), blocked());
    s
}

/// Tamper with the table from outside, then wait (bounded) for every block to be back.
fn tamper_and_wait(s: &Sentry, args: &[&str]) -> Duration {
    let t = Instant::now();
    run_ok(
        s.net.command(Side::Target, "nft").args(args),
        Duration::from_secs(10),
    );
    loop {
        if s.nft_elements() == blocked() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "`nft {}`: blocks not back within 3 s: {:?}\n{}",
            args.join(" "),
            s.nft_elements(),
            s.diag()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rebuild_records(s: &Sentry) -> Vec<AuditLine> {
    s.audit()
        .into_iter()
        .filter(|r| r.decision == AuditDecision::Restored && r.reason.contains("rebuilt with"))
        .collect()
}

/// The audit record is written right after the elements are back: wait for it, bounded.
fn wait_rebuild_records(s: &Sentry, n: usize) -> Vec<AuditLine> {
    let t = Instant::now();
    loop {
        let recs = rebuild_records(s);
        if recs.len() >= n || t.elapsed() > Duration::from_secs(3) {
            return recs;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_flushed_ruleset_or_deleted_table_is_rebuilt_with_every_block() {
    let test = "a_flushed_ruleset_or_deleted_table_is_rebuilt_with_every_block";
    if !require_root(test) || !require_tool(test, "nft") {
        return;
    }
    let s = with_three_blocks(test);
    let pid = s.enforcer_pid();
    for args in [
        vec!["flush", "ruleset"],
        vec!["delete", "table", "inet", NFT_TABLE],
    ] {
        let took = tamper_and_wait(&s, &args);
        eprintln!("`nft {}`: every block back after {took:?}", args.join(" "));
    }
    let recs = wait_rebuild_records(&s, 2);
    assert_eq!(
        recs.len(),
        2,
        "one audited rebuild per tampering: {recs:?}\n{}",
        s.diag()
    );
    assert!(recs
        .iter()
        .all(|r| r.reason.contains("rebuilt with 3 blocks")));
    // The drop rules are back too, not only the sets.
    let rules = s.nft_ruleset();
    assert!(
        rules.contains("ip saddr @v4") && rules.contains("ip6 saddr @v6"),
        "{rules}"
    );
    assert_eq!(s.enforcer_pid(), pid);
}

#[test]
fn a_flushed_set_or_deleted_element_is_put_back() {
    let test = "a_flushed_set_or_deleted_element_is_put_back";
    if !require_root(test) || !require_tool(test, "nft") {
        return;
    }
    let s = with_three_blocks(test);
    tamper_and_wait(&s, &["flush", "set", "inet", NFT_TABLE, "v4"]);
    tamper_and_wait(
        &s,
        &[
            "delete",
            "element",
            "inet",
            NFT_TABLE,
            "v6net",
            "{ 2001:db8:: }",
        ],
    );
    assert_eq!(wait_rebuild_records(&s, 2).len(), 2, "{}", s.diag());
    // Our own changes are not tampering: an unblock is not undone by a rebuild.
    let out = s.sentryctl(&["unblock", "198.18.0.11"]);
    assert!(out.success(), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!s
        .nft_elements()
        .contains(&"198.18.0.11".parse::<IpAddr>().unwrap()));
    assert_eq!(
        rebuild_records(&s).len(),
        2,
        "our own unblock triggered a rebuild\n{}",
        s.diag()
    );
}
