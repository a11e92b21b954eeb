//! The messages. Sensor ⇄ enforcer on `enforcer.sock`, sentryctl ⇄ enforcer on
//! `control.sock`. Every connection opens with a version handshake.

use std::fmt;
use std::net::IpAddr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::frame::message;
use crate::{MAX_CONTROL_RESPONSE, MAX_NAME_LEN, MAX_SMALL_FRAME};

/// `Display` as the type's `as_str` name.
macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Protocol, Mode, ScanKind, Decision);

/// Transport protocol of a detection.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// SCTP (an INIT, `nmap -sY`). Watched on the TCP modes' ports: PortSentry had no SCTP
    /// port lists, and a scanner probes the same service ports.
    Sctp,
    /// A bare IP protocol number (`nmap -sO`): the request's `port` carries the protocol
    /// number (0-255), since such a packet has no port.
    Ip,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [Self::Tcp, Self::Udp, Self::Sctp, Self::Ip];

    /// Lower-case name, as PortSentry substitutes it for `$MODE$`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
            Self::Ip => "ip",
        }
    }
    /// Upper-case name, as in PortSentry's blocked/history files and log lines (TCP and
    /// UDP as PortSentry wrote them; SCTP and IP are sentry's own).
    pub fn as_upper(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
            Self::Ip => "IP",
        }
    }
}

/// A detection mode, as PortSentry's command-line flags name them.
#[derive(
    Encode, Decode, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `-tcp`: listening sockets on TCP_PORTS; a completed connect is a hit.
    Tcp,
    /// `-udp`: bound sockets on UDP_PORTS; a datagram is a hit.
    Udp,
    /// `-stcp`: raw capture of TCP probes to TCP_PORTS.
    Stcp,
    /// `-sudp`: raw capture of UDP to UDP_PORTS.
    Sudp,
    /// `-atcp`: raw capture of TCP probes below ADVANCED_PORTS_TCP.
    Atcp,
    /// `-audp`: raw capture of UDP below ADVANCED_PORTS_UDP.
    Audp,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Self::Tcp,
        Self::Udp,
        Self::Stcp,
        Self::Sudp,
        Self::Atcp,
        Self::Audp,
    ];

    /// The protocol this mode watches.
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Tcp | Self::Stcp | Self::Atcp => Protocol::Tcp,
            Self::Udp | Self::Sudp | Self::Audp => Protocol::Udp,
        }
    }

    /// PortSentry's flag name without the dash (`tcp`, `stcp`, `atcp`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Stcp => "stcp",
            Self::Sudp => "sudp",
            Self::Atcp => "atcp",
            Self::Audp => "audp",
        }
    }

    /// Parse `tcp`, `-tcp`, `stcp`, ... (the dash is optional).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix('-').unwrap_or(s);
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Basic modes bind sockets; the others capture.
    pub fn is_basic(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp)
    }
}

/// What kind of probe was seen.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ScanKind {
    /// A completed TCP connection to a basic-mode listener.
    Connect,
    /// SYN alone ("SYN/Normal scan").
    Syn,
    /// FIN alone.
    Fin,
    /// No flags at all.
    Null,
    /// FIN+PSH+URG.
    Xmas,
    /// Any other combination without ACK; the TCP flag byte is kept for the log.
    Oddball { flags: u8 },
    /// A UDP datagram.
    Udp,
    /// A bare ACK to a port no flow of ours uses (`nmap -sA`, `-sW`: the same packet).
    Ack,
    /// FIN+ACK to a port no flow of ours uses (`nmap -sM`, Maimon).
    Maimon,
    /// A packet of an IP protocol this host does not use (`nmap -sO`); the request's
    /// `port` is the protocol number.
    IpProtocol,
    /// An SCTP INIT (`nmap -sY`).
    SctpInit,
}

