//! The only unsafe code in the enforcer.

/// Close every file descriptor above stderr that was inherited from whoever started us
/// (a leaked descriptor to a privileged file or socket must not reach kill commands).
/// Call first thing in `main`, before any thread exists and before anything in this
/// process opened a descriptor of its own.
pub fn close_inherited_fds() -> std::io::Result<()> {
    // SAFETY: close_range(2) only closes descriptors; at this point in `main` no Rust
    // object owns a descriptor above 2 (nothing has been opened yet and no other thread
    // exists), so no owned descriptor is invalidated behind its owner's back.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
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
        .filter(|fd| *fd > 2)
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
