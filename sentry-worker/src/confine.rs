//! The worker's seccomp allowlist, installed by [`crate::daemon`] once start-up is done
//! (the parent's descriptors adopted, its Hello answered, the engine open with its
//! state, audit log and netlink sockets) and before any other thread exists, so every
//! thread the worker starts inherits it. Anything else kills the process
//! (SECCOMP_RET_KILL_PROCESS): the parent sees the worker die of SIGSYS, says so and
//! restarts it; its blocks stay in the kernel meanwhile.
//!
//! The worker already runs as its own user with no capability and no_new_privs; the
//! filter takes away what such a process could still do if it were taken over: start
//! programs (no `execve`, no fork: `clone` only makes threads), trace or signal other
//! processes (no `ptrace`, `kill` or `process_vm_*`; `tgkill` only to itself), enter
//! namespaces, mount, change ids, load executable memory (`mmap`/`mprotect` without
//! PROT_EXEC), and open sockets other than Unix datagram sockets (syslog's /dev/log) and
//! NETLINK_ROUTE sockets (address and route dumps and notifications). The one
//! NETLINK_SOCK_DIAG socket, RESTART_GRACE's served-port poller's ([`crate::served`]), is
//! opened before the filter and only sent to and read from under it (`sendto`,
//! `recvfrom`): no new sock_diag socket is allowed.
//!
//! The list was taken from the worker as it runs the end-to-end tests (strace, and the
//! filter built with `SENTRY_SECCOMP_AUDIT=1` so that the kernel logs each system call it
//! would refuse instead of killing: audit records `type=1326`). SECURITY.md says how.
//!
//! A worker the parent restarts runs under the parent's filter too (a filter is inherited
//! and never removed): every system call here must also be in the parent's list
//! (`sentry_enforcer::parent::confine`), which a test below checks.
//!
//! `--recover` runs without this filter: it is a one-shot command an administrator runs
//! by hand with the enforcer stopped (as the worker user, no capability, no_new_privs),
//! it reads only the state directory, BLOCKED_FILE and hosts.deny and writes only the
//! state directory, and it has no peer: no socket, no request from anyone.

use sentry_enforcer::parent::confine::{clone3_enosys, compile, Rules, CLONE_NS};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompRule,
};

/// Built with `SENTRY_SECCOMP_AUDIT` set (any value), the filter logs what it would
/// refuse (SECCOMP_RET_LOG) instead of killing the process: for finding the system calls
/// a change needs, never for a build that is shipped.
const AUDIT: bool = option_env!("SENTRY_SECCOMP_AUDIT").is_some();

