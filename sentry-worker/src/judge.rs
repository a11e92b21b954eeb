//! The judge: a request (a checked sensor probe, or a control block with its origin) and
//! a snapshot of the enforcer's state go in, a verdict with a typed reason (or with what
//! the block covers and the evidence it spends) comes out. No I/O, no clock, no mutation, so every rule of
//! the decision order is tested here without sockets or files, and an auditor reads the
//! whole policy in one function ([`judge`]).
//!
//! Order (first match wins): never-block set, ignore list, BLOCK_OTHER_SCANS = 0 for the
//! kinds PortSentry never reported (ACK-family, IP-protocol, SCTP INIT: logged and audited
//! `log_only` unless the key says block), BLOCK_TCP / BLOCK_UDP = 0, already blocked, BLOCK_RATE (with its single-probe and per-prefix shares), BLOCK_* = 2
//! (command only), MAX_BLOCKS (where better evidence evicts the weakest single-probe
//! block), nothing configured that blocks. Field validation happened before, in
//! [`crate::session`].
//!
//! Evidence: a SYN or a datagram needs no handshake, so its source can be forged for the
//! price of one packet. A request that saw several distinct ports from one source costs a
//! forger that many packets per forged source, and a completed TCP handshake cannot be
//! forged off-path at all. Budgets weigh that, so single forged packets cannot spend what
//! a real scanner should get.

use std::fmt;
use std::net::IpAddr;

use policy::{BlockMode, Config, IgnoreList, NeverBlock, NeverBlockReason};
use sentry_proto::{BlockRequest, Decision, Protocol, ScanKind};

use crate::audit::Level;

/// How hard a request's evidence is to forge, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Evidence {
    /// One packet to one port: forgeable for the price of that packet.
    SingleProbe,
    /// Several distinct ports from the source.
    Ports,
    /// A completed TCP handshake (basic `-tcp` mode): not forgeable off-path.
    Handshake,
}

impl Evidence {
    pub fn of(scan: ScanKind, distinct_ports: u32) -> Self {
        if scan == ScanKind::Connect {
            Self::Handshake
        } else if distinct_ports >= 2 {
            Self::Ports
        } else {
            Self::SingleProbe
        }
    }
}

/// Who asked for a block: the budgets each draws on are its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The local sensor (or the kernel's first hit it stands for): BLOCK_RATE with its
    /// single-probe and per-prefix shares, MAX_BLOCKS with eviction by evidence.
    Sensor,
    /// Root's `sentryctl block` (origin [`MANUAL_ORIGIN`]): the administrator's own,
    /// bounded by MAX_BLOCKS alone.
    Manual,
    /// Any other control client (the fleet bridge, other CONTROL_GROUP members): its own
    /// FLEET_MAX_BLOCKS and FLEET_BLOCK_RATE, never the sensor's budgets; at MAX_BLOCKS
    /// a local block with more evidence than one probe evicts the oldest of these.
    Fleet,
}

/// The origin name of root's `sentryctl block` (its default `--origin`).
pub const MANUAL_ORIGIN: &str = "manual";

impl Origin {
    /// The class of a block made for the origin name `name` (`None`: the sensor).
    pub fn of(name: Option<&str>) -> Self {
        match name {
            None => Self::Sensor,
            Some(n) if n == sentry_proto::ORIGIN_SENSOR => Self::Sensor,
            Some(MANUAL_ORIGIN) => Self::Manual,
            Some(_) => Self::Fleet,
        }
    }
}

/// The fleet's share of the table, for a [`Origin::Fleet`] request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetUsage {
    /// Active fleet blocks.
    pub active: usize,
    /// Fleet blocks started in the last minute.
    pub started: usize,
    /// The oldest active fleet block, which local multi-port evidence may evict.
    pub oldest: Option<IpAddr>,
}

/// The most of BLOCK_RATE that single-probe requests may use (the rest stays for better
/// evidence).
pub fn single_probe_share(block_rate: u32) -> usize {
    (block_rate as usize / 2).max(1)
}

/// The most of BLOCK_RATE that one /24 or /64 may use.
pub fn prefix_share(block_rate: u32) -> usize {
    (block_rate as usize / 4).max(1)
}

