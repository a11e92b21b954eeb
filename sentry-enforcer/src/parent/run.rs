//! The one poll loop: the worker's two request channels, the helper's answers, the
//! worker's pidfd, the table and host watches, signals, and the timers (worker restart,
//! table-change settling, the refusal summary).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use sentry_privsep::{Channel, Event, RecvError, Refusal, Reply, Request, Verb};

use super::host::HostWatch;
use super::serve::{self, gather, Answer, Batch, Step};
use super::spawn::{self, Helper, Plan, Worker};
use super::{say, Parent};

/// How long a worker that stops reading may hold up one reply before it is restarted.
const SEND_WAIT: Duration = Duration::from_secs(5);
/// Lets the rest of another process's table transaction arrive before answering it.
const TABLE_SETTLE: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What a failed receive on a worker channel means.
#[derive(Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing there after all: poll again.
    Again,
    /// A broken or hostile worker: stop it (it is restarted). `true`: count it as a
    /// record that did not decode.
    Restart(String, bool),
}

pub fn fault(e: &RecvError) -> Fault {
    match e {
        RecvError::Os(Errno::EAGAIN | Errno::EINTR) => Fault::Again,
        RecvError::Closed => Fault::Restart("closed its channel".into(), false),
        RecvError::Os(e) => Fault::Restart(format!("channel failed: {e}"), false),
        RecvError::Truncated | RecvError::Decode(_) => {
            Fault::Restart(format!("sent a bad record ({e})"), true)
        }
    }
}

/// A kill request handed to the helper: which channel and request it answers.
#[derive(Debug)]
struct Fwd {
    chan: usize,
    id: u32,
    helper_id: u32,
    /// The worker that asked is still the one running.
    live: bool,
}

/// Where a ready descriptor came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Chan(usize),
    Helper,
    Worker,
    Table,
    Host,
    Signal,
}

/// The loop's state besides [`Parent`].
pub struct Loop {
    pub p: Parent,
    pub plan: Plan,
    helper: Helper,
    pub worker: Option<Worker>,
    /// The worker was told to stop (its channels are no longer read).
    dying: bool,
    pending: [Option<Batch>; 2],
    forwarded: VecDeque<Fwd>,
    helper_seq: u32,
    restart_at: Option<Instant>,
    backoff: Duration,
    sig: SignalFd,
    pub host: Option<HostWatch>,
    table_due: Option<Instant>,
    /// TableChanged was sent and no Build came since.
    table_sent: bool,
    sockets: Vec<PathBuf>,
}

impl Loop {
    pub fn new(
        p: Parent,
        plan: Plan,
        helper: Helper,
        sig: SignalFd,
        sockets: Vec<PathBuf>,
    ) -> Self {
        Self {
            p,
            plan,
            helper,
            worker: None,
            dying: false,
            pending: [None, None],
            forwarded: VecDeque::new(),
            helper_seq: 0,
            restart_at: None,
            backoff: Duration::from_secs(1),
            sig,
            host: None,
            table_due: None,
            table_sent: false,
            sockets,
        }
    }

    /// Serve until SIGTERM or SIGINT (`Ok`), or until the helper is gone (`Err`).
    pub fn serve(&mut self) -> Result<(), String> {
        loop {
            for src in self.wait()? {
                let done = match src {
                    Src::Chan(c) => self.on_request(c).map(|()| false),
                    Src::Helper => self.on_helper().map(|()| false),
                    Src::Worker => self.on_worker_exit().map(|()| false),
                    Src::Table => {
                        self.table_due = Some(Instant::now() + TABLE_SETTLE);
                        Ok(false)
                    }
                    Src::Host => self.on_host().map(|()| false),
                    Src::Signal => self.on_signal(),
                };
                match done {
                    Ok(false) => {}
                    Ok(true) => return Ok(()),
                    Err(e) => {
                        self.shutdown();
                        return Err(e);
                    }
                }
            }
            self.timers();
        }
    }

    /// The next deadline of a timer.
    fn next_due(&self) -> Instant {
        let tick = Instant::now() + Duration::from_secs(1);
        [Some(tick), self.restart_at, self.table_due]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(tick)
    }

