//! The parent's confinement once start-up is done: the capabilities it still needs,
//! no_new_privs, and its own seccomp allowlist.

use caps::{CapSet, Capability, CapsHashSet};

/// Keep only `keep` in the effective, permitted and inheritable sets, raise `ambient`
/// (so the commands and `nft` runs get exactly these, also under SecureBits=noroot), and
/// set no_new_privs. Returns warnings for what is needed and not held. The bounding set
/// is cut too when CAP_SETPCAP allows; without it nothing outside the permitted set can
/// be regained under no_new_privs anyway.
pub fn keep_only(keep: &[Capability], ambient: &[Capability]) -> Result<Vec<String>, String> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::read(None, CapSet::Bounding)
            .map_err(|e| e.to_string())?
            .difference(&keep)
        {
            caps::drop(None, CapSet::Bounding, *c).map_err(|e| format!("bounding set: {e}"))?;
        }
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    let warnings = keep
        .difference(&permitted)
        .map(|c| format!("{c} is needed but not held"))
        .collect();
    let now: CapsHashSet = keep.intersection(&permitted).copied().collect();
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &now).map_err(|e| format!("capabilities ({set:?}): {e}"))?;
    }
    let _ = caps::clear(None, CapSet::Ambient);
    for c in ambient.iter().filter(|c| now.contains(c)) {
        caps::raise(None, CapSet::Ambient, *c).map_err(|e| format!("ambient {c}: {e}"))?;
    }
    Ok(warnings)
}

/// What the parent keeps: CAP_NET_ADMIN (tables, elements, routes, NFLOG binds),
/// CAP_SETUID and CAP_SETGID (a restarted worker drops to its user), and CAP_SYS_PTRACE
/// only when `ptrace` (without systemd: the sensor check reads the non-dumpable sensor's
/// /proc/PID/exe; under systemd its unit is checked instead, see
/// [`crate::peercheck::needs_ptrace`]). Not CAP_NET_RAW: kill commands run in the
/// helper. Not CAP_KILL: the worker, of another uid, is signalled by a short-lived child
/// that takes its uid ([`super::spawn::signal_worker`]); the parent's other signals go to
/// its own root children. Not CAP_CHOWN: the parent creates and chowns none of the
/// worker's files (they are its own before the parent starts: tmpfiles.d, the run
/// script), and enforcer.sock goes to its own supplementary group, which needs none.
pub fn parent_caps(ptrace: bool) -> Vec<Capability> {
    let mut c = vec![
        Capability::CAP_NET_ADMIN,
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
    ];
    if ptrace {
        c.push(Capability::CAP_SYS_PTRACE);
    }
    c
}

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule,
};

pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn cond(arg: u8, op: Op, v: u64) -> Result<SeccompRule, String> {
    let c = Cond::new(arg, Len::Qword, op, v).map_err(|e| format!("seccomp condition: {e}"))?;
    SeccompRule::new(vec![c]).map_err(|e| format!("seccomp rule: {e}"))
}

/// One filter for this machine's architecture (the worker's filter is built with it too).
pub fn compile(
    rules: Rules,
    default: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e:?}"))?;
    let f = SeccompFilter::new(rules, default, on_match, arch)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| format!("seccomp compile: {e}"))
}

