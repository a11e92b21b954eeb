//! The only unsafe code in the worker crate (its one call shared with the sensor,
//! `sched_setattr(2)`, is in the `sentry-sched` crate).

/// `SO_PEERGROUPS` (Linux 4.13+); libc does not export it for every architecture. It is
/// 59 in every Linux socket ABI except sparc's (0x3d).
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERGROUPS: libc::c_int = 59;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 0x3d;

/// The supplementary groups of the peer of a connected Unix stream socket, as the kernel
/// recorded them when it connected — the same credentials the kernel used to let it open
/// the socket file, independent of the group database.
pub fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<libc::gid_t>> {
    use std::os::fd::AsRawFd;
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    // NGROUPS_MAX is 65536; start small and grow to what the kernel says it needs.
    let mut buf: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = libc::socklen_t::try_from(buf.len() * GID)
            .map_err(|_| std::io::Error::other("group list too large"))?;
        // SAFETY: `buf` is valid for writes of `len` bytes and properly aligned for gid_t;
        // the kernel writes at most `len` bytes and stores the length it wrote (or, with
        // ERANGE, the length it needs) in `len`, which lives for the whole call.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if r == 0 {
            buf.truncate(len / GID);
            return Ok(buf);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && len / GID > buf.len() && len / GID <= 65_536 {
            buf.resize(len / GID, 0);
            continue;
        }
        return Err(e);
    }
}

/// Wait, without a timeout, until `fd` is readable or has an error pending (poll(2)).
/// Nothing is read: whoever is woken reads the descriptor itself.
pub fn wait_readable(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one initialised pollfd that lives for the whole call and nfds is 1,
    // so the kernel reads and writes only that struct; the descriptor is kept open by the
    // caller's borrow for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, -1) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
