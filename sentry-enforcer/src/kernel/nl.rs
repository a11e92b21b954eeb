//! Netlink plumbing shared by the enforcer's sockets ([`crate::kernel::netlink`], the parent's host watch,
//! [`crate::kernel::tablewatch`], [`crate::kernel::capture`]): the constants they have in common, one
//! message builder, one checked splitter for messages and attributes, and the socket
//! helpers (open and bind, send, drain a notification socket).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recvfrom, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
/// NLM_F_ROOT | NLM_F_MATCH: a dump request.
pub const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
/// The attribute-type bits (NLA_F_NESTED and NLA_F_NET_BYTEORDER masked off).
const NLA_TYPE_MASK: u16 = 0x3fff;
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFPROTO_INET: u8 = 1;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
/// rtnetlink multicast groups: IPv4 and IPv6 address changes (`RTM_NEWADDR` /
/// `RTM_DELADDR`, which also carry the IPv4 broadcast address).
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;
pub const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// Largest reply or notification read at once; ACKs are small, errors echo the request
/// (bounded by what was sent).
pub const RECV_BUF: usize = 64 * 1024;

pub fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds netlink messages with nested attributes, one after another in one buffer.
#[derive(Debug)]
pub struct MsgBuilder {
    buf: Vec<u8>,
    start: usize,
    nests: Vec<usize>,
}