/// The system calls the parent makes, with why; and, because they run under this
/// filter too (a filter is inherited across fork and exec), those of the `nft` it runs
/// (table and detection builds: an ordinary dynamically linked program) and of a
/// restarted worker (a Rust program with threads) until it adds its own, narrower
/// filter: a system call the worker makes must be in this list, or a restarted worker is
/// killed. Anything else kills the process (SECCOMP_RET_KILL_PROCESS).
#[rustfmt::skip]
pub const ALLOWED: &[(libc::c_long, &str)] = &[
    // The loop and its descriptors.
    (libc::SYS_ppoll, "the poll loop where glibc's poll() is ppoll (aarch64)"),
    (libc::SYS_pselect6, "nft waits for the kernel's netlink answers"),
    (libc::SYS_read, "signalfd, nft's stderr pipe, /proc files, the configuration"),
    (libc::SYS_write, "stderr lines, nft's stdin script, hosts.deny"),
    (libc::SYS_writev, "std's stderr writer"),
    (libc::SYS_close, "every descriptor"),
    (libc::SYS_fcntl, "non-blocking pipes and channels, F_DUPFD_CLOEXEC placing a worker's descriptors"),
    (libc::SYS_ioctl, "coreutils and glibc (TCGETS), std's FIONBIO in a worker"),
    (libc::SYS_lseek, "hosts.deny rewritten in place"),
    (libc::SYS_pread64, "the dynamic loader (nft, the worker)"),
    // Sockets: netlink (sets, routes, NFLOG, watches, sock_diag), the channels, a worker's.
    (libc::SYS_socket, "netlink sockets (NFLOG hand-over, route dumps, nft), a worker's /dev/log and its served-port sock_diag socket (opened before its own filter)"),
    (libc::SYS_socketpair, "a restarted worker's channels"),
    (libc::SYS_bind, "netlink sockets"),
    (libc::SYS_connect, "a worker's syslog socket"),
    (libc::SYS_accept4, "a worker accepts on the listeners it inherits"),
    (libc::SYS_getsockname, "the netlink port id of the set socket"),
    (libc::SYS_getsockopt, "SO_PEERCRED, SO_PEERPIDFD, SO_SNDBUF"),
    (libc::SYS_setsockopt, "receive timeouts and buffers of netlink sockets"),
    (libc::SYS_sendto, "netlink requests"),
    (libc::SYS_recvfrom, "netlink answers and notifications"),
    (libc::SYS_sendmsg, "channel replies (one descriptor at most), nft's netlink batches"),
    (libc::SYS_recvmsg, "channel requests, nft's netlink answers"),
    (libc::SYS_shutdown, "a worker's connections"),
    // Files: hosts.deny and its lock, /proc for the peer check, the state of a worker.
    (libc::SYS_openat, "hosts.deny and its lock, /proc/PID/{exe,cgroup}, fdinfo, libraries"),
    (libc::SYS_newfstatat, "metadata (peer check, hosts.deny)"),
    (libc::SYS_fstat, "metadata of open files"),
    (libc::SYS_statx, "std's metadata"),
    (libc::SYS_statfs, "coreutils in the worker's place (tests), glibc"),
    (libc::SYS_readlinkat, "/proc/PID/exe (aarch64)"),
    (libc::SYS_getdents64, "directory reads"),
    (libc::SYS_faccessat, "the dynamic loader"),
    (libc::SYS_faccessat2, "the dynamic loader"),
    (libc::SYS_flock, "the hosts.deny writers' lock"),
    (libc::SYS_ftruncate, "hosts.deny rewritten in place"),
    (libc::SYS_fsync, "hosts.deny; a worker's state"),
    (libc::SYS_fdatasync, "hosts.deny; a worker's journal"),
    (libc::SYS_unlinkat, "removing the sockets at stop (aarch64); a worker's temporary files"),
    (libc::SYS_renameat2, "a worker's atomic state writes"),
    (libc::SYS_mkdirat, "a worker's audit directory"),
    (libc::SYS_fchmod, "a worker's files"),
    (libc::SYS_fchmodat, "a worker's files (std's set_permissions)"),
    (libc::SYS_umask, "a worker sets its own"),
    (libc::SYS_getxattr, "read only: coreutils, glibc"),
    (libc::SYS_lgetxattr, "read only: coreutils, glibc"),
    (libc::SYS_fgetxattr, "read only: coreutils, glibc"),
    (libc::SYS_getgroups, "read only: glibc, a worker's user checks"),
    (libc::SYS_sysinfo, "read only: glibc"),
    (libc::SYS_getrusage, "read only: a worker's metrics"),
    (libc::SYS_getcwd, "glibc in children"),
    (libc::SYS_chdir, "children start in /"),
    (libc::SYS_uname, "glibc in children"),
    (libc::SYS_getrandom, "std's hash maps; glibc"),
    // Memory and runtime (the parent, nft, a starting worker).
    (libc::SYS_brk, "allocator"),
    (libc::SYS_mmap, "allocator, loader"),
    (libc::SYS_munmap, "allocator"),
    (libc::SYS_mremap, "allocator"),
    (libc::SYS_mprotect, "loader (RELRO), thread stack guards"),
    (libc::SYS_madvise, "allocator"),
    (libc::SYS_futex, "std's locks, glibc; a worker's threads"),
    (libc::SYS_set_robust_list, "glibc start-up, threads"),
    (libc::SYS_rseq, "glibc start-up, threads"),
    (libc::SYS_set_tid_address, "glibc start-up"),
    (libc::SYS_prlimit64, "glibc start-up"),
    (libc::SYS_sched_getaffinity, "std::thread::available_parallelism in a worker"),
    (libc::SYS_sched_yield, "a worker's locks"),
    (libc::SYS_sched_getattr, "the short scheduler slice of this thread and of a worker's sensor thread"),
    (libc::SYS_sched_setattr, "the short scheduler slice of this thread and of a worker's sensor thread"),
    (libc::SYS_sigaltstack, "std's stack-overflow guard"),
    (libc::SYS_rt_sigaction, "std and children reset handlers"),
    (libc::SYS_rt_sigprocmask, "the loop's blocked signals; children unblock them"),
    (libc::SYS_rt_sigreturn, "signal delivery"),
    (libc::SYS_rt_sigtimedwait, "a restarted worker's signal thread (sigwait)"),
    (libc::SYS_restart_syscall, "interrupted calls"),
    (libc::SYS_clock_gettime, "time stamps (usually the vDSO)"),
    (libc::SYS_clock_nanosleep, "a worker's timers and sleeps (this filter stays on it)"),
    (libc::SYS_nanosleep, "the same, through a libc that calls nanosleep(2)"),
    // Children: nft runs, a restarted worker.
    (libc::SYS_clone, "fork for nft and a restarted worker, a worker's threads (no namespace flags)"),
    (libc::SYS_clone3, "allowed here, answered ENOSYS by the first filter so glibc falls back to clone"),
    (libc::SYS_execve, "nft, and the worker binary"),
    (libc::SYS_wait4, "reaping nft, the worker and the helper"),
    (libc::SYS_waitid, "reaping"),
    (libc::SYS_kill, "killing a timed-out nft's process group (root's own children)"),
    (libc::SYS_pidfd_send_signal, "SIGTERM/SIGKILL to the worker, from a child with its uid"),
    (libc::SYS_pidfd_open, "the worker's pidfd, an nft run's, the sensor's on old kernels"),
    (libc::SYS_setpgid, "nft runs in a process group of its own"),
    (libc::SYS_pipe2, "nft's stdin and stderr, std's exec-error pipe"),
    (libc::SYS_dup3, "std's child setup"),
    (libc::SYS_close_range, "a restarted worker closes what it must not inherit"),
    (libc::SYS_prctl, "a restarted worker: PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, ambient capabilities"),
    (libc::SYS_capget, "a restarted worker checks it holds no capability"),
    (libc::SYS_capset, "a restarted worker clears its inheritable set"),
    (libc::SYS_seccomp, "a restarted worker adds its own, narrower filter (a filter is never removed)"),
    (libc::SYS_setgroups, "a restarted worker drops its groups"),
    (libc::SYS_setresgid, "a restarted worker drops to its group"),
    (libc::SYS_setresuid, "a restarted worker drops to its user; the worker's signaller takes its uid"),
    (libc::SYS_getresuid, "a restarted worker checks the switch took"),
    (libc::SYS_getresgid, "a restarted worker checks the switch took"),
    (libc::SYS_getpid, "netlink sequence numbers"),
    (libc::SYS_getppid, "a forked worker checks its parent is alive"),
    (libc::SYS_gettid, "glibc"),
    (libc::SYS_getuid, "glibc, nft"),
    (libc::SYS_geteuid, "glibc, nft"),
    (libc::SYS_getgid, "glibc"),
    (libc::SYS_getegid, "glibc"),
    (libc::SYS_tgkill, "abort()"),
    (libc::SYS_exit, "threads"),
    (libc::SYS_exit_group, "exit"),
];

