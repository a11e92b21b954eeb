//! Packet parser: the bytes of one packet the input path copied (starting at the network
//! header) → a [`Probe`].
//!
//! Everything here is hostile input. pnet packet views are used only for their fixed-offset
//! getters after this module has checked the lengths itself (pnet's option/payload helpers
//! compute `header_length * 4 - 20` and must never see an IHL below 5). No indexing, no
//! unwrap: every access is a checked `get`, so the parser cannot panic (see the fuzz target
//! in `sentry-sensor/fuzz`).
//!
//! The kernel reassembles fragments before the input hook, so a fragment never reaches
//! the sensor from the detection chain; should one arrive it is skipped, never
//! interpreted (there is no fragment pairing: the kernel's defragmentation is the one that
//! decides what the host's stack sees).

use std::net::{IpAddr, Ipv6Addr};

use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::tcp::TcpPacket;
use pnet_packet::udp::UdpPacket;

/// Most IPv6 extension headers followed before the packet is given up on. Input comes
/// from the host's input path, where the kernel has already walked the whole chain and
/// accepted the packet, so the bound is what a 64 KiB packet can hold (every header is at
/// least 8 bytes), not a guess at what is "reasonable": a shorter bound would let a scan
/// with a longer chain pass unseen.
pub const MAX_EXT_HEADERS: usize = 65_536 / 8;

const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_MIN_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
/// SCTP common header (ports, verification tag, checksum) plus the first chunk's header.
const SCTP_MIN: usize = 16;
const PROTO_SCTP: u8 = 132;
const SCTP_CHUNK_INIT: u8 = 1;

/// The transport part of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// SCTP; `init`: the first chunk is an INIT with verification tag 0 (RFC 9260 3.3.2:
    /// how every association, and `nmap -sY`, begins).
    Sctp {
        src_port: u16,
        dst_port: u16,
        init: bool,
    },
    /// Any other IP protocol (for IPv6: the header after the extension headers).
    Other {
        protocol: u8,
    },
}

/// A packet that reached the transport layer and may be a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
    /// IPv4 header carried options (IHL > 5). PortSentry logs this as a detection-avoidance hint.
    pub ip_options: bool,
    /// Where the transport header starts in the frame, and how many transport bytes the IP
    /// header announces (for checksum verification; the frame may hold fewer).
    pub l4_offset: usize,
    pub l4_len: usize,
}

impl Probe {
    /// The whole transport segment, when the frame holds all of it.
    pub fn segment<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.l4_offset..self.l4_offset.checked_add(self.l4_len)?)
    }

    /// The destination port; for a protocol without ports, its protocol number (what an
    /// IP-protocol scan varies, and what the state engine counts).
    pub fn dst_port(&self) -> u16 {
        match self.transport {
            Transport::Tcp { dst_port, .. }
            | Transport::Udp { dst_port, .. }
            | Transport::Sctp { dst_port, .. } => dst_port,
            Transport::Other { protocol } => u16::from(protocol),
        }
    }
}

/// Well-formed packets that are not probes; counted, not logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// An IPv4 or IPv6 fragment: the kernel reassembles before the input hook, so none
    /// should arrive, and one that does is not what the host's stack delivers.
    Fragment,
}

/// Malformed packets; counted (`malformed`) and dropped, so the kinds are for the tests
/// and the fuzz target, not for a log line a flood could fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Empty,
    /// IP version nibble neither 4 nor 6.
    Version(u8),
    /// IPv4 header length field below 5 words.
    IhlTooSmall(u8),
    /// Captured bytes or IP total length shorter than the IP header(s).
    TruncatedIp,
    /// IPv4 total length smaller than the header length.
    BadTotalLength,
    /// The transport header is cut off.
    TruncatedTransport,
    /// TCP data offset below 5 words.
    TcpOffsetTooSmall,
    /// More than [`MAX_EXT_HEADERS`] IPv6 extension headers.
    TooManyExtHeaders,
    /// An IPv6 extension header runs past the packet.
    TruncatedExtHeader,
    /// Source address that cannot be a real sender (IPv4-mapped IPv6 on the wire).
    BogusSource,
}

