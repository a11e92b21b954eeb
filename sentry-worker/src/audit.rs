//! The audit log (AUDIT_LOG): one JSON object per line per decision, appended and flushed
//! to the kernel before the reply is sent. Also the syslog writer for PortSentry's
//! `attackalert:` / `adminalert:` lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sentry_proto::{Decision, Mode, Protocol, ScanKind};
use serde::Serialize;

use crate::time::{WallMs, WallUs};

/// Who sent the request (from SO_PEERCRED, never from the message).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: u32,
}

/// Which action an [`ActionRecord`] is about; serialised under the audit log's names.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// The source's element in the `v4` / `v6` set (netlink).
    Nftables,
    /// A blackhole route (BLACKHOLE_ROUTE, rtnetlink).
    BlackholeRoute,
    /// The KILL_ROUTE command.
    KillRoute,
    /// The KILL_HOSTS_DENY line in HOSTS_DENY_FILE.
    HostsDeny,
    /// The KILL_RUN_CMD command.
    KillRunCmd,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nftables => "nftables",
            Self::BlackholeRoute => "blackhole_route",
            Self::KillRoute => "kill_route",
            Self::HostsDeny => "hosts_deny",
            Self::KillRunCmd => "kill_run_cmd",
        }
    }
}

/// Whether an action took effect.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Ok,
    Error,
}

/// One executed action.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ActionRecord {
    pub action: ActionKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub status: ActionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ms: f64,
}

impl ActionRecord {
    /// The record of an action done in-process (netlink, a file edit): `ok`, or `error`
    /// with the error's text. Commands have their own record (argv, exit code).
    pub fn outcome<T, E: std::fmt::Display>(
        action: ActionKind,
        target: Option<String>,
        r: Result<T, E>,
        ms: f64,
    ) -> Self {
        let error = r.err().map(|e| e.to_string());
        Self {
            action,
            argv: None,
            target,
            status: if error.is_none() {
                ActionStatus::Ok
            } else {
                ActionStatus::Error
            },
            exit_code: None,
            error,
            ms,
        }
    }

    pub fn ok(&self) -> bool {
        self.status == ActionStatus::Ok
    }
}

/// What an audit record reports: a decision on a block request, or an event that is not
/// an answer to one. Serialised as the record's `decision` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Decision(Decision),
    /// `sentryctl unblock`, or the ignore list / never-block set now covers the address.
    Unblocked,
    /// BLOCK_TIMEOUT passed.
    Expired,
    /// Re-applied from the state directory at start.
    Restored,
    /// A sensor-made block's evidence grew: the source went on probing after its block
    /// (the kernel drops its probes and still copies them), with more distinct ports.
    Evidence,
    /// The actions of a block that ran after its decision (KILL_*, hosts.deny, the
    /// blackhole route: `engine::effects`), with their results.
    Effects,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decision(d) => d.as_str(),
            Self::Unblocked => "unblocked",
            Self::Expired => "expired",
            Self::Restored => "restored",
            Self::Evidence => "evidence",
            Self::Effects => "effects",
        }
    }
}

impl Serialize for RecordKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl From<Decision> for RecordKind {
    fn from(d: Decision) -> Self {
        Self::Decision(d)
    }
}

/// The counts of one start-up restore ([`AuditRecord::restore`]).
#[derive(Serialize, Clone, Debug, PartialEq, Default)]
pub struct RestoreCounts {
    /// Persisted blocks still due, re-applied.
    pub restored: u64,
    /// Of those, elements found in the kernel's sets when read back after the table build.
    pub verified: u64,
    /// Elements the read-back did not find, added again over netlink.
    pub readded: u64,
    /// Elements still not in the kernel after that (each one an error).
    pub missing: u64,
    /// KILL_ROUTE commands re-run because the kernel booted since the last start, and how
    /// many of them failed.
    pub kill_route_rerun: u64,
    pub kill_route_failed: u64,
    pub ms: f64,
}

