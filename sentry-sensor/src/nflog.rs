//! The detection input: NFLOG messages from the socket the enforcer bound and handed over
//! (see `sentry-enforcer/src/kernel/capture.rs` and `kernel/table.nft`). The enforcer's input-path chain
//! copies only what this host's stack accepts for itself (after defragmentation, routing,
//! rp_filter and conntrack; never forwarded packets, never replies to our own flows), so
//! this module only has to split netlink datagrams into packets — bounds-checked, since a
//! message is still bytes we did not write — and to tell whether conntrack found the
//! packet new or invalid.
//!
//! Layout of one datagram: one or more netlink messages (`nlmsghdr`, 16 bytes, then a
//! 4-byte `nfgenmsg`, then attributes `nlattr {len, type}` padded to 4 bytes). Packet
//! messages are type `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET`; of their attributes
//! `NFULA_PACKET_HDR` gives the L3 protocol, `NFULA_PREFIX` the rule's prefix and
//! `NFULA_PAYLOAD` the packet from its network header on.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use sentry_proto::{NFLOG_PREFIX_INVALID, NFLOG_PREFIX_NEW};

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 4 << 8;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
/// nlattr type bits that are flags, not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Largest datagram read at once: one message with the enforcer's snap length fits many
/// times over; a larger one is truncated by the kernel (MSG_TRUNC) and counted.
pub const READ_BUF: usize = 64 * 1024;

/// Which of the chain's copy rules sent the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// First packet of a new flow (TCP SYN, UDP): conntrack verified its checksum.
    New,
    /// No flow would have it (FIN, NULL, XMAS and other flag probes — or a bad checksum,
    /// which the stack will discard: the sensor checks the checksum of these itself).
    Invalid,
}

/// One packet message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// ETH_P_IP or ETH_P_IPV6 (from NFULA_PACKET_HDR).
    pub l3: u16,
    pub state: CtState,
    /// From the IP header on, at most the snap length.
    pub payload: &'a [u8],
}

/// Why a message was not a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Header length below 16 or beyond the datagram.
    Length,
    /// A message type that is neither a packet nor a netlink control message.
    Type(u16),
    /// An attribute length below 4 or beyond the message.
    Attribute,
    /// No NFULA_PACKET_HDR, or not IPv4/IPv6.
    L3,
    /// No NFULA_PAYLOAD.
    NoPayload,
    /// No prefix, or one the enforcer's chain does not write.
    Prefix,
    /// The kernel reported an error or an overrun on the socket.
    Error,
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Packet(Packet<'a>),
    /// NOOP/DONE/ACK: nothing to do.
    Control,
    Bad(Bad),
}

fn u16_ne(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_ne(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// Split a datagram into messages and hand each to `f`. A bad message header ends the
/// datagram (nothing after it can be framed); a bad attribute only loses its message.
pub fn for_each_message<'a>(mut buf: &'a [u8], mut f: impl FnMut(Message<'a>)) {
    while !buf.is_empty() {
        let (Some(len), Some(ty)) = (u32_ne(buf, 0), u16_ne(buf, 4)) else {
            f(Message::Bad(Bad::Length));
            return;
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let Some(msg) = buf.get(..len).filter(|_| len >= NLMSG_HDRLEN) else {
            f(Message::Bad(Bad::Length));
            return;
        };
        f(message(ty, msg));
        buf = buf.get(align4(len).min(buf.len())..).unwrap_or(&[]);
    }
}

fn message(ty: u16, msg: &[u8]) -> Message<'_> {
    match ty {
        NFULNL_MSG_PACKET => {}
        NLMSG_NOOP | NLMSG_DONE => return Message::Control,
        NLMSG_ERROR => {
            // An ACK is an error message with errno 0.
            return match msg.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4) {
                Some([0, 0, 0, 0]) => Message::Control,
                _ => Message::Bad(Bad::Error),
            };
        }
        NLMSG_OVERRUN => return Message::Bad(Bad::Error),
        t => return Message::Bad(Bad::Type(t)),
    }
    let Some(mut attrs) = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..) else {
        return Message::Bad(Bad::Length);
    };
    let mut l3 = None;
    let mut payload = None;
    let mut prefix = None;
    while !attrs.is_empty() {
        let (Some(alen), Some(aty)) = (u16_ne(attrs, 0), u16_ne(attrs, 2)) else {
            return Message::Bad(Bad::Attribute);
        };
        let alen = usize::from(alen);
        let Some(value) = attrs.get(4..alen).filter(|_| alen >= 4) else {
            return Message::Bad(Bad::Attribute);
        };
        match aty & NLA_TYPE_MASK {
            // struct nfulnl_msg_packet_hdr { __be16 hw_protocol; __u8 hook; __u8 _pad; }
            NFULA_PACKET_HDR => {
                l3 = value
                    .get(0..2)
                    .and_then(|b| b.try_into().ok())
                    .map(u16::from_be_bytes)
            }
            NFULA_PAYLOAD => payload = Some(value),
            // NUL-terminated.
            NFULA_PREFIX => prefix = Some(value.split(|&b| b == 0).next().unwrap_or(&[])),
            _ => {}
        }
        attrs = attrs.get(align4(alen).min(attrs.len())..).unwrap_or(&[]);
    }
    let l3 = match l3 {
        Some(p @ (ETH_P_IP | ETH_P_IPV6)) => p,
        _ => return Message::Bad(Bad::L3),
    };
    let Some(payload) = payload else {
        return Message::Bad(Bad::NoPayload);
    };
    let state = match prefix {
        Some(p) if p == NFLOG_PREFIX_NEW.as_bytes() => CtState::New,
        Some(p) if p == NFLOG_PREFIX_INVALID.as_bytes() => CtState::Invalid,
        _ => return Message::Bad(Bad::Prefix),
    };
    // The payload must be the protocol the header claims.
    let version = payload.first().map(|b| b >> 4);
    if !matches!((l3, version), (ETH_P_IP, Some(4)) | (ETH_P_IPV6, Some(6))) {
        return Message::Bad(Bad::L3);
    }
    Message::Packet(Packet { l3, state, payload })
}

