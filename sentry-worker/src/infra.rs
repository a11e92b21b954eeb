//! The infrastructure this host depends on, which a forged probe must never get blocked:
//! default-route next hops (every routing table, IPv4 and IPv6, multipath nexthops and
//! `RTA_VIA` included), point-to-point peers (IFA_ADDRESS differing from IFA_LOCAL),
//! nameservers (/etc/resolv.conf and systemd-resolved's upstream list) and the servers of
//! this host's DHCP leases (dhclient and systemd-networkd lease files).
//!
//! Kept current from two sources, both cheap when nothing changed:
//! * an rtnetlink socket subscribed to route and address notifications, drained without
//!   waiting before each decision; only a change of a *default* route (or an address
//!   change, or an overrun) triggers a fresh dump, so a router's busy full table does not
//!   make every decision pay for a dump; dumps are at least 200 ms apart, so a flood of
//!   decisions during route churn cannot become a flood of dumps (a block that lands on a
//!   new gateway inside that window is lifted by the refresh that follows, within a
//!   second);
//! * the resolver and lease files, re-read when their inode, size or mtime changes,
//!   checked by `stat` at most once per second (the daemon's one-second tick), never on a
//!   decision's path.
//!
//! Everything read here is parsed with bounds checks and typed errors: netlink replies
//! come from the kernel (only port id 0 is accepted) but a short attribute must still be
//! an error, not a panic; files are capped at [`MAX_FILE`] bytes and [`MAX_LEASE_FILES`]
//! per directory, and at most [`MAX_ENTRIES`] addresses are kept (the rest are counted).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recvfrom, setsockopt, sockopt, NetlinkAddr, SockFlag, SockProtocol};
use nix::sys::time::TimeVal;
pub use policy::InfraReason;

use sentry_enforcer::kernel::nl::{
    self, AF_INET, AF_INET6, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST, RECV_BUF,
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTM_DELROUTE, RTM_NEWROUTE,
};

/// Largest resolver or lease file read (bytes); a bigger one is refused and reported.
pub const MAX_FILE: u64 = 1 << 20;
/// Most lease files read per lease directory.
pub const MAX_LEASE_FILES: usize = 256;
/// Most infrastructure addresses kept; further ones are counted and reported.
pub const MAX_ENTRIES: usize = 4096;
/// A whole dump must be answered within this time.
const DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the files may be looked at (stat) at most.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_GETROUTE: u16 = 26;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTA_VIA: u16 = 18;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTN_UNICAST: u8 = 1;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// Most reads per drain of the notification socket (a drain must end).
const DRAIN_MAX_READS: usize = 256;

/// A netlink reply that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfraError {
    /// The socket failed (open, send, receive, timeout).
    Io(Errno),
    /// The kernel answered the dump with this error.
    Kernel(Errno),
    /// A message or attribute was shorter than its header claims, or inconsistent.
    Malformed(&'static str),
    /// The dump did not finish within the time limit.
    Timeout,
}

impl fmt::Display for InfraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "rtnetlink socket: {}", e.desc()),
            Self::Kernel(e) => write!(f, "rtnetlink dump refused: {}", e.desc()),
            Self::Malformed(m) => write!(f, "rtnetlink reply malformed: {m}"),
            Self::Timeout => write!(f, "rtnetlink dump not finished within {DUMP_TIMEOUT:?}"),
        }
    }
}

impl std::error::Error for InfraError {}

/// Split a datagram into netlink messages, every length checked.
pub fn messages(buf: &[u8]) -> Result<Vec<nl::Msg<'_>>, InfraError> {
    nl::messages(buf)
        .collect::<Result<_, _>>()
        .map_err(|e| InfraError::Malformed(e.text("trailing bytes shorter than a header")))
}

/// Split attribute space into (type, payload) pairs (the nested flag masked off).
pub fn attrs(b: &[u8]) -> Result<Vec<(u16, &[u8])>, InfraError> {
    nl::attrs(b)
        .collect::<Result<_, _>>()
        .map_err(|e| InfraError::Malformed(e.text("attribute shorter than its header")))
}

fn ip_from(family: u8, b: &[u8]) -> Result<IpAddr, InfraError> {
    match family {
        AF_INET => <[u8; 4]>::try_from(b).map(IpAddr::from),
        AF_INET6 => <[u8; 16]>::try_from(b).map(IpAddr::from),
        _ => return Err(InfraError::Malformed("address of an unknown family")),
    }
    .map_err(|_| InfraError::Malformed("address of the wrong length"))
}

/// `struct rtvia`: a 16-bit address family, then the address.
fn via(b: &[u8]) -> Result<IpAddr, InfraError> {
    let (fam, addr) = b
        .split_first_chunk::<2>()
        .ok_or(InfraError::Malformed("short RTA_VIA"))?;
    let fam = u8::try_from(u16::from_ne_bytes(*fam))
        .map_err(|_| InfraError::Malformed("RTA_VIA family"))?;
    ip_from(fam, addr)
}

