//! A minimal netlink encoder for the two kernel operations the enforcer performs per block:
//! adding/removing an element of an nftables set (NETLINK_NETFILTER, `NFT_MSG_NEWSETELEM` /
//! `NFT_MSG_DELSETELEM` inside an nfnetlink batch) and adding/removing a blackhole route
//! (NETLINK_ROUTE, `RTM_NEWROUTE` / `RTM_DELROUTE`).
//!
//! Written here instead of pulling in a netlink crate: the messages are fixed and tiny, the
//! enforcer's dependency list is attack surface, and the one complete nftables crate
//! (rustables) is GPL-3.0, incompatible with the project's MIT OR Apache-2.0 licence.
//! Every request asks for an ACK and the reply is matched by sequence number, so a failure
//! is always reported as an error, never assumed to be success.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recv, setsockopt, sockopt, MsgFlags, NetlinkAddr, SockFlag, SockProtocol};
use nix::sys::time::TimeVal;

use crate::kernel::nl::{
    self, pad4, MsgBuilder, AF_INET, AF_INET6, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NLMSG_DONE,
    NLMSG_ERROR, NLMSG_HDRLEN, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, RECV_BUF, RTM_DELROUTE,
    RTM_NEWROUTE,
};

/// Set by the kernel on a dump message when the object changed while it was dumped.
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLMSG_NOOP: u16 = 1;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_DATA_VALUE: u16 = 1;

const RTA_DST: u16 = 1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_BLACKHOLE: u8 = 6;

/// How long to wait for the kernel's ACK before calling the operation failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest nfnetlink batch sent at once, whatever the send buffer allows: each batch is
/// ACKed (and, on failure, echoed back message by message) before the next is sent, so
/// this also bounds what can queue up on the receive side.
pub const BATCH_MAX: usize = 64 * 1024;
/// The kernel refuses a netlink message longer than the send buffer minus this.
const SNDBUF_SLACK: usize = 64;
/// Upper bound of one element's encoding: list element and key nests, a 16-byte IPv6
/// key and a 64-bit timeout.
const ELEM_MAX: usize = 4 + 4 + (4 + 16) + (4 + 8);

/// How many elements fit in one batch of at most `limit` bytes, for any mix of families
/// (the worst case, IPv6 with a timeout, is assumed for every element).
pub fn elems_per_batch(limit: usize, table: &str, set_v4: &str, set_v6: &str) -> usize {
    let set = set_v4.len().max(set_v6.len());
    // header, nfgenmsg, table and set names, the elements nest
    let per_msg = NLMSG_HDRLEN + 4 + 4 + pad4(table.len() + 1) + 4 + pad4(set + 1) + 4;
    let fixed = 2 * (NLMSG_HDRLEN + 4) + 2 * per_msg;
    // per element: its encoding plus its share of a message header (256 per message)
    let per_elem_x256 = ELEM_MAX * 256 + per_msg;
    (limit.saturating_sub(fixed) * 256 / per_elem_x256).max(1)
}

/// A netlink operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NlError {
    /// The kernel answered with this errno.
    Kernel(Errno),
    /// The socket itself failed (open, send, receive, timeout).
    Io(Errno),
    /// The reply could not be parsed.
    Malformed(&'static str),
    /// A dump was interrupted: the set changed while the kernel was sending it
    /// (NLM_F_DUMP_INTR), so what was read is not one consistent view.
    Interrupted,
    /// A dump held more elements than the caller's bound (its memory is bounded).
    TooMany { limit: usize },
    /// Some of the batches of a large operation failed.
    Partial {
        failed: usize,
        total: usize,
        first: Box<NlError>,
    },
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel(e) => write!(f, "kernel refused: {}", e.desc()),
            Self::Io(Errno::EAGAIN) => write!(f, "netlink: no answer within {ACK_TIMEOUT:?}"),
            Self::Io(e) => write!(f, "netlink socket: {}", e.desc()),
            Self::Malformed(m) => write!(f, "netlink reply malformed: {m}"),
            Self::Interrupted => write!(f, "netlink dump interrupted (the set changed)"),
            Self::TooMany { limit } => write!(f, "netlink dump: more than {limit} elements"),
            Self::Partial {
                failed,
                total,
                first,
            } => write!(f, "{failed} of {total} elements not applied: {first}"),
        }
    }
}

