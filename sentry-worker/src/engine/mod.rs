//! The decision engine: every checked block request goes through [`Engine::decide`]: the
//! judge ([`crate::judge`]) decides, the executor ([`crate::action`]) acts, and the result
//! is persisted and audited — all before the caller sends the reply.
//!
//! The engine owns the state the judge looks at (blocks, ignore list, never-block set,
//! rate window) and the glue: write-ahead persistence, history lines, audit records,
//! counters. Restore, expiry and status live in their own submodules; records and log
//! lines of decisions that changed nothing are bounded per second by AUDIT_RATE
//! ([`crate::budget`]).

mod blocks;
pub mod effects;
mod expiry;
pub mod explain;
mod files;
pub mod rate;
mod restore;
mod status;
pub mod tripwire;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use policy::{Config, Firewall, IgnoreList, NeverBlock};
use sentry_proto::{
    BlockRequest, Counters, Decision, RecentDecision, SensorInfo, MAX_RECENT_DECISIONS,
};

use crate::action::{self, Action, Command, Executor, Subject};
use crate::audit::{ActionRecord, AuditLog, AuditRecord, Level, Logger, Peer, RecordKind};
use crate::budget::AuditBudget;
use crate::control::metrics::{ErrorKind, Stats};
use crate::error::EnforcerError;
use crate::infra::AddrWatch;
use crate::judge::{self, Evidence, Facts, Verdict};
use crate::session::{Checked, Invalid};
use crate::store::{BlockRecord, Store};
use crate::time::{WallMs, WallUs};

/// The address-change subscription; without it, this host's addresses are re-read
/// before every decision (said once).
fn open_addr_watch(log: &Logger) -> Option<AddrWatch> {
    match AddrWatch::open() {
        Ok(w) => Some(w),
        Err(e) => {
            log.warn(&format!(
                "adminalert: cannot watch address changes ({e}); this host's addresses are re-read before every decision"
            ));
            None
        }
    }
}

/// The executor over the parent's channel, with the table rebuilt with the persisted
/// blocks. A table the parent cannot build is an error when FIREWALL="nftables" was the
/// admin's choice; when it was the default, it is said and blocks use the other actions.
fn open_backends(
    cfg: &Config,
    opts: &Options,
    blocks: &std::collections::HashMap<IpAddr, BlockRecord>,
    never: &NeverBlock,
    ignore: &IgnoreList,
    log: &Arc<Logger>,
) -> Result<Executor, EnforcerError> {
    let Some((link, mut backends)) = opts.parent.clone() else {
        return Ok(Executor::new(
            None,
            action::Backends {
                nft: false,
                route: false,
            },
            Arc::clone(log),
        ));
    };
    backends.nft &= cfg.firewall == Firewall::Nftables;
    backends.route &= cfg.blackhole_route;
    let mut exec = Executor::new(Some(link), backends, Arc::clone(log));
    if backends.nft {
        let built = restore::rebuild_table(&exec, cfg, blocks, never, ignore, WallMs::now());
        match (built, cfg.firewall_origin) {
            (Ok(()), _) => {}
            (Err(e), policy::FirewallOrigin::Key) => return Err(e),
            // The default, not the admin's choice: say so and block with the rest.
            (Err(e), policy::FirewallOrigin::Default) => {
                log.err(&format!(
                    "adminalert: ERROR: nftables is not usable ({e}); FIREWALL is not set, so blocks use only the configured KILL_ROUTE / KILL_HOSTS_DENY / KILL_RUN_CMD"
                ));
                backends.nft = false;
                exec = exec.with_backends(backends);
            }
        }
    }
    Ok(exec)
}

/// This host's addresses and IPv4 broadcast addresses, from getifaddrs(3).
pub fn own_addresses() -> (Vec<IpAddr>, Vec<Ipv4Addr>) {
    let mut own = Vec::new();
    let mut bcast = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            if let Some(a) = ifa.address.as_ref() {
                if let Some(v4) = a.as_sockaddr_in() {
                    own.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = a.as_sockaddr_in6() {
                    own.push(IpAddr::V6(v6.ip()));
                }
            }
            if let Some(b) = ifa.broadcast.as_ref().and_then(|b| b.as_sockaddr_in()) {
                bcast.push(b.ip());
            }
            // The subnet's network and broadcast addresses, also when the interface has
            // no broadcast address configured (a forged probe "from" either must not
            // become a block that the judge releases a moment later).
            let v4 = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in());
            let mask = ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in());
            if let (Some(a), Some(m)) = (v4, mask) {
                bcast.extend(subnet_ends(a.ip(), m.ip()));
            }
        }
    }
    (own, bcast)
}

/// The network and broadcast addresses of `addr`'s subnet (none for /31 and /32, whose
/// two or one addresses are all hosts).
pub fn subnet_ends(addr: Ipv4Addr, mask: Ipv4Addr) -> Vec<Ipv4Addr> {
    let (a, m) = (u32::from(addr), u32::from(mask));
    if m.leading_ones() > 30 || m.leading_ones() + m.trailing_zeros() != 32 {
        return Vec::new();
    }
    vec![Ipv4Addr::from(a & m), Ipv4Addr::from(a | !m)]
}

/// Run-time options that do not come from the configuration file.
#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    /// Read this host's addresses from getifaddrs at start and again whenever the kernel
    /// reports an address change (checked, without waiting, at the start of every
    /// decision; see [`AddrWatch`]). Always on in the daemon; off only for tests and
    /// embedders, who then supply the addresses with [`Engine::set_own_addresses`].
    pub refresh_own_addresses: bool,
    /// Where the resolver and lease files are (`/` in the daemon); `None` turns
    /// infrastructure discovery off (unit tests, embedders). NEVER_BLOCK_INFRASTRUCTURE=0
    /// turns it off too.
    pub infra: Option<crate::infra::InfraPaths>,
    /// The kernel's boot id ([`DEFAULT_BOOT_ID_PATH`] in the daemon; tests fake a reboot
    /// with another file). A restore after a reboot re-runs KILL_ROUTE.
    pub boot_id_path: PathBuf,
    /// The boot id given on the command line (the unit passes systemd's `%b`: under
    /// `ProcSubset=pid` the kernel's file is hidden); read from `boot_id_path` otherwise.
    pub boot_id: Option<String>,
    /// The root parent's request channel and the backends it said it has (its Hello);
    /// `None`: no backend at all (unit tests, embedders).
    pub parent: Option<(Arc<crate::privsep::Link>, action::Backends)>,
}

/// Where the kernel publishes the id of the current boot.
pub const DEFAULT_BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Everything the enforcer decides with.
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    ignore: IgnoreList,
    never: NeverBlock,
    opts: Options,
    blocks: blocks::Blocks,
    store: Store,
    audit: AuditLog,
    log: Arc<Logger>,
    exec: Executor,
    /// Slow effects deferred to the daemon's worker ([`effects`]); `None`: every action
    /// runs in the decision (unit tests, embedders).
    effects: Option<effects::Queue>,
    /// Address-change notifications; `None` when `refresh_own_addresses` is off, or when
    /// the socket could not be opened (then the addresses are re-read before every
    /// decision, as a fallback that is slow but never stale).
    addr_watch: Option<AddrWatch>,
    /// Default gateways, nameservers, point-to-point peers, DHCP servers (never blocked).
    infra: Option<crate::infra::Infra>,
    /// The blocks and commands of the last minute (BLOCK_RATE and its shares).
    rate: rate::RateWindow,
    /// The fleet's blocks of the last minute (FLEET_BLOCK_RATE).
    fleet_rate: rate::RateWindow,
    /// AUDIT_RATE: records and log lines of no-change decisions per second.
    budget: AuditBudget,
    counters: Counters,
    /// What only the metrics show (errors by kind, origins, latency, reloads).
    stats: Stats,
    /// When the block being made took effect (its first blocking action), for the
    /// probe-to-block latency ([`Engine::decide`] takes it).
    effect_at: Option<WallUs>,
    recent: VecDeque<RecentDecision>,
    started: Instant,
    /// Addresses whose block ended since the daemon last asked ([`Engine::take_lifted`]),
    /// so the sensor can forget their state.
    lifted: Vec<IpAddr>,
    /// The connected sensor (maintained by the daemon).
    pub sensor: Option<SensorInfo>,
    /// The never-block set changed ([`Engine::take_never_changed`]).
    never_changed: bool,
    /// The decision stream (`sentryctl watch`): every audit record, numbered.
    pub watch: crate::control::watch::Hub,
}

/// A block asked for over the control socket: who asked, and for how long (`None`:
/// BLOCK_TIMEOUT).
#[derive(Debug, Clone)]
pub struct ControlBlock {
    pub origin: String,
    pub duration: Option<std::time::Duration>,
    /// What the fleet decision says about itself (empty for `sentryctl block`).
    pub meta: sentry_proto::BlockMeta,
}

/// A log line held back until the AUDIT_RATE budget has admitted its decision.
type Line = Option<(Level, String)>;

impl Engine {
    /// Open the state, the audit log and the backends, then restore persisted blocks.
    pub fn new(cfg: Config, opts: Options, log: Arc<Logger>) -> Result<Self, EnforcerError> {
        let ignore = cfg.load_ignore()?;
        let (store, blocks, warnings) =
            Store::open(&opts.state_dir).map_err(|source| EnforcerError::State {
                dir: opts.state_dir.clone(),
                source,
            })?;
        for w in warnings {
            log.warn(&format!("adminalert: state: {w}"));
        }
        let audit = AuditLog::open(&cfg.audit_log).map_err(EnforcerError::AuditLog)?;
        // Subscribe before the first read, so that no change can fall in between.
        let addr_watch = opts
            .refresh_own_addresses
            .then(|| open_addr_watch(&log))
            .flatten();
        let (own, bcast) = if opts.refresh_own_addresses {
            own_addresses()
        } else {
            (Vec::new(), Vec::new())
        };
        let mut never = NeverBlock::new(own);
        never.set_broadcasts(bcast);
        // Infrastructure joins the never-block set before the table is rebuilt and the
        // persisted blocks restored.
        let infra = crate::infra::open_for(&cfg, opts.infra.as_ref(), &mut never, &log);
        let started = Instant::now();
        let exec = open_backends(&cfg, &opts, &blocks, &never, &ignore, &log)?;
        let budget = AuditBudget::new(cfg.audit_rate);
        let mut engine = Self {
            cfg,
            ignore,
            never,
            opts,
            blocks: blocks::Blocks::default(),
            store,
            audit,
            exec,
            effects: None,
            log,
            addr_watch,
            infra,
            rate: rate::RateWindow::default(),
            fleet_rate: rate::RateWindow::default(),
            budget,
            counters: Counters::default(),
            stats: Stats::new(WallMs::now().0),
            effect_at: None,
            recent: VecDeque::new(),
            started: Instant::now(),
            lifted: Vec::new(),
            sensor: None,
            never_changed: false,
            watch: crate::control::watch::Hub::new(WallUs::now().0),
        };
        engine.restore(blocks, WallMs::now(), started);
        Ok(engine)
    }

