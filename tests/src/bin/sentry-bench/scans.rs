//! Scenarios 1 and 2: scan exposure and block latency, sentry vs PortSentry 1.2, on real
//! nmap scans from the scanner namespace, measured from a capture in the target namespace.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sentry_tests::cmd::run;
use sentry_tests::netns::{NetPair, Side, SCANNER_V4, SCANNER_V6, TARGET_IF, TARGET_V4, TARGET_V6};
use sentry_tests::{Sentry, Settings};

use crate::cleanup::{self, ChildGuard, TempDir};
use crate::pcap::{self, Exposure};
use crate::portsentry::{self, Package};
use crate::procfs::{median, min_max};
use crate::table::Table;
use crate::Opts;

/// Debian's portsentry.conf port lists and advanced-mode settings, shared by both tools.
pub const TCP_PORTS: &str = "1,11,15,79,111,119,143,540,635,1080,1524,2000,5742,6667,12345,12346,20034,27665,31337,32771,32772,32773,32774,40421,49724,54320";
pub const UDP_PORTS: &str = "1,7,9,69,161,162,513,635,640,641,700,37444,34555,31335,32770,32771,32772,32773,32774,31337,54321";
pub const KILL_ROUTE_IPTABLES: &str = "/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP";

/// The PortSentry 1.2 keys both tools get, verbatim.
pub fn shared_keys() -> Vec<(&'static str, String)> {
    [
        ("TCP_PORTS", TCP_PORTS),
        ("UDP_PORTS", UDP_PORTS),
        ("ADVANCED_PORTS_TCP", "1024"),
        ("ADVANCED_PORTS_UDP", "1024"),
        ("ADVANCED_EXCLUDE_TCP", "113,139"),
        ("ADVANCED_EXCLUDE_UDP", "520,138,137,67"),
        ("RESOLVE_HOST", "0"),
        ("BLOCK_TCP", "1"),
        ("BLOCK_UDP", "1"),
        ("KILL_ROUTE", KILL_ROUTE_IPTABLES),
        ("KILL_HOSTS_DENY", "ALL: $TARGET$ : DENY"),
        ("SCAN_TRIGGER", "0"),
    ]
    .iter()
    .map(|(k, v)| (*k, v.to_string()))
    .collect()
}

pub const IGNORE: [&str; 2] = ["127.0.0.1", "0.0.0.0"];

/// One nmap scan type.
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    pub label: &'static str,
    pub flags: &'static [&'static str],
    pub v6: bool,
    pub udp: bool,
}

pub const SCANS: [Scan; 6] = [
    Scan {
        label: "-sS",
        flags: &["-sS"],
        v6: false,
        udp: false,
    },
    Scan {
        label: "-sF",
        flags: &["-sF"],
        v6: false,
        udp: false,
    },
    Scan {
        label: "-sN",
        flags: &["-sN"],
        v6: false,
        udp: false,
    },
    Scan {
        label: "-sX",
        flags: &["-sX"],
        v6: false,
        udp: false,
    },
    Scan {
        label: "-sU",
        flags: &["-sU"],
        v6: false,
        udp: true,
    },
    Scan {
        label: "-6 -sS",
        flags: &["-6", "-sS"],
        v6: true,
        udp: false,
    },
];

