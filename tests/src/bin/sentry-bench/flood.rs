//! Scenario 4: a spoofed-source SYN flood. Every packet carries a distinct source from
//! 10.64.0.0/10 (private, exists only inside the benchmark's namespaces) and goes to a
//! port in 1-1023, so with SCAN_TRIGGER=0 every packet is a detection. Sent as fast as
//! the veth carries it, bounded by count and time. Measured: blocks per second, what the
//! rate and count caps refused, sensor/enforcer CPU and peak memory (VmHWM).
//! PortSentry 1.2 gets the same kind of flood at a rate it can at least partly follow.

use std::time::{Duration, Instant};

use sentry_tests::cmd::run;
use sentry_tests::netns::{NetPair, Side};

use crate::packet::{self, spoofed_source, Plan};
use crate::portsentry::{self, Package};
use crate::procfs;
use crate::scans::{sentry_settings, shared_keys, start_sentry, IGNORE};
use crate::sensorctl::{self, settle, snapshot};
use crate::table::Table;
use crate::Opts;

#[derive(Debug, Clone, Copy)]
struct Caps {
    label: &'static str,
    max_blocks: Option<&'static str>,
    block_rate: Option<&'static str>,
}

const DEFAULT_CAPS: Caps = Caps {
    label: "defaults (MAX_BLOCKS=10000, BLOCK_RATE=600/min)",
    max_blocks: None,
    block_rate: None,
};
const WIDE_CAPS: Caps = Caps {
    label: "MAX_BLOCKS=100000, BLOCK_RATE=1000000/min",
    max_blocks: Some("100000"),
    block_rate: Some("1000000"),
};

fn kib(v: u64) -> String {
    if v >= 10 * 1024 {
        format!("{:.1} MiB", v as f64 / 1024.0)
    } else {
        format!("{v} KiB")
    }
}

