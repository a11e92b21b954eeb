//! The messages between sentry's root parent (`sentry-enforcer`) and its unprivileged
//! worker (`sentry-worker`), in the shape of OpenBSD's imsg and sudo-rs's backchannel:
//! every message is one fixed-size record on a `SOCK_SEQPACKET` socket pair, encoded
//! field by field here, with at most one descriptor beside it.
//!
//! The worker asks ([`Request`], [`REQ_LEN`] bytes), the parent answers ([`Reply`],
//! [`REP_LEN`] bytes) with the request's id, and sends [`Event`]s on a channel of their
//! own. The parent trusts nothing it decodes: [`Request::decode`] refuses every record
//! that is not exactly one valid message (length, verb, flags, address family, the
//! unused bytes zero), and the parent then checks each verb against its floor.
//!
//! No serde and no bincode: the parent links this crate, and its decoder is short enough
//! to read in one sitting (and is fuzzed: `fuzz/`).
#![deny(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub mod channel;
#[allow(unsafe_code)]
mod sys;
pub use channel::{Channel, RecvError};

/// IP protocols that are not probes when they arrive unasked: they are what the host's
/// own stack, tunnels and routing daemons receive (ICMP and ICMPv6, which includes
/// neighbour discovery; IGMP; IPIP, 6in4 and GRE tunnels; IPsec ESP and AH; OSPF, PIM,
/// VRRP; L2TPv3; UDP-Lite; DCCP, whose tracker marks a headerless probe invalid anyway),
/// plus TCP, UDP and SCTP, which are judged by their own rules. The detection chain
/// copies a packet of any other protocol as an IP-protocol probe (`nmap -sO` sends every
/// number), and the sensor checks the same list again (sentry-proto re-exports these).
pub const NOT_PROBE_PROTOCOLS: &[u8] = &[
    1, 2, 4, 6, 17, 33, 41, 47, 50, 51, 58, 89, 103, 112, 115, 132, 136,
];

/// NFLOG prefix of packets conntrack took as the first of a new flow (its checksum was
/// verified by conntrack unless `nf_conntrack_checksum` is 0).
pub const NFLOG_PREFIX_NEW: &str = "sentry new";
/// NFLOG prefix of packets conntrack found invalid: flag probes (FIN, NULL, XMAS, ...),
/// but also packets with a bad checksum, which the host's stack will discard: the sensor
/// verifies the checksum of these itself.
pub const NFLOG_PREFIX_INVALID: &str = "sentry invalid";

/// Bumped whenever a record's layout or meaning changes; the worker's first request
/// ([`Verb::Hello`]) carries it, and the parent refuses any other.
pub const VERSION: u64 = 2;

/// The worker's exit status when its start-up failed (configuration, damaged state, a
/// missing account): restarting it would fail the same way, so the parent exits too
/// (EX_CONFIG). Any other end of a worker is restarted.
pub const EXIT_START_FAILED: u8 = 78;

/// Largest metrics textfile the parent publishes ([`Verb::Metrics`]).
pub const MAX_TEXTFILE: u64 = 4 << 20;

/// [`Verb::Served`]'s `flag`: add the element (or replace it) with `timeout_ms`.
pub const SERVED_ADD: u8 = 1;
/// [`Verb::Served`]'s `flag`: remove the element.
pub const SERVED_DEL: u8 = 2;
/// Most items of one [`Verb::Served`] request: one nfnetlink batch of the parent's
/// (each element is written three times), far below the 64 KiB a netlink message may
/// have. A longer batch is refused ([`Refusal::TooMany`]).
pub const SERVED_BATCH: usize = 128;
/// Longest timeout of a served element: policy's largest RESTART_GRACE (one hour), which
/// is also above the worker's hold time of a port served now.
pub const SERVED_TIMEOUT_MAX_MS: u64 = 3_600_000;

/// Bytes of every request.
pub const REQ_LEN: usize = 48;
/// Bytes of every reply and event.
pub const REP_LEN: usize = 512;
/// Bytes of a reply's text (an error or a command's stderr, cut at a character boundary).
pub const TEXT_LEN: usize = REP_LEN - 62;

