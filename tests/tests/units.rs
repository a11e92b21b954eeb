//! The shipped systemd units: exposure score goals, `systemd-analyze verify`, and the
//! directives whose absence or presence would break the product.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sentry_tests::{bins, run, which};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn sensor_unit() -> PathBuf {
    repo().join("sentry-sensor/dist/sentry-sensor.service")
}

fn enforcer_unit() -> PathBuf {
    repo().join("sentry-enforcer/dist/sentry-enforcer.service")
}

fn share_unit() -> PathBuf {
    repo().join("sentry-share/dist/sentry-share.service")
}

fn have_analyze(test: &str) -> bool {
    if which("systemd-analyze").is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: systemd-analyze missing (apt-get install systemd) and CI=true forbids skipping");
    }
    sentry_tests::skipped(&format!(
        "SKIPPED (systemd-analyze not installed; apt-get install systemd): {test}"
    ));
    false
}

/// `systemd-analyze security --offline=true UNIT` → the overall exposure score.
fn exposure(unit: &Path) -> f64 {
    let out = run(
        std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit),
        Duration::from_secs(60),
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure line: {out}"));
    let score = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    eprintln!("{}: {line}", unit.display());
    score
}

/// At most 1.5 (the goal of issue #12). Since the sensor reads the NFLOG socket the
/// enforcer hands over, its unit grants no capability and no AF_PACKET; what systemd-analyze
/// still scores is the 0.2-weighted `SystemCallFilter=~@resources`, opened for
/// sched_getattr/sched_setattr only (the sensor's short scheduler slice, set before its own
/// seccomp filter forbids both; without CAP_SYS_NICE and with RestrictRealtime= it cannot
/// raise its priority), and AF_NETLINK (the listener tables over sock_diag).
#[test]
fn sensor_unit_exposure_at_most_1_5() {
    if !have_analyze("sensor_unit_exposure_at_most_1_5") {
        return;
    }
    let s = exposure(&sensor_unit());
    assert!(s <= 1.5, "sentry-sensor.service exposure {s} > 1.5");
}

/// 2.1 when issue #22 was filed, 2.4 right before its split (issue #21 had added
/// CAP_SYS_PTRACE for the sensor check), 2.1 again now (this systemd's scoring). The split
/// cost the root parent CAP_SETUID/CAP_SETGID (it starts and restarts its worker as
/// `sentry-worker`), which `systemd-analyze` cannot weigh against the worker no longer
/// being root. Paid back by: no CAP_KILL (the worker is signalled from a child that takes
/// its uid), no CAP_CHOWN (tmpfiles.d makes the worker's files its own before the unit
/// starts), no CAP_SYS_PTRACE (under systemd the sensor check reads the sensor unit's
/// cgroup.procs), IPAddressDeny=any (neither process sends an IP packet), and no
/// CAP_NET_RAW (only a legacy iptables KILL_ROUTE needs it: a drop-in adds it).
#[test]
fn enforcer_unit_exposure_at_most_2_1() {
    if !have_analyze("enforcer_unit_exposure_at_most_2_1") {
        return;
    }
    let s = exposure(&enforcer_unit());
    assert!(s <= 2.1, "sentry-enforcer.service exposure {s} > 2.1");
}

/// issue #14: the fleet bridge holds no capability and speaks HTTP: it must be the
/// tightest unit of the three.
#[test]
fn share_unit_exposure_at_most_2_0() {
    if !have_analyze("share_unit_exposure_at_most_2_0") {
        return;
    }
    let s = exposure(&share_unit());
    assert!(s <= 2.0, "sentry-share.service exposure {s} > 2.0");
}

#[test]
fn share_unit_has_no_capability_and_its_own_user() {
    let d = directives(&share_unit());
    assert_eq!(values(&d, "User"), ["sentry-share"]);
    assert_eq!(values(&d, "CapabilityBoundingSet"), [""]);
    assert_eq!(values(&d, "AmbientCapabilities"), [""]);
    assert_eq!(values(&d, "NoNewPrivileges"), ["yes"]);
    assert_eq!(values(&d, "StateDirectory"), ["sentry-share"]);
    assert_eq!(
        values(&d, "RestrictAddressFamilies"),
        ["AF_UNIX AF_INET AF_INET6"]
    );
}

