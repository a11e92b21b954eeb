//! The running sensor, started as the harness (and the unit) starts it, holds no privilege
//! worth stealing.

use std::time::Duration;

use sentry_tests::{require_root, wait_until, Sentry, Settings};

#[test]
fn running_sensor_is_unprivileged_and_seccomp_confined() {
    let test = "running_sensor_is_unprivileged_and_seccomp_confined";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "audp", "stcp", "sudp"]));
    let pid = s.sensor_pid();
    let field = |f: &str| Sentry::proc_status(pid, f).unwrap_or_else(|| panic!("no {f}"));
    let uids: Vec<u32> = field("Uid")
        .split_whitespace()
        .filter_map(|u| u.parse().ok())
        .collect();
    assert_eq!(uids.len(), 4);
    assert!(
        uids.iter().all(|&u| u == s.sensor_uid),
        "sensor uids {uids:?}"
    );
    // Not even CAP_NET_RAW any more: the detection input is the enforcer's NFLOG socket.
    for cap in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
        let v = u64::from_str_radix(&field(cap), 16).unwrap();
        assert_eq!(
            v, 0,
            "{cap} = {v:#x}: the running sensor holds a capability"
        );
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "no seccomp filter");
    // The enforcer's socket is group-shared with the sensor only.
    let meta = std::fs::metadata(s.runtime_dir.join("enforcer.sock")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 0);
    let ctl = std::fs::metadata(s.runtime_dir.join("control.sock")).unwrap();
    assert_eq!(
        ctl.permissions().mode() & 0o007,
        0,
        "control.sock is world-accessible"
    );
}

/// The split of issue #22, as it runs: the root parent is one thread under its own
/// seccomp filter with no_new_privs, holding CAP_NET_ADMIN and CAP_SYS_PTRACE (the sensor
/// check) but neither CAP_KILL nor CAP_CHOWN; the worker (the pid `sentryctl status` names) runs as `sentry-worker` with no
/// capability in any thread, no_new_privs, under its own seccomp filter, and is the
/// parent's child.
#[test]
fn the_root_parent_is_one_confined_thread_and_the_worker_holds_nothing() {
    let test = "the_root_parent_is_one_confined_thread_and_the_worker_holds_nothing";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let worker = s.enforcer_pid();
    let wfield = |f: &str| Sentry::proc_status(worker, f).unwrap_or_else(|| panic!("no {f}"));
    let parent: u32 = wfield("PPid").parse().unwrap();
    let pfield = |f: &str| Sentry::proc_status(parent, f).unwrap_or_else(|| panic!("no {f}"));
    let (wuid, _) = sentry_tests::ensure_worker_user();
    assert!(
        wfield("Uid")
            .split_whitespace()
            .all(|u| u == wuid.to_string()),
        "worker uids {}",
        wfield("Uid")
    );
    assert_eq!(wfield("NoNewPrivs"), "1");
    assert_eq!(wfield("Seccomp"), "2", "the worker has no seccomp filter");
    // Every thread of the worker: no capability in any set.
    for e in std::fs::read_dir(format!("/proc/{worker}/task")).unwrap() {
        let tid = e.unwrap().file_name().to_string_lossy().into_owned();
        let status = std::fs::read_to_string(format!("/proc/{worker}/task/{tid}/status"))
            .unwrap_or_default();
        for f in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{f}:\t")))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or_else(|| panic!("no {f} for worker thread {tid}"));
            assert_eq!(v, 0, "worker thread {tid}: {f} = {v:#x}");
        }
    }
    assert_eq!(pfield("Uid").split_whitespace().next(), Some("0"));
    assert_eq!(pfield("Threads"), "1", "the root parent is single-threaded");
    assert_eq!(
        pfield("Seccomp"),
        "2",
        "the root parent has no seccomp filter"
    );
    assert_eq!(pfield("NoNewPrivs"), "1");
    const NET_ADMIN: u64 = 1 << 12;
    const SYS_PTRACE: u64 = 1 << 19;
    // CAP_KILL: it signals its worker from a child that takes the worker's uid;
    // CAP_CHOWN: it gives no file away (the harness makes them the worker's, as the
    // installers do), and the harness's bounding set, like the unit's, has none.
    const KILL_CHOWN: u64 = (1 << 5) | (1 << 0);
    let eff = u64::from_str_radix(&pfield("CapEff"), 16).unwrap();
    let prm = u64::from_str_radix(&pfield("CapPrm"), 16).unwrap();
    assert!(
        eff & NET_ADMIN != 0 && eff & SYS_PTRACE != 0 && (eff | prm) & KILL_CHOWN == 0,
        "the parent's CapEff {eff:#x}, CapPrm {prm:#x}"
    );
    println!(
        "FIGURE root parent pid {parent}: Threads 1, Seccomp 2, NoNewPrivs 1, CapEff {eff:#x}; worker pid {worker} uid {wuid}: no capability"
    );
}

