//! Fuzz the packet parser (hostile bytes straight off the wire) and the classifier behind
//! it. Invariants: never panics; a probe's addresses are of the packet's IP version; an
//! IPv6 source is never IPv4-mapped; the TCP classification of every probe passes the
//! enforcer's validation, and so do SCTP INIT and IP-protocol probes.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sentry_proto::{BlockRequest, Mode, Protocol, ScanKind};
use sentry_sensor::classify::classify_tcp;
use sentry_sensor::packet::{parse, Parsed, Transport};

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Probe(p)) = parse(data) else {
        return;
    };
    let v6 = data.first().is_some_and(|b| b >> 4 == 6);
    assert_eq!(p.src.is_ipv6(), v6);
    assert_eq!(p.dst.is_ipv6(), v6);
    if let IpAddr::V6(s) = p.src {
        assert!(s.to_ipv4_mapped().is_none());
    }
    if let Transport::Tcp { flags, dst_port, .. } = p.transport {
        if let (Some(scan), Some(port)) = (classify_tcp(flags), std::num::NonZeroU16::new(dst_port)) {
            let req = BlockRequest {
                seq: 1,
                source: p.src,
                protocol: Protocol::Tcp,
                port: port.get(),
                scan,
                mode: Mode::Atcp,
                distinct_ports: 1,
                first_seen_ms: 1,
                last_seen_ms: 1,
                ip_options: p.ip_options,
            };
            assert_eq!(req.validate(1), Ok(()));
        }
    }
    let other = match p.transport {
        Transport::Sctp { init: true, .. } if p.dst_port() != 0 => {
            Some((Protocol::Sctp, ScanKind::SctpInit))
        }
        Transport::Other { .. } => Some((Protocol::Ip, ScanKind::IpProtocol)),
        _ => None,
    };
    if let Some((protocol, scan)) = other {
        let req = BlockRequest {
            seq: 1,
            source: p.src,
            protocol,
            port: p.dst_port(),
            scan,
            mode: Mode::Atcp,
            distinct_ports: 1,
            first_seen_ms: 1,
            last_seen_ms: 1,
            ip_options: p.ip_options,
        };
        assert_eq!(req.validate(1), Ok(()));
    }
});