impl ScanKind {
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Udp => Protocol::Udp,
            Self::IpProtocol => Protocol::Ip,
            Self::SctpInit => Protocol::Sctp,
            _ => Protocol::Tcp,
        }
    }

    /// The kinds PortSentry never reported (ACK-family, IP-protocol, SCTP INIT). They are
    /// logged and audited, and blocked only with BLOCK_OTHER_SCANS=1: a bare ACK or a
    /// FIN/ACK also comes from a stale flow of a real client (after a reboot or a conntrack
    /// flush), and an unknown IP protocol from a tunnel the host does not know it has.
    pub fn is_other(self) -> bool {
        matches!(
            self,
            Self::Ack | Self::Maimon | Self::IpProtocol | Self::SctpInit
        )
    }

    /// A short stable name (`syn`, `fin`, `oddball`, ...), for audit records and `$SCAN$`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Syn => "syn",
            Self::Fin => "fin",
            Self::Null => "null",
            Self::Xmas => "xmas",
            Self::Oddball { .. } => "oddball",
            Self::Udp => "udp",
            Self::Ack => "ack",
            Self::Maimon => "maimon",
            Self::IpProtocol => "ipproto",
            Self::SctpInit => "sctp_init",
        }
    }
}

/// First message on the sensor socket.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// Free-form identity (host name or instance name), printable ASCII, at most
    /// [`MAX_NAME_LEN`] bytes.
    pub sensor: String,
    /// The sensor's own pid as it believes it (the enforcer trusts SO_PEERCRED instead).
    pub pid: u32,
    /// Modes this sensor runs; 1 to 6, no duplicates.
    pub modes: Vec<Mode>,
}

/// A request to block `source`. Everything in it is a claim by a possibly compromised
/// sensor: the enforcer validates it ([`BlockRequest::validate`]) and then applies its own
/// rules before acting.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    /// Strictly increasing per connection; echoed in the [`Ack`](EnforcerFrame::Ack).
    pub seq: u64,
    pub source: IpAddr,
    pub protocol: Protocol,
    /// The destination port of the probe that crossed the trigger.
    pub port: u16,
    pub scan: ScanKind,
    pub mode: Mode,
    /// Distinct watched ports this source touched inside the window (1..=65535).
    pub distinct_ports: u32,
    /// Milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// The triggering packet carried IP options (a detection-avoidance hint).
    pub ip_options: bool,
}

/// Counters a sensor reports periodically; shown by `sentryctl status`.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SensorStats {
    /// Packets the detection chain copied (NFLOG), and connections/datagrams in basic modes.
    pub packets: u64,
    /// Frames the kernel dropped before the sensor could read them.
    pub kernel_drops: u64,
    /// Frames rejected by the parser (truncated, bad header length, ...).
    pub malformed: u64,
    /// Probes that hit a watched port.
    pub hits: u64,
    /// Block requests produced.
    pub reports: u64,
    /// Block requests dropped because the outbound queue was full.
    pub queue_drops: u64,
    /// Sources currently tracked by the state engine.
    pub tracked_sources: u64,
    /// Sources evicted from the state engine because it was full.
    pub evictions: u64,
    /// Hits from ignored sources (skipped early).
    pub ignored: u64,
}

/// Sensor → enforcer.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum SensorFrame {
    Hello(Hello),
    Block(BlockRequest),
    Stats(SensorStats),
}

/// What the enforcer did with a request.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Blocked now; every configured action succeeded.
    Blocked,
    /// Already blocked; nothing run.
    AlreadyBlocked,
    /// On the ignore list.
    Ignored,
    /// In the never-block set (loopback, own address, multicast, ...).
    NeverBlock,
    /// BLOCK_TCP/BLOCK_UDP = 0: logged only.
    LogOnly,
    /// BLOCK_TCP/BLOCK_UDP = 2: KILL_RUN_CMD only.
    CommandOnly,
    /// Over BLOCK_RATE.
    RateLimited,
    /// MAX_BLOCKS reached.
    Capped,
    /// The request failed validation.
    Rejected,
    /// At least one action failed; see the audit log.
    Failed,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::AlreadyBlocked => "already_blocked",
            Self::Ignored => "ignored",
            Self::NeverBlock => "never_block",
            Self::LogOnly => "log_only",
            Self::CommandOnly => "command_only",
            Self::RateLimited => "rate_limited",
            Self::Capped => "capped",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

/// Why the enforcer refused a connection (sent just before it closes it).
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    VersionMismatch { ours: u16 },
    HandshakeRequired,
    NotAuthorized,
    AlreadyConnected,
    MalformedFrame,
}

