//! What sentryctl prints: one line per decision (`watch`), the status page, one line
//! per block (`blocked`) and the `explain` answer. The text is for people; `--json`
//! prints the messages themselves.

use std::fmt::Write as _;

use sentry_proto::{BlockEntry, BlockMeta, Coverage, Explanation, Status, WatchRecord};

/// What a fleet decision says about itself, as `, `-separated words (`scenario
/// sentry/portscan, decision 12, alert 7, machine hostA`); empty when nothing is known.
/// A scenario with spaces (a manual decision's reason) is quoted so it reads as one.
pub fn format_meta(m: &BlockMeta) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &m.scenario {
        if s.contains(' ') {
            parts.push(format!("scenario {s:?}"));
        } else {
            parts.push(format!("scenario {s}"));
        }
    }
    if let Some(id) = m.decision_id {
        parts.push(format!("decision {id}"));
    }
    if let Some(id) = m.alert_id {
        parts.push(format!("alert {id}"));
    }
    if let Some(name) = &m.machine {
        parts.push(format!("machine {name}"));
    }
    parts.join(", ")
}

/// A sensor block's probe (`TCP 143 stcp/syn`); `None` for a control block, which has
/// none.
fn probe(
    b: &BlockEntry,
) -> Option<(
    sentry_proto::Protocol,
    u16,
    sentry_proto::Mode,
    sentry_proto::ScanKind,
)> {
    Some((b.protocol?, b.port?, b.mode?, b.scan?))
}

/// One line of `sentryctl watch`.
pub fn format_record(r: &WatchRecord) -> String {
    let src = match (r.source, r.prefix) {
        (Some(a), Some(len)) => format!("{a}/{len}"),
        (Some(a), None) => a.to_string(),
        (None, _) => "-".to_string(),
    };
    let what = match (r.protocol, r.port, r.scan, r.mode) {
        (Some(p), Some(port), Some(scan), Some(mode)) => {
            format!("{} {port} {mode}/{scan}", p.as_upper())
        }
        _ => "-".to_string(),
    };
    let ev = match r.evidence {
        Some(e) => format!(
            "ports={}{}",
            e.distinct_ports,
            if e.handshake { " handshake" } else { "" }
        ),
        None => "-".to_string(),
    };
    let meta = format_meta(&r.meta);
    format!(
        "{:>6}  {}  {:<15}  {:<39}  {:<10}  {:<22}  {:<18}  {}{}",
        r.seq,
        fmt_time(r.time_us / 1000),
        r.kind,
        src,
        r.origin.as_deref().unwrap_or("-"),
        what,
        ev,
        r.reason,
        if meta.is_empty() {
            String::new()
        } else {
            format!(" [{meta}]")
        }
    )
}

pub fn fmt_time(ms: u64) -> String {
    sentry_proto::logfmt::format_utc(ms)
}

pub fn fmt_duration(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m {sec}s")
    } else if h > 0 {
        format!("{h}h {m}m {sec}s")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

pub fn format_status(st: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "sentry-enforcer {} (pid {}), up {}",
        st.version,
        st.pid,
        fmt_duration(st.uptime_s)
    );
    let _ = writeln!(o, "config:   {}", st.config_path);
    match &st.sensor {
        Some(s) => {
            let modes: Vec<&str> = s.modes.iter().map(|m| m.as_str()).collect();
            let _ = writeln!(
                o,
                "sensor:   connected: {} (uid {}, pid {}), modes {}, protocol v{}, since {}",
                s.name,
                s.uid,
                s.pid,
                modes.join(","),
                s.protocol_version,
                fmt_time(s.connected_since_ms)
            );
            if let Some(x) = &s.stats {
                let _ = writeln!(
                    o,
                    "          packets {} kernel_drops {} malformed {} hits {} reports {} queue_drops {} tracked {} evictions {} ignored {}",
                    x.packets, x.kernel_drops, x.malformed, x.hits, x.reports, x.queue_drops,
                    x.tracked_sources, x.evictions, x.ignored
                );
            }
        }
        None => {
            let _ = writeln!(o, "sensor:   not connected");
        }
    }
    let _ = writeln!(
        o,
        "blocks:   {} active (MAX_BLOCKS {})",
        st.active_blocks, st.max_blocks
    );
    let _ = writeln!(
        o,
        "backends: {}",
        if st.backends.is_empty() {
            "none (log only)".to_string()
        } else {
            st.backends.join("; ")
        }
    );
    let c = &st.counters;
    let _ = writeln!(
        o,
        "counters: requests {} blocked {} already_blocked {} ignored {} never_block {} log_only {} command_only {} rate_limited {} capped {} rejected {} failed {} errors {} unblocked {} expired {} restored {}",
        c.requests, c.blocked, c.already_blocked, c.ignored, c.never_block, c.log_only,
        c.command_only, c.rate_limited, c.capped, c.rejected, c.failed, c.errors, c.unblocked,
        c.expired, c.restored
    );
    if !st.recent.is_empty() {
        let _ = writeln!(o, "recent decisions:");
        for r in &st.recent {
            let src = r.source.map_or_else(|| "-".to_string(), |a| a.to_string());
            let _ = writeln!(
                o,
                "  {}  {:<39}  {:<15}  {}",
                fmt_time(r.time_ms),
                src,
                r.decision,
                r.reason
            );
        }
    }
    o
}