/// What the judge is asked to decide on. A control block is not a probe and is no longer
/// disguised as one: it has an address and an origin, nothing a sensor saw.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// A checked sensor request (or a kernel first hit standing for one): origin
    /// [`Origin::Sensor`], evidence from what the sensor saw.
    Probe(&'a BlockRequest),
    /// `sentryctl block` or another control client (the fleet bridge): never
    /// [`Origin::Sensor`] (the control server refuses that name).
    Control { addr: IpAddr, origin: Origin },
}

impl Request<'_> {
    /// The address the request is about.
    pub fn source(&self) -> IpAddr {
        match self {
            Self::Probe(r) => r.source,
            Self::Control { addr, .. } => *addr,
        }
    }

    /// Who asked: the budgets drawn on are that origin's.
    pub fn origin(&self) -> Origin {
        match self {
            Self::Probe(_) => Origin::Sensor,
            Self::Control { origin, .. } => *origin,
        }
    }

    /// How hard the request is to forge. A control client's block is more than a single
    /// probe: it cannot be forged with a packet.
    pub fn evidence(&self) -> Evidence {
        match self {
            Self::Probe(r) => Evidence::of(r.scan, r.distinct_ports),
            Self::Control { .. } => Evidence::Ports,
        }
    }

    /// The response the configuration sets. BLOCK_TCP governs control blocks (as it did
    /// when they were judged as TCP probes): an administrator who set BLOCK_TCP=0 or 2
    /// gets the same from `sentryctl block` and the fleet as from the sensor's TCP scans.
    fn mode(&self, cfg: &Config) -> BlockMode {
        match self {
            Self::Probe(r) => cfg.block_mode_for(scan_class(r.scan)),
            Self::Control { .. } => cfg.block_tcp,
        }
    }

    /// The protocol whose key is named in the reasons.
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::Probe(r) => r.scan.protocol(),
            Self::Control { .. } => Protocol::Tcp,
        }
    }

    /// The configuration key that sets the response (BLOCK_TCP for a control block).
    pub fn key(&self) -> &'static str {
        match self {
            Self::Probe(r) => block_key_for(r.scan),
            Self::Control { .. } => block_key(Protocol::Tcp),
        }
    }

    /// The probe kind, when there is one and it is of a kind PortSentry never reported.
    fn other_scan(&self) -> Option<ScanKind> {
        match self {
            Self::Probe(r) if r.scan.is_other() => Some(r.scan),
            _ => None,
        }
    }
}

/// What a block of one source covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// The address, or the IPv6 network's address.
    pub addr: IpAddr,
    /// For an IPv6 network block: its BLOCK_PREFIX6 length.
    pub prefix6: Option<u8>,
}

/// What a block of `source` covers: its BLOCK_PREFIX6 network for IPv6 (an IPv6 host owns
/// a whole /64 and can take a new address from it per probe), unless that network holds
/// something never blocked or on the ignore list; then the address alone.
pub fn block_target(
    cfg: &Config,
    never: &NeverBlock,
    ignore: &IgnoreList,
    source: IpAddr,
) -> Target {
    let len = cfg.block_prefix6;
    let single = Target {
        addr: source,
        prefix6: None,
    };
    match source {
        IpAddr::V6(a) if len < 128 => {
            if never.check_net6(a, len).is_some() || ignore.overlaps_net6(a, len) {
                return single;
            }
            Target {
                addr: IpAddr::V6(policy::mask6(a, len)),
                prefix6: Some(len),
            }
        }
        _ => single,
    }
}

/// What the judge needs to know about a rate window ([`crate::engine::rate`]) for one
/// request. Defined here, not by the window, so that the judge depends on nothing of the
/// engine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub all: usize,
    pub single_probe: usize,
    /// Single-probe blocks in the source's /24 or /64.
    pub same_prefix: usize,
}

/// What the judge looks at besides the request. Built by the engine for each decision.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub cfg: &'a Config,
    pub never: &'a NeverBlock,
    pub ignore: &'a IgnoreList,
    /// The source already has an active block.
    pub already_blocked: bool,
    /// The fleet's share in use.
    pub fleet: FleetUsage,
    /// Blocks (and commands) started in the last minute, for BLOCK_RATE: all of them, those
    /// on single-probe evidence, and those in the request source's /24 or /64.
    pub started: Usage,
    /// The oldest single-probe block, which better evidence may evict at MAX_BLOCKS.
    pub weakest_block: Option<IpAddr>,
    /// Active blocks, for MAX_BLOCKS.
    pub active_blocks: usize,
    /// An action that stops traffic (nftables, blackhole route, KILL_ROUTE,
    /// KILL_HOSTS_DENY) is configured.
    pub blocking_configured: bool,
}