/// What the parser made of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Probe(Probe),
    Skip(Skip),
}

/// Parse one packet that starts at the IP header. `frame` may be shorter than the packet
/// on the wire (snap length); only the headers are needed.
pub fn parse(frame: &[u8]) -> Result<Parsed, Malformed> {
    let first = *frame.first().ok_or(Malformed::Empty)?;
    match first >> 4 {
        4 => parse_v4(frame),
        6 => parse_v6(frame),
        v => Err(Malformed::Version(v)),
    }
}

fn parse_v4(frame: &[u8]) -> Result<Parsed, Malformed> {
    let ip = Ipv4Packet::new(frame).ok_or(Malformed::TruncatedIp)?;
    let ihl = ip.get_header_length();
    if ihl < 5 {
        return Err(Malformed::IhlTooSmall(ihl));
    }
    let hlen = usize::from(ihl) * 4;
    let total = usize::from(ip.get_total_length());
    if total < hlen {
        return Err(Malformed::BadTotalLength);
    }
    if frame.len() < hlen {
        return Err(Malformed::TruncatedIp);
    }
    const MORE_FRAGMENTS: u8 = 0b001;
    if ip.get_fragment_offset() != 0 || ip.get_flags() & MORE_FRAGMENTS != 0 {
        return Ok(Parsed::Skip(Skip::Fragment));
    }
    // The transport header ends at the smaller of what was captured and what the IP
    // header says the packet holds.
    let end = total.min(frame.len());
    let l4 = frame.get(hlen..end).ok_or(Malformed::TruncatedIp)?;
    transport(
        ip.get_next_level_protocol().0,
        l4,
        (hlen, total - hlen),
        IpAddr::V4(ip.get_source()),
        IpAddr::V4(ip.get_destination()),
        hlen > IPV4_MIN_HEADER,
    )
}

fn parse_v6(frame: &[u8]) -> Result<Parsed, Malformed> {
    let ip = Ipv6Packet::new(frame).ok_or(Malformed::TruncatedIp)?;
    let src: Ipv6Addr = ip.get_source();
    if src.to_ipv4_mapped().is_some() {
        return Err(Malformed::BogusSource);
    }
    let dst: Ipv6Addr = ip.get_destination();
    let payload_len = usize::from(ip.get_payload_length());
    let end = IPV6_HEADER.saturating_add(payload_len).min(frame.len());
    let mut rest = frame.get(IPV6_HEADER..end).ok_or(Malformed::TruncatedIp)?;
    // Bytes of the packet on the wire after the current header (payload length is the
    // whole remainder after the fixed header; a jumbogram's 0 is not supported and yields
    // a truncated transport).
    let mut on_wire = payload_len;
    let mut next = ip.get_next_header().0;
    for _ in 0..=MAX_EXT_HEADERS {
        let len = match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not
            // counting the first 8.
            0 | 43 | 60 => {
                (usize::from(*rest.get(1).ok_or(Malformed::TruncatedExtHeader)?) + 1) * 8
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => (usize::from(*rest.get(1).ok_or(Malformed::TruncatedExtHeader)?) + 2) * 4,
            // Fragment header.
            44 => return Ok(Parsed::Skip(Skip::Fragment)),
            proto => {
                return transport(
                    proto,
                    rest,
                    (end - rest.len(), on_wire),
                    IpAddr::V6(src),
                    IpAddr::V6(dst),
                    false,
                );
            }
        };
        next = *rest.first().ok_or(Malformed::TruncatedExtHeader)?;
        rest = rest.get(len..).ok_or(Malformed::TruncatedExtHeader)?;
        on_wire = on_wire
            .checked_sub(len)
            .ok_or(Malformed::TruncatedExtHeader)?;
    }
    Err(Malformed::TooManyExtHeaders)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at.checked_add(2)?)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_be_bytes)
}

