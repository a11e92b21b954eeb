//! Confinement, applied once every socket and file is open and before the first packet is
//! parsed: drop to the service user, drop every capability (the sensor needs none to read
//! the NFLOG socket the enforcer hands over; CAP_NET_BIND_SERVICE, if a basic mode needed
//! it, is no longer needed once its sockets are bound), forbid regaining privilege (no_new_privs, not dumpable), then
//! install a seccomp allowlist that kills the process on any other system call.

use std::collections::BTreeMap;
use std::fmt;

use caps::CapSet;
use nix::unistd::{Gid, Uid, User};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

use crate::sys;

#[derive(Debug)]
pub struct ConfineError(pub String);

impl fmt::Display for ConfineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfineError {}

fn err(m: impl Into<String>) -> ConfineError {
    ConfineError(m.into())
}

/// Resolved service user.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Resolve `--user` (before anything is opened, so a typo fails fast). Started as root,
/// a user is required and must not be root; started unprivileged, `--user` (if given)
/// must name the current user.
pub fn resolve_user(user: Option<&str>) -> Result<Option<Target>, ConfineError> {
    let me = Uid::current();
    let euid = Uid::effective();
    match user {
        None if me.is_root() || euid.is_root() => Err(err(
            "refusing to run as root: pass --user USER (e.g. --user sentry) or start the \
             sensor as an unprivileged user",
        )),
        None => Ok(None),
        Some(name) => {
            let u = User::from_name(name)
                .map_err(|e| err(format!("--user {name}: cannot look up user: {e}")))?
                .ok_or_else(|| err(format!("--user {name}: no such user")))?;
            if u.uid.is_root() {
                return Err(err(format!("--user {name}: refusing to run as uid 0")));
            }
            if !me.is_root() && !euid.is_root() && u.uid != me {
                return Err(err(format!(
                    "--user {name}: already running as uid {me}; cannot switch users without root"
                )));
            }
            Ok(Some(Target {
                name: name.to_string(),
                uid: u.uid,
                gid: u.gid,
            }))
        }
    }
}

/// Switch to `target` (if running as root) and drop every capability in every set.
pub fn drop_privileges(target: Option<&Target>) -> Result<(), ConfineError> {
    let root = Uid::current().is_root() || Uid::effective().is_root();
    if root {
        let t = target.ok_or_else(|| err("running as root without a target user"))?;
        // The bounding set can only be reduced while CAP_SETPCAP is still held.
        caps::clear(None, CapSet::Bounding)
            .map_err(|e| err(format!("cannot clear the capability bounding set: {e}")))?;
        nix::unistd::setgroups(&[t.gid]).map_err(|e| err(format!("setgroups({}): {e}", t.gid)))?;
        nix::unistd::setresgid(t.gid, t.gid, t.gid)
            .map_err(|e| err(format!("setresgid({}): {e}", t.gid)))?;
        nix::unistd::setresuid(t.uid, t.uid, t.uid)
            .map_err(|e| err(format!("setresuid({}): {e}", t.uid)))?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set)
            .map_err(|e| err(format!("cannot clear {set:?} capabilities: {e}")))?;
    }
    // Verify rather than trust.
    if Uid::current().is_root() || Uid::effective().is_root() {
        return Err(err("still uid 0 after dropping privileges"));
    }
    let eff = caps::read(None, CapSet::Effective).map_err(|e| err(format!("read caps: {e}")))?;
    let prm = caps::read(None, CapSet::Permitted).map_err(|e| err(format!("read caps: {e}")))?;
    if !eff.is_empty() || !prm.is_empty() {
        return Err(err(format!(
            "capabilities left after dropping: {eff:?} {prm:?}"
        )));
    }
    sys::set_no_new_privs().map_err(|e| err(format!("PR_SET_NO_NEW_PRIVS: {e}")))?;
    sys::set_not_dumpable().map_err(|e| err(format!("PR_SET_DUMPABLE: {e}")))?;
    Ok(())
}