    /// Replace this host's addresses in the never-block set (they are read again from the
    /// kernel on its next address change when `refresh_own_addresses` is on).
    pub fn set_own_addresses(&mut self, own: Vec<IpAddr>) {
        self.never.set_own(own);
        self.lift_never_blocked(WallMs::now());
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The executor (its backends and the parent's channel), for the effects thread.
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    pub fn is_blocked(&self, addr: IpAddr) -> bool {
        self.blocks.contains_key(&addr)
    }

    pub fn active_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn remember(
        &mut self,
        time: WallMs,
        source: Option<IpAddr>,
        decision: RecordKind,
        reason: &str,
    ) {
        if self.recent.len() >= MAX_RECENT_DECISIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentDecision {
            time_ms: time.0,
            source,
            decision: decision.as_str().to_string(),
            reason: reason.to_string(),
        });
    }

    fn write_audit(&mut self, rec: &AuditRecord) {
        if let Err(e) = self.audit.write(rec) {
            self.error(
                ErrorKind::Audit,
                format!(
                    "cannot write audit log {}: {e}",
                    self.audit.path().display()
                ),
            );
        }
        // The same record, to the decision stream; never blocks (a slow client is
        // dropped instead).
        let dropped = self.watch.publish(rec);
        if dropped > 0 {
            self.counters.watch_dropped += dropped as u64;
            self.log.warn(&format!(
                "adminalert: {dropped} decision-stream client(s) dropped: more than {} records not yet read",
                crate::control::watch::CLIENT_BUFFER
            ));
        }
    }

    /// A snapshot for the Prometheus exposition (`&mut`: an origin seen for the first
    /// time, a restored block's, takes its label here).
    pub fn metrics_snapshot(&mut self) -> crate::control::metrics::Snapshot {
        let mut active: std::collections::BTreeMap<String, u64> = [
            sentry_proto::ORIGIN_SENSOR.to_string(),
            judge::MANUAL_ORIGIN.to_string(),
        ]
        .into_iter()
        .map(|o| (o, 0))
        .collect();
        // Counted per origin name first, then labelled: one label lookup per name, not
        // per block (this runs under the engine lock, with up to MAX_BLOCKS blocks).
        let mut by_name: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for b in self.blocks.values() {
            let o = b.origin.as_deref().unwrap_or(sentry_proto::ORIGIN_SENSOR);
            *by_name.entry(o).or_default() += 1;
        }
        for (o, n) in by_name {
            *active.entry(self.stats.origin_label(o)).or_default() += n;
        }
        crate::control::metrics::Snapshot {
            counters: self.counters.clone(),
            stats: self.stats.clone(),
            active_by_origin: active.into_iter().collect(),
            max_blocks: u64::from(self.cfg.max_blocks),
            sensor: self.sensor.clone(),
            watch_clients: self.watch.clients() as u64,
            start_time_s: self.watch.run() / 1_000_000,
            process: None,
        }
    }

    /// Count `n` errors of `kind`: in the status page's total and the metrics' breakdown.
    pub fn count_errors(&mut self, kind: ErrorKind, n: u64) {
        self.counters.errors += n;
        self.stats.count_error(kind, n);
    }

    /// The outcome of a reload (SIGHUP, `sentryctl ignore`), for the metrics; a failure
    /// counts as a `config` error.
    pub fn note_reload(&mut self, ok: bool, now: WallMs) {
        if !ok {
            self.counters.errors += 1;
        }
        self.stats.reloaded(ok, now.0);
    }

    /// Count and log an error (`adminalert: ERROR: ...`); the work goes on without what
    /// failed.
    pub fn error(&mut self, kind: ErrorKind, what: String) {
        self.count_errors(kind, 1);
        self.log.err(&format!("adminalert: ERROR: {what}"));
    }

    /// Count and log a failure to persist, which never stops a decision.
    fn persist_error(&mut self, what: &str, e: &std::io::Error) {
        self.error(ErrorKind::Persist, format!("cannot persist {what}: {e}"));
    }

    /// Write the AUDIT_RATE summaries of a second that is over (one record and one log
    /// line per decision kind that had records suppressed). Called before every decision
    /// and by the daemon's one-second tick, so that summaries are not held back when the
    /// requests stop.
    pub fn flush_audit_budget(&mut self, now: WallUs) {
        let summaries = self.budget.roll(now);
        self.write_summaries(now, summaries);
    }

    /// On shutdown: write the summaries of the current second too, so no count is lost.
    pub fn finish_audit_budget(&mut self, now: WallUs) {
        self.flush_audit_budget(now);
        let summaries = self.budget.finish();
        self.write_summaries(now, summaries);
    }

    fn write_summaries(&mut self, now: WallUs, summaries: Vec<crate::budget::Summary>) {
        let rate = self.budget.rate();
        for s in summaries {
            self.write_audit(&AuditRecord::summary(now, &s, rate));
            self.log.warn(&format!(
                "adminalert: {} further {} decisions in the last second not logged individually (AUDIT_RATE={rate})",
                s.suppressed,
                s.decision.as_str()
            ));
        }
    }

    /// The addresses whose block ended since the last call.
    pub fn take_lifted(&mut self) -> Vec<IpAddr> {
        std::mem::take(&mut self.lifted)
    }

    /// Count an error the daemon logged itself.
    pub fn count_error(&mut self, kind: ErrorKind) {
        self.count_errors(kind, 1);
    }

    /// Count a refusal whose audit record was suppressed by the refusal rate limit.
    pub fn count_suppressed_rejection(&mut self) {
        self.counters.rejected += 1;
        self.count_errors(ErrorKind::Refused, 1);
    }

    /// Audit and count a refused connection or a malformed / hostile frame.
    pub fn reject(&mut self, now: WallMs, reason: &str, peer: Option<Peer>) {
        self.counters.rejected += 1;
        self.count_errors(ErrorKind::Refused, 1);
        let kind = RecordKind::Decision(Decision::Rejected);
        self.remember(now, None, kind, reason);
        let rec = AuditRecord::event(now, kind, reason.to_string(), peer);
        self.write_audit(&rec);
        self.log
            .warn(&format!("adminalert: connection refused: {reason}"));
    }

    fn log_action(&self, addr: IpAddr, a: &ActionRecord) {
        match action::action_line(addr, a) {
            (true, line) => self.log.notice(&line),
            (false, line) => self.log.err(&line),
        }
    }

    /// Whether any action that blocks traffic (as opposed to only running a command) is
    /// configured.
    /// [`sentry_client::check::blocking_summary`] of what actually came up (the default
    /// nftables set is left out when the kernel refused it).
    pub fn blocking_in_effect(&self) -> String {
        if self.cfg.firewall == Firewall::Nftables && !self.exec.backends().nft {
            let mut c = self.cfg.clone();
            c.firewall = Firewall::None;
            return format!(
                "{} (nftables unavailable)",
                sentry_client::check::blocking_summary(&c)
            );
        }
        sentry_client::check::blocking_summary(&self.cfg)
    }

    fn blocking_configured(&self) -> bool {
        let b = self.exec.backends();
        b.nft || b.route || self.cfg.kill_route.is_some() || self.cfg.kill_hosts_deny.is_some()
    }

    /// The address-change socket, for the daemon's thread that waits on it and then calls
    /// [`Engine::refresh_own_addresses`] (so changes are taken in between decisions, not
    /// on the next decision's path).
    pub fn addr_watch_fd(&self) -> Option<Arc<std::os::fd::OwnedFd>> {
        self.addr_watch.as_ref().map(AddrWatch::poll_fd)
    }

    /// Re-read this host's addresses if the kernel reported a change since the last look
    /// (one non-blocking `recvfrom` when nothing changed). Without a watch socket, re-read
    /// unconditionally. No-op when `refresh_own_addresses` is off.
    pub fn refresh_own_addresses(&mut self) {
        if !self.opts.refresh_own_addresses {
            return;
        }
        let changed = match self.addr_watch.as_mut().map(AddrWatch::drain) {
            Some(Ok(changed)) => changed,
            Some(Err(e)) => {
                self.error(ErrorKind::Netlink, format!("address-change socket failed ({e}); this host's addresses are now re-read before every decision"));
                self.addr_watch = None;
                true
            }
            None => true,
        };
        if changed {
            let (own, bcast) = own_addresses();
            self.never.set_own(own);
            self.never.set_broadcasts(bcast);
            self.lift_never_blocked(WallMs::now());
        }
    }

    /// What a block of `source` covers ([`judge::block_target`]): for looking up whether
    /// it is blocked already. A new block takes the target from the judge's verdict.
    fn block_target(&self, source: IpAddr) -> judge::Target {
        judge::block_target(&self.cfg, &self.never, &self.ignore, source)
    }

    /// Why block `b` must end now: the never-block set or the ignore list covers it (for
    /// a network block: anything in the network).
    pub(super) fn now_covered(&self, b: &BlockRecord) -> Option<String> {
        let never = match (b.addr, b.prefix6) {
            (IpAddr::V6(a), Some(len)) => self.never.check_net6(a, len),
            _ => self.never.check(b.addr),
        };
        if let Some(why) = never {
            return Some(format!("never-block: {why}"));
        }
        let ignored = match (b.addr, b.prefix6) {
            (IpAddr::V6(a), Some(len)) => self.ignore.overlaps_net6(a, len),
            _ => self.ignore.contains(b.addr),
        };
        ignored.then(|| "now on the ignore list".to_string())
    }

    /// Take route/address notifications (and, with `files`, changes of the resolver and
    /// lease files, looked at no more than once per second by the daemon's tick); install
    /// the new infrastructure list and lift blocks it now covers.
    pub fn refresh_infra(&mut self, files: bool) {
        let Some(infra) = self.infra.as_mut() else {
            return;
        };
        let mut r = infra.refresh_kernel();
        if files {
            let f = infra.refresh_files(Instant::now());
            r.changed |= f.changed;
            r.problems.extend(f.problems);
        }
        let entries = r.changed.then(|| (infra.entries(), infra.dropped));
        self.count_errors(ErrorKind::Infra, r.problems.len() as u64);
        for p in &r.problems {
            self.log.warn(&format!("adminalert: infrastructure: {p}"));
        }
        let Some((entries, dropped)) = entries else {
            return;
        };
        crate::infra::log_entries(&self.log, &entries, dropped);
        self.never.set_infrastructure(entries);
        self.never_changed = true;
        self.lift_never_blocked(WallMs::now());
    }

    /// Lift the blocks of addresses the never-block set now covers (an address this host
    /// took after it was blocked): blocking it would cut the host off from itself.
    fn lift_never_blocked(&mut self, now: WallMs) {
        let mut covered: Vec<(IpAddr, String)> = self
            .blocks
            .values()
            .filter_map(|b| {
                let why = self.now_covered(b)?;
                why.starts_with("never-block").then_some((b.addr, why))
            })
            .collect();
        if covered.is_empty() {
            return;
        }
        covered.sort();
        for (addr, why) in covered {
            self.end_block(addr, now, (RecordKind::Unblocked, &why), None, true, None);
            self.counters.unblocked += 1;
        }
        self.rewrite_blocked_file();
    }

    fn count(&mut self, d: Decision) {
        if d == Decision::Failed {
            self.count_errors(ErrorKind::Action, 1);
        }
        let c = &mut self.counters;
        match d {
            Decision::Blocked => c.blocked += 1,
            Decision::AlreadyBlocked => c.already_blocked += 1,
            Decision::Ignored => c.ignored += 1,
            Decision::NeverBlock => c.never_block += 1,
            Decision::LogOnly => c.log_only += 1,
            Decision::CommandOnly => c.command_only += 1,
            Decision::RateLimited => c.rate_limited += 1,
            Decision::Capped => c.capped += 1,
            Decision::Rejected => c.rejected += 1,
            Decision::Failed => c.failed += 1,
        }
    }

    /// The audit record of a request, before its decision is known.
    fn request_record(req: &BlockRequest, now: WallUs, peer: Peer) -> AuditRecord {
        let mut rec = AuditRecord::event_us(
            now,
            RecordKind::Decision(Decision::Rejected),
            String::new(),
            Some(peer),
        );
        rec.source = Some(req.source);
        rec.protocol = Some(req.protocol);
        rec.port = Some(req.port);
        rec.scan = Some(req.scan);
        rec.mode = Some(req.mode);
        rec.origin = Some(sentry_proto::ORIGIN_SENSOR.to_string());
        rec.distinct_ports = Some(req.distinct_ports);
        rec.handshake = Some(req.scan == sentry_proto::ScanKind::Connect);
        rec
    }

    /// `sentryctl block` and the fleet bridge: a block of `addr` for `ctl.origin`, judged
    /// like a sensor request (never-block set, ignore list, BLOCK_TCP, BLOCK_RATE,
    /// MAX_BLOCKS; its evidence counts as more than a single probe), acted on, persisted
    /// with its origin and audited. Returns the decision, the reason and when the block
    /// ends.
    pub fn decide_control(
        &mut self,
        addr: IpAddr,
        ctl: &ControlBlock,
        peer: Peer,
        now: WallUs,
    ) -> (Decision, String, Option<u64>) {
        self.counters.requests += 1;
        self.counters.control_requests += 1;
        let mut rec = AuditRecord::event_us(
            now,
            RecordKind::Decision(Decision::Rejected),
            String::new(),
            Some(peer),
        );
        rec.source = Some(addr);
        rec.origin = Some(ctl.origin.clone());
        self.flush_audit_budget(now);
        let invalid = control_invalid(ctl, peer);
        // Only validated metadata reaches the audit log.
        if invalid.is_none() {
            rec.meta = ctl.meta.clone();
        }
        let (decision, reason, line) = match invalid {
            Some(why) => (
                Decision::Rejected,
                why.clone(),
                Some((
                    Level::Warning,
                    format!("adminalert: rejected block request from control: {why}"),
                )),
            ),
            None => self.judge_control(addr, ctl, now, &mut rec),
        };
        let expires = (decision == Decision::Blocked)
            .then_some(rec.expires_ms)
            .flatten();
        let d = self.conclude(rec, decision, reason.clone(), line, addr, now);
        (d, reason, expires)
    }

    /// A valid control block, judged and acted on. A fleet block lasts at most
    /// FLEET_MAX_DURATION: a compromised LAPI or fleet machine cannot make ten-year blocks.
    /// Shortened, and said so in the reason.
    fn judge_control(
        &mut self,
        addr: IpAddr,
        ctl: &ControlBlock,
        now: WallUs,
        rec: &mut AuditRecord,
    ) -> (Decision, String, Line) {
        // No probe behind it: the judge sees an address and an origin (BLOCK_TCP governs
        // it: judge::Request::mode).
        let req = judge::Request::Control {
            addr,
            origin: judge::Origin::of(Some(&ctl.origin)),
        };
        let max = self.cfg.fleet_max_duration;
        let fleet = judge::Origin::of(Some(&ctl.origin)) == judge::Origin::Fleet;
        let asked = ctl.duration.or(self.cfg.block_timeout);
        let mut ctl = ctl.clone();
        let shortened = fleet && asked.is_none_or(|d| d > max);
        if shortened {
            ctl.duration = Some(max);
        }
        let (d, mut reason, line) = self.decide_checked(req, now.ms(), rec, Some(&ctl));
        if shortened && d == Decision::Blocked {
            let asked = asked.map_or("permanent".to_string(), |a| format!("{}s", a.as_secs()));
            reason.push_str(&format!(
                " (asked for {asked}; FLEET_MAX_DURATION={}s)",
                max.as_secs()
            ));
        }
        (d, reason, line)
    }

    /// Decide on one checked block request from `peer` and act on it. Persistence and the
    /// audit record are complete when this returns.
    pub fn decide(&mut self, req: &Checked, peer: Peer, now: WallUs) -> Decision {
        self.counters.requests += 1;
        let mut rec = Self::request_record(req, now, peer);
        self.flush_audit_budget(now);
        self.effect_at = None;
        let (decision, reason, line) =
            self.decide_checked(judge::Request::Probe(req), now.ms(), &mut rec, None);
        let d = self.conclude(rec, decision, reason, line, req.source, now);
        // Probe to block, for blocks the sensor asked for (a kernel hit judged late is
        // late by design).
        if let (Decision::Blocked, Some(at)) = (d, self.effect_at.take()) {
            if peer != tripwire::KERNEL_PEER {
                self.stats.observe_block_latency(req.last_seen_ms, at.0);
            }
        }
        self.settle_kernel_hit(req.source, d);
        if d == Decision::AlreadyBlocked {
            self.grow_evidence(req, now);
        }
        d
    }

    /// A blocked source's later report with more distinct ports: its block's record keeps
    /// the larger count (persisted, so `sentryctl blocked` and a restart show it) and an
    /// `evidence` record tells the audit log and the fleet bridge, which shares a scanner
    /// blocked on its first probe once it has shown PUSH_MIN_PORTS. The sensor reports a
    /// blocked source again only when its count doubles, so this happens a few times per
    /// scanner, never per packet; fleet and manual blocks keep their origin's record.
    fn grow_evidence(&mut self, req: &BlockRequest, now: WallUs) {
        let target = self.block_target(req.source).addr;
        let Some(b) = self
            .blocks
            .get(&target)
            .or_else(|| self.blocks.get(&req.source))
        else {
            return;
        };
        if b.origin.is_some() || req.distinct_ports <= b.distinct_ports {
            return;
        }
        let mut b = b.clone();
        b.distinct_ports = req.distinct_ports;
        self.blocks.insert(b.clone());
        if let Err(e) = self.store.put(&b, &self.blocks) {
            self.persist_error(&format!("evidence of {}", b.addr), &e);
        }
        let mut rec = AuditRecord::event_us(
            now,
            RecordKind::Evidence,
            format!(
                "still probing while blocked: {} distinct ports seen",
                b.distinct_ports
            ),
            None,
        );
        rec.set_block(&b);
        rec.expires_ms = b.expires_ms;
        self.write_audit(&rec);
    }

    /// Answer a request that failed its checks in [`crate::session`]: counted and
    /// audited like any other decision.
    pub fn reject_request(
        &mut self,
        req: &BlockRequest,
        why: &Invalid,
        peer: Peer,
        now: WallUs,
    ) -> Decision {
        self.counters.requests += 1;
        let rec = Self::request_record(req, now, peer);
        self.flush_audit_budget(now);
        let line = format!("adminalert: rejected block request from sensor: {why}");
        self.conclude(
            rec,
            Decision::Rejected,
            why.to_string(),
            Some((Level::Warning, line)),
            req.source,
            now,
        )
    }

    /// Count, remember, log and audit a decision (the last two held to AUDIT_RATE for
    /// decisions that changed nothing).
    fn conclude(
        &mut self,
        mut rec: AuditRecord,
        decision: Decision,
        reason: String,
        line: Line,
        source: IpAddr,
        now: WallUs,
    ) -> Decision {
        self.count(decision);
        let probe = rec.scan.zip(rec.protocol);
        self.stats
            .count_request(rec.origin.as_deref(), probe, decision == Decision::Blocked);
        rec.decision = decision.into();
        rec.reason = reason;
        self.remember(now.ms(), Some(source), decision.into(), &rec.reason);
        if self.budget.admit(now, decision, source) {
            if let Some((level, line)) = line {
                self.log.log(level, &line);
            }
            self.write_audit(&rec);
        }
        decision
    }

    /// Judge, then act. The log line of a decision that changed nothing is returned, not
    /// logged, so that the caller can hold it to AUDIT_RATE with the audit record.
    /// `ctl` is the control block behind a [`judge::Request::Control`] (its origin name
    /// and duration), `None` for a probe.
    fn decide_checked(
        &mut self,
        req: judge::Request<'_>,
        now: WallMs,
        rec: &mut AuditRecord,
        ctl: Option<&ControlBlock>,
    ) -> (Decision, String, Line) {
        self.refresh_own_addresses();
        self.refresh_infra(false);
        self.rate.prune(now);
        self.fleet_rate.prune(now);
        let source = req.source();
        let facts = Facts {
            cfg: &self.cfg,
            never: &self.never,
            ignore: &self.ignore,
            already_blocked: self.blocks.contains_key(&self.block_target(source).addr)
                || self.blocks.contains_key(&source),
            fleet: judge::FleetUsage {
                active: self.blocks.fleet_len(),
                started: self.fleet_rate.usage(source).all,
                oldest: self.blocks.oldest_fleet(),
            },
            started: self.rate.usage(source),
            weakest_block: self.blocks.weakest(),
            active_blocks: self.blocks.len(),
            blocking_configured: self.blocking_configured(),
        };
        match judge::judge(req, &facts) {
            Verdict::Unchanged(u) => (u.decision(), u.to_string(), u.line(source)),
            Verdict::RunCommand { evidence } => self.run_command_only(req, evidence, now, rec),
            Verdict::Block(b) => self.block(req, b, now, rec, ctl),
            Verdict::Evict { victim, block } => {
                let why = format!(
                    "evicted at MAX_BLOCKS={} by a request with more evidence ({})",
                    self.cfg.max_blocks, source
                );
                self.end_block(victim, now, (RecordKind::Unblocked, &why), None, true, None);
                self.counters.unblocked += 1;
                self.rewrite_blocked_file();
                self.block(req, block, now, rec, ctl)
            }
        }
    }

    /// BLOCK_* = 2: KILL_RUN_CMD and nothing else; nothing is recorded as blocked.
    fn run_command_only(
        &mut self,
        req: judge::Request<'_>,
        evidence: Evidence,
        now: WallMs,
        rec: &mut AuditRecord,
    ) -> (Decision, String, Line) {
        let key = req.key();
        self.record_rate(now, req, evidence);
        let source = req.source();
        let single = judge::Target {
            addr: source,
            prefix6: None,
        };
        let a = self.exec.run(
            &self.cfg,
            &Action::Command(Command::KillRunCmd),
            &subject(&Probe::of(&req), single, None),
        );
        self.log_action(source, &a);
        let ok = a.ok();
        rec.actions.push(a);
        if ok {
            (Decision::CommandOnly, format!("{key}=2"), None)
        } else {
            (
                Decision::Failed,
                format!("{key}=2; KILL_RUN_CMD failed"),
                None,
            )
        }
    }

    /// Run every configured blocking action, with write-ahead persistence.
    fn block(
        &mut self,
        req: judge::Request<'_>,
        verdict: judge::Blocking,
        now: WallMs,
        rec: &mut AuditRecord,
        ctl: Option<&ControlBlock>,
    ) -> (Decision, String, Line) {
        let target = verdict.target;
        let addr = target.addr;
        let probe = Probe::of(&req);
        let duration = ctl.and_then(|c| c.duration).or(self.cfg.block_timeout);
        let subj = subject(&probe, target, duration);
        self.record_rate(now, req, verdict.evidence);
        let mut block = BlockRecord {
            addr,
            protocol: probe.protocol,
            port: probe.port,
            mode: probe.mode,
            scan: probe.scan,
            since_ms: now.0,
            expires_ms: duration.map(|t| now.after(t).0),
            nft: false,
            blackhole: false,
            hosts_deny_line: None,
            distinct_ports: probe.distinct_ports,
            // Written with a marker (sentry_enforcer::effects::hostsdeny).
            hosts_deny_legacy: false,
            prefix6: target.prefix6,
            origin: ctl.map(|c| c.origin.clone()),
            meta: ctl.map(|c| c.meta.clone()).unwrap_or_default(),
        };
        rec.expires_ms = block.expires_ms;
        rec.prefix = target.prefix6;
        // One view of the backends for the whole block (they are fixed at start-up).
        let backends = self.exec.backends();
        let mut actions = self.add_element_first(&mut block, &subj, backends);
        let (intent, intent_durable) = self.journal_intent(&block, &subj, backends);
        let rest = self.run_rest(&mut block, &intent, subj, backends, &mut actions);
        for a in &actions {
            self.log_action(addr, a);
        }
        let failed = actions.iter().any(|a| !a.ok());
        let took_effect = self.took_effect(&block, &actions);
        rec.actions = actions;
        let (n_failed, n_all) = (
            rec.actions.iter().filter(|a| !a.ok()).count(),
            rec.actions.len(),
        );
        let floor = self.exec.take_floor_refusal();
        if !took_effect {
            self.blocks.remove(&addr);
            if let Err(e) = self.store.del(addr, &self.blocks) {
                self.persist_error(&format!("state for {addr}"), &e);
            }
            // The root parent's floor knew first (a gateway it saw before this process
            // did): never blocked, and this process looks again.
            if let Some(r) = floor {
                self.refresh_own_addresses();
                self.refresh_infra(false);
                use policy::{InfraReason as I, NeverBlockReason as N};
                use sentry_privsep::Refusal as R;
                // The judge's words for the same reason, so a record reads the same
                // whichever process knew first.
                let why = match r {
                    R::Gateway => N::Infrastructure(I::DefaultGateway).as_str(),
                    R::Loopback => N::Loopback.as_str(),
                    R::OwnAddress => N::OwnAddress.as_str(),
                    R::LinkLocal => N::LinkLocal.as_str(),
                    R::Multicast => N::Multicast.as_str(),
                    R::Broadcast => N::Broadcast.as_str(),
                    R::Reserved => N::Reserved.as_str(),
                    other => other.as_str(),
                };
                if r == R::Ignored {
                    return (Decision::Ignored, why.to_string(), None);
                }
                return (Decision::NeverBlock, why.to_string(), None);
            }
            let why = format!("{n_failed} of {n_all} actions failed; host not blocked");
            return (Decision::Failed, why, None);
        }
        let mut notes: Vec<String> = self
            .persist_final(&block, &intent, intent_durable)
            .into_iter()
            .collect();
        let line = sentry_proto::logfmt::history_line(now.secs(), addr, probe.port, probe.protocol);
        self.append_text(self.cfg.history_file.clone(), &line);
        self.append_text(self.cfg.blocked_file.clone(), &line);
        // Blocked when any block took effect; each failed action stays in the record with
        // its error (and counts in `errors`).
        if failed {
            self.count_errors(ErrorKind::Action, n_failed as u64);
            notes.push(format!(
                "{n_failed} of {n_all} actions failed, the others took effect"
            ));
        }
        let what = blocked_reason(target, block.expires_ms, duration, rest, notes);
        (Decision::Blocked, what, None)
    }

    /// A block stands when any of its blocks took effect (or nothing that blocks is
    /// configured and nothing failed); each failed action stays in the record.
    fn took_effect(&self, block: &BlockRecord, actions: &[ActionRecord]) -> bool {
        let failed = actions.iter().any(|a| !a.ok());
        block.nft
            || block.blackhole
            || block.hosts_deny_line.is_some()
            || actions
                .iter()
                .any(|a| a.action == crate::audit::ActionKind::KillRoute && a.ok())
            || (!self.blocking_configured() && !failed)
    }

    /// Keep the block that took effect, and persist it; the note for its reason when that
    /// failed.
    fn persist_final(
        &mut self,
        block: &BlockRecord,
        intent: &BlockRecord,
        intent_durable: bool,
    ) -> Option<String> {
        self.blocks.insert(block.clone());
        // When everything took effect as intended, the write-ahead record already is the
        // final state: a second identical record (and fdatasync) adds nothing.
        let persisted = if intent_durable && block == intent {
            Ok(())
        } else {
            self.store.put(block, &self.blocks)
        };
        let e = persisted.err()?;
        self.persist_error(&format!("block of {}", block.addr), &e);
        Some(format!("state not persisted: {e}"))
    }

    /// Fast path: the nftables element goes in FIRST, before the write-ahead record and
    /// its fdatasync, because the scanner is answered until the element exists. This
    /// cannot leave anything behind that a restart would not know about: every start
    /// deletes and recreates the table and loads exactly the persisted blocks in the
    /// same transaction ([`restore::rebuild_table`]), so an element whose record never
    /// reached the disk is wiped by the restart; and the element carries BLOCK_TIMEOUT
    /// itself, so it cannot outlive its block while the enforcer is down. Routes,
    /// hosts.deny lines and commands are not reconciled that way and stay after the
    /// write-ahead record. KILL_RUN_CMD_FIRST="1" orders the command before the other
    /// actions it always ran with (routes, hosts.deny), not before the element.
    fn add_element_first(
        &mut self,
        block: &mut BlockRecord,
        subj: &Subject,
        backends: action::Backends,
    ) -> Vec<ActionRecord> {
        let mut actions = Vec::new();
        if backends.nft {
            let a = self
                .exec
                .run(&self.cfg, &Action::Nft(action::Op::Add), subj);
            if a.ok() {
                self.effect_at = Some(WallUs::now());
            }
            action::record_effect(block, &Action::Nft(action::Op::Add), a.ok());
            actions.push(a);
        }
        actions
    }

    /// Write-ahead: journal what is about to be applied, so that a SIGKILL in the middle
    /// of the actions leaves nothing behind that a restart would not know about (the
    /// restart re-applies it; undoing an action that never ran is harmless). Returns the
    /// journalled record and whether it reached the disk.
    fn journal_intent(
        &mut self,
        block: &BlockRecord,
        subj: &Subject,
        backends: action::Backends,
    ) -> (BlockRecord, bool) {
        // The element went in first when the nft backend is there (add_element_first).
        let nft_first = backends.nft;
        let mut intent = block.clone();
        intent.nft = if nft_first { block.nft } else { backends.nft };
        intent.blackhole = backends.route;
        intent.hosts_deny_line = action::hosts_deny_line(&self.cfg, subj);
        self.blocks.insert(intent.clone());
        let durable = match self.store.put(&intent, &self.blocks) {
            Ok(()) => true,
            Err(e) => {
                self.persist_error(&format!("block of {}", block.addr), &e);
                false
            }
        };
        (intent, durable)
    }

    /// The actions after the element. Once the element is in, the decision is made: the
    /// slow rest runs in the effects worker, in the same order (engine::effects). Without
    /// it (or with its queue full), here, as before, each recorded in `block`.
    fn run_rest(
        &mut self,
        block: &mut BlockRecord,
        intent: &BlockRecord,
        subj: Subject,
        backends: action::Backends,
        actions: &mut Vec<ActionRecord>,
    ) -> Rest {
        let mut plan = action::block_plan(&self.cfg, backends, &subj, backends.nft);
        let mut rest = Rest::default();
        if block.nft && !plan.is_empty() {
            let n = plan.len();
            let job = Box::new(effects::Job {
                addr: block.addr,
                subj,
                plan,
                block: intent.clone(),
                undo: false,
            });
            plan = match self.defer_effects(job) {
                Ok(()) => {
                    rest.deferred = n;
                    // The block stands as journalled; the worker records what its
                    // actions really did.
                    *block = intent.clone();
                    Vec::new()
                }
                Err(job) => {
                    rest.queue_full = self.effects.is_some();
                    job.plan
                }
            };
        }
        for act in plan {
            let a = self.exec.run(&self.cfg, &act, &subj);
            action::record_effect(block, &act, a.ok());
            let blocks_traffic = !matches!(act, Action::Command(Command::KillRunCmd));
            if a.ok() && blocks_traffic && self.effect_at.is_none() {
                self.effect_at = Some(WallUs::now());
            }
            actions.push(a);
        }
        rest
    }
}

/// Where a block's actions after the element ran.
#[derive(Debug, Clone, Copy, Default)]
struct Rest {
    /// Handed to the effects worker (audited later as `effects`).
    deferred: usize,
    /// The effects queue was full: they ran in the decision.
    queue_full: bool,
}

/// The reason of a `blocked` decision: what, for how long, and what to know about it.
fn blocked_reason(
    target: judge::Target,
    expires_ms: Option<u64>,
    duration: Option<std::time::Duration>,
    rest: Rest,
    mut notes: Vec<String>,
) -> String {
    let addr = target.addr;
    let how_long = match (expires_ms, duration) {
        (Some(_), Some(t)) => format!("for {}s", t.as_secs()),
        _ => "permanently".to_string(),
    };
    let mut what = match target.prefix6 {
        Some(len) => format!("blocked {addr}/{len} {how_long}"),
        None => format!("blocked {how_long}"),
    };
    if rest.deferred > 0 {
        notes.push(format!(
            "{} more actions run after the decision, audited as `effects`",
            rest.deferred
        ));
    }
    if rest.queue_full {
        notes.push("effects queue full: actions run in the decision".to_string());
    }
    if !notes.is_empty() {
        what = format!("{what} ({})", notes.join("; "));
    }
    what
}

impl Engine {
    /// A block or command started: it spends its origin's rate (root's own blocks spend
    /// none).
    fn record_rate(&mut self, now: WallMs, req: judge::Request<'_>, ev: Evidence) {
        let source = req.source();
        match req.origin() {
            judge::Origin::Sensor => self.rate.record(now, ev, source),
            judge::Origin::Fleet => self.fleet_rate.record(now, ev, source),
            judge::Origin::Manual => {}
        }
    }
}

/// What a block (its record, templates and history line) says about the probe behind it.
#[derive(Debug, Clone, Copy)]
struct Probe {
    protocol: sentry_proto::Protocol,
    port: u16,
    mode: sentry_proto::Mode,
    scan: sentry_proto::ScanKind,
    distinct_ports: u32,
}

impl Probe {
    /// A control block has no probe. It keeps what its records always said: TCP (BLOCK_TCP
    /// governs it), port 0 (0 in templates and the history file), mode stcp, scan syn, and
    /// 0 distinct ports (placeholders, not evidence: see BlockRecord::origin).
    fn of(req: &judge::Request<'_>) -> Self {
        match req {
            judge::Request::Probe(r) => Self {
                protocol: r.protocol,
                port: r.port,
                mode: r.mode,
                scan: r.scan,
                distinct_ports: r.distinct_ports,
            },
            judge::Request::Control { .. } => Self {
                protocol: sentry_proto::Protocol::Tcp,
                port: 0,
                mode: sentry_proto::Mode::Stcp,
                scan: sentry_proto::ScanKind::Syn,
                distinct_ports: 0,
            },
        }
    }
}

/// Why a control block request is refused before the judge sees it, if it is: a bad
/// origin name or metadata (refused whole, never trimmed: a LAPI that sends a bad field is
/// broken or hostile, and its other claims are not taken either), a reserved origin, or a
/// duration out of bounds.
fn control_invalid(ctl: &ControlBlock, peer: Peer) -> Option<String> {
    if let Err(e) = sentry_proto::validate_origin(&ctl.origin) {
        return Some(e.to_string());
    }
    if let Err(e) = ctl.meta.validate() {
        return Some(e.to_string());
    }
    if ctl.origin == sentry_proto::ORIGIN_SENSOR {
        return Some("origin name \"sensor\" is reserved for the local sensor".to_string());
    }
    if ctl.origin == judge::MANUAL_ORIGIN && peer.uid != 0 {
        return Some(format!(
            "origin name \"{}\" is root's own (its blocks are bounded by MAX_BLOCKS alone); pass --origin NAME, counted against FLEET_MAX_BLOCKS and FLEET_BLOCK_RATE",
            judge::MANUAL_ORIGIN
        ));
    }
    match ctl.duration {
        Some(d) if d < std::time::Duration::from_secs(1) => {
            Some(format!("duration {d:?} is shorter than 1 s"))
        }
        Some(d) if d.as_millis() > u128::from(sentry_proto::MAX_BLOCK_DURATION_MS) => Some(
            format!("duration {}s is longer than ten years", d.as_secs()),
        ),
        _ => None,
    }
}

/// The template variables of a block of `target` (an address, or an IPv6 network) that
/// lasts `timeout`.
fn subject(probe: &Probe, target: judge::Target, timeout: Option<std::time::Duration>) -> Subject {
    Subject {
        addr: target.addr,
        port: probe.port,
        protocol: probe.protocol,
        prefix6: target.prefix6,
        timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::check_request;
    use sentry_proto::{Mode, Protocol, ScanKind};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn now_ms() -> WallMs {
        WallMs::now()
    }

    impl Engine {
        /// The daemon's path for a request straight off the wire: checked in the
        /// session, then decided or rejected.
        fn decide_raw(&mut self, req: &BlockRequest, peer: Peer, now: WallUs) -> Decision {
            match check_request(req.clone(), &Mode::ALL, now.ms()) {
                Ok(c) => self.decide(&c, peer, now),
                Err((r, why)) => self.reject_request(&r, &why, peer, now),
            }
        }
    }

    struct T {
        dir: tempfile::TempDir,
        engine: Engine,
    }

    fn setup(extra: &[(&str, &str)]) -> T {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(dir.path().join("ignore"), "198.51.100.0/24\n").unwrap();
        let mut keys: std::collections::BTreeMap<&str, String> = [
            ("IGNORE_FILE", format!("{d}/ignore")),
            ("HOSTS_DENY_FILE", format!("{d}/hosts.deny")),
            ("AUDIT_LOG", format!("{d}/audit.jsonl")),
            ("HISTORY_FILE", format!("{d}/history")),
            ("BLOCKED_FILE", format!("{d}/blocked")),
            ("KILL_HOSTS_DENY", "ALL: $TARGET$".to_string()),
            ("BLOCK_TCP", "1".to_string()),
            ("BLOCK_UDP", "1".to_string()),
            // Unit tests run in the root namespace: never its nftables.
            ("FIREWALL", "none".to_string()),
        ]
        .into_iter()
        .collect();
        for (k, v) in extra {
            if v.is_empty() {
                keys.remove(k);
            } else {
                keys.insert(k, v.to_string());
            }
        }
        let text: String = keys.iter().map(|(k, v)| format!("{k}=\"{v}\"\n")).collect();
        let conf = dir.path().join("sentry.conf");
        std::fs::write(&conf, &text).unwrap();
        let engine = open(&dir, &conf);
        T { dir, engine }
    }

    fn open(dir: &tempfile::TempDir, conf: &Path) -> Engine {
        let cfg = Config::load(conf).unwrap_or_else(|e| panic!("{e}"));
        let parent = Some(crate::privsep::testing::parent(&cfg));
        Engine::new(
            cfg,
            Options {
                state_dir: dir.path().join("state"),
                refresh_own_addresses: false,
                infra: None,
                boot_id_path: DEFAULT_BOOT_ID_PATH.into(),
                boot_id: None,
                parent,
            },
            Arc::new(Logger::new(true, "test")),
        )
        .unwrap()
    }

    fn req(seq: u64, src: &str, protocol: Protocol, port: u16) -> BlockRequest {
        let now = now_ms().0;
        let (scan, mode) = match protocol {
            Protocol::Tcp => (ScanKind::Syn, Mode::Stcp),
            Protocol::Udp => (ScanKind::Udp, Mode::Sudp),
            Protocol::Sctp => (ScanKind::SctpInit, Mode::Atcp),
            Protocol::Ip => (ScanKind::IpProtocol, Mode::Atcp),
        };
        BlockRequest {
            seq,
            source: src.parse().unwrap(),
            protocol,
            port,
            scan,
            mode,
            distinct_ports: 2,
            first_seen_ms: now - 10,
            last_seen_ms: now,
            ip_options: false,
        }
    }

    const PEER: Peer = Peer { uid: 1, pid: 2 };
    const ROOT: Peer = Peer { uid: 0, pid: 2 };

    impl T {
        fn decide(&mut self, src: &str, p: Protocol) -> Decision {
            let r = req(1, src, p, 22);
            self.engine.decide_raw(&r, PEER, now_ms().us())
        }
        fn audit(&self) -> Vec<serde_json::Value> {
            std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
        fn last(&self) -> serde_json::Value {
            self.audit().pop().unwrap()
        }
        /// The deny file without sentry's marker lines.
        fn deny(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("hosts.deny"))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with(sentry_enforcer::effects::hostsdeny::MARKER))
                .map(|l| format!("{l}\n"))
                .collect()
        }
    }

    /// ACK-family, IP-protocol and SCTP INIT requests: audited log_only with BLOCK_TCP=1;
    /// blocked with BLOCK_OTHER_SCANS=1, in sentry's own history words for SCTP and IP.
    #[test]
    fn other_scans_log_only_unless_the_key_blocks_them() {
        let kinds = [
            (ScanKind::Ack, Protocol::Tcp, 80),
            (ScanKind::Maimon, Protocol::Tcp, 81),
            (ScanKind::SctpInit, Protocol::Sctp, 80),
            (ScanKind::IpProtocol, Protocol::Ip, 0),
        ];
        let mut t = setup(&[]);
        for (i, (scan, protocol, port)) in kinds.into_iter().enumerate() {
            let mut r = req(i as u64 + 1, "192.0.2.1", protocol, port);
            r.scan = scan;
            assert_eq!(
                t.engine.decide_raw(&r, PEER, now_ms().us()),
                Decision::LogOnly,
                "{scan}"
            );
            let a = t.last();
            assert_eq!(a["reason"], format!("BLOCK_OTHER_SCANS=0 ({scan} probe)"));
            assert_eq!(a["scan"], scan.as_str());
        }
        assert_eq!(t.engine.active_blocks(), 0);
        assert_eq!(t.deny(), "");
        let mut t = setup(&[("BLOCK_OTHER_SCANS", "1"), ("BLOCK_TCP", "0")]);
        for (i, (scan, protocol, port)) in kinds.into_iter().enumerate() {
            let mut r = req(i as u64 + 1, &format!("192.0.2.{}", i + 1), protocol, port);
            r.scan = scan;
            assert_eq!(
                t.engine.decide_raw(&r, PEER, now_ms().us()),
                Decision::Blocked,
                "{scan}"
            );
        }
        assert_eq!(t.engine.active_blocks(), 4);
        let history = std::fs::read_to_string(t.dir.path().join("history")).unwrap();
        assert!(history.contains("Port: 80 TCP Blocked"), "{history}");
        assert!(history.contains("Port: 80 SCTP Blocked"), "{history}");
        assert!(
            history.contains("Host: 192.0.2.4/192.0.2.4 Port: 0 IP Blocked"),
            "{history}"
        );
        // BLOCK_TCP=0 still holds for the kinds PortSentry reported.
        assert_eq!(t.decide("192.0.2.9", Protocol::Tcp), Decision::LogOnly);
        assert_eq!(t.last()["reason"], "BLOCK_TCP=0");
    }

    #[test]
    fn rejected_never_block_ignored_log_only() {
        let mut t = setup(&[("BLOCK_UDP", "0")]);
        let mut bad = req(1, "192.0.2.1", Protocol::Tcp, 0);
        assert_eq!(
            t.engine.decide_raw(&bad, PEER, now_ms().us()),
            Decision::Rejected
        );
        bad.port = 22;
        bad.scan = ScanKind::Udp;
        assert_eq!(
            t.engine.decide_raw(&bad, PEER, now_ms().us()),
            Decision::Rejected
        );
        assert_eq!(t.decide("127.0.0.1", Protocol::Tcp), Decision::NeverBlock);
        assert_eq!(t.last()["reason"], "loopback address");
        t.engine
            .set_own_addresses(vec!["203.0.113.5".parse().unwrap()]);
        assert_eq!(t.decide("203.0.113.5", Protocol::Tcp), Decision::NeverBlock);
        assert_eq!(t.last()["reason"], "one of this host's addresses");
        assert_eq!(t.decide("198.51.100.9", Protocol::Tcp), Decision::Ignored);
        assert_eq!(t.decide("192.0.2.1", Protocol::Udp), Decision::LogOnly);
        assert_eq!(t.last()["reason"], "BLOCK_UDP=0");
        assert_eq!(t.deny(), "");
        assert_eq!(t.engine.active_blocks(), 0);
        let c = t.engine.counters();
        assert_eq!(
            (c.rejected, c.never_block, c.ignored, c.log_only),
            (2, 2, 1, 1)
        );
        assert_eq!(c.requests, 6);
    }

    #[test]
    fn blocked_then_already_blocked_with_argv() {
        let mut t = setup(&[
            (
                "KILL_ROUTE",
                "/bin/true route add $TARGET$ port $PORT$ $MODE$",
            ),
            ("KILL_RUN_CMD", "/bin/true run $TARGET$"),
            ("KILL_RUN_CMD_FIRST", "0"),
        ]);
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Blocked);
        let rec = t.last();
        let acts = rec["actions"].as_array().unwrap();
        let argv: Vec<serde_json::Value> = acts.iter().map(|a| a["argv"].clone()).collect();
        assert_eq!(
            argv[0],
            serde_json::json!([
                "/bin/true",
                "route",
                "add",
                "192.0.2.1",
                "port",
                "22",
                "tcp"
            ])
        );
        assert_eq!(acts[1]["action"], "hosts_deny");
        assert_eq!(acts[1]["target"], "ALL: 192.0.2.1");
        assert_eq!(
            argv[2],
            serde_json::json!(["/bin/true", "run", "192.0.2.1"])
        );
        assert_eq!(t.deny(), "ALL: 192.0.2.1\n");
        assert_eq!(
            t.decide("192.0.2.1", Protocol::Udp),
            Decision::AlreadyBlocked
        );
        assert_eq!(t.last()["actions"].as_array().unwrap().len(), 0);
        assert_eq!(t.decide("2001:db8::1", Protocol::Tcp), Decision::Blocked);
        // IPv6: the source's BLOCK_PREFIX6 network (default 64).
        assert_eq!(t.deny(), "ALL: 192.0.2.1\nALL: [2001:db8::]/64\n");
        let hist = std::fs::read_to_string(t.dir.path().join("history")).unwrap();
        assert_eq!(hist.lines().count(), 2);
        assert!(hist.contains("Host: 2001:db8::/2001:db8:: Port: 22 TCP Blocked"));
    }