/// The next hops of a route message's payload (`struct rtmsg` + attributes) when it is a
/// unicast default route (prefix length 0), in any table; otherwise none.
pub fn default_route_gateways(payload: &[u8]) -> Result<Vec<IpAddr>, InfraError> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32)
    let hdr = payload
        .get(..12)
        .ok_or(InfraError::Malformed("short rtmsg"))?;
    let (family, dst_len, ty) = (hdr[0], hdr[1], hdr[7]);
    if dst_len != 0 || ty != RTN_UNICAST {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut next_hop = |t: u16, v: &[u8]| -> Result<(), InfraError> {
        match t {
            RTA_GATEWAY => out.push(ip_from(family, v)?),
            RTA_VIA => out.push(via(v)?),
            _ => {}
        }
        Ok(())
    };
    for (t, v) in attrs(&payload[12..])? {
        if t != RTA_MULTIPATH {
            next_hop(t, v)?;
            continue;
        }
        // A sequence of struct rtnexthop {len u16, flags u8, hops u8, ifindex i32}, each
        // followed by its own attributes within `len`.
        for hop in nl::split(v, 2, nl::len16, "bad rtnexthop length") {
            let (_, hop) = hop.map_err(|e| InfraError::Malformed(e.text("short rtnexthop")))?;
            let hop_attrs = hop
                .get(6..)
                .ok_or(InfraError::Malformed("bad rtnexthop length"))?;
            for (t, v) in attrs(hop_attrs)? {
                next_hop(t, v)?;
            }
        }
    }
    Ok(out)
}

/// The peer of an address message's payload (`struct ifaddrmsg` + attributes): on a
/// point-to-point address the kernel reports the local end in IFA_LOCAL and the remote
/// end in IFA_ADDRESS; elsewhere the two are equal (or IFA_LOCAL is absent).
pub fn ptp_peer(payload: &[u8]) -> Result<Option<IpAddr>, InfraError> {
    // struct ifaddrmsg: family, prefixlen, flags, scope, index(u32)
    let hdr = payload
        .get(..8)
        .ok_or(InfraError::Malformed("short ifaddrmsg"))?;
    let family = hdr[0];
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    let (mut address, mut local) = (None, None);
    for (t, v) in attrs(&payload[8..])? {
        match t {
            IFA_ADDRESS => address = Some(ip_from(family, v)?),
            IFA_LOCAL => local = Some(ip_from(family, v)?),
            _ => {}
        }
    }
    Ok(match (address, local) {
        (Some(a), Some(l)) if a != l => Some(a),
        _ => None,
    })
}

fn dump_request(ty: u16, seq: u32) -> Vec<u8> {
    let mut b = nl::MsgBuilder::new(Vec::with_capacity(28));
    b.begin(ty, NLM_F_REQUEST | NLM_F_DUMP, seq);
    // A zeroed rtmsg (12 bytes; also a valid, longer-than-needed ifaddrmsg): family
    // AF_UNSPEC, table 0 = every table.
    b.bytes(&[0; 12]);
    b.end();
    b.finish()
}

/// Run one rtnetlink dump and collect (sorted, deduplicated) the addresses `each` finds in
/// every reply message of type `want`.
fn dump<I: IntoIterator<Item = IpAddr>>(
    ty: u16,
    want: u16,
    each: fn(&[u8]) -> Result<I, InfraError>,
) -> Result<Vec<IpAddr>, InfraError> {
    let mut out = BTreeSet::new();
    let fd = nl::open(SockProtocol::NetlinkRoute, 0, SockFlag::empty()).map_err(InfraError::Io)?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0)).map_err(InfraError::Io)?;
    let seq = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(u32::from(ty));
    nl::send(&fd, &dump_request(ty, seq)).map_err(InfraError::Io)?;
    let deadline = Instant::now() + DUMP_TIMEOUT;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        if Instant::now() > deadline {
            return Err(InfraError::Timeout);
        }
        let (n, from) = match recvfrom::<NetlinkAddr>(fd.as_raw_fd(), &mut buf) {
            Ok(r) => r,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(InfraError::Timeout),
            Err(e) => return Err(InfraError::Io(e)),
        };
        if from.is_none_or(|f| f.pid() != 0) {
            continue;
        }
        let data = buf
            .get(..n)
            .ok_or(InfraError::Malformed("reply longer than buffer"))?;
        for m in messages(data)? {
            if m.seq != seq {
                continue;
            }
            match m.ty {
                NLMSG_DONE => return Ok(out.into_iter().collect()),
                NLMSG_ERROR => {
                    let code = nl::error_code(m.payload)
                        .ok_or(InfraError::Malformed("short error message"))?;
                    if code != 0 {
                        return Err(InfraError::Kernel(Errno::from_raw(-code)));
                    }
                }
                t if t == want => out.extend(each(m.payload)?),
                _ => {}
            }
        }
    }
}