/// One line of `sentryctl blocked`.
pub fn format_block(b: &BlockEntry) -> String {
    let how = match probe(b) {
        Some((protocol, port, mode, scan)) if b.origin == sentry_proto::ORIGIN_SENSOR => format!(
            "{} {:<5}  {:<4} {:<7}",
            protocol.as_upper(),
            port,
            mode.as_str(),
            scan.as_str()
        ),
        _ => format!("{:<22}", format!("origin {}", b.origin)),
    };
    // The evidence last: it keeps growing after the block (the kernel still copies the
    // blocked source's probes), so it tells a real scan from a forged probe. A fleet
    // block's evidence is its decision: scenario, ids, detecting machine.
    let evidence = match b.distinct_ports {
        Some(n) => format!("  {n} ports"),
        None if !b.meta.is_empty() => format!("  {}", format_meta(&b.meta)),
        None => String::new(),
    };
    format!(
        "{:<39}  {how}  since {}  {}{evidence}",
        block_target(b),
        fmt_time(b.since_ms),
        until(b.expires_ms)
    )
}

fn block_target(b: &BlockEntry) -> String {
    match b.prefix6 {
        Some(len) => format!("{}/{len}", b.addr),
        None => b.addr.to_string(),
    }
}

fn until(expires_ms: Option<u64>) -> String {
    expires_ms.map_or_else(
        || "permanent".to_string(),
        |e| format!("until {}", fmt_time(e)),
    )
}