/// `l4`: captured transport bytes; `on_wire`: transport bytes the IP header announces.
fn transport(
    proto: u8,
    l4: &[u8],
    (l4_offset, on_wire): (usize, usize),
    src: IpAddr,
    dst: IpAddr,
    ip_options: bool,
) -> Result<Parsed, Malformed> {
    let need = match proto {
        6 => TCP_MIN_HEADER,
        17 => UDP_HEADER,
        PROTO_SCTP => SCTP_MIN,
        _ => 0,
    };
    if on_wire < need || l4.len() < need {
        return Err(Malformed::TruncatedTransport);
    }
    let transport = if proto == IpNextHeaderProtocols::Tcp.0 {
        let tcp = TcpPacket::new(l4).ok_or(Malformed::TruncatedTransport)?;
        if tcp.get_data_offset() < 5 {
            return Err(Malformed::TcpOffsetTooSmall);
        }
        Transport::Tcp {
            src_port: tcp.get_source(),
            dst_port: tcp.get_destination(),
            flags: tcp.get_flags(),
        }
    } else if proto == IpNextHeaderProtocols::Udp.0 {
        let udp = UdpPacket::new(l4).ok_or(Malformed::TruncatedTransport)?;
        Transport::Udp {
            src_port: udp.get_source(),
            dst_port: udp.get_destination(),
        }
    } else if proto == PROTO_SCTP {
        let (Some(src_port), Some(dst_port)) = (be16(l4, 0), be16(l4, 2)) else {
            return Err(Malformed::TruncatedTransport);
        };
        Transport::Sctp {
            src_port,
            dst_port,
            init: l4.get(4..8) == Some(&[0, 0, 0, 0]) && l4.get(12) == Some(&SCTP_CHUNK_INIT),
        }
    } else {
        Transport::Other { protocol: proto }
    };
    Ok(Parsed::Probe(Probe {
        src,
        dst,
        transport,
        ip_options,
        l4_offset,
        l4_len: on_wire,
    }))
}