/// Default-route next hops of every table, IPv4 and IPv6 (one RTM_GETROUTE dump).
pub fn dump_default_gateways() -> Result<Vec<IpAddr>, InfraError> {
    dump(RTM_GETROUTE, RTM_NEWROUTE, default_route_gateways)
}

/// Point-to-point peers of every address (one RTM_GETADDR dump).
pub fn dump_ptp_peers() -> Result<Vec<IpAddr>, InfraError> {
    dump(RTM_GETADDR, RTM_NEWADDR, ptp_peer)
}

/// What a batch of notifications says must be looked at again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dirty {
    pub routes: bool,
    pub addrs: bool,
}

impl Dirty {
    /// Everything is to be looked at again.
    const ALL: Self = Self {
        routes: true,
        addrs: true,
    };
}

/// Classify notification messages: a default route added or removed, or any address
/// change (a point-to-point peer may have come or gone). Routes to anything but a
/// default destination are ignored, so a busy routing table costs a parse, not a dump.
pub fn classify(buf: &[u8]) -> Result<Dirty, InfraError> {
    let mut d = Dirty::default();
    for m in messages(buf)? {
        match m.ty {
            RTM_NEWROUTE | RTM_DELROUTE => {
                let dst_len = m
                    .payload
                    .get(1)
                    .ok_or(InfraError::Malformed("short rtmsg"))?;
                d.routes |= *dst_len == 0;
            }
            RTM_NEWADDR | RTM_DELADDR => d.addrs = true,
            _ => {}
        }
    }
    Ok(d)
}

/// The notification socket (route and address groups, IPv4 and IPv6).
#[derive(Debug)]
pub struct InfraWatch(nl::Watch);

impl InfraWatch {
    /// Open and subscribe (no capability needed to listen).
    pub fn open() -> Result<Self, InfraError> {
        let groups =
            RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        nl::Watch::open(SockProtocol::NetlinkRoute, groups, RECV_BUF)
            .map(Self)
            .map_err(InfraError::Io)
    }

    pub fn poll_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.0.fd)
    }

    /// Read everything queued without waiting. Messages not from the kernel are dropped;
    /// an overrun (ENOBUFS) or a malformed notification means "look at everything".
    pub fn drain(&mut self) -> Result<Dirty, InfraError> {
        let mut d = Dirty::default();
        let lost = self.0.drain(DRAIN_MAX_READS, |b| {
            let got = b
                .map_or(
                    Err(InfraError::Malformed("reply longer than buffer")),
                    classify,
                )
                .unwrap_or(Dirty::ALL);
            d.routes |= got.routes;
            d.addrs |= got.addrs;
        });
        Ok(if lost.map_err(InfraError::Io)? {
            Dirty::ALL
        } else {
            d
        })
    }
}

/// Where the resolver and lease files are. `root` is `/` on a real host; tests point it
/// at a directory of their own (`--infra-root`), so that no real file is ever touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfraPaths {
    pub root: PathBuf,
}

/// Lease directories and the file-name suffix of a lease in each ("" = every file).
const LEASE_DIRS: &[(&str, &str)] = &[
    ("var/lib/dhcp", ".leases"),
    ("var/lib/dhclient", ".leases"),
    ("var/lib/NetworkManager", ".lease"),
    ("run/systemd/netif/leases", ""),
];
const RESOLV_FILES: &[&str] = &["etc/resolv.conf", "run/systemd/resolve/resolv.conf"];

impl InfraPaths {
    pub fn system() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }

    /// Every file that may hold infrastructure, plus the lease directories themselves
    /// (their mtime changes when a lease file appears or goes). Bounded per directory.
    fn candidates(&self, problems: &mut Vec<String>) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
        let resolv = RESOLV_FILES.iter().map(|f| self.root.join(f)).collect();
        let mut leases = Vec::new();
        let mut dirs = Vec::new();
        for &(dir, suffix) in LEASE_DIRS {
            let dir = self.root.join(dir);
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            dirs.push(dir.clone());
            let mut names: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| !n.starts_with('.') && n.ends_with(suffix))
                })
                .collect();
            names.sort();
            if names.len() > MAX_LEASE_FILES {
                problems.push(format!(
                    "{}: more than {MAX_LEASE_FILES} lease files; only the first {MAX_LEASE_FILES} are read",
                    dir.display()
                ));
                names.truncate(MAX_LEASE_FILES);
            }
            leases.extend(names);
        }
        (resolv, leases, dirs)
    }
}

/// `nameserver ADDR` lines of a resolv.conf (comments start with `#` or `;`; a zone
/// index `%eth0` is dropped: the address is what a forged packet would carry).
pub fn parse_resolv_conf(text: &str) -> (Vec<IpAddr>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut w = line.split_whitespace();
        if w.next() != Some("nameserver") {
            continue;
        }
        let Some(v) = w.next() else {
            bad.push(format!("line {}: nameserver without an address", i + 1));
            continue;
        };
        let v = v.split_once('%').map_or(v, |(a, _)| a);
        match v.parse::<IpAddr>() {
            Ok(a) => out.push(a),
            Err(_) => bad.push(format!("line {}: '{v}' is not an address", i + 1)),
        }
    }
    (out, bad)
}

