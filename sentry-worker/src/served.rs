//! RESTART_GRACE in the kernel (issue #21): which ports real services serve, polled here
//! and written by the root parent into the table's `detect_served` sets, so that the
//! detection chain treats them as served — no drop, no copy, no first hit — while a
//! service restarts.
//!
//! The kernel's own `socket` lookup knows only the sockets there are *now*: a client that
//! retries in a restart's gap looked like a probe of an unserved port and was blocked. The
//! worker therefore polls the host's listening TCP and bound UDP sockets with sock_diag
//! (no privilege needed, the kernel walks only the listening hash for TCP) every
//! [`POLL`] and asks the parent ([`Verb::Served`]) to write the difference:
//! * a port that is served gets an element with the long [`HOLD`] timeout (refreshed by a
//!   full rewrite every [`RESYNC`] and after each table rebuild, so a dead worker leaves
//!   nothing behind for long: its elements time out);
//! * a port no longer served gets its element replaced by one that expires after
//!   RESTART_GRACE, counted from the poll that found it gone, so the kernel's grace never
//!   ends before the sensor's (which ends [`SENSOR_MARGIN`] earlier, counted from its own
//!   last sighting).
//!
//! Nothing is asked while nothing changes, so a quiet host costs one dump per poll. The
//! parent writes each item as add, delete, add with the timeout in one nfnetlink batch
//! (a re-add does not refresh a timeout; in one batch a packet sees the old element or
//! the new one, never none): sentry-enforcer's `kernel::served`, which also says why it
//! can take these elements from the worker (they only make the chain answer a port).
//!
//! Sockets of the sensor's user (its basic-mode listeners) are no services, loopback
//! addresses are never probed from outside, and a connected UDP socket (a client's) only
//! receives from its peer: none of those is written. The reply parser is fuzzed
//! (`fuzz/fuzz_targets/served.rs`): what the kernel sends is checked, never trusted.
//!
//! The sock_diag socket is opened before the seccomp filter is installed
//! ([`crate::confine`]); under it the poller only sends and receives on it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, setsockopt, sockopt, MsgFlags, SockFlag, SockProtocol};
use nix::sys::time::TimeVal;
use sentry_enforcer::kernel::nl::{self, MsgBuilder, AF_INET, AF_INET6};
use sentry_privsep::{Proto, Request, Verb, SERVED_ADD, SERVED_BATCH, SERVED_DEL};

use crate::privsep::Failure;

/// How often the sockets are polled: the longest a closed port can go unnoticed.
pub const POLL: Duration = Duration::from_millis(250);
/// Timeout of the element of a port that is served now. Long against [`RESYNC`], short
/// enough that a worker that died leaves no port untripped for long.
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

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCPF_LISTEN: u32 = 1 << 10;
/// `inet_diag_msg`: family, state, timer, retrans, sockid (48), expires, rqueue, wqueue,
/// uid, inode.
const DIAG_MSG_LEN: usize = 72;

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

    /// The parent's item for this key: `timeout` for an add, `None` to remove it.
    pub fn request(&self, timeout: Option<Duration>) -> Request {
        let (addr, proto, port) = match *self {
            Self::Any { proto, port } => (None, proto, port),
            Self::V4 { addr, proto, port } => (Some(IpAddr::V4(addr)), proto, port),
            Self::V6 { addr, proto, port } => (Some(IpAddr::V6(addr)), proto, port),
        };
        let mut r = match addr {
            Some(a) => Request::for_addr(Verb::Served, 0, a),
            None => Request::new(Verb::Served, 0),
        };
        r.proto = if proto == IPPROTO_UDP {
            Proto::Udp
        } else {
            Proto::Tcp
        };
        r.port = port;
        match timeout {
            Some(t) => {
                r.flag = SERVED_ADD;
                r.timeout_ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
            }
            None => r.flag = SERVED_DEL,
        }
        r
    }
}