impl std::error::Error for NlError {}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Begin a set-element message of type `ty` (NFT_MSG_*SETELEM) for `set` of `table`
/// (family inet).
fn begin_setelem(b: &mut MsgBuilder, ty: u16, flags: u16, seq: u32, table: &str, set: &str) {
    b.begin((NFNL_SUBSYS_NFTABLES << 8) | ty, flags, seq);
    b.nfgen(NFPROTO_INET, 0);
    b.attr_strz(NFTA_SET_ELEM_LIST_TABLE, table);
    b.attr_strz(NFTA_SET_ELEM_LIST_SET, set);
}

/// One element operation for [`encode_setelem_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetElem {
    pub addr: IpAddr,
    /// Kernel-side timeout; `None` is permanent.
    pub timeout: Option<Duration>,
}

/// One nfnetlink batch of set-element messages, the one encoder of every element the
/// parent writes (the block sets, the first-hit maps, the served-port sets): begun with
/// [`SetElemBatch::new`], one NEWSETELEM/DELSETELEM message per [`SetElemBatch::push`],
/// ended by [`SetElemBatch::finish`]. The kernel applies a batch as one transaction.
#[derive(Debug)]
pub struct SetElemBatch {
    b: MsgBuilder,
    seq: u32,
    acks: Vec<u32>,
}

impl SetElemBatch {
    /// A batch whose messages are numbered from `first_seq`, with room for `elems`.
    pub fn new(first_seq: u32, elems: usize) -> Self {
        let mut b = MsgBuilder::new(Vec::with_capacity(128 + elems * 40));
        b.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq);
        b.nfgen(0, NFNL_SUBSYS_NFTABLES);
        b.end();
        Self {
            b,
            seq: first_seq,
            acks: Vec::new(),
        }
    }

    /// One message adding (creating what is missing) or deleting `elems` of `set` in
    /// `table` (family inet): each its key's bytes and, for an add, its timeout (`None`:
    /// the set's default, none for ours).
    pub fn push<'a>(
        &mut self,
        table: &str,
        set: &str,
        add: bool,
        elems: impl IntoIterator<Item = (&'a [u8], Option<Duration>)>,
    ) {
        self.seq = self.seq.wrapping_add(1);
        let (ty, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        begin_setelem(&mut self.b, ty, flags, self.seq, table, set);
        self.b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        for (key, timeout) in elems {
            self.b.nest_begin(NFTA_LIST_ELEM);
            self.b.nest_begin(NFTA_SET_ELEM_KEY);
            self.b.attr(NFTA_DATA_VALUE, key);
            self.b.nest_end();
            if let (true, Some(t)) = (add, timeout) {
                let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
                self.b.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
            }
            self.b.nest_end();
        }
        self.b.nest_end();
        self.b.end();
        self.acks.push(self.seq);
    }

    /// The batch's bytes and the sequence numbers that expect an ACK.
    pub fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        self.b
            .begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self.seq.wrapping_add(1));
        self.b.nfgen(0, NFNL_SUBSYS_NFTABLES);
        self.b.end();
        (self.b.finish(), self.acks)
    }
}

/// Encode one nfnetlink batch that adds (or deletes) `elems` in `table` (family inet). The
/// elements are split over as many NEWSETELEM/DELSETELEM messages as needed, one per set
/// (`set_v4` / `set_v6`). Returns the bytes and the sequence numbers that expect an ACK.
pub fn encode_setelem_batch(
    table: &str,
    set_v4: &str,
    set_v6: &str,
    elems: &[SetElem],
    add: bool,
    first_seq: u32,
) -> (Vec<u8>, Vec<u32>) {
    let mut batch = SetElemBatch::new(first_seq, elems.len());
    for (set, v4) in [(set_v4, true), (set_v6, false)] {
        // At most 256 elements per message keeps each message well under 64 KiB.
        let mine: Vec<(Vec<u8>, Option<Duration>)> = elems
            .iter()
            .filter(|e| e.addr.is_ipv4() == v4)
            .map(|e| (addr_bytes(&e.addr), e.timeout))
            .collect();
        for chunk in mine.chunks(256) {
            batch.push(table, set, add, chunk.iter().map(|(k, t)| (&k[..], *t)));
        }
    }
    batch.finish()
}

