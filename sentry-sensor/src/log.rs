//! Logging in PortSentry's line formats, to syslog (`/dev/log`, facility daemon, level
//! notice; under systemd that is journald's syslog socket) or to stderr (`--log-stderr`).
//!
//! In syslog, PortSentry's own line forms (every `attackalert:` line, and basic mode's
//! `Going into listen mode`) carry PortSentry's tag `portsentry`, so existing
//! logwatch/swatch/fail2ban filters keep matching them; the lines sentry adds (start-up
//! details, the enforcer connection, decisions, summaries, errors) carry the tag
//! `sentry-sensor`, so a PortSentry log watcher never sees a line it does not know.
//!
//! Lines that packets can trigger go through [`Logger::packet`], which allows at most
//! LOG_RATE lines per second from one source and LOG_RATE_TOTAL from all of them, and
//! summarises the rest as one `adminalert: suppressed N log lines` line per second, naming
//! up to [`SAMPLES`] of the sources. The per-source limit is what keeps one noisy (or
//! forged) source from hiding every other source's detection lines; the total keeps a
//! flood of sources from flooding syslog.
//!
//! Under a flood of forged sources (one probe each, 1,000 a second) the total alone was
//! spent by whoever came first each second, and a real scanner's lines could all fall
//! behind it (issue #21). So the total is split: half is shared, first come; the other
//! half is reserved for sources that are not yet in the log — whose lines were suppressed
//! within the last [`PENDING_WINDOW_S`] seconds, and which probe again. A forged source
//! probes once; a scanner probes again and again, so its next line gets in. The sources
//! are remembered in two generations of a keyed bit set ([`Pending`], fixed memory, keyed
//! with a per-process random key so forged addresses cannot be chosen to collide).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;

use sentry_proto::{Mode, Protocol, ScanKind};

use crate::classify::{ACK, FIN, PSH, RST, SYN, URG};
use crate::time::Mono;

/// The syslog tag of PortSentry's line forms.
pub const SYSLOG_TAG: &str = "portsentry";
/// The syslog tag of the lines sentry adds to PortSentry's.
pub const SENTRY_TAG: &str = "sentry-sensor";

/// What marks the detection lines of the kinds PortSentry never reported (ACK-family,
/// IP-protocol, SCTP INIT): they read like PortSentry's but are sentry's own, so a
/// PortSentry log watcher never gets a line it does not know.
const SENTRY_ONLY_MARKERS: [&str; 4] = [
    "attackalert: TCP ACK scan ",
    "attackalert: TCP FIN/ACK (Maimon) scan ",
    " to IP protocol: ",
    " to SCTP port: ",
];

/// Whether `msg` is one of PortSentry 1.2's line forms (logged under [`SYSLOG_TAG`]).
pub fn is_portsentry_line(msg: &str) -> bool {
    if SENTRY_ONLY_MARKERS.iter().any(|m| msg.contains(m)) {
        return false;
    }
    msg.starts_with("attackalert: ") || msg.starts_with("adminalert: Going into listen mode on ")
}

/// `TCP port: N`, or for a probe without ports `IP protocol: N`.
fn target(proto: Protocol, port: u16) -> String {
    match proto {
        Protocol::Ip => format!("IP protocol: {port}"),
        p => format!("{} port: {port}", p.as_upper()),
    }
}

/// The syslog tag `msg` is logged under.
pub fn syslog_tag(msg: &str) -> &'static str {
    if is_portsentry_line(msg) {
        SYSLOG_TAG
    } else {
        SENTRY_TAG
    }
}
const SYSLOG_PATH: &str = "/dev/log";
/// `<facility * 8 + severity>`: daemon (3), notice (5).
const PRI_NOTICE: u8 = 3 * 8 + 5;
/// daemon, err (3).
const PRI_ERR: u8 = 3 * 8 + 3;
/// Longest line sent (syslog datagrams beyond ~2 KiB may be truncated by receivers).
const MAX_LINE: usize = 1024;
/// Sources named in a suppression summary.
pub const SAMPLES: usize = 8;
/// How long a source whose line was suppressed keeps its claim on the reserved share:
/// two generations of this many seconds each, so between 5 and 10 s.
pub const PENDING_WINDOW_S: u64 = 5;
/// Bits per generation of [`Pending`]: 8 KiB each. With 5,000 forged sources a
/// generation (1,000/s), about 1 in 20 forged sources looks pending across both.
const PENDING_BITS: usize = 1 << 16;

