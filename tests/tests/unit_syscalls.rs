//! The shipped units' sandbox must not break the daemons. systemd is not PID 1 on every
//! test machine, so instead of starting the units we run the real daemons (with the shipped
//! default policy and the unit's own modes) under `strace -f` through a full cycle — start,
//! TCP and UDP detection, nftables + hosts.deny block, sentryctl status/blocked/unblock,
//! SIGHUP, expiry, stop — and check that every system call they and their children made
//! after exec is allowed by the unit's `SystemCallFilter=` lines (expanded with
//! `systemd-analyze syscall-filter`), and every socket family by `RestrictAddressFamilies=`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sentry_tests::netns::{SCANNER_V4, TARGET_V4};
use sentry_tests::{
    require_root, require_tool, run, run_ok, ActionKind, AuditDecision, Sentry, Settings,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn directives(unit: &Path, key: &str) -> Vec<String> {
    std::fs::read_to_string(unit)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// Expand `@group` (recursively) with systemd-analyze; plain names stay as they are.
fn expand(item: &str, memo: &mut BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    if !item.starts_with('@') {
        return BTreeSet::from([item.to_string()]);
    }
    if let Some(v) = memo.get(item) {
        return v.clone();
    }
    let out = run_ok(
        Command::new("systemd-analyze").args(["syscall-filter", "--no-pager", item]),
        Duration::from_secs(30),
    );
    let mut set = BTreeSet::new();
    for line in out.stdout.lines().skip(1) {
        let w = line.trim();
        if w.is_empty() || w.starts_with('#') {
            continue;
        }
        let w = w.split_whitespace().next().unwrap_or_default().to_string();
        set.extend(expand(&w, memo));
    }
    memo.insert(item.to_string(), set.clone());
    set
}

/// The system calls a unit's SystemCallFilter= lines allow (the first line is an allow
/// list; later `~` lines remove, plain lines add, in order).
fn allowed_syscalls(unit: &Path) -> BTreeSet<String> {
    let mut memo = BTreeMap::new();
    let mut allowed = BTreeSet::new();
    for (i, line) in directives(unit, "SystemCallFilter").iter().enumerate() {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        assert!(
            i > 0 || !deny,
            "first SystemCallFilter= must be an allow list"
        );
        for item in items.split_whitespace() {
            let set = expand(item, &mut memo);
            if deny {
                allowed.retain(|s| !set.contains(s));
            } else {
                allowed.extend(set);
            }
        }
    }
    assert!(
        allowed.len() > 50,
        "could not expand the filter of {}",
        unit.display()
    );
    allowed
}

/// System calls and socket families used by `binary` (after it was exec'd) and by every
/// process it started, from an `strace -f` log.
struct Trace {
    calls: BTreeMap<String, u64>,
    families: BTreeSet<String>,
    /// Paths written, created, renamed, removed or bound (absolute, or `<dirfd path>/name`).
    writes: BTreeSet<String>,
    /// Paths opened, stat'ed or checked that exist (successful calls only).
    reads: BTreeSet<String>,
}

/// The quoted strings of an strace argument list, and `<path>` fd annotations (`-y`).
fn path_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut dir: Option<String> = None;
    let mut rest = args;
    while let Some(i) = rest.find(['"', '<']) {
        let quote = rest.as_bytes()[i];
        let tail = &rest[i + 1..];
        let end = if quote == b'"' {
            tail.find('"')
        } else {
            tail.find('>')
        };
        let Some(end) = end else { break };
        let v = &tail[..end];
        if quote == b'<' {
            dir = Some(v.to_string());
        } else if v.starts_with('/') {
            out.push(v.to_string());
        } else if let Some(d) = &dir {
            out.push(format!("{d}/{v}"));
        }
        rest = &tail[end + 1..];
    }
    out
}

fn traced(trace: &Path, binary: &str) -> Trace {
    let text =
        std::fs::read_to_string(trace).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    let mut active: BTreeSet<u32> = BTreeSet::new();
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    let mut families = BTreeSet::new();
    let mut writes = BTreeSet::new();
    let mut reads = BTreeSet::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        // The program actually executed is execve's first argument (setpriv's argv names
        // the daemon too, but setpriv's own calls happen before the unit's filter applies).
        let program = rest
            .strip_prefix("execve(\"")
            .and_then(|r| r.split('"').next());
        // (With -f the result may come on a later "resumed" line; only a visible failure
        // disqualifies.)
        if program.is_some_and(|p| p.ends_with(&format!("/{binary}"))) && !rest.contains(" = -1 ") {
            active.insert(pid);
        }
        if !active.contains(&pid) {
            continue;
        }
        if let Some(resumed) = rest.strip_prefix("<... ") {
            // "<... clone3 resumed> ...) = CHILD": the new process inherits the filter.
            let name = resumed.split_whitespace().next().unwrap_or_default();
            if matches!(name, "clone" | "clone3" | "fork" | "vfork") {
                if let Some(child) = rest
                    .rsplit(" = ")
                    .next()
                    .and_then(|r| r.trim().parse::<u32>().ok())
                {
                    active.insert(child);
                }
            }
            continue;
        }
        if rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        *calls.entry(name.to_string()).or_default() += 1;
        if matches!(name, "clone" | "clone3" | "fork" | "vfork") {
            if let Some(child) = rest
                .rsplit(" = ")
                .next()
                .and_then(|r| r.trim().parse::<u32>().ok())
            {
                active.insert(child);
            }
        }
        let writing = match name {
            "open" | "openat" | "openat2" => ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                .iter()
                .any(|f| args.contains(f)),
            "creat" | "rename" | "renameat" | "renameat2" | "link" | "linkat" | "symlink"
            | "symlinkat" | "unlink" | "unlinkat" | "mkdir" | "mkdirat" | "rmdir" | "mknod"
            | "mknodat" | "truncate" | "chmod" | "fchmodat" | "chown" | "lchown" | "fchownat"
            | "bind" => true,
            _ => false,
        };
        if writing && !rest.contains(" = -1 ") {
            writes.extend(path_args(args));
        }
        let reading = matches!(
            name,
            "open"
                | "openat"
                | "openat2"
                | "stat"
                | "lstat"
                | "newfstatat"
                | "statx"
                | "access"
                | "faccessat"
                | "faccessat2"
                | "readlink"
                | "readlinkat"
                | "execve"
        );
        if reading && !rest.contains(" = -1 ") {
            // Quoted arguments only (not fd annotations, which name already-open files).
            let quoted: Vec<String> = args
                .split('"')
                .skip(1)
                .step_by(2)
                .filter(|p| p.starts_with('/'))
                .map(str::to_string)
                .collect();
            reads.extend(quoted);
        }
        if matches!(name, "socket" | "socketpair") {
            if let Some(fam) = args.split(',').next() {
                families.insert(fam.trim().to_string());
            }
        }
    }
    Trace {
        calls,
        families,
        writes,
        reads,
    }
}