/// The judge's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing is done; the reason says why.
    Unchanged(Unchanged),
    /// BLOCK_* = 2: run KILL_RUN_CMD only (it spends the origin's rate as `evidence`).
    RunCommand { evidence: Evidence },
    /// Run every configured blocking action.
    Block(Blocking),
    /// MAX_BLOCKS is reached: end block `victim` (single-probe or fleet), then block.
    Evict { victim: IpAddr, block: Blocking },
}

/// What a block the judge allowed needs, decided once here so the engine does not
/// derive it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// The request's evidence, which the origin's rate window records.
    pub evidence: Evidence,
    /// What the block covers (see [`block_target`]).
    pub target: Target,
}

/// Why a request changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unchanged {
    /// Loopback, multicast, own address, ...: the never-block set's reason.
    NeverBlock(NeverBlockReason),
    Ignored,
    /// BLOCK_TCP / BLOCK_UDP = 0.
    LogOnly(Protocol),
    /// BLOCK_OTHER_SCANS = 0 and the probe is of a kind PortSentry never reported.
    OtherScan(ScanKind),
    AlreadyBlocked,
    RateLimited {
        per_minute: u32,
    },
    /// Single-probe requests used their share of BLOCK_RATE.
    SingleProbeShare {
        share: usize,
    },
    /// The source's /24 or /64 used its share of BLOCK_RATE.
    PrefixShare {
        share: usize,
    },
    Capped {
        max: u32,
    },
    /// Fleet blocks used FLEET_BLOCK_RATE.
    FleetRate {
        per_minute: u32,
    },
    /// Fleet blocks fill FLEET_MAX_BLOCKS.
    FleetCapped {
        max: u32,
    },
    /// BLOCK_* = 2 without a KILL_RUN_CMD.
    NoCommand(Protocol),
    /// BLOCK_* = 1 with no action configured at all.
    NoAction(Protocol),
}

/// The configuration key that sets the response for `p`.
pub fn block_key(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "BLOCK_TCP",
        Protocol::Udp => "BLOCK_UDP",
        Protocol::Sctp | Protocol::Ip => "BLOCK_OTHER_SCANS",
    }
}

/// The configuration key that sets the response for a probe of kind `scan`.
pub fn block_key_for(scan: ScanKind) -> &'static str {
    if scan.is_other() {
        "BLOCK_OTHER_SCANS"
    } else {
        block_key(scan.protocol())
    }
}

impl Unchanged {
    pub fn decision(&self) -> Decision {
        match self {
            Self::NeverBlock(_) => Decision::NeverBlock,
            Self::Ignored => Decision::Ignored,
            Self::LogOnly(_) | Self::OtherScan(_) | Self::NoCommand(_) | Self::NoAction(_) => {
                Decision::LogOnly
            }
            Self::AlreadyBlocked => Decision::AlreadyBlocked,
            Self::RateLimited { .. }
            | Self::SingleProbeShare { .. }
            | Self::PrefixShare { .. }
            | Self::FleetRate { .. } => Decision::RateLimited,
            Self::Capped { .. } | Self::FleetCapped { .. } => Decision::Capped,
        }
    }

    /// The log line for this decision about `addr` (PortSentry's wording where PortSentry
    /// had one), or none.
    pub fn line(&self, addr: IpAddr) -> Option<(Level, String)> {
        let line = match self {
            Self::NeverBlock(why) => (
                Level::Notice,
                format!("attackalert: Host: {addr} is never blocked ({why}). Ignoring"),
            ),
            Self::Ignored => (
                Level::Notice,
                format!("attackalert: Host: {addr} is on the ignore list. Ignoring"),
            ),
            Self::LogOnly(p) => (
                Level::Notice,
                format!(
                    "attackalert: Ignoring {} response per configuration file setting.",
                    p.as_upper()
                ),
            ),
            Self::OtherScan(scan) => (
                Level::Notice,
                format!(
                    "adminalert: {scan} probe from {addr} logged only (BLOCK_OTHER_SCANS=0)"
                ),
            ),
            Self::AlreadyBlocked => (
                Level::Notice,
                format!("attackalert: Host: {addr} is already blocked. Ignoring"),
            ),
            Self::RateLimited { per_minute } => (
                Level::Warning,
                format!(
                    "adminalert: block rate limit (BLOCK_RATE={per_minute}/min) reached; not blocking {addr}"
                ),
            ),
            Self::Capped { max } => (
                Level::Warning,
                format!("adminalert: MAX_BLOCKS={max} reached; not blocking {addr}"),
            ),
            Self::SingleProbeShare { .. } | Self::PrefixShare { .. } | Self::FleetRate { .. } => (
                Level::Warning,
                format!("adminalert: block rate limit ({self}); not blocking {addr}"),
            ),
            Self::FleetCapped { max } => (
                Level::Warning,
                format!("adminalert: FLEET_MAX_BLOCKS={max} reached; not blocking {addr}"),
            ),
            Self::NoCommand(_) | Self::NoAction(_) => return None,
        };
        Some(line)
    }
}

