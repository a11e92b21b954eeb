//! issue #20, metrics: after a real blocked scan (nmap against the real sensor and
//! enforcer pair in their own namespaces), a manual block and a named control client's
//! block, `sentryctl metrics` passes `promtool check metrics` and holds the families an
//! administrator coming from CrowdSec's /metrics or a fail2ban exporter expects, with
//! sane values: build info, blocks by origin name, scan kind and protocol, errors by
//! kind, the reload status (also after a SIGHUP with a broken ignore file), the
//! probe-to-block latency histogram and the standard `process_*` families.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use sentry_proto::{Mode, Protocol};
use sentry_tests::fleet::promtool;
use sentry_tests::netns::{SCANNER_IF, SCANNER_V4, TARGET_V4};
use sentry_tests::{now_ms, require_root, require_tool, wait_until, Sentry, Settings};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

/// `sentryctl metrics`, checked by promtool (which must exist under CI=true), as
/// series (`name{labels}`) → value.
fn scrape(s: &Sentry) -> (String, BTreeMap<String, f64>) {
    let out = s.sentryctl(&["metrics"]);
    assert!(out.success(), "sentryctl metrics: {out}");
    match promtool() {
        Some(p) => {
            let mut c = Command::new(p)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("promtool");
            c.stdin
                .take()
                .unwrap()
                .write_all(out.stdout.as_bytes())
                .unwrap();
            let r = c.wait_with_output().unwrap();
            assert!(
                r.status.success(),
                "promtool check metrics: {}{}\n{}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr),
                out.stdout
            );
        }
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("promtool missing (make test-deps unpacks prometheus)")
        }
        None => println!("SKIPPED (promtool not unpacked; run make test-deps): promtool check"),
    }
    let mut m = BTreeMap::new();
    for l in out.stdout.lines().filter(|l| !l.starts_with('#')) {
        let (series, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
        let v: f64 = match v {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("{l}: {e}")),
        };
        assert!(m.insert(series.to_string(), v).is_none(), "{series} twice");
    }
    (out.stdout, m)
}

