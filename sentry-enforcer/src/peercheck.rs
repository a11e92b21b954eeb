//! Who may receive the detection input (issue #21): a peer on enforcer.sock with the
//! sensor's uid is not enough, since any process of that uid (a shared `nobody`, a
//! container that maps it) can connect first. The enforcer hands the NFLOG socket only to
//! a process it can tie to the installed sensor:
//!
//! * when the enforcer runs under systemd, the process runs in the sensor's unit
//!   (`--sensor-unit`, default `sentry-sensor.service`): that unit's `cgroup.procs` lists
//!   it. Only the service manager can put a process into that cgroup, and nothing but
//!   the sensor runs in it (its unit has no other command, and its seccomp filter forbids
//!   execve and fork);
//! * without systemd, its executable (`/proc/PID/exe`, resolved by the kernel) is the
//!   configured sensor binary: same device and inode as `--sensor-exe` (by default
//!   `sentry-sensor` next to the enforcer's own executable).
//!
//! Why not both under systemd: reading another user's `/proc/PID/exe` takes
//! CAP_SYS_PTRACE, because the sensor is not dumpable (and under ProtectProc=invisible
//! its whole /proc entry is hidden without it), while a unit's `cgroup.procs` is readable
//! by anyone. The executable check would add nothing the unit check does not already
//! give, and CAP_SYS_PTRACE is one of the most powerful capabilities a root process can
//! hold; so the shipped unit does not grant it, and a parent under systemd drops it even
//! when it holds it ([`needs_ptrace`]). Without systemd the parent keeps it for the
//! executable check.
//!
//! Pid reuse: the process is named by a pidfd the kernel took at connect time
//! (SO_PEERPIDFD, Linux 6.5+; before that, pidfd_open of the SO_PEERCRED pid right after
//! accept), and the pidfd is polled after the /proc reads: a process that is still alive
//! then was the one /proc/PID described throughout (a pid is only reused after its process
//! exited and was reaped). The residual risks are in SECURITY.md.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The sensor's systemd unit, as shipped (sentry-sensor/dist).
pub const DEFAULT_UNIT: &str = "sentry-sensor.service";
/// Bytes of a cgroup file read (/proc/self/cgroup: one line per hierarchy, paths bounded
/// by PATH_MAX; a sensor unit's cgroup.procs: a line per process, and it has one).
const CGROUP_MAX: u64 = 64 * 1024;

/// What the sensor must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The sensor binary; compared by device and inode with the peer's executable.
    pub exe: PathBuf,
    /// The systemd unit the peer must run in (`None`: the enforcer is not under systemd).
    pub unit: Option<Unit>,
}

/// A systemd service and its cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    /// Under /sys/fs/cgroup: its `cgroup.procs` lists the unit's processes.
    pub dir: PathBuf,
}

impl Unit {
    /// The unit `name` in the same slice as `own` (the sensor's and the enforcer's units
    /// are both system services).
    pub fn sibling(own: &Unit, name: &str) -> Unit {
        let slice = own
            .dir
            .parent()
            .unwrap_or_else(|| Path::new("/sys/fs/cgroup"));
        Unit {
            name: name.into(),
            dir: slice.join(name),
        }
    }
}

/// Whether `name` is a systemd service's name (what `--sensor-unit` may be): at most 255
/// bytes of systemd's unit-name characters, ending in `.service`. It becomes a path
/// component under /sys/fs/cgroup, so it can hold no `/`.
pub fn is_service_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
    name.len() <= 255
        && name.len() > ".service".len()
        && name.ends_with(".service")
        && name.chars().all(ok)
}

