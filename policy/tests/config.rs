//! The configuration reader against PortSentry-shaped files and every error it must name.

use std::path::{Path, PathBuf};

use policy::{BlockMode, Config, Firewall, Vars};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, Path::new("/etc/sentry/sentry.conf")) {
        Ok(_) => panic!("expected an error for {text:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().unwrap()
}

#[test]
fn portsentry_sample_parses_unchanged() {
    let cfg = Config::load(&fixture("portsentry-1.2.conf")).expect("sample parses");
    assert_eq!(cfg.tcp_ports.len(), 26);
    assert!(cfg.tcp_ports.contains(31337) && cfg.tcp_ports.contains(1));
    assert_eq!(cfg.udp_ports.len(), 21);
    assert!(cfg.udp_ports.contains(54321));
    assert_eq!(
        (cfg.advanced_ports_tcp, cfg.advanced_ports_udp),
        (1024, 1024)
    );
    assert!(cfg.advanced_exclude_tcp.contains(113) && cfg.advanced_exclude_tcp.contains(139));
    assert!(cfg.advanced_exclude_udp.contains(137) && !cfg.advanced_exclude_udp.contains(53));
    assert_eq!(
        cfg.ignore_file.as_deref(),
        Some(Path::new("/usr/local/psionic/portsentry/portsentry.ignore"))
    );
    assert!(cfg.resolve_host);
    assert_eq!(
        (cfg.block_tcp, cfg.block_udp),
        (BlockMode::Block, BlockMode::Block)
    );
    assert!(cfg.kill_route.is_none());
    let v = Vars {
        target: "192.0.2.1",
        port: 1,
        mode: "tcp",
    };
    assert_eq!(
        cfg.kill_hosts_deny.as_ref().unwrap().render(&v),
        "ALL: 192.0.2.1"
    );
    assert_eq!(cfg.scan_trigger, 0);
    assert!(cfg.port_banner.is_none());
    // sentry's own keys take their defaults.
    // No FIREWALL key (PortSentry's file): the native set by default, in front of KILL_*.
    assert_eq!(cfg.firewall, Firewall::Nftables);
    assert_eq!(cfg.firewall_origin, policy::FirewallOrigin::Default);
    assert_eq!(cfg.hosts_deny_file, Path::new("/etc/hosts.deny"));
    // RESOLVE_HOST=1 is accepted but not honoured, and says so.
    assert_eq!(cfg.warnings.len(), 1);
    assert!(cfg.warnings[0]
        .to_string()
        .contains(":24: RESOLVE_HOST: host names are not resolved"));
}

#[test]
fn debian_crlf_sample_without_final_newline_parses() {
    let cfg = Config::load(&fixture("debian.conf")).expect("debian sample parses");
    assert_eq!(cfg.block_tcp, BlockMode::LogOnly);
    assert_eq!(cfg.advanced_ports_tcp, 1023);
    let v = Vars {
        target: "2001:db8::1",
        port: 22,
        mode: "tcp",
    };
    assert_eq!(
        cfg.kill_route.as_ref().unwrap().render(&v),
        ["/sbin/route", "add", "-host", "2001:db8::1", "reject"]
    );
    assert_eq!(
        cfg.port_banner.as_deref(),
        Some("** UNAUTHORIZED ACCESS PROHIBITED *** YOUR CONNECTION ATTEMPT HAS BEEN LOGGED. GO AWAY.")
    );
    assert!(cfg.warnings.is_empty());
}

#[test]
fn sentry_keys() {
    let cfg = Config::parse(
        "FIREWALL=\"nftables\"\nNFT_TABLE=\"sentry_test\"\nBLOCK_TIMEOUT=\"3600\"\nMAX_BLOCKS=\"500\"\n\
         BLOCK_RATE=\"60\"\nHOSTS_DENY_FILE=\"/tmp/hd\"\nAUDIT_LOG=\"/tmp/a.jsonl\"\nBLACKHOLE_ROUTE=\"1\"\n\
         KILL_TIMEOUT=\"5\"\nSCAN_WINDOW=\"60\"\nSTATE_MAX_SOURCES=\"1024\"\nSENSOR_QUEUE=\"16\"\nLOG_RATE=\"10\"\nAUDIT_RATE=\"7\"\n\
         CONTROL_GROUP=\"adm\"\nBLOCK_TCP=\"1\"\n",
        Path::new("x.conf"),
    )
    .unwrap();
    assert_eq!(cfg.firewall, Firewall::Nftables);
    assert_eq!(cfg.nft_table, "sentry_test");
    assert_eq!(cfg.block_timeout.unwrap().as_secs(), 3600);
    assert_eq!((cfg.max_blocks, cfg.block_rate), (500, 60));
    assert!(cfg.blackhole_route);
    assert_eq!(cfg.state_max_sources, 1024);
    assert_eq!(cfg.control_group.as_deref(), Some("adm"));
    assert_eq!((cfg.log_rate, cfg.audit_rate), (10, 7));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let cfg = Config::parse("BLOCK_TIMEOUT=\"0\"\n", Path::new("x")).unwrap();
    assert!(cfg.block_timeout.is_none());
    assert_eq!(cfg.audit_rate, 100, "AUDIT_RATE default");
}

#[test]
fn unknown_and_prefix_keys_are_errors() {
    assert_eq!(
        one_error("TCP_PORT=\"1\"\n"),
        "/etc/sentry/sentry.conf:1: TCP_PORT: unknown key"
    );
    assert_eq!(
        one_error("# c\nTCP_PORTS_EXTRA=\"1\"\n"),
        "/etc/sentry/sentry.conf:2: TCP_PORTS_EXTRA: unknown key"
    );
    assert_eq!(
        one_error("tcp_ports=\"1\"\n"),
        "/etc/sentry/sentry.conf:1: 'tcp_ports' is not a valid key name"
    );
}

#[test]
fn bad_ports_and_ranges() {
    assert_eq!(
        one_error("TCP_PORTS=\"1,abc,5-3\"\n"),
        "/etc/sentry/sentry.conf:1: TCP_PORTS: 'abc' is not a port number"
    );
    assert_eq!(
        one_error("UDP_PORTS=\"5-3\"\n"),
        "/etc/sentry/sentry.conf:1: UDP_PORTS: reversed range 5-3"
    );
    assert_eq!(
        one_error("\n\nTCP_PORTS=\"70000\"\n"),
        "/etc/sentry/sentry.conf:3: TCP_PORTS: port 70000 out of range 1-65535"
    );
    assert_eq!(
        one_error("ADVANCED_PORTS_TCP=\"0\"\n"),
        "/etc/sentry/sentry.conf:1: ADVANCED_PORTS_TCP: port 0 out of range 1-65535"
    );
}

#[test]
fn numbers_never_wrap_or_clamp() {
    assert_eq!(
        one_error("SCAN_TRIGGER=\"4294967296\"\n"),
        "/etc/sentry/sentry.conf:1: SCAN_TRIGGER: 4294967296 out of range 0-65534"
    );
    assert_eq!(
        one_error("SCAN_TRIGGER=\"-1\"\n"),
        "/etc/sentry/sentry.conf:1: SCAN_TRIGGER: '-1' is not a whole number"
    );
    assert_eq!(
        one_error("MAX_BLOCKS=\"0\"\n"),
        "/etc/sentry/sentry.conf:1: MAX_BLOCKS: 0 out of range 1-100000"
    );
    // More than the shipped enforcer unit and the sentryctl reply can hold.
    assert_eq!(
        one_error("MAX_BLOCKS=\"1000000\"\n"),
        "/etc/sentry/sentry.conf:1: MAX_BLOCKS: 1000000 out of range 1-100000"
    );
    assert_eq!(
        one_error("AUDIT_RATE=\"0\"\n"),
        "/etc/sentry/sentry.conf:1: AUDIT_RATE: 0 out of range 1-100000"
    );
    assert_eq!(
        one_error("AUDIT_RATE=\"100001\"\n"),
        "/etc/sentry/sentry.conf:1: AUDIT_RATE: 100001 out of range 1-100000"
    );
    assert_eq!(
        one_error("AUDIT_RATE=\"1e3\"\n"),
        "/etc/sentry/sentry.conf:1: AUDIT_RATE: '1e3' is not a whole number"
    );
    assert_eq!(
        Config::parse("AUDIT_RATE=\"100000\"\n", Path::new("x"))
            .unwrap()
            .audit_rate,
        100_000
    );
    assert_eq!(
        one_error("KILL_TIMEOUT=\"99999999999999999999999\"\n"),
        "/etc/sentry/sentry.conf:1: KILL_TIMEOUT: 99999999999999999999999 out of range 1-300"
    );
}

/// RESTART_GRACE: seconds a port stays served after its socket closed (issue #21).
#[test]
fn restart_grace() {
    let p = Path::new("x.conf");
    let d = Config::parse("", p).unwrap();
    assert_eq!(d.restart_grace, std::time::Duration::from_secs(5));
    let off = Config::parse("RESTART_GRACE=\"0\"\n", p).unwrap();
    assert!(off.restart_grace.is_zero());
    assert_eq!(
        one_error("RESTART_GRACE=\"3601\"\n"),
        "/etc/sentry/sentry.conf:1: RESTART_GRACE: 3601 out of range 0-3600"
    );
}

#[test]
fn block_values() {
    assert_eq!(
        one_error("BLOCK_TCP=\"3\"\n"),
        "/etc/sentry/sentry.conf:1: BLOCK_TCP: expected 0, 1 or 2, got '3'"
    );
    assert_eq!(
        one_error("BLOCK_UDP=\"2\"\n"),
        "/etc/sentry/sentry.conf:1: BLOCK_UDP: 2 (run KILL_RUN_CMD only) needs KILL_RUN_CMD"
    );
    assert_eq!(
        one_error("RESOLVE_HOST=\"yes\"\n"),
        "/etc/sentry/sentry.conf:1: RESOLVE_HOST: expected 0 or 1, got 'yes'"
    );
}

#[test]
fn kill_templates() {
    assert_eq!(
        one_error("KILL_ROUTE=\"/sbin/route add -host $HOST$ reject\"\n"),
        "/etc/sentry/sentry.conf:1: KILL_ROUTE: unknown token $HOST$ (known: $TARGET$, $PORT$, $MODE$)"
    );
    assert_eq!(
        one_error("KILL_RUN_CMD=\"/usr/local/bin/page $PORT$\"\n"),
        "/etc/sentry/sentry.conf:1: KILL_RUN_CMD: template does not contain $TARGET$"
    );
    assert_eq!(
        one_error("KILL_HOSTS_DENY=\"ALL: somehost\"\n"),
        "/etc/sentry/sentry.conf:1: KILL_HOSTS_DENY: template does not contain $TARGET$"
    );
    let e = one_error(
        "KILL_ROUTE=\"/bin/echo 'block in log on ext0 from $TARGET$/32 to any' | /sbin/ipf -f -\"\n",
    );
    assert!(
        e.starts_with("/etc/sentry/sentry.conf:1: KILL_ROUTE: shell syntax '|' is not supported"),
        "{e}"
    );
}

#[test]
fn syntax_errors_and_duplicates() {
    assert_eq!(
        one_error("TCP_PORTS \"1\"\n"),
        "/etc/sentry/sentry.conf:1: expected KEY=\"value\""
    );
    assert_eq!(
        one_error("TCP_PORTS=\"1\nUDP_PORTS=\"1\"\n"),
        "/etc/sentry/sentry.conf:1: TCP_PORTS: missing closing quote"
    );
    assert_eq!(
        one_error("TCP_PORTS=\"1\" trailing\n"),
        "/etc/sentry/sentry.conf:1: TCP_PORTS: unexpected text after closing quote: 'trailing'"
    );
    assert_eq!(
        one_error("SCAN_TRIGGER=\"0\"\nSCAN_TRIGGER=\"1\"\n"),
        "/etc/sentry/sentry.conf:2: SCAN_TRIGGER: duplicate key (first set on line 1)"
    );
    assert_eq!(
        one_error("IGNORE_FILE=\"relative/path\"\n"),
        "/etc/sentry/sentry.conf:1: IGNORE_FILE: 'relative/path' must be an absolute path"
    );
    assert_eq!(
        one_error("AUDIT_LOG=\"\"\n"),
        "/etc/sentry/sentry.conf:1: AUDIT_LOG: must not be empty"
    );
}

#[test]
fn every_error_in_one_pass() {
    let e = errors("TCP_PORTS=\"x\"\nBOGUS=\"1\"\nBLOCK_TCP=\"9\"\n");
    assert_eq!(e.len(), 3);
    assert!(
        e[0].contains(":1: TCP_PORTS:")
            && e[1].contains(":2: BOGUS:")
            && e[2].contains(":3: BLOCK_TCP:")
    );
}

#[test]
fn accepted_syntax_variants() {
    let cfg = Config::parse(
        "  TCP_PORTS = \"1, 2,3-5\"   # trailing comment\nSCAN_TRIGGER=2\r\nPORT_BANNER=\"say \"hi\" # not a comment\"\n",
        Path::new("x"),
    )
    .unwrap();
    assert_eq!(cfg.tcp_ports.to_list(), "1-5");
    assert_eq!(cfg.scan_trigger, 2);
    assert_eq!(
        cfg.port_banner.as_deref(),
        Some("say \"hi\" # not a comment")
    );
}

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
    let e: Vec<String> = cfg
        .check_files()
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
    let w: Vec<String> = cfg
        .check_files()
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        w,
        ["/c.conf:2: HISTORY_FILE: directory /nonexistent-dir does not exist yet; sentry-enforcer creates it (mode 700) for its worker when it starts with CAP_CHOWN (without systemd); the shipped unit has none: create it owned by sentry-worker"]
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
    let c = cfg.check_files();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].to_string().contains("mode 750"),
        "{:?}",
        c.warnings
    );
    assert_eq!(
        cfg.created_dirs(),
        vec![(dir.path().join("log/sentry"), 0o750)]
    );
    // Under a world-writable directory the enforcer would not create it: an error.
    let open = dir.path().join("tmp");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let cfg = Config::parse(
        &format!("AUDIT_LOG=\"{}/sentry/audit.jsonl\"\n", open.display()),
        Path::new("/c.conf"),
    )
    .unwrap();
    let c = cfg.check_files();
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
    assert_eq!(cfg.check_files().errors.len(), 1);
}