/// Enforcer → sensor.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum EnforcerFrame {
    Welcome {
        version: u16,
    },
    Ack {
        seq: u64,
        decision: Decision,
    },
    Refused(Refusal),
    /// A block ended (`sentryctl unblock`, expiry, ignore list, eviction): the sensor
    /// forgets the source's state, so a source that scans again is reported, and blocked,
    /// at once instead of after its latch.
    Unblocked {
        addr: std::net::IpAddr,
    },
    /// Sent right after `Welcome`, with a descriptor as ancillary data (SCM_RIGHTS): an
    /// NFLOG socket the enforcer has bound to `group` (copy mode packet, at most
    /// `snaplen` bytes from the network header). The sensor reads its detection input
    /// from it; no capability is needed to read an already bound socket.
    Capture {
        group: u16,
        snaplen: u32,
    },
}

/// sentryctl → enforcer. The first request on a connection must be `Hello`.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    Hello {
        version: u16,
    },
    Status,
    Blocked,
    Unblock {
        addr: IpAddr,
    },
    /// `sentryctl block` and the fleet bridge: block `addr` through the same judge as a
    /// sensor request (never-block set, ignore list, BLOCK_RATE, MAX_BLOCKS). `origin`
    /// names who asked (checked with [`validate_origin`]; never [`ORIGIN_SENSOR`]);
    /// `duration_ms` overrides BLOCK_TIMEOUT (1 s to [`MAX_BLOCK_DURATION_MS`]).
    Block {
        addr: IpAddr,
        duration_ms: Option<u64>,
        origin: String,
    },
    /// Lift the block on `addr` only if it was made by `origin` (the fleet bridge lifts
    /// only the blocks the fleet made, never a local sensor's).
    UnblockOrigin {
        addr: IpAddr,
        origin: String,
    },
    /// A live stream of the decisions the audit log gets: the enforcer answers
    /// [`ControlResponse::WatchStart`], then the records from `from` on (as far as its
    /// ring still holds them) and every new one, with a [`ControlResponse::Heartbeat`]
    /// each second when there is nothing else. The connection serves nothing else after.
    Watch {
        from: Option<Cursor>,
    },
    /// Prometheus text exposition of the enforcer's counters.
    Metrics,
    // Variants below were appended: the bincode index of each earlier one is unchanged.
    /// `sentryctl explain`: is `addr` blocked, by which block, and why (not).
    Explain {
        addr: IpAddr,
    },
    /// `sentryctl unblock --all`: lift every active block, each as `Unblock` would.
    UnblockAll,
    /// Re-read the ignore list, as SIGHUP does (`sentryctl ignore add|remove`), and
    /// answer whether it loaded.
    Reload,
    /// [`ControlRequest::Block`] with what the fleet decision says about itself (the
    /// fleet bridge): it is kept with the block, audited and shown by `sentryctl blocked`
    /// and `explain`. The enforcer refuses a block whose `meta` fails
    /// [`BlockMeta::validate`] (rejected, counted and logged; never shortened).
    BlockWith {
        addr: IpAddr,
        duration_ms: Option<u64>,
        origin: String,
        meta: BlockMeta,
    },
}

/// What a fleet (LAPI) decision says about itself, carried with a control block. Every
/// field is optional (a LAPI tells what it knows), and every field is a claim of the
/// LAPI, relayed by the bridge: checked by [`BlockMeta::validate`], and printed only
/// escaped (JSON) or as a field of its own, never inside a syslog line that log watchers
/// match.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockMeta {
    /// The scenario that made the decision: `sentry/portscan`, `crowdsecurity/ssh-bf`,
    /// or for a `cscli decisions add` the reason given (`manual 'ban' from 'm1'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// The LAPI's decision id (`cscli decisions list`, `cscli decisions delete --id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<u64>,
    /// The id of the alert the decision belongs to (`cscli alerts inspect ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<u64>,
    /// The machine (watcher) that sent that alert: the detecting host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

/// Longest [`BlockMeta::scenario`] (CrowdSec's hub names are well below; a `cscli
/// decisions add --reason` is free text).
pub const MAX_SCENARIO_LEN: usize = 128;
/// Longest [`BlockMeta::machine`] (CrowdSec's generated machine ids are 48 bytes).
pub const MAX_MACHINE_LEN: usize = 128;
/// Largest id: the LAPI's ids are SQL 64-bit signed integers, and start at 1.
pub const MAX_LAPI_ID: u64 = i64::MAX as u64;

