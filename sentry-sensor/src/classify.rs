//! TCP flag combinations → [`ScanKind`].
//!
//! The detection chain never copies a segment of one of this host's flows (conntrack calls
//! those established or related and the chain returns them first), so what arrives
//! carrying ACK belongs to no flow the host knows. Two shapes of those are probes: a bare
//! ACK (`nmap -sA`, `-sW`) and FIN+ACK (`nmap -sM`, Maimon); they are reported as
//! [`ScanKind::Ack`] and [`ScanKind::Maimon`], kinds PortSentry never saw, which the
//! enforcer only logs unless BLOCK_OTHER_SCANS=1 (a real client's stale flow after a reboot
//! or a conntrack flush sends the same segments). Every other ACK-bearing segment (SYN/ACK,
//! data, RST/ACK) and every RST — what a host sends when *our* packet was unwelcome — never
//! counts. ECE and CWR (ECN) are ignored for classification so that an ECN-capable SYN is
//! a SYN.

use sentry_proto::ScanKind;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
/// The six classic flags; ECE (0x40) and CWR (0x80) are masked off.
pub const CLASSIC: u8 = 0x3f;

/// Classify a TCP flag byte. `None`: not a probe (RST, or ACK other than a bare ACK or
/// FIN+ACK).
pub fn classify_tcp(flags: u8) -> Option<ScanKind> {
    let f = flags & CLASSIC;
    if f == ACK {
        return Some(ScanKind::Ack);
    }
    if f == FIN | ACK {
        return Some(ScanKind::Maimon);
    }
    if f & (ACK | RST) != 0 {
        return None;
    }
    Some(match f {
        SYN => ScanKind::Syn,
        FIN => ScanKind::Fin,
        0 => ScanKind::Null,
        x if x == FIN | PSH | URG => ScanKind::Xmas,
        other => ScanKind::Oddball { flags: other },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_proto::{BlockRequest, Mode, Protocol};
    use std::net::{IpAddr, Ipv4Addr};

    /// Every one of the 256 flag bytes: exactly the documented class, and every reported
    /// kind passes the enforcer's validation.
    #[test]
    fn every_flag_combination() {
        let mut counts = std::collections::HashMap::new();
        for flags in 0u8..=255 {
            let got = classify_tcp(flags);
            let f = flags & CLASSIC;
            let expected = if f == ACK {
                Some(ScanKind::Ack)
            } else if f == FIN | ACK {
                Some(ScanKind::Maimon)
            } else if f & ACK != 0 || f & RST != 0 {
                None
            } else if f == SYN {
                Some(ScanKind::Syn)
            } else if f == FIN {
                Some(ScanKind::Fin)
            } else if f == 0 {
                Some(ScanKind::Null)
            } else if f == FIN | PSH | URG {
                Some(ScanKind::Xmas)
            } else {
                Some(ScanKind::Oddball { flags: f })
            };
            assert_eq!(got, expected, "flags {flags:#04x}");
            *counts.entry(got.map(|k| k.as_str())).or_insert(0u32) += 1;
            if let Some(scan) = got {
                let req = BlockRequest {
                    seq: 1,
                    source: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                    protocol: Protocol::Tcp,
                    port: 23,
                    scan,
                    mode: Mode::Stcp,
                    distinct_ports: 1,
                    first_seen_ms: 1,
                    last_seen_ms: 1,
                    ip_options: false,
                };
                assert_eq!(req.validate(1), Ok(()), "flags {flags:#04x}");
            }
        }
        // 64 classic combinations × 4 ECN variants; ACK or RST set in 48 of the 64, two
        // of which (ACK, FIN+ACK) are probes.
        assert_eq!(counts[&None], 46 * 4);
        assert_eq!(counts[&Some("ack")], 4);
        assert_eq!(counts[&Some("maimon")], 4);
        assert_eq!(counts[&Some("syn")], 4);
        assert_eq!(counts[&Some("fin")], 4);
        assert_eq!(counts[&Some("null")], 4);
        assert_eq!(counts[&Some("xmas")], 4);
        assert_eq!(counts[&Some("oddball")], 12 * 4);
    }

    #[test]
    fn named_cases() {
        assert_eq!(classify_tcp(SYN), Some(ScanKind::Syn));
        assert_eq!(classify_tcp(SYN | 0x40 | 0x80), Some(ScanKind::Syn)); // ECN SYN
        assert_eq!(classify_tcp(SYN | ACK), None); // reply to our own connect
        assert_eq!(classify_tcp(RST), None);
        assert_eq!(classify_tcp(RST | ACK), None);
        assert_eq!(classify_tcp(ACK), Some(ScanKind::Ack)); // nmap -sA, -sW
        assert_eq!(classify_tcp(ACK | 0x40), Some(ScanKind::Ack));
        assert_eq!(classify_tcp(FIN | ACK), Some(ScanKind::Maimon)); // nmap -sM
        assert_eq!(classify_tcp(PSH | ACK), None); // data of a flow we do not know
        assert_eq!(classify_tcp(FIN | PSH | ACK), None);
        assert_eq!(classify_tcp(FIN), Some(ScanKind::Fin));
        assert_eq!(classify_tcp(0), Some(ScanKind::Null));
        assert_eq!(classify_tcp(FIN | PSH | URG), Some(ScanKind::Xmas));
        assert_eq!(
            classify_tcp(SYN | FIN),
            Some(ScanKind::Oddball { flags: SYN | FIN })
        );
        assert_eq!(
            classify_tcp(PSH | URG),
            Some(ScanKind::Oddball { flags: PSH | URG })
        );
        assert_eq!(classify_tcp(URG), Some(ScanKind::Oddball { flags: URG }));
        assert_eq!(classify_tcp(PSH), Some(ScanKind::Oddball { flags: PSH }));
    }
}
