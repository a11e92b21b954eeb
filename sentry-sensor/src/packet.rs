//! Packet parser: captured bytes (starting at the network header) → a [`Probe`].
//!
//! Everything here is hostile input. pnet packet views are used only for their fixed-offset
//! getters after this module has checked the lengths itself (pnet's option/payload helpers
//! compute `header_length * 4 - 20` and must never see an IHL below 5). No indexing, no
//! unwrap: every access is a checked `get`, so the parser cannot panic (see the fuzz target
//! in `sentry-sensor/fuzz`).

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
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

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
}

impl Probe {
    pub fn dst_port(&self) -> u16 {
        match self.transport {
            Transport::Tcp { dst_port, .. } | Transport::Udp { dst_port, .. } => dst_port,
        }
    }
}

/// Well-formed packets that are not probes; counted, not logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Neither TCP nor UDP (ICMP, ESP, no-next-header, ...).
    OtherProtocol,
    /// An IPv4 or IPv6 fragment with a non-zero offset: it carries no transport header.
    NonFirstFragment,
}

/// A first fragment too short to hold the full transport header (a "tiny fragment",
/// RFC 1858; `nmap -f`): the TCP flags are in a later fragment, so it cannot be classified,
/// but it is a detection-avoidance technique in itself. `dst_port` is known when at least
/// the port fields are present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyFragment {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    pub dst_port: Option<u16>,
    /// IP identification (IPv4) or fragment header identification (IPv6).
    pub id: u32,
}

/// The fragment at offset 8 of a fragmented TCP segment: with 8-byte fragments (`nmap -f`)
/// it holds TCP header bytes 8-15, so the flags byte (13) of a [`TinyFragment`] with the
/// same source, destination and id. Nothing else of it is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondFragment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    /// TCP header byte 13, if captured.
    pub flags: Option<u8>,
}

/// Malformed packets; counted and dropped.
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
    /// The transport header is cut off (and the packet is not a fragment).
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

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Version(_) => "bad IP version",
            Self::IhlTooSmall(_) => "IPv4 header length below 5",
            Self::TruncatedIp => "truncated IP header",
            Self::BadTotalLength => "IPv4 total length below header length",
            Self::TruncatedTransport => "truncated transport header",
            Self::TcpOffsetTooSmall => "TCP data offset below 5",
            Self::TooManyExtHeaders => "too many IPv6 extension headers",
            Self::TruncatedExtHeader => "truncated IPv6 extension header",
            Self::BogusSource => "IPv4-mapped IPv6 source",
        }
    }
}

/// What the parser made of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Probe(Probe),
    Skip(Skip),
    TinyFragment(TinyFragment),
    SecondFragment(SecondFragment),
}