impl BlockMeta {
    /// Nothing known.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Check every field: `scenario` 1 to [`MAX_SCENARIO_LEN`] bytes of printable ASCII
    /// (spaces inside only: a manual decision's reason has them), `machine` 1 to
    /// [`MAX_MACHINE_LEN`] bytes of printable ASCII without spaces, ids 1 to
    /// [`MAX_LAPI_ID`]. No control character, no byte above 0x7e: these end up in
    /// terminals, the audit log and the bridge's log lines.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(s) = &self.scenario {
            if s.is_empty() || s.len() > MAX_SCENARIO_LEN {
                return Err(FieldError::Meta("scenario must be 1 to 128 bytes"));
            }
            if !s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                return Err(FieldError::Meta(
                    "scenario must be printable ASCII (no control characters)",
                ));
            }
            if s.starts_with(' ') || s.ends_with(' ') {
                return Err(FieldError::Meta(
                    "scenario must not begin or end with a space",
                ));
            }
        }
        if let Some(m) = &self.machine {
            if m.is_empty() || m.len() > MAX_MACHINE_LEN {
                return Err(FieldError::Meta("machine must be 1 to 128 bytes"));
            }
            if !m.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(FieldError::Meta(
                    "machine must be printable ASCII without spaces",
                ));
            }
        }
        for id in [self.decision_id, self.alert_id].into_iter().flatten() {
            if id == 0 || id > MAX_LAPI_ID {
                return Err(FieldError::Meta("LAPI ids are 1 to 2^63-1"));
            }
        }
        Ok(())
    }
}

/// Who made a block: the local sensor, or a control client by the name it gave.
pub const ORIGIN_SENSOR: &str = "sensor";
/// Longest origin name.
pub const MAX_ORIGIN_LEN: usize = 32;
/// Longest block a control client may ask for (ten years, BLOCK_TIMEOUT's bound).
pub const MAX_BLOCK_DURATION_MS: u64 = 10 * 365 * 86_400 * 1000;
/// Records the enforcer keeps for `Watch` clients that resume from a cursor.
pub const WATCH_RING: usize = 4096;

/// An origin name: 1 to [`MAX_ORIGIN_LEN`] of `[A-Za-z0-9._-]`, starting with a letter
/// or digit. [`ORIGIN_SENSOR`] is valid here; the enforcer refuses it from control.
pub fn validate_origin(s: &str) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(FieldError::Origin("empty"));
    }
    if s.len() > MAX_ORIGIN_LEN {
        return Err(FieldError::Origin("longer than 32 bytes"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(FieldError::Origin("only letters, digits, '.', '_' and '-'"));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(FieldError::Origin("must start with a letter or a digit"));
    }
    Ok(())
}

/// A position in the decision stream: the enforcer run (its start time in µs) and the
/// sequence number of the next record wanted. Printed and parsed as `RUN:SEQ`.
#[derive(
    Encode, Decode, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub struct Cursor {
    pub run: u64,
    pub seq: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.run, self.seq)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("cursor {s:?}: expected RUN:SEQ (two decimal numbers)");
        let (r, q) = s.split_once(':').ok_or_else(bad)?;
        let num = |x: &str| {
            if x.is_empty() || x.len() > 20 || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            x.parse::<u64>().map_err(|_| bad())
        };
        Ok(Self {
            run: num(r)?,
            seq: num(q)?,
        })
    }
}

/// How hard a decision's evidence is to forge (what the request carried).
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvidenceInfo {
    /// Distinct watched ports the source touched inside the window.
    pub distinct_ports: u32,
    /// A completed TCP handshake (basic `-tcp` mode): not forgeable off-path.
    pub handshake: bool,
}

