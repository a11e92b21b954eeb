//! Scenarios 1 and 2: scan exposure and block latency, sentry vs PortSentry 1.2, on real
//! nmap and masscan scans from the scanner namespace, measured from a capture on the
//! scanner's own interface: an answer counts only if it reached the scanner (SYN-ACK, RST,
//! ICMP unreachable, UDP reply from the target), never what the scanner concluded.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sentry_tests::cmd::run;
use sentry_tests::netns::{NetPair, Side, SCANNER_IF, TARGET_IF, TARGET_V4, TARGET_V6};
use sentry_tests::{Sentry, Settings};

use crate::cleanup::{self, ChildGuard, TempDir};
use crate::pcap::{self, Exposure};
use crate::portsentry::{self, Package};
use crate::probe::{mac_text, Scan};
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

/// The policy sentry ships (policy/dist/sentry.conf, FIREWALL="nftables"), as installed.
pub const SHIPPED_POLICY: &str = include_str!("../../../../policy/dist/sentry.conf");
/// Debian's portsentry.conf as the repository keeps it (used when no package is at hand).
pub const DEBIAN_CONF_FIXTURE: &str =
    include_str!("../../../../policy/tests/fixtures/debian-package.conf");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    PortSentry,
    /// The shipped policy, unchanged but for file locations.
    SentryShipped,
    /// Debian's portsentry.conf unchanged but for file locations and BLOCK_TCP/UDP="1":
    /// no FIREWALL key, so the native set first, then its KILL_ROUTE and KILL_HOSTS_DENY.
    SentryDebian,
}

impl Tool {
    pub const ALL: [Tool; 3] = [Tool::PortSentry, Tool::SentryShipped, Tool::SentryDebian];