fn check(unit: &Path, traces: &[PathBuf], binary: &str, writable: &[String]) {
    assert!(!traces.is_empty(), "no strace output for {binary}");
    let allowed = allowed_syscalls(unit);
    let families: BTreeSet<String> = directives(unit, "RestrictAddressFamilies")
        .iter()
        .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut used = BTreeMap::new();
    let mut fams = BTreeSet::new();
    let mut writes = BTreeSet::new();
    for t in traces {
        let tr = traced(t, binary);
        for (k, v) in tr.calls {
            *used.entry(k).or_insert(0u64) += v;
        }
        fams.extend(tr.families);
        // The test directory stands in for the unit's writable paths (state, logs,
        // runtime dir, and the hosts.deny directory): nothing may be written elsewhere.
        let outside: Vec<_> = tr
            .writes
            .iter()
            .filter(|p| !writable.iter().any(|w| p.starts_with(w.as_str())))
            .collect();
        assert!(
            outside.is_empty(),
            "{binary} writes outside its writable paths: {outside:?}"
        );
        writes.extend(tr.writes);
        // ProcSubset=pid: only process entries exist in /proc (and, for the sensor,
        // ProtectProc=invisible: only its own). ProtectHome=yes: no home directories.
        let hidden: Vec<_> = tr
            .reads
            .iter()
            .filter(|p| {
                let in_proc = p.strip_prefix("/proc/").is_some_and(|r| {
                    let first = r.split('/').next().unwrap_or_default();
                    !(first == "self"
                        || first == "thread-self"
                        || first.bytes().all(|b| b.is_ascii_digit()))
                });
                // Known and harmless: the sensor names itself after the host name and
                // falls back to "sentry-sensor" when /proc/sys is hidden.
                // The enforcer reads the boot id there only when it is not given one; its
                // unit passes systemd's %b (`--boot-id`), this test does not.
                let tolerated =
                    *p == "/proc/sys/kernel/hostname" || *p == "/proc/sys/kernel/random/boot_id";
                !tolerated
                    && (in_proc
                        || p.starts_with("/home/")
                        || p.starts_with("/root/")
                        || p.starts_with("/run/user/"))
            })
            .collect();
        assert!(
            hidden.is_empty(),
            "{binary} uses paths its unit hides: {hidden:?}"
        );
    }
    assert!(used.len() > 10, "trace of {binary} looks empty: {used:?}");
    let denied: Vec<_> = used.keys().filter(|c| !allowed.contains(*c)).collect();
    let bad_fams: Vec<_> = fams.iter().filter(|f| !families.contains(*f)).collect();
    eprintln!(
        "{binary}: {} distinct system calls, families {fams:?}, {} paths written",
        used.len(),
        writes.len()
    );
    if binary == "sentry-enforcer" {
        // It binds its sockets and writes its audit log and state: proof the parser works.
        assert!(
            writes.iter().any(|w| w.ends_with("enforcer.sock")),
            "writes not traced: {writes:?}"
        );
    }
    assert!(
        denied.is_empty(),
        "{binary} makes system calls {}'s SystemCallFilter= denies: {denied:?}\n(all used: {used:?})",
        unit.display()
    );
    assert!(
        bad_fams.is_empty(),
        "{binary} opens socket families {}'s RestrictAddressFamilies= denies: {bad_fams:?}",
        unit.display()
    );
}

