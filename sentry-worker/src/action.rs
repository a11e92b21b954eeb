//! The executor: typed actions in, typed outcomes ([`ActionRecord`]) out. The judge
//! ([`crate::judge`]) decides *whether* to block; [`block_plan`] says *which* actions, in
//! which order (pure, tested here); [`Executor`] runs them against the kernel, the deny
//! file and the kill commands, and says what each did.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use policy::{CommandTemplate, Config, Vars};
use sentry_proto::Protocol;

use crate::audit::{ActionKind, ActionRecord, ActionStatus, Logger};
use sentry_enforcer::effects::exec;
use sentry_enforcer::effects::hostsdeny;
use crate::error::EnforcerError;
use sentry_enforcer::kernel::netlink::{NlError, NlSocket, SetElem};
use crate::store::BlockRecord;
use crate::time::ms_since;

/// Names of the two sets in the nftables table.
pub const SET_V4: &str = "v4";
pub const SET_V6: &str = "v6";
/// The set of IPv6 networks (BLOCK_PREFIX6), looked up with the source masked.
pub const SET_V6NET: &str = "v6net";

/// Whether an action puts something in place or takes it away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Delete,
}

/// A kill command. Commands have no inverse: they are never undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    KillRoute,
    KillRunCmd,
}

/// One thing the enforcer does to the host for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The address's element in the nftables set (netlink).
    Nft(Op),
    /// A blackhole route for the address (rtnetlink).
    Route(Op),
    /// This exact line in HOSTS_DENY_FILE; `true`: written by a version that did not mark
    /// its lines (see [`sentry_enforcer::effects::hostsdeny`] for how such a line is taken back).
    HostsDeny(Op, String, bool),
    Command(Command),
}

/// The request an action is for: what the templates' `$TARGET$`, `$PORT$` and `$MODE$`
/// stand for.
#[derive(Debug, Clone, Copy)]
pub struct Subject {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// The block covers the IPv6 network `addr`/len (BLOCK_PREFIX6).
    pub prefix6: Option<u8>,
    /// Kernel timeout of an added nftables element: the block's duration (BLOCK_TIMEOUT,
    /// or what a control client asked for); `None` is permanent. Unused by the others.
    pub timeout: Option<std::time::Duration>,
}

impl Subject {
    /// What the templates' `$TARGET$` stands for: the address, or `network/len`.
    pub fn target(&self) -> String {
        match self.prefix6 {
            Some(len) => format!("{}/{len}", self.addr),
            None => self.addr.to_string(),
        }
    }

    fn prefix_len(&self) -> u8 {
        match (self.prefix6, self.addr) {
            (Some(len), _) => len,
            (None, IpAddr::V4(_)) => 32,
            (None, IpAddr::V6(_)) => 128,
        }
    }
}

/// The KILL_HOSTS_DENY line for `s` (IPv6 in brackets, as hosts_access(5) wants).
pub fn hosts_deny_line(cfg: &Config, s: &Subject) -> Option<String> {
    let tpl = cfg.kill_hosts_deny.as_ref()?;
    let target = match (s.addr, s.prefix6) {
        (IpAddr::V4(a), _) => a.to_string(),
        (IpAddr::V6(a), None) => format!("[{a}]"),
        (IpAddr::V6(a), Some(len)) => format!("[{a}]/{len}"),
    };
    Some(tpl.render(&Vars {
        target: &target,
        port: s.port,
        mode: s.protocol.as_str(),
    }))
}

/// Which in-process backends are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backends {
    pub nft: bool,
    pub route: bool,
}

