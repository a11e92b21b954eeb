//! Prometheus text exposition (format 0.0.4) of the enforcer's counters: what `sentryctl
//! metrics` prints and what the enforcer writes every few seconds into METRICS_DIR for
//! node_exporter's textfile collector. Counters end in `_total`, times are seconds, and
//! no address is ever a label (one series per scanner would be unbounded).
//!
//! Every label has a bounded set of values: decisions, scan kinds, protocols and error
//! kinds are fixed enums; origins are the sensor, `manual` and at most
//! [`MAX_ORIGIN_LABELS`] names of control clients (checked names, first come first
//! served for the life of the process), the rest counted as [`OTHER_ORIGIN`].

use std::collections::BTreeMap;
use std::time::Duration;

use sentry_client::expo::Histogram;
use sentry_client::procstat::{self, ProcessStats};
use sentry_proto::{Counters, Protocol, ScanKind, SensorInfo, ORIGIN_SENSOR, SCAN_KINDS as SCANS};

use crate::judge::MANUAL_ORIGIN;

// The exposition writer and the textfile writer are shared with the fleet bridge.
pub use sentry_client::expo::{check_dir, write_textfile, Expo};

/// The file written into METRICS_DIR.
pub const TEXTFILE: &str = "sentry-enforcer.prom";

/// Control-client origin names that get a label value of their own (besides `sensor` and
/// `manual`). A CONTROL_GROUP member can make up a new name per request; without a cap
/// each would be a new series in every scraper for good.
pub const MAX_ORIGIN_LABELS: usize = 16;

/// The label value of every origin past [`MAX_ORIGIN_LABELS`] (and of a name that was
/// refused). Origin names start with a letter or a digit, so no client can take it.
pub const OTHER_ORIGIN: &str = "_other";

/// The `scan` and `protocol` label value of a block with no probe behind it (a fleet or
/// manual block).
pub const NO_PROBE: &str = "none";

/// Upper bounds of `sentry_block_latency_seconds`: from half a millisecond (a probe
/// copied, parsed, judged and put in the kernel's set on an idle host) to five seconds
/// (a sensor or enforcer that fell far behind).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A probe-to-block time above this is taken as a clock step between the probe and the
/// block, not a latency: counted apart, kept out of the histogram's sum.
pub const MAX_PLAUSIBLE_LATENCY: Duration = Duration::from_secs(3600);

/// What went wrong, for `sentry_errors_total{kind}`: one fixed kind per place that counts
/// an error, so an alert can tell a failing firewall from a full disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// A blocking or unblocking action failed (nftables element, route, hosts.deny line,
    /// KILL_* command).
    Action,
    /// The state directory's journal, the history or blocked file could not be written
    /// or read.
    Persist,
    /// The audit log could not be written or reopened.
    Audit,
    /// A netlink socket (address changes, the table watch, the sets' read-back) failed,
    /// or the table could not be rebuilt.
    Netlink,
    /// The kernel's first-hit map could not be read or corrected.
    KernelHit,
    /// Infrastructure discovery (routes, resolvers, leases) hit a problem.
    Infra,
    /// A reload (SIGHUP, `sentryctl ignore`) failed; the old ignore list is kept.
    Config,
    /// A connection or frame was refused (a wrong peer, version, malformed frame or
    /// invalid request), from the sensor socket or the control socket.
    Refused,
    /// The METRICS_DIR textfile could not be written.
    Metrics,
    /// Anything else (the boot id unreadable, ...).
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        Self::Action,
        Self::Persist,
        Self::Audit,
        Self::Netlink,
        Self::KernelHit,
        Self::Infra,
        Self::Config,
        Self::Refused,
        Self::Metrics,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Action => "action",
            Self::Persist => "persist",
            Self::Audit => "audit",
            Self::Netlink => "netlink",
            Self::KernelHit => "kernel_hit",
            Self::Infra => "infra",
            Self::Config => "config",
            Self::Refused => "refused",
            Self::Metrics => "metrics",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// The figures only the metrics need (the protocol's [`Counters`] keep what `sentryctl
/// status` shows), kept by the engine under its lock.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Control-client origin names admitted as label values, in order of arrival.
    origins: Vec<String>,
    /// Requests by origin label.
    requests: BTreeMap<String, u64>,
    /// Sensor requests by scan kind (its `as_str` name).
    scans: BTreeMap<&'static str, u64>,
    /// Blocks made, by (origin label, scan, protocol).
    blocks: BTreeMap<(String, &'static str, &'static str), u64>,
    errors: [u64; ErrorKind::ALL.len()],
    latency: Histogram,
    latency_skew: u64,
    reload_ok: bool,
    reload_success_ms: u64,
}