/// Encode an RTM_NEWROUTE / RTM_DELROUTE for a host blackhole route in the main table.
/// `prefix`: the destination length (32 / 128 for one host; less for an IPv6 network).
pub fn encode_blackhole(addr: IpAddr, prefix: u8, add: bool, seq: u32) -> Vec<u8> {
    let mut b = MsgBuilder::new(Vec::with_capacity(64));
    // As iproute2 does: a delete matches any protocol and scope (wildcards).
    let (ty, flags, scope, proto) = if add {
        (
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            RT_SCOPE_UNIVERSE,
            RTPROT_STATIC,
        )
    } else {
        (RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, RT_SCOPE_NOWHERE, 0)
    };
    b.begin(ty, flags, seq);
    let (family, dst_len) = match addr {
        IpAddr::V4(_) => (AF_INET, prefix.min(32)),
        IpAddr::V6(_) => (AF_INET6, prefix.min(128)),
    };
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32)
    b.bytes(&[
        family,
        dst_len,
        0,
        0,
        RT_TABLE_MAIN,
        proto,
        scope,
        RTN_BLACKHOLE,
    ]);
    b.bytes(&0u32.to_ne_bytes());
    b.attr(RTA_DST, &addr_bytes(&addr));
    b.end();
    b.finish()
}

/// Parse kernel replies in `buf`; for each NLMSG_ERROR whose sequence number is in
/// `pending`, remove it and record its result. Returns the first error seen.
pub fn parse_acks(buf: &[u8], pending: &mut Vec<u32>) -> Result<(), NlError> {
    let mut first_err = Ok(());
    for m in nl::messages(buf) {
        let m = match m {
            Ok(m) => m,
            // Fewer bytes than a header after the last message: ignored.
            Err(nl::Bad::Short) => break,
            Err(nl::Bad::Length(e)) => return Err(NlError::Malformed(e)),
        };
        if m.ty == NLMSG_ERROR {
            let code = nl::error_code(m.to_end).ok_or(NlError::Malformed("short error message"))?;
            if let Some(pos) = pending.iter().position(|s| *s == m.seq) {
                pending.swap_remove(pos);
                if code != 0 && first_err.is_ok() {
                    first_err = Err(NlError::Kernel(Errno::from_raw(-code)));
                }
            }
        } else if m.ty == NLMSG_DONE && pending.contains(&m.seq) {
            // Only the end of a dump of ours: a stale one (the rest of a dump abandoned on
            // an error) must not count as the ACK of anything pending.
            pending.clear();
        }
    }
    first_err
}

/// Encode an NFT_MSG_GETSETELEM dump request for `set` of `table` (family inet). Not a
/// batch: nfnetlink takes GET requests on their own.
pub fn encode_getsetelem(table: &str, set: &str, seq: u32) -> Vec<u8> {
    let mut b = MsgBuilder::new(Vec::with_capacity(64));
    let flags = NLM_F_REQUEST | NLM_F_DUMP;
    begin_setelem(&mut b, NFT_MSG_GETSETELEM, flags, seq, table, set);
    b.end();
    b.finish()
}

/// Encode an NFT_MSG_GETSETELEM lookup of one element (`addr`) of `set`, with an ACK:
/// the reply is the element and the ACK, or an error (ENOENT when it is not there). A
/// lookup is not a transaction: asking costs no commit, where deleting a missing element
/// aborts a batch, which waits for an RCU grace period (about 10-15 ms here).
pub fn encode_getelem(table: &str, set: &str, addr: IpAddr, seq: u32) -> Vec<u8> {
    let mut b = MsgBuilder::new(Vec::with_capacity(96));
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    begin_setelem(&mut b, NFT_MSG_GETSETELEM, flags, seq, table, set);
    b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
    b.nest_begin(NFTA_LIST_ELEM);
    b.nest_begin(NFTA_SET_ELEM_KEY);
    b.attr(NFTA_DATA_VALUE, &addr_bytes(&addr));
    b.nest_end();
    b.nest_end();
    b.nest_end();
    b.end();
    b.finish()
}

