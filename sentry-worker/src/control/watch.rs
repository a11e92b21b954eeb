//! The decision stream behind `sentryctl watch`: every audit record, typed and numbered,
//! kept in a bounded ring ([`WATCH_RING`]) for clients that resume from a cursor, and
//! handed to each live client through its own bounded channel. Publishing never blocks
//! and never grows memory: a client whose channel is full is dropped (counted and logged
//! by the engine), and its thread ends the stream with a reason.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use sentry_proto::{Cursor, EvidenceInfo, WatchRecord, WATCH_RING};

use crate::audit::AuditRecord;

/// Records buffered per live client before it counts as too slow and is dropped.
pub const CLIENT_BUFFER: usize = 1024;
/// Most live clients at once (each also holds one of the control connections).
pub const MAX_CLIENTS: usize = 4;

/// What a new client gets: where its stream starts, the records it missed and can still
/// have, and its live feed.
#[derive(Debug)]
pub struct Subscription {
    /// For [`Hub::unsubscribe`] when the client's thread ends.
    pub id: u64,
    pub next: Cursor,
    pub lost: u64,
    pub run_changed: bool,
    pub backlog: Vec<WatchRecord>,
    pub rx: Receiver<WatchRecord>,
}

#[derive(Debug)]
pub struct Hub {
    run: u64,
    next: u64,
    ring: VecDeque<WatchRecord>,
    subs: Vec<(u64, SyncSender<WatchRecord>)>,
    next_id: u64,
    cap: usize,
    buffer: usize,
}

impl Hub {
    /// `run` identifies this enforcer run in cursors (its start time in µs).
    pub fn new(run: u64) -> Self {
        Self::with_limits(run, WATCH_RING, CLIENT_BUFFER)
    }

    pub fn with_limits(run: u64, cap: usize, buffer: usize) -> Self {
        Self {
            run,
            next: 0,
            ring: VecDeque::with_capacity(cap.min(WATCH_RING)),
            subs: Vec::new(),
            next_id: 0,
            cap: cap.max(1),
            buffer: buffer.max(1),
        }
    }

    pub fn run(&self) -> u64 {
        self.run
    }

    pub fn next_cursor(&self) -> Cursor {
        Cursor {
            run: self.run,
            seq: self.next,
        }
    }

    pub fn clients(&self) -> usize {
        self.subs.len()
    }