/// DHCP servers of a lease file: dhclient's `option dhcp-server-identifier A;` and
/// systemd-networkd's `SERVER_ADDRESS=A`.
pub fn parse_lease(text: &str) -> (Vec<IpAddr>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        let v = if let Some(rest) = l.strip_prefix("option dhcp-server-identifier") {
            rest.trim().trim_end_matches(';').trim()
        } else if let Some(rest) = l.strip_prefix("SERVER_ADDRESS=") {
            rest.trim()
        } else {
            continue;
        };
        match v.parse::<IpAddr>() {
            Ok(a) => out.push(a),
            Err(_) => bad.push(format!("line {}: '{v}' is not an address", i + 1)),
        }
    }
    (out, bad)
}

/// Read a text file of at most [`MAX_FILE`] bytes; `Ok(None)` when it does not exist.
fn read_small(path: &Path) -> Result<Option<String>, String> {
    use policy::ReadError;
    match policy::read_bounded(path, MAX_FILE) {
        Ok(b) => Ok(b.map(|b| String::from_utf8_lossy(&b).into_owned())),
        Err(ReadError::Io(e)) => Err(format!("{}: {e}", path.display())),
        Err(ReadError::NotRegular) => {
            Err(format!("{}: not a regular file; ignored", path.display()))
        }
        Err(ReadError::TooLarge(max)) => Err(format!(
            "{}: larger than {max} bytes; not read",
            path.display()
        )),
    }
}

/// Identity of a file's current version: (device, inode, size, mtime seconds, mtime ns).
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Addresses learnt from the files, and problems worth a log line (unreadable, too big,
/// unparsable lines).
pub fn read_files(paths: &InfraPaths) -> (Vec<(IpAddr, InfraReason)>, Vec<String>) {
    let mut problems = Vec::new();
    let (resolv, leases, _) = paths.candidates(&mut problems);
    let mut out = Vec::new();
    type Parse = fn(&str) -> (Vec<IpAddr>, Vec<String>);
    let kinds: [(_, Parse, _); 2] = [
        (resolv, parse_resolv_conf, InfraReason::Nameserver),
        (leases, parse_lease, InfraReason::DhcpServer),
    ];
    for (files, parse, reason) in kinds {
        for p in files {
            match read_small(&p) {
                Ok(Some(t)) => {
                    let (a, bad) = parse(&t);
                    out.extend(a.into_iter().map(|a| (a, reason)));
                    problems.extend(bad.into_iter().map(|b| format!("{}: {b}", p.display())));
                }
                Ok(None) => {}
                Err(e) => problems.push(e),
            }
        }
    }
    (out, problems)
}

/// One complete look (for `sentryctl check-config`): kernel and files.
pub fn discover(paths: &InfraPaths) -> (Vec<(IpAddr, InfraReason)>, Vec<String>) {
    let (mut out, mut problems) = read_files(paths);
    match dump_default_gateways() {
        Ok(g) => out.extend(g.into_iter().map(|a| (a, InfraReason::DefaultGateway))),
        Err(e) => problems.push(format!("default routes: {e}")),
    }
    match dump_ptp_peers() {
        Ok(p) => out.extend(p.into_iter().map(|a| (a, InfraReason::PointToPointPeer))),
        Err(e) => problems.push(format!("point-to-point peers: {e}")),
    }
    out.sort();
    out.dedup();
    (out, problems)
}

/// The enforcer's current view, and what keeps it current.
#[derive(Debug)]
pub struct Infra {
    paths: InfraPaths,
    watch: Option<InfraWatch>,
    gateways: Vec<IpAddr>,
    peers: Vec<IpAddr>,
    files: Vec<(IpAddr, InfraReason)>,
    stamps: Vec<(PathBuf, Stamp)>,
    last_file_check: Option<Instant>,
    dirty: Dirty,
    /// After a failed dump, no new attempt before this (a dump that keeps failing or
    /// timing out must not cost every decision its full timeout).
    retry_at: Option<Instant>,
    /// When the last dump started: dumps are at least [`DUMP_MIN_INTERVAL`] apart, so a
    /// router whose notification socket keeps overrunning (full-table churn) pays for at
    /// most a few dumps per second, not one per decision.
    last_dump: Option<Instant>,
    /// Entries beyond [`MAX_ENTRIES`] left out at the last update.
    pub dropped: usize,
}

/// Pause between failed dump attempts.
const DUMP_RETRY: Duration = Duration::from_secs(1);
/// Least time between two dumps (a change is still taken well within a second: the
/// daemon's tick refreshes once per second as well).
const DUMP_MIN_INTERVAL: Duration = Duration::from_millis(200);

/// What a refresh did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    /// The list changed: the caller must install [`Infra::entries`].
    pub changed: bool,
    /// Problems to count and log.
    pub problems: Vec<String>,
}