impl Scan {
    pub fn nmap_args(&self) -> Vec<String> {
        let target = if self.v6 {
            TARGET_V6.to_string()
        } else {
            TARGET_V4.to_string()
        };
        let mut a: Vec<String> = [
            "-n",
            "-Pn",
            "-T4",
            "--max-retries",
            "0",
            "--host-timeout",
            "60s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(self.flags.iter().map(|s| s.to_string()));
        a.extend(["-p1-1024".to_string(), target]);
        a
    }

    fn addrs(&self) -> (IpAddr, IpAddr) {
        if self.v6 {
            (IpAddr::V6(SCANNER_V6), IpAddr::V6(TARGET_V6))
        } else {
            (IpAddr::V4(SCANNER_V4), IpAddr::V4(TARGET_V4))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    PortSentry,
    SentryIptables,
    SentryNft,
}

impl Tool {
    pub const ALL: [Tool; 3] = [Tool::PortSentry, Tool::SentryIptables, Tool::SentryNft];

    pub fn label(self) -> &'static str {
        match self {
            Tool::PortSentry => "PortSentry 1.2 (iptables)",
            Tool::SentryIptables => "sentry (iptables KILL_ROUTE)",
            Tool::SentryNft => "sentry (FIREWALL=nftables)",
        }
    }
}

/// One scan against one tool.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub exposure: Exposure,
    pub blocked: bool,
    pub capture_drops: u64,
}

/// tcpdump on the target's veth end, writing a pcap file; stopped with SIGINT.
struct Capture {
    guard: ChildGuard,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    fn start(net: &NetPair, dir: &Path, scan: &Scan) -> Result<Capture, String> {
        let file = dir.join("scan.pcap");
        let log = dir.join("tcpdump.log");
        let (s, t) = scan.addrs();
        let filter = format!("host {s} and host {t}");
        let logf = fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = net
            .command(Side::Target, "tcpdump")
            .args([
                "-i",
                TARGET_IF,
                "-nn",
                "--immediate-mode",
                "-U",
                "-s",
                "128",
                "-B",
                "16384",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg(&filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("spawn tcpdump: {e}"))?;
        let guard = ChildGuard::new(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            if Instant::now() >= deadline {
                return Err(format!(
                    "tcpdump did not start: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture { guard, file, log })
    }

    /// Stop, and return the capture's bytes and tcpdump's own drop count.
    fn finish(mut self) -> Result<(Vec<u8>, u64), String> {
        self.guard.stop(Signal::SIGINT);
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        if std::env::var_os("SENTRY_BENCH_VERBOSE").is_some() {
            eprintln!("    tcpdump: {}", log.replace('\n', " | "));
        }
        let drops = log
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let bytes = fs::read(&self.file).map_err(|e| format!("read capture: {e}"))?;
        Ok((bytes, drops))
    }
}

/// Per-namespace ICMP rate limits off in the target, so UDP exposure measures the
/// detector and not the kernel's ICMP token bucket (same for every tool).
fn target_sysctls(net: &NetPair) -> Result<(), String> {
    let out = run(
        net.command(Side::Target, "sysctl").args([
            "-q",
            "-w",
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=1000000",
            "net.ipv4.icmp_msgs_burst=1000000",
        ]),
        Duration::from_secs(10),
    );
    if out.success() {
        Ok(())
    } else {
        Err(format!("sysctl in target: {out}"))
    }
}

/// Permanent neighbour entries both ways (inside the two namespaces only), so that no
/// answer waits for ARP/ND and a lost neighbour solicitation cannot empty a scan.
fn static_neighbours(net: &NetPair) -> Result<(), String> {
    use sentry_tests::netns::SCANNER_IF;
    let (_, smac) = crate::packet::link_info(&net.scanner, SCANNER_IF)?;
    let (_, tmac) = crate::packet::link_info(&net.target, TARGET_IF)?;
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let entries = [
        (Side::Scanner, IpAddr::V4(TARGET_V4), SCANNER_IF, mac(tmac)),
        (Side::Scanner, IpAddr::V6(TARGET_V6), SCANNER_IF, mac(tmac)),
        (Side::Target, IpAddr::V4(SCANNER_V4), TARGET_IF, mac(smac)),
        (Side::Target, IpAddr::V6(SCANNER_V6), TARGET_IF, mac(smac)),
    ];
    for (side, ip, dev, lladdr) in entries {
        let out = run(
            net.command(side, "ip")
                .args(["neigh", "replace"])
                .arg(ip.to_string())
                .args(["lladdr", &lladdr, "dev", dev, "nud", "permanent"]),
            Duration::from_secs(10),
        );
        if !out.success() {
            return Err(format!("static neighbour: {out}"));
        }
    }
    Ok(())
}

fn nmap(net: &NetPair, scan: &Scan) -> Result<(), String> {
    let out = run(
        net.command(Side::Scanner, "nmap").args(scan.nmap_args()),
        Duration::from_secs(120),
    );
    if out.success() {
        Ok(())
    } else {
        Err(format!("nmap failed: {out}"))
    }
}

fn iptables_has(net: &NetPair, ip: IpAddr) -> bool {
    let out = run(
        net.command(Side::Target, "iptables").args(["-S", "INPUT"]),
        Duration::from_secs(20),
    );
    out.stdout.contains(&format!("-s {ip}/32"))
}

/// Run one scan with capture around it.
fn measure(net: &NetPair, dir: &Path, scan: &Scan) -> Result<(Exposure, u64), String> {
    target_sysctls(net)?;
    static_neighbours(net)?;
    let (_, t) = scan.addrs();
    let cap = Capture::start(net, dir, scan)?;
    nmap(net, scan)?;
    // libpcap hands packets over in ring blocks; let the last one retire before stopping
    // (tcpdump drops an unretired block on exit).
    std::thread::sleep(Duration::from_millis(1200));
    let (bytes, drops) = cap.finish()?;
    let s = scan.addrs().0;
    let e = pcap::exposure(&bytes, s, t)?;
    if e.probes == 0 {
        return Err("the capture saw no probe from the scanner".into());
    }
    Ok((e, drops))
}

fn run_portsentry(pkg: &Package, scan: &Scan) -> Result<RunResult, String> {
    let net = NetPair::new();
    let dir = TempDir::new("sentry-bench-scan-").map_err(|e| e.to_string())?;
    let conf = portsentry::config_text(&shared_keys());
    let ignore: Vec<String> = IGNORE.iter().map(|s| s.to_string()).collect();
    let mode = if scan.udp { "audp" } else { "atcp" };
    let ps = portsentry::Running::start(pkg, &net, mode, &conf, &ignore)?;
    let (exposure, capture_drops) = measure(&net, &dir.path, scan)?;
    // Give a late kill command the same settle time the capture had.
    let blocked = iptables_has(&net, scan.addrs().0);
    drop(ps);
    Ok(RunResult {
        exposure,
        blocked,
        capture_drops,
    })
}

/// Settings for a sentry run with the shared PortSentry keys.
pub fn sentry_settings(modes: &[&str], nft: bool) -> Settings {
    let mut s = Settings::new(modes);
    for (k, v) in shared_keys() {
        s = s.set(k, &v);
    }
    s.ignore = IGNORE.iter().map(|s| s.to_string()).collect();
    if nft {
        s.set("FIREWALL", "nftables").unset("KILL_ROUTE")
    } else {
        s.set("FIREWALL", "none")
    }
}

/// Start a sentry pair and register what the emergency cleanup needs to know.
pub fn start_sentry(name: &str, settings: Settings) -> Sentry {
    let s = Sentry::start(name, settings);
    cleanup::register_dir(s.dir.path().to_path_buf());
    s
}

fn run_sentry(scan: &Scan, nft: bool) -> Result<RunResult, String> {
    let s = start_sentry("bench-scan", sentry_settings(&["atcp", "audp"], nft));
    let dir = TempDir::new("sentry-bench-scan-").map_err(|e| e.to_string())?;
    let trace = std::env::var_os("SENTRY_BENCH_STRACE").map(|out| {
        let c = std::process::Command::new("strace")
            .args([
                "-f",
                "-tt",
                "-e",
                "trace=poll,ppoll,sendto,sendmsg,write,read,recvfrom",
                "-o",
            ])
            .arg(out)
            .arg("-p")
            .arg(s.sensor_pid().to_string())
            .spawn()
            .expect("strace");
        std::thread::sleep(Duration::from_millis(500));
        ChildGuard::new(c)
    });
    let (exposure, capture_drops) = measure(&s.net, &dir.path, scan)?;
    drop(trace);
    let src = scan.addrs().0;
    let blocked = if nft {
        s.nft_elements().contains(&src)
    } else {
        iptables_has(&s.net, src)
    };
    s.assert_alive();
    if std::env::var_os("SENTRY_BENCH_VERBOSE").is_some() {
        for r in s.audit_for(src, "blocked") {
            eprintln!("    audit: {r}");
        }
        eprintln!(
            "    first probe at {:?} us (epoch)",
            exposure.first_probe_us
        );
        for l in s.sensor_log().lines().take(8) {
            eprintln!("    sensor: {l}");
        }
    }
    cleanup::unregister_dir(s.dir.path());
    Ok(RunResult {
        exposure,
        blocked,
        capture_drops,
    })
}

/// One run; a run whose capture saw no probe at all (nmap sent nothing) is repeated once.
pub fn run_one(tool: Tool, pkg: Option<&Package>, scan: &Scan) -> Result<RunResult, String> {
    match run_once(tool, pkg, scan) {
        Err(e) if e.contains("saw no probe") => {
            eprintln!("  {} {}: {e}; repeating the run", scan.label, tool.label());
            run_once(tool, pkg, scan)
        }
        other => other,
    }
}

fn run_once(tool: Tool, pkg: Option<&Package>, scan: &Scan) -> Result<RunResult, String> {
    match tool {
        Tool::PortSentry => run_portsentry(pkg.ok_or("PortSentry package unavailable")?, scan),
        Tool::SentryIptables => run_sentry(scan, false),
        Tool::SentryNft => run_sentry(scan, true),
    }
}

fn fmt_range(v: &[f64], prec: usize) -> String {
    match (median(v), min_max(v)) {
        (Some(m), Some((lo, hi))) => format!("{m:.prec$} ({lo:.prec$}-{hi:.prec$})"),
        _ => "-".into(),
    }
}

/// Scenarios 1 (`-sS` only) and 2 (all scan types).
pub fn scenario(opts: &Opts, pkg: Option<&Package>, scans: &[Scan]) {
    for scan in scans {
        let mut table = Table::new(
            &format!(
                "Scan exposure: nmap {} ({} runs per tool, median (min-max))",
                scan.nmap_args().join(" "),
                opts.runs
            ),
            &[
                "tool",
                "ports answered /1024",
                "first probe -> last answer ms",
                "scan length ms",
                "blocked",
                "notes",
            ],
        );
        let mut ps_latency = None;
        for tool in Tool::ALL {
            if tool == Tool::PortSentry && pkg.is_none() {
                table.row(vec![
                    tool.label().into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "PortSentry package unavailable".into(),
                ]);
                continue;
            }
            let mut answered = Vec::new();
            let mut latency = Vec::new();
            let mut length = Vec::new();
            let mut blocked = 0;
            let mut notes = Vec::new();
            let mut drops = 0;
            for i in 0..opts.runs {
                if crate::sys::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                match run_one(tool, pkg, scan) {
                    Ok(r) => {
                        answered.push(r.exposure.answered.len() as f64);
                        if let Some(l) = r.exposure.latency_ms() {
                            latency.push(l);
                        }
                        if let Some(l) = r.exposure.scan_ms() {
                            length.push(l);
                        }
                        blocked += usize::from(r.blocked);
                        drops += r.capture_drops;
                        eprintln!(
                            "  {} {} run {}: {} ports answered, latency {:?} ms, blocked {}",
                            scan.label,
                            tool.label(),
                            i + 1,
                            r.exposure.answered.len(),
                            r.exposure.latency_ms(),
                            r.blocked
                        );
                    }
                    Err(e) => {
                        eprintln!(
                            "  {} {} run {}: FAILED: {e}",
                            scan.label,
                            tool.label(),
                            i + 1
                        );
                        notes.push(format!("run {} failed", i + 1));
                    }
                }
            }
            if drops > 0 {
                notes.push(format!("tcpdump dropped {drops} packets"));
            }
            if blocked == 0 && !answered.is_empty() {
                notes.push("never blocked: latency = whole scan".into());
            }
            let med_lat = median(&latency);
            if tool == Tool::PortSentry {
                ps_latency = med_lat;
            } else if tool == Tool::SentryNft || tool == Tool::SentryIptables {
                if let (Some(ps), Some(me), Some(ports)) = (ps_latency, med_lat, median(&answered))
                {
                    let ok = ports <= 20.0 && me <= ps / 5.0;
                    notes.push(format!(
                        "goal (<=20 ports, <= 1/5 PortSentry latency {:.2} ms): {}",
                        ps / 5.0,
                        if ok { "met" } else { "NOT met" }
                    ));
                }
            }
            table.row(vec![
                tool.label().into(),
                fmt_range(&answered, 0),
                fmt_range(&latency, 2),
                fmt_range(&length, 1),
                format!("{blocked}/{}", opts.runs),
                notes.join("; "),
            ]);
        }
        table.print();
    }
}

/// For the report: the command line used to drive nmap.
pub fn describe() -> String {
    format!(
        "target {TARGET_V4} / {TARGET_V6}, scanner {SCANNER_V4} / {SCANNER_V6}; \
         capture: tcpdump -i {TARGET_IF} in the target namespace; kill route: {KILL_ROUTE_IPTABLES}"
    )
}
