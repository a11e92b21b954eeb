//! `make run` on a machine without systemd as PID 1 starts the pair with
//! tests/scripts/sentry-pair.sh. Run that script (with every path redirected into a
//! temporary directory, inside a private network namespace) and check that it starts a
//! correctly privilege-separated pair that detects and blocks, that it hands the worker
//! its directories (the enforcer only checks them), and that `stop` stops it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sentry_tests::netns::{SCANNER_IF, TARGET_V4};
use sentry_tests::sentry::{pid_alive, Sentry};
use sentry_tests::{
    bin_dir, bins, ensure_sensor_user, require_root, require_tool, run, wait_until, NetPair, Side,
};
use sentry_tests::{read_audit, AuditDecision};

struct Pair {
    net: NetPair,
    dir: tempfile::TempDir,
}

impl Pair {
    fn script(&self, action: &str) -> sentry_tests::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sentry-pair.sh");
        let d = self.dir.path();
        run(
            self.net
                .command(Side::Target, "sh")
                .arg(script)
                .arg(action)
                .env("SBIN", bin_dir())
                .env("CONF", d.join("sentry.conf"))
                .env("RUN", d.join("run"))
                .env("STATE", d.join("state"))
                .env("LOGDIR", d.join("log"))
                .env("PAIRLOG", d.join("pairlog")),
            Duration::from_secs(60),
        )
    }

    fn pid(&self, what: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join(format!("run/{what}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Also on panic: never leave daemons behind.
        let _ = self.script("stop");
        for what in ["sensor", "enforcer"] {
            if let Some(p) = self.pid(what) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(p).unwrap_or(i32::MAX)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn status_field(pid: u32, f: &str) -> String {
    Sentry::proc_status(pid, f).unwrap_or_else(|| panic!("pid {pid}: no {f}"))
}

#[test]
fn no_systemd_start_script_runs_a_privilege_separated_pair() {
    let test = "no_systemd_start_script_runs_a_privilege_separated_pair";
    if !require_root(test) || !require_tool(test, "nmap") || !require_tool(test, "nft") {
        return;
    }
    bins();
    let (sensor_uid, _) = ensure_sensor_user();
    sentry_tests::ensure_worker_user();
    let dir = tempfile::Builder::new()
        .prefix("se2e-run-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let d: PathBuf = dir.path().to_path_buf();
    // The shipped default policy, file locations moved into the test directory.
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/dist/sentry.conf"),
    )
    .unwrap()
    .replace(
        "/etc/sentry/sentry.ignore",
        &d.join("sentry.ignore").display().to_string(),
    )
    .replace("/var/lib/sentry/", &format!("{}/state/", d.display()))
    .replace("/var/log/sentry/", &format!("{}/log/", d.display()))
    .replace(
        "/etc/hosts.deny",
        &d.join("hosts.deny").display().to_string(),
    );
    std::fs::write(d.join("sentry.conf"), conf).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/dist/sentry.ignore"),
        d.join("sentry.ignore"),
    )
    .unwrap();
    std::fs::write(d.join("hosts.deny"), "").unwrap();
    for f in ["sentry.conf", "sentry.ignore", "hosts.deny"] {
        std::fs::set_permissions(
            d.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    // What an older, single-process enforcer left: a root-owned state directory with its
    // files in it. The enforcer gives nothing away (issue #22): the script must hand them
    // to the worker, never through a link (a hard link and a symbolic link to a file of
    // root's elsewhere stay root's); the log directory does not exist yet.
    let state = d.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("sentry.history"), "old history\n").unwrap();
    std::fs::write(d.join("secret"), "s").unwrap();
    std::fs::hard_link(d.join("secret"), state.join("linked")).unwrap();
    std::os::unix::fs::symlink(d.join("secret"), state.join("sym")).unwrap();
    let pair = Pair {
        net: NetPair::new(),
        dir,
    };
    let out = pair.script("start");
    assert!(out.success(), "start: {out}");
    {
        use std::os::unix::fs::MetadataExt;
        let (wuid, _) = sentry_tests::ensure_worker_user();
        let md = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        for (p, mode) in [(&state, 0o700), (&d.join("log"), 0o750)] {
            assert_eq!(
                (md(p).uid(), md(p).mode() & 0o7777),
                (wuid, mode),
                "{}",
                p.display()
            );
        }
        assert_eq!(md(&state.join("sentry.history")).uid(), wuid);
        assert_eq!(
            (md(&d.join("secret")).uid(), md(&state.join("sym")).uid()),
            (0, 0)
        );
    }
    assert!(
        out.stdout.contains("sensor:") && out.stdout.contains("connected"),
        "start did not show the status: {out}"
    );
    let (enf, sen) = (pair.pid("enforcer").unwrap(), pair.pid("sensor").unwrap());
    // The sensor: user sentry, no capabilities left, seccomp, no_new_privs.
    assert!(status_field(sen, "Uid")
        .split_whitespace()
        .all(|u| u == sensor_uid.to_string()));
    assert_eq!(
        u64::from_str_radix(&status_field(sen, "CapEff"), 16).unwrap(),
        0
    );
    assert_eq!(status_field(sen, "Seccomp"), "2");
    assert_eq!(status_field(sen, "NoNewPrivs"), "1");
    // The enforcer's root parent (issue #22): root, one thread, its own seccomp filter,
    // bounded to what the script's setpriv gives it (no CAP_KILL: it signals its worker
    // from a child with the worker's uid) and no CAP_CHOWN (the script makes the worker's
    // files its own; the enforcer gives nothing); CAP_NET_RAW is not even in its
    // bounding set (the script adds it only with SENTRY_NET_RAW=1).
    assert!(status_field(enf, "Uid")
        .split_whitespace()
        .all(|u| u == "0"));
    let allowed: u64 = (1 << 6) | (1 << 7) | (1 << 12) | (1 << 19);
    let bnd = u64::from_str_radix(&status_field(enf, "CapBnd"), 16).unwrap();
    assert_eq!(bnd & !allowed, 0, "enforcer bounding set {bnd:#x}");
    let eff = u64::from_str_radix(&status_field(enf, "CapEff"), 16).unwrap();
    assert_eq!(
        eff & ((1 << 13) | 1),
        0,
        "the parent holds CAP_NET_RAW or CAP_CHOWN: {eff:#x}"
    );
    assert_eq!(status_field(enf, "Threads"), "1");
    assert_eq!(status_field(enf, "Seccomp"), "2");
    assert_eq!(status_field(enf, "NoNewPrivs"), "1");
    // Its worker: no capability at all.
    let children = std::fs::read_to_string(format!("/proc/{enf}/task/{enf}/children")).unwrap();
    let worker = children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|n| n.trim() == "sentry-worker")
        })
        .expect("the worker");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            status_field(worker, set),
            "0000000000000000",
            "worker {set}"
        );
    }
    // It detects and blocks.
    let target = TARGET_V4.to_string();
    let o = run(
        pair.net.command(Side::Scanner, "nmap").args([
            "-n",
            "-Pn",
            "--max-retries",
            "0",
            "-T4",
            "-sS",
            "-e",
            SCANNER_IF,
            "-p",
            "1-100",
            &target,
        ]),
        Duration::from_secs(60),
    );
    assert!(o.success(), "{o}");
    wait_until(
        Duration::from_secs(15),
        "10.203.0.1 in hosts.deny and the nft set",
        || {
            let hd = std::fs::read_to_string(d.join("hosts.deny")).unwrap_or_default();
            let nft = run(
                pair.net
                    .command(Side::Target, "nft")
                    .args(["list", "ruleset"]),
                Duration::from_secs(10),
            );
            (hd.contains("ALL: 10.203.0.1 : DENY") && nft.stdout.contains("10.203.0.1"))
                .then_some(())
        },
        || {
            format!(
                "{}\n{}",
                std::fs::read_to_string(d.join("pairlog/enforcer.log")).unwrap_or_default(),
                std::fs::read_to_string(d.join("pairlog/sensor.log")).unwrap_or_default()
            )
        },
    );
    // Root's shell appends the daemons' output: in a directory of root's alone, never in
    // the worker's log directory (where it could swap the file for a link).
    {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(d.join("pairlog")).unwrap();
        assert!(
            md.is_dir() && md.uid() == 0 && md.mode() & 0o022 == 0,
            "{md:?}"
        );
        assert!(std::fs::metadata(d.join("pairlog/enforcer.log")).is_ok());
    }
    let audit = read_audit(&d.join("log/audit.jsonl"));
    assert!(
        audit.iter().any(|r| r.decision == AuditDecision::Blocked),
        "audit: {audit:?}"
    );
    // stop: both gone.
    let out = pair.script("stop");
    assert!(out.success(), "stop: {out}");
    wait_until(
        Duration::from_secs(10),
        "both daemons to exit",
        || (!pid_alive(enf) && !pid_alive(sen)).then_some(()),
        String::new,
    );
}