/// What the worker asks the parent to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verb {
    /// The first request: `extra` is [`VERSION`]. The reply says what the parent has
    /// (see [`Hello`]).
    Hello = 1,
    /// Add the address's element to the block set (`timeout_ms`: its kernel timeout, 0
    /// none; `prefix` < 128 for an IPv6 network of BLOCK_PREFIX6).
    NftAdd = 2,
    NftDel = 3,
    /// A blackhole route (KILL_ROUTE's in-process form).
    RouteAdd = 4,
    RouteDel = 5,
    /// The KILL_HOSTS_DENY line, rendered by the parent from its own template; `flag` 1:
    /// the block's line was written by a version that did not mark its lines (a restore
    /// does not add a marked copy of it while it is still there; a delete takes it back
    /// only when that is unambiguous).
    DenyAdd = 6,
    DenyDel = 7,
    /// Run KILL_ROUTE / KILL_RUN_CMD for the subject (rendered by the parent).
    KillRoute = 8,
    KillRunCmd = 9,
    /// Rebuild the table with these block elements (one item each; an item without an
    /// address stands for none, so an empty table is one item).
    Build = 10,
    /// Rebuild the detection chain: one item per address the kernel must never block
    /// (the worker's infrastructure), the last one without an address and with the
    /// announced modes ([`Modes`]) in `extra` and the NFLOG group in `port`.
    Detect = 11,
    /// A fresh NFLOG socket on the next group of the rotation (the reply carries it and
    /// the group in `port`).
    Nflog = 12,
    /// Read back a set or map ([`SetName`] in `flag`), at most `extra` elements: one
    /// [`ReplyKind::Elem`] per element, then [`ReplyKind::End`].
    Dump = 13,
    /// Delete the address from a first-hit map ([`SetName`] in `flag`).
    Forget = 14,
    /// Is the connection passed with this message the installed sensor? (`extra`: the
    /// sensor's uid.)
    Peer = 15,
    /// The worker got SIGHUP (`sentryctl` or an admin signalled it): the parent reads its
    /// own ignore list again. Harmless from a hostile worker: it only re-reads a root file.
    Reload = 16,
    /// Publish the metrics textfile: the descriptor beside it is the worker's rendered
    /// file (at most [`MAX_TEXTFILE`] bytes, read from its start); the parent writes it as
    /// METRICS_DIR/sentry-enforcer.prom atomically. The parent copies bytes, it never
    /// parses them. At most one a second.
    Metrics = 17,
    /// RESTART_GRACE: write one element of the `detect_served` sets (a port a service
    /// serves or just stopped serving), one item per element, at most [`SERVED_BATCH`]
    /// items a request. `flag` [`SERVED_ADD`] (the element with `timeout_ms`, at most
    /// [`SERVED_TIMEOUT_MAX_MS`]) or [`SERVED_DEL`] (`timeout_ms` 0); `proto` TCP or UDP,
    /// `port` not 0, `addr` none (any address) or one address that is not unspecified,
    /// loopback or IPv4-mapped. [`Request::decode`] refuses any other shape.
    Served = 18,
}

impl Verb {
    const ALL: [Verb; 18] = [
        Verb::Hello,
        Verb::NftAdd,
        Verb::NftDel,
        Verb::RouteAdd,
        Verb::RouteDel,
        Verb::DenyAdd,
        Verb::DenyDel,
        Verb::KillRoute,
        Verb::KillRunCmd,
        Verb::Build,
        Verb::Detect,
        Verb::Nflog,
        Verb::Dump,
        Verb::Forget,
        Verb::Peer,
        Verb::Reload,
        Verb::Metrics,
        Verb::Served,
    ];

    fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|v| *v as u8 == b)
    }

    /// Verbs that may come in batches ([`Request::more`]): the parent gathers the items
    /// and acts once, after the last.
    pub fn batches(self) -> bool {
        matches!(
            self,
            Verb::NftAdd
                | Verb::NftDel
                | Verb::DenyAdd
                | Verb::DenyDel
                | Verb::Build
                | Verb::Detect
                | Verb::Served
        )
    }

    /// Verbs whose request carries a descriptor.
    pub fn takes_fd(self) -> bool {
        matches!(self, Verb::Peer | Verb::Metrics)
    }
}

/// The protocol of a subject (what `$MODE$` names, and the served-port key's protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Proto {
    #[default]
    Tcp = 0,
    Udp = 1,
    Sctp = 2,
    Ip = 3,
}

impl Proto {
    fn from_u8(b: u8) -> Option<Self> {
        [Proto::Tcp, Proto::Udp, Proto::Sctp, Proto::Ip]
            .into_iter()
            .find(|p| *p as u8 == b)
    }

    /// The name PortSentry's `$MODE$` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Ip => "ip",
        }
    }
}

