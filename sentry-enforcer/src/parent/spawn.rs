//! The parent's two children: the unprivileged worker (fork, drop to its user, exec
//! `sentry-worker --privsep ...` with its descriptors at fixed numbers) and the root
//! command helper (fork only, before the parent's seccomp filter).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use nix::unistd::{Gid, Pid, Uid};
use sentry_privsep::Channel;

use crate::sys;

/// How to start a worker (prepared once, before any confinement).
#[derive(Debug)]
pub struct Plan {
    pub exe: CString,
    /// `[exe, "--privsep", <the parent's own arguments>]`.
    pub argv: Vec<CString>,
    pub uid: Uid,
    pub gid: Gid,
    pub sensor: OwnedFd,
    pub control: OwnedFd,
}

/// A running worker: the parent's ends of its channels and a pidfd to poll.
#[derive(Debug)]
pub struct Worker {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    pub rpc: Channel,
    pub fx: Channel,
    pub events: Channel,
    pub started: Instant,
}

/// Our ends never block: a worker that stops reading is found out, not waited for.
pub fn nonblocking(c: &Channel) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = OFlag::from_bits_truncate(fcntl(c.fd(), FcntlArg::F_GETFL)?);
    fcntl(c.fd(), FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map(drop)
}

pub fn worker(plan: &Plan) -> std::io::Result<Worker> {
    let (rpc, rpc_w) = Channel::pair()?;
    let (fx, fx_w) = Channel::pair()?;
    let (events, ev_w) = Channel::pair()?;
    let parent = nix::unistd::getpid();
    let Some(pid) = sys::fork()? else {
        // 3 rpc, 4 fx, 5 events, 6 the sensor's listener, 7 the control listener.
        let fds = [
            &rpc_w.fd(),
            &fx_w.fd(),
            &ev_w.fd(),
            &plan.sensor.as_fd(),
            &plan.control.as_fd(),
        ];
        let e = become_worker(plan, parent, &fds.map(|f| f.as_raw_fd()));
        eprintln!("sentry-enforcer: worker start: {e}");
        std::process::exit(127);
    };
    let pidfd = sys::pidfd_open(u32::try_from(pid.as_raw()).unwrap_or(0))?;
    for c in [&rpc, &fx, &events] {
        nonblocking(c)?;
    }
    Ok(Worker {
        pid,
        pidfd,
        rpc,
        fx,
        events,
        started: Instant::now(),
    })
}

/// Send `sig` to the worker without CAP_KILL. A process may signal another uid's
/// processes only with CAP_KILL, and the worker runs as its own user: so a short-lived
/// child takes the worker's uid (setresuid: CAP_SETUID, which the parent keeps anyway to
/// start workers), sends the signal through the worker's pidfd it inherited (exactly that
/// process, even were its pid reused) and exits; the parent reaps it here.
///
/// Honestly: CAP_SETUID alone already gives the power to signal any uid's processes this
/// way. The gain is that the power is not ambient in the daemon: only this function, on a
/// pidfd the parent opened for its own child, can use it; a kill(2) anywhere else in the
/// parent (a timed-out `nft`'s process group) reaches only root's own children.
pub fn signal_worker(w: &Worker, uid: Uid, sig: nix::sys::signal::Signal) -> Result<(), String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    // The exit status of a child whose setresuid failed (a send failure exits with its
    // errno, below 125).
    const SETUID_FAILED: i32 = 125;
    if uid.is_root() {
        return Err("the worker's uid is root".into());
    }
    let Some(pid) = sys::fork().map_err(|e| format!("fork: {e}"))? else {
        // Only the uid matters to the kernel's check (kill_ok_by_cred): the child keeps
        // root's groups for the moment it lives, and setresuid to a non-root uid clears
        // every capability it had.
        let code = match nix::unistd::setresuid(uid, uid, uid) {
            Err(_) => SETUID_FAILED,
            Ok(()) => match sys::pidfd_send_signal(w.pidfd.as_fd(), sig) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(1).clamp(1, SETUID_FAILED - 1),
            },
        };
        sys::exit_now(code);
    };
    match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, 0)) => Ok(()),
        // ESRCH: the worker is already gone (its pidfd says so in the loop).
        Ok(WaitStatus::Exited(_, c)) if c == libc::ESRCH => Ok(()),
        Ok(WaitStatus::Exited(_, SETUID_FAILED)) => Err(format!("setresuid({uid}) failed")),
        Ok(WaitStatus::Exited(_, c)) => Err(format!(
            "pidfd_send_signal: {}",
            std::io::Error::from_raw_os_error(c)
        )),
        other => Err(format!("the signalling child ended: {other:?}")),
    }
}