    pub fn label(self) -> &'static str {
        match self {
            Tool::PortSentry => "PortSentry 1.2 (iptables KILL_ROUTE)",
            Tool::SentryShipped => "sentry (shipped policy, FIREWALL=nftables)",
            Tool::SentryDebian => "sentry (Debian portsentry.conf + BLOCK_TCP/UDP=1)",
        }
    }

    /// The sentry settings of this tool (`None` for PortSentry); both run -atcp -audp as
    /// the shipped unit does.
    pub fn settings(self, pkg: Option<&Package>) -> Option<Settings> {
        let modes = ["atcp", "audp"];
        let s = match self {
            Tool::PortSentry => return None,
            Tool::SentryShipped => Settings::portsentry(SHIPPED_POLICY, &modes),
            Tool::SentryDebian => {
                let text = pkg
                    .and_then(|p| p.debian_conf.as_deref())
                    .unwrap_or(DEBIAN_CONF_FIXTURE);
                Settings::portsentry(text, &modes)
                    .set("BLOCK_TCP", "1")
                    .set("BLOCK_UDP", "1")
            }
        };
        let mut s = s;
        s.ignore = IGNORE.iter().map(|s| s.to_string()).collect();
        Some(s)
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

/// tcpdump on the scanner's veth end, writing a pcap file; stopped with SIGINT. On the
/// scanner's side, so that what it records as an answer is what reached the scanner.
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
            .command(Side::Scanner, "tcpdump")
            .args([
                "-i", SCANNER_IF, "-nn",
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
fn static_neighbours(net: &NetPair, scan: &Scan) -> Result<(), String> {
    use sentry_tests::netns::{SCANNER_V4, SCANNER_V6};
    let (_, smac) = crate::packet::link_info(&net.scanner, SCANNER_IF)?;
    let (_, tmac) = crate::packet::link_info(&net.target, TARGET_IF)?;
    let mut entries = vec![
        (
            Side::Scanner,
            IpAddr::V4(TARGET_V4),
            SCANNER_IF,
            mac_text(tmac),
        ),
        (
            Side::Scanner,
            IpAddr::V6(TARGET_V6),
            SCANNER_IF,
            mac_text(tmac),
        ),
        (
            Side::Target,
            IpAddr::V4(SCANNER_V4),
            TARGET_IF,
            mac_text(smac),
        ),
        (
            Side::Target,
            IpAddr::V6(SCANNER_V6),
            TARGET_IF,
            mac_text(smac),
        ),
    ];
    for (ip, lladdr) in scan.extra_neighbours(smac) {
        entries.push((Side::Target, ip, TARGET_IF, lladdr));
    }
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

fn iptables_has(net: &NetPair, ip: IpAddr) -> bool {
    let out = run(
        net.command(Side::Target, "iptables").args(["-S", "INPUT"]),
        Duration::from_secs(20),
    );
    out.stdout.contains(&format!("-s {ip}/32"))
}

/// With SENTRY_BENCH_KEEP_PCAP=DIR, the capture of every sentry run in which a port
/// answered is copied there (for `tcpdump -r`: which packet was answered, and when).
fn keep_capture(bytes: &[u8], scan: &Scan, what: &str) {
    let Some(dir) = std::env::var_os("SENTRY_BENCH_KEEP_PCAP") else {
        return;
    };
    let name = format!(
        "{}-{what}-{}.pcap",
        scan.id,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    );
    let path = PathBuf::from(dir).join(name);
    match fs::write(&path, bytes) {
        Ok(()) => eprintln!("    capture kept: {}", path.display()),
        Err(e) => eprintln!("    capture not kept ({}): {e}", path.display()),
    }
}

/// Run one scan with capture around it; `keep` names the tool when a capture with
/// answers is to be kept (see [`keep_capture`]).
fn measure(
    net: &NetPair,
    dir: &Path,
    scan: &Scan,
    keep: Option<&str>,
) -> Result<(Exposure, u64), String> {
    target_sysctls(net)?;
    static_neighbours(net, scan)?;
    let (_, t) = scan.addrs();
    let cap = Capture::start(net, dir, scan)?;
    scan.run(net)?;
    // libpcap hands packets over in ring blocks; let the last one retire before stopping
    // (tcpdump drops an unretired block on exit).
    std::thread::sleep(Duration::from_millis(1200));
    let (bytes, drops) = cap.finish()?;
    let s = scan.addrs().0;
    let e = pcap::exposure(&bytes, s, t)?;
    if e.probes == 0 {
        return Err("the capture saw no probe from the scanner".into());
    }
    if let (Some(what), false) = (keep, e.answered.is_empty()) {
        keep_capture(&bytes, scan, what);
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
    let (exposure, capture_drops) = measure(&net, &dir.path, scan, None)?;
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

fn run_sentry(scan: &Scan, settings: Settings, what: &str) -> Result<RunResult, String> {
    let s = start_sentry("bench-scan", settings);
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
    let (exposure, capture_drops) = measure(&s.net, &dir.path, scan, Some(what))?;
    drop(trace);
    let src = scan.addrs().0;
    // Both configurations block in the native set (the enforcer's v4/v6 sets).
    let blocked = s.nft_elements().contains(&src);
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
        Tool::SentryShipped | Tool::SentryDebian => run_sentry(
            scan,
            tool.settings(pkg)
                .ok_or("no sentry settings for this tool")?,
            if tool == Tool::SentryShipped {
                "shipped"
            } else {
                "debian"
            },
        ),
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
    probes: Vec<f64>,
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
        let answered_hdr = format!("ports answered /{}", scan.last_port);
        let mut table = Table::new(
            &format!(
                "Scan exposure: {} ({} runs per tool, tools interleaved; median (min-max); \
                 answers counted on the scanner's interface)",
                scan.command_line(),
                opts.runs
            ),
            &[
                "tool",
                &answered_hdr,
                "probes on the wire",
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
                        a.probes.push(r.exposure.probes as f64);
                        a.latency.extend(r.exposure.latency_ms());
                        a.length.extend(r.exposure.scan_ms());
                        a.blocked += usize::from(r.blocked);
                        a.decision.extend(r.decision_ms);
                        a.drops += r.capture_drops;
                        eprintln!(
                            "  {} {} run {}: {} ports answered [{}] ({} probes), latency {:?} ms, decision {:?} ms, blocked {}",
                            scan.label,
                            tool.label(),
                            i + 1,
                            r.exposure.answered.len(),
                            r.exposure.answered_detail(6),
                            r.exposure.probes,
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
        if pkg.is_none() {
            table.row(vec![
                Tool::PortSentry.label().into(),
                "-".into(),
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
            if *tool != Tool::PortSentry {
                if let Some((_, worst)) = min_max(&a.answered) {
                    a.notes.push(format!(
                        "goal (issue #13: at most 1 port answered in every run): {}",
                        if worst <= 1.0 { "met" } else { "NOT met" }
                    ));
                }
            }
            table.row(vec![
                tool.label().into(),
                fmt_range(&a.answered, 0),
                fmt_range(&a.probes, 0),
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
        "target {TARGET_V4} / {TARGET_V6}, scanner {} / {} (masscan: {}); \
         capture: tcpdump -i {SCANNER_IF} in the scanner namespace; PortSentry's kill route: \
         {KILL_ROUTE_IPTABLES}; sentry: policy/dist/sentry.conf as shipped, and Debian's \
         portsentry.conf with BLOCK_TCP/BLOCK_UDP=1 (no FIREWALL key), both -atcp -audp",
        sentry_tests::netns::SCANNER_V4,
        sentry_tests::netns::SCANNER_V6,
        crate::probe::MASSCAN_V4
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
}