/// Parse one captured frame that starts at the IP header (AF_PACKET SOCK_DGRAM).
/// `frame` may be shorter than the packet on the wire (snap length); only the headers are
/// needed.
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
    let ip_options = hlen > IPV4_MIN_HEADER;
    let src = ip.get_source();
    let dst = ip.get_destination();
    let id = u32::from(ip.get_identification());
    let end = total.min(frame.len());
    // Fragment offset is in 8-byte units; a non-zero offset means no transport header here.
    match ip.get_fragment_offset() {
        0 => {}
        1 if ip.get_next_level_protocol() == IpNextHeaderProtocols::Tcp => {
            let payload = frame.get(hlen..end).ok_or(Malformed::TruncatedIp)?;
            return Ok(Parsed::SecondFragment(SecondFragment {
                src: IpAddr::V4(src),
                dst: IpAddr::V4(dst),
                id,
                flags: payload.get(TCP_FLAGS_OFFSET - 8).copied(),
            }));
        }
        _ => return Ok(Parsed::Skip(Skip::NonFirstFragment)),
    }
    const MORE_FRAGMENTS: u8 = 0b001;
    let fragmented = ip.get_flags() & MORE_FRAGMENTS != 0;
    // The transport header ends at the smaller of what was captured and what the IP
    // header says the packet holds.
    let l4 = frame.get(hlen..end).ok_or(Malformed::TruncatedIp)?;
    let on_wire = total - hlen;
    transport(
        ip.get_next_level_protocol().0,
        l4,
        (hlen, on_wire),
        fragmented.then_some(id),
        IpAddr::V4(src),
        IpAddr::V4(dst),
        ip_options,
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
    let mut frag_id: Option<u32> = None;
    for _ in 0..=MAX_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not
            // counting the first 8.
            0 | 43 | 60 => {
                let nh = *rest.first().ok_or(Malformed::TruncatedExtHeader)?;
                let len_units = *rest.get(1).ok_or(Malformed::TruncatedExtHeader)?;
                let len = (usize::from(len_units) + 1) * 8;
                rest = rest.get(len..).ok_or(Malformed::TruncatedExtHeader)?;
                on_wire = on_wire
                    .checked_sub(len)
                    .ok_or(Malformed::TruncatedExtHeader)?;
                next = nh;
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let nh = *rest.first().ok_or(Malformed::TruncatedExtHeader)?;
                let len_units = *rest.get(1).ok_or(Malformed::TruncatedExtHeader)?;
                let len = (usize::from(len_units) + 2) * 4;
                rest = rest.get(len..).ok_or(Malformed::TruncatedExtHeader)?;
                on_wire = on_wire
                    .checked_sub(len)
                    .ok_or(Malformed::TruncatedExtHeader)?;
                next = nh;
            }
            // Fragment header: fixed 8 bytes; offset in the upper 13 bits of bytes 2-3,
            // identification in bytes 4-7.
            44 => {
                let hdr = rest.get(..8).ok_or(Malformed::TruncatedExtHeader)?;
                let nh = *hdr.first().ok_or(Malformed::TruncatedExtHeader)?;
                let off_flags = hdr
                    .get(2..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u16::from_be_bytes)
                    .ok_or(Malformed::TruncatedExtHeader)?;
                let id = hdr
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .ok_or(Malformed::TruncatedExtHeader)?;
                let payload = rest.get(8..).ok_or(Malformed::TruncatedExtHeader)?;
                match off_flags >> 3 {
                    0 => {}
                    1 if nh == IpNextHeaderProtocols::Tcp.0 => {
                        return Ok(Parsed::SecondFragment(SecondFragment {
                            src: IpAddr::V6(src),
                            dst: IpAddr::V6(dst),
                            id,
                            flags: payload.get(TCP_FLAGS_OFFSET - 8).copied(),
                        }));
                    }
                    _ => return Ok(Parsed::Skip(Skip::NonFirstFragment)),
                }
                if off_flags & 1 != 0 {
                    frag_id = Some(id);
                }
                rest = payload;
                on_wire = on_wire
                    .checked_sub(8)
                    .ok_or(Malformed::TruncatedExtHeader)?;
                next = nh;
            }
            proto => {
                return transport(
                    proto,
                    rest,
                    (end - rest.len(), on_wire),
                    frag_id,
                    IpAddr::V6(src),
                    IpAddr::V6(dst),
                    false,
                );
            }
        }
    }
    Err(Malformed::TooManyExtHeaders)
}