/// One line of the audit log. Its names are the decision-record schema's
/// ([`sentry_proto::record`], docs/records.md), which `sentryctl watch --json`, `explain
/// --json` and `status --json` print too.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct AuditRecord {
    /// RFC 3339 UTC, millisecond resolution.
    pub time: String,
    /// The same instant in microseconds since the Unix epoch. For block requests it is
    /// taken when the enforcer starts on the request, to the microsecond, so decision
    /// latency can be measured; records that are not answers to a request (expiry,
    /// unblock, restore, refused connections) carry their millisecond time × 1000.
    pub time_us: u64,
    #[serde(serialize_with = "display")]
    pub source: Option<IpAddr>,
    #[serde(serialize_with = "display")]
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
    #[serde(serialize_with = "display")]
    pub scan: Option<ScanKind>,
    #[serde(serialize_with = "display")]
    pub mode: Option<Mode>,
    pub decision: RecordKind,
    /// Present (`true`) only on an AUDIT_RATE summary: one record standing for the
    /// `suppressed` records of `decision` not written individually in one second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    /// Times (µs since the epoch) of the first and last suppressed record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_us: Option<u64>,
    /// The first distinct sources among them (at most `budget::SAMPLE_MAX`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<Vec<String>>,
    /// Present only on the one summary record of a start-up restore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreCounts>,
    pub reason: String,
    pub peer: Option<Peer>,
    pub actions: Vec<ActionRecord>,
    /// Who asked: `sensor`, or a control client's origin name (`sentryctl block
    /// --origin`, the fleet bridge's `crowdsec`). Absent on records about no request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The evidence of a sensor request: distinct ports seen, completed handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_ports: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake: Option<bool>,
    /// When the block ends (ms since the epoch), on records of a block made or restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// The IPv6 prefix length when the block covers a network (BLOCK_PREFIX6): `source`
    /// is then the network's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    /// A fleet block's `scenario`, `decision_id`, `alert_id` and `machine`, flat and
    /// each left out when not known (on every record about a fleet block: blocked,
    /// unblocked, expired, restored).
    #[serde(flatten)]
    pub meta: sentry_proto::BlockMeta,
    /// [`sentry_proto::RECORD_SCHEMA`]; last, so that a line still starts as it did
    /// before the field existed (for line-oriented matchers anchored at `{"time":`).
    pub schema: u32,
}

/// An optional field in its `Display` form, the names of [`Protocol::as_str`] and its
/// siblings (serde's own form of `ScanKind::Oddball` would be a map); `null` when absent.
fn display<T: std::fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

impl AuditRecord {
    /// A record about a connection or frame rather than a block request.
    pub fn event(time: WallMs, decision: RecordKind, reason: String, peer: Option<Peer>) -> Self {
        Self::event_us(time.us(), decision, reason, peer)
    }

    /// [`AuditRecord::event`] with a microsecond timestamp.
    pub fn event_us(
        time: WallUs,
        decision: RecordKind,
        reason: String,
        peer: Option<Peer>,
    ) -> Self {
        Self {
            schema: sentry_proto::RECORD_SCHEMA,
            time: sentry_proto::logfmt::format_utc(time.ms().0),
            time_us: time.0,
            source: None,
            protocol: None,
            port: None,
            scan: None,
            mode: None,
            decision,
            summary: None,
            suppressed: None,
            first_us: None,
            last_us: None,
            sample: None,
            restore: None,
            reason,
            peer,
            actions: Vec::new(),
            origin: None,
            distinct_ports: None,
            handshake: None,
            expires_ms: None,
            prefix: None,
            meta: sentry_proto::BlockMeta::default(),
        }
    }