/// The actions that block `s`, in PortSentry's order (hosts.deny, route, command; the
/// command first with KILL_RUN_CMD_FIRST="1"), with the in-kernel ones before KILL_ROUTE.
/// `nft_done`: the element was already added on the fast path.
pub fn block_plan(cfg: &Config, b: Backends, s: &Subject, nft_done: bool) -> Vec<Action> {
    let mut plan = Vec::new();
    let run_cmd = cfg.kill_run_cmd.is_some();
    if cfg.kill_run_cmd_first && run_cmd {
        plan.push(Action::Command(Command::KillRunCmd));
    }
    if b.nft && !nft_done {
        plan.push(Action::Nft(Op::Add));
    }
    if b.route {
        plan.push(Action::Route(Op::Add));
    }
    if cfg.kill_route.is_some() {
        plan.push(Action::Command(Command::KillRoute));
    }
    if let Some(line) = hosts_deny_line(cfg, s) {
        plan.push(Action::HostsDeny(Op::Add, line, false));
    }
    if !cfg.kill_run_cmd_first && run_cmd {
        plan.push(Action::Command(Command::KillRunCmd));
    }
    plan
}

/// The actions that undo what `b` records (commands have no inverse). `kernel_nft`:
/// whether the element may still exist (after a table rebuild it cannot). The element's
/// delete is tried even when the record says the add failed: a failed batch may still
/// have put some elements in, and deleting one that is not there costs one ENOENT.
pub fn undo_plan(b: &BlockRecord, backends: Backends, kernel_nft: bool) -> Vec<Action> {
    let mut plan = Vec::new();
    if kernel_nft && backends.nft {
        plan.push(Action::Nft(Op::Delete));
    }
    if b.blackhole && backends.route {
        plan.push(Action::Route(Op::Delete));
    }
    if let Some(line) = &b.hosts_deny_line {
        plan.push(Action::HostsDeny(
            Op::Delete,
            line.clone(),
            b.hosts_deny_legacy,
        ));
    }
    plan
}

/// Note in `rec` what a successful (or failed) `action` put in place, so that exactly
/// that is undone later.
pub fn record_effect(rec: &mut BlockRecord, action: &Action, ok: bool) {
    match action {
        Action::Nft(Op::Add) => rec.nft = ok,
        Action::Route(Op::Add) => rec.blackhole = ok,
        Action::HostsDeny(Op::Add, line, _) if ok => {
            rec.hosts_deny_line = Some(line.clone());
            rec.hosts_deny_legacy = false;
        }
        _ => {}
    }
}

/// Whether the configured actions need CAP_NET_RAW: KILL_ROUTE / KILL_RUN_CMD may run
/// legacy iptables(8), which opens a raw socket. (CAP_NET_ADMIN, for the nftables sets,
/// blackhole routes, firewall commands and the detection chain, is always kept.)
pub fn needs_net_raw(cfg: &Config) -> bool {
    cfg.kill_route.is_some() || cfg.kill_run_cmd.is_some()
}

/// The open in-process backends.
#[derive(Debug)]
pub struct Executor {
    nft: Option<NlSocket>,
    route: Option<NlSocket>,
    /// For the deny file's notes about lines it kept.
    log: Arc<Logger>,
}

impl Executor {
    pub fn new(nft: Option<NlSocket>, route: Option<NlSocket>, log: Arc<Logger>) -> Self {
        Self { nft, route, log }
    }

    /// The netlink port id of the set socket (its own changes are not tampering).
    pub fn nft_portid(&self) -> Option<u32> {
        self.nft.as_ref().and_then(|s| s.portid().ok())
    }

    pub fn backends(&self) -> Backends {
        Backends {
            nft: self.nft.is_some(),
            route: self.route.is_some(),
        }
    }

