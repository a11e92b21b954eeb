//! The shipped default policy parses, says what the README promises, and every key it
//! uses is documented in sentry.conf(5).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sentry_tests::{bins, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The default config with its IGNORE_FILE pointed at the shipped ignore file.
fn default_conf_text() -> String {
    let text = std::fs::read_to_string(repo().join("policy/dist/sentry.conf")).unwrap();
    text.replace(
        "IGNORE_FILE=\"/etc/sentry/sentry.ignore\"",
        &format!(
            "IGNORE_FILE=\"{}\"",
            repo().join("policy/dist/sentry.ignore").display()
        ),
    )
}

#[test]
fn default_policy_parses_with_the_promised_defaults() {
    let path = repo().join("policy/dist/sentry.conf");
    let c = policy::Config::parse(&default_conf_text(), &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.firewall, policy::Firewall::Nftables);
    assert_eq!(c.block_tcp, policy::BlockMode::Block);
    assert_eq!(c.block_udp, policy::BlockMode::Block);
    assert_eq!(c.advanced_ports_tcp, 1024);
    assert_eq!(c.advanced_ports_udp, 1024);
    assert!(c.block_timeout.is_some(), "default blocks should expire");
    assert!(c.max_blocks > 0 && c.max_blocks <= 100_000);
    assert!(c.block_rate > 0);
    assert!(c.kill_hosts_deny.is_some());
    assert!(
        c.warnings.is_empty(),
        "warnings: {:?}",
        c.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    let ignore = c.load_ignore().unwrap_or_else(|e| panic!("{e}"));
    assert!(ignore.contains("127.0.0.1".parse().unwrap()));
    assert!(ignore.contains("::1".parse().unwrap()));
    assert!(!ignore.contains("192.0.2.1".parse().unwrap()));
}

#[test]
fn sentryctl_check_config_accepts_default_and_rejects_broken() {
    let b = bins();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("sentry.conf");
    // The referenced directories are created by `make install`; point them at ours.
    for sub in ["lib", "log"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let text = default_conf_text()
        .replace(
            "/var/lib/sentry/",
            &format!("{}/lib/", dir.path().display()),
        )
        .replace(
            "/var/log/sentry/",
            &format!("{}/log/", dir.path().display()),
        );
    std::fs::write(&good, text).unwrap();
    let out = run(
        std::process::Command::new(&b.sentryctl)
            .arg("check-config")
            .arg(&good),
        Duration::from_secs(20),
    );
    assert!(out.success(), "default policy rejected: {out}");
    // PortSentry's classic mistakes must be errors with file and line.
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "# broken\nTCP_PORTS=\"1,abc,5-3\"\nBLOCK_TCP=\"7\"\n").unwrap();
    let out = run(
        std::process::Command::new(&b.sentryctl)
            .arg("check-config")
            .arg(&bad),
        Duration::from_secs(20),
    );
    assert!(!out.success(), "broken config accepted: {out}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains(&format!("{}:2", bad.display())),
        "no path:LINE for TCP_PORTS: {out}"
    );
    assert!(
        text.contains(&format!("{}:3", bad.display())),
        "no path:LINE for BLOCK_TCP: {out}"
    );
}

#[test]
fn every_default_key_is_documented() {
    let man = std::fs::read_to_string(repo().join("policy/man/sentry.conf.5")).unwrap();
    let conf = std::fs::read_to_string(repo().join("policy/dist/sentry.conf")).unwrap();
    for line in conf.lines() {
        let l = line.trim_start_matches('#').trim_start();
        let Some((key, _)) = l.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            continue;
        }
        assert!(
            man.contains(&format!(".B {key}")) || man.contains(&format!("\\fB{key}\\fR")),
            "sentry.conf.5 does not document {key}"
        );
    }
}
