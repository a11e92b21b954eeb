//! The decision engine: every block request goes through [`Engine::decide`], which
//! re-checks it against the enforcer's own rules, runs the configured actions, persists the
//! result and writes the audit record — all before the caller sends the reply.
//!
//! Order of checks (first match wins): field validation, never-block set, ignore list,
//! BLOCK_TCP / BLOCK_UDP mode, already blocked, BLOCK_RATE, MAX_BLOCKS.
//!
//! Records and log lines of decisions that changed nothing are bounded per second by
//! AUDIT_RATE ([`crate::budget`]); the rest are counted and summarised once per kind.

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use policy::{BlockMode, Config, Firewall, IgnoreList, NeverBlock, Vars};
use sentry_proto::{
    BlockEntry, BlockRequest, Counters, Decision, Protocol, RecentDecision, SensorInfo, Status,
    MAX_RECENT_DECISIONS,
};

use crate::audit::{ActionRecord, AuditLog, AuditRecord, Level, Logger, Peer};
use crate::budget::AuditBudget;
use crate::exec;
use crate::hostsdeny;
use crate::netlink::{AddrWatch, NlSocket, SetElem};
use crate::store::{write_atomic, BlockRecord, Store};

/// Names of the two sets in the nftables table.
pub const SET_V4: &str = "v4";
pub const SET_V6: &str = "v6";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch (the audit record's `time_us`).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Decision names that are not a [`Decision`] (they are not replies to a request).
pub mod extra {
    pub const UNBLOCKED: &str = "unblocked";
    pub const EXPIRED: &str = "expired";
    pub const RESTORED: &str = "restored";
    pub const REJECTED: &str = "rejected";
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
        }
    }
    (own, bcast)
}

fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Build the `nft -f -` script that (re)creates the table: two sets with per-element
/// timeouts and one drop rule each, in a prerouting hook at priority -300 (before
/// connection tracking, so not even an established flow from a blocked host passes).
pub fn nft_setup_script(table: &str) -> String {
    format!(
        "table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tset {SET_V4} {{ type ipv4_addr; flags timeout; }}\n\
         \tset {SET_V6} {{ type ipv6_addr; flags timeout; }}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority -300; policy accept;\n\
         \t\tip saddr @{SET_V4} counter drop\n\
         \t\tip6 saddr @{SET_V6} counter drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Capabilities the configured actions need: CAP_NET_ADMIN for the nftables set, blackhole
/// routes and firewall commands; CAP_NET_RAW when KILL_ROUTE / KILL_RUN_CMD may run legacy
/// iptables(8), which opens a raw socket.
pub fn required_caps(cfg: &Config) -> (bool, bool) {
    let commands = cfg.kill_route.is_some() || cfg.kill_run_cmd.is_some();
    let net_admin = cfg.firewall == Firewall::Nftables || cfg.blackhole_route || commands;
    (net_admin, commands)
}

/// `add element` statements for `elems` (appended to [`nft_setup_script`]).
pub fn nft_elements_script(table: &str, elems: &[SetElem]) -> String {
    let mut out = String::new();
    for (set, v4) in [(SET_V4, true), (SET_V6, false)] {
        let mine: Vec<&SetElem> = elems.iter().filter(|e| e.addr.is_ipv4() == v4).collect();
        for chunk in mine.chunks(1000) {
            out.push_str(&format!("add element inet {table} {set} {{ "));
            for (i, e) in chunk.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&e.addr.to_string());
                if let Some(t) = e.timeout {
                    out.push_str(&format!(" timeout {}ms", t.as_millis().max(1)));
                }
            }
            out.push_str(" }\n");
        }
    }
    out
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
    /// issue #11: where the resolver and lease files are (`/` in the daemon); `None` turns
    /// infrastructure discovery off (unit tests, embedders). NEVER_BLOCK_INFRASTRUCTURE=0
    /// turns it off too.
    pub infra: Option<crate::infra::InfraPaths>,
}

/// Everything the enforcer decides with.
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    ignore: IgnoreList,
    never: NeverBlock,
    opts: Options,
    blocks: HashMap<IpAddr, BlockRecord>,
    store: Store,
    audit: AuditLog,
    log: Arc<Logger>,
    nft: Option<NlSocket>,
    route: Option<NlSocket>,
    /// Address-change notifications; `None` when `refresh_own_addresses` is off, or when
    /// the socket could not be opened (then the addresses are re-read before every
    /// decision, as a fallback that is slow but never stale).
    addr_watch: Option<AddrWatch>,
    /// issue #11: default gateways, nameservers, ptp peers, DHCP servers (never blocked).
    infra: Option<crate::infra::Infra>,
    rate: VecDeque<u64>,
    /// AUDIT_RATE: records and log lines of no-change decisions per second.
    budget: AuditBudget,
    counters: Counters,
    recent: VecDeque<RecentDecision>,
    started: Instant,
    /// The connected sensor (maintained by the daemon).
    pub sensor: Option<SensorInfo>,
}

/// A log line held back until the AUDIT_RATE budget has admitted its decision.
type Line = Option<(Level, String)>;

/// Result of applying actions.
struct Applied {
    actions: Vec<ActionRecord>,
    failed: bool,
}

