//! The real `sentry-sensor` alone, in the target namespace of a [`NetPair`], reporting to
//! a [`FakeEnforcer`](crate::FakeEnforcer) in its runtime directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{NetPair, Side};
use crate::{bins, ensure_sensor_user, SENSOR_USER};

static LOGS: AtomicU32 = AtomicU32::new(0);

/// A configuration file's text from `(key, value)` pairs; a later pair for the same key
/// replaces an earlier one (so `base.iter().chain(overrides)` works).
pub fn config_text<'a>(keys: impl IntoIterator<Item = &'a (&'a str, &'a str)>) -> String {
    let keys: BTreeMap<&str, &str> = keys.into_iter().copied().collect();
    keys.iter().map(|(k, v)| format!("{k}=\"{v}\"\n")).collect()
}

/// A runtime directory the `sentry` user can reach, holding `sentry.conf`.
#[derive(Debug)]
pub struct RunDir {
    pub dir: tempfile::TempDir,
}

impl RunDir {
    pub fn new(config: &str) -> RunDir {
        let dir = tempfile::Builder::new()
            .prefix("sentry-sensor-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let d = RunDir { dir };
        d.write("sentry.conf", config);
        d
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("sentry.conf")
    }

    /// Write a file in the directory; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

/// The running sensor; killed on drop. Its stderr goes to a file for assertions.
#[derive(Debug)]
pub struct SensorProc {
    pub child: Child,
    pub log: PathBuf,
}

impl SensorProc {
    /// The command line that starts the sensor in the target namespace as root, dropping
    /// to `--user sentry` itself, with `--log-stderr` and 200 ms stats.
    pub fn command(net: &NetPair, dir: &RunDir, modes: &[&str]) -> Command {
        ensure_sensor_user();
        let mut c = net.command(Side::Target, bins().sensor);
        c.arg("--config")
            .arg(dir.config())
            .arg("--runtime-dir")
            .arg(dir.path())
            .args(["--user", SENSOR_USER, "--log-stderr"])
            .args(["--stats-interval-ms", "200"])
            .args(modes);
        c
    }

    /// Start the sensor (see [`SensorProc::command`]) and wait until it is active.
    pub fn start(net: &NetPair, dir: &RunDir, modes: &[&str]) -> SensorProc {
        SensorProc::spawn(SensorProc::command(net, dir, modes), dir)
    }

    /// Spawn `c` with its output going to a log file in `dir`, and wait for
    /// `... is active` in that log.
    pub fn spawn(c: Command, dir: &RunDir) -> SensorProc {
        let s = SensorProc::spawn_quiet(c, dir);
        s.wait_log("is active", Duration::from_secs(10));
        s
    }

    /// Spawn `c`, output to a log file in `dir`, without waiting for anything.
    pub fn spawn_quiet(mut c: Command, dir: &RunDir) -> SensorProc {
        let log = dir.path().join(format!(
            "sensor-{}.log",
            LOGS.fetch_add(1, Ordering::SeqCst)
        ));
        let f = File::create(&log).expect("create sensor log");
        let child = c
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f)
            .spawn()
            .expect("spawn sensor");
        SensorProc { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`; panics with the log on timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "sensor log never contained {needle:?}:\n{}",
            self.log_text()
        );
    }
}

impl Drop for SensorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
