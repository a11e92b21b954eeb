//! The connection to `sentry-enforcer` (`<runtime-dir>/enforcer.sock`).
//!
//! Non-blocking, driven by the main poll loop: a stuck enforcer never stalls detection.
//! Every report goes into a bounded queue (SENSOR_QUEUE; when full the oldest is dropped
//! with a counted warning) and leaves it only when the enforcer has acknowledged it. On a
//! disconnect every unacknowledged request is sent again on the next connection (with a
//! new, increasing sequence number), so a restart of the enforcer loses no block.
//! Reconnects back off from 100 ms to 5 s.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use sentry_proto::{
    encode_frame, BlockRequest, Decision, EnforcerFrame, FrameBuf, Hello, Refusal, SensorFrame,
    SensorStats, PROTOCOL_VERSION,
};

use crate::state::Report;
use crate::time::Mono;

const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;
/// Most encoded bytes waiting for the socket; beyond this, requests stay in the queue
/// (where the SENSOR_QUEUE bound applies) until the enforcer reads.
const OUT_HIGH_WATER: usize = 64 * 1024;

#[derive(Debug)]
enum Conn {
    Down,
    Handshake(UnixStream),
    Ready(UnixStream),
}

#[derive(Debug, Clone)]
struct Pending {
    report: Report,
    sent_seq: Option<u64>,
}

/// Something the caller should log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected,
    Disconnected(String),
    Refused(Refusal),
    /// The enforcer decided on a request.
    Decided {
        report: Report,
        decision: Decision,
    },
    /// A block ended.
    Unblocked(std::net::IpAddr),
    /// The enforcer handed over its NFLOG socket (take it with [`Client::take_capture`]).
    Capture {
        group: u16,
        snaplen: u32,
    },
    /// A `Capture` frame arrived without a descriptor, or descriptors without one.
    CaptureProblem(String),
}

#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    hello: Hello,
    conn: Conn,
    queue: VecDeque<Pending>,
    /// The first `sent` queue entries are on the wire (sent in queue order); the rest are
    /// not yet. Keeps `fill_out` O(new entries) instead of O(queue).
    sent: usize,
    cap: usize,
    next_seq: u64,
    out: Vec<u8>,
    inbuf: FrameBuf<EnforcerFrame>,
    backoff_ms: u64,
    next_attempt: Mono,
    pub queue_drops: u64,
    /// Reports evicted while on the wire (delivered unless the connection then failed).
    pub in_flight_evictions: u64,
    pub acked: u64,
    /// Acks for requests no longer queued (dropped while on the wire).
    pub unknown_acks: u64,
    /// Descriptors received with the bytes not yet matched to a `Capture` frame.
    fds: Vec<OwnedFd>,
    capture: Option<OwnedFd>,
}

impl Client {
    pub fn new(runtime_dir: &Path, hello: Hello, queue_cap: usize) -> Self {
        Self {
            path: runtime_dir.join("enforcer.sock"),
            hello,
            conn: Conn::Down,
            queue: VecDeque::with_capacity(queue_cap.clamp(1, 4096)),
            sent: 0,
            cap: queue_cap.max(1),
            next_seq: 1,
            out: Vec::new(),
            inbuf: FrameBuf::new(),
            backoff_ms: BACKOFF_MIN_MS,
            next_attempt: Mono(0),
            queue_drops: 0,
            in_flight_evictions: 0,
            acked: 0,
            unknown_acks: 0,
            fds: Vec::new(),
            capture: None,
        }
    }

    /// The NFLOG socket (and its group) the enforcer handed over, once.
    pub fn take_capture(&mut self) -> Option<OwnedFd> {
        self.capture.take()
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.conn, Conn::Ready(_))
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queue a report. When the queue is full, the oldest report not yet handed to the
    /// enforcer is dropped and counted in `queue_drops` (the caller logs a summary; one
    /// event per drop could itself be a flood). Reports already on the wire are kept:
    /// the enforcer receives them anyway, so dropping them would lose nothing but their
    /// re-send after a reconnect, and counting them as drops would overstate the loss.
    /// Only when every queued report is in flight is the oldest of those evicted,
    /// counted in `in_flight_evictions` (its Ack then lands in `unknown_acks`).
    pub fn enqueue(&mut self, report: Report) {
        if self.queue.len() >= self.cap {
            if self.sent < self.queue.len() {
                if self.queue.remove(self.sent).is_some() {
                    self.queue_drops += 1;
                }
            } else if self.queue.pop_front().is_some() {
                self.sent = self.sent.saturating_sub(1);
                self.in_flight_evictions += 1;
            }
        }
        self.queue.push_back(Pending {
            report,
            sent_seq: None,
        });
        if self.is_ready() {
            self.fill_out();
        }
    }