/// In the forked child: die with the parent, drop to the worker user for good, put the
/// descriptors in place and exec. Returns only why it could not.
fn become_worker(plan: &Plan, parent: Pid, fds: &[i32; 5]) -> String {
    use nix::sys::signal::Signal;
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        return format!("PR_SET_PDEATHSIG: {e}");
    }
    if nix::unistd::getppid() != parent {
        return "the parent is gone".into();
    }
    if let Err(e) = sys::reset_signals() {
        return format!("signal mask: {e}");
    }
    if let Err(e) = drop_to(plan.uid, plan.gid) {
        return e;
    }
    // Again after the user switch, which clears it: the worker must die the moment the
    // parent does, so no listening socket outlives it (the next parent would take a live
    // one for another enforcer). It survives the exec of an ordinary binary.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return format!("PR_SET_PDEATHSIG: {e}");
    }
    if nix::unistd::getppid() != parent {
        return "the parent is gone".into();
    }
    if let Err(e) = sys::place_fds(fds) {
        return format!("descriptors: {e}");
    }
    let env: [CString; 0] = [];
    let e = nix::unistd::execve(&plan.exe, &plan.argv, &env).unwrap_err();
    format!("exec {:?}: {e}", plan.exe)
}

/// setgroups([]), setgid, setuid (real, effective and saved), no_new_privs, and check
/// that it took: no uid or gid 0 left and no capability in any set (setuid from 0 to
/// another uid clears all but the inheritable set, which is cleared here; verified, not
/// trusted).
pub fn drop_to(uid: Uid, gid: Gid) -> Result<(), String> {
    use caps::CapSet;
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| format!("inheritable set: {e}"))?;
    let ids = nix::unistd::getresuid().map_err(|e| e.to_string())?;
    let gids = nix::unistd::getresgid().map_err(|e| e.to_string())?;
    if [ids.real, ids.effective, ids.saved] != [uid; 3]
        || [gids.real, gids.effective, gids.saved] != [gid; 3]
        || uid.is_root()
    {
        return Err("the user switch did not take".into());
    }
    for set in [
        CapSet::Permitted,
        CapSet::Effective,
        CapSet::Inheritable,
        CapSet::Ambient,
    ] {
        match caps::read(None, set) {
            Ok(c) if c.is_empty() => {}
            Ok(c) => return Err(format!("capabilities left in {set:?}: {c:?}")),
            Err(e) => return Err(format!("cannot read capabilities: {e}")),
        }
    }
    Ok(())
}

/// The running command helper.
#[derive(Debug)]
pub struct Helper {
    pub pid: Pid,
    pub chan: Channel,
}

/// Whether a KILL_* program opens a raw IP socket, so needs CAP_NET_RAW: legacy iptables
/// (`xtables-legacy-multi` under any of its names) and the older ipchains and ipfwadm.
/// iptables-nft, ip(8) and route(8) talk netlink or an ioctl and need only CAP_NET_ADMIN,
/// which is why the shipped unit leaves CAP_NET_RAW out. Links are followed
/// (/usr/sbin/iptables → /etc/alternatives/iptables → xtables-legacy-multi).
fn raw_socket(program: &str) -> bool {
    let path = std::path::Path::new(program);
    let named = |p: &std::path::Path| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.contains("legacy") || n.starts_with("ipchains") || n.starts_with("ipfwadm")
        })
    };
    named(path) || std::fs::canonicalize(path).is_ok_and(|real| named(&real))
}

