//! Test harness: a private network namespace, a temp directory with config / ignore /
//! hosts.deny / audit files, the real `sentry-enforcer` running inside the namespace, a
//! fake sensor speaking sentry-proto, and `sentryctl`.
//!
//! Everything lives in the test's own namespace (`ip netns add sentry-enf-<pid>-<n>`), so
//! the nftables table and the routes never touch the root namespace; the guards remove the
//! namespace and kill the enforcer also when a test panics.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sentry_proto::{
    encode_frame, read_frame, write_frame, BlockRequest, Decision, EnforcerFrame, Hello, Mode,
    Protocol, ScanKind, SensorFrame, PROTOCOL_VERSION,
};
use serde_json::Value;

pub const ENFORCER: &str = env!("CARGO_BIN_EXE_sentry-enforcer");
pub const SENTRYCTL: &str = env!("CARGO_BIN_EXE_sentryctl");

/// True when we can do namespace work; otherwise print the skip notice.
pub fn need_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIPPED (needs root): {test}");
        false
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .try_into()
        .unwrap()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace that is deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = format!(
            "sentry-enf-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        Self { name }
    }

    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    pub fn run(&self, prog: &str, args: &[&str]) -> Output {
        self.cmd(prog).args(args).output().expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A test environment: namespace + files + (maybe) a running enforcer.
pub struct Env {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub ignore: PathBuf,
    pub hosts_deny: PathBuf,
    pub audit: PathBuf,
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    pub table: String,
    pub sensor_user: String,
    pub keys: BTreeMap<String, String>,
    pub child: Option<Child>,
    pub runs: u32,
}

impl Env {
    /// Files and namespace; `keys` override the defaults (nftables + hosts.deny, TCP and
    /// UDP blocking, permanent blocks).
    pub fn new(keys: &[(&str, &str)]) -> Self {
        let ns = Netns::new();
        let dir = tempfile::Builder::new()
            .prefix("sentry-enf-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = |n: &str| dir.path().join(n);
        let (conf, ignore, hosts_deny, audit, run_dir, state_dir) = (
            p("sentry.conf"),
            p("sentry.ignore"),
            p("hosts.deny"),
            p("audit.jsonl"),
            p("run"),
            p("state"),
        );
        std::fs::write(&ignore, "# ignore\n198.51.100.0/24\n").unwrap();
        std::fs::write(&hosts_deny, "# test hosts.deny\n").unwrap();
        std::fs::set_permissions(&hosts_deny, std::fs::Permissions::from_mode(0o644)).unwrap();
        let table = format!("sentry_t{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("FIREWALL", "nftables"),
            ("NFT_TABLE", table.as_str()),
            ("BLOCK_TCP", "1"),
            ("BLOCK_UDP", "1"),
            ("KILL_HOSTS_DENY", "ALL: $TARGET$ : DENY"),
            ("KILL_TIMEOUT", "5"),
        ] {
            m.insert(k.to_string(), v.to_string());
        }
        m.insert("IGNORE_FILE".into(), ignore.display().to_string());
        m.insert("HOSTS_DENY_FILE".into(), hosts_deny.display().to_string());
        m.insert("AUDIT_LOG".into(), audit.display().to_string());
        m.insert(
            "HISTORY_FILE".into(),
            state_dir.join("sentry.history").display().to_string(),
        );
        m.insert(
            "BLOCKED_FILE".into(),
            state_dir.join("sentry.blocked").display().to_string(),
        );
        for (k, v) in keys {
            if v.is_empty() {
                m.remove(*k);
            } else {
                m.insert(k.to_string(), v.to_string());
            }
        }
        let env = Self {
            ns,
            dir,
            conf,
            ignore,
            hosts_deny,
            audit,
            run_dir,
            state_dir,
            table,
            sensor_user: "root".into(),
            keys: m,
            child: None,
            runs: 0,
        };
        env.write_config();
        env
    }

    pub fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    pub fn write_config(&self) {
        let mut text = String::from("# enforcer integration test\n");
        for (k, v) in &self.keys {
            text.push_str(&format!("{k}=\"{v}\"\n"));
        }
        std::fs::write(&self.conf, text).unwrap();
    }

    pub fn log_path(&self) -> PathBuf {
        self.path(&format!("enforcer.{}.log", self.runs))
    }

    /// Start the enforcer in the namespace and wait until its control socket answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        self.runs += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = self
            .ns
            .cmd(ENFORCER)
            .arg("--config")
            .arg(&self.conf)
            .arg("--runtime-dir")
            .arg(&self.run_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--sensor-user", &self.sensor_user, "--log-stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn enforcer");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("enforcer exited early: {st}\n{}", self.log());
            }
            if self.ctl(&["status"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "enforcer did not come up\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        for i in 1..=self.runs {
            s.push_str(
                &std::fs::read_to_string(self.path(&format!("enforcer.{i}.log")))
                    .unwrap_or_default(),
            );
        }
        s
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let c = self.child.as_ref().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(SENTRYCTL)
            .arg("--runtime-dir")
            .arg(&self.run_dir)
            .args(args)
            .output()
            .expect("sentryctl")
    }

    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ctl(&a);
        assert!(
            out.status.success(),
            "sentryctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    pub fn sensor_sock(&self) -> PathBuf {
        self.run_dir.join("enforcer.sock")
    }

    pub fn connect(&self) -> FakeSensor {
        FakeSensor::connect(&self.sensor_sock())
    }

    /// Connect and complete the handshake, retrying while the enforcer still holds the
    /// slot of a sensor connection it has just closed.
    pub fn connect_welcomed(&self) -> FakeSensor {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = self.connect();
            let _ = c.send_raw(&frame(&hello()));
            match c.recv() {
                Ok(EnforcerFrame::Welcome { .. }) => return c,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                other => panic!("no Welcome: {other:?}"),
            }
        }
    }

    /// Elements of one set of our table (`v4` or `v6`) inside the namespace.
    pub fn nft_set(&self, set: &str) -> Vec<IpAddr> {
        let out = self
            .ns
            .run("nft", &["-j", "list", "set", "inet", &self.table, set]);
        assert!(
            out.status.success(),
            "nft list set: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut addrs = Vec::new();
        for item in v["nftables"].as_array().unwrap() {
            if let Some(elems) = item.pointer("/set/elem").and_then(Value::as_array) {
                for e in elems {
                    let s = e
                        .as_str()
                        .or_else(|| e.pointer("/elem/val").and_then(Value::as_str));
                    if let Some(a) = s.and_then(|s| s.parse().ok()) {
                        addrs.push(a);
                    }
                }
            }
        }
        addrs.sort();
        addrs
    }

    pub fn nft_has(&self, addr: IpAddr) -> bool {
        self.nft_set(if addr.is_ipv4() { "v4" } else { "v6" })
            .contains(&addr)
    }

    pub fn hosts_deny_text(&self) -> String {
        std::fs::read_to_string(&self.hosts_deny).unwrap()
    }

    pub fn audit_records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}"))
            })
            .collect()
    }

    pub fn audit_for(&self, addr: &str, decision: &str) -> Vec<Value> {
        self.audit_records()
            .into_iter()
            .filter(|r| r["source"] == addr && r["decision"] == decision)
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A fake sensor: speaks sentry-proto over the enforcer socket.
pub struct FakeSensor {
    pub s: UnixStream,
    pub seq: u64,
}

pub fn hello() -> SensorFrame {
    SensorFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        sensor: "fake-sensor".into(),
        pid: std::process::id(),
        modes: vec![Mode::Stcp, Mode::Sudp],
    })
}