    /// Run one action for `s`. Adding an element uses the block's duration
    /// ([`Subject::timeout`]) as its kernel timeout, so the element cannot outlive its
    /// block while the enforcer is down.
    pub fn run(&mut self, cfg: &Config, action: &Action, s: &Subject) -> ActionRecord {
        let t = Instant::now();
        match action {
            Action::Nft(op) => {
                let timeout = if *op == Op::Add { s.timeout } else { None };
                let elem = SetElem {
                    addr: s.addr,
                    timeout,
                };
                let r = match self.nft_batch(cfg, &[elem], *op, s.prefix6.is_some()) {
                    // Deleting an element the kernel already timed out is not a failure.
                    Err(e) if *op == Op::Delete && e.kernel_errno() == Some(Errno::ENOENT) => {
                        Ok(())
                    }
                    other => other,
                };
                ActionRecord::outcome(
                    ActionKind::Nftables,
                    Some(nft_target(cfg, s.addr, s.prefix6)),
                    r,
                    ms_since(t),
                )
            }
            Action::Route(op) => {
                let r = self.route(s.addr, s.prefix_len(), *op);
                ActionRecord::outcome(
                    ActionKind::BlackholeRoute,
                    Some(format!("blackhole {}", s.target())),
                    r,
                    ms_since(t),
                )
            }
            Action::HostsDeny(op, line, legacy) => {
                let path = &cfg.hosts_deny_file;
                // sentry's lines carry a marker; only marked ones (or a recorded legacy
                // line, under the rules in hostsdeny) are ever taken back.
                let entry = hostsdeny::Entry {
                    addr: s.addr,
                    line,
                    legacy: *legacy,
                };
                let r = match op {
                    Op::Add => hostsdeny::add(path, &entry).map(drop),
                    Op::Delete => hostsdeny::remove(path, &[entry])
                        .map(|r| hostsdeny::log_kept(&self.log, &r)),
                };
                ActionRecord::outcome(ActionKind::HostsDeny, Some(line.clone()), r, ms_since(t))
            }
            Action::Command(c) => {
                let (kind, tpl) = match c {
                    Command::KillRoute => (ActionKind::KillRoute, cfg.kill_route.as_ref()),
                    Command::KillRunCmd => (ActionKind::KillRunCmd, cfg.kill_run_cmd.as_ref()),
                };
                match tpl {
                    Some(tpl) => run_template(kind, tpl, s, cfg.kill_timeout),
                    None => ActionRecord::outcome(
                        kind,
                        None,
                        Err::<(), _>("not configured"),
                        ms_since(t),
                    ),
                }
            }
        }
    }

    fn nft(&mut self) -> Result<&mut NlSocket, EnforcerError> {
        self.nft
            .as_mut()
            .ok_or(EnforcerError::BackendClosed("nftables"))
    }

    /// Add or delete many elements in as few netlink batches as the kernel takes; `nets`:
    /// the IPv6 elements are network addresses (the `v6net` set).
    pub fn nft_batch(
        &mut self,
        cfg: &Config,
        elems: &[SetElem],
        op: Op,
        nets: bool,
    ) -> Result<(), EnforcerError> {
        let s = self.nft()?;
        let v6 = if nets { SET_V6NET } else { SET_V6 };
        s.setelems(&cfg.nft_table, SET_V4, v6, elems, op == Op::Add)
            .map_err(|e| EnforcerError::netlink("nftables", e))
    }

    /// Every address in the three sets of the table, read back from the kernel (at most
    /// `limit` per set: a larger set is an error, not unbounded memory).
    pub fn nft_elements(
        &mut self,
        cfg: &Config,
        limit: usize,
    ) -> Result<std::collections::HashSet<IpAddr>, EnforcerError> {
        let s = self.nft()?;
        let mut all = std::collections::HashSet::new();
        for set in [SET_V4, SET_V6, SET_V6NET] {
            let v = s
                .set_elements(&cfg.nft_table, set, limit)
                .map_err(|e| EnforcerError::netlink("nftables read-back", e))?;
            all.extend(v);
        }
        Ok(all)
    }

    /// Every element of `map` (the kernel's first-hit maps), at most `limit`.
    pub fn nft_map_elements(
        &mut self,
        cfg: &Config,
        map: &str,
        limit: usize,
    ) -> Result<Vec<sentry_enforcer::kernel::netlink::DumpElem>, EnforcerError> {
        let s = self.nft()?;
        s.elements(&cfg.nft_table, map, limit)
            .map_err(|e| EnforcerError::netlink("nftables read-back", e))
    }

