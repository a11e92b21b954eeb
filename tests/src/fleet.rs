//! The fleet tests' kit: a real CrowdSec Local API (Debian's crowdsec 1.4.6, LAPI only,
//! SQLite in a temporary directory, on a loopback port) and the real `sentry-share`
//! bridge running as its own unprivileged user. Both are stopped on drop, also when a
//! test panics.
//!
//! The crowdsec binaries come from `make test-deps`, which unpacks Debian's package
//! (`apt-get download crowdsec && dpkg -x`) into [`CROWDSEC_ROOT`] instead of installing
//! it: no maintainer script runs, so no service is started and no hub update is tried.
//! `$SENTRY_CROWDSEC_ROOT` overrides the place; a `crowdsec` in /usr/bin is used too.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cmd::{run, wait_until, Output};

/// Where `make test-deps` unpacks the crowdsec package.
pub const CROWDSEC_ROOT: &str = "/var/cache/sentry-tests/crowdsec";
/// Where it unpacks the prometheus package (for promtool).
pub const PROMETHEUS_ROOT: &str = "/var/cache/sentry-tests/prometheus";
/// The bridge's system user in the tests (as `make install` would create it).
pub const SHARE_USER: &str = "sentry-share";

fn find_bin(root_env: &str, default_root: &str, name: &str) -> Option<PathBuf> {
    let root = std::env::var_os(root_env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default_root));
    [
        root.join("usr/bin").join(name),
        PathBuf::from("/usr/bin").join(name),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// `(crowdsec, cscli)`, or `None` when not installed.
pub fn crowdsec_bins() -> Option<(PathBuf, PathBuf)> {
    Some((
        find_bin("SENTRY_CROWDSEC_ROOT", CROWDSEC_ROOT, "crowdsec")?,
        find_bin("SENTRY_CROWDSEC_ROOT", CROWDSEC_ROOT, "cscli")?,
    ))
}

pub fn promtool() -> Option<PathBuf> {
    find_bin("SENTRY_PROMETHEUS_ROOT", PROMETHEUS_ROOT, "promtool")
}

/// `false` (with a visible line) when crowdsec is missing; under CI=true that is a
/// failure, not a skip.
pub fn require_crowdsec(test: &str) -> bool {
    if crowdsec_bins().is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: crowdsec missing (make test-deps unpacks it into {CROWDSEC_ROOT}) and CI=true forbids skipping");
    }
    println!("SKIPPED (crowdsec not unpacked; run make test-deps): {test}");
    false
}

/// A free loopback TCP port (bound, read, released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A CrowdSec LAPI of its own.
#[derive(Debug)]
pub struct Lapi {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub url: String,
    crowdsec: PathBuf,
    cscli: PathBuf,
    child: Option<Child>,
    runs: u32,
}

impl Lapi {
    pub fn start() -> Lapi {
        let (crowdsec, cscli) = crowdsec_bins().expect("crowdsec binaries");
        let dir = tempfile::Builder::new()
            .prefix("sentry-lapi-")
            .tempdir()
            .expect("tempdir");
        let t = dir.path();
        for d in ["data", "hub", "etc", "notif", "plugins"] {
            fs::create_dir(t.join(d)).expect("mkdir");
        }
        // An empty hub index: the LAPI needs no parsers or scenarios, and nothing is
        // fetched from the hub.
        fs::write(t.join("hub/.index.json"), "{}").expect("index");
        fs::write(
            t.join("etc/profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )
        .expect("profiles");
        fs::write(t.join("etc/simulation.yaml"), "simulation: off\n").expect("simulation");
        fs::write(t.join("etc/local_api_credentials.yaml"), "").expect("creds");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let d = t.display();
        // No online_client: no Central API, nothing shared, no network needed.
        let config = format!(
            "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n  working_dir: {d}\n\
config_paths:\n  config_dir: {d}/etc/\n  data_dir: {d}/data/\n  simulation_path: {d}/etc/simulation.yaml\n  hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n  notification_dir: {d}/notif/\n  plugin_dir: {d}/plugins/\n\
crowdsec_service:\n  acquisition_path: {d}/etc/acquis.yaml\n\
cscli:\n  output: human\n  color: \"no\"\n\
db_config:\n  log_level: info\n  type: sqlite\n  use_wal: true\n  db_path: {d}/data/crowdsec.db\n\
api:\n  client:\n    insecure_skip_verify: false\n    credentials_path: {d}/etc/local_api_credentials.yaml\n  server:\n    log_level: info\n    listen_uri: 127.0.0.1:{port}\n    profiles_path: {d}/etc/profiles.yaml\n    console_path: {d}/etc/console.yaml\n    trusted_ips:\n      - 127.0.0.1\n\
prometheus:\n  enabled: false\n"
        );
        let cfg = t.join("config.yaml");
        fs::write(&cfg, config).expect("config");
        let mut l = Lapi {
            dir,
            config: cfg,
            url,
            crowdsec,
            cscli,
            child: None,
            runs: 0,
        };
        l.run();
        // cscli's own decisions/alerts commands go through the API as a machine: the
        // LAPI's local credentials file (written with -f, in the temp dir).
        let creds = l.dir.path().join("etc/local_api_credentials.yaml");
        let creds = creds.display().to_string();
        l.cscli_ok(&[
            "machines",
            "add",
            "local-cscli",
            "--password",
            "local-cscli-0123456789",
            "-f",
            &creds,
        ]);
        l
    }

    /// Start (again) on the same configuration and database.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "LAPI already running");
        self.runs += 1;
        let log =
            fs::File::create(self.dir.path().join(format!("lapi.{}.log", self.runs))).expect("log");
        let child = Command::new(&self.crowdsec)
            .arg("-c")
            .arg(&self.config)
            .arg("-no-cs")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn crowdsec");
        self.child = Some(child);
        let addr: std::net::SocketAddr = self
            .url
            .trim_start_matches("http://")
            .parse()
            .expect("addr");
        wait_until(
            Duration::from_secs(30),
            "the LAPI to listen",
            || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(drop)
            },
            || self.log(),
        );
    }

