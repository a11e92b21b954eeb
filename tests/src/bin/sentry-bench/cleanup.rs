//! Cleanup that also runs when the run is interrupted (SIGINT/SIGTERM/SIGHUP) or a panic
//! aborts it (the release profile uses `panic = "abort"`, so destructors would not run).
//!
//! What this process creates and the normal Drop guards remove:
//! - network namespaces named `snt<our pid>x<n>-s|-t` (by the sentry-tests harness, for us);
//! - processes inside those namespaces (enforcer, sensor, PortSentry, tcpdump, nmap, ...);
//! - helper processes outside them (the fake sensor client), registered by pid;
//! - temporary directories, registered by path.
//!
//! The emergency path kills exactly the processes whose network namespace is one of ours
//! (compared by namespace inode) or whose pid was registered, deletes our namespaces and
//! removes the registered directories. It never matches processes by name.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::sys;

#[derive(Default)]
struct Registry {
    pids: BTreeSet<u32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

pub fn register_pid(pid: u32) {
    with(|r| r.pids.insert(pid));
}

pub fn unregister_pid(pid: u32) {
    with(|r| r.pids.remove(&pid));
}

pub fn register_dir(dir: PathBuf) {
    with(|r| r.dirs.push(dir));
}

pub fn unregister_dir(dir: &std::path::Path) {
    with(|r| r.dirs.retain(|d| d != dir));
}

/// Prefix of the namespaces the sentry-tests harness creates for this process.
fn our_prefix() -> String {
    format!("snt{}x", std::process::id())
}

/// Our namespaces that exist right now.
pub fn our_namespaces() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let prefix = our_prefix();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Inode of a network namespace file.
pub fn netns_inode(path: &str) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Pids of the processes whose network namespace has inode `ino`.
pub fn pids_in_netns(ino: u64) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| netns_inode(&format!("/proc/{pid}/ns/net")) == Some(ino))
        .collect()
}

fn signal_all(pids: &[u32], sig: Signal) {
    for &p in pids {
        if let Ok(p) = i32::try_from(p) {
            let _ = kill(Pid::from_raw(p), sig);
        }
    }
}

/// SIGTERM the given processes, wait up to `grace`, then SIGKILL the survivors.
pub fn terminate(pids: &[u32], grace: Duration) {
    signal_all(pids, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if pids.iter().all(|p| !sentry_tests::sentry::pid_alive(*p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_all(pids, Signal::SIGKILL);
}

/// Kill everything we started and remove everything we created. Safe to call twice.
pub fn emergency_cleanup() {
    let (pids, dirs) = with(|r| {
        (
            r.pids.iter().copied().collect::<Vec<_>>(),
            std::mem::take(&mut r.dirs),
        )
    });
    let namespaces = our_namespaces();
    let mut victims = pids;
    for ns in &namespaces {
        if let Some(ino) = netns_inode(&format!("/run/netns/{ns}")) {
            victims.extend(pids_in_netns(ino));
        }
    }
    terminate(&victims, Duration::from_secs(3));
    for ns in &namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    for d in dirs {
        let _ = fs::remove_dir_all(&d);
    }
}

/// Install the signal handler, the watcher thread that acts on it, and a panic hook that
/// cleans up before the process aborts.
pub fn install() {
    if let Err(e) = sys::install_interrupt_handler() {
        eprintln!("sentry-bench: cannot install the interrupt handler: {e}");
        std::process::exit(2);
    }
    std::thread::spawn(|| loop {
        if sys::INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("\nsentry-bench: interrupted: stopping processes, deleting namespaces and temp files");
            emergency_cleanup();
            std::process::exit(130);
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("sentry-bench: panic: cleaning up before exit");
        emergency_cleanup();
    }));
}

/// A temporary directory removed on drop and also by the emergency cleanup.
#[derive(Debug)]
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        let t = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let path = t.keep();
        register_dir(path.clone());
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        unregister_dir(&self.path);
    }
}

/// A child process (started through `ip netns exec`, so the pid is the program's own)
/// stopped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Option<std::process::Child>,
}

impl ChildGuard {
    pub fn new(child: std::process::Child) -> ChildGuard {
        register_pid(child.id());
        ChildGuard { child: Some(child) }
    }

    /// Send `sig`, wait up to 5 s for the exit, then SIGKILL.
    pub fn stop(&mut self, sig: Signal) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = c.id();
        if let Ok(p) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(p), sig);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let st = loop {
            if let Ok(Some(st)) = c.try_wait() {
                break Some(st);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                break c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        unregister_pid(pid);
        st
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Signal::SIGTERM);
    }
}
