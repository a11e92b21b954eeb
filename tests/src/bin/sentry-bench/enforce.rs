//! Scenario 5: enforcement cost per backend.
//!
//! - Time to add the Nth block (N = 1, 1,000, 10,000): the real enforcer, driven over its
//!   real socket by a minimal sensor stand-in (`sentry-bench __client`, run as the sensor
//!   user because the enforcer checks SO_PEERCRED), timing request -> Ack.
//!   nftables set and blackhole route: all 10,009 blocks go through the enforcer.
//!   iptables (one rule per host via KILL_ROUTE): a fork+exec per block makes 10,000
//!   enforcer adds take minutes, so the N-1 rules already present are loaded in one
//!   `iptables-restore --noflush` and the enforcer then adds blocks N..N+9.
//! - Data path: SYN -> RST packets per second through the target with 10,000 active
//!   blocks vs none (the probing source itself is never blocked).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use sentry_proto::{
    read_frame, write_frame, EnforcerFrame, Hello, Mode, Protocol, SensorFrame, PROTOCOL_VERSION,
};
use sentry_tests::cmd::run;
use sentry_tests::netns::{NetPair, Side, SCANNER_V4, TARGET_IF};
use sentry_tests::{Settings, SENSOR_USER};
use serde_json::Value;

use crate::cleanup::TempDir;
use crate::packet::{self, spoofed_source, Plan};
use crate::procfs::{self, median, quantile};
use crate::scans::{start_sentry, KILL_ROUTE_IPTABLES};
use crate::table::Table;
use crate::Opts;

/// `sentry-bench __client SOCKET START COUNT`: connect to the enforcer as a sensor, send
/// COUNT block requests for spoofed sources START.., one at a time, and print one JSON
/// object: per-request round trip in microseconds and the decisions.
pub fn client_main(args: &[String]) -> i32 {
    let (Some(sock), Some(start), Some(count)) = (
        args.first(),
        args.get(1).and_then(|v| v.parse::<u64>().ok()),
        args.get(2)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&c| c <= 2_000_000),
    ) else {
        eprintln!("usage: sentry-bench __client SOCKET START COUNT(<=2000000)");
        return 2;
    };
    match client(sock, start, count) {
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => {
            eprintln!("sentry-bench __client: {e}");
            1
        }
    }
}

fn client(sock: &str, start: u64, count: u64) -> Result<Value, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect {sock}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write_frame(
        &mut s,
        &SensorFrame::Hello(Hello {
            version: PROTOCOL_VERSION,
            sensor: "sentry-bench".into(),
            pid: std::process::id(),
            modes: vec![Mode::Atcp],
        }),
    )
    .map_err(|e| format!("hello: {e}"))?;
    match read_frame::<EnforcerFrame, _>(&mut s).map_err(|e| format!("welcome: {e}"))? {
        EnforcerFrame::Welcome { .. } => {}
        other => return Err(format!("expected Welcome, got {other:?}")),
    }
    let mut us = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut decisions: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..count {
        let seq = i + 1;
        let req = sentry_tests::Req::new(IpAddr::V4(spoofed_source(start + i)), Protocol::Tcp)
            .mode(Mode::Atcp)
            .seq(seq)
            .frame();
        let t0 = Instant::now();
        write_frame(&mut s, &req).map_err(|e| format!("request {seq}: {e}"))?;
        loop {
            match read_frame::<EnforcerFrame, _>(&mut s).map_err(|e| format!("ack {seq}: {e}"))? {
                EnforcerFrame::Ack { seq: got, decision } if got == seq => {
                    us.push(t0.elapsed().as_secs_f64() * 1e6);
                    *decisions.entry(decision.as_str().to_string()).or_default() += 1;
                    break;
                }
                // Other sequence numbers, and the NFLOG socket the enforcer hands a verified
                // sensor (its descriptor is discarded with the frame): nothing to time.
                EnforcerFrame::Ack { .. } | EnforcerFrame::Capture { .. } => continue,
                other => return Err(format!("unexpected frame {other:?}")),
            }
        }
    }
    Ok(serde_json::json!({ "us": us, "decisions": decisions }))
}

