//! A small raw-socket traffic generator: TCP SYN frames written straight onto the
//! scanner's veth end (AF_PACKET, sendmmsg), at a given rate or as fast as the veth
//! carries them, bounded by a packet count and a deadline.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use sentry_tests::netns::NetPair;
use serde_json::Value;

use crate::sys::PacketSender;

/// Start of the spoofed source range: 10.64.0.0/10 (private, 2^22 addresses, used only
/// inside the benchmark's namespaces; routes to it exist nowhere).
pub const SPOOF_BASE: u32 = 0x0A40_0000;
pub const SPOOF_SPACE: u32 = 1 << 22;

/// The `i`-th of up to 2^22 distinct spoofed sources, spread over 10.64.0.0/10 (an odd
/// multiplier is a bijection modulo 2^22, so the first N are distinct for N <= 2^22).
pub fn spoofed_source(i: u64) -> Ipv4Addr {
    let mixed = u32::try_from(i.wrapping_mul(2_654_435_761) % u64::from(SPOOF_SPACE)).unwrap_or(0);
    Ipv4Addr::from(SPOOF_BASE + mixed)
}

/// `base + i mod span`: cycles through `span` consecutive ports starting at `base`.
pub fn cycle(i: u64, base: u16, span: u16) -> u16 {
    base.saturating_add(u16::try_from(i % u64::from(span.max(1))).unwrap_or(0))
}

/// Interface index and MAC address of `ifname` inside namespace `ns`.
pub fn link_info(ns: &str, ifname: &str) -> Result<(i32, [u8; 6]), String> {
    let out = Command::new("ip")
        .args(["-j", "-n", ns, "link", "show", ifname])
        .output()
        .map_err(|e| format!("ip link show: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("ip -j link show {ifname} in {ns}: {e}"))?;
    let l = v.get(0).ok_or("no such link")?;
    let idx = l
        .get("ifindex")
        .and_then(Value::as_i64)
        .and_then(|i| i32::try_from(i).ok())
        .ok_or("no ifindex")?;
    let mac = l
        .get("address")
        .and_then(Value::as_str)
        .ok_or("no address")?;
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad MAC {mac}: {e}"))?;
    let mac: [u8; 6] = bytes.try_into().map_err(|_| format!("bad MAC {mac}"))?;
    Ok((idx, mac))
}

/// Interface packet counters inside a namespace: (rx_packets, rx_dropped, tx_packets).
pub fn link_counters(ns: &str, ifname: &str) -> Result<(u64, u64, u64), String> {
    let out = Command::new("ip")
        .args(["-j", "-s", "-n", ns, "link", "show", ifname])
        .output()
        .map_err(|e| format!("ip -s link show: {e}"))?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("ip -j -s: {e}"))?;
    let s = v.pointer("/0/stats64").ok_or("no stats64")?;
    let g = |p: &str| {
        s.pointer(p)
            .and_then(Value::as_u64)
            .ok_or(format!("no {p}"))
    };
    Ok((g("/rx/packets")?, g("/rx/dropped")?, g("/tx/packets")?))
}

const FRAME_LEN: usize = 14 + 20 + 20;

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// Fixed parts of every frame.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// Write a complete Ethernet/IPv4/TCP SYN frame into `f` (length [`FRAME_LEN`]).
pub fn write_syn(f: &mut Vec<u8>, link: &Link, src: Ipv4Addr, sport: u16, dport: u16, seq: u32) {
    f.clear();
    f.extend_from_slice(&link.dst_mac);
    f.extend_from_slice(&link.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_start = f.len();
    let id = u16::try_from(seq & 0xffff).unwrap_or(0);
    f.extend_from_slice(&[0x45, 0, 0, 40]);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&link.dst.octets());
    let ipsum = checksum(&f[ip_start..ip_start + 20], 0);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ipsum.to_be_bytes());
    let tcp_start = f.len();
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0x04, 0x00, 0, 0, 0, 0]);
    // Pseudo-header: source, destination, zero, protocol, TCP length.
    let mut pseudo = 0u32;
    for pair in src.octets().chunks(2).chain(link.dst.octets().chunks(2)) {
        pseudo += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    pseudo += 6 + 20;
    let tsum = checksum(&f[tcp_start..], pseudo);
    f[tcp_start + 16..tcp_start + 18].copy_from_slice(&tsum.to_be_bytes());
}

