//! A scanner and a target network namespace joined by a veth pair.
//!
//! Addresses (private, and existing only inside these two namespaces, so every test can use
//! the same ones without clashing):
//! scanner `10.203.0.1/24` (+ extra sources `.3`, `.4`, `.5`) and `fd00:203::1/64`;
//! target `10.203.0.2/24` and `fd00:203::2/64`.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::cmd::{run, run_ok};

pub const SCANNER_V4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
pub const TARGET_V4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);
/// Further addresses on the scanner side, for a second and third "attacker".
pub const SCANNER2_V4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 3);
pub const SCANNER3_V4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 4);
pub const SCANNER4_V4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 5);
pub const SCANNER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 1);
pub const TARGET_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 2);
/// How many further scanner-side sources [`NetPair::with_extra_sources`] adds.
pub const EXTRA_SOURCES: u8 = 20;

/// Extra scanner-side source `i` (below [`EXTRA_SOURCES`]): `10.203.0.(10 + i)`, one
/// "attacker" each, for tests that need many distinct sources.
pub fn source(i: u8) -> Ipv4Addr {
    assert!(
        i < EXTRA_SOURCES,
        "source({i}): only {EXTRA_SOURCES} extra sources"
    );
    Ipv4Addr::new(10, 203, 0, 10 + i)
}

/// Interface names inside the namespaces.
pub const SCANNER_IF: &str = "sx0";
pub const TARGET_IF: &str = "tx0";

/// Prefix of every namespace this harness creates: `snt<pid>x<n>-s` / `-t`.
const PREFIX: &str = "snt";
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Scanner,
    Target,
}

/// The two namespaces; deleted (with the veth pair and any nftables table inside) on drop.
#[derive(Debug)]
pub struct NetPair {
    pub scanner: String,
    pub target: String,
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args), CMD_TIMEOUT);
}

/// Delete namespaces left behind by test processes that no longer exist (a test killed by
/// SIGKILL cannot run its destructors).
fn reap_stale() {
    let out = run(Command::new("ip").args(["netns", "list"]), CMD_TIMEOUT);
    for line in out.stdout.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(Command::new("ip").args(["netns", "del", name]), CMD_TIMEOUT);
        }
    }
}

impl NetPair {
    #[allow(clippy::new_without_default)] // creating namespaces is not a "default"
    pub fn new() -> NetPair {
        NetPair::create(0)
    }

    /// [`NetPair::new`] plus the [`EXTRA_SOURCES`] addresses [`source`] names.
    pub fn with_extra_sources() -> NetPair {
        NetPair::create(EXTRA_SOURCES)
    }

    fn create(extra: u8) -> NetPair {
        reap_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{PREFIX}{}x{n}", std::process::id());
        let pair = NetPair {
            scanner: format!("{id}-s"),
            target: format!("{id}-t"),
        };
        // From here on, Drop removes whatever was created, also if a step below panics.
        ip(&["netns", "add", &pair.scanner]);
        ip(&["netns", "add", &pair.target]);
        let (s, t) = (pair.scanner.as_str(), pair.target.as_str());
        ip(&["-n", s, "link", "set", "lo", "up"]);
        ip(&["-n", t, "link", "set", "lo", "up"]);
        // Created directly inside the scanner namespace with its peer in the target one:
        // the root namespace never sees either end.
        ip(&[
            "-n", s, "link", "add", SCANNER_IF, "type", "veth", "peer", "name", TARGET_IF, "netns",
            t,
        ]);
        let extra = (0..extra).map(source);
        for a in [SCANNER_V4, SCANNER2_V4, SCANNER3_V4, SCANNER4_V4]
            .into_iter()
            .chain(extra)
        {
            ip(&[
                "-n",
                s,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                SCANNER_IF,
            ]);
        }
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{SCANNER_V6}/64"),
            "dev",
            SCANNER_IF,
            "nodad",
        ]);
        ip(&[
            "-n",
            t,
            "addr",
            "add",
            &format!("{TARGET_V4}/24"),
            "dev",
            TARGET_IF,
        ]);
        ip(&[
            "-n",
            t,
            "addr",
            "add",
            &format!("{TARGET_V6}/64"),
            "dev",
            TARGET_IF,
            "nodad",
        ]);
        ip(&["-n", s, "link", "set", SCANNER_IF, "up"]);
        ip(&["-n", t, "link", "set", TARGET_IF, "up"]);
        pair.wait_reachable();
        pair
    }

    /// A fresh veth link does not answer IPv6 neighbour solicitations for a second or two;
    /// a scan started earlier never leaves the scanner. Poll (bounded) until a TCP connect
    /// from the scanner to the target is refused over both IPv4 and IPv6 (a RST came back).
    /// Runs before any sensor exists, so these probes are never seen as a scan.
    fn wait_reachable(&self) {
        let path = format!("/run/netns/{}", self.scanner);
        let ok = std::thread::spawn(move || {
            let Ok(fd) = File::open(&path) else {
                return Err(format!("open {path}"));
            };
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {path}: {e}"))?;
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            for target in [IpAddr::V4(TARGET_V4), IpAddr::V6(TARGET_V6)] {
                loop {
                    let addr = std::net::SocketAddr::new(target, 9);
                    match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                        Ok(_) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                        Err(e) if std::time::Instant::now() >= deadline => {
                            return Err(format!("{target} unreachable from the scanner: {e}"));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err("reachability thread panicked".into()));
        if let Err(e) = ok {
            panic!("network namespaces not ready: {e}");
        }
    }

    pub fn name(&self, side: Side) -> &str {
        match side {
            Side::Scanner => &self.scanner,
            Side::Target => &self.target,
        }
    }

    /// `ip netns exec <ns> program args...`
    pub fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(side)]).arg(program);
        c
    }

    /// Run `program args` in the namespace with a deadline; it must succeed.
    pub fn run_ok(&self, side: Side, program: &str, args: &[&str]) -> crate::Output {
        run_ok(self.command(side, program).args(args), CMD_TIMEOUT)
    }

    /// One `hping3` probe from the (spoofed) scanner-side source `src` to the target's
    /// IPv4 `port`, with extra hping3 flags. hping3 exiting 1 (no reply, e.g. a FIN to a
    /// closed port) is fine; only a failure to run is an error.
    pub fn hping_from(&self, src: Ipv4Addr, port: u16, flags: &[&str]) {
        let (src, port) = (src.to_string(), port.to_string());
        let mut c = self.command(Side::Scanner, "timeout");
        c.args([
            "5", "hping3", "-q", "-c", "1", "-i", "u1000", "-a", &src, "-p", &port,
        ])
        .args(flags)
        .arg(TARGET_V4.to_string());
        let out = run(&mut c, CMD_TIMEOUT);
        assert!(
            out.status.and_then(|s| s.code()).is_some(),
            "hping3 did not run: {out}"
        );
    }

    /// Run `f` on a thread that has entered the namespace (sockets it creates stay there).
    pub fn in_ns<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = format!("/run/netns/{}", self.name(side));
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Spawn a long-running thread inside the namespace (a service or a client).
    pub fn spawn_in_ns(
        &self,
        side: Side,
        f: impl FnOnce() + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let path = format!("/run/netns/{}", self.name(side));
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }

    /// The target's own addresses (the enforcer must never block them).
    pub fn target_addrs() -> [IpAddr; 2] {
        [IpAddr::V4(TARGET_V4), IpAddr::V6(TARGET_V6)]
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.scanner, &self.target] {
            let _ = run(Command::new("ip").args(["netns", "del", ns]), CMD_TIMEOUT);
        }
    }
}