/// The default policy with its file locations redirected into the test directory.
fn default_policy() -> String {
    std::fs::read_to_string(repo().join("policy/dist/sentry.conf")).unwrap()
}

#[test]
fn daemons_stay_inside_the_units_syscall_filter_and_address_families() {
    let test = "daemons_stay_inside_the_units_syscall_filter_and_address_families";
    if !require_root(test)
        || !require_tool(test, "strace")
        || !require_tool(test, "systemd-analyze")
        || !require_tool(test, "hping3")
        || !require_tool(test, "nft")
    {
        return;
    }
    let sensor_unit = repo().join("sentry-sensor/dist/sentry-sensor.service");
    let enforcer_unit = repo().join("sentry-enforcer/dist/sentry-enforcer.service");
    // The modes the unit starts.
    let exec = directives(&sensor_unit, "ExecStart").join(" ");
    let modes: Vec<&str> = exec
        .split_whitespace()
        .filter(|w| ["-tcp", "-udp", "-stcp", "-sudp", "-atcp", "-audp"].contains(w))
        .map(|w| w.trim_start_matches('-'))
        .collect();
    assert!(!modes.is_empty(), "no modes in the sensor unit's ExecStart");
    let settings = Settings::portsentry(&default_policy(), &modes)
        .set("BLOCK_TIMEOUT", "3")
        .traced();
    let mut s = Sentry::start(test, settings);
    let target = TARGET_V4.to_string();
    let scanner = IpAddr::V4(SCANNER_V4);
    s.hping(&["-S", "-p", "++20", "-c", "3", "-i", "u10000", &target]);
    s.wait_blocked(scanner);
    let udp_src: IpAddr = "10.203.0.3".parse().unwrap();
    s.hping(&[
        "-a",
        "10.203.0.3",
        "--udp",
        "-p",
        "++20",
        "-c",
        "3",
        "-i",
        "u10000",
        &target,
    ]);
    s.wait_blocked(udp_src);
    assert!(s.sentryctl(&["status"]).success());
    assert!(s.sentryctl(&["blocked", "--json"]).success());
    let out = s.sentryctl(&["unblock", "10.203.0.3"]);
    assert!(out.success(), "unblock: {out}");
    s.wait_decision(udp_src, AuditDecision::Unblocked);
    // SIGHUP: re-read the ignore list.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(s.enforcer_pid()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    );
    // BLOCK_TIMEOUT=3: the first block expires.
    let _ = s.wait_decision_within(scanner, AuditDecision::Expired, Duration::from_secs(20));
    assert!(
        s.status()["sensor"].is_object(),
        "the sensor died during the cycle\n{}",
        s.diag()
    );
    s.stop_all();
    let dir = s.dir.path().display().to_string();
    // The sensor writes nothing at all (ProtectSystem=strict, no writable paths).
    check(
        &sensor_unit,
        &s.traces("sensor"),
        "sentry-sensor",
        &["/dev/null".into()],
    );
    check(
        &enforcer_unit,
        &s.traces("enforcer"),
        "sentry-enforcer",
        &[dir.clone(), "/dev/null".into()],
    );
    // ExecStartPre= runs sentryctl check-config under the enforcer's filter.
    let trace = s.dir.path().join("check-config.strace");
    let conf = s.conf.clone();
    let out = run(
        Command::new("strace")
            .env_remove("LD_LIBRARY_PATH")
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .arg(&s.bins.sentryctl)
            .arg("check-config")
            .arg(&conf),
        Duration::from_secs(30),
    );
    assert!(out.success(), "check-config of the traced policy: {out}");
    check(
        &enforcer_unit,
        &[trace],
        "sentryctl",
        &[dir, "/dev/null".into()],
    );
}

