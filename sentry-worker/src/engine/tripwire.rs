//! The in-kernel first hit (SCAN_TRIGGER=0 with BLOCK_*=1): the detection chain puts a
//! probing source into `hit4`/`hit6` and drops the probe, so not even the first port
//! answers ([`sentry_enforcer::kernel::table`]). The enforcer stays the one that decides: it takes back a
//! kernel-made block its judge refuses (ignored, never-block, over budget, ...), and it
//! audits a kernel-made block the sensor never reported (the sensor was down, or its copy
//! was lost), reading the map's elements — never a packet.

use std::net::IpAddr;
use std::time::Duration;

use sentry_proto::{BlockRequest, Decision, Mode, Protocol, ScanKind};

use super::Engine;
use crate::audit::Peer;
use crate::control::metrics::ErrorKind;
use crate::time::WallUs;
use sentry_enforcer::kernel::netlink::DumpElem;
use sentry_enforcer::kernel::table::{Tripwire, HIT_V4, HIT_V6};

/// A kernel-made element younger than this is left to the sensor's report, which normally
/// arrives within milliseconds (the copy goes out with the drop).
pub const REPORT_GRACE: Duration = Duration::from_millis(1500);

/// Most kernel-made blocks judged in one pass (one a second, under the engine lock): each
/// is a full decision with its journal write, and under a flood whose reports the sensor's
/// queue dropped there can be thousands; the rest wait for the next pass (the kernel keeps
/// dropping their sources meanwhile, for up to the map's timeout).
pub const AUDITS_PER_PASS: usize = 64;

/// The audit record of a block the kernel made on its own names this peer: uid 0, pid 0.
pub const KERNEL_PEER: Peer = Peer { uid: 0, pid: 0 };

/// One map element: the source and its probe (protocol, port, TCP flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHit {
    pub source: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub flags: u8,
    /// How long ago the kernel added it.
    pub age: Duration,
}