    /// Delete `addr` from `map_v4`/`map_v6` (whichever its family); not there is fine.
    pub fn nft_forget(
        &mut self,
        cfg: &Config,
        map_v4: &str,
        map_v6: &str,
        addr: IpAddr,
    ) -> Result<(), EnforcerError> {
        let s = self.nft()?;
        let map = if addr.is_ipv4() { map_v4 } else { map_v6 };
        // Look first: deleting a missing element aborts a transaction, which costs an RCU
        // grace period; most refused sources were never in the map.
        match s.has_element(&cfg.nft_table, map, addr) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => return Err(EnforcerError::netlink("nftables lookup", e)),
        }
        let e = [SetElem {
            addr,
            timeout: None,
        }];
        match s.setelems(&cfg.nft_table, map_v4, map_v6, &e, false) {
            Ok(()) | Err(NlError::Kernel(Errno::ENOENT)) => Ok(()),
            Err(e) => Err(EnforcerError::netlink("nftables", e)),
        }
    }

    fn route(&mut self, addr: IpAddr, prefix: u8, op: Op) -> Result<(), EnforcerError> {
        let s = self
            .route
            .as_mut()
            .ok_or(EnforcerError::BackendClosed("route"))?;
        match (s.blackhole(addr, prefix, op == Op::Add), op) {
            (Ok(()), _) => Ok(()),
            // Already there / already gone: the state we wanted.
            (Err(NlError::Kernel(Errno::EEXIST)), Op::Add) => Ok(()),
            (Err(NlError::Kernel(Errno::ESRCH | Errno::ENOENT)), Op::Delete) => Ok(()),
            (Err(e), _) => Err(EnforcerError::netlink("route", e)),
        }
    }
}

/// Add or remove many deny-file lines (address, line, legacy) with one read and one write
/// (restore, mass expiry, reload: per-line edits would cost O(n) each). One record stands
/// for all of them.
pub fn hosts_deny_batch(
    path: &Path,
    lines: &[(IpAddr, String, bool)],
    op: Op,
    log: &Logger,
) -> Option<ActionRecord> {
    if lines.is_empty() {
        return None;
    }
    let t = Instant::now();
    let refs = hostsdeny::entries(lines);
    let r = match op {
        Op::Add => hostsdeny::add_many(path, &refs).map(drop),
        Op::Delete => hostsdeny::remove(path, &refs).map(|r| hostsdeny::log_kept(log, &r)),
    };
    Some(ActionRecord::outcome(
        ActionKind::HostsDeny,
        None,
        r,
        ms_since(t),
    ))
}

/// How the audit log names an address's element.
pub fn nft_target(cfg: &Config, addr: IpAddr, prefix6: Option<u8>) -> String {
    let set = match (addr.is_ipv4(), prefix6) {
        (true, _) => SET_V4,
        (false, None) => SET_V6,
        (false, Some(_)) => SET_V6NET,
    };
    format!("inet {} {set} {addr}", cfg.nft_table)
}

fn run_template(
    kind: ActionKind,
    tpl: &CommandTemplate,
    s: &Subject,
    timeout: Duration,
) -> ActionRecord {
    let target = s.target();
    let argv = tpl.render(&Vars {
        target: &target,
        port: s.port,
        mode: s.protocol.as_str(),
    });
    let r = exec::run(&argv, None, timeout);
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
        action: kind,
        argv: Some(argv),
        target: None,
        status: if ok {
            ActionStatus::Ok
        } else {
            ActionStatus::Error
        },
        exit_code,
        error,
        ms: (r.elapsed.as_secs_f64() * 1e6).round() / 1e3,
    }
}

