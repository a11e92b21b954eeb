//! The only unsafe code in the enforcer crate: descriptors (closing inherited ones,
//! placing the worker's), fork, signal dispositions, and the pidfd calls libc lacks
//! (open one, send a signal through one).

use std::os::fd::RawFd;

/// Close every file descriptor from `first` up that was inherited from whoever started us
/// (a leaked descriptor to a privileged file or socket must not reach kill commands).
/// Call first thing in `main`, before any thread exists and before anything in this
/// process opened a descriptor of its own.
pub fn close_inherited_fds(first: u32) -> std::io::Result<()> {
    // SAFETY: close_range(2) only closes descriptors; at this point in `main` no Rust
    // object owns a descriptor from `first` up (nothing has been opened yet, the ones
    // below are stdio or what the parent placed for us, and no other thread
    // exists), so no owned descriptor is invalidated behind its owner's back.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // Kernels before 5.9: walk /proc/self/fd instead.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| u32::try_from(*fd).is_ok_and(|f| f >= first))
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory handle used for listing is already closed, and
        // EBADF for it (or any other stale number) is harmless.
        unsafe {
            libc::close(fd);
        }
    }
    Ok(())
}

/// `SO_PEERPIDFD` (Linux 6.5+); not in libc yet. 77 in the generic socket ABI, 0x56 on
/// sparc.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERPIDFD: libc::c_int = 77;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERPIDFD: libc::c_int = 0x56;

/// A pidfd for the process that connected the peer end of a Unix stream socket, taken by
/// the kernel at connect time: unlike the SO_PEERCRED pid it cannot come to name another
/// process after the peer exits. `Err` with ENOPROTOOPT on kernels before 6.5.
pub fn peer_pidfd(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut pidfd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| std::io::Error::other("socklen"))?;
    // SAFETY: `pidfd` is a live c_int and `len` holds its exact size; the kernel writes at
    // most that many bytes into it and stores the written length in `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pidfd < 0 {
        return Err(std::io::Error::other("SO_PEERPIDFD returned no descriptor"));
    }
    // SAFETY: on success the kernel installed a new descriptor (O_CLOEXEC) in this
    // process that nothing else owns; the OwnedFd becomes its only owner.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd) })
}

/// `pidfd_open(pid, 0)` (Linux 5.3+): the fallback for kernels without SO_PEERPIDFD.
pub fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1;
    // no memory is shared with the kernel.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(r).map_err(|_| std::io::Error::other("descriptor"))?;
    // SAFETY: the kernel just installed `fd` (close-on-exec) for us alone; the OwnedFd is
    // its only owner.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)` (Linux 5.1+): signal exactly the process
/// `pidfd` names (never another one that reused its pid).
pub fn pidfd_send_signal(
    pidfd: std::os::fd::BorrowedFd<'_>,
    sig: nix::sys::signal::Signal,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: descriptor, signal number and flags by value, and a null siginfo (the kernel
    // then fills one in as for kill(2)); no memory is shared with the kernel.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `_exit(2)`: end a forked child at once, running no exit handler and flushing no
/// buffer it shares with the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes the status by value and never returns; it touches no memory of
    // this process.
    unsafe { libc::_exit(code) }
}

/// Whether `fd` is readable right now (poll(2) with a zero timeout). For a pidfd:
/// whether the process has exited.
pub fn readable_now(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one initialised pollfd that lives for the whole call, nfds 1, no wait.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r > 0 && p.revents != 0)
}

/// `fork(2)`: `None` in the child, the child's pid in the parent. Only called while the
/// process has one thread (the parent is single-threaded; tests fork from a process whose
/// other threads hold no lock), so the child may allocate and lock as usual.
pub fn fork() -> std::io::Result<Option<nix::unistd::Pid>> {
    // SAFETY: see above: no other thread exists (or holds a lock) whose state the child
    // could inherit half-changed; the child runs ordinary Rust code and then execs or exits.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(None),
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
    }
}

/// In a forked child before exec: put `fds` at 3, 4, ... (close-on-exec cleared on
/// exactly those) and close every descriptor above them. The sources are first copied
/// above 63, so a source that already sits on a target number is not lost.
pub fn place_fds(fds: &[RawFd]) -> std::io::Result<()> {
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: F_DUPFD_CLOEXEC only creates a new descriptor; `fd` is open (borrowed by
        // the caller), and the copy is owned by this function until it is closed below.
        let h = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64) };
        if h < 0 {
            return Err(std::io::Error::last_os_error());
        }
        high.push(h);
    }
    for (n, h) in (3..).zip(&high) {
        // SAFETY: dup2 replaces descriptor `n` in this child, which is about to exec: no
        // Rust object that owns `n` is used again (the caller execs or exits).
        if unsafe { libc::dup2(*h, n) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let first = u32::try_from(3 + fds.len()).unwrap_or(u32::MAX);
    // SAFETY: close_range only closes descriptors; as above, nothing that owns them is
    // used again in this child.
    if unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In a forked child before exec: every signal unblocked, SIGPIPE back to its default
/// (the Rust runtime ignores it, and an ignored signal stays ignored across exec).
pub fn reset_signals() -> std::io::Result<()> {
    use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    // SAFETY: SIG_DFL installs no handler code, so no handler can run unsafely.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }?;
    Ok(())
}
