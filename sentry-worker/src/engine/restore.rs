//! Start-up: rebuild the nftables table with the surviving blocks, read its sets back
//! from the kernel and add what is missing, then re-apply what the state directory
//! records (routes, deny-file lines, KILL_ROUTE after a reboot), lifting blocks that
//! expired while stopped or that the ignore list / never-block set now covers.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Instant;

use policy::{Config, IgnoreList, NeverBlock};

use super::Engine;
use crate::action::{self, Action, Command, Op, Subject};
use crate::audit::{ActionKind, ActionRecord, AuditRecord, RecordKind, RestoreCounts};
use crate::control::metrics::ErrorKind;
use crate::error::EnforcerError;
use crate::store::BlockRecord;
use crate::time::{ms_since, WallMs};
use sentry_enforcer::kernel::netlink::SetElem;

/// Whether a persisted block is still due at `now` under the current lists (for a network
/// block: nothing in the network is never blocked or ignored).
fn survives(b: &BlockRecord, never: &NeverBlock, ignore: &IgnoreList, now: WallMs) -> bool {
    let covered = match (b.addr, b.prefix6) {
        (IpAddr::V6(a), Some(len)) => {
            never.check_net6(a, len).is_some() || ignore.overlaps_net6(a, len)
        }
        _ => never.check(b.addr).is_some() || ignore.contains(b.addr),
    };
    b.expires_ms.is_none_or(|e| e > now.0) && !covered
}

/// Single-address elements and IPv6 network elements, for their two sets.
fn split_elems<'a>(
    blocks: impl Iterator<Item = &'a BlockRecord>,
    now: WallMs,
) -> (Vec<SetElem>, Vec<SetElem>) {
    let (nets, hosts): (Vec<&BlockRecord>, Vec<&BlockRecord>) =
        blocks.partition(|b| b.prefix6.is_some());
    (
        hosts.into_iter().map(|b| elem(b, now)).collect(),
        nets.into_iter().map(|b| elem(b, now)).collect(),
    )
}

fn elem(b: &BlockRecord, now: WallMs) -> SetElem {
    SetElem {
        addr: b.addr,
        timeout: b.expires_ms.map(|e| now.until(WallMs(e))),
    }
}

/// Delete and recreate the table, with the persisted blocks that survive already in it
/// (one transaction: a restart never opens a window in which they pass).
pub(super) fn rebuild_table(
    exec: &crate::action::Executor,
    cfg: &Config,
    blocks: &HashMap<IpAddr, BlockRecord>,
    never: &NeverBlock,
    ignore: &IgnoreList,
    now: WallMs,
) -> Result<(), EnforcerError> {
    // Every surviving block, also those whose element had failed before: the netlink
    // re-add after start covers only what the read-back finds missing.
    let (hosts, nets) = split_elems(
        blocks.values().filter(|b| survives(b, never, ignore, now)),
        now,
    );
    exec.build(&hosts, &nets, cfg.block_prefix6).map(drop)
}

impl Engine {
    /// The table was deleted, flushed or changed by another process (`nft flush ruleset`,
    /// `systemctl restart nftables`, ...): rebuild it with every active block, in one
    /// transaction, and audit it. `by`: the netlink port id of the process that changed
    /// it, when known. Blocks whose element had failed before are put in too.
    pub fn rebuild_table(&mut self, by: Option<u32>, now: WallMs) -> Result<usize, EnforcerError> {
        let (hosts, nets) = split_elems(
            self.blocks
                .values()
                .filter(|b| survives(b, &self.never, &self.ignore, now)),
            now,
        );
        let count = hosts.len() + nets.len();
        let t = Instant::now();
        let who = by.map_or_else(
            || "changes were lost (notification queue overrun)".to_string(),
            |p| format!("changed by netlink port {p}"),
        );
        let r = self
            .exec
            .build(&hosts, &nets, self.cfg.block_prefix6)
            .map(drop);
        let (reason, n) = match &r {
            Ok(()) => {
                self.blocks.set_all_in_nft();
                if let Err(e) = self.store.compact(&self.blocks) {
                    self.persist_error("state", &e);
                }
                (
                    format!(
                        "table inet {} {who}; rebuilt with {} blocks in {:.1} ms",
                        self.cfg.nft_table,
                        count,
                        ms_since(t)
                    ),
                    count,
                )
            }
            Err(e) => {
                self.count_errors(ErrorKind::Netlink, 1);
                (
                    format!(
                        "table inet {} {who}; rebuild failed: {e}",
                        self.cfg.nft_table
                    ),
                    0,
                )
            }
        };
        let rec = AuditRecord::event(now, RecordKind::Restored, reason.clone(), None);
        self.write_audit(&rec);
        self.log.notice(&format!("adminalert: {reason}"));
        r.map(|()| n)
    }

