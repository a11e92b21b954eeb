//! The running sensor, started as the harness (and the unit) starts it, holds no privilege
//! worth stealing.

use sentry_tests::{require_root, Sentry, Settings};

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

/// CAP_SYS_PTRACE (bit 19), which the confined enforcer keeps for the sensor check, is
/// held by its `peercheck` thread only: not by the threads that decide, run kill commands
/// or `nft`, and so never by a command (issue #21).
#[test]
fn only_the_enforcers_peer_check_thread_can_ptrace() {
    let test = "only_the_enforcers_peer_check_thread_can_ptrace";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    let enf = s.enforcer_pid();
    const SYS_PTRACE: u64 = 1 << 19;
    let mut seen = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{enf}/task")).unwrap() {
        let tid = e.unwrap().file_name().to_string_lossy().into_owned();
        let dir = format!("/proc/{enf}/task/{tid}");
        let comm = std::fs::read_to_string(format!("{dir}/comm")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
        let cap = |f: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{f}:\t")))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or_else(|| panic!("no {f} for thread {tid}"))
        };
        let held = ["CapEff", "CapPrm", "CapInh", "CapAmb"]
            .iter()
            .any(|f| cap(f) & SYS_PTRACE != 0);
        seen.push((comm.trim().to_string(), held));
    }
    assert!(
        seen.iter().any(|(c, h)| c == "peercheck" && *h),
        "the peer check thread lacks CAP_SYS_PTRACE: {seen:?}"
    );
    assert!(
        seen.iter().all(|(c, h)| c == "peercheck" || !*h),
        "a thread other than the peer check holds CAP_SYS_PTRACE: {seen:?}"
    );
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