impl Engine {
    /// Open the state, the audit log and the backends, then restore persisted blocks.
    pub fn new(cfg: Config, opts: Options, log: Arc<Logger>) -> Result<Self, String> {
        let ignore = cfg.load_ignore().map_err(|e| e.to_string())?;
        let (store, blocks, warnings) = Store::open(&opts.state_dir)
            .map_err(|e| format!("state directory {}: {e}", opts.state_dir.display()))?;
        for w in warnings {
            log.warn(&format!("adminalert: state: {w}"));
        }
        let audit = AuditLog::open(&cfg.audit_log).map_err(|e| e.to_string())?;
        // Subscribe before the first read, so that no change can fall in between.
        let addr_watch = if opts.refresh_own_addresses {
            match AddrWatch::open() {
                Ok(w) => Some(w),
                Err(e) => {
                    log.warn(&format!(
                        "adminalert: cannot watch address changes ({e}); this host's addresses are re-read before every decision"
                    ));
                    None
                }
            }
        } else {
            None
        };
        let (own, bcast) = if opts.refresh_own_addresses {
            own_addresses()
        } else {
            (Vec::new(), Vec::new())
        };
        let mut never = NeverBlock::new(own);
        never.set_broadcasts(bcast);
        // issue #11: infrastructure joins the never-block set before the restore below.
        let infra = crate::infra::open_for(&cfg, opts.infra.as_ref(), &mut never, &log);
        let mut nft = None;
        if cfg.firewall == Firewall::Nftables {
            // The table is rebuilt and the surviving blocks are loaded in the same nft
            // transaction, so a restart never opens a window in which they pass.
            let now = now_ms();
            let preload: Vec<SetElem> = blocks
                .values()
                .filter(|b| b.nft && b.expires_ms.is_none_or(|e| e > now))
                .filter(|b| never.check(b.addr).is_none() && !ignore.contains(b.addr))
                .map(|b| SetElem {
                    addr: b.addr,
                    timeout: b
                        .expires_ms
                        .map(|e| Duration::from_millis(e.saturating_sub(now).max(1))),
                })
                .collect();
            let mut script = nft_setup_script(&cfg.nft_table);
            script.push_str(&nft_elements_script(&cfg.nft_table, &preload));
            let r = exec::run(
                &["nft".to_string(), "-f".to_string(), "-".to_string()],
                Some(script.as_bytes()),
                cfg.kill_timeout.max(Duration::from_secs(30)),
            );
            if !r.outcome.success() {
                return Err(format!(
                    "cannot create nftables table inet {}: nft {}: {}",
                    cfg.nft_table,
                    r.outcome.describe(),
                    r.stderr
                ));
            }
            nft = Some(NlSocket::netfilter().map_err(|e| format!("netfilter netlink: {e}"))?);
        }
        let route = if cfg.blackhole_route {
            Some(NlSocket::route().map_err(|e| format!("route netlink: {e}"))?)
        } else {
            None
        };
        let budget = AuditBudget::new(cfg.audit_rate);
        let mut engine = Self {
            cfg,
            ignore,
            never,
            opts,
            blocks: HashMap::new(),
            store,
            audit,
            log,
            nft,
            route,
            addr_watch,
            infra,
            rate: VecDeque::new(),
            budget,
            counters: Counters::default(),
            recent: VecDeque::new(),
            started: Instant::now(),
            sensor: None,
        };
        engine.restore(blocks, now_ms());
        Ok(engine)
    }

    /// Replace this host's addresses in the never-block set (they are read again from the
    /// kernel on its next address change when `refresh_own_addresses` is on).
    pub fn set_own_addresses(&mut self, own: Vec<IpAddr>) {
        self.never.set_own(own);
    }

    pub fn config(&self) -> &Config {
        &self.cfg
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

    fn remember(&mut self, time_ms: u64, source: Option<IpAddr>, decision: &str, reason: &str) {
        if self.recent.len() >= MAX_RECENT_DECISIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentDecision {
            time_ms,
            source,
            decision: decision.to_string(),
            reason: reason.to_string(),
        });
    }

    fn write_audit(&mut self, rec: &AuditRecord) {
        if let Err(e) = self.audit.write(rec) {
            self.counters.errors += 1;
            self.log.err(&format!(
                "adminalert: ERROR: cannot write audit log {}: {e}",
                self.audit.path().display()
            ));
        }
    }

    /// Write the AUDIT_RATE summaries of a second that is over (one record and one log
    /// line per decision kind that had records suppressed). Called before every decision
    /// and by the daemon's one-second tick, so that summaries are not held back when the
    /// requests stop.
    pub fn flush_audit_budget(&mut self, now_us: u64) {
        let summaries = self.budget.roll(now_us);
        self.write_summaries(now_us, summaries);
    }

    /// On shutdown: write the summaries of the current second too, so no count is lost.
    pub fn finish_audit_budget(&mut self, now_us: u64) {
        self.flush_audit_budget(now_us);
        let summaries = self.budget.finish();
        self.write_summaries(now_us, summaries);
    }

    fn write_summaries(&mut self, now_us: u64, summaries: Vec<crate::budget::Summary>) {
        let rate = self.budget.rate();
        for s in summaries {
            self.write_audit(&AuditRecord::summary(now_us, &s, rate));
            self.log.warn(&format!(
                "adminalert: {} further {} decisions in the last second not logged individually (AUDIT_RATE={rate})",
                s.suppressed,
                s.decision.as_str()
            ));
        }
    }

    /// Count a refusal whose audit record was suppressed by the refusal rate limit.
    pub fn count_suppressed_rejection(&mut self) {
        self.counters.rejected += 1;
        self.counters.errors += 1;
    }

    /// Audit and count a refused connection or a malformed / hostile frame.
    pub fn reject(&mut self, now: u64, reason: &str, peer: Option<Peer>) {
        self.counters.rejected += 1;
        self.counters.errors += 1;
        self.remember(now, None, extra::REJECTED, reason);
        let rec = AuditRecord::event(now, extra::REJECTED, reason.to_string(), peer);
        self.write_audit(&rec);
        self.log
            .warn(&format!("adminalert: connection refused: {reason}"));
    }

    fn vars_target(addr: IpAddr) -> String {
        addr.to_string()
    }

    fn run_template(
        &self,
        action: &'static str,
        tpl: &policy::CommandTemplate,
        req: &BlockRequest,
    ) -> ActionRecord {
        let target = Self::vars_target(req.source);
        let argv = tpl.render(&Vars {
            target: &target,
            port: req.port,
            mode: req.protocol.as_str(),
        });
        let r = exec::run(&argv, None, self.cfg.kill_timeout);
        let ok = r.outcome.success();
        let exit_code = match r.outcome {
            exec::Outcome::Exited(c) => Some(c),
            _ => None,
        };
        let error = if ok {
            None
        } else if r.stderr.is_empty() {
            Some(r.outcome.describe())
        } else {
            Some(format!("{}: {}", r.outcome.describe(), r.stderr))
        };
        ActionRecord {
            action,
            argv: Some(argv),
            target: None,
            status: if ok { "ok" } else { "error" },
            exit_code,
            error,
            ms: (r.elapsed.as_secs_f64() * 1e6).round() / 1e3,
        }
    }

    fn log_action(&self, addr: IpAddr, a: &ActionRecord) {
        let cmd = a
            .argv
            .as_ref()
            .map(|v| v.join(" "))
            .or_else(|| a.target.clone())
            .unwrap_or_default();
        if !a.ok() {
            self.log.err(&format!(
                "attackalert: ERROR: could not block host {addr} via {} \"{cmd}\": {}",
                a.action,
                a.error.as_deref().unwrap_or("failed")
            ));
            return;
        }
        let line = match a.action {
            "hosts_deny" => {
                format!("attackalert: Host {addr} has been blocked via wrappers with string: \"{cmd}\"")
            }
            "kill_route" => format!(
                "attackalert: Host {addr} has been blocked via dropped route using command: \"{cmd}\""
            ),
            "kill_run_cmd" => {
                format!("attackalert: External command run for host: {addr} using command: \"{cmd}\"")
            }
            "nftables" => {
                format!("attackalert: Host {addr} has been blocked via nftables set: \"{cmd}\"")
            }
            "blackhole_route" => format!(
                "attackalert: Host {addr} has been blocked via dropped route using command: \"{cmd}\""
            ),
            other => format!("attackalert: Host {addr}: {other}: \"{cmd}\""),
        };
        self.log.notice(&line);
    }