fn sentry_row(n: u64, caps: Caps, opts: &Opts) -> Result<Vec<String>, String> {
    let mut settings = sentry_settings(&["atcp"], true)
        .without_sensor()
        .unset("MAX_BLOCKS")
        .unset("BLOCK_RATE");
    if let Some(v) = caps.max_blocks {
        settings = settings.set("MAX_BLOCKS", v);
    }
    if let Some(v) = caps.block_rate {
        settings = settings.set("BLOCK_RATE", v);
    }
    let mut s = start_sentry("bench-flood", settings);
    let spid = sensorctl::start_sensor(&mut s)?;
    let epid = s.enforcer_pid();
    let before = snapshot(&s)?;
    let (scpu0, ecpu0) = (
        procfs::cpu(spid).unwrap_or_default(),
        procfs::cpu(epid).unwrap_or_default(),
    );
    let t0 = Instant::now();
    let sent = packet::send_syns(
        &s.net,
        Plan {
            count: n,
            rate: None,
            max_time: Duration::from_secs(opts.flood_secs),
        },
        |i| {
            (
                spoofed_source(i),
                packet::cycle(i, 20_000, 40_000),
                packet::cycle(i, 1, 1023),
            )
        },
    )?;
    let st = settle(
        &s,
        Duration::from_millis(1500),
        Duration::from_secs(opts.settle_secs),
    )?;
    let after = st.last.clone();
    let drain_s = st.changed.duration_since(t0).as_secs_f64();
    let blocking_s = st
        .blocked_changed
        .duration_since(t0)
        .as_secs_f64()
        .max(1e-3);
    let scpu = procfs::cpu(spid).unwrap_or_default().since(scpu0);
    let ecpu = procfs::cpu(epid).unwrap_or_default().since(ecpu0);
    let shwm = procfs::status_kib(spid, "VmHWM").unwrap_or(0);
    let ehwm = procfs::status_kib(epid, "VmHWM").unwrap_or(0);
    let audit_bytes = std::fs::metadata(&s.audit_log).map_or(0, |m| m.len());
    let actions = action_costs(&s.audit_log);
    let sensor_txt = if after.sensor.is_null() {
        "no statistics at the end (sensor not connected to the enforcer then)".to_string()
    } else if after.sensor_u64("packets") == 0 {
        "statistics all zero in `sentryctl status` when the wait ended (no Stats frame got through)"
            .to_string()
    } else {
        let d = |k: &str| after.sensor_u64(k).saturating_sub(before.sensor_u64(k));
        format!(
            "seen {}, kernel_drops {}, hits {}, reports {}, queue_drops {}, evictions {}, tracked {}",
            d("packets"),
            d("kernel_drops"),
            d("hits"),
            d("reports"),
            d("queue_drops"),
            d("evictions"),
            after.sensor_u64("tracked_sources")
        )
    };
    let c = |k: &str| after.counter(k).saturating_sub(before.counter(k));
    let blocked = c("blocked");
    eprintln!(
        "  flood sentry {n} {}: sent {} at {:.0} pps; sensor {}; counters {}",
        caps.label,
        sent.sent,
        sent.pps(),
        after.sensor,
        after.counters
    );
    s.assert_alive();
    if std::env::var_os("SENTRY_BENCH_VERBOSE").is_some() {
        for (what, path) in [
            ("sensor", s.dir.path().join("bench-sensor.log")),
            ("enforcer", s.dir.path().join("enforcer.1.log")),
        ] {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(15)..] {
                eprintln!("    {what}: {l}");
            }
        }
    }
    crate::cleanup::unregister_dir(s.dir.path());
    Ok(vec![
        format!("sentry, {n} sources, {}", caps.label),
        format!("{} in {:.1} s ({:.0} pps)", sent.sent, sent.elapsed.as_secs_f64(), sent.pps()),
        sensor_txt,
        format!(
            "requests {}, blocked {blocked}, rate_limited {}, capped {}, active {}; per block: {actions}",
            c("requests"),
            c("rate_limited"),
            c("capped"),
            after.active_blocks
        ),
        format!("{:.0}", blocked as f64 / blocking_s),
        format!(
            "{drain_s:.1} s{}{}",
            if st.timed_out { " (STILL BUSY when the wait ended)" } else { "" },
            if st.unanswered > 0 {
                format!(
                    "; `sentryctl status` unanswered {} times (10 s each): the counters are from the last answer",
                    st.unanswered
                )
            } else {
                String::new()
            }
        ),
        format!("{:.1} MiB", audit_bytes as f64 / 1048576.0),
        format!("{:.2} s", scpu.own_s),
        format!("{:.2} s (+{:.2} s children)", ecpu.own_s, ecpu.children_s),
        format!("sensor {}, enforcer {}", kib(shwm), kib(ehwm)),
    ])
}

