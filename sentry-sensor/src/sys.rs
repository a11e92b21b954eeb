//! The only module with `unsafe`: raw system calls that neither std nor a safe wrapper
//! offers — the AF_PACKET TPACKET_V2 ring (socket options, mmap, slot hand-over),
//! `ppoll(2)`, `sched_setattr(2)`, `prctl(PR_SET_NO_NEW_PRIVS)`, and sockets with
//! IPV6_V6ONLY/SO_REUSEADDR set before `bind`. Every block states why it is sound.

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

// linux/if_packet.h, asm-generic/socket.h
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VERSION: libc::c_int = 10;
const TPACKET_V2: libc::c_int = 1;
const SO_ATTACH_FILTER: libc::c_int = 26;
const SO_LOCK_FILTER: libc::c_int = 44;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const ETH_P_ALL: u16 = 0x0003;

/// `struct tpacket_req` (TPACKET_V1/V2).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct TpacketReq {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
}

/// `struct tpacket_stats`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct TpacketStats {
    tp_packets: u32,
    tp_drops: u32,
}

/// One classic BPF instruction (`struct sock_filter`).
pub type BpfInsn = libc::sock_filter;

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

/// Geometry of the capture ring: `frame_nr` slots of `frame_size` bytes, allocated by the
/// kernel in blocks of `block_size` bytes.
#[derive(Debug, Clone, Copy)]
pub struct RingGeometry {
    /// Bytes per slot (a multiple of 16 that divides `block_size`).
    pub frame_size: u32,
    /// Bytes per kernel allocation (a power of two, at least the page size).
    pub block_size: u32,
    /// Number of slots (a multiple of `block_size / frame_size`).
    pub frame_nr: u32,
}

/// An AF_PACKET socket (SOCK_DGRAM: frames start at the network header) with a TPACKET_V2
/// receive ring mapped into this process. The kernel hands each packet over on its own
/// (status word per slot) and wakes a waiting reader at once, so detection latency is not
/// tied to a block timer.
#[derive(Debug)]
pub struct PacketRing {
    fd: OwnedFd,
    map: NonNull<u8>,
    map_len: usize,
    frame_size: usize,
    frame_nr: usize,
    current: usize,
}

impl PacketRing {
    /// Open the socket, install the (locked) filter, set up and map the ring, then bind to
    /// all interfaces. The filter is attached before the bind, so no unfiltered packet is
    /// ever queued. Needs CAP_NET_RAW.
    pub fn open(geo: RingGeometry, filter: &[BpfInsn]) -> io::Result<Self> {
        let invalid = |m: &'static str| io::Error::new(io::ErrorKind::InvalidInput, m);
        if geo.block_size < 4096 || !geo.block_size.is_power_of_two() {
            return Err(invalid("ring block size must be a power of two >= 4096"));
        }
        if geo.frame_size < 64 || geo.frame_size % 16 != 0 || geo.block_size % geo.frame_size != 0 {
            return Err(invalid(
                "ring frame size must be a multiple of 16 that divides the block size",
            ));
        }
        let per_block = geo.block_size / geo.frame_size;
        if geo.frame_nr == 0 || geo.frame_nr % per_block != 0 {
            return Err(invalid("ring frame count must fill whole blocks"));
        }
        // SAFETY: plain socket(2) call with constant arguments; the returned descriptor is
        // checked and immediately owned by an OwnedFd.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();
        setsockopt(s, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V2)?;
        // Outgoing packets are not ignored (PACKET_IGNORE_OUTGOING): the filter keeps the
        // headers of this host's UDP datagrams so their replies can be recognised.
        let prog = libc::sock_fprog {
            len: u16::try_from(filter.len()).map_err(|_| invalid("BPF program too long"))?,
            filter: filter.as_ptr().cast_mut(),
        };
        setsockopt(s, libc::SOL_SOCKET, SO_ATTACH_FILTER, &prog)?;
        setsockopt(s, libc::SOL_SOCKET, SO_LOCK_FILTER, &1 as &libc::c_int)?;
        let req = TpacketReq {
            tp_block_size: geo.block_size,
            tp_block_nr: geo.frame_nr / per_block,
            tp_frame_size: geo.frame_size,
            tp_frame_nr: geo.frame_nr,
        };
        setsockopt(s, libc::SOL_PACKET, PACKET_RX_RING, &req)?;
        let frame_size = usize::try_from(geo.frame_size).map_err(|_| invalid("frame size"))?;
        let frame_nr = usize::try_from(geo.frame_nr).map_err(|_| invalid("frame count"))?;
        let map_len = frame_size
            .checked_mul(frame_nr)
            .ok_or_else(|| invalid("ring too large"))?;
        // SAFETY: maps the ring the kernel just allocated for this socket (offset 0, the
        // exact size requested: whole blocks, each exactly filled with frames, so the
        // frames are contiguous); the result is checked against MAP_FAILED. The mapping is
        // owned by the returned PacketRing and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                s,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(p.cast::<u8>()).ok_or_else(|| invalid("mmap returned null"))?;
        let ring = Self {
            fd,
            map,
            map_len,
            frame_size,
            frame_nr,
            current: 0,
        };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).map_err(|_| invalid("AF_PACKET"))?;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = 0; // every interface
        let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>())
            .map_err(|_| invalid("sockaddr_ll"))?;
        // SAFETY: `sll` is a valid sockaddr_ll of `len` bytes, alive for the call.
        cvt(unsafe { libc::bind(s, (&sll as *const libc::sockaddr_ll).cast(), len) })?;
        Ok(ring)
    }

    /// The next slot the kernel has handed to user space, if any. The slot is given back
    /// to the kernel when the returned value is dropped.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        let offset = self.current.checked_mul(self.frame_size)?;
        if offset.checked_add(self.frame_size)? > self.map_len {
            return None;
        }
        // SAFETY: `offset + frame_size <= map_len`, so the pointer stays inside the
        // mapping, which lives as long as `self`.
        let base = unsafe { self.map.as_ptr().add(offset) };
        if frame_status(base).load(Ordering::Acquire) & TP_STATUS_USER == 0 {
            return None;
        }
        Some(Frame { ring: self, base })
    }

    /// Kernel counters since the previous call (reading resets them): (packets, drops).
    pub fn take_stats(&self) -> io::Result<(u32, u32)> {
        let mut st = TpacketStats::default();
        let mut len = libc::socklen_t::try_from(size_of::<TpacketStats>())
            .map_err(|_| io::Error::other("stats size"))?;
        // SAFETY: `st` is a writable TpacketStats and `len` holds its exact size; the
        // kernel writes at most `len` bytes and updates `len`.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                (&mut st as *mut TpacketStats).cast(),
                &mut len,
            )
        })?;
        Ok((st.tp_packets, st.tp_drops))
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The status word of a slot: `tpacket2_hdr.tp_status` at offset 0.
fn frame_status<'a>(base: *mut u8) -> &'a AtomicU32 {
    // SAFETY: every slot starts with a `tpacket2_hdr` (slots are 16-byte aligned inside a
    // page-aligned mapping, so offset 0 is 4-byte aligned) inside the live mapping; the
    // word is shared with the kernel, which is why it is only ever accessed atomically.
    unsafe { &*base.cast::<AtomicU32>() }
}