/// The audit record's `reason`.
impl fmt::Display for Unchanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeverBlock(why) => write!(f, "{why}"),
            Self::Ignored => f.write_str("on the ignore list"),
            Self::LogOnly(p) => write!(f, "{}=0", block_key(*p)),
            Self::OtherScan(scan) => write!(f, "BLOCK_OTHER_SCANS=0 ({scan} probe)"),
            Self::AlreadyBlocked => f.write_str("already blocked"),
            Self::RateLimited { per_minute } => {
                write!(f, "BLOCK_RATE={per_minute} per minute reached")
            }
            Self::Capped { max } => write!(f, "MAX_BLOCKS={max} reached"),
            Self::SingleProbeShare { share } => write!(
                f,
                "single-probe requests used their share of BLOCK_RATE ({share} per minute)"
            ),
            Self::PrefixShare { share } => write!(
                f,
                "single-probe requests from this /24 or /64 used their share of BLOCK_RATE ({share} per minute)"
            ),
            Self::FleetRate { per_minute } => {
                write!(f, "FLEET_BLOCK_RATE={per_minute} per minute reached")
            }
            Self::FleetCapped { max } => write!(f, "FLEET_MAX_BLOCKS={max} reached"),
            Self::NoCommand(p) => {
                write!(f, "{}=2 but no KILL_RUN_CMD is configured", block_key(*p))
            }
            Self::NoAction(p) => {
                write!(
                    f,
                    "{}=1 but no blocking action is configured",
                    block_key(*p)
                )
            }
        }
    }
}

/// Decide on `req` (a probe's protocol is `scan.protocol()`; validation checked that the
/// request's protocol agrees).
pub fn judge(req: Request<'_>, f: &Facts<'_>) -> Verdict {
    use Verdict::Unchanged as No;
    let (source, protocol, evidence) = (req.source(), req.protocol(), req.evidence());
    if let Some(why) = f.never.check(source) {
        return No(Unchanged::NeverBlock(why));
    }
    if f.ignore.contains(source) {
        return No(Unchanged::Ignored);
    }
    // The kinds PortSentry never reported answer to BLOCK_OTHER_SCANS alone (an ACK probe
    // with BLOCK_TCP=1 is still only logged by default); with the key set they go through
    // every rule below like any other probe, rate limits and MAX_BLOCKS included.
    let mode = req.mode(f.cfg);
    if let (BlockMode::LogOnly, Some(scan)) = (mode, req.other_scan()) {
        return No(Unchanged::OtherScan(scan));
    }
    if mode == BlockMode::LogOnly {
        return No(Unchanged::LogOnly(protocol));
    }
    if mode == BlockMode::Block && f.already_blocked {
        return No(Unchanged::AlreadyBlocked);
    }
    if let Some(no) = over_budget(req.origin(), evidence, f) {
        return No(no);
    }
    if mode == BlockMode::CommandOnly {
        return if f.cfg.kill_run_cmd.is_some() {
            Verdict::RunCommand { evidence }
        } else {
            No(Unchanged::NoCommand(protocol))
        };
    }
    if !f.blocking_configured && f.cfg.kill_run_cmd.is_none() {
        return No(Unchanged::NoAction(protocol));
    }
    let block = Blocking {
        evidence,
        target: block_target(f.cfg, f.never, f.ignore, source),
    };
    if f.active_blocks >= f.cfg.max_blocks as usize {
        // Only local evidence of more than one probe evicts: the oldest single-probe
        // block first, else the oldest fleet block (a compromised fleet can then fill
        // at most its own share, never lock local blocking out).
        let victim = match (req.origin(), evidence) {
            (Origin::Sensor, e) if e > Evidence::SingleProbe => f.weakest_block.or(f.fleet.oldest),
            _ => None,
        };
        return match victim {
            Some(victim) => Verdict::Evict { victim, block },
            None => No(Unchanged::Capped {
                max: f.cfg.max_blocks,
            }),
        };
    }
    Verdict::Block(block)
}

