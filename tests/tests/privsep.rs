//! A worker taken over cannot make the root parent do more than a compromised sensor
//! could (issue #22): the real `sentry-enforcer` is started with `--worker` naming
//! `sentry-privsep-hostile`, which speaks the parent's protocol with hostile requests.
//! Its gateway, an ignored address, loopback, an own address (also inside an IPv6 network
//! block), multicast, link-local and broadcast are refused for every verb; a table build
//! over the hard cap and single adds over the hard rate are refused; so is a served-port
//! request (RESTART_GRACE) over its cap; a malformed record (of the wrong length, or a
//! served-port item of the wrong shape) gets the worker killed and restarted. What reached the kernel, hosts.deny and the kill
//! command is checked, not only what the parent answered.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use sentry_tests::cmd::wait_until;
use sentry_tests::netns::{Side, SCANNER_V4, TARGET_V4, TARGET_V6};
use sentry_tests::{bin_dir, require_root, Sentry, Settings};

/// Addresses the floor must refuse, by name, with the refusals each verb may get (the
/// loopback addresses are also addresses of this host's `lo`).
fn forbidden() -> Vec<(&'static str, String, &'static [&'static str])> {
    vec![
        ("gateway", SCANNER_V4.to_string(), &["Gateway"]),
        ("ignored", "198.51.100.7".into(), &["Ignored"]),
        ("loopback", "127.0.0.1".into(), &["Loopback", "OwnAddress"]),
        ("loopback6", "::1".into(), &["Loopback", "OwnAddress"]),
        ("own", TARGET_V4.to_string(), &["OwnAddress"]),
        ("ownnet6", format!("{TARGET_V6}/64"), &["OwnAddress"]),
        ("multicast", "224.0.0.251".into(), &["Multicast"]),
        ("linklocal", "169.254.10.10".into(), &["LinkLocal"]),
        ("broadcast", "255.255.255.255".into(), &["Broadcast"]),
    ]
}

#[test]
fn a_hostile_worker_cannot_block_what_the_floor_protects_nor_exceed_the_caps() {
    let test = "a_hostile_worker_cannot_block_what_the_floor_protects_nor_exceed_the_caps";
    if !require_root(test) {
        return;
    }
    let mut settings = Settings::enforcer(&[
        ("BLACKHOLE_ROUTE", "1"),
        ("MAX_BLOCKS", "50"),
        ("BLOCK_RATE", "60"),
        ("FLEET_BLOCK_RATE", "60"),
    ]);
    settings.enforcer_args.extend([
        "--worker".to_string(),
        bin_dir()
            .join("sentry-privsep-hostile")
            .display()
            .to_string(),
    ]);
    let mut s = Sentry::prepare(test, settings);
    // The kill command leaves a file named after its target: what ran is on disk.
    let ran = s.dir.path().join("ran");
    std::fs::create_dir(&ran).unwrap();
    s.settings.keys.insert(
        "KILL_RUN_CMD".into(),
        format!("/usr/bin/touch {}/$TARGET$", ran.display()),
    );
    s.write_config();
    // This host's gateway is the scanner's side of the pair.
    sentry_tests::cmd::run(
        s.net.command(Side::Target, "ip").args([
            "route",
            "add",
            "default",
            "via",
            &SCANNER_V4.to_string(),
        ]),
        Duration::from_secs(10),
    );
    let mut plan: Vec<String> = forbidden()
        .iter()
        .map(|(n, a, _)| format!("{n} {a}"))
        .collect();
    plan.push("legit 203.0.113.9".into());
    std::fs::write(s.dir.path().join("hostile-worker.plan"), plan.join("\n")).unwrap();
    // MAX_BLOCKS 50: the parent's hard cap is 100 elements per build.
    std::fs::write(s.dir.path().join("hostile-worker.cap"), "100").unwrap();
    s.spawn_enforcer();
    let log = wait_until(
        Duration::from_secs(60),
        "the hostile worker's second restart",
        || {
            let l = s.enforcer_log();
            l.contains("RESTARTED 2").then_some(l)
        },
        || s.enforcer_log(),
    );
    let mut got: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    for l in log.lines().filter(|l| l.starts_with("RESULT ")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        got.insert(
            (f[1].to_string(), f[2].to_string()),
            (f[3].to_string(), f[4].to_string()),
        );
    }
    for (name, addr, why) in forbidden() {
        for verb in ["NftAdd", "RouteAdd", "DenyAdd", "KillRunCmd"] {
            let (kind, code) = got
                .get(&(name.to_string(), verb.to_string()))
                .unwrap_or_else(|| panic!("no answer for {name} {verb}:\n{log}"));
            assert_eq!(
                kind, "Refused",
                "{verb} {name} ({addr}) was not refused:\n{log}"
            );
            let code: u8 = code.parse().unwrap();
            let reason = sentry_privsep::Refusal::from_u8(code)
                .map(|r| format!("{r:?}"))
                .unwrap_or_default();
            assert!(
                why.contains(&reason.as_str()),
                "{verb} {name} ({addr}): refused as {reason}, not {why:?}:\n{log}"
            );
        }
    }
    for verb in ["NftAdd", "RouteAdd", "DenyAdd", "KillRunCmd"] {
        let (kind, _) = &got[&("legit".to_string(), verb.to_string())];
        assert_eq!(kind, "Ok", "{verb} of a legitimate address failed:\n{log}");
    }
    // What the kernel, hosts.deny and the kill command saw.
    let set = s.nft_elements();
    let deny = s.hosts_deny_text();
    for (name, addr, _) in forbidden() {
        let ip: IpAddr = addr.split('/').next().unwrap().parse().unwrap();
        assert!(!set.contains(&ip), "{name} {ip} is in the block set");
        assert!(
            !deny.contains(&format!(" {ip} ")),
            "{name} {ip} is in hosts.deny:\n{deny}"
        );
        assert!(
            !ran.join(ip.to_string()).exists(),
            "the kill command ran for {name} {ip}"
        );
    }
    assert!(
        ran.join("203.0.113.9").exists(),
        "the kill command did not run for the legitimate address"
    );
    assert!(set.contains(&"203.0.113.9".parse::<IpAddr>().unwrap()));
    // Hard caps.
    let cap = log
        .lines()
        .find(|l| l.starts_with("CAP "))
        .expect("CAP line");
    assert!(
        cap.starts_with("CAP Refused"),
        "a build over the hard cap was taken: {cap}"
    );
    let rate = log
        .lines()
        .find(|l| l.starts_with("RATE "))
        .expect("RATE line");
    let num = |k: &str| -> u32 {
        rate.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    // BLOCK_RATE 60 + FLEET_BLOCK_RATE 60: at most 2 * 120 single adds a minute.
    assert!(num("ok=") <= 240, "over the hard rate: {rate}");
    assert!(
        num("refused=") >= 2500,
        "the hard rate refused too little: {rate}"
    );
    assert!(log.contains("GARBAGE"));
    // Served ports: one item is taken (or fails for want of the sets, which only a
    // detection chain creates), a request over the cap is refused, a malformed item is a
    // bad record like any other.
    let served = log
        .lines()
        .find(|l| l.starts_with("SERVED "))
        .expect("SERVED line");
    assert!(
        served.starts_with("SERVED Ok 0 1") || served.starts_with("SERVED Fail"),
        "a served-port item: {served}"
    );
    let too_many = sentry_privsep::Refusal::TooMany as u8;
    assert!(
        log.contains(&format!("SERVED_OVER Refused {too_many}")),
        "a served-port request over the cap was taken:\n{log}"
    );
    assert!(log.contains("SERVED_GARBAGE"));
    assert!(
        log.contains("served-port item: add without a timeout"),
        "the malformed served-port item was not named:\n{log}"
    );
    println!(
        "FIGURE hostile worker: {} refusals checked, {rate}, {cap}",
        got.len()
    );
    s.stop_all();
}