/// How much to send.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub count: u64,
    /// Packets per second; `None` = as fast as the socket takes them.
    pub rate: Option<u64>,
    pub max_time: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub sent: u64,
    pub elapsed: Duration,
}

impl Sent {
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

const BATCH: usize = 64;

/// Send SYN frames from the scanner side of `net`. `shape(i)` gives packet `i`'s source,
/// source port and destination port. Runs on a thread inside the scanner namespace.
pub fn send_syns(
    net: &NetPair,
    plan: Plan,
    shape: impl Fn(u64) -> (Ipv4Addr, u16, u16) + Send + 'static,
) -> Result<Sent, String> {
    use sentry_tests::netns::{Side, SCANNER_IF, TARGET_IF, TARGET_V4};
    let (ifindex, src_mac) = link_info(&net.scanner, SCANNER_IF)?;
    let (_, dst_mac) = link_info(&net.target, TARGET_IF)?;
    let link = Link {
        src_mac,
        dst_mac,
        dst: TARGET_V4,
    };
    net.in_ns(Side::Scanner, move || -> Result<Sent, String> {
        let tx = PacketSender::open(ifindex).map_err(|e| format!("AF_PACKET socket: {e}"))?;
        let mut frames: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(FRAME_LEN)).collect();
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < plan.count && start.elapsed() < plan.max_time {
            if crate::sys::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let n = usize::try_from((plan.count - sent).min(BATCH as u64)).unwrap_or(BATCH);
            for (k, f) in frames.iter_mut().take(n).enumerate() {
                let i = sent + k as u64;
                let (src, sport, dport) = shape(i);
                write_syn(
                    f,
                    &link,
                    src,
                    sport,
                    dport,
                    u32::try_from(i & 0xffff_ffff)
                        .unwrap_or(0)
                        .wrapping_mul(7919),
                );
            }
            let went = tx
                .send_batch(&frames[..n])
                .map_err(|e| format!("sendmmsg: {e}"))?;
            sent += went as u64;
            if went < n {
                std::thread::sleep(Duration::from_micros(50));
            }
            if let Some(rate) = plan.rate {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                let el = start.elapsed();
                if due > el {
                    std::thread::sleep(due - el);
                }
            }
        }
        Ok(Sent {
            sent,
            elapsed: start.elapsed(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_frame_checksums_verify() {
        let link = Link {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: Ipv4Addr::new(10, 203, 0, 2),
        };
        let mut f = Vec::new();
        write_syn(&mut f, &link, Ipv4Addr::new(10, 64, 1, 2), 40000, 80, 12345);
        assert_eq!(f.len(), FRAME_LEN);
        // A correct checksum makes the one's-complement sum over the header zero.
        assert_eq!(checksum(&f[14..34], 0), 0);
        let mut pseudo = 0u32;
        for p in [[10u8, 64], [1, 2], [10, 203], [0, 2]] {
            pseudo += u32::from(u16::from_be_bytes(p));
        }
        assert_eq!(checksum(&f[34..], pseudo + 6 + 20), 0);
        assert_eq!(f[34 + 13], 0x02);
    }

    #[test]
    fn spoofed_sources_are_distinct_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            let a = u32::from(spoofed_source(i));
            assert!((SPOOF_BASE..SPOOF_BASE + SPOOF_SPACE).contains(&a));
            assert!(seen.insert(a), "duplicate at {i}");
        }
    }
}