impl Infra {
    /// Subscribe first (so no change can fall between the first look and the watch),
    /// then read everything.
    pub fn open(paths: InfraPaths) -> (Self, Refresh) {
        let mut problems = Vec::new();
        let watch = match InfraWatch::open() {
            Ok(w) => Some(w),
            Err(e) => {
                problems.push(format!(
                    "cannot watch route changes ({e}); routes are dumped again before every decision"
                ));
                None
            }
        };
        let mut me = Self {
            paths,
            watch,
            gateways: Vec::new(),
            peers: Vec::new(),
            files: Vec::new(),
            stamps: Vec::new(),
            last_file_check: None,
            dirty: Dirty::ALL,
            retry_at: None,
            last_dump: None,
            dropped: 0,
        };
        let mut r = me.refresh_kernel();
        r.problems.splice(0..0, problems);
        let f = me.refresh_files(Instant::now());
        r.problems.extend(f.problems);
        r.changed = true;
        (me, r)
    }

    pub fn poll_fd(&self) -> Option<Arc<OwnedFd>> {
        self.watch.as_ref().map(InfraWatch::poll_fd)
    }

    /// Take route and address notifications (one non-blocking read when nothing
    /// changed); dump again only what they say changed. Without a watch socket, dump
    /// every time (slow but never stale).
    pub fn refresh_kernel(&mut self) -> Refresh {
        let mut r = Refresh::default();
        match self.watch.as_mut().map(InfraWatch::drain) {
            Some(Ok(d)) => {
                self.dirty.routes |= d.routes;
                self.dirty.addrs |= d.addrs;
            }
            Some(Err(e)) => {
                r.problems.push(format!(
                    "route-change socket failed ({e}); routes are now dumped again before every decision"
                ));
                self.watch = None;
                self.dirty = Dirty::ALL;
            }
            None => self.dirty = Dirty::ALL,
        }
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| now < t)
            || self
                .last_dump
                .is_some_and(|t| now.saturating_duration_since(t) < DUMP_MIN_INTERVAL)
        {
            // Still dirty: the next refresh after the pause dumps.
            return r;
        }
        if self.dirty.routes || self.dirty.addrs {
            self.last_dump = Some(now);
        }
        if self.dirty.routes {
            match dump_default_gateways() {
                Ok(g) => {
                    self.dirty.routes = false;
                    if g != self.gateways {
                        self.gateways = g;
                        r.changed = true;
                    }
                }
                // The old list stays (a failed dump must not unprotect anything); a
                // refresh after DUMP_RETRY tries again.
                Err(e) => {
                    self.retry_at = Some(now + DUMP_RETRY);
                    r.problems.push(format!("default routes: {e}"));
                }
            }
        }
        if self.dirty.addrs {
            match dump_ptp_peers() {
                Ok(p) => {
                    self.dirty.addrs = false;
                    if p != self.peers {
                        self.peers = p;
                        r.changed = true;
                    }
                }
                Err(e) => {
                    self.retry_at = Some(now + DUMP_RETRY);
                    r.problems.push(format!("point-to-point peers: {e}"));
                }
            }
        }
        r
    }

    /// Re-read the resolver and lease files if any of them changed (inode, size or
    /// mtime), at most once per [`FILE_CHECK_INTERVAL`].
    pub fn refresh_files(&mut self, now: Instant) -> Refresh {
        let mut r = Refresh::default();
        if self
            .last_file_check
            .is_some_and(|t| now.saturating_duration_since(t) < FILE_CHECK_INTERVAL)
        {
            return r;
        }
        self.last_file_check = Some(now);
        let mut problems = Vec::new();
        let (resolv, leases, dirs) = self.paths.candidates(&mut problems);
        let stamps: Vec<(PathBuf, Stamp)> = resolv
            .into_iter()
            .chain(leases)
            .chain(dirs)
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect();
        if stamps == self.stamps {
            return r;
        }
        self.stamps = stamps;
        let (files, mut more) = read_files(&self.paths);
        problems.append(&mut more);
        r.problems = problems;
        if files != self.files {
            self.files = files;
            r.changed = true;
        }
        r
    }

    /// Everything currently known, deduplicated, at most [`MAX_ENTRIES`].
    pub fn entries(&mut self) -> Vec<(IpAddr, InfraReason)> {
        let mut v: Vec<(IpAddr, InfraReason)> = self
            .gateways
            .iter()
            .map(|a| (*a, InfraReason::DefaultGateway))
            .chain(
                self.peers
                    .iter()
                    .map(|a| (*a, InfraReason::PointToPointPeer)),
            )
            .chain(self.files.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        self.dropped = v.len().saturating_sub(MAX_ENTRIES);
        v.truncate(MAX_ENTRIES);
        v
    }
}