impl Stats {
    /// `started_ms`: when the configuration was first loaded (it loaded, or the enforcer
    /// would not have started), the first "successful reload" as Prometheus counts it.
    pub fn new(started_ms: u64) -> Self {
        Self {
            origins: Vec::new(),
            requests: BTreeMap::new(),
            scans: BTreeMap::new(),
            blocks: BTreeMap::new(),
            errors: [0; ErrorKind::ALL.len()],
            latency: Histogram::new(LATENCY_BUCKETS),
            latency_skew: 0,
            reload_ok: true,
            reload_success_ms: started_ms,
        }
    }

    /// The label value of an origin name: `sensor` and `manual` as they are, a checked
    /// control-client name while fewer than [`MAX_ORIGIN_LABELS`] are admitted (or if it
    /// already is), [`OTHER_ORIGIN`] otherwise. Never the raw text of a refused name.
    pub fn origin_label(&mut self, origin: &str) -> String {
        if origin == ORIGIN_SENSOR || origin == MANUAL_ORIGIN {
            return origin.to_string();
        }
        if sentry_proto::validate_origin(origin).is_err() {
            return OTHER_ORIGIN.to_string();
        }
        if self.origins.iter().any(|o| o == origin) {
            return origin.to_string();
        }
        if self.origins.len() < MAX_ORIGIN_LABELS {
            self.origins.push(origin.to_string());
            return origin.to_string();
        }
        OTHER_ORIGIN.to_string()
    }

    /// Count a concluded request. `origin` is its audit record's; `probe` its scan kind
    /// and protocol, which a sensor request always names and a control request never
    /// does (so a control client that calls itself `sensor`, refused, is not counted as
    /// the sensor).
    pub fn count_request(
        &mut self,
        origin: Option<&str>,
        probe: Option<(ScanKind, Protocol)>,
        blocked: bool,
    ) {
        let label = match (origin, probe) {
            (Some(ORIGIN_SENSOR), None) | (None, _) => OTHER_ORIGIN.to_string(),
            (Some(o), _) => self.origin_label(o),
        };
        if let (Some((scan, _)), true) = (probe, label == ORIGIN_SENSOR) {
            *self.scans.entry(scan.as_str()).or_default() += 1;
        }
        if blocked {
            let (scan, proto) =
                probe.map_or((NO_PROBE, NO_PROBE), |(s, p)| (s.as_str(), p.as_str()));
            *self.blocks.entry((label.clone(), scan, proto)).or_default() += 1;
        }
        *self.requests.entry(label).or_default() += 1;
    }

    pub fn count_error(&mut self, kind: ErrorKind, n: u64) {
        let e = &mut self.errors[kind.index()];
        *e = e.saturating_add(n);
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }

    /// A sensor block took effect at `effect_us` for a probe the sensor saw at
    /// `probe_ms` (its request's `last_seen_ms`; both on this host's wall clock). A probe
    /// "after" the block, or one implausibly long before it, means the clock was stepped
    /// in between: counted as such, not observed.
    pub fn observe_block_latency(&mut self, probe_ms: u64, effect_us: u64) {
        let probe_us = probe_ms.saturating_mul(1000);
        match effect_us.checked_sub(probe_us) {
            Some(d) if Duration::from_micros(d) <= MAX_PLAUSIBLE_LATENCY => {
                self.latency.observe(d as f64 / 1e6);
            }
            _ => self.latency_skew += 1,
        }
    }

    /// The outcome of a reload at `now_ms`.
    pub fn reloaded(&mut self, ok: bool, now_ms: u64) {
        self.reload_ok = ok;
        if ok {
            self.reload_success_ms = now_ms;
        } else {
            self.count_error(ErrorKind::Config, 1);
        }
    }

    pub fn latency(&self) -> &Histogram {
        &self.latency
    }
}

/// What the exposition is made of (a snapshot taken under the engine lock; `process` is
/// read after it is released).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub counters: Counters,
    pub stats: Stats,
    /// Active blocks by origin label (every admitted label present, also at 0).
    pub active_by_origin: Vec<(String, u64)>,
    pub max_blocks: u64,
    pub sensor: Option<SensorInfo>,
    pub watch_clients: u64,
    pub start_time_s: u64,
    pub process: Option<ProcessStats>,
}