#[test]
fn ignore_fixture_and_missing_file() {
    let l = policy::IgnoreList::load(&fixture("portsentry.ignore")).unwrap();
    assert_eq!(l.len(), 5);
    for a in [
        "127.0.0.1",
        "0.0.0.0",
        "10.1.2.200",
        "172.31.255.1",
        "fe80::abcd",
    ] {
        assert!(l.contains(a.parse().unwrap()), "{a}");
    }
    assert!(!l.contains("10.1.3.1".parse().unwrap()));
    let e = policy::IgnoreList::load(Path::new("/nonexistent.ignore")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent.ignore: cannot open:"),
        "{e}"
    );
}

#[test]
fn never_block_infrastructure_key() {
    let cfg = Config::parse("BLOCK_TCP=\"0\"\n", Path::new("x")).unwrap();
    assert!(cfg.never_block_infrastructure, "on by default");
    let cfg = Config::parse("NEVER_BLOCK_INFRASTRUCTURE=\"0\"\n", Path::new("x")).unwrap();
    assert!(!cfg.never_block_infrastructure);
    assert_eq!(
        one_error("NEVER_BLOCK_INFRASTRUCTURE=\"yes\"\n"),
        "/etc/sentry/sentry.conf:1: NEVER_BLOCK_INFRASTRUCTURE: expected 0 or 1, got 'yes'"
    );
    let shipped =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/sentry.conf")).unwrap();
    assert!(shipped.never_block_infrastructure);
    assert!(shipped.key_lines.contains_key("NEVER_BLOCK_INFRASTRUCTURE"));
}

