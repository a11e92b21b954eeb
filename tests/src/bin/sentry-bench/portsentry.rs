//! PortSentry 1.2 (Debian's `portsentry` package), run for comparison.
//!
//! The package is fetched with `apt-get download` into a temporary directory and unpacked
//! with `dpkg-deb -x`; it is never installed. Each run starts the daemon inside the
//! benchmark's target namespace and inside a private mount namespace in which `/etc` is an
//! overlay (lower: the real /etc, read-only; upper: a tmpfs private to that mount
//! namespace). Its compiled-in paths `/etc/portsentry/portsentry.conf` and
//! `/etc/hosts.deny` therefore resolve to the benchmark's own files, and nothing it writes
//! reaches the host's /etc. Its KILL_ROUTE runs iptables inside the target namespace only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sentry_tests::cmd::run;
use sentry_tests::netns::{NetPair, Side};

use crate::cleanup::{self, netns_inode, pids_in_netns, TempDir};

/// The unpacked package.
#[derive(Debug)]
pub struct Package {
    /// Kept for its Drop: removes the unpacked package.
    pub _dir: TempDir,
    pub binary: PathBuf,
    pub version: String,
    /// The package's own /etc/portsentry/portsentry.conf, unchanged.
    pub debian_conf: Option<String>,
}

impl Package {
    /// Download (or take `deb` if given) and unpack.
    pub fn fetch(deb: Option<&Path>) -> Result<Package, String> {
        let dir = TempDir::new("sentry-bench-portsentry-").map_err(|e| e.to_string())?;
        let deb = match deb {
            Some(d) => d.to_path_buf(),
            None => {
                let out = run(
                    Command::new("apt-get")
                        .args(["download", "portsentry"])
                        .current_dir(&dir.path),
                    Duration::from_secs(120),
                );
                if !out.success() {
                    return Err(format!("apt-get download portsentry failed: {out}"));
                }
                fs::read_dir(&dir.path)
                    .map_err(|e| e.to_string())?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "deb"))
                    .ok_or("apt-get download left no .deb")?
            }
        };
        let root = dir.path.join("root");
        let out = run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            Duration::from_secs(60),
        );
        if !out.success() {
            return Err(format!("dpkg-deb -x failed: {out}"));
        }
        let ver = run(
            Command::new("dpkg-deb")
                .args(["-f"])
                .arg(&deb)
                .arg("Version"),
            Duration::from_secs(30),
        );
        let binary = root.join("usr/sbin/portsentry");
        if !binary.is_file() {
            return Err(format!("{} missing from the package", binary.display()));
        }
        let debian_conf = fs::read_to_string(root.join("etc/portsentry/portsentry.conf")).ok();
        Ok(Package {
            _dir: dir,
            binary,
            version: ver.stdout.trim().to_string(),
            debian_conf,
        })
    }
}

/// One running PortSentry daemon; stopped on drop.
#[derive(Debug)]
pub struct Running {
    pub pid: u32,
    /// Directory holding the config and the overlay mount point (host side).
    /// Kept for its Drop.
    pub _work: TempDir,
}

/// Processes in `ns` whose executable is `binary`.
fn find(ns: &str, binary: &Path) -> Vec<u32> {
    let Some(ino) = netns_inode(&format!("/run/netns/{ns}")) else {
        return Vec::new();
    };
    pids_in_netns(ino)
        .into_iter()
        .filter(|p| fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == binary))
        .collect()
}

/// Whether the namespace has a raw socket for IP protocol `proto` (6 TCP, 17 UDP): how
/// PortSentry's advanced mode shows that it is listening.
fn has_raw_socket(pid: u32, proto: u16) -> bool {
    let want = format!(":{proto:04X}");
    fs::read_to_string(format!("/proc/{pid}/net/raw"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&want))
        })
}

impl Running {
    /// Start `portsentry -<mode>` in the target namespace of `net` with config text
    /// `conf` (it must name its files under /etc/portsentry/) and ignore entries.
    pub fn start(
        pkg: &Package,
        net: &NetPair,
        mode: &str,
        conf: &str,
        ignore: &[String],
    ) -> Result<Running, String> {
        let work = TempDir::new("sentry-bench-ps-run-").map_err(|e| e.to_string())?;
        let conf_path = work.path.join("portsentry.conf");
        let ignore_path = work.path.join("portsentry.ignore");
        let mnt = work.path.join("mnt");
        fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        fs::write(&ignore_path, ignore.join("\n") + "\n").map_err(|e| e.to_string())?;
        fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let script = format!(
            "set -e; mount -t tmpfs sentry-bench '{m}'; mkdir '{m}/upper' '{m}/work'; \
             mount -t overlay overlay -o lowerdir=/etc,upperdir='{m}/upper',workdir='{m}/work' /etc; \
             mkdir -p /etc/portsentry; cp '{c}' /etc/portsentry/portsentry.conf; \
             cp '{i}' /etc/portsentry/portsentry.ignore; : > /etc/hosts.deny; \
             exec '{b}' -{mode}",
            m = mnt.display(),
            c = conf_path.display(),
            i = ignore_path.display(),
            b = pkg.binary.display(),
        );
        let out = run(
            net.command(Side::Target, "unshare").args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ]),
            Duration::from_secs(20),
        );
        if !out.success() {
            return Err(format!("starting portsentry failed: {out}"));
        }
        // PortSentry forks into the background; find the daemon by executable and netns.
        let deadline = Instant::now() + Duration::from_secs(10);
        let proto = if mode.contains("udp") { 17 } else { 6 };
        loop {
            let pids = find(&net.target, &pkg.binary);
            if let [pid] = pids[..] {
                cleanup::register_pid(pid);
                if has_raw_socket(pid, proto) {
                    // Give it a moment past the socket() call to enter its read loop.
                    std::thread::sleep(Duration::from_millis(300));
                    return Ok(Running { pid, _work: work });
                }
            }
            if Instant::now() >= deadline {
                cleanup::terminate(&pids, Duration::from_secs(2));
                return Err(format!(
                    "portsentry -{mode} did not come up in the target namespace (pids {pids:?}); \
                     start output: {out}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        cleanup::terminate(&[self.pid], Duration::from_secs(3));
        cleanup::unregister_pid(self.pid);
    }
}

/// PortSentry's config for the benchmark: Debian's port lists, block on the first probe,
/// iptables in the target namespace as the kill route, hosts.deny wrappers line.
pub fn config_text(keys: &[(&str, String)]) -> String {
    let mut s = String::from("# written by sentry-bench\n");
    for (k, v) in keys {
        s.push_str(&format!("{k}=\"{v}\"\n"));
    }
    s.push_str("IGNORE_FILE=\"/etc/portsentry/portsentry.ignore\"\n");
    s.push_str("HISTORY_FILE=\"/etc/portsentry/portsentry.history\"\n");
    s.push_str("BLOCKED_FILE=\"/etc/portsentry/portsentry.blocked\"\n");
    s
}