    /// Number and keep `rec`, and offer it to every live client. Returns how many
    /// clients were dropped because their buffer was full.
    pub fn publish(&mut self, rec: &AuditRecord) -> usize {
        let w = to_watch(self.next, rec);
        self.next += 1;
        if self.ring.len() >= self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back(w.clone());
        // A full channel drops the client (counted); a closed one (its thread ended)
        // is only removed.
        let mut dropped = 0;
        self.subs.retain(|(_, tx)| match tx.try_send(w.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                dropped += 1;
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        dropped
    }

    /// The last `max` records the ring still holds that `about` selects, oldest first
    /// (`sentryctl explain`).
    pub fn recent(&self, max: usize, about: impl Fn(&WatchRecord) -> bool) -> Vec<WatchRecord> {
        let mut v: Vec<WatchRecord> = self
            .ring
            .iter()
            .rev()
            .filter(|r| about(r))
            .take(max)
            .cloned()
            .collect();
        v.reverse();
        v
    }

    /// A client's thread ended: its place is free at once (not only at the next record).
    pub fn unsubscribe(&mut self, id: u64) {
        self.subs.retain(|(i, _)| *i != id);
    }

    /// A new client from `from` (`None`: only what happens from now on).
    pub fn subscribe(&mut self, from: Option<Cursor>) -> Result<Subscription, String> {
        if self.subs.len() >= MAX_CLIENTS {
            return Err(format!("too many watch clients ({MAX_CLIENTS} at once)"));
        }
        let oldest = self.ring.front().map_or(self.next, |r| r.seq);
        let (start, run_changed) = match from {
            None => (self.next, false),
            Some(c) if c.run != self.run => (0, true),
            Some(c) if c.seq > self.next => {
                return Err(format!(
                    "cursor {c} is ahead of this enforcer's stream (next record is {})",
                    self.next_cursor()
                ))
            }
            Some(c) => (c.seq, false),
        };
        let lost = oldest.saturating_sub(start);
        let from_seq = start.max(oldest);
        let backlog: Vec<WatchRecord> = self
            .ring
            .iter()
            .filter(|r| r.seq >= from_seq)
            .cloned()
            .collect();
        let (tx, rx) = sync_channel(self.buffer);
        self.next_id += 1;
        let id = self.next_id;
        self.subs.push((id, tx));
        Ok(Subscription {
            id,
            next: Cursor {
                run: self.run,
                seq: from_seq,
            },
            lost,
            run_changed,
            backlog,
            rx,
        })
    }
}

fn to_watch(seq: u64, rec: &AuditRecord) -> WatchRecord {
    WatchRecord {
        seq,
        time_us: rec.time_us,
        kind: rec.decision.as_str().to_string(),
        source: rec.source,
        prefix: rec.prefix,
        protocol: rec.protocol,
        port: rec.port,
        scan: rec.scan,
        mode: rec.mode,
        origin: rec.origin.clone(),
        evidence: match (rec.distinct_ports, rec.handshake) {
            (Some(distinct_ports), Some(handshake)) => Some(EvidenceInfo {
                distinct_ports,
                handshake,
            }),
            _ => None,
        },
        expires_ms: rec.expires_ms,
        suppressed: rec.suppressed,
        reason: rec.reason.clone(),
        meta: rec.meta.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::RecordKind;
    use crate::time::WallMs;
    use sentry_proto::Decision;

    fn rec(reason: &str) -> AuditRecord {
        AuditRecord::event(
            WallMs(1_700_000_000_000),
            RecordKind::Decision(Decision::Blocked),
            reason.into(),
            None,
        )
        .with_source("192.0.2.7".parse().unwrap())
    }

    #[test]
    fn recent_selects_the_newest_oldest_first() {
        let mut h = Hub::with_limits(1, 4, 4);
        for r in ["a", "b", "c", "d", "e"] {
            h.publish(&rec(r));
        }
        let got: Vec<String> = h
            .recent(2, |_| true)
            .into_iter()
            .map(|r| r.reason)
            .collect();
        assert_eq!(got, ["d", "e"]);
        // The ring holds 4: "a" is gone.
        let got: Vec<String> = h
            .recent(10, |r| r.reason != "c")
            .into_iter()
            .map(|r| r.reason)
            .collect();
        assert_eq!(got, ["b", "d", "e"]);
        assert!(h.recent(10, |r| r.source.is_none()).is_empty());
    }

    #[test]
    fn live_records_arrive_in_order_with_their_numbers() {
        let mut h = Hub::with_limits(7, 8, 4);
        h.publish(&rec("a"));
        let s = h.subscribe(None).unwrap();
        assert_eq!(
            (s.next, s.lost, s.backlog.len()),
            (Cursor { run: 7, seq: 1 }, 0, 0)
        );
        h.publish(&rec("b"));
        h.publish(&rec("c"));
        let got: Vec<(u64, String)> = s.rx.try_iter().map(|r| (r.seq, r.reason)).collect();
        assert_eq!(got, [(1, "b".into()), (2, "c".into())]);
        let r = h.ring.back().unwrap();
        assert_eq!(r.source, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(r.kind, "blocked");
    }

    #[test]
    fn resuming_older_than_the_ring_says_how_many_were_lost() {
        let mut h = Hub::with_limits(7, 4, 4);
        for i in 0..10 {
            h.publish(&rec(&i.to_string()));
        }
        // The ring holds 6..=9.
        let s = h.subscribe(Some(Cursor { run: 7, seq: 2 })).unwrap();
        assert_eq!(s.lost, 4);
        assert_eq!(s.next.seq, 6);
        assert_eq!(
            s.backlog.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [6, 7, 8, 9]
        );
        let s = h.subscribe(Some(Cursor { run: 7, seq: 8 })).unwrap();
        assert_eq!((s.lost, s.backlog.len()), (0, 2));
        let s = h.subscribe(Some(Cursor { run: 7, seq: 10 })).unwrap();
        assert_eq!((s.lost, s.backlog.len()), (0, 0));
        assert!(h.subscribe(Some(Cursor { run: 7, seq: 11 })).is_err());
    }

    #[test]
    fn another_run_starts_from_the_ring_and_says_so() {
        let mut h = Hub::with_limits(9, 4, 4);
        for _ in 0..6 {
            h.publish(&rec("x"));
        }
        let s = h.subscribe(Some(Cursor { run: 8, seq: 100 })).unwrap();
        assert!(s.run_changed);
        assert_eq!((s.lost, s.next.seq, s.backlog.len()), (2, 2, 4));
    }

    #[test]
    fn a_slow_client_is_dropped_not_waited_for() {
        let mut h = Hub::with_limits(1, 16, 2);
        let slow = h.subscribe(None).unwrap();
        assert_eq!(h.publish(&rec("1")), 0);
        assert_eq!(h.publish(&rec("2")), 0);
        // The third does not fit: dropped at once, publishing did not wait.
        assert_eq!(h.publish(&rec("3")), 1);
        assert_eq!(h.clients(), 0);
        // What it had buffered is still readable, then the channel reports the end.
        assert_eq!(slow.rx.try_iter().count(), 2);
        assert!(matches!(
            slow.rx.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        ));
        let keep: Vec<Subscription> = (0..MAX_CLIENTS)
            .map(|_| h.subscribe(None).unwrap())
            .collect();
        assert!(h.subscribe(None).is_err());
        // A client that left frees its place at the next record, or at once when its
        // thread says so.
        let first = keep.first().map(|s| s.id).unwrap();
        h.unsubscribe(first);
        assert_eq!(h.clients(), MAX_CLIENTS - 1);
        drop(keep);
        assert_eq!(h.publish(&rec("4")), 0);
        assert_eq!(h.clients(), 0);
    }

    /// One schema: every field of a watch record (but its stream number) is in the
    /// audit record it came from, under the same name and with the same value.
    #[test]
    fn watch_json_is_the_audit_logs_record() {
        let mut r = rec("blocked for 600s");
        r.source = Some("2001:db8::".parse().unwrap());
        r.prefix = Some(64);
        r.protocol = Some(sentry_proto::Protocol::Tcp);
        r.port = Some(23);
        r.scan = Some(sentry_proto::ScanKind::Oddball { flags: 3 });
        r.mode = Some(sentry_proto::Mode::Atcp);
        r.origin = Some("sensor".into());
        r.distinct_ports = Some(9);
        r.handshake = Some(false);
        r.expires_ms = Some(1_700_000_600_000);
        let summary = AuditRecord::summary(
            WallMs(1_700_000_000_000).us(),
            &crate::budget::Summary {
                decision: Decision::Ignored,
                suppressed: 5,
                first_us: 1,
                last_us: 2,
                sample: vec!["192.0.2.1".parse().unwrap()],
            },
            10,
        );
        let event = AuditRecord::event(WallMs(5), RecordKind::Expired, "x".into(), None);
        for a in [r, summary, event] {
            let audit = serde_json::to_value(&a).unwrap();
            let watch = serde_json::to_value(to_watch(3, &a)).unwrap();
            assert_eq!(audit["schema"], sentry_proto::RECORD_SCHEMA);
            for (k, v) in watch.as_object().unwrap() {
                if k == "seq" {
                    continue;
                }
                assert_eq!(&audit[k], v, "{k}: audit {audit} watch {watch}");
            }
        }
    }
}
