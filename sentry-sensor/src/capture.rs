//! Packet capture: an AF_PACKET TPACKET_V2 ring behind a classic BPF filter.
//!
//! The kernel filter keeps only what can be a probe, so uninteresting traffic costs no
//! copy and no wake-up: packets addressed to this host (PACKET_HOST: not broadcast or
//! multicast, not promiscuous "other host" frames), IPv4 or IPv6,
//! UDP, TCP without ACK or RST, IPv4 first fragments and the fragment at offset 8 (which
//! carries the flags of a tiny first fragment) and IPv6 packets with extension headers
//! (parsed in user space), and no later IPv4 fragments. Of this host's own outgoing
//! packets only UDP headers are kept: they mark UDP flows whose replies are not probes. At most [`SNAPLEN`] bytes of each are copied.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::sys::{BpfInsn, PacketRing, RingGeometry};

/// Bytes of each packet copied into the ring: the IP header, up to a few IPv6 extension
/// headers and the transport header.
pub const SNAPLEN: u32 = 256;

/// Default ring: 32768 slots of 512 bytes (16 MiB; a slot holds the 32-byte TPACKET_V2
/// header, the link-layer address and [`SNAPLEN`] bytes of packet). Each packet is handed to
/// the sensor on its own the moment it is copied, and a sleeping sensor is woken at once:
/// a TPACKET_V3 ring would batch packets into blocks handed over when full or on a
/// millisecond timer, and at nmap -T4 rates every such millisecond is dozens more ports
/// answered before the block. The slot count is what absorbs scheduling delays: 32768
/// probes, tens of milliseconds at a veth's line rate (README, Performance).
pub const DEFAULT_GEOMETRY: RingGeometry = RingGeometry {
    frame_size: 512,
    block_size: 1 << 16,
    frame_nr: 1 << 15,
};

/// Wake-ups that find packets closer together than this mean traffic is continuous...
pub const COALESCE_WINDOW: Duration = Duration::from_millis(1);
/// ...and the ring is then left alone for this long before it is polled again.
pub const COALESCE_NAP: Duration = Duration::from_micros(150);

/// Wake-up coalescing for the ring. A TPACKET_V2 ring wakes a sleeping reader for every
/// packet: right for the first probe of a scan after a quiet spell (handled the moment it
/// arrives), ruinous under a flood (a wake-up per packet costs several times the parsing;
/// README, Performance). So when two wake-ups in a row found packets less than
/// [`COALESCE_WINDOW`] apart, the ring's descriptor is left out of the poll set for
/// [`COALESCE_NAP`]: while traffic is continuous the sensor drains the ring once per nap,
/// at a bounded wake-up rate; once a drain finds the ring empty, the next packet
/// wakes it at once again. The cost: a new source that starts while other traffic keeps
/// the sensor coalescing is seen up to [`COALESCE_NAP`] later.
#[derive(Debug, Default, Clone)]
pub struct Pacer {
    last_frames: Option<Instant>,
    nap_until: Option<Instant>,
}

impl Pacer {
    /// `Some(remaining)` while the ring is to be left out of the poll set.
    pub fn napping(&mut self, now: Instant) -> Option<Duration> {
        match self.nap_until {
            Some(t) if t > now => Some(t - now),
            _ => {
                self.nap_until = None;
                None
            }
        }
    }

    /// Record a drain of the ring at `now` that handed over `frames` packets.
    pub fn drained(&mut self, frames: usize, now: Instant) {
        if frames == 0 {
            self.last_frames = None;
            return;
        }
        if self
            .last_frames
            .is_some_and(|t| now.saturating_duration_since(t) < COALESCE_WINDOW)
        {
            self.nap_until = Some(now + COALESCE_NAP);
        }
        self.last_frames = Some(now);
    }
}

// Classic BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const LD_B_IND: u16 = 0x50; // BPF_LD | BPF_B | BPF_IND
const LDX_B_MSH: u16 = 0xb1; // BPF_LDX | BPF_B | BPF_MSH
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_PROTOCOL: i32 = 0;
const SKF_AD_PKTTYPE: i32 = 4;
const PACKET_HOST: u32 = 0;
const PACKET_OUTGOING: u32 = 4;
/// Bytes kept of an outgoing UDP packet: IP and UDP headers.
pub const OUTGOING_SNAPLEN: u32 = 64;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> BpfInsn {
    BpfInsn { code, jt, jf, k }
}

