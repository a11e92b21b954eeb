//! The JSON form of a decision record: one schema, versioned, for the audit log
//! (AUDIT_LOG), `sentryctl watch --json`, the `decisions` of `sentryctl explain --json`
//! and the `recent` decisions of `sentryctl status --json` (docs/records.md).
//!
//! The audit log's names are the schema's (it is the oldest consumer's format: fail2ban
//! and jq one-liners read it): `decision`, not `kind`; `time_us`, not `time_ms`; the
//! evidence flat (`distinct_ports`, `handshake`), not nested; scan kinds by their
//! [`ScanKind::as_str`] names. Every record carries `"schema": RECORD_SCHEMA`.
//!
//! Only the JSON changes here: the binary frames (bincode) do not use field names, so
//! [`WatchRecord`] and [`RecentDecision`] keep their Rust fields and wire layout, and
//! their serde form goes through the structs below.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{BlockMeta, EvidenceInfo, Mode, Protocol, RecentDecision, ScanKind, WatchRecord};

/// The version of the decision-record schema. Adding an optional field keeps it;
/// renaming, removing or changing the meaning of a field raises it.
pub const RECORD_SCHEMA: u32 = 1;

/// Every scan kind, in a fixed order (for lists and series that exist before anything
/// is seen).
pub const SCAN_KINDS: [ScanKind; 11] = [
    ScanKind::Connect,
    ScanKind::Syn,
    ScanKind::Fin,
    ScanKind::Null,
    ScanKind::Xmas,
    ScanKind::Oddball { flags: 0 },
    ScanKind::Udp,
    ScanKind::Ack,
    ScanKind::Maimon,
    ScanKind::IpProtocol,
    ScanKind::SctpInit,
];

impl ScanKind {
    /// The kind an [`ScanKind::as_str`] name stands for. `oddball` comes back with
    /// flags 0: the name does not carry the flag byte.
    pub fn from_name(s: &str) -> Option<Self> {
        SCAN_KINDS.into_iter().find(|k| k.as_str() == s)
    }
}

