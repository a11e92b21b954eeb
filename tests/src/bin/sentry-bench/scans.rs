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
            "15s",
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
    /// sentry only: first probe -> the enforcer's decision (audit record time, ms
    /// resolution), i.e. detection + transport, before the firewall action.
    pub decision_ms: Option<f64>,
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
                "-i", TARGET_IF, "-nn",
                // Buffered (no --immediate-mode, no -U): the figures come from the
                // kernel's receive timestamps, which do not depend on when tcpdump reads
                // them, and a capture woken and writing once per packet would compete
                // with the tool being measured for this machine's two CPUs.
                "-s", "128", "-B", "16384", "-Z", "root", "-w",
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
        decision_ms: None,
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
    // Diagnostics: strace both daemons (epoch timestamps, comparable with the capture's)
    // into FILE.sensor and FILE.enforcer.
    let trace: Vec<ChildGuard> = std::env::var_os("SENTRY_BENCH_STRACE")
        .map(|out| {
            let out = out.to_string_lossy().into_owned();
            [("sensor", s.sensor_pid()), ("enforcer", s.enforcer_pid())]
                .into_iter()
                .filter_map(|(what, pid)| {
                    let c = std::process::Command::new("strace")
                        .args(["-f", "-ttt", "-o"])
                        .arg(format!("{out}.{what}"))
                        .arg("-p")
                        .arg(pid.to_string())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .ok()?;
                    Some(ChildGuard::new(c))
                })
                .collect()
        })
        .unwrap_or_default();
    if !trace.is_empty() {
        std::thread::sleep(Duration::from_millis(500));
    }
    let (exposure, capture_drops) = measure(&s.net, &dir.path, scan)?;
    drop(trace);
    let src = scan.addrs().0;
    let blocked = if nft {
        s.nft_elements().contains(&src)
    } else {
        iptables_has(&s.net, src)
    };
    s.assert_alive();
    // Read as plain JSON, not as typed records: the bench also measures older enforcers.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&s.audit_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let decision_ms = records
        .iter()
        .filter(|r| r["source"].as_str().and_then(|a| a.parse().ok()) == Some(src))
        // `time_us` (microseconds, when the enforcer began the decision); the millisecond
        // `time` only as a fallback for older enforcers (it is up to 1 ms off).
        .filter_map(|r| {
            r["time_us"]
                .as_u64()
                .or_else(|| rfc3339_ms(r["time"].as_str()?).map(|ms| ms * 1000))
        })
        .min()
        .zip(exposure.first_probe_us)
        .map(|(d, p)| (d as f64 - p as f64) / 1000.0);
    if std::env::var_os("SENTRY_BENCH_VERBOSE").is_some() {
        for r in s.audit_for(src, sentry_tests::AuditDecision::Blocked) {
            eprintln!("    audit: {r:?}");
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
        decision_ms,
    })
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` -> milliseconds since the epoch.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let num = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    if s.len() < 20 || !s.ends_with('Z') || s.get(10..11) != Some("T") {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let ms = if s.get(19..20) == Some(".") {
        let frac = s.get(20..s.len() - 1)?;
        let digits: String = frac.chars().take(3).collect();
        digits.parse::<i64>().ok()? * 10i64.pow(3 - u32::try_from(digits.len()).ok()?)
    } else {
        0
    };
    // Days from the civil date (H. Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + mi) * 60 * 1000 + sec * 1000 + ms).ok()
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
/// Results of one tool over the runs of one scan.
#[derive(Debug, Default)]
struct Acc {
    answered: Vec<f64>,
    latency: Vec<f64>,
    length: Vec<f64>,
    decision: Vec<f64>,
    blocked: usize,
    drops: u64,
    notes: Vec<String>,
}

/// Scenarios 1 (`-sS` only) and 2 (all scan types). Tools take turns run by run, so a
/// change in machine load during the scenario affects every tool alike.
pub fn scenario(opts: &Opts, pkg: Option<&Package>, scans: &[Scan]) {
    let tools: Vec<Tool> = Tool::ALL
        .into_iter()
        .filter(|t| *t != Tool::PortSentry || pkg.is_some())
        .collect();
    for scan in scans {
        let mut table = Table::new(
            &format!(
                "Scan exposure: nmap {} ({} runs per tool, tools interleaved; median (min-max))",
                scan.nmap_args().join(" "),
                opts.runs
            ),
            &[
                "tool",
                "ports answered /1024",
                "first probe -> last answer ms",
                "scan length ms",
                "first probe -> sentry decision ms",
                "blocked",
                "notes",
            ],
        );
        let mut acc: Vec<Acc> = tools.iter().map(|_| Acc::default()).collect();
        let load0 = crate::loadavg();
        for i in 0..opts.runs {
            for (tool, a) in tools.iter().zip(acc.iter_mut()) {
                if crate::sys::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                match run_one(*tool, pkg, scan) {
                    Ok(r) => {
                        a.answered.push(r.exposure.answered.len() as f64);
                        a.latency.extend(r.exposure.latency_ms());
                        a.length.extend(r.exposure.scan_ms());
                        a.blocked += usize::from(r.blocked);
                        a.decision.extend(r.decision_ms);
                        a.drops += r.capture_drops;
                        eprintln!(
                            "  {} {} run {}: {} ports answered, latency {:?} ms, decision {:?} ms, blocked {}",
                            scan.label,
                            tool.label(),
                            i + 1,
                            r.exposure.answered.len(),
                            r.exposure.latency_ms(),
                            r.decision_ms,
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
                        a.notes.push(format!("run {} failed", i + 1));
                    }
                }
            }
        }
        let mut ps_latency = None;
        if pkg.is_none() {
            table.row(vec![
                Tool::PortSentry.label().into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "PortSentry package unavailable".into(),
            ]);
        }
        for (tool, mut a) in tools.iter().zip(acc) {
            if a.drops > 0 {
                a.notes.push(format!("tcpdump dropped {} packets", a.drops));
            }
            if a.blocked == 0 && !a.answered.is_empty() {
                a.notes.push("never blocked: latency = whole scan".into());
            }
            let med_lat = median(&a.latency);
            if *tool == Tool::PortSentry {
                ps_latency = med_lat;
            } else if let (Some(ps), Some(me), Some(ports)) =
                (ps_latency, med_lat, median(&a.answered))
            {
                let ok = ports <= 20.0 && me <= ps / 5.0;
                a.notes.push(format!(
                    "goal (<=20 ports, <= 1/5 PortSentry latency {:.2} ms): {}",
                    ps / 5.0,
                    if ok { "met" } else { "NOT met" }
                ));
            }
            table.row(vec![
                tool.label().into(),
                fmt_range(&a.answered, 0),
                fmt_range(&a.latency, 2),
                fmt_range(&a.length, 1),
                fmt_range(&a.decision, 1),
                format!("{}/{}", a.blocked, opts.runs),
                a.notes.join("; "),
            ]);
        }
        table.print();
        println!(
            "\nload average (1/5/15 min) before: {load0}; after: {}",
            crate::loadavg()
        );
    }
}

/// How long one read of each socket table takes inside a fresh target namespace (the
/// sensor re-reads them on the hit path when its copy is older than 20 ms). The kernel
/// walks its whole, host-wide hash table for each read, however few sockets the
/// namespace has.
pub fn proc_net_read_cost() -> String {
    let net = NetPair::new();
    let res = net.in_ns(Side::Target, || {
        ["tcp", "tcp6", "udp", "udp6"]
            .iter()
            .map(|t| {
                let mut ms = Vec::new();
                for _ in 0..5 {
                    let t0 = Instant::now();
                    let _ = fs::read(format!("/proc/thread-self/net/{t}"));
                    ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                format!("{t} {:.2} ms", median(&ms).unwrap_or(0.0))
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    format!("one read of /proc/net/{{tcp,tcp6,udp,udp6}} in a fresh namespace (median of 5): {res}")
}

/// For the report: the command line used to drive nmap.
pub fn describe() -> String {
    format!(
        "target {TARGET_V4} / {TARGET_V6}, scanner {SCANNER_V4} / {SCANNER_V6}; \
         capture: tcpdump -i {TARGET_IF} in the target namespace; kill route: {KILL_ROUTE_IPTABLES}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_to_epoch_ms() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(rfc3339_ms("2000-03-01T00:00:01.5Z"), Some(951_868_801_500));
        assert_eq!(
            rfc3339_ms("2026-11-21T13:28:08.934Z"),
            Some(1_795_267_688_934)
        );
        assert_eq!(rfc3339_ms("garbage"), None);
    }

    #[test]
    fn nmap_arguments_are_bounded() {
        let a = SCANS[0].nmap_args();
        assert!(a.contains(&"--max-retries".to_string()) && a.contains(&"-p1-1024".to_string()));
        assert_eq!(a.last().map(String::as_str), Some("10.203.0.2"));
        assert_eq!(
            SCANS[5].nmap_args().last().map(String::as_str),
            Some("fd00:203::2")
        );
    }
}