/// Open the watch and take the first look, for the engine: `None` when
/// NEVER_BLOCK_INFRASTRUCTURE is off or the embedder gave no paths. Problems are logged;
/// the entries found are installed in `never`.
pub fn open_for(
    cfg: &policy::Config,
    paths: Option<&InfraPaths>,
    never: &mut policy::NeverBlock,
    log: &crate::audit::Logger,
) -> Option<Infra> {
    let paths = paths?;
    if !cfg.never_block_infrastructure {
        log.info("adminalert: NEVER_BLOCK_INFRASTRUCTURE=0: gateways, nameservers, point-to-point peers and DHCP servers are not protected beyond the ignore list");
        return None;
    }
    let (mut infra, r) = Infra::open(paths.clone());
    for p in &r.problems {
        log.warn(&format!("adminalert: infrastructure: {p}"));
    }
    let entries = infra.entries();
    log_entries(log, &entries, infra.dropped);
    never.set_infrastructure(entries);
    Some(infra)
}

/// One log line listing the never-blocked infrastructure, with the reason per address.
pub fn log_entries(log: &crate::audit::Logger, entries: &[(IpAddr, InfraReason)], dropped: usize) {
    let list: Vec<String> = entries.iter().map(|(a, r)| format!("{a} ({r})")).collect();
    log.notice(&format!(
        "adminalert: never blocked as infrastructure: {}{}",
        if list.is_empty() {
            "none found".to_string()
        } else {
            list.join(", ")
        },
        if dropped > 0 {
            format!("; {dropped} more not kept (limit {MAX_ENTRIES})")
        } else {
            String::new()
        }
    ));
}

/// A NETLINK_ROUTE socket subscribed to this network namespace's address changes, so the
/// worker's copy of its own addresses is re-read when (and only when) the kernel says
/// they changed, instead of dumping them before every decision.
///
/// The kernel queues the notification before it acknowledges the `RTM_NEWADDR` that
/// caused it, so once `ip addr add` has returned, [`AddrWatch::drain`] sees the change.
#[derive(Debug)]
pub struct AddrWatch(nl::Watch);

impl AddrWatch {
    /// Open and subscribe (no capability needed to listen to these groups).
    pub fn open() -> Result<Self, Errno> {
        let groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        nl::Watch::open(SockProtocol::NetlinkRoute, groups, 16 * 1024).map(Self)
    }