    #[test]
    fn run_cmd_first_and_command_only() {
        let mut t = setup(&[
            ("KILL_RUN_CMD", "/bin/true $TARGET$ $MODE$"),
            ("KILL_RUN_CMD_FIRST", "1"),
            ("BLOCK_UDP", "2"),
        ]);
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Blocked);
        let names: Vec<String> = t.last()["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["action"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["kill_run_cmd", "hosts_deny"]);
        assert_eq!(t.decide("192.0.2.2", Protocol::Udp), Decision::CommandOnly);
        let rec = t.last();
        assert_eq!(
            rec["actions"][0]["argv"],
            serde_json::json!(["/bin/true", "192.0.2.2", "udp"])
        );
        assert!(!t.deny().contains("192.0.2.2"));
        assert!(!t.engine.is_blocked("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn rate_limit_and_cap() {
        // Three /24s: one /24 may use only a quarter of BLOCK_RATE (at least one).
        let mut t = setup(&[("BLOCK_RATE", "2")]);
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Blocked);
        assert_eq!(t.decide("203.0.113.2", Protocol::Tcp), Decision::Blocked);
        assert_eq!(t.decide("100.64.0.3", Protocol::Tcp), Decision::RateLimited);
        assert_eq!(t.last()["reason"], "BLOCK_RATE=2 per minute reached");
        // a minute later the window has moved on
        let r = req(9, "100.64.0.3", Protocol::Tcp, 22);
        let later = WallMs(now_ms().0 + 61_000);
        assert_eq!(t.engine.decide_raw(&r, PEER, later.us()), Decision::Blocked);

        let mut t = setup(&[("MAX_BLOCKS", "1")]);
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Blocked);
        assert_eq!(t.decide("192.0.2.2", Protocol::Tcp), Decision::Capped);
        assert_eq!(t.last()["reason"], "MAX_BLOCKS=1 reached");
        // already blocked is checked before the cap
        assert_eq!(
            t.decide("192.0.2.1", Protocol::Tcp),
            Decision::AlreadyBlocked
        );
    }