/// Which set or map a [`Verb::Dump`] / [`Verb::Forget`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SetName {
    /// The block sets (`v4`, `v6`, `v6net`), read back together.
    Blocks = 0,
    /// The first-hit maps of one family.
    Hit4 = 1,
    Hit6 = 2,
}

impl SetName {
    pub fn from_u8(b: u8) -> Option<Self> {
        [SetName::Blocks, SetName::Hit4, SetName::Hit6]
            .into_iter()
            .find(|s| *s as u8 == b)
    }
}

/// The sensor's modes, one bit each, in a [`Verb::Detect`]'s `extra`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modes(pub u8);

impl Modes {
    pub const TCP: u8 = 1;
    pub const UDP: u8 = 2;
    pub const STCP: u8 = 4;
    pub const SUDP: u8 = 8;
    pub const ATCP: u8 = 16;
    pub const AUDP: u8 = 32;
    const KNOWN: u8 = 63;

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// Basic modes only (or none): the kernel watches nothing for them.
    pub fn basic_only(self) -> bool {
        self.0 & !(Self::TCP | Self::UDP) == 0
    }
}

/// A request that is not exactly one valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Length(usize),
    Verb(u8),
    Bits(u8),
    Proto(u8),
    Family(u8),
    Prefix(u8),
    /// An address byte beyond the family's length, or a reserved byte, is not zero.
    Padding,
    /// A [`Verb::Detect`]'s modes name a bit no mode has.
    Modes(u64),
    Text,
    Kind(u8),
    /// A [`Verb::Served`] item of another shape (what is wrong with it).
    Served(&'static str),
    /// A [`ReplyKind::Elem`] reply with no element or more than [`ELEMS_PER_REPLY`].
    Elems(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Length(n) => write!(f, "a record of {n} bytes"),
            DecodeError::Verb(v) => write!(f, "unknown verb {v}"),
            DecodeError::Bits(b) => write!(f, "unknown flag bits {b:#04x}"),
            DecodeError::Proto(p) => write!(f, "unknown protocol {p}"),
            DecodeError::Family(a) => write!(f, "unknown address family {a}"),
            DecodeError::Prefix(p) => write!(f, "prefix length {p} too long for the address"),
            DecodeError::Padding => f.write_str("non-zero padding"),
            DecodeError::Modes(m) => write!(f, "unknown mode bits {m:#x}"),
            DecodeError::Text => f.write_str("text length beyond the record"),
            DecodeError::Kind(k) => write!(f, "unknown reply kind {k}"),
            DecodeError::Served(w) => write!(f, "served-port item: {w}"),
            DecodeError::Elems(n) => write!(f, "{n} elements in one reply"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// One request of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub verb: Verb,
    /// Another item of the same batch follows ([`Verb::batches`]).
    pub more: bool,
    /// Verb-specific: see [`Verb`].
    pub flag: u8,
    pub proto: Proto,
    /// Echoed in the reply.
    pub id: u32,
    pub addr: Option<IpAddr>,
    /// The block's prefix length (32 / 128 for a single address).
    pub prefix: u8,
    pub port: u16,
    /// 0: none.
    pub timeout_ms: u64,
    pub extra: u64,
}

impl Request {
    /// A request with nothing but its verb and id.
    pub fn new(verb: Verb, id: u32) -> Self {
        Self {
            verb,
            more: false,
            flag: 0,
            proto: Proto::Tcp,
            id,
            addr: None,
            prefix: 0,
            port: 0,
            timeout_ms: 0,
            extra: 0,
        }
    }

    /// The same, for `addr` as a single address.
    pub fn for_addr(verb: Verb, id: u32, addr: IpAddr) -> Self {
        Self {
            addr: Some(addr),
            prefix: full_prefix(addr),
            ..Self::new(verb, id)
        }
    }

    pub fn encode(&self) -> [u8; REQ_LEN] {
        let mut b = [0u8; REQ_LEN];
        b[0] = self.verb as u8;
        b[1] = u8::from(self.more);
        b[2] = self.flag;
        b[3] = self.proto as u8;
        b[4..8].copy_from_slice(&self.id.to_le_bytes());
        put_addr(&mut b[8..28], self.addr, self.prefix, self.port);
        b[32..40].copy_from_slice(&self.timeout_ms.to_le_bytes());
        b[40..48].copy_from_slice(&self.extra.to_le_bytes());
        b
    }

    /// Exactly one valid request, or why not.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != REQ_LEN {
            return Err(DecodeError::Length(b.len()));
        }
        let verb = Verb::from_u8(b[0]).ok_or(DecodeError::Verb(b[0]))?;
        if b[1] > 1 || (b[1] == 1 && !verb.batches()) {
            return Err(DecodeError::Bits(b[1]));
        }
        let proto = Proto::from_u8(b[3]).ok_or(DecodeError::Proto(b[3]))?;
        let (addr, prefix, port) = get_addr(&b[8..28])?;
        if b[28..32] != [0; 4] {
            return Err(DecodeError::Padding);
        }
        let extra = u64_at(b, 40);
        if verb == Verb::Detect && addr.is_none() && extra & !u64::from(Modes::KNOWN) != 0 {
            return Err(DecodeError::Modes(extra));
        }
        let r = Self {
            verb,
            more: b[1] == 1,
            flag: b[2],
            proto,
            id: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            addr,
            prefix,
            port,
            timeout_ms: u64_at(b, 32),
            extra,
        };
        if verb == Verb::Served {
            served_shape(&r).map_err(DecodeError::Served)?;
        }
        Ok(r)
    }
}

