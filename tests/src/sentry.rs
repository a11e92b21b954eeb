//! The real enforcer + sensor pair running in the target namespace, and what tests observe.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sentry_proto::{Mode, Protocol};
use serde_json::Value;

use crate::audit::{read_audit, ActionStatus, AuditDecision, AuditLine};
use crate::cmd::{run, wait_until, Output};
use crate::fake::FakeSensor;
use crate::netns::{NetPair, Side};
use crate::{bins, ensure_sensor_user, proc_fields, Bins, SENSOR_USER};

/// How long a daemon may take to come up, and a detection to land. Generous for a loaded
/// 2-core CI machine (a debug-build enforcer restoring 100,000 blocks at the MAX_BLOCKS
/// bound takes several seconds); every wait polls and returns as soon as the condition
/// holds.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(15);
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(90);

/// The nftables table name every test uses (inside its own target namespace).
pub const NFT_TABLE: &str = "sentry";

/// Configuration of one test run: PortSentry-syntax keys, ignore entries, sensor modes.
#[derive(Debug, Clone)]
pub struct Settings {
    pub keys: BTreeMap<String, String>,
    pub ignore: Vec<String>,
    pub modes: Vec<String>,
    /// Start the sensor at all (the hostile-client tests talk to the enforcer alone).
    pub start_sensor: bool,
    /// A configuration file used as-is (a PortSentry file), except that the harness's
    /// file locations and the keys in `keys` replace the lines that set them.
    pub raw: Option<String>,
    /// Run both daemons under `strace -f` (traces in the test directory), to compare the
    /// system calls and socket families they really use with what the units allow.
    pub strace: bool,
    /// Extra arguments for the sensor, before its modes (e.g. `--stats-interval-ms 200`).
    pub sensor_args: Vec<String>,
    /// Start the enforcer confined as its unit confines it (setpriv: capability bounding
    /// set, the sensor's group). `false`: as plain root, so that what is observed is the
    /// enforcer's own dropping of privileges (the enforcer integration tests).
    pub confined: bool,
    /// The enforcer's `--sensor-user`.
    pub sensor_user: String,
    /// More command-line arguments for the enforcer (e.g. `--infra-root DIR`).
    pub enforcer_args: Vec<String>,
}

impl Settings {
    /// Test defaults: block on the first probe, nftables in the target namespace,
    /// hosts.deny and the audit log in the test's temporary directory.
    pub fn new(modes: &[&str]) -> Settings {
        let keys = [
            (
                "TCP_PORTS",
                "1,11,15,79,111,119,143,540,635,1080,1524,2000,12345,31337",
            ),
            ("UDP_PORTS", "1,7,9,69,161,162,513,635,640,700,31337"),
            ("ADVANCED_PORTS_TCP", "1024"),
            ("ADVANCED_PORTS_UDP", "1024"),
            ("ADVANCED_EXCLUDE_TCP", "113,139"),
            ("ADVANCED_EXCLUDE_UDP", "520,138,137,67"),
            ("RESOLVE_HOST", "0"),
            ("BLOCK_TCP", "1"),
            ("BLOCK_UDP", "1"),
            ("KILL_HOSTS_DENY", "ALL: $TARGET$ : DENY"),
            ("FIREWALL", "nftables"),
            ("NFT_TABLE", NFT_TABLE),
            ("SCAN_TRIGGER", "0"),
            ("BLOCK_TIMEOUT", "0"),
            ("MAX_BLOCKS", "1000"),
            ("BLOCK_RATE", "600"),
        ];
        Settings {
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ignore: vec!["127.0.0.1".into(), "0.0.0.0".into()],
            modes: modes.iter().map(|m| m.to_string()).collect(),
            start_sensor: true,
            raw: None,
            strace: false,
            sensor_args: Vec::new(),
            confined: true,
            sensor_user: SENSOR_USER.into(),
            enforcer_args: Vec::new(),
        }
    }