    #[test]
    fn spoofed_single_probes_leave_room_for_a_real_scanner() {
        // BLOCK_RATE=8: single probes may start 4 blocks a minute, one /24 2.
        let mut t = setup(&[("BLOCK_RATE", "8"), ("MAX_BLOCKS", "4")]);
        let single = |seq: u64, src: &str| {
            let mut r = req(seq, src, Protocol::Tcp, 22);
            r.distinct_ports = 1;
            r
        };
        let forged = ["192.0.2.1", "203.0.113.1", "100.64.0.1", "100.65.0.1"];
        for (i, src) in forged.iter().enumerate() {
            let r = single(i as u64 + 1, src);
            assert_eq!(
                t.engine.decide_raw(&r, PEER, now_ms().us()),
                Decision::Blocked
            );
        }
        // The single-probe half of BLOCK_RATE is spent, and MAX_BLOCKS is full.
        let r = single(5, "100.66.0.1");
        assert_eq!(
            t.engine.decide_raw(&r, PEER, now_ms().us()),
            Decision::RateLimited
        );
        assert!(t.last()["reason"]
            .as_str()
            .unwrap()
            .starts_with("single-probe requests used their share"));
        // A many-port scanner is not starved: it gets the other half of BLOCK_RATE and
        // evicts the oldest single-probe block.
        let r = req(6, "100.67.0.9", Protocol::Tcp, 22);
        assert_eq!(
            t.engine.decide_raw(&r, PEER, now_ms().us()),
            Decision::Blocked
        );
        assert!(t.engine.is_blocked("100.67.0.9".parse().unwrap()));
        assert!(!t.engine.is_blocked("192.0.2.1".parse().unwrap()));
        assert_eq!(t.engine.active_blocks(), 4);
        let evicted = t
            .audit()
            .into_iter()
            .find(|r| r["decision"] == "unblocked")
            .unwrap();
        assert_eq!(evicted["source"], "192.0.2.1");
        assert!(evicted["reason"]
            .as_str()
            .unwrap()
            .contains("evicted at MAX_BLOCKS=4"));
        assert!(!t.deny().contains("192.0.2.1"));
        // Each further one evicts another single-probe block...
        for (seq, src) in [(7, "100.68.0.9"), (8, "100.69.0.9"), (9, "100.70.0.9")] {
            let r = req(seq, src, Protocol::Tcp, 22);
            assert_eq!(
                t.engine.decide_raw(&r, PEER, now_ms().us()),
                Decision::Blocked
            );
        }
        for src in forged {
            assert!(!t.engine.is_blocked(src.parse().unwrap()), "{src}");
        }
        assert_eq!(t.engine.active_blocks(), 4);
        // ... and BLOCK_RATE still bounds everything: 8 started this minute.
        let r = req(10, "100.71.0.9", Protocol::Tcp, 22);
        assert_eq!(
            t.engine.decide_raw(&r, PEER, now_ms().us()),
            Decision::RateLimited
        );
        assert_eq!(t.last()["reason"], "BLOCK_RATE=8 per minute reached");
    }