    fn hosts_deny_line(&self, addr: IpAddr, port: u16, proto: Protocol) -> Option<String> {
        let tpl = self.cfg.kill_hosts_deny.as_ref()?;
        let target = match addr {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        Some(tpl.render(&Vars {
            target: &target,
            port,
            mode: proto.as_str(),
        }))
    }

    fn nft_target(&self, addr: IpAddr) -> String {
        let set = if addr.is_ipv4() { SET_V4 } else { SET_V6 };
        format!("inet {} {set} {addr}", self.cfg.nft_table)
    }

    fn nft_op(&mut self, elems: &[SetElem], add: bool) -> Result<(), String> {
        let table = self.cfg.nft_table.clone();
        match self.nft.as_mut() {
            Some(s) => s
                .setelems(&table, SET_V4, SET_V6, elems, add)
                .map_err(|e| e.to_string()),
            None => Err("nftables backend not open".into()),
        }
    }

    fn nft_action(&mut self, addr: IpAddr, timeout: Option<Duration>, add: bool) -> ActionRecord {
        let t = Instant::now();
        let r = self.nft_op(&[SetElem { addr, timeout }], add);
        let r = match r {
            // Deleting an element the kernel already timed out is not a failure.
            Err(e) if !add && e.contains(nix::errno::Errno::ENOENT.desc()) => Ok(()),
            other => other,
        };
        ActionRecord::outcome("nftables", Some(self.nft_target(addr)), r, ms_since(t))
    }

    fn route_action(&mut self, addr: IpAddr, add: bool) -> ActionRecord {
        let t = Instant::now();
        let r = match self.route.as_mut() {
            Some(s) => match s.blackhole(addr, add) {
                Ok(()) => Ok(()),
                Err(crate::netlink::NlError::Kernel(nix::errno::Errno::EEXIST)) if add => Ok(()),
                Err(crate::netlink::NlError::Kernel(
                    nix::errno::Errno::ESRCH | nix::errno::Errno::ENOENT,
                )) if !add => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            None => Err("route backend not open".into()),
        };
        ActionRecord::outcome(
            "blackhole_route",
            Some(format!("blackhole {addr}")),
            r,
            ms_since(t),
        )
    }

    fn hosts_deny_action(&self, addr: IpAddr, line: &str, legacy: bool, add: bool) -> ActionRecord {
        let t = Instant::now();
        let path = &self.cfg.hosts_deny_file;
        // issue #11 B: sentry's lines carry a marker; only marked ones are removed.
        let entry = hostsdeny::Entry { addr, line, legacy };
        let r = if add {
            hostsdeny::add(path, &entry).map(|_| ())
        } else {
            hostsdeny::remove(path, &[entry]).map(|r| hostsdeny::log_kept(&self.log, &r))
        };
        ActionRecord::outcome("hosts_deny", Some(line.to_string()), r, ms_since(t))
    }

    /// Run every configured blocking action for `req` after those already in `actions`,
    /// filling `rec` with what took effect. `nft_done`: the nftables element was already
    /// added (the fast path in [`Engine::decide_inner`]).
    fn apply_block(
        &mut self,
        req: &BlockRequest,
        rec: &mut BlockRecord,
        mut actions: Vec<ActionRecord>,
        nft_done: bool,
    ) -> Applied {
        let run_cmd = self.cfg.kill_run_cmd.clone();
        if let (true, Some(tpl)) = (self.cfg.kill_run_cmd_first, run_cmd.as_ref()) {
            actions.push(self.run_template("kill_run_cmd", tpl, req));
        }
        if self.nft.is_some() && !nft_done {
            let timeout = self.cfg.block_timeout;
            let a = self.nft_action(req.source, timeout, true);
            rec.nft = a.ok();
            actions.push(a);
        }
        if self.route.is_some() {
            let a = self.route_action(req.source, true);
            rec.blackhole = a.ok();
            actions.push(a);
        }
        if let Some(tpl) = self.cfg.kill_route.clone() {
            actions.push(self.run_template("kill_route", &tpl, req));
        }
        if let Some(line) = self.hosts_deny_line(req.source, req.port, req.protocol) {
            let a = self.hosts_deny_action(req.source, &line, false, true);
            if a.ok() {
                rec.hosts_deny_line = Some(line);
            }
            actions.push(a);
        }
        if let (false, Some(tpl)) = (self.cfg.kill_run_cmd_first, run_cmd.as_ref()) {
            actions.push(self.run_template("kill_run_cmd", tpl, req));
        }
        let failed = actions.iter().any(|a| !a.ok());
        Applied { actions, failed }
    }

    /// Whether any action that blocks traffic (as opposed to only running a command) is
    /// configured.
    fn blocking_configured(&self) -> bool {
        self.nft.is_some()
            || self.route.is_some()
            || self.cfg.kill_route.is_some()
            || self.cfg.kill_hosts_deny.is_some()
    }

    fn rate_ok(&mut self, now: u64) -> bool {
        let cutoff = now.saturating_sub(60_000);
        while self.rate.front().is_some_and(|t| *t <= cutoff) {
            self.rate.pop_front();
        }
        (self.rate.len() as u64) < u64::from(self.cfg.block_rate)
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
                self.counters.errors += 1;
                self.log.err(&format!(
                    "adminalert: ERROR: address-change socket failed ({e}); this host's addresses are now re-read before every decision"
                ));
                self.addr_watch = None;
                true
            }
            None => true,
        };
        if changed {
            let (own, bcast) = own_addresses();
            self.never.set_own(own);
            self.never.set_broadcasts(bcast);
        }
    }

