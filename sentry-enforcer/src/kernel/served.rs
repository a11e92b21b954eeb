//! RESTART_GRACE in the kernel (issue #21): the ports real services served within the last
//! RESTART_GRACE seconds, kept in the table's `detect_served` sets so that the detection
//! chain treats them as served — no drop, no copy, no first hit — while a service restarts.
//!
//! The kernel's own `socket` lookup knows only the sockets there are *now*: a client that
//! retries in a restart's gap looked like a probe of an unserved port and was blocked. The
//! enforcer therefore polls the host's listening TCP and bound UDP sockets with sock_diag
//! (no privilege needed, the kernel walks only the listening hash for TCP) every
//! [`POLL`] and writes the difference to the kernel:
//! * a port that is served gets an element with the long [`HOLD`] timeout (refreshed by a
//!   full rewrite every [`RESYNC`], so a dead enforcer leaves nothing behind for long);
//! * a port no longer served gets its element replaced by one that expires after
//!   RESTART_GRACE, counted from the poll that found it gone, so the kernel's grace never
//!   ends before the sensor's (which ends [`SENSOR_MARGIN`] earlier, counted from its own
//!   last sighting).
//!
//! Nothing is written while nothing changes, so a quiet host costs one dump per poll and no
//! netlink notification. A re-add does not refresh an element's timeout, so every write
//! is add (creates a missing element), delete, add with the timeout, in one nfnetlink
//! batch: atomic, a packet sees the old element or the new one, never none.
//!
//! Sockets of the sensor's user (its basic-mode listeners) are no services, loopback
//! addresses are never probed from outside, and a connected UDP socket (a client's) only
//! receives from its peer: none of those is written. The reply parser is fuzzed
//! (`fuzz/fuzz_targets/served.rs`): what the kernel sends is checked, never trusted.
//! Self-contained on purpose: issue #22 moves unprivileged work like this dump out of the
//! root process, and only the set writes need CAP_NET_ADMIN.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, setsockopt, sockopt, MsgFlags, SockFlag, SockProtocol};
use nix::sys::time::TimeVal;

use crate::kernel::nl::{self, MsgBuilder, AF_INET, AF_INET6, NFNL_SUBSYS_NFTABLES, NFPROTO_INET};

/// Port served on any address (`inet_proto . inet_service`).
pub const SET_ANY: &str = "detect_served";
/// Port served on one IPv4 address (`ipv4_addr . inet_proto . inet_service`).
pub const SET_V4: &str = "detect_served4";
/// Port served on one IPv6 address (`ipv6_addr . inet_proto . inet_service`).
pub const SET_V6: &str = "detect_served6";

/// How often the sockets are polled: the longest a closed port can go unnoticed.
pub const POLL: Duration = Duration::from_millis(250);
/// Timeout of the element of a port that is served now. Long against [`RESYNC`], short
/// enough that an enforcer that died leaves no port untripped for long.
pub const HOLD: Duration = Duration::from_secs(60);
/// Every element of a served port is rewritten this often (and after a table rebuild).
pub const RESYNC: Duration = Duration::from_secs(20);
/// The sensor's grace ends this much before RESTART_GRACE: the kernel's starts at the
/// poll that found the port gone (up to [`POLL`] after it closed), the sensor's at its own
/// last sighting; with the margin the sensor never calls served what the kernel does not,
/// so the kernel's first hit never blocks a probe the sensor would not report.
pub const SENSOR_MARGIN: Duration = Duration::from_millis(500);
/// Most sockets taken from one poll (bounded memory; the rest are treated as not served,
/// which is what the kernel's socket lookup still covers).
pub const MAX_KEYS: usize = 16_384;
/// Elements per nfnetlink batch: each is written three times (add, delete, add), so a
/// batch stays far below the 64 KiB a netlink message may have.
const PER_BATCH: usize = 128;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCPF_LISTEN: u32 = 1 << 10;
/// `inet_diag_msg`: family, state, timer, retrans, sockid (48), expires, rqueue, wqueue,
/// uid, inode.
const DIAG_MSG_LEN: usize = 72;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_CREATE: u16 = 0x400;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// A served port, as the detection chain looks it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// Bound to the wildcard address (an IPv6 wildcard also receives IPv4 unless
    /// IPV6_V6ONLY, which the dump does not show: counted for both, erring towards served).
    Any { proto: u8, port: u16 },
    V4 {
        addr: Ipv4Addr,
        proto: u8,
        port: u16,
    },
    V6 {
        addr: Ipv6Addr,
        proto: u8,
        port: u16,
    },
}

