//! The only module with `unsafe`: raw system calls that neither std nor a safe wrapper
//! offers — datagram reads that report truncation, taking ownership of descriptors
//! received with SCM_RIGHTS, `ppoll(2)`, `prctl(PR_SET_NO_NEW_PRIVS)`, and sockets with
//! IPV6_V6ONLY/SO_REUSEADDR set before `bind`. Every block states why it is sound.

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "option too large"))?;
    // SAFETY: `val` points to a live, initialised `T` of exactly `len` bytes for the whole
    // call; the kernel only reads it.
    let rc = unsafe { libc::setsockopt(fd, level, name, (val as *const T).cast(), len) };
    cvt(rc).map(drop)
}

/// `recv(2)` with MSG_TRUNC|MSG_DONTWAIT on a datagram socket: (bytes copied, length of
/// the datagram), so a datagram longer than `buf` is noticed instead of silently cut.
pub fn recv_trunc(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, usize)> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call; the kernel
    // writes at most that many and returns the datagram's full length with MSG_TRUNC.
    let rc = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let full = usize::try_from(rc).unwrap_or(0);
    Ok((full.min(buf.len()), full))
}

/// Read from a Unix stream socket with `recvmsg(2)`, taking any descriptors that arrive
/// with the bytes (SCM_RIGHTS, close-on-exec). The enforcer sends the NFLOG socket this
/// way; a plain read would make the kernel discard (close) it.
pub fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(
        fd,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let n = msg.bytes;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel just installed `r` in this process for this message
                // (SCM_RIGHTS); nothing else knows the number yet, so taking ownership here
                // is the only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok(n)
}

/// One pollable descriptor.
#[derive(Debug, Clone, Copy)]
pub struct PollFd {
    pub fd: RawFd,
    pub events: i16,
    pub revents: i16,
}

pub const POLLIN: i16 = libc::POLLIN;
pub const POLLOUT: i16 = libc::POLLOUT;
pub const POLLERR: i16 = libc::POLLERR;
pub const POLLHUP: i16 = libc::POLLHUP;

/// `ppoll(2)` with a timeout of `timeout` (microsecond resolution; no signal mask
/// change); EINTR is reported as zero ready descriptors.
pub fn poll(fds: &mut [PollFd], timeout: std::time::Duration) -> io::Result<usize> {
    let mut raw: Vec<libc::pollfd> = fds
        .iter()
        .map(|p| libc::pollfd {
            fd: p.fd,
            events: p.events,
            revents: 0,
        })
        .collect();
    let n = libc::nfds_t::try_from(raw.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many fds"))?;
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: `raw` is a valid, exclusively borrowed array of `n` pollfd structures and
    // `ts` a valid timespec, both alive for the call; a null signal mask means none is
    // changed.
    let rc = unsafe { libc::ppoll(raw.as_mut_ptr(), n, &ts, std::ptr::null()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    for (p, r) in fds.iter_mut().zip(&raw) {
        p.revents = r.revents;
    }
    Ok(usize::try_from(rc).unwrap_or(0))
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_SET_DUMPABLE, 0)`: no core dumps of hostile-packet state, no ptrace by the
/// same uid.
pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map(drop)
}

/// Socket type for [`bound_socket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockKind {
    Stream,
    Datagram,
}

/// A non-blocking TCP listener or UDP socket bound to `addr` with SO_REUSEADDR (so a
/// leftover TIME_WAIT connection does not block the port) and, for IPv6, IPV6_V6ONLY (so
/// the IPv4 socket on the same port is separate).
pub fn bound_socket(addr: SocketAddr, kind: SockKind) -> io::Result<OwnedFd> {
    let (domain, v6) = match addr {
        SocketAddr::V4(_) => (libc::AF_INET, false),
        SocketAddr::V6(_) => (libc::AF_INET6, true),
    };
    let ty = match kind {
        SockKind::Stream => libc::SOCK_STREAM,
        SockKind::Datagram => libc::SOCK_DGRAM,
    };
    // SAFETY: socket(2) with constant arguments; the descriptor is checked and owned at once.
    let raw =
        cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })?;
    // SAFETY: fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let s = fd.as_raw_fd();
    setsockopt(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1 as &libc::c_int)?;
    if v6 {
        setsockopt(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &1 as &libc::c_int)?;
    }
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain old data; all-zero is valid.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2);
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).unwrap_or(16);
            // SAFETY: `sin` is a valid sockaddr_in of `len` bytes, alive for the call.
            cvt(unsafe { libc::bind(s, (&sin as *const libc::sockaddr_in).cast(), len) })?;
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain old data; all-zero is valid.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(10);
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_in6>()).unwrap_or(28);
            // SAFETY: `sin6` is a valid sockaddr_in6 of `len` bytes, alive for the call.
            cvt(unsafe { libc::bind(s, (&sin6 as *const libc::sockaddr_in6).cast(), len) })?;
        }
    }
    if kind == SockKind::Stream {
        // SAFETY: listen(2) on a descriptor we own; integer arguments only.
        cvt(unsafe { libc::listen(s, 128) })?;
    }
    Ok(fd)
}

/// Make a forbidden system call (for the seccomp self-test). Under the sensor's filter the
/// kernel kills the process with SIGSYS before this returns.
pub fn forbidden_syscall() -> io::Result<()> {
    // SAFETY: getppid-free, argument-free syscall with no memory effects (`personality`
    // query with 0xffffffff only reads the current persona).
    let rc = unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffff_u64) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A `NETLINK_SOCK_DIAG` socket (for the listening-socket table), as a `File` so it can
/// be driven with plain `write`/`read`: a write sends one request to the kernel, a read
/// returns one datagram of the reply. Reads time out after `timeout_ms` so a missing
/// reply can never stall the sensor.
pub fn sock_diag_socket(timeout_ms: u32) -> io::Result<std::fs::File> {
    const NETLINK_SOCK_DIAG: libc::c_int = 4;
    // SAFETY: socket(2) with constant arguments; the descriptor is checked and owned at once.
    let raw = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    })?;
    // SAFETY: fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: libc::time_t::from(timeout_ms / 1000),
        tv_usec: libc::suseconds_t::from((timeout_ms % 1000) * 1000),
    };
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    Ok(std::fs::File::from(fd))
}