/// The system calls allowed with any arguments, and why the running worker makes them.
#[rustfmt::skip]
pub const ALLOWED: &[(libc::c_long, &str)] = &[
    // Descriptors: channels, sockets, files.
    (libc::SYS_read, "the state, ignore list, resolver and lease files, /proc, sockets"),
    (libc::SYS_write, "audit log, journal, snapshot, metrics textfile, BLOCKED_FILE, stderr, sockets"),
    (libc::SYS_writev, "std's stderr writer may coalesce buffers"),
    (libc::SYS_close, "every descriptor"),
    (libc::SYS_ppoll, "waiting for the address-change socket (poll() on aarch64)"),
    // Sockets (which ones may be opened: `socket` below).
    (libc::SYS_bind, "NETLINK_ROUTE sockets (dumps, the notification groups)"),
    (libc::SYS_connect, "the /dev/log datagram socket (a path the filter cannot read; the socket may only be a Unix datagram or NETLINK_ROUTE one)"),
    (libc::SYS_accept4, "sensor and control connections on the listeners the parent bound"),
    (libc::SYS_getsockname, "the netlink port id of a dump socket (getifaddrs)"),
    (libc::SYS_getsockopt, "SO_PEERCRED and SO_PEERGROUPS of a connecting client (reading only)"),
    (libc::SYS_sendto, "netlink dump requests, syslog lines, frames to the sensor and control clients"),
    (libc::SYS_recvfrom, "netlink answers and notifications, sensor and control frames"),
    (libc::SYS_sendmsg, "requests to the parent, the NFLOG socket handed to the sensor (SCM_RIGHTS)"),
    (libc::SYS_recvmsg, "the parent's replies (an NFLOG socket with one), netlink dumps"),
    // Files: state, journal, audit log, metrics textfile, BLOCKED_FILE, infrastructure.
    (libc::SYS_openat, "every file (O_NOFOLLOW where the worker writes)"),
    (libc::SYS_newfstatat, "metadata: owner and mode checks, file stamps"),
    (libc::SYS_fstat, "metadata of open files (glibc before 2.33; later ones use newfstatat)"),
    (libc::SYS_statx, "std's metadata"),
    (libc::SYS_getdents64, "lease directories"),
    (libc::SYS_unlinkat, "stale temporary files (aarch64)"),
    (libc::SYS_renameat2, "atomic snapshot, textfile and BLOCKED_FILE writes (glibc's rename on aarch64)"),
    (libc::SYS_mkdirat, "the audit log's directory, if it is gone when SIGHUP reopens the log (aarch64)"),
    (libc::SYS_fchmodat, "the metrics textfile's mode (std's set_permissions on aarch64)"),
    (libc::SYS_ftruncate, "the journal emptied after a snapshot"),
    (libc::SYS_fsync, "snapshot, journal and their directory"),
    (libc::SYS_fdatasync, "every journal record, the metrics textfile"),
    // Memory (executable mappings: `mmap` and `mprotect` below).
    (libc::SYS_brk, "allocator"),
    (libc::SYS_munmap, "allocator, thread stacks"),
    (libc::SYS_mremap, "allocator"),
    (libc::SYS_madvise, "allocator, thread stacks freed"),
    // Threads and their runtime.
    (libc::SYS_futex, "locks, condition variables, channels, joins"),
    (libc::SYS_set_robust_list, "a new thread (glibc)"),
    (libc::SYS_rseq, "a new thread (glibc)"),
    (libc::SYS_sigaltstack, "std's stack-overflow guard of each thread"),
    (libc::SYS_rt_sigprocmask, "glibc masks signals around thread creation; abort()"),
    (libc::SYS_rt_sigaction, "glibc's handler for its internal signal at the first thread, std's stack-overflow handlers"),
    (libc::SYS_rt_sigtimedwait, "the signal thread's sigwait (SIGHUP, SIGTERM, SIGINT)"),
    (libc::SYS_rt_sigreturn, "signal delivery"),
    (libc::SYS_restart_syscall, "interrupted calls"),
    (libc::SYS_sched_yield, "std's channels back off under contention (the effects doorbell, watch streams)"),
    (libc::SYS_sched_getaffinity, "glibc's thread start"),
    (libc::SYS_sched_getattr, "the sensor thread's short scheduler slice"),
    (libc::SYS_sched_setattr, "the sensor thread's short scheduler slice (own thread: pid 0)"),
    (libc::SYS_getrandom, "std's hash map keys, per thread"),
    (libc::SYS_clock_gettime, "time stamps (normally the vDSO)"),
    (libc::SYS_clock_nanosleep, "the one-second tick, back-offs"),
    (libc::SYS_nanosleep, "sleeps (glibc before 2.31; later ones use clock_nanosleep)"),
    (libc::SYS_getpid, "syslog lines, temporary file names, abort()"),
    (libc::SYS_gettid, "std, abort()"),
    (libc::SYS_geteuid, "the owner check of METRICS_DIR before each textfile write"),
    (libc::SYS_clone3, "allowed here so that the first filter's ENOSYS answers it (the strictest of two filters' actions wins)"),
    (libc::SYS_exit, "a thread ends"),
    (libc::SYS_exit_group, "the worker ends (SIGTERM, the parent gone)"),
];

/// The legacy forms x86_64 programs still use (aarch64 has only the *at forms).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
pub const ALLOWED_X86: &[(libc::c_long, &str)] = &[
    (libc::SYS_poll, "waiting for the address-change socket"),
    (libc::SYS_unlink, "stale temporary files (std's remove_file)"),
    (libc::SYS_rename, "atomic snapshot, textfile and BLOCKED_FILE writes"),
    (libc::SYS_mkdir, "the audit log's directory, if it is gone when SIGHUP reopens the log"),
    (libc::SYS_chmod, "the metrics textfile's mode (std's set_permissions)"),
];
#[cfg(not(target_arch = "x86_64"))]
pub const ALLOWED_X86: &[(libc::c_long, &str)] = &[];

/// What makes a clone a thread: same memory, same thread group.
const CLONE_THREAD: u64 = (libc::CLONE_VM | libc::CLONE_THREAD) as u64;

/// `SOCK_TYPE_MASK` (linux/net.h): the type without SOCK_CLOEXEC and SOCK_NONBLOCK.
const SOCK_TYPE_MASK: u64 = 0xf;