/// A worker that dies is started again by the parent, which is confined by then: the new
/// worker runs under the parent's filters and its own (stacked, four in all), so every
/// system call it makes must pass both. It comes back, takes the sensor again and blocks.
#[test]
fn a_killed_worker_comes_back_under_the_parents_filter_and_its_own() {
    let test = "a_killed_worker_comes_back_under_the_parents_filter_and_its_own";
    if !require_root(test) {
        return;
    }
    let mut s = Sentry::start(test, Settings::new(&["atcp"]));
    let old = s.enforcer_pid();
    assert_eq!(
        Sentry::proc_status(old, "Seccomp_filters").as_deref(),
        Some("2"),
        "the first worker: its own two filters"
    );
    let pid = |st: &serde_json::Value| st.get("pid").and_then(serde_json::Value::as_u64);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Back, with the sensor connected again (the hand-over ran under both filters).
    let st = wait_until(
        Duration::from_secs(30),
        "the restarted worker with the sensor",
        || {
            let st = s.try_status().ok()?;
            (pid(&st).is_some_and(|p| p != u64::from(old)) && !st["sensor"].is_null()).then_some(st)
        },
        || s.diag(),
    );
    let new = u32::try_from(pid(&st).unwrap()).unwrap();
    s.worker_restarted(new);
    let field = |f: &str| Sentry::proc_status(new, f).unwrap_or_else(|| panic!("no {f}"));
    assert_eq!(field("Seccomp"), "2");
    assert_eq!(
        field("Seccomp_filters"),
        "4",
        "the restarted worker: the parent's two filters and its own two"
    );
    let out = s.sentryctl(&["block", "203.0.113.77"]);
    assert!(out.success(), "{out}");
    assert!(s.nft_has("203.0.113.77".parse().unwrap()), "{}", s.diag());
    let log = s.enforcer_log();
    assert!(!log.contains("SIGSYS"), "{log}");
    println!("FIGURE worker {old} killed, {new} restarted under 4 seccomp filters");
}

/// `se.slice` (ns) of a thread, from /proc/<pid>/task/<tid>/sched; None when the kernel
/// does not print it (before EEVDF custom slices).
fn slice_ns(pid: u32, tid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")).ok()?;
    let line = text.lines().find(|l| l.starts_with("se.slice"))?;
    line.split(':').nth(1)?.trim().parse().ok()
}

/// The latency-critical threads run with the 100 µs scheduler slice they ask for: the
/// sensor (single-threaded) and the enforcer's thread serving the sensor's connection.
/// Other enforcer threads keep the default.
#[test]
fn latency_critical_threads_have_a_short_scheduler_slice() {
    let test = "latency_critical_threads_have_a_short_scheduler_slice";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let sensor = s.sensor_pid();
    let Some(slice) = slice_ns(sensor, sensor) else {
        eprintln!("SKIPPED (kernel prints no se.slice, custom slices need Linux 6.12+): {test}");
        return;
    };
    assert_eq!(slice, 100_000, "sensor slice");
    // The enforcer's "sensor" thread: found by name; it starts when the sensor connects,
    // which Sentry::start waits for.
    let enf = s.enforcer_pid();
    let threads: Vec<(String, u32)> = std::fs::read_dir(format!("/proc/{enf}/task"))
        .unwrap()
        .filter_map(|e| {
            let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{enf}/task/{tid}/comm")).ok()?;
            Some((comm.trim().to_string(), tid))
        })
        .collect();
    let serving: Vec<u32> = threads
        .iter()
        .filter(|(c, _)| c == "sensor")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(serving.len(), 1, "enforcer threads {threads:?}");
    assert_eq!(
        slice_ns(enf, serving[0]),
        Some(100_000),
        "enforcer sensor thread"
    );
    assert_ne!(
        slice_ns(enf, enf),
        Some(100_000),
        "the enforcer's main thread keeps the default slice"
    );
}
