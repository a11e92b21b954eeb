//! The bridge's threads: the decision stream to the queue (push filter), the queue to
//! the LAPI (alerts), the LAPI's decision stream to the enforcer (pull), and the
//! metrics textfile.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sentry_client::client::{Client, WatchEvent};
use sentry_proto::{
    BlockMeta, ControlRequest, ControlResponse, Decision, WatchRecord, ORIGIN_SENSOR,
};

use crate::config::Config;
use crate::lapi::{normal, Lapi, LapiError, Report, SCENARIO};
use crate::queue::Queue;
use crate::ratelog::RateLog;
use crate::state::{FleetState, Held};

/// Alerts sent in one `POST /v1/alerts`.
pub const BATCH: usize = 50;

/// Everything counted, for the textfile.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub pushed: u64,
    pub push_failures: HashMap<&'static str, u64>,
    pub not_pushed_weak: u64,
    pub not_pushed_not_sensor: u64,
    pub not_pushed_already_decided: u64,
    pub queue_full: u64,
    pub queue_write_errors: u64,
    pub queue_rejected: u64,
    pub queue_depth: u64,
    pub stream_lost: u64,
    pub stream_errors: u64,
    pub pulled_block: u64,
    pub pulled_unblock: u64,
    pub pull_refused: u64,
    pub pull_failures: HashMap<&'static str, u64>,
    pub unsupported_scope: u64,
    pub unsupported_range: u64,
    pub unsupported_type: u64,
    pub unsupported_origin: u64,
    pub decisions_invalid: u64,
    pub enforcer_errors: u64,
    pub deleted_on_unblock: u64,
    /// Decisions with a scenario, alert id or machine that failed the enforcer's checks
    /// ([`decision_meta`]): blocked without it.
    pub meta_invalid: u64,
    /// Failed lookups of a decision's alert (its block then has no alert id, machine).
    pub alert_lookup_failures: u64,
}

/// State shared by the threads.
#[derive(Debug)]
pub struct Shared {
    pub cfg: Config,
    pub stats: Mutex<Stats>,
    pub queue: Mutex<Option<Queue>>,
    pub wake: Condvar,
    /// Addresses with an active fleet decision, with the decisions' ids and when each
    /// ends (ms since the epoch; an address is unblocked when its last decision goes).
    pub active: Mutex<HashMap<IpAddr, HashMap<i64, u64>>>,
    /// Decisions lifted here by `sentryctl unblock`, and those that followed this host's
    /// alerts: kept across restarts (`STATE_DIR/fleet.json`).
    pub state: Mutex<FleetState>,
    /// Addresses whose block this bridge lifted itself with an unblock request (so that
    /// the `unblocked` record it causes is not taken for the administrator's).
    self_lifted: Mutex<HashMap<IpAddr, Instant>>,
    /// Addresses `sentryctl unblock` lifted before the first startup poll (their decision
    /// ids were not known yet): that poll treats their decisions as lifted here.
    pending_unblocks: Mutex<HashSet<IpAddr>>,
    /// Addresses this host pushed and the administrator unblocked here before the
    /// decision that followed the push was pulled (less than a PULL_INTERVAL after the
    /// push): that decision, when it comes, is lifted here at once instead of blocking
    /// the address again. Kept at most [`PUSHED_MEMORY`], at most [`PUSHED_MAX`].
    unblocked_unpulled: Mutex<HashMap<IpAddr, Instant>>,
    /// The first startup poll was applied.
    pulled_once: AtomicBool,
    /// An alert was pushed: the next poll is a full (startup) one. The LAPI's stream can
    /// miss a decision for good: 1.4.6 selects a key's new decisions by `created_at`
    /// after its last pull and moves that cursor to the time the reply was made, so a
    /// decision committed while a poll of this key was answered (this host's own push
    /// and pull run side by side) falls behind the cursor unseen. A full poll after each
    /// push lists it; decisions already applied are not asked for again.
    resync: AtomicBool,
    /// The decision stream caught up once (its first heartbeat): the pull waits for it,
    /// so that unblocks made while the bridge was down are known before it applies the
    /// fleet's decisions.
    pub watch_ready: AtomicBool,
    not_pushed_log: Mutex<RateLog>,
    /// Addresses whose fleet block `sentryctl unblock` lifted (DELETE_ON_UNBLOCK).
    pub to_delete: Mutex<Vec<IpAddr>>,
    /// Addresses queued for the LAPI lately, so that a block and the `evidence` records
    /// that follow it become one alert ([`PUSHED_MEMORY`], at most [`PUSHED_MAX`]).
    pushed: Mutex<HashMap<IpAddr, Instant>>,
    last_log: Mutex<HashMap<&'static str, String>>,
}

/// Least time between two full polls made because alerts were pushed ([`Shared`]'s
/// `resync`).
pub const RESYNC_SPACING: Duration = Duration::from_secs(5);

/// How long a queued address is not queued again.
pub const PUSHED_MEMORY: Duration = Duration::from_secs(3600);
/// At most one log line per reason a block is not pushed, per this period.
pub const NOT_PUSHED_LOG_EVERY: Duration = Duration::from_secs(60);
/// A decision that leaves the stream this long before its end was deleted (`cscli
/// decisions delete`, DELETE_ON_UNBLOCK), not expired: the LAPI reports both the same way
/// (a negative duration), only the end the bridge noted tells them apart.
pub const DELETED_EARLY_MS: u64 = 2_000;

/// Milliseconds since the epoch by this host's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
/// Most addresses remembered as queued (beyond, the oldest are forgotten first).
pub const PUSHED_MAX: usize = 16_384;

