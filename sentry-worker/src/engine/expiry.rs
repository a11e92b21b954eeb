//! The end of a block: `sentryctl unblock`, BLOCK_TIMEOUT expiry, and lifts when the
//! ignore list now covers an address. Each undoes exactly what the block's record says
//! was done (commands have no inverse) and writes one audit record.

use std::net::IpAddr;

use super::Engine;
use crate::action::{self, Op, Subject};
use crate::audit::{ActionRecord, AuditLog, AuditRecord, Peer, RecordKind};
use crate::control::metrics::ErrorKind;
use crate::error::EnforcerError;
use crate::store::BlockRecord;
use crate::time::WallMs;

impl Engine {
    /// The deny-file lines of all `addrs`, added or removed with one rewrite (mass
    /// expiry, reload, restore).
    pub(super) fn deny_batch(&self, addrs: &[IpAddr], op: Op) -> Option<ActionRecord> {
        let lines: Vec<(IpAddr, String, bool)> = addrs
            .iter()
            .filter_map(|a| {
                let b = self.blocks.get(a)?;
                Some((*a, b.hosts_deny_line.clone()?, b.hosts_deny_legacy))
            })
            .collect();
        self.exec.hosts_deny_batch(&lines, op)
    }

    /// End one block. `kernel_nft`: whether the nft element may still exist;
    /// `deny_done`: the deny-file line was already removed in a batch with this result.
    pub(super) fn end_block(
        &mut self,
        addr: IpAddr,
        now: WallMs,
        (kind, reason): (RecordKind, &str),
        peer: Option<Peer>,
        kernel_nft: bool,
        deny_done: Option<&ActionRecord>,
    ) -> Option<Vec<String>> {
        let b = self.blocks.remove(&addr)?;
        self.lifted.push(addr);
        // The kernel's own first-hit element would keep dropping the source.
        self.forget_kernel_hits(addr, b.prefix6);
        let subj = Subject {
            addr,
            port: b.port,
            protocol: b.protocol,
            prefix6: b.prefix6,
            timeout: None,
        };
        let (actions, later) = self.undo_actions(&b, &subj, kernel_nft, deny_done);
        let errors: Vec<String> = actions
            .iter()
            .filter_map(|a| {
                a.error
                    .as_ref()
                    .map(|e| format!("{}: {e}", a.action.as_str()))
            })
            .collect();
        if let Err(e) = self.store.del(addr, &self.blocks) {
            self.persist_error(&format!("removal of {addr}"), &e);
        }
        self.count_errors(ErrorKind::Action, errors.len() as u64);
        let mut reason = reason.to_string();
        if !later.is_empty() {
            reason.push_str("; its route / hosts.deny line are taken back after its pending effects, audited as `effects`");
            self.defer_undo(Box::new(super::effects::Job {
                addr,
                subj,
                plan: later,
                block: b.clone(),
                undo: true,
            }));
        }
        let reason = reason.as_str();
        let mut rec = AuditRecord::event(now, kind, reason.to_string(), peer);
        rec.set_block(&b);
        rec.actions = actions;
        if self.cfg.kill_route.is_some() {
            rec.reason
                .push_str("; KILL_ROUTE has no inverse and was not undone");
        }
        self.write_audit(&rec);
        self.remember(now, Some(addr), kind, reason);
        self.log.notice(&format!(
            "adminalert: Host {addr} is no longer blocked ({}: {reason})",
            kind.as_str()
        ));
        Some(errors)
    }

    /// Undo block `b`'s actions now, except those that must wait behind its pending
    /// effects: returned second, to run after them.
    fn undo_actions(
        &mut self,
        b: &BlockRecord,
        subj: &Subject,
        kernel_nft: bool,
        deny_done: Option<&ActionRecord>,
    ) -> (Vec<ActionRecord>, Vec<action::Action>) {
        let mut actions = Vec::new();
        // Effects of this block still queued or running (engine::effects): its route and
        // hosts.deny line are taken back behind them, never before they were put in.
        let busy = self.effects_busy(subj.addr);
        let mut later = Vec::new();
        for act in action::undo_plan(b, self.exec.backends(), kernel_nft) {
            if busy
                && matches!(
                    act,
                    action::Action::Route(_) | action::Action::HostsDeny(..)
                )
            {
                later.push(act);
                continue;
            }
            match (&act, deny_done) {
                (action::Action::HostsDeny(_, line, _), Some(done)) => {
                    let mut a = done.clone();
                    a.target = Some(line.clone());
                    actions.push(a);
                }
                _ => actions.push(self.exec.run(&self.cfg, &act, subj)),
            }
        }
        (actions, later)
    }

