//! Integration tests: the real `sentry-enforcer` in a private network namespace, driven by a
//! fake sensor and by hostile clients; checked through nft, hosts.deny, the audit log, the
//! PortSentry text files and `sentryctl`.

use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Output;
use std::time::{Duration, Instant};

use sentry_proto::{
    Decision, EnforcerFrame, Mode, Protocol, Refusal, SensorFrame, PROTOCOL_VERSION,
};
use sentry_tests::fake::{frame, hello};
use sentry_tests::sentry::NFT_TABLE;
use sentry_tests::{
    bins, now_ms, now_us, proc_fields, require_root, wait_until, ActionKind, ActionStatus,
    AuditDecision, AuditLine, FakeSensor, NetPair, Req, Sentry, Settings, Side,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The enforcer alone in the target namespace of a fresh pair, not started yet.
fn rig(test: &str, keys: &[(&str, &str)]) -> Sentry {
    Sentry::prepare(test, Settings::enforcer(keys))
}

/// `test`'s enforcer started with `keys`, and a fake sensor past the handshake; `None`
/// (after the visible skip line) when not root.
fn up(test: &str, keys: &[(&str, &str)]) -> Option<(Sentry, FakeSensor)> {
    if !require_root(test) {
        return None;
    }
    let mut env = rig(test, keys);
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    Some((env, s))
}

/// Ask about `(addr, protocol, port)` until the enforcer answers `never_block`, lifting
/// the block each time it still blocks; fail with `what` after `within`.
fn until_never_blocked(
    env: &Sentry,
    s: &mut FakeSensor,
    (addr, protocol, port): (&str, Protocol, u16),
    within: Duration,
    pause: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    loop {
        match s.block(addr, protocol, port) {
            Decision::NeverBlock => break,
            Decision::Blocked => {
                assert!(env.sentryctl(&["unblock", addr]).success());
            }
            // The root parent's floor (issue #22) learned the gateway before the worker's
            // judge did and refused the element: nothing was blocked.
            Decision::Failed => {
                assert!(
                    !env.nft_has(addr.parse().unwrap()),
                    "a refused add is in the set"
                );
            }
            d => panic!("unexpected {d:?}"),
        }
        assert!(Instant::now() < deadline, "{what}\n{}", env.enforcer_log());
        std::thread::sleep(pause);
    }
}

/// Ask to block `addr` until it is blocked, within `within`; meanwhile a never-block answer
/// must have blocked nothing. The root parent's floor and the worker's judge each watch the
/// routes (issue #22: the parent trusts no one for its floor), so for a moment after a
/// default route moves one of them may still protect the old gateway (conservative).
fn until_blocked(
    env: &Sentry,
    s: &mut FakeSensor,
    (addr, protocol, port): (&str, Protocol, u16),
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    loop {
        match s.block(addr, protocol, port) {
            Decision::Blocked => break,
            Decision::NeverBlock => assert!(!env.nft_has(addr.parse().unwrap()), "{what}"),
            d => panic!("unexpected {d:?}"),
        }
        assert!(Instant::now() < deadline, "{what}\n{}", env.enforcer_log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `prog args` run in the enforcer's namespace.
fn ns(env: &Sentry, prog: &str, args: &[&str]) -> std::process::Output {
    env.net
        .command(Side::Target, prog)
        .args(args)
        .output()
        .expect("ip netns exec")
}

#[test]
fn decisions_end_to_end() {
    let Some((env, mut s)) = up("decisions_end_to_end", &[("BLOCK_UDP", "0")]) else {
        return;
    };

    // blocked: nft element + hosts.deny line + audit + PortSentry files. The element is
    // in when the decision answers; the deny line follows from the effects worker.
    assert_eq!(s.block("192.0.2.10", Protocol::Tcp, 143), Decision::Blocked);
    assert!(env.nft_has(ip("192.0.2.10")), "{}", env.enforcer_log());
    let env_ref = &env;
    let has_line = |l: &'static str| {
        move || {
            env_ref
                .hosts_deny_text()
                .lines()
                .any(|x| x == l)
                .then_some(())
        }
    };
    wait_until(
        Duration::from_secs(5),
        "the hosts.deny line",
        has_line("ALL: 192.0.2.10 : DENY"),
        || env.enforcer_log(),
    );
    let rec = &env.audit_for(ip("192.0.2.10"), AuditDecision::Blocked)[0];
    assert_eq!(rec.protocol, Some(Protocol::Tcp));
    assert_eq!(rec.port, Some(143));
    assert_eq!(rec.scan.as_deref(), Some("syn"));
    assert_eq!(rec.mode, Some(Mode::Stcp));
    assert_eq!(rec.peer.map(|p| p.uid), Some(0));
    assert!(rec.time.ends_with('Z'));
    let actions = &rec.actions;
    assert_eq!(actions.len(), 1, "{rec:?}");
    assert_eq!(actions[0].action, ActionKind::Nftables);
    assert_eq!(actions[0].status, ActionStatus::Ok);
    let fx = &env.audit_for(ip("192.0.2.10"), AuditDecision::Effects)[0];
    assert_eq!(fx.actions.len(), 1, "{fx:?}");
    assert_eq!(fx.actions[0].action, ActionKind::HostsDeny);
    assert_eq!(fx.actions[0].status, ActionStatus::Ok);
    assert_eq!(
        fx.actions[0].target.as_deref(),
        Some("ALL: 192.0.2.10 : DENY")
    );
    let hist = std::fs::read_to_string(env.state_dir.join("sentry.history")).unwrap();
    assert!(
        hist.contains("Host: 192.0.2.10/192.0.2.10 Port: 143 TCP Blocked"),
        "{hist}"
    );
    let blocked = std::fs::read_to_string(env.state_dir.join("sentry.blocked")).unwrap();
    assert!(blocked.contains("Host: 192.0.2.10/192.0.2.10 Port: 143 TCP Blocked"));

    // IPv6: its /64 (BLOCK_PREFIX6) in the v6net set, bracketed with its length in
    // hosts.deny (hosts_access(5): [n:n::]/m)
    assert_eq!(
        s.block("2001:db8::10", Protocol::Tcp, 22),
        Decision::Blocked
    );
    assert!(env.nft_has(ip("2001:db8::10")));
    assert!(env.nft_set("v6net").contains(&ip("2001:db8::")));
    wait_until(
        Duration::from_secs(5),
        "the IPv6 hosts.deny line",
        has_line("ALL: [2001:db8::]/64 : DENY"),
        || env.enforcer_log(),
    );

    // already blocked: nothing new
    assert_eq!(
        s.block("192.0.2.10", Protocol::Tcp, 80),
        Decision::AlreadyBlocked
    );
    assert_eq!(
        env.hosts_deny_text()
            .matches("ALL: 192.0.2.10 : DENY")
            .count(),
        1
    );
    // BLOCK_UDP=0
    assert_eq!(s.block("192.0.2.11", Protocol::Udp, 53), Decision::LogOnly);
    assert!(!env.nft_has(ip("192.0.2.11")));
    // never-block
    for a in [
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "169.254.1.1",
        "::1",
        "fe80::1",
        "ff02::1",
    ] {
        assert_eq!(s.block(a, Protocol::Tcp, 22), Decision::NeverBlock, "{a}");
    }
    // ignore list (198.51.100.0/24)
    assert_eq!(
        s.block("198.51.100.77", Protocol::Tcp, 22),
        Decision::Ignored
    );
    // field validation: port 0 and protocol/scan mismatch are rejected, connection stays
    let bad = Req::tcp("192.0.2.12").seq(100).port(0).build();
    assert_eq!(s.send_req(bad), Decision::Rejected);
    let bad = Req::tcp("192.0.2.12")
        .seq(101)
        .port(22)
        .protocol(Protocol::Udp)
        .build();
    assert_eq!(s.send_req(bad), Decision::Rejected);
    let future = Req::tcp("192.0.2.12")
        .seq(102)
        .port(22)
        .last_seen_in(3_600_000)
        .build();
    assert_eq!(s.send_req(future), Decision::Rejected);
    // A mode the sensor did not announce (it said stcp + sudp).
    let unannounced = Req::tcp("192.0.2.12")
        .seq(103)
        .port(22)
        .mode(Mode::Atcp)
        .build();
    assert_eq!(s.send_req(unannounced), Decision::Rejected);
    assert!(env
        .audit_for(ip("192.0.2.12"), AuditDecision::Rejected)
        .iter()
        .any(|r| r.reason.contains("not announced")));
    s.seq = 103;
    assert!(!env.nft_has(ip("192.0.2.12")));
    for (a, d) in [
        ("127.0.0.1", AuditDecision::NeverBlock),
        ("198.51.100.77", AuditDecision::Ignored),
        ("192.0.2.11", AuditDecision::LogOnly),
        ("192.0.2.10", AuditDecision::AlreadyBlocked),
        ("192.0.2.12", AuditDecision::Rejected),
    ] {
        assert!(
            !env.audit_for(ip(a), d).is_empty(),
            "no {d:?} record for {a}"
        );
    }

    // sentryctl status --json
    s.send(&SensorFrame::Stats(sentry_proto::SensorStats {
        packets: 42,
        ..Default::default()
    }));
    assert_eq!(s.block("192.0.2.13", Protocol::Tcp, 23), Decision::Blocked);
    let st = env.ctl_json(&["status"]);
    assert_eq!(st["active_blocks"], 3);
    assert_eq!(st["counters"]["blocked"], 3);
    assert_eq!(st["counters"]["already_blocked"], 1);
    assert_eq!(st["counters"]["never_block"], 8);
    assert_eq!(st["counters"]["ignored"], 1);
    assert_eq!(st["counters"]["log_only"], 1);
    assert_eq!(st["counters"]["rejected"], 4);
    assert_eq!(st["sensor"]["name"], "fake-sensor");
    assert_eq!(st["sensor"]["uid"], 0);
    assert_eq!(st["sensor"]["protocol_version"], PROTOCOL_VERSION);
    assert_eq!(st["sensor"]["stats"]["packets"], 42);
    assert_eq!(st["config_path"], env.conf.display().to_string());
    assert!(!st["recent"].as_array().unwrap().is_empty());
    // Recent decisions use the decision-record schema's names (docs/records.md), as the
    // audit log does.
    let last = st["recent"].as_array().unwrap().last().unwrap();
    assert_eq!(last["schema"], 1, "{last}");
    assert_eq!(last["decision"], "blocked", "{last}");
    assert_eq!(last["source"], "192.0.2.13", "{last}");
    assert!(
        last["time_us"].as_u64().unwrap() > 1_600_000_000_000_000,
        "{last}"
    );
    assert!(last.get("time_ms").is_none(), "{last}");
    let text = env.sentryctl(&["status"]);
    assert!(text.stdout.contains("sensor:   connected: fake-sensor"));

    // sentryctl blocked / unblock
    let list = env.ctl_json(&["blocked"]);
    let addrs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, ["192.0.2.10", "2001:db8::", "192.0.2.13"]);
    assert_eq!(list[1]["prefix6"], 64);
    assert!(env.sentryctl(&["blocked"]).stdout.contains("2001:db8::/64"));
    let u = env.ctl_json(&["unblock", "192.0.2.10"]);
    assert_eq!(u["was_blocked"], true);
    assert!(!env.nft_has(ip("192.0.2.10")));
    assert!(!env.hosts_deny_text().contains("192.0.2.10"));
    assert_eq!(
        env.audit_for(ip("192.0.2.10"), AuditDecision::Unblocked)
            .len(),
        1
    );
    let blocked = std::fs::read_to_string(env.state_dir.join("sentry.blocked")).unwrap();
    assert!(!blocked.contains("192.0.2.10/"), "{blocked}");
    let u = env.ctl_json(&["unblock", "192.0.2.10"]);
    assert_eq!(u["was_blocked"], false);
    // and it can be blocked again
    assert_eq!(s.block("192.0.2.10", Protocol::Tcp, 143), Decision::Blocked);

    // syslog-compatible lines (stderr with --log-stderr)
    let log = env.enforcer_log();
    assert!(
        log.contains("attackalert: Host 192.0.2.10 has been blocked via wrappers with string: \"ALL: 192.0.2.10 : DENY\""),
        "{log}"
    );
    assert!(log.contains("attackalert: Host: 192.0.2.10 is already blocked. Ignoring"));
    assert!(env.enforcer_alive());
}

#[test]
fn sockets_have_explicit_modes_and_control_is_root_only() {
    if !require_root("sockets_have_explicit_modes_and_control_is_root_only") {
        return;
    }
    let mut env = rig("sockets_have_explicit_modes_and_control_is_root_only", &[]);
    env.settings.sensor_user = "nobody".into();
    env.start_enforcer();
    let md = std::fs::metadata(env.sensor_sock()).unwrap();
    assert_eq!(md.mode() & 0o777, 0o660);
    assert_eq!(md.uid(), 0);
    assert_eq!(md.gid(), 65534, "group = nobody's primary group");
    let md = std::fs::metadata(env.runtime_dir.join("control.sock")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o600);
    assert_eq!((md.uid(), md.gid()), (0, 0));
    // sentryctl as nobody cannot reach the control socket
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bins().sentryctl)
        .arg("--runtime-dir")
        .arg(&env.runtime_dir)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // a stale socket file is replaced on restart; a live enforcer is not displaced
    env.kill_enforcer();
    assert!(env.sensor_sock().exists());
    env.start_enforcer();
    let second = std::process::Command::new("ip")
        .args(["netns", "exec", &env.net.target])
        .arg(bins().enforcer)
        .arg("--config")
        .arg(&env.conf)
        .arg("--runtime-dir")
        .arg(&env.runtime_dir)
        // The first one's: the second must stop at the live socket before it reads
        // anything (the worker's files are checked before the sockets are bound).
        .arg("--state-dir")
        .arg(&env.state_dir)
        .args(["--sensor-user", "nobody", "--log-stderr"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another enforcer is running"));
    assert!(env.enforcer_alive());
    assert!(env.sentryctl(&["status"]).success());
}

#[test]
fn wrong_uid_is_refused_and_audited_and_a_nonroot_sensor_is_served() {
    if !require_root("wrong_uid_is_refused_and_audited_and_a_nonroot_sensor_is_served") {
        return;
    }
    let mut env = rig(
        "wrong_uid_is_refused_and_audited_and_a_nonroot_sensor_is_served",
        &[],
    );
    env.settings.sensor_user = "nobody".into();
    // The non-root client below is this test binary: it is the "installed sensor" here,
    // so it passes the peer check (issue #21) and its requests reach the engine.
    env.settings.enforcer_args.push("--sensor-exe".into());
    env.settings
        .enforcer_args
        .push(std::env::current_exe().unwrap().display().to_string());
    env.start_enforcer();
    // We are root, not nobody.
    let mut s = env.connect();
    // The enforcer may refuse before reading anything, so the write may fail.
    let _ = s.send_raw(&frame(&hello()));
    assert_eq!(
        s.recv().unwrap(),
        EnforcerFrame::Refused(Refusal::NotAuthorized)
    );
    assert!(s.closed());
    let rej: Vec<_> = env
        .audit()
        .into_iter()
        .filter(|r| r.decision == AuditDecision::Rejected)
        .collect();
    assert_eq!(rej.len(), 1);
    assert!(rej[0].reason.contains("uid 0"));
    assert_eq!(rej[0].peer.map(|p| p.uid), Some(0));
    // A real unprivileged client (this test binary re-executed as nobody) is served.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "nobody_sensor_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SENTRY_TEST_SOCK", env.sensor_sock())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CHILD DECISION Blocked"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.nft_has(ip("192.0.2.50")));
    let rec = &env.audit_for(ip("192.0.2.50"), AuditDecision::Blocked)[0];
    assert_eq!(rec.peer.map(|p| p.uid), Some(65534));
}

/// Runs only as the child of the test above (as user nobody).
#[test]
#[ignore = "helper: run by wrong_uid_is_refused_and_audited_and_a_nonroot_sensor_is_served"]
fn nobody_sensor_child() {
    let Some(p) = std::env::var_os("SENTRY_TEST_SOCK") else {
        return;
    };
    let mut s = FakeSensor::connect(std::path::Path::new(&p));
    s.handshake();
    let d = s.block("192.0.2.50", Protocol::Tcp, 25);
    println!("CHILD DECISION {d:?}");
}

#[test]
fn hostile_frames_close_the_connection_but_never_the_daemon() {
    if !require_root("hostile_frames_close_the_connection_but_never_the_daemon") {
        return;
    }
    let mut env = rig(
        "hostile_frames_close_the_connection_but_never_the_daemon",
        &[],
    );
    env.start_enforcer();
    let before = env.audit().len();
    let cases: Vec<(&str, Vec<u8>, Option<Refusal>)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            Some(Refusal::MalformedFrame),
        ),
        (
            "forged length",
            vec![0xff, 0xff, 0xff, 0xf0, 1, 2, 3],
            Some(Refusal::MalformedFrame),
        ),
        (
            "zero length",
            vec![0, 0, 0, 0],
            Some(Refusal::MalformedFrame),
        ),
        (
            "unknown tag",
            vec![0, 0, 0, 4, 0, 0, 0, 9],
            Some(Refusal::MalformedFrame),
        ),
        (
            "block before hello",
            frame(&SensorFrame::Block(
                Req::tcp("192.0.2.1").seq(1).port(22).build(),
            )),
            Some(Refusal::HandshakeRequired),
        ),
        (
            "wrong version",
            frame(&SensorFrame::Hello(sentry_proto::Hello {
                version: PROTOCOL_VERSION + 7,
                sensor: "x".into(),
                pid: 1,
                modes: vec![sentry_proto::Mode::Stcp],
            })),
            Some(Refusal::VersionMismatch {
                ours: PROTOCOL_VERSION,
            }),
        ),
        (
            "bad hello name",
            frame(&SensorFrame::Hello(sentry_proto::Hello {
                version: PROTOCOL_VERSION,
                sensor: "evil\nname".into(),
                pid: 1,
                modes: vec![sentry_proto::Mode::Stcp],
            })),
            Some(Refusal::MalformedFrame),
        ),
        ("truncated then close", vec![0, 0, 0, 50, 1, 2], None),
    ];
    for (name, bytes, want) in &cases {
        let mut s = env.connect();
        let _ = s.send_raw(bytes);
        if want.is_none() {
            let _ = s.s.shutdown(std::net::Shutdown::Write);
        }
        if let Some(r) = want {
            assert_eq!(s.recv().ok(), Some(EnforcerFrame::Refused(*r)), "{name}");
        }
        assert!(s.closed(), "{name}: connection not closed");
        assert!(env.enforcer_alive(), "{name}: enforcer died");
    }
    // After the handshake: second hello, replayed sequence number.
    let mut s = env.connect_welcomed();
    s.send(&hello());
    assert_eq!(
        s.recv().ok(),
        Some(EnforcerFrame::Refused(Refusal::MalformedFrame))
    );
    let mut s = env.connect_welcomed();
    assert_eq!(s.block("192.0.2.20", Protocol::Tcp, 22), Decision::Blocked);
    s.seq = 0;
    s.send(&SensorFrame::Block(
        Req::tcp("192.0.2.21").seq(1).port(22).build(),
    ));
    assert_eq!(
        s.recv().ok(),
        Some(EnforcerFrame::Refused(Refusal::MalformedFrame))
    );
    assert!(!env.nft_has(ip("192.0.2.21")));
    // Only one sensor at a time.
    let a = env.connect_welcomed();
    let mut b = env.connect();
    let _ = b.send_raw(&frame(&hello()));
    assert_eq!(
        b.recv().ok(),
        Some(EnforcerFrame::Refused(Refusal::AlreadyConnected))
    );
    drop(a);
    // ...and after the first leaves, a new one gets in.
    env.connect_welcomed();
    let recs = env.audit();
    let rejected = recs[before..]
        .iter()
        .filter(|r| r.decision == AuditDecision::Rejected)
        .count();
    assert!(rejected >= cases.len() + 3, "{rejected} rejected records");
    assert!(env.enforcer_alive());
    assert!(env.sentryctl(&["status"]).success());
}

#[test]
fn thousands_of_requests_hit_rate_limit_and_cap() {
    if !require_root("thousands_of_requests_hit_rate_limit_and_cap") {
        return;
    }
    // AUDIT_RATE high enough that every decision gets its own record here (the budget
    // has its own test below).
    let mut env = rig(
        "thousands_of_requests_hit_rate_limit_and_cap",
        &[
            ("BLOCK_RATE", "150"),
            ("MAX_BLOCKS", "100000"),
            ("KILL_HOSTS_DENY", ""),
            ("AUDIT_RATE", "100000"),
        ],
    );
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    let mut blocked = 0;
    let mut limited = 0;
    for i in 0..3000u32 {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + i + 1).to_string();
        match s.block(&a, Protocol::Tcp, 22) {
            Decision::Blocked => blocked += 1,
            Decision::RateLimited => limited += 1,
            d => panic!("unexpected {d:?}"),
        }
    }
    assert_eq!(blocked, 150);
    assert_eq!(limited, 2850);
    assert_eq!(env.nft_set("v4").len(), 150);
    let st = env.ctl_json(&["status"]);
    assert_eq!(st["counters"]["requests"], 3000);
    assert_eq!(st["counters"]["rate_limited"], 2850);
    assert_eq!(env.audit().len(), 3000);
    drop(s);

    // MAX_BLOCKS
    env.kill_enforcer();
    env.settings.keys.insert("MAX_BLOCKS".into(), "152".into());
    env.settings
        .keys
        .insert("BLOCK_RATE".into(), "100000".into());
    env.write_config();
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    assert_eq!(s.block("192.0.2.1", Protocol::Tcp, 22), Decision::Blocked);
    assert_eq!(s.block("192.0.2.2", Protocol::Tcp, 22), Decision::Blocked);
    assert_eq!(s.block("192.0.2.3", Protocol::Tcp, 22), Decision::Capped);
    assert!(!env.nft_has(ip("192.0.2.3")));
    assert_eq!(
        env.audit_for(ip("192.0.2.3"), AuditDecision::Capped).len(),
        1
    );
}