/// The probe of a map element, from its data (`inet_proto . inet_service . tcp_flag`,
/// each field in its own 4-byte register). `None` for anything else: the map is ours, but
/// what the kernel hands back is still checked, never trusted.
pub fn parse_hit(e: &DumpElem, timeout: Duration) -> Option<KernelHit> {
    let d = e.data.as_deref()?;
    if d.len() != 12 {
        return None;
    }
    let protocol = match d.first()? {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    let port = u16::from_be_bytes([*d.get(4)?, *d.get(5)?]);
    if port == 0 {
        return None;
    }
    let age = timeout.saturating_sub(e.expires.unwrap_or(timeout));
    Some(KernelHit {
        source: e.addr,
        protocol,
        port,
        flags: *d.get(8)?,
        age,
    })
}

/// The scan kind of a probe's TCP flags (as the sensor names them).
pub fn scan_of(h: &KernelHit) -> ScanKind {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const PSH: u8 = 0x08;
    const URG: u8 = 0x20;
    match (h.protocol, h.flags) {
        (Protocol::Udp, _) => ScanKind::Udp,
        (_, SYN) => ScanKind::Syn,
        (_, FIN) => ScanKind::Fin,
        (_, 0) => ScanKind::Null,
        (_, f) if f == FIN | PSH | URG => ScanKind::Xmas,
        (_, f) => ScanKind::Oddball { flags: f },
    }
}

impl Engine {
    /// The first-hit settings in effect (none without the native set).
    pub fn tripwire(&self) -> Option<Tripwire> {
        Tripwire::from_config(&self.cfg, self.exec.backends().nft)
    }

    /// The addresses of this host's state the kernel must never block besides its own
    /// (matched there with `fib saddr type local`): its subnets' network and broadcast
    /// addresses, and its infrastructure (unless NEVER_BLOCK_INFRASTRUCTURE=0).
    pub fn never_block_addrs(&self) -> Vec<IpAddr> {
        // getifaddrs(3) names an address without a broadcast address its own broadcast:
        // own addresses are matched apart (`fib saddr type local`).
        let own: std::collections::HashSet<&IpAddr> = self.never.own_addresses().collect();
        let mut v: Vec<IpAddr> = self
            .never
            .broadcasts()
            .map(|b| IpAddr::V4(*b))
            .filter(|a| !own.contains(a))
            .collect();
        if self.cfg.never_block_infrastructure {
            v.extend(self.never.infrastructure().into_iter().map(|(a, _)| a));
        }
        v
    }

    /// The enforcer's block sets are in the table (FIREWALL="nftables" and its backend
    /// came up): `Some(BLOCK_PREFIX6)`.
    pub fn native_sets(&self) -> Option<u8> {
        self.exec.backends().nft.then_some(self.cfg.block_prefix6)
    }

    /// Whether the never-block set changed since the daemon last asked (the kernel's copy
    /// of it is then rebuilt).
    pub fn take_never_changed(&mut self) -> bool {
        std::mem::take(&mut self.never_changed)
    }

    /// After a decision about `source`: a kernel-made block the judge did not confirm is
    /// taken back at once (a blocked source is in the enforcer's own set from now on, with
    /// BLOCK_TIMEOUT; its map element just runs out).
    pub(super) fn settle_kernel_hit(&mut self, source: IpAddr, d: Decision) {
        if matches!(d, Decision::Blocked | Decision::AlreadyBlocked) || self.tripwire().is_none() {
            return;
        }
        if let Err(e) = self.exec.nft_forget(&self.cfg, HIT_V4, HIT_V6, source) {
            self.error(ErrorKind::KernelHit, format!("cannot take back the kernel's first-hit block of {source} ({e}); it runs out by itself"));
        }
    }

    /// A block of `addr` (or, with `prefix6`, of that IPv6 network) ended: delete the
    /// kernel's first-hit elements it covers, so the source is not dropped on.
    pub(super) fn forget_kernel_hits(&mut self, addr: IpAddr, prefix6: Option<u8>) {
        let Some(t) = self.tripwire() else {
            return;
        };
        let mut gone = vec![addr];
        if let (IpAddr::V6(net), Some(len)) = (addr, prefix6) {
            let limit = usize::try_from(t.size).unwrap_or(usize::MAX);
            match self.exec.nft_map_elements(&self.cfg, HIT_V6, limit) {
                Ok(v) => gone.extend(v.into_iter().map(|e| e.addr).filter(|a| match a {
                    IpAddr::V6(a) => policy::mask6(*a, len) == net,
                    IpAddr::V4(_) => false,
                })),
                Err(e) => {
                    self.error(
                        ErrorKind::KernelHit,
                        format!("cannot read the kernel's first-hit map {HIT_V6}: {e}"),
                    );
                }
            }
        }
        for a in gone {
            if let Err(e) = self.exec.nft_forget(&self.cfg, HIT_V4, HIT_V6, a) {
                self.error(ErrorKind::KernelHit, format!("cannot delete the kernel's first-hit element of {a} ({e}); it runs out by itself"));
            }
        }
    }

    /// Audit the blocks the kernel made that no report explained: each map element older
    /// than [`REPORT_GRACE`] whose source is not blocked goes through the judge as a
    /// one-probe request from [`KERNEL_PEER`] (mode: stealth when the port is a stealth
    /// port of an announced stealth mode, else advanced). Returns how many were decided.
    pub fn audit_kernel_hits(&mut self, modes: &[Mode], now: WallUs) -> usize {
        let Some(t) = self.tripwire() else {
            return 0;
        };
        let limit = usize::try_from(t.size).unwrap_or(usize::MAX);
        let mut elems = Vec::new();
        for map in [HIT_V4, HIT_V6] {
            match self.exec.nft_map_elements(&self.cfg, map, limit) {
                Ok(v) => elems.extend(v),
                Err(e) => {
                    self.error(
                        ErrorKind::KernelHit,
                        format!("cannot read the kernel's first-hit map {map}: {e}"),
                    );
                }
            }
        }
        let mut decided = 0;
        for e in &elems {
            let Some(h) = parse_hit(e, t.timeout) else {
                self.error(
                    ErrorKind::KernelHit,
                    format!("unreadable first-hit element for {}", e.addr),
                );
                continue;
            };
            let target = self.block_target(h.source).addr;
            if h.age < REPORT_GRACE || self.is_blocked(target) || self.is_blocked(h.source) {
                continue;
            }
            let Some(mode) = hit_mode(&self.cfg, modes, &h) else {
                // The sensor announced no mode that watches this port any more (its
                // modes changed): nothing to judge it by, so it is taken back.
                self.settle_kernel_hit(h.source, Decision::LogOnly);
                continue;
            };
            let at = now
                .ms()
                .0
                .saturating_sub(u64::try_from(h.age.as_millis()).unwrap_or(0));
            let req = BlockRequest {
                seq: 0,
                source: h.source,
                protocol: h.protocol,
                port: h.port,
                scan: scan_of(&h),
                mode,
                distinct_ports: 1,
                first_seen_ms: at,
                last_seen_ms: at,
                ip_options: false,
            };
            let checked = match crate::session::check_request(req, modes, now.ms()) {
                Ok(c) => c,
                Err((_, why)) => {
                    self.error(
                        ErrorKind::KernelHit,
                        format!("kernel first hit from {} not auditable: {why}", h.source),
                    );
                    continue;
                }
            };
            self.log.notice(&format!(
                "adminalert: kernel first hit from {} ({} port {}) that the sensor did not report; judged now",
                h.source,
                h.protocol.as_upper(),
                h.port
            ));
            self.decide(&checked, KERNEL_PEER, now);
            decided += 1;
            if decided >= AUDITS_PER_PASS {
                break;
            }
        }
        decided
    }
}

/// The mode a kernel hit was caught by: the stealth mode when the port is one of its
/// ports, else the advanced mode; `None` when neither is announced.
fn hit_mode(cfg: &policy::Config, modes: &[Mode], h: &KernelHit) -> Option<Mode> {
    let (stealth, advanced, ports) = match h.protocol {
        Protocol::Tcp => (Mode::Stcp, Mode::Atcp, &cfg.tcp_ports),
        Protocol::Udp => (Mode::Sudp, Mode::Audp, &cfg.udp_ports),
        // Never in the map: parse_hit takes TCP and UDP only, and the chain's first hit
        // sees nothing else (SCTP and IP-protocol probes are only copied).
        Protocol::Sctp | Protocol::Ip => return None,
    };
    if modes.contains(&stealth) && ports.contains(h.port) {
        Some(stealth)
    } else if modes.contains(&advanced) {
        Some(advanced)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elem(data: Option<Vec<u8>>, expires_ms: u64) -> DumpElem {
        DumpElem {
            addr: "192.0.2.9".parse().unwrap(),
            data,
            expires: Some(Duration::from_millis(expires_ms)),
        }
    }

    fn regs(proto: u8, port: u16, flags: u8) -> Vec<u8> {
        let p = port.to_be_bytes();
        vec![proto, 0, 0, 0, p[0], p[1], 0, 0, flags, 0, 0, 0]
    }

    #[test]
    fn map_elements_become_probes_and_garbage_is_refused() {
        let t = Duration::from_secs(120);
        let h = parse_hit(&elem(Some(regs(6, 23, 0x02)), 118_000), t).unwrap();
        assert_eq!(
            (h.protocol, h.port, h.age),
            (Protocol::Tcp, 23, Duration::from_secs(2))
        );
        assert_eq!(scan_of(&h), ScanKind::Syn);
        let u = parse_hit(&elem(Some(regs(17, 53, 0)), 120_000), t).unwrap();
        assert_eq!(scan_of(&u), ScanKind::Udp);
        assert_eq!(u.age, Duration::ZERO);
        let x = parse_hit(&elem(Some(regs(6, 80, 0x29)), 1), t).unwrap();
        assert_eq!(scan_of(&x), ScanKind::Xmas);
        let o = parse_hit(&elem(Some(regs(6, 80, 0x03)), 1), t).unwrap();
        assert_eq!(scan_of(&o), ScanKind::Oddball { flags: 3 });
        // Not a map element, another protocol, port 0, a short register file.
        assert!(parse_hit(&elem(None, 1), t).is_none());
        assert!(parse_hit(&elem(Some(regs(1, 23, 0)), 1), t).is_none());
        assert!(parse_hit(&elem(Some(regs(6, 0, 2)), 1), t).is_none());
        assert!(parse_hit(&elem(Some(vec![6, 0, 0]), 1), t).is_none());
    }

    #[test]
    fn a_hit_is_judged_in_the_mode_that_watches_its_port() {
        let cfg = policy::Config::parse("TCP_PORTS=\"23\"\n", std::path::Path::new("c")).unwrap();
        let h = |port| KernelHit {
            source: "192.0.2.9".parse().unwrap(),
            protocol: Protocol::Tcp,
            port,
            flags: 2,
            age: Duration::from_secs(2),
        };
        let all = [Mode::Stcp, Mode::Atcp];
        assert_eq!(hit_mode(&cfg, &all, &h(23)), Some(Mode::Stcp));
        assert_eq!(hit_mode(&cfg, &all, &h(24)), Some(Mode::Atcp));
        assert_eq!(hit_mode(&cfg, &[Mode::Stcp], &h(24)), None);
        assert_eq!(hit_mode(&cfg, &[Mode::Udp], &h(23)), None);
    }
}