    /// The descriptor to poll and the events wanted, if connected.
    pub fn poll_interest(&self) -> Option<(RawFd, bool)> {
        match &self.conn {
            Conn::Down => None,
            Conn::Handshake(s) | Conn::Ready(s) => Some((s.as_raw_fd(), !self.out.is_empty())),
        }
    }

    /// Milliseconds until the next connection attempt (None when connected).
    pub fn next_attempt_in(&self, now: Mono) -> Option<u64> {
        match self.conn {
            Conn::Down => Some(self.next_attempt.ms_since(now)),
            _ => None,
        }
    }

    /// Connect if down and the back-off has passed.
    pub fn tick(&mut self, now: Mono, events: &mut Vec<Event>) {
        if !matches!(self.conn, Conn::Down) || now < self.next_attempt {
            return;
        }
        match self.connect() {
            Ok(s) => {
                self.out.clear();
                self.inbuf = FrameBuf::new();
                match encode_frame(&SensorFrame::Hello(self.hello.clone())) {
                    Ok(f) => self.out.extend_from_slice(&f),
                    Err(e) => {
                        self.down(now, format!("cannot encode Hello: {e}"), events);
                        return;
                    }
                }
                self.conn = Conn::Handshake(s);
                self.pump_write(now, events);
            }
            Err(e) => {
                self.schedule_retry(now);
                let _ = e;
            }
        }
    }

    fn connect(&self) -> io::Result<UnixStream> {
        let s = UnixStream::connect(&self.path)?;
        s.set_nonblocking(true)?;
        Ok(s)
    }