/// One record of the decision stream: what the audit log got, typed. Its JSON is the
/// decision-record schema ([`crate::record`]): `kind` is written as `decision`, the
/// evidence flat, with `"schema": 1`.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    into = "crate::record::RecordJson",
    try_from = "crate::record::RecordJson"
)]
pub struct WatchRecord {
    pub seq: u64,
    pub time_us: u64,
    /// The audit record's `decision` (`blocked`, `unblocked`, `expired`, ...).
    pub kind: String,
    pub source: Option<IpAddr>,
    /// Set when the block covers a network `source`/len.
    pub prefix: Option<u8>,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
    pub scan: Option<ScanKind>,
    pub mode: Option<Mode>,
    /// [`ORIGIN_SENSOR`] for the local sensor, the control client's name otherwise;
    /// `None` for records that are about no request (refused connections, summaries).
    pub origin: Option<String>,
    /// Present on records about a sensor request.
    pub evidence: Option<EvidenceInfo>,
    /// When the block ends (`None`: permanent, or not a block).
    pub expires_ms: Option<u64>,
    /// AUDIT_RATE summaries: how many records this one stands for.
    pub suppressed: Option<u64>,
    pub reason: String,
    /// A fleet block's scenario, decision and alert ids and detecting machine (empty on
    /// every other record).
    pub meta: BlockMeta,
}

impl WatchRecord {
    /// The record's cursor in `run` (the position after it).
    pub fn next_cursor(&self, run: u64) -> Cursor {
        Cursor {
            run,
            seq: self.seq.saturating_add(1),
        }
    }
}

/// The connected sensor, as the enforcer sees it (uid/pid from SO_PEERCRED).
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SensorInfo {
    pub uid: u32,
    pub pid: u32,
    pub name: String,
    pub modes: Vec<Mode>,
    pub protocol_version: u16,
    pub connected_since_ms: u64,
    pub stats: Option<SensorStats>,
}

/// Decision counters since the enforcer started.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub blocked: u64,
    pub already_blocked: u64,
    pub ignored: u64,
    pub never_block: u64,
    pub log_only: u64,
    pub command_only: u64,
    pub rate_limited: u64,
    pub capped: u64,
    pub rejected: u64,
    pub failed: u64,
    /// Action failures, refused connections and other errors.
    pub errors: u64,
    pub unblocked: u64,
    pub expired: u64,
    pub restored: u64,
    /// Blocks asked for over the control socket (`sentryctl block`, the fleet bridge).
    pub control_requests: u64,
    /// Watch clients dropped because they did not keep up.
    pub watch_dropped: u64,
}

/// One recent decision, for `sentryctl status`. Its JSON has the decision-record
/// schema's names ([`crate::record`]): `time_us`, `decision`, `"schema": 1`.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    into = "crate::record::RecentJson",
    try_from = "crate::record::RecentJson"
)]
pub struct RecentDecision {
    pub time_ms: u64,
    pub source: Option<IpAddr>,
    pub decision: String,
    pub reason: String,
}

/// `sentryctl status`.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub config_path: String,
    pub sensor: Option<SensorInfo>,
    pub counters: Counters,
    pub active_blocks: u64,
    pub max_blocks: u64,
    pub backends: Vec<String>,
    pub recent: Vec<RecentDecision>,
}

/// One active block, for `sentryctl blocked`.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    pub addr: IpAddr,
    /// The probe a sensor block was made on: its protocol, destination port, mode and
    /// scan kind. `None` (absent in JSON) for a control block, which has no probe: its
    /// evidence is its origin's (see `meta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// By its [`ScanKind::as_str`] name in JSON, as in the decision records.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::record::opt_scan_name"
    )]
    pub scan: Option<ScanKind>,
    pub since_ms: u64,
    /// `None` for a permanent block.
    pub expires_ms: Option<u64>,
    /// Set when the block covers the IPv6 network `addr`/len (BLOCK_PREFIX6).
    pub prefix6: Option<u8>,
    /// [`ORIGIN_SENSOR`], or the control client's origin name.
    pub origin: String,
    /// A sensor-made block's evidence: the distinct ports its source probed, counted on
    /// after the block (the kernel drops and still copies its probes). `None` for
    /// control blocks, whose evidence is their origin's.
    pub distinct_ports: Option<u32>,
    /// A fleet block's scenario, ids and detecting machine, flat in JSON (`scenario`,
    /// `decision_id`, `alert_id`, `machine`; absent when not known).
    #[serde(flatten)]
    pub meta: BlockMeta,
}