/// Fork the command helper: it keeps descriptor 3 (its channel) and stdio, CAP_NET_ADMIN
/// and, for KILL_ROUTE or KILL_RUN_CMD, CAP_NET_RAW (also as ambient capabilities, for the
/// commands) when it is held or a command is known to need it ([`raw_socket`]: then it is
/// asked for when missing), and serves until the parent's end closes.
pub fn helper(cfg: &policy::Config) -> std::io::Result<Helper> {
    let (chan, child) = Channel::pair()?;
    let Some(pid) = sys::fork()? else {
        let r = (|| -> Result<(), String> {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(|e| e.to_string())?;
            sys::reset_signals().map_err(|e| e.to_string())?;
            // systemd's stop signals every process of the unit: the helper must outlive
            // the parent's own shutdown (it dies with the parent, by PR_SET_PDEATHSIG), or
            // the parent would take its end for a failure and stop with an error.
            let mut stop = nix::sys::signal::SigSet::empty();
            for sig in [
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::Signal::SIGINT,
                nix::sys::signal::Signal::SIGHUP,
            ] {
                stop.add(sig);
            }
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_BLOCK,
                Some(&stop),
                None,
            )
            .map_err(|e| e.to_string())?;
            sys::place_fds(&[child.fd().as_raw_fd()]).map_err(|e| e.to_string())?;
            let mut keep = vec![caps::Capability::CAP_NET_ADMIN];
            let commands = [&cfg.kill_route, &cfg.kill_run_cmd];
            let legacy = commands
                .iter()
                .copied()
                .flatten()
                .any(|t| raw_socket(t.program()));
            let held = caps::has_cap(None, caps::CapSet::Permitted, caps::Capability::CAP_NET_RAW)
                .unwrap_or(false);
            if legacy || (held && commands.iter().any(|t| t.is_some())) {
                keep.push(caps::Capability::CAP_NET_RAW);
            }
            for w in super::confine::keep_only(&keep, &keep)? {
                // Said once, at start: a configured KILL_* command will fail without it.
                let w = w.replace(" is needed", " is needed by the configured actions");
                eprintln!(
                    "sentry-enforcer: adminalert: confinement: {w} (a legacy iptables opens a \
                     raw socket; to add it: systemctl edit sentry-enforcer, [Service] \
                     CapabilityBoundingSet=CAP_NET_RAW; without systemd: SENTRY_NET_RAW=1 \
                     sentry-pair.sh start)"
                );
            }
            let ch = Channel::from_inherited(3).map_err(|e| e.to_string())?;
            super::helper::serve(&ch, cfg);
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("sentry-enforcer: command helper: {e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    };
    Ok(Helper { pid, chan })
}

#[cfg(test)]
mod tests {
    use super::raw_socket;

    #[test]
    fn raw_socket_programs_by_name_and_through_links() {
        assert!(raw_socket("/usr/sbin/iptables-legacy"));
        assert!(raw_socket("/sbin/ipchains"));
        assert!(!raw_socket("/sbin/route"));
        assert!(!raw_socket("/sbin/ip"));
        let dir = tempfile::tempdir().unwrap();
        let link = |name: &str, to: &str| {
            let real = dir.path().join(to);
            std::fs::write(&real, b"").unwrap();
            let l = dir.path().join(name);
            std::os::unix::fs::symlink(&real, &l).unwrap();
            l.to_str().unwrap().to_owned()
        };
        assert!(raw_socket(&link("iptables", "xtables-legacy-multi")));
        assert!(!raw_socket(&link("ip6tables", "xtables-nft-multi")));
    }
}