impl Drop for PacketRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `open`; no Frame can be alive here
        // because a Frame borrows the ring mutably.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

/// A slot owned by user space. Its bytes are read through [`Frame::data`]; dropping the
/// frame hands the slot back to the kernel and moves on to the next one.
#[derive(Debug)]
pub struct Frame<'r> {
    ring: &'r mut PacketRing,
    base: *mut u8,
}

impl Frame<'_> {
    /// The whole slot as bytes (header, address, packet). While the status word says
    /// TP_STATUS_USER the kernel does not write to the slot, so it is stable for as long
    /// as this borrow lives.
    pub fn data(&self) -> &[u8] {
        // SAFETY: `base .. base + frame_size` lies inside the mapping (checked in
        // next_frame); the kernel hands a slot to user space only after filling it (its
        // status store is ordered after the data, and our Acquire load pairs with it) and
        // does not touch it again until we store TP_STATUS_KERNEL in Drop, which needs
        // `&mut self` and so cannot overlap this shared borrow.
        unsafe { std::slice::from_raw_parts(self.base, self.ring.frame_size) }
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        frame_status(self.base).store(TP_STATUS_KERNEL, Ordering::Release);
        self.ring.current = (self.ring.current + 1) % self.ring.frame_nr.max(1);
    }
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

/// `struct sched_attr` (SCHED_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

/// Ask the fair scheduler (EEVDF, Linux 6.12+) for a time slice of `slice_ns` for this
/// thread, keeping its policy and nice value. A task with a shorter slice than the one
/// running may preempt it on wake-up instead of waiting for that task's slice (up to a
/// tick, 4 ms at HZ=250) to run out; it gets no more CPU time in total. Needs no
/// privilege. Older kernels ignore the value for normal tasks.
pub fn set_sched_slice(slice_ns: u64) -> io::Result<()> {
    let size = u32::try_from(size_of::<SchedAttr>()).map_err(|_| io::Error::other("size"))?;
    let mut attr = SchedAttr {
        size,
        ..SchedAttr::default()
    };
    // SAFETY: sched_getattr(0, &attr, size, 0) writes at most `size` bytes into `attr`,
    // a live, exclusively borrowed SchedAttr of exactly that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if attr.sched_policy != 0 {
        // Not SCHED_OTHER (the administrator chose another policy): leave it alone.
        return Ok(());
    }
    attr.size = size;
    attr.sched_runtime = slice_ns;
    attr.sched_flags = 0;
    // SAFETY: sched_setattr(0, &attr, 0) only reads `attr`, a live, initialised
    // SchedAttr whose `size` field is its exact size.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