    fn ctl(origin: &str, secs: Option<u64>) -> ControlBlock {
        ControlBlock {
            meta: Default::default(),
            origin: origin.into(),
            duration: secs.map(std::time::Duration::from_secs),
        }
    }

    /// A fleet block carries its decision (scenario, ids, machine) into its record, the
    /// audit log and `sentryctl blocked`, and no made-up probe; metadata that fails its
    /// checks refuses the block (counted, logged, audited), it is never trimmed.
    #[test]
    fn fleet_blocks_keep_their_decision_and_bad_metadata_is_refused() {
        let mut t = setup(&[]);
        let a: IpAddr = "192.0.2.44".parse().unwrap();
        let meta = sentry_proto::BlockMeta {
            scenario: Some("sentry/portscan".into()),
            decision_id: Some(12),
            alert_id: Some(7),
            machine: Some("host-a".into()),
        };
        let c = ControlBlock {
            meta: meta.clone(),
            ..ctl("crowdsec", Some(3600))
        };
        let (d, reason, _) = t.engine.decide_control(a, &c, PEER, now_ms().us());
        assert_eq!(d, Decision::Blocked, "{reason}");
        let rec = t.last();
        assert_eq!(rec["scenario"], "sentry/portscan");
        assert_eq!(rec["decision_id"], 12);
        assert_eq!(rec["alert_id"], 7);
        assert_eq!(rec["machine"], "host-a");
        assert!(rec["mode"].is_null() && rec["scan"].is_null(), "{rec}");
        let listed = t.engine.blocked();
        let e = listed.iter().find(|e| e.addr == a).unwrap();
        assert_eq!(e.meta, meta);
        assert_eq!(
            (e.protocol, e.port, e.mode, e.scan),
            (None, None, None, None)
        );
        // Its end names the decision too.
        t.engine.unblock(a, PEER, now_ms());
        let rec = t.last();
        assert_eq!(rec["decision"], "unblocked");
        assert_eq!(rec["decision_id"], 12);

        let rejected = t.engine.counters().rejected;
        let bad = ControlBlock {
            meta: sentry_proto::BlockMeta {
                scenario: Some("x\nattackalert: forged".into()),
                ..meta
            },
            ..ctl("crowdsec", Some(3600))
        };
        let (d, reason, _) = t.engine.decide_control(a, &bad, PEER, now_ms().us());
        assert_eq!(d, Decision::Rejected);
        assert!(reason.contains("scenario"), "{reason}");
        assert!(!t.engine.is_blocked(a));
        assert_eq!(t.engine.counters().rejected, rejected + 1);
        let rec = t.last();
        assert_eq!(rec["decision"], "rejected");
        assert!(
            rec.get("scenario").is_none(),
            "unchecked text stays out: {rec}"
        );
    }

