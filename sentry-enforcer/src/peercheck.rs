//! Who may receive the detection input (issue #21): a peer on enforcer.sock with the
//! sensor's uid is not enough, since any process of that uid (a shared `nobody`, a
//! container that maps it) can connect first. The enforcer hands the NFLOG socket only to
//! a process it can tie to the installed sensor:
//!
//! * its executable (`/proc/PID/exe`, resolved by the kernel) is the configured sensor
//!   binary: same device and inode as `--sensor-exe` (by default `sentry-sensor` next to
//!   the enforcer's own executable);
//! * when the enforcer runs under systemd, the process runs in the sensor's unit
//!   (`--sensor-unit`, default `sentry-sensor.service`), which only the service manager
//!   can put a process into.
//!
//! Pid reuse: the process is named by a pidfd the kernel took at connect time
//! (SO_PEERPIDFD, Linux 6.5+; before that, pidfd_open of the SO_PEERCRED pid right after
//! accept), and the pidfd is polled after the /proc reads: a process that is still alive
//! then was the one /proc/PID described throughout (a pid is only reused after its process
//! exited and was reaped). The residual risks are in SECURITY.md.
//!
//! Reading another user's `/proc/PID/exe` (and, with ProtectProc=invisible, seeing its
//! /proc entry at all) takes CAP_SYS_PTRACE, because the sensor is not dumpable: the root
//! parent keeps it for this check (the worker passes it the accepted connection,
//! `sentry_privsep::Verb::Peer`); kill commands run in its helper, which does not hold it.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The sensor's systemd unit, as shipped (sentry-sensor/dist).
pub const DEFAULT_UNIT: &str = "sentry-sensor.service";
/// Bytes of /proc/PID/cgroup read; a longer file is not one the service manager made for
/// a unit (one line per hierarchy, paths bounded by PATH_MAX).
const CGROUP_MAX: u64 = 64 * 1024;

/// What the sensor must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The sensor binary; compared by device and inode with the peer's executable.
    pub exe: PathBuf,
    /// The systemd unit the peer must run in (`None`: the enforcer is not under systemd).
    pub unit: Option<String>,
}

/// The systemd unit a `/proc/PID/cgroup` text places its process in: the last component
/// of the unified hierarchy's path (`0::/system.slice/x.service`) when it is a service,
/// else that of the `name=systemd` hierarchy (cgroup v1 and hybrid set-ups). `None` when
/// neither names a `.service`.
pub fn unit_of(cgroup: &str) -> Option<&str> {
    let leaf = |want: &str| {
        cgroup.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_id, ctl, path) = (f.next()?, f.next()?, f.next()?);
            if ctl != want {
                return None;
            }
            let last = path.rsplit('/').next()?;
            (last.len() > ".service".len() && last.ends_with(".service")).then_some(last)
        })
    };
    leaf("").or_else(|| leaf("name=systemd"))
}

/// The `Pid:` field of a pidfd's `/proc/self/fdinfo/N` (Linux 5.10+): the process's pid
/// in our namespace, -1 once it has exited, 0 when it is outside our pid namespace.
pub fn fdinfo_pid(text: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether this process runs as a systemd service (its own cgroup is a unit's and the
/// service manager is systemd), and that unit.
pub fn own_unit() -> Option<String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let text = read_bounded(Path::new("/proc/self/cgroup")).ok()?;
    unit_of(&text).map(str::to_string)
}

/// The default sensor binary: `sentry-sensor` in the directory of our own executable.
pub fn default_exe() -> io::Result<PathBuf> {
    let me = std::fs::read_link("/proc/self/exe")?;
    Ok(me
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("sentry-sensor"))
}

fn read_bounded(p: &Path) -> io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(p)?
        .take(CGROUP_MAX)
        .read_to_string(&mut s)?;
    Ok(s)
}

/// The outcome of one check, with the peer's executable as far as it could be read (for
/// the alert that names a refused claimant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub exe: String,
    pub refused: Option<String>,
}

