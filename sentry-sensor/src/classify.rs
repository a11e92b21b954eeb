//! TCP flag combinations → [`ScanKind`].
//!
//! A segment carrying ACK is part of (or a reply within) a connection — including the
//! SYN/ACK, RST/ACK and plain ACKs answering this host's own outgoing connections — and
//! never counts. RST never counts either: it is what a host sends when *our* packet was
//! unwelcome. ECE and CWR (ECN) are ignored for classification so that an ECN-capable
//! SYN is a SYN.

use sentry_proto::ScanKind;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
/// The six classic flags; ECE (0x40) and CWR (0x80) are masked off.
pub const CLASSIC: u8 = 0x3f;

/// Classify a TCP flag byte. `None`: not a probe (ACK or RST set).
pub fn classify_tcp(flags: u8) -> Option<ScanKind> {
    let f = flags & CLASSIC;
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
            let expected = if f & ACK != 0 || f & RST != 0 {
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
        // 64 classic combinations × 4 ECN variants; ACK or RST set in 48 of the 64.
        assert_eq!(counts[&None], 48 * 4);
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
        assert_eq!(classify_tcp(ACK), None); // nmap -sA
        assert_eq!(classify_tcp(FIN | ACK), None);
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