    #[test]
    fn control_blocks_go_through_the_judge_and_keep_their_origin() {
        let mut t = setup(&[("BLOCK_TIMEOUT", "60")]);
        let a: IpAddr = "192.0.2.40".parse().unwrap();
        let now = now_ms().us();
        let (d, reason, exp) =
            t.engine
                .decide_control(a, &ctl("crowdsec", Some(4 * 3600)), PEER, now);
        assert_eq!(d, Decision::Blocked, "{reason}");
        assert_eq!(reason, "blocked for 14400s");
        // Its own duration, not BLOCK_TIMEOUT.
        let exp = exp.unwrap();
        assert!(exp >= now.ms().0 + 14_399_000 && exp <= now.ms().0 + 14_401_000);
        let rec = t.last();
        assert_eq!(rec["origin"], "crowdsec");
        assert_eq!(rec["decision"], "blocked");
        assert!(rec["port"].is_null() && rec["scan"].is_null(), "{rec}");
        assert_eq!(rec["peer"]["uid"], 1);
        assert_eq!(t.engine.counters().control_requests, 1);
        // The same judge: the ignore list and the never-block set.
        let (d, _, _) = t.engine.decide_control(
            "198.51.100.9".parse().unwrap(),
            &ctl("crowdsec", None),
            PEER,
            now,
        );
        assert_eq!(d, Decision::Ignored);
        assert_eq!(t.last()["origin"], "crowdsec");
        let (d, _, _) = t.engine.decide_control(
            "127.0.0.1".parse().unwrap(),
            &ctl("crowdsec", None),
            PEER,
            now,
        );
        assert_eq!(d, Decision::NeverBlock);
        // Already blocked (root's own `sentryctl block`).
        let (d, _, _) = t.engine.decide_control(a, &ctl("manual", None), ROOT, now);
        assert_eq!(d, Decision::AlreadyBlocked);
        // "manual" is root's: a CONTROL_GROUP member must name its origin.
        let (d, reason, _) = t.engine.decide_control(a, &ctl("manual", None), PEER, now);
        assert_eq!(d, Decision::Rejected);
        assert!(reason.contains("root's own"), "{reason}");
        // A fleet block lasts at most FLEET_MAX_DURATION (default a day), and says so.
        let (d, reason, long) = t.engine.decide_control(
            "192.0.2.43".parse().unwrap(),
            &ctl("crowdsec", Some(10 * 365 * 86_400)),
            PEER,
            now,
        );
        assert_eq!(d, Decision::Blocked);
        assert_eq!(
            reason,
            "blocked for 86400s (asked for 315360000s; FLEET_MAX_DURATION=86400s)"
        );
        assert!(long.unwrap() <= now.ms().0 + 86_401_000);
        // Bad origins and durations are rejected, audited, not clamped.
        for (c, why) in [
            (ctl("sensor", None), "reserved"),
            (ctl("a b", None), "origin name"),
            (ctl("", None), "origin name"),
            (
                ControlBlock {
                    meta: Default::default(),
                    origin: "x".into(),
                    duration: Some(std::time::Duration::from_millis(500)),
                },
                "shorter than 1 s",
            ),
            (ctl("x", Some(11 * 365 * 86_400)), "longer than ten years"),
        ] {
            let (d, reason, _) =
                t.engine
                    .decide_control("192.0.2.41".parse().unwrap(), &c, PEER, now);
            assert_eq!(d, Decision::Rejected);
            assert!(reason.contains(why), "{reason}");
        }
        assert!(!t.engine.is_blocked("192.0.2.41".parse().unwrap()));
        // Persisted with its origin and its own expiry across a restart.
        let conf = t.dir.path().join("sentry.conf");
        let e2 = open(&t.dir, &conf);
        let entry = e2
            .blocked()
            .into_iter()
            .find(|b| b.addr == a)
            .expect("restored");
        assert_eq!(entry.origin, "crowdsec");
        assert_eq!(entry.expires_ms, Some(exp));
        drop(e2);
        // The fleet may lift only its own blocks.
        assert!(t.decide("192.0.2.42", Protocol::Tcp) == Decision::Blocked);
        let local: IpAddr = "192.0.2.42".parse().unwrap();
        assert_eq!(
            t.engine.unblock_origin(local, "crowdsec", PEER, now_ms()),
            Err("sensor".to_string())
        );
        assert!(t.engine.is_blocked(local));
        assert_eq!(
            t.engine.unblock_origin(a, "crowdsec", PEER, now_ms()),
            Ok(Some(vec![]))
        );
        assert_eq!(t.last()["origin"], "crowdsec");
        assert_eq!(
            t.engine.unblock_origin(a, "crowdsec", PEER, now_ms()),
            Ok(None)
        );
    }