/// `#[serde(with = "scan_name")]`: a scan kind as its [`ScanKind::as_str`] name, as the
/// audit log writes it (serde's own form would be `ipprotocol`, `sctpinit` and a map for
/// `oddball`).
pub mod scan_name {
    use super::ScanKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &ScanKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ScanKind, D::Error> {
        let s = String::deserialize(d)?;
        ScanKind::from_name(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown scan kind {s:?}")))
    }
}

/// `#[serde(with = "opt_scan_name")]`: an optional scan kind by its name (see
/// [`scan_name`]).
pub mod opt_scan_name {
    use super::ScanKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &Option<ScanKind>, s: S) -> Result<S::Ok, S::Error> {
        match k {
            Some(k) => s.serialize_str(k.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ScanKind>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => ScanKind::from_name(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown scan kind {s:?}"))),
        }
    }
}

fn schema_ok(v: u32) -> Result<(), String> {
    if v == RECORD_SCHEMA {
        Ok(())
    } else {
        Err(format!(
            "decision record schema {v} (this build reads {RECORD_SCHEMA})"
        ))
    }
}

/// The serde form of a [`WatchRecord`]. Fields the audit log writes as `null` when absent
/// (`source`, `protocol`, `port`, `scan`, `mode`) are always present; the optional ones
/// are left out when absent, as there.
#[derive(Serialize, Deserialize)]
pub(crate) struct RecordJson {
    schema: u32,
    /// The stream's sequence number (this enforcer run's; with the run it is the cursor).
    seq: u64,
    time_us: u64,
    decision: String,
    source: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<u8>,
    protocol: Option<Protocol>,
    port: Option<u16>,
    scan: Option<String>,
    mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    distinct_ports: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handshake: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    suppressed: Option<u64>,
    reason: String,
    /// A fleet block's `scenario`, `decision_id`, `alert_id`, `machine` (added within
    /// schema 1: absent when not known, and on every other record).
    #[serde(flatten)]
    meta: BlockMeta,
}

impl From<WatchRecord> for RecordJson {
    fn from(r: WatchRecord) -> Self {
        Self {
            schema: RECORD_SCHEMA,
            seq: r.seq,
            time_us: r.time_us,
            decision: r.kind,
            source: r.source,
            prefix: r.prefix,
            protocol: r.protocol,
            port: r.port,
            scan: r.scan.map(|s| s.as_str().to_string()),
            mode: r.mode,
            origin: r.origin,
            distinct_ports: r.evidence.map(|e| e.distinct_ports),
            handshake: r.evidence.map(|e| e.handshake),
            expires_ms: r.expires_ms,
            suppressed: r.suppressed,
            reason: r.reason,
            meta: r.meta,
        }
    }
}

impl TryFrom<RecordJson> for WatchRecord {
    type Error = String;
    fn try_from(j: RecordJson) -> Result<Self, String> {
        schema_ok(j.schema)?;
        let scan = match j.scan {
            None => None,
            Some(s) => {
                Some(ScanKind::from_name(&s).ok_or_else(|| format!("unknown scan kind {s:?}"))?)
            }
        };
        Ok(Self {
            seq: j.seq,
            time_us: j.time_us,
            kind: j.decision,
            source: j.source,
            prefix: j.prefix,
            protocol: j.protocol,
            port: j.port,
            scan,
            mode: j.mode,
            origin: j.origin,
            evidence: match (j.distinct_ports, j.handshake) {
                (Some(distinct_ports), Some(handshake)) => Some(EvidenceInfo {
                    distinct_ports,
                    handshake,
                }),
                _ => None,
            },
            expires_ms: j.expires_ms,
            suppressed: j.suppressed,
            reason: j.reason,
            meta: j.meta,
        })
    }
}

/// The serde form of a [`RecentDecision`]: the schema's names for the fields it has.
/// The status page keeps milliseconds on the wire; `time_us` is that time × 1000, as the
/// audit log writes records that are not answers to a request.
#[derive(Serialize, Deserialize)]
pub(crate) struct RecentJson {
    schema: u32,
    time_us: u64,
    decision: String,
    source: Option<IpAddr>,
    reason: String,
}

impl From<RecentDecision> for RecentJson {
    fn from(r: RecentDecision) -> Self {
        Self {
            schema: RECORD_SCHEMA,
            time_us: r.time_ms.saturating_mul(1000),
            decision: r.decision,
            source: r.source,
            reason: r.reason,
        }
    }
}

impl TryFrom<RecentJson> for RecentDecision {
    type Error = String;
    fn try_from(j: RecentJson) -> Result<Self, String> {
        schema_ok(j.schema)?;
        Ok(Self {
            time_ms: j.time_us / 1000,
            source: j.source,
            decision: j.decision,
            reason: j.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> WatchRecord {
        WatchRecord {
            seq: 7,
            time_us: 1_700_000_000_123_456,
            kind: "blocked".into(),
            source: Some("2001:db8::".parse().unwrap()),
            prefix: Some(64),
            protocol: Some(Protocol::Tcp),
            port: Some(23),
            scan: Some(ScanKind::Oddball { flags: 3 }),
            mode: Some(Mode::Atcp),
            origin: Some("sensor".into()),
            evidence: Some(EvidenceInfo {
                distinct_ports: 9,
                handshake: false,
            }),
            expires_ms: Some(1_700_000_600_000),
            suppressed: None,
            reason: "blocked for 600s".into(),
            meta: BlockMeta::default(),
        }
    }

    #[test]
    fn watch_records_use_the_audit_logs_names() {
        let v = serde_json::to_value(rec()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "schema": 1, "seq": 7, "time_us": 1_700_000_000_123_456_u64,
                "decision": "blocked", "source": "2001:db8::", "prefix": 64,
                "protocol": "tcp", "port": 23, "scan": "oddball", "mode": "atcp",
                "origin": "sensor", "distinct_ports": 9, "handshake": false,
                "expires_ms": 1_700_000_600_000_u64, "reason": "blocked for 600s"
            })
        );
        // The audit log's always-present fields stay present (null) on an event.
        let ev = WatchRecord {
            source: None,
            prefix: None,
            protocol: None,
            port: None,
            scan: None,
            mode: None,
            origin: None,
            evidence: None,
            expires_ms: None,
            kind: "rejected".into(),
            ..rec()
        };
        let v = serde_json::to_value(ev).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "decision", "mode", "port", "protocol", "reason", "scan", "schema", "seq",
                "source", "time_us"
            ]
        );
        assert!(v["source"].is_null() && v["scan"].is_null(), "{v}");
    }

    #[test]
    fn records_read_back_and_other_schemas_are_refused() {
        let mut r = rec();
        r.scan = Some(ScanKind::SctpInit);
        let back: WatchRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let mut v = serde_json::to_value(&r).unwrap();
        v["schema"] = 2.into();
        let e = serde_json::from_value::<WatchRecord>(v).unwrap_err();
        assert!(e.to_string().contains("schema 2"), "{e}");
        let mut v = serde_json::to_value(&r).unwrap();
        v["scan"] = "bogus".into();
        assert!(serde_json::from_value::<WatchRecord>(v).is_err());
    }

    #[test]
    fn a_fleet_blocks_metadata_is_flat_and_reads_back() {
        let r = WatchRecord {
            protocol: None,
            port: None,
            scan: None,
            mode: None,
            evidence: None,
            prefix: None,
            origin: Some("crowdsec".into()),
            meta: BlockMeta {
                scenario: Some("sentry/portscan".into()),
                decision_id: Some(12),
                alert_id: Some(7),
                machine: Some("hostA".into()),
            },
            ..rec()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["scenario"], "sentry/portscan");
        assert_eq!(v["decision_id"], 12);
        assert_eq!(v["alert_id"], 7);
        assert_eq!(v["machine"], "hostA");
        assert!(v["mode"].is_null() && v["scan"].is_null(), "{v}");
        assert_eq!(v["schema"], 1);
        assert_eq!(serde_json::from_value::<WatchRecord>(v).unwrap(), r);
        // Unknown parts stay out of the record: only what is known is written.
        let partial = WatchRecord {
            meta: BlockMeta {
                decision_id: Some(3),
                ..BlockMeta::default()
            },
            ..r
        };
        let v = serde_json::to_value(&partial).unwrap();
        assert!(
            v.get("scenario").is_none() && v.get("machine").is_none(),
            "{v}"
        );
    }

    #[test]
    fn recent_decisions_have_the_same_names() {
        let r = RecentDecision {
            time_ms: 1_700_000_000_123,
            source: Some("192.0.2.9".parse().unwrap()),
            decision: "blocked".into(),
            reason: "r".into(),
        };
        let v = serde_json::to_value(r.clone()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"schema": 1, "time_us": 1_700_000_000_123_000_u64,
                "decision": "blocked", "source": "192.0.2.9", "reason": "r"})
        );
        assert_eq!(serde_json::from_value::<RecentDecision>(v).unwrap(), r);
    }

    #[test]
    fn every_scan_kind_name_reads_back() {
        for k in SCAN_KINDS {
            assert_eq!(ScanKind::from_name(k.as_str()), Some(k));
        }
        assert_eq!(ScanKind::from_name("SYN"), None);
    }
}
