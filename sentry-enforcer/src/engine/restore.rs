//! Start-up: rebuild the nftables table with the surviving blocks, then re-apply what
//! the state directory records (routes, deny-file lines), lifting blocks that expired
//! while stopped or that the ignore list / never-block set now covers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use policy::{Config, IgnoreList, NeverBlock};

use super::Engine;
use crate::action::{self, Action, Op, Subject};
use crate::audit::{ActionKind, ActionRecord, ActionStatus, AuditRecord, RecordKind};
use crate::error::EnforcerError;
use crate::netlink::SetElem;
use crate::store::BlockRecord;
use crate::table;
use crate::time::{ms_since, WallMs};

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
    cfg: &Config,
    blocks: &HashMap<IpAddr, BlockRecord>,
    never: &NeverBlock,
    ignore: &IgnoreList,
    now: WallMs,
) -> Result<(), EnforcerError> {
    let (hosts, nets) = split_elems(
        blocks
            .values()
            .filter(|b| b.nft && survives(b, never, ignore, now)),
        now,
    );
    table::build(cfg, &hosts, &nets)
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
        let r = table::build(&self.cfg, &hosts, &nets);
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
                self.counters.errors += 1;
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
    /// now covers, and re-apply the rest (one netlink batch for the nft elements).
    pub(super) fn restore(&mut self, persisted: HashMap<IpAddr, BlockRecord>, now: WallMs) {
        // All of them first, so that a compaction during the loop never loses any.
        self.blocks = super::blocks::Blocks::from_map(persisted);
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
        let backends = self.exec.backends();
        // nftables: one batch for all.
        let mut nft_error = None;
        if backends.nft {
            let (hosts, nets) = split_elems(keep.iter().filter_map(|a| self.blocks.get(a)), now);
            let t = Instant::now();
            for (elems, is_net) in [(&hosts, false), (&nets, true)] {
                if let Err(e) = self.exec.nft_batch(&self.cfg, elems, Op::Add, is_net) {
                    nft_error = Some(e.to_string());
                }
            }
            self.log.info(&format!(
                "adminalert: re-applied {} nftables elements in {:.3} ms",
                hosts.len() + nets.len(),
                ms_since(t)
            ));
        }
        // hosts.deny: one read and one append for all restored lines.
        let deny_add = self.deny_batch(&keep, Op::Add);
        for addr in keep {
            let Some(mut b) = self.blocks.get(&addr).cloned() else {
                continue;
            };
            let mut actions = Vec::new();
            if backends.nft {
                actions.push(ActionRecord {
                    action: ActionKind::Nftables,
                    argv: None,
                    target: Some(action::nft_target(&self.cfg, addr, b.prefix6)),
                    status: if nft_error.is_none() {
                        ActionStatus::Ok
                    } else {
                        ActionStatus::Error
                    },
                    exit_code: None,
                    error: nft_error.clone(),
                    ms: 0.0,
                });
                b.nft = nft_error.is_none();
            }
            let subj = Subject {
                addr,
                port: b.port,
                protocol: b.protocol,
                prefix6: b.prefix6,
            };
            if backends.route {
                let a = self.exec.run(&self.cfg, &Action::Route(Op::Add), &subj);
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
            let mut rec = AuditRecord::event(
                now,
                RecordKind::Restored,
                if failed == 0 {
                    "re-applied after restart".to_string()
                } else {
                    format!("re-applied after restart; {failed} actions failed")
                },
                None,
            );
            rec.source = Some(addr.to_string());
            rec.protocol = Some(b.protocol.as_str());
            rec.port = Some(b.port);
            rec.scan = Some(b.scan.as_str());
            rec.mode = Some(b.mode.as_str());
            rec.actions = actions;
            self.blocks.insert(b);
            self.write_audit(&rec);
        }
        if let Err(e) = self.store.compact(&self.blocks) {
            self.persist_error("state", &e);
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
}
