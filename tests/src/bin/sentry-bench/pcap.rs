//! Reading the capture of a scan: which ports the target answered, and when.
//!
//! The capture is a classic pcap file written by tcpdump on the scanner's veth end
//! (Ethernet link type), so an answer is counted only if it reached the scanner. Every
//! access is bounds-checked: a short or odd record is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What the target said to the scanner during one scan.
#[derive(Debug, Clone, Default)]
pub struct Exposure {
    /// Probe packets from the scanner to the target seen on the wire.
    pub probes: u64,
    /// Distinct target ports that answered: SYN-ACK or RST for TCP, a UDP reply, or an
    /// ICMP/ICMPv6 destination unreachable (any code) quoting a probe to the port.
    pub answered: BTreeSet<u16>,
    /// Timestamp (µs) of the first probe from the scanner.
    pub first_probe_us: Option<u64>,
    /// Timestamp (µs) of the last answer from the target.
    pub last_answer_us: Option<u64>,
    /// Timestamp (µs) of the last probe.
    pub last_probe_us: Option<u64>,
    /// Per target port: (position of its first probe in the scan, 1-based; time of it, µs).
    pub first_probe: BTreeMap<u16, (u64, u64)>,
    /// Per answered port: time of its first answer (µs).
    pub first_answer: BTreeMap<u16, u64>,
}

impl Exposure {
    /// Milliseconds from the first scan packet to the last answer.
    pub fn latency_ms(&self) -> Option<f64> {
        let (a, b) = (self.first_probe_us?, self.last_answer_us?);
        Some(b.saturating_sub(a) as f64 / 1000.0)
    }

    /// Which ports answered, when each was probed and answered (ms after the first
    /// probe): what to look at when a port answered although it should not have. At
    /// most `max` ports, in the order they were probed.
    pub fn answered_detail(&self, max: usize) -> String {
        let t0 = self.first_probe_us.unwrap_or(0);
        let ms = |us: u64| us.saturating_sub(t0) as f64 / 1000.0;
        let mut rows: Vec<(u64, String)> = self
            .answered
            .iter()
            .map(|p| {
                let (n, at) = self.first_probe.get(p).copied().unwrap_or((0, t0));
                let ans = self.first_answer.get(p).copied().unwrap_or(t0);
                (
                    n,
                    format!(
                        "port {p} (probe #{n} at {:.3} ms, answered at {:.3} ms)",
                        ms(at),
                        ms(ans)
                    ),
                )
            })
            .collect();
        rows.sort();
        let more = rows.len().saturating_sub(max);
        let mut out: Vec<String> = rows.into_iter().take(max).map(|(_, s)| s).collect();
        if more > 0 {
            out.push(format!("{more} more"));
        }
        out.join(", ")
    }

    /// Milliseconds from the first to the last probe (the scan's length on the wire).
    pub fn scan_ms(&self) -> Option<f64> {
        let (a, b) = (self.first_probe_us?, self.last_probe_us?);
        Some(b.saturating_sub(a) as f64 / 1000.0)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ip_at(b: &[u8], at: usize, v6: bool) -> Option<IpAddr> {
    if v6 {
        let a: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
        Some(IpAddr::from(a))
    } else {
        let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(IpAddr::from(a))
    }
}

/// One decoded packet: source, destination, and what kind of answer/probe it is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// TCP with these flags; `port` is the source port (for an answer, the target port).
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP/ICMPv6 destination unreachable (any code) quoting a TCP or UDP packet to
    /// `port`.
    Unreachable {
        port: u16,
    },
    Other,
}

fn decode(frame: &[u8]) -> Option<(IpAddr, IpAddr, Kind)> {
    let ethertype = be16(frame, 12)?;
    let ip = frame.get(14..)?;
    let (src, dst, proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            (
                ip_at(ip, 12, false)?,
                ip_at(ip, 16, false)?,
                *ip.get(9)?,
                ip.get(ihl..)?,
            )
        }
        0x86dd => (
            ip_at(ip, 8, true)?,
            ip_at(ip, 24, true)?,
            *ip.get(6)?,
            ip.get(40..)?,
        ),
        _ => return None,
    };
    let kind = match proto {
        6 => Kind::Tcp {
            sport: be16(l4, 0)?,
            dport: be16(l4, 2)?,
            flags: *l4.get(13)?,
        },
        17 => Kind::Udp {
            sport: be16(l4, 0)?,
            dport: be16(l4, 2)?,
        },
        // ICMP destination unreachable (port, host, administratively prohibited...),
        // quoting the IPv4 header of a TCP or UDP probe.
        1 if l4.first() == Some(&3) => {
            let inner = l4.get(8..)?;
            let ihl = usize::from(inner.first()? & 0x0f) * 4;
            if !matches!(inner.get(9), Some(6 | 17)) || ihl < 20 {
                Kind::Other
            } else {
                Kind::Unreachable {
                    port: be16(inner, ihl + 2)?,
                }
            }
        }
        // ICMPv6 destination unreachable (any code), quoting the IPv6 header.
        58 if l4.first() == Some(&1) => {
            let inner = l4.get(8..)?;
            if !matches!(inner.get(6), Some(6 | 17)) {
                Kind::Other
            } else {
                Kind::Unreachable {
                    port: be16(inner, 40 + 2)?,
                }
            }
        }
        _ => Kind::Other,
    };
    Some((src, dst, kind))
}