/// The legacy forms x86_64 programs still use (aarch64 has only the *at forms).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
pub const ALLOWED_X86: &[(libc::c_long, &str)] = &[
    (libc::SYS_poll, "the poll loop (glibc's poll)"),
    (libc::SYS_access, "the dynamic loader"),
    (libc::SYS_arch_prctl, "glibc start-up of nft and the worker"),
    (libc::SYS_readlink, "/proc/PID/exe (std's read_link)"),
    (libc::SYS_unlink, "removing the sockets at stop (std's remove_file)"),
    (libc::SYS_rename, "a worker's atomic state writes"),
    (libc::SYS_renameat, "a worker's atomic state writes (no such call on aarch64)"),
    (libc::SYS_mkdir, "a worker's audit directory"),
    (libc::SYS_chmod, "a worker's metrics textfile mode (std's set_permissions)"),
    (libc::SYS_dup2, "a restarted worker's descriptors at 3-7"),
    (libc::SYS_vfork, "posix_spawn in a shell or a worker"),
];
#[cfg(not(target_arch = "x86_64"))]
pub const ALLOWED_X86: &[(libc::c_long, &str)] = &[];

/// Namespace flags a fork or a thread never needs (a new user namespace needs no
/// privilege).
pub const CLONE_NS: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u64;

/// The two filters: the allowlist (default: kill the process), and one that answers
/// clone3 ENOSYS (its flags are in memory the filter cannot read; glibc then uses clone,
/// whose flags the allowlist checks).
pub fn filters() -> Result<[BpfProgram; 2], String> {
    let mut rules = Rules::new();
    for (nr, _why) in ALLOWED.iter().chain(ALLOWED_X86) {
        rules.insert(*nr, Vec::new());
    }
    rules.insert(libc::SYS_clone, vec![cond(0, Op::MaskedEq(CLONE_NS), 0)?]);
    let allow = compile(rules, SeccompAction::KillProcess, SeccompAction::Allow)?;
    Ok([clone3_enosys()?, allow])
}

/// The filter that answers clone3 ENOSYS: its flags are in memory a filter cannot read,
/// so glibc falls back to clone, whose flags an allowlist checks. Parent and worker.
pub fn clone3_enosys() -> Result<BpfProgram, String> {
    let clone3 = Rules::from([(libc::SYS_clone3, Vec::new())]);
    compile(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::ENOSYS).unwrap_or(38)),
    )
}

/// Install both filters on this thread (the parent has no other).
pub fn apply_seccomp() -> Result<(), String> {
    for f in filters()? {
        seccompiler::apply_filter(&f).map_err(|e| format!("seccomp install: {e}"))?;
    }
    Ok(())
}
