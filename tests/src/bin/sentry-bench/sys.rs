//! Every `unsafe` block of the bench runner: the interrupt handler and the AF_PACKET
//! sender used by the capture, flood and data-path scenarios.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc;

/// Set by SIGINT / SIGTERM / SIGHUP; a watcher thread turns it into a cleanup.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Install the interrupt handler for SIGINT, SIGTERM and SIGHUP.
pub fn install_interrupt_handler() -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only performs an atomic store, which is async-signal-safe,
        // and it touches no other state; replacing the default disposition is sound.
        unsafe { sigaction(sig, &act) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// A raw AF_PACKET socket bound to one interface, for sending complete Ethernet frames.
/// It is opened with protocol 0, so it never receives anything.
#[derive(Debug)]
pub struct PacketSender {
    fd: OwnedFd,
}

impl PacketSender {
    /// Open and bind to interface `ifindex` of the calling thread's network namespace.
    pub fn open(ifindex: i32) -> io::Result<PacketSender> {
        // SAFETY: plain socket(2) call with constant arguments; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created, valid descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::c_ushort::try_from(libc::AF_PACKET).unwrap_or(17);
        sll.sll_protocol = 0;
        sll.sll_ifindex = ifindex;
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>())
            .map_err(|_| io::Error::other("sockaddr_ll size"))?;
        // SAFETY: `sll` is a valid sockaddr_ll that outlives the call; `len` is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(sll).cast::<libc::sockaddr>(),
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        // SAFETY: PACKET_QDISC_BYPASS takes an int; pointer and length describe `one`.
        // Failure is harmless (older kernels): the frames then go through the qdisc.
        let _ = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                std::ptr::addr_of!(one).cast::<libc::c_void>(),
                4,
            )
        };
        Ok(PacketSender { fd })
    }

    /// Send every frame with one sendmmsg(2) call (or a few, if the kernel stops early).
    /// Returns how many frames were handed to the device.
    pub fn send_batch(&self, frames: &[Vec<u8>]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast::<libc::c_void>(),
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: msghdr is plain old data; all-zero is a valid (empty) header.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_iov = std::ptr::from_mut(iov);
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        let mut done = 0usize;
        while done < msgs.len() {
            let rest = &mut msgs[done..];
            let n = libc::c_uint::try_from(rest.len()).unwrap_or(libc::c_uint::MAX);
            // SAFETY: `rest` points at `n` initialised mmsghdr values whose iovecs point
            // into `frames`, all of which outlive the call; the kernel only reads them
            // (and writes msg_len).
            let rc = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), rest.as_mut_ptr(), n, 0) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    // Device queue full: count what went out and let the caller pace.
                    return Ok(done);
                }
                return Err(e);
            }
            if rc == 0 {
                break;
            }
            done += usize::try_from(rc).unwrap_or(0);
        }
        Ok(done)
    }
}
