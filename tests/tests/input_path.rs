//! Detection sees packets the way the host's own input path sees them (issue #13): the
//! enforcer's nftables chain in the input hook copies candidates to the sensor over NFLOG,
//! after defragmentation, routing, rp_filter and conntrack. Each test checks one way the
//! old pre-stack capture was wrong, and then that a real scan from the same place is still
//! detected (so "nothing seen" cannot pass because nothing works).
//!
//! Every test runs in namespaces it creates (the kit's scanner/target pair, plus a WAN
//! namespace for the router test), sends a bounded number of packets, and is cleaned up by
//! the kit's and `Wan`'s destructors on failure too.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use sentry_proto::{Mode, Protocol};
use sentry_tests::cmd::run;
use sentry_tests::netns::{Side, SCANNER2_V4, SCANNER_V4, SCANNER_V6, TARGET_V4, TARGET_V6};
use sentry_tests::router::{Container, Wan, BRIDGE_V4, CONTAINER_V4, PUBLISHED_PORT, SERVER_V4};
use sentry_tests::{require_root, require_tool, run_ok, AuditLine, Sentry, Settings};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);
const T: Duration = Duration::from_secs(30);
/// The system interpreter: scapy is a Debian package (python3-scapy), not in a venv.
const PYTHON: &str = "/usr/bin/python3";

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "nft") && require_tool(test, "nmap")
}

fn scapy(test: &str) -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import scapy.all"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        sentry_tests::skipped(&format!(
            "SKIPPED (needs python3-scapy, see make test-deps): {test}"
        ));
    }
    ok
}

fn craft(s: &Sentry, args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/craft.py");
    let mut c = s.net.command(Side::Scanner, PYTHON);
    c.arg(script).args(args);
    run_ok(&mut c, T);
}

/// Every audit record about `ip`.
fn records(s: &Sentry, ip: IpAddr) -> Vec<AuditLine> {
    s.audit()
        .into_iter()
        .filter(|r| r.source == Some(ip))
        .collect()
}

/// Nothing about `ip` anywhere: no block, no audit record, no detection line.
fn assert_never_seen(s: &Sentry, ip: IpAddr) {
    // The sensor reports within milliseconds; give a late one time to show up.
    std::thread::sleep(Duration::from_millis(1500));
    s.assert_not_blocked(ip);
    let r = records(s, ip);
    assert!(r.is_empty(), "audit records for {ip}: {r:?}\n{}", s.diag());
    let needle = format!("host: {ip}/{ip}");
    assert!(
        !s.sensor_log()
            .lines()
            .any(|l| l.contains("attackalert") && l.contains(&needle)),
        "the sensor reported {ip}\n{}",
        s.diag()
    );
}

#[test]
fn forwarded_lan_traffic_never_counts() {
    let test = "forwarded_lan_traffic_never_counts";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "audp"]));
    let wan = Wan::attach(&s.net);
    let server = SERVER_V4.to_string();
    // A UDP service and a TCP service on the WAN side, so the client's traffic through the
    // router is real traffic, not only probes of closed ports.
    let mut srv = wan.command(PYTHON);
    srv.args([
        "-c",
        "import socket,time\n\
         t=socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(('0.0.0.0',80)); t.listen(64)\n\
         u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0',53))\n\
         time.sleep(25)\n",
    ]);
    let mut srv = srv.spawn().expect("server");
    std::thread::sleep(Duration::from_millis(500));
    // The LAN client's own connections and datagrams through the host...
    let client = "import socket\n\
         for p in [80, 81, 22, 443]:\n\
         \x20   s=socket.socket(); s.settimeout(2)\n\
         \x20   try: s.connect(('10.204.0.2', p))\n\
         \x20   except OSError: pass\n\
         \x20   s.close()\n\
         u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for p in [53, 123, 161, 500]: u.sendto(b'x', ('10.204.0.2', p))\n";
    run_ok(s.net.command(Side::Scanner, PYTHON).args(["-c", client]), T);
    // ...and even a full scan of the WAN server from the LAN: forwarded, never ours.
    s.nmap_any(&["-sS", "-p", "1-300", &server]);
    s.nmap_any(&["-sU", "-p", "1-40", &server]);
    assert_never_seen(&s, SCANNER);
    let _ = srv.kill();
    let _ = srv.wait();
    // The same client scanning the router itself is a scanner.
    s.nmap(&["-sS", "-p", "1-100", &TARGET_V4.to_string()]);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
}

