//! The sensor's detection input: an NFLOG socket bound to a group in [`GROUPS`], opened
//! here (binding a group needs CAP_NET_ADMIN) and handed to the verified sensor over its
//! Unix socket with SCM_RIGHTS right after the handshake. The enforcer never parses a
//! packet from it: while it waits for the kernel's answers to its configuration requests
//! it only looks at message types.
//!
//! No stale holder gets another packet (issue #21): each hand-over binds a fresh group
//! (the next free one in [`GROUPS`]), the detection chain is switched to it before the
//! descriptor is sent, and the enforcer keeps its own copy of the socket it handed over so
//! that it can unbind the group ([`unbind`]) when the next hand-over replaces it or the
//! sensor's connection ends: an unbound socket receives nothing, whoever else (a forked
//! child, an impostor) still holds a copy. Only CAP_NET_ADMIN can bind a group, so an
//! unprivileged process can never bind the chain's group itself.
//!
//! Everything is done through nix's safe socket API; no unsafe code is needed here.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

use crate::kernel::nl::{self, MsgBuilder, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};

/// The NFLOG group the detection chain copies candidates to. Groups are per network
/// namespace; 0x5e47 ("SG") is far from the small numbers ulogd and tcpdump examples use.
pub const NFLOG_GROUP: u16 = 0x5e47;

/// The groups hand-overs rotate through: [`NFLOG_GROUP`] and the 63 after it
/// (0x5e47-0x5e86, 24135-24198). A group still bound by a socket another process holds is
/// skipped, so up to 63 stale holders cannot stop a hand-over.
pub const GROUPS: std::ops::RangeInclusive<u16> = NFLOG_GROUP..=NFLOG_GROUP + 63;

/// The groups to try after `current`, in order: the rest of [`GROUPS`], wrapping around,
/// `current` itself last (never first: the point is a group nobody held before).
pub fn rotation(current: u16) -> impl Iterator<Item = u16> {
    let (lo, hi) = (*GROUPS.start(), *GROUPS.end());
    let n = hi - lo + 1;
    let at = if GROUPS.contains(&current) {
        current - lo
    } else {
        n - 1
    };
    (1..=n).map(move |i| lo + (at + i) % n)
}