/// The one shape of a [`Verb::Served`] item: the parent turns it into a set element as
/// it is, so nothing else may get through (a lying worker can still name any port, which
/// only makes the detection chain answer it: see the parent's `kernel::served`).
fn served_shape(r: &Request) -> Result<(), &'static str> {
    match (r.flag, r.timeout_ms) {
        (SERVED_ADD, 0) => return Err("add without a timeout"),
        (SERVED_ADD, t) if t > SERVED_TIMEOUT_MAX_MS => return Err("timeout too long"),
        (SERVED_DEL, 0) | (SERVED_ADD, _) => {}
        (SERVED_DEL, _) => return Err("delete with a timeout"),
        _ => return Err("unknown operation"),
    }
    if !matches!(r.proto, Proto::Tcp | Proto::Udp) {
        return Err("protocol is not TCP or UDP");
    }
    if r.port == 0 || r.extra != 0 {
        return Err("port 0 or extra bits");
    }
    match r.addr {
        None => Ok(()),
        Some(a) if r.prefix != full_prefix(a) => Err("not a single address"),
        Some(a) if a.is_unspecified() || a.is_loopback() => Err("unspecified or loopback"),
        Some(IpAddr::V6(a)) if a.to_ipv4_mapped().is_some() => Err("IPv4-mapped address"),
        Some(_) => Ok(()),
    }
}

/// The prefix length of a single address.
pub fn full_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// family (0 none, 4, 6), prefix, port (LE), 16 address bytes (IPv4 in the first 4).
fn put_addr(b: &mut [u8], addr: Option<IpAddr>, prefix: u8, port: u16) {
    b[1] = prefix;
    b[2..4].copy_from_slice(&port.to_le_bytes());
    match addr {
        None => b[0] = 0,
        Some(IpAddr::V4(a)) => {
            b[0] = 4;
            b[4..8].copy_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            b[0] = 6;
            b[4..20].copy_from_slice(&a.octets());
        }
    }
}

fn get_addr(b: &[u8]) -> Result<(Option<IpAddr>, u8, u16), DecodeError> {
    let prefix = b[1];
    let port = u16::from_le_bytes([b[2], b[3]]);
    let a = &b[4..20];
    let addr = match b[0] {
        0 if prefix == 0 && a.iter().all(|x| *x == 0) => None,
        0 => return Err(DecodeError::Padding),
        4 if a[4..].iter().all(|x| *x == 0) => {
            Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
        }
        4 => return Err(DecodeError::Padding),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        f => return Err(DecodeError::Family(f)),
    };
    if let Some(a) = addr {
        if prefix > full_prefix(a) {
            return Err(DecodeError::Prefix(prefix));
        }
    }
    Ok((addr, prefix, port))
}

/// What a reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyKind {
    /// Done. For a kill command: `code` is its [`Outcome`], `a` its exit status or signal.
    Ok = 1,
    /// Tried and failed: `a` the errno when there is one, `text` why.
    Fail = 2,
    /// Not tried: the floor refuses it ([`Refusal`] in `code`).
    Refused = 3,
    /// Elements of a [`Verb::Dump`], 1 to [`ELEMS_PER_REPLY`] in [`Reply::elems`]: a dump
    /// of 100,000 elements is 8,334 records, not 100,000.
    Elem = 4,
    /// The end of a [`Verb::Dump`]: `a` elements sent.
    End = 5,
}