impl Key {
    fn set(&self) -> &'static str {
        match self {
            Self::Any { .. } => SET_ANY,
            Self::V4 { .. } => SET_V4,
            Self::V6 { .. } => SET_V6,
        }
    }

    /// The element key: the concatenation's fields, each in a 4-byte register.
    fn bytes(&self) -> Vec<u8> {
        let tail = |proto: u8, port: u16| {
            let p = port.to_be_bytes();
            [proto, 0, 0, 0, p[0], p[1], 0, 0]
        };
        match *self {
            Self::Any { proto, port } => tail(proto, port).to_vec(),
            Self::V4 { addr, proto, port } => [&addr.octets()[..], &tail(proto, port)].concat(),
            Self::V6 { addr, proto, port } => [&addr.octets()[..], &tail(proto, port)].concat(),
        }
    }

    /// The key of a socket bound to `addr`:`port`; `None` when no probe can reach it.
    pub fn of(proto: u8, addr: IpAddr, port: u16) -> Option<Self> {
        if port == 0 || addr.is_loopback() {
            return None;
        }
        let addr = match addr {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            a => a,
        };
        if addr.is_loopback() {
            return None;
        }
        Some(match addr {
            a if a.is_unspecified() => Self::Any { proto, port },
            IpAddr::V4(addr) => Self::V4 { addr, proto, port },
            IpAddr::V6(addr) => Self::V6 { addr, proto, port },
        })
    }
}