/// How an active block covers the address `sentryctl explain` asked about.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Coverage {
    /// The block is on the address itself.
    Address,
    /// The block is on the address's IPv6 network (BLOCK_PREFIX6).
    Network,
}

/// One active block that covers an explained address.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ExplainEntry {
    pub matched: Coverage,
    /// A fleet (or manual) decision: the block's origin is not the local sensor (its
    /// evidence, `distinct_ports`, is then `None`).
    pub fleet: bool,
    #[serde(flatten)]
    pub block: BlockEntry,
}

/// `sentryctl explain ADDR`: whether ADDR is blocked now, by which block, and why (not).
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub address: IpAddr,
    pub blocked: bool,
    /// The active blocks covering the address (its own, its network's).
    pub entries: Vec<ExplainEntry>,
    /// The ignore list covers the address.
    pub ignored: bool,
    /// Why the enforcer never blocks it (`default gateway`, `loopback address`, ...).
    pub never_block: Option<String>,
    /// One sentence: why it is, or would not be, blocked.
    pub reason: String,
    /// The decisions about it that the enforcer still holds (its watch ring), oldest
    /// first.
    pub decisions: Vec<WatchRecord>,
}

/// enforcer → sentryctl.
#[derive(Encode, Decode, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ControlResponse {
    Welcome {
        version: u16,
    },
    Status(Box<Status>),
    Blocked(Vec<BlockEntry>),
    Unblocked {
        addr: IpAddr,
        was_blocked: bool,
        errors: Vec<String>,
    },
    /// The answer to [`ControlRequest::Block`].
    BlockResult {
        addr: IpAddr,
        decision: Decision,
        reason: String,
        expires_ms: Option<u64>,
    },
    /// The answer to [`ControlRequest::UnblockOrigin`]: `origin` is the block's origin
    /// when it exists and is another one (then nothing was lifted).
    UnblockedOrigin {
        addr: IpAddr,
        was_blocked: bool,
        other_origin: Option<String>,
        errors: Vec<String>,
    },
    /// First answer to [`ControlRequest::Watch`]: records follow from `next.seq` on.
    /// `lost` records between the requested cursor and the ring's oldest are gone;
    /// `run_changed`: the cursor named another enforcer run (the records of that run
    /// after the cursor are not known here; its audit log has them).
    WatchStart {
        next: Cursor,
        lost: u64,
        run_changed: bool,
    },
    Record(Box<WatchRecord>),
    /// Nothing happened for a second; `next` is the cursor of the next record.
    Heartbeat {
        next: Cursor,
    },
    /// The enforcer ends the stream (the client did not keep up).
    WatchEnd {
        reason: String,
    },
    Metrics(String),
    Error(String),
    // Variants below were appended: the bincode index of each earlier one is unchanged.
    /// The answer to [`ControlRequest::Explain`].
    Explain(Box<Explanation>),
    /// The answer to [`ControlRequest::UnblockAll`]: how many blocks were lifted, and
    /// the errors of their actions (each prefixed with its address).
    UnblockedAll {
        count: u64,
        errors: Vec<String>,
    },
    /// The answer to [`ControlRequest::Reload`]: entries of the ignore list now in use,
    /// and blocks lifted because it now covers them. A list that does not load is an
    /// [`ControlResponse::Error`] (the old one is kept).
    Reloaded {
        entries: u64,
        lifted: u64,
    },
}

message!(SensorFrame, MAX_SMALL_FRAME);
message!(EnforcerFrame, MAX_SMALL_FRAME);
message!(ControlRequest, MAX_SMALL_FRAME);
message!(ControlResponse, MAX_CONTROL_RESPONSE);