impl ReplyKind {
    fn from_u8(b: u8) -> Option<Self> {
        [
            ReplyKind::Ok,
            ReplyKind::Fail,
            ReplyKind::Refused,
            ReplyKind::Elem,
            ReplyKind::End,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

/// Why the parent's floor refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    Malformed = 1,
    Ignored = 2,
    Loopback = 3,
    OwnAddress = 4,
    LinkLocal = 5,
    Multicast = 6,
    Broadcast = 7,
    Gateway = 8,
    Reserved = 9,
    /// The parent's hard rate of new blocks is spent.
    Rate = 10,
    /// The parent's hard cap of blocks is reached.
    Cap = 11,
    /// The action is not configured (no template, no backend).
    NotConfigured = 12,
    /// A batch longer than the parent takes.
    TooMany = 13,
    /// The worker's protocol version is not the parent's.
    Version = 14,
}

impl Refusal {
    pub const ALL: [Refusal; 14] = [
        Refusal::Malformed,
        Refusal::Ignored,
        Refusal::Loopback,
        Refusal::OwnAddress,
        Refusal::LinkLocal,
        Refusal::Multicast,
        Refusal::Broadcast,
        Refusal::Gateway,
        Refusal::Reserved,
        Refusal::Rate,
        Refusal::Cap,
        Refusal::NotConfigured,
        Refusal::TooMany,
        Refusal::Version,
    ];

    pub fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u8 == b)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed request",
            Refusal::Ignored => "in the ignore list",
            Refusal::Loopback => "loopback",
            Refusal::OwnAddress => "an address of this host",
            Refusal::LinkLocal => "link-local",
            Refusal::Multicast => "multicast",
            Refusal::Broadcast => "a broadcast or network address",
            Refusal::Gateway => "a default gateway",
            Refusal::Reserved => "unspecified or reserved",
            Refusal::Rate => "over the parent's hard rate",
            Refusal::Cap => "over the parent's hard cap",
            Refusal::NotConfigured => "not configured",
            Refusal::TooMany => "batch too long",
            Refusal::Version => "protocol version mismatch",
        }
    }
}

/// How a kill command ended (a [`ReplyKind::Ok`]'s `code` for the kill verbs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    Exited = 0,
    Signaled = 1,
    TimedOut = 2,
    NotStarted = 3,
}

impl Outcome {
    pub fn from_u8(b: u8) -> Option<Self> {
        [
            Outcome::Exited,
            Outcome::Signaled,
            Outcome::TimedOut,
            Outcome::NotStarted,
        ]
        .into_iter()
        .find(|o| *o as u8 == b)
    }
}

/// What [`Verb::Hello`]'s reply says in its `a` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hello(pub u64);

impl Hello {
    /// The block sets are in the kernel (FIREWALL="nftables" and its socket opened).
    pub const NFT: u64 = 1;
    /// Blackhole routes can be set.
    pub const ROUTE: u64 = 2;
    /// nf_tables is usable at all (a detection chain can be built).
    pub const NFTABLES: u64 = 4;
    /// The kernel has the `socket` expression.
    pub const SOCKET: u64 = 8;

    pub fn has(self, bit: u64) -> bool {
        self.0 & bit != 0
    }
}

/// Most elements in one [`ReplyKind::Elem`] reply: after its 8-byte head, [`ELEM_LEN`]
/// bytes each.
pub const ELEMS_PER_REPLY: usize = 12;
/// One dumped element in a reply: the address block (20 bytes, as in requests), the
/// expiry (8), the map's data (12).
pub const ELEM_LEN: usize = 40;

/// One element of a set or map read back ([`Verb::Dump`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpItem {
    pub addr: IpAddr,
    /// The address's full length, or BLOCK_PREFIX6 for an element of `v6net`.
    pub prefix: u8,
    /// Milliseconds until the kernel expires it (0: no timeout).
    pub expires_ms: u64,
    /// A first-hit map element's data (protocol, port, TCP flags), zero for a set's.
    pub data: [u8; 12],
}

/// One reply (or, on the event channel, one [`Event`] in `code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub code: u8,
    pub id: u32,
    pub addr: Option<IpAddr>,
    pub prefix: u8,
    pub port: u16,
    pub a: u64,
    pub b: u64,
    pub data: [u8; 12],
    /// At most [`TEXT_LEN`] bytes (longer text is cut at a character boundary).
    pub text: String,
    /// A [`ReplyKind::Elem`]'s elements (1 to [`ELEMS_PER_REPLY`]; the other fields then
    /// stay empty); empty for every other kind.
    pub elems: Vec<DumpItem>,
}