/// Test and benchmark helpers: build minimal well-formed packets.
pub mod build {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// IPv4 + TCP (20-byte TCP header) with the given flags.
    pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut p = ipv4_header(src, dst, 6, 20, &[]);
        p.extend_from_slice(&tcp_header(sport, dport, flags));
        p
    }

    /// IPv4 + UDP.
    pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = ipv4_header(src, dst, 17, 8, &[]);
        p.extend_from_slice(&udp_header(sport, dport));
        p
    }

    /// An IPv4 header (checksum left zero; the parser does not check it) for a payload of
    /// `payload_len` bytes, with `options` (padded to a multiple of 4).
    pub fn ipv4_header(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        payload_len: usize,
        options: &[u8],
    ) -> Vec<u8> {
        let mut opts = options.to_vec();
        while opts.len() % 4 != 0 {
            opts.push(0);
        }
        let hlen = 20 + opts.len();
        let total = u16::try_from(hlen + payload_len).unwrap_or(u16::MAX);
        let ihl = u8::try_from(hlen / 4).unwrap_or(15);
        let mut p = vec![0x40 | (ihl & 0x0f), 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&opts);
        p
    }

    pub fn tcp_header(sport: u16, dport: u16, flags: u8) -> [u8; 20] {
        let mut t = [0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&1024u16.to_be_bytes());
        t
    }

    pub fn udp_header(sport: u16, dport: u16) -> [u8; 8] {
        let mut u = [0u8; 8];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&8u16.to_be_bytes());
        u
    }

    /// IPv6 header followed by `ext` (raw extension headers, first one's type is
    /// `first_next`) and the transport header `l4`.
    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, first_next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let plen = u16::try_from(ext.len() + l4.len()).unwrap_or(u16::MAX);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&plen.to_be_bytes());
        p.push(first_next);
        p.push(64);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(ext);
        p.extend_from_slice(l4);
        p
    }

    pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        ipv6(src, dst, 6, &[], &tcp_header(sport, dport, flags))
    }

    /// An SCTP common header (verification tag 0, checksum 0) and an INIT chunk, as
    /// `nmap -sY` sends them.
    pub fn sctp_init(sport: u16, dport: u16) -> [u8; 32] {
        let mut s = [0u8; 32];
        s[0..2].copy_from_slice(&sport.to_be_bytes());
        s[2..4].copy_from_slice(&dport.to_be_bytes());
        s[12] = 1; // INIT
        s[14..16].copy_from_slice(&20u16.to_be_bytes());
        s[16..20].copy_from_slice(&0x1234_5678u32.to_be_bytes()); // initiate tag
        s
    }

    /// IPv4 + an SCTP packet `l4`.
    pub fn sctp4(src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
        let mut p = ipv4_header(src, dst, 132, l4.len(), &[]);
        p.extend_from_slice(l4);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use std::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn a6() -> Ipv6Addr {
        "fd00::1".parse().unwrap()
    }
    fn b6() -> Ipv6Addr {
        "fd00::2".parse().unwrap()
    }

    #[test]
    fn ipv4_syn() {
        let p = tcp4(A, B, 40000, 23, 0x02);
        let got = parse(&p).unwrap();
        assert_eq!(
            got,
            Parsed::Probe(Probe {
                src: IpAddr::V4(A),
                dst: IpAddr::V4(B),
                transport: Transport::Tcp {
                    src_port: 40000,
                    dst_port: 23,
                    flags: 0x02
                },
                ip_options: false,
                l4_offset: 20,
                l4_len: 20,
            })
        );
    }

    #[test]
    fn ipv4_udp() {
        let p = udp4(A, B, 5353, 137);
        match parse(&p).unwrap() {
            Parsed::Probe(pr) => {
                assert_eq!(
                    pr.transport,
                    Transport::Udp {
                        src_port: 5353,
                        dst_port: 137
                    }
                );
                assert_eq!(pr.dst_port(), 137);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ipv4_options_are_flagged_and_skipped_over() {
        // Record-route-ish option bytes: 8 bytes of options → IHL 7.
        let mut p = ipv4_header(A, B, 6, 20, &[7, 7, 4, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&tcp_header(1, 80, 0x01));
        match parse(&p).unwrap() {
            Parsed::Probe(pr) => {
                assert!(pr.ip_options);
                assert_eq!(
                    pr.transport,
                    Transport::Tcp {
                        src_port: 1,
                        dst_port: 80,
                        flags: 0x01
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ihl_below_five_is_malformed() {
        for ihl in 0u8..5 {
            let mut p = tcp4(A, B, 1, 2, 2);
            p[0] = 0x40 | ihl;
            assert_eq!(parse(&p), Err(Malformed::IhlTooSmall(ihl)));
        }
    }

    #[test]
    fn truncation_at_every_length_never_yields_a_probe_from_garbage() {
        let p = tcp4(A, B, 1, 2, 2);
        for len in 0..p.len() {
            let r = parse(&p[..len]);
            assert!(r.is_err(), "len {len}: {r:?}");
        }
        assert!(parse(&p).is_ok());
        let p6 = tcp6(a6(), b6(), 1, 2, 2);
        for len in 0..p6.len() {
            assert!(parse(&p6[..len]).is_err(), "v6 len {len}");
        }
    }

    #[test]
    fn ipv4_total_length_checks() {
        let mut p = tcp4(A, B, 1, 2, 2);
        p[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(parse(&p), Err(Malformed::BadTotalLength));
        // Total length says only 10 bytes of TCP: not a fragment → truncated.
        p[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(parse(&p), Err(Malformed::TruncatedTransport));
        // Longer total length than captured (snap length) is fine.
        p[2..4].copy_from_slice(&1500u16.to_be_bytes());
        assert!(matches!(parse(&p), Ok(Parsed::Probe(_))));
    }

    #[test]
    fn non_first_fragment_is_never_parsed_as_tcp() {
        // Payload bytes that would look like a SYN to port 23 if misparsed.
        let mut p = tcp4(A, B, 1, 23, 0x02);
        p[6] = 0x00;
        p[7] = 0x03; // offset 3 * 8 bytes
        assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::Fragment)));
        // MF also set.
        p[6] = 0x20;
        assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::Fragment)));
    }

    #[test]
    fn first_fragments_are_skipped_too() {
        // The kernel reassembles before the input hook: even a first fragment with the
        // whole header is not what the host's stack delivers.
        let mut p = tcp4(A, B, 1, 23, 0x02);
        p[6] = 0x20; // MF, offset 0
        p[7] = 0;
        assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::Fragment)));
    }

    #[test]
    fn tiny_fragments_are_never_interpreted() {
        // nmap -f: a first fragment with 8 bytes of TCP, and the one at offset 8 with the
        // flags byte: neither is read as TCP.
        let mut p = ipv4_header(A, B, 6, 8, &[]);
        p.extend_from_slice(&tcp_header(1, 23, 0x02)[..8]);
        p[6] = 0x20;
        assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::Fragment)));
        let mut s = ipv4_header(A, B, 6, 8, &[]);
        s.extend_from_slice(&tcp_header(1, 23, 0x29)[8..16]);
        s[7] = 1;
        assert_eq!(parse(&s), Ok(Parsed::Skip(Skip::Fragment)));
        // 16 bytes of TCP without MF are just truncated.
        let mut h = ipv4_header(A, B, 6, 16, &[]);
        h.extend_from_slice(&tcp_header(1, 23, 0x01)[..16]);
        assert_eq!(parse(&h), Err(Malformed::TruncatedTransport));
    }

    #[test]
    fn tcp_data_offset_below_five() {
        let mut p = tcp4(A, B, 1, 2, 2);
        p[20 + 12] = 4 << 4;
        assert_eq!(parse(&p), Err(Malformed::TcpOffsetTooSmall));
    }

    #[test]
    fn other_protocols_and_versions() {
        let mut p = ipv4_header(A, B, 1, 8, &[]);
        p.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0]);
        let Ok(Parsed::Probe(pr)) = parse(&p) else {
            panic!("{:?}", parse(&p));
        };
        assert_eq!(pr.transport, Transport::Other { protocol: 1 });
        // nmap -sO: a bare IP header of any protocol number, 0 included.
        for proto in [0u8, 3, 255] {
            let p = ipv4_header(A, B, proto, 0, &[]);
            let Ok(Parsed::Probe(pr)) = parse(&p) else {
                panic!("{proto}: {:?}", parse(&p));
            };
            assert_eq!(pr.transport, Transport::Other { protocol: proto });
            assert_eq!(pr.dst_port(), u16::from(proto));
        }
        assert_eq!(parse(&[0x50; 40]), Err(Malformed::Version(5)));
        assert_eq!(parse(&[]), Err(Malformed::Empty));
    }

    #[test]
    fn sctp() {
        let init = sctp_init(7, 80);
        let p4 = sctp4(A, B, &init);
        let Ok(Parsed::Probe(pr)) = parse(&p4) else {
            panic!("{:?}", parse(&p4));
        };
        assert_eq!(
            pr.transport,
            Transport::Sctp {
                src_port: 7,
                dst_port: 80,
                init: true
            }
        );
        let p6 = ipv6(a6(), b6(), 132, &[], &init);
        assert!(matches!(
            parse(&p6),
            Ok(Parsed::Probe(Probe {
                transport: Transport::Sctp {
                    init: true,
                    dst_port: 80,
                    ..
                },
                ..
            }))
        ));
        // A non-zero verification tag, or another first chunk (COOKIE ECHO, nmap -sZ):
        // not an INIT.
        let mut tagged = init;
        tagged[7] = 1;
        let mut cookie = init;
        cookie[12] = 10;
        for c in [tagged, cookie] {
            assert!(matches!(
                parse(&sctp4(A, B, &c)),
                Ok(Parsed::Probe(Probe {
                    transport: Transport::Sctp { init: false, .. },
                    ..
                }))
            ));
        }
        // Shorter than the common header and a chunk header: malformed, at every length.
        for len in 0..16 {
            assert_eq!(
                parse(&sctp4(A, B, &init[..len])),
                Err(Malformed::TruncatedTransport),
                "{len}"
            );
        }
    }

    #[test]
    fn ipv6_plain_tcp_and_udp() {
        let p = tcp6(a6(), b6(), 5, 22, 0x29);
        match parse(&p).unwrap() {
            Parsed::Probe(pr) => {
                assert_eq!(pr.src, IpAddr::V6(a6()));
                assert_eq!(
                    pr.transport,
                    Transport::Tcp {
                        src_port: 5,
                        dst_port: 22,
                        flags: 0x29
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        let p = ipv6(a6(), b6(), 17, &[], &udp_header(9, 53));
        assert!(matches!(parse(&p), Ok(Parsed::Probe(pr)) if pr.dst_port() == 53));
    }

    /// Hop-by-hop (8 bytes) → routing (16 bytes) → destination options (8) → TCP.
    #[test]
    fn ipv6_extension_chain_is_followed() {
        let mut ext = vec![43, 0, 1, 4, 0, 0, 0, 0]; // HBH: next=routing, len 0 (8 bytes), PadN
        ext.extend_from_slice(&[60, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // routing 16
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // dstopts → TCP
        let p = ipv6(a6(), b6(), 0, &ext, &tcp_header(7, 443, 0x02));
        match parse(&p).unwrap() {
            Parsed::Probe(pr) => assert_eq!(pr.dst_port(), 443),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ipv6_fragments() {
        // First (offset 0, M=1) and later fragments alike: never interpreted.
        for frag in [
            [6, 0, 0x00, 0x01, 0, 0, 0, 1],
            [6, 0, 0x00, 0x10, 0, 0, 0, 1],
        ] {
            let p = ipv6(a6(), b6(), 44, &frag, &tcp_header(7, 25, 0x02));
            assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::Fragment)));
        }
    }

    #[test]
    fn ipv6_long_extension_chains() {
        // 10 and 60 destination-options headers, and one 400-byte header: the kernel
        // accepts all of these, so the parser must reach the TCP header behind them.
        for (count, units) in [(10usize, 0u8), (60, 0), (1, 49)] {
            let mut ext = Vec::new();
            for i in 0..count {
                let next = if i + 1 == count { 6 } else { 60 };
                ext.push(next);
                ext.push(units);
                ext.extend_from_slice(&[1, 4, 0, 0, 0, 0]);
                ext.extend(std::iter::repeat_n(0u8, usize::from(units) * 8));
            }
            let p = ipv6(a6(), b6(), 60, &ext, &tcp_header(1, 2, 2));
            let Ok(Parsed::Probe(pr)) = parse(&p) else {
                panic!("{count} x {units}: {:?}", parse(&p));
            };
            assert_eq!(pr.l4_offset, 40 + ext.len());
            assert_eq!(pr.segment(&p).map(<[u8]>::len), Some(20));
        }
        // The loop bound still holds (a frame cannot get there, but the bound is explicit).
        const { assert!(MAX_EXT_HEADERS >= 8192) };
    }

    #[test]
    fn ipv6_extension_header_running_past_the_packet() {
        // HBH claiming 2048 bytes.
        let ext = [6, 255, 0, 0, 0, 0, 0, 0];
        let p = ipv6(a6(), b6(), 0, &ext, &tcp_header(1, 2, 2));
        assert_eq!(parse(&p), Err(Malformed::TruncatedExtHeader));
    }

    #[test]
    fn ipv6_no_next_header_and_v4_mapped_source() {
        let p = ipv6(a6(), b6(), 59, &[], &[]);
        assert_eq!(
            parse(&p).map(|p| match p {
                Parsed::Probe(p) => Some(p.transport),
                Parsed::Skip(_) => None,
            }),
            Ok(Some(Transport::Other { protocol: 59 }))
        );
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        let p = tcp6(mapped, b6(), 1, 2, 2);
        assert_eq!(parse(&p), Err(Malformed::BogusSource));
    }

    #[test]
    fn ipv6_payload_length_shorter_than_headers() {
        let mut p = tcp6(a6(), b6(), 1, 2, 2);
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(parse(&p), Err(Malformed::TruncatedTransport));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_with_valid_version(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200), v6 in proptest::prelude::any::<bool>()) {
            if let Some(b) = bytes.first_mut() { *b = (*b & 0x0f) | if v6 { 0x60 } else { 0x40 }; }
            let _ = parse(&bytes);
        }
    }
}