#[test]
fn units_verify_clean() {
    if !have_analyze("units_verify_clean") {
        return;
    }
    // verify checks that ExecStart= binaries exist: point the units at the freshly built
    // ones (the installed copies say /usr/local/sbin).
    let b = bins();
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let share_bin = sentry_tests::bin_dir().join("sentry-share");
    for unit in [sensor_unit(), enforcer_unit(), share_unit()] {
        let text = std::fs::read_to_string(&unit).unwrap();
        let text = text
            .replace(
                "/usr/local/sbin/sentry-sensor",
                &b.sensor.display().to_string(),
            )
            .replace(
                "/usr/local/sbin/sentry-enforcer",
                &b.enforcer.display().to_string(),
            )
            .replace(
                "/usr/local/sbin/sentryctl",
                &b.sentryctl.display().to_string(),
            )
            .replace(
                "/usr/local/sbin/sentry-share",
                &share_bin.display().to_string(),
            );
        assert!(
            !text.contains("/usr/local/sbin/"),
            "unexpected installed path left in {}",
            unit.display()
        );
        let p = dir.path().join(unit.file_name().unwrap());
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = run(
        std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&paths),
        Duration::from_secs(60),
    );
    let complaints: Vec<&str> = out
        .stderr
        .lines()
        .chain(out.stdout.lines())
        .filter(|l| {
            l.contains("sentry-sensor.service")
                || l.contains("sentry-enforcer.service")
                || l.contains("sentry-share.service")
        })
        .collect();
    assert!(
        out.success() && complaints.is_empty(),
        "systemd-analyze verify: {out}"
    );
}

fn directives(unit: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(unit)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim_start().starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values(d: &[(String, String)], key: &str) -> Vec<String> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

#[test]
fn sensor_unit_privileges_and_ordering() {
    let d = directives(&sensor_unit());
    assert_eq!(values(&d, "User"), ["sentry"]);
    // No capability: the NFLOG socket it reads is bound by the enforcer and handed over.
    assert_eq!(values(&d, "AmbientCapabilities"), [""]);
    assert_eq!(values(&d, "CapabilityBoundingSet"), [""]);
    assert_eq!(values(&d, "NoNewPrivileges"), ["yes"]);
    assert!(values(&d, "After")
        .iter()
        .any(|v| v.contains("sentry-enforcer.service")));
    // Restarting one daemon must never stop the other.
    for k in ["Requires", "BindsTo", "PartOf", "Requisite"] {
        assert!(values(&d, k).is_empty(), "sensor unit has {k}=");
    }
    // No raw capture any more: AF_PACKET is not needed.
    assert!(!values(&d, "RestrictAddressFamilies")
        .iter()
        .any(|v| v.contains("AF_PACKET")));
    assert!(values(&d, "ExecStart")
        .iter()
        .all(|v| v.contains("--runtime-dir /run/sentry")));
}

#[test]
fn enforcer_unit_privileges_and_writable_paths() {
    let d = directives(&enforcer_unit());
    let caps = values(&d, "CapabilityBoundingSet").join(" ");
    assert!(caps.contains("CAP_NET_ADMIN"));
    for forbidden in ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"] {
        assert!(!caps.contains(forbidden), "enforcer may keep {forbidden}");
    }
    // Issue #22: the root parent keeps CAP_SETUID and CAP_SETGID (its worker, as
    // `sentry-worker`, also signalled from a child with that uid: no CAP_KILL); no
    // CAP_CHOWN (tmpfiles.d gives the worker its files); no CAP_SYS_PTRACE (under
    // systemd the sensor check reads the sensor's cgroup, not its executable);
    // no CAP_NET_RAW (route, ip and iptables-nft KILL_ROUTEs need only CAP_NET_ADMIN; a
    // legacy iptables gets it from a drop-in, tested in systemd_nspawn.rs).
    // tests/tests/confinement.rs checks what the running processes hold.
    assert_eq!(
        caps.split_whitespace().collect::<Vec<_>>(),
        ["CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID"]
    );
    // No directory systemd would hand back to root at each start (the unit runs as
    // root); the worker's own are writable paths, made its own by tmpfiles.d.
    for k in ["StateDirectory", "LogsDirectory"] {
        assert!(values(&d, k).is_empty(), "enforcer unit has {k}=");
    }
    for k in ["Requires", "BindsTo", "PartOf"] {
        assert!(values(&d, k).is_empty(), "enforcer unit has {k}=");
    }
    assert_eq!(values(&d, "ProtectSystem"), ["strict"]);
    assert_eq!(values(&d, "RuntimeDirectory"), ["sentry"]);
    // The enforcer edits hosts.deny in place, so the only writable path outside its
    // worker's state and log directories and its runtime directory is that one file: not
    // /etc, not its own policy.
    let rw = values(&d, "ReadWritePaths").join(" ");
    let mut rw: Vec<&str> = rw
        .split_whitespace()
        .map(|p| p.trim_start_matches('-'))
        .collect();
    rw.sort_unstable();
    assert_eq!(
        rw,
        ["/etc/hosts.deny", "/var/lib/sentry", "/var/log/sentry"],
        "ReadWritePaths must be exactly the deny file and the worker's directories"
    );
    // The sensor's unit is not pulled down with the enforcer's.
    assert!(values(&d, "Wants")
        .iter()
        .all(|v| !v.contains("sentry-sensor")));
}

