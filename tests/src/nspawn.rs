//! A Debian 12 root file system booted with real systemd under systemd-nspawn, inside the
//! target namespace of a [`NetPair`].
//!
//! The root file system is debootstrapped once into a cache directory outside the
//! repository (`$SENTRY_ROOTFS_CACHE`, default `/var/cache/sentry-tests`), named after a
//! hash of what it contains; it is built in a temporary directory and renamed into place at
//! the end, so a killed run never leaves half a cache. Every run boots a private copy, so
//! the cache stays as debootstrap left it. The nspawn process group, the copy and the
//! namespaces are removed on drop, also when a test panics; copies left by killed runs are
//! reaped by the next one.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{run, run_ok, wait_until, Output};
use crate::netns::{NetPair, Side};

/// Debian release, variant and the packages added to it: what DESIGN.md lists for booting
/// systemd, plus what the tests drive inside (apt for remove/purge, passwd for the user).
pub const SUITE: &str = "bookworm";
pub const VARIANT: &str = "minbase";
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "nftables",
    "iproute2",
    "util-linux",
    "procps",
    "init-system-helpers",
    "passwd",
    "apt",
];
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(900);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Where each run's private copy of the root file system lives.
const RUN_DIR: &str = "/var/tmp";
const RUN_PREFIX: &str = "sentry-nspawn-";

/// FNV-1a, 64 bit: a stable name for the cache's contents.
fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The cached root file system's directory (it may not exist yet).
pub fn rootfs_path() -> PathBuf {
    let base = std::env::var_os("SENTRY_ROOTFS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/sentry-tests"));
    let key = format!("{SUITE} {VARIANT} {}", PACKAGES.join(","));
    base.join(format!("{SUITE}-{:016x}", fnv1a(&key)))
}

/// The cached root file system, debootstrapped first if it is not there. Returns its path
/// and whether it had to be built (and how long that took).
pub fn rootfs() -> (PathBuf, Option<Duration>) {
    let dir = rootfs_path();
    if dir.join("usr/lib/systemd/systemd").is_file() {
        return (dir, None);
    }
    let parent = dir.parent().expect("cache parent");
    fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dir.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    let mirror = std::env::var("SENTRY_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.into());
    let started = Instant::now();
    let out = run(
        Command::new("debootstrap")
            .arg(format!("--variant={VARIANT}"))
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&tmp)
            .arg(&mirror),
        DEBOOTSTRAP_TIMEOUT,
    );
    if !out.success() {
        let _ = fs::remove_dir_all(&tmp);
        panic!("debootstrap failed: {out}");
    }
    // No apt caches in the image; machine-id empty so each boot gets its own.
    let _ = run(
        Command::new("chroot").arg(&tmp).args(["apt-get", "clean"]),
        CMD_TIMEOUT,
    );
    fs::write(tmp.join("etc/machine-id"), "").expect("machine-id");
    match fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another test process finished first: use its copy.
        Err(_) if dir.join("usr/lib/systemd/systemd").is_file() => {
            let _ = fs::remove_dir_all(&tmp);
        }
        Err(e) => panic!("rename {} -> {}: {e}", tmp.display(), dir.display()),
    }
    (dir, Some(started.elapsed()))
}