/// The internet checksum of `l4` (the transport segment, as long as the IP header says)
/// with the pseudo-header of `src`/`dst`/`proto`: true when it verifies. UDP over IPv4
/// may carry no checksum (0), which is valid.
pub fn l4_checksum_ok(src: std::net::IpAddr, dst: std::net::IpAddr, proto: u8, l4: &[u8]) -> bool {
    use std::net::IpAddr;
    if proto == 17 && src.is_ipv4() && l4.get(6..8) == Some(&[0, 0]) {
        return true;
    }
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        let mut chunks = b.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&s.octets());
            add(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            add(&s.octets());
            add(&d.octets());
        }
        _ => return false,
    }
    let len = u32::try_from(l4.len()).unwrap_or(u32::MAX);
    add(&len.to_be_bytes());
    add(&[0, proto]);
    add(l4);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// The socket the enforcer handed over, and the buffer it is read into.
#[derive(Debug)]
pub struct Nflog {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Datagrams the kernel could not queue (ENOBUFS: the receive buffer was full).
    pub overruns: u64,
    /// Datagrams longer than [`READ_BUF`].
    pub truncated: u64,
}

impl Nflog {
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            buf: vec![0; READ_BUF],
            overruns: 0,
            truncated: 0,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Read up to `max` datagrams without blocking and hand each message to `f`. Returns
    /// the number of datagrams read.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(Message<'_>)) -> io::Result<usize> {
        let mut n = 0;
        while n < max {
            match crate::sys::recv_trunc(self.fd.as_raw_fd(), &mut self.buf) {
                Ok((len, full)) => {
                    n += 1;
                    if full > len {
                        self.truncated += 1;
                    }
                    for_each_message(self.buf.get(..len).unwrap_or(&[]), &mut f);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The kernel dropped messages for us; the socket goes on working.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.overruns += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// Test, fuzz and benchmark helper: one NFLOG packet message as the kernel writes it.
pub fn build_message(l3: u16, prefix: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![2, 0, 0x5e, 0x47];
    let mut attr = |ty: u16, v: &[u8]| {
        let len = u16::try_from(4 + v.len()).unwrap_or(u16::MAX);
        body.extend_from_slice(&len.to_ne_bytes());
        body.extend_from_slice(&ty.to_ne_bytes());
        body.extend_from_slice(v);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    };
    let mut hdr = l3.to_be_bytes().to_vec();
    hdr.extend_from_slice(&[1, 0]);
    attr(NFULA_PACKET_HDR, &hdr);
    let mut p = prefix.as_bytes().to_vec();
    p.push(0);
    attr(NFULA_PREFIX, &p);
    attr(NFULA_PAYLOAD, payload);
    let mut m = Vec::new();
    let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap_or(u32::MAX);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&NFULNL_MSG_PACKET.to_ne_bytes());
    m.extend_from_slice(&[0; 10]);
    m.extend_from_slice(&body);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    fn all(buf: &[u8]) -> Vec<Message<'_>> {
        let mut v = Vec::new();
        for_each_message(buf, |m| v.push(m));
        v
    }

    #[test]
    fn packet_messages() {
        let p = tcp4(A, B, 1, 23, 0x02);
        let m = build_message(ETH_P_IP, NFLOG_PREFIX_NEW, &p);
        assert_eq!(
            all(&m),
            vec![Message::Packet(Packet {
                l3: ETH_P_IP,
                state: CtState::New,
                payload: &p
            })]
        );
        // Two in one datagram; an odd payload length exercises the padding.
        let mut two = build_message(ETH_P_IP, NFLOG_PREFIX_INVALID, &p[..39]);
        two.extend_from_slice(&m);
        let got = all(&two);
        assert_eq!(got.len(), 2);
        assert!(matches!(
            got[0],
            Message::Packet(Packet {
                state: CtState::Invalid,
                ..
            })
        ));
        let v6 = tcp6(
            "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            "2001:db8::2".parse().unwrap(),
            1,
            2,
            0x02,
        );
        assert!(matches!(
            all(&build_message(ETH_P_IPV6, NFLOG_PREFIX_NEW, &v6))[..],
            [Message::Packet(Packet { l3: ETH_P_IPV6, .. })]
        ));
    }

    #[test]
    fn rejections() {
        let p = tcp4(A, B, 1, 23, 0x02);
        // L3 claims IPv6, payload is IPv4.
        assert_eq!(
            all(&build_message(ETH_P_IPV6, NFLOG_PREFIX_NEW, &p)),
            vec![Message::Bad(Bad::L3)]
        );
        assert_eq!(
            all(&build_message(0x0806, NFLOG_PREFIX_NEW, &p)),
            vec![Message::Bad(Bad::L3)]
        );
        assert_eq!(
            all(&build_message(ETH_P_IP, "someone else", &p)),
            vec![Message::Bad(Bad::Prefix)]
        );
        let m = build_message(ETH_P_IP, NFLOG_PREFIX_NEW, &p);
        // Every truncation: never a panic, never a packet beyond the bytes given.
        for cut in 0..m.len() {
            for msg in all(&m[..cut]) {
                if let Message::Packet(pk) = msg {
                    panic!("packet from a truncated message: {pk:?}");
                }
            }
        }
        // Header length beyond the datagram, and below the header.
        let mut long = m.clone();
        long[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert_eq!(all(&long), vec![Message::Bad(Bad::Length)]);
        let mut short = m.clone();
        short[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(all(&short), vec![Message::Bad(Bad::Length)]);
        // An attribute longer than its message.
        let mut a = m.clone();
        a[20..22].copy_from_slice(&999u16.to_ne_bytes());
        assert_eq!(all(&a), vec![Message::Bad(Bad::Attribute)]);
        let mut t = m.clone();
        t[4..6].copy_from_slice(&0x0401u16.to_ne_bytes());
        assert_eq!(all(&t), vec![Message::Bad(Bad::Type(0x0401))]);
        // ACK and error.
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(all(&ack), vec![Message::Control]);
        ack[16] = 0xf0;
        assert_eq!(all(&ack), vec![Message::Bad(Bad::Error)]);
    }

    #[test]
    fn checksums() {
        let mut p = tcp4(A, B, 1, 23, 0x02);
        let l4 = p[20..].to_vec();
        // The builder leaves the checksum at 0: compute it the long way and fill it in.
        let mut fixed = l4.clone();
        let mut s: u32 = 0;
        for w in A.octets().chunks(2).chain(B.octets().chunks(2)) {
            s += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        s += 6 + u32::try_from(l4.len()).unwrap();
        for w in l4.chunks(2) {
            s += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        let c = !(u16::try_from(s).unwrap());
        fixed[16..18].copy_from_slice(&c.to_be_bytes());
        let (a, b) = (IpAddr::V4(A), IpAddr::V4(B));
        assert!(l4_checksum_ok(a, b, 6, &fixed));
        fixed[16] ^= 1;
        assert!(!l4_checksum_ok(a, b, 6, &fixed));
        // UDP over IPv4 without a checksum is valid; over IPv6 it is not.
        let u = udp4(A, B, 1, 53);
        assert!(l4_checksum_ok(a, b, 17, &u[20..]));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(!l4_checksum_ok(v6, v6, 17, &u[20..]));
        assert!(!l4_checksum_ok(a, v6, 6, &fixed));
        p.clear();
    }
}