/// The rate budgets of the request's origin. A source with more evidence than one probe
/// is refused only when BLOCK_RATE itself is spent, and single-probe requests (forgeable
/// for one packet each) may spend at most half of it, so what forgers spend never refuses
/// a real scanner; the per-prefix share bounds single-probe blocks in one /24 or /64 and
/// counts nothing else.
fn over_budget(origin: Origin, evidence: Evidence, f: &Facts<'_>) -> Option<Unchanged> {
    match origin {
        Origin::Manual => None,
        Origin::Fleet => {
            let (rate, cap) = (f.cfg.fleet_block_rate, f.cfg.fleet_cap());
            if f.fleet.started >= rate as usize {
                Some(Unchanged::FleetRate { per_minute: rate })
            } else if f.fleet.active >= cap as usize {
                Some(Unchanged::FleetCapped { max: cap })
            } else {
                None
            }
        }
        Origin::Sensor => {
            let rate = f.cfg.block_rate;
            let single = evidence == Evidence::SingleProbe;
            if f.started.all >= rate as usize {
                Some(Unchanged::RateLimited { per_minute: rate })
            } else if single && f.started.single_probe >= single_probe_share(rate) {
                Some(Unchanged::SingleProbeShare {
                    share: single_probe_share(rate),
                })
            } else if single && f.started.same_prefix >= prefix_share(rate) {
                Some(Unchanged::PrefixShare {
                    share: prefix_share(rate),
                })
            } else {
                None
            }
        }
    }
}