    /// Fill the request fields from a block's record (unblock, expiry, restore).
    pub fn set_block(&mut self, b: &crate::store::BlockRecord) {
        self.source = Some(b.addr);
        self.prefix = b.prefix6;
        match &b.origin {
            None => {
                self.protocol = Some(b.protocol);
                self.port = Some(b.port);
                self.scan = Some(b.scan);
                self.mode = Some(b.mode);
                self.origin = Some(sentry_proto::ORIGIN_SENSOR.to_string());
                // The evidence the block was made on (0 ports: a record from before it
                // was kept).
                self.distinct_ports = Some(b.distinct_ports);
                self.handshake = Some(b.scan == ScanKind::Connect);
            }
            Some(o) => {
                self.origin = Some(o.clone());
                self.meta = b.meta.clone();
            }
        }
    }

    /// The record standing for the records `s` counts instead of writing them; `rate` is
    /// AUDIT_RATE, `now_us` the time it is written.
    pub fn summary(now: WallUs, s: &crate::budget::Summary, rate: u32) -> Self {
        let mut r = Self::event_us(
            now,
            s.decision.into(),
            format!("AUDIT_RATE={rate} per second reached"),
            None,
        );
        r.summary = Some(true);
        r.suppressed = Some(s.suppressed);
        r.first_us = Some(s.first_us);
        r.last_us = Some(s.last_us);
        r.sample = Some(s.sample.iter().map(ToString::to_string).collect());
        r
    }

    pub fn with_source(mut self, addr: IpAddr) -> Self {
        self.source = Some(addr);
        self
    }
}

/// Append-only JSON-lines writer.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
}