/// The enforcer unit has no CAP_CHOWN and no StateDirectory=/LogsDirectory=: the shipped
/// tmpfiles.d snippet must make exactly its worker's writable directories the worker's,
/// take over what an older, root-only enforcer left in them, and follow no symbolic link
/// while doing so. Run for real with `systemd-tmpfiles --root` on a scratch root whose
/// passwd has the worker user (the lookups are made in that root).
#[test]
fn tmpfiles_snippet_gives_the_worker_its_directories() {
    use std::os::unix::fs::MetadataExt;
    let test = "tmpfiles_snippet_gives_the_worker_its_directories";
    if !sentry_tests::require_root(test) {
        return;
    }
    if !sentry_tests::require_tool(test, "systemd-tmpfiles") {
        return;
    }
    let tmpfiles = which("systemd-tmpfiles").unwrap();
    let snippet = repo().join("sentry-enforcer/dist/sentry.tmpfiles");
    let text = std::fs::read_to_string(&snippet).unwrap();
    let mut paths: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    paths.dedup();
    let d = directives(&enforcer_unit());
    let rw = values(&d, "ReadWritePaths").join(" ");
    let dirs: Vec<&str> = rw
        .split_whitespace()
        .map(|p| p.trim_start_matches('-'))
        .filter(|p| *p != "/etc/hosts.deny")
        .collect();
    assert_eq!(
        paths, dirs,
        "the snippet's paths are the unit's writable directories"
    );

    let root = tempfile::tempdir().unwrap();
    let r = |p: &str| root.path().join(p.trim_start_matches('/'));
    std::fs::create_dir_all(r("/etc")).unwrap();
    std::fs::write(
        r("/etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nsentry-worker:x:4242:4243::/nonexistent:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(r("/etc/group"), "root:x:0:\nsentry-worker:x:4243:\n").unwrap();
    // What an older enforcer left: a root-owned state directory with its journal, and a
    // link to a root file elsewhere that must stay root's.
    std::fs::create_dir_all(r("/var/lib/sentry")).unwrap();
    std::fs::write(r("/var/lib/sentry/journal"), "x").unwrap();
    std::fs::write(r("/secret"), "s").unwrap();
    std::os::unix::fs::symlink(r("/secret"), r("/var/lib/sentry/link")).unwrap();
    let o = run(
        std::process::Command::new(tmpfiles)
            .arg("--create")
            .arg(format!("--root={}", root.path().display()))
            .arg(&snippet),
        Duration::from_secs(30),
    );
    assert!(o.success(), "systemd-tmpfiles: {o}");
    let md = |p: &str| std::fs::symlink_metadata(r(p)).unwrap();
    for (p, mode) in [("/var/lib/sentry", 0o700), ("/var/log/sentry", 0o750)] {
        let m = md(p);
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (4242, 4243, mode),
            "{p}"
        );
    }
    assert_eq!(md("/var/lib/sentry/journal").uid(), 4242);
    assert_eq!(md("/secret").uid(), 0, "followed a symbolic link");
}

/// The shipped logrotate file, run for real (`logrotate -f`) on a scratch copy of
/// /var/log/sentry that is the worker's, as tmpfiles.d makes it: the audit log is rotated
/// and created again as the worker's (0640), the file operations run as the worker (`su`:
/// nothing the worker plants there is followed with root's rights), and the postrotate
/// script, which reloads the enforcer, still runs as root.
#[test]
fn logrotate_rotates_the_audit_log_as_the_worker_and_reloads_as_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let test = "logrotate_rotates_the_audit_log_as_the_worker_and_reloads_as_root";
    if !sentry_tests::require_root(test) {
        return;
    }
    if !sentry_tests::require_tool(test, "logrotate") {
        return;
    }
    let logrotate = which("logrotate").unwrap();
    let (uid, gid) = sentry_tests::ensure_worker_user();
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = d.path().join("log");
    std::fs::create_dir(&log).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o750)).unwrap();
    nix::unistd::chown(&log, Some(uid.into()), Some(gid.into())).unwrap();
    let audit = log.join("audit.jsonl");
    std::fs::write(&audit, "{\"old\":1}\n").unwrap();
    nix::unistd::chown(&audit, Some(uid.into()), Some(gid.into())).unwrap();
    let marker = d.path().join("postrotate-uid");
    let shipped =
        std::fs::read_to_string(repo().join("sentry-enforcer/dist/sentry.logrotate")).unwrap();
    // The same file with the scratch paths, and a postrotate that says who ran it.
    let mut conf = String::new();
    let mut in_script = false;
    for line in shipped.lines() {
        let line = line
            .replace("/var/log/sentry/", &format!("{}/", log.display()))
            .replace(
                "/var/log/sentry-pair/",
                &format!("{}/pair/", d.path().display()),
            );
        match line.trim() {
            "postrotate" => {
                in_script = true;
                conf.push_str(&format!("{line}\n        id -u >> {}\n", marker.display()));
            }
            "endscript" => {
                in_script = false;
                conf.push_str(&format!("{line}\n"));
            }
            _ if in_script => {}
            _ => conf.push_str(&format!("{line}\n")),
        }
    }
    assert!(conf.contains("su sentry-worker sentry-worker"), "{conf}");
    let conf_path = d.path().join("logrotate.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let o = run(
        std::process::Command::new(logrotate)
            .arg("-f")
            .arg("-s")
            .arg(d.path().join("state"))
            .arg(&conf_path),
        Duration::from_secs(30),
    );
    assert!(o.success(), "logrotate: {o}");
    let rotated = std::fs::symlink_metadata(log.join("audit.jsonl.1")).unwrap();
    assert_eq!((rotated.uid(), rotated.gid()), (uid, gid));
    assert_eq!(
        std::fs::read_to_string(log.join("audit.jsonl.1")).unwrap(),
        "{\"old\":1}\n"
    );
    let new = std::fs::symlink_metadata(&audit).unwrap();
    assert_eq!(
        (new.uid(), new.gid(), new.mode() & 0o7777, new.len()),
        (uid, gid, 0o640, 0),
        "the new audit log is the worker's"
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "0",
        "postrotate ran as root"
    );
}