/// Sources whose lines were suppressed recently: a Bloom filter of three keyed hashes,
/// in two generations that rotate every [`PENDING_WINDOW_S`] seconds. A false positive
/// only lets a forged source use the reserved share, which is bounded anyway.
#[derive(Debug)]
struct Pending {
    current: Vec<u64>,
    previous: Vec<u64>,
    since: u64,
    key: std::collections::hash_map::RandomState,
}

impl Pending {
    fn new() -> Self {
        Self {
            current: vec![0; PENDING_BITS / 64],
            previous: vec![0; PENDING_BITS / 64],
            since: 0,
            key: std::collections::hash_map::RandomState::new(),
        }
    }

    fn bits(&self, a: IpAddr) -> [usize; 3] {
        use std::hash::BuildHasher;
        let h = self.key.hash_one(a);
        let m = PENDING_BITS as u64 - 1;
        // Three 16-bit slices of one 64-bit keyed hash.
        [h & m, (h >> 16) & m, (h >> 32) & m].map(|b| usize::try_from(b).unwrap_or(0))
    }

    fn contains(&self, a: IpAddr) -> bool {
        let b = self.bits(a);
        let has = |set: &[u64]| {
            b.iter()
                .all(|&i| set.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0))
        };
        has(&self.current) || has(&self.previous)
    }

    fn insert(&mut self, a: IpAddr) {
        for i in self.bits(a) {
            if let Some(w) = self.current.get_mut(i / 64) {
                *w |= 1 << (i % 64);
            }
        }
    }

    fn rotate(&mut self, sec: u64) {
        if sec >= self.since + PENDING_WINDOW_S || sec < self.since {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.iter_mut().for_each(|w| *w = 0);
            self.since = sec;
        }
    }
}

/// The line for the enforcer's decision on a report. A block and an already-blocked host
/// are told in PortSentry 1.2's words (`Host A has been blocked ...`, `Host: A is already
/// blocked. Ignoring`), so log watchers count them as they did PortSentry's; every other
/// decision is sentry's own line.
pub fn decision_line(
    src: IpAddr,
    scan: ScanKind,
    _mode: Mode,
    port: u16,
    decision: sentry_proto::Decision,
) -> String {
    let what = match scan.protocol() {
        Protocol::Ip => format!("IP protocol {port}"),
        p => format!("{} port {port}", p.as_upper()),
    };
    match decision {
        sentry_proto::Decision::Blocked => {
            format!("attackalert: Host {src} has been blocked by sentry-enforcer ({scan} {what})")
        }
        sentry_proto::Decision::AlreadyBlocked => {
            format!("attackalert: Host: {src} is already blocked. Ignoring")
        }
        other => {
            format!("adminalert: sentry-enforcer decision for host {src}: {other} ({scan} {what})")
        }
    }
}