    /// issue #11: take route/address notifications (and, with `files`, changes of the
    /// resolver and lease files, looked at no more than once per second); install the new
    /// infrastructure list and lift blocks it now covers.
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
        self.counters.errors += r.problems.len() as u64;
        for p in &r.problems {
            self.log.warn(&format!("adminalert: infrastructure: {p}"));
        }
        let Some((entries, dropped)) = entries else {
            return;
        };
        crate::infra::log_entries(&self.log, &entries, dropped);
        self.never.set_infrastructure(entries);
        let lift: Vec<IpAddr> = self
            .blocks
            .keys()
            .copied()
            .filter(|a| self.never.check(*a).is_some())
            .collect();
        self.end_blocks(
            &lift,
            now_ms(),
            (extra::UNBLOCKED, "now never-blocked infrastructure"),
        );
        self.counters.unblocked += lift.len() as u64;
    }

    fn count(&mut self, d: Decision) {
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
            Decision::Failed => {
                c.failed += 1;
                c.errors += 1;
            }
        }
    }

    fn append_text(&mut self, path: Option<PathBuf>, line: &str) {
        let Some(path) = path else { return };
        if let Err(e) = append_line(&path, line) {
            self.counters.errors += 1;
            self.log.err(&format!(
                "adminalert: ERROR: cannot write {}: {e}",
                path.display()
            ));
        }
    }

    fn rewrite_blocked_file(&mut self) {
        let Some(path) = self.cfg.blocked_file.clone() else {
            return;
        };
        let mut recs: Vec<&BlockRecord> = self.blocks.values().collect();
        recs.sort_by_key(|b| (b.since_ms, b.addr));
        let mut text = String::new();
        for b in recs {
            text.push_str(&policy::logfmt::history_line(
                b.since_ms / 1000,
                b.addr,
                b.port,
                b.protocol,
            ));
            text.push('\n');
        }
        if let Err(e) = write_atomic(&path, text.as_bytes(), 0o600) {
            self.counters.errors += 1;
            self.log.err(&format!(
                "adminalert: ERROR: cannot write {}: {e}",
                path.display()
            ));
        }
    }

    /// Decide on one block request from `peer` and act on it. Persistence and the audit
    /// record are complete when this returns. `now` in milliseconds since the epoch.
    pub fn decide(&mut self, req: &BlockRequest, peer: Peer, now: u64) -> Decision {
        self.decide_at_us(req, peer, now.saturating_mul(1000))
    }

    /// [`Engine::decide`] with the time in microseconds since the epoch (the daemon's
    /// path: the audit record's `time_us` then has microsecond resolution).
    pub fn decide_at_us(&mut self, req: &BlockRequest, peer: Peer, now_us: u64) -> Decision {
        let now = now_us / 1000;
        self.counters.requests += 1;
        let mut rec = AuditRecord::event_us(now_us, "", String::new(), Some(peer));
        rec.source = Some(req.source.to_string());
        rec.protocol = Some(req.protocol.as_str());
        rec.port = Some(req.port);
        rec.scan = Some(req.scan.as_str());
        rec.mode = Some(req.mode.as_str());
        self.flush_audit_budget(now_us);
        let (decision, reason, line) = self.decide_inner(req, now, &mut rec);
        self.count(decision);
        rec.decision = decision.as_str();
        rec.reason = reason;
        self.remember(now, Some(req.source), decision.as_str(), &rec.reason);
        if self.budget.admit(now_us, decision, req.source) {
            if let Some((level, line)) = line {
                self.log.log(level, &line);
            }
            self.write_audit(&rec);
        }
        decision
    }

    /// Answer a request the daemon refused before deciding (e.g. a mode the sensor did
    /// not announce in its Hello): counted and audited like any rejected request.
    pub fn reject_request(
        &mut self,
        req: &BlockRequest,
        peer: Peer,
        now: u64,
        reason: String,
    ) -> Decision {
        self.counters.requests += 1;
        self.count(Decision::Rejected);
        let mut rec = AuditRecord::event(now, Decision::Rejected.as_str(), reason, Some(peer));
        rec.source = Some(req.source.to_string());
        rec.protocol = Some(req.protocol.as_str());
        rec.port = Some(req.port);
        rec.scan = Some(req.scan.as_str());
        rec.mode = Some(req.mode.as_str());
        self.remember(
            now,
            Some(req.source),
            Decision::Rejected.as_str(),
            &rec.reason,
        );
        let now_us = now.saturating_mul(1000);
        self.flush_audit_budget(now_us);
        if self.budget.admit(now_us, Decision::Rejected, req.source) {
            self.log.warn(&format!(
                "adminalert: rejected block request from sensor: {}",
                rec.reason
            ));
            self.write_audit(&rec);
        }
        Decision::Rejected
    }

    /// Decide and act. The log line of a decision that changed nothing is returned, not
    /// logged, so that the caller can hold it to AUDIT_RATE with the audit record.
    fn decide_inner(
        &mut self,
        req: &BlockRequest,
        now: u64,
        rec: &mut AuditRecord,
    ) -> (Decision, String, Line) {
        let addr = req.source;
        if let Err(e) = req.validate(now) {
            let line = format!("adminalert: rejected block request from sensor: {e}");
            return (
                Decision::Rejected,
                e.to_string(),
                Some((Level::Warning, line)),
            );
        }
        self.refresh_own_addresses();
        self.refresh_infra(false); // issue #11
        if let Some(why) = self.never.check(addr) {
            let line = format!("attackalert: Host: {addr} is never blocked ({why}). Ignoring");
            return (
                Decision::NeverBlock,
                why.to_string(),
                Some((Level::Notice, line)),
            );
        }
        if self.ignore.contains(addr) {
            let line = format!("attackalert: Host: {addr} is on the ignore list. Ignoring");
            return (
                Decision::Ignored,
                "on the ignore list".into(),
                Some((Level::Notice, line)),
            );
        }
        let key = match req.protocol {
            Protocol::Tcp => "BLOCK_TCP",
            Protocol::Udp => "BLOCK_UDP",
        };
        let mode = self.cfg.block_mode(req.protocol);
        if mode == BlockMode::LogOnly {
            let line = format!(
                "attackalert: Ignoring {} response per configuration file setting.",
                req.protocol.as_upper()
            );
            return (
                Decision::LogOnly,
                format!("{key}=0"),
                Some((Level::Notice, line)),
            );
        }
        if mode == BlockMode::Block && self.blocks.contains_key(&addr) {
            let line = format!("attackalert: Host: {addr} is already blocked. Ignoring");
            return (
                Decision::AlreadyBlocked,
                "already blocked".into(),
                Some((Level::Notice, line)),
            );
        }
        if !self.rate_ok(now) {
            let line = format!(
                "adminalert: block rate limit (BLOCK_RATE={}/min) reached; not blocking {addr}",
                self.cfg.block_rate
            );
            return (
                Decision::RateLimited,
                format!("BLOCK_RATE={} per minute reached", self.cfg.block_rate),
                Some((Level::Warning, line)),
            );
        }
        if mode == BlockMode::CommandOnly {
            let Some(tpl) = self.cfg.kill_run_cmd.clone() else {
                return (
                    Decision::LogOnly,
                    format!("{key}=2 but no KILL_RUN_CMD is configured"),
                    None,
                );
            };
            self.rate.push_back(now);
            let a = self.run_template("kill_run_cmd", &tpl, req);
            self.log_action(addr, &a);
            let ok = a.ok();
            rec.actions.push(a);
            return if ok {
                (Decision::CommandOnly, format!("{key}=2"), None)
            } else {
                (
                    Decision::Failed,
                    format!("{key}=2; KILL_RUN_CMD failed"),
                    None,
                )
            };
        }
        if self.blocks.len() >= self.cfg.max_blocks as usize {
            let line = format!(
                "adminalert: MAX_BLOCKS={} reached; not blocking {addr}",
                self.cfg.max_blocks
            );
            return (
                Decision::Capped,
                format!("MAX_BLOCKS={} reached", self.cfg.max_blocks),
                Some((Level::Warning, line)),
            );
        }
        if !self.blocking_configured() && self.cfg.kill_run_cmd.is_none() {
            return (
                Decision::LogOnly,
                format!("{key}=1 but no blocking action is configured"),
                None,
            );
        }
        self.rate.push_back(now);
        let mut block = BlockRecord {
            addr,
            protocol: req.protocol,
            port: req.port,
            mode: req.mode,
            scan: req.scan,
            since_ms: now,
            expires_ms: self
                .cfg
                .block_timeout
                .map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
            nft: false,
            blackhole: false,
            hosts_deny_line: None,
            hosts_deny_legacy: false, // issue #11 B: written with a marker
        };
        // Fast path: the nftables element goes in FIRST, before the write-ahead record and
        // its fdatasync (the scanner is being answered until the element exists; nmap -T4
        // sends ~64 probes per ms). This cannot leave anything behind that a restart would
        // not know about: on every start the enforcer deletes and recreates its nft table
        // and loads exactly the persisted blocks in the same transaction
        // (`nft_setup_script` + `nft_elements_script` in `Engine::new`), so an element
        // whose record never reached the disk (SIGKILL or power loss right after the add)
        // is wiped by the restart; and the element carries BLOCK_TIMEOUT itself, so it
        // cannot outlive its block while the enforcer is down. Blackhole routes are NOT
        // reconciled that way (a restart re-adds recorded routes but never removes
        // unrecorded ones), and neither are hosts.deny lines, KILL_ROUTE or KILL_RUN_CMD:
        // those stay after the write-ahead record. With KILL_RUN_CMD_FIRST="1" (and a
        // KILL_RUN_CMD) the documented order "the command before the other actions" is
        // kept, so the element is added after the record, as before.
        let nft_first =
            self.nft.is_some() && !(self.cfg.kill_run_cmd_first && self.cfg.kill_run_cmd.is_some());
        let mut done = Vec::new();
        if nft_first {
            let a = self.nft_action(addr, self.cfg.block_timeout, true);
            block.nft = a.ok();
            done.push(a);
        }
        // Write-ahead: journal what is about to be applied, so that a SIGKILL in the middle
        // of the actions leaves nothing behind that a restart would not know about (the
        // restart re-applies it; undoing an action that never ran is harmless).
        let mut intent = block.clone();
        intent.nft = if nft_first {
            block.nft
        } else {
            self.nft.is_some()
        };
        intent.blackhole = self.route.is_some();
        intent.hosts_deny_line = self.hosts_deny_line(addr, req.port, req.protocol);
        self.blocks.insert(addr, intent.clone());
        let intent_durable = match self.store.put(&intent, &self.blocks) {
            Ok(()) => true,
            Err(e) => {
                self.counters.errors += 1;
                self.log.err(&format!(
                    "adminalert: ERROR: cannot persist block of {addr}: {e}"
                ));
                false
            }
        };
        let applied = self.apply_block(req, &mut block, done, nft_first);
        for a in &applied.actions {
            self.log_action(addr, a);
        }
        rec.actions = applied.actions;
        let took_effect = block.nft
            || block.blackhole
            || block.hosts_deny_line.is_some()
            || rec
                .actions
                .iter()
                .any(|a| a.action == "kill_route" && a.ok())
            || (!self.blocking_configured() && !applied.failed);
        let mut reason = String::new();
        if took_effect {
            self.blocks.insert(addr, block.clone());
            // When everything took effect as intended, the write-ahead record already is
            // the final state: a second identical record (and fdatasync) adds nothing.
            let persisted = if intent_durable && block == intent {
                Ok(())
            } else {
                self.store.put(&block, &self.blocks)
            };
            if let Err(e) = persisted {
                self.counters.errors += 1;
                self.log.err(&format!(
                    "adminalert: ERROR: cannot persist block of {addr}: {e}"
                ));
                reason = format!("state not persisted: {e}; ");
            }
            let line = policy::logfmt::history_line(now / 1000, addr, req.port, req.protocol);
            self.append_text(self.cfg.history_file.clone(), &line);
            self.append_text(self.cfg.blocked_file.clone(), &line);
        } else {
            self.blocks.remove(&addr);
            if let Err(e) = self.store.del(addr, &self.blocks) {
                self.counters.errors += 1;
                self.log.err(&format!(
                    "adminalert: ERROR: cannot persist state for {addr}: {e}"
                ));
            }
        }
        let failed = applied.failed || !reason.is_empty();
        if failed {
            let n = rec.actions.iter().filter(|a| !a.ok()).count();
            reason.push_str(&format!(
                "{n} of {} actions failed{}",
                rec.actions.len(),
                if took_effect {
                    "; host recorded as blocked by the actions that succeeded"
                } else {
                    "; host not blocked"
                }
            ));
            (Decision::Failed, reason, None)
        } else {
            let what = match block.expires_ms {
                Some(_) => format!(
                    "blocked for {}s",
                    self.cfg.block_timeout.map_or(0, |t| t.as_secs())
                ),
                None => "blocked permanently".to_string(),
            };
            (Decision::Blocked, what, None)
        }
    }

    /// Undo everything recorded in `b` (except KILL_ROUTE / KILL_RUN_CMD, which have no
    /// inverse). `kernel_nft`: whether the nft element may still exist.
    /// `deny_done`: the deny-file line was already removed in a batch with this result.
    fn undo(
        &mut self,
        b: &BlockRecord,
        kernel_nft: bool,
        deny_done: Option<&ActionRecord>,
    ) -> Vec<ActionRecord> {
        let mut out = Vec::new();
        if b.nft && kernel_nft && self.nft.is_some() {
            out.push(self.nft_action(b.addr, None, false));
        }
        if b.blackhole && self.route.is_some() {
            out.push(self.route_action(b.addr, false));
        }
        if let Some(line) = &b.hosts_deny_line {
            match deny_done {
                Some(done) => {
                    let mut a = done.clone();
                    a.target = Some(line.clone());
                    out.push(a);
                }
                None => out.push(self.hosts_deny_action(b.addr, line, b.hosts_deny_legacy, false)),
            }
        }
        out
    }

    /// Remove the deny-file lines of all `addrs` with one rewrite (mass expiry, reload,
    /// restore): per-line rewrites would cost O(n) each.
    fn deny_batch_remove(&mut self, addrs: &[IpAddr]) -> Option<ActionRecord> {
        let lines: Vec<(IpAddr, String, bool)> = addrs
            .iter()
            .filter_map(|a| {
                let b = self.blocks.get(a)?;
                Some((*a, b.hosts_deny_line.clone()?, b.hosts_deny_legacy))
            })
            .collect();
        if lines.is_empty() {
            return None;
        }
        let t = Instant::now();
        let refs = hostsdeny::entries(&lines);
        let r = hostsdeny::remove(&self.cfg.hosts_deny_file, &refs)
            .map(|r| hostsdeny::log_kept(&self.log, &r));
        Some(ActionRecord::outcome("hosts_deny", None, r, ms_since(t)))
    }

    fn end_block(
        &mut self,
        addr: IpAddr,
        now: u64,
        (decision, reason): (&'static str, &str),
        peer: Option<Peer>,
        kernel_nft: bool,
        deny_done: Option<&ActionRecord>,
    ) -> Option<Vec<String>> {
        let b = self.blocks.remove(&addr)?;
        let actions = self.undo(&b, kernel_nft, deny_done);
        let errors: Vec<String> = actions
            .iter()
            .filter_map(|a| a.error.as_ref().map(|e| format!("{}: {e}", a.action)))
            .collect();
        if let Err(e) = self.store.del(addr, &self.blocks) {
            self.counters.errors += 1;
            self.log.err(&format!(
                "adminalert: ERROR: cannot persist removal of {addr}: {e}"
            ));
        }
        self.counters.errors += errors.len() as u64;
        let mut rec = AuditRecord::event(now, decision, reason.to_string(), peer);
        rec.source = Some(addr.to_string());
        rec.protocol = Some(b.protocol.as_str());
        rec.port = Some(b.port);
        rec.scan = Some(b.scan.as_str());
        rec.mode = Some(b.mode.as_str());
        rec.actions = actions;
        if self.cfg.kill_route.is_some() {
            rec.reason
                .push_str("; KILL_ROUTE has no inverse and was not undone");
        }
        self.write_audit(&rec);
        self.remember(now, Some(addr), decision, reason);
        self.log.notice(&format!(
            "adminalert: Host {addr} is no longer blocked ({decision}: {reason})"
        ));
        Some(errors)
    }

    /// `sentryctl unblock`. Returns `None` when the address was not blocked.
    pub fn unblock(&mut self, addr: IpAddr, peer: Peer, now: u64) -> Option<Vec<String>> {
        let r = self.end_block(
            addr,
            now,
            (extra::UNBLOCKED, "sentryctl unblock"),
            Some(peer),
            true,
            None,
        );
        if r.is_some() {
            self.counters.unblocked += 1;
            self.rewrite_blocked_file();
        }
        r
    }

    /// Remove every block whose BLOCK_TIMEOUT has passed. Returns how many expired.
    pub fn expire(&mut self, now: u64) -> usize {
        let due: Vec<IpAddr> = self
            .blocks
            .values()
            .filter(|b| b.expires_ms.is_some_and(|e| e <= now))
            .map(|b| b.addr)
            .collect();
        self.end_blocks(&due, now, (extra::EXPIRED, "BLOCK_TIMEOUT passed"));
        self.counters.expired += due.len() as u64;
        due.len()
    }

    /// End a batch of blocks for one reason, with one hosts.deny rewrite and one
    /// BLOCKED_FILE rewrite for the whole batch (mass expiry and ignore-list reloads must
    /// not rewrite the files once per block).
    fn end_blocks(&mut self, addrs: &[IpAddr], now: u64, why: (&'static str, &'static str)) {
        if addrs.is_empty() {
            return;
        }
        let deny = self.deny_batch_remove(addrs);
        for a in addrs {
            self.end_block(*a, now, why, None, true, deny.as_ref());
        }
        self.rewrite_blocked_file();
    }

    /// SIGHUP: re-read the ignore list and lift blocks on addresses it now covers.
    pub fn reload_ignore(&mut self, now: u64) -> Result<usize, String> {
        // Also reopen the audit log, so that it can be rotated by renaming.
        match AuditLog::open(&self.cfg.audit_log) {
            Ok(a) => self.audit = a,
            Err(e) => {
                self.counters.errors += 1;
                self.log.err(&format!(
                    "adminalert: ERROR: cannot reopen audit log (old one kept): {e}"
                ));
            }
        }
        let ignore = self.cfg.load_ignore().map_err(|e| e.to_string())?;
        self.ignore = ignore;
        let now_ignored: Vec<IpAddr> = self
            .blocks
            .keys()
            .copied()
            .filter(|a| self.ignore.contains(*a))
            .collect();
        self.end_blocks(
            &now_ignored,
            now,
            (extra::UNBLOCKED, "now on the ignore list"),
        );
        self.counters.unblocked += now_ignored.len() as u64;
        self.log.notice(&format!(
            "adminalert: ignore list reloaded ({} entries); {} blocks lifted",
            self.ignore.len(),
            now_ignored.len()
        ));
        Ok(now_ignored.len())
    }

    /// On start: expire stale blocks, lift blocks the current ignore list / never-block set
    /// now covers, and re-apply the rest (one netlink batch for the nft elements).
    fn restore(&mut self, persisted: HashMap<IpAddr, BlockRecord>, now: u64) {
        let mut keep = Vec::new();
        // All of them first, so that a compaction during the loop never loses any.
        self.blocks = persisted;
        let mut addrs: Vec<IpAddr> = self.blocks.keys().copied().collect();
        addrs.sort();
        let mut lift = Vec::new();
        for addr in addrs {
            let Some(b) = self.blocks.get(&addr) else {
                continue;
            };
            let verdict = if b.expires_ms.is_some_and(|e| e <= now) {
                Some((
                    extra::EXPIRED,
                    "BLOCK_TIMEOUT passed while stopped".to_string(),
                ))
            } else if let Some(why) = self.never.check(addr) {
                Some((extra::UNBLOCKED, format!("never-block: {why}")))
            } else if self.ignore.contains(addr) {
                Some((extra::UNBLOCKED, "now on the ignore list".to_string()))
            } else {
                None
            };
            match verdict {
                Some(v) => lift.push((addr, v)),
                None => keep.push(addr),
            }
        }
        let lift_addrs: Vec<IpAddr> = lift.iter().map(|(a, _)| *a).collect();
        let deny = self.deny_batch_remove(&lift_addrs);
        for (addr, (d, why)) in lift {
            // The nft table was just rebuilt without it: no element to delete.
            self.end_block(addr, now, (d, &why), None, false, deny.as_ref());
            if d == extra::EXPIRED {
                self.counters.expired += 1;
            } else {
                self.counters.unblocked += 1;
            }
        }
        keep.sort();
        // nftables: one batch for all.
        let mut nft_error = None;
        if self.nft.is_some() {
            let elems: Vec<SetElem> = keep
                .iter()
                .filter_map(|a| self.blocks.get(a))
                .map(|b| SetElem {
                    addr: b.addr,
                    timeout: b
                        .expires_ms
                        .map(|e| Duration::from_millis(e.saturating_sub(now).max(1))),
                })
                .collect();
            let t = Instant::now();
            if let Err(e) = self.nft_op(&elems, true) {
                nft_error = Some(e);
            }
            self.log.info(&format!(
                "adminalert: re-applied {} nftables elements in {:.3} ms",
                elems.len(),
                ms_since(t)
            ));
        }
        // hosts.deny: one read and one append for all restored lines.
        let deny_add = {
            let lines: Vec<(IpAddr, String, bool)> = keep
                .iter()
                .filter_map(|a| {
                    let b = self.blocks.get(a)?;
                    Some((*a, b.hosts_deny_line.clone()?, b.hosts_deny_legacy))
                })
                .collect();
            if lines.is_empty() {
                None
            } else {
                let t = Instant::now();
                let refs = hostsdeny::entries(&lines);
                let r = hostsdeny::add_many(&self.cfg.hosts_deny_file, &refs);
                Some(ActionRecord::outcome("hosts_deny", None, r, ms_since(t)))
            }
        };
        for addr in keep {
            let Some(mut b) = self.blocks.get(&addr).cloned() else {
                continue;
            };
            let mut actions = Vec::new();
            if self.nft.is_some() {
                actions.push(ActionRecord {
                    action: "nftables",
                    argv: None,
                    target: Some(self.nft_target(addr)),
                    status: if nft_error.is_none() { "ok" } else { "error" },
                    exit_code: None,
                    error: nft_error.clone(),
                    ms: 0.0,
                });
                b.nft = nft_error.is_none();
            }
            if self.route.is_some() {
                let a = self.route_action(addr, true);
                b.blackhole = a.ok();
                actions.push(a);
            }
            if let (Some(line), Some(done)) = (b.hosts_deny_line.clone(), deny_add.as_ref()) {
                let mut a = done.clone();
                a.target = Some(line);
                actions.push(a);
            }
            let failed = actions.iter().filter(|a| !a.ok()).count();
            self.counters.restored += 1;
            self.counters.errors += failed as u64;
            self.blocks.insert(addr, b);
            let mut rec = AuditRecord::event(
                now,
                extra::RESTORED,
                if failed == 0 {
                    "re-applied after restart".to_string()
                } else {
                    format!("re-applied after restart; {failed} actions failed")
                },
                None,
            );
            if let Some(b) = self.blocks.get(&addr) {
                rec.source = Some(addr.to_string());
                rec.protocol = Some(b.protocol.as_str());
                rec.port = Some(b.port);
                rec.scan = Some(b.scan.as_str());
                rec.mode = Some(b.mode.as_str());
            }
            rec.actions = actions;
            self.write_audit(&rec);
        }
        if let Err(e) = self.store.compact(&self.blocks) {
            self.counters.errors += 1;
            self.log
                .err(&format!("adminalert: ERROR: cannot persist state: {e}"));
        }
        self.rewrite_blocked_file();
        if self.counters.restored > 0 {
            self.log.notice(&format!(
                "adminalert: restored {} blocks from {}",
                self.counters.restored,
                self.opts.state_dir.display()
            ));
        }
    }

    pub fn status(&self, config_path: &Path) -> Status {
        let mut backends = Vec::new();
        if self.nft.is_some() {
            backends.push(format!("nftables inet {} (netlink)", self.cfg.nft_table));
        }
        if self.route.is_some() {
            backends.push("blackhole routes (netlink)".into());
        }
        if let Some(t) = &self.cfg.kill_route {
            backends.push(format!("KILL_ROUTE {}", t.source()));
        }
        if let Some(t) = &self.cfg.kill_hosts_deny {
            backends.push(format!(
                "KILL_HOSTS_DENY {} -> {}",
                t.source(),
                self.cfg.hosts_deny_file.display()
            ));
        }
        if let Some(t) = &self.cfg.kill_run_cmd {
            backends.push(format!("KILL_RUN_CMD {}", t.source()));
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            config_path: config_path.display().to_string(),
            sensor: self.sensor.clone(),
            counters: self.counters.clone(),
            active_blocks: self.blocks.len() as u64,
            max_blocks: u64::from(self.cfg.max_blocks),
            backends,
            recent: self.recent.iter().cloned().collect(),
        }
    }

    pub fn blocked(&self) -> Vec<BlockEntry> {
        let mut v: Vec<BlockEntry> = self
            .blocks
            .values()
            .map(|b| BlockEntry {
                addr: b.addr,
                protocol: b.protocol,
                port: b.port,
                mode: b.mode,
                scan: b.scan,
                since_ms: b.since_ms,
                expires_ms: b.expires_ms,
            })
            .collect();
        v.sort_by_key(|b| (b.since_ms, b.addr));
        v
    }
}