impl Reply {
    pub fn new(kind: ReplyKind, id: u32) -> Self {
        Self {
            kind,
            code: 0,
            id,
            addr: None,
            prefix: 0,
            port: 0,
            a: 0,
            b: 0,
            data: [0; 12],
            text: String::new(),
            elems: Vec::new(),
        }
    }

    /// Elements of a dump: `items` must hold 1 to [`ELEMS_PER_REPLY`] (more are not sent).
    pub fn elems(id: u32, items: &[DumpItem]) -> Self {
        Self {
            elems: items.iter().take(ELEMS_PER_REPLY).copied().collect(),
            ..Self::new(ReplyKind::Elem, id)
        }
    }

    pub fn ok(id: u32) -> Self {
        Self::new(ReplyKind::Ok, id)
    }

    pub fn fail(id: u32, errno: u64, text: &str) -> Self {
        Self {
            a: errno,
            text: cut(text).to_string(),
            ..Self::new(ReplyKind::Fail, id)
        }
    }

    pub fn refused(id: u32, why: Refusal) -> Self {
        Self {
            code: why as u8,
            ..Self::new(ReplyKind::Refused, id)
        }
    }

    pub fn event(e: Event) -> Self {
        Self {
            code: e as u8,
            ..Self::new(ReplyKind::Ok, 0)
        }
    }

    pub fn encode(&self) -> [u8; REP_LEN] {
        let mut b = [0u8; REP_LEN];
        b[0] = self.kind as u8;
        b[1] = self.code;
        b[4..8].copy_from_slice(&self.id.to_le_bytes());
        if self.kind == ReplyKind::Elem {
            let items = &self.elems[..self.elems.len().min(ELEMS_PER_REPLY)];
            // At most ELEMS_PER_REPLY (12): fits in a byte.
            b[1] = u8::try_from(items.len()).unwrap_or(0);
            for (e, o) in items.iter().zip(b[8..].chunks_exact_mut(ELEM_LEN)) {
                put_addr(&mut o[..20], Some(e.addr), e.prefix, 0);
                o[20..28].copy_from_slice(&e.expires_ms.to_le_bytes());
                o[28..40].copy_from_slice(&e.data);
            }
            return b;
        }
        put_addr(&mut b[8..28], self.addr, self.prefix, self.port);
        b[32..40].copy_from_slice(&self.a.to_le_bytes());
        b[40..48].copy_from_slice(&self.b.to_le_bytes());
        b[48..60].copy_from_slice(&self.data);
        let t = cut(&self.text).as_bytes();
        // `cut` keeps the text within TEXT_LEN (450), so it fits in a u16.
        b[60..62].copy_from_slice(&u16::try_from(t.len()).unwrap_or(0).to_le_bytes());
        b[62..62 + t.len()].copy_from_slice(t);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != REP_LEN {
            return Err(DecodeError::Length(b.len()));
        }
        let kind = ReplyKind::from_u8(b[0]).ok_or(DecodeError::Kind(b[0]))?;
        if kind == ReplyKind::Elem {
            return decode_elems(b);
        }
        let (addr, prefix, port) = get_addr(&b[8..28])?;
        let n = usize::from(u16::from_le_bytes([b[60], b[61]]));
        if n > TEXT_LEN {
            return Err(DecodeError::Text);
        }
        let text = std::str::from_utf8(&b[62..62 + n]).map_err(|_| DecodeError::Text)?;
        let mut data = [0u8; 12];
        data.copy_from_slice(&b[48..60]);
        Ok(Self {
            kind,
            code: b[1],
            id: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            addr,
            prefix,
            port,
            a: u64_at(b, 32),
            b: u64_at(b, 40),
            data,
            text: text.to_string(),
            elems: Vec::new(),
        })
    }
}