    #[test]
    fn fleet_blocks_fill_only_their_share_and_give_way_to_a_real_scanner() {
        let mut t = setup(&[("MAX_BLOCKS", "2"), ("FLEET_MAX_BLOCKS", "2")]);
        let now = now_ms().us();
        for a in ["192.0.2.50", "192.0.2.51"] {
            let (d, _, _) =
                t.engine
                    .decide_control(a.parse().unwrap(), &ctl("crowdsec", None), PEER, now);
            assert_eq!(d, Decision::Blocked);
        }
        let (d, reason, _) = t.engine.decide_control(
            "192.0.2.52".parse().unwrap(),
            &ctl("crowdsec", None),
            PEER,
            now,
        );
        assert_eq!(d, Decision::Capped, "{reason}");
        assert_eq!(reason, "FLEET_MAX_BLOCKS=2 reached");
        // A single forged probe cannot evict a fleet block...
        let mut r = req(9, "192.0.2.53", Protocol::Tcp, 22);
        r.distinct_ports = 1;
        assert_eq!(
            t.engine.decide_raw(&r, PEER, now_ms().us()),
            Decision::Capped
        );
        // ... a local scanner with more evidence evicts the oldest one.
        r.seq = 10;
        r.distinct_ports = 2;
        assert_eq!(
            t.engine.decide_raw(&r, PEER, now_ms().us()),
            Decision::Blocked
        );
        assert!(!t.engine.is_blocked("192.0.2.50".parse().unwrap()));
        assert!(t.engine.is_blocked("192.0.2.53".parse().unwrap()));
        assert_eq!(t.engine.active_blocks(), 2);
        // Root's own block is bounded by MAX_BLOCKS alone, and evicts nothing.
        let (d, _, _) = t.engine.decide_control(
            "192.0.2.54".parse().unwrap(),
            &ctl("manual", None),
            ROOT,
            now_ms().us(),
        );
        assert_eq!(d, Decision::Capped);
    }

    #[test]
    fn a_blocked_scanner_keeps_adding_evidence() {
        let mut t = setup(&[]);
        let mut r = req(1, "192.0.2.70", Protocol::Tcp, 22);
        r.distinct_ports = 1;
        assert_eq!(
            t.engine.decide_raw(&r, PEER, now_ms().us()),
            Decision::Blocked
        );
        let a: IpAddr = "192.0.2.70".parse().unwrap();
        let ports = |t: &T| {
            t.engine
                .blocked()
                .into_iter()
                .find(|b| b.addr == a)
                .and_then(|b| b.distinct_ports)
        };
        assert_eq!(ports(&t), Some(1));
        // Its later probes (copied by the kernel while it is blocked) come back with more.
        r.seq = 2;
        r.distinct_ports = 300;
        assert_eq!(
            t.engine.decide_raw(&r, PEER, now_ms().us()),
            Decision::AlreadyBlocked
        );
        assert_eq!(ports(&t), Some(300));
        let ev = t.last();
        assert_eq!(ev["decision"], "evidence", "{ev}");
        assert_eq!(ev["distinct_ports"], 300);
        assert_eq!(ev["origin"], "sensor");
        // Fewer ports change nothing.
        r.seq = 3;
        r.distinct_ports = 7;
        t.engine.decide_raw(&r, PEER, now_ms().us());
        assert_eq!(ports(&t), Some(300));
        assert_eq!(t.last()["decision"], "already_blocked");
        // Kept across a restart.
        let conf = t.dir.path().join("sentry.conf");
        let e2 = open(&t.dir, &conf);
        let b = e2.blocked().into_iter().find(|b| b.addr == a).unwrap();
        assert_eq!(b.distinct_ports, Some(300));
    }

    #[test]
    fn every_audit_record_reaches_the_decision_stream() {
        let mut t = setup(&[]);
        let sub = t.engine.watch.subscribe(None).unwrap();
        assert_eq!(t.decide("192.0.2.60", Protocol::Tcp), Decision::Blocked);
        assert_eq!(t.decide("198.51.100.1", Protocol::Tcp), Decision::Ignored);
        let got: Vec<sentry_proto::WatchRecord> = sub.rx.try_iter().collect();
        assert_eq!(got.len(), t.audit().len());
        assert_eq!(got[0].kind, "blocked");
        assert_eq!(got[0].origin.as_deref(), Some("sensor"));
        assert_eq!(got[0].source, Some("192.0.2.60".parse().unwrap()));
        assert_eq!(got[0].scan, Some(sentry_proto::ScanKind::Syn));
        assert!(got[0].evidence.is_some_and(|e| !e.handshake));
        assert_eq!(got[1].kind, "ignored");
        assert_eq!(got[0].seq + 1, got[1].seq);
    }

