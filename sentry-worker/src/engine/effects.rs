//! Slow effects off the decision path (issue #21): a decision puts the nftables element
//! in, journals the block (write-ahead) and answers; the actions that may take seconds —
//! KILL_RUN_CMD, KILL_ROUTE, the hosts.deny line, and the blackhole route with them so
//! that their documented order (KILL_RUN_CMD_FIRST) holds — run in the effects worker
//! (`daemon::effects_loop`), outside the engine lock, in the order they were decided. So a
//! command that sleeps, or a deny file that is slow to rewrite, never holds another
//! decision, `sentryctl status` or the sensor's queue.
//!
//! * **Only behind a block that took effect.** Effects are deferred only once the
//!   element is in: the decision is then `blocked` whatever they do (a decision is
//!   `blocked` when any action took effect). Without the element (no nftables, or its add
//!   failed) the actions run in the decision as before, so a block whose only actions are
//!   slow still ends `failed` when all of them fail.
//! * **Audit.** When the worker is done, an `effects` record lists the deferred actions
//!   and their results, with the block's source; a failed one counts in `errors`.
//! * **Never lost.** The queue holds [`EFFECTS_QUEUE`] blocks; when it is full the
//!   decision runs its actions itself, as before the queue (slower, never lost), and says
//!   so in the log and the decision's reason. The write-ahead record already names the
//!   route and the hosts.deny line, so a restart re-applies them if the enforcer died
//!   before the worker ran; a KILL_RUN_CMD that had not run by then is not run (as a
//!   command cut off by a crash was not).
//! * **Order per address.** An unblock or expiry of an address whose effects are queued
//!   or running queues its own undo (route, hosts.deny line) behind them, so a line is
//!   never removed before it was added; the element is deleted at once.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::mpsc::SyncSender;

use policy::Config;

use super::Engine;
use crate::action::{self, Action, Executor, Subject};
use crate::audit::{ActionRecord, AuditRecord, RecordKind};
use crate::store::BlockRecord;
use crate::time::WallMs;

/// Most blocks whose effects wait at once; beyond this a decision runs them itself.
pub const EFFECTS_QUEUE: usize = 256;

/// The deferred actions of one block (or of one block's undo).
#[derive(Debug, Clone)]
pub struct Job {
    pub addr: IpAddr,
    pub subj: Subject,
    pub plan: Vec<Action>,
    /// The block as decided (its start tells it from a later block of the same address).
    pub block: BlockRecord,
    /// An unblock's undo (only audited), not a block's effects.
    pub undo: bool,
}

/// The queue the engine fills and the worker empties.
#[derive(Debug)]
pub struct Queue {
    jobs: VecDeque<Box<Job>>,
    running: Option<IpAddr>,
    /// Wakes the worker (a one-slot channel: a pending wake-up is enough).
    doorbell: SyncSender<()>,
    /// Blocks whose actions ran in the decision because the queue was full.
    pub overflows: u64,
}

impl Queue {
    fn busy_with(&self, addr: IpAddr) -> bool {
        self.running == Some(addr) || self.jobs.iter().any(|j| j.addr == addr)
    }

    /// Queue `job`; a block's effects are refused when the queue is full (an undo never
    /// is: there is at most one per block, and it must follow its block's effects).
    fn push(&mut self, job: Box<Job>) -> Result<(), Box<Job>> {
        if !job.undo && self.jobs.len() >= EFFECTS_QUEUE {
            self.overflows += 1;
            return Err(job);
        }
        self.jobs.push_back(job);
        let _ = self.doorbell.try_send(());
        Ok(())
    }
}

/// Run a job's actions, in order (the worker calls this without the engine lock).
pub fn run(exec: &mut Executor, cfg: &Config, job: &Job) -> Vec<ActionRecord> {
    job.plan
        .iter()
        .map(|a| exec.run(cfg, a, &job.subj))
        .collect()
}

impl Engine {
    /// Defer slow effects to a worker woken through `doorbell` (the daemon's); without
    /// this every action runs in the decision.
    pub fn enable_effects(&mut self, doorbell: SyncSender<()>) {
        self.effects = Some(Queue {
            jobs: VecDeque::new(),
            running: None,
            doorbell,
            overflows: 0,
        });
    }

    /// Effects of `addr` are queued or running.
    pub(super) fn effects_busy(&self, addr: IpAddr) -> bool {
        self.effects.as_ref().is_some_and(|q| q.busy_with(addr))
    }

    /// Queue a block's effects: `Err` gives them back when they must run now (no queue,
    /// or it is full: said in the log).
    pub(super) fn defer_effects(&mut self, job: Box<Job>) -> Result<(), Box<Job>> {
        let Some(q) = self.effects.as_mut() else {
            return Err(job);
        };
        let r = q.push(job);
        if r.is_err() && q.overflows.is_power_of_two() {
            self.log.warn(&format!(
                "adminalert: effects queue full ({EFFECTS_QUEUE} blocks waiting for KILL_* / hosts.deny): this block runs them in the decision ({} so far)",
                q.overflows
            ));
        }
        r
    }

    /// Queue an unblock's undo behind the effects of the same address.
    pub(super) fn defer_undo(&mut self, job: Box<Job>) {
        if let Some(q) = self.effects.as_mut() {
            let _ = q.push(job);
        }
    }

    /// The next job for the worker (it is "running" until [`Engine::finish_effects`]).
    pub fn take_effects(&mut self) -> Option<Job> {
        let q = self.effects.as_mut()?;
        let job = q.jobs.pop_front()?;
        q.running = Some(job.addr);
        Some(*job)
    }

    /// Blocks whose effects wait (status).
    pub fn effects_waiting(&self) -> usize {
        self.effects
            .as_ref()
            .map_or(0, |q| q.jobs.len() + usize::from(q.running.is_some()))
    }

    /// The worker is done with `job`: record what took effect in the block (when it still
    /// stands), persist it if that differs from the write-ahead record, and audit.
    pub fn finish_effects(&mut self, job: Job, actions: Vec<ActionRecord>, now: WallMs) {
        if let Some(q) = self.effects.as_mut() {
            q.running = None;
        }
        for a in &actions {
            self.log_action(job.addr, a);
        }
        let failed = actions.iter().filter(|a| !a.ok()).count();
        self.count_errors(crate::control::metrics::ErrorKind::Action, failed as u64);
        let mut reason = if failed == 0 {
            format!("{} actions after the decision took effect", actions.len())
        } else {
            format!(
                "{failed} of {} actions after the decision failed",
                actions.len()
            )
        };
        if job.undo {
            reason = format!("{reason} (undo of a lifted block)");
        } else {
            let same = self
                .blocks
                .get(&job.addr)
                .filter(|b| b.since_ms == job.block.since_ms)
                .cloned();
            match same {
                Some(before) => {
                    let mut b = before.clone();
                    for (act, a) in job.plan.iter().zip(&actions) {
                        match act {
                            Action::Route(_) => b.blackhole = false,
                            Action::HostsDeny(..) => b.hosts_deny_line = None,
                            _ => {}
                        }
                        action::record_effect(&mut b, act, a.ok());
                    }
                    if b != before {
                        self.blocks.insert(b.clone());
                        if let Err(e) = self.store.put(&b, &self.blocks) {
                            self.persist_error(&format!("block of {}", job.addr), &e);
                        }
                    }
                }
                None => reason = format!("{reason}; the block was lifted meanwhile"),
            }
        }
        let mut rec = AuditRecord::event(now, RecordKind::Effects, reason, None);
        rec.set_block(&job.block);
        rec.actions = actions;
        self.write_audit(&rec);
    }
}