#[test]
fn rp_filter_dropped_spoof_is_never_blocked() {
    let test = "rp_filter_dropped_spoof_is_never_blocked";
    if !ready(test) || !require_tool(test, "hping3") {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "audp"]));
    for key in ["all", "tx0"] {
        run_ok(
            s.net
                .command(Side::Target, "sysctl")
                .args(["-qw", &format!("net.ipv4.conf.{key}.rp_filter=1")]),
            T,
        );
    }
    // No route back to 198.51.100.9 through tx0: strict reverse-path filtering drops it
    // in routing, before the input hook.
    let spoofed: IpAddr = "198.51.100.9".parse().unwrap();
    let target = TARGET_V4.to_string();
    s.hping(&[
        "-a",
        "198.51.100.9",
        "-S",
        "-p",
        "++100",
        "-c",
        "5",
        "-i",
        "u10000",
        &target,
    ]);
    s.hping(&[
        "-a",
        "198.51.100.9",
        "--udp",
        "-p",
        "++200",
        "-c",
        "5",
        "-i",
        "u10000",
        &target,
    ]);
    assert_never_seen(&s, spoofed);
    // A source the route check accepts is still seen.
    s.hping(&["-S", "-p", "++300", "-c", "3", "-i", "u10000", &target]);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
}

#[test]
fn host_firewall_dropping_everything_does_not_hide_scans() {
    let test = "host_firewall_dropping_everything_does_not_hide_scans";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "audp"]));
    // The host's own firewall: input policy drop, only port 22 (and replies) allowed.
    let fw = "table inet hostfw {\n\
              chain input { type filter hook input priority 0; policy drop;\n\
              iif lo accept\n\
              ct state established,related accept\n\
              tcp dport 22 accept\n\
              }\n\
              }\n";
    let file = std::env::temp_dir().join(format!("{test}-{}.nft", std::process::id()));
    std::fs::write(&file, fw).unwrap();
    let out = run(s.net.command(Side::Target, "nft").arg("-f").arg(&file), T);
    let _ = std::fs::remove_file(&file);
    assert!(out.success(), "host firewall: {out}");
    // nmap sees port 22 closed and everything else filtered; sentry sees the scan.
    s.nmap(&["-sS", "-p", "1-100", &TARGET_V4.to_string()]);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    let rules = s.nft_ruleset();
    assert!(rules.contains("table inet hostfw"), "{rules}");
}

#[test]
fn fragmented_syn_in_both_orders() {
    let test = "fragmented_syn_in_both_orders";
    if !ready(test) || !scapy(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let target = TARGET_V4.to_string();
    craft(&s, &["frag4", &SCANNER_V4.to_string(), &target, "25", "in"]);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "syn", Mode::Atcp);
    // Last fragment first: the pre-stack capture never saw this one.
    let second = IpAddr::V4(SCANNER2_V4);
    craft(
        &s,
        &["frag4", &SCANNER2_V4.to_string(), &target, "26", "reverse"],
    );
    s.assert_scan_blocked(second, Protocol::Tcp, "syn", Mode::Atcp);
}

/// One IPv6 SYN behind a header chain, from the scanner's own address, in a fresh pair
/// (an IPv6 block may cover the scanner's whole /64, so one case per run).
fn ipv6_chain(test: &str, args: &[&str]) {
    if !ready(test) || !scapy(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let mut a = vec![args[0], "", "", "80"];
    let (src, dst) = (SCANNER_V6.to_string(), TARGET_V6.to_string());
    a[1] = &src;
    a[2] = &dst;
    a.extend_from_slice(&args[1..]);
    // The first probe may race neighbour discovery: a few, spaced out.
    for _ in 0..3 {
        craft(&s, &a);
        std::thread::sleep(Duration::from_millis(200));
    }
    s.assert_scan_blocked(IpAddr::V6(SCANNER_V6), Protocol::Tcp, "syn", Mode::Atcp);
}

#[test]
fn ipv6_syn_behind_10_extension_headers() {
    ipv6_chain("ipv6_syn_behind_10_extension_headers", &["ext6", "10"]);
}

#[test]
fn ipv6_syn_behind_60_extension_headers() {
    ipv6_chain("ipv6_syn_behind_60_extension_headers", &["ext6", "60"]);
}

#[test]
fn ipv6_syn_behind_a_400_byte_destination_options_header() {
    ipv6_chain(
        "ipv6_syn_behind_a_400_byte_destination_options_header",
        &["dst6", "400"],
    );
}

#[test]
fn badsum_probes_never_block() {
    let test = "badsum_probes_never_block";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "audp"]));
    let target = TARGET_V4.to_string();
    // SYN (conntrack: invalid), FIN (invalid anyway: the sensor checks the checksum) and
    // UDP (invalid: never copied) with broken checksums: the stack drops them all.
    s.nmap_any(&["-sS", "--badsum", "-p", "1-50", &target]);
    s.nmap_any(&["-sF", "--badsum", "-p", "1-50", &target]);
    s.nmap_any(&["-sU", "--badsum", "-p", "1-20", &target]);
    assert_never_seen(&s, SCANNER);
    // The same scans with good checksums are seen.
    s.nmap(&["-sF", "-p", "1-50", &target]);
    s.assert_scan_blocked(SCANNER, Protocol::Tcp, "fin", Mode::Atcp);
    let ok = run(
        s.net
            .command(Side::Target, "nft")
            .args(["list", "chain", "inet", "sentry", "input"]),
        T,
    );
    assert!(ok.stdout.contains("priority"), "{ok}");
}