/// Run the client as the sensor user; returns per-request µs and decisions.
fn drive(
    sock: &std::path::Path,
    start: u64,
    count: u64,
) -> Result<(Vec<f64>, BTreeMap<String, u64>), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = run(
        Command::new("setpriv")
            .args([
                "--reuid",
                SENSOR_USER,
                "--regid",
                SENSOR_USER,
                "--clear-groups",
                "--",
            ])
            .arg(exe)
            .arg("__client")
            .arg(sock)
            .arg(start.to_string())
            .arg(count.to_string()),
        Duration::from_secs(900),
    );
    if !out.success() {
        return Err(format!("client failed: {out}"));
    }
    let v: Value =
        serde_json::from_str(out.stdout.trim()).map_err(|e| format!("client output: {e}"))?;
    let us = v["us"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let decisions = v["decisions"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    Ok((us, decisions))
}

/// RSTs per second the target of `net` sends back for an unpaced SYN stream from the
/// (unblocked) scanner address, over `secs` seconds. The veth hands each frame to the
/// target's stack synchronously, so this is the rate the target's input path sustains.
fn rst_rate(net: &NetPair, secs: u64) -> Result<f64, String> {
    let (_, _, tx0) = packet::link_counters(&net.target, TARGET_IF)?;
    let r = packet::send_syns(
        net,
        Plan {
            count: 5_000_000,
            rate: None,
            max_time: Duration::from_secs(secs),
        },
        |i| (SCANNER_V4, packet::cycle(i, 1024, 60_000), 9),
    )?;
    std::thread::sleep(Duration::from_millis(100));
    let (_, _, tx1) = packet::link_counters(&net.target, TARGET_IF)?;
    Ok(tx1.saturating_sub(tx0) as f64 / r.elapsed.as_secs_f64().max(1e-9))
}

/// Data-path rate of `net`, measured in alternation with a bare namespace pair (no
/// firewall at all) so that other load on the machine affects both alike.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paired {
    /// Median RST/s of `net`.
    pub pps: f64,
    /// Median RST/s of the bare pair.
    pub control: f64,
    /// Median of the per-round ratios `net / bare`.
    pub ratio: f64,
}

pub fn datapath(control: &NetPair, net: &NetPair) -> Result<Paired, String> {
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let c = rst_rate(control, 1)?;
        let x = rst_rate(net, 1)?;
        a.push(x);
        b.push(c);
        r.push(x / c.max(1.0));
    }
    Ok(Paired {
        pps: median(&a).unwrap_or(0.0),
        control: median(&b).unwrap_or(0.0),
        ratio: median(&r).unwrap_or(0.0),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Nft,
    Iptables,
    Blackhole,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Nft => "nftables set (FIREWALL=nftables)",
            Backend::Iptables => "iptables rule per host (KILL_ROUTE)",
            Backend::Blackhole => "blackhole route (BLACKHOLE_ROUTE=1)",
        }
    }

    fn settings(self) -> Settings {
        let mut s = Settings::new(&["atcp"])
            .without_sensor()
            .unset("KILL_HOSTS_DENY")
            .set("MAX_BLOCKS", "100000")
            .set("BLOCK_RATE", "1000000")
            .set("BLOCK_TIMEOUT", "0")
            // The data path's SYN stream comes from the scanner address to ports nothing
            // serves: without this the detection chain (never answer a probe, the first
            // hit) drops it and the data path measures nothing after the first run.
            .ignore(&SCANNER_V4.to_string());
        // The stand-in sensor is this binary (`__client`): the enforcer checks that the
        // peer of the sensor's uid runs the sensor executable (issue #21), so name ours.
        if let Ok(exe) = std::env::current_exe() {
            s.enforcer_args.push("--sensor-exe".into());
            s.enforcer_args.push(exe.display().to_string());
        }
        match self {
            Backend::Nft => s.set("FIREWALL", "nftables"),
            Backend::Iptables => s
                .set("FIREWALL", "none")
                .set("KILL_ROUTE", KILL_ROUTE_IPTABLES),
            Backend::Blackhole => s.set("FIREWALL", "none").set("BLACKHOLE_ROUTE", "1"),
        }
    }
}

/// Load `n` DROP rules for spoofed sources `from..from+n` in one iptables-restore.
fn iptables_prefill(net: &NetPair, dir: &std::path::Path, from: u64, n: u64) -> Result<(), String> {
    let mut text = String::from("*filter\n");
    for i in from..from + n {
        let _ = writeln!(text, "-A INPUT -s {}/32 -j DROP", spoofed_source(i));
    }
    text.push_str("COMMIT\n");
    let file = dir.join("prefill.rules");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| e.to_string())?;
    let out = run(
        net.command(Side::Target, "iptables-restore")
            .arg("--noflush")
            .arg(&file),
        Duration::from_secs(300),
    );
    if out.success() {
        Ok(())
    } else {
        Err(format!("iptables-restore: {out}"))
    }
}

fn count_iptables(net: &NetPair) -> usize {
    run(
        net.command(Side::Target, "iptables").args(["-S", "INPUT"]),
        Duration::from_secs(60),
    )
    .stdout
    .lines()
    .filter(|l| l.contains("-j DROP"))
    .count()
}

fn fmt_us(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| {
        if x >= 1000.0 {
            format!("{:.2} ms", x / 1000.0)
        } else {
            format!("{x:.0} µs")
        }
    })
}

struct BackendResult {
    add: [Option<f64>; 3],
    /// The whole block path of every add after the first (request -> Ack): p50, p99, max.
    path: [Option<f64>; 3],
    active: usize,
    decisions: BTreeMap<String, u64>,
    empty: Paired,
    full: Paired,
    enforcer_cpu_s: f64,
    enforcer_hwm_kib: u64,
}