/// Render a snapshot with this process's `process_*` figures read now (outside the
/// engine lock: a few small /proc reads).
pub fn render_live(mut s: Snapshot) -> String {
    s.process = Some(procstat::read_self());
    render(&s)
}

/// The origin labels present at 0 before anything happened: the two the enforcer
/// always has.
fn base_origins() -> [&'static str; 2] {
    [ORIGIN_SENSOR, MANUAL_ORIGIN]
}

/// The Prometheus text exposition of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut e = Expo::default();
    // Families in a fixed order (scrapers and tests compare the text): what came in, how
    // it ended, the state now, then the sensor's own figures and this process.
    build_info(&mut e);
    decisions_and_requests(&mut e, s);
    sensor_requests_and_blocks(&mut e, s);
    outcomes(&mut e, s);
    state(&mut e, s);
    sensor_figures(&mut e, s);
    if let Some(p) = &s.process {
        procstat::render(&mut e, p);
    }
    e.finish()
}

/// `sentry_build_info`.
fn build_info(e: &mut Expo) {
    e.family(
        "sentry_build_info",
        "gauge",
        "The running build: always 1, its version as a label.",
    )
    .sample(
        "sentry_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
}

/// Decisions by kind and requests by origin.
fn decisions_and_requests(e: &mut Expo, s: &Snapshot) {
    let c = &s.counters;
    let st = &s.stats;
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
        "Block requests received, by origin: sensor, manual (root's sentryctl block), a control client's name (the fleet bridge's crowdsec, ...), or _other past the first 16 names.",
    );
    let mut requests = st.requests.clone();
    for o in base_origins()
        .into_iter()
        .chain(st.origins.iter().map(String::as_str))
    {
        requests.entry(o.to_string()).or_default();
    }
    for (o, v) in &requests {
        e.sample("sentry_requests_total", &[("origin", o)], *v);
    }
}

/// Sensor requests by probe, blocks by origin and probe.
fn sensor_requests_and_blocks(e: &mut Expo, s: &Snapshot) {
    let st = &s.stats;
    e.family(
        "sentry_sensor_requests_total",
        "counter",
        "Block requests from the sensor, by the scan kind and protocol of the probe that triggered them.",
    );
    for scan in SCANS {
        let v = st.scans.get(scan.as_str()).copied().unwrap_or(0);
        e.sample(
            "sentry_sensor_requests_total",
            &[
                ("scan", scan.as_str()),
                ("protocol", scan.protocol().as_str()),
            ],
            v,
        );
    }
    e.family(
        "sentry_blocks_total",
        "counter",
        "Blocks made, by origin and by the scan kind and protocol of the probe (none for fleet and manual blocks).",
    );
    let mut blocks = st.blocks.clone();
    for scan in SCANS {
        blocks
            .entry((
                ORIGIN_SENSOR.to_string(),
                scan.as_str(),
                scan.protocol().as_str(),
            ))
            .or_default();
    }
    blocks
        .entry((MANUAL_ORIGIN.to_string(), NO_PROBE, NO_PROBE))
        .or_default();
    for ((o, scan, proto), v) in &blocks {
        e.sample(
            "sentry_blocks_total",
            &[("origin", o), ("scan", scan), ("protocol", proto)],
            *v,
        );
    }
}

/// How blocks ended, errors, drops, latency and reloads.
fn outcomes(e: &mut Expo, s: &Snapshot) {
    let c = &s.counters;
    let st = &s.stats;
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
    e.family(
        "sentry_errors_total",
        "counter",
        "Errors, by kind: action, persist, audit, netlink, kernel_hit, infra, config, refused, metrics, other.",
    );
    for k in ErrorKind::ALL {
        e.sample("sentry_errors_total", &[("kind", k.as_str())], st.errors(k));
    }
    e.single(
        "sentry_watch_dropped_total",
        "counter",
        "Decision-stream clients dropped because they did not keep up.",
        c.watch_dropped,
    );
    e.histogram(
        "sentry_block_latency_seconds",
        "Sensor blocks: from the probe the sensor reported (its last_seen) to the block taking effect in the enforcer (its first blocking action).",
        st.latency(),
    );
    e.single(
        "sentry_block_latency_clock_skew_total",
        "counter",
        "Sensor blocks left out of sentry_block_latency_seconds: the probe time was after the block or more than an hour before it (the clock was stepped).",
        st.latency_skew,
    );
    e.single(
        "sentry_config_last_reload_successful",
        "gauge",
        "Whether the last reload of the ignore list (SIGHUP, sentryctl ignore) succeeded; 0 keeps the old list.",
        u64::from(st.reload_ok),
    );
    e.single_f64(
        "sentry_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When the configuration last loaded (at start or by a reload), in seconds since the Unix epoch.",
        st.reload_success_ms as f64 / 1000.0,
    );
}