fn ancillary(off: i32) -> u32 {
    // The kernel takes negative "ancillary" offsets as u32 two's complement.
    u32::from_ne_bytes((SKF_AD_OFF + off).to_ne_bytes())
}

/// The kernel filter (offsets are from the network header: the socket is SOCK_DGRAM).
pub fn filter_program() -> Vec<BpfInsn> {
    const ACK_RST: u32 = 0x14;
    let accept = SNAPLEN;
    // Index comments give each instruction's position; jumps are relative (skip count).
    vec![
        /* 0 */ ins(LD_W_ABS, 0, 0, ancillary(SKF_AD_PKTTYPE)),
        /* 1 */ ins(JEQ_K, 1, 0, PACKET_HOST), // → 3 inbound
        /* 2 */
        ins(JEQ_K, 27, 26, PACKET_OUTGOING), // → 30 outgoing, else → 29 drop
        /* 3 */ ins(LD_W_ABS, 0, 0, ancillary(SKF_AD_PROTOCOL)),
        /* 4 */ ins(JEQ_K, 1, 0, 0x0800), // → 6 v4
        /* 5 */ ins(JEQ_K, 12, 23, 0x86dd), // → 18 v6, else → 29 drop
        /* v4 */
        /* 6 */ ins(LD_B_ABS, 0, 0, 9),
        /* 7 */ ins(JEQ_K, 20, 0, 17), // UDP → 28 accept
        /* 8 */ ins(JEQ_K, 0, 20, 6), // not TCP → 29 drop
        /* 9 */ ins(LD_H_ABS, 0, 0, 6),
        /* 10 */ ins(AND_K, 0, 0, 0x1fff), // fragment offset
        /* 11 */ ins(JEQ_K, 1, 0, 0), // offset 0 → 13
        // Offset 1 (8 bytes) may carry the flags of a tiny first fragment (nmap -f);
        // later fragments carry nothing of use.
        /* 12 */
        ins(JEQ_K, 15, 16, 1), // → 28 accept, else → 29 drop
        /* 13 */ ins(LD_H_ABS, 0, 0, 6),
        /* 14 */
        ins(JSET_K, 13, 0, 0x2000), // first fragment (MF): header may be cut → 28
        /* 15 */ ins(LDX_B_MSH, 0, 0, 0),
        /* 16 */ ins(LD_B_IND, 0, 0, 13),
        /* 17 */ ins(JSET_K, 11, 10, ACK_RST), // → 29 drop, else → 28 accept
        /* v6 */
        /* 18 */ ins(LD_B_ABS, 0, 0, 6),
        /* 19 */ ins(JEQ_K, 6, 0, 6), // TCP → 26
        /* 20 */ ins(JEQ_K, 7, 0, 17), // UDP → 28 accept
        /* 21 */ ins(JEQ_K, 6, 0, 0), // hop-by-hop → 28
        /* 22 */ ins(JEQ_K, 5, 0, 43), // routing → 28
        /* 23 */ ins(JEQ_K, 4, 0, 60), // destination options → 28
        /* 24 */ ins(JEQ_K, 3, 0, 44), // fragment → 28
        /* 25 */ ins(JEQ_K, 2, 3, 51), // AH → 28, else → 29 drop
        /* 26 */ ins(LD_B_ABS, 0, 0, 40 + 13),
        /* 27 */ ins(JSET_K, 1, 0, ACK_RST), // → 29 drop, else 28
        /* 28 */ ins(RET_K, 0, 0, accept),
        /* 29 */ ins(RET_K, 0, 0, 0),
        // Outgoing: only UDP (IPv4, or IPv6 without extension headers), headers only, to
        // remember this host's own UDP flows so their replies are not probes.
        /* 30 */
        ins(LD_W_ABS, 0, 0, ancillary(SKF_AD_PROTOCOL)),
        /* 31 */ ins(JEQ_K, 0, 2, 0x0800), // v4 → 32, else → 34
        /* 32 */ ins(LD_B_ABS, 0, 0, 9),
        /* 33 */ ins(JEQ_K, 3, 4, 17), // UDP → 37, else → 38
        /* 34 */ ins(JEQ_K, 0, 3, 0x86dd), // v6 → 35, else → 38
        /* 35 */ ins(LD_B_ABS, 0, 0, 6),
        /* 36 */ ins(JEQ_K, 0, 1, 17), // UDP → 37, else → 38
        /* 37 */ ins(RET_K, 0, 0, OUTGOING_SNAPLEN),
        /* 38 */ ins(RET_K, 0, 0, 0),
    ]
}

