//! End-to-end test harness for sentry.
//!
//! Every test builds its own pair of network namespaces (a scanner and a target joined by
//! a veth pair with private addresses that exist only inside them), starts the real
//! `sentry-enforcer` as root and the real `sentry-sensor` as the unprivileged `sentry` user
//! holding only CAP_NET_RAW (the way the systemd unit does, via `setpriv`) inside the target
//! namespace, drives real scanners (nmap, hping3) from the scanner namespace, and observes
//! the result: the nftables set in the target namespace, the hosts.deny file, the audit log
//! and `sentryctl status --json`. Everything is torn down on drop, also when a test panics.
//!
//! The same kit serves the tests of one daemon alone:
//! - the enforcer alone: [`Sentry::prepare`] / [`Sentry::start`] with
//!   [`Settings::enforcer`] (plain root, no sensor), driven by a [`FakeSensor`] sending
//!   requests built with [`Req`];
//! - the sensor alone: [`SensorProc`] in a [`NetPair::with_extra_sources`], with a
//!   [`RunDir`] and a [`FakeEnforcer`] that records what the sensor sends.
//!
//! The audit log is read as typed [`AuditLine`]s ([`read_audit`], [`Sentry::audit`]),
//! which refuse unknown fields: a field the enforcer adds or renames fails the tests.
//! Root-only tests begin with [`require_root`], which prints `SKIPPED (needs root): ...`.
//!
//! Nothing here touches the root namespace's firewall, routes or /etc/hosts.deny.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cmd;
pub mod fake;
pub mod fleet;
pub mod netns;
pub mod nspawn;
pub mod req;
pub mod router;
pub mod sensor;
pub mod sentry;
pub mod state;

pub use audit::{
    read_audit, ActionKind, ActionStatus, AuditAction, AuditDecision, AuditLine, RestoreCounts,
};
pub use cmd::{run, run_ok, wait_until, Output};
pub use fake::{FakeEnforcer, FakeSensor, Seen};
pub use netns::{NetPair, Side};
pub use req::{now_ms, now_us, Req};
pub use sensor::{config_text, RunDir, SensorProc};
pub use sentry::{Sentry, Settings};

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Name of the unprivileged user the sensor runs as.
pub const SENSOR_USER: &str = "sentry";

/// Returns `true` when the test may go on. Not root: prints a visible skip line and returns
/// `false` — unless `CI=true`, where a skipped root test is a failure (CI runs as root and
/// must never pass by skipping).
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true forbids skipping root tests");
    }
    skipped(&format!("SKIPPED (needs root): {test}"));
    false
}

/// Returns `true` when `tool` is on PATH; otherwise prints why the test cannot run. Under
/// `CI=true` a missing tool is a failure (.ci/run installs them).
pub fn require_tool(test: &str, tool: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: `{tool}` is not installed, and CI=true forbids skipping (.ci/run installs it)"
        );
    }
    let package = match tool {
        "nft" => "nftables",
        "route" => "net-tools",
        "systemd-analyze" | "systemd-tmpfiles" => "systemd",
        "ip" => "iproute2",
        "setpriv" => "util-linux",
        other => other,
    };
    skipped(&format!(
        "SKIPPED (needs {tool}; apt-get install -y {package}): {test}"
    ));
    false
}

/// Print a skip notice straight to the process's stderr: the test harness captures
/// `eprintln!` output of passing tests, and a skip must be visible in `make test` output.
pub fn skipped(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Full path of an executable found on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Paths of the three real binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub sensor: PathBuf,
    /// The root parent; it starts `worker` (found beside it) as [`WORKER_USER`].
    pub enforcer: PathBuf,
    pub worker: PathBuf,
    pub sentryctl: PathBuf,
}

/// The directory holding the workspace's binaries: `$SENTRY_BIN_DIR`, else the cargo target
/// directory of this test executable (`target/debug/deps/<test>` → `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SENTRY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Locate the real binaries; fail with the command that builds them.
pub fn bins() -> Bins {
    let dir = bin_dir();
    let find = |name: &str| {
        let p = dir.join(name);
        assert!(
            p.is_file(),
            "{} not found: run `cargo build --workspace --bins` first (or set SENTRY_BIN_DIR)",
            p.display()
        );
        p
    };
    Bins {
        sensor: find("sentry-sensor"),
        enforcer: find("sentry-enforcer"),
        worker: find("sentry-worker"),
        sentryctl: find("sentryctl"),
    }
}

static USER_LOCK: Mutex<()> = Mutex::new(());

/// The enforcer's unprivileged worker runs as this user (`--worker-user`'s default).
pub const WORKER_USER: &str = "sentry-worker";

/// Create the `sentry` system user if it is missing (as `make install` does) and return its
/// uid and primary gid.
pub fn ensure_sensor_user() -> (u32, u32) {
    ensure_user(SENSOR_USER)
}

/// The same for the worker's user.
pub fn ensure_worker_user() -> (u32, u32) {
    ensure_user(WORKER_USER)
}

fn ensure_user(name: &str) -> (u32, u32) {
    let _guard = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for attempt in 0..3 {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            return (u.uid.as_raw(), u.gid.as_raw());
        }
        // Another test binary may be creating it at the same moment: the loser's useradd
        // fails with "already exists" and the next lookup succeeds.
        let _ = run(
            std::process::Command::new("useradd").args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ]),
            Duration::from_secs(30),
        );
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    panic!("cannot create the `{name}` user");
}

/// The fields of `/proc/<pid>/status` (`CapEff`, `Uid`, `Seccomp`, ...), values trimmed;
/// empty when the process is gone.
pub fn proc_fields(pid: u32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}