/// The attributes in `b`: (type without flag bits, payload). Every length is checked
/// against what is left; a bad one is an error, never a read past the end.
fn attrs(b: &[u8]) -> Result<Vec<(u16, &[u8])>, NlError> {
    nl::attrs(b)
        .collect::<Result<_, _>>()
        .map_err(|e| NlError::Malformed(e.text("truncated attribute header")))
}

/// One element of a set or map read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpElem {
    pub addr: IpAddr,
    /// A map element's data (the registers' bytes, each field 4-byte aligned).
    pub data: Option<Vec<u8>>,
    /// Time left before the kernel removes it.
    pub expires: Option<Duration>,
}

/// The value of a nested NFTA_DATA_VALUE (a key or a map element's data).
fn data_value(nest: &[u8]) -> Result<&[u8], NlError> {
    attrs(nest)?
        .into_iter()
        .find(|(t, _)| *t == NFTA_DATA_VALUE)
        .map(|(_, v)| v)
        .ok_or(NlError::Malformed("data without a value"))
}

/// The elements of one NEWSETELEM dump message's body (after the nlmsghdr).
fn dump_elements(body: &[u8], out: &mut Vec<DumpElem>, limit: usize) -> Result<(), NlError> {
    let Some(attrs_at) = body.get(4..) else {
        return Err(NlError::Malformed("short nfgenmsg"));
    };
    for (ty, list) in attrs(attrs_at)? {
        if ty != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (ty, elem) in attrs(list)? {
            if ty != NFTA_LIST_ELEM {
                continue;
            }
            let (mut key, mut data, mut expires) = (None, None, None);
            for (t, v) in attrs(elem)? {
                match t {
                    NFTA_SET_ELEM_KEY => key = Some(data_value(v)?),
                    NFTA_SET_ELEM_DATA => data = Some(data_value(v)?.to_vec()),
                    NFTA_SET_ELEM_EXPIRATION => {
                        let ms = <[u8; 8]>::try_from(v)
                            .map_err(|_| NlError::Malformed("expiration is not 8 bytes"))?;
                        expires = Some(Duration::from_millis(u64::from_be_bytes(ms)));
                    }
                    _ => {}
                }
            }
            let value = key.ok_or(NlError::Malformed("element without a key"))?;
            let addr = match value.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(value).unwrap_or_default()),
                16 => IpAddr::from(<[u8; 16]>::try_from(value).unwrap_or_default()),
                _ => return Err(NlError::Malformed("key is not an address")),
            };
            if out.len() >= limit {
                return Err(NlError::TooMany { limit });
            }
            out.push(DumpElem {
                addr,
                data,
                expires,
            });
        }
    }
    Ok(())
}

/// Parse one read of a GETSETELEM dump (any number of messages) for request `seq`,
/// appending the elements to `out` (at most `limit` in all). `Ok(true)` once the dump
/// is complete (NLMSG_DONE). Messages for other sequence numbers are skipped; an error
/// message, an interrupted dump, a bad length or a malformed element is an error.
pub fn parse_setelem_dump(
    buf: &[u8],
    seq: u32,
    out: &mut Vec<DumpElem>,
    limit: usize,
) -> Result<bool, NlError> {
    for m in nl::messages(buf) {
        let m = m.map_err(|e| NlError::Malformed(e.text("truncated message header")))?;
        if m.seq != seq {
            continue;
        }
        if m.flags & NLM_F_DUMP_INTR != 0 {
            return Err(NlError::Interrupted);
        }
        match m.ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code =
                    nl::error_code(m.payload).ok_or(NlError::Malformed("short error message"))?;
                if code != 0 {
                    return Err(NlError::Kernel(Errno::from_raw(-code)));
                }
                return Ok(true);
            }
            NLMSG_NOOP => {}
            t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM => {
                dump_elements(m.payload, out, limit)?;
            }
            _ => return Err(NlError::Malformed("unexpected message type in dump")),
        }
    }
    Ok(false)
}