/// `sentryctl explain ADDR`.
pub fn format_explanation(x: &Explanation) -> String {
    let mut o = String::new();
    let state = if x.blocked { "blocked" } else { "not blocked" };
    let _ = writeln!(o, "{}: {state}: {}", x.address, x.reason);
    for e in &x.entries {
        let b = &e.block;
        let by = match e.matched {
            Coverage::Address => "the address itself",
            Coverage::Network => "its network (BLOCK_PREFIX6)",
        };
        let what = match probe(b) {
            Some((protocol, port, mode, scan)) if !e.fleet => format!(
                "origin {}, {} {port} {mode}/{scan}, evidence {} distinct ports",
                b.origin,
                protocol.as_upper(),
                b.distinct_ports.unwrap_or(0)
            ),
            _ if b.meta.is_empty() => format!("fleet/manual decision, origin {}", b.origin),
            _ => format!(
                "fleet/manual decision, origin {}, {}",
                b.origin,
                format_meta(&b.meta)
            ),
        };
        let _ = writeln!(
            o,
            "  block {} ({by}): {what}; since {}, {}",
            block_target(b),
            fmt_time(b.since_ms),
            until(b.expires_ms)
        );
    }
    if x.ignored {
        let _ = writeln!(o, "  on the ignore list (IGNORE_FILE)");
    }
    if let Some(n) = &x.never_block {
        let _ = writeln!(o, "  never blocked: {n}");
    }
    if x.decisions.is_empty() {
        let _ = writeln!(
            o,
            "decisions: none recorded for it since the enforcer started (or older than it keeps)"
        );
    } else {
        let _ = writeln!(o, "decisions (oldest first):");
        for r in &x.decisions {
            let _ = writeln!(o, "{}", format_record(r));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_proto::{ExplainEntry, Mode, Protocol, ScanKind};

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(5), "5s");
        assert_eq!(fmt_duration(3_725), "1h 2m 5s");
        assert_eq!(fmt_duration(90_061), "1d 1h 1m 1s");
    }

    fn entry(origin: &str, prefix6: Option<u8>) -> BlockEntry {
        let sensor = origin == "sensor";
        BlockEntry {
            addr: if prefix6.is_some() {
                "2001:db8::".parse().unwrap()
            } else {
                "192.0.2.9".parse().unwrap()
            },
            protocol: sensor.then_some(Protocol::Tcp),
            port: sensor.then_some(143),
            mode: sensor.then_some(Mode::Stcp),
            scan: sensor.then_some(ScanKind::Syn),
            since_ms: 0,
            expires_ms: None,
            prefix6,
            distinct_ports: sensor.then_some(7),
            origin: origin.into(),
            meta: if sensor {
                BlockMeta::default()
            } else {
                BlockMeta {
                    scenario: Some("sentry/portscan".into()),
                    decision_id: Some(12),
                    alert_id: None,
                    machine: None,
                }
            },
        }
    }

    #[test]
    fn block_lines_keep_their_columns() {
        assert_eq!(
            format_block(&entry("sensor", None)),
            format!(
                "{:<39}  TCP 143    stcp syn      since {}  permanent  7 ports",
                "192.0.2.9",
                fmt_time(0)
            )
        );
        let l = format_block(&entry("crowdsec", Some(64)));
        assert!(l.starts_with("2001:db8::/64 "), "{l}");
        assert!(l.contains(&format!("  {:<22}  ", "origin crowdsec")), "{l}");
        assert!(
            l.ends_with("permanent  scenario sentry/portscan, decision 12"),
            "{l}"
        );
        // No made-up probe for a fleet block.
        assert!(!l.contains("stcp") && !l.contains("TCP"), "{l}");
        // A manual block without metadata ends at its time.
        let mut m = entry("manual", None);
        m.meta = BlockMeta::default();
        assert!(
            format_block(&m).ends_with("permanent"),
            "{}",
            format_block(&m)
        );
    }

    #[test]
    fn metadata_reads_as_words_and_a_reason_with_spaces_is_quoted() {
        let m = BlockMeta {
            scenario: Some("manual 'ban' from 'm1'".into()),
            decision_id: Some(3),
            alert_id: Some(2),
            machine: Some("m1".into()),
        };
        assert_eq!(
            format_meta(&m),
            "scenario \"manual 'ban' from 'm1'\", decision 3, alert 2, machine m1"
        );
        assert_eq!(format_meta(&BlockMeta::default()), "");
    }

    #[test]
    fn a_fleet_entry_in_json_has_its_metadata_and_no_probe() {
        let v = serde_json::to_value(entry("crowdsec", None)).unwrap();
        for k in ["protocol", "port", "mode", "scan", "alert_id", "machine"] {
            assert!(v.get(k).is_none(), "{k} in {v}");
        }
        assert_eq!(v["scenario"], "sentry/portscan");
        assert_eq!(v["decision_id"], 12);
        assert_eq!(v["origin"], "crowdsec");
        let back: BlockEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, entry("crowdsec", None));
        let v = serde_json::to_value(entry("sensor", None)).unwrap();
        assert_eq!(v["scan"], "syn");
        assert_eq!(v["mode"], "stcp");
        assert!(v.get("scenario").is_none(), "{v}");
    }

    #[test]
    fn explanations_name_the_block_and_the_reasons() {
        let x = Explanation {
            address: "2001:db8::5".parse().unwrap(),
            blocked: true,
            entries: vec![ExplainEntry {
                matched: Coverage::Network,
                fleet: true,
                block: entry("crowdsec", Some(64)),
            }],
            ignored: false,
            never_block: None,
            reason: "blocked by 2001:db8::/64".into(),
            decisions: vec![],
        };
        let t = format_explanation(&x);
        assert!(
            t.starts_with("2001:db8::5: blocked: blocked by 2001:db8::/64\n"),
            "{t}"
        );
        assert!(
            t.contains("block 2001:db8::/64 (its network (BLOCK_PREFIX6)): fleet/manual decision, origin crowdsec, scenario sentry/portscan, decision 12;"),
            "{t}"
        );
        assert!(t.contains("decisions: none recorded"), "{t}");
        let x = Explanation {
            blocked: false,
            entries: vec![],
            never_block: Some("default gateway".into()),
            reason: "never-block: default gateway".into(),
            ..x
        };
        let t = format_explanation(&x);
        assert!(
            t.contains("not blocked: never-block: default gateway"),
            "{t}"
        );
        assert!(t.contains("  never blocked: default gateway\n"), "{t}");
    }
}