/// A poll failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The kernel answered the dump with this errno.
    Kernel(Errno),
    /// The socket failed (send, receive, time-out).
    Io(Errno),
    /// A reply that does not parse.
    Malformed(&'static str),
    /// The parent did not write the elements.
    Parent(Failure),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel(e) => write!(f, "sock_diag: kernel refused: {}", e.desc()),
            Self::Io(e) => write!(f, "sock_diag socket: {}", e.desc()),
            Self::Malformed(m) => write!(f, "sock_diag reply malformed: {m}"),
            Self::Parent(e) => e.fmt(f),
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

/// The poller: its sock_diag socket and what it last had written.
#[derive(Debug)]
pub struct Poller {
    skip_uid: Option<u32>,
    grace: Duration,
    diag: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    written: BTreeSet<Key>,
    last_full: Option<Instant>,
    /// The rebuild count ([`crate::privsep::Link::rebuilds`]) at the last full rewrite.
    epoch: u64,
}

impl Poller {
    /// `skip_uid`: the sensor's user, whose basic-mode sockets are no services.
    pub fn open(skip_uid: Option<u32>, grace: Duration) -> Result<Self, Error> {
        let diag =
            nl::open(SockProtocol::NetlinkSockDiag, 0, SockFlag::empty()).map_err(Error::Io)?;
        setsockopt(&diag, sockopt::ReceiveTimeout, &TimeVal::new(2, 0)).map_err(Error::Io)?;
        Ok(Self {
            skip_uid,
            grace,
            diag,
            seq: std::process::id().wrapping_mul(65_536),
            buf: vec![0u8; nl::RECV_BUF],
            written: BTreeSet::new(),
            last_full: None,
            epoch: 0,
        })
    }

    fn recv(&mut self) -> Result<usize, Error> {
        loop {
            match recv(self.diag.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                r => return r.map_err(Error::Io),
            }
        }
    }

    /// The served ports now, and how many sockets were left out over [`MAX_KEYS`].
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

    /// One poll: dump the sockets and have `write` ask the parent for what changed
    /// (everything every [`RESYNC`], and when `epoch`, the count of table and detection
    /// rebuilds, moved: the sets may be new), at most [`SERVED_BATCH`] items a request.
    /// On a failed write nothing is taken as written, so the next poll tries again with a
    /// full rewrite.
    pub fn poll(
        &mut self,
        now: Instant,
        epoch: u64,
        write: &mut dyn FnMut(&[Request]) -> Result<(), Failure>,
    ) -> Result<Polled, Error> {
        let (served, over) = self.dump()?;
        let full = epoch != self.epoch
            || self
                .last_full
                .is_none_or(|t| now.duration_since(t) >= RESYNC);
        let ops = diff(&self.written, &served, full, self.grace);
        let items: Vec<Request> = ops.iter().map(|(k, t)| k.request(*t)).collect();
        for chunk in items.chunks(SERVED_BATCH) {
            if let Err(e) = write(chunk) {
                self.last_full = None;
                return Err(Error::Parent(e));
            }
        }
        if full {
            (self.last_full, self.epoch) = (Some(now), epoch);
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
        assert_eq!(
            mapped,
            Key::V4 {
                addr: Ipv4Addr::new(10, 0, 0, 1),
                proto: 17,
                port: 53
            }
        );
    }

    /// Every key the dump can yield becomes an item the parent's decoder takes, and the
    /// parent's element is the one the chain looks up.
    #[test]
    fn items_decode_in_the_parent() {
        use sentry_enforcer::served::{Elem, SET_ANY, SET_V4, SET_V6};
        let keys = [
            (Key::of(6, "::".parse().unwrap(), 22), SET_ANY, 8),
            (
                Key::of(17, "::ffff:10.0.0.1".parse().unwrap(), 53),
                SET_V4,
                12,
            ),
            (Key::of(6, "fd00::1".parse().unwrap(), 443), SET_V6, 24),
        ];
        for (k, set, len) in keys {
            let k = k.unwrap();
            for t in [Some(HOLD), Some(Duration::from_secs(3600)), None] {
                let r = k.request(t);
                let back = Request::decode(&r.encode()).unwrap();
                let e = Elem::of(&back);
                assert_eq!((e.set, e.key.len(), e.timeout), (set, len, t), "{k:?}");
            }
        }
        let udp = Key::Any {
            proto: 17,
            port: 53,
        }
        .request(None);
        assert_eq!(Elem::of(&udp).key, [17, 0, 0, 0, 0, 53, 0, 0]);
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
    fn the_key_set_is_bounded() {
        let mut buf = Vec::new();
        let mut out: BTreeSet<Key> = (1..=u16::try_from(MAX_KEYS).unwrap())
            .map(|port| Key::Any { proto: 6, port })
            .collect();
        buf.extend(sock_msg(7, AF_INET, &[0; 4], 1, 0, 0)); // already in: no room needed
        buf.extend(sock_msg(7, AF_INET, &[10, 0, 0, 1], 1, 0, 0));
        buf.extend(sock_msg(7, AF_INET, &[10, 0, 0, 2], 1, 0, 0));
        let p = parse_dump(&buf, 7, 6, None, &mut out).unwrap();
        assert_eq!((p.over, out.len()), (2, MAX_KEYS));
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
    fn hold_and_grace_fit_the_parents_bound() {
        let max = Duration::from_millis(sentry_privsep::SERVED_TIMEOUT_MAX_MS);
        assert!(HOLD <= max && RESYNC * 2 < HOLD);
        // policy's largest RESTART_GRACE is taken as it is.
        let cfg = policy::Config::parse("RESTART_GRACE=\"3600\"\n", std::path::Path::new("t"));
        assert!(cfg.unwrap().restart_grace <= max);
        assert!(
            policy::Config::parse("RESTART_GRACE=\"3601\"\n", std::path::Path::new("t")).is_err()
        );
    }

    /// Polls with a parent stand-in: a write of every changed port, none when nothing
    /// changed, a full rewrite after a table rebuild, and a failed write retried in full.
    #[test]
    fn polls_write_changes_and_resync() {
        let Ok(mut p) = Poller::open(None, Duration::from_secs(5)) else {
            eprintln!("SKIPPED (no sock_diag): polls_write_changes_and_resync");
            return;
        };
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mine = Key::Any { proto: 6, port };
        let mut got: Vec<Request> = Vec::new();
        let mut fail = false;
        let t0 = Instant::now();
        let poll = |p: &mut Poller, got: &mut Vec<Request>, fail: bool, epoch| {
            got.clear();
            p.poll(t0, epoch, &mut |items| {
                assert!(items.len() <= SERVED_BATCH);
                got.extend_from_slice(items);
                match fail {
                    true => Err(Failure::Failed(libc::ENOENT, "no set".into())),
                    false => Ok(()),
                }
            })
        };
        poll(&mut p, &mut got, fail, 0).unwrap();
        assert!(got.contains(&mine.request(Some(HOLD))), "{got:?}");
        poll(&mut p, &mut got, fail, 0).unwrap();
        assert!(!got.contains(&mine.request(Some(HOLD))), "{got:?}");
        poll(&mut p, &mut got, fail, 1).unwrap();
        assert!(
            got.contains(&mine.request(Some(HOLD))),
            "after a rebuild: {got:?}"
        );
        drop(l);
        fail = true;
        let e = poll(&mut p, &mut got, fail, 1).unwrap_err();
        assert_eq!(e.to_string(), "no set");
        assert!(got.contains(&mine.request(Some(Duration::from_secs(5)))));
        // Not taken as written: tried again.
        fail = false;
        poll(&mut p, &mut got, fail, 1).unwrap();
        assert!(got.contains(&mine.request(Some(Duration::from_secs(5)))));
    }

    /// Against the real kernel, in a private network namespace, through the parent's own
    /// verb code (`testing::parent`): a served port's element appears, and after its
    /// socket closed it expires after the grace.
    #[test]
    fn kernel_round_trip() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED (needs root): kernel_round_trip");
            return;
        }
        let r = std::thread::spawn(|| -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            // The sets as the enforcer's table declares them.
            let script = sentry_enforcer::table::detection_script(
                "st",
                &sentry_enforcer::table::DetectSpec::blocks_only(None),
            )?;
            sentry_enforcer::table::nft(&script, Duration::from_secs(10))?;
            let list = || {
                let o = std::process::Command::new("nft")
                    .args(["list", "table", "inet", "st"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            let cfg = policy::Config::parse(
                "FIREWALL=\"nftables\"\nNFT_TABLE=\"st\"\n",
                std::path::Path::new("t.conf"),
            )
            .map_err(|e| e.to_string())?;
            let (link, _) = crate::privsep::testing::parent(&cfg);
            let mut write = |items: &[Request]| link.ask(items).map(drop);
            let mut p = Poller::open(None, Duration::from_secs(2)).map_err(|e| e.to_string())?;
            let t = std::net::TcpListener::bind("0.0.0.0:7777").map_err(|e| e.to_string())?;
            let u = std::net::UdpSocket::bind("[::]:7778").map_err(|e| e.to_string())?;
            let start = Instant::now();
            let r = p.poll(start, 0, &mut write).map_err(|e| e.to_string())?;
            if r.written < 2 {
                return Err(format!("{r:?}"));
            }
            let l = list();
            if !(l.contains("tcp . 7777") && l.contains("udp . 7778")) {
                return Err(l);
            }
            // Nothing changed: nothing written.
            let again = p.poll(start, 0, &mut write).map_err(|e| e.to_string())?;
            if again.written != 0 {
                return Err(format!("{again:?}"));
            }
            drop(t);
            let gone = p.poll(start, 0, &mut write).map_err(|e| e.to_string())?;
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

    /// The cost of a poll with `n` served ports (run by hand, as root:
    /// `cargo test -p sentry-worker --release served::tests::measure -- --ignored
    /// --nocapture`): a quiet poll (dumps only) and a full rewrite through the parent's
    /// verb code.
    #[test]
    #[ignore = "measurement, run by hand"]
    fn measure_poll_cost() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            use sentry_enforcer::served::{SET_ANY, SET_V4, SET_V6};
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
            let cfg = policy::Config::parse(
                "FIREWALL=\"nftables\"\nNFT_TABLE=\"sm\"\n",
                std::path::Path::new("t.conf"),
            )
            .unwrap();
            let (link, _) = crate::privsep::testing::parent(&cfg);
            let mut write = |items: &[Request]| link.ask(items).map(drop);
            for n in [10u16, 100, 1000] {
                let socks: Vec<std::net::TcpListener> = (0..n)
                    .map(|i| std::net::TcpListener::bind(("0.0.0.0", 20_000 + i)).unwrap())
                    .collect();
                let mut p = Poller::open(None, Duration::from_secs(5)).unwrap();
                let t = Instant::now();
                p.poll(Instant::now(), 0, &mut write).unwrap();
                let full = t.elapsed();
                let t = Instant::now();
                for _ in 0..20 {
                    p.poll(Instant::now(), 0, &mut write).unwrap();
                }
                let quiet = t.elapsed() / 20;
                drop(socks);
                let t = Instant::now();
                let r = p.poll(Instant::now(), 0, &mut write).unwrap();
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
}