/// Check the process behind `pidfd` (pid `pid` in our namespace) against `want`.
pub fn check(want: &Expected, pid: u32, pidfd: &OwnedFd) -> Verdict {
    let mut v = Verdict {
        exe: "unknown".into(),
        refused: None,
    };
    let refuse = |mut v: Verdict, why: String| {
        v.refused = Some(why);
        v
    };
    if pid == 0 {
        return refuse(v, "peer pid unknown (another pid namespace)".into());
    }
    {
        use std::os::fd::AsRawFd;
        let info = format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd());
        if let Some(p) = read_bounded(Path::new(&info))
            .ok()
            .as_deref()
            .and_then(fdinfo_pid)
        {
            if p != i64::from(pid) {
                return refuse(
                    v,
                    format!("the process of pid {pid} has gone (pidfd names {p})"),
                );
            }
        }
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    match std::fs::read_link(proc_dir.join("exe")) {
        Ok(p) => v.exe = p.display().to_string(),
        Err(e) => v.exe = format!("unreadable ({e})"),
    }
    let got = match std::fs::metadata(proc_dir.join("exe")) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                " (the enforcer needs CAP_SYS_PTRACE in its bounding set to check it)"
            } else {
                ""
            };
            return refuse(v, format!("its executable cannot be checked: {e}{hint}"));
        }
    };
    let expected = match std::fs::metadata(&want.exe) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => {
            return refuse(
                v,
                format!("the sensor binary {} is not there: {e}", want.exe.display()),
            )
        }
    };
    if got != expected {
        let why = format!(
            "its executable is not the sensor binary {}",
            want.exe.display()
        );
        return refuse(v, why);
    }
    if let Some(unit) = &want.unit {
        let found = match read_bounded(&proc_dir.join("cgroup")) {
            Ok(t) => unit_of(&t).map(str::to_string),
            Err(e) => return refuse(v, format!("its cgroup cannot be read: {e}")),
        };
        if found.as_deref() != Some(unit.as_str()) {
            let why = format!(
                "it runs in {}, not in the sensor's unit {unit}",
                found.as_deref().unwrap_or("no systemd service")
            );
            return refuse(v, why);
        }
    }
    // Still alive after the reads: /proc/PID was this process all along.
    match crate::sys::readable_now(pidfd.as_fd()) {
        Ok(false) => v,
        Ok(true) => refuse(v, "it exited during the check".into()),
        Err(e) => refuse(v, format!("cannot poll its pidfd: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_from_cgroup_files() {
        assert_eq!(
            unit_of("0::/system.slice/sentry-sensor.service\n"),
            Some("sentry-sensor.service")
        );
        // Hybrid: the unified line is the root, name=systemd names the unit.
        let hybrid = "4:memory:/x\n1:name=systemd:/system.slice/sentry-sensor.service\n0::/\n";
        assert_eq!(unit_of(hybrid), Some("sentry-sensor.service"));
        assert_eq!(
            unit_of("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
        assert_eq!(unit_of("0::/\n"), None);
        assert_eq!(unit_of("0::/.service\n"), None);
        // A path component is only a name: a colon in it does not split the line again.
        assert_eq!(unit_of("0::/a:b/c.service"), Some("c.service"));
        // A sub-cgroup of the unit (delegation) is not the unit.
        assert_eq!(
            unit_of("0::/system.slice/sentry-sensor.service/evil\n"),
            None
        );
        assert_eq!(unit_of(""), None);
        assert_eq!(unit_of("garbage\n::\n:::\n"), None);
    }

    #[test]
    fn fdinfo() {
        assert_eq!(
            fdinfo_pid("pos:\t0\nflags:\t02000002\nPid:\t1234\nNSpid:\t1234\n"),
            Some(1234)
        );
        assert_eq!(fdinfo_pid("Pid:\t-1\n"), Some(-1));
        assert_eq!(fdinfo_pid("pos: 0\n"), None);
        assert_eq!(fdinfo_pid("Pid:\tx\n"), None);
    }

    #[test]
    fn own_process_checks() {
        let me = std::process::id();
        let fd = crate::sys::pidfd_open(me).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let ok = check(
            &Expected {
                exe: exe.clone(),
                unit: None,
            },
            me,
            &fd,
        );
        assert_eq!(ok.refused, None, "{ok:?}");
        assert_eq!(ok.exe, exe.display().to_string());
        // Another binary: refused, and named.
        let other = check(
            &Expected {
                exe: "/bin/sh".into(),
                unit: None,
            },
            me,
            &fd,
        );
        assert!(other.refused.unwrap().contains("not the sensor binary"));
        // A unit we do not run in.
        let unit = check(
            &Expected {
                exe,
                unit: Some("no-such.service".into()),
            },
            me,
            &fd,
        );
        assert!(unit.refused.unwrap().contains("no-such.service"));
    }

    #[test]
    fn an_exited_peer_is_refused() {
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        let fd = crate::sys::pidfd_open(pid).unwrap();
        child.wait().unwrap();
        let v = check(
            &Expected {
                exe: "/bin/true".into(),
                unit: None,
            },
            pid,
            &fd,
        );
        assert!(v.refused.is_some(), "{v:?}");
    }
}