/// Wait (bounded) for `pred` over the audit records.
fn wait_audit(env: &Sentry, what: &str, pred: impl Fn(&[AuditLine]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if pred(&env.audit()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            env.enforcer_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `rate_limited` decisions the records account for: written one by one, or counted in
/// an AUDIT_RATE summary.
fn rate_limited_total(a: &[AuditLine]) -> u64 {
    let suppressed: u64 = a
        .iter()
        .filter(|r| r.is_summary())
        .map(|r| r.suppressed.expect("a summary counts what it suppressed"))
        .sum();
    let single = a
        .iter()
        .filter(|r| r.decision == AuditDecision::RateLimited && r.summary.is_none())
        .count() as u64;
    single + suppressed
}

/// One request per source under the sensor's next sequence numbers, as one buffer: a
/// sensor under a spoofed flood pipelines them (all frames, then all acks).
fn pipelined(s: &mut FakeSensor, sources: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for src in sources {
        let seq = s.next_seq();
        bytes.extend(frame(
            &FakeSensor::scan_req(ip(src), Protocol::Tcp, 22, seq).frame(),
        ));
    }
    bytes
}

#[test]
fn a_flood_of_refused_blocks_is_summarised_under_audit_rate() {
    if !require_root("a_flood_of_refused_blocks_is_summarised_under_audit_rate") {
        return;
    }
    const RATE: usize = 5;
    const BURST: u32 = 1000;
    let mut env = rig(
        "a_flood_of_refused_blocks_is_summarised_under_audit_rate",
        &[
            ("BLOCK_RATE", "1"),
            ("AUDIT_RATE", "5"),
            ("KILL_HOSTS_DENY", ""),
        ],
    );
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    // The one block BLOCK_RATE=1 allows this minute: always written.
    assert_eq!(s.block("192.0.2.1", Protocol::Tcp, 22), Decision::Blocked);
    // Start the burst just after a wall-clock second begins, so that it normally fits in
    // one second (the enforcer's budget is keyed by the same clock).
    std::thread::sleep(Duration::from_millis(1000 - now_ms() % 1000 + 5));
    let start_ms = now_ms();
    let sources: Vec<String> = (0..BURST)
        .map(|i| std::net::Ipv4Addr::from(0xCB00_7100 + (i % 250) + ((i / 250) << 8)).to_string())
        .collect();
    let bytes = pipelined(&mut s, &sources);
    s.send_raw(&bytes).unwrap();
    for _ in 0..BURST {
        match s.recv() {
            Ok(EnforcerFrame::Ack { decision, .. }) => {
                assert_eq!(decision, Decision::RateLimited)
            }
            other => panic!("expected Ack, got {other:?}"),
        }
    }
    let end_ms = now_ms();
    let one_second = start_ms / 1000 == end_ms / 1000;

    // No further request: the daemon's one-second tick must write the summary.
    wait_audit(&env, "the AUDIT_RATE summary", |a| {
        rate_limited_total(a) == u64::from(BURST)
    });
    let a = env.audit();
    assert_eq!(a[0].decision, AuditDecision::Blocked);
    let limited: Vec<&AuditLine> = a
        .iter()
        .filter(|r| r.decision == AuditDecision::RateLimited)
        .collect();
    // Per wall-clock second, at most AUDIT_RATE individual records.
    let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
    for r in limited.iter().filter(|r| r.summary.is_none()) {
        *per_second.entry(r.time_us / 1_000_000).or_default() += 1;
    }
    assert!(per_second.values().all(|n| *n <= RATE), "{per_second:?}");
    let summaries: Vec<&&AuditLine> = limited.iter().filter(|r| r.is_summary()).collect();
    for sum in &summaries {
        assert_eq!(sum.reason, "AUDIT_RATE=5 per second reached");
        let sample = sum.sample.as_deref().expect("a summary has a sample");
        assert!(!sample.is_empty() && sample.len() <= 8, "{sum:?}");
        let (first, last) = (
            sum.first_us.expect("first_us"),
            sum.last_us.expect("last_us"),
        );
        assert!(first <= last, "{sum:?}");
        assert!(sum.source.is_none());
    }
    if one_second {
        // The burst fitted in one second: AUDIT_RATE records and one summary in all.
        assert_eq!(a.len(), 1 + RATE + 1, "{a:?}");
        assert_eq!(limited.len(), RATE + 1);
        let sum = summaries[0];
        assert_eq!(sum.suppressed, Some(u64::from(BURST) - RATE as u64));
        let want: Vec<IpAddr> = sources[RATE..RATE + 8].iter().map(|a| ip(a)).collect();
        assert_eq!(sum.sample.as_deref(), Some(&want[..]));
        let log = env.enforcer_log();
        assert_eq!(
            log.matches("adminalert: block rate limit (BLOCK_RATE=1/min) reached; not blocking")
                .count(),
            RATE,
            "{log}"
        );
        assert!(log.contains(&format!(
            "adminalert: {} further rate_limited decisions in the last second not logged individually (AUDIT_RATE=5)",
            BURST as usize - RATE
        )));
    } else {
        eprintln!(
            "note: the burst spanned {} ms across a second boundary; checked the per-second bounds only",
            end_ms - start_ms
        );
        assert!(a.len() <= 1 + per_second.len() * (RATE + 1) + 1);
    }
    // Counters still count every decision.
    let st = env.ctl_json(&["status"]);
    assert_eq!(st["counters"]["rate_limited"], u64::from(BURST));
    assert_eq!(st["counters"]["requests"], u64::from(BURST) + 1);
    assert!(env.enforcer_alive());

    // A second burst, then SIGTERM at once (normally within the same second): the
    // summary of the unfinished second is written before the daemon exits.
    std::thread::sleep(Duration::from_millis(1000 - now_ms() % 1000 + 5));
    let bytes = pipelined(&mut s, &sources);
    s.send_raw(&bytes).unwrap();
    for _ in 0..BURST {
        assert!(matches!(s.recv(), Ok(EnforcerFrame::Ack { .. })));
    }
    assert!(env.stop_enforcer().expect("enforcer was running").success());
    assert_eq!(
        rate_limited_total(&env.audit()),
        2 * u64::from(BURST),
        "{}",
        env.enforcer_log()
    );
}

#[test]
fn sigkill_restart_restores_blocks_and_expires_stale_ones() {
    let Some((mut env, mut s)) = up(
        "sigkill_restart_restores_blocks_and_expires_stale_ones",
        &[("BLOCK_TIMEOUT", "3")],
    ) else {
        return;
    };
    for a in ["192.0.2.30", "192.0.2.31", "2001:db8::31"] {
        assert_eq!(s.block(a, Protocol::Tcp, 22), Decision::Blocked);
    }
    // SIGKILL right after the replies: everything acknowledged must survive.
    env.kill_enforcer();
    // Simulate the kernel losing the table (reboot): the restart must rebuild it.
    let _ = ns(&env, "nft", &["delete", "table", "inet", NFT_TABLE]);
    // 192.0.2.31 is ignored now.
    std::fs::write(&env.ignore_file, "198.51.100.0/24\n192.0.2.31\n").unwrap();
    env.start_enforcer();
    assert!(env.nft_has(ip("192.0.2.30")), "{}", env.enforcer_log());
    assert!(env.nft_has(ip("2001:db8::31")));
    assert!(!env.nft_has(ip("192.0.2.31")));
    assert!(!env.hosts_deny_text().contains("192.0.2.31"));
    assert_eq!(
        env.audit_for(ip("192.0.2.30"), AuditDecision::Restored)
            .len(),
        1
    );
    assert_eq!(
        env.audit_for(ip("192.0.2.31"), AuditDecision::Unblocked)
            .len(),
        1
    );
    let st = env.ctl_json(&["status"]);
    assert_eq!(st["active_blocks"], 2);
    assert_eq!(st["counters"]["restored"], 2);
    // The timeout runs on: the nft element carries it and the enforcer removes the rest.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env
        .audit_for(ip("192.0.2.30"), AuditDecision::Expired)
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no expiry\n{}",
            env.enforcer_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!env.hosts_deny_text().contains("192.0.2.30"));
    assert!(!env.nft_has(ip("192.0.2.30")));
    // Stopped long enough for a block to go stale: expired on start.
    let mut s = env.connect();
    s.handshake();
    assert_eq!(s.block("192.0.2.32", Protocol::Tcp, 22), Decision::Blocked);
    drop(s);
    assert_eq!(
        env.stop_enforcer().expect("enforcer was running").code(),
        Some(0)
    );
    assert!(!env.sensor_sock().exists(), "sockets removed on SIGTERM");
    // the table stays while stopped, so hosts stay blocked
    assert!(env.nft_has(ip("192.0.2.32")));
    std::thread::sleep(Duration::from_millis(3200));
    env.start_enforcer();
    assert_eq!(
        env.audit_for(ip("192.0.2.32"), AuditDecision::Expired)
            .len(),
        1
    );
    assert!(!env.hosts_deny_text().contains("192.0.2.32"));
    assert_eq!(env.ctl_json(&["status"])["active_blocks"], 0);
}

#[test]
fn sighup_reloads_ignore_list() {
    let Some((env, mut s)) = up("sighup_reloads_ignore_list", &[]) else {
        return;
    };
    assert_eq!(s.block("192.0.2.40", Protocol::Tcp, 22), Decision::Blocked);
    std::fs::write(&env.ignore_file, "192.0.2.0/25\n").unwrap();
    env.signal_enforcer(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while env
        .audit_for(ip("192.0.2.40"), AuditDecision::Unblocked)
        .is_empty()
    {
        assert!(Instant::now() < deadline, "{}", env.enforcer_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!env.nft_has(ip("192.0.2.40")));
    assert_eq!(s.block("192.0.2.41", Protocol::Tcp, 22), Decision::Ignored);
    // 198.51.100.0/24 is no longer ignored
    assert_eq!(
        s.block("198.51.100.1", Protocol::Tcp, 22),
        Decision::Blocked
    );
    // a broken ignore file keeps the old list
    std::fs::write(&env.ignore_file, "not-an-address\n").unwrap();
    env.signal_enforcer(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(env.enforcer_alive());
    assert_eq!(s.block("192.0.2.42", Protocol::Tcp, 22), Decision::Ignored);
}

#[test]
fn kill_commands_run_without_a_shell_and_failures_are_errors() {
    if !require_root("kill_commands_run_without_a_shell_and_failures_are_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let rec = dir.path().join("calls");
    let script = dir.path().join("record.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s|' \"$0\" \"$@\" >> {}\necho >> {}\n[ -z \"$HOME$USER\" ] || exit 9\n",
            rec.display(),
            rec.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let route = format!("{} route $TARGET$ $PORT$ $MODE$", script.display());
    let run = format!("{} run '$TARGET$ x' $PORT$", script.display());
    let mut env = rig(
        "kill_commands_run_without_a_shell_and_failures_are_errors",
        &[
            ("FIREWALL", "none"),
            ("KILL_ROUTE", &route),
            ("KILL_RUN_CMD", &run),
            ("KILL_RUN_CMD_FIRST", "1"),
            ("BLOCK_UDP", "2"),
        ],
    );
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    assert_eq!(s.block("192.0.2.60", Protocol::Tcp, 143), Decision::Blocked);
    assert_eq!(
        s.block("2001:db8::60", Protocol::Udp, 53),
        Decision::CommandOnly
    );
    let calls = std::fs::read_to_string(&rec).unwrap();
    let sp = script.display().to_string();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{sp}|run|192.0.2.60 x|143|"),
            format!("{sp}|route|192.0.2.60|143|tcp|"),
            format!("{sp}|run|2001:db8::60 x|53|"),
        ]
    );
    let r = &env.audit_for(ip("192.0.2.60"), AuditDecision::Blocked)[0];
    assert_eq!(
        r.action_kinds(),
        [
            ActionKind::KillRunCmd,
            ActionKind::KillRoute,
            ActionKind::HostsDeny
        ]
    );
    let acts = &r.actions;
    assert_eq!(acts[1].argv.as_ref().map(|a| a[4].as_str()), Some("tcp"));
    assert_eq!(acts[1].exit_code, Some(0));
    let log = env.enforcer_log();
    assert!(log.contains(&format!(
        "attackalert: Host 192.0.2.60 has been blocked via dropped route using command: \"{sp} route 192.0.2.60 143 tcp\""
    )), "{log}");
    assert!(log.contains("attackalert: External command run for host: 192.0.2.60 using command:"));
    drop(s);

    // A failing KILL_ROUTE is an error, never a silent success.
    env.kill_enforcer();
    env.settings
        .keys
        .insert("KILL_ROUTE".into(), "/bin/false $TARGET$".into());
    env.settings.keys.remove("KILL_RUN_CMD");
    env.settings.keys.remove("KILL_HOSTS_DENY");
    env.settings.keys.insert("BLOCK_UDP".into(), "0".into());
    env.write_config();
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    assert_eq!(s.block("192.0.2.61", Protocol::Tcp, 22), Decision::Failed);
    let r = &env.audit_for(ip("192.0.2.61"), AuditDecision::Failed)[0];
    assert_eq!(r.actions[0].status, ActionStatus::Error);
    assert_eq!(r.actions[0].exit_code, Some(1));
    assert!(!env
        .enforcer_log()
        .contains("Host 192.0.2.61 has been blocked"));
    assert_eq!(
        env.ctl_json(&["status"])["active_blocks"],
        1,
        "only 192.0.2.60 remains"
    );
}

#[test]
fn blackhole_routes_in_the_namespace() {
    let Some((env, mut s)) = up(
        "blackhole_routes_in_the_namespace",
        &[("BLACKHOLE_ROUTE", "1"), ("FIREWALL", "none")],
    ) else {
        return;
    };
    assert_eq!(s.block("192.0.2.70", Protocol::Tcp, 22), Decision::Blocked);
    assert_eq!(
        s.block("2001:db8::70", Protocol::Tcp, 22),
        Decision::Blocked
    );
    let r4 = ns(&env, "ip", &["route", "show", "type", "blackhole"]);
    assert!(
        String::from_utf8_lossy(&r4.stdout).contains("blackhole 192.0.2.70"),
        "{}",
        env.enforcer_log()
    );
    let r6 = ns(&env, "ip", &["-6", "route", "show", "type", "blackhole"]);
    // IPv6: the source's /64 (BLOCK_PREFIX6).
    assert!(String::from_utf8_lossy(&r6.stdout).contains("blackhole 2001:db8::/64"));
    assert_eq!(
        env.ctl_json(&["unblock", "192.0.2.70"])["errors"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let r4 = ns(&env, "ip", &["route", "show", "type", "blackhole"]);
    assert!(
        !String::from_utf8_lossy(&r4.stdout).contains("192.0.2.70"),
        "{}\n{}",
        String::from_utf8_lossy(&ns(&env, "ip", &["route", "show", "table", "all"]).stdout),
        env.enforcer_log()
    );
}

/// A configuration with three errors (lines 2, 3 and 4), in `dir`.
fn bad_config(dir: &std::path::Path) -> std::path::PathBuf {
    let bad = dir.join("bad.conf");
    std::fs::write(
        &bad,
        "# x\nTCP_PORTS=\"1,abc,5-3\"\nBLOCK_TCP=\"7\"\nAUDIT_RATE=\"0\"\n",
    )
    .unwrap();
    bad
}

fn sentryctl(args: &[&str], path: &std::path::Path) -> Output {
    std::process::Command::new(bins().sentryctl)
        .args(args)
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn sentryctl_check_config_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.conf");
    std::fs::write(
        &good,
        format!(
            "BLOCK_TCP=\"0\"\nBLOCK_UDP=\"0\"\nAUDIT_LOG=\"{}/audit.jsonl\"\nAUDIT_RATE=\"50\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = sentryctl(&["check-config"], &good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It says which blocking is in effect.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("blocking: none: BLOCK_TCP and BLOCK_UDP are 0"),
        "{stdout}"
    );
}

#[test]
fn sentryctl_check_config_reports_every_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = bad_config(dir.path());
    let out = sentryctl(&["check-config"], &bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2: ", bad.display())), "{err}");
    assert!(err.contains(&format!("{}:3: ", bad.display())), "{err}");
    assert!(
        err.contains(&format!(
            "{}:4: AUDIT_RATE: 0 out of range 1-100000",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn sentryctl_check_config_json_lists_the_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = sentryctl(&["check-config", "--json"], &bad_config(dir.path()));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["errors"].as_array().unwrap().len() >= 3);
}

#[test]
fn sentryctl_usage_errors_exit_2() {
    let out = std::process::Command::new(bins().sentryctl)
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn capabilities_are_reduced_to_what_the_actions_need() {
    if !require_root("capabilities_are_reduced_to_what_the_actions_need") {
        return;
    }
    const NET_ADMIN: u64 = 1 << 12;
    const NET_RAW: u64 = 1 << 13;
    const RAW_WARNING: &str = "CAP_NET_RAW is needed by the configured actions but not held";
    let true_route = ("KILL_ROUTE", "/bin/true $TARGET$");
    let legacy = (
        "KILL_RUN_CMD",
        "/usr/sbin/iptables-legacy -w -C INPUT -s $TARGET$ -j DROP",
    );
    // (keys, started under the unit's bounding set, the helper's capabilities, warned)
    for (keys, confined, want, warns) in [
        (vec![], false, NET_ADMIN, false),
        // CAP_NET_ADMIN whatever the actions: the detection chain and the NFLOG binding
        // for the sensor need it (issue #13).
        (vec![("FIREWALL", "none")], false, NET_ADMIN, false),
        // CAP_NET_RAW, when held, goes to the commands (a site script may run a legacy
        // iptables)...
        (
            vec![("FIREWALL", "none"), true_route],
            false,
            NET_ADMIN | NET_RAW,
            false,
        ),
        // ...and the unit leaves it out: a command not known to need it goes without,
        // silently...
        (
            vec![("FIREWALL", "none"), true_route],
            true,
            NET_ADMIN,
            false,
        ),
        // ...and a legacy iptables, which opens a raw socket, gets it said at start.
        (vec![legacy], true, NET_ADMIN, true),
    ] {
        let mut settings = Settings::enforcer(&keys);
        settings.confined = confined;
        let mut env = Sentry::prepare(
            "capabilities_are_reduced_to_what_the_actions_need",
            settings,
        );
        // A descriptor without close-on-exec, inherited by the enforcer we start: it must
        // close it first thing.
        let marker = std::fs::File::create(env.path("leak-marker")).unwrap();
        nix::fcntl::fcntl(
            &marker,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        env.start_enforcer();
        drop(marker);
        // Issue #22: the root parent keeps what its verbs and the worker's restarts need,
        // whatever the actions (not CAP_KILL: it signals its worker from a child with the
        // worker's uid; not CAP_CHOWN: it gives no file away); the command helper keeps what the
        // actions need and the bounding set allows; the worker holds nothing.
        const PTRACE_SETUID_SETGID: u64 = (1 << 19) | (1 << 7) | (1 << 6);
        let parent = env.parent_pid();
        let worker = env.enforcer_pid();
        let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm(parent).trim(), "sentry-enforcer");
        assert_eq!(comm(worker).trim(), "sentry-worker");
        let caps = |pid: u32, k: &str| u64::from_str_radix(&proc_fields(pid)[k], 16).unwrap();
        assert_eq!(
            caps(parent, "CapEff"),
            NET_ADMIN | PTRACE_SETUID_SETGID,
            "{keys:?}"
        );
        assert_eq!(
            caps(parent, "CapPrm"),
            NET_ADMIN | PTRACE_SETUID_SETGID,
            "{keys:?}"
        );
        assert_eq!(proc_fields(parent)["NoNewPrivs"], "1");
        for k in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(caps(worker, k), 0, "worker {k} {keys:?}");
        }
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        let helper: u32 = children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .find(|c| *c != worker)
            .expect("the command helper");
        assert_eq!(caps(helper, "CapEff"), want, "helper {keys:?}");
        assert_eq!(caps(helper, "CapAmb"), want, "helper {keys:?}");
        // Only stdin/stdout/stderr were inherited; nothing else leaks in.
        for pid in [parent, worker, helper] {
            let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect();
            assert!(
                !fds.iter().any(|f| f.contains("leak-marker")),
                "{pid}: {fds:?}"
            );
        }
        // And blocking still works with what is left.
        let mut s = env.connect();
        s.handshake();
        assert_eq!(
            s.block("192.0.2.80", Protocol::Tcp, 22),
            Decision::Blocked,
            "{}",
            env.enforcer_log()
        );
        // Said by the command helper as it starts, long before the block's answer.
        assert_eq!(
            env.enforcer_log().contains(RAW_WARNING),
            warns,
            "{keys:?}: {}",
            env.enforcer_log()
        );
    }
}

#[test]
fn control_group_members_may_use_sentryctl_and_garbage_is_refused() {
    if !require_root("control_group_members_may_use_sentryctl_and_garbage_is_refused") {
        return;
    }
    let mut env = rig(
        "control_group_members_may_use_sentryctl_and_garbage_is_refused",
        &[("CONTROL_GROUP", "nogroup")],
    );
    env.start_enforcer();
    let ctl = env.runtime_dir.join("control.sock");
    let md = std::fs::metadata(&ctl).unwrap();
    assert_eq!(md.mode() & 0o777, 0o660);
    assert_eq!(md.gid(), 65534);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bins().sentryctl)
        .arg("--runtime-dir")
        .arg(&env.runtime_dir)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Hostile bytes on the control socket: an error reply or a close, never a crash.
    for bytes in [
        vec![0xffu8, 0xff, 0xff, 0xff],
        vec![0, 0, 0, 2, 9, 9],
        b"garbage garbage".to_vec(),
    ] {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&ctl).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        assert!(sink.len() < 4096);
        assert!(env.enforcer_alive());
    }
    // Unblock before Hello is refused.
    let mut s = std::os::unix::net::UnixStream::connect(&ctl).unwrap();
    sentry_proto::write_frame(
        &mut s,
        &sentry_proto::ControlRequest::Unblock {
            addr: ip("192.0.2.1"),
        },
    )
    .unwrap();
    let r: sentry_proto::ControlResponse = sentry_proto::read_frame(&mut s).unwrap();
    assert!(
        matches!(r, sentry_proto::ControlResponse::Error(_)),
        "{r:?}"
    );
    assert!(env.sentryctl(&["status"]).success());
}

#[test]
fn command_line_help_version_and_usage_errors() {
    let out = std::process::Command::new(bins().enforcer)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--sensor-user"));
    let out = std::process::Command::new(bins().enforcer)
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sentry-enforcer "));
    let out = std::process::Command::new(bins().enforcer)
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The enforcer started by hand (in the root namespace: it must refuse before it touches
/// any network state) with `run_dir` and `conf`; its output.
fn start_by_hand(env: &Sentry, run_dir: &std::path::Path, conf: &std::path::Path) -> Output {
    std::process::Command::new(bins().enforcer)
        .arg("--config")
        .arg(conf)
        .arg("--runtime-dir")
        .arg(run_dir)
        .arg("--state-dir")
        .arg(env.path("state"))
        .args(["--sensor-user", "nobody", "--log-stderr"])
        .output()
        .unwrap()
}

#[test]
fn a_runtime_directory_others_can_write_to_is_refused() {
    let test = "a_runtime_directory_others_can_write_to_is_refused";
    if !require_root(test) {
        return;
    }
    let env = rig(test, &[("FIREWALL", "none")]);
    let bad = env.path("wwdir");
    std::fs::create_dir(&bad).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = start_by_hand(&env, &bad, &env.conf);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not writable by group or others"));
}

#[test]
fn something_other_than_a_socket_where_the_socket_goes_is_never_removed() {
    let test = "something_other_than_a_socket_where_the_socket_goes_is_never_removed";
    if !require_root(test) {
        return;
    }
    let env = rig(test, &[("FIREWALL", "none")]);
    let rd = env.path("rd");
    std::fs::create_dir(&rd).unwrap();
    std::fs::set_permissions(&rd, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(rd.join("enforcer.sock"), "precious").unwrap();
    // What the installers do: past the worker's files' check, to the sockets.
    env.give_worker_files();
    let out = start_by_hand(&env, &rd, &env.conf);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(
        std::fs::read_to_string(rd.join("enforcer.sock")).unwrap(),
        "precious"
    );
}

#[test]
fn a_broken_configuration_is_reported_as_path_line_message() {
    let test = "a_broken_configuration_is_reported_as_path_line_message";
    if !require_root(test) {
        return;
    }
    let env = rig(test, &[("FIREWALL", "none")]);
    let conf = env.path("broken.conf");
    std::fs::write(&conf, "BLOCK_TCP=\"9\"\n").unwrap();
    let out = start_by_hand(&env, &env.path("rd2"), &conf);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{}:1:", conf.display())),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_symlinked_hosts_deny_is_refused_at_block_time_and_never_followed() {
    let test = "a_symlinked_hosts_deny_is_refused_at_block_time_and_never_followed";
    if !require_root(test) {
        return;
    }
    let mut env = rig(test, &[("FIREWALL", "none")]);
    let target = env.path("elsewhere");
    std::fs::write(&target, "untouched\n").unwrap();
    std::fs::remove_file(&env.hosts_deny).unwrap();
    std::os::unix::fs::symlink(&target, &env.hosts_deny).unwrap();
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    assert_eq!(s.block("192.0.2.90", Protocol::Tcp, 22), Decision::Failed);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched\n");
    // Audited as an error.
    let r = &env.audit_for(ip("192.0.2.90"), AuditDecision::Failed)[0];
    assert!(r.actions[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("symbolic link")));
}

#[test]
fn sigkill_in_the_middle_of_a_decision_leaves_nothing_unknown() {
    if !require_root("sigkill_in_the_middle_of_a_decision_leaves_nothing_unknown") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("die.sh");
    // KILL_RUN_CMD runs after the firewall and hosts.deny actions: kill the enforcer there.
    // The decision may already have answered (the command runs in the effects worker,
    // after the element and the write-ahead record): what matters is what a restart
    // finds.
    std::fs::write(&script, "#!/bin/sh\nkill -9 $PPID\nsleep 5\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cmd = format!("{} $TARGET$", script.display());
    let mut env = rig(
        "sigkill_in_the_middle_of_a_decision_leaves_nothing_unknown",
        &[("KILL_RUN_CMD", &cmd), ("KILL_RUN_CMD_FIRST", "0")],
    );
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    let seq = s.next_seq();
    s.send(&Req::tcp("192.0.2.95").seq(seq).frame());
    let _ = s.recv();
    env.wait_enforcer_exit(Duration::from_secs(10));
    assert!(env.hosts_deny_text().contains("ALL: 192.0.2.95 : DENY"));
    // Restart without the deadly command: the half-done block is known and completed.
    env.settings.keys.remove("KILL_RUN_CMD");
    env.settings.keys.remove("KILL_RUN_CMD_FIRST");
    env.write_config();
    env.start_enforcer();
    assert!(env.nft_has(ip("192.0.2.95")), "{}", env.enforcer_log());
    assert_eq!(
        env.audit_for(ip("192.0.2.95"), AuditDecision::Restored)
            .len(),
        1
    );
    assert_eq!(
        env.hosts_deny_text()
            .matches("ALL: 192.0.2.95 : DENY")
            .count(),
        1
    );
    // ...and it can be lifted completely.
    assert_eq!(
        env.ctl_json(&["unblock", "192.0.2.95"])["was_blocked"],
        true
    );
    assert!(!env.hosts_deny_text().contains("192.0.2.95"));
    assert!(!env.nft_has(ip("192.0.2.95")));
}

#[test]
fn an_address_added_to_this_host_is_never_blocked_on_the_next_decision() {
    let Some((env, mut s)) = up(
        "an_address_added_to_this_host_is_never_blocked_on_the_next_decision",
        &[],
    ) else {
        return;
    };
    // A decision first, so the enforcer's copy of its addresses is in use (not read fresh
    // because nothing was decided yet).
    assert_eq!(s.block("192.0.2.120", Protocol::Tcp, 22), Decision::Blocked);
    let add = |args: &[&str]| {
        let out = ns(&env, "ip", args);
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Added and then asked about at once: the kernel's notification must already be seen.
    add(&["addr", "add", "192.0.2.121/32", "dev", "lo"]);
    assert_eq!(
        s.block("192.0.2.121", Protocol::Tcp, 22),
        Decision::NeverBlock,
        "{}",
        env.enforcer_log()
    );
    add(&[
        "-6",
        "addr",
        "add",
        "2001:db8::121/128",
        "dev",
        "lo",
        "nodad",
    ]);
    // IPv6 differs: the kernel announces a new address (RTM_NEWADDR) from its address-
    // configuration work queue, after `ip` has returned, even with nodad on lo. The address
    // is protected from that announcement on; wait for it (bounded), observed through a
    // netlink dump of our own that runs after the queued work.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = ns(&env, "ip", &["-6", "-o", "addr", "show", "dev", "lo"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("2001:db8::121/128") && !text.contains("tentative") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "address never configured: {text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut decision;
    loop {
        // Between the kernel marking the address configured and sending the announcement
        // there is a short window; a request inside it may still be decided on the old
        // address set. The test fails if the announcement never takes effect.
        decision = s.block("2001:db8::121", Protocol::Tcp, 22);
        if decision == Decision::NeverBlock || std::time::Instant::now() >= deadline {
            break;
        }
        // Blocked before the announcement arrived: lift it and ask again.
        assert_eq!(decision, Decision::Blocked);
        let out = env.sentryctl(&["unblock", "2001:db8::121"]);
        assert!(out.success(), "unblock: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(decision, Decision::NeverBlock, "{}", env.enforcer_log());
    let r = &env.audit_for(ip("192.0.2.121"), AuditDecision::NeverBlock)[0];
    assert_eq!(r.reason, "one of this host's addresses");
    assert!(!env.nft_has(ip("192.0.2.121")));
    assert!(!env.nft_has(ip("2001:db8::121")));
    // Removed: no longer ours, so it can be blocked again right away.
    add(&["addr", "del", "192.0.2.121/32", "dev", "lo"]);
    assert_eq!(s.block("192.0.2.121", Protocol::Tcp, 22), Decision::Blocked);
    assert!(env.nft_has(ip("192.0.2.121")));
    // The IPv4 broadcast address of a new address is never blocked either (on an
    // interface with IFF_BROADCAST: a veth pair inside the test's own namespace).
    add(&["link", "add", "sv0", "type", "veth", "peer", "name", "sv1"]);
    add(&[
        "addr",
        "add",
        "10.77.0.1/24",
        "brd",
        "10.77.0.255",
        "dev",
        "sv0",
    ]);
    assert_eq!(
        s.block("10.77.0.255", Protocol::Tcp, 22),
        Decision::NeverBlock
    );
}

#[test]
fn an_nft_element_without_a_record_is_gone_after_restart() {
    if !require_root("an_nft_element_without_a_record_is_gone_after_restart") {
        return;
    }
    // The enforcer adds the nftables element before it journals the block (the fast
    // path). A crash between the two leaves an element with no record: the restart must
    // remove it, and must keep the recorded ones.
    let mut env = rig("an_nft_element_without_a_record_is_gone_after_restart", &[]);
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    assert_eq!(s.block("192.0.2.130", Protocol::Tcp, 22), Decision::Blocked);
    drop(s);
    env.kill_enforcer();
    for (set, a) in [("v4", "192.0.2.131"), ("v6", "2001:db8::131")] {
        let elem = format!("{{ {a} }}");
        let out = ns(
            &env,
            "nft",
            &["add", "element", "inet", NFT_TABLE, set, &elem],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(env.nft_has(ip(a)));
    }
    env.start_enforcer();
    assert!(env.nft_has(ip("192.0.2.130")), "{}", env.enforcer_log());
    assert!(!env.nft_has(ip("192.0.2.131")), "{}", env.enforcer_log());
    assert!(!env.nft_has(ip("2001:db8::131")));
    assert_eq!(env.ctl_json(&["status"])["active_blocks"], 1);
}

#[test]
fn block_records_carry_microsecond_time_and_one_journal_record() {
    let Some((env, mut s)) = up(
        "block_records_carry_microsecond_time_and_one_journal_record",
        &[],
    ) else {
        return;
    };
    let before_us = now_us();
    assert_eq!(s.block("192.0.2.140", Protocol::Tcp, 22), Decision::Blocked);
    let rec = &env.audit_for(ip("192.0.2.140"), AuditDecision::Blocked)[0];
    let us = rec.time_us;
    assert!(us >= before_us && us < before_us + 10_000_000, "{rec:?}");
    // `time` is the same instant at millisecond resolution.
    let ms = us / 1000;
    let t = &rec.time;
    assert!(t.ends_with(&format!(".{:03}Z", ms % 1000)), "{t} vs {us}");
    assert_eq!(rec.actions[0].action, ActionKind::Nftables);
    // Everything took effect as intended: the write-ahead record is the final one.
    let journal = std::fs::read_to_string(env.state_dir.join("blocks.journal")).unwrap();
    assert_eq!(
        journal
            .lines()
            .filter(|l| l.contains("192.0.2.140"))
            .count(),
        1,
        "{journal}"
    );
}

/// issue #11 A: the namespace's default gateways (IPv4 and IPv6) and its nameserver are
/// never blocked, with the reason; a changed default route moves the protection within a
/// second, and a changed resolver file within the one-second file check.
#[test]
fn default_gateway_and_nameserver_are_never_blocked_and_kept_current() {
    if !require_root("default_gateway_and_nameserver_are_never_blocked_and_kept_current") {
        return;
    }
    let mut env = rig(
        "default_gateway_and_nameserver_are_never_blocked_and_kept_current",
        &[],
    );
    // The resolver file lives under a root of the test's own, never /etc/resolv.conf.
    let root = env.path("infra-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/resolv.conf"),
        "# test\nnameserver 10.88.0.53\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("var/lib/dhcp")).unwrap();
    std::fs::write(
        root.join("var/lib/dhcp/dhclient.gw0.leases"),
        "lease {\n  interface \"gw0\";\n  option dhcp-server-identifier 10.88.0.67;\n}\n",
    )
    .unwrap();
    env.settings.enforcer_args = vec!["--infra-root".into(), root.display().to_string()];
    let ns_name = env.net.target.clone();
    let ip_ok = move |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns_name, "ip"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip_ok(&["link", "add", "gw0", "type", "veth", "peer", "name", "gw1"]);
    ip_ok(&["addr", "add", "10.88.0.2/24", "dev", "gw0"]);
    ip_ok(&[
        "-6",
        "addr",
        "add",
        "2001:db8:88::2/64",
        "dev",
        "gw0",
        "nodad",
    ]);
    ip_ok(&["link", "set", "gw0", "up"]);
    ip_ok(&["link", "set", "gw1", "up"]);
    ip_ok(&["route", "add", "default", "via", "10.88.0.1"]);
    ip_ok(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:88::1",
        "dev",
        "gw0",
    ]);
    // A default route in another table counts too.
    ip_ok(&[
        "route",
        "add",
        "default",
        "via",
        "10.88.0.7",
        "table",
        "100",
    ]);
    // And one through a nexthop object (reported with its gateway in the kernel's
    // default nexthop_compat_mode=1).
    ip_ok(&[
        "nexthop",
        "add",
        "id",
        "8",
        "via",
        "10.88.0.8",
        "dev",
        "gw0",
    ]);
    ip_ok(&["route", "add", "default", "nhid", "8", "table", "200"]);
    // A point-to-point peer.
    ip_ok(&[
        "addr",
        "add",
        "10.90.0.1",
        "peer",
        "10.90.0.2",
        "dev",
        "gw0",
    ]);
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    for (addr, why) in [
        ("10.88.0.1", "default gateway"),
        ("2001:db8:88::1", "default gateway"),
        ("10.88.0.7", "default gateway"),
        ("10.88.0.8", "default gateway"),
        ("10.88.0.53", "nameserver"),
        ("10.88.0.67", "DHCP server"),
        ("10.90.0.2", "point-to-point peer"),
    ] {
        assert_eq!(
            s.block(addr, Protocol::Udp, 53),
            Decision::NeverBlock,
            "{addr}\n{}",
            env.enforcer_log()
        );
        let r = env.audit_for(ip(addr), AuditDecision::NeverBlock);
        assert_eq!(r.last().unwrap().reason, why, "{addr}");
        assert!(!env.nft_has(ip(addr)));
    }
    // An ordinary neighbour is still blockable.
    assert_eq!(s.block("10.88.0.9", Protocol::Tcp, 22), Decision::Blocked);

    // The default route moves: the new gateway is protected within a second, the old one
    // is an ordinary address again.
    ip_ok(&["route", "replace", "default", "via", "10.88.0.254"]);
    until_never_blocked(
        &env,
        &mut s,
        ("10.88.0.254", Protocol::Tcp, 22),
        Duration::from_secs(1),
        Duration::from_millis(20),
        "not protected within 1 s",
    );
    assert_eq!(
        env.audit_for(ip("10.88.0.254"), AuditDecision::NeverBlock)
            .last()
            .unwrap()
            .reason,
        "default gateway"
    );
    until_blocked(
        &env,
        &mut s,
        ("10.88.0.1", Protocol::Tcp, 22),
        Duration::from_secs(1),
        "the old gateway is not blockable again within 1 s",
    );
    assert!(env.nft_has(ip("10.88.0.1")));
    // The nexthop object is pointed elsewhere: followed as well.
    ip_ok(&[
        "nexthop",
        "replace",
        "id",
        "8",
        "via",
        "10.88.0.18",
        "dev",
        "gw0",
    ]);
    until_never_blocked(
        &env,
        &mut s,
        ("10.88.0.18", Protocol::Tcp, 22),
        Duration::from_secs(1),
        Duration::from_millis(20),
        "nexthop change not seen",
    );

    // A new nameserver in the resolver file: picked up by the one-second file check.
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 10.88.0.153\n").unwrap();
    until_never_blocked(
        &env,
        &mut s,
        ("10.88.0.153", Protocol::Udp, 53),
        Duration::from_secs(4),
        Duration::from_millis(100),
        "nameserver change not seen",
    );
    assert_eq!(s.block("10.88.0.53", Protocol::Udp, 53), Decision::Blocked);
    assert!(
        env.enforcer_log()
            .contains("never blocked as infrastructure"),
        "{}",
        env.enforcer_log()
    );
    // sentryctl check-config in this namespace: the gateway is not on the ignore list,
    // which is a warning (exit 0), not an error.
    let out = env
        .net
        .command(Side::Target, bins().sentryctl)
        .arg("check-config")
        .arg(&env.conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("warning: ")
            && l.contains("10.88.0.254 (default gateway) is not on the ignore list")),
        "{err}"
    );
    assert!(!err.contains("10.88.0.9 ("), "{err}");
}

/// issue #11 A: NEVER_BLOCK_INFRASTRUCTURE="0" turns the protection off.
#[test]
fn never_block_infrastructure_can_be_turned_off() {
    if !require_root("never_block_infrastructure_can_be_turned_off") {
        return;
    }
    let mut env = rig(
        "never_block_infrastructure_can_be_turned_off",
        &[("NEVER_BLOCK_INFRASTRUCTURE", "0")],
    );
    let root = env.path("infra-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 10.89.0.53\n").unwrap();
    env.settings.enforcer_args = vec!["--infra-root".into(), root.display().to_string()];
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    assert_eq!(s.block("10.89.0.53", Protocol::Udp, 53), Decision::Blocked);
}

/// issue #11 B: an admin's hosts.deny line identical to the one sentry writes survives
/// unblock and expiry byte for byte, and so does the rest of the file (CRLF, no final
/// newline); an unmarked line recorded by an older version is taken back only when it is
/// the only one.
#[test]
fn unblock_and_expiry_take_back_only_sentrys_hosts_deny_lines() {
    if !require_root("unblock_and_expiry_take_back_only_sentrys_hosts_deny_lines") {
        return;
    }
    let mut env = rig(
        "unblock_and_expiry_take_back_only_sentrys_hosts_deny_lines",
        &[("BLOCK_TIMEOUT", "2")],
    );
    let admin = b"# admin's bans\r\nALL: 192.0.2.150 : DENY\r\nsshd: 10.0.0.0/8 : DENY".to_vec();
    std::fs::write(&env.hosts_deny, &admin).unwrap();
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    // The banned host scans once (spoofed or not): blocked by sentry too.
    assert_eq!(s.block("192.0.2.150", Protocol::Tcp, 22), Decision::Blocked);
    assert_eq!(s.block("192.0.2.151", Protocol::Tcp, 22), Decision::Blocked);
    // The decision answers once the element is in; the deny lines follow.
    let text = wait_until(
        Duration::from_secs(5),
        "sentry's hosts.deny lines for both blocks",
        || {
            let t = env.hosts_deny_text();
            (t.contains("\n# sentry: 192.0.2.150 ") && t.contains("\n# sentry: 192.0.2.151 "))
                .then_some(t)
        },
        || env.enforcer_log(),
    );
    assert!(
        text.starts_with(std::str::from_utf8(&admin).unwrap()),
        "{text:?}"
    );
    // Unblocking removes sentry's copy only.
    assert!(env.sentryctl(&["unblock", "192.0.2.150"]).success());
    assert!(env
        .hosts_deny_text()
        .contains("ALL: 192.0.2.150 : DENY\r\n"));
    // Expiry of the other block leaves the file exactly as the admin wrote it.
    let deadline = Instant::now() + Duration::from_secs(8);
    while env
        .audit_for(ip("192.0.2.151"), AuditDecision::Expired)
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no expiry\n{}",
            env.enforcer_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The expiry is audited when decided; its deny-line removal may follow.
    wait_until(
        Duration::from_secs(5),
        "the deny file exactly as the admin wrote it",
        || (std::fs::read(&env.hosts_deny).ok()? == admin).then_some(()),
        || format!("{:?}\n{}", env.hosts_deny_text(), env.enforcer_log()),
    );
    env.stop_enforcer().expect("enforcer was running");

    // Upgrade: a block recorded by the previous version (no marker, no
    // hosts_deny_legacy field), its line once in the file, next to an admin's pair.
    let old = format!(
        r#"{{"version":1,"blocks":[{{"addr":"192.0.2.160","protocol":"tcp","port":22,"mode":"stcp","scan":"syn","since_ms":{now},"expires_ms":null,"nft":true,"blackhole":false,"hosts_deny_line":"ALL: 192.0.2.160 : DENY"}},{{"addr":"192.0.2.161","protocol":"tcp","port":22,"mode":"stcp","scan":"syn","since_ms":{now},"expires_ms":null,"nft":true,"blackhole":false,"hosts_deny_line":"ALL: 192.0.2.161 : DENY"}}]}}"#,
        now = now_ms()
    );
    std::fs::write(env.state_dir.join("blocks.json"), old).unwrap();
    std::fs::write(env.state_dir.join("blocks.journal"), "").unwrap();
    let legacy = "ALL: 192.0.2.160 : DENY\nALL: 192.0.2.161 : DENY\nALL: 192.0.2.161 : DENY\n";
    std::fs::write(&env.hosts_deny, legacy).unwrap();
    env.start_enforcer();
    assert_eq!(
        env.ctl_json(&["status"])["active_blocks"],
        2,
        "{}",
        env.enforcer_log()
    );
    // Restore did not add marked duplicates of lines that are still there.
    assert_eq!(env.hosts_deny_text(), legacy);
    assert!(env.sentryctl(&["unblock", "192.0.2.160"]).success());
    assert!(env.sentryctl(&["unblock", "192.0.2.161"]).success());
    // The single one went; the doubled one may be the admin's: left, and logged.
    assert_eq!(
        env.hosts_deny_text(),
        "ALL: 192.0.2.161 : DENY\nALL: 192.0.2.161 : DENY\n"
    );
    assert!(
        env.enforcer_log().contains("appears 2 times"),
        "{}",
        env.enforcer_log()
    );
}

/// Run the enforcer in the namespace to completion (bounded), with extra arguments.
fn run_enforcer_once(env: &Sentry, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = env
        .net
        .command(Side::Target, bins().enforcer)
        .arg("--config")
        .arg(&env.conf)
        .arg("--runtime-dir")
        .arg(&env.runtime_dir)
        .arg("--state-dir")
        .arg(&env.state_dir)
        .args(["--sensor-user", &env.settings.sensor_user, "--log-stderr"])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "enforcer {extra:?} did not exit: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// issue #11 C: 4 changed bytes in the state make the enforcer refuse to start, naming the
/// file and the place, with the file left as it is; `--recover` rebuilds the state and
/// the next start restores the blocks; a newer version's state is refused.
#[test]
fn damaged_state_is_refused_and_recovered() {
    if !require_root("damaged_state_is_refused_and_recovered") {
        return;
    }
    let mut env = rig("damaged_state_is_refused_and_recovered", &[]);
    env.start_enforcer();
    let mut s = env.connect();
    s.handshake();
    for a in ["192.0.2.170", "2001:db8::170"] {
        assert_eq!(s.block(a, Protocol::Tcp, 22), Decision::Blocked);
    }
    drop(s);
    env.stop_enforcer().expect("enforcer was running");
    // A restart folds the journal into the snapshot.
    env.start_enforcer();
    env.stop_enforcer().expect("enforcer was running");
    let snap = env.state_dir.join("blocks.json");
    let good = std::fs::read(&snap).unwrap();
    let at = good
        .windows(11)
        .position(|w| w == b"192.0.2.170")
        .expect("record in the snapshot");
    let mut bad = good.clone();
    bad[at..at + 4].copy_from_slice(b"10.1");
    std::fs::write(&snap, &bad).unwrap();
    let line = good[..at].iter().filter(|&&c| c == b'\n').count() + 1;

    let (code, out) = run_enforcer_once(&env, &[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains(&snap.display().to_string()), "{out}");
    assert!(
        out.contains(&format!("damaged at line {line}, byte offset")),
        "{out}"
    );
    assert!(out.contains("--recover"), "{out}");
    assert_eq!(
        std::fs::read(&snap).unwrap(),
        bad,
        "damaged file left untouched"
    );
    assert!(!env.sensor_sock().exists());

    let (code, out) = run_enforcer_once(&env, &["--recover"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("state rebuilt with 2 blocks"), "{out}");
    let kept: Vec<_> = std::fs::read_dir(&env.state_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("blocks.json.damaged-")
        })
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read(kept[0].path()).unwrap(), bad);
    env.start_enforcer();
    let st = env.ctl_json(&["status"]);
    assert_eq!(st["active_blocks"], 2, "{}", env.enforcer_log());
    assert!(env.nft_has(ip("192.0.2.170")));
    assert!(env.nft_has(ip("2001:db8::170")));
    assert_eq!(
        env.audit_for(ip("192.0.2.170"), AuditDecision::Restored)
            .len(),
        2
    );
    // Lifting a recovered block takes its hosts.deny line back too.
    assert!(env.sentryctl(&["unblock", "192.0.2.170"]).success());
    assert!(!env.hosts_deny_text().contains("192.0.2.170"));
    // --recover refuses to run under a live enforcer.
    let (code, out) = run_enforcer_once(&env, &["--recover"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("an enforcer is running"), "{out}");
    env.stop_enforcer().expect("enforcer was running");

    // A newer version's state: refused, not parsed, not rewritten.
    let newer =
        b"{\"format\":\"sentry-enforcer-state\",\"version\":4,\"records\":1}\nsomething new\n";
    std::fs::write(&snap, newer).unwrap();
    let (code, out) = run_enforcer_once(&env, &[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("newer sentry-enforcer (state format version 4"),
        "{out}"
    );
    assert_eq!(std::fs::read(&snap).unwrap(), newer);
}

/// issue #11 D: a host that is not set up yet is not a configuration error: check-config
/// warns (exit 0) about a missing log directory, naming the command that makes it. The
/// enforcer creates nothing (issue #22): it refuses to start, naming the fix, until the
/// installer (here the harness, as the run script and tmpfiles.d do) has made the
/// directories the worker's; below a world-writable directory check-config says they
/// must not be made, and the enforcer still refuses.
#[test]
fn missing_directories_are_a_warning_and_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("portsentry.conf");
    std::fs::write(
        &conf,
        format!(
            "BLOCK_TCP = \"0\"\nBLOCK_UDP = \"0\"\nAUDIT_LOG=\"{}/log/sentry/audit.jsonl\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = sentryctl(&["check-config"], &conf);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("warning: ")
            && l.contains("AUDIT_LOG: directory")
            && l.contains("does not exist yet")),
        "{err}"
    );
    assert!(
        !dir.path().join("log").exists(),
        "check-config creates nothing"
    );

    if !require_root("missing_directories_are_a_warning_and_refused_with_the_fix (enforcer part)") {
        return;
    }
    let mut env = rig(
        "missing_directories_are_a_warning_and_refused_with_the_fix",
        &[],
    );
    let logs = env.path("newlog/sentry");
    env.settings.keys.insert(
        "AUDIT_LOG".into(),
        logs.join("audit.jsonl").display().to_string(),
    );
    env.write_config();
    std::fs::remove_dir(&env.state_dir).unwrap();
    // Started by hand (not through the harness, which prepares them): refused, the fix
    // named, nothing made.
    let (code, out) = run_enforcer_once(&env, &[]);
    assert_eq!(code, Some(1), "{out}");
    for d in [&env.state_dir, &logs] {
        assert!(
            out.contains(&format!("{} does not exist", d.display())),
            "{out}"
        );
    }
    assert!(
        out.contains("systemd-tmpfiles --create sentry.conf")
            && out.contains("sentry-pair.sh start")
            && out.contains("install -d -o sentry-worker -g sentry-worker -m 0700 DIR"),
        "{out}"
    );
    assert!(!env.state_dir.exists() && !env.path("newlog").exists());
    assert!(!env.sensor_sock().exists());
    // Made as the installers make them: the enforcer starts, and changes none of it.
    env.start_enforcer();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&logs), 0o750);
    assert_eq!(mode(&env.state_dir), 0o700);
    let (worker_uid, _) = sentry_tests::ensure_worker_user();
    assert_eq!(std::fs::metadata(&logs).unwrap().uid(), worker_uid);
    assert_eq!(std::fs::metadata(&env.state_dir).unwrap().uid(), worker_uid);
    assert_eq!(std::fs::metadata(logs.parent().unwrap()).unwrap().uid(), 0);
    assert!(logs.join("audit.jsonl").exists());
    env.stop_enforcer().expect("enforcer was running");

    // Below a world-writable directory: check-config says it must not be made there, and
    // the enforcer refuses; nothing is made.
    let open = env.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    env.settings.keys.insert(
        "AUDIT_LOG".into(),
        open.join("sentry/audit.jsonl").display().to_string(),
    );
    env.write_config();
    let out = sentryctl(&["check-config"], &env.conf);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("writable by group or others"), "{err}");
    let (code, out) = run_enforcer_once(&env, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("{} does not exist", open.join("sentry").display())),
        "{out}"
    );
    assert!(!open.join("sentry").exists());
}

/// issue #11 E: a restore of tens of thousands of blocks must not be one netlink batch
/// larger than the socket's send buffer (EMSGSIZE, every block "not in nftables"). The
/// test binary re-runs itself inside a private namespace and adds 20,000 IPv4 and
/// 20,000 IPv6 elements through `NlSocket::setelems` in one call, then counts them.
#[test]
fn netlink_batches_stay_under_the_socket_buffer() {
    if !require_root("netlink_batches_stay_under_the_socket_buffer") {
        return;
    }
    let net = NetPair::new();
    let out = net
        .command(Side::Target, std::env::current_exe().unwrap())
        .args([
            "--exact",
            "netlink_batches_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SENTRY_TEST_NL_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CHILD COUNT v4=20000 v6=20000"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
}

/// Runs only as the child of the test above, inside its namespace.
#[test]
#[ignore = "helper: run by netlink_batches_stay_under_the_socket_buffer"]
fn netlink_batches_child() {
    use sentry_enforcer::netlink::{NlSocket, SetElem};
    if std::env::var_os("SENTRY_TEST_NL_CHILD").is_none() {
        return;
    }
    let table = "sentry_nlbatch";
    let mut nft = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let script = sentry_enforcer::table::setup_script(table, 64).unwrap();
        nft.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
    }
    assert!(nft.wait().unwrap().success());
    let mut elems = Vec::new();
    for i in 0..20_000u32 {
        elems.push(SetElem {
            addr: IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
            timeout: Some(Duration::from_secs(3600)),
        });
        elems.push(SetElem {
            addr: IpAddr::V6(std::net::Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
            )),
            timeout: None,
        });
    }
    let mut s = NlSocket::netfilter().unwrap();
    s.setelems(table, "v4", "v6", &elems, true)
        .unwrap_or_else(|e| panic!("setelems: {e}"));
    let count = |set: &str| {
        let out = std::process::Command::new("nft")
            .args(["-j", "list", "set", "inet", table, set])
            .output()
            .unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.pointer("/set/elem").and_then(serde_json::Value::as_array))
            .map(Vec::len)
            .sum::<usize>()
    };
    println!("CHILD COUNT v4={} v6={}", count("v4"), count("v6"));
    // And all of them go again the same way.
    s.setelems(table, "v4", "v6", &elems, false)
        .unwrap_or_else(|e| panic!("delete: {e}"));
    assert_eq!((count("v4"), count("v6")), (0, 0));
}

/// After the Welcome the enforcer sends `Capture` with an NFLOG socket attached (SCM_RIGHTS)
/// and has built the detection chain for that group; the next sensor connection gets a
/// fresh group, and the chain no longer copies to the one the first connection (whose
/// descriptor this test keeps, as a stale holder would) was given (issue #21).
#[test]
fn capture_socket_is_handed_over_after_the_welcome() {
    let test = "capture_socket_is_handed_over_after_the_welcome";
    if !require_root(test) {
        return;
    }
    use nix::sys::socket::{getsockname, NetlinkAddr};
    use std::os::fd::{AsRawFd, OwnedFd};
    let mut env = rig(test, &[]);
    env.start_enforcer();
    // Read frames with recvmsg until the Capture frame and its descriptor are in.
    let handed_over = |env: &Sentry, s: &FakeSensor| -> (u16, Vec<OwnedFd>) {
        let mut bytes = Vec::new();
        let mut fds: Vec<OwnedFd> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut frames = Vec::new();
        while frames.len() < 2 && Instant::now() < deadline {
            let mut buf = [0u8; 256];
            let n = match sentry_sensor::sys::recv_with_fds(s.s.as_raw_fd(), &mut buf, &mut fds) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => panic!("recvmsg: {e}"),
            };
            assert!(n > 0, "connection closed after {frames:?}");
            bytes.extend_from_slice(&buf[..n]);
            while let Some(h) = bytes.first_chunk::<{ sentry_proto::HEADER_LEN }>() {
                let len = sentry_proto::HEADER_LEN
                    + sentry_proto::frame_len::<EnforcerFrame>(*h).expect("length prefix");
                if bytes.len() < len {
                    break;
                }
                let f: EnforcerFrame = sentry_proto::decode_frame(&bytes[..len]).expect("frame");
                bytes.drain(..len);
                frames.push(f);
            }
        }
        assert!(
            matches!(frames.first(), Some(EnforcerFrame::Welcome { .. })),
            "{frames:?}"
        );
        let group = match frames.get(1) {
            Some(EnforcerFrame::Capture {
                group,
                snaplen: 1280,
            }) if sentry_enforcer::capture::GROUPS.contains(group) => *group,
            other => panic!("{other:?}\n{}", env.diag()),
        };
        assert_eq!(fds.len(), 1, "{frames:?}");
        let _: NetlinkAddr = getsockname(fds[0].as_raw_fd()).expect("a netlink socket");
        (group, fds)
    };
    let chain = |env: &Sentry| {
        let out = ns(
            env,
            "nft",
            &["list", "chain", "inet", NFT_TABLE, "detect_log"],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut s = env.connect();
    s.send(&hello());
    let (first, fds) = handed_over(&env, &s);
    let text = chain(&env);
    assert!(
        text.contains(&format!("group {first} ")),
        "{text}\n{}",
        env.diag()
    );
    // The first connection ends; its descriptor lives on here, as in a stale holder.
    drop(s);
    let mut again = env.connect();
    again.send(&hello());
    let (second, fds2) = handed_over(&env, &again);
    assert_ne!(first, second, "the same group was handed over twice");
    let text = chain(&env);
    assert!(
        text.contains(&format!("group {second} ")) && !text.contains(&format!("group {first} ")),
        "{text}\n{}",
        env.diag()
    );
    assert_eq!(
        again.block("192.0.2.77", Protocol::Tcp, 23),
        Decision::Blocked
    );
    drop((fds, fds2));
}