/// `l4`: captured transport bytes; `on_wire`: transport bytes the IP header announces;
/// `frag_id`: the fragment identification when this is the first of several fragments.
fn transport(
    proto: u8,
    l4: &[u8],
    (l4_offset, on_wire): (usize, usize),
    frag_id: Option<u32>,
    src: IpAddr,
    dst: IpAddr,
    ip_options: bool,
) -> Result<Parsed, Malformed> {
    let tcp = proto == IpNextHeaderProtocols::Tcp.0;
    let need = if tcp {
        TCP_MIN_HEADER
    } else if proto == IpNextHeaderProtocols::Udp.0 {
        UDP_HEADER
    } else {
        return Ok(Parsed::Skip(Skip::OtherProtocol));
    };
    if on_wire < need {
        let Some(id) = frag_id else {
            // Not a fragment and too short for its header: garbage.
            return Err(Malformed::TruncatedTransport);
        };
        let port_at = |i: usize| {
            l4.get(i..i + 2)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_be_bytes)
        };
        // A first fragment that holds the flags byte (e.g. hping3 -f, 16-byte
        // fragments) is a classifiable probe even without the rest of the header.
        if tcp && on_wire > TCP_FLAGS_OFFSET {
            if let (Some(src_port), Some(dst_port), Some(&flags)) =
                (port_at(0), port_at(2), l4.get(TCP_FLAGS_OFFSET))
            {
                return Ok(Parsed::Probe(Probe {
                    src,
                    dst,
                    transport: Transport::Tcp {
                        src_port,
                        dst_port,
                        flags,
                    },
                    ip_options,
                    l4_offset,
                    l4_len: on_wire,
                }));
            }
        }
        return Ok(Parsed::TinyFragment(TinyFragment {
            src,
            dst,
            protocol: proto,
            dst_port: port_at(2),
            id,
        }));
    }
    if l4.len() < need {
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
    } else {
        let udp = UdpPacket::new(l4).ok_or(Malformed::TruncatedTransport)?;
        Transport::Udp {
            src_port: udp.get_source(),
            dst_port: udp.get_destination(),
        }
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
        assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::NonFirstFragment)));
        // MF also set.
        p[6] = 0x20;
        assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::NonFirstFragment)));
    }

    #[test]
    fn first_fragment_is_parsed() {
        let mut p = tcp4(A, B, 1, 23, 0x02);
        p[6] = 0x20; // MF, offset 0
        p[7] = 0;
        assert!(matches!(parse(&p), Ok(Parsed::Probe(_))));
    }

    #[test]
    fn tiny_first_fragment_is_not_misparsed() {
        // nmap -f: first fragment holds 8 bytes of TCP (ports only). The builder's IP id
        // is 1.
        let mut p = ipv4_header(A, B, 6, 8, &[]);
        p.extend_from_slice(&tcp_header(1, 23, 0x02)[..8]);
        p[6] = 0x20;
        assert_eq!(
            parse(&p),
            Ok(Parsed::TinyFragment(TinyFragment {
                src: IpAddr::V4(A),
                dst: IpAddr::V4(B),
                protocol: 6,
                dst_port: Some(23),
                id: 1,
            }))
        );
        // The fragment at offset 8 yields only the flags byte, nothing else.
        let mut s = ipv4_header(A, B, 6, 8, &[]);
        s.extend_from_slice(&tcp_header(1, 23, 0x29)[8..16]);
        s[7] = 1;
        assert_eq!(
            parse(&s),
            Ok(Parsed::SecondFragment(SecondFragment {
                src: IpAddr::V4(A),
                dst: IpAddr::V4(B),
                id: 1,
                flags: Some(0x29),
            }))
        );
        // hping3 -f: 16 bytes of TCP hold the flags: a probe.
        let mut h = ipv4_header(A, B, 6, 16, &[]);
        h.extend_from_slice(&tcp_header(1, 23, 0x01)[..16]);
        h[6] = 0x20;
        assert!(matches!(
            parse(&h),
            Ok(Parsed::Probe(Probe {
                transport: Transport::Tcp {
                    dst_port: 23,
                    flags: 0x01,
                    ..
                },
                ..
            }))
        ));
        // The same 16 bytes without MF are just truncated.
        h[6] = 0x40;
        assert_eq!(parse(&h), Err(Malformed::TruncatedTransport));
        // Even the ports cut: still a tiny fragment, port unknown.
        let mut p = ipv4_header(A, B, 6, 2, &[]);
        p.extend_from_slice(&[0, 1]);
        p[6] = 0x20;
        assert!(matches!(
            parse(&p),
            Ok(Parsed::TinyFragment(TinyFragment { dst_port: None, .. }))
        ));
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
        assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::OtherProtocol)));
        assert_eq!(parse(&[0x50; 40]), Err(Malformed::Version(5)));
        assert_eq!(parse(&[]), Err(Malformed::Empty));
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
        // First fragment (offset 0, M=1) → parsed.
        let frag = [6, 0, 0x00, 0x01, 0, 0, 0, 1];
        let p = ipv6(a6(), b6(), 44, &frag, &tcp_header(7, 25, 0x02));
        assert!(matches!(parse(&p), Ok(Parsed::Probe(pr)) if pr.dst_port() == 25));
        // Non-first fragment (offset 2): never interpreted.
        let frag = [6, 0, 0x00, 0x10, 0, 0, 0, 1];
        let p = ipv6(a6(), b6(), 44, &frag, &tcp_header(7, 25, 0x02));
        assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::NonFirstFragment)));
        // Offset 1 (8 bytes) of TCP: only the flags byte is extracted, for pairing with a
        // tiny first fragment of the same id.
        let frag = [6, 0, 0x00, 0x08, 0, 0, 0, 9];
        let p = ipv6(a6(), b6(), 44, &frag, &tcp_header(7, 25, 0x01)[8..16]);
        assert_eq!(
            parse(&p),
            Ok(Parsed::SecondFragment(SecondFragment {
                src: IpAddr::V6(a6()),
                dst: IpAddr::V6(b6()),
                id: 9,
                flags: Some(0x01)
            }))
        );
        // Tiny first fragment: only 8 bytes of TCP.
        let frag = [6, 0, 0x00, 0x01, 0, 0, 0, 1];
        let p = ipv6(a6(), b6(), 44, &frag, &tcp_header(7, 25, 0x02)[..8]);
        assert!(matches!(
            parse(&p),
            Ok(Parsed::TinyFragment(TinyFragment {
                dst_port: Some(25),
                protocol: 6,
                ..
            }))
        ));
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
        assert_eq!(parse(&p), Ok(Parsed::Skip(Skip::OtherProtocol)));
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