    /// `sentryctl unblock`. Returns `None` when the address was not blocked.
    /// An IPv6 address inside a blocked BLOCK_PREFIX6 network unblocks that network.
    pub fn unblock(&mut self, addr: IpAddr, peer: Peer, now: WallMs) -> Option<Vec<String>> {
        let addr = self.unblock_target(addr);
        self.unblock_exact(addr, "sentryctl unblock", peer, now)
    }

    /// The fleet bridge's unblock: lift the block on `addr` only if `origin` made it.
    /// `Err` names the block's other origin (nothing is lifted); `Ok(None)`: not blocked.
    pub fn unblock_origin(
        &mut self,
        addr: IpAddr,
        origin: &str,
        peer: Peer,
        now: WallMs,
    ) -> Result<Option<Vec<String>>, String> {
        let addr = self.unblock_target(addr);
        match self.blocks.get(&addr).map(|b| b.origin.clone()) {
            None => Ok(None),
            Some(Some(o)) if o == origin => {
                let why = format!("unblocked by control client (origin {origin})");
                Ok(self.unblock_exact(addr, &why, peer, now))
            }
            Some(other) => Err(other.unwrap_or_else(|| sentry_proto::ORIGIN_SENSOR.to_string())),
        }
    }

    /// The block an unblock of `addr` means: an IPv6 address inside a blocked
    /// BLOCK_PREFIX6 network means that network.
    fn unblock_target(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V6(a) if !self.blocks.contains_key(&addr) => {
                let len = self.cfg.block_prefix6;
                let net = IpAddr::V6(policy::mask6(a, len));
                match self.blocks.get(&net) {
                    Some(b) if b.prefix6.is_some() => net,
                    _ => addr,
                }
            }
            other => other,
        }
    }

    fn unblock_exact(
        &mut self,
        addr: IpAddr,
        why: &str,
        peer: Peer,
        now: WallMs,
    ) -> Option<Vec<String>> {
        let r = self.end_block(
            addr,
            now,
            (RecordKind::Unblocked, why),
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
    pub fn expire(&mut self, now: WallMs) -> usize {
        let due: Vec<IpAddr> = self
            .blocks
            .values()
            .filter(|b| b.expires_ms.is_some_and(|e| e <= now.0))
            .map(|b| b.addr)
            .collect();
        self.end_blocks(&due, now, (RecordKind::Expired, "BLOCK_TIMEOUT passed"));
        self.counters.expired += due.len() as u64;
        due.len()
    }

    /// End a batch of blocks for one reason, with one hosts.deny rewrite and one
    /// BLOCKED_FILE rewrite for the whole batch (mass expiry and ignore-list reloads must
    /// not rewrite the files once per block).
    fn end_blocks(&mut self, addrs: &[IpAddr], now: WallMs, why: (RecordKind, &'static str)) {
        if addrs.is_empty() {
            return;
        }
        // An address with effects still pending keeps its deny line out of the batch: it
        // is removed behind those effects (engine::effects).
        let (busy, free): (Vec<IpAddr>, Vec<IpAddr>) =
            addrs.iter().partition(|a| self.effects_busy(**a));
        let deny = self.deny_batch(&free, Op::Delete);
        for a in free {
            self.end_block(a, now, why, None, true, deny.as_ref());
        }
        for a in busy {
            self.end_block(a, now, why, None, true, None);
        }
        self.rewrite_blocked_file();
    }

    /// SIGHUP: re-read the ignore list and lift blocks on addresses it now covers.
    pub fn reload_ignore(&mut self, now: WallMs) -> Result<usize, EnforcerError> {
        // Also reopen the audit log, so that it can be rotated by renaming.
        match AuditLog::open(&self.cfg.audit_log) {
            Ok(a) => self.audit = a,
            Err(e) => {
                self.error(
                    ErrorKind::Audit,
                    format!("cannot reopen audit log (old one kept): {e}"),
                );
            }
        }
        self.ignore = self.cfg.load_ignore()?;
        let now_ignored: Vec<IpAddr> = self
            .blocks
            .values()
            .filter(|b| {
                self.now_covered(b)
                    .is_some_and(|w| w.starts_with("now on the ignore"))
            })
            .map(|b| b.addr)
            .collect();
        self.end_blocks(
            &now_ignored,
            now,
            (RecordKind::Unblocked, "now on the ignore list"),
        );
        self.counters.unblocked += now_ignored.len() as u64;
        self.log.notice(&format!(
            "adminalert: ignore list reloaded ({} entries); {} blocks lifted",
            self.ignore.len(),
            now_ignored.len()
        ));
        Ok(now_ignored.len())
    }
}