/// The detection line for a hit, exactly as PortSentry 1.2 wrote it. NAME is the address:
/// the sensor never resolves names.
pub fn detection_line(scan: ScanKind, mode: Mode, src: IpAddr, port: u16) -> String {
    let proto = mode.protocol().as_upper();
    match scan {
        ScanKind::Connect => {
            format!("attackalert: Connect from host: {src}/{src} to {proto} port: {port}")
        }
        ScanKind::Udp if mode == Mode::Udp => {
            format!("attackalert: Connect from host: {src}/{src} to UDP port: {port}")
        }
        ScanKind::Udp => {
            format!("attackalert: UDP scan from host: {src}/{src} to UDP port: {port}")
        }
        ScanKind::Syn => {
            format!("attackalert: TCP SYN/Normal scan from host: {src}/{src} to TCP port: {port}")
        }
        ScanKind::Fin => {
            format!("attackalert: TCP FIN scan from host: {src}/{src} to TCP port: {port}")
        }
        ScanKind::Null => {
            format!("attackalert: TCP NULL scan from host: {src}/{src} to TCP port: {port}")
        }
        ScanKind::Xmas => {
            format!("attackalert: TCP XMAS scan from host: {src}/{src} to TCP port: {port}")
        }
        // The kinds PortSentry never reported: sentry's own lines (see SENTRY_ONLY_MARKERS).
        ScanKind::Ack => {
            format!("attackalert: TCP ACK scan from host: {src}/{src} to TCP port: {port}")
        }
        ScanKind::Maimon => format!(
            "attackalert: TCP FIN/ACK (Maimon) scan from host: {src}/{src} to TCP port: {port}"
        ),
        ScanKind::IpProtocol => {
            format!("attackalert: IP protocol scan from host: {src}/{src} to IP protocol: {port}")
        }
        ScanKind::SctpInit => {
            format!("attackalert: SCTP INIT scan from host: {src}/{src} to SCTP port: {port}")
        }
        ScanKind::Oddball { flags } => {
            let b = |f: u8| u8::from(flags & f != 0);
            format!(
                "attackalert: Unknown Type: TCP Packet Flags: SYN: {} FIN: {} ACK: {} PSH: {} URG: {} RST: {} from host: {src}/{src} to TCP port: {port}",
                b(SYN),
                b(FIN),
                b(ACK),
                b(PSH),
                b(URG),
                b(RST)
            )
        }
    }
}

/// PortSentry's IP-options warning.
pub fn ip_options_line(src: IpAddr, mode: Mode, port: u16) -> String {
    ip_options_line_for(src, mode.protocol(), port)
}

/// The IP-options warning for a probe of `proto` (PortSentry's line for TCP and UDP).
pub fn ip_options_line_for(src: IpAddr, proto: Protocol, port: u16) -> String {
    format!(
        "attackalert: Packet from host: {src}/{src} to {} has IP options set (detection avoidance technique).",
        target(proto, port)
    )
}

#[derive(Debug)]
enum Sink {
    Syslog {
        sock: Option<UnixDatagram>,
        path: std::path::PathBuf,
    },
    Stderr,
}

#[derive(Debug)]
pub struct Logger {
    sink: Sink,
    pid: u32,
    /// LOG_RATE: lines per second per source.
    rate: u32,
    /// LOG_RATE_TOTAL: lines per second from all sources.
    total: u32,
    second: u64,
    in_second: u32,
    /// Lines this second per source. Only sources that got a line in are entered, so it
    /// holds at most `total` entries.
    per_source: HashMap<IpAddr, u32>,
    /// Lines this second from the reserved share.
    reserved_used: u32,
    /// Sources whose lines were suppressed recently ([`Pending`]).
    pending: Pending,
    /// Up to [`SAMPLES`] distinct sources suppressed this second, for the summary.
    samples: Vec<IpAddr>,
    suppressed: u64,
    /// Lines that could not be delivered at all.
    pub lost: u64,
    buf: String,
}

impl Logger {
    /// Open the log sink. Syslog is connected now (before the seccomp filter); if
    /// `/dev/log` is unavailable, stderr is used and a note says so.
    pub fn open(stderr: bool, rate: u32) -> Self {
        if stderr {
            return Self::with_sink(Sink::Stderr, rate);
        }
        Self::syslog_at(std::path::Path::new(SYSLOG_PATH), rate)
    }

    /// Log to the syslog socket at `path` (tests use a private socket); stderr if it
    /// cannot be reached.
    pub fn syslog_at(path: &std::path::Path, rate: u32) -> Self {
        let sink = match connect_syslog(path) {
            Ok(s) => Sink::Syslog {
                sock: Some(s),
                path: path.to_path_buf(),
            },
            Err(e) => {
                eprintln!(
                    "sentry-sensor: cannot connect to {} ({e}); logging to stderr",
                    path.display()
                );
                Sink::Stderr
            }
        };
        Self::with_sink(sink, rate)
    }

    fn with_sink(sink: Sink, rate: u32) -> Self {
        let pid = std::process::id();
        Self {
            sink,
            pid,
            rate,
            total: rate.saturating_mul(10),
            second: 0,
            in_second: 0,
            per_source: HashMap::new(),
            reserved_used: 0,
            pending: Pending::new(),
            samples: Vec::with_capacity(SAMPLES),
            suppressed: 0,
            lost: 0,
            buf: String::with_capacity(MAX_LINE + 64),
        }
    }

