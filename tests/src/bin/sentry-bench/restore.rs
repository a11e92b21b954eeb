//! Scenario 7: restore after a reboot. A state of N blocks (half IPv4, half IPv6), an
//! empty ruleset (a fresh namespace, as after a boot), and the real enforcer started on
//! it: how long until every block is back in the kernel's sets, verified.

use std::time::{Duration, Instant};

use sentry_tests::Settings;

use crate::procfs::{median, min_max};
use crate::table::Table;
use crate::Opts;

/// One start: seconds to `sentryctl status` answering and to the worker's line saying all
/// N elements are verified in the sets,
/// the worker's own restore figure (from its log line) and peak memory of both processes.
struct Run {
    ready_s: f64,
    done_s: f64,
    logged_ms: Option<f64>,
    line: Option<String>,
    worker_hwm_kib: u64,
    parent_hwm_kib: u64,
}

/// The worker's "restored N blocks from … in X ms: …" line.
fn restore_line(log: &str, n: u64) -> Option<(String, Option<f64>)> {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("restored {n} blocks")))?;
    let ms = line
        .split(" in ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|v| v.trim().parse::<f64>().ok());
    Some((line.trim().to_string(), ms))
}

fn one(n: u64) -> Result<Run, String> {
    let half = u32::try_from(n / 2).map_err(|_| format!("{n} blocks: too many"))?;
    let n = 2 * u64::from(half);
    let settings = Settings::enforcer(&[
        ("KILL_HOSTS_DENY", ""),
        ("MAX_BLOCKS", &n.max(2).to_string()),
    ])
    .without_sensor();
    let mut s = sentry_tests::Sentry::prepare("bench-restore", settings);
    crate::cleanup::register_dir(s.dir.path().to_path_buf());
    sentry_tests::state::persist_blocks(&s.state_dir, half, 3_600_000)
        .map_err(|e| format!("state: {e}"))?;
    let t0 = Instant::now();
    s.start_enforcer();
    let ready_s = t0.elapsed().as_secs_f64();
    // Timed by the worker's log line, which it writes once every element is verified in the
    // kernel's sets: listing 100,000 elements with nft(8) takes longer than the restore.
    let deadline = t0 + Duration::from_secs(120);
    let (done_s, found) = loop {
        if let Some(f) = restore_line(&s.enforcer_log(), n) {
            break (t0.elapsed().as_secs_f64(), f);
        }
        if Instant::now() > deadline {
            return Err(format!("no \"restored {n} blocks\" line after 120 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // And checked, untimed: every block is in the sets.
    let have = s.nft_set("v4").len() + s.nft_set("v6").len();
    if u64::try_from(have).ok() != Some(n) {
        return Err(format!("{have} of {n} blocks in the kernel's sets"));
    }
    let kib = |pid: u32| {
        sentry_tests::Sentry::proc_status(pid, "VmHWM")
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let (worker_hwm_kib, parent_hwm_kib) = (kib(s.enforcer_pid()), kib(s.parent_pid()));
    s.assert_alive();
    crate::cleanup::unregister_dir(s.dir.path());
    Ok(Run {
        ready_s,
        done_s,
        logged_ms: found.1,
        line: Some(found.0),
        worker_hwm_kib,
        parent_hwm_kib,
    })
}

pub fn scenario(opts: &Opts) {
    let n = opts.restore_n;
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        if crate::sys::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        eprintln!("  restore: run {} of {}", i + 1, opts.runs);
        match one(n) {
            Ok(r) => runs.push(r),
            Err(e) => eprintln!("  restore: run {} FAILED: {e}", i + 1),
        }
    }
    let mut t = Table::new(
        &format!(
            "Restore of {n} blocks (half IPv4, half IPv6) into an empty ruleset, release build; \
             median (min-max) of {} runs",
            runs.len()
        ),
        &[
            "start -> status answers",
            "start -> all verified in the kernel's sets",
            "worker's own figure (log)",
            "worker VmHWM",
            "parent VmHWM",
        ],
    );
    let col = |f: &dyn Fn(&Run) -> Option<f64>, unit: &str, scale: f64| {
        let v: Vec<f64> = runs.iter().filter_map(f).map(|x| x * scale).collect();
        match (median(&v), min_max(&v)) {
            (Some(m), Some((lo, hi))) => format!("{m:.2} {unit} ({lo:.2}-{hi:.2})"),
            _ => "-".into(),
        }
    };
    let kib = |k: u64| f64::from(u32::try_from(k).unwrap_or(u32::MAX));
    t.row(vec![
        col(&|r| Some(r.ready_s), "s", 1.0),
        col(&|r| Some(r.done_s), "s", 1.0),
        col(&|r| r.logged_ms, "s", 1e-3),
        col(&|r| Some(kib(r.worker_hwm_kib)), "MiB", 1.0 / 1024.0),
        col(&|r| Some(kib(r.parent_hwm_kib)), "MiB", 1.0 / 1024.0),
    ]);
    t.print();
    if let Some(line) = runs.iter().find_map(|r| r.line.as_deref()) {
        println!("worker: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_restore_line_is_read() {
        let log = "x\nsentry-worker: restored 100000 blocks from /s/blocks.json in 1234.5 ms: 100000 verified in the kernel's sets, 0 re-added, 0 missing after retry\n";
        let (line, ms) = restore_line(log, 100_000).unwrap();
        assert!(line.starts_with("sentry-worker: restored 100000"));
        assert_eq!(ms, Some(1234.5));
        assert!(restore_line(log, 10).is_none());
    }
}