/// A poll or a write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The kernel answered with this errno.
    Kernel(Errno),
    /// The socket failed (send, receive, time-out).
    Io(Errno),
    /// A reply that does not parse.
    Malformed(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel(e) => write!(f, "kernel refused: {}", e.desc()),
            Self::Io(e) => write!(f, "netlink socket: {}", e.desc()),
            Self::Malformed(m) => write!(f, "reply malformed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// A `SOCK_DIAG_BY_FAMILY` dump request (`nlmsghdr` + `inet_diag_req_v2`, every socket).
pub fn diag_request(seq: u32, family: u8, protocol: u8, states: u32) -> Vec<u8> {
    let mut b = MsgBuilder::new(Vec::with_capacity(72));
    b.begin(SOCK_DIAG_BY_FAMILY, nl::NLM_F_REQUEST | nl::NLM_F_DUMP, seq);
    let mut req = [0u8; 56];
    req[0] = family;
    req[1] = protocol;
    req[4..8].copy_from_slice(&states.to_ne_bytes());
    b.bytes(&req);
    b.end();
    b.finish()
}

/// What one datagram of a dump reply added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// NLMSG_DONE of this dump was seen.
    pub done: bool,
    /// Sockets left out because [`MAX_KEYS`] was reached.
    pub over: usize,
}

/// Parse one datagram of the reply to dump `seq` for protocol `proto` into `out`: every
/// listening TCP / bound, unconnected UDP socket that is not `skip_uid`'s and that a probe
/// can reach. Messages of another sequence number (the rest of an abandoned dump) are
/// skipped; every length is checked, so a bad reply is an error, never a panic.
pub fn parse_dump(
    buf: &[u8],
    seq: u32,
    proto: u8,
    skip_uid: Option<u32>,
    out: &mut BTreeSet<Key>,
) -> Result<Parsed, Error> {
    let mut p = Parsed::default();
    for m in nl::messages(buf) {
        let m = match m {
            Ok(m) => m,
            Err(b) => return Err(Error::Malformed(b.text("short message"))),
        };
        if m.seq != seq {
            continue;
        }
        match m.ty {
            nl::NLMSG_DONE => {
                p.done = true;
                return Ok(p);
            }
            nl::NLMSG_ERROR => {
                let code = nl::error_code(m.to_end).ok_or(Error::Malformed("short error"))?;
                return Err(Error::Kernel(Errno::from_raw(code.saturating_neg())));
            }
            SOCK_DIAG_BY_FAMILY => {
                let b = m
                    .payload
                    .get(..DIAG_MSG_LEN)
                    .ok_or(Error::Malformed("short socket message"))?;
                let port = u16::from_be_bytes([b[4], b[5]]);
                let dport = u16::from_be_bytes([b[6], b[7]]);
                let uid = u32::from_ne_bytes([b[64], b[65], b[66], b[67]]);
                let addr = match b[0] {
                    AF_INET => IpAddr::V4(Ipv4Addr::new(b[8], b[9], b[10], b[11])),
                    AF_INET6 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(&b[8..24]);
                        IpAddr::V6(Ipv6Addr::from(a))
                    }
                    _ => continue,
                };
                // A connected UDP socket is a client's: it takes datagrams from its peer
                // only, as the kernel's own socket lookup finds it.
                if (proto == IPPROTO_UDP && dport != 0) || Some(uid) == skip_uid {
                    continue;
                }
                if let Some(k) = Key::of(proto, addr, port) {
                    if out.len() < MAX_KEYS || out.contains(&k) {
                        out.insert(k);
                    } else {
                        p.over += 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

/// One element write: `key` gets `timeout`, or is removed (`None`).
pub type Op = (Key, Option<Duration>);

/// Encode one nfnetlink batch that writes `ops` into the served sets of `table`: for each
/// set, add (no-op if present), delete, then add again with the timeout — an existing
/// element's timeout is not refreshed by an add. Returns the bytes and the sequence
/// numbers that expect an ACK.
pub fn encode_batch(table: &str, ops: &[Op], first_seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut b = MsgBuilder::new(Vec::with_capacity(256 + ops.len() * 120));
    let mut seq = first_seq;
    b.begin(NFNL_MSG_BATCH_BEGIN, nl::NLM_F_REQUEST, seq);
    b.nfgen(0, NFNL_SUBSYS_NFTABLES);
    b.end();
    let mut acks = Vec::new();
    for set in [SET_ANY, SET_V4, SET_V6] {
        let mine: Vec<&Op> = ops.iter().filter(|(k, _)| k.set() == set).collect();
        if mine.is_empty() {
            continue;
        }
        let readd: Vec<&Op> = mine.iter().copied().filter(|(_, t)| t.is_some()).collect();
        let steps: [(u16, u16, &[&Op], bool); 3] = [
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, &mine, false),
            (NFT_MSG_DELSETELEM, 0, &mine, false),
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, &readd, true),
        ];
        for (ty, flags, elems, timed) in steps {
            if elems.is_empty() {
                continue;
            }
            seq = seq.wrapping_add(1);
            b.begin(
                (NFNL_SUBSYS_NFTABLES << 8) | ty,
                nl::NLM_F_REQUEST | nl::NLM_F_ACK | flags,
                seq,
            );
            b.nfgen(NFPROTO_INET, 0);
            b.attr_strz(NFTA_SET_ELEM_LIST_TABLE, table);
            b.attr_strz(NFTA_SET_ELEM_LIST_SET, set);
            b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
            for (k, t) in elems {
                b.nest_begin(NFTA_LIST_ELEM);
                b.nest_begin(NFTA_SET_ELEM_KEY);
                b.attr(NFTA_DATA_VALUE, &k.bytes());
                b.nest_end();
                if let (true, Some(t)) = (timed, t) {
                    let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
                    b.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
                }
                b.nest_end();
            }
            b.nest_end();
            b.end();
            acks.push(seq);
        }
    }
    seq = seq.wrapping_add(1);
    b.begin(NFNL_MSG_BATCH_END, nl::NLM_F_REQUEST, seq);
    b.nfgen(0, NFNL_SUBSYS_NFTABLES);
    b.end();
    (b.finish(), acks)
}

/// What changed since the sockets were last written: elements to write.
pub fn diff(written: &BTreeSet<Key>, now: &BTreeSet<Key>, full: bool, grace: Duration) -> Vec<Op> {
    let mut ops: Vec<Op> = now
        .iter()
        .filter(|k| full || !written.contains(k))
        .map(|k| (*k, Some(HOLD)))
        .collect();
    let gone = written.difference(now);
    ops.extend(gone.map(|k| (*k, (!grace.is_zero()).then_some(grace))));
    ops
}

/// What a poll did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// Ports served now.
    pub served: usize,
    /// Elements written.
    pub written: usize,
    /// Sockets left out over [`MAX_KEYS`].
    pub over: usize,
}

/// The poller: its two netlink sockets and what it last wrote.
#[derive(Debug)]
pub struct Poller {
    table: String,
    skip_uid: Option<u32>,
    grace: Duration,
    diag: OwnedFd,
    nf: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    written: BTreeSet<Key>,
    last_full: Option<Instant>,
}

fn open(proto: SockProtocol) -> Result<OwnedFd, Error> {
    let fd = nl::open(proto, 0, SockFlag::empty()).map_err(Error::Io)?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(2, 0)).map_err(Error::Io)?;
    Ok(fd)
}

impl Poller {
    /// `skip_uid`: the sensor's user, whose basic-mode sockets are no services.
    pub fn open(table: &str, skip_uid: Option<u32>, grace: Duration) -> Result<Self, Error> {
        Ok(Self {
            table: table.to_owned(),
            skip_uid,
            grace,
            diag: open(SockProtocol::NetlinkSockDiag)?,
            nf: open(SockProtocol::NetlinkNetFilter)?,
            seq: std::process::id().wrapping_mul(65_536),
            buf: vec![0u8; nl::RECV_BUF],
            written: BTreeSet::new(),
            last_full: None,
        })
    }

    /// Rewrite every element at the next poll (the table was rebuilt: its sets are new).
    pub fn resync(&mut self) {
        self.last_full = None;
    }

    fn recv(&mut self) -> Result<usize, Error> {
        loop {
            match recv(self.diag.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                r => return r.map_err(Error::Io),
            }
        }
    }

    /// The served ports now.
    pub fn dump(&mut self) -> Result<(BTreeSet<Key>, usize), Error> {
        let mut out = BTreeSet::new();
        let mut over = 0;
        for (family, proto, states) in [
            (AF_INET, IPPROTO_TCP, TCPF_LISTEN),
            (AF_INET6, IPPROTO_TCP, TCPF_LISTEN),
            (AF_INET, IPPROTO_UDP, u32::MAX),
            (AF_INET6, IPPROTO_UDP, u32::MAX),
        ] {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            nl::send(&self.diag, &diag_request(seq, family, proto, states)).map_err(Error::Io)?;
            let mut done = false;
            // Bounded: a dump that never ends is cut off.
            for _ in 0..10_000 {
                let n = self.recv()?;
                let data = self.buf.get(..n).ok_or(Error::Malformed("read size"))?;
                match parse_dump(data, seq, proto, self.skip_uid, &mut out) {
                    Ok(p) => {
                        over += p.over;
                        if p.done {
                            done = true;
                            break;
                        }
                    }
                    // IPv6 disabled: no AF_INET6 table.
                    Err(Error::Kernel(Errno::EAFNOSUPPORT)) if family == AF_INET6 => {
                        done = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !done {
                return Err(Error::Malformed("dump did not end"));
            }
        }
        Ok((out, over))
    }

    /// Send one batch and wait for its ACKs.
    fn write(&mut self, ops: &[Op]) -> Result<(), Error> {
        let n = u32::try_from(ops.len() * 3 + 2).unwrap_or(u32::MAX / 2);
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n + 2);
        let (msg, mut pending) = encode_batch(&self.table, ops, first);
        nl::send(&self.nf, &msg).map_err(Error::Io)?;
        let mut result = Ok(());
        while !pending.is_empty() {
            let n = loop {
                match recv(self.nf.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                    Err(Errno::EINTR) => continue,
                    r => break r.map_err(Error::Io)?,
                }
            };
            let data = self.buf.get(..n).ok_or(Error::Malformed("read size"))?;
            let r = crate::kernel::netlink::parse_acks(data, &mut pending).map_err(|e| match e {
                crate::kernel::netlink::NlError::Kernel(e) => Error::Kernel(e),
                crate::kernel::netlink::NlError::Io(e) => Error::Io(e),
                _ => Error::Malformed("acknowledgement"),
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// One poll: dump the sockets and write what changed (everything, every [`RESYNC`]).
    /// On a failed write nothing is taken as written, so the next poll tries again.
    pub fn poll(&mut self, now: Instant) -> Result<Polled, Error> {
        let (served, over) = self.dump()?;
        let full = self
            .last_full
            .is_none_or(|t| now.duration_since(t) >= RESYNC);
        let ops = diff(&self.written, &served, full, self.grace);
        for chunk in ops.chunks(PER_BATCH) {
            if let Err(e) = self.write(chunk) {
                self.last_full = None;
                return Err(e);
            }
        }
        if full {
            self.last_full = Some(now);
        }
        let r = Polled {
            served: served.len(),
            written: ops.len(),
            over,
        };
        self.written = served;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock_msg(seq: u32, family: u8, addr: &[u8], port: u16, dport: u16, uid: u32) -> Vec<u8> {
        let mut b = MsgBuilder::new(Vec::new());
        b.begin(SOCK_DIAG_BY_FAMILY, 0, seq);
        let mut m = [0u8; DIAG_MSG_LEN];
        m[0] = family;
        m[4..6].copy_from_slice(&port.to_be_bytes());
        m[6..8].copy_from_slice(&dport.to_be_bytes());
        m[8..8 + addr.len()].copy_from_slice(addr);
        m[64..68].copy_from_slice(&uid.to_ne_bytes());
        b.bytes(&m);
        b.end();
        b.finish()
    }

    #[test]
    fn keys() {
        let any = Key::of(6, "::".parse().unwrap(), 22);
        assert_eq!(any, Some(Key::Any { proto: 6, port: 22 }));
        assert_eq!(Key::of(6, "0.0.0.0".parse().unwrap(), 22), any);
        assert_eq!(Key::of(6, "127.0.0.53".parse().unwrap(), 53), None);
        assert_eq!(Key::of(17, "::ffff:127.0.0.1".parse().unwrap(), 53), None);
        assert_eq!(Key::of(17, "::1".parse().unwrap(), 53), None);
        assert_eq!(Key::of(6, "10.0.0.1".parse().unwrap(), 0), None);
        let mapped = Key::of(17, "::ffff:10.0.0.1".parse().unwrap(), 53).unwrap();
        assert_eq!(mapped.set(), SET_V4);
        assert_eq!(mapped.bytes(), [10, 0, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(any.unwrap().bytes(), [6, 0, 0, 0, 0, 22, 0, 0]);
        let v6 = Key::of(6, "fd00::1".parse().unwrap(), 443).unwrap();
        assert_eq!((v6.set(), v6.bytes().len()), (SET_V6, 24));
    }

    #[test]
    fn dump_parsing() {
        let mut buf = sock_msg(7, AF_INET, &[0, 0, 0, 0], 53, 0, 0);
        buf.extend(sock_msg(7, AF_INET, &[10, 0, 0, 1], 5353, 0, 0));
        buf.extend(sock_msg(7, AF_INET, &[10, 0, 0, 1], 40000, 53, 0)); // connected
        buf.extend(sock_msg(7, AF_INET, &[0, 0, 0, 0], 23, 0, 999)); // the sensor's
        buf.extend(sock_msg(6, AF_INET, &[0, 0, 0, 0], 8080, 0, 0)); // stale dump
        buf.extend(sock_msg(7, AF_INET, &[127, 0, 0, 1], 631, 0, 0)); // loopback
        let mut out = BTreeSet::new();
        let p = parse_dump(&buf, 7, IPPROTO_UDP, Some(999), &mut out).unwrap();
        assert_eq!(p, Parsed::default());
        let want: BTreeSet<Key> = [
            Key::Any {
                proto: 17,
                port: 53,
            },
            Key::V4 {
                addr: Ipv4Addr::new(10, 0, 0, 1),
                proto: 17,
                port: 5353,
            },
        ]
        .into_iter()
        .collect();
        assert_eq!(out, want);
        // The end of the dump, and an error reply.
        let mut b = MsgBuilder::new(Vec::new());
        b.begin(nl::NLMSG_DONE, 0, 7);
        b.bytes(&[0; 4]);
        b.end();
        assert!(parse_dump(&b.finish(), 7, 6, None, &mut out).unwrap().done);
        let mut b = MsgBuilder::new(Vec::new());
        b.begin(nl::NLMSG_ERROR, 0, 7);
        b.bytes(&(-libc::EINVAL).to_ne_bytes());
        b.end();
        assert_eq!(
            parse_dump(&b.finish(), 7, 6, None, &mut out),
            Err(Error::Kernel(Errno::EINVAL))
        );
        // Bad lengths and short messages are errors, never panics.
        let mut bad = sock_msg(7, AF_INET, &[0; 4], 1, 0, 0);
        bad[0] = 200;
        assert!(parse_dump(&bad, 7, 6, None, &mut out).is_err());
        let mut short = sock_msg(7, AF_INET, &[0; 4], 1, 0, 0);
        short.truncate(40);
        short[0..4].copy_from_slice(&40u32.to_ne_bytes());
        assert!(parse_dump(&short, 7, 6, None, &mut out).is_err());
    }

    #[test]
    fn diffs_write_only_changes() {
        let k = |port| Key::Any { proto: 6, port };
        let old: BTreeSet<Key> = [k(1), k(2)].into_iter().collect();
        let now: BTreeSet<Key> = [k(2), k(3)].into_iter().collect();
        let g = Duration::from_secs(5);
        assert_eq!(
            diff(&old, &now, false, g),
            [(k(3), Some(HOLD)), (k(1), Some(g))]
        );
        assert_eq!(diff(&now, &now, false, g), []);
        assert_eq!(diff(&now, &now, true, g).len(), 2);
        assert_eq!(diff(&old, &now, false, Duration::ZERO)[1], (k(1), None));
    }

    #[test]
    fn batch_shape() {
        let ops = [
            (Key::Any { proto: 6, port: 22 }, Some(HOLD)),
            (Key::Any { proto: 6, port: 23 }, None),
        ];
        let (msg, acks) = encode_batch("t", &ops, 10);
        // add, delete, add-with-timeout of one set, between batch begin and end.
        assert_eq!(acks, [11, 12, 13]);
        let tys: Vec<u16> = nl::messages(&msg).map(|m| m.unwrap().ty).collect();
        let set = |t| (NFNL_SUBSYS_NFTABLES << 8) | t;
        assert_eq!(
            tys,
            [
                NFNL_MSG_BATCH_BEGIN,
                set(NFT_MSG_NEWSETELEM),
                set(NFT_MSG_DELSETELEM),
                set(NFT_MSG_NEWSETELEM),
                NFNL_MSG_BATCH_END
            ]
        );
    }

    /// The cost of a poll with `n` served ports (run by hand, as root:
    /// `cargo test -p sentry-enforcer --release served::tests::measure -- --ignored
    /// --nocapture`): a quiet poll (dumps only) and a full rewrite.
    #[test]
    #[ignore = "measurement, run by hand"]
    fn measure_poll_cost() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let script = format!(
                "table inet sm {{\n\
                 set {SET_ANY} {{ type inet_proto . inet_service; flags timeout; }}\n\
                 set {SET_V4} {{ type ipv4_addr . inet_proto . inet_service; flags timeout; }}\n\
                 set {SET_V6} {{ type ipv6_addr . inet_proto . inet_service; flags timeout; }}\n}}\n"
            );
            let mut c = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), script.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
            for n in [10u16, 100, 1000] {
                let socks: Vec<std::net::TcpListener> = (0..n)
                    .map(|i| std::net::TcpListener::bind(("0.0.0.0", 20_000 + i)).unwrap())
                    .collect();
                let mut p = Poller::open("sm", None, Duration::from_secs(5)).unwrap();
                let t = Instant::now();
                p.poll(Instant::now()).unwrap();
                let full = t.elapsed();
                let t = Instant::now();
                for _ in 0..20 {
                    p.poll(Instant::now()).unwrap();
                }
                let quiet = t.elapsed() / 20;
                drop(socks);
                let t = Instant::now();
                let r = p.poll(Instant::now()).unwrap();
                let gone = t.elapsed();
                eprintln!(
                    "{n} ports: full rewrite {full:?}, quiet poll {quiet:?}, {} gone in {gone:?}",
                    r.written
                );
            }
        })
        .join()
        .unwrap();
    }

    /// Against the real kernel, in a private network namespace: a served port's element
    /// appears, and after its socket closed it expires after the grace.
    #[test]
    fn kernel_round_trip() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED (needs root): kernel_round_trip");
            return;
        }
        let r = std::thread::spawn(|| -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            let script = format!(
                "table inet st {{\n\
                 set {SET_ANY} {{ type inet_proto . inet_service; flags timeout; }}\n\
                 set {SET_V4} {{ type ipv4_addr . inet_proto . inet_service; flags timeout; }}\n\
                 set {SET_V6} {{ type ipv6_addr . inet_proto . inet_service; flags timeout; }}\n}}\n"
            );
            let out = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(script.as_bytes())?;
                    c.wait()
                })
                .map_err(|e| e.to_string())?;
            if !out.success() {
                return Err("nft failed".into());
            }
            let list = || {
                let o = std::process::Command::new("nft")
                    .args(["list", "table", "inet", "st"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            let mut p = Poller::open("st", None, Duration::from_secs(2)).map_err(|e| e.to_string())?;
            let t = std::net::TcpListener::bind("0.0.0.0:7777").map_err(|e| e.to_string())?;
            let u = std::net::UdpSocket::bind("[::]:7778").map_err(|e| e.to_string())?;
            let start = Instant::now();
            let r = p.poll(start).map_err(|e| e.to_string())?;
            if r.written < 2 {
                return Err(format!("{r:?}"));
            }
            let l = list();
            if !(l.contains("tcp . 7777") && l.contains("udp . 7778")) {
                return Err(l);
            }
            // Nothing changed: nothing written.
            let again = p.poll(start).map_err(|e| e.to_string())?;
            if again.written != 0 {
                return Err(format!("{again:?}"));
            }
            drop(t);
            let gone = p.poll(start).map_err(|e| e.to_string())?;
            if gone.written != 1 {
                return Err(format!("{gone:?}"));
            }
            let l = list();
            if !l.contains("tcp . 7777 timeout 2s") {
                return Err(l);
            }
            std::thread::sleep(Duration::from_millis(3200));
            let l = list();
            if l.contains("tcp . 7777") || !l.contains("udp . 7778") {
                return Err(l);
            }
            drop(u);
            Ok(())
        })
        .join()
        .unwrap();
        r.unwrap();
    }
}