#[test]
fn block_other_scans_key() {
    use sentry_proto::ScanKind;
    let cfg = Config::parse("BLOCK_TCP=\"1\"\nFIREWALL=\"nftables\"\n", Path::new("x")).unwrap();
    assert!(!cfg.block_other_scans, "off by default");
    // Off: the kinds PortSentry never reported are logged only, whatever BLOCK_TCP says;
    // the others keep BLOCK_TCP / BLOCK_UDP.
    for k in [
        ScanKind::Ack,
        ScanKind::Maimon,
        ScanKind::IpProtocol,
        ScanKind::SctpInit,
    ] {
        assert_eq!(cfg.block_mode_for(class(k)), BlockMode::LogOnly, "{k}");
    }
    assert_eq!(cfg.block_mode_for(class(ScanKind::Syn)), BlockMode::Block);
    assert_eq!(cfg.block_mode_for(class(ScanKind::Udp)), BlockMode::LogOnly);
    let on = Config::parse(
        "BLOCK_TCP=\"0\"\nBLOCK_OTHER_SCANS=\"1\"\nFIREWALL=\"nftables\"\n",
        Path::new("x"),
    )
    .unwrap();
    assert!(on.block_other_scans);
    assert!(on.warnings.is_empty(), "{:?}", on.warnings);
    assert_eq!(on.block_mode_for(class(ScanKind::Ack)), BlockMode::Block);
    assert_eq!(
        on.block_mode_for(class(ScanKind::IpProtocol)),
        BlockMode::Block
    );
    assert_eq!(on.block_mode_for(class(ScanKind::Syn)), BlockMode::LogOnly);
    assert_eq!(
        one_error("BLOCK_OTHER_SCANS=\"2\"\n"),
        "/etc/sentry/sentry.conf:1: BLOCK_OTHER_SCANS: expected 0 or 1, got '2'"
    );
    // Blocking with nothing that blocks is worth a warning, as for BLOCK_TCP=1.
    let bare = Config::parse(
        "BLOCK_OTHER_SCANS=\"1\"\nFIREWALL=\"none\"\n",
        Path::new("x"),
    )
    .unwrap();
    assert!(
        bare.warnings.iter().any(|w| w
            .to_string()
            .contains("BLOCK_OTHER_SCANS: 1 (block) but no")),
        "{:?}",
        bare.warnings
    );
    let shipped =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/sentry.conf")).unwrap();
    assert!(!shipped.block_other_scans);
    assert!(shipped.key_lines.contains_key("BLOCK_OTHER_SCANS"));
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
    let s = cfg.blocking_summary();
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
        none.blocking_summary()
            .starts_with("none (BLOCK_TCP=1 BLOCK_UDP=0"),
        "{}",
        none.blocking_summary()
    );
    let quiet = Config::parse("", p).unwrap();
    assert!(
        quiet
            .blocking_summary()
            .starts_with("none: BLOCK_TCP and BLOCK_UDP are 0"),
        "{}",
        quiet.blocking_summary()
    );
}

/// The settings Debian's portsentry package ships, as they are: they parse with no error
/// and no warning, log only (BLOCK_TCP/UDP 0), and with no FIREWALL key the native set is
/// in front of KILL_ROUTE and KILL_HOSTS_DENY once blocking is turned on.
#[test]
fn debian_package_settings_parse_unchanged() {
    let cfg = Config::load(&fixture("debian-package.conf")).expect("the package's settings");
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(cfg.advanced_ports_tcp, 1024);
    assert_eq!(cfg.block_tcp, BlockMode::LogOnly);
    assert_eq!(cfg.firewall, Firewall::Nftables);
    assert_eq!(cfg.firewall_origin, policy::FirewallOrigin::Default);
    assert!(cfg.kill_route.is_some() && cfg.kill_hosts_deny.is_some());
}

/// The BLOCK_* key a scan kind falls under (as the worker's judge maps it).
fn class(k: sentry_proto::ScanKind) -> policy::ScanClass {
    match (k.protocol(), k.is_other()) {
        (sentry_proto::Protocol::Tcp, false) => policy::ScanClass::Tcp,
        (sentry_proto::Protocol::Udp, false) => policy::ScanClass::Udp,
        _ => policy::ScanClass::Other,
    }
}
