//! `sentryctl check-config`'s own checks: the files a configuration names, and which
//! blocking is in effect (moved here from policy, which the root parent links: it never
//! runs them).

use std::path::Path;

use policy::{Config, Firewall};
use sentry_client::check::{blocking_summary, check_files, created_dirs};

#[test]
fn referenced_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ignore = dir.path().join("bad.ignore");
    std::fs::write(&ignore, "10.0.0.1\n10.0.0.300\n").unwrap();
    let text = format!(
        "IGNORE_FILE=\"{}\"\nHISTORY_FILE=\"/nonexistent-dir/h\"\nKILL_ROUTE=\"/nonexistent/iptables -s $TARGET$\"\nAUDIT_LOG=\"{}/a.jsonl\"\n",
        ignore.display(),
        dir.path().display()
    );
    let cfg = Config::parse(&text, Path::new("/c.conf")).unwrap();
    let e: Vec<String> = check_files(&cfg)
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(
        e[0],
        format!(
            "{}:2: '10.0.0.300' is not an IPv4 or IPv6 address",
            ignore.display()
        )
    );
    assert_eq!(
        e[1],
        "/c.conf:3: KILL_ROUTE: /nonexistent/iptables is not an executable file"
    );
    // A missing directory the enforcer creates itself is a host not set up yet.
    let w: Vec<String> = check_files(&cfg)
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        w,
        ["/c.conf:2: HISTORY_FILE: directory /nonexistent-dir does not exist yet; the enforcer creates nothing: make it for its worker before it starts: install -d -o sentry-worker -g sentry-worker -m 700 /nonexistent-dir"]
    );
}

#[test]
fn missing_log_directory_is_a_warning_unless_its_parent_is_unsafe() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        &format!(
            "AUDIT_LOG=\"{}/log/sentry/audit.jsonl\"\n",
            dir.path().display()
        ),
        Path::new("/c.conf"),
    )
    .unwrap();
    let c = check_files(&cfg);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].to_string().contains("-m 750 "),
        "{:?}",
        c.warnings
    );
    assert_eq!(
        created_dirs(&cfg),
        vec![(dir.path().join("log/sentry"), 0o750)]
    );
    // Under a world-writable directory it must not be made for the worker: an error.
    let open = dir.path().join("tmp");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let cfg = Config::parse(
        &format!("AUDIT_LOG=\"{}/sentry/audit.jsonl\"\n", open.display()),
        Path::new("/c.conf"),
    )
    .unwrap();
    let c = check_files(&cfg);
    assert_eq!(c.errors.len(), 1, "{c:?}");
    assert!(
        c.errors[0]
            .to_string()
            .contains("writable by group or others"),
        "{c:?}"
    );
    // The deny file's directory is never created: still an error.
    let cfg = Config::parse(
        &format!(
            "KILL_HOSTS_DENY=\"ALL: $TARGET$\"\nHOSTS_DENY_FILE=\"{}/nope/hosts.deny\"\nAUDIT_LOG=\"{}/a\"\n",
            dir.path().display(),
            dir.path().display()
        ),
        Path::new("/c.conf"),
    )
    .unwrap();
    assert_eq!(check_files(&cfg).errors.len(), 1);
}

/// Which blocking is in effect, in the order it is applied: the native set first whether
/// FIREWALL is set or not (PortSentry's file has no such key), `none` opts out, and
/// KILL_RUN_CMD_FIRST orders the command before the other KILL_* actions only.
#[test]
fn blocking_summary_names_the_set_first_and_the_opt_out() {
    let p = Path::new("/etc/sentry/sentry.conf");
    let cfg = Config::parse(
        "BLOCK_TCP=\"1\"\nKILL_ROUTE=\"/sbin/route add -host $TARGET$ reject\"\nKILL_RUN_CMD=\"/bin/true $TARGET$\"\nKILL_RUN_CMD_FIRST=\"1\"\n",
        p,
    )
    .unwrap();
    assert_eq!(cfg.firewall, Firewall::Nftables);
    let s = blocking_summary(&cfg);
    assert!(
        s.starts_with("nftables set (table inet sentry; FIREWALL not set"),
        "{s}"
    );
    assert!(
        s.contains("then KILL_RUN_CMD (KILL_RUN_CMD_FIRST), then KILL_ROUTE"),
        "{s}"
    );
    let none = Config::parse("BLOCK_TCP=\"1\"\nFIREWALL=\"none\"\n", p).unwrap();
    assert_eq!(none.firewall_origin, policy::FirewallOrigin::Key);
    assert!(
        blocking_summary(&none).starts_with("none (BLOCK_TCP=1 BLOCK_UDP=0"),
        "{}",
        blocking_summary(&none)
    );
    let quiet = Config::parse("", p).unwrap();
    assert!(
        blocking_summary(&quiet).starts_with("none: BLOCK_TCP and BLOCK_UDP are 0"),
        "{}",
        blocking_summary(&quiet)
    );
}
