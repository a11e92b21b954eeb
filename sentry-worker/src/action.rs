//! The executor: typed actions in, typed outcomes ([`ActionRecord`]) out. The judge
//! ([`crate::judge`]) decides *whether* to block; [`block_plan`] says *which* actions, in
//! which order (pure, tested here); [`Executor`] asks the root parent for each
//! ([`crate::privsep`]), which checks it against its own floor and runs it, and records
//! what each did.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use policy::{CommandTemplate, Config, Vars};
use sentry_enforcer::kernel::netlink::{DumpElem, SetElem};
use sentry_privsep::{Outcome, Request, SetName, Verb};
use sentry_proto::Protocol;

use crate::audit::{ActionKind, ActionRecord, ActionStatus, Logger};
use crate::error::EnforcerError;
use crate::privsep::{self, Failure, Link};
use crate::store::BlockRecord;
use crate::time::ms_since;

pub use sentry_enforcer::table::{SET_V4, SET_V6, SET_V6NET};

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

/// The backends the parent has open (its Hello), and the channel to it.
#[derive(Debug, Clone)]
pub struct Executor {
    link: Option<Arc<Link>>,
    backends: Backends,
    /// The last never-block refusal of the parent's floor (its own gateways, addresses,
    /// ignore list, ...), for the engine to record the decision as never_block.
    floor: std::cell::Cell<Option<sentry_privsep::Refusal>>,
    /// For the deny file's notes about lines it kept.
    log: Arc<Logger>,
}

/// What a failed request says in an action record.
fn failure(f: Failure) -> EnforcerError {
    EnforcerError::Parent(f.to_string())
}

impl Executor {
    /// `link`: the parent's channel (`None`: no backend at all, as in unit tests).
    pub fn new(link: Option<Arc<Link>>, backends: Backends, log: Arc<Logger>) -> Self {
        let backends = match link {
            Some(_) => backends,
            None => Backends {
                nft: false,
                route: false,
            },
        };
        Self {
            link,
            backends,
            floor: std::cell::Cell::new(None),
            log,
        }
    }

    /// The never-block refusal the parent's floor gave since the last call, if any.
    pub fn take_floor_refusal(&self) -> Option<sentry_privsep::Refusal> {
        self.floor.take()
    }

    /// The same channel, for another thread's executor (the effects worker's `fx`).
    pub fn with_link(&self, link: Arc<Link>) -> Self {
        Self {
            link: Some(link),
            ..self.clone()
        }
    }

    pub fn backends(&self) -> Backends {
        self.backends
    }

    /// The same channel with fewer backends (one the parent could not bring up).
    pub fn with_backends(self, backends: Backends) -> Self {
        Self { backends, ..self }
    }

    /// The parent's channel, for the daemon's own requests (detection chain, NFLOG).
    pub fn parent(&self) -> Option<&Arc<Link>> {
        self.link.as_ref()
    }

    fn link(&self) -> Result<&Link, EnforcerError> {
        self.link
            .as_deref()
            .ok_or(EnforcerError::BackendClosed("root parent"))
    }

    /// One request that must succeed.
    fn ask(&self, items: &[Request]) -> Result<sentry_privsep::Reply, EnforcerError> {
        use sentry_privsep::Refusal as R;
        self.link()?.ask(items).map_err(|f| {
            if let Failure::Refused(
                r @ (R::Ignored
                | R::Loopback
                | R::OwnAddress
                | R::LinkLocal
                | R::Multicast
                | R::Broadcast
                | R::Gateway
                | R::Reserved),
            ) = f
            {
                self.floor.set(Some(r));
            }
            failure(f)
        })
    }

