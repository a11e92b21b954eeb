//! Typed audit records: one [`AuditLine`] per line of the enforcer's AUDIT_LOG.
//!
//! Unknown fields are refused (`deny_unknown_fields`), so a field the enforcer adds or
//! renames fails the tests that read the log, instead of being silently ignored.

use std::net::IpAddr;
use std::path::Path;

use sentry_proto::{Mode, Protocol};
use serde::Deserialize;

/// The `decision` field: a decision on a block request, or an event about a block.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    Blocked,
    AlreadyBlocked,
    Ignored,
    NeverBlock,
    LogOnly,
    CommandOnly,
    RateLimited,
    Capped,
    Rejected,
    Failed,
    Unblocked,
    Expired,
    Restored,
    /// A blocked source went on probing: its block's evidence grew.
    Evidence,
    /// The actions of a block that ran after its decision (KILL_*, hosts.deny).
    Effects,
}

impl From<sentry_proto::Decision> for AuditDecision {
    fn from(d: sentry_proto::Decision) -> Self {
        use sentry_proto::Decision as D;
        match d {
            D::Blocked => Self::Blocked,
            D::AlreadyBlocked => Self::AlreadyBlocked,
            D::Ignored => Self::Ignored,
            D::NeverBlock => Self::NeverBlock,
            D::LogOnly => Self::LogOnly,
            D::CommandOnly => Self::CommandOnly,
            D::RateLimited => Self::RateLimited,
            D::Capped => Self::Capped,
            D::Rejected => Self::Rejected,
            D::Failed => Self::Failed,
        }
    }
}

/// Which action an [`AuditAction`] is about.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Nftables,
    BlackholeRoute,
    KillRoute,
    HostsDeny,
    KillRunCmd,
}

/// Whether an action took effect.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Ok,
    Error,
}

/// Who sent the request (SO_PEERCRED).
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub uid: u32,
    pub pid: u32,
}

/// One executed action of a decision.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditAction {
    pub action: ActionKind,
    pub argv: Option<Vec<String>>,
    pub target: Option<String>,
    pub status: ActionStatus,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub ms: f64,
}

/// One line of the audit log.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditLine {
    /// RFC 3339 UTC, millisecond resolution.
    pub time: String,
    pub time_us: u64,
    pub source: Option<IpAddr>,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
    /// The scan kind's name (`syn`, `fin`, `null`, `xmas`, `oddball`, `udp`, `connect`).
    pub scan: Option<String>,
    pub mode: Option<Mode>,
    pub decision: AuditDecision,
    /// `Some(true)` only on an AUDIT_RATE summary.
    pub summary: Option<bool>,
    pub suppressed: Option<u64>,
    pub first_us: Option<u64>,
    pub last_us: Option<u64>,
    pub sample: Option<Vec<IpAddr>>,
    pub reason: String,
    pub peer: Option<Peer>,
    pub actions: Vec<AuditAction>,
    /// `sensor`, or a control client's origin name (`sentryctl block --origin`).
    #[serde(default)]
    pub origin: Option<String>,
    /// The evidence of a sensor request.
    #[serde(default)]
    pub distinct_ports: Option<u32>,
    #[serde(default)]
    pub handshake: Option<bool>,
    /// When the block ends (ms since the epoch).
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// Only on the one summary record of a start-up restore.
    #[serde(default)]
    pub restore: Option<RestoreCounts>,
    /// The prefix length when the block covers an IPv6 network (BLOCK_PREFIX6).
    #[serde(default)]
    pub prefix: Option<u8>,
    /// A fleet block's decision: scenario, LAPI decision and alert ids, the machine that
    /// sent the alert (each absent when not known, and on every other record).
    #[serde(default)]
    pub scenario: Option<String>,
    #[serde(default)]
    pub decision_id: Option<u64>,
    #[serde(default)]
    pub alert_id: Option<u64>,
    #[serde(default)]
    pub machine: Option<String>,
    /// The decision-record schema (docs/records.md); every record has it.
    pub schema: u32,
}

/// The counts of a start-up restore, as the enforcer writes them.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreCounts {
    pub restored: u64,
    pub verified: u64,
    pub readded: u64,
    pub missing: u64,
    pub kill_route_rerun: u64,
    pub kill_route_failed: u64,
    pub ms: f64,
}

impl AuditLine {
    /// An AUDIT_RATE summary standing for suppressed records.
    pub fn is_summary(&self) -> bool {
        self.summary == Some(true)
    }

    /// A record about `ip` with `decision`.
    pub fn is(&self, ip: IpAddr, decision: AuditDecision) -> bool {
        self.source == Some(ip) && self.decision == decision
    }

    /// The kinds of the actions, in the order they ran.
    pub fn action_kinds(&self) -> Vec<ActionKind> {
        self.actions.iter().map(|a| a.action).collect()
    }

    /// Every action succeeded.
    pub fn all_ok(&self) -> bool {
        self.actions.iter().all(|a| a.status == ActionStatus::Ok)
    }
}

/// Parse one audit log text; a line that is not an [`AuditLine`] fails the test.
pub fn parse_audit(text: &str) -> Vec<AuditLine> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("audit log line {} is not an AuditLine: {e}: {l}", i + 1)
            })
        })
        .collect()
}

/// Every record of the audit log at `path` (none if it does not exist yet).
pub fn read_audit(path: &Path) -> Vec<AuditLine> {
    parse_audit(&std::fs::read_to_string(path).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = r#"{"time":"2026-01-01T00:00:00.001Z","time_us":1000,"source":"192.0.2.1","protocol":"tcp","port":22,"scan":"syn","mode":"stcp","decision":"blocked","reason":"r","peer":{"uid":0,"pid":7},"actions":[{"action":"nftables","status":"ok","ms":0.5},{"action":"kill_route","argv":["/bin/true"],"status":"error","exit_code":1,"ms":1.0}],"schema":1}"#;

    #[test]
    fn a_block_record_parses_into_types() {
        let a = parse_audit(BLOCK);
        assert_eq!(a.len(), 1);
        let r = &a[0];
        assert!(r.is("192.0.2.1".parse().unwrap(), AuditDecision::Blocked));
        assert_eq!(r.protocol, Some(Protocol::Tcp));
        assert_eq!(r.mode, Some(Mode::Stcp));
        assert_eq!(
            r.action_kinds(),
            [ActionKind::Nftables, ActionKind::KillRoute]
        );
        assert_eq!(r.actions[1].status, ActionStatus::Error);
        assert_eq!(r.actions[1].exit_code, Some(1));
        assert!(!r.all_ok());
        assert!(!r.is_summary());
    }

    #[test]
    #[should_panic(expected = "unknown field")]
    fn an_unknown_field_fails() {
        parse_audit(&BLOCK.replace("\"reason\"", "\"renamed\":1,\"reason\""));
    }

    #[test]
    #[should_panic(expected = "unknown variant")]
    fn an_unknown_decision_fails() {
        parse_audit(&BLOCK.replace("\"blocked\"", "\"bloqued\""));
    }
}