pub fn req(seq: u64, source: &str, proto: Protocol, port: u16) -> BlockRequest {
    let now = now_ms();
    let (scan, mode) = match proto {
        Protocol::Tcp => (ScanKind::Syn, Mode::Stcp),
        Protocol::Udp => (ScanKind::Udp, Mode::Sudp),
    };
    BlockRequest {
        seq,
        source: source.parse().unwrap(),
        protocol: proto,
        port,
        scan,
        mode,
        distinct_ports: 3,
        first_seen_ms: now - 100,
        last_seen_ms: now,
        ip_options: false,
    }
}

impl FakeSensor {
    pub fn connect(path: &Path) -> Self {
        let s = UnixStream::connect(path).expect("connect enforcer.sock");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self { s, seq: 0 }
    }

    pub fn send(&mut self, f: &SensorFrame) {
        write_frame(&mut self.s, f).expect("send");
    }

    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b)
    }

    /// The next frame, skipping the NFLOG hand-over that follows the Welcome (read with
    /// read(2), its descriptor is discarded by the kernel; the hand-over itself is tested
    /// in `tests/enforcer.rs`).
    pub fn recv(&mut self) -> Result<EnforcerFrame, sentry_proto::ProtoError> {
        loop {
            match read_frame::<EnforcerFrame, _>(&mut self.s) {
                Ok(EnforcerFrame::Capture { .. }) => continue,
                other => return other,
            }
        }
    }

    pub fn handshake(&mut self) {
        self.send(&hello());
        match self.recv() {
            Ok(EnforcerFrame::Welcome { version }) => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Send a block request and return the decision.
    pub fn block(&mut self, source: &str, proto: Protocol, port: u16) -> Decision {
        self.seq += 1;
        let r = req(self.seq, source, proto, port);
        self.send_req(r)
    }

    pub fn send_req(&mut self, r: BlockRequest) -> Decision {
        let seq = r.seq;
        self.send(&SensorFrame::Block(r));
        match self.recv() {
            Ok(EnforcerFrame::Ack { seq: s, decision }) => {
                assert_eq!(s, seq);
                decision
            }
            other => panic!("expected Ack, got {other:?}"),
        }
    }

    /// Read until EOF; true when the enforcer closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                // Closed with our unread bytes still queued: the kernel resets.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

pub fn frame(f: &SensorFrame) -> Vec<u8> {
    encode_frame(f).unwrap()
}