/// Whether `a` may be queued now, remembering it when it may.
fn first_push(pushed: &mut HashMap<IpAddr, Instant>, a: IpAddr, now: Instant) -> bool {
    if pushed
        .get(&a)
        .is_some_and(|t| now.duration_since(*t) < PUSHED_MEMORY)
    {
        return false;
    }
    if pushed.len() >= PUSHED_MAX {
        pushed.retain(|_, t| now.duration_since(*t) < PUSHED_MEMORY);
        while pushed.len() >= PUSHED_MAX {
            let Some(oldest) = pushed.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a) else {
                break;
            };
            pushed.remove(&oldest);
        }
    }
    pushed.insert(a, now);
    true
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            stats: Mutex::default(),
            queue: Mutex::new(None),
            wake: Condvar::new(),
            active: Mutex::default(),
            state: Mutex::new(FleetState::in_memory()),
            self_lifted: Mutex::default(),
            pending_unblocks: Mutex::default(),
            unblocked_unpulled: Mutex::default(),
            pulled_once: AtomicBool::new(false),
            resync: AtomicBool::new(false),
            watch_ready: AtomicBool::new(false),
            not_pushed_log: Mutex::new(RateLog::new(NOT_PUSHED_LOG_EVERY)),
            to_delete: Mutex::default(),
            pushed: Mutex::default(),
            last_log: Mutex::default(),
        }
    }

    /// Load the fleet state from STATE_DIR (a damaged file is logged and replaced).
    pub fn load_state(&self) {
        let (st, msg) = FleetState::load(&self.state_path("fleet.json"), now_ms());
        if let Some(m) = msg {
            self.log(&format!("fleet state: {m}"));
        }
        if !st.unblocked.is_empty() {
            self.log(&format!(
                "{} fleet decision(s) stay lifted on this host (sentryctl unblock): {}",
                st.unblocked.len(),
                st.unblocked
                    .iter()
                    .map(|(id, h)| format!("{id} ({})", h.addr))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        *lock(&self.state) = st;
    }

    fn save_state(&self, st: &mut FleetState) {
        st.prune(now_ms());
        if let Err(e) = st.save() {
            self.log_change("state", Some(&format!("cannot save the fleet state: {e}")));
        } else {
            self.log_change("state", None);
        }
    }

    /// Remember that `a` is on its way to the LAPI (the queue's contents at a restart).
    pub fn note_pushed(&self, a: IpAddr) {
        first_push(&mut lock(&self.pushed), normal(a), Instant::now());
    }

    /// Whether the administrator unblocked `a` here after this host pushed it and before
    /// its decision was pulled; the answer is given once (the decision it was about has
    /// come).
    fn take_unblocked_unpulled(&self, a: IpAddr) -> bool {
        lock(&self.unblocked_unpulled)
            .remove(&a)
            .is_some_and(|t| t.elapsed() < PUSHED_MEMORY)
    }

    fn recently_pushed(&self, a: IpAddr) -> bool {
        lock(&self.pushed)
            .get(&a)
            .is_some_and(|t| t.elapsed() < PUSHED_MEMORY)
    }

    /// A block not pushed: one line per reason per [`NOT_PUSHED_LOG_EVERY`].
    fn not_pushed(&self, reason: &'static str, line: String) {
        let l = lock(&self.not_pushed_log).note(reason, line, Instant::now());
        if let Some(l) = l {
            self.log(&l);
        }
    }

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    pub fn log(&self, line: &str) {
        eprintln!("sentry-share: {line}");
    }

    /// Log `line` for `topic` only when it differs from the last one (a LAPI that stays
    /// down is one line, not one per retry); `None` clears the topic (logs recovery).
    pub fn log_change(&self, topic: &'static str, line: Option<&str>) {
        let mut l = lock(&self.last_log);
        match line {
            Some(s) if l.get(topic).map(String::as_str) != Some(s) => {
                self.log(s);
                l.insert(topic, s.to_string());
            }
            Some(_) => {}
            None => {
                if l.remove(topic).is_some() {
                    self.log(&format!("{topic}: working again"));
                }
            }
        }
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join(name)
    }
}

/// The record of a block whose evidence grew after it was made (the scanner went on
/// probing while blocked, e.g. after the kernel's first hit).
pub const EVIDENCE_KIND: &str = "evidence";

/// Why a local decision is not pushed, or `None` when it is to be. A block made on fewer
/// than PUSH_MIN_PORTS ports is pushed by the `evidence` record that shows it has more.
pub fn push_filter(r: &WatchRecord, min_ports: u32) -> Result<Report, &'static str> {
    if r.kind != Decision::Blocked.as_str() && r.kind != EVIDENCE_KIND {
        return Err("not_a_block");
    }
    if r.origin.as_deref() != Some(ORIGIN_SENSOR) {
        return Err("not_sensor");
    }
    let (Some(source), Some(ev)) = (r.source, r.evidence) else {
        return Err("not_sensor");
    };
    if !ev.handshake && ev.distinct_ports < min_ports {
        return Err("weak");
    }
    Ok(Report {
        source,
        prefix: r.prefix,
        protocol: r.protocol.map_or("tcp", |p| p.as_str()).to_string(),
        port: r.port.unwrap_or(0),
        scan: r.scan.map_or("", |s| s.as_str()).to_string(),
        mode: r.mode.map_or("", |m| m.as_str()).to_string(),
        distinct_ports: ev.distinct_ports,
        handshake: ev.handshake,
        time_us: r.time_us,
    })
}

/// One record of the stream: queue it, count it, or note a manual unblock.
pub fn handle_record(sh: &Shared, r: &WatchRecord) {
    // An administrator's `sentryctl unblock` (or `unblock --all`).
    if r.kind == "unblocked" && r.reason.starts_with("sentryctl unblock") {
        if let Some(a) = r.source {
            admin_unblocked(sh, normal(a));
        }
        return;
    }
    if !sh.cfg.push {
        return;
    }
    // Blocks (not the `evidence` records that follow one) get a log line when they are
    // not pushed; every record is counted.
    let a_block = r.kind == Decision::Blocked.as_str();
    let src = r
        .source
        .map_or_else(|| "?".to_string(), |a| normal(a).to_string());
    match push_filter(r, sh.cfg.push_min_ports) {
        Ok(rep) => {
            let source = normal(rep.source);
            let decided = lock(&sh.active).contains_key(&source);
            if decided || !first_push(&mut lock(&sh.pushed), source, Instant::now()) {
                sh.stats().not_pushed_already_decided += 1;
                if a_block {
                    sh.not_pushed(
                        "already_decided",
                        format!(
                            "block of {source} not pushed: {}",
                            if decided {
                                "the fleet already has a decision for it"
                            } else {
                                "already pushed within the last hour"
                            }
                        ),
                    );
                }
                return;
            }
            let mut q = lock(&sh.queue);
            let Some(q) = q.as_mut() else { return };
            match q.push(&rep) {
                Ok(true) => {
                    let depth = q.len() as u64;
                    sh.stats().queue_depth = depth;
                    sh.wake.notify_all();
                }
                Ok(false) => {
                    sh.stats().queue_full += 1;
                    sh.not_pushed(
                        "queue_full",
                        format!(
                            "block of {source} not pushed: queue full (QUEUE_MAX={}; is the LAPI reachable?)",
                            sh.cfg.queue_max
                        ),
                    );
                }
                Err(e) => {
                    sh.stats().queue_write_errors += 1;
                    sh.not_pushed(
                        "queue_write_error",
                        format!("block of {source} not pushed: cannot write the queue: {e}"),
                    );
                }
            }
        }
        Err("weak") => {
            sh.stats().not_pushed_weak += 1;
            if a_block {
                let ports = r.evidence.map_or(0, |e| e.distinct_ports);
                sh.not_pushed(
                    "weak_evidence",
                    format!(
                        "block of {src} not pushed (yet): weak evidence, {ports} distinct port(s) and no completed handshake (PUSH_MIN_PORTS={}; pushed if its evidence grows)",
                        sh.cfg.push_min_ports
                    ),
                );
            }
        }
        Err("not_sensor") => {
            sh.stats().not_pushed_not_sensor += 1;
            if a_block {
                sh.not_pushed(
                    "not_sensor",
                    format!(
                        "block of {src} (origin {}) not pushed: only the local sensor's blocks are",
                        r.origin.as_deref().unwrap_or("unknown")
                    ),
                );
            }
        }
        Err(_) => {}
    }
}

/// `sentryctl unblock ADDR` on this host: the fleet decisions for ADDR stay lifted here
/// while they last (a restart of the bridge must not block it again), and with
/// DELETE_ON_UNBLOCK they are deleted in the fleet.
fn admin_unblocked(sh: &Shared, a: IpAddr) {
    let mine = lock(&sh.self_lifted)
        .remove(&a)
        .is_some_and(|t| t.elapsed() < Duration::from_secs(30));
    if mine {
        return;
    }
    let ids: Vec<(i64, u64)> = lock(&sh.active)
        .get(&a)
        .map(|m| m.iter().map(|(id, until)| (*id, *until)).collect())
        .unwrap_or_default();
    if !ids.is_empty() {
        let mut st = lock(&sh.state);
        for (id, until_ms) in &ids {
            st.unblocked.insert(
                *id,
                Held {
                    addr: a,
                    until_ms: *until_ms,
                },
            );
        }
        sh.save_state(&mut st);
        drop(st);
        sh.log(&format!(
            "{a} unblocked here (sentryctl unblock): fleet decision(s) {} stay lifted on this host until they end, also across restarts",
            ids.iter()
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    } else if sh.cfg.pull && !sh.pulled_once.load(Ordering::SeqCst) {
        // Replayed from before this start: the first startup poll settles it.
        lock(&sh.pending_unblocks).insert(a);
    } else if sh.cfg.pull && sh.recently_pushed(a) {
        // Pushed, but its decision not pulled yet: without this, that decision would
        // block the address again at the next poll.
        let mut m = lock(&sh.unblocked_unpulled);
        // Bounded like the push memory; the unblock's own time is what counts.
        first_push(&mut m, a, Instant::now());
        m.insert(a, Instant::now());
        drop(m);
        sh.log(&format!(
            "{a} unblocked here (sentryctl unblock) before the fleet decision that follows this host's alert was pulled: that decision will stay lifted on this host"
        ));
    }
    if sh.cfg.delete_on_unblock {
        lock(&sh.to_delete).push(a);
        sh.wake.notify_all();
    }
}

/// Follow the enforcer's decision stream for ever (reconnecting), resuming from the
/// saved cursor.
pub fn watch_loop(sh: Arc<Shared>) {
    let cursor_path = sh.state_path("cursor");
    let mut cursor = match crate::queue::load_cursor(&cursor_path) {
        Ok(c) => c,
        Err(e) => {
            sh.log(&format!("{e}; starting from the live stream"));
            None
        }
    };
    loop {
        let w = Client::connect(&sh.cfg.runtime_dir).and_then(|c| c.watch(cursor));
        let mut w = match w {
            Ok(w) => {
                sh.log_change("enforcer", None);
                w
            }
            Err(e) => {
                sh.stats().enforcer_errors += 1;
                sh.log_change("enforcer", Some(&format!("decision stream: {e}")));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if w.lost > 0 || w.run_changed {
            sh.stats().stream_lost += w.lost;
            sh.log(&format!(
                "decision stream resumed at {}: {} records lost{}; their blocks were not pushed",
                w.next,
                w.lost,
                if w.run_changed {
                    " (the enforcer restarted; records of its previous run after the cursor are only in its audit log)"
                } else {
                    ""
                }
            ));
        }
        let mut saved = Instant::now();
        loop {
            match w.next_event() {
                Ok(WatchEvent::Record(r)) => {
                    handle_record(&sh, &r);
                    // After the queue write: at least once, never lost.
                    cursor = Some(w.next);
                    if let Err(e) = crate::queue::save_cursor(&cursor_path, w.next) {
                        sh.log_change("cursor", Some(&format!("cannot save the cursor: {e}")));
                    }
                    saved = Instant::now();
                }
                Ok(WatchEvent::Heartbeat) => {
                    sh.watch_ready.store(true, Ordering::SeqCst);
                    for l in lock(&sh.not_pushed_log).flush(Instant::now()) {
                        sh.log(&l);
                    }
                    if cursor != Some(w.next) && saved.elapsed() > Duration::from_secs(5) {
                        cursor = Some(w.next);
                        let _ = crate::queue::save_cursor(&cursor_path, w.next);
                        saved = Instant::now();
                    }
                }
                Ok(WatchEvent::End(reason)) => {
                    sh.stats().stream_errors += 1;
                    sh.log(&format!("the enforcer ended the decision stream: {reason}"));
                    cursor = Some(w.next);
                    break;
                }
                Err(e) => {
                    sh.stats().stream_errors += 1;
                    sh.log(&format!("decision stream: {e}; reconnecting"));
                    cursor = Some(w.next);
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn count_failure(map: &mut HashMap<&'static str, u64>, e: &LapiError) {
    *map.entry(e.kind()).or_default() += 1;
}

/// Send what the queue holds, oldest first; on failure wait (1 s, doubling to 30 s) and
/// retry. Nothing leaves the queue until a LAPI accepted it.
pub fn push_loop(sh: Arc<Shared>, mut lapi: Lapi) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let batch = {
            let q = lock(&sh.queue);
            let batch = q.as_ref().map(|q| q.front(BATCH)).unwrap_or_default();
            if batch.is_empty() && lock(&sh.to_delete).is_empty() {
                let _ = sh.wake.wait_timeout(q, Duration::from_secs(1)).map(drop);
                continue;
            }
            batch
        };
        let deletes: Vec<IpAddr> = std::mem::take(&mut *lock(&sh.to_delete));
        for a in deletes {
            match lapi.delete_decisions(a) {
                Ok(()) => {
                    sh.stats().deleted_on_unblock += 1;
                    sh.log(&format!(
                        "fleet decisions for {a} deleted (sentryctl unblock)"
                    ));
                }
                Err(e) => {
                    count_failure(&mut sh.stats().push_failures, &e);
                    sh.log(&format!("cannot delete the fleet decisions for {a}: {e}"));
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let body = crate::lapi::alerts_body(&batch, sh.cfg.decision_duration);
        match lapi.push_alerts(&body) {
            Ok(ids) => {
                backoff = Duration::from_secs(1);
                sh.log_change("push", None);
                sh.resync.store(true, Ordering::SeqCst);
                if lapi.failed_over {
                    lapi.failed_over = false;
                    sh.log(&format!("pushing to {} now", lapi.current_url()));
                }
                let depth = {
                    let mut g = lock(&sh.queue);
                    let q = g.as_mut();
                    if let Some(Err(e)) = q.map(|q| q.pop(batch.len())) {
                        sh.log(&format!("cannot rewrite the queue: {e}"));
                    }
                    g.as_ref().map_or(0, Queue::len) as u64
                };
                {
                    let mut st = sh.stats();
                    st.pushed += batch.len() as u64;
                    st.queue_depth = depth;
                }
                for r in &batch {
                    sh.log(&format!(
                        "pushed alert for {} ({} ports{}) to {} (ids {})",
                        r.source,
                        r.distinct_ports,
                        if r.handshake { ", handshake" } else { "" },
                        lapi.current_url(),
                        ids.join(",")
                    ));
                }
            }
            Err(e) => {
                count_failure(&mut sh.stats().push_failures, &e);
                sh.log_change(
                    "push",
                    Some(&format!(
                        "{e}; {} alerts stay queued, retrying",
                        lock(&sh.queue).as_ref().map_or(0, Queue::len)
                    )),
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// What to do with one decision of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Block {
        addr: IpAddr,
        duration_ms: u64,
        id: i64,
    },
    Skip(&'static str, String),
}

/// Check a new decision (scope, type, value, duration) — every field is LAPI input.
pub fn classify(d: &crate::lapi::Decision) -> Action {
    let skip = |what: &'static str, why: String| Action::Skip(what, why);
    if d.kind != "ban" {
        return skip(
            "type",
            format!(
                "decision {} for {}: type {:?} (only ban is enforced)",
                d.id, d.value, d.kind
            ),
        );
    }
    let addr = match d.scope.as_str() {
        // 1.4.6 is case-sensitive: "Ip" and "Range" exactly.
        "Ip" => match d.value.parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => {
                return skip(
                    "invalid",
                    format!("decision {}: {:?} is not an address", d.id, d.value),
                )
            }
        },
        "Range" => {
            let single = d.value.split_once('/').and_then(|(a, l)| {
                let a: IpAddr = a.parse().ok()?;
                let l: u8 = l.parse().ok()?;
                let full = if a.is_ipv4() { 32 } else { 128 };
                (l == full).then_some(a)
            });
            match single {
                Some(a) => a,
                None => {
                    return skip(
                        "range",
                        format!(
                            "decision {}: range {} not enforced (the enforcer blocks single addresses, and IPv6 scanners by its BLOCK_PREFIX6 network)",
                            d.id, d.value
                        ),
                    )
                }
            }
        }
        other => {
            return skip(
                "scope",
                format!(
                    "decision {}: scope {other:?} not enforced (Ip and Range only)",
                    d.id
                ),
            )
        }
    };
    // The LAPI's ids start at 1; another one names no decision it could delete.
    if d.id <= 0 {
        return skip("invalid", format!("decision id {} for {addr}", d.id));
    }
    // The enforcer blocks and lists a mapped address as IPv4; the index must too.
    let addr = crate::lapi::normal(addr);
    let dur = match sentry_proto::parse_go_duration(&d.duration) {
        Ok(x) => x,
        Err(sentry_proto::DurationError::Negative) => {
            return skip(
                "expired",
                format!("decision {} for {addr} already expired", d.id),
            )
        }
        Err(e) => {
            return skip(
                "invalid",
                format!(
                    "decision {} for {addr}: duration {:?}: {e}",
                    d.id, d.duration
                ),
            )
        }
    };
    let ms = u64::try_from(dur.as_millis()).unwrap_or(u64::MAX);
    if ms < 1000 {
        return skip(
            "expired",
            format!("decision {} for {addr} ends within a second", d.id),
        );
    }
    Action::Block {
        addr,
        duration_ms: ms.min(sentry_proto::MAX_BLOCK_DURATION_MS),
        id: d.id,
    }
}

/// Alert lookups per poll ([`Lapi::alert_of`](crate::lapi::Lapi::alert_of)): a startup
/// poll with thousands of decisions must not become thousands of requests before the
/// blocks; the decisions beyond are blocked without their alert id and machine.
pub const ALERT_LOOKUPS_PER_POLL: usize = 16;

/// What the enforcer is told about decision `d` with its block: its scenario and id,
/// and `alert` (its alert's id and machine) when the lookup found it: the decision
/// stream of CrowdSec 1.4.6 carries neither of those. Everything is LAPI text (a `cscli
/// decisions add --reason` is the scenario): a field the enforcer would refuse is left
/// out, and said in the returned list for the caller to count and log, since refusing
/// the ban itself for a label would leave the address unblocked.
pub fn decision_meta(
    d: &crate::lapi::Decision,
    alert: Option<(i64, String)>,
) -> (BlockMeta, Vec<String>) {
    let mut meta = BlockMeta {
        decision_id: u64::try_from(d.id).ok().filter(|&i| i > 0),
        ..BlockMeta::default()
    };
    let mut refused = Vec::new();
    let mut take = |what: &str, one: BlockMeta, shown: String| match one.validate() {
        Ok(()) => {
            meta.scenario = meta.scenario.take().or(one.scenario);
            meta.alert_id = meta.alert_id.or(one.alert_id);
            meta.machine = meta.machine.take().or(one.machine);
        }
        Err(e) => refused.push(format!("{what} {shown} refused: {e}")),
    };
    if !d.scenario.is_empty() {
        let one = BlockMeta {
            scenario: Some(d.scenario.clone()),
            ..BlockMeta::default()
        };
        take("scenario", one, format!("{:?}", d.scenario));
    }
    if let Some((id, machine)) = alert {
        let one = BlockMeta {
            // 0 for a negative id: refused by the check, as 0 is.
            alert_id: Some(u64::try_from(id).unwrap_or(0)),
            ..BlockMeta::default()
        };
        take("alert id", one, id.to_string());
        let one = BlockMeta {
            machine: Some(machine.clone()),
            ..BlockMeta::default()
        };
        take("machine", one, format!("{machine:?}"));
    }
    (meta, refused)
}

/// Lift this host's own (sensor) block of `addr`, after the fleet decision `id` that
/// followed this host's alert was deleted before its end (DELETE_LIFTS_LOCAL).
fn lift_local(sh: &Shared, client: &mut Client, addr: IpAddr, id: i64, how: &str) {
    lock(&sh.self_lifted).insert(addr, Instant::now());
    match client.call(&ControlRequest::Unblock { addr }) {
        Ok(ControlResponse::Unblocked {
            was_blocked: true,
            errors,
            ..
        }) => {
            sh.stats().pulled_unblock += 1;
            sh.log(&format!(
                "fleet decision {id} for {addr}, which followed this host's alert, was deleted {how}: this host's own block of {addr} lifted too (DELETE_LIFTS_LOCAL=1){}",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; errors: {}", errors.join("; "))
                }
            ));
        }
        Ok(_) => {
            lock(&sh.self_lifted).remove(&addr);
        }
        Err(e) => {
            lock(&sh.self_lifted).remove(&addr);
            sh.stats().enforcer_errors += 1;
            sh.log(&format!("unblock of {addr}: {e}"));
        }
    }
}

/// Apply one stream reply; `startup` replies are the whole active set. `alert_of` finds
/// a decision's alert (id, machine) for the block's metadata, or `None`.
pub fn apply_stream(
    sh: &Shared,
    reply: crate::lapi::StreamReply,
    startup: bool,
    alert_of: &mut dyn FnMut(IpAddr, i64) -> Option<(i64, String)>,
) {
    let origin = sh.cfg.origin.clone();
    let mut client = match Client::connect(&sh.cfg.runtime_dir) {
        Ok(c) => c,
        Err(e) => {
            sh.stats().enforcer_errors += 1;
            sh.log(&format!("cannot apply fleet decisions: {e}"));
            return;
        }
    };
    let now = now_ms();
    let mut state_changed = false;
    // A startup reply is the whole active set: what an earlier poll applied is only kept
    // if it is listed again (and then not asked for again).
    let known = if startup {
        std::mem::take(&mut *lock(&sh.active))
    } else {
        HashMap::new()
    };
    for d in reply.deleted.unwrap_or_default() {
        let Action::Block { addr, .. } = classify(&crate::lapi::Decision {
            duration: "1h".into(),
            kind: "ban".into(),
            ..d.clone()
        }) else {
            continue;
        };
        let (until, last) = {
            let mut act = lock(&sh.active);
            match act.get_mut(&addr) {
                Some(ids) => {
                    let until = ids.remove(&d.id);
                    let empty = ids.is_empty();
                    if empty {
                        act.remove(&addr);
                    }
                    (until, empty)
                }
                None => (None, true),
            }
        };
        let (ours, was_lifted) = {
            let mut st = lock(&sh.state);
            let ours = st.ours.remove(&d.id).is_some();
            let lifted = st.unblocked.remove(&d.id).is_some();
            state_changed |= ours || lifted;
            (ours, lifted)
        };
        if !last {
            continue;
        }
        // Deleted (not expired): it left the stream before the end noted when it came.
        let early = until.is_some_and(|u| now.saturating_add(DELETED_EARLY_MS) < u);
        match client.call(&ControlRequest::UnblockOrigin {
            addr,
            origin: origin.clone(),
        }) {
            Ok(ControlResponse::UnblockedOrigin {
                was_blocked: true,
                other_origin: None,
                ..
            }) => {
                sh.stats().pulled_unblock += 1;
                sh.log(&format!(
                    "fleet decision {} for {addr} {}: unblocked",
                    d.id,
                    if early { "deleted" } else { "ended" }
                ));
            }
            Ok(ControlResponse::UnblockedOrigin {
                other_origin: Some(o),
                ..
            }) => {
                if o == ORIGIN_SENSOR && early && ours && sh.cfg.delete_lifts_local {
                    lift_local(sh, &mut client, addr, d.id, "before its end");
                } else {
                    sh.log(&format!(
                        "fleet decision {} for {addr} {}; its block is {o}'s, kept{}",
                        d.id,
                        if early { "deleted" } else { "ended" },
                        if o != ORIGIN_SENSOR {
                            ""
                        } else if !early {
                            " (the local block has its own BLOCK_TIMEOUT)"
                        } else if !ours {
                            " (the decision did not follow this host's alert)"
                        } else {
                            " (DELETE_LIFTS_LOCAL=0)"
                        }
                    ));
                }
            }
            Ok(_) if was_lifted => sh.log(&format!(
                "fleet decision {} for {addr} ended (it was lifted here by sentryctl unblock)",
                d.id
            )),
            Ok(_) => {}
            Err(e) => {
                sh.stats().enforcer_errors += 1;
                sh.log(&format!("unblock of {addr}: {e}"));
            }
        }
    }
    let pending: HashSet<IpAddr> = if startup && !sh.pulled_once.load(Ordering::SeqCst) {
        std::mem::take(&mut *lock(&sh.pending_unblocks))
    } else {
        HashSet::new()
    };
    // Every decision id of a startup reply: what the fleet still has.
    let mut present: HashSet<i64> = HashSet::new();
    for d in reply.new.unwrap_or_default() {
        present.insert(d.id);
        if !sh.cfg.pull_origins.contains(&d.origin) {
            sh.stats().unsupported_origin += 1;
            sh.log_change(
                "origin",
                Some(&format!(
                    "decisions of origin {:?} are not enforced (PULL_ORIGINS)",
                    d.origin
                )),
            );
            continue;
        }
        match classify(&d) {
            Action::Skip(what, why) => {
                {
                    let mut st = sh.stats();
                    match what {
                        "type" => st.unsupported_type += 1,
                        "range" => st.unsupported_range += 1,
                        "scope" => st.unsupported_scope += 1,
                        "expired" => {}
                        _ => st.decisions_invalid += 1,
                    }
                }
                sh.log(&why);
            }
            Action::Block {
                addr,
                duration_ms,
                id,
            } => {
                if let Some(until) = known.get(&addr).and_then(|ids| ids.get(&id)) {
                    lock(&sh.active).entry(addr).or_default().insert(id, *until);
                    continue;
                }
                let until_ms = now.saturating_add(duration_ms);
                lock(&sh.active)
                    .entry(addr)
                    .or_default()
                    .insert(id, until_ms);
                let lifted_here = {
                    let mut st = lock(&sh.state);
                    let held = Held { addr, until_ms };
                    if d.origin == "crowdsec"
                        && d.scenario == SCENARIO
                        && sh.recently_pushed(addr)
                        && !st.ours.contains_key(&id)
                    {
                        st.ours.insert(id, held);
                        state_changed = true;
                    }
                    if pending.contains(&addr) && !st.unblocked.contains_key(&id) {
                        st.unblocked.insert(id, held);
                        state_changed = true;
                    }
                    if st.ours.contains_key(&id) && sh.take_unblocked_unpulled(addr) {
                        st.unblocked.insert(id, held);
                        state_changed = true;
                    }
                    st.unblocked.contains_key(&id)
                };
                if lifted_here {
                    sh.log(&format!(
                        "fleet decision {id} for {addr} not enforced: lifted on this host by sentryctl unblock"
                    ));
                    continue;
                }
                let (meta, refused) = decision_meta(&d, alert_of(addr, id));
                if !refused.is_empty() {
                    sh.stats().meta_invalid += 1;
                    sh.log(&format!(
                        "fleet decision {id} for {addr}: {}; blocked without it",
                        refused.join("; ")
                    ));
                }
                match client.call(&ControlRequest::BlockWith {
                    addr,
                    duration_ms: Some(duration_ms),
                    origin: origin.clone(),
                    meta,
                }) {
                    Ok(ControlResponse::BlockResult {
                        decision, reason, ..
                    }) => {
                        if decision == Decision::Blocked {
                            sh.stats().pulled_block += 1;
                        } else if decision != Decision::AlreadyBlocked {
                            sh.stats().pull_refused += 1;
                        }
                        sh.log(&format!(
                            "fleet decision {id} for {addr} ({}s): {decision} ({reason})",
                            duration_ms / 1000
                        ));
                    }
                    Ok(other) => sh.log(&format!("unexpected reply to block: {other:?}")),
                    Err(e) => {
                        sh.stats().enforcer_errors += 1;
                        sh.log(&format!("block of {addr}: {e}"));
                        // The connection may be gone: one new try for the rest.
                        match Client::connect(&sh.cfg.runtime_dir) {
                            Ok(c) => client = c,
                            Err(_) => return,
                        }
                    }
                }
            }
        }
    }
    if startup {
        // What the fleet deleted while this bridge was not looking (it was down, or the
        // LAPI was unreachable): decisions that followed this host's alerts and are gone
        // before their end, and decisions lifted here that are gone.
        let (gone_ours, gone_lifted): (Vec<(i64, Held)>, usize) = {
            let mut st = lock(&sh.state);
            let gone: Vec<(i64, Held)> = st
                .ours
                .iter()
                .filter(|(id, _)| !present.contains(id))
                .map(|(id, h)| (*id, *h))
                .collect();
            st.ours.retain(|id, _| present.contains(id));
            let before = st.unblocked.len();
            st.unblocked.retain(|id, _| present.contains(id));
            (gone, before - st.unblocked.len())
        };
        state_changed |= !gone_ours.is_empty() || gone_lifted > 0;
        let active: HashSet<IpAddr> = lock(&sh.active).keys().copied().collect();
        if let Ok(ControlResponse::Blocked(list)) = client.call(&ControlRequest::Blocked) {
            for b in list {
                let a = normal(b.addr);
                if active.contains(&a) {
                    continue;
                }
                if b.origin == origin {
                    // Fleet blocks the fleet no longer has end now.
                    let r = client.call(&ControlRequest::UnblockOrigin {
                        addr: b.addr,
                        origin: origin.clone(),
                    });
                    if r.is_ok() {
                        sh.stats().pulled_unblock += 1;
                        sh.log(&format!(
                            "{} has no fleet decision any more: unblocked",
                            b.addr
                        ));
                    }
                } else if b.origin == ORIGIN_SENSOR && sh.cfg.delete_lifts_local {
                    if let Some((id, _)) = gone_ours.iter().find(|(_, h)| {
                        h.addr == a && now.saturating_add(DELETED_EARLY_MS) < h.until_ms
                    }) {
                        lift_local(
                            sh,
                            &mut client,
                            b.addr,
                            *id,
                            "while the bridge was not polling",
                        );
                    }
                }
            }
        }
        sh.pulled_once.store(true, Ordering::SeqCst);
    }
    if state_changed {
        let mut st = lock(&sh.state);
        sh.save_state(&mut st);
    }
}

/// Poll the LAPI's decision stream: startup first (and after any failure, so nothing
/// missed while unreachable is kept), then deltas every PULL_INTERVAL.
pub fn pull_loop(sh: Arc<Shared>, mut lapi: Lapi) {
    let mut startup = true;
    // Unblocks made while the bridge was down come with the decision stream's backlog:
    // let it catch up first (its first heartbeat; at most a few seconds).
    let t = Instant::now();
    while !sh.watch_ready.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut last_full = Instant::now();
    loop {
        let t = Instant::now();
        // After a push, a full poll, at most one per RESYNC_SPACING (a full poll also
        // lists the enforcer's blocks): a burst of pushes costs one.
        if !startup
            && last_full.elapsed() >= RESYNC_SPACING
            && sh.resync.swap(false, Ordering::SeqCst)
        {
            startup = true;
        }
        if startup {
            last_full = t;
        }
        match lapi.stream(startup) {
            Ok(r) => {
                sh.log_change("pull", None);
                let mut budget = ALERT_LOOKUPS_PER_POLL;
                let mut alert_of = |addr: IpAddr, id: i64| {
                    if budget == 0 {
                        return None;
                    }
                    budget -= 1;
                    match lapi.alert_of(addr, id) {
                        Ok(found) => found,
                        Err(e) => {
                            // One failure ends this poll's lookups: a LAPI that does not
                            // answer must not delay every block by a timeout.
                            budget = 0;
                            sh.stats().alert_lookup_failures += 1;
                            sh.log_change(
                                "alert_lookup",
                                Some(&format!("alert of decision {id} ({addr}): {e}")),
                            );
                            None
                        }
                    }
                };
                apply_stream(&sh, r, startup, &mut alert_of);
                startup = false;
                if lapi.failed_over {
                    // Another LAPI: its cursor for this key is its own; start over there
                    // with the full set.
                    lapi.failed_over = false;
                    sh.log(&format!("pulling from {} now", lapi.current_url()));
                    startup = true;
                }
            }
            Err(e) => {
                count_failure(&mut sh.stats().pull_failures, &e);
                sh.log_change("pull", Some(&format!("decision stream: {e}")));
                startup = true;
            }
        }
        std::thread::sleep(sh.cfg.pull_interval.saturating_sub(t.elapsed()));
    }
}

/// The bridge's own metrics (Prometheus text format), with its build and the standard
/// `process_*` families (read from /proc/self now; the stats are a copy, no lock held).
pub fn render_metrics(s: &Stats) -> String {
    let mut e = sentry_client::expo::Expo::default();
    e.family(
        "sentry_share_build_info",
        "gauge",
        "The running build: always 1, its version as a label.",
    )
    .sample(
        "sentry_share_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    e.single(
        "sentry_share_alerts_pushed_total",
        "counter",
        "Local blocks a LAPI accepted as alerts.",
        s.pushed,
    );
    e.family(
        "sentry_share_not_pushed_total",
        "counter",
        "Local decisions not pushed, by reason.",
    );
    for (why, v) in [
        ("weak_evidence", s.not_pushed_weak),
        ("not_sensor", s.not_pushed_not_sensor),
        ("already_decided", s.not_pushed_already_decided),
        ("queue_full", s.queue_full),
        ("queue_write_error", s.queue_write_errors),
    ] {
        e.sample("sentry_share_not_pushed_total", &[("reason", why)], v);
    }
    for (name, help, map) in [
        (
            "sentry_share_push_failures_total",
            "Failed LAPI calls of the push side, by kind.",
            &s.push_failures,
        ),
        (
            "sentry_share_pull_failures_total",
            "Failed LAPI calls of the pull side, by kind.",
            &s.pull_failures,
        ),
    ] {
        e.family(name, "counter", help);
        for k in ["unreachable", "credentials", "clock_skew", "protocol"] {
            e.sample(name, &[("kind", k)], map.get(k).copied().unwrap_or(0));
        }
    }
    e.single(
        "sentry_share_queue_depth",
        "gauge",
        "Alerts waiting for a LAPI.",
        s.queue_depth,
    );
    e.single(
        "sentry_share_queue_rejected_total",
        "counter",
        "Damaged queue-file lines skipped at start.",
        s.queue_rejected,
    );
    e.single(
        "sentry_share_stream_lost_total",
        "counter",
        "Decision-stream records lost (older than the enforcer keeps).",
        s.stream_lost,
    );
    e.single(
        "sentry_share_stream_errors_total",
        "counter",
        "Decision streams that ended with an error.",
        s.stream_errors,
    );
    e.family(
        "sentry_share_decisions_pulled_total",
        "counter",
        "Fleet decisions applied to the enforcer, by action.",
    )
    .sample(
        "sentry_share_decisions_pulled_total",
        &[("action", "block")],
        s.pulled_block,
    )
    .sample(
        "sentry_share_decisions_pulled_total",
        &[("action", "unblock")],
        s.pulled_unblock,
    );
    e.single(
        "sentry_share_decisions_refused_total",
        "counter",
        "Fleet decisions the enforcer's own checks refused (never-block, ignore list, budgets).",
        s.pull_refused,
    );
    e.family(
        "sentry_share_decisions_unsupported_total",
        "counter",
        "Fleet decisions not enforced, by what was unsupported.",
    );
    for (what, v) in [
        ("scope", s.unsupported_scope),
        ("range", s.unsupported_range),
        ("type", s.unsupported_type),
        ("origin", s.unsupported_origin),
        ("invalid", s.decisions_invalid),
    ] {
        e.sample(
            "sentry_share_decisions_unsupported_total",
            &[("what", what)],
            v,
        );
    }
    e.single(
        "sentry_share_enforcer_errors_total",
        "counter",
        "Failed calls to the enforcer's control socket.",
        s.enforcer_errors,
    );
    e.single(
        "sentry_share_decision_meta_refused_total",
        "counter",
        "Fleet decisions blocked without a scenario, alert id or machine that failed the enforcer's checks.",
        s.meta_invalid,
    );
    e.single(
        "sentry_share_alert_lookup_failures_total",
        "counter",
        "Failed lookups of a fleet decision's alert (its block lacks the alert id and machine).",
        s.alert_lookup_failures,
    );
    e.single(
        "sentry_share_decisions_deleted_total",
        "counter",
        "Fleet decisions deleted after sentryctl unblock (DELETE_ON_UNBLOCK).",
        s.deleted_on_unblock,
    );
    sentry_client::procstat::render(&mut e, &sentry_client::procstat::read_self());
    e.finish()
}

pub const TEXTFILE: &str = "sentry-share.prom";

pub fn metrics_loop(sh: Arc<Shared>) {
    let Some(dir) = sh.cfg.metrics_dir.clone() else {
        return;
    };
    loop {
        let text = render_metrics(&sh.stats().clone());
        if let Err(e) = sentry_client::expo::write_textfile(&dir, TEXTFILE, &text) {
            sh.log_change(
                "metrics",
                Some(&format!("cannot write {}/{TEXTFILE}: {e}", dir.display())),
            );
        } else {
            sh.log_change("metrics", None);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_proto::{EvidenceInfo, Mode, Protocol, ScanKind};

    fn rec(origin: &str, ports: u32, handshake: bool) -> WatchRecord {
        WatchRecord {
            seq: 1,
            time_us: 1,
            kind: "blocked".into(),
            source: Some("10.0.0.5".parse().unwrap()),
            prefix: None,
            protocol: Some(Protocol::Tcp),
            port: Some(22),
            scan: Some(if handshake {
                ScanKind::Connect
            } else {
                ScanKind::Syn
            }),
            mode: Some(if handshake { Mode::Tcp } else { Mode::Stcp }),
            origin: Some(origin.into()),
            evidence: Some(EvidenceInfo {
                distinct_ports: ports,
                handshake,
            }),
            expires_ms: None,
            suppressed: None,
            reason: "blocked permanently".into(),
            meta: BlockMeta::default(),
        }
    }

    #[test]
    fn only_strong_local_blocks_are_pushed() {
        assert!(push_filter(&rec("sensor", 5, false), 5).is_ok());
        assert!(push_filter(&rec("sensor", 1, true), 5).is_ok());
        assert_eq!(push_filter(&rec("sensor", 4, false), 5), Err("weak"));
        assert_eq!(push_filter(&rec("sensor", 1, false), 2), Err("weak"));
        assert_eq!(
            push_filter(&rec("crowdsec", 99, true), 5),
            Err("not_sensor")
        );
        assert_eq!(push_filter(&rec("manual", 99, true), 5), Err("not_sensor"));
        let mut r = rec("sensor", 9, false);
        r.kind = "already_blocked".into();
        assert_eq!(push_filter(&r, 5), Err("not_a_block"));
        let r = push_filter(&rec("sensor", 9, false), 5).unwrap();
        assert_eq!(
            (r.scan.as_str(), r.mode.as_str(), r.port),
            ("syn", "stcp", 22)
        );
        // Blocked on its first probe (1 port, weak), then its evidence grew: pushed then.
        let mut r = rec("sensor", 300, false);
        r.kind = EVIDENCE_KIND.into();
        assert_eq!(push_filter(&r, 5).map(|r| r.distinct_ports), Ok(300));
        r.evidence = Some(EvidenceInfo {
            distinct_ports: 3,
            handshake: false,
        });
        assert_eq!(push_filter(&r, 5), Err("weak"));
    }

    #[test]
    fn an_address_is_queued_once_an_hour_and_the_memory_is_bounded() {
        let mut m = HashMap::new();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(first_push(&mut m, a, t0));
        assert!(!first_push(&mut m, a, t0 + Duration::from_secs(60)));
        assert!(first_push(&mut m, a, t0 + PUSHED_MEMORY));
        for i in 0..16_394u32 {
            assert!(first_push(&mut m, IpAddr::V4(i.into()), t0 + PUSHED_MEMORY));
        }
        assert!(m.len() <= PUSHED_MAX);
    }

    fn dec(scope: &str, value: &str, kind: &str, duration: &str) -> crate::lapi::Decision {
        crate::lapi::Decision {
            id: 7,
            origin: "crowdsec".into(),
            kind: kind.into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
            scenario: "sentry/portscan".into(),
        }
    }

    /// Issue #21: a decision for `::ffff:a.b.c.d` was blocked as a.b.c.d by the enforcer
    /// but indexed as `::ffff:a.b.c.d` here, so the next startup poll found the block
    /// without a decision and lifted it. One form everywhere: the IPv4 address.
    #[test]
    fn a_mapped_address_is_indexed_as_the_ipv4_address() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        for d in [
            dec("Ip", "::ffff:192.0.2.7", "ban", "1h"),
            dec("Range", "::ffff:192.0.2.7/128", "ban", "1h"),
            dec("Ip", "::FFFF:c000:207", "ban", "1h"),
        ] {
            assert!(
                matches!(classify(&d), Action::Block { addr, .. } if addr == v4),
                "{d:?}: {:?}",
                classify(&d)
            );
        }
        // What the enforcer lists after that block is what the index holds.
        let mut active: HashMap<IpAddr, HashSet<i64>> = HashMap::new();
        if let Action::Block { addr, id, .. } =
            classify(&dec("Ip", "::ffff:192.0.2.7", "ban", "1h"))
        {
            active.entry(addr).or_default().insert(id);
        }
        assert!(active.contains_key(&v4));
        // A real IPv6 address stays as it is.
        assert!(matches!(
            classify(&dec("Ip", "2001:db8::7", "ban", "1h")),
            Action::Block { addr, .. } if addr == "2001:db8::7".parse::<IpAddr>().unwrap()
        ));
    }

    #[test]
    fn decisions_are_checked_field_by_field() {
        assert_eq!(
            classify(&dec("Ip", "10.0.0.5", "ban", "3h59m59.5s")),
            Action::Block {
                addr: "10.0.0.5".parse().unwrap(),
                duration_ms: 14_399_500,
                id: 7
            }
        );
        assert!(matches!(
            classify(&dec("Range", "10.0.0.5/32", "ban", "1h")),
            Action::Block { .. }
        ));
        for (d, what) in [
            (dec("ip", "10.0.0.5", "ban", "1h"), "scope"),
            (dec("Country", "FR", "ban", "1h"), "scope"),
            (dec("Range", "10.0.0.0/24", "ban", "1h"), "range"),
            (dec("Range", "2001:db8::/64", "ban", "1h"), "range"),
            (dec("Ip", "10.0.0.5", "captcha", "1h"), "type"),
            (dec("Ip", "10.0.0.300", "ban", "1h"), "invalid"),
            (dec("Ip", "10.0.0.5", "ban", "1d"), "invalid"),
            (dec("Ip", "10.0.0.5", "ban", "-5m"), "expired"),
            (dec("Ip", "10.0.0.5", "ban", "300ms"), "expired"),
        ] {
            match classify(&d) {
                Action::Skip(w, why) => assert_eq!(w, what, "{d:?}: {why}"),
                a => panic!("{d:?}: {a:?}"),
            }
        }
    }

    #[test]
    fn a_decision_tells_its_scenario_id_alert_and_machine_and_a_bad_field_is_left_out_and_said() {
        let (m, refused) = decision_meta(&dec("Ip", "10.0.0.5", "ban", "1h"), None);
        assert_eq!(
            m,
            BlockMeta {
                scenario: Some("sentry/portscan".into()),
                decision_id: Some(7),
                alert_id: None,
                machine: None,
            }
        );
        assert!(refused.is_empty());
        let (m, refused) = decision_meta(
            &dec("Ip", "10.0.0.5", "ban", "1h"),
            Some((3, "host-a".into())),
        );
        assert_eq!(
            (m.alert_id, m.machine.as_deref()),
            (Some(3), Some("host-a"))
        );
        assert!(refused.is_empty());
        let mut d = dec("Ip", "10.0.0.5", "ban", "1h");
        d.scenario = "x\nattackalert: Connect from host: 192.0.2.1".into();
        let (m, refused) = decision_meta(&d, Some((-1, "host a".into())));
        assert_eq!(
            m,
            BlockMeta {
                decision_id: Some(7),
                ..BlockMeta::default()
            }
        );
        m.validate().unwrap();
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].starts_with("scenario") && refused[2].starts_with("machine"));
        d.scenario = String::new();
        let (m, refused) = decision_meta(&d, None);
        assert_eq!(m.scenario, None);
        assert!(refused.is_empty());
        // A decision without a valid id is not enforced at all (nothing could delete it).
        d.id = 0;
        assert!(matches!(classify(&d), Action::Skip("invalid", _)));
    }

    fn unblocked(a: &str) -> WatchRecord {
        WatchRecord {
            kind: "unblocked".into(),
            origin: None,
            evidence: None,
            source: Some(a.parse().unwrap()),
            reason: "sentryctl unblock".into(),
            ..rec("sensor", 1, false)
        }
    }

    /// The helper's note on issue #20: an unblock on the detecting host less than one
    /// PULL_INTERVAL after the push came before the decision; the decision must not
    /// block the address again when it is pulled.
    #[test]
    fn an_unblock_before_the_pull_lifts_the_decision_that_follows_the_push() {
        let cfg = crate::config::Config::parse(
            "LAPI_URLS=\"http://127.0.0.1:8080\"\nMACHINE_ID=host-a\nMACHINE_PASSWORD_FILE=/p\nBOUNCER_KEY_FILE=/k\n",
        )
        .unwrap();
        let sh = Shared::new(cfg);
        sh.pulled_once.store(true, Ordering::SeqCst);
        let pushed: IpAddr = "192.0.2.7".parse().unwrap();
        sh.note_pushed(pushed);
        handle_record(&sh, &unblocked("192.0.2.7"));
        // Another host's address this host never pushed: nothing to remember.
        handle_record(&sh, &unblocked("192.0.2.8"));
        assert!(!sh.take_unblocked_unpulled("192.0.2.8".parse().unwrap()));
        assert!(sh.take_unblocked_unpulled(pushed));
        // Once: a later decision for it (a new scan, another host's) is enforced.
        assert!(!sh.take_unblocked_unpulled(pushed));
    }

    #[test]
    fn metrics_families_are_complete() {
        let mut s = Stats {
            pushed: 3,
            ..Stats::default()
        };
        s.push_failures.insert("unreachable", 2);
        let t = render_metrics(&s);
        assert!(t.contains("sentry_share_alerts_pushed_total 3\n"));
        assert!(t.contains("sentry_share_push_failures_total{kind=\"unreachable\"} 2\n"));
        assert!(t.contains("sentry_share_queue_depth 0\n"));
        assert!(t.contains("sentry_share_decision_meta_refused_total 0\n"));
        assert!(t.contains("sentry_share_alert_lookup_failures_total 0\n"));
        assert!(t.contains(&format!(
            "sentry_share_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(
            t.contains("# TYPE process_resident_memory_bytes gauge\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{t}"
        );
    }
}