    /// The enforcer alone, as plain root, talked to by a [`FakeSensor`] that runs as
    /// root (`--sensor-user root`): nftables and hosts.deny actions, TCP and UDP
    /// blocking, permanent blocks, 198.51.100.0/24 ignored. `keys` override (an empty
    /// value removes the key).
    pub fn enforcer(keys: &[(&str, &str)]) -> Settings {
        let mut s = Settings::new(&["stcp", "sudp"]).without_sensor();
        s.keys = [
            ("FIREWALL", "nftables"),
            ("NFT_TABLE", NFT_TABLE),
            ("BLOCK_TCP", "1"),
            ("BLOCK_UDP", "1"),
            ("KILL_HOSTS_DENY", "ALL: $TARGET$ : DENY"),
            ("KILL_TIMEOUT", "5"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        s.ignore = vec!["198.51.100.0/24".into()];
        s.confined = false;
        s.sensor_user = "root".into();
        s.with(keys)
    }

    /// Apply `(key, value)` pairs; an empty value removes the key.
    pub fn with(mut self, keys: &[(&str, &str)]) -> Settings {
        for (k, v) in keys {
            if v.is_empty() {
                self.keys.remove(*k);
            } else {
                self.keys.insert(k.to_string(), v.to_string());
            }
        }
        self
    }

    /// The enforcer's `--sensor-user`.
    pub fn sensor_user(mut self, user: &str) -> Settings {
        self.sensor_user = user.to_string();
        self
    }

    /// An existing PortSentry configuration, kept line for line; only the file locations
    /// (and keys later given with [`Settings::set`]) are redirected into the test's
    /// directory, so nothing outside it is written.
    pub fn portsentry(text: &str, modes: &[&str]) -> Settings {
        let mut s = Settings::new(modes);
        s.keys.clear();
        s.raw = Some(text.to_string());
        s
    }

    pub fn set(mut self, key: &str, value: &str) -> Settings {
        self.keys.insert(key.to_string(), value.to_string());
        self
    }

    pub fn unset(mut self, key: &str) -> Settings {
        self.keys.remove(key);
        self
    }

    pub fn ignore(mut self, entry: &str) -> Settings {
        self.ignore.push(entry.to_string());
        self
    }

    pub fn traced(mut self) -> Settings {
        self.strace = true;
        self
    }

    pub fn without_sensor(mut self) -> Settings {
        self.start_sensor = false;
        self
    }

    /// No real sensor: the hostile client (`sentry-hostile`, [`Sentry::hostile`]) plays
    /// it. The enforcer is told that it is the sensor binary, so the hostile client of the
    /// sensor's uid passes the peer check (issue #21) and reaches the protocol checks
    /// those tests are about, as a compromised sensor would. (Root clients are never
    /// checked.)
    pub fn hostile_sensor(mut self) -> Settings {
        self.start_sensor = false;
        self.enforcer_args.push("--sensor-exe".into());
        self.enforcer_args.push(
            crate::bin_dir()
                .join("sentry-hostile")
                .display()
                .to_string(),
        );
        self
    }
}

/// One running pair. Dropping it stops both daemons and deletes the namespaces.
#[derive(Debug)]
pub struct Sentry {
    pub name: String,
    pub bins: Bins,
    pub settings: Settings,
    pub dir: tempfile::TempDir,
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
    pub conf: PathBuf,
    pub ignore_file: PathBuf,
    pub hosts_deny: PathBuf,
    pub audit_log: PathBuf,
    pub sensor_uid: u32,
    pub sensor_gid: u32,
    pub enforcer: Option<Child>,
    pub sensor: Option<Child>,
    /// The daemons' own pids (differ from the children's under strace); for the
    /// enforcer, the root parent's (signals go to it).
    enforcer_real: Option<u32>,
    /// The worker's pid: what `sentryctl status` reports (the process that serves the
    /// sockets, holds the state and the memory).
    worker: Option<u32>,
    sensor_real: Option<u32>,
    runs: u32,
    // Declared last: dropped after the processes are gone.
    pub net: NetPair,
}

fn world_readable(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn tail(path: &Path, max: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let start = s.len().saturating_sub(max);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

impl Sentry {
    /// Build the namespaces, write the configuration, start the enforcer, then (unless
    /// disabled) the sensor, and wait until `sentryctl status` shows the sensor connected.
    pub fn start(name: &str, settings: Settings) -> Sentry {
        let mut s = Sentry::prepare(name, settings);
        s.start_enforcer();
        if s.settings.start_sensor {
            s.start_sensor();
        }
        s
    }

    /// Namespaces, directories and files, but no daemon yet (a test may change the files
    /// first, then call [`Sentry::start_enforcer`]).
    pub fn prepare(name: &str, settings: Settings) -> Sentry {
        let bins = bins();
        let (sensor_uid, sensor_gid) = ensure_sensor_user();
        let net = NetPair::new();
        let dir = tempfile::Builder::new()
            // Short: socket paths must fit sun_path (108 bytes).
            .prefix(&format!("se2e-{}-", name.get(..20).unwrap_or(name)))
            .tempdir()
            .expect("tempdir");
        // The sensor (user `sentry`) reads the config and the ignore file and connects to
        // the enforcer socket; the state directory stays root-only.
        world_readable(dir.path(), 0o755);
        let runtime_dir = dir.path().join("run");
        let state_dir = dir.path().join("state");
        fs::create_dir(&runtime_dir).expect("mkdir run");
        fs::create_dir(&state_dir).expect("mkdir state");
        world_readable(&runtime_dir, 0o755);
        world_readable(&state_dir, 0o700);
        let conf = dir.path().join("sentry.conf");
        let ignore_file = dir.path().join("sentry.ignore");
        let hosts_deny = dir.path().join("hosts.deny");
        let audit_log = dir.path().join("audit.jsonl");
        fs::write(&hosts_deny, "# test hosts.deny\n").expect("write hosts.deny");
        world_readable(&hosts_deny, 0o644);
        let s = Sentry {
            name: name.to_string(),
            bins,
            settings,
            runtime_dir,
            state_dir,
            conf,
            ignore_file,
            hosts_deny,
            audit_log,
            sensor_uid,
            sensor_gid,
            enforcer: None,
            sensor: None,
            enforcer_real: None,
            worker: None,
            sensor_real: None,
            runs: 0,
            dir,
            net,
        };
        s.write_config();
        s
    }

    /// (Re)write the config and ignore files from `self.settings`.
    pub fn write_config(&self) {
        let mut text = format!(
            "# written by the sentry e2e harness for test {}\n",
            self.name
        );
        let mut keys = self.settings.keys.clone();
        keys.entry("IGNORE_FILE".into())
            .or_insert_with(|| self.ignore_file.display().to_string());
        keys.entry("HOSTS_DENY_FILE".into())
            .or_insert_with(|| self.hosts_deny.display().to_string());
        keys.entry("AUDIT_LOG".into())
            .or_insert_with(|| self.audit_log.display().to_string());
        keys.entry("HISTORY_FILE".into())
            .or_insert_with(|| self.state_dir.join("sentry.history").display().to_string());
        keys.entry("BLOCKED_FILE".into())
            .or_insert_with(|| self.state_dir.join("sentry.blocked").display().to_string());
        if let Some(raw) = &self.settings.raw {
            for line in raw.lines() {
                match config_key(line).and_then(|k| keys.remove_entry(k)) {
                    Some((k, v)) => text.push_str(&format!("{k}=\"{v}\"\n")),
                    None => {
                        text.push_str(line);
                        text.push('\n');
                    }
                }
            }
        }
        for (k, v) in &keys {
            text.push_str(&format!("{k}=\"{v}\"\n"));
        }
        fs::write(&self.conf, text).expect("write config");
        world_readable(&self.conf, 0o644);
        let mut ig = String::from("# ignore list\n");
        for e in &self.settings.ignore {
            ig.push_str(e);
            ig.push('\n');
        }
        fs::write(&self.ignore_file, ig).expect("write ignore");
        world_readable(&self.ignore_file, 0o644);
    }

    fn log_path(&self, what: &str, run: u32) -> PathBuf {
        self.dir.path().join(format!("{what}.{run}.log"))
    }

    fn log_file(&mut self, what: &str) -> (fs::File, fs::File) {
        self.runs += 1;
        let p = self.log_path(what, self.runs);
        let f = fs::File::create(&p).expect("create log");
        (f.try_clone().expect("dup log"), f)
    }

    /// Start the enforcer as root inside the target namespace and wait for its control socket.
    pub fn start_enforcer(&mut self) {
        self.spawn_enforcer();
        let st = wait_until(
            START_TIMEOUT,
            "the enforcer to answer `sentryctl status`",
            || {
                self.assert_alive();
                self.try_status().ok()
            },
            || self.diag(),
        );
        self.worker = st
            .get("pid")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok());
        // The worker's parent is the root parent: the process every signal goes to.
        self.enforcer_real = self
            .worker
            .and_then(|w| Sentry::proc_status(w, "PPid"))
            .and_then(|p| p.trim().parse().ok());
    }

    /// Make the worker's files its own, as the installers do on a real host (the
    /// tmpfiles.d snippet, tests/scripts/sentry-pair.sh): the enforcer only checks them
    /// (issue #22). The state directory and the configuration's directories of AUDIT_LOG,
    /// HISTORY_FILE and BLOCKED_FILE are made when missing (0700; the audit log's 0750);
    /// the state directory, each directory made or named `sentry`, and those three files
    /// (created empty when missing) become the worker's, and so does what the test wrote
    /// as root into the state directory (regular files with one link and directories: a
    /// link is never followed). Before each start, since a test may move the files or
    /// write into the state directory between starts. A configuration that does not load
    /// is left to the enforcer to refuse.
    pub fn give_worker_files(&self) {
        use nix::unistd::{chown, Gid, Uid};
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let (uid, gid) = crate::ensure_worker_user();
        let give = |p: &Path| {
            chown(p, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        };
        let cfg = policy::Config::load(&self.conf).ok();
        let mut dirs = vec![(self.state_dir.clone(), 0o700)];
        dirs.extend(cfg.iter().flat_map(sentry_client::check::created_dirs));
        for (i, (d, mode)) in dirs.iter().enumerate() {
            let made = !d.exists();
            if made {
                fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
                world_readable(d, *mode);
            }
            if i == 0 || made || d.file_name().is_some_and(|n| n == "sentry") {
                give(d);
            }
        }
        for e in fs::read_dir(&self.state_dir).expect("read the state directory") {
            let p = e.expect("state directory entry").path();
            let md = fs::symlink_metadata(&p).expect("stat");
            if md.is_dir() || (md.is_file() && md.nlink() == 1) {
                give(&p);
            }
        }
        let Some(cfg) = cfg else { return };
        for (key, f) in cfg.worker_files() {
            let Some(f) = f else { continue };
            let mode = if key == "AUDIT_LOG" { 0o640 } else { 0o600 };
            // A test may put something else there on purpose: only regular files.
            let opened = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(mode)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(f);
            if opened.is_ok_and(|f| f.metadata().is_ok_and(|m| m.is_file())) {
                give(f);
            }
        }
    }

    /// Spawn the enforcer (the root parent, which starts its worker) without waiting for
    /// anything; the worker's files are made its own first ([`Sentry::give_worker_files`]).
    pub fn spawn_enforcer(&mut self) {
        assert!(self.enforcer.is_none(), "enforcer already running");
        self.give_worker_files();
        let (out, err) = self.log_file("enforcer");
        let mut c = if self.settings.confined {
            self.confined_enforcer()
        } else {
            let mut c = self.net.command(Side::Target, &self.bins.enforcer);
            c.env_remove("LD_LIBRARY_PATH");
            c
        };
        c.arg("--config")
            .arg(&self.conf)
            .arg("--runtime-dir")
            .arg(&self.runtime_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--sensor-user", &self.settings.sensor_user, "--log-stderr"])
            .args(&self.settings.enforcer_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = c.spawn().expect("spawn enforcer");
        self.enforcer = Some(child);
    }

    /// `ip netns exec <target> [strace] setpriv ... sentry-enforcer`, confined as the
    /// unit confines it.
    fn confined_enforcer(&self) -> Command {
        // Confined as the systemd unit confines it: capability bounding set CAP_NET_ADMIN
        // and what is named below; no CAP_NET_RAW (route, ip and iptables-nft need none),
        // no CAP_CHOWN (it gives enforcer.sock to the sensor's group as a member of that
        // group, SupplementaryGroups=sentry).
        // With CONTROL_GROUP, control.sock goes to that group too: the documented drop-in
        // adds it to SupplementaryGroups=, and so do we.
        let mut groups = self.sensor_gid.to_string();
        if let Some(g) = self.settings.keys.get("CONTROL_GROUP") {
            let gid = nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("CONTROL_GROUP {g} does not exist"))
                .gid;
            groups.push_str(&format!(",{gid}"));
        }
        let mut c = self.daemon_command("enforcer");
        // CAP_SYS_PTRACE: the sensor check reads the (not dumpable) sensor's
        // /proc/PID/exe. CAP_SETUID/SETGID: the parent starts (and restarts) its worker
        // as the worker's user, and signals it from a child that takes the worker's uid
        // (no CAP_KILL, as in the unit). No CAP_CHOWN, as in the unit and the run
        // script: the worker's files are its own before the start.
        c.args([
            "--bounding-set",
            "-all,+net_admin,+sys_ptrace,+setuid,+setgid",
            "--groups",
        ])
        .arg(groups)
        .arg(&self.bins.enforcer);
        c
    }

    /// Spawn the sensor exactly as [`Sentry::start_sensor`] does, without waiting for it
    /// to connect; returns the pid of the spawned process.
    pub fn spawn_sensor(&mut self) -> std::io::Result<u32> {
        assert!(self.sensor.is_none(), "sensor already running");
        let (out, err) = self.log_file("sensor");
        let mut c = self.daemon_command("sensor");
        c.args([
            "--reuid",
            SENSOR_USER,
            "--regid",
            SENSOR_USER,
            "--clear-groups",
            // As the unit: SecureBits=noroot-locked, CapabilityBoundingSet=CAP_NET_RAW.
            "--securebits",
            "+noroot,+noroot_locked",
            "--bounding-set",
            "-all,+net_raw",
            "--inh-caps",
            "-all,+net_raw",
            "--ambient-caps",
            "+net_raw",
            "--no-new-privs",
        ])
        .arg(&self.bins.sensor)
        .arg("--config")
        .arg(&self.conf)
        .arg("--runtime-dir")
        .arg(&self.runtime_dir)
        .arg("--log-stderr")
        .args(&self.settings.sensor_args)
        .args(
            self.settings
                .modes
                .iter()
                .map(|m| format!("-{}", m.trim_start_matches('-'))),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        let child = c.spawn()?;
        let pid = child.id();
        self.sensor = Some(child);
        Ok(pid)
    }

    /// Start the sensor as user `sentry` holding only CAP_NET_RAW (as the systemd unit
    /// does) inside the target namespace, and wait until the enforcer reports it connected.
    pub fn start_sensor(&mut self) {
        let pid = self.spawn_sensor().expect("spawn sensor");
        let previous = self.sensor_real.take();
        let traced = self.settings.strace;
        let real = wait_until(
            START_TIMEOUT,
            "the enforcer to report the sensor connected",
            || {
                self.assert_alive();
                let st = self.try_status().ok()?;
                let got = u32::try_from(st.get("sensor")?.get("pid")?.as_u64()?).ok()?;
                // Under strace the sensor is strace's child: any new sensor pid will do.
                (got == pid || (traced && Some(got) != previous)).then_some(got)
            },
            || self.diag(),
        );
        self.sensor_real = Some(real);
    }

    /// `ip netns exec <target> [strace -f -o TRACE] setpriv` — the start of both daemons'
    /// command lines.
    fn daemon_command(&self, what: &str) -> Command {
        let mut c = if self.settings.strace {
            self.net.command(Side::Target, "strace")
        } else {
            self.net.command(Side::Target, "setpriv")
        };
        // cargo points LD_LIBRARY_PATH at the toolchain for tests; systemd gives the
        // daemons a clean environment, so do we (as far as the loader is concerned).
        c.env_remove("LD_LIBRARY_PATH");
        if !self.settings.strace {
            return c;
        }
        c.args(["-f", "-qq", "-y", "-s", "256", "-o"])
            .arg(self.trace_path(what, self.runs))
            .arg("setpriv");
        c
    }

    /// Where the strace output of run `run` of `what` goes.
    pub fn trace_path(&self, what: &str, run: u32) -> PathBuf {
        self.dir.path().join(format!("{what}.{run}.strace"))
    }

    /// Every strace file written for `what` (`enforcer` or `sensor`).
    pub fn traces(&self, what: &str) -> Vec<PathBuf> {
        (1..=self.runs)
            .map(|i| self.trace_path(what, i))
            .filter(|p| p.exists())
            .collect()
    }

    /// Panic (with logs) if a daemon we started has exited (it is then a zombie child).
    pub fn assert_alive(&self) {
        for (what, child) in [("enforcer", &self.enforcer), ("sensor", &self.sensor)] {
            if let Some(c) = child {
                if !pid_alive(c.id()) {
                    panic!(
                        "{what} (pid {}) exited: {}\n{}",
                        c.id(),
                        zombie_exit(c.id()),
                        self.diag()
                    );
                }
            }
        }
    }

    /// The enforcer's own pid.
    /// The worker's pid (what `sentryctl status` reports).
    pub fn enforcer_pid(&self) -> u32 {
        assert!(self.enforcer.is_some(), "enforcer not running");
        self.worker.expect("enforcer pid known")
    }

    /// The root parent's pid.
    pub fn parent_pid(&self) -> u32 {
        assert!(self.enforcer.is_some(), "enforcer not running");
        self.enforcer_real.expect("enforcer pid known")
    }

    /// The worker the parent runs now (after a restart, not the one it started first),
    /// taken as the pid `sentryctl status` names, and signalled at stop from then on.
    pub fn worker_restarted(&mut self, pid: u32) {
        self.enforcer_real = Some(pid);
    }

    /// The sensor's own pid.
    pub fn sensor_pid(&self) -> u32 {
        assert!(self.sensor.is_some(), "sensor not running");
        self.sensor_real.expect("sensor pid known")
    }

    /// Signal the daemon itself (`real`, which under strace is not our child), then wait
    /// for our child to finish; SIGKILL it after 5 s.
    fn kill(
        child: &mut Option<Child>,
        real: &mut Option<u32>,
        sig: nix::sys::signal::Signal,
    ) -> Option<std::process::ExitStatus> {
        let mut c = child.take()?;
        let target = real.take().unwrap_or(c.id());
        let pid = nix::unistd::Pid::from_raw(i32::try_from(target).ok()?);
        let _ = nix::sys::signal::kill(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop both daemons with SIGTERM and wait for them (and any strace) to finish.
    pub fn stop_all(&mut self) {
        Self::kill(
            &mut self.sensor,
            &mut self.sensor_real,
            nix::sys::signal::Signal::SIGTERM,
        );
        Self::kill(
            &mut self.enforcer,
            &mut self.enforcer_real,
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    /// SIGKILL the enforcer (nothing gets to run: no destructor, no flush).
    pub fn kill_enforcer(&mut self) {
        Self::kill(
            &mut self.enforcer,
            &mut self.enforcer_real,
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    pub fn kill_sensor(&mut self) {
        Self::kill(
            &mut self.sensor,
            &mut self.sensor_real,
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// SIGTERM the enforcer and return its exit status.
    pub fn stop_enforcer(&mut self) -> Option<std::process::ExitStatus> {
        Self::kill(
            &mut self.enforcer,
            &mut self.enforcer_real,
            nix::sys::signal::Signal::SIGTERM,
        )
    }

    // ---- sentryctl ------------------------------------------------------------------

    pub fn sentryctl(&self, args: &[&str]) -> Output {
        run(
            Command::new(&self.bins.sentryctl)
                .arg("--runtime-dir")
                .arg(&self.runtime_dir)
                .args(args),
            Duration::from_secs(10),
        )
    }

    pub fn try_status(&self) -> Result<Value, String> {
        let out = self.sentryctl(&["status", "--json"]);
        if !out.success() {
            return Err(out.to_string());
        }
        serde_json::from_str(&out.stdout).map_err(|e| format!("status --json: {e}: {out}"))
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|e| panic!("sentryctl status failed: {e}\n{}", self.diag()))
    }

    /// A counter from `sentryctl status --json` (`counters.<name>`).
    pub fn counter(&self, name: &str) -> u64 {
        let st = self.status();
        st.pointer(&format!("/counters/{name}"))
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("status has no counters.{name}: {st}"))
    }

    /// Addresses listed by `sentryctl blocked --json`.
    pub fn blocked_list(&self) -> BTreeSet<IpAddr> {
        let out = self.sentryctl(&["blocked", "--json"]);
        assert!(out.success(), "sentryctl blocked: {out}");
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("blocked --json: {e}: {out}"));
        let mut set = BTreeSet::new();
        collect_addrs(&v, &mut set);
        set
    }

    // ---- what the enforcer did ------------------------------------------------------

    /// Every address in any set of the target namespace's nftables ruleset.
    pub fn nft_elements(&self) -> BTreeSet<IpAddr> {
        let out = run(
            self.net
                .command(Side::Target, "nft")
                .args(["-j", "list", "ruleset"]),
            Duration::from_secs(10),
        );
        let mut set = BTreeSet::new();
        if !out.success() {
            return set;
        }
        let Ok(v) = serde_json::from_str::<Value>(&out.stdout) else {
            return set;
        };
        for item in v
            .get("nftables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Only the block sets: the detection chain's ignore sets hold addresses too.
            let name = item.pointer("/set/name").and_then(Value::as_str);
            if !matches!(name, Some("v4" | "v6" | "v6net")) {
                continue;
            }
            if let Some(elems) = item.pointer("/set/elem") {
                collect_addrs(elems, &mut set);
            }
        }
        set
    }

    /// The nftables ruleset of the target namespace, as text (for diagnostics).
    pub fn nft_ruleset(&self) -> String {
        let out = run(
            self.net
                .command(Side::Target, "nft")
                .args(["list", "ruleset"]),
            Duration::from_secs(10),
        );
        out.stdout + &out.stderr
    }

    pub fn hosts_deny_text(&self) -> String {
        fs::read_to_string(&self.hosts_deny).unwrap_or_default()
    }

    /// The hosts.deny line the default template gives `ip` (IPv6 in brackets).
    pub fn hosts_deny_line(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(a) => format!("ALL: {a} : DENY"),
            IpAddr::V6(a) => format!("ALL: [{a}] : DENY"),
        }
    }

    pub fn hosts_deny_has(&self, ip: IpAddr) -> bool {
        let want = Self::hosts_deny_line(ip);
        self.hosts_deny_text().lines().any(|l| l.trim() == want)
    }

    /// Every audit record; a line that is not an [`AuditLine`] fails the test.
    pub fn audit(&self) -> Vec<AuditLine> {
        read_audit(&self.audit_log)
    }

    /// Audit records about `ip` with the given decision.
    pub fn audit_for(&self, ip: IpAddr, decision: AuditDecision) -> Vec<AuditLine> {
        self.audit()
            .into_iter()
            .filter(|r| r.is(ip, decision))
            .collect()
    }

    /// Wait until `ip` is blocked everywhere it should be: an element of the nftables set,
    /// its hosts.deny line, and a `blocked` audit record (returned).
    pub fn wait_blocked(&self, ip: IpAddr) -> AuditLine {
        wait_until(
            DETECT_TIMEOUT,
            &format!("{ip} to be blocked (nft set + hosts.deny + audit)"),
            || {
                self.assert_alive();
                if !self.nft_elements().contains(&ip) || !self.hosts_deny_has(ip) {
                    return None;
                }
                self.audit_for(ip, AuditDecision::Blocked)
                    .into_iter()
                    .next()
            },
            || self.diag(),
        )
    }

    /// Wait for an audit record about `ip` with `decision`.
    pub fn wait_decision(&self, ip: IpAddr, decision: AuditDecision) -> AuditLine {
        self.wait_decision_within(ip, decision, DETECT_TIMEOUT)
    }

    /// The `blocked` record of `ip` with every action of its block: the ones run in the
    /// decision and, when the record says some run after it (issue #21), those of its
    /// `effects` record, appended in the order they ran.
    pub fn wait_block_actions(&self, ip: IpAddr) -> AuditLine {
        let mut rec = self.wait_decision(ip, AuditDecision::Blocked);
        if rec.reason.contains("audited as `effects`") {
            let effects = self.wait_decision(ip, AuditDecision::Effects);
            rec.actions.extend(effects.actions);
        }
        rec
    }

    /// Like [`Sentry::wait_decision`] with an explicit timeout.
    pub fn wait_decision_within(
        &self,
        ip: IpAddr,
        decision: AuditDecision,
        timeout: Duration,
    ) -> AuditLine {
        wait_until(
            timeout,
            &format!("an audit record `{decision:?}` for {ip}"),
            || {
                self.assert_alive();
                self.audit_for(ip, decision).into_iter().next()
            },
            || self.diag(),
        )
    }

    /// Assert `ip` is blocked nowhere (set, hosts.deny, sentryctl blocked).
    pub fn assert_not_blocked(&self, ip: IpAddr) {
        assert!(
            !self.nft_elements().contains(&ip),
            "{ip} is in the nft set\n{}",
            self.diag()
        );
        assert!(
            !self.hosts_deny_has(ip),
            "{ip} is in hosts.deny\n{}",
            self.diag()
        );
        assert!(
            !self.blocked_list().contains(&ip),
            "{ip} is listed by sentryctl blocked"
        );
        assert!(
            self.audit_for(ip, AuditDecision::Blocked).is_empty(),
            "{ip} has a `blocked` audit record"
        );
    }

    /// Everything useful for understanding a failure.
    /// Run the hostile client (`sentry-hostile`, tests/src/bin) against the enforcer
    /// socket, as the sensor user (no capabilities) or as root, and return its JSON report.
    pub fn hostile(&self, as_sensor_user: bool, args: &[&str], limit: Duration) -> Value {
        let bin = crate::bin_dir().join("sentry-hostile");
        let mut c = if as_sensor_user {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                SENSOR_USER,
                "--regid",
                SENSOR_USER,
                "--clear-groups",
            ])
            .args(["--inh-caps", "-all"])
            .arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        c.arg(self.runtime_dir.join("enforcer.sock")).args(args);
        let out = run(&mut c, limit);
        assert!(out.success(), "hostile client: {out}\n{}", self.diag());
        serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("hostile output {e}: {out}\n{}", self.diag()))
    }

    pub fn diag(&self) -> String {
        let mut s = format!(
            "==== diagnostics for test `{}` (dir {})\n",
            self.name,
            self.dir.path().display()
        );
        for i in 1..=self.runs {
            for what in ["enforcer", "sensor"] {
                let p = self.log_path(what, i);
                if p.exists() {
                    s.push_str(&format!(
                        "---- {} (last 3000 bytes)\n{}\n",
                        p.display(),
                        tail(&p, 3000)
                    ));
                }
            }
        }
        s.push_str(&format!(
            "---- audit log (last 3000 bytes)\n{}\n",
            tail(&self.audit_log, 3000)
        ));
        s.push_str(&format!("---- hosts.deny\n{}\n", self.hosts_deny_text()));
        s.push_str(&format!(
            "---- nft ruleset (target)\n{}\n",
            self.nft_ruleset()
        ));
        match self.try_status() {
            Ok(v) => s.push_str(&format!("---- status\n{v}\n")),
            Err(e) => s.push_str(&format!("---- status unavailable\n{e}\n")),
        }
        s
    }

    // ---- scanners -------------------------------------------------------------------

    /// Run a program in the scanner namespace with a deadline.
    pub fn scan(&self, program: &str, args: &[&str]) -> Output {
        run(
            self.net.command(Side::Scanner, program).args(args),
            SCAN_TIMEOUT,
        )
    }

    /// nmap from the scanner namespace, bounded in time and retries, that must exit 0 but
    /// may get no answer at all (no check that anything reached the target).
    pub fn nmap_any(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "-n",
            "-Pn",
            "--max-retries",
            "0",
            "--host-timeout",
            "60s",
            "-T4",
        ];
        all.extend_from_slice(args);
        let out = self.scan("nmap", &all);
        assert!(out.success(), "nmap failed: {out}\n{}", self.diag());
        out
    }

    /// nmap from the scanner namespace, bounded in time and retries. The scan is expected to
    /// run to completion (blocked ports simply show as filtered).
    pub fn nmap(&self, args: &[&str]) -> Output {
        self.count_arrivals();
        let out = self.nmap_any(args);
        // With the kernel's first hit not even the first probe is answered, so what proves
        // that the scan reached the target is the target's own count of arriving packets.
        let n = self.arrivals();
        assert!(
            n > 0,
            "no packet of the scan reached the target: {out}\n{}",
            self.diag()
        );
        out
    }

    /// (Re)create the kit's own table in the target namespace: one counter of the TCP,
    /// UDP, SCTP and ICMP packets arriving on a non-loopback interface, counted before
    /// defragmentation and before any of sentry's chains (priority -450).
    pub fn count_arrivals(&self) {
        let script = "table inet sentrykit {}\ndelete table inet sentrykit\n\
            table inet sentrykit {\n counter arrived {}\n chain pre {\n  type filter hook prerouting priority -450; policy accept;\n  iifname != \"lo\" counter name arrived\n }\n}\n";
        let path = self.path("kit-counter.nft");
        std::fs::write(&path, script).expect("write the kit's nft script");
        let out = run(
            self.net.command(Side::Target, "nft").arg("-f").arg(&path),
            Duration::from_secs(10),
        );
        assert!(out.success(), "kit counter table: {out}");
    }

    /// Packets counted since [`Sentry::count_arrivals`] (0 when the table is gone, e.g.
    /// after a test flushed the ruleset).
    pub fn arrivals(&self) -> u64 {
        self.nft_counter("sentrykit", "arrived")
    }

    /// (Re)create table `answers` in the target namespace: one counter of the packets the
    /// target sends that match any of `rules` (nft expressions, in its output hook): what
    /// a scanner sees as answers, measured where they leave, not inferred from nmap.
    pub fn count_answers(&self, rules: &[&str]) {
        let mut script = "table inet answers {}\ndelete table inet answers\n\
            table inet answers {\n counter sent {}\n set ports { type inet_service; flags dynamic; size 65536; }\n chain out {\n  type filter hook output priority 0; policy accept;\n"
            .to_string();
        for r in rules {
            // The answering port too (for ICMP, its type and code), so a test can say
            // which ports answered, not only how many.
            script.push_str(&format!(
                "  {r} counter name sent add @ports {{ th sport }}\n"
            ));
        }
        script.push_str(" }\n}\n");
        let path = self.path("answers.nft");
        std::fs::write(&path, script).expect("write the answers table");
        let out = run(
            self.net.command(Side::Target, "nft").arg("-f").arg(&path),
            Duration::from_secs(10),
        );
        assert!(out.success(), "answers table: {out}");
    }

    /// Packets counted since [`Sentry::count_answers`].
    pub fn answers(&self) -> u64 {
        self.nft_counter("answers", "sent")
    }

    /// The source ports of the answers counted since [`Sentry::count_answers`] (as nft
    /// lists the set's elements).
    pub fn answered_ports(&self) -> String {
        let out = run(
            self.net
                .command(Side::Target, "nft")
                .args(["list", "set", "inet", "answers", "ports"]),
            Duration::from_secs(10),
        );
        out.stdout
            .split_once("elements = {")
            .and_then(|(_, e)| e.split_once('}'))
            .map_or_else(String::new, |(e, _)| {
                e.split_whitespace().collect::<Vec<_>>().join(" ")
            })
    }

    /// A named counter of table `inet TABLE` in the target namespace (0 when missing).
    fn nft_counter(&self, table: &str, counter: &str) -> u64 {
        let out = run(
            self.net
                .command(Side::Target, "nft")
                .args(["-j", "list", "counter", "inet", table, counter]),
            Duration::from_secs(10),
        );
        serde_json::from_str::<Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                v.get("nftables")?
                    .as_array()?
                    .iter()
                    .find_map(|i| i.pointer("/counter/packets")?.as_u64())
            })
            .unwrap_or(0)
    }

    /// hping3 from the scanner namespace (always give it `-c N`).
    pub fn hping(&self, args: &[&str]) -> Output {
        assert!(args.contains(&"-c"), "hping3 must be bounded with -c");
        let out = self.scan("hping3", args);
        // hping3 exits 1 when no reply came back (e.g. the target already dropped us).
        assert!(
            !out.timed_out && out.status.and_then(|s| s.code()).is_some_and(|c| c <= 1),
            "hping3 failed: {out}\n{}",
            self.diag()
        );
        out
    }

    /// Concatenated stderr of every sensor run (its log under --log-stderr).
    pub fn sensor_log(&self) -> String {
        (1..=self.runs)
            .map(|i| self.log_path("sensor", i))
            .filter(|p| p.exists())
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    pub fn enforcer_log(&self) -> String {
        (1..=self.runs)
            .map(|i| self.log_path("enforcer", i))
            .filter(|p| p.exists())
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// A field of `/proc/<pid>/status` (e.g. `VmRSS`, `CapEff`).
    pub fn proc_status(pid: u32, field: &str) -> Option<String> {
        proc_fields(pid).remove(field)
    }

    /// Resident memory of a process in KiB.
    pub fn rss_kib(pid: u32) -> u64 {
        Self::proc_status(pid, "VmRSS")
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
    }

    /// Append a line to the test's diagnostics file (kept with the logs).
    pub fn note(&self, text: &str) {
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("notes.log"))
        {
            let _ = writeln!(f, "{text}");
        }
    }
}

impl Drop for Sentry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diag());
        }
        Self::kill(
            &mut self.sensor,
            &mut self.sensor_real,
            nix::sys::signal::Signal::SIGTERM,
        );
        Self::kill(
            &mut self.enforcer,
            &mut self.enforcer_real,
            nix::sys::signal::Signal::SIGTERM,
        );
        // `net` (namespaces, veth pair, nftables table) and `dir` are dropped next.
    }
}

/// The key a configuration line sets (`NAME=...` or `NAME = ...` at the line start).
fn config_key(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim_end();
    (!k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
    .then_some(k)
}

/// Whether `pid` is a live (not zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ..." — comm may contain spaces and parentheses; the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// How a zombie child died, from the `exit_code` field of `/proc/<pid>/stat`.
pub fn zombie_exit(pid: u32) -> String {
    let code = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.split_whitespace().last()?.parse::<i32>().ok());
    match code {
        Some(c) if c & 0x7f != 0 => format!("killed by signal {}", c & 0x7f),
        Some(c) => format!("exit status {}", (c >> 8) & 0xff),
        None => "unknown".into(),
    }
}

/// Every string anywhere in `v` that parses as an IP address (nft elements may be plain
/// strings or objects carrying timeouts).
fn collect_addrs(v: &Value, out: &mut BTreeSet<IpAddr>) {
    match v {
        Value::String(s) => {
            if let Ok(ip) = s.parse() {
                out.insert(ip);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_addrs(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_addrs(x, out)),
        _ => {}
    }
}

/// Assert an audit record describes a block of `ip` for this detection (`scan` may be
/// `"*"` for any kind).
pub fn assert_block_record(
    rec: &AuditLine,
    ip: IpAddr,
    protocol: Protocol,
    scan: &str,
    mode: Mode,
) {
    assert_eq!(rec.source, Some(ip), "source: {rec:?}");
    assert_eq!(rec.decision, AuditDecision::Blocked, "decision: {rec:?}");
    assert_eq!(rec.protocol, Some(protocol), "protocol: {rec:?}");
    let kind = rec.scan.as_deref().unwrap_or_default();
    // "*": any TCP probe kind (a tiny first fragment carries ports but not the flags).
    if scan != "*" {
        assert_eq!(kind, scan, "scan kind: {rec:?}");
    } else {
        assert!(!kind.is_empty(), "scan kind: {rec:?}");
    }
    assert_eq!(rec.mode, Some(mode), "mode: {rec:?}");
    assert!(rec.port.is_some_and(|p| p >= 1), "port: {rec:?}");
    let time = &rec.time;
    assert!(
        time.len() >= 20 && time.ends_with('Z') && time.contains('T'),
        "time not RFC 3339 UTC: {rec:?}"
    );
    assert!(rec.peer.is_some(), "peer: {rec:?}");
    assert!(!rec.actions.is_empty(), "a block with no actions: {rec:?}");
}

impl Sentry {
    /// The whole "detected and blocked" contract for one scanner address: nft element,
    /// hosts.deny line, audit record, `sentryctl status --json` / `blocked --json`, and a
    /// PortSentry-style alert line from the sensor. Returns the audit record.
    pub fn assert_scan_blocked(
        &self,
        ip: IpAddr,
        protocol: Protocol,
        scan: &str,
        mode: Mode,
    ) -> AuditLine {
        let rec = self.wait_blocked(ip);
        assert_block_record(&rec, ip, protocol, scan, mode);
        // The request came from the real sensor (SO_PEERCRED), and every action worked.
        assert_eq!(
            rec.peer.map(|p| p.uid),
            Some(self.sensor_uid),
            "peer: {rec:?}"
        );
        for a in &rec.actions {
            assert_eq!(a.status, ActionStatus::Ok, "action failed: {rec:?}");
        }
        // `sentryctl status --json` counts exactly the blocks the audit log shows.
        wait_until(
            Duration::from_secs(5),
            "status counters to match the audit log",
            || {
                let st = self.status();
                let audited = self
                    .audit()
                    .iter()
                    .filter(|r| r.decision == AuditDecision::Blocked)
                    .count() as u64;
                let blocked = st.pointer("/counters/blocked").and_then(Value::as_u64)?;
                let active = st.get("active_blocks").and_then(Value::as_u64)?;
                (blocked == audited && active >= 1).then_some(())
            },
            || self.diag(),
        );
        assert!(
            self.blocked_list().contains(&ip),
            "sentryctl blocked does not list {ip}"
        );
        let log = self.sensor_log();
        assert!(
            log.lines().any(|l| l.contains("attackalert:")
                && l.contains(&ip.to_string())
                && l.contains("port:")),
            "no PortSentry-style attackalert line for {ip} in the sensor log\n{}",
            self.diag()
        );
        rec
    }
}

/// Talking to the enforcer as a (fake) sensor, and what the enforcer integration tests
/// look at directly.
impl Sentry {
    /// A file or directory in the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn sensor_sock(&self) -> PathBuf {
        self.runtime_dir.join("enforcer.sock")
    }

    pub fn control_sock(&self) -> PathBuf {
        self.runtime_dir.join("control.sock")
    }

    /// Connect to the sensor socket (no handshake).
    pub fn connect(&self) -> FakeSensor {
        FakeSensor::connect(&self.sensor_sock())
    }

    /// Connect and complete the handshake, retrying while the enforcer still holds the
    /// slot of a sensor connection it has just closed.
    pub fn connect_welcomed(&self) -> FakeSensor {
        FakeSensor::welcomed(&self.sensor_sock())
    }

    /// Whether the enforcer we started still runs (not a zombie).
    pub fn enforcer_alive(&self) -> bool {
        self.enforcer.as_ref().is_some_and(|c| pid_alive(c.id()))
    }

    /// Send `sig` to the running enforcer.
    pub fn signal_enforcer(&self, sig: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.enforcer_pid()).expect("pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill");
    }

    /// Wait (bounded) for the enforcer to exit by itself, and reap it.
    pub fn wait_enforcer_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.enforcer.take().expect("enforcer running");
        self.enforcer_real = None;
        wait_until(
            timeout,
            "the enforcer to exit",
            || c.try_wait().ok().flatten(),
            || self.diag(),
        )
    }

    /// `sentryctl ARGS --json`, which must succeed, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        if !a.contains(&"--json") {
            a.push("--json");
        }
        let out = self.sentryctl(&a);
        assert!(out.success(), "sentryctl {args:?}: {out}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Elements of one set (`v4` or `v6`) of the enforcer's table, sorted.
    pub fn nft_set(&self, set: &str) -> Vec<IpAddr> {
        let table = self
            .settings
            .keys
            .get("NFT_TABLE")
            .map_or(NFT_TABLE, String::as_str);
        let out = run(
            self.net
                .command(Side::Target, "nft")
                .args(["-j", "list", "set", "inet", table, set]),
            Duration::from_secs(10),
        );
        assert!(out.success(), "nft list set: {out}");
        let v: Value = serde_json::from_str(&out.stdout).expect("nft -j");
        let mut addrs = BTreeSet::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(elems) = item.pointer("/set/elem") {
                collect_addrs(elems, &mut addrs);
            }
        }
        addrs.into_iter().collect()
    }

    /// Whether nftables drops `ip`: its element, or (IPv6) its /64 in `v6net`
    /// (BLOCK_PREFIX6 in [`Settings::enforcer`]'s configuration is the default 64).
    pub fn nft_has(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.nft_set("v4").contains(&ip),
            IpAddr::V6(a) => {
                let net = IpAddr::V6(std::net::Ipv6Addr::from(
                    u128::from(a) & !((1u128 << 64) - 1),
                ));
                self.nft_set("v6").contains(&ip) || self.nft_set("v6net").contains(&net)
            }
        }
    }
}