/// Mean time per action (from the `ms` of each action) over the last ~2 MiB of the audit
/// log, i.e. the blocks added last, when the most blocks were already active.
fn action_costs(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return "-".into();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2 << 20)));
    let mut buf = Vec::new();
    let _ = f.take(2 << 20).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let mut sums: std::collections::BTreeMap<String, (f64, u64)> = Default::default();
    for line in text.lines().skip(1) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["decision"] != "blocked" {
            continue;
        }
        for a in v["actions"].as_array().into_iter().flatten() {
            if let (Some(name), Some(ms)) = (a["action"].as_str(), a["ms"].as_f64()) {
                let e = sums.entry(name.to_string()).or_default();
                e.0 += ms;
                e.1 += 1;
            }
        }
    }
    if sums.is_empty() {
        return "-".into();
    }
    sums.iter()
        .map(|(k, (t, n))| format!("{k} {:.2} ms", t / *n as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Drops counted on PortSentry's raw socket (last column of /proc/net/raw).
fn raw_drops(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/net/raw"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

fn count_rules(net: &NetPair) -> u64 {
    run(
        net.command(Side::Target, "iptables").args(["-S", "INPUT"]),
        Duration::from_secs(60),
    )
    .stdout
    .lines()
    .filter(|l| l.contains("-j DROP"))
    .count() as u64
}

fn portsentry_row(pkg: &Package, opts: &Opts) -> Result<Vec<String>, String> {
    let net = NetPair::new();
    let conf = portsentry::config_text(&shared_keys());
    let ignore: Vec<String> = IGNORE.iter().map(|s| s.to_string()).collect();
    let ps = portsentry::Running::start(pkg, &net, "atcp", &conf, &ignore)?;
    let cpu0 = procfs::cpu(ps.pid).unwrap_or_default();
    let n = opts.ps_flood_packets;
    let rate = opts.ps_flood_rate;
    let t0 = Instant::now();
    let sent = packet::send_syns(
        &net,
        Plan {
            count: n,
            rate: Some(rate),
            max_time: Duration::from_secs(opts.flood_secs.max(n / rate.max(1) + 5)),
        },
        |i| {
            (
                spoofed_source(i),
                packet::cycle(i, 20_000, 40_000),
                packet::cycle(i, 1, 1023),
            )
        },
    )?;
    // Let it work through what it read; stop when the rule count is stable for 3 s.
    let mut rules = count_rules(&net);
    let mut changed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(opts.ps_settle_secs);
    while changed.elapsed() < Duration::from_secs(3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let r = count_rules(&net);
        if r != rules {
            rules = r;
            changed = Instant::now();
        }
    }
    let still = changed.elapsed() < Duration::from_secs(3);
    let cpu = procfs::cpu(ps.pid).unwrap_or_default().since(cpu0);
    let hwm = procfs::status_kib(ps.pid, "VmHWM").unwrap_or(0);
    let drops = raw_drops(ps.pid);
    let busy = changed.duration_since(t0).as_secs_f64().max(1e-3);
    drop(ps);
    Ok(vec![
        format!("PortSentry 1.2 -atcp, iptables KILL_ROUTE, {n} sources at {rate} pps offered"),
        format!(
            "{} in {:.1} s ({:.0} pps)",
            sent.sent,
            sent.elapsed.as_secs_f64(),
            sent.pps()
        ),
        format!("raw socket drops (unread) {drops}"),
        format!(
            "{rules} iptables rules (no cap){}",
            if still {
                "; STILL BLOCKING when the wait ended"
            } else {
                ""
            }
        ),
        format!("{:.0}", rules as f64 / busy),
        format!(
            "{:.1} s{}",
            changed.duration_since(t0).as_secs_f64(),
            if still {
                " (STILL BLOCKING when the wait ended)"
            } else {
                ""
            }
        ),
        "-".into(),
        "-".into(),
        format!(
            "{:.2} s (+{:.2} s shell+iptables children)",
            cpu.own_s, cpu.children_s
        ),
        kib(hwm),
    ])
}

pub fn scenario(opts: &Opts, pkg: Option<&Package>) {
    let mut t = Table::new(
        "Spoofed flood: one SYN per distinct random source (10.64.0.0/10) to ports 1-1023, as fast as the veth carries it",
        &[
            "tool / caps",
            "packets sent",
            "sensor",
            "enforcer",
            "blocks/s",
            "busy until",
            "audit log",
            "sensor CPU",
            "enforcer CPU",
            "peak memory (VmHWM)",
        ],
    );
    for &n in &opts.flood_sizes {
        for caps in [DEFAULT_CAPS, WIDE_CAPS] {
            if crate::sys::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            match sentry_row(n, caps, opts) {
                Ok(r) => t.row(r),
                Err(e) => {
                    eprintln!("  flood sentry {n}: FAILED: {e}");
                    t.row(vec![
                        format!("sentry {n}, {}", caps.label),
                        format!("FAILED: {e}"),
                    ]);
                }
            }
        }
    }
    if let Some(pkg) = pkg {
        match portsentry_row(pkg, opts) {
            Ok(r) => t.row(r),
            Err(e) => {
                eprintln!("  flood PortSentry: FAILED: {e}");
                t.row(vec!["PortSentry 1.2".into(), format!("FAILED: {e}")]);
            }
        }
    }
    t.print();
}