/// A bound netlink socket with an ACK timeout.
#[derive(Debug)]
pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    /// Largest batch sent in one sendmsg: under the socket's send buffer (SO_SNDBUF,
    /// read at open) and [`BATCH_MAX`].
    pub(crate) send_limit: usize,
}

impl NlSocket {
    fn open(proto: SockProtocol) -> Result<Self, NlError> {
        let fd = nl::open(proto, 0, SockFlag::empty()).map_err(NlError::Io)?;
        let tv = TimeVal::new(i64::try_from(ACK_TIMEOUT.as_secs()).unwrap_or(2), 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(NlError::Io)?;
        // A per-process starting point so replies to a previous socket cannot match.
        let seq = std::process::id().wrapping_mul(65_536);
        let sndbuf = nix::sys::socket::getsockopt(&fd, sockopt::SndBuf).map_err(NlError::Io)?;
        Ok(Self {
            fd,
            seq,
            buf: vec![0u8; RECV_BUF],
            send_limit: sndbuf.saturating_sub(SNDBUF_SLACK).clamp(1024, BATCH_MAX),
        })
    }

    /// A NETLINK_NETFILTER socket (needs CAP_NET_ADMIN to change anything).
    pub fn netfilter() -> Result<Self, NlError> {
        Self::open(SockProtocol::NetlinkNetFilter)
    }

    /// A NETLINK_ROUTE socket (needs CAP_NET_ADMIN to change anything).
    pub fn route() -> Result<Self, NlError> {
        Self::open(SockProtocol::NetlinkRoute)
    }

    /// The socket's netlink port id (the kernel's notifications name it as the origin of
    /// the changes this socket made).
    pub fn portid(&self) -> Result<u32, NlError> {
        nix::sys::socket::getsockname::<NetlinkAddr>(self.fd.as_raw_fd())
            .map(|a| a.pid())
            .map_err(NlError::Io)
    }

    /// The first of `n` sequence numbers (and room for a batch's begin and end).
    pub(crate) fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n + 2);
        s
    }

    /// One reply datagram (a receive interrupted by a signal is retried).
    fn recv(&mut self, flags: MsgFlags) -> Result<&[u8], NlError> {
        let n = loop {
            match recv(self.fd.as_raw_fd(), &mut self.buf, flags) {
                Err(Errno::EINTR) => continue,
                other => break other.map_err(NlError::Io)?,
            }
        };
        self.buf
            .get(..n)
            .ok_or(NlError::Malformed("reply longer than buffer"))
    }

    /// Send `msg` and wait until every sequence number in `pending` has been ACKed.
    pub(crate) fn transact(&mut self, msg: &[u8], mut pending: Vec<u32>) -> Result<(), NlError> {
        nl::send(&self.fd, msg).map_err(NlError::Io)?;
        let mut result = Ok(());
        while !pending.is_empty() {
            let r = parse_acks(self.recv(MsgFlags::empty())?, &mut pending);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// Add or delete set elements: one batch when they fit under the send limit (a
    /// single block always does), otherwise as many batches as needed, each sent and
    /// ACKed before the next. A batch that fails does not stop the others (a restore gets
    /// in what it can); the first error is returned, saying how many elements it hit.
    pub fn setelems(
        &mut self,
        table: &str,
        set_v4: &str,
        set_v6: &str,
        elems: &[SetElem],
        add: bool,
    ) -> Result<(), NlError> {
        let per = elems_per_batch(self.send_limit, table, set_v4, set_v6);
        let mut first_err = None;
        let mut failed = 0usize;
        for chunk in elems.chunks(per) {
            let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX / 2);
            let first = self.next_seq(n);
            let (msg, acks) = encode_setelem_batch(table, set_v4, set_v6, chunk, add, first);
            let r = if msg.len() > self.send_limit {
                Err(NlError::Malformed("batch larger than the send limit"))
            } else {
                self.transact(&msg, acks)
            };
            if let Err(e) = r {
                failed += chunk.len();
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) if failed == elems.len() => Err(e),
            Some(e) => Err(NlError::Partial {
                failed,
                total: elems.len(),
                first: Box::new(e),
            }),
        }
    }

    /// Every element of `set` (or map) in `table`, with its data and time left; at most
    /// `limit`.
    pub fn elements(
        &mut self,
        table: &str,
        set: &str,
        limit: usize,
    ) -> Result<Vec<DumpElem>, NlError> {
        let seq = self.next_seq(1);
        self.get_elements(&encode_getsetelem(table, set, seq), seq, limit)
    }

    /// Whether `set` (or map) of `table` holds `addr`.
    pub fn has_element(&mut self, table: &str, set: &str, addr: IpAddr) -> Result<bool, NlError> {
        let seq = self.next_seq(1);
        match self.get_elements(&encode_getelem(table, set, addr, seq), seq, 1) {
            Ok(found) => Ok(!found.is_empty()),
            Err(NlError::Kernel(Errno::ENOENT)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Send one GETSETELEM request (`msg`, sequence `seq`) and collect the elements of its
    /// reply, at most `limit`, until the dump's end or the ACK.
    fn get_elements(
        &mut self,
        msg: &[u8],
        seq: u32,
        limit: usize,
    ) -> Result<Vec<DumpElem>, NlError> {
        nl::send(&self.fd, msg).map_err(NlError::Io)?;
        let mut out = Vec::new();
        loop {
            // MSG_TRUNC: the return value is the datagram's real length, so a reply larger
            // than the buffer is noticed instead of parsed as if it were whole.
            let reply = self.recv(MsgFlags::MSG_TRUNC)?;
            if parse_setelem_dump(reply, seq, &mut out, limit)? {
                return Ok(out);
            }
        }
    }

    /// Add or delete a blackhole route for one host.
    pub fn blackhole(&mut self, addr: IpAddr, prefix: u8, add: bool) -> Result<(), NlError> {
        let seq = self.next_seq(1);
        let msg = encode_blackhole(addr, prefix, add, seq);
        self.transact(&msg, vec![seq])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn setelem_batch_layout() {
        let e = [SetElem {
            addr: "192.0.2.7".parse().unwrap(),
            timeout: Some(Duration::from_secs(60)),
        }];
        let (msg, acks) = encode_setelem_batch("sentry", "v4", "v6", &e, true, 100);
        assert_eq!(acks, vec![101]);
        // batch begin
        assert_eq!(u32_at(&msg, 0), 20);
        assert_eq!(u16_at(&msg, 4), NFNL_MSG_BATCH_BEGIN);
        assert_eq!(&msg[18..20], &NFNL_SUBSYS_NFTABLES.to_be_bytes());
        // newsetelem
        let m = &msg[20..];
        let len = u32_at(m, 0) as usize;
        assert_eq!(len % 4, 0);
        assert_eq!(u16_at(m, 4), (10 << 8) | 12);
        assert_eq!(u16_at(m, 6), NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK);
        assert_eq!(u32_at(m, 8), 101);
        assert_eq!(m[16], NFPROTO_INET);
        let body = &m[20..len];
        // table attribute "sentry\0" padded to 8
        assert_eq!(u16_at(body, 0), 4 + 7);
        assert_eq!(&body[4..11], b"sentry\0");
        // the address bytes and the timeout (60000 ms, big-endian) are in there
        let hay = body.windows(4).any(|w| w == [192, 0, 2, 7]);
        assert!(hay);
        let t = 60_000u64.to_be_bytes();
        assert!(body.windows(8).any(|w| w == t));
        // batch end
        let end = &msg[20 + len..];
        assert_eq!(u16_at(end, 4), NFNL_MSG_BATCH_END);
        assert_eq!(end.len(), 20);
    }

    #[test]
    fn delete_has_no_timeout_and_v6_goes_to_v6_set() {
        let e = [SetElem {
            addr: "2001:db8::1".parse().unwrap(),
            timeout: Some(Duration::from_secs(60)),
        }];
        let (msg, acks) = encode_setelem_batch("t", "s4", "s6", &e, false, 1);
        assert_eq!(acks.len(), 1);
        assert!(msg.windows(3).any(|w| w == b"s6\0"));
        assert!(!msg.windows(3).any(|w| w == b"s4\0"));
        assert!(!msg.windows(8).any(|w| w == 60_000u64.to_be_bytes()));
        assert_eq!(u16_at(&msg, 20 + 4), (10 << 8) | 14);
    }

    #[test]
    fn large_batches_are_chunked() {
        let e: Vec<SetElem> = (0..600u32)
            .map(|i| SetElem {
                addr: IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                timeout: None,
            })
            .collect();
        let (_, acks) = encode_setelem_batch("t", "a", "b", &e, true, 0);
        assert_eq!(acks.len(), 3);
    }

    #[test]
    fn batches_fit_under_the_limit_for_any_mix() {
        for limit in [1024usize, 4096, 60_000, BATCH_MAX, 212_992] {
            let per = elems_per_batch(limit, "sentry_table_name", "v4", "v6");
            for v6_share in [0u32, 1, 2] {
                let e: Vec<SetElem> = (0..u32::try_from(per).unwrap())
                    .map(|i| SetElem {
                        addr: if v6_share == 2 || (v6_share == 1 && i % 2 == 0) {
                            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i) + 1))
                        } else {
                            IpAddr::V4(std::net::Ipv4Addr::from(i + 1))
                        },
                        timeout: Some(Duration::from_secs(1)),
                    })
                    .collect();
                let (msg, _) = encode_setelem_batch("sentry_table_name", "v4", "v6", &e, true, 0);
                assert!(msg.len() <= limit, "{limit}: {} > limit", msg.len());
            }
            // Not wastefully small either: at least 80% of the limit for IPv6 elements.
            let full = per * ELEM_MAX;
            assert!(
                full * 10 >= limit * 8 || limit < 4096,
                "{limit}: {per} per batch"
            );
        }
        assert_eq!(elems_per_batch(0, "t", "a", "b"), 1);
    }

    #[test]
    fn blackhole_layout() {
        let m = encode_blackhole("198.51.100.9".parse().unwrap(), 32, true, 7);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), RTM_NEWROUTE);
        assert_eq!(m[16], AF_INET);
        assert_eq!(m[17], 32);
        assert_eq!(m[23], RTN_BLACKHOLE);
        assert_eq!(&m[m.len() - 4..], &[198, 51, 100, 9]);
        let d = encode_blackhole("2001:db8::2".parse().unwrap(), 128, false, 8);
        assert_eq!(u16_at(&d, 4), RTM_DELROUTE);
        assert_eq!(d[17], 128);
    }

    /// An NLMSG_ERROR message for `seq` with -ENOENT and the 16-byte header it quotes.
    fn enoent_msg(seq: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-2i32).to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        m
    }

    #[test]
    fn acks_parse_errors_and_ignore_garbage() {
        // an error message for seq 5 with -ENOENT
        let reply = enoent_msg(5);
        let mut pending = vec![5, 6];
        assert_eq!(
            parse_acks(&reply, &mut pending),
            Err(NlError::Kernel(Errno::ENOENT))
        );
        assert_eq!(pending, vec![6]);
        let mut p = vec![1];
        assert!(parse_acks(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &mut p).is_err());
        assert!(parse_acks(&[0xff; 3], &mut p).is_ok());
    }

    /// A NEWSETELEM dump message as the kernel sends it, with `keys` as element keys.
    fn dump_msg(seq: u32, flags: u16, keys: &[&[u8]]) -> Vec<u8> {
        let mut b = MsgBuilder::new(Vec::new());
        begin_setelem(&mut b, NFT_MSG_NEWSETELEM, 0x2 | flags, seq, "sentry", "v4");
        b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        for k in keys {
            b.nest_begin(NFTA_LIST_ELEM);
            b.nest_begin(NFTA_SET_ELEM_KEY);
            b.attr(NFTA_DATA_VALUE, k);
            b.nest_end();
            b.attr(NFTA_SET_ELEM_TIMEOUT, &60_000u64.to_be_bytes());
            b.nest_end();
        }
        b.nest_end();
        b.end();
        b.finish()
    }

    fn done_msg(seq: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&0x2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&0i32.to_ne_bytes());
        m
    }

    fn parse(buf: &[u8], seq: u32, limit: usize) -> Result<(bool, Vec<IpAddr>), NlError> {
        let mut out = Vec::new();
        parse_setelem_dump(buf, seq, &mut out, limit)
            .map(|d| (d, out.into_iter().map(|e| e.addr).collect()))
    }

    #[test]
    fn getsetelem_request_layout() {
        let m = encode_getsetelem("sentry", "v6", 9);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), (10 << 8) | 13);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32_at(&m, 8), 9);
        assert_eq!(m[16], NFPROTO_INET);
        assert!(m.windows(7).any(|w| w == b"sentry\0"));
        assert!(m.windows(3).any(|w| w == b"v6\0"));
    }

    #[test]
    fn setelem_dump_parses_keys_of_both_families() {
        let v6 = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let mut buf = dump_msg(5, 0, &[&[192, 0, 2, 1], &v6]);
        buf.extend(dump_msg(5, 0, &[&[192, 0, 2, 2]]));
        let (done, keys) = parse(&buf, 5, 10).unwrap();
        assert!(!done, "no NLMSG_DONE yet");
        assert_eq!(
            keys,
            ["192.0.2.1", "2001:db8::7", "192.0.2.2"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        buf.extend(done_msg(5));
        assert!(parse(&buf, 5, 10).unwrap().0);
        // Another request's messages are skipped, not counted.
        let mut other = dump_msg(4, 0, &[&[10, 0, 0, 1]]);
        other.extend(done_msg(4));
        other.extend(done_msg(5));
        assert_eq!(parse(&other, 5, 10).unwrap(), (true, vec![]));
    }

    #[test]
    fn setelem_dump_errors_are_typed() {
        // The kernel's answer to a dump of a set that does not exist.
        let err = enoent_msg(5);
        assert_eq!(parse(&err, 5, 10), Err(NlError::Kernel(Errno::ENOENT)));
        assert_eq!(
            parse(&dump_msg(5, NLM_F_DUMP_INTR, &[&[1, 2, 3, 4]]), 5, 10),
            Err(NlError::Interrupted)
        );
        let three = dump_msg(5, 0, &[&[1, 2, 3, 4], &[1, 2, 3, 5], &[1, 2, 3, 6]]);
        assert_eq!(parse(&three, 5, 2), Err(NlError::TooMany { limit: 2 }));
        assert_eq!(
            parse(&dump_msg(5, 0, &[&[1, 2, 3, 4, 5]]), 5, 10),
            Err(NlError::Malformed("key is not an address"))
        );
        let mut odd = done_msg(5);
        odd[4] = 0x77;
        assert!(matches!(parse(&odd, 5, 10), Err(NlError::Malformed(_))));
    }

    #[test]
    fn truncated_or_garbage_dumps_never_panic_nor_complete() {
        let mut full = dump_msg(5, 0, &[&[192, 0, 2, 1], &[192, 0, 2, 2]]);
        let first = full.len();
        full.extend(done_msg(5));
        for cut in 0..full.len() {
            let r = parse(&full[..cut], 5, 10);
            // Only a cut at a message boundary parses, and then it is not complete.
            match r {
                Ok((done, keys)) => {
                    assert!(!done, "cut {cut}");
                    assert!(cut == 0 || cut == first, "cut {cut}: {keys:?}");
                }
                Err(NlError::Malformed(_)) => {}
                Err(e) => panic!("cut {cut}: {e}"),
            }
        }
        // Every single-byte change of a valid reply: no panic, and at most 2 keys.
        for at in 0..full.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = full.clone();
                b[at] ^= bit;
                if let Ok((_, keys)) = parse(&b, 5, 10) {
                    assert!(keys.len() <= 2);
                }
            }
        }
        // Random bytes.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..2000usize {
            let b: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[0]
                })
                .collect();
            let _ = parse(&b, 5, 10);
        }
    }

    #[test]
    fn a_stale_dump_end_is_not_an_ack() {
        let mut pending = vec![7];
        assert!(parse_acks(&done_msg(3), &mut pending).is_ok());
        assert_eq!(pending, vec![7]);
        assert!(parse_acks(&done_msg(7), &mut pending).is_ok());
        assert!(pending.is_empty());
    }
}
