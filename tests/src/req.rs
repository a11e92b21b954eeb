//! A builder for [`BlockRequest`]s with valid defaults: seen now, one distinct port, and
//! scan kind and mode consistent with the protocol (TCP: SYN, `-stcp`; UDP: `-sudp`).
//!
//! `Req::tcp("192.0.2.1").port(22).mode(Mode::Atcp).seq(3).build()`

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use sentry_proto::{BlockRequest, Mode, Protocol, ScanKind, SensorFrame};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Req(BlockRequest);

impl Req {
    /// A request about `source` for `protocol`, with valid defaults for everything else
    /// (port 22 for TCP, 53 for UDP, 80 for an SCTP INIT, protocol 253 for an IP-protocol
    /// probe; sequence number 1).
    pub fn new(source: impl Into<IpAddr>, protocol: Protocol) -> Req {
        let now = now_ms();
        let (scan, mode, port) = match protocol {
            Protocol::Tcp => (ScanKind::Syn, Mode::Stcp, 22),
            Protocol::Udp => (ScanKind::Udp, Mode::Sudp, 53),
            Protocol::Sctp => (ScanKind::SctpInit, Mode::Atcp, 80),
            Protocol::Ip => (ScanKind::IpProtocol, Mode::Atcp, 253),
        };
        Req(BlockRequest {
            seq: 1,
            source: source.into(),
            protocol,
            port,
            scan,
            mode,
            distinct_ports: 1,
            first_seen_ms: now,
            last_seen_ms: now,
            ip_options: false,
        })
    }

    /// A TCP SYN from `source` (an address, as text) seen by `-stcp`.
    pub fn tcp(source: &str) -> Req {
        Req::new(parse(source), Protocol::Tcp)
    }

    /// A UDP datagram from `source` seen by `-sudp`.
    pub fn udp(source: &str) -> Req {
        Req::new(parse(source), Protocol::Udp)
    }

    pub fn seq(mut self, seq: u64) -> Req {
        self.0.seq = seq;
        self
    }

    pub fn port(mut self, port: u16) -> Req {
        self.0.port = port;
        self
    }

    pub fn mode(mut self, mode: Mode) -> Req {
        self.0.mode = mode;
        self
    }

    pub fn scan(mut self, scan: ScanKind) -> Req {
        self.0.scan = scan;
        self
    }

    /// Override the protocol alone (scan and mode stay): for inconsistent requests.
    pub fn protocol(mut self, protocol: Protocol) -> Req {
        self.0.protocol = protocol;
        self
    }

    pub fn distinct_ports(mut self, n: u32) -> Req {
        self.0.distinct_ports = n;
        self
    }

    /// First seen `ms` before last seen.
    pub fn seen_for(mut self, ms: u64) -> Req {
        self.0.first_seen_ms = self.0.last_seen_ms.saturating_sub(ms);
        self
    }

    /// Shift the last-seen time by `ms` (into the future for positive values).
    pub fn last_seen_in(mut self, ms: i64) -> Req {
        self.0.last_seen_ms = self.0.last_seen_ms.saturating_add_signed(ms);
        self
    }

    pub fn ip_options(mut self, yes: bool) -> Req {
        self.0.ip_options = yes;
        self
    }

    pub fn build(self) -> BlockRequest {
        self.0
    }

    /// The request as a sensor frame.
    pub fn frame(self) -> SensorFrame {
        SensorFrame::Block(self.0)
    }
}

fn parse(source: &str) -> IpAddr {
    source
        .parse()
        .unwrap_or_else(|e| panic!("not an address: {source:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_for_both_protocols() {
        for r in [Req::tcp("192.0.2.1"), Req::udp("2001:db8::1")] {
            let r = r.build();
            assert_eq!(r.validate(now_ms()), Ok(()), "{r:?}");
            assert_eq!(r.distinct_ports, 1);
            assert_eq!(r.first_seen_ms, r.last_seen_ms);
        }
    }

    #[test]
    fn setters_set() {
        let r = Req::tcp("192.0.2.1")
            .port(143)
            .mode(Mode::Atcp)
            .seq(3)
            .build();
        assert_eq!((r.port, r.mode, r.seq), (143, Mode::Atcp, 3));
        assert_eq!(r.validate(now_ms()), Ok(()));
        let bad = Req::tcp("192.0.2.1").protocol(Protocol::Udp).build();
        assert!(bad.validate(now_ms()).is_err());
    }
}