    /// Run one action for `s`. Adding an element uses the block's duration
    /// ([`Subject::timeout`]) as its kernel timeout, so the element cannot outlive its
    /// block while the enforcer is down.
    pub fn run(&mut self, cfg: &Config, action: &Action, s: &Subject) -> ActionRecord {
        let t = Instant::now();
        match action {
            Action::Nft(op) => {
                let verb = if *op == Op::Add {
                    Verb::NftAdd
                } else {
                    Verb::NftDel
                };
                let timeout = if *op == Op::Add { s.timeout } else { None };
                let r = self.ask(&[privsep::subject(verb, s.addr, s.prefix6, timeout)]);
                ActionRecord::outcome(
                    ActionKind::Nftables,
                    Some(nft_target(cfg, s.addr, s.prefix6)),
                    r,
                    ms_since(t),
                )
            }
            Action::Route(op) => {
                let verb = if *op == Op::Add {
                    Verb::RouteAdd
                } else {
                    Verb::RouteDel
                };
                let r = self.ask(&[privsep::subject(verb, s.addr, s.prefix6, None)]);
                ActionRecord::outcome(
                    ActionKind::BlackholeRoute,
                    Some(format!("blackhole {}", s.target())),
                    r,
                    ms_since(t),
                )
            }
            Action::HostsDeny(op, line, legacy) => {
                let r = self.deny(&[(s.addr, s.prefix6, s.port, s.protocol, *legacy)], *op);
                ActionRecord::outcome(ActionKind::HostsDeny, Some(line.clone()), r, ms_since(t))
            }
            Action::Command(c) => {
                let (kind, tpl, verb) = match c {
                    Command::KillRoute => (
                        ActionKind::KillRoute,
                        cfg.kill_route.as_ref(),
                        Verb::KillRoute,
                    ),
                    Command::KillRunCmd => (
                        ActionKind::KillRunCmd,
                        cfg.kill_run_cmd.as_ref(),
                        Verb::KillRunCmd,
                    ),
                };
                match tpl {
                    Some(tpl) => self.command(kind, tpl, verb, s),
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

    /// Add or delete deny-file lines (rendered by the parent from its own template).
    fn deny(
        &self,
        items: &[(IpAddr, Option<u8>, u16, Protocol, bool)],
        op: Op,
    ) -> Result<(), EnforcerError> {
        let verb = if op == Op::Add {
            Verb::DenyAdd
        } else {
            Verb::DenyDel
        };
        let reqs: Vec<Request> = items
            .iter()
            .map(|(addr, prefix6, port, proto, legacy)| {
                let mut r = privsep::subject(verb, *addr, *prefix6, None);
                r.port = *port;
                r.proto = proto_of(*proto);
                r.flag = u8::from(*legacy);
                r
            })
            .collect();
        let rep = self.ask(&reqs)?;
        if !rep.text.is_empty() {
            self.log
                .warn(&format!("adminalert: hosts.deny: {}", rep.text));
        }
        Ok(())
    }

    /// A kill command, run by the parent's command helper; the record's argv is rendered
    /// here from the same template the helper renders.
    fn command(
        &self,
        kind: ActionKind,
        tpl: &CommandTemplate,
        verb: Verb,
        s: &Subject,
    ) -> ActionRecord {
        let t = Instant::now();
        let target = s.target();
        let argv = tpl.render(&Vars {
            target: &target,
            port: s.port,
            mode: s.protocol.as_str(),
        });
        let mut req = privsep::subject(verb, s.addr, s.prefix6, None);
        req.port = s.port;
        req.proto = proto_of(s.protocol);
        let (ok, exit_code, error) = match self.ask(&[req]) {
            Ok(rep) => command_outcome(&rep),
            Err(e) => (false, None, Some(e.to_string())),
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
            ms: ms_since(t),
        }
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
        if elems.is_empty() {
            return Ok(());
        }
        let verb = if op == Op::Add {
            Verb::NftAdd
        } else {
            Verb::NftDel
        };
        let prefix = nets.then_some(cfg.block_prefix6);
        let reqs: Vec<Request> = elems
            .iter()
            .map(|e| privsep::subject(verb, e.addr, prefix, e.timeout))
            .collect();
        let rep = self.ask(&reqs)?;
        match rep.b {
            0 => Ok(()),
            n => Err(EnforcerError::Parent(format!(
                "the root parent's floor refused {n} of {} elements",
                elems.len()
            ))),
        }
    }

    /// Rebuild the table with these elements, in one transaction (the parent's `nft -f -`).
    pub fn build(
        &self,
        hosts: &[SetElem],
        nets: &[SetElem],
        prefix6: u8,
    ) -> Result<u64, EnforcerError> {
        let mut reqs: Vec<Request> = hosts
            .iter()
            .map(|e| privsep::subject(Verb::Build, e.addr, None, e.timeout))
            .chain(
                nets.iter()
                    .map(|e| privsep::subject(Verb::Build, e.addr, Some(prefix6), e.timeout)),
            )
            .collect();
        if reqs.is_empty() {
            reqs.push(Request::new(Verb::Build, 0));
        }
        Ok(self.ask(&reqs)?.b)
    }

    /// Every address in the three sets of the table, read back from the kernel (at most
    /// `limit` per set: a larger set is an error, not unbounded memory).
    pub fn nft_elements(
        &mut self,
        _cfg: &Config,
        limit: usize,
    ) -> Result<std::collections::HashSet<IpAddr>, EnforcerError> {
        Ok(self
            .dump(SetName::Blocks, limit.saturating_mul(3))?
            .into_iter()
            .map(|e| e.addr)
            .collect())
    }

    /// Every element of `map` (the kernel's first-hit maps), at most `limit`.
    pub fn nft_map_elements(
        &mut self,
        _cfg: &Config,
        map: &str,
        limit: usize,
    ) -> Result<Vec<DumpElem>, EnforcerError> {
        let which = if map == sentry_enforcer::table::HIT_V6 {
            SetName::Hit6
        } else {
            SetName::Hit4
        };
        self.dump(which, limit)
    }

    fn dump(&self, which: SetName, limit: usize) -> Result<Vec<DumpElem>, EnforcerError> {
        let mut req = Request::new(Verb::Dump, 0);
        req.flag = which as u8;
        req.extra = u64::try_from(limit).unwrap_or(u64::MAX);
        let (reps, _) = self.link()?.call(&[req], None).map_err(failure)?;
        let mut out = Vec::with_capacity(reps.len());
        for r in reps {
            let r = privsep::check(r).map_err(failure)?;
            if r.kind != sentry_privsep::ReplyKind::Elem {
                break;
            }
            out.extend(r.elems.iter().map(|e| DumpElem {
                addr: e.addr,
                data: (which != SetName::Blocks).then(|| e.data.to_vec()),
                expires: (e.expires_ms > 0).then(|| std::time::Duration::from_millis(e.expires_ms)),
            }));
        }
        Ok(out)
    }

    /// Delete `addr` from the first-hit map of its family; not there is fine.
    pub fn nft_forget(
        &mut self,
        _cfg: &Config,
        _map_v4: &str,
        _map_v6: &str,
        addr: IpAddr,
    ) -> Result<(), EnforcerError> {
        let mut req = Request::for_addr(Verb::Forget, 0, addr);
        req.flag = if addr.is_ipv4() {
            SetName::Hit4
        } else {
            SetName::Hit6
        } as u8;
        self.ask(&[req]).map(drop)
    }

    /// Add or remove many deny-file lines (address, line, legacy) with one read and one
    /// write in the parent (restore, mass expiry, reload: per-line edits would cost O(n)
    /// each). One record stands for all of them.
    pub fn hosts_deny_batch(
        &self,
        lines: &[(IpAddr, String, bool)],
        op: Op,
    ) -> Option<ActionRecord> {
        if lines.is_empty() {
            return None;
        }
        let t = Instant::now();
        let items: Vec<_> = lines
            .iter()
            .map(|(a, line, legacy)| (*a, net_of(a, line), 0, Protocol::Tcp, *legacy))
            .collect();
        let r = self.deny(&items, op);
        Some(ActionRecord::outcome(
            ActionKind::HostsDeny,
            None,
            r,
            ms_since(t),
        ))
    }
}

/// The IPv6 prefix a recorded deny line names (`[net]/len`), so the parent renders the
/// same line again.
fn net_of(addr: &IpAddr, line: &str) -> Option<u8> {
    if addr.is_ipv4() {
        return None;
    }
    let after = line.split_once(&format!("[{addr}]/"))?.1;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|l| *l <= 128)
}

fn proto_of(p: Protocol) -> sentry_privsep::Proto {
    match p {
        Protocol::Tcp => sentry_privsep::Proto::Tcp,
        Protocol::Udp => sentry_privsep::Proto::Udp,
        Protocol::Sctp => sentry_privsep::Proto::Sctp,
        Protocol::Ip => sentry_privsep::Proto::Ip,
    }
}

/// (succeeded, exit code, error) of a kill command's reply.
fn command_outcome(rep: &sentry_privsep::Reply) -> (bool, Option<i32>, Option<String>) {
    let code = i32::try_from(rep.a).ok();
    let text = (!rep.text.is_empty()).then(|| rep.text.clone());
    match Outcome::from_u8(rep.code) {
        Some(Outcome::Exited) if rep.a == 0 => (true, Some(0), None),
        Some(Outcome::Exited) => (
            false,
            code,
            Some(format!("exited with status {}{}", rep.a, colon(text))),
        ),
        Some(Outcome::Signaled) => (
            false,
            None,
            Some(format!("killed by signal {}{}", rep.a, colon(text))),
        ),
        Some(Outcome::TimedOut) => (false, None, Some(format!("timed out{}", colon(text)))),
        _ => (false, None, Some(format!("not started{}", colon(text)))),
    }
}

fn colon(t: Option<String>) -> String {
    t.map(|t| format!(": {t}")).unwrap_or_default()
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
        let mut x = Executor::new(
            None,
            Backends {
                nft: false,
                route: false,
            },
            Arc::new(Logger::new(true, "test")),
        );
        let a = x.run(&c, &Action::Nft(Op::Add), &S);
        assert_eq!(a.status, ActionStatus::Error);
        assert_eq!(a.error.as_deref(), Some("root parent backend not open"));
        let a = x.run(&c, &Action::Command(Command::KillRoute), &S);
        assert_eq!(a.action, ActionKind::KillRoute);
        assert!(!a.ok());
    }
}