    /// The socket, for a thread that waits for it to become readable (it must not read
    /// from it: only [`AddrWatch::drain`] consumes, so no change is ever missed).
    pub fn poll_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.0.fd)
    }

    /// Read everything queued without waiting. `Ok(true)` when the kernel reported an
    /// address change, or the queue overran (`ENOBUFS`: changes were lost, so the caller
    /// must assume one). Messages not sent by the kernel (port id 0) are discarded: any
    /// local process may send a unicast datagram to this socket, and it must not be able
    /// to make the worker re-read its addresses. One cheap `recvfrom` returning
    /// `EAGAIN` when nothing changed.
    pub fn drain(&mut self) -> Result<bool, Errno> {
        let mut changed = false;
        // Lost notifications (an overrun, or more still queued) count as a change.
        let lost = self.0.drain(DRAIN_MAX_READS, |_| changed = true);
        Ok(lost? || changed)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&u16::try_from(4 + payload.len()).unwrap().to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn rtmsg(family: u8, dst_len: u8, ty: u8, table: u8) -> Vec<u8> {
        let mut v = vec![family, dst_len, 0, 0, table, 4, 0, ty];
        v.extend_from_slice(&0u32.to_ne_bytes());
        v
    }

    fn msg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&u32::try_from(16 + payload.len()).unwrap().to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn default_route_v4_v6_and_other_routes() {
        let mut p = rtmsg(AF_INET, 0, RTN_UNICAST, 100);
        p.extend(attr(RTA_GATEWAY, &[192, 0, 2, 1]));
        assert_eq!(
            default_route_gateways(&p).unwrap(),
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        let gw6: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut p = rtmsg(AF_INET6, 0, RTN_UNICAST, 254);
        p.extend(attr(RTA_GATEWAY, &gw6.octets()));
        assert_eq!(default_route_gateways(&p).unwrap(), vec![IpAddr::V6(gw6)]);
        // Not a default route, or not unicast (blackhole default): nothing.
        let mut p = rtmsg(AF_INET, 24, RTN_UNICAST, 254);
        p.extend(attr(RTA_GATEWAY, &[192, 0, 2, 9]));
        assert!(default_route_gateways(&p).unwrap().is_empty());
        let p = rtmsg(AF_INET, 0, 6, 254);
        assert!(default_route_gateways(&p).unwrap().is_empty());
    }

    #[test]
    fn multipath_and_via() {
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut via6 = (u16::from(AF_INET6)).to_ne_bytes().to_vec();
        via6.extend_from_slice(&v6.octets());
        let hop = |attrs: Vec<u8>| {
            let mut h = Vec::new();
            h.extend_from_slice(&u16::try_from(8 + attrs.len()).unwrap().to_ne_bytes());
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&3i32.to_ne_bytes());
            h.extend(attrs);
            h
        };
        let mut mp = hop(attr(RTA_GATEWAY, &[10, 0, 0, 1]));
        mp.extend(hop(attr(RTA_GATEWAY, &[10, 0, 0, 2])));
        mp.extend(hop(attr(RTA_VIA, &via6)));
        let mut p = rtmsg(AF_INET, 0, RTN_UNICAST, 254);
        p.extend(attr(RTA_MULTIPATH | 0x8000, &mp));
        let got = default_route_gateways(&p).unwrap();
        let want: Vec<IpAddr> = vec![
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            IpAddr::V6(v6),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn short_and_bad_lengths_are_errors_not_panics() {
        assert!(default_route_gateways(&[0, 0, 0]).is_err());
        // Gateway attribute of the wrong size for the family.
        let mut p = rtmsg(AF_INET, 0, RTN_UNICAST, 254);
        p.extend(attr(RTA_GATEWAY, &[1, 2, 3]));
        assert!(default_route_gateways(&p).is_err());
        // Attribute claiming more than there is.
        let mut p = rtmsg(AF_INET, 0, RTN_UNICAST, 254);
        p.extend_from_slice(&[40, 0, 5, 0, 1, 2, 3, 4]);
        assert!(default_route_gateways(&p).is_err());
        // Truncated attribute header.
        let mut p = rtmsg(AF_INET, 0, RTN_UNICAST, 254);
        p.extend_from_slice(&[8, 0]);
        assert!(default_route_gateways(&p).is_err());
        // rtnexthop shorter than its header.
        let mut p = rtmsg(AF_INET, 0, RTN_UNICAST, 254);
        p.extend(attr(RTA_MULTIPATH, &[4, 0, 0, 0]));
        assert!(default_route_gateways(&p).is_err());
        // RTA_VIA with no family.
        let mut p = rtmsg(AF_INET, 0, RTN_UNICAST, 254);
        p.extend(attr(RTA_VIA, &[2]));
        assert!(default_route_gateways(&p).is_err());
        assert!(messages(&[1, 2, 3]).is_err());
        assert!(messages(&[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ptp_peer(&[2, 32, 0]).is_err());
        // Every prefix of a valid message is handled without a panic.
        let mut p = rtmsg(AF_INET, 0, RTN_UNICAST, 254);
        p.extend(attr(RTA_GATEWAY, &[192, 0, 2, 1]));
        for n in 0..p.len() {
            let _ = default_route_gateways(&p[..n]);
        }
    }

    #[test]
    fn dump_request_layout() {
        let mut want = 28u32.to_ne_bytes().to_vec();
        want.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
        want.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        want.extend_from_slice(&9u32.to_ne_bytes());
        want.extend_from_slice(&[0; 4 + 12]);
        assert_eq!(dump_request(RTM_GETROUTE, 9), want);
    }

    #[test]
    fn point_to_point_peer() {
        let mut p = vec![AF_INET, 32, 0, 0];
        p.extend_from_slice(&7u32.to_ne_bytes());
        let mut ptp = p.clone();
        ptp.extend(attr(IFA_ADDRESS, &[10, 9, 0, 2]));
        ptp.extend(attr(IFA_LOCAL, &[10, 9, 0, 1]));
        assert_eq!(ptp_peer(&ptp).unwrap(), Some("10.9.0.2".parse().unwrap()));
        let mut plain = p;
        plain.extend(attr(IFA_ADDRESS, &[10, 9, 0, 1]));
        plain.extend(attr(IFA_LOCAL, &[10, 9, 0, 1]));
        assert_eq!(ptp_peer(&plain).unwrap(), None);
    }

    #[test]
    fn notifications_classified() {
        let d = classify(&msg(RTM_NEWROUTE, 0, &rtmsg(AF_INET, 24, RTN_UNICAST, 254))).unwrap();
        assert_eq!(d, Dirty::default());
        let mut b = msg(RTM_NEWROUTE, 0, &rtmsg(AF_INET, 24, RTN_UNICAST, 254));
        b.extend(msg(RTM_DELROUTE, 0, &rtmsg(AF_INET6, 0, RTN_UNICAST, 254)));
        assert_eq!(
            classify(&b).unwrap(),
            Dirty {
                routes: true,
                addrs: false
            }
        );
        let d = classify(&msg(RTM_NEWADDR, 0, &[2, 24, 0, 0, 1, 0, 0, 0])).unwrap();
        assert!(d.addrs && !d.routes);
        assert!(classify(&msg(RTM_NEWROUTE, 0, &[])).is_err());
    }

    #[test]
    fn resolv_conf_and_leases() {
        let (a, bad) = parse_resolv_conf(
            "# comment\nsearch example.org\nnameserver 192.0.2.53\n; x\nnameserver   fe80::53%eth0\r\nnameserver bogus\nnameserver\n",
        );
        let want: Vec<IpAddr> = vec!["192.0.2.53".parse().unwrap(), "fe80::53".parse().unwrap()];
        assert_eq!(a, want);
        assert_eq!(bad.len(), 2, "{bad:?}");
        let (a, bad) = parse_lease(
            "lease {\n  interface \"eth0\";\n  option dhcp-server-identifier 192.0.2.67;\n}\n",
        );
        assert_eq!(a, vec!["192.0.2.67".parse::<IpAddr>().unwrap()]);
        assert!(bad.is_empty());
        let (a, _) = parse_lease("# networkd\nADDRESS=192.0.2.10\nSERVER_ADDRESS=192.0.2.68\n");
        assert_eq!(a, vec!["192.0.2.68".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn files_are_capped_and_rechecked_on_change_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/dhcp")).unwrap();
        std::fs::create_dir_all(root.join("run/systemd/netif/leases")).unwrap();
        std::fs::write(root.join("etc/resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
        std::fs::write(
            root.join("var/lib/dhcp/dhclient.eth0.leases"),
            "option dhcp-server-identifier 192.0.2.67;\n",
        )
        .unwrap();
        std::fs::write(
            root.join("var/lib/dhcp/ignored.txt"),
            "SERVER_ADDRESS=192.0.2.99\n",
        )
        .unwrap();
        std::fs::write(
            root.join("run/systemd/netif/leases/2"),
            "SERVER_ADDRESS=192.0.2.68\n",
        )
        .unwrap();
        let paths = InfraPaths {
            root: root.to_path_buf(),
        };
        let (got, problems) = read_files(&paths);
        assert!(problems.is_empty(), "{problems:?}");
        let want: Vec<(IpAddr, InfraReason)> = vec![
            ("192.0.2.53".parse().unwrap(), InfraReason::Nameserver),
            ("192.0.2.67".parse().unwrap(), InfraReason::DhcpServer),
            ("192.0.2.68".parse().unwrap(), InfraReason::DhcpServer),
        ];
        assert_eq!(got, want);
        // Too big: refused with a message, the rest still read.
        let big = "#".repeat(usize::try_from(MAX_FILE).unwrap() + 1);
        std::fs::write(root.join("run/systemd/netif/leases/3"), big).unwrap();
        let (got, problems) = read_files(&paths);
        assert_eq!(got.len(), 3);
        assert!(problems[0].contains("larger than"), "{problems:?}");
        std::fs::remove_file(root.join("run/systemd/netif/leases/3")).unwrap();

        let mut infra = Infra {
            paths,
            watch: None,
            gateways: Vec::new(),
            peers: Vec::new(),
            files: Vec::new(),
            stamps: Vec::new(),
            last_file_check: None,
            dirty: Dirty::default(),
            retry_at: None,
            last_dump: None,
            dropped: 0,
        };
        let t0 = Instant::now();
        assert!(infra.refresh_files(t0).changed);
        assert_eq!(infra.entries().len(), 3);
        // Within the interval nothing is even looked at.
        std::fs::write(root.join("etc/resolv.conf"), "nameserver 192.0.2.154\n").unwrap();
        assert_eq!(
            infra.refresh_files(t0 + Duration::from_millis(10)),
            Refresh::default()
        );
        // After it, the change (new inode size/mtime) is picked up.
        let r = infra.refresh_files(t0 + Duration::from_secs(2));
        assert!(r.changed, "{r:?}");
        assert!(infra
            .entries()
            .contains(&("192.0.2.154".parse().unwrap(), InfraReason::Nameserver)));
        // Unchanged files: no re-read, no change.
        assert!(!infra.refresh_files(t0 + Duration::from_secs(4)).changed);
    }

    #[test]
    fn dumps_are_spaced_out() {
        let mut infra = Infra {
            paths: InfraPaths::system(),
            watch: None,
            gateways: Vec::new(),
            peers: Vec::new(),
            files: Vec::new(),
            stamps: Vec::new(),
            last_file_check: None,
            dirty: Dirty::default(),
            retry_at: None,
            last_dump: None,
            dropped: 0,
        };
        // Without a watch socket every refresh wants a dump, but not more than one per
        // DUMP_MIN_INTERVAL.
        let r = infra.refresh_kernel();
        assert!(r.problems.is_empty(), "{r:?}");
        let first = infra.last_dump.unwrap();
        infra.refresh_kernel();
        assert_eq!(infra.last_dump, Some(first));
        assert!(infra.dirty.routes, "still to be done");
        std::thread::sleep(DUMP_MIN_INTERVAL);
        infra.refresh_kernel();
        assert!(infra.last_dump.unwrap() > first);
    }

    #[test]
    fn dumps_work_unprivileged_in_this_namespace() {
        // Dumps need no capability; whatever this host has, they must parse.
        dump_default_gateways().unwrap();
        dump_ptp_peers().unwrap();
    }
}
