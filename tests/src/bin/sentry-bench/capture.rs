//! Scenario 3: how many packets per second the sensor keeps up with, and its CPU cost per
//! packet. SYN probes from one spoofed source to ports 1-1023 are written onto the
//! scanner's veth end at fixed rates and then as fast as the veth carries them.
//! Delivered = the target interface's rx counter; seen = the sensor's own `packets`
//! counter (`sentryctl status --json`); loss = delivered - seen; the NFLOG socket's
//! overruns are reported as `kernel_drops`. Since issue #13 the detection chain also
//! holds copies to DETECT_RATE per second (sentry-enforcer/src/table.rs), so above that
//! rate "loss" is by design.

use std::net::Ipv4Addr;
use std::time::Duration;

use sentry_tests::netns::TARGET_IF;

use crate::packet::{self, Plan};
use crate::procfs;
use crate::scans::{sentry_settings, start_sentry};
use crate::sensorctl::{self, settle, snapshot};
use crate::table::Table;
use crate::Opts;

/// The one source of the capture test (private range, exists only in the namespaces).
const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 1);

pub fn scenario(opts: &Opts) {
    let mut t = Table::new(
        &format!(
            "Capture: SYN probes from one source to ports 1-1023 for {} s per step; sensor modes -atcp -audp, FIREWALL=nftables",
            opts.step_secs
        ),
        &[
            "offered pps",
            "achieved pps",
            "delivered to target",
            "seen by sensor",
            "kernel_drops",
            "loss (sent - seen)",
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
        sentry_settings(&["atcp", "audp"], true).without_sensor(),
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
                    packet::cycle(i, 1, 1023),
                )
            },
        )?;
        let after = settle(&s, Duration::from_millis(600), Duration::from_secs(20))?.last;
        let cpu = procfs::cpu(pid).unwrap_or_default().since(cpu0);
        let (rx1, _, _) = packet::link_counters(&s.net.target, TARGET_IF)?;
        let delivered = rx1.saturating_sub(rx0);
        let seen = after
            .sensor_u64("packets")
            .saturating_sub(before.sensor_u64("packets"));
        let kdrops = after
            .sensor_u64("kernel_drops")
            .saturating_sub(before.sensor_u64("kernel_drops"));
        let loss = sent.sent.saturating_sub(seen);
        if loss == 0 && kdrops == 0 {
            best_lossless = Some(best_lossless.map_or(sent.pps(), |b: f64| b.max(sent.pps())));
        }
        eprintln!(
            "  capture {:?} pps: sent {} ({:.0} pps) delivered {delivered} seen {seen} kdrops {kdrops} cpu {:.3}s",
            rate,
            sent.sent,
            sent.pps(),
            cpu.own_s
        );
        t.row(vec![
            rate.map_or("max (unpaced)".into(), |r| r.to_string()),
            format!("{:.0}", sent.pps()),
            delivered.to_string(),
            seen.to_string(),
            kdrops.to_string(),
            format!(
                "{loss} ({:.2}%)",
                loss as f64 * 100.0 / (sent.sent.max(1)) as f64
            ),
            format!("{:.2}", cpu.own_s * 1e6 / seen.max(1) as f64),
            format!(
                "{:.0}%",
                cpu.own_s * 100.0 / sent.elapsed.as_secs_f64().max(1e-9)
            ),
        ]);
    }
    t.row(vec![format!(
        "highest lossless rate: {}",
        best_lossless.map_or("none".into(), |b| format!("{b:.0} pps"))
    )]);
    s.assert_alive();
    crate::cleanup::unregister_dir(s.dir.path());
    Ok(())
}