/// Where a `/proc/PID/cgroup` text places its process as a systemd service: the
/// hierarchy (`""` unified, or `name=systemd` on cgroup v1 and hybrid set-ups) and the
/// path whose last component names the `.service`. The unified line first.
pub fn service_cgroup(cgroup: &str) -> Option<(&str, &str)> {
    let find = |want: &str| {
        cgroup.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_id, ctl, path) = (f.next()?, f.next()?, f.next()?);
            let last = path.rsplit('/').next()?;
            (ctl == want && last.len() > ".service".len() && last.ends_with(".service"))
                .then_some((ctl, path))
        })
    };
    find("").or_else(|| find("name=systemd"))
}

/// The `Pid:` field of a pidfd's `/proc/self/fdinfo/N` (Linux 5.10+): the process's pid
/// in our namespace, -1 once it has exited, 0 when it is outside our pid namespace.
pub fn fdinfo_pid(text: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// This process's systemd service and its cgroup directory, when it runs as one (its own
/// cgroup is a unit's and the service manager is systemd).
pub fn own_unit() -> Option<Unit> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let text = read_bounded(Path::new("/proc/self/cgroup")).ok()?;
    let (ctl, path) = service_cgroup(&text)?;
    let mounts: &[&str] = if ctl.is_empty() {
        &["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
    } else {
        &["/sys/fs/cgroup/systemd"]
    };
    let dir = mounts
        .iter()
        .map(|m| PathBuf::from(format!("{m}{path}")))
        .find(|d| d.join("cgroup.procs").is_file())?;
    Some(Unit {
        name: path.rsplit('/').next()?.to_string(),
        dir,
    })
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
    v.exe = match (std::fs::read_link(proc_dir.join("exe")), &want.unit) {
        (Ok(p), _) => p.display().to_string(),
        (Err(_), Some(u)) => format!("not read (checked by its unit {})", u.name),
        (Err(e), None) => format!("unreadable ({e})"),
    };
    let refused = match &want.unit {
        Some(unit) => unit_refusal(pid, unit),
        None => exe_refusal(&proc_dir, &want.exe),
    };
    if let Some(why) = refused {
        return refuse(v, why);
    }
    // Still alive after the reads: /proc/PID was this process all along.
    match crate::sys::readable_now(pidfd.as_fd()) {
        Ok(false) => v,
        Ok(true) => refuse(v, "it exited during the check".into()),
        Err(e) => refuse(v, format!("cannot poll its pidfd: {e}")),
    }
}

/// Whether the check needs CAP_SYS_PTRACE: only the executable check (no systemd unit)
/// reads the not-dumpable sensor's `/proc/PID/exe`.
pub fn needs_ptrace(want: &Expected) -> bool {
    want.unit.is_none()
}

/// Why process `pid` does not run in `unit`, if it does not: the unit's `cgroup.procs`
/// (readable by anyone, unlike another user's /proc entry under ProtectProc=invisible)
/// must list it. A process of a sub-cgroup (delegation) is not listed, and not the unit.
fn unit_refusal(pid: u32, unit: &Unit) -> Option<String> {
    let procs = unit.dir.join("cgroup.procs");
    let text = match read_bounded(&procs) {
        Ok(t) => t,
        Err(e) => {
            return Some(format!(
                "the sensor's unit {} has no cgroup to check ({}: {e}; is it running, in the enforcer's slice?)",
                unit.name,
                procs.display()
            ))
        }
    };
    let pid = pid.to_string();
    (!text.lines().any(|l| l.trim() == pid))
        .then(|| format!("it does not run in the sensor's unit {}", unit.name))
}

/// Why the executable of `/proc/PID` (`proc_dir`) is not the sensor binary `exe`, if it
/// is not.
fn exe_refusal(proc_dir: &Path, exe: &Path) -> Option<String> {
    let got = match std::fs::metadata(proc_dir.join("exe")) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                " (without systemd the enforcer needs CAP_SYS_PTRACE to check it)"
            } else {
                ""
            };
            return Some(format!("its executable cannot be checked: {e}{hint}"));
        }
    };
    let expected = match std::fs::metadata(exe) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => {
            return Some(format!(
                "the sensor binary {} is not there: {e}",
                exe.display()
            ))
        }
    };
    (got != expected).then(|| format!("its executable is not the sensor binary {}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_of(cgroup: &str) -> Option<&str> {
        service_cgroup(cgroup).and_then(|(_, p)| p.rsplit('/').next())
    }

    #[test]
    fn units_from_cgroup_files() {
        assert_eq!(
            unit_of("0::/system.slice/sentry-sensor.service\n"),
            Some("sentry-sensor.service")
        );
        // Hybrid: the unified line is the root, name=systemd names the unit.
        let hybrid = "4:memory:/x\n1:name=systemd:/system.slice/sentry-sensor.service\n0::/\n";
        assert_eq!(unit_of(hybrid), Some("sentry-sensor.service"));
        // ... and the hierarchy it is in, so its cgroup.procs is looked for there.
        assert_eq!(
            service_cgroup(hybrid),
            Some(("name=systemd", "/system.slice/sentry-sensor.service"))
        );
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

    /// Under systemd the unit alone decides (no CAP_SYS_PTRACE for the executable);
    /// without it the executable does.
    #[test]
    fn the_unit_or_the_executable_decides() {
        let d = tempfile::tempdir().unwrap();
        let own = Unit {
            name: "sentry-enforcer.service".into(),
            dir: d.path().join("system.slice/sentry-enforcer.service"),
        };
        let unit = Unit::sibling(&own, "sentry-sensor.service");
        assert_eq!(
            unit.dir,
            d.path().join("system.slice/sentry-sensor.service")
        );
        let missing = unit_refusal(41, &unit).unwrap();
        assert!(missing.contains("has no cgroup to check"), "{missing}");
        std::fs::create_dir_all(&unit.dir).unwrap();
        std::fs::write(unit.dir.join("cgroup.procs"), "41\n").unwrap();
        assert_eq!(unit_refusal(41, &unit), None);
        // Not a prefix or a substring: the whole line.
        for pid in [4, 1, 410, 141] {
            let r = unit_refusal(pid, &unit).unwrap();
            assert!(r.contains("does not run in the sensor's unit"), "{r}");
        }

        let bin = d.path().join("sentry-sensor");
        std::fs::write(&bin, "").unwrap();
        std::os::unix::fs::symlink(&bin, d.path().join("exe")).unwrap();
        assert_eq!(exe_refusal(d.path(), &bin), None);
        let copy = d.path().join("copy");
        std::fs::write(&copy, "").unwrap();
        let wrong = exe_refusal(d.path(), &copy).unwrap();
        assert!(wrong.contains("not the sensor binary"), "{wrong}");
        let gone = exe_refusal(d.path(), &d.path().join("nope")).unwrap();
        assert!(gone.contains("is not there"), "{gone}");
        std::fs::remove_file(d.path().join("exe")).unwrap();
        assert!(exe_refusal(d.path(), &bin)
            .unwrap()
            .contains("cannot be checked"));

        let want = |unit: Option<Unit>| Expected {
            exe: bin.clone(),
            unit,
        };
        assert!(needs_ptrace(&want(None)));
        assert!(!needs_ptrace(&want(Some(unit))));
    }

    #[test]
    fn service_names() {
        for good in [
            "sentry-sensor.service",
            "a.service",
            "x@1.service",
            "a\\x2d.service",
        ] {
            assert!(is_service_name(good), "{good}");
        }
        let long = format!("{}.service", "a".repeat(248));
        for bad in [
            "",
            ".service",
            "sentry-sensor",
            "sentry-sensor.socket",
            "../x.service",
            "a/b.service",
            "a b.service",
            "é.service",
            long.as_str(),
        ] {
            assert!(!is_service_name(bad), "{bad}");
        }
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
                unit: Some(Unit {
                    name: "no-such.service".into(),
                    dir: "/sys/fs/cgroup/system.slice/no-such.service".into(),
                }),
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