    #[test]
    fn failed_action_is_an_error() {
        let mut t = setup(&[
            ("KILL_ROUTE", "/bin/false $TARGET$"),
            ("KILL_HOSTS_DENY", ""),
        ]);
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Failed);
        let rec = t.last();
        assert_eq!(rec["decision"], "failed");
        assert_eq!(rec["actions"][0]["status"], "error");
        assert_eq!(rec["actions"][0]["exit_code"], 1);
        assert!(!t.engine.is_blocked("192.0.2.1".parse().unwrap()));
        assert_eq!(t.engine.counters().failed, 1);
    }

    #[test]
    fn partial_failure_keeps_what_took_effect() {
        let mut t = setup(&[("KILL_ROUTE", "/bin/false $TARGET$")]);
        // Blocked: the hosts.deny line took effect; the failed command is in the record
        // and counts as an error.
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Blocked);
        let rec = t.last();
        assert_eq!(rec["actions"][0]["status"], "error");
        assert_eq!(t.engine.counters().errors, 1);
        assert_eq!(t.engine.counters().failed, 0);
        assert!(t.engine.is_blocked("192.0.2.1".parse().unwrap()));
        assert_eq!(t.deny(), "ALL: 192.0.2.1\n");
    }

    /// Effects off the decision path (issue #21): with the element in, the decision
    /// answers at once and audits only the element; the worker's run comes later as an
    /// `effects` record; an unblock while they wait takes the deny line back behind them;
    /// a failed effect leaves the decision `blocked` and counts as an error. Needs the
    /// kernel's nftables: in a private network namespace, as root.
    #[test]
    fn slow_effects_run_after_the_decision_in_order() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED (needs root): slow_effects_run_after_the_decision_in_order");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut t = setup(&[
                ("FIREWALL", "nftables"),
                ("NFT_TABLE", "sentryunit"),
                ("KILL_RUN_CMD", "/bin/false $TARGET$"),
            ]);
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            t.engine.enable_effects(tx);
            let cfg = t.engine.config().clone();
            let (link, _) = crate::privsep::testing::parent(&cfg);
            let mut worker = t.engine.executor().with_link(link);
            let mut work = |t: &mut T| {
                let job = t.engine.take_effects().expect("a job");
                let actions = effects::run(&mut worker, &cfg, &job);
                t.engine.finish_effects(job, actions, now_ms());
            };
            assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Blocked);
            let rec = t.last();
            assert_eq!(rec["decision"], "blocked");
            assert_eq!(rec["actions"].as_array().unwrap().len(), 1, "{rec}");
            assert_eq!(rec["actions"][0]["action"], "nftables", "{rec}");
            assert!(
                rec["reason"].as_str().unwrap().contains("2 more actions"),
                "{rec}"
            );
            assert!(rx.try_recv().is_ok(), "the worker was woken");
            assert_eq!(t.deny(), "", "nothing slow ran in the decision");
            assert_eq!(t.engine.effects_waiting(), 1);
            work(&mut t);
            let rec = t.last();
            assert_eq!(rec["decision"], "effects", "{rec}");
            assert_eq!(rec["source"], "192.0.2.1");
            assert_eq!(rec["actions"][0]["action"], "hosts_deny", "{rec}");
            assert_eq!(rec["actions"][1]["status"], "error", "{rec}");
            assert!(rec["reason"].as_str().unwrap().contains("1 of 2"), "{rec}");
            assert_eq!(t.deny(), "ALL: 192.0.2.1\n");
            assert_eq!(t.engine.counters().errors, 1);
            assert_eq!(t.engine.counters().failed, 0);
            // Blocked again while its effects wait, then unblocked: the line is added and
            // then taken back, in that order, by the worker.
            assert!(t
                .engine
                .unblock("192.0.2.1".parse().unwrap(), ROOT, now_ms())
                .is_some());
            assert_eq!(t.deny(), "");
            assert_eq!(t.decide("192.0.2.2", Protocol::Tcp), Decision::Blocked);
            let lifted = t
                .engine
                .unblock("192.0.2.2".parse().unwrap(), ROOT, now_ms());
            assert!(lifted.is_some());
            assert!(t.last()["reason"]
                .as_str()
                .unwrap()
                .contains("after its pending effects"));
            assert_eq!(t.engine.effects_waiting(), 2);
            work(&mut t);
            assert_eq!(t.deny(), "ALL: 192.0.2.2\n");
            assert!(t.last()["reason"]
                .as_str()
                .unwrap()
                .contains("lifted meanwhile"));
            work(&mut t);
            assert_eq!(t.deny(), "", "the undo ran behind the add");
            assert!(t.last()["reason"].as_str().unwrap().contains("undo"));
            assert!(t.engine.take_effects().is_none());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn expiry_unblock_and_restore() {
        let mut t = setup(&[("BLOCK_TIMEOUT", "60")]);
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Blocked);
        assert_eq!(t.decide("192.0.2.2", Protocol::Tcp), Decision::Blocked);
        assert_eq!(t.decide("192.0.2.3", Protocol::Tcp), Decision::Blocked);
        let a3: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(t.engine.unblock(a3, PEER, now_ms()), Some(vec![]));
        assert_eq!(t.engine.unblock(a3, PEER, now_ms()), None);
        assert_eq!(t.deny(), "ALL: 192.0.2.1\nALL: 192.0.2.2\n");
        assert_eq!(t.engine.expire(now_ms()), 0);
        // restart: both restored
        let conf = t.dir.path().join("sentry.conf");
        let e2 = open(&t.dir, &conf);
        assert_eq!(e2.active_blocks(), 2);
        assert_eq!(e2.counters().restored, 2);
        drop(e2);
        // expiry
        assert_eq!(t.engine.expire(WallMs(now_ms().0 + 61_000)), 2);
        assert_eq!(t.deny(), "");
        assert_eq!(t.last()["decision"], "expired");
        let blocked = std::fs::read_to_string(t.dir.path().join("blocked")).unwrap();
        assert_eq!(blocked, "");
    }

    #[test]
    fn an_address_that_becomes_our_own_is_unblocked_at_once() {
        let mut t = setup(&[]);
        assert_eq!(t.decide("203.0.113.5", Protocol::Tcp), Decision::Blocked);
        assert_eq!(t.decide("203.0.113.6", Protocol::Tcp), Decision::Blocked);
        t.engine
            .set_own_addresses(vec!["203.0.113.5".parse().unwrap()]);
        assert!(!t.engine.is_blocked("203.0.113.5".parse().unwrap()));
        assert!(t.engine.is_blocked("203.0.113.6".parse().unwrap()));
        assert_eq!(t.deny(), "ALL: 203.0.113.6\n");
        let last = t.last();
        assert_eq!(last["decision"], "unblocked");
        assert_eq!(last["source"], "203.0.113.5");
        assert_eq!(last["reason"], "never-block: one of this host's addresses");
        let blocked = std::fs::read_to_string(t.dir.path().join("blocked")).unwrap();
        assert!(!blocked.contains("203.0.113.5/"), "{blocked}");
        assert_eq!(t.engine.counters().unblocked, 1);
    }

    #[test]
    fn ipv6_scanners_are_blocked_by_their_network_unless_it_holds_ours() {
        let mut t = setup(&[("KILL_ROUTE", "/bin/true $TARGET$")]);
        assert_eq!(
            t.decide("2001:db8:1:2::5", Protocol::Tcp),
            Decision::Blocked
        );
        assert_eq!(t.last()["reason"], "blocked 2001:db8:1:2::/64 permanently");
        assert_eq!(
            t.last()["actions"][0]["argv"],
            serde_json::json!(["/bin/true", "2001:db8:1:2::/64"])
        );
        // A new address from the same /64 is already blocked.
        assert_eq!(
            t.decide("2001:db8:1:2::77", Protocol::Tcp),
            Decision::AlreadyBlocked
        );
        // unblock with any address inside the network lifts it.
        let inner: IpAddr = "2001:db8:1:2::abcd".parse().unwrap();
        assert_eq!(t.engine.unblock(inner, PEER, now_ms()), Some(vec![]));
        assert_eq!(t.engine.active_blocks(), 0);
        // A /64 that holds one of this host's addresses: the address alone.
        t.engine
            .set_own_addresses(vec!["2001:db8:9:9::1".parse().unwrap()]);
        assert_eq!(
            t.decide("2001:db8:9:9::66", Protocol::Tcp),
            Decision::Blocked
        );
        assert_eq!(t.last()["reason"], "blocked permanently");
        assert!(t.engine.is_blocked("2001:db8:9:9::66".parse().unwrap()));
        // BLOCK_PREFIX6=128: addresses alone.
        let mut t = setup(&[("BLOCK_PREFIX6", "128")]);
        assert_eq!(
            t.decide("2001:db8:1:2::5", Protocol::Tcp),
            Decision::Blocked
        );
        assert_eq!(
            t.decide("2001:db8:1:2::6", Protocol::Tcp),
            Decision::Blocked
        );
        assert_eq!(t.engine.active_blocks(), 2);
    }

    #[test]
    fn restore_rechecks_ignore_list() {
        let mut t = setup(&[]);
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Blocked);
        std::fs::write(t.dir.path().join("ignore"), "192.0.2.0/24\n").unwrap();
        let conf = t.dir.path().join("sentry.conf");
        let e2 = open(&t.dir, &conf);
        assert_eq!(e2.active_blocks(), 0);
        assert_eq!(t.deny(), "");
        assert_eq!(t.last()["decision"], "unblocked");
        assert_eq!(t.last()["reason"], "now on the ignore list");
    }

    /// The start of the next wall-clock second, in µs (requests made now validate there).
    fn next_second_us() -> u64 {
        (now_ms().0 / 1000 + 1) * 1_000_000
    }

    fn src(i: u32) -> String {
        std::net::Ipv4Addr::from(0xCB00_7100 + (i % 250) + ((i / 250) << 8)).to_string()
    }

    #[test]
    fn audit_rate_bounds_a_burst_of_rate_limited_requests() {
        let mut t = setup(&[("BLOCK_RATE", "1")]);
        let s0 = next_second_us();
        // The one block BLOCK_RATE allows this minute, one second before the burst.
        let r = req(1, "192.0.2.1", Protocol::Tcp, 22);
        assert_eq!(
            t.engine.decide_raw(&r, PEER, WallUs(s0 - 1_000_000)),
            Decision::Blocked
        );
        assert_eq!(t.audit().len(), 1);
        // 10,000 spoofed sources within one second (one every 50 µs).
        for i in 0..10_000u32 {
            let r = req(u64::from(i) + 2, &src(i), Protocol::Tcp, 22);
            let at = s0 + u64::from(i) * 50;
            assert_eq!(
                t.engine.decide_raw(&r, PEER, WallUs(at)),
                Decision::RateLimited
            );
        }
        // Still inside the second: exactly AUDIT_RATE (default 100) records of it.
        let rate = t.engine.config().audit_rate as usize;
        assert_eq!(rate, 100);
        assert_eq!(t.audit().len(), 1 + rate);
        // The daemon's tick in the next second writes the summary.
        t.engine.flush_audit_budget(WallUs(s0 + 1_000_000 + 7));
        let audit = t.audit();
        assert_eq!(
            audit.len(),
            1 + rate + 1,
            "AUDIT_RATE + 1 lines for the burst"
        );
        let burst = &audit[1..];
        assert!(burst[..rate]
            .iter()
            .all(|r| r["decision"] == "rate_limited" && r.get("summary").is_none()));
        assert_eq!(burst[rate - 1]["source"], src(99));
        let sum = &burst[rate];
        assert_eq!(sum["decision"], "rate_limited");
        assert_eq!(sum["summary"], true);
        assert_eq!(sum["suppressed"], 10_000 - 100);
        assert_eq!(sum["first_us"], s0 + 100 * 50);
        assert_eq!(sum["last_us"], s0 + 9_999 * 50);
        assert_eq!(sum["time_us"], s0 + 1_000_000 + 7);
        let want: Vec<String> = (100..108).map(src).collect();
        assert_eq!(sum["sample"], serde_json::json!(want));
        assert_eq!(sum["reason"], "AUDIT_RATE=100 per second reached");
        // A second tick has nothing left to write.
        t.engine.flush_audit_budget(WallUs(s0 + 2_000_000));
        assert_eq!(t.audit().len(), 1 + rate + 1);
        // Every decision is still counted.
        let c = t.engine.counters();
        assert_eq!((c.requests, c.blocked, c.rate_limited), (10_001, 1, 10_000));
    }

    #[test]
    fn audit_summary_is_written_before_the_next_seconds_records() {
        let mut t = setup(&[("MAX_BLOCKS", "1"), ("AUDIT_RATE", "2")]);
        let s0 = next_second_us();
        let r = req(1, "192.0.2.1", Protocol::Tcp, 22);
        assert_eq!(t.engine.decide_raw(&r, PEER, WallUs(s0)), Decision::Blocked);
        for i in 0..5u32 {
            let r = req(2, &src(i), Protocol::Tcp, 22);
            assert_eq!(
                t.engine
                    .decide_raw(&r, PEER, WallUs(s0 + 10 + u64::from(i))),
                Decision::Capped
            );
        }
        // 1 blocked + 2 capped; the next request, one second later, first writes the
        // summary of the 3 suppressed ones, then its own record.
        assert_eq!(t.audit().len(), 3);
        let r = req(3, "198.51.100.9", Protocol::Tcp, 22);
        assert_eq!(
            t.engine.decide_raw(&r, PEER, WallUs(s0 + 1_000_000)),
            Decision::Ignored
        );
        let a = t.audit();
        let kinds: Vec<&str> = a.iter().map(|r| r["decision"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["blocked", "capped", "capped", "capped", "ignored"]);
        assert_eq!(a[3]["summary"], true);
        assert_eq!(a[3]["suppressed"], 3);
        assert_eq!(a[3]["reason"], "AUDIT_RATE=2 per second reached");
        assert_eq!(a[3]["sample"], serde_json::json!([src(2), src(3), src(4)]));
        assert!(a[4].get("summary").is_none());
        assert_eq!(t.engine.counters().capped, 5);
    }

    #[test]
    fn stopping_writes_the_summary_of_the_current_second() {
        let mut t = setup(&[("BLOCK_TCP", "0"), ("AUDIT_RATE", "3")]);
        let s0 = next_second_us();
        for i in 0..10u32 {
            let r = req(u64::from(i), &src(i), Protocol::Tcp, 22);
            assert_eq!(
                t.engine.decide_raw(&r, PEER, WallUs(s0 + u64::from(i))),
                Decision::LogOnly
            );
        }
        t.engine.flush_audit_budget(WallUs(s0 + 20));
        assert_eq!(t.audit().len(), 3, "same second: nothing to flush yet");
        t.engine.finish_audit_budget(WallUs(s0 + 30));
        let a = t.audit();
        assert_eq!(a.len(), 4);
        assert_eq!(a[3]["decision"], "log_only");
        assert_eq!(a[3]["suppressed"], 7);
        assert_eq!(a[3]["time_us"], s0 + 30);
        // Nothing is summarised twice.
        t.engine.flush_audit_budget(WallUs(s0 + 1_000_000));
        assert_eq!(t.audit().len(), 4);
    }

    #[test]
    fn blocked_records_are_never_suppressed() {
        let mut t = setup(&[("AUDIT_RATE", "1")]);
        let s0 = next_second_us();
        // Use up the budget of this second with no-change decisions ...
        for i in 0..10u64 {
            let r = req(i, "127.0.0.1", Protocol::Tcp, 22);
            assert_eq!(
                t.engine.decide_raw(&r, PEER, WallUs(s0 + i)),
                Decision::NeverBlock
            );
        }
        assert_eq!(t.audit().len(), 1);
        // ... then every block of the same second is still written in full.
        for i in 0..40u32 {
            let r = req(100 + u64::from(i), &src(i), Protocol::Tcp, 22);
            assert_eq!(
                t.engine
                    .decide_raw(&r, PEER, WallUs(s0 + 100 + u64::from(i))),
                Decision::Blocked
            );
        }
        // And a failed one (the deny file is made unwritable: a directory in its place).
        let deny = t.dir.path().join("hosts.deny");
        std::fs::remove_file(&deny).unwrap();
        std::fs::create_dir(&deny).unwrap();
        let r = req(200, &src(40), Protocol::Tcp, 22);
        assert_eq!(
            t.engine.decide_raw(&r, PEER, WallUs(s0 + 500)),
            Decision::Failed
        );
        let a = t.audit();
        assert_eq!(a.len(), 1 + 40 + 1);
        assert_eq!(a.iter().filter(|r| r["decision"] == "blocked").count(), 40);
        assert!(a[1..41]
            .iter()
            .all(|r| r["actions"].as_array().is_some_and(|v| v.len() == 1)));
        assert_eq!(a[41]["decision"], "failed");
        t.engine.flush_audit_budget(WallUs(s0 + 1_000_000));
        let a = t.audit();
        assert_eq!(a.len(), 43);
        assert_eq!(a[42]["decision"], "never_block");
        assert_eq!(a[42]["suppressed"], 9);
        assert_eq!(a[42]["sample"], serde_json::json!(["127.0.0.1"]));
    }
}