    fn schedule_retry(&mut self, now: Mono) {
        self.next_attempt = now.plus_ms(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
    }

    fn down(&mut self, now: Mono, why: String, events: &mut Vec<Event>) {
        let was_up = !matches!(self.conn, Conn::Down);
        self.conn = Conn::Down;
        self.out.clear();
        self.inbuf = FrameBuf::new();
        self.fds.clear();
        for p in &mut self.queue {
            p.sent_seq = None;
        }
        self.sent = 0;
        self.schedule_retry(now);
        if was_up {
            events.push(Event::Disconnected(why));
        }
    }

    /// Queue a statistics frame (only when connected and nothing else is waiting).
    pub fn send_stats(&mut self, stats: SensorStats, now: Mono, events: &mut Vec<Event>) {
        if !self.is_ready() || !self.out.is_empty() {
            return;
        }
        match encode_frame(&SensorFrame::Stats(stats)) {
            Ok(f) => self.out.extend_from_slice(&f),
            Err(e) => self.down(now, format!("cannot encode Stats: {e}"), events),
        }
        self.pump_write(now, events);
    }

    /// Encode every queued report that is not on the wire yet.
    fn fill_out(&mut self) {
        let start = self.sent.min(self.queue.len());
        for p in self.queue.range_mut(start..) {
            if self.out.len() >= OUT_HIGH_WATER {
                break;
            }
            let seq = self.next_seq;
            let r = &p.report;
            let req = BlockRequest {
                seq,
                source: r.src,
                protocol: r.scan.protocol(),
                port: r.port,
                scan: r.scan,
                mode: r.mode,
                distinct_ports: r.distinct_ports,
                first_seen_ms: r.first_seen.0,
                last_seen_ms: r.last_seen.0,
                ip_options: r.ip_options,
            };
            // A BlockRequest is far below the frame cap, so encoding cannot fail; if it
            // ever did, the entry would be sent with the next batch instead of skipped.
            match encode_frame(&SensorFrame::Block(req)) {
                Ok(f) => {
                    self.next_seq += 1;
                    p.sent_seq = Some(seq);
                    self.out.extend_from_slice(&f);
                    self.sent += 1;
                }
                Err(_) => break,
            }
        }
    }

    /// Handle readiness of the connection.
    pub fn on_ready(
        &mut self,
        readable: bool,
        writable: bool,
        hup: bool,
        now: Mono,
        events: &mut Vec<Event>,
    ) {
        if readable || hup {
            self.pump_read(now, events);
        }
        if writable {
            self.pump_write(now, events);
        }
    }

    /// Write what is queued now, as far as the socket takes it without blocking (the rest
    /// waits for POLLOUT). Called right after the reports of one wake-up were queued, so
    /// the first report of a scan does not wait for another trip through `poll`.
    pub fn flush(&mut self, now: Mono, events: &mut Vec<Event>) {
        if self.is_ready() && (!self.out.is_empty() || self.sent < self.queue.len()) {
            self.pump_write(now, events);
        }
    }

    fn pump_write(&mut self, now: Mono, events: &mut Vec<Event>) {
        if self.is_ready() {
            self.fill_out();
        }
        while !self.out.is_empty() {
            let res = match &mut self.conn {
                Conn::Down => return,
                Conn::Handshake(s) | Conn::Ready(s) => s.write(&self.out),
            };
            match res {
                Ok(0) => return self.down(now, "enforcer closed the connection".into(), events),
                Ok(n) => {
                    self.out.drain(..n.min(self.out.len()));
                    if self.out.is_empty() && self.is_ready() {
                        self.fill_out();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.down(now, format!("write: {e}"), events),
            }
        }
    }

    fn pump_read(&mut self, now: Mono, events: &mut Vec<Event>) {
        // Read in chunks (one syscall for many Acks) and hand the frame decoder at most
        // what it wants, so it never buffers more than one capped frame.
        let mut buf = [0u8; 8192];
        loop {
            // recvmsg, not read: the enforcer's NFLOG socket arrives as ancillary data, which
            // a plain read would make the kernel discard.
            let res = match &mut self.conn {
                Conn::Down => return,
                Conn::Handshake(s) | Conn::Ready(s) => {
                    crate::sys::recv_with_fds(s.as_raw_fd(), &mut buf, &mut self.fds)
                }
            };
            // At most one descriptor is ever expected; more is the enforcer's mistake or
            // a peer that is not the enforcer: close them instead of piling them up.
            if self.fds.len() > 1 {
                let extra = self.fds.len() - 1;
                self.fds.truncate(1);
                events.push(Event::CaptureProblem(format!(
                    "{extra} unexpected descriptors from the enforcer closed"
                )));
            }
            let n = match res {
                Ok(0) => return self.down(now, "enforcer closed the connection".into(), events),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.down(now, format!("read: {e}"), events),
            };
            let mut chunk = buf.get(..n).unwrap_or(&[]);
            while !chunk.is_empty() {
                let want = match self.inbuf.wanted() {
                    Ok(w) => w.min(chunk.len()),
                    Err(e) => {
                        return self.down(now, format!("bad frame from enforcer: {e}"), events)
                    }
                };
                let (part, rest) = chunk.split_at(want);
                chunk = rest;
                if let Err(e) = self.inbuf.feed(part) {
                    return self.down(now, format!("bad frame from enforcer: {e}"), events);
                }
                match self.inbuf.next_message() {
                    None => {}
                    Some(Ok(m)) => {
                        self.on_frame(m, now, events);
                        if matches!(self.conn, Conn::Down) {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        return self.down(now, format!("bad frame from enforcer: {e}"), events)
                    }
                }
            }
        }
    }

    fn on_frame(&mut self, f: EnforcerFrame, now: Mono, events: &mut Vec<Event>) {
        match (f, &self.conn) {
            (EnforcerFrame::Welcome { version }, Conn::Handshake(_)) => {
                if version != PROTOCOL_VERSION {
                    return self.down(
                        now,
                        format!("enforcer speaks protocol {version}, we speak {PROTOCOL_VERSION}"),
                        events,
                    );
                }
                if let Conn::Handshake(s) = std::mem::replace(&mut self.conn, Conn::Down) {
                    self.conn = Conn::Ready(s);
                }
                self.backoff_ms = BACKOFF_MIN_MS;
                events.push(Event::Connected);
                self.fill_out();
                self.pump_write(now, events);
            }
            (EnforcerFrame::Ack { seq, decision }, Conn::Ready(_)) => {
                match self.queue.iter().position(|p| p.sent_seq == Some(seq)) {
                    Some(i) => {
                        if let Some(p) = self.queue.remove(i) {
                            if i < self.sent {
                                self.sent -= 1;
                            }
                            self.acked += 1;
                            events.push(Event::Decided {
                                report: p.report,
                                decision,
                            });
                        }
                    }
                    None => self.unknown_acks += 1,
                }
            }
            (EnforcerFrame::Unblocked { addr }, Conn::Ready(_)) => {
                events.push(Event::Unblocked(addr));
            }
            (EnforcerFrame::Capture { group, snaplen }, Conn::Ready(_)) => match self.fds.pop() {
                Some(fd) => {
                    self.capture = Some(fd);
                    events.push(Event::Capture { group, snaplen });
                }
                None => events.push(Event::CaptureProblem(
                    "Capture frame without a descriptor".into(),
                )),
            },
            (EnforcerFrame::Refused(r), _) => {
                events.push(Event::Refused(r));
                self.down(now, format!("refused: {r:?}"), events);
            }
            (other, _) => self.down(
                now,
                format!("unexpected frame from enforcer: {other:?}"),
                events,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_proto::{read_frame, write_frame, Mode, ScanKind};
    use std::net::{IpAddr, Ipv4Addr};
    use std::os::unix::net::UnixListener;

    fn report(n: u8) -> Report {
        Report {
            src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
            port: 23,
            scan: ScanKind::Syn,
            mode: Mode::Stcp,
            distinct_ports: 1,
            first_seen: crate::time::Wall(1_000),
            last_seen: crate::time::Wall(1_000),
            ip_options: false,
        }
    }

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            sensor: "test".into(),
            pid: 1,
            modes: vec![Mode::Stcp],
        }
    }

    /// Drive the client until `done` or a deadline.
    fn drive(c: &mut Client, ev: &mut Vec<Event>, mut done: impl FnMut(&Client, &[Event]) -> bool) {
        let start = std::time::Instant::now();
        while !done(c, ev) {
            assert!(start.elapsed().as_secs() < 10, "timeout; events {ev:?}");
            let now = Mono(u64::try_from(start.elapsed().as_millis()).unwrap() + 1_000_000);
            c.tick(now, ev);
            c.on_ready(true, true, false, now, ev);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn queue_keeps_reports_already_on_the_wire() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Client::new(dir.path(), hello(), 3);
        for i in 1..=3 {
            c.enqueue(report(i));
        }
        // The first two are on the wire: the oldest unsent one is dropped instead.
        c.sent = 2;
        c.enqueue(report(4));
        let left: Vec<_> = c.queue.iter().map(|p| p.report).collect();
        assert_eq!(left, [report(1), report(2), report(4)]);
        assert_eq!((c.queue_drops, c.in_flight_evictions), (1, 0));
        // Everything in flight: the oldest in-flight report goes, counted apart.
        c.sent = 3;
        c.enqueue(report(5));
        let left: Vec<_> = c.queue.iter().map(|p| p.report).collect();
        assert_eq!(left, [report(2), report(4), report(5)]);
        assert_eq!((c.queue_drops, c.in_flight_evictions), (1, 1));
        assert_eq!(c.sent, 2);
    }

    #[test]
    fn queue_drops_oldest_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Client::new(dir.path(), hello(), 2);
        c.enqueue(report(1));
        c.enqueue(report(2));
        c.enqueue(report(3));
        assert_eq!(c.queue.front().map(|p| p.report), Some(report(2)));
        assert_eq!(c.queued(), 2);
        assert_eq!(c.queue_drops, 1);
    }

    #[test]
    fn delivers_after_enforcer_restart_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enforcer.sock");
        let mut c = Client::new(dir.path(), hello(), 16);
        let mut ev = Vec::new();
        // Enforcer down: reports queue up.
        c.tick(Mono(0), &mut ev);
        c.enqueue(report(1));
        c.enqueue(report(2));
        assert!(!c.is_ready());

        // First enforcer: handshake, receives both, acks only the first, then dies.
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let f: SensorFrame = read_frame(&mut s).unwrap();
            assert!(matches!(f, SensorFrame::Hello(h) if h.version == PROTOCOL_VERSION));
            write_frame(
                &mut s,
                &EnforcerFrame::Welcome {
                    version: PROTOCOL_VERSION,
                },
            )
            .unwrap();
            let mut seqs = Vec::new();
            for _ in 0..2 {
                match read_frame::<SensorFrame, _>(&mut s).unwrap() {
                    SensorFrame::Block(b) => {
                        assert_eq!(b.validate(u64::MAX / 2), Ok(()));
                        seqs.push((b.seq, b.source));
                    }
                    other => panic!("{other:?}"),
                }
            }
            write_frame(
                &mut s,
                &EnforcerFrame::Ack {
                    seq: seqs[0].0,
                    decision: Decision::Blocked,
                },
            )
            .unwrap();
            drop(l);
            seqs
        });
        drive(&mut c, &mut ev, |c, _| c.acked == 1);
        let first = h.join().unwrap();
        assert!(first[0].0 < first[1].0);
        drive(&mut c, &mut ev, |_, ev| {
            ev.iter().any(|e| matches!(e, Event::Disconnected(_)))
        });
        assert_eq!(c.queued(), 1);

        // Second enforcer: the unacknowledged request is delivered again.
        std::fs::remove_file(&path).unwrap();
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _hello: SensorFrame = read_frame(&mut s).unwrap();
            write_frame(
                &mut s,
                &EnforcerFrame::Welcome {
                    version: PROTOCOL_VERSION,
                },
            )
            .unwrap();
            match read_frame::<SensorFrame, _>(&mut s).unwrap() {
                SensorFrame::Block(b) => {
                    write_frame(
                        &mut s,
                        &EnforcerFrame::Ack {
                            seq: b.seq,
                            decision: Decision::AlreadyBlocked,
                        },
                    )
                    .unwrap();
                    (b.seq, b.source)
                }
                other => panic!("{other:?}"),
            }
        });
        drive(&mut c, &mut ev, |c, _| c.acked == 2);
        let again = h.join().unwrap();
        assert_eq!(again.1, first[1].1);
        assert!(again.0 > first[1].0, "sequence numbers keep increasing");
        assert_eq!(c.queued(), 0);
    }