fn measure_backend(b: Backend, opts: &Opts, control: &NetPair) -> Result<BackendResult, String> {
    let s = start_sentry("bench-enforce", b.settings());
    let dir = TempDir::new("sentry-bench-enforce-").map_err(|e| e.to_string())?;
    let sock = s.runtime_dir.join("enforcer.sock");
    let empty = datapath(control, &s.net)?;
    let cpu0 = procfs::cpu(s.enforcer_pid()).unwrap_or_default();
    let mut decisions: BTreeMap<String, u64> = BTreeMap::new();
    let mut merge = |d: BTreeMap<String, u64>| {
        for (k, v) in d {
            *decisions.entry(k).or_default() += v;
        }
    };
    let (first, d) = drive(&sock, 0, 1)?;
    merge(d);
    let big = opts.enforce_n;
    let mid = (big / 10).max(2);
    let window = |v: &[f64], n: u64, offset: u64| -> Option<f64> {
        // v[k] is the add of block number offset + k.
        let lo = usize::try_from(n.checked_sub(offset)?).ok()?;
        median(v.get(lo..(lo + 50).min(v.len()))?)
    };
    let mut all = Vec::new();
    let (mid_t, big_t) = match b {
        Backend::Nft | Backend::Blackhole => {
            let (v, d) = drive(&sock, 1, big + 49 - 1)?;
            merge(d);
            all.clone_from(&v);
            (window(&v, mid, 2), window(&v, big, 2))
        }
        Backend::Iptables => {
            iptables_prefill(&s.net, &dir.path, 1_000_000, mid - 2)?;
            let (v1, d) = drive(&sock, 1, 10)?;
            merge(d);
            iptables_prefill(&s.net, &dir.path, 1_000_000 + mid, big - mid - 10)?;
            let (v2, d) = drive(&sock, 11, 10)?;
            merge(d);
            all.extend(v1.iter().chain(&v2));
            (median(&v1), median(&v2))
        }
    };
    let cpu = procfs::cpu(s.enforcer_pid())
        .unwrap_or_default()
        .since(cpu0);
    let active = match b {
        Backend::Iptables => count_iptables(&s.net),
        Backend::Nft => s.nft_elements().len(),
        Backend::Blackhole => run(
            s.net
                .command(Side::Target, "ip")
                .args(["route", "show", "type", "blackhole"]),
            Duration::from_secs(60),
        )
        .stdout
        .lines()
        .count(),
    };
    let full = datapath(control, &s.net)?;
    let hwm = procfs::status_kib(s.enforcer_pid(), "VmHWM").unwrap_or(0);
    s.assert_alive();
    crate::cleanup::unregister_dir(s.dir.path());
    Ok(BackendResult {
        add: [first.first().copied(), mid_t, big_t],
        path: [
            quantile(&all, 0.5),
            quantile(&all, 0.99),
            quantile(&all, 1.0),
        ],
        active,
        decisions,
        empty,
        full,
        enforcer_cpu_s: cpu.total(),
        enforcer_hwm_kib: hwm,
    })
}

pub fn scenario(opts: &Opts) {
    let big = opts.enforce_n;
    let mid = (big / 10).max(2);
    let control = NetPair::new();
    let mut adds = Table::new(
        "Enforcement cost: time to add the Nth block (request -> Ack at the enforcer socket; for N > 1 the median of blocks N..N+49, iptables N..N+9)",
        &["backend", "N = 1", &format!("N = {mid}"), &format!("N = {big}"), "every add: p50 / p99 / max", "active blocks at end", "enforcer CPU for all adds", "enforcer VmHWM", "decisions"],
    );
    let mut dp = Table::new(
        &format!("Data path: SYN -> RST packets/s through the target from an unblocked source; 5 x 1 s, alternating with a bare namespace pair (no firewall) as control; {big} active blocks vs none"),
        &["backend", "0 blocks (bare pair alongside)", &format!("{big} blocks (bare pair alongside)"), &format!("{big} blocks vs bare"), &format!("change 0 -> {big} blocks")],
    );
    for b in [Backend::Nft, Backend::Iptables, Backend::Blackhole] {
        if crate::sys::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        eprintln!("  enforce: {}", b.label());
        match measure_backend(b, opts, &control) {
            Ok(r) => {
                adds.row(vec![
                    b.label().into(),
                    fmt_us(r.add[0]),
                    fmt_us(r.add[1]),
                    fmt_us(r.add[2]),
                    r.path.map(fmt_us).join(" / "),
                    r.active.to_string(),
                    format!("{:.2} s", r.enforcer_cpu_s),
                    format!("{} KiB", r.enforcer_hwm_kib),
                    r.decisions
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
                dp.row(vec![
                    b.label().into(),
                    format!("{:.0} ({:.0})", r.empty.pps, r.empty.control),
                    format!("{:.0} ({:.0})", r.full.pps, r.full.control),
                    format!("{:.2}x", r.full.ratio),
                    format!(
                        "{:+.1}%",
                        (r.full.ratio / r.empty.ratio.max(1e-9) - 1.0) * 100.0
                    ),
                ]);
            }
            Err(e) => {
                eprintln!("  enforce {}: FAILED: {e}", b.label());
                adds.row(vec![b.label().into(), format!("FAILED: {e}")]);
            }
        }
    }
    adds.print();
    dp.print();
}