/// Remove run copies whose test process no longer exists.
fn reap_stale_copies() {
    let Ok(entries) = fs::read_dir(RUN_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(RUN_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A private copy of the cached root file system; removed on drop.
#[derive(Debug)]
pub struct RootCopy {
    pub path: PathBuf,
}

impl RootCopy {
    pub fn new(cache: &Path) -> RootCopy {
        reap_stale_copies();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{RUN_PREFIX}{}-", std::process::id()))
            .tempdir_in(RUN_DIR)
            .expect("tempdir")
            .keep();
        let copy = RootCopy {
            path: dir.join("root"),
        };
        run_ok(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(cache)
                .arg(&copy.path),
            Duration::from_secs(300),
        );
        copy
    }

    /// `path` inside the root file system, as seen from the host.
    pub fn join(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }

    /// Run a command in the root file system without booting it (no systemd running: what
    /// an image build sees).
    pub fn offline(&self, args: &[&str], timeout: Duration) -> Output {
        run(
            Command::new("systemd-nspawn")
                .args(["-q", "--register=no", "--keep-unit", "-D"])
                .arg(&self.path)
                .args(args),
            timeout,
        )
    }
}

impl Drop for RootCopy {
    fn drop(&mut self) {
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir_all(parent);
        }
    }
}

/// The root file system booted with systemd as PID 1 in the pair's target namespace.
/// Dropping it powers the container off (bounded), kills what is left of the nspawn
/// process group and then removes the copy and the namespaces.
#[derive(Debug)]
pub struct Container {
    child: std::cell::RefCell<Option<Child>>,
    /// The container's systemd, as a host pid (for nsenter).
    pub leader: u32,
    pub console: PathBuf,
    // Dropped after the container is gone.
    pub root: RootCopy,
    pub net: NetPair,
}

/// Host pids of the children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

impl Container {
    /// Boot `root` in the target namespace of `net` and wait until systemd reports the
    /// boot finished (`running` or `degraded`).
    pub fn boot(root: RootCopy, net: NetPair, timeout: Duration) -> Container {
        let console = root.path.with_file_name("console.log");
        let log = fs::File::create(&console).expect("console log");
        let child = Command::new("systemd-nspawn")
            .args([
                "-q",
                "-b",
                "--register=no",
                "--keep-unit",
                "--capability=CAP_NET_ADMIN",
                "--console=passive",
            ])
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                net.name(Side::Target)
            ))
            .arg("-D")
            .arg(&root.path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            // Its own process group: Drop kills the whole group.
            .process_group(0)
            .spawn()
            .expect("spawn systemd-nspawn");
        let nspawn = child.id();
        let mut c = Container {
            child: std::cell::RefCell::new(Some(child)),
            leader: 0,
            console,
            root,
            net,
        };
        c.leader = wait_until(
            Duration::from_secs(20),
            "systemd-nspawn to start the container's init",
            || {
                c.assert_nspawn_alive();
                children(nspawn).into_iter().find(|&p| {
                    fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
            },
            || c.console_text(),
        );
        wait_until(
            timeout,
            "the container's systemd to finish booting",
            || {
                c.assert_nspawn_alive();
                let o = c.exec(&["systemctl", "is-system-running"], Duration::from_secs(10));
                let state = o.stdout.trim().to_string();
                (state == "running" || state == "degraded").then_some(state)
            },
            || c.diag(),
        );
        c
    }

    fn assert_nspawn_alive(&self) {
        if let Some(ch) = self.child.borrow_mut().as_mut() {
            if let Ok(Some(st)) = ch.try_wait() {
                panic!("systemd-nspawn exited: {st}\n{}", self.console_text());
            }
        }
    }

    /// Run a command inside the container (all its namespaces).
    pub fn exec(&self, args: &[&str], timeout: Duration) -> Output {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.leader.to_string())
            .arg("-a")
            .args(args);
        c.env_remove("LD_LIBRARY_PATH");
        run(&mut c, timeout)
    }

    /// Like [`Container::exec`]; panics with the output and diagnostics on failure.
    pub fn exec_ok(&self, args: &[&str]) -> Output {
        let o = self.exec(args, CMD_TIMEOUT);
        assert!(o.success(), "in the container: {o}\n{}", self.diag());
        o
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn unit_prop(&self, unit: &str, prop: &str) -> String {
        self.exec(
            &["systemctl", "show", "-p", prop, "--value", unit],
            CMD_TIMEOUT,
        )
        .stdout
        .trim()
        .to_string()
    }

    /// The journal of this boot (`journalctl -b -o short` plus `args`).
    pub fn journal(&self, args: &[&str]) -> String {
        let mut a = vec!["journalctl", "-b", "--no-pager", "-q", "-o", "short"];
        a.extend_from_slice(args);
        self.exec(&a, CMD_TIMEOUT).stdout
    }

    pub fn console_text(&self) -> String {
        let s = fs::read_to_string(&self.console).unwrap_or_default();
        let start = s.len().saturating_sub(4000);
        let start = (start..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        format!("---- nspawn console (tail)\n{}", &s[start..])
    }

    /// Units, the sentry journal and the console, for failure messages.
    pub fn diag(&self) -> String {
        if self.leader == 0 {
            return self.console_text();
        }
        let status = self.exec(
            &[
                "systemctl",
                "status",
                "--no-pager",
                "-n",
                "0",
                "sentry-enforcer",
                "sentry-sensor",
            ],
            Duration::from_secs(10),
        );
        let failed = self.exec(
            &["systemctl", "--failed", "--no-pager"],
            Duration::from_secs(10),
        );
        let tail = self.exec(
            &["journalctl", "-b", "--no-pager", "-q", "-n", "80"],
            Duration::from_secs(10),
        );
        format!(
            "==== container diagnostics\n---- units\n{}\n---- failed\n{}\n---- journal (last 80)\n{}\n{}",
            status.stdout,
            failed.stdout,
            tail.stdout,
            self.console_text()
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diag());
        }
        let Some(mut child) = self.child.get_mut().take() else {
            return;
        };
        let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        // systemd-nspawn turns SIGTERM into an orderly shutdown of the container's systemd.
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        // The container's processes are in nspawn's group only until they set up their
        // own sessions: make sure nothing is left inside the copy.
        if self.leader != 0 && Path::new(&format!("/proc/{}", self.leader)).exists() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(self.leader).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = wait_for_exit(self.leader, Duration::from_secs(5));
        }
        // `root` and `net` are dropped next.
    }
}

fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}