    #[test]
    fn refusal_and_bad_version_disconnect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enforcer.sock");
        let l = UnixListener::bind(&path).unwrap();
        let mut c = Client::new(dir.path(), hello(), 4);
        let mut ev = Vec::new();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _: SensorFrame = read_frame(&mut s).unwrap();
            write_frame(&mut s, &EnforcerFrame::Refused(Refusal::NotAuthorized)).unwrap();
        });
        drive(&mut c, &mut ev, |_, ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Refused(Refusal::NotAuthorized)))
        });
        h.join().unwrap();
        assert!(!c.is_ready());
    }

    /// An enforcer that handshakes and then never reads: memory stays bounded by the
    /// queue cap and the output high-water mark.
    #[test]
    fn stuck_enforcer_keeps_memory_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enforcer.sock");
        let l = UnixListener::bind(&path).unwrap();
        let mut c = Client::new(dir.path(), hello(), 100);
        let mut ev = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _: SensorFrame = read_frame(&mut s).unwrap();
            write_frame(
                &mut s,
                &EnforcerFrame::Welcome {
                    version: PROTOCOL_VERSION,
                },
            )
            .unwrap();
            let _ = rx.recv();
        });
        drive(&mut c, &mut ev, |c, _| c.is_ready());
        for i in 0..50_000u32 {
            c.enqueue(report(u8::try_from(i % 250).unwrap() + 1));
            c.on_ready(false, true, false, Mono(2_000_000), &mut ev);
        }
        assert!(c.queued() <= 100);
        assert!(c.out.len() <= OUT_HIGH_WATER + 256, "out {}", c.out.len());
        assert!(c.queue_drops + c.in_flight_evictions >= 49_900);
        tx.send(()).unwrap();
        h.join().unwrap();
    }
}