impl MsgBuilder {
    pub fn new(buf: Vec<u8>) -> Self {
        Self {
            buf,
            start: 0,
            nests: Vec::new(),
        }
    }

    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32) {
        self.start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end()
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// struct nfgenmsg: family, version NFNETLINK_V0, resource id (big-endian).
    pub fn nfgen(&mut self, family: u8, res_id: u16) {
        self.bytes(&[family, 0]);
        self.bytes(&res_id.to_be_bytes());
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    pub fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub fn attr_strz(&mut self, ty: u16, s: &str) {
        self.attr(ty, &[s.as_bytes(), &[0]].concat());
    }

    pub fn nest_begin(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    pub fn nest_end(&mut self) {
        if let Some(at) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    pub fn end(&mut self) {
        self.pad();
        let len = u32::try_from(self.buf.len() - self.start).unwrap_or(u32::MAX);
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Why a split stopped (nothing follows an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Bytes are left, but fewer than a header: each caller names (or tolerates) this in
    /// its own words.
    Short,
    /// A length below the header's size or beyond the bytes left.
    Length(&'static str),
}

impl Bad {
    /// The error's text, `short` being the caller's words for [`Bad::Short`].
    pub fn text(self, short: &'static str) -> &'static str {
        match self {
            Self::Short => short,
            Self::Length(m) => m,
        }
    }
}

/// Split `buf` into length-prefixed records (messages, attributes, nexthops): a header of
/// `hdr` bytes whose length field (`len_of`) counts header and payload; the next record
/// starts at that length rounded up to 4. Every length is checked against what is left,
/// so a bad one is an error (`bad` its text), never a read past the end. Yields each
/// record's bytes up to the end of `buf` (its header first) and its payload.
pub fn split<'a>(
    mut rest: &'a [u8],
    hdr: usize,
    len_of: fn(&[u8]) -> usize,
    bad: &'static str,
) -> impl Iterator<Item = Result<(&'a [u8], &'a [u8]), Bad>> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(h) = rest.get(..hdr) else {
            rest = &[];
            return Some(Err(Bad::Short));
        };
        let len = len_of(h);
        let Some(payload) = rest.get(hdr..len).filter(|_| len >= hdr) else {
            rest = &[];
            return Some(Err(Bad::Length(bad)));
        };
        let record = rest;
        rest = rest.get(pad4(len)..).unwrap_or(&[]);
        Some(Ok((record, payload)))
    })
}

/// A record's u16 length field (attributes, nexthops).
pub fn len16(h: &[u8]) -> usize {
    usize::from(u16::from_ne_bytes([h[0], h[1]]))
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// The port id in the header (of a notification: the socket whose request caused it).
    pub portid: u32,
    /// What follows the 16-byte header, within the message's length.
    pub payload: &'a [u8],
    /// What follows the header up to the end of the datagram (the ACK parsers have always
    /// read an error's code from here, not bounded by the message's own length).
    pub to_end: &'a [u8],
}

/// An NLMSG_ERROR's code at the start of `b`: 0 for an ACK, otherwise -errno; `None` when
/// `b` is too short.
pub fn error_code(b: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

/// The netlink messages of a datagram, every length checked.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, Bad>> {
    let len32 = |h: &[u8]| u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
    split(buf, NLMSG_HDRLEN, len32, "bad message length").map(|r| {
        r.map(|(h, payload)| Msg {
            ty: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            portid: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
            payload,
            to_end: &h[NLMSG_HDRLEN..],
        })
    })
}

/// The attributes in `buf`: (type without flag bits, payload), every length checked.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Bad>> {
    split(buf, 4, len16, "bad attribute length")
        .map(|r| r.map(|(a, p)| (u16::from_ne_bytes([a[2], a[3]]) & NLA_TYPE_MASK, p)))
}

/// A netlink socket of `proto` (close-on-exec, plus `flags`) bound to the multicast
/// `groups` (0: none), with a port id the kernel picks.
pub fn open(proto: SockProtocol, groups: u32, flags: SockFlag) -> Result<OwnedFd, Errno> {
    let flags = flags | SockFlag::SOCK_CLOEXEC;
    let fd = socket(AddressFamily::Netlink, SockType::Raw, flags, proto)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    Ok(fd)
}

/// Send `msg` to the kernel in one datagram; sent short, it is `EMSGSIZE`.
pub fn send(fd: &OwnedFd, msg: &[u8]) -> Result<(), Errno> {
    let sent = sendto(
        fd.as_raw_fd(),
        msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    if sent != msg.len() {
        return Err(Errno::EMSGSIZE);
    }
    Ok(())
}

/// A non-blocking socket subscribed to notification groups.
#[derive(Debug)]
pub struct Watch {
    /// Shared with the thread that waits for it to become readable (which must not read
    /// from it: only [`Watch::drain`] consumes, so no change is ever missed).
    pub fd: Arc<OwnedFd>,
    buf: Vec<u8>,
}

impl Watch {
    pub fn open(proto: SockProtocol, groups: u32, buf_len: usize) -> Result<Self, Errno> {
        Ok(Self {
            fd: Arc::new(open(proto, groups, SockFlag::SOCK_NONBLOCK)?),
            buf: vec![0u8; buf_len],
        })
    }

    /// Read everything queued without waiting, at most `max_reads` datagrams (a drain must
    /// end). Each datagram the kernel sent goes to `each`; any other (port id not 0: any
    /// local process may send a unicast datagram to this socket) is discarded. `Ok(true)`
    /// when notifications may have been missed: the queue overran (`ENOBUFS`), or more is
    /// still queued after `max_reads` (read next time).
    pub fn drain(
        &mut self,
        max_reads: usize,
        mut each: impl FnMut(Option<&[u8]>),
    ) -> Result<bool, Errno> {
        let mut lost = false;
        for _ in 0..max_reads {
            match recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), &mut self.buf) {
                Ok((n, Some(from))) if from.pid() == 0 => each(self.buf.get(..n)),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(lost),
                Err(Errno::ENOBUFS) => lost = true,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_check_every_length_and_stop_at_the_first_bad_one() {
        let mut b = MsgBuilder::new(Vec::new());
        b.begin(NLMSG_DONE, 0x2, 9);
        b.attr(1, b"ab");
        b.end();
        let m = b.finish();
        let got: Vec<_> = messages(&m).collect();
        let Ok(msg) = got[0] else { panic!("{got:?}") };
        assert_eq!(got.len(), 1);
        assert_eq!(
            (msg.ty, msg.flags, msg.seq, msg.portid),
            (NLMSG_DONE, 0x2, 9, 0)
        );
        assert_eq!(
            attrs(msg.payload).collect::<Vec<_>>(),
            [Ok((1, &b"ab"[..]))]
        );
        let mut short = m.clone();
        short.extend_from_slice(&[0; 3]);
        assert_eq!(messages(&short).nth(1), Some(Err(Bad::Short)));
        assert_eq!(messages(&short).count(), 2);
        let mut long = m;
        long[0] = 200;
        let bad = Err(Bad::Length("bad message length"));
        assert_eq!(messages(&long).collect::<Vec<_>>(), [bad]);
        let bad = Err(Bad::Length("bad attribute length"));
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).collect::<Vec<_>>(), [bad]);
        assert_eq!(attrs(&[2, 0, 1, 0]).collect::<Vec<_>>(), [bad]);
        assert_eq!(attrs(&[2, 0]).collect::<Vec<_>>(), [Err(Bad::Short)]);
        assert_eq!(Bad::Short.text("short"), "short");
    }
}