fn cond(arg: u8, op: Op, val: u64) -> Result<Cond, ConfineError> {
    Cond::new(arg, Len::Qword, op, val).map_err(|e| err(format!("seccomp condition: {e}")))
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule, ConfineError> {
    SeccompRule::new(conds).map_err(|e| err(format!("seccomp rule: {e}")))
}

/// The allowlist. Every entry: the system call and why the running sensor needs it.
/// Anything else kills the process (SECCOMP_RET_KILL_PROCESS).
pub fn filter() -> Result<BpfProgram, ConfineError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let any = |rules: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: libc::c_long| {
        rules.insert(nr, Vec::new());
    };
    let af_unix = u64::try_from(libc::AF_UNIX).unwrap_or(1);
    let prot_exec = u64::try_from(libc::PROT_EXEC).unwrap_or(4);
    // FIONBIO (asm-generic/ioctls.h; x86_64 and aarch64).
    let fionbio: u64 = 0x5421;
    let pid = u64::from(std::process::id());

    // read: sock_diag replies (or /proc/net tables).
    any(&mut rules, libc::SYS_read);
    // recvmsg: the enforcer connection, read with recvmsg so the NFLOG socket the enforcer
    // hands over (SCM_RIGHTS) is received instead of discarded.
    any(&mut rules, libc::SYS_recvmsg);
    // write: sock_diag requests, the enforcer connection, PORT_BANNER to basic-mode
    // peers, stderr logging. (A write on the NFLOG socket is a netlink request to the
    // kernel's nfnetlink_log, which checks CAP_NET_ADMIN: the sensor holds none, so it
    // cannot rebind or reconfigure the group.)
    any(&mut rules, libc::SYS_write);
    // writev: std's stderr writer may coalesce buffers.
    any(&mut rules, libc::SYS_writev);
    // sendto without a destination address only: syslog datagrams on the connected
    // /dev/log socket. A destination (e.g. a datagram to another host through a
    // basic-mode UDP socket) kills the process.
    rules.insert(libc::SYS_sendto, vec![rule(vec![cond(4, Op::Eq, 0)?])?]);
    // recvfrom: basic-mode UDP datagrams; NFLOG datagrams (recv(2) with MSG_TRUNC is
    // recvfrom without an address).
    any(&mut rules, libc::SYS_recvfrom);
    // accept4: basic-mode TCP connections.
    any(&mut rules, libc::SYS_accept4);
    // close: accepted connections, dropped enforcer/syslog sockets.
    any(&mut rules, libc::SYS_close);
    // lseek: rewind the /proc/net socket tables opened at start-up.
    any(&mut rules, libc::SYS_lseek);
    // ppoll: the main event loop (sys::poll, microsecond timeouts for the ring's pacer).
    any(&mut rules, libc::SYS_ppoll);
    // clock_gettime: time stamps for the state window (normally served by the vDSO).
    any(&mut rules, libc::SYS_clock_gettime);
    // brk, munmap, mremap, madvise: the memory allocator.
    any(&mut rules, libc::SYS_brk);
    any(&mut rules, libc::SYS_munmap);
    any(&mut rules, libc::SYS_mremap);
    any(&mut rules, libc::SYS_madvise);
    // mmap / mprotect: the allocator, but never executable memory.
    let no_exec = || rule(vec![cond(2, Op::MaskedEq(prot_exec), 0)?]);
    rules.insert(libc::SYS_mmap, vec![no_exec()?]);
    rules.insert(libc::SYS_mprotect, vec![no_exec()?]);
    // futex: std's internal locks (stderr, once-cells).
    any(&mut rules, libc::SYS_futex);
    // getrandom: std's HashMap keys if a new map is seeded late.
    any(&mut rules, libc::SYS_getrandom);
    // socket: only AF_UNIX, to reconnect to enforcer.sock and /dev/log after a restart.
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![cond(0, Op::Eq, af_unix)?])?],
    );
    // connect: the AF_UNIX reconnects above. The address is a pointer, so the filter
    // cannot check it; the other sockets are the NFLOG and sock_diag sockets (netlink,
    // kernel only) and basic-mode sockets, through which nothing
    // beyond what any unprivileged process may send can be sent.
    any(&mut rules, libc::SYS_connect);
    // ioctl(FIONBIO) only: std's set_nonblocking on new enforcer/syslog/accepted sockets.
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![cond(1, Op::Eq, fionbio)?])?],
    );
    // fcntl(F_GETFD) only: std checks that a descriptor is still open before closing it.
    let f_getfd = u64::try_from(libc::F_GETFD).unwrap_or(1);
    rules.insert(
        libc::SYS_fcntl,
        vec![rule(vec![cond(1, Op::Eq, f_getfd)?])?],
    );
    // rt_sigreturn, restart_syscall: signal delivery and interrupted-call restarts.
    any(&mut rules, libc::SYS_rt_sigreturn);
    any(&mut rules, libc::SYS_restart_syscall);
    // rt_sigprocmask, gettid, tgkill(own pid): abort() on a fatal error raises SIGABRT.
    any(&mut rules, libc::SYS_rt_sigprocmask);
    any(&mut rules, libc::SYS_gettid);
    rules.insert(libc::SYS_tgkill, vec![rule(vec![cond(0, Op::Eq, pid)?])?]);
    // sigaltstack: std's stack-overflow handler bookkeeping on exit.
    any(&mut rules, libc::SYS_sigaltstack);
    // exit_group, exit: shutting down.
    any(&mut rules, libc::SYS_exit_group);
    any(&mut rules, libc::SYS_exit);

    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| err(format!("seccomp: unsupported architecture: {e:?}")))?;
    let f = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| err(format!("seccomp filter: {e}")))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| err(format!("seccomp compile: {e}")))
}

/// Install the filter on this (the only) thread.
pub fn apply_seccomp() -> Result<(), ConfineError> {
    let prog = filter()?;
    seccompiler::apply_filter(&prog).map_err(|e| err(format!("seccomp install: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles() {
        let p = filter().unwrap();
        assert!(p.len() > 20);
    }

    #[test]
    fn root_without_user_is_refused() {
        if Uid::current().is_root() {
            let e = resolve_user(None).unwrap_err();
            assert!(e.0.contains("refusing to run as root"), "{e}");
            let e = resolve_user(Some("root")).unwrap_err();
            assert!(e.0.contains("uid 0"), "{e}");
            let e = resolve_user(Some("no-such-user-xyz")).unwrap_err();
            assert!(e.0.contains("no such user"), "{e}");
        } else {
            eprintln!("SKIPPED (needs root): root_without_user_is_refused");
        }
    }
}
