//! Scenario 3: how many packets per second the sensor keeps up with, and its CPU cost per
//! packet. SYN probes from one spoofed source to ports 1-112 (every one a candidate of the
//! detection chain: advanced range, not excluded, nothing listening) are written onto the
//! scanner's veth end at fixed rates and then as fast as the veth carries them.
//!
//! Since issue #13 the sensor reads copies the detection chain makes (NFLOG), and the
//! chain holds them to 20,000 per second (`detect_copy` in sentry-enforcer/src/kernel/table.nft), counting the
//! rest on its limit rule. And with SCAN_TRIGGER=0 and BLOCK_TCP=1 the kernel would drop
//! the one source after its first probe, so that the sensor saw one packet: the run is
//! log-only (BLOCK_TCP/BLOCK_UDP="0"), so every probe keeps reaching the chain.
//!
//! delivered = the target interface's rx counter; over cap = the limit rule's counter
//! (not copied, by design); copied = delivered - over cap; seen = the sensor's own
//! `packets` counter (`sentryctl status --json`); loss = copied - seen; the NFLOG socket's
//! overruns are reported as `kernel_drops`.

use std::net::Ipv4Addr;
use std::time::Duration;

use sentry_tests::cmd::run as run_cmd;
use sentry_tests::netns::{NetPair, Side, TARGET_IF};
use serde_json::Value;

use crate::packet::{self, Plan};
use crate::procfs;
use crate::scans::{sentry_settings, start_sentry};
use crate::sensorctl::{self, settle, snapshot};
use crate::table::Table;
use crate::Opts;

/// The one source of the capture test (private range, exists only in the namespaces).
const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 1);
/// Probed ports: 1..=LAST_PORT, all below ADVANCED_EXCLUDE_TCP's 113.
const LAST_PORT: u16 = 112;

/// Packets the detection chain did not copy because they were over its rate (the
/// counter of the `limit rate over` rule in `detect_copy`).
fn over_cap(net: &NetPair) -> Result<u64, String> {
    let out = run_cmd(
        net.command(Side::Target, "nft").args([
            "-j",
            "list",
            "chain",
            "inet",
            sentry_tests::sentry::NFT_TABLE,
            "detect_copy",
        ]),
        Duration::from_secs(10),
    );
    if !out.success() {
        return Err(format!("nft list chain detect_copy: {out}"));
    }
    let v: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("nft -j: {e}"))?;
    let rules = v.get("nftables").and_then(Value::as_array);
    let limited = rules
        .into_iter()
        .flatten()
        .filter_map(|i| i.pointer("/rule/expr").and_then(Value::as_array))
        .find(|expr| expr.iter().any(|e| e.get("limit").is_some()))
        .ok_or("detect_copy has no limit rule")?;
    limited
        .iter()
        .find_map(|e| e.pointer("/counter/packets").and_then(Value::as_u64))
        .ok_or_else(|| "the limit rule has no counter".to_string())
}

pub fn scenario(opts: &Opts) {
    let mut t = Table::new(
        &format!(
            "Capture: SYN probes from one source to ports 1-{LAST_PORT} for {} s per step; sensor modes -atcp -audp, FIREWALL=nftables, log-only (BLOCK_TCP/UDP=0, so the kernel does not drop the source); the chain copies at most 20,000/s",
            opts.step_secs
        ),
        &[
            "offered pps",
            "achieved pps",
            "delivered to target",
            "over the chain's cap (not copied)",
            "copied",
            "seen by sensor",
            "seen pps",
            "kernel_drops",
            "loss (copied - seen)",
            "sensor CPU µs/packet",
            "sensor CPU %",
        ],
    );
    if let Err(e) = run(opts, &mut t) {
        eprintln!("  capture: FAILED: {e}");
        t.row(vec![format!("FAILED: {e}")]);
    }
    t.print();
}

fn run(opts: &Opts, t: &mut Table) -> Result<(), String> {
    let mut s = start_sentry(
        "bench-capture",
        sentry_settings(&["atcp", "audp"], true)
            .set("BLOCK_TCP", "0")
            .set("BLOCK_UDP", "0")
            .without_sensor(),
    );
    let pid = sensorctl::start_sensor(&mut s)?;
    let mut rates: Vec<Option<u64>> = opts.capture_rates.iter().map(|r| Some(*r)).collect();
    rates.push(None);
    let mut best_lossless: Option<f64> = None;
    for rate in rates {
        if crate::sys::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let before = snapshot(&s)?;
        let (rx0, _, _) = packet::link_counters(&s.net.target, TARGET_IF)?;
        let cap0 = over_cap(&s.net)?;
        let cpu0 = procfs::cpu(pid).unwrap_or_default();
        let secs = opts.step_secs;
        let count = rate.map_or(50_000_000, |r| r * secs);
        let sent = packet::send_syns(
            &s.net,
            Plan {
                count,
                rate,
                max_time: Duration::from_secs(secs),
            },
            |i| {
                (
                    SOURCE,
                    packet::cycle(i, 40_000, 20_000),
                    packet::cycle(i, 1, LAST_PORT),
                )
            },
        )?;
        let after = settle(&s, Duration::from_millis(600), Duration::from_secs(20))?.last;
        let cpu = procfs::cpu(pid).unwrap_or_default().since(cpu0);
        let (rx1, _, _) = packet::link_counters(&s.net.target, TARGET_IF)?;
        let delivered = rx1.saturating_sub(rx0);
        let capped = over_cap(&s.net)?.saturating_sub(cap0);
        let copied = delivered.saturating_sub(capped);
        let seen = after
            .sensor_u64("packets")
            .saturating_sub(before.sensor_u64("packets"));
        let kdrops = after
            .sensor_u64("kernel_drops")
            .saturating_sub(before.sensor_u64("kernel_drops"));
        let loss = copied.saturating_sub(seen);
        let seen_pps = seen as f64 / sent.elapsed.as_secs_f64().max(1e-9);
        if loss == 0 && kdrops == 0 {
            best_lossless = Some(best_lossless.map_or(seen_pps, |b: f64| b.max(seen_pps)));
        }
        eprintln!(
            "  capture {:?} pps: sent {} ({:.0} pps) delivered {delivered} over cap {capped} seen {seen} kdrops {kdrops} cpu {:.3}s",
            rate,
            sent.sent,
            sent.pps(),
            cpu.own_s
        );
        t.row(vec![
            rate.map_or("max (unpaced)".into(), |r| r.to_string()),
            format!("{:.0}", sent.pps()),
            delivered.to_string(),
            capped.to_string(),
            copied.to_string(),
            seen.to_string(),
            format!("{seen_pps:.0}"),
            kdrops.to_string(),
            format!(
                "{loss} ({:.2}%)",
                loss as f64 * 100.0 / (copied.max(1)) as f64
            ),
            format!("{:.2}", cpu.own_s * 1e6 / seen.max(1) as f64),
            format!(
                "{:.0}%",
                cpu.own_s * 100.0 / sent.elapsed.as_secs_f64().max(1e-9)
            ),
        ]);
    }
    t.row(vec![format!(
        "highest copy rate the sensor kept up with, no loss: {}",
        best_lossless.map_or("none".into(), |b| format!("{b:.0} packets/s seen"))
    )]);
    s.assert_alive();
    crate::cleanup::unregister_dir(s.dir.path());
    Ok(())
}