fn get(m: &BTreeMap<String, f64>, series: &str, text: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn metrics_after_a_real_scan_pass_promtool_and_are_sane() {
    let test = "metrics_after_a_real_scan_pass_promtool_and_are_sane";
    if !require_root(test) || !require_tool(test, "nmap") || !require_tool(test, "nft") {
        return;
    }
    let started_s = now_ms() as f64 / 1000.0;
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let (text, m) = scrape(&s);
    // Before anything happened: the series exist at 0, the start counts as a load.
    assert_eq!(get(&m, "sentry_config_last_reload_successful", &text), 1.0);
    let loaded = get(
        &m,
        "sentry_config_last_reload_success_timestamp_seconds",
        &text,
    );
    assert!(
        loaded >= started_s - 1.0 && loaded <= now_ms() as f64 / 1000.0 + 1.0,
        "{loaded}"
    );
    assert_eq!(
        get(
            &m,
            "sentry_blocks_total{origin=\"sensor\",scan=\"syn\",protocol=\"tcp\"}",
            &text
        ),
        0.0
    );
    assert_eq!(get(&m, "sentry_block_latency_seconds_count", &text), 0.0);

    // A real scan, blocked.
    let target = TARGET_V4.to_string();
    s.nmap(&["-sS", "-e", SCANNER_IF, "-p", "1-200", &target]);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    // Root's own block, and one for a named control client.
    assert!(s.sentryctl(&["block", "192.0.2.50"]).success());
    assert!(s
        .sentryctl(&["block", "192.0.2.51", "--origin", "ops"])
        .success());

    let (text, m) = scrape(&s);
    let g = |series: &str| get(&m, series, &text);
    assert_eq!(
        g(&format!(
            "sentry_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(g("sentry_blocks_total{origin=\"sensor\",scan=\"syn\",protocol=\"tcp\"}") >= 1.0);
    assert_eq!(
        g("sentry_blocks_total{origin=\"manual\",scan=\"none\",protocol=\"none\"}"),
        1.0
    );
    assert_eq!(
        g("sentry_blocks_total{origin=\"ops\",scan=\"none\",protocol=\"none\"}"),
        1.0
    );
    assert!(g("sentry_sensor_requests_total{scan=\"syn\",protocol=\"tcp\"}") >= 1.0);
    assert_eq!(
        g("sentry_sensor_requests_total{scan=\"udp\",protocol=\"udp\"}"),
        0.0
    );
    assert!(g("sentry_requests_total{origin=\"sensor\"}") >= 1.0);
    assert_eq!(g("sentry_requests_total{origin=\"manual\"}"), 1.0);
    assert_eq!(g("sentry_requests_total{origin=\"ops\"}"), 1.0);
    assert!(
        !m.keys().any(|k| k.contains("origin=\"control\"")),
        "no lumped control origin:\n{text}"
    );
    assert_eq!(g("sentry_active_blocks{origin=\"sensor\"}"), 1.0);
    assert_eq!(g("sentry_active_blocks{origin=\"manual\"}"), 1.0);
    assert_eq!(g("sentry_active_blocks{origin=\"ops\"}"), 1.0);
    // The probe-to-block latency of the scanner's block: observed, below a second here
    // (namespaces on one host), no clock skew, buckets consistent.
    let count = g("sentry_block_latency_seconds_count");
    let sum = g("sentry_block_latency_seconds_sum");
    assert!(count >= 1.0, "{text}");
    assert!(
        sum > 0.0 && sum / count < 1.0,
        "mean latency {}: {text}",
        sum / count
    );
    assert_eq!(g("sentry_block_latency_seconds_bucket{le=\"+Inf\"}"), count);
    assert!(g("sentry_block_latency_seconds_bucket{le=\"5\"}") <= count);
    assert_eq!(g("sentry_block_latency_clock_skew_total"), 0.0);
    // Errors by kind: every kind present, none so far.
    for kind in [
        "action",
        "persist",
        "audit",
        "netlink",
        "kernel_hit",
        "infra",
        "config",
        "refused",
        "metrics",
        "other",
    ] {
        assert_eq!(
            g(&format!("sentry_errors_total{{kind=\"{kind}\"}}")),
            0.0,
            "{kind}"
        );
    }
    // process_*: the enforcer's own figures, compared with what /proc says from outside.
    let pid = s.enforcer_pid();
    let rss = g("process_resident_memory_bytes");
    let vm_rss = Sentry::rss_kib(pid) as f64 * 1024.0;
    assert!(
        rss > vm_rss * 0.5 && rss < vm_rss * 2.0,
        "rss {rss} vs VmRSS {vm_rss}"
    );
    assert!(g("process_virtual_memory_bytes") >= rss);
    let fds = g("process_open_fds");
    assert!(fds >= 3.0 && fds <= g("process_max_fds"), "{text}");
    let start = g("process_start_time_seconds");
    assert!(
        start >= started_s - 5.0 && start <= now_ms() as f64 / 1000.0,
        "start {start}, test started {started_s}"
    );
    assert!(g("process_cpu_seconds_total") >= 0.0);

    // A SIGHUP with a broken ignore file keeps the old list: alertable now.
    let good = std::fs::read_to_string(&s.ignore_file).unwrap();
    std::fs::write(&s.ignore_file, "not-an-address\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the failed reload in the metrics",
        || {
            let (_, m) = scrape(&s);
            (m.get("sentry_config_last_reload_successful") == Some(&0.0)).then_some(())
        },
        || s.diag(),
    );
    let (text, m) = scrape(&s);
    assert_eq!(get(&m, "sentry_errors_total{kind=\"config\"}", &text), 1.0);
    assert_eq!(
        get(
            &m,
            "sentry_config_last_reload_success_timestamp_seconds",
            &text
        ),
        loaded,
        "a failed reload keeps the last success time"
    );
    std::fs::write(&s.ignore_file, good).unwrap();
    let out = s.sentryctl(&["ignore", "add", "198.51.100.200"]);
    assert!(out.success(), "sentryctl ignore add reloads: {out}");
    let (text, m) = scrape(&s);
    assert_eq!(get(&m, "sentry_config_last_reload_successful", &text), 1.0);
    assert!(
        get(
            &m,
            "sentry_config_last_reload_success_timestamp_seconds",
            &text
        ) > loaded
    );
}