/// One captured frame's data (starting at the network header).
#[derive(Debug)]
pub struct Capture {
    ring: PacketRing,
}

impl Capture {
    /// Needs CAP_NET_RAW; done once at start-up, before privileges are dropped.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            ring: PacketRing::open(DEFAULT_GEOMETRY, &filter_program())?,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.ring.fd()
    }

    /// Hand up to `max_frames` ready frames to `f`. Returns the number of frames processed
    /// (0: nothing ready) and counts frames whose headers do not fit their slot in `bad`.
    pub fn drain(
        &mut self,
        max_frames: usize,
        bad: &mut u64,
        mut f: impl FnMut(&[u8], bool),
    ) -> usize {
        let mut n = 0;
        while n < max_frames {
            let Some(frame) = self.ring.next_frame() else {
                break;
            };
            match parse_frame(frame.data()) {
                Some((data, outgoing)) => f(data, outgoing),
                None => *bad += 1,
            }
            n += 1;
        }
        n
    }

    /// Kernel (packets, drops) since the previous call.
    pub fn take_stats(&self) -> io::Result<(u32, u32)> {
        self.ring.take_stats()
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes(s.try_into().ok()?))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_ne_bytes(s.try_into().ok()?))
}

/// Offset of `struct sockaddr_ll` in a slot: TPACKET_ALIGN(sizeof(struct tpacket2_hdr)).
const SLL_OFFSET: usize = 32;

/// Split one TPACKET_V2 slot (`struct tpacket2_hdr`, then `struct sockaddr_ll`, then the
/// packet at `tp_net`) into the packet bytes and whether the packet was outgoing. `None`
/// when the header's offsets do not fit the slot: the kernel writes these slots, but every
/// offset is still checked.
pub fn parse_frame(slot: &[u8]) -> Option<(&[u8], bool)> {
    let snaplen = usize::try_from(u32_at(slot, 8)?).ok()?;
    let net = usize::from(u16_at(slot, 14)?);
    let data = slot.get(net..net.checked_add(snaplen)?)?;
    // sll_pkttype is byte 10 of sockaddr_ll.
    let pkttype = *slot.get(SLL_OFFSET + 10)?;
    Some((data, u32::from(pkttype) == PACKET_OUTGOING))
}