    /// LOG_RATE (per source) and LOG_RATE_TOTAL (all sources), per second.
    pub fn set_rates(&mut self, per_source: u32, total: u32) {
        self.rate = per_source;
        self.total = total;
    }

    pub fn is_stderr(&self) -> bool {
        matches!(self.sink, Sink::Stderr)
    }

    /// An operational line (start-up, errors): never rate-limited.
    pub fn notice(&mut self, msg: &str) {
        self.emit(PRI_NOTICE, msg);
    }

    pub fn error(&mut self, msg: &str) {
        self.emit(PRI_ERR, msg);
    }

    /// The share of LOG_RATE_TOTAL reserved for sources not yet in the log.
    fn reserved(&self) -> u32 {
        self.total / 2
    }

    /// A line a packet from `src` caused: at most LOG_RATE per second from `src` and
    /// LOG_RATE_TOTAL from all sources, half of which only sources whose lines were
    /// suppressed recently may use (see the module documentation). Suppressed lines are
    /// not even formatted.
    pub fn packet(&mut self, now: Mono, src: IpAddr, line: impl FnOnce() -> String) {
        self.roll(now);
        let logged = self.per_source.get(&src).copied().unwrap_or(0);
        if logged >= self.rate {
            self.suppress(src);
            return;
        }
        let shared = self.total - self.reserved();
        let from_shared = self.in_second - self.reserved_used < shared;
        if !from_shared {
            if self.reserved_used >= self.reserved() || !self.pending.contains(src) {
                self.suppress(src);
                return;
            }
            self.reserved_used += 1;
        }
        self.per_source.insert(src, logged + 1);
        self.in_second += 1;
        let l = line();
        self.emit(PRI_NOTICE, &l);
    }

    fn suppress(&mut self, src: IpAddr) {
        self.suppressed += 1;
        self.pending.insert(src);
        if self.samples.len() < SAMPLES && !self.samples.contains(&src) {
            self.samples.push(src);
        }
    }

    /// Called periodically: emits the suppression summary once the second is over.
    pub fn tick(&mut self, now: Mono) {
        self.roll(now);
    }

    pub fn suppressed_total(&self) -> u64 {
        self.suppressed
    }

    fn roll(&mut self, now: Mono) {
        let sec = now.0 / 1000;
        if sec != self.second {
            self.second = sec;
            self.in_second = 0;
            self.reserved_used = 0;
            self.per_source.clear();
            self.pending.rotate(sec);
            if self.suppressed > 0 {
                let n = std::mem::take(&mut self.suppressed);
                let samples: Vec<String> = self.samples.drain(..).map(|a| a.to_string()).collect();
                self.emit(
                    PRI_NOTICE,
                    &format!(
                        "adminalert: suppressed {n} log lines (LOG_RATE per source or LOG_RATE_TOTAL reached); sources include {}",
                        samples.join(", ")
                    ),
                );
            }
        }
    }

    fn emit(&mut self, pri: u8, msg: &str) {
        let msg = truncate(msg, MAX_LINE);
        match &mut self.sink {
            Sink::Stderr => {
                let mut e = io::stderr().lock();
                if writeln!(e, "{msg}").is_err() {
                    self.lost += 1;
                }
            }
            Sink::Syslog { sock, path } => {
                self.buf.clear();
                let tag = syslog_tag(msg);
                let _ = write!(self.buf, "<{pri}>{tag}[{}]: {msg}", self.pid);
                let sent = sock
                    .as_ref()
                    .is_some_and(|s| s.send(self.buf.as_bytes()).is_ok());
                if !sent {
                    // syslogd restarted: reconnect once (socket(AF_UNIX) + connect are
                    // allowed by the seccomp filter for exactly this).
                    *sock = connect_syslog(path).ok();
                    let ok = sock
                        .as_ref()
                        .is_some_and(|s| s.send(self.buf.as_bytes()).is_ok());
                    if !ok {
                        self.lost += 1;
                    }
                }
            }
        }
    }
}

