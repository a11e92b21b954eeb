//! Prometheus text exposition (format 0.0.4) of the enforcer's counters: what `sentryctl
//! metrics` prints and what the enforcer writes every few seconds into METRICS_DIR for
//! node_exporter's textfile collector. Counters end in `_total`, times are seconds, and
//! no address is ever a label (one series per scanner would be unbounded).

use sentry_proto::{Counters, SensorInfo};

// The exposition writer and the textfile writer are shared with the fleet bridge.
pub use sentry_client::expo::{check_dir, write_textfile, Expo};

/// The file written into METRICS_DIR.
pub const TEXTFILE: &str = "sentry-enforcer.prom";

/// What the exposition is made of (a snapshot taken under the engine lock).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub counters: Counters,
    pub active_blocks: u64,
    pub fleet_blocks: u64,
    pub max_blocks: u64,
    pub sensor: Option<SensorInfo>,
    pub watch_clients: u64,
    pub start_time_s: u64,
}

pub fn render(s: &Snapshot) -> String {
    let c = &s.counters;
    let mut e = Expo::default();
    e.family(
        "sentry_decisions_total",
        "counter",
        "Decisions on block requests (sensor and control), by decision.",
    );
    for (kind, v) in [
        ("blocked", c.blocked),
        ("already_blocked", c.already_blocked),
        ("ignored", c.ignored),
        ("never_block", c.never_block),
        ("log_only", c.log_only),
        ("command_only", c.command_only),
        ("rate_limited", c.rate_limited),
        ("capped", c.capped),
        ("rejected", c.rejected),
        ("failed", c.failed),
    ] {
        e.sample("sentry_decisions_total", &[("decision", kind)], v);
    }
    e.family(
        "sentry_requests_total",
        "counter",
        "Block requests received, by where they came from.",
    )
    .sample(
        "sentry_requests_total",
        &[("origin", "sensor")],
        c.requests.saturating_sub(c.control_requests),
    )
    .sample(
        "sentry_requests_total",
        &[("origin", "control")],
        c.control_requests,
    );
    e.family(
        "sentry_block_ends_total",
        "counter",
        "Blocks that ended, by how.",
    )
    .sample(
        "sentry_block_ends_total",
        &[("how", "unblocked")],
        c.unblocked,
    )
    .sample("sentry_block_ends_total", &[("how", "expired")], c.expired);
    e.single(
        "sentry_restored_total",
        "counter",
        "Blocks re-applied from the state directory at start.",
        c.restored,
    );
    e.single(
        "sentry_errors_total",
        "counter",
        "Action failures, refused connections and other errors.",
        c.errors,
    );
    e.single(
        "sentry_watch_dropped_total",
        "counter",
        "Decision-stream clients dropped because they did not keep up.",
        c.watch_dropped,
    );
    e.family("sentry_active_blocks", "gauge", "Active blocks, by origin.")
        .sample(
            "sentry_active_blocks",
            &[("origin", "sensor")],
            s.active_blocks.saturating_sub(s.fleet_blocks),
        )
        .sample(
            "sentry_active_blocks",
            &[("origin", "control")],
            s.fleet_blocks,
        );
    e.single(
        "sentry_max_blocks",
        "gauge",
        "MAX_BLOCKS, the most active blocks.",
        s.max_blocks,
    );
    e.single(
        "sentry_watch_clients",
        "gauge",
        "Connected decision-stream clients.",
        s.watch_clients,
    );
    e.single(
        "sentry_start_time_seconds",
        "gauge",
        "When the enforcer started, in seconds since the Unix epoch.",
        s.start_time_s,
    );
    e.single(
        "sentry_sensor_connected",
        "gauge",
        "1 while a sensor is connected.",
        u64::from(s.sensor.is_some()),
    );
    let st = s
        .sensor
        .as_ref()
        .and_then(|x| x.stats.clone())
        .unwrap_or_default();
    for (name, help, v) in [
        (
            "sentry_sensor_packets_total",
            "Packets (or connections and datagrams) the sensor read, as it last reported.",
            st.packets,
        ),
        (
            "sentry_sensor_kernel_drops_total",
            "Packets the kernel dropped before the sensor read them.",
            st.kernel_drops,
        ),
        (
            "sentry_sensor_malformed_total",
            "Packets the sensor's parser rejected.",
            st.malformed,
        ),
        (
            "sentry_sensor_hits_total",
            "Probes that hit a watched port.",
            st.hits,
        ),
        (
            "sentry_sensor_reports_total",
            "Block requests the sensor produced.",
            st.reports,
        ),
        (
            "sentry_sensor_queue_drops_total",
            "Block requests the sensor dropped because its queue was full.",
            st.queue_drops,
        ),
        (
            "sentry_sensor_evictions_total",
            "Sources evicted from the sensor's state because it was full.",
            st.evictions,
        ),
        (
            "sentry_sensor_ignored_total",
            "Hits from ignored sources.",
            st.ignored,
        ),
    ] {
        e.single(name, "counter", help, v);
    }
    e.single(
        "sentry_sensor_tracked_sources",
        "gauge",
        "Sources the sensor tracks.",
        st.tracked_sources,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        write_textfile(d.path(), TEXTFILE, "x 1\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join(TEXTFILE)).unwrap(),
            "x 1\n"
        );
        for mode in [0o777, 0o1777, 0o775] {
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = write_textfile(d.path(), TEXTFILE, "x 2\n").unwrap_err();
            assert!(
                e.to_string().contains("not writable by group or others"),
                "{e}"
            );
        }
        // The old file is left as it was.
        assert_eq!(
            std::fs::read_to_string(d.path().join(TEXTFILE)).unwrap(),
            "x 1\n"
        );
        assert!(check_dir(&d.path().join("missing")).is_err());
    }

    #[test]
    fn families_have_help_type_and_no_address_labels() {
        let mut c = Counters {
            requests: 5,
            control_requests: 2,
            blocked: 3,
            ..Counters::default()
        };
        c.errors = 1;
        let t = render(&Snapshot {
            counters: c,
            active_blocks: 3,
            fleet_blocks: 1,
            max_blocks: 10,
            sensor: None,
            watch_clients: 0,
            start_time_s: 1_700_000_000,
        });
        assert!(
            t.contains("sentry_decisions_total{decision=\"blocked\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("sentry_requests_total{origin=\"sensor\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("sentry_active_blocks{origin=\"control\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("sentry_sensor_connected 0\n"));
        // Every sample's family was declared just before it.
        let mut declared = std::collections::HashSet::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(declared.insert(name.to_string()), "{name} declared twice");
                let kind = rest.split(' ').nth(1).unwrap();
                assert_eq!(name.ends_with("_total"), kind == "counter", "{l}");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{l}");
                assert!(!l.contains("192.") && !l.contains("source="), "{l}");
            }
        }
    }
}