/// Why a field was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    Version {
        ours: u16,
        theirs: u16,
    },
    SensorName(&'static str),
    Modes(&'static str),
    /// Port 0 (TCP, UDP, SCTP), or above 255 as an IP protocol number.
    Port,
    ProtocolMismatch,
    DistinctPorts(u32),
    Times(&'static str),
    Address(&'static str),
    Origin(&'static str),
    /// A control block's [`BlockMeta`].
    Meta(&'static str),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Version { ours, theirs } => {
                write!(f, "protocol version {theirs} (expected {ours})")
            }
            Self::SensorName(why) => write!(f, "sensor name: {why}"),
            Self::Modes(why) => write!(f, "modes: {why}"),
            Self::Port => write!(
                f,
                "port 0 (or an IP protocol number above 255) is not a valid destination"
            ),
            Self::ProtocolMismatch => write!(f, "protocol, mode and scan kind do not agree"),
            Self::DistinctPorts(n) => write!(f, "distinct port count {n} out of range 1-65535"),
            Self::Times(why) => write!(f, "timestamps: {why}"),
            Self::Address(why) => write!(f, "source address: {why}"),
            Self::Origin(why) => write!(f, "origin name: {why}"),
            Self::Meta(why) => write!(f, "fleet decision metadata: {why}"),
        }
    }
}

impl std::error::Error for FieldError {}

/// Clock skew tolerated between the two daemons (they share a host).
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

impl Hello {
    /// Check every field; `Ok` means the handshake may proceed.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.version != crate::PROTOCOL_VERSION {
            return Err(FieldError::Version {
                ours: crate::PROTOCOL_VERSION,
                theirs: self.version,
            });
        }
        if self.sensor.is_empty() {
            return Err(FieldError::SensorName("empty"));
        }
        if self.sensor.len() > MAX_NAME_LEN {
            return Err(FieldError::SensorName("too long"));
        }
        if !self.sensor.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FieldError::SensorName("not printable ASCII"));
        }
        if self.modes.is_empty() || self.modes.len() > Mode::ALL.len() {
            return Err(FieldError::Modes("must name 1 to 6 modes"));
        }
        if (1..self.modes.len()).any(|i| self.modes[..i].contains(&self.modes[i])) {
            return Err(FieldError::Modes("duplicate mode"));
        }
        Ok(())
    }
}

impl BlockRequest {
    /// Check every field for internal consistency. `now_ms` is the enforcer's clock.
    /// Address policy (never-block, ignore list) is not decided here.
    pub fn validate(&self, now_ms: u64) -> Result<(), FieldError> {
        // The port field of an IP-protocol probe is the protocol number, and 0 (IPv4
        // HOPOPT) is one nmap -sO sends.
        let port_ok = match self.protocol {
            Protocol::Ip => self.port <= 255,
            _ => self.port != 0,
        };
        if !port_ok {
            return Err(FieldError::Port);
        }
        let mode_ok = match self.protocol {
            Protocol::Tcp | Protocol::Udp => self.mode.protocol() == self.protocol,
            // SCTP INITs are watched on the TCP capture modes' ports.
            Protocol::Sctp => matches!(self.mode, Mode::Stcp | Mode::Atcp),
            // IP-protocol probes are watched by the advanced modes (every unserved thing).
            Protocol::Ip => matches!(self.mode, Mode::Atcp | Mode::Audp),
        };
        // ACK-bearing segments are replies, never reported; and the named kinds have their
        // own variants.
        const ACK: u8 = 0x10;
        let bad_oddball = matches!(self.scan, ScanKind::Oddball { flags }
            if flags & ACK != 0 || matches!(flags, 0x00 | 0x01 | 0x02 | 0x29));
        if self.scan.protocol() != self.protocol
            || !mode_ok
            // The basic modes see only connects and datagrams.
            || (self.scan.is_other() && self.mode.is_basic())
            // A connect is only seen by the basic TCP mode, and the basic TCP mode sees
            // nothing else.
            || (self.scan == ScanKind::Connect) != (self.mode == Mode::Tcp)
            || bad_oddball
        {
            return Err(FieldError::ProtocolMismatch);
        }
        if self.distinct_ports == 0 || self.distinct_ports > 65_535 {
            return Err(FieldError::DistinctPorts(self.distinct_ports));
        }
        if self.first_seen_ms > self.last_seen_ms {
            return Err(FieldError::Times("first seen after last seen"));
        }
        if self.last_seen_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(FieldError::Times("in the future"));
        }
        if self.first_seen_ms == 0 {
            return Err(FieldError::Times("zero"));
        }
        if matches!(self.source, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
            return Err(FieldError::Address(
                "IPv4-mapped IPv6; the sensor must send IPv4 as IPv4",
            ));
        }
        Ok(())
    }
}