fn u(v: libc::c_int) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn rule(conds: &[(u8, Op, u64)]) -> Result<SeccompRule, String> {
    let c = conds
        .iter()
        .map(|(arg, op, v)| Cond::new(*arg, Len::Qword, op.clone(), *v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("seccomp condition: {e}"))?;
    SeccompRule::new(c).map_err(|e| format!("seccomp rule: {e}"))
}

/// The system calls allowed only with some arguments, each with why.
fn restricted() -> Result<Rules, String> {
    let mut r = Rules::new();
    // socket: a Unix datagram socket (syslog's /dev/log) or a NETLINK_ROUTE socket
    // (getifaddrs, route and address dumps, the notification groups); nothing that could
    // reach another host, and no Unix stream socket to another local daemon.
    r.insert(
        libc::SYS_socket,
        vec![
            rule(&[
                (0, Op::Eq, u(libc::AF_UNIX)),
                (1, Op::MaskedEq(SOCK_TYPE_MASK), u(libc::SOCK_DGRAM)),
            ])?,
            rule(&[
                (0, Op::Eq, u(libc::AF_NETLINK)),
                (1, Op::MaskedEq(SOCK_TYPE_MASK), u(libc::SOCK_RAW)),
                (2, Op::Eq, u(libc::NETLINK_ROUTE)),
            ])?,
        ],
    );
    // clone: threads only (same memory and thread group), never a namespace: the worker
    // starts no process.
    r.insert(
        libc::SYS_clone,
        vec![rule(&[(
            0,
            Op::MaskedEq(CLONE_THREAD | CLONE_NS),
            CLONE_THREAD,
        )])?],
    );
    // mmap, mprotect: memory, thread stacks and their guard pages, never executable.
    let prot_exec = u(libc::PROT_EXEC);
    for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
        r.insert(nr, vec![rule(&[(2, Op::MaskedEq(prot_exec), 0)])?]);
    }
    // fcntl: F_GETFD (std checks a descriptor before closing it) and F_DUPFD_CLOEXEC (a
    // sensor stream cloned for the other threads' writes).
    r.insert(
        libc::SYS_fcntl,
        vec![
            rule(&[(1, Op::Eq, u(libc::F_GETFD))])?,
            rule(&[(1, Op::Eq, u(libc::F_DUPFD_CLOEXEC))])?,
        ],
    );
    // setsockopt: SO_RCVTIMEO and SO_SNDTIMEO only (the deadlines of sensor, control and
    // watch connections and netlink dumps); every other option was set before the filter.
    r.insert(
        libc::SYS_setsockopt,
        [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO]
            .iter()
            .map(|o| rule(&[(1, Op::Eq, u(libc::SOL_SOCKET)), (2, Op::Eq, u(*o))]))
            .collect::<Result<_, _>>()?,
    );
    // prctl: PR_SET_NAME only (a thread names itself).
    r.insert(
        libc::SYS_prctl,
        vec![rule(&[(0, Op::Eq, u(libc::PR_SET_NAME))])?],
    );
    // tgkill: to this process only (abort() raising SIGABRT on a thread of its own).
    r.insert(
        libc::SYS_tgkill,
        vec![rule(&[(0, Op::Eq, u64::from(std::process::id()))])?],
    );
    Ok(r)
}

/// Every system call the filter lets through, with or without conditions.
pub fn syscalls() -> Result<Vec<libc::c_long>, String> {
    let mut v: Vec<libc::c_long> = ALLOWED
        .iter()
        .chain(ALLOWED_X86)
        .map(|(nr, _)| *nr)
        .collect();
    v.extend(restricted()?.into_keys());
    Ok(v)
}