/// A [`ReplyKind::Elem`] record: 1 to [`ELEMS_PER_REPLY`] elements, each a single address
/// or network with no port, and every byte after them zero.
fn decode_elems(b: &[u8]) -> Result<Reply, DecodeError> {
    let n = usize::from(b[1]);
    if n == 0 || n > ELEMS_PER_REPLY {
        return Err(DecodeError::Elems(b[1]));
    }
    let end = 8 + n * ELEM_LEN;
    if b[2..4].iter().chain(&b[end..]).any(|x| *x != 0) {
        return Err(DecodeError::Padding);
    }
    let mut elems = Vec::with_capacity(n);
    for o in b[8..end].chunks_exact(ELEM_LEN) {
        let (Some(addr), prefix, 0) = get_addr(&o[..20])? else {
            return Err(DecodeError::Padding);
        };
        let mut data = [0u8; 12];
        data.copy_from_slice(&o[28..40]);
        elems.push(DumpItem {
            addr,
            prefix,
            expires_ms: u64_at(o, 20),
            data,
        });
    }
    Ok(Reply {
        elems,
        ..Reply::new(
            ReplyKind::Elem,
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    })
}

/// At most [`TEXT_LEN`] bytes of `s`, ending at a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= TEXT_LEN {
        return s;
    }
    let mut end = TEXT_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What the parent tells the worker unasked, on the event channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Event {
    /// Another process changed or deleted sentry's table: the worker rebuilds it
    /// ([`Verb::Build`]) and the detection chain.
    TableChanged = 1,
    /// SIGHUP reached the parent (it reloaded its ignore list): reload, reopen logs.
    Reload = 2,
}

