//! The Debian package and both units under real systemd, as administrators run them.
//!
//! Builds the .deb from the workspace's binaries, installs it with `dpkg -i` into a Debian
//! 12 root file system while systemd is not running (an image build), boots that root
//! under systemd-nspawn in the target namespace of a [`NetPair`] and scans it from the
//! scanner namespace. Checks: both units come up by themselves (offline enable), the
//! sensor's confinement in /proc, the block in the container's nftables set, the journal
//! (PortSentry's lines under `portsentry`, no warning at start), `systemctl reload`
//! re-reading the ignore list, a restart of each unit keeping the block, stop leaving it in
//! place, no unit killed for a denied system call, an upgrade keeping the admin's
//! `systemctl disable`, the journal and history fed to logwatch's portsentry service and
//! fail2ban's portsentry filter, and `apt-get remove` / `purge`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sentry_tests::netns::{SCANNER2_V4, SCANNER3_V4, SCANNER_V4, TARGET_V4};
use sentry_tests::nspawn::{rootfs, Container, RootCopy};
use sentry_tests::{bin_dir, require_root, require_tool, run, run_ok, wait_until, NetPair, Side};

const TEST: &str = "systemd_nspawn_package_units_and_log_consumers";
const UNITS: [&str; 2] = ["sentry-enforcer.service", "sentry-sensor.service"];
const DEB_IN_ROOT: &str = "/var/cache/sentry-test/sentry.deb";
const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `tests/scripts/make-deb.sh` over the binaries this test run uses.
fn build_deb(out: &Path) -> PathBuf {
    let o = run_ok(
        Command::new("sh")
            .arg("tests/scripts/make-deb.sh")
            .arg(bin_dir())
            .arg(out)
            .current_dir(repo()),
        Duration::from_secs(120),
    );
    let line = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("built "))
        .unwrap_or_else(|| panic!("make-deb.sh printed no `built` line: {o}"));
    PathBuf::from(line.trim())
}

/// Lines of the journal that mention `needle`.
fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

/// The container's nftables set elements of table `sentry`, as text.
fn nft_set(c: &Container) -> String {
    c.exec(&["nft", "list", "set", "inet", "sentry", "v4"], WAIT)
        .stdout
}

fn wait_blocked(c: &Container, ip: Ipv4Addr) {
    let want = ip.to_string();
    wait_until(
        WAIT,
        &format!("{ip} in the container's nftables set"),
        || nft_set(c).contains(&want).then_some(()),
        || c.diag(),
    );
}

/// The enforcer's count of "sensor ... connected" lines in this boot's journal.
fn sensor_connections(c: &Container) -> usize {
    lines_with(
        &c.journal(&["-t", "sentry-enforcer"]),
        "adminalert: sensor ",
    )
    .len()
}

fn wait_active(c: &Container, unit: &str) {
    wait_until(
        WAIT,
        &format!("{unit} active"),
        || (c.unit_prop(unit, "ActiveState") == "active").then_some(()),
        || c.diag(),
    );
}

/// Wait until the enforcer has logged more than `before` sensor connections.
fn wait_sensor_connected(c: &Container, before: usize) {
    wait_until(
        WAIT,
        "the sensor to (re)connect to the enforcer",
        || (sensor_connections(c) > before).then_some(()),
        || c.diag(),
    );
}

fn nmap(net: &NetPair, source: Ipv4Addr) -> String {
    let src = source.to_string();
    let target = TARGET_V4.to_string();
    let o = run(
        net.command(Side::Scanner, "nmap").args([
            "-n",
            "-Pn",
            "-sS",
            "-T4",
            "-p",
            "1-200",
            "--max-retries",
            "0",
            "--host-timeout",
            "20s",
            "-S",
            &src,
            "-e",
            "sx0",
            &target,
        ]),
        Duration::from_secs(60),
    );
    assert!(o.success(), "nmap: {o}");
    o.stdout
}

fn proc_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc status:\n{status}"))
}