    /// Poll every descriptor that may need work; the sources that are ready.
    fn wait(&mut self) -> Result<Vec<Src>, String> {
        let mut fds: Vec<(BorrowedFd<'_>, Src)> = vec![
            (self.helper.chan.fd(), Src::Helper),
            (self.sig.as_fd(), Src::Signal),
        ];
        if let Some(w) = &self.worker {
            fds.push((w.pidfd.as_fd(), Src::Worker));
            for (c, ch) in [&w.rpc, &w.fx].into_iter().enumerate() {
                if !self.dying && !self.busy(c) {
                    fds.push((ch.fd(), Src::Chan(c)));
                }
            }
        }
        if let (Some(w), None) = (&self.p.watch, self.table_due) {
            fds.push((w.fd(), Src::Table));
        }
        if let Some(h) = &self.host {
            fds.push((h.fd(), Src::Host));
        }
        let left = self.next_due().saturating_duration_since(Instant::now());
        let timeout =
            PollTimeout::try_from(left + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX);
        let mut pfds: Vec<PollFd<'_>> = fds
            .iter()
            .map(|(fd, _)| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        match nix::poll::poll(&mut pfds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready = pfds
            .iter()
            .zip(&fds)
            .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, (_, s))| *s);
        Ok(ready.collect())
    }

    fn chan(&self, c: usize) -> Option<&Channel> {
        self.worker
            .as_ref()
            .map(|w| if c == 0 { &w.rpc } else { &w.fx })
    }

    /// A kill request of channel `c` is with the helper: the worker waits for it, and
    /// the channel is not read meanwhile.
    fn busy(&self, c: usize) -> bool {
        self.forwarded.iter().any(|f| f.live && f.chan == c)
    }