/// A minimal classic-BPF interpreter for the opcodes [`filter_program`] uses, so the
/// filter's logic can be unit-tested without a socket.
#[cfg(test)]
pub fn run_filter(prog: &[BpfInsn], pkt: &[u8], pkttype: u32, proto: u16) -> u32 {
    let mut a: u32 = 0;
    let mut x: u32 = 0;
    let mut pc = 0usize;
    let load = |off: u32, n: usize| -> Option<u32> {
        if off == ancillary(SKF_AD_PKTTYPE) {
            return Some(pkttype);
        }
        if off == ancillary(SKF_AD_PROTOCOL) {
            return Some(u32::from(proto));
        }
        let o = usize::try_from(off).ok()?;
        let s = pkt.get(o..o + n)?;
        Some(s.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
    };
    while let Some(i) = prog.get(pc) {
        pc += 1;
        match i.code {
            LD_W_ABS => match load(i.k, 4) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_H_ABS => match load(i.k, 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_B_ABS => match load(i.k, 1) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_B_IND => match load(x.wrapping_add(i.k), 1) {
                Some(v) => a = v,
                None => return 0,
            },
            LDX_B_MSH => match load(i.k, 1) {
                Some(v) => x = 4 * (v & 0xf),
                None => return 0,
            },
            AND_K => a &= i.k,
            JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
            RET_K => return i.k,
            other => panic!("opcode {other:#x} not modelled"),
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn run4(p: &[u8]) -> u32 {
        run_filter(&filter_program(), p, PACKET_HOST, 0x0800)
    }

    #[test]
    fn jumps_stay_inside_the_program() {
        let prog = filter_program();
        for (i, ins) in prog.iter().enumerate() {
            if ins.code == JEQ_K || ins.code == JSET_K {
                assert!(i + 1 + usize::from(ins.jt) < prog.len(), "insn {i}");
                assert!(i + 1 + usize::from(ins.jf) < prog.len(), "insn {i}");
            }
        }
        assert_eq!(prog.last().unwrap().code, RET_K);
    }

    #[test]
    fn tcp_v4_flags() {
        for flags in 0u8..=255 {
            let want = if flags & 0x14 != 0 { 0 } else { SNAPLEN };
            assert_eq!(run4(&tcp4(A, B, 1, 23, flags)), want, "flags {flags:#x}");
        }
        // With IP options the TCP header moves; the filter follows IHL.
        let mut p = ipv4_header(A, B, 6, 20, &[1, 1, 1, 1, 1, 1, 1, 1]);
        p.extend_from_slice(&tcp_header(1, 2, 0x12));
        assert_eq!(run4(&p), 0);
        let mut p = ipv4_header(A, B, 6, 20, &[1, 1, 1, 1]);
        p.extend_from_slice(&tcp_header(1, 2, 0x02));
        assert_eq!(run4(&p), SNAPLEN);
    }

    #[test]
    fn udp_icmp_fragments_v4() {
        assert_eq!(run4(&udp4(A, B, 1, 53)), SNAPLEN);
        let mut icmp = ipv4_header(A, B, 1, 8, &[]);
        icmp.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(run4(&icmp), 0);
        let mut frag = tcp4(A, B, 1, 23, 0x02);
        frag[6] = 0;
        frag[7] = 2;
        assert_eq!(run4(&frag), 0, "later fragments dropped in the kernel");
        frag[7] = 1;
        assert_eq!(run4(&frag), SNAPLEN, "offset-8 fragment kept for pairing");
        frag[6] = 0x20;
        assert_eq!(run4(&frag), SNAPLEN);
        frag[7] = 9;
        assert_eq!(run4(&frag), 0);
        frag[6] = 0;
        frag[6] = 0x20;
        frag[7] = 0;
        assert_eq!(run4(&frag), SNAPLEN, "first fragment kept");
        // nmap -f: a first fragment with only 8 bytes of TCP reaches user space (the
        // flags byte is not in it), so the evasion is seen and logged.
        let mut tiny = ipv4_header(A, B, 6, 8, &[]);
        tiny.extend_from_slice(&tcp_header(1, 23, 0x02)[..8]);
        tiny[6] = 0x20;
        assert_eq!(run4(&tiny), SNAPLEN);
        // Without MF the same short packet is just truncated: the filter's out-of-bounds
        // load rejects it.
        tiny[6] = 0x40;
        assert_eq!(run4(&tiny), 0);
    }

    #[test]
    fn direction_and_ethertype() {
        let p = tcp4(A, B, 1, 23, 0x02);
        for pkttype in [1, 2, 3, 4, 5, 6, 7] {
            assert_eq!(run_filter(&filter_program(), &p, pkttype, 0x0800), 0);
        }
        // Outgoing: UDP headers only.
        let u = udp4(A, B, 40000, 53);
        assert_eq!(
            run_filter(&filter_program(), &u, 4, 0x0800),
            OUTGOING_SNAPLEN
        );
        assert_eq!(run_filter(&filter_program(), &u, 1, 0x0800), 0);
        let u6 = ipv6(
            v6("fd00::1"),
            v6("fd00::2"),
            17,
            &[],
            &udp_header(40000, 53),
        );
        assert_eq!(
            run_filter(&filter_program(), &u6, 4, 0x86dd),
            OUTGOING_SNAPLEN
        );
        let t6 = tcp6(v6("fd00::1"), v6("fd00::2"), 1, 2, 2);
        assert_eq!(run_filter(&filter_program(), &t6, 4, 0x86dd), 0);
        assert_eq!(run_filter(&filter_program(), &p, 0, 0x0806), 0);
    }

    #[test]
    fn v6_cases() {
        let run6 = |p: &[u8]| run_filter(&filter_program(), p, PACKET_HOST, 0x86dd);
        let (a, b) = (v6("fd00::1"), v6("fd00::2"));
        assert_eq!(run6(&tcp6(a, b, 1, 2, 0x02)), SNAPLEN);
        assert_eq!(run6(&tcp6(a, b, 1, 2, 0x10)), 0);
        assert_eq!(run6(&tcp6(a, b, 1, 2, 0x04)), 0);
        assert_eq!(run6(&ipv6(a, b, 17, &[], &udp_header(1, 2))), SNAPLEN);
        assert_eq!(run6(&ipv6(a, b, 58, &[], &[128, 0, 0, 0])), 0);
        for ext in [0u8, 43, 60, 44, 51] {
            assert_eq!(
                run6(&ipv6(a, b, ext, &[6, 0, 0, 0, 0, 0, 0, 0], &[])),
                SNAPLEN
            );
        }
    }

    fn slot_with(pkt: &[u8], pkttype: u8) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        let net = 80u16;
        b[0..4].copy_from_slice(&1u32.to_ne_bytes());
        b[4..8].copy_from_slice(&u32::try_from(pkt.len()).unwrap().to_ne_bytes());
        b[8..12].copy_from_slice(&u32::try_from(pkt.len()).unwrap().to_ne_bytes());
        b[12..14].copy_from_slice(&net.to_ne_bytes());
        b[14..16].copy_from_slice(&net.to_ne_bytes());
        b[SLL_OFFSET + 10] = pkttype;
        let s = usize::from(net);
        b[s..s + pkt.len()].copy_from_slice(pkt);
        b
    }

    #[test]
    fn slot_parse() {
        let f1 = tcp4(A, B, 1, 2, 2);
        assert_eq!(parse_frame(&slot_with(&f1, 0)), Some((&f1[..], false)));
        let f2 = udp4(A, B, 3, 4);
        assert_eq!(parse_frame(&slot_with(&f2, 4)), Some((&f2[..], true)));
        // A corrupt snaplen or network offset is reported, never read past the slot.
        let mut bad = slot_with(&f1, 0);
        bad[8..12].copy_from_slice(&100_000u32.to_ne_bytes());
        assert_eq!(parse_frame(&bad), None);
        let mut bad = slot_with(&f1, 0);
        bad[14..16].copy_from_slice(&600u16.to_ne_bytes());
        assert_eq!(parse_frame(&bad), None);
        let mut bad = slot_with(&f1, 0);
        bad[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        bad[14..16].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(parse_frame(&bad), None);
        assert_eq!(parse_frame(&[0u8; 10]), None);
        assert_eq!(parse_frame(&[0u8; 42]), None, "no room for sockaddr_ll");
        // Zero-length capture: empty packet, not an error (the parser rejects it later).
        let empty = slot_with(&[], 0);
        assert_eq!(parse_frame(&empty), Some((&[][..], false)));
    }

    #[test]
    fn pacer_naps_only_while_traffic_is_continuous() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        assert_eq!(p.napping(t0), None);
        // The first packet after a quiet spell: no nap, the next one wakes at once.
        p.drained(1, t0);
        assert_eq!(p.napping(t0), None);
        // Another wake-up with packets 20 µs later: continuous traffic, nap.
        let t1 = t0 + Duration::from_micros(20);
        p.drained(3, t1);
        assert_eq!(p.napping(t1), Some(COALESCE_NAP));
        let mid = t1 + COALESCE_NAP / 2;
        assert_eq!(p.napping(mid), Some(COALESCE_NAP - COALESCE_NAP / 2));
        let t2 = t1 + COALESCE_NAP;
        assert_eq!(p.napping(t2), None, "nap over");
        // Still traffic after the nap: nap again.
        p.drained(40, t2);
        assert!(p.napping(t2).is_some());
        // An empty drain (a wake-up for something else) ends the streak...
        let t3 = t2 + COALESCE_NAP;
        assert_eq!(p.napping(t3), None);
        p.drained(0, t3);
        // ...so the next packet is handled at once, with no nap after it.
        let t4 = t3 + Duration::from_micros(10);
        p.drained(1, t4);
        assert_eq!(p.napping(t4), None);
        // Packets further apart than the window never cause a nap.
        let t5 = t4 + COALESCE_WINDOW;
        p.drained(1, t5);
        assert_eq!(p.napping(t5), None);
    }

    #[test]
    fn default_geometry_is_consistent() {
        let g = DEFAULT_GEOMETRY;
        assert_eq!(g.block_size % g.frame_size, 0);
        assert_eq!(g.frame_nr % (g.block_size / g.frame_size), 0);
        // Header (32) + sockaddr_ll, aligned (80 for SOCK_DGRAM) + the snap length fit.
        assert!(80 + SNAPLEN <= g.frame_size);
    }
}