/// The PortSentry-style log line for an action that ran for `addr`.
pub fn action_line(addr: IpAddr, a: &ActionRecord) -> (bool, String) {
    let cmd = a
        .argv
        .as_ref()
        .map(|v| v.join(" "))
        .or_else(|| a.target.clone())
        .unwrap_or_default();
    if !a.ok() {
        return (
            false,
            format!(
                "attackalert: ERROR: could not block host {addr} via {} \"{cmd}\": {}",
                a.action.as_str(),
                a.error.as_deref().unwrap_or("failed")
            ),
        );
    }
    let line = match a.action {
        ActionKind::HostsDeny => {
            format!("attackalert: Host {addr} has been blocked via wrappers with string: \"{cmd}\"")
        }
        ActionKind::KillRoute | ActionKind::BlackholeRoute => format!(
            "attackalert: Host {addr} has been blocked via dropped route using command: \"{cmd}\""
        ),
        ActionKind::KillRunCmd => {
            format!("attackalert: External command run for host: {addr} using command: \"{cmd}\"")
        }
        ActionKind::Nftables => {
            format!("attackalert: Host {addr} has been blocked via nftables set: \"{cmd}\"")
        }
    };
    (true, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.conf");
        std::fs::write(&p, text).unwrap();
        Config::load(&p).unwrap_or_else(|e| panic!("{e}"))
    }

    const S: Subject = Subject {
        addr: IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        port: 22,
        protocol: Protocol::Tcp,
        prefix6: None,
        timeout: None,
    };
    const ALL: Backends = Backends {
        nft: true,
        route: true,
    };

    #[test]
    fn plan_order_matches_portsentry() {
        let c = cfg(
            "KILL_HOSTS_DENY=\"ALL: $TARGET$\"\nKILL_ROUTE=\"/bin/true $TARGET$\"\n\
                     KILL_RUN_CMD=\"/bin/true $TARGET$\"\n",
        );
        assert_eq!(
            block_plan(&c, ALL, &S, false),
            vec![
                Action::Nft(Op::Add),
                Action::Route(Op::Add),
                Action::Command(Command::KillRoute),
                Action::HostsDeny(Op::Add, "ALL: [2001:db8::1]".into(), false),
                Action::Command(Command::KillRunCmd),
            ]
        );
        let c = cfg("KILL_RUN_CMD=\"/bin/true $TARGET$\"\nKILL_RUN_CMD_FIRST=\"1\"\n");
        assert_eq!(
            block_plan(&c, ALL, &S, true),
            vec![Action::Command(Command::KillRunCmd), Action::Route(Op::Add)]
        );
    }

    #[test]
    fn undo_only_what_was_recorded() {
        let b = BlockRecord {
            meta: Default::default(),
            addr: S.addr,
            protocol: Protocol::Tcp,
            port: 22,
            mode: sentry_proto::Mode::Stcp,
            scan: sentry_proto::ScanKind::Syn,
            since_ms: 1,
            expires_ms: None,
            nft: true,
            blackhole: false,
            hosts_deny_line: Some("ALL: x".into()),
            distinct_ports: 1,
            prefix6: None,
            hosts_deny_legacy: false,
            origin: None,
        };
        assert_eq!(
            undo_plan(&b, ALL, true),
            vec![
                Action::Nft(Op::Delete),
                Action::HostsDeny(Op::Delete, "ALL: x".into(), false)
            ]
        );
        assert_eq!(
            undo_plan(&b, ALL, false),
            vec![Action::HostsDeny(Op::Delete, "ALL: x".into(), false)]
        );
        // Recorded as not in the set (a failed restore batch): the delete is still tried.
        let not_in = BlockRecord {
            nft: false,
            ..b.clone()
        };
        assert_eq!(undo_plan(&not_in, ALL, true)[0], Action::Nft(Op::Delete));
        let mut r = b.clone();
        record_effect(&mut r, &Action::Nft(Op::Add), false);
        record_effect(&mut r, &Action::Route(Op::Add), true);
        assert!(!r.nft && r.blackhole);
    }

    #[test]
    fn a_closed_backend_is_a_recorded_error() {
        let c = cfg("");
        let mut x = Executor::new(None, None, Arc::new(Logger::new(true, "test")));
        let a = x.run(&c, &Action::Nft(Op::Add), &S);
        assert_eq!(a.status, ActionStatus::Error);
        assert_eq!(a.error.as_deref(), Some("nftables backend not open"));
        let a = x.run(&c, &Action::Command(Command::KillRoute), &S);
        assert_eq!(a.action, ActionKind::KillRoute);
        assert!(!a.ok());
    }
}