/// The two filters: one that answers clone3 ENOSYS (its flags are in memory a filter
/// cannot read; glibc then creates the thread with clone, whose flags the allowlist
/// checks), and the allowlist (anything else kills the process).
pub fn filters() -> Result<[BpfProgram; 2], String> {
    let mut rules = restricted()?;
    for (nr, _why) in ALLOWED.iter().chain(ALLOWED_X86) {
        if rules.insert(*nr, Vec::new()).is_some() {
            return Err(format!("seccomp: system call {nr} listed twice"));
        }
    }
    let refuse = if AUDIT {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let allow = compile(rules, refuse, SeccompAction::Allow)?;
    Ok([clone3_enosys()?, allow])
}

/// Install both filters on the calling thread; threads started after inherit them.
pub fn apply() -> Result<(), String> {
    for f in filters()? {
        seccompiler::apply_filter(&f).map_err(|e| format!("seccomp install: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_and_list_each_call_once() {
        let [enosys, allow] = filters().unwrap();
        assert!(!enosys.is_empty() && allow.len() > 60);
        let mut v = syscalls().unwrap();
        let n = v.len();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), n, "a system call is listed twice");
    }

    #[test]
    fn never_allowed() {
        let v = syscalls().unwrap();
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_kill,
            libc::SYS_tkill,
            libc::SYS_pidfd_send_signal,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_setuid,
            libc::SYS_setresuid,
            libc::SYS_setgid,
            libc::SYS_setresgid,
            libc::SYS_setgroups,
            libc::SYS_capset,
            libc::SYS_bpf,
            libc::SYS_seccomp,
            libc::SYS_memfd_create,
            libc::SYS_ioctl,
        ] {
            assert!(!v.contains(&nr), "system call {nr} is allowed");
        }
    }

    /// A restarted worker runs under the parent's filter as well as its own: whatever
    /// the worker needs must pass the parent's too, or the restart dies of SIGSYS.
    #[test]
    fn every_call_is_also_in_the_parents_filter() {
        use sentry_enforcer::parent::confine::{ALLOWED as P, ALLOWED_X86 as PX};
        let parent: Vec<libc::c_long> = P.iter().chain(PX).map(|(nr, _)| *nr).collect();
        let missing: Vec<_> = syscalls()
            .unwrap()
            .into_iter()
            .filter(|nr| !parent.contains(nr))
            .collect();
        assert!(
            missing.is_empty(),
            "not in the parent's filter: {missing:?}"
        );
    }

    const CHILD: &str = "SENTRY_WORKER_UNDER_FILTER";

    /// Run [`child`] in a process of its own with `what` to do last; its exit status.
    /// (The directory it writes in is removed here: std's remove_dir_all needs an fcntl
    /// the worker never makes.)
    fn run_child(what: &str) -> std::process::ExitStatus {
        let d = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "confine::tests::child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, what)
            .env("SENTRY_WORKER_UNDER_FILTER_DIR", d.path())
            .output()
            .unwrap();
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status
    }

    /// Under the filter, threads start (glibc falls back from clone3 to clone), the state
    /// and textfile writes, netlink and sock_diag dumps and syslog lines work; a fork, a TCP socket or
    /// a signal to another process kills the process.
    #[test]
    fn under_the_filter() {
        use std::os::unix::process::ExitStatusExt;
        if AUDIT {
            eprintln!("SKIPPED (built with SENTRY_SECCOMP_AUDIT): under_the_filter");
            return;
        }
        assert!(run_child("ok").success());
        for what in ["fork", "tcp", "kill"] {
            let st = run_child(what);
            assert_eq!(st.signal(), Some(libc::SIGSYS), "{what}: {st:?}");
        }
    }

    #[test]
    #[ignore = "run by under_the_filter"]
    fn child() {
        let Some(what) = std::env::var_os(CHILD) else {
            return;
        };
        let d =
            std::path::PathBuf::from(std::env::var_os("SENTRY_WORKER_UNDER_FILTER_DIR").unwrap());
        // A stand-in for /dev/log, bound before the filter as syslogd's would be.
        let syslog = std::os::unix::net::UnixDatagram::bind(d.join("log")).unwrap();
        // The served-port poller's socket, opened before the filter as the daemon does.
        let mut served =
            crate::served::Poller::open(None, std::time::Duration::from_secs(5)).unwrap();
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        apply().unwrap();
        let status = std::thread::spawn(|| std::fs::read_to_string("/proc/thread-self/status"))
            .join()
            .unwrap()
            .unwrap();
        assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
        crate::store::write_atomic(&d.join("f"), b"x", 0o600).unwrap();
        crate::control::metrics::write_textfile(&d, "t.prom", "x 1\n").unwrap();
        let _ = crate::infra::dump_default_gateways();
        // A sock_diag dump under the filter sees the listener.
        let (ports, _) = served.dump().unwrap();
        assert!(ports.contains(&crate::served::Key::Any { proto: 6, port }));
        drop(l);
        // What the Logger does for each syslog line.
        let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
        s.connect(d.join("log")).unwrap();
        s.send(b"<29>sentry-enforcer[1]: line").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(syslog.recv(&mut buf).unwrap(), 28);
        match what.to_str() {
            Some("fork") => drop(std::process::Command::new("/bin/true").status()),
            Some("tcp") => drop(std::net::TcpListener::bind("127.0.0.1:0")),
            Some("kill") => drop(nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), None)),
            _ => {}
        }
    }
}