    /// Read what channel `c` has queued (a batch's items come together), until it is
    /// empty, busy, or the worker is being stopped.
    fn on_request(&mut self, c: usize) -> Result<(), String> {
        for _ in 0..1024 {
            let Some(ch) = self.chan(c).filter(|_| !self.dying && !self.busy(c)) else {
                break;
            };
            match ch.recv_request() {
                Ok((r, fd)) => self.take(c, r, fd),
                Err(e) => {
                    if let Fault::Restart(why, bad) = fault(&e) {
                        self.p.log.decode_errors += u64::from(bad);
                        self.stop_worker(&format!("{why} on its {} channel", ["rpc", "fx"][c]));
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, c: usize, r: Request, fd: Option<OwnedFd>) {
        let cap = serve::cap(r.verb, self.p.floor.cap);
        match gather(&mut self.pending[c], r, fd, cap) {
            Step::Wait => {}
            Step::Act(b) => self.answer(c, b),
            Step::Break(verb, id, r, fd) => {
                let refused = self.p.refuse(verb, None, id, Refusal::Malformed);
                self.send(c, &[refused], None);
                self.take(c, r, fd);
            }
        }
    }

    fn answer(&mut self, c: usize, b: Batch) {
        let (verb, id) = (b.verb, b.id);
        match self.p.act(b) {
            Answer::Replies(v, fd) => self.send(c, &v, fd),
            Answer::Forward(mut r) => {
                self.helper_seq = self.helper_seq.wrapping_add(1);
                r.id = self.helper_seq;
                if let Err(e) = self.helper.chan.send_request(&r, None) {
                    self.send(
                        c,
                        &[Reply::fail(id, e as u64, "the command helper is gone")],
                        None,
                    );
                } else {
                    self.forwarded.push_back(Fwd {
                        chan: c,
                        id,
                        helper_id: r.id,
                        live: true,
                    });
                }
            }
        }
        if verb == Verb::Build {
            self.table_sent = false;
        }
        if std::mem::take(&mut self.p.table_foreign) {
            self.table_changed();
        }
    }

    /// Send replies on channel `c`, waiting at most [`SEND_WAIT`] for room; a worker
    /// that does not read is stopped.
    fn send(&mut self, c: usize, replies: &[Reply], fd: Option<OwnedFd>) {
        let Some(ch) = self.chan(c) else { return };
        let last = replies.len().saturating_sub(1);
        let sent = replies.iter().enumerate().try_for_each(|(i, r)| {
            send_waiting(ch, r, fd.as_ref().filter(|_| i == last).map(|f| f.as_fd()))
        });
        if let Err(e) = sent {
            self.stop_worker(&format!("cannot be answered ({e})"));
        }
    }

    fn event(&mut self, e: Event) {
        let Some(w) = &self.worker else { return };
        if let Err(err) = send_waiting(&w.events, &Reply::event(e), None) {
            self.stop_worker(&format!("does not take events ({err})"));
        }
    }

    fn table_changed(&mut self) {
        if self.worker.is_some() && !self.dying && !self.table_sent {
            say("adminalert: another process changed the nftables table: the worker rebuilds it");
            self.table_sent = true;
            self.event(Event::TableChanged);
        }
    }

    /// Kill the worker (it is reaped and restarted when its pidfd says it is gone).
    fn stop_worker(&mut self, why: &str) {
        let Some(w) = &self.worker else { return };
        // A worker that ends by itself (a start that failed: exit 78) closes its channels
        // a moment before its pidfd says so: give it that moment, so its exit status, not
        // our SIGKILL, decides what happens next.
        if exited_within(w, 500) {
            return;
        }
        if !self.dying {
            say(&format!(
                "adminalert: the worker (pid {}) {why}: stopping and restarting it",
                w.pid
            ));
            self.signal(w, Signal::SIGKILL);
            self.dying = true;
        }
    }

    /// Signal the worker ([`spawn::signal_worker`]), saying so when that fails.
    fn signal(&self, w: &spawn::Worker, sig: Signal) -> bool {
        spawn::signal_worker(w, self.plan.uid, sig)
            .inspect_err(|e| say(&format!("adminalert: ERROR: cannot {sig} the worker: {e}")))
            .is_ok()
    }

    fn on_worker_exit(&mut self) -> Result<(), String> {
        let Some(w) = self.worker.take() else {
            return Ok(());
        };
        let how = match waitpid(w.pid, None) {
            Ok(WaitStatus::Exited(_, c)) if c == i32::from(sentry_privsep::EXIT_START_FAILED) => {
                return Err(format!(
                    "the worker (pid {}) could not start (see its lines above); not restarting it",
                    w.pid
                ));
            }
            Ok(WaitStatus::Exited(_, c)) => format!("exited with status {c}"),
            Ok(WaitStatus::Signaled(_, Signal::SIGSYS, _)) => {
                "was killed by SIGSYS (a system call outside the seccomp filters)".into()
            }
            Ok(WaitStatus::Signaled(_, s, _)) => format!("was killed by {s}"),
            other => format!("ended ({other:?})"),
        };
        for f in &mut self.forwarded {
            f.live = false;
        }
        (self.pending, self.dying, self.table_sent) = ([None, None], false, false);
        self.p.release_nflog();
        if w.started.elapsed() >= Duration::from_secs(60) {
            self.backoff = Duration::from_secs(1);
        }
        say(&format!(
            "adminalert: the worker (pid {}) {how}; blocks stay in the kernel, restart in {:?}",
            w.pid, self.backoff
        ));
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Ok(())
    }

    fn on_helper(&mut self) -> Result<(), String> {
        let (mut rep, _) = self
            .helper
            .chan
            .recv_reply()
            .map_err(|e| format!("the command helper is gone ({e})"))?;
        let Some(f) = self.forwarded.pop_front() else {
            return Err("the command helper answered nothing asked".into());
        };
        if f.helper_id != rep.id {
            return Err("the command helper answered out of order".into());
        }
        if f.live {
            rep.id = f.id;
            self.send(f.chan, &[rep], None);
        }
        Ok(())
    }

    fn on_host(&mut self) -> Result<(), String> {
        let Some(h) = self.host.as_mut() else {
            return Ok(());
        };
        match h.drain() {
            Ok(true) => self.p.refresh_host(),
            Ok(false) => {}
            Err(e) => {
                say(&format!(
                    "adminalert: address watch failed ({e}); own addresses are no longer refreshed"
                ));
                self.host = None;
            }
        }
        Ok(())
    }

    /// `Ok(true)`: stop.
    fn on_signal(&mut self) -> Result<bool, String> {
        while let Ok(Some(s)) = self.sig.read_signal() {
            match Signal::try_from(i32::try_from(s.ssi_signo).unwrap_or(0)) {
                Ok(Signal::SIGHUP) => self.reload(),
                Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => {
                    let l = &self.p.log;
                    say(&format!(
                        "adminalert: stopping on {s}; the table stays in place ({} refusals, {} bad records from workers)",
                        l.refusals, l.decode_errors
                    ));
                    self.shutdown();
                    return Ok(true);
                }
                Ok(Signal::SIGCHLD)
                    if !matches!(
                        waitpid(self.helper.pid, Some(WaitPidFlag::WNOHANG)),
                        Ok(WaitStatus::StillAlive)
                    ) =>
                {
                    return Err("the command helper exited".into());
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// SIGHUP: the parent's ignore list again (a list that does not load is said and
    /// the old one kept), the detection chain's ignore sets with it; then the worker.
    fn reload(&mut self) {
        let _ = self.p.reload_ignore(0);
        self.event(Event::Reload);
    }

    fn timers(&mut self) {
        let now = Instant::now();
        self.p.log.tick();
        if self.table_due.is_some_and(|t| t <= now) {
            self.table_due = None;
            self.on_table();
        }
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            match spawn::worker(&self.plan) {
                Ok(w) => {
                    say(&format!("worker restarted (pid {})", w.pid));
                    self.worker = Some(w);
                }
                Err(e) => {
                    say(&format!(
                        "adminalert: ERROR: cannot restart the worker ({e}); next try in {:?}",
                        self.backoff
                    ));
                    self.restart_at = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn on_table(&mut self) {
        let own = self.p.nft_portid();
        let Some(w) = self.p.watch.as_mut() else {
            return;
        };
        match w.drain(&self.p.cfg.nft_table, own) {
            Ok(c) if c.any() => self.table_changed(),
            Ok(_) => {}
            Err(e) => {
                say(&format!("adminalert: nftables watch failed ({e}); a deleted table is rebuilt only at the next start"));
                self.p.watch = None;
            }
        }
    }

    /// SIGTERM the worker, wait for it at most 2 s, remove the sockets. The table (and
    /// with it every block) stays in the kernel.
    fn shutdown(&mut self) {
        if let Some(w) = self.worker.take() {
            self.signal(&w, Signal::SIGTERM);
            let killed = exited_within(&w, 2000) || self.signal(&w, Signal::SIGKILL);
            // A worker that could not be signalled is not waited for: it dies with this
            // process (PR_SET_PDEATHSIG).
            if killed {
                let _ = waitpid(w.pid, None);
            }
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// Send one reply, waiting for room at most [`SEND_WAIT`] (our ends are non-blocking).
fn send_waiting(ch: &Channel, r: &Reply, fd: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
    let deadline = Instant::now() + SEND_WAIT;
    loop {
        match ch.send_reply(r, fd) {
            Err(Errno::EAGAIN) => {}
            other => return other,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = [PollFd::new(ch.fd(), PollFlags::POLLOUT)];
        match nix::poll::poll(
            &mut p,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO),
        ) {
            Ok(0) => return Err(Errno::ETIMEDOUT),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether the worker's pidfd says it exited within `ms` milliseconds.
fn exited_within(w: &spawn::Worker, ms: u16) -> bool {
    let mut p = [PollFd::new(w.pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut p, PollTimeout::from(ms)), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_privsep::DecodeError;

    #[test]
    fn bad_records_restart_the_worker() {
        assert_eq!(fault(&RecvError::Os(Errno::EAGAIN)), Fault::Again);
        assert!(matches!(
            fault(&RecvError::Closed),
            Fault::Restart(_, false)
        ));
        assert!(matches!(
            fault(&RecvError::Os(Errno::ECONNRESET)),
            Fault::Restart(_, false)
        ));
        assert!(matches!(
            fault(&RecvError::Truncated),
            Fault::Restart(_, true)
        ));
        let Fault::Restart(why, true) = fault(&RecvError::Decode(DecodeError::Verb(99))) else {
            panic!()
        };
        assert!(why.contains("unknown verb 99"), "{why}");
    }
}