/// The BLOCK_* key a scan kind falls under: BLOCK_TCP / BLOCK_UDP for the scans PortSentry
/// reported, BLOCK_OTHER_SCANS for the rest.
pub fn scan_class(k: sentry_proto::ScanKind) -> policy::ScanClass {
    match (k.protocol(), k.is_other()) {
        (sentry_proto::Protocol::Tcp, false) => policy::ScanClass::Tcp,
        (sentry_proto::Protocol::Udp, false) => policy::ScanClass::Udp,
        _ => policy::ScanClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.conf");
        std::fs::write(&p, text).unwrap();
        Config::load(Path::new(&p)).unwrap_or_else(|e| panic!("{e}"))
    }

    struct World {
        cfg: Config,
        never: NeverBlock,
        ignore: IgnoreList,
        already: bool,
        started: usize,
        singles: usize,
        same_prefix: usize,
        evidence: Evidence,
        weakest: Option<IpAddr>,
        active: usize,
        blocking: bool,
        origin: Origin,
        fleet: FleetUsage,
    }

    impl World {
        /// The verdict that blocks `src` (an IPv4 address: the address alone) with the
        /// world's evidence (a control block's is more than one probe).
        fn block(&self, src: &str) -> Verdict {
            Verdict::Block(self.blocking(src))
        }
        fn evict(&self, victim: IpAddr, src: &str) -> Verdict {
            Verdict::Evict {
                victim,
                block: self.blocking(src),
            }
        }
        fn blocking(&self, src: &str) -> Blocking {
            let evidence = match self.origin {
                Origin::Sensor => self.evidence,
                _ => Evidence::Ports,
            };
            Blocking {
                evidence,
                target: Target {
                    addr: src.parse().unwrap(),
                    prefix6: None,
                },
            }
        }
        fn new(text: &str) -> Self {
            let cfg = cfg(text);
            Self {
                cfg,
                never: NeverBlock::new(vec!["203.0.113.5".parse().unwrap()]),
                ignore: IgnoreList::parse("198.51.100.0/24\n", Path::new("ignore")).unwrap(),
                already: false,
                started: 0,
                singles: 0,
                same_prefix: 0,
                evidence: Evidence::Ports,
                weakest: None,
                active: 0,
                blocking: true,
                origin: Origin::Sensor,
                fleet: FleetUsage::default(),
            }
        }
        fn judge(&self, src: &str, p: Protocol) -> Verdict {
            let scan = match p {
                Protocol::Tcp => ScanKind::Syn,
                Protocol::Udp => ScanKind::Udp,
                Protocol::Sctp => ScanKind::SctpInit,
                Protocol::Ip => ScanKind::IpProtocol,
            };
            self.judge_scan(src, scan)
        }
        /// The request the world's origin and evidence stand for: a sensor's probe (a
        /// connect for a handshake, two ports for more than one probe), or a control block.
        fn probe(&self, src: &str, scan: ScanKind) -> BlockRequest {
            let (scan, distinct_ports) = match self.evidence {
                Evidence::SingleProbe => (scan, 1),
                Evidence::Ports => (scan, 2),
                Evidence::Handshake => (ScanKind::Connect, 1),
            };
            BlockRequest {
                seq: 1,
                source: src.parse().unwrap(),
                protocol: scan.protocol(),
                port: 22,
                scan,
                mode: sentry_proto::Mode::Stcp,
                distinct_ports,
                first_seen_ms: 0,
                last_seen_ms: 0,
                ip_options: false,
            }
        }
        fn judge_scan(&self, src: &str, scan: ScanKind) -> Verdict {
            let probe = self.probe(src, scan);
            let req = match self.origin {
                Origin::Sensor => Request::Probe(&probe),
                origin => Request::Control {
                    addr: probe.source,
                    origin,
                },
            };
            judge(
                req,
                &Facts {
                    cfg: &self.cfg,
                    never: &self.never,
                    ignore: &self.ignore,
                    already_blocked: self.already,
                    started: Usage {
                        all: self.started,
                        single_probe: self.singles,
                        same_prefix: self.same_prefix,
                    },
                    weakest_block: self.weakest,
                    active_blocks: self.active,
                    blocking_configured: self.blocking,
                    fleet: self.fleet,
                },
            )
        }
    }

    const BASE: &str = "BLOCK_TCP=\"1\"\nBLOCK_UDP=\"0\"\nBLOCK_RATE=\"3\"\nMAX_BLOCKS=\"2\"\n";

    #[test]
    fn order_of_rules() {
        let mut w = World::new(BASE);
        let no = |u| Verdict::Unchanged(u);
        assert_eq!(
            w.judge("127.0.0.1", Protocol::Tcp),
            no(Unchanged::NeverBlock(NeverBlockReason::Loopback))
        );
        assert_eq!(
            w.judge("203.0.113.5", Protocol::Tcp),
            no(Unchanged::NeverBlock(NeverBlockReason::OwnAddress))
        );
        assert_eq!(
            w.judge("198.51.100.9", Protocol::Tcp),
            no(Unchanged::Ignored)
        );
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Udp),
            no(Unchanged::LogOnly(Protocol::Udp))
        );
        assert_eq!(w.judge("192.0.2.1", Protocol::Tcp), w.block("192.0.2.1"));
        w.already = true;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            no(Unchanged::AlreadyBlocked)
        );
        w.already = false;
        w.active = 2;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            no(Unchanged::Capped { max: 2 })
        );
        // The rate limit is checked before the cap.
        w.started = 3;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            no(Unchanged::RateLimited { per_minute: 3 })
        );
    }

    #[test]
    fn single_probes_cannot_starve_better_evidence() {
        // BLOCK_RATE=3 in BASE: single probes may use 1, one prefix may use... max(1, 0) = 1.
        let mut w = World::new("BLOCK_TCP=\"1\"\nBLOCK_RATE=\"8\"\nMAX_BLOCKS=\"2\"\n");
        w.evidence = Evidence::SingleProbe;
        w.started = 4;
        w.singles = 4;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::SingleProbeShare { share: 4 })
        );
        // A many-port source still gets in, up to BLOCK_RATE...
        w.evidence = Evidence::Ports;
        assert_eq!(w.judge("192.0.2.1", Protocol::Tcp), w.block("192.0.2.1"));
        // ... also when forgers spent its /24's single-probe quarter (they forged one
        // SYN from each neighbour of the scanner).
        w.same_prefix = 2;
        assert_eq!(w.judge("192.0.2.1", Protocol::Tcp), w.block("192.0.2.1"));
        // A single probe from that /24 is refused by the prefix's share.
        w.evidence = Evidence::SingleProbe;
        w.singles = 0;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::PrefixShare { share: 2 })
        );
        w.evidence = Evidence::Ports;
        w.same_prefix = 0;
        w.started = 8;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::RateLimited { per_minute: 8 })
        );
    }

    #[test]
    fn at_the_cap_better_evidence_evicts_the_weakest_single_probe_block() {
        let mut w = World::new(BASE);
        w.active = 2;
        let weak: IpAddr = "198.51.100.200".parse().unwrap();
        w.weakest = Some(weak);
        w.evidence = Evidence::Ports;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            w.evict(weak, "192.0.2.1")
        );
        w.evidence = Evidence::Handshake;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            w.evict(weak, "192.0.2.1")
        );
        // A single probe never evicts anything.
        w.evidence = Evidence::SingleProbe;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::Capped { max: 2 })
        );
        // Nothing weak to evict: capped.
        w.evidence = Evidence::Ports;
        w.weakest = None;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::Capped { max: 2 })
        );
        assert_eq!(Evidence::of(ScanKind::Syn, 1), Evidence::SingleProbe);
        assert_eq!(Evidence::of(ScanKind::Syn, 3), Evidence::Ports);
        assert_eq!(Evidence::of(ScanKind::Connect, 1), Evidence::Handshake);
    }

    #[test]
    fn the_fleet_has_its_own_budget_and_gives_way_to_local_evidence() {
        let mut w = World::new(
            "BLOCK_TCP=\"1\"\nBLOCK_RATE=\"8\"\nMAX_BLOCKS=\"4\"\nFLEET_MAX_BLOCKS=\"4\"\nFLEET_BLOCK_RATE=\"3\"\n",
        );
        let old: IpAddr = "198.51.100.7".parse().unwrap();
        // The sensor's budgets spent do not refuse the fleet, and the other way round.
        w.origin = Origin::Fleet;
        w.started = 8;
        assert_eq!(w.judge("192.0.2.1", Protocol::Tcp), w.block("192.0.2.1"));
        w.started = 0;
        w.fleet = FleetUsage {
            active: 0,
            started: 3,
            oldest: None,
        };
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::FleetRate { per_minute: 3 })
        );
        w.origin = Origin::Sensor;
        assert_eq!(w.judge("192.0.2.1", Protocol::Tcp), w.block("192.0.2.1"));
        // The fleet filled the table: it cannot evict, a local many-port scanner can.
        w.active = 4;
        w.fleet = FleetUsage {
            active: 4,
            started: 0,
            oldest: Some(old),
        };
        w.origin = Origin::Fleet;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::FleetCapped { max: 4 })
        );
        w.origin = Origin::Sensor;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            w.evict(old, "192.0.2.1")
        );
        w.evidence = Evidence::SingleProbe;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::Capped { max: 4 })
        );
        // Root's own blocks: MAX_BLOCKS alone.
        w.origin = Origin::Manual;
        w.evidence = Evidence::Ports;
        w.started = 8;
        w.active = 3;
        assert_eq!(w.judge("192.0.2.1", Protocol::Tcp), w.block("192.0.2.1"));
        w.active = 4;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::Capped { max: 4 })
        );
        assert_eq!(Origin::of(None), Origin::Sensor);
        assert_eq!(Origin::of(Some("manual")), Origin::Manual);
        assert_eq!(Origin::of(Some("crowdsec")), Origin::Fleet);
    }

    #[test]
    fn command_only_and_nothing_configured() {
        let mut w = World::new("BLOCK_TCP=\"2\"\nKILL_RUN_CMD=\"/bin/true $TARGET$\"\n");
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::RunCommand {
                evidence: Evidence::Ports
            }
        );
        // The configuration check refuses this combination; the judge still answers it.
        w.cfg.kill_run_cmd = None;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Tcp),
            Verdict::Unchanged(Unchanged::NoCommand(Protocol::Tcp))
        );
        let mut w = World::new("BLOCK_TCP=\"1\"\n");
        w.blocking = false;
        let v = w.judge("192.0.2.1", Protocol::Tcp);
        assert_eq!(v, Verdict::Unchanged(Unchanged::NoAction(Protocol::Tcp)));
    }

    /// A control block has no probe whose key could apply: BLOCK_TCP governs it. The
    /// verdict carries what the block covers: an IPv6 source's BLOCK_PREFIX6 network.
    #[test]
    fn control_blocks_answer_to_block_tcp_and_the_verdict_carries_the_target() {
        let mut w = World::new("BLOCK_TCP=\"0\"\nBLOCK_UDP=\"1\"\n");
        w.origin = Origin::Fleet;
        assert_eq!(
            w.judge("192.0.2.1", Protocol::Udp),
            Verdict::Unchanged(Unchanged::LogOnly(Protocol::Tcp))
        );
        let mut w = World::new("BLOCK_TCP=\"1\"\nBLOCK_PREFIX6=\"64\"\n");
        w.origin = Origin::Manual;
        w.evidence = Evidence::SingleProbe;
        let expected = Blocking {
            evidence: Evidence::Ports,
            target: Target {
                addr: "2001:db8:1:2::".parse().unwrap(),
                prefix6: Some(64),
            },
        };
        assert_eq!(
            w.judge("2001:db8:1:2::9", Protocol::Tcp),
            Verdict::Block(expected)
        );
    }

    /// ACK-family, IP-protocol and SCTP INIT probes are log_only unless BLOCK_OTHER_SCANS=1,
    /// whatever BLOCK_TCP / BLOCK_UDP say; with the key they are judged like any probe.
    #[test]
    fn other_scans_are_log_only_unless_the_key_says_block() {
        let others = [
            ScanKind::Ack,
            ScanKind::Maimon,
            ScanKind::IpProtocol,
            ScanKind::SctpInit,
        ];
        let w = World::new("BLOCK_TCP=\"1\"\nBLOCK_UDP=\"1\"\n");
        for k in others {
            let v = w.judge_scan("192.0.2.1", k);
            assert_eq!(v, Verdict::Unchanged(Unchanged::OtherScan(k)), "{k}");
            let Verdict::Unchanged(u) = v else {
                unreachable!()
            };
            assert_eq!(u.decision(), Decision::LogOnly);
            assert_eq!(u.to_string(), format!("BLOCK_OTHER_SCANS=0 ({k} probe)"));
        }
        // The never-block set and the ignore list still come first.
        assert_eq!(
            w.judge_scan("127.0.0.1", ScanKind::Ack),
            Verdict::Unchanged(Unchanged::NeverBlock(NeverBlockReason::Loopback))
        );
        assert_eq!(
            w.judge_scan("192.0.2.1", ScanKind::Syn),
            w.block("192.0.2.1")
        );
        let mut w = World::new("BLOCK_TCP=\"0\"\nBLOCK_UDP=\"0\"\nBLOCK_OTHER_SCANS=\"1\"\n");
        for k in others {
            assert_eq!(w.judge_scan("192.0.2.1", k), w.block("192.0.2.1"), "{k}");
        }
        assert_eq!(
            w.judge_scan("192.0.2.1", ScanKind::Fin),
            Verdict::Unchanged(Unchanged::LogOnly(Protocol::Tcp))
        );
        // Blocked like any probe: already blocked, the rate limit and the cap apply.
        w.already = true;
        assert_eq!(
            w.judge_scan("192.0.2.1", ScanKind::Ack),
            Verdict::Unchanged(Unchanged::AlreadyBlocked)
        );
        w.already = false;
        w.started = 1_000_000;
        assert!(matches!(
            w.judge_scan("192.0.2.1", ScanKind::SctpInit),
            Verdict::Unchanged(Unchanged::RateLimited { .. })
        ));
        assert_eq!(block_key_for(ScanKind::Ack), "BLOCK_OTHER_SCANS");
        assert_eq!(block_key_for(ScanKind::Fin), "BLOCK_TCP");
    }

    #[test]
    fn reasons_and_lines_keep_their_wording() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(Unchanged::LogOnly(Protocol::Udp).to_string(), "BLOCK_UDP=0");
        assert_eq!(
            Unchanged::RateLimited { per_minute: 30 }.to_string(),
            "BLOCK_RATE=30 per minute reached"
        );
        assert_eq!(
            Unchanged::AlreadyBlocked.line(a).unwrap().1,
            "attackalert: Host: 192.0.2.1 is already blocked. Ignoring"
        );
        assert_eq!(Unchanged::NoAction(Protocol::Tcp).line(a), None);
        assert_eq!(
            Unchanged::NoAction(Protocol::Tcp).decision(),
            Decision::LogOnly
        );
    }
}