    /// On start: expire stale blocks, lift blocks the current ignore list / never-block set
    /// now covers, and re-apply the rest. The nftables elements were preloaded by the
    /// table build; here they are read back from the kernel, the missing ones added again
    /// (chunked), and each block records what the kernel really holds. After a reboot
    /// (another boot id than the one recorded) KILL_ROUTE is re-run for every block, once
    /// per boot. One summary record carries the counts. `started`: when the start-up
    /// (table build included) began, for the time in the summary.
    pub(super) fn restore(
        &mut self,
        persisted: HashMap<IpAddr, BlockRecord>,
        now: WallMs,
        started: Instant,
    ) {
        // All of them first, so that a compaction during the loop never loses any.
        self.blocks = super::blocks::Blocks::from_map(persisted);
        let keep = self.lift_stale(now);
        let backends = self.exec.backends();
        let mut counts = RestoreCounts {
            restored: keep.len() as u64,
            ..RestoreCounts::default()
        };
        let nft = if backends.nft {
            Some(self.verify_elements(&keep, now, &mut counts))
        } else {
            None
        };
        let rerun = self.kill_route_rerun(!keep.is_empty());
        // hosts.deny: one read and one append for all restored lines.
        let deny_add = self.deny_batch(&keep, Op::Add);
        let how = Reapply {
            nft: nft.as_ref(),
            rerun,
            deny_add: deny_add.as_ref(),
            route: backends.route,
        };
        for addr in keep {
            self.reapply(addr, &how, &mut counts, now);
        }
        if let Err(e) = self.store.compact(&self.blocks) {
            self.persist_error("state", &e);
        }
        self.rewrite_blocked_file();
        counts.ms = (ms_since(started) * 10.0).round() / 10.0;
        self.restore_summary(counts, rerun, now);
    }