fn connect_syslog(path: &std::path::Path) -> io::Result<UnixDatagram> {
    let s = UnixDatagram::unbound()?;
    s.connect(path)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Mono;
    use std::net::Ipv4Addr;

    const S: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn portsentry_formats() {
        assert_eq!(
            detection_line(ScanKind::Syn, Mode::Stcp, S, 23),
            "attackalert: TCP SYN/Normal scan from host: 192.0.2.7/192.0.2.7 to TCP port: 23"
        );
        assert_eq!(
            detection_line(ScanKind::Fin, Mode::Atcp, S, 1),
            "attackalert: TCP FIN scan from host: 192.0.2.7/192.0.2.7 to TCP port: 1"
        );
        assert_eq!(
            detection_line(ScanKind::Null, Mode::Atcp, S, 1),
            "attackalert: TCP NULL scan from host: 192.0.2.7/192.0.2.7 to TCP port: 1"
        );
        assert_eq!(
            detection_line(ScanKind::Xmas, Mode::Atcp, S, 1),
            "attackalert: TCP XMAS scan from host: 192.0.2.7/192.0.2.7 to TCP port: 1"
        );
        assert_eq!(
            detection_line(ScanKind::Oddball { flags: PSH | URG }, Mode::Stcp, S, 79),
            "attackalert: Unknown Type: TCP Packet Flags: SYN: 0 FIN: 0 ACK: 0 PSH: 1 URG: 1 RST: 0 from host: 192.0.2.7/192.0.2.7 to TCP port: 79"
        );
        assert_eq!(
            detection_line(ScanKind::Udp, Mode::Sudp, S, 137),
            "attackalert: UDP scan from host: 192.0.2.7/192.0.2.7 to UDP port: 137"
        );
        assert_eq!(
            detection_line(ScanKind::Udp, Mode::Udp, S, 137),
            "attackalert: Connect from host: 192.0.2.7/192.0.2.7 to UDP port: 137"
        );
        assert_eq!(
            detection_line(ScanKind::Connect, Mode::Tcp, S, 143),
            "attackalert: Connect from host: 192.0.2.7/192.0.2.7 to TCP port: 143"
        );
        assert_eq!(
            ip_options_line(S, Mode::Stcp, 23),
            "attackalert: Packet from host: 192.0.2.7/192.0.2.7 to TCP port: 23 has IP options set (detection avoidance technique)."
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(detection_line(ScanKind::Syn, Mode::Atcp, v6, 22)
            .contains("from host: 2001:db8::1/2001:db8::1 to TCP port: 22"));
    }

    /// Issue #21: 1,000 forged sources a second, one line each, all before the real
    /// scanner in every second (the worst order for it): its line still gets in, within
    /// its second probe's second.
    #[test]
    fn a_flood_of_forged_sources_leaves_the_scanner_a_line() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("log");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut l = Logger::syslog_at(&path, 50);
        l.set_rates(50, 500);
        let scanner: IpAddr = "198.51.100.77".parse().unwrap();
        let mut scanner_lines = Vec::new();
        let mut summaries = Vec::new();
        let drain = |summaries: &mut Vec<String>| {
            let mut buf = [0u8; 2048];
            while let Ok(n) = rx.recv(&mut buf) {
                let t = String::from_utf8_lossy(&buf[..n]).into_owned();
                if t.contains("adminalert: suppressed ") {
                    summaries.push(t);
                }
            }
        };
        let mut forged: u32 = 0;
        for sec in 0..4u64 {
            for i in 0..1000u64 {
                forged = forged.wrapping_add(2_654_435_761);
                let src = IpAddr::V4(Ipv4Addr::from((forged & 0x00ff_ffff) | 0x0a00_0000));
                l.packet(Mono(sec * 1000 + i / 2), src, || {
                    "attackalert: forged".into()
                });
                if i % 100 == 0 {
                    drain(&mut summaries);
                }
            }
            // The scanner's probes of this second come last.
            for port in 0..3u16 {
                l.packet(Mono(sec * 1000 + 600 + u64::from(port)), scanner, || {
                    scanner_lines.push((sec, port));
                    detection_line(ScanKind::Syn, Mode::Atcp, scanner, 40 + port)
                });
            }
        }
        l.tick(Mono(10_000));
        drain(&mut summaries);
        assert!(
            scanner_lines.first().is_some_and(|(sec, _)| *sec == 0),
            "the scanner got no line in its first second: {scanner_lines:?}"
        );
        // The flood is still capped at LOG_RATE_TOTAL, and summarised with samples.
        assert!(l.suppressed_total() == 0);
        assert!(!summaries.is_empty());
        let s = &summaries[0];
        assert!(
            s.contains(
                "log lines (LOG_RATE per source or LOG_RATE_TOTAL reached); sources include 10."
            ),
            "{s}"
        );
        assert!(s.matches(", ").count() == SAMPLES - 1, "{s}");
    }

    #[test]
    fn the_reserved_share_is_bounded_and_forged_one_shots_rarely_reach_it() {
        let mut l = Logger::open(true, 1_000);
        l.set_rates(1_000, 10);
        // Fill the shared half with five sources, then five more one-shot sources.
        let mut made = 0;
        for i in 0..10u32 {
            let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            l.packet(Mono(1_000), src, || {
                made += 1;
                String::new()
            });
        }
        assert_eq!(made, 5, "one-shot sources used the reserved share");
        // Each of those suppressed sources probes again: the reserved half takes them.
        for i in 5..10u32 {
            let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            l.packet(Mono(1_001), src, || {
                made += 1;
                String::new()
            });
        }
        assert_eq!(made, 10);
        // And no more than the total.
        l.packet(Mono(1_002), "192.0.2.1".parse().unwrap(), || {
            made += 1;
            String::new()
        });
        assert_eq!(made, 10);
    }

    #[test]
    fn rate_limit_counts_and_summarises() {
        let mut l = Logger::open(true, 3);
        let mut made = 0;
        for _ in 0..10 {
            l.packet(Mono(5_000), S, || {
                made += 1;
                "x".into()
            });
        }
        assert_eq!(made, 3, "suppressed lines are not even formatted");
        assert_eq!(l.suppressed_total(), 7);
        l.tick(Mono(6_000));
        assert_eq!(l.suppressed_total(), 0);
        l.packet(Mono(6_001), S, || {
            made += 1;
            "y".into()
        });
        assert_eq!(made, 4);
    }

    #[test]
    fn one_source_cannot_hide_another_and_the_total_holds() {
        let mut l = Logger::open(true, 3);
        l.set_rates(3, 10);
        let other: IpAddr = "198.51.100.9".parse().unwrap();
        let mut lines = Vec::new();
        // A noisy source first: only 3 of its 1000 lines...
        for _ in 0..1000 {
            l.packet(Mono(5_000), S, || {
                lines.push("noisy");
                String::new()
            });
        }
        // ... so another source's lines still get through in the same second.
        for _ in 0..2 {
            l.packet(Mono(5_001), other, || {
                lines.push("other");
                String::new()
            });
        }
        assert_eq!(lines.iter().filter(|l| **l == "other").count(), 2);
        // Many sources: LOG_RATE_TOTAL caps the second.
        for i in 0..100u32 {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0200 + i + 100));
            l.packet(Mono(5_002), src, || {
                lines.push("many");
                String::new()
            });
        }
        // One-shot sources get the shared half, already spent by the first two.
        assert_eq!(lines.len(), 5);
        // Those that probe again take the reserved half, and no more: the total holds.
        for i in 0..100u32 {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0200 + i + 100));
            l.packet(Mono(5_003), src, || {
                lines.push("many");
                String::new()
            });
        }
        assert_eq!(lines.len(), 10);
        assert_eq!(l.suppressed_total(), 997 + 100 + 95);
        assert!(l.per_source.len() <= 10);
    }

    #[test]
    fn syslog_datagrams_and_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut l = Logger::syslog_at(&path, 10);
        assert!(!l.is_stderr());
        l.notice("adminalert: hello");
        l.packet(Mono(1), S, || {
            detection_line(ScanKind::Syn, Mode::Stcp, S, 23)
        });
        let mut buf = [0u8; 2048];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!(
                "<29>sentry-sensor[{}]: adminalert: hello",
                std::process::id()
            )
        );
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!(
                "<29>portsentry[{}]: attackalert: TCP SYN/Normal scan from host: 192.0.2.7/192.0.2.7 to TCP port: 23",
                std::process::id()
            )
        );
        // syslogd restarts: the logger reconnects on the next line.
        drop(server);
        std::fs::remove_file(&path).unwrap();
        let server = UnixDatagram::bind(&path).unwrap();
        l.error("adminalert: after restart");
        let n = server.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("<27>sentry-sensor["));
        assert_eq!(l.lost, 0);
    }

    #[test]
    fn decisions_in_portsentry_words_where_portsentry_had_them() {
        use sentry_proto::Decision;
        assert_eq!(
            decision_line(S, ScanKind::Syn, Mode::Atcp, 22, Decision::Blocked),
            format!(
                "attackalert: Host 192.0.2.7 has been blocked by sentry-enforcer ({} TCP port 22)",
                ScanKind::Syn
            )
        );
        assert_eq!(
            decision_line(S, ScanKind::Syn, Mode::Atcp, 22, Decision::AlreadyBlocked),
            "attackalert: Host: 192.0.2.7 is already blocked. Ignoring"
        );
        let l = decision_line(S, ScanKind::Udp, Mode::Audp, 161, Decision::Ignored);
        assert!(l.starts_with("adminalert: sentry-enforcer decision for host 192.0.2.7: "));
        assert_eq!(syslog_tag(&l), SENTRY_TAG);
    }

    #[test]
    fn portsentry_tag_only_for_portsentry_forms() {
        for (line, tag) in [
            (detection_line(ScanKind::Syn, Mode::Atcp, S, 23), "portsentry"),
            (ip_options_line(S, Mode::Stcp, 23), "portsentry"),
            ("adminalert: Going into listen mode on TCP port: 1".into(), "portsentry"),
            ("adminalert: sentry-sensor 0.1.0 is active: modes -atcp".into(), "sentry-sensor"),
            ("adminalert: connected to sentry-enforcer at /run/sentry/enforcer.sock".into(), "sentry-sensor"),
            ("adminalert: sentry-enforcer decision for host 192.0.2.7: blocked (syn TCP port 23)".into(), "sentry-sensor"),
            ("adminalert: suppressed 3 log lines (LOG_RATE per source or LOG_RATE_TOTAL reached)".into(), "sentry-sensor"),
            ("adminalert: ERROR: configuration rejected".into(), "sentry-sensor"),
        ] {
            assert_eq!(syslog_tag(&line), tag, "{line}");
        }
    }

    /// The kinds PortSentry never reported get lines in its style, tagged as sentry's own.
    #[test]
    fn other_kinds_lines_are_sentrys_own() {
        for (line, want) in [
            (
                detection_line(ScanKind::Ack, Mode::Atcp, S, 80),
                "attackalert: TCP ACK scan from host: 192.0.2.7/192.0.2.7 to TCP port: 80",
            ),
            (
                detection_line(ScanKind::Maimon, Mode::Stcp, S, 23),
                "attackalert: TCP FIN/ACK (Maimon) scan from host: 192.0.2.7/192.0.2.7 to TCP port: 23",
            ),
            (
                detection_line(ScanKind::IpProtocol, Mode::Atcp, S, 0),
                "attackalert: IP protocol scan from host: 192.0.2.7/192.0.2.7 to IP protocol: 0",
            ),
            (
                detection_line(ScanKind::SctpInit, Mode::Atcp, S, 80),
                "attackalert: SCTP INIT scan from host: 192.0.2.7/192.0.2.7 to SCTP port: 80",
            ),
            (
                ip_options_line_for(S, Protocol::Sctp, 80),
                "attackalert: Packet from host: 192.0.2.7/192.0.2.7 to SCTP port: 80 has IP options set (detection avoidance technique).",
            ),
        ] {
            assert_eq!(line, want);
            assert_eq!(syslog_tag(&line), SENTRY_TAG, "{line}");
        }
        assert_eq!(
            decision_line(S, ScanKind::IpProtocol, Mode::Atcp, 253, sentry_proto::Decision::LogOnly),
            "adminalert: sentry-enforcer decision for host 192.0.2.7: log_only (ipproto IP protocol 253)"
        );
        assert_eq!(
            ip_options_line_for(S, Protocol::Tcp, 23),
            ip_options_line(S, Mode::Stcp, 23)
        );
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1023);
        assert!(t.len() <= 1023 && t.is_char_boundary(t.len()));
    }
}