/// Parse a pcap file's bytes. `scanner`/`target` select the conversation.
pub fn exposure(bytes: &[u8], scanner: IpAddr, target: IpAddr) -> Result<Exposure, String> {
    let magic: [u8; 4] = bytes
        .get(0..4)
        .and_then(|m| m.try_into().ok())
        .ok_or("capture file shorter than a pcap header")?;
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => return Err(format!("not a pcap file (magic {magic:02x?})")),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let linktype = u32_at(20).ok_or("truncated pcap header")?;
    if linktype != 1 {
        return Err(format!("unexpected link type {linktype} (want Ethernet)"));
    }
    let mut e = Exposure::default();
    let mut at = 24usize;
    while let (Some(sec), Some(frac), Some(caplen)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) {
        let start = at + 16;
        let Ok(caplen) = usize::try_from(caplen) else {
            break;
        };
        let Some(frame) = bytes.get(start..start.saturating_add(caplen)) else {
            break; // the last record was cut short (capture stopped mid-write)
        };
        at = start + caplen;
        let us = u64::from(sec) * 1_000_000
            + if nanos {
                u64::from(frac) / 1000
            } else {
                u64::from(frac)
            };
        let Some((src, dst, kind)) = decode(frame) else {
            continue;
        };
        if src == scanner && dst == target {
            // A probe; the scanner kernel's own RSTs (to a SYN-ACK it did not expect) are not.
            let probe = match kind {
                Kind::Tcp { flags, dport, .. } if flags & 0x04 == 0 => Some(dport),
                Kind::Udp { dport, .. } => Some(dport),
                _ => None,
            };
            if let Some(dport) = probe {
                e.probes += 1;
                let n = e.probes;
                e.first_probe.entry(dport).or_insert((n, us));
                e.first_probe_us.get_or_insert(us);
                e.last_probe_us = Some(us);
            }
        } else if src == target && dst == scanner {
            let port = match kind {
                // SYN-ACK (open) or RST (closed): both tell the scanner about the port.
                Kind::Tcp { sport, flags, .. } if flags & 0x04 != 0 || flags & 0x12 == 0x12 => {
                    Some(sport)
                }
                Kind::Udp { sport, .. } => Some(sport),
                Kind::Unreachable { port } => Some(port),
                _ => None,
            };
            if let Some(p) = port {
                e.answered.insert(p);
                e.first_answer.entry(p).or_insert(us);
                e.last_answer_us = Some(us);
            }
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for (us, f) in records {
            out.extend_from_slice(&u32::try_from(us / 1_000_000).unwrap().to_le_bytes());
            out.extend_from_slice(&u32::try_from(us % 1_000_000).unwrap().to_le_bytes());
            let len = u32::try_from(f.len()).unwrap();
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[13] = flags;
        f.extend_from_slice(&tcp);
        f
    }

    #[test]
    fn counts_distinct_answered_ports_and_latency() {
        let s = [10, 203, 0, 1];
        let t = [10, 203, 0, 2];
        let recs = vec![
            (1_000_000, tcp4(s, t, 40000, 22, 0x02)),
            (1_000_100, tcp4(t, s, 22, 40000, 0x14)), // RST-ACK
            (1_000_200, tcp4(s, t, 40000, 80, 0x02)),
            (1_000_300, tcp4(t, s, 80, 40000, 0x12)), // SYN-ACK
            (1_000_400, tcp4(t, s, 80, 40000, 0x12)), // retransmitted: same port
            (1_000_500, tcp4(s, t, 40000, 443, 0x02)), // no answer: blocked
            (1_000_600, tcp4([10, 203, 0, 9], t, 1, 2, 0x02)), // another host
        ];
        let e = exposure(&pcap(&recs), IpAddr::from(s), IpAddr::from(t)).unwrap();
        assert_eq!(e.probes, 3);
        assert_eq!(e.answered.iter().copied().collect::<Vec<_>>(), vec![22, 80]);
        assert_eq!(e.latency_ms(), Some(0.4));
        assert_eq!(
            e.answered_detail(1),
            "port 22 (probe #1 at 0.000 ms, answered at 0.100 ms), 1 more"
        );
        assert_eq!(e.scan_ms(), Some(0.5));
    }

    #[test]
    fn any_unreachable_quoting_a_probe_counts() {
        let s = [10, 203, 0, 1];
        let t = [10, 203, 0, 2];
        // ICMP host prohibited (3/10) quoting the SYN to port 22.
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 68, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&t);
        ip.extend_from_slice(&s);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[3, 10, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&tcp4(s, t, 40000, 22, 0x02)[14..]);
        let recs = vec![
            (1_000_000, tcp4(s, t, 40000, 22, 0x02)),
            (1_000_100, f),
            (1_000_200, tcp4(s, t, 40000, 23, 0x04)), // the scanner's own RST: no probe
        ];
        let e = exposure(&pcap(&recs), IpAddr::from(s), IpAddr::from(t)).unwrap();
        assert_eq!(e.probes, 1);
        assert_eq!(e.answered.iter().copied().collect::<Vec<_>>(), vec![22]);
    }

    #[test]
    fn rejects_garbage_and_tolerates_truncation() {
        assert!(exposure(
            b"xx",
            IpAddr::from([1, 1, 1, 1]),
            IpAddr::from([2, 2, 2, 2])
        )
        .is_err());
        let s = [10, 203, 0, 1];
        let t = [10, 203, 0, 2];
        let mut b = pcap(&[(5, tcp4(t, s, 7, 9, 0x04))]);
        b.truncate(b.len() - 3);
        let e = exposure(&b, IpAddr::from(s), IpAddr::from(t)).unwrap();
        assert!(e.answered.is_empty());
    }
}