#[test]
fn systemd_nspawn_package_units_and_log_consumers() {
    if !require_root(TEST) {
        return;
    }
    for tool in [
        "debootstrap",
        "systemd-nspawn",
        "nsenter",
        "nmap",
        "dpkg-deb",
        "logwatch",
        "fail2ban-regex",
    ] {
        if !require_tool(TEST, tool) {
            return;
        }
    }
    let t0 = Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(work.path());
    // The package as Debian's checker sees it: no errors.
    if require_tool(TEST, "lintian") {
        let l = run(
            Command::new("lintian")
                .args(["--fail-on", "error"])
                .arg(&deb),
            Duration::from_secs(120),
        );
        assert!(
            l.success() && !l.stdout.lines().any(|x| x.starts_with("E: ")),
            "lintian: {l}"
        );
        eprintln!("{TEST}: lintian: {}", l.stdout.trim());
    }
    let (cache, built) = rootfs();
    match built {
        Some(d) => eprintln!("{TEST}: debootstrapped {} in {d:.1?}", cache.display()),
        None => eprintln!("{TEST}: using cached {}", cache.display()),
    }

    // ---- an image build: dpkg -i while systemd is not running.
    let root = RootCopy::new(&cache);
    std::fs::create_dir_all(root.join("/var/cache/sentry-test")).unwrap();
    std::fs::copy(&deb, root.join(DEB_IN_ROOT)).unwrap();
    let o = root.offline(&["dpkg", "-i", DEB_IN_ROOT], Duration::from_secs(120));
    assert!(o.success(), "offline dpkg -i: {o}");
    for u in UNITS {
        let link = root.join(&format!("/etc/systemd/system/multi-user.target.wants/{u}"));
        assert!(
            std::fs::symlink_metadata(&link).is_ok(),
            "offline install did not enable {u} ({} missing): {o}",
            link.display()
        );
    }
    assert!(root.join("/etc/sentry/sentry.conf").is_file());
    let t_install = t0.elapsed();

    // ---- the same on a host migrating from PortSentry (its configuration left by
    // `apt remove portsentry`): sentry.conf becomes a link to it, plus the drop-in that
    // lets the enforcer write PortSentry's state directory, as `make install` does.
    let migrating = RootCopy::new(&cache);
    let fixture = repo().join("policy/tests/fixtures/debian.conf");
    std::fs::create_dir_all(migrating.join("/etc/portsentry")).unwrap();
    std::fs::copy(&fixture, migrating.join("/etc/portsentry/portsentry.conf")).unwrap();
    std::fs::write(
        migrating.join("/etc/portsentry/portsentry.ignore"),
        "127.0.0.1/32\n0.0.0.0\n",
    )
    .unwrap();
    std::fs::create_dir_all(migrating.join("/var/cache/sentry-test")).unwrap();
    std::fs::copy(&deb, migrating.join(DEB_IN_ROOT)).unwrap();
    let o = migrating.offline(&["dpkg", "-i", DEB_IN_ROOT], Duration::from_secs(120));
    assert!(o.success(), "offline dpkg -i (migration): {o}");
    let link = std::fs::read_link(migrating.join("/etc/sentry/sentry.conf"))
        .unwrap_or_else(|e| panic!("sentry.conf is not a link after migration ({e}): {o}"));
    assert_eq!(link, Path::new("/etc/portsentry/portsentry.conf"));
    let dropin = std::fs::read_to_string(
        migrating.join("/etc/systemd/system/sentry-enforcer.service.d/portsentry.conf"),
    )
    .unwrap_or_default();
    assert!(
        dropin.contains("ReadWritePaths=-/var/lib/portsentry"),
        "no migration drop-in: {o}"
    );
    // ...and PortSentry's directory is the worker's (the unit has no CAP_CHOWN to give its
    // files at start): a tmpfiles.d entry, applied by postinst and at each boot.
    let tmpfiles =
        std::fs::read_to_string(migrating.join("/etc/tmpfiles.d/sentry-portsentry.conf"))
            .unwrap_or_default();
    assert!(
        tmpfiles.contains("d /var/lib/portsentry 0755 sentry-worker sentry-worker -"),
        "no migration tmpfiles.d entry: {o}"
    );
    let wuid = migrating
        .offline(&["id", "-u", "sentry-worker"], Duration::from_secs(60))
        .stdout
        .trim()
        .parse::<u32>()
        .expect("the sentry-worker user");
    for p in ["/var/lib/portsentry", "/var/lib/sentry", "/var/log/sentry"] {
        let md = std::fs::metadata(migrating.join(p)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&md),
            wuid,
            "{p} is not the worker's after the offline install: {o}"
        );
    }
    let check = migrating.offline(
        &[
            "/usr/sbin/sentryctl",
            "check-config",
            "/etc/sentry/sentry.conf",
        ],
        Duration::from_secs(60),
    );
    // The policy is read through the link. Debian's KILL_ROUTE names route(8), which is
    // in net-tools, not in this minimal image: the one finding check-config may report
    // (README, Migrating: "fix what it reports").
    let findings: Vec<&str> = check
        .stdout
        .lines()
        // Warnings (the container's gateway and resolver not on the ignore list) are not
        // findings.
        .filter(|l| !l.ends_with(": OK") && !l.starts_with("warning: "))
        .collect();
    assert!(
        check.success()
            || (!findings.is_empty()
                && findings
                    .iter()
                    .all(|l| l.contains("KILL_ROUTE: /sbin/route is not an executable file"))),
        "migrated policy: {check}"
    );
    drop(migrating);

    // ---- boot it: both units come up by themselves.
    let c = Container::boot(root, NetPair::new(), Duration::from_secs(90));
    let t_boot = t0.elapsed();
    for u in UNITS {
        wait_active(&c, u);
        assert_eq!(c.unit_prop(u, "UnitFileState"), "enabled", "{u}");
    }
    wait_sensor_connected(&c, 0);
    // Under systemd the detection input goes only to the sensor binary in its own unit
    // (issue #21), and the unit's sensor passed that check.
    let j = c.journal(&["-t", "sentry-enforcer"]);
    assert!(
        j.lines().any(
            |l| l.contains("the detection input goes only to a sensor running")
                && l.contains("in unit sentry-sensor.service")
        ),
        "the enforcer does not check the sensor's unit:\n{j}"
    );
    assert!(
        j.lines().any(|l| l.contains("to the verified sensor")),
        "no hand-over to the verified sensor:\n{j}"
    );

    // The sensor as the unit confines it: user sentry, no capabilities, no_new_privs,
    // seccomp filter mode.
    let spid = c.unit_prop("sentry-sensor.service", "MainPID");
    let status = c.exec_ok(&["cat", &format!("/proc/{spid}/status")]).stdout;
    let uid = c.exec_ok(&["id", "-u", "sentry"]).stdout.trim().to_string();
    assert_eq!(
        proc_field(&status, "Uid").split_whitespace().next(),
        Some(uid.as_str()),
        "{status}"
    );
    for f in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(proc_field(&status, f), "0000000000000000", "{f}\n{status}");
    }
    assert_eq!(proc_field(&status, "NoNewPrivs"), "1");
    assert_eq!(proc_field(&status, "Seccomp"), "2");

    // The enforcer's root parent under the shipped unit (issue #22): one thread, its own
    // seccomp filter, no_new_privs; its worker runs as sentry-worker with nothing.
    let ppid = c.unit_prop("sentry-enforcer.service", "MainPID");
    let pstatus = c.exec_ok(&["cat", &format!("/proc/{ppid}/status")]).stdout;
    assert_eq!(proc_field(&pstatus, "Seccomp"), "2", "{pstatus}");
    assert_eq!(proc_field(&pstatus, "NoNewPrivs"), "1", "{pstatus}");
    assert_eq!(proc_field(&pstatus, "Threads"), "1", "{pstatus}");
    // No CAP_SYS_PTRACE (bit 19) under the unit: the sensor check reads its unit's
    // cgroup.procs, not its executable.
    let cap_bnd = u64::from_str_radix(&proc_field(&pstatus, "CapBnd"), 16).unwrap();
    assert_eq!(
        cap_bnd & (1 << 19),
        0,
        "the parent may regain CAP_SYS_PTRACE\n{pstatus}"
    );
    let wpid = c
        .exec_ok(&["pgrep", "-u", "sentry-worker", "-x", "sentry-worker"])
        .stdout
        .trim()
        .to_string();
    let wstatus = c.exec_ok(&["cat", &format!("/proc/{wpid}/status")]).stdout;
    for f in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            proc_field(&wstatus, f),
            "0000000000000000",
            "worker {f}\n{wstatus}"
        );
    }
    eprintln!(
        "{TEST}: FIGURE root parent pid {ppid}: Seccomp 2, NoNewPrivs 1, Threads 1; worker pid {wpid}: no capability"
    );

    // ---- an impostor of the sensor's uid, outside the sensor's unit, running the real
    // sensor binary: the root parent (no CAP_SYS_PTRACE under the unit, so it cannot read
    // the sensor's executable) refuses it by its cgroup, names it, and the unit's sensor
    // keeps the detection input.
    let connected = |c: &Container| {
        lines_with(&c.journal(&["-t", "sentry-enforcer"]), " connected (uid ").len()
    };
    let handed = connected(&c);
    let imp = c.exec(
        &[
            "timeout",
            "5",
            "setpriv",
            "--reuid=sentry",
            "--regid=sentry",
            "--clear-groups",
            "/usr/sbin/sentry-sensor",
            "--config",
            "/etc/sentry/sentry.conf",
            "--runtime-dir",
            "/run/sentry",
            "-stcp",
        ],
        Duration::from_secs(30),
    );
    wait_until(
        WAIT,
        "the enforcer to refuse a sensor outside the sensor's unit",
        || {
            c.journal(&["-t", "sentry-enforcer"])
                .lines()
                .any(|l| {
                    l.contains("is not the verified sensor")
                        && l.contains("does not run in the sensor's unit sentry-sensor.service")
                })
                .then_some(())
        },
        || format!("the impostor: {imp}\n{}", c.diag()),
    );
    assert_eq!(
        connected(&c),
        handed,
        "the impostor got the detection input"
    );

    // The installed units' exposure as the running systemd scores them (the offline
    // figures are checked in units.rs).
    for (u, max) in [
        ("sentry-sensor.service", 1.5),
        // 2.1 (see units.rs).
        ("sentry-enforcer.service", 2.1),
    ] {
        let o = c.exec_ok(&["systemd-analyze", "security", "--no-pager", u]);
        let line = o
            .stdout
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no exposure line: {o}"));
        let score: f64 = line
            .split(':')
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse {line:?}"));
        eprintln!("{TEST}: {}", line.trim());
        assert!(score <= max, "{u}: exposure {score} > {max}");
    }

    // No warning at start without a cause: neither the enforcer's confinement nor anything
    // else. The one warning with a cause the admin can act on is check-config's note that
    // the ignore list does not name this host's gateway or resolver (issue #11): allowed.
    let start_journal = c.journal(&["-u", "sentry-enforcer", "-u", "sentry-sensor"]);
    let infra_note = |l: &str| {
        l.contains("is not on the ignore list; the enforcer never blocks it")
            && (l.contains("(nameserver)") || l.contains("(default gateway)"))
    };
    let warnings: Vec<&str> = start_journal
        .lines()
        .filter(|l| {
            let lc = l.to_ascii_lowercase();
            (lc.contains("warning") || lc.contains("confinement:") || lc.contains("error"))
                && !infra_note(l)
        })
        .collect();
    assert!(
        warnings.is_empty(),
        "warnings at start under the shipped units:\n{}",
        warnings.join("\n")
    );

    // ---- a scan from the scanner namespace is blocked in the container's nftables.
    let scan = nmap(&c.net, SCANNER_V4);
    wait_blocked(&c, SCANNER_V4);
    let scanner = SCANNER_V4.to_string();
    wait_until(
        WAIT,
        "the journal lines of the block",
        || {
            let j = c.journal(&[]);
            let alert = j.lines().any(|l| {
                l.contains(" portsentry[")
                    && l.contains("attackalert: TCP SYN/Normal scan from host: ")
                    && l.contains(&scanner)
            });
            let block = j.lines().any(|l| {
                l.contains(" sentry-enforcer[")
                    && l.contains(&format!("attackalert: Host {scanner} has been blocked"))
            });
            (alert && block).then_some(())
        },
        || format!("{scan}\n{}", c.diag()),
    );
    // Only PortSentry's line forms carry PortSentry's tag.
    let ps = c.journal(&["-t", "portsentry"]);
    let foreign: Vec<&str> = ps
        .lines()
        .filter(|l| !l.contains("attackalert: "))
        .collect();
    assert!(
        foreign.is_empty(),
        "non-PortSentry lines under tag portsentry:\n{}",
        foreign.join("\n")
    );

    // ---- systemctl reload re-reads the ignore list.
    c.exec_ok(&[
        "sh",
        "-c",
        &format!("echo {SCANNER2_V4} >> /etc/sentry/sentry.ignore"),
    ]);
    let before_reload = c.unit_prop("sentry-enforcer.service", "MainPID");
    c.exec_ok(&["systemctl", "reload", "sentry-enforcer.service"]);
    assert_eq!(
        c.unit_prop("sentry-enforcer.service", "MainPID"),
        before_reload,
        "reload restarted the enforcer"
    );
    let second = SCANNER2_V4.to_string();
    // SIGHUP is handled asynchronously; the enforcer loads the new list into the detection
    // chain's kernel set, so the ignored host's probes no longer reach the sensor at all.
    wait_until(
        Duration::from_secs(60),
        &format!("{second} in the detection chain's ignore set after systemctl reload"),
        || {
            c.exec(
                &["nft", "list", "set", "inet", "sentry", "detect_ign4"],
                WAIT,
            )
            .stdout
            .contains(&second)
            .then_some(())
        },
        || c.diag(),
    );
    nmap(&c.net, SCANNER2_V4);
    std::thread::sleep(Duration::from_secs(1));
    let audit = c.exec(&["cat", "/var/log/sentry/audit.jsonl"], WAIT).stdout;
    assert!(
        !audit
            .lines()
            .any(|l| l.contains(&format!("\"{second}\"")) && l.contains("\"blocked\"")),
        "{second} blocked after the reload put it on the ignore list\n{}",
        c.diag()
    );
    assert!(
        !nft_set(&c).contains(&second),
        "{second} is on the ignore list and was blocked anyway\n{}",
        c.diag()
    );

    // ---- the worker's files are its own (tmpfiles.d at install and boot; the unit has no
    // CAP_CHOWN and no StateDirectory=/LogsDirectory= that systemd would hand back to
    // root at each start), and stay so across a restart of the enforcer.
    let owners = || {
        c.exec_ok(&[
            "sh",
            "-c",
            "stat -c '%U %n' /var/lib/sentry /var/lib/sentry/* /var/log/sentry /var/log/sentry/*",
        ])
        .stdout
    };
    let check_owners = |when: &str| {
        let o = owners();
        let not_worker: Vec<&str> = o
            .lines()
            .filter(|l| !l.starts_with("sentry-worker "))
            .collect();
        assert!(
            not_worker.is_empty() && o.contains("/var/log/sentry/audit.jsonl"),
            "{when}: not the worker's:\n{}\n{o}",
            not_worker.join("\n")
        );
    };
    check_owners("after boot");
    let epid = c.unit_prop("sentry-enforcer.service", "MainPID");
    let before = sensor_connections(&c);
    c.exec_ok(&["systemctl", "restart", "sentry-enforcer.service"]);
    wait_active(&c, "sentry-enforcer.service");
    assert_ne!(c.unit_prop("sentry-enforcer.service", "MainPID"), epid);
    wait_sensor_connected(&c, before);
    check_owners("after systemctl restart");

    // ---- a restart of each unit: the block holds, the sensor reconnects.
    for u in UNITS {
        let before = sensor_connections(&c);
        let pid = c.unit_prop(u, "MainPID");
        c.exec_ok(&["systemctl", "restart", u]);
        wait_active(&c, u);
        assert_ne!(c.unit_prop(u, "MainPID"), pid, "{u} did not restart");
        wait_sensor_connected(&c, before);
        assert!(
            nft_set(&c).contains(&scanner),
            "block lost by restarting {u}\n{}",
            c.diag()
        );
    }

    // ---- the enforcer down (as during an upgrade): the sensor keeps running and queues
    // what it detects; the enforcer blocks it once it is back.
    c.exec_ok(&["systemctl", "stop", "sentry-enforcer.service"]);
    assert_eq!(
        c.unit_prop("sentry-sensor.service", "ActiveState"),
        "active",
        "stopping the enforcer stopped the sensor"
    );
    let before = sensor_connections(&c);
    nmap(&c.net, SCANNER3_V4);
    assert!(!nft_set(&c).contains(&SCANNER3_V4.to_string()));
    c.exec_ok(&["systemctl", "start", "sentry-enforcer.service"]);
    wait_sensor_connected(&c, before);
    wait_blocked(&c, SCANNER3_V4);

    // ---- no unit was ever killed for a system call its filter denies (SIGSYS), and
    // neither restarted by itself.
    let all = c.journal(&[]);
    for bad in ["status=31/SYS", "code=dumped", "SECCOMP", "type=1326"] {
        let hits = lines_with(&all, bad);
        assert!(
            hits.is_empty(),
            "{bad} in the journal:\n{}",
            hits.join("\n")
        );
    }
    for u in UNITS {
        assert_eq!(c.unit_prop(u, "NRestarts"), "0", "{u} restarted by itself");
    }

    // ---- stop leaves the blocks in place.
    c.exec_ok(&[
        "systemctl",
        "stop",
        "sentry-sensor.service",
        "sentry-enforcer.service",
    ]);
    for u in UNITS {
        assert_eq!(c.unit_prop(u, "ActiveState"), "inactive", "{u}");
    }
    assert!(
        nft_set(&c).contains(&scanner),
        "stop removed the block\n{}",
        c.diag()
    );

    // ---- log consumers: the journal as a syslog file through logwatch's portsentry
    // service, the history file through fail2ban's portsentry filter.
    let logdir = work.path().join("logs");
    std::fs::create_dir(&logdir).unwrap();
    let syslog = c.journal(&[
        "-t",
        "portsentry",
        "-t",
        "sentry-sensor",
        "-t",
        "sentry-enforcer",
    ]);
    std::fs::write(logdir.join("messages"), &syslog).unwrap();
    for detail in ["0", "10"] {
        let lw = run_ok(
            Command::new("logwatch").arg("--logdir").arg(&logdir).args([
                "--service",
                "portsentry",
                "--range",
                "All",
                "--detail",
                detail,
                "--output",
                "stdout",
            ]),
            Duration::from_secs(60),
        );
        assert!(
            lw.stdout.contains(&format!("{scanner}: ports:")),
            "logwatch --detail {detail} does not report the scan from {scanner}: {lw}"
        );
        assert!(
            lw.stdout
                .contains(&format!("Blocked route from/to {scanner} ")),
            "logwatch --detail {detail} does not report the block of {scanner}: {lw}"
        );
        // logwatch lists unmatched lines from detail 5 on.
        assert!(
            !lw.stdout.to_ascii_lowercase().contains("unmatched"),
            "logwatch --detail {detail} found lines it does not know: {lw}"
        );
    }
    let history = c.root.join("/var/lib/sentry/sentry.history");
    let f2b = run_ok(
        Command::new("fail2ban-regex")
            .arg("--print-all-matched")
            .arg(&history)
            .arg("/etc/fail2ban/filter.d/portsentry.conf"),
        Duration::from_secs(60),
    );
    assert!(
        f2b.stdout.contains(&scanner)
            && f2b
                .stdout
                .lines()
                .any(|l| l.starts_with("Failregex: ") && !l.starts_with("Failregex: 0 ")),
        "fail2ban's portsentry filter does not match the history: {f2b}"
    );

    // ---- CAP_NET_RAW: out of the shipped unit (route, ip and iptables-nft need only
    // CAP_NET_ADMIN). A legacy iptables needs it: the enforcer says so at start, and the
    // documented drop-in gives it to the command helper. The legacy program is named, not
    // run, so a copy of true(1) under its name is enough.
    c.exec_ok(&[
        "sh",
        "-c",
        "cp /etc/sentry/sentry.conf /etc/sentry/sentry.conf.orig && \
         cp /bin/true /usr/local/sbin/iptables-legacy && \
         echo 'KILL_RUN_CMD=\"/usr/local/sbin/iptables-legacy -I INPUT -s $TARGET$ -j DROP\"' \
           >> /etc/sentry/sentry.conf",
    ]);
    c.exec_ok(&["systemctl", "restart", "sentry-enforcer.service"]);
    wait_until(
        WAIT,
        "the enforcer to warn that CAP_NET_RAW is needed but not held",
        || {
            let j = c.journal(&["-t", "sentry-enforcer"]);
            j.lines()
                .any(|l| {
                    l.contains("adminalert: confinement: CAP_NET_RAW is needed by the configured actions but not held")
                        && l.contains("CapabilityBoundingSet=CAP_NET_RAW")
                })
                .then_some(())
        },
        || c.diag(),
    );
    c.exec_ok(&[
        "sh",
        "-c",
        "mkdir -p /etc/systemd/system/sentry-enforcer.service.d && \
         printf '[Service]\\nCapabilityBoundingSet=CAP_NET_RAW\\n' \
           > /etc/systemd/system/sentry-enforcer.service.d/net-raw.conf && \
         systemctl daemon-reload && systemctl restart sentry-enforcer.service",
    ]);
    // The command helper: the parent's child that is not the worker. Bits 12 and 13 are
    // CAP_NET_ADMIN and CAP_NET_RAW.
    let helper_caps = || {
        let o = c.exec(
            &[
                "sh",
                "-c",
                "p=$(systemctl show -P MainPID sentry-enforcer.service); \
                 for k in $(cat /proc/$p/task/$p/children); do \
                   [ \"$(cat /proc/$k/comm)\" = sentry-enforcer ] && \
                     sed -n 's/^CapEff:[[:space:]]*//p' /proc/$k/status; \
                 done",
            ],
            Duration::from_secs(10),
        );
        (o.stdout.trim() == "0000000000003000").then_some(())
    };
    wait_until(
        WAIT,
        "the drop-in's CAP_NET_RAW to reach the command helper",
        helper_caps,
        || c.diag(),
    );
    c.exec_ok(&[
        "sh",
        "-c",
        "mv /etc/sentry/sentry.conf.orig /etc/sentry/sentry.conf && \
         rm /usr/local/sbin/iptables-legacy && \
         rm -r /etc/systemd/system/sentry-enforcer.service.d && systemctl daemon-reload",
    ]);

    // ---- upgrade with both running: both restart with the new binaries, the block holds.
    c.exec_ok(&["systemctl", "restart", "sentry-enforcer.service"]);
    c.exec_ok(&["systemctl", "start", "sentry-sensor.service"]);
    for u in UNITS {
        wait_active(&c, u);
    }
    let pids: Vec<String> = UNITS.iter().map(|u| c.unit_prop(u, "MainPID")).collect();
    let before = sensor_connections(&c);
    let up = c.exec_ok(&["dpkg", "-i", DEB_IN_ROOT]);
    for (u, pid) in UNITS.iter().zip(&pids) {
        wait_active(&c, u);
        assert_ne!(
            &c.unit_prop(u, "MainPID"),
            pid,
            "upgrade did not restart {u}: {up}"
        );
        assert_eq!(c.unit_prop(u, "UnitFileState"), "enabled", "{u}");
    }
    wait_sensor_connected(&c, before);
    assert!(nft_set(&c).contains(&scanner), "upgrade lost the block");

    // ---- upgrade after `systemctl disable`: the admin's choice is kept.
    c.exec_ok(&["systemctl", "stop", "sentry-sensor.service"]);
    c.exec_ok(&["systemctl", "disable", "sentry-sensor.service"]);
    let epid = c.unit_prop("sentry-enforcer.service", "MainPID");
    let up = c.exec_ok(&["dpkg", "-i", DEB_IN_ROOT]);
    assert_eq!(
        c.unit_prop("sentry-sensor.service", "UnitFileState"),
        "disabled",
        "upgrade re-enabled the sensor the admin disabled: {up}"
    );
    assert_eq!(
        c.unit_prop("sentry-enforcer.service", "UnitFileState"),
        "enabled"
    );
    wait_active(&c, "sentry-enforcer.service");
    assert_ne!(
        c.unit_prop("sentry-enforcer.service", "MainPID"),
        epid,
        "upgrade did not restart the enforcer"
    );
    assert_eq!(
        c.unit_prop("sentry-sensor.service", "ActiveState"),
        "inactive",
        "upgrade started the stopped sensor"
    );

    // ---- a state directory that is not the worker's (an admin's chown, a backup restored
    // as root): the enforcer, which creates and chowns nothing, refuses to start and
    // names the fix; the fix works.
    c.exec_ok(&["systemctl", "stop", "sentry-enforcer.service"]);
    c.exec_ok(&["chown", "root:root", "/var/lib/sentry"]);
    let failures_before =
        lines_with(&c.journal(&["-t", "sentry-enforcer"]), "must own its files").len();
    c.exec_ok(&["systemctl", "start", "sentry-enforcer.service"]);
    wait_until(
        WAIT,
        "the enforcer to refuse a state directory that is not the worker's",
        || {
            let j = c.journal(&["-t", "sentry-enforcer"]);
            let hits = lines_with(&j, "must own its files");
            (hits.len() > failures_before
                && hits.iter().any(|l| {
                    l.contains("/var/lib/sentry is owned by uid 0")
                        && l.contains("systemd-tmpfiles --create sentry.conf")
                }))
            .then_some(())
        },
        || c.diag(),
    );
    c.exec_ok(&["systemctl", "stop", "sentry-enforcer.service"]);
    c.exec_ok(&["systemctl", "reset-failed", "sentry-enforcer.service"]);
    c.exec_ok(&["systemd-tmpfiles", "--create", "sentry.conf"]);
    c.exec_ok(&["systemctl", "start", "sentry-enforcer.service"]);
    // (The sensor is stopped by now: the worker answering sentryctl is the sign of life.)
    wait_until(
        WAIT,
        "the enforcer's worker to answer after the fix",
        || {
            c.exec(&["/usr/sbin/sentryctl", "status"], WAIT)
                .success()
                .then_some(())
        },
        || c.diag(),
    );
    check_owners("after the fix the enforcer named");

    // ---- apt remove keeps the configuration, purge removes user, state and logs.
    c.exec_ok(&["apt-get", "remove", "-y", "-q", "sentry"]);
    for u in UNITS {
        assert_ne!(c.unit_prop(u, "ActiveState"), "active", "{u} after remove");
    }
    assert!(c.root.join("/etc/sentry/sentry.conf").is_file());
    assert!(c.root.join("/var/lib/sentry").is_dir());
    assert!(c.exec(&["getent", "passwd", "sentry"], WAIT).success());
    for u in UNITS {
        // deb-systemd-helper masks what it enabled until purge (as dh_installsystemd does):
        // nothing can start the leftover links, and a reinstall restores the admin's choice.
        let state = c.unit_prop(u, "UnitFileState");
        assert!(
            state == "masked" || state.is_empty(),
            "{u} after remove: {state}"
        );
        let link = c
            .root
            .join(&format!("/etc/systemd/system/multi-user.target.wants/{u}"));
        assert!(!link.exists(), "{u} still startable after remove");
    }
    c.exec_ok(&["apt-get", "purge", "-y", "-q", "sentry"]);
    for p in ["/etc/sentry", "/var/lib/sentry", "/var/log/sentry"] {
        assert!(!c.root.join(p).exists(), "{p} left after purge");
    }
    assert!(
        !c.exec(&["getent", "passwd", "sentry"], WAIT).success(),
        "user sentry left after purge"
    );
    let left = c.exec(
        &[
            "sh",
            "-c",
            "ls -d /etc/systemd/system/sentry-* /etc/systemd/system/*/sentry-* \
             /var/lib/systemd/deb-systemd-helper-*/*sentry* 2>/dev/null",
        ],
        WAIT,
    );
    assert!(
        left.stdout.trim().is_empty(),
        "unit links left after purge: {}",
        left.stdout
    );
    let total = t0.elapsed();
    eprintln!(
        "{TEST}: deb + rootfs + offline install {t_install:.1?}, boot {:.1?}, total {total:.1?}",
        t_boot - t_install
    );
}