/// Append one line to a PortSentry text file (BLOCKED_FILE / HISTORY_FILE), refusing
/// symlinks and files writable by group or others.
fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() || md.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(
            "not a regular file, or writable by group or others",
        ));
    }
    let mut s = String::with_capacity(line.len() + 1);
    s.push_str(line);
    s.push('\n');
    f.write_all(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_proto::{Mode, ScanKind};
    use std::os::unix::fs::PermissionsExt;

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
        Engine::new(
            cfg,
            Options {
                state_dir: dir.path().join("state"),
                refresh_own_addresses: false,
                infra: None,
            },
            Arc::new(Logger::new(true, "test")),
        )
        .unwrap()
    }

    fn req(seq: u64, src: &str, protocol: Protocol, port: u16) -> BlockRequest {
        let now = now_ms();
        let (scan, mode) = match protocol {
            Protocol::Tcp => (ScanKind::Syn, Mode::Stcp),
            Protocol::Udp => (ScanKind::Udp, Mode::Sudp),
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

    impl T {
        fn decide(&mut self, src: &str, p: Protocol) -> Decision {
            let r = req(1, src, p, 22);
            self.engine.decide(&r, PEER, now_ms())
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
        /// The deny file without sentry's marker lines (issue #11 B).
        fn deny(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("hosts.deny"))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with(crate::hostsdeny::MARKER))
                .map(|l| format!("{l}\n"))
                .collect()
        }
    }

    #[test]
    fn rejected_never_block_ignored_log_only() {
        let mut t = setup(&[("BLOCK_UDP", "0")]);
        let mut bad = req(1, "192.0.2.1", Protocol::Tcp, 0);
        assert_eq!(t.engine.decide(&bad, PEER, now_ms()), Decision::Rejected);
        bad.port = 22;
        bad.scan = ScanKind::Udp;
        assert_eq!(t.engine.decide(&bad, PEER, now_ms()), Decision::Rejected);
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
        assert_eq!(t.deny(), "ALL: 192.0.2.1\nALL: [2001:db8::1]\n");
        let hist = std::fs::read_to_string(t.dir.path().join("history")).unwrap();
        assert_eq!(hist.lines().count(), 2);
        assert!(hist.contains("Host: 2001:db8::1/2001:db8::1 Port: 22 TCP Blocked"));
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
        let mut t = setup(&[("BLOCK_RATE", "2")]);
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Blocked);
        assert_eq!(t.decide("192.0.2.2", Protocol::Tcp), Decision::Blocked);
        assert_eq!(t.decide("192.0.2.3", Protocol::Tcp), Decision::RateLimited);
        // a minute later the window has moved on
        let r = req(9, "192.0.2.3", Protocol::Tcp, 22);
        let later = now_ms() + 61_000;
        assert_eq!(t.engine.decide(&r, PEER, later), Decision::Blocked);

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
        assert_eq!(t.decide("192.0.2.1", Protocol::Tcp), Decision::Failed);
        assert!(t.engine.is_blocked("192.0.2.1".parse().unwrap()));
        assert_eq!(t.deny(), "ALL: 192.0.2.1\n");
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
        assert_eq!(t.engine.expire(now_ms() + 61_000), 2);
        assert_eq!(t.deny(), "");
        assert_eq!(t.last()["decision"], "expired");
        let blocked = std::fs::read_to_string(t.dir.path().join("blocked")).unwrap();
        assert_eq!(blocked, "");
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
        (now_ms() / 1000 + 1) * 1_000_000
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
            t.engine.decide_at_us(&r, PEER, s0 - 1_000_000),
            Decision::Blocked
        );
        assert_eq!(t.audit().len(), 1);
        // 10,000 spoofed sources within one second (one every 50 µs).
        for i in 0..10_000u32 {
            let r = req(u64::from(i) + 2, &src(i), Protocol::Tcp, 22);
            let at = s0 + u64::from(i) * 50;
            assert_eq!(t.engine.decide_at_us(&r, PEER, at), Decision::RateLimited);
        }
        // Still inside the second: exactly AUDIT_RATE (default 100) records of it.
        let rate = t.engine.config().audit_rate as usize;
        assert_eq!(rate, 100);
        assert_eq!(t.audit().len(), 1 + rate);
        // The daemon's tick in the next second writes the summary.
        t.engine.flush_audit_budget(s0 + 1_000_000 + 7);
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
        t.engine.flush_audit_budget(s0 + 2_000_000);
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
        assert_eq!(t.engine.decide_at_us(&r, PEER, s0), Decision::Blocked);
        for i in 0..5u32 {
            let r = req(2, &src(i), Protocol::Tcp, 22);
            assert_eq!(
                t.engine.decide_at_us(&r, PEER, s0 + 10 + u64::from(i)),
                Decision::Capped
            );
        }
        // 1 blocked + 2 capped; the next request, one second later, first writes the
        // summary of the 3 suppressed ones, then its own record.
        assert_eq!(t.audit().len(), 3);
        let r = req(3, "198.51.100.9", Protocol::Tcp, 22);
        assert_eq!(
            t.engine.decide_at_us(&r, PEER, s0 + 1_000_000),
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
                t.engine.decide_at_us(&r, PEER, s0 + u64::from(i)),
                Decision::LogOnly
            );
        }
        t.engine.flush_audit_budget(s0 + 20);
        assert_eq!(t.audit().len(), 3, "same second: nothing to flush yet");
        t.engine.finish_audit_budget(s0 + 30);
        let a = t.audit();
        assert_eq!(a.len(), 4);
        assert_eq!(a[3]["decision"], "log_only");
        assert_eq!(a[3]["suppressed"], 7);
        assert_eq!(a[3]["time_us"], s0 + 30);
        // Nothing is summarised twice.
        t.engine.flush_audit_budget(s0 + 1_000_000);
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
                t.engine.decide_at_us(&r, PEER, s0 + i),
                Decision::NeverBlock
            );
        }
        assert_eq!(t.audit().len(), 1);
        // ... then every block of the same second is still written in full.
        for i in 0..40u32 {
            let r = req(100 + u64::from(i), &src(i), Protocol::Tcp, 22);
            assert_eq!(
                t.engine.decide_at_us(&r, PEER, s0 + 100 + u64::from(i)),
                Decision::Blocked
            );
        }
        // And a failed one (the deny file is made unwritable: a directory in its place).
        let deny = t.dir.path().join("hosts.deny");
        std::fs::remove_file(&deny).unwrap();
        std::fs::create_dir(&deny).unwrap();
        let r = req(200, &src(40), Protocol::Tcp, 22);
        assert_eq!(t.engine.decide_at_us(&r, PEER, s0 + 500), Decision::Failed);
        let a = t.audit();
        assert_eq!(a.len(), 1 + 40 + 1);
        assert_eq!(a.iter().filter(|r| r["decision"] == "blocked").count(), 40);
        assert!(a[1..41]
            .iter()
            .all(|r| r["actions"].as_array().is_some_and(|v| v.len() == 1)));
        assert_eq!(a[41]["decision"], "failed");
        t.engine.flush_audit_budget(s0 + 1_000_000);
        let a = t.audit();
        assert_eq!(a.len(), 43);
        assert_eq!(a[42]["decision"], "never_block");
        assert_eq!(a[42]["suppressed"], 9);
        assert_eq!(a[42]["sample"], serde_json::json!(["127.0.0.1"]));
    }

    #[test]
    fn nft_elements_statements() {
        let e = [
            SetElem {
                addr: "192.0.2.1".parse().unwrap(),
                timeout: None,
            },
            SetElem {
                addr: "2001:db8::1".parse().unwrap(),
                timeout: Some(Duration::from_secs(5)),
            },
            SetElem {
                addr: "192.0.2.2".parse().unwrap(),
                timeout: Some(Duration::from_millis(1500)),
            },
        ];
        assert_eq!(
            nft_elements_script("t", &e),
            "add element inet t v4 { 192.0.2.1, 192.0.2.2 timeout 1500ms }\n\
             add element inet t v6 { 2001:db8::1 timeout 5000ms }\n"
        );
        assert_eq!(nft_elements_script("t", &[]), "");
    }

    #[test]
    fn nft_script_shape() {
        let s = nft_setup_script("sentry");
        assert!(s.contains("set v4 { type ipv4_addr; flags timeout; }"));
        assert!(s.contains("hook prerouting priority -300"));
        assert!(s.contains("ip saddr @v4 counter drop"));
        assert!(s.contains("ip6 saddr @v6 counter drop"));
        assert!(s.starts_with("table inet sentry {}\ndelete table inet sentry\n"));
    }
}