    /// End the blocks that expired while stopped or that the ignore list or the
    /// never-block set now covers; the others' addresses, sorted.
    fn lift_stale(&mut self, now: WallMs) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = self.blocks.keys().copied().collect();
        addrs.sort();
        let mut keep = Vec::new();
        let mut lift = Vec::new();
        for addr in addrs {
            let Some(b) = self.blocks.get(&addr) else {
                continue;
            };
            let verdict = if b.expires_ms.is_some_and(|e| e <= now.0) {
                Some((
                    RecordKind::Expired,
                    "BLOCK_TIMEOUT passed while stopped".to_string(),
                ))
            } else {
                self.now_covered(b).map(|why| (RecordKind::Unblocked, why))
            };
            match verdict {
                Some(v) => lift.push((addr, v)),
                None => keep.push(addr),
            }
        }
        let lift_addrs: Vec<IpAddr> = lift.iter().map(|(a, _)| *a).collect();
        let deny = self.deny_batch(&lift_addrs, Op::Delete);
        for (addr, (kind, why)) in lift {
            // The nft table was just rebuilt without it: no element to delete.
            self.end_block(addr, now, (kind, &why), None, false, deny.as_ref());
            if kind == RecordKind::Expired {
                self.counters.expired += 1;
            } else {
                self.counters.unblocked += 1;
            }
        }
        keep
    }

    /// Re-apply one kept block: record what the kernel holds, re-add its route, re-run
    /// KILL_ROUTE after a reboot, note its hosts.deny line, and audit it.
    fn reapply(
        &mut self,
        addr: IpAddr,
        how: &Reapply<'_>,
        counts: &mut RestoreCounts,
        now: WallMs,
    ) {
        let (nft, rerun, deny_add) = (how.nft, how.rerun, how.deny_add);
        let Some(mut b) = self.blocks.get(&addr).cloned() else {
            return;
        };
        let mut actions = Vec::new();
        if let Some(v) = &nft {
            b.nft = v.present(addr);
            actions.push(ActionRecord::outcome(
                ActionKind::Nftables,
                Some(action::nft_target(&self.cfg, addr, b.prefix6)),
                if b.nft { Ok(()) } else { Err(v.why_missing()) },
                0.0,
            ));
        }
        let subj = Subject {
            addr,
            port: b.port,
            protocol: b.protocol,
            prefix6: b.prefix6,
            // Only the route and KILL_ROUTE run here; the element came with the table.
            timeout: None,
        };
        if how.route {
            let a = self.exec.run(&self.cfg, &Action::Route(Op::Add), &subj);
            b.blackhole = a.ok();
            actions.push(a);
        }
        if rerun {
            let a = self
                .exec
                .run(&self.cfg, &Action::Command(Command::KillRoute), &subj);
            counts.kill_route_rerun += 1;
            if !a.ok() {
                counts.kill_route_failed += 1;
            }
            actions.push(a);
        }
        if let (Some(line), Some(done)) = (b.hosts_deny_line.clone(), deny_add) {
            let mut a = done.clone();
            a.target = Some(line);
            actions.push(a);
        }
        let failed = actions.iter().filter(|a| !a.ok()).count();
        self.counters.restored += 1;
        self.count_errors(ErrorKind::Action, failed as u64);
        let mut rec = AuditRecord::event(
            now,
            RecordKind::Restored,
            match (failed, rerun) {
                (0, false) => "re-applied after restart".to_string(),
                (0, true) => "re-applied after reboot; KILL_ROUTE re-run".to_string(),
                (n, _) => format!("re-applied after restart; {n} actions failed"),
            },
            None,
        );
        rec.set_block(&b);
        rec.expires_ms = b.expires_ms;
        rec.actions = actions;
        self.blocks.insert(b);
        self.write_audit(&rec);
    }

    /// One summary record (and log line) with the counts, when anything was restored or
    /// found missing.
    fn restore_summary(&mut self, counts: RestoreCounts, rerun: bool, now: WallMs) {
        if counts.restored > 0 || counts.missing > 0 {
            let mut reason = format!(
                "restored {} blocks from {} in {:.1} ms: {} verified in the kernel's sets, {} re-added, {} missing after retry",
                counts.restored,
                self.opts.state_dir.display(),
                counts.ms,
                counts.verified,
                counts.readded,
                counts.missing
            );
            if rerun {
                reason.push_str(&format!(
                    "; KILL_ROUTE re-run for {} (the kernel booted since the last start), {} failed",
                    counts.kill_route_rerun, counts.kill_route_failed
                ));
            }
            if counts.missing > 0 || counts.kill_route_failed > 0 {
                self.log.err(&format!("adminalert: ERROR: {reason}"));
            } else {
                self.log.notice(&format!("adminalert: {reason}"));
            }
            let mut rec = AuditRecord::event(now, RecordKind::Restored, reason, None);
            rec.summary = Some(true);
            rec.restore = Some(counts);
            self.write_audit(&rec);
        }
    }

    /// Read the sets back, add what is missing (in chunks), read them back again.
    fn verify_elements(
        &mut self,
        keep: &[IpAddr],
        now: WallMs,
        counts: &mut RestoreCounts,
    ) -> Verified {
        // Room for every restored block and anything a rule added meanwhile; more is a
        // set this enforcer did not make, refused rather than read into memory.
        let limit = keep.len() + self.cfg.max_blocks as usize + 1024;
        let first = self.exec.nft_elements(&self.cfg, limit);
        let missing: Vec<IpAddr> = match &first {
            Ok(set) => keep.iter().filter(|a| !set.contains(a)).copied().collect(),
            Err(e) => {
                self.error(
                    ErrorKind::Netlink,
                    format!(
                    "cannot read the nftables sets back ({e}); adding every restored element again"
                ),
                );
                keep.to_vec()
            }
        };
        counts.verified = (keep.len() - missing.len()) as u64;
        counts.readded = missing.len() as u64;
        if missing.is_empty() {
            return Verified {
                kernel: first.ok(),
                missing: HashSet::new(),
                error: None,
            };
        }
        let (hosts, nets) = split_elems(missing.iter().filter_map(|a| self.blocks.get(a)), now);
        let added = self
            .exec
            .nft_batch(&self.cfg, &hosts, Op::Add, false)
            .and(self.exec.nft_batch(&self.cfg, &nets, Op::Add, true));
        let mut error = added.as_ref().err().map(ToString::to_string);
        let v = match self.exec.nft_elements(&self.cfg, limit) {
            Ok(set) => {
                let still: HashSet<IpAddr> =
                    missing.into_iter().filter(|a| !set.contains(a)).collect();
                Verified {
                    kernel: Some(set),
                    missing: still,
                    error,
                }
            }
            Err(e) => {
                // Not verifiable: only a re-add that fully succeeded counts as present.
                self.count_errors(ErrorKind::Netlink, 1);
                let e = format!("cannot read the sets back: {e}");
                let still = if added.is_ok() {
                    HashSet::new()
                } else {
                    missing.into_iter().collect()
                };
                error.get_or_insert(e);
                Verified {
                    kernel: None,
                    missing: still,
                    error,
                }
            }
        };
        counts.missing = v.missing.len() as u64;
        v
    }

    /// Whether KILL_ROUTE must be re-run for the restored blocks: configured, and the
    /// kernel's boot id is not the one recorded at the last restore (a reboot lost what
    /// the commands did). The current boot id is recorded, durably, before any command
    /// runs: an enforcer killed in the middle does not run them a second time in the
    /// same boot (a duplicate `iptables -I` rule) — at most once per boot.
    fn kill_route_rerun(&mut self, any: bool) -> bool {
        let given = self.opts.boot_id.clone();
        let read = || {
            std::fs::read_to_string(&self.opts.boot_id_path)
                .ok()
                .and_then(|s| crate::store::normalize_boot_id(&s))
        };
        let current = match given.or_else(read) {
            Some(id) => id,
            None => {
                self.error(
                    ErrorKind::Other,
                    format!(
                    "cannot read the boot id from {}; KILL_ROUTE is not re-run for restored blocks",
                    self.opts.boot_id_path.display()
                ),
                );
                return false;
            }
        };
        let rerun = any
            && self.cfg.kill_route.is_some()
            && self.store.boot_id().is_some_and(|r| r != current);
        if self.store.boot_id() != Some(current.as_str()) {
            self.store.set_boot_id(current);
            if let Err(e) = self.store.compact(&self.blocks) {
                // Not recorded: running now could repeat at the next start in this boot.
                self.persist_error("state (boot id)", &e);
                return false;
            }
        }
        rerun
    }
}

/// How every kept block is re-applied at start, decided once for all of them.
struct Reapply<'a> {
    /// The kernel's sets as read back (with the nft backend).
    nft: Option<&'a Verified>,
    /// KILL_ROUTE is re-run (the kernel booted since the last start).
    rerun: bool,
    /// The outcome of the one hosts.deny append for all restored lines.
    deny_add: Option<&'a ActionRecord>,
    /// The blackhole-route backend is open.
    route: bool,
}

/// What the kernel holds after the read-back and the re-add.
struct Verified {
    /// The last read-back, when it succeeded.
    kernel: Option<HashSet<IpAddr>>,
    /// Restored addresses not (known to be) in the sets.
    missing: HashSet<IpAddr>,
    /// Why: the re-add's or the read-back's error.
    error: Option<String>,
}

impl Verified {
    fn present(&self, addr: IpAddr) -> bool {
        !self.missing.contains(&addr)
    }

    fn why_missing(&self) -> String {
        let base = if self.kernel.is_some() {
            "not in the kernel's set after the table build and a re-add"
        } else {
            "not verified in the kernel's set"
        };
        match &self.error {
            Some(e) => format!("{base}: {e}"),
            None => base.to_string(),
        }
    }
}