impl AuditLog {
    /// Open (creating, mode 0640) the audit log. Refuses symlinks and files writable by
    /// group or others.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(dir)?;
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        let md = file.metadata()?;
        if !md.is_file() || md.mode() & 0o022 != 0 {
            return Err(io::Error::other(format!(
                "{}: not a regular file, or writable by group or others",
                path.display()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as one write(2) on an O_APPEND descriptor (lines from one writer
    /// never interleave) and return once the kernel has it.
    pub fn write(&mut self, rec: &AuditRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }
}

/// Where log lines go.
#[derive(Debug)]
enum Sink {
    Stderr,
    Syslog(Mutex<Option<UnixDatagram>>),
}

/// Syslog (facility daemon) or stderr (with `--log-stderr` or under systemd's journal).
#[derive(Debug)]
pub struct Logger {
    sink: Sink,
    ident: &'static str,
}

/// Syslog severities used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

const LOG_DAEMON: u8 = 3 << 3;

impl Logger {
    pub fn new(stderr: bool, ident: &'static str) -> Self {
        let sink = if stderr {
            Sink::Stderr
        } else {
            Sink::Syslog(Mutex::new(None))
        };
        Self { sink, ident }
    }

    pub fn log(&self, level: Level, msg: &str) {
        // Never let a control character from anywhere split or forge a log line.
        let clean: String = msg
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        match &self.sink {
            Sink::Stderr => {
                let _ = writeln!(io::stderr().lock(), "{clean}");
            }
            Sink::Syslog(sock) => {
                let line = format!(
                    "<{}>{}[{}]: {clean}",
                    LOG_DAEMON | level as u8,
                    self.ident,
                    std::process::id()
                );
                let Ok(mut guard) = sock.lock() else { return };
                for _ in 0..2 {
                    if guard.is_none() {
                        *guard = UnixDatagram::unbound()
                            .and_then(|s| s.connect("/dev/log").map(|()| s))
                            .ok();
                    }
                    match guard.as_ref().map(|s| s.send(line.as_bytes())) {
                        Some(Ok(_)) => return,
                        _ => *guard = None,
                    }
                }
                // syslog unavailable: fall back to stderr rather than lose the line.
                let _ = writeln!(io::stderr().lock(), "{clean}");
            }
        }
    }

    pub fn notice(&self, msg: &str) {
        self.log(Level::Notice, msg);
    }
    pub fn warn(&self, msg: &str) {
        self.log(Level::Warning, msg);
    }
    pub fn err(&self, msg: &str) {
        self.log(Level::Err, msg);
    }
    pub fn info(&self, msg: &str) {
        self.log(Level::Info, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_are_json() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/audit.jsonl");
        let mut a = AuditLog::open(&p).unwrap();
        let mut r = AuditRecord::event(
            WallMs(0),
            Decision::Rejected.into(),
            "bad \"frame\"\n".into(),
            None,
        )
        .with_source("192.0.2.1".parse().unwrap());
        r.actions.push(ActionRecord {
            action: ActionKind::KillRoute,
            argv: Some(vec!["/bin/false".into()]),
            target: None,
            status: ActionStatus::Error,
            exit_code: Some(1),
            error: Some("exit 1".into()),
            ms: 1.5,
        });
        a.write(&r).unwrap();
        a.write(&AuditRecord::event(
            WallMs(1),
            RecordKind::Expired,
            "x".into(),
            Some(Peer { uid: 1, pid: 2 }),
        ))
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["decision"], "rejected");
        assert_eq!(lines[0]["source"], "192.0.2.1");
        assert_eq!(lines[0]["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(lines[0]["actions"][0]["exit_code"], 1);
        assert_eq!(lines[1]["peer"]["uid"], 1);
        assert_eq!(lines[0]["time_us"], 0);
        assert_eq!(lines[1]["time_us"], 1000);
        assert_eq!(lines[1]["time"], "1970-01-01T00:00:00.001Z");
    }

    #[test]
    fn time_us_keeps_microseconds_and_time_agrees() {
        let r = AuditRecord::event_us(
            WallUs(1_700_000_000_123_456),
            Decision::Blocked.into(),
            String::new(),
            None,
        );
        assert_eq!(r.time_us, 1_700_000_000_123_456);
        assert_eq!(r.time, "2023-11-14T22:13:20.123Z");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["time_us"].as_u64(), Some(1_700_000_000_123_456));
    }

    #[test]
    fn ordinary_records_have_no_summary_fields() {
        // Byte for byte what records looked like before the summary fields existed, plus
        // the schema version at the end.
        let r = AuditRecord::event(
            WallMs(1),
            RecordKind::Expired,
            "x".into(),
            Some(Peer { uid: 1, pid: 2 }),
        )
        .with_source("192.0.2.1".parse().unwrap());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            "{\"time\":\"1970-01-01T00:00:00.001Z\",\"time_us\":1000,\"source\":\"192.0.2.1\",\
             \"protocol\":null,\"port\":null,\"scan\":null,\"mode\":null,\"decision\":\"expired\",\
             \"reason\":\"x\",\"peer\":{\"uid\":1,\"pid\":2},\"actions\":[],\"schema\":1}"
        );
    }

    #[test]
    fn summary_record_fields() {
        let s = crate::budget::Summary {
            decision: sentry_proto::Decision::RateLimited,
            suppressed: 9900,
            first_us: 1_700_000_000_000_100,
            last_us: 1_700_000_000_999_000,
            sample: vec![
                "203.0.113.7".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ],
        };
        let v = serde_json::to_value(AuditRecord::summary(WallUs(1_700_000_001_000_500), &s, 100))
            .unwrap();
        assert_eq!(v["decision"], "rate_limited");
        assert_eq!(v["summary"], true);
        assert_eq!(v["suppressed"], 9900);
        assert_eq!(v["first_us"], 1_700_000_000_000_100u64);
        assert_eq!(v["last_us"], 1_700_000_000_999_000u64);
        assert_eq!(
            v["sample"],
            serde_json::json!(["203.0.113.7", "2001:db8::1"])
        );
        assert_eq!(v["reason"], "AUDIT_RATE=100 per second reached");
        assert_eq!(v["time_us"], 1_700_000_001_000_500u64);
        assert_eq!(v["time"], "2023-11-14T22:13:21.000Z");
        assert!(v["source"].is_null());
    }

    #[test]
    fn refuses_symlinked_audit_log() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::write(&t, "").unwrap();
        let l = d.path().join("l");
        std::os::unix::fs::symlink(&t, &l).unwrap();
        assert!(AuditLog::open(&l).is_err());
    }
}