    /// Stop the LAPI (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..50 {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The cscli binary (for shims that add `-c CONFIG`).
    pub fn cscli_bin(&self) -> &Path {
        &self.cscli
    }

    pub fn cscli(&self, args: &[&str]) -> Output {
        run(
            Command::new(&self.cscli)
                .arg("-c")
                .arg(&self.config)
                .args(args),
            Duration::from_secs(60),
        )
    }

    fn cscli_ok(&self, args: &[&str]) -> Output {
        let o = self.cscli(args);
        assert!(o.success(), "cscli {args:?} failed: {o}\n{}", self.log());
        o
    }

    /// Register a machine; its credentials file goes into the temp dir (`-f`, so the
    /// local agent's file is never overwritten).
    pub fn add_machine(&self, name: &str, password: &str) {
        let f = self.dir.path().join(format!("machine-{name}.yaml"));
        let f = f.display().to_string();
        self.cscli_ok(&["machines", "add", name, "--password", password, "-f", &f]);
    }

    /// Register a bouncer; returns its API key.
    pub fn add_bouncer(&self, name: &str) -> String {
        let o = self.cscli_ok(&["bouncers", "add", name, "-o", "raw"]);
        o.stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .expect("a key")
            .to_string()
    }

    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|i| {
                fs::read_to_string(self.dir.path().join(format!("lapi.{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}

static USER_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The `sentry-share` system user (created if missing, as `make install` does).
pub fn ensure_share_user() -> (u32, u32) {
    let _g = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..3 {
        if let Ok(Some(u)) = nix::unistd::User::from_name(SHARE_USER) {
            return (u.uid.as_raw(), u.gid.as_raw());
        }
        let _ = run(
            Command::new("useradd").args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SHARE_USER,
            ]),
            Duration::from_secs(30),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("cannot create the {SHARE_USER} user");
}

/// One host's bridge.
#[derive(Debug)]
pub struct Bridge {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub metrics_dir: PathBuf,
    bin: PathBuf,
    uid: u32,
    gid: u32,
    child: std::sync::Mutex<Option<Child>>,
    runs: std::sync::atomic::AtomicU32,
}

fn chown(p: &Path, uid: u32, gid: u32) {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

impl Bridge {
    /// Write the bridge's files under `parent` (a directory of the host's test) with
    /// `keys` (share.conf lines); the runtime dir is the host enforcer's.
    pub fn prepare(
        parent: &Path,
        runtime_dir: &Path,
        lapi_urls: &str,
        machine: Option<(&str, &str)>,
        bouncer_key: Option<&str>,
        extra: &str,
    ) -> Bridge {
        let (uid, gid) = ensure_share_user();
        let dir = parent.join("share");
        let state = dir.join("state");
        let metrics_dir = dir.join("metrics");
        for d in [&dir, &state, &metrics_dir] {
            fs::create_dir_all(d).expect("mkdir");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        for d in [&state, &metrics_dir] {
            chown(d, uid, gid);
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let secret = |name: &str, v: &str| {
            let p = dir.join(name);
            fs::write(&p, format!("{v}\n")).expect("secret");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
            chown(&p, uid, gid);
            p
        };
        let mut text = format!(
            "LAPI_URLS=\"{lapi_urls}\"\nRUNTIME_DIR=\"{}\"\nSTATE_DIR=\"{}\"\nMETRICS_DIR=\"{}\"\n",
            runtime_dir.display(),
            state.display(),
            metrics_dir.display()
        );
        match machine {
            Some((id, pw)) => {
                let p = secret("machine.password", pw);
                text.push_str(&format!(
                    "MACHINE_ID=\"{id}\"\nMACHINE_PASSWORD_FILE=\"{}\"\n",
                    p.display()
                ));
            }
            None => text.push_str("PUSH=\"0\"\n"),
        }
        match bouncer_key {
            Some(k) => {
                let p = secret("bouncer.key", k);
                text.push_str(&format!("BOUNCER_KEY_FILE=\"{}\"\n", p.display()));
            }
            None => text.push_str("PULL=\"0\"\n"),
        }
        text.push_str(extra);
        let config = dir.join("share.conf");
        fs::write(&config, text).expect("config");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod");
        Bridge {
            dir,
            config,
            metrics_dir,
            bin: crate::bin_dir().join("sentry-share"),
            uid,
            gid,
            child: std::sync::Mutex::new(None),
            runs: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// A bridge on a configuration written elsewhere (the README's steps): its logs go
    /// to `dir`.
    pub fn adopt(dir: &Path, config: &Path, metrics_dir: &Path) -> Bridge {
        let (uid, gid) = ensure_share_user();
        Bridge {
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            metrics_dir: metrics_dir.to_path_buf(),
            bin: crate::bin_dir().join("sentry-share"),
            uid,
            gid,
            child: std::sync::Mutex::new(None),
            runs: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// `sentry-share` as its own user, no capability, no new privileges (as its unit),
    /// in a shell command line (README shims).
    pub fn command_line(&self) -> String {
        format!(
            "setpriv --reuid={} --regid={} --init-groups --inh-caps=-all --bounding-set=-all --no-new-privs {}",
            self.uid,
            self.gid,
            self.bin.display()
        )
    }

    /// `sentry-share --check-config --config CONFIG ARGS...` as the bridge's user.
    pub fn check_config(&self, args: &[&str]) -> Output {
        run(
            Command::new("setpriv")
                .args([
                    &format!("--reuid={}", self.uid),
                    &format!("--regid={}", self.gid),
                    "--init-groups",
                    "--inh-caps=-all",
                    "--bounding-set=-all",
                    "--no-new-privs",
                ])
                .arg(&self.bin)
                .arg("--check-config")
                .arg("--config")
                .arg(&self.config)
                .args(args)
                .env_remove("LD_LIBRARY_PATH"),
            Duration::from_secs(60),
        )
    }

    /// Replace a secret file's content (mode and owner kept).
    pub fn write_secret(&self, name: &str, value: &str) {
        let p = self.dir.join(name);
        fs::write(&p, format!("{value}\n")).expect("secret");
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn runs(&self) -> u32 {
        self.runs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Start it as its own user, no capability, no new privileges (as its unit does).
    pub fn start(&self) {
        assert!(
            self.bin.is_file(),
            "{} missing: cargo build --workspace --bins",
            self.bin.display()
        );
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let log = fs::File::create(self.dir.join(format!("share.{run}.log"))).expect("log");
        let child = Command::new("setpriv")
            .args([
                &format!("--reuid={}", self.uid),
                &format!("--regid={}", self.gid),
                "--init-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
            ])
            .arg(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn sentry-share");
        *self.child() = Some(child);
    }

    pub fn stop(&self) {
        if let Some(mut c) = self.child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn alive(&self) -> bool {
        self.child()
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        (1..=self.runs())
            .map(|i| {
                fs::read_to_string(self.dir.join(format!("share.{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    pub fn metrics_text(&self) -> String {
        fs::read_to_string(self.metrics_dir.join("sentry-share.prom")).unwrap_or_default()
    }

    /// The value of one sample line of the textfile (`name{labels}` exactly).
    pub fn metric(&self, series: &str) -> Option<u64> {
        self.metrics_text().lines().find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok()).flatten()
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop();
    }
}