/// A Docker-style host: a container behind a bridge, masqueraded to the WAN, its port
/// published on the host's WAN address (DNAT). The container's own connections out, a WAN
/// client's connections to the published port (forwarded to the container, no socket on
/// the host) and even a scan of the WAN from the container never count; the container
/// scanning the host itself does.
#[test]
fn docker_style_bridge_with_masquerade_never_counts_forwarded_traffic() {
    let test = "docker_style_bridge_with_masquerade_never_counts_forwarded_traffic";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "audp"]));
    let wan = Wan::attach(&s.net);
    let ctr = Container::attach(&s.net);
    // The container's service on the published port, and a WAN service it talks to.
    let mut svc = ctr.command(PYTHON);
    svc.args([
        "-c",
        &format!(
            "import socket,time\n\
             t=socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(('0.0.0.0',{PUBLISHED_PORT})); t.listen(64)\n\
             time.sleep(25)\n"
        ),
    ]);
    let mut svc = svc.spawn().expect("container service");
    let mut srv = wan.command(PYTHON);
    srv.args([
        "-c",
        "import socket,time\n\
         t=socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(('0.0.0.0',443)); t.listen(64)\n\
         time.sleep(25)\n",
    ]);
    let mut srv = srv.spawn().expect("WAN service");
    std::thread::sleep(Duration::from_millis(500));
    let connect = |ports: &str, to: &str| {
        format!(
            "import socket\n\
             ok=0\n\
             for p in [{ports}]:\n\
             \x20   s=socket.socket(); s.settimeout(2)\n\
             \x20   try: s.connect(('{to}', p)); ok+=1\n\
             \x20   except OSError: pass\n\
             \x20   s.close()\n\
             print('connected', ok)\n"
        )
    };
    // WAN clients to the published port, five connections: forwarded to the container.
    let out = run_ok(
        wan.command(PYTHON)
            .args(["-c", &connect("80, 80, 80, 80, 80", "10.204.0.1")]),
        T,
    );
    assert!(out.stdout.contains("connected 5"), "published port: {out}");
    // The container's own traffic out (masqueraded): connections, datagrams, a scan.
    run_ok(
        ctr.command(PYTHON)
            .args(["-c", &connect("443, 22, 25, 81", &SERVER_V4.to_string())]),
        T,
    );
    run_ok(
        ctr.command(PYTHON).args([
            "-c",
            "import socket\nu=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor p in [53, 123, 161]: u.sendto(b'x', ('10.204.0.2', p))\n",
        ]),
        T,
    );
    run_ok(
        ctr.command("nmap").args([
            "-n",
            "-Pn",
            "-sS",
            "--max-retries",
            "0",
            "-p",
            "1-200",
            &SERVER_V4.to_string(),
        ]),
        Duration::from_secs(60),
    );
    assert_never_seen(&s, IpAddr::V4(CONTAINER_V4));
    assert_never_seen(&s, IpAddr::V4(SERVER_V4));
    let _ = (svc.kill(), srv.kill());
    let _ = (svc.wait(), srv.wait());
    // The container scanning the host itself (its bridge address) is a scanner.
    run(
        ctr.command("nmap").args([
            "-n",
            "-Pn",
            "-sS",
            "--max-retries",
            "0",
            "-p",
            "1-100",
            &BRIDGE_V4.to_string(),
        ]),
        Duration::from_secs(60),
    );
    s.wait_decision(
        IpAddr::V4(CONTAINER_V4),
        sentry_tests::AuditDecision::Blocked,
    );
}