/// Gauges of the state now: blocks, clients, start time, the sensor.
fn state(e: &mut Expo, s: &Snapshot) {
    e.family("sentry_active_blocks", "gauge", "Active blocks, by origin.");
    for (o, v) in &s.active_by_origin {
        e.sample("sentry_active_blocks", &[("origin", o)], *v);
    }
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
}

/// The sensor's own counters, as it last reported them.
fn sensor_figures(e: &mut Expo, s: &Snapshot) {
    let ss = s
        .sensor
        .as_ref()
        .and_then(|x| x.stats.clone())
        .unwrap_or_default();
    for (name, help, v) in [
        (
            "sentry_sensor_packets_total",
            "Packets (or connections and datagrams) the sensor read, as it last reported.",
            ss.packets,
        ),
        (
            "sentry_sensor_kernel_drops_total",
            "Packets the kernel dropped before the sensor read them.",
            ss.kernel_drops,
        ),
        (
            "sentry_sensor_malformed_total",
            "Packets the sensor's parser rejected.",
            ss.malformed,
        ),
        (
            "sentry_sensor_hits_total",
            "Probes that hit a watched port.",
            ss.hits,
        ),
        (
            "sentry_sensor_reports_total",
            "Block requests the sensor produced.",
            ss.reports,
        ),
        (
            "sentry_sensor_queue_drops_total",
            "Block requests the sensor dropped because its queue was full.",
            ss.queue_drops,
        ),
        (
            "sentry_sensor_evictions_total",
            "Sources evicted from the sensor's state because it was full.",
            ss.evictions,
        ),
        (
            "sentry_sensor_ignored_total",
            "Hits from ignored sources.",
            ss.ignored,
        ),
    ] {
        e.single(name, "counter", help, v);
    }
    e.single(
        "sentry_sensor_tracked_sources",
        "gauge",
        "Sources the sensor tracks.",
        ss.tracked_sources,
    );
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

    /// A snapshot with a bit of everything: sensor, manual and fleet blocks, more
    /// origins than get a label, latencies and a failed reload.
    fn busy() -> Snapshot {
        let c = Counters {
            requests: 5,
            control_requests: 2,
            blocked: 3,
            errors: 2,
            ..Counters::default()
        };
        let mut st = Stats::new(1_700_000_000_500);
        let syn = Some((ScanKind::Syn, Protocol::Tcp));
        st.count_request(Some(ORIGIN_SENSOR), syn, true);
        st.count_request(
            Some(ORIGIN_SENSOR),
            Some((ScanKind::Oddball { flags: 3 }, Protocol::Tcp)),
            false,
        );
        st.count_request(Some(MANUAL_ORIGIN), None, true);
        st.count_request(Some("crowdsec"), None, true);
        st.observe_block_latency(1_000, 1_001_500);
        st.reloaded(false, 1_700_000_100_000);
        st.count_error(ErrorKind::Action, 1);
        let mut active = vec![
            (ORIGIN_SENSOR.to_string(), 1),
            (MANUAL_ORIGIN.to_string(), 1),
            ("crowdsec".to_string(), 1),
        ];
        active.sort();
        Snapshot {
            counters: c,
            stats: st,
            active_by_origin: active,
            max_blocks: 10,
            sensor: None,
            watch_clients: 0,
            start_time_s: 1_700_000_000,
            process: Some(procstat::read_self()),
        }
    }

    #[test]
    fn families_have_help_type_and_no_address_labels() {
        let t = render(&busy());
        for want in [
            "sentry_decisions_total{decision=\"blocked\"} 3\n",
            "sentry_requests_total{origin=\"sensor\"} 2\n",
            "sentry_requests_total{origin=\"manual\"} 1\n",
            "sentry_requests_total{origin=\"crowdsec\"} 1\n",
            "sentry_active_blocks{origin=\"crowdsec\"} 1\n",
            "sentry_blocks_total{origin=\"sensor\",scan=\"syn\",protocol=\"tcp\"} 1\n",
            "sentry_blocks_total{origin=\"sensor\",scan=\"udp\",protocol=\"udp\"} 0\n",
            "sentry_blocks_total{origin=\"crowdsec\",scan=\"none\",protocol=\"none\"} 1\n",
            "sentry_sensor_requests_total{scan=\"oddball\",protocol=\"tcp\"} 1\n",
            "sentry_sensor_requests_total{scan=\"sctp_init\",protocol=\"sctp\"} 0\n",
            "sentry_errors_total{kind=\"action\"} 1\n",
            "sentry_errors_total{kind=\"config\"} 1\n",
            "sentry_errors_total{kind=\"netlink\"} 0\n",
            "sentry_config_last_reload_successful 0\n",
            "sentry_config_last_reload_success_timestamp_seconds 1700000000.5\n",
            "sentry_block_latency_seconds_bucket{le=\"0.001\"} 0\n",
            "sentry_block_latency_seconds_bucket{le=\"0.0025\"} 1\n",
            "sentry_block_latency_seconds_bucket{le=\"+Inf\"} 1\n",
            "sentry_block_latency_seconds_sum 0.0015\n",
            "sentry_block_latency_seconds_count 1\n",
            "sentry_sensor_connected 0\n",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
        ] {
            assert!(t.contains(want), "{want}: {t}");
        }
        assert!(t.contains(&format!(
            "sentry_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
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
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{l}");
                assert!(!l.contains("192.") && !l.contains("source="), "{l}");
            }
        }
    }

    /// promtool (unpacked by `make test-deps`) accepts the exposition; skipped without it
    /// (the e2e tests insist on it under CI).
    #[test]
    fn promtool_accepts_the_exposition() {
        let p = std::path::Path::new("/var/cache/sentry-tests/prometheus/usr/bin/promtool");
        if !p.is_file() {
            println!("SKIPPED (promtool not unpacked; run make test-deps)");
            return;
        }
        use std::io::Write as _;
        let mut child = std::process::Command::new(p)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(render(&busy()).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn origins_past_the_cap_and_refused_names_share_one_label() {
        let mut st = Stats::new(0);
        for i in 0..MAX_ORIGIN_LABELS {
            assert_eq!(st.origin_label(&format!("fleet{i}")), format!("fleet{i}"));
        }
        assert_eq!(st.origin_label("one-too-many"), OTHER_ORIGIN);
        // Those already admitted keep their label; sensor and manual are not counted.
        assert_eq!(st.origin_label("fleet3"), "fleet3");
        assert_eq!(st.origin_label(ORIGIN_SENSOR), ORIGIN_SENSOR);
        assert_eq!(st.origin_label(MANUAL_ORIGIN), MANUAL_ORIGIN);
        // A name the enforcer refuses never becomes a label, whatever it holds.
        let mut fresh = Stats::new(0);
        for bad in ["", "a\"b", "x\ny", "_other", &"a".repeat(33), "évil"] {
            assert_eq!(fresh.origin_label(bad), OTHER_ORIGIN, "{bad:?}");
        }
        // A control request calling itself "sensor" (refused) is not counted as the sensor.
        fresh.count_request(Some(ORIGIN_SENSOR), None, false);
        assert_eq!(fresh.requests.get(OTHER_ORIGIN), Some(&1));
        assert_eq!(fresh.requests.get(ORIGIN_SENSOR), None);
    }

    #[test]
    fn latencies_before_the_probe_or_hours_late_are_clock_skew() {
        let mut st = Stats::new(0);
        // 2 ms; the probe 1 ms after the block; two hours late; a probe time that would
        // overflow in µs.
        st.observe_block_latency(10_000, 10_002_000);
        st.observe_block_latency(10_000, 9_999_000);
        st.observe_block_latency(0, 2 * 3_600_000_000);
        st.observe_block_latency(u64::MAX, 5);
        assert_eq!(st.latency().count(), 1);
        assert!((st.latency().sum() - 0.002).abs() < 1e-9);
        assert_eq!(st.latency_skew, 3);
    }

    #[test]
    fn a_reload_that_fails_keeps_the_last_success_time() {
        let mut st = Stats::new(1_000);
        st.reloaded(true, 2_000);
        st.reloaded(false, 3_000);
        assert!(!st.reload_ok);
        assert_eq!(st.reload_success_ms, 2_000);
        assert_eq!(st.errors(ErrorKind::Config), 1);
        st.reloaded(true, 4_000);
        assert!(st.reload_ok);
        assert_eq!(st.reload_success_ms, 4_000);
    }
}