impl Event {
    pub fn from_u8(b: u8) -> Option<Self> {
        [Event::TableChanged, Event::Reload]
            .into_iter()
            .find(|e| *e as u8 == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let mut r = Request::for_addr(Verb::NftAdd, 7, "2001:db8::1".parse().unwrap());
        r.prefix = 64;
        r.more = true;
        r.timeout_ms = 3_600_000;
        r.port = 22;
        r.proto = Proto::Udp;
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        let v4 = Request::for_addr(Verb::KillRunCmd, 1, "192.0.2.9".parse().unwrap());
        assert_eq!(Request::decode(&v4.encode()), Ok(v4));
        assert_eq!(
            Request::decode(&Request::new(Verb::Nflog, 3).encode())
                .unwrap()
                .addr,
            None
        );
    }

    #[test]
    fn request_refusals() {
        let good = Request::for_addr(Verb::NftAdd, 1, "192.0.2.9".parse().unwrap()).encode();
        assert_eq!(Request::decode(&good[..47]), Err(DecodeError::Length(47)));
        let mut b = good;
        b[0] = 0;
        assert_eq!(Request::decode(&b), Err(DecodeError::Verb(0)));
        let mut b = good;
        b[1] = 2;
        assert_eq!(Request::decode(&b), Err(DecodeError::Bits(2)));
        // `more` on a verb that never batches.
        let mut b = Request::new(Verb::Nflog, 1).encode();
        b[1] = 1;
        assert_eq!(Request::decode(&b), Err(DecodeError::Bits(1)));
        let mut b = good;
        b[3] = 9;
        assert_eq!(Request::decode(&b), Err(DecodeError::Proto(9)));
        let mut b = good;
        b[8] = 5;
        assert_eq!(Request::decode(&b), Err(DecodeError::Family(5)));
        let mut b = good;
        b[9] = 33;
        assert_eq!(Request::decode(&b), Err(DecodeError::Prefix(33)));
        let mut b = good;
        b[20] = 1; // beyond the IPv4 address
        assert_eq!(Request::decode(&b), Err(DecodeError::Padding));
        let mut b = good;
        b[30] = 1;
        assert_eq!(Request::decode(&b), Err(DecodeError::Padding));
        let mut d = Request::new(Verb::Detect, 1);
        d.extra = 64;
        assert_eq!(Request::decode(&d.encode()), Err(DecodeError::Modes(64)));
    }

    fn served(flag: u8, timeout_ms: u64, addr: Option<&str>) -> Request {
        let mut r = match addr {
            Some(a) => Request::for_addr(Verb::Served, 1, a.parse().unwrap()),
            None => Request::new(Verb::Served, 1),
        };
        (r.flag, r.timeout_ms, r.port, r.proto) = (flag, timeout_ms, 53, Proto::Udp);
        r
    }

    #[test]
    fn served_items_have_one_shape() {
        for ok in [
            served(SERVED_ADD, 60_000, None),
            served(SERVED_ADD, SERVED_TIMEOUT_MAX_MS, Some("192.0.2.1")),
            served(SERVED_DEL, 0, Some("2001:db8::1")),
        ] {
            assert_eq!(Request::decode(&ok.encode()), Ok(ok));
        }
        let bad = |r: Request| match Request::decode(&r.encode()) {
            Err(DecodeError::Served(w)) => w,
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(served(SERVED_ADD, 0, None)), "add without a timeout");
        assert_eq!(
            bad(served(SERVED_ADD, SERVED_TIMEOUT_MAX_MS + 1, None)),
            "timeout too long"
        );
        assert_eq!(bad(served(SERVED_DEL, 5, None)), "delete with a timeout");
        assert_eq!(bad(served(0, 0, None)), "unknown operation");
        assert_eq!(bad(served(3, 1, None)), "unknown operation");
        let mut sctp = served(SERVED_DEL, 0, None);
        sctp.proto = Proto::Sctp;
        assert_eq!(bad(sctp), "protocol is not TCP or UDP");
        let mut p0 = served(SERVED_DEL, 0, None);
        p0.port = 0;
        assert_eq!(bad(p0), "port 0 or extra bits");
        let mut x = served(SERVED_DEL, 0, None);
        x.extra = 1;
        assert_eq!(bad(x), "port 0 or extra bits");
        let mut net = served(SERVED_DEL, 0, Some("2001:db8::"));
        net.prefix = 64;
        assert_eq!(bad(net), "not a single address");
        for a in ["0.0.0.0", "::", "127.0.0.1", "::1"] {
            assert_eq!(
                bad(served(SERVED_DEL, 0, Some(a))),
                "unspecified or loopback"
            );
        }
        assert_eq!(
            bad(served(SERVED_DEL, 0, Some("::ffff:192.0.2.1"))),
            "IPv4-mapped address"
        );
        // Other verbs keep their own rules for the same bytes.
        let mut other = served(0, 0, None);
        other.verb = Verb::Reload;
        assert!(Request::decode(&other.encode()).is_ok());
    }

    #[test]
    fn reply_round_trip_and_cut() {
        let mut r = Reply::fail(9, 17, &"é".repeat(300));
        r.addr = Some("10.0.0.1".parse().unwrap());
        r.prefix = 32;
        r.data = [1; 12];
        let d = Reply::decode(&r.encode()).unwrap();
        assert!(d.text.len() <= TEXT_LEN && d.text.chars().all(|c| c == 'é'));
        assert_eq!(d.a, 17);
        assert_eq!(d.data, [1; 12]);
        let mut b = r.encode();
        b[60..62].copy_from_slice(&u16::try_from(TEXT_LEN + 1).unwrap().to_le_bytes());
        assert_eq!(Reply::decode(&b), Err(DecodeError::Text));
        assert_eq!(
            Reply::decode(&Reply::event(Event::Reload).encode())
                .unwrap()
                .code,
            Event::Reload as u8
        );
    }

    fn item(i: u8) -> DumpItem {
        DumpItem {
            addr: if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, i))
            } else {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, u16::from(i), 0, 0, 0, 0, 0))
            },
            prefix: if i % 2 == 0 { 32 } else { 64 },
            expires_ms: u64::from(i) * 1000,
            data: [i; 12],
        }
    }

    #[test]
    fn dump_elements_are_packed_twelve_to_a_reply() {
        let items: Vec<DumpItem> = (0..20).map(item).collect();
        let r = Reply::elems(7, &items);
        assert_eq!(r.elems.len(), ELEMS_PER_REPLY, "at most twelve are sent");
        let d = Reply::decode(&r.encode()).unwrap();
        assert_eq!((d.kind, d.id), (ReplyKind::Elem, 7));
        assert_eq!(d.elems, items[..ELEMS_PER_REPLY]);
        let one = Reply::elems(8, &items[1..2]);
        assert_eq!(Reply::decode(&one.encode()).unwrap(), one);
        // The decoder takes exactly what an encoder makes.
        let good = one.encode();
        for (at, v, want) in [
            (1, 0, DecodeError::Elems(0)),
            (1, 13, DecodeError::Elems(13)),
            (2, 1, DecodeError::Padding),
            (8 + ELEM_LEN, 1, DecodeError::Padding),
            (REP_LEN - 1, 1, DecodeError::Padding),
            (8, 5, DecodeError::Family(5)),
            (9, 129, DecodeError::Prefix(129)),
        ] {
            let mut b = good;
            b[at] = v;
            assert_eq!(Reply::decode(&b), Err(want), "byte {at} = {v}");
        }
        // No address, or a port: not an element.
        let mut b = good;
        b[8..28].fill(0);
        assert_eq!(Reply::decode(&b), Err(DecodeError::Padding));
        let mut b = good;
        b[10] = 1;
        assert_eq!(Reply::decode(&b), Err(DecodeError::Padding));
    }
}