/// Bind the first free group of `rotation(current)`: the group and its socket.
pub fn open_next(current: u16, snaplen: u32) -> Result<(u16, OwnedFd), BindError> {
    for g in rotation(current) {
        match open_nflog(g, snaplen) {
            Ok(fd) => return Ok((g, fd)),
            Err(BindError::Busy) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(BindError::Busy)
}

/// Bytes of each packet copied to the sensor, from the network header on. The IPv6
/// minimum MTU: the whole of every probe that fits an unfragmented packet on any link,
/// including every IPv6 extension-header chain that fits one (the kernel has parsed and
/// reassembled the packet, but NFLOG's payload still starts at the IP header, so the
/// chain is in front of the transport header), and the whole segment of a flag probe, so
/// the sensor can verify its checksum (see `sentry-sensor/src/nflog.rs`).
pub const NFLOG_SNAPLEN: u32 = 1280;

/// Receive buffer the sensor's socket gets (SO_RCVBUFFORCE): a burst of this many bytes of
/// NFLOG messages waits for the sensor instead of being dropped (drops are counted by the
/// sensor from ENOBUFS).
const RCVBUF: usize = 4 << 20;

/// How long the kernel has to acknowledge a configuration request.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

// linux/netfilter/nfnetlink.h, nfnetlink_log.h, linux/netlink.h
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_CFG_CMD_UNBIND: u8 = 2;
const NFULNL_COPY_PACKET: u8 = 2;

/// Why no socket could be handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// The group is bound by another socket: most likely the previous sensor process
    /// still exiting, or a sensor that kept its descriptor across an enforcer restart.
    Busy,
    /// Anything else (no nfnetlink_log in this kernel, no CAP_NET_ADMIN, ...).
    Other(String),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Busy => write!(
                f,
                "every NFLOG group in {}-{} is already bound by another socket",
                GROUPS.start(),
                GROUPS.end()
            ),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// One NFULNL_MSG_CONFIG request for `group`: bind, copy whole packets up to `snaplen`,
/// and hand every packet over on its own at once (queue threshold 1, no flush timer
/// needed): by default the kernel batches up to 100 packets or one second, which would
/// let a scanner run on for that long before the sensor sees its first probe.
pub fn config_request(group: u16, snaplen: u32, seq: u32) -> Vec<u8> {
    let mut b = MsgBuilder::new(Vec::new());
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    b.begin((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, flags, seq);
    // struct nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, res_id = group (be16).
    b.nfgen(0, group);
    b.attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    // struct nfulnl_msg_config_mode (packed): be32 copy_range, u8 copy_mode, u8 pad.
    let mut mode = snaplen.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    b.attr(NFULA_CFG_MODE, &mode);
    b.attr(NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
    b.attr(NFULA_CFG_TIMEOUT, &0u32.to_be_bytes());
    b.end();
    b.finish()
}

/// One NFULNL_MSG_CONFIG request that unbinds `group` from the socket it is sent on. No
/// ACK is asked for: the socket is shared with its other holders, who may be reading it,
/// and nfnetlink handles the request synchronously inside the send.
pub fn unbind_request(group: u16, seq: u32) -> Vec<u8> {
    let mut b = MsgBuilder::new(Vec::new());
    b.begin(
        (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
        NLM_F_REQUEST,
        seq,
    );
    b.nfgen(0, group);
    b.attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_UNBIND]);
    b.end();
    b.finish()
}

/// Unbind `group` from `fd`, the enforcer's own copy of a socket it bound and handed over,
/// then close that copy. The kernel lets only the binding socket unbind its group, and the
/// copy is that socket, so every other holder's descriptor stops receiving at once.
pub fn unbind(group: u16, fd: OwnedFd) -> std::io::Result<()> {
    let req = unbind_request(group, 2);
    let r = send(fd.as_raw_fd(), &req, MsgFlags::MSG_DONTWAIT).map(drop);
    drop(fd);
    r.map_err(std::io::Error::from)
}

/// The kernel's answer to request `seq` in one received datagram: `Some(0)` for an ACK,
/// `Some(-errno)` for an error, `None` when the datagram holds no answer to it (a packet
/// message that arrived first: skipped by type, never parsed).
pub fn ack_for(buf: &[u8], seq: u32) -> Option<i32> {
    nl::messages(buf)
        .map_while(Result::ok)
        .find(|m| m.ty == NLMSG_ERROR && m.seq == seq)
        .and_then(|m| nl::error_code(m.to_end))
}

/// Open an NFLOG socket bound to `group`, non-blocking, ready to hand over.
pub fn open_nflog(group: u16, snaplen: u32) -> Result<OwnedFd, BindError> {
    let other = |what: &str, e: Errno| BindError::Other(format!("{what}: {e}"));
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| other("socket(AF_NETLINK, NETLINK_NETFILTER)", e))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| other("bind netlink", e))?;
    // Best effort: the default buffer still works, it only absorbs less of a burst.
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF);
    let tv = TimeVal::new(i64::try_from(ACK_TIMEOUT.as_secs()).unwrap_or(1), 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(|e| other("SO_RCVTIMEO", e))?;
    let seq = 1;
    let req = config_request(group, snaplen, seq);
    send(fd.as_raw_fd(), &req, MsgFlags::empty()).map_err(|e| other("NFULNL_CFG_CMD_BIND", e))?;
    let deadline = Instant::now() + ACK_TIMEOUT;
    let mut buf = vec![0u8; 8192];
    loop {
        if Instant::now() > deadline {
            return Err(BindError::Other("no answer to NFULNL_MSG_CONFIG".into()));
        }
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC) {
            Ok(n) => n.min(buf.len()),
            Err(Errno::EINTR) | Err(Errno::ENOBUFS) => continue,
            Err(e) => return Err(other("reading the NFLOG configuration answer", e)),
        };
        match ack_for(buf.get(..n).unwrap_or(&[]), seq) {
            Some(0) => break,
            Some(e) => {
                let errno = Errno::from_raw(-e);
                return Err(match errno {
                    Errno::EBUSY | Errno::EPERM => BindError::Busy,
                    e => other("NFULNL_CFG_CMD_BIND", e),
                });
            }
            None => continue,
        }
    }
    // The sensor polls it; the flag belongs to the shared file description.
    let fl = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| other("F_GETFL", e))?;
    let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(fl)).map_err(|e| other("F_SETFL", e))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = config_request(NFLOG_GROUP, 1280, 7);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0401);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[18..20], &NFLOG_GROUP.to_be_bytes());
        // First attribute: CMD (len 5) with BIND.
        assert_eq!(u16::from_ne_bytes(m[20..22].try_into().unwrap()), 5);
        assert_eq!(m[24], NFULNL_CFG_CMD_BIND);
    }

    #[test]
    fn acks() {
        let mut err = vec![0u8; 36];
        err[0..4].copy_from_slice(&36u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[8..12].copy_from_slice(&3u32.to_ne_bytes());
        err[16..20].copy_from_slice(&(-16i32).to_ne_bytes());
        assert_eq!(ack_for(&err, 3), Some(-16));
        assert_eq!(ack_for(&err, 4), None);
        // A packet message in front is skipped by its header alone.
        let mut pkt = vec![0u8; 20];
        pkt[0..4].copy_from_slice(&20u32.to_ne_bytes());
        pkt[4..6].copy_from_slice(&0x0400u16.to_ne_bytes());
        pkt.extend_from_slice(&err);
        assert_eq!(ack_for(&pkt, 3), Some(-16));
        assert_eq!(ack_for(&[1, 2, 3], 3), None);
        let mut bad = err.clone();
        bad[0..4].copy_from_slice(&999u32.to_ne_bytes());
        assert_eq!(ack_for(&bad, 3), None);
    }

    #[test]
    fn rotation_visits_every_other_group_once() {
        let all: Vec<u16> = rotation(NFLOG_GROUP).collect();
        assert_eq!(all.len(), 64);
        assert_eq!(all[0], NFLOG_GROUP + 1);
        assert_eq!(*all.last().unwrap(), NFLOG_GROUP);
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, GROUPS.collect::<Vec<_>>());
        // From the last group it wraps to the first; from outside the range it starts there.
        assert_eq!(rotation(*GROUPS.end()).next(), Some(NFLOG_GROUP));
        assert_eq!(rotation(7).next(), Some(NFLOG_GROUP));
    }

    #[test]
    fn unbind_layout() {
        let m = unbind_request(NFLOG_GROUP + 3, 9);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0401);
        // Request only: no ACK flag.
        assert_eq!(
            u16::from_ne_bytes(m[6..8].try_into().unwrap()),
            NLM_F_REQUEST
        );
        assert_eq!(&m[18..20], &(NFLOG_GROUP + 3).to_be_bytes());
        assert_eq!(m[24], NFULNL_CFG_CMD_UNBIND);
    }

    #[test]
    fn the_chain_copies_to_the_spec_group() {
        let spec = crate::kernel::table::DetectSpec {
            sets: [("detect_stcp", vec!["22".to_string()])].into(),
            nflog_group: NFLOG_GROUP + 5,
            ..crate::kernel::table::DetectSpec::blocks_only(None)
        };
        let s = crate::kernel::table::detection_script("t", &spec).unwrap();
        let want = format!("group {} snaplen", NFLOG_GROUP + 5);
        assert_eq!(s.matches(&want).count(), 2, "{s}");
        assert_eq!(
            crate::kernel::table::DetectSpec::blocks_only(None).nflog_group,
            NFLOG_GROUP
        );
    }

    #[test]
    fn a_rotated_group_leaves_the_old_holder_nothing() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED (needs root): a_rotated_group_leaves_the_old_holder_nothing");
            return;
        }
        let r = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            let a = open_nflog(NFLOG_GROUP, NFLOG_SNAPLEN).map_err(|e| e.to_string())?;
            // A stale holder's copy of the same socket.
            let stale = a.try_clone().map_err(|e| e.to_string())?;
            // Held: the next hand-over skips the group.
            let (g, b) = open_next(NFLOG_GROUP - 1, NFLOG_SNAPLEN).map_err(|e| e.to_string())?;
            if g == NFLOG_GROUP {
                return Err("a held group was handed out again".into());
            }
            // Unbinding through our copy frees the group for everyone holding the socket.
            unbind(NFLOG_GROUP, a).map_err(|e| e.to_string())?;
            let again =
                open_nflog(NFLOG_GROUP, NFLOG_SNAPLEN).map_err(|e| format!("rebind: {e}"))?;
            drop((stale, b, again));
            Ok::<(), String>(())
        })
        .join()
        .unwrap();
        r.unwrap();
    }

    #[test]
    fn bind_in_a_private_namespace() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED (needs root): bind_in_a_private_namespace");
            return;
        }
        // Run in a child thread's own network namespace so the host's groups are untouched.
        let r = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            let a = open_nflog(NFLOG_GROUP, NFLOG_SNAPLEN).map_err(|e| e.to_string())?;
            let b = open_nflog(NFLOG_GROUP, NFLOG_SNAPLEN);
            if !matches!(b, Err(BindError::Busy)) {
                return Err(format!("second bind: {b:?}"));
            }
            drop(a);
            open_nflog(NFLOG_GROUP, NFLOG_SNAPLEN)
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .join()
        .unwrap();
        r.unwrap();
    }
}