#[test]
fn portsentry_kill_route_commands_stay_inside_the_enforcer_unit() {
    // Migration: Debian's portsentry.conf blocks with `/sbin/route add -host $TARGET$
    // reject` — an external command, which inherits the enforcer's sandbox.
    let test = "portsentry_kill_route_commands_stay_inside_the_enforcer_unit";
    if !require_root(test)
        || !require_tool(test, "strace")
        || !require_tool(test, "systemd-analyze")
        || !require_tool(test, "hping3")
        || !require_tool(test, "route")
    {
        return;
    }
    let enforcer_unit = repo().join("sentry-enforcer/dist/sentry-enforcer.service");
    let conf = std::fs::read_to_string(repo().join("policy/tests/fixtures/debian.conf")).unwrap();
    let settings = Settings::portsentry(&conf, &["atcp"])
        .set("BLOCK_TCP", "1")
        .traced();
    let mut s = Sentry::start(test, settings);
    let target = TARGET_V4.to_string();
    let scanner = IpAddr::V4(SCANNER_V4);
    s.hping(&["-S", "-p", "++20", "-c", "3", "-i", "u10000", &target]);
    let rec = s.wait_block_actions(scanner);
    assert!(
        rec.action_kinds().contains(&ActionKind::KillRoute),
        "{rec:?}"
    );
    s.stop_all();
    let traces = s.traces("enforcer");
    let dir = s.dir.path().display().to_string();
    check(
        &enforcer_unit,
        &traces,
        "sentry-enforcer",
        &[dir, "/dev/null".into()],
    );
    // The route command itself ran under the trace (as a child of the enforcer).
    let route = traced(&traces[0], "route");
    assert!(!route.calls.is_empty(), "route(8) not seen in the trace");
    eprintln!("route: families {:?}", route.families);
}
