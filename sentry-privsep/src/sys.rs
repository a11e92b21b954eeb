//! The crate's only unsafe code: turning descriptor numbers the kernel handed over into
//! owned descriptors.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// A descriptor that arrived in an `SCM_RIGHTS` message.
pub fn received(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel just installed `fd` in this process for this message; nothing
    // else in the process knows the number, so the new OwnedFd is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A descriptor inherited across exec at a number the parent chose (the worker's command
/// line names it). Refused when it is not open.
pub fn adopt(fd: RawFd) -> Result<OwnedFd, Errno> {
    if fd < 3 {
        return Err(Errno::EBADF);
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; an unused number fails EBADF.
    let r = unsafe { libc_fcntl_getfd(fd) };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` is open (checked above), and by the worker's start-up contract it was
    // opened for this process by its parent and is used nowhere else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

unsafe fn libc_fcntl_getfd(fd: RawFd) -> i32 {
    // SAFETY: the caller passes any number; fcntl(F_GETFD) has no memory effects.
    unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) }
}
