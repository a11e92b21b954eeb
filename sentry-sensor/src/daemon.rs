//! Start-up sequence and the event loop.
//!
//! Order (nothing hostile is parsed before step 6):
//! 1. parse the command line, open the log sink (syslog socket);
//! 2. read the configuration and the ignore list;
//! 3. open every socket the sensor will ever need: basic-mode listeners, the /proc/net
//!    socket tables, a first connection to the enforcer (the detection input, an NFLOG
//!    socket, is not opened here: the enforcer binds it and hands it over on that
//!    connection, so the sensor needs no capability for it);
//! 4. switch to the service user, drop every capability, no_new_privs, not dumpable;
//! 5. install the seccomp allowlist;
//! 6. run: parse → classify → port policy → state engine → enforcer.

use std::io::Write as _;
use std::time::Duration;

use policy::Config;
use sentry_proto::{Decision, Hello, Mode, Protocol, SensorStats, PROTOCOL_VERSION};

use crate::basic::Basic;
use crate::cli::{self, Args, Command};
use crate::client::{Client, Event};
use crate::confine;
use crate::listeners::{ListenerSource, Listeners};
use crate::log::Logger;
use crate::nflog::{Message, Nflog};
use crate::pipeline::Detector;
use crate::ports::{PortConfig, PortPolicy};
use crate::state::{Hit, Report, State, StateConfig, DEFAULT_REREPORT_MS};
use crate::sys::{self, PollFd, POLLERR, POLLHUP, POLLIN, POLLOUT};
use crate::time::{Clock, Mono, Wall};
/// Housekeeping (state expiry, kernel counters, listener-table refresh: a service that
/// stopped is watched again within this time).
const HOUSEKEEPING_MS: u64 = 1_000;
/// Most NFLOG datagrams processed before other descriptors get a turn.
const MAX_FRAMES_PER_WAKE: usize = 16_384;

/// The sensor's scheduler slice (EEVDF custom slice; the kernel's minimum is 100 us).
const SCHED_SLICE_NS: u64 = 100_000;

/// Entry point for `main`: returns the process exit code.
pub fn main_with_args<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> i32 {
    match cli::parse(args) {
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            0
        }
        Ok(Command::Version) => {
            println!("sentry-sensor {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Command::SelftestSeccomp) => selftest_seccomp(),
        Ok(Command::Run(args)) => run(args),
        Err(e) => {
            eprintln!("sentry-sensor: {e}\n\n{}", cli::USAGE);
            2
        }
    }
}

fn selftest_seccomp() -> i32 {
    if let Err(e) = sys::set_no_new_privs()
        .map_err(|e| e.to_string())
        .and_then(|()| confine::apply_seccomp().map_err(|e| e.to_string()))
    {
        eprintln!("sentry-sensor: selftest: {e}");
        return 1;
    }
    // An allowed call still works...
    let _ = writeln!(
        std::io::stderr(),
        "seccomp filter installed; making a forbidden call"
    );
    // ...and a forbidden one kills the process with SIGSYS.
    let r = sys::forbidden_syscall();
    eprintln!("sentry-sensor: selftest: forbidden system call returned {r:?}: filter NOT enforced");
    3
}

fn sensor_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(sentry_proto::MAX_NAME_LEN)
        .collect();
    if clean.is_empty() {
        "sentry-sensor".into()
    } else {
        clean
    }
}

fn fatal(log: &mut Logger, msg: &str) -> i32 {
    log.error(&format!("adminalert: ERROR: {msg}"));
    if !log.is_stderr() {
        eprintln!("sentry-sensor: {msg}");
    }
    1
}

fn run(args: Args) -> i32 {
    // Under systemd too the sensor logs through the syslog socket (journald's), not
    // stderr: only there can PortSentry's lines and sentry's own carry different tags.
    let stderr = args.log_stderr;
    let mut log = match (&args.syslog_socket, stderr) {
        (Some(p), false) => Logger::syslog_at(p, 50),
        _ => Logger::open(stderr, 50),
    };

    // 1. Who we will become (fail fast on a bad --user, refuse root without one).
    let target = match confine::resolve_user(args.user.as_deref()) {
        Ok(t) => t,
        Err(e) => return fatal(&mut log, &e.0),
    };

    // 2. Configuration and ignore list.
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("sentry-sensor: {e}");
            }
            log.error(&format!(
                "adminalert: ERROR: configuration {} rejected ({} errors)",
                args.config.display(),
                errs.0.len()
            ));
            return 2;
        }
    };
    for w in &config.warnings {
        log.notice(&format!("adminalert: warning: {w}"));
    }
    log.set_rates(config.log_rate, config.log_rate_total);
    let ignore = match config.load_ignore() {
        Ok(i) => i,
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("sentry-sensor: {e}");
            }
            return 2;
        }
    };
    let modes = args.modes.clone();
    let has = |m: Mode| modes.contains(&m);
    for (mode, set, key) in [
        (Mode::Tcp, &config.tcp_ports, "TCP_PORTS"),
        (Mode::Stcp, &config.tcp_ports, "TCP_PORTS"),
        (Mode::Udp, &config.udp_ports, "UDP_PORTS"),
        (Mode::Sudp, &config.udp_ports, "UDP_PORTS"),
    ] {
        if has(mode) && set.is_empty() {
            return fatal(
                &mut log,
                &format!("mode -{mode} needs {key} in {}", args.config.display()),
            );
        }
    }

    // 3. Open everything.
    let tcp_ports: Vec<u16> = config.tcp_ports.iter().collect();
    let udp_ports: Vec<u16> = config.udp_ports.iter().collect();
    let (basic, failures) = Basic::open(
        has(Mode::Tcp).then_some(tcp_ports.as_slice()),
        has(Mode::Udp).then_some(udp_ports.as_slice()),
        config.port_banner.as_deref(),
    );
    for f in &failures {
        log.notice(&format!(
            "adminalert: ERROR: could not bind {} socket to {}: {}. Port {} will not be monitored.",
            f.mode.protocol().as_upper(),
            f.addr,
            f.error,
            f.addr.port()
        ));
    }
    if (has(Mode::Tcp) || has(Mode::Udp)) && basic.is_empty() {
        return fatal(&mut log, "no basic-mode port could be bound");
    }
    let port_cfg = PortConfig {
        tcp_ports: tcp_ports.clone(),
        udp_ports: udp_ports.clone(),
        advanced_ports_tcp: config.advanced_ports_tcp,
        advanced_ports_udp: config.advanced_ports_udp,
        advanced_exclude_tcp: config.advanced_exclude_tcp.iter().collect(),
        advanced_exclude_udp: config.advanced_exclude_udp.iter().collect(),
    };
    let policy = PortPolicy::new(&modes, &port_cfg);
    // SCTP and IP-protocol probes are watched only when TCP or UDP capture is.
    let capturing = policy.captures(Protocol::Tcp) || policy.captures(Protocol::Udp);
    let own_inodes = basic.inodes();
    let (listener_src, mut listeners) = if capturing {
        match ListenerSource::open(
            policy.captures(Protocol::Tcp),
            policy.captures(Protocol::Udp),
        )
        .and_then(|mut s| s.read(&own_inodes).map(|l| (s, l)))
        {
            Ok((s, l)) => (Some(s), l),
            Err(e) => return fatal(&mut log, &format!("cannot read the socket tables: {e}")),
        }
    } else {
        (None, Listeners::default())
    };
    // RESTART_GRACE: a port served a moment ago is no tripwire (ending a little before
    // the kernel's, so the kernel never blocks what the sensor would not report).
    listeners.set_grace_ms(crate::listeners::sensor_grace(config.restart_grace));
    let hello = Hello {
        version: PROTOCOL_VERSION,
        sensor: sensor_name(),
        pid: std::process::id(),
        modes: modes.clone(),
    };
    let mut client = Client::new(&args.runtime_dir, hello, config.sensor_queue);
    let mut events = Vec::new();
    let clock = Clock::start();
    client.tick(clock.now(), &mut events);

    // A short scheduler slice: woken by a probe, the sensor may preempt a busy task
    // instead of waiting up to a tick for its turn.
    if let Err(e) = sentry_sched::set_sched_slice(SCHED_SLICE_NS) {
        log.notice(&format!(
            "adminalert: warning: cannot set a {} us scheduler slice: {e}",
            SCHED_SLICE_NS / 1000
        ));
    }

    // 4 + 5. Confine.
    if let Err(e) = confine::drop_privileges(target.as_ref()) {
        return fatal(&mut log, &e.0);
    }
    let uid = nix::unistd::Uid::current();
    if let Err(e) = confine::apply_seccomp() {
        return fatal(&mut log, &e.0);
    }

    let mode_list: Vec<String> = modes.iter().map(|m| format!("-{m}")).collect();
    log.notice(&format!(
        "adminalert: sentry-sensor {} is active: modes {}; uid {}; capabilities dropped; seccomp filter installed",
        env!("CARGO_PKG_VERSION"),
        mode_list.join(" "),
        uid
    ));
    for (mode, port) in basic.bound() {
        log.notice(&format!(
            "adminalert: Going into listen mode on {} port: {port}",
            mode.protocol().as_upper()
        ));
    }
    if let Some(p) = &policy_summary(&modes, &port_cfg) {
        log.notice(p);
    }
    if let Some(src) = &listener_src {
        log.notice(&format!(
            "adminalert: listening services learnt from {} ({} TCP, {} UDP now)",
            src.backend(),
            listeners.count(Protocol::Tcp),
            listeners.count(Protocol::Udp)
        ));
    }

    // 6. Run.
    let window_ms = u64::try_from(config.scan_window.as_millis()).unwrap_or(u64::MAX);
    let state = State::new(StateConfig {
        trigger: config.scan_trigger,
        window_ms,
        max_sources: config.state_max_sources,
        rereport_ms: window_ms.min(DEFAULT_REREPORT_MS),
    })
    .with_prefix6(config.block_prefix6);
    let mut sensor = Sensor {
        detector: Detector::new(policy, (listener_src, listeners), own_inodes, ignore, state),
        stats: SensorStats::default(),
        capturing,
        log,
        client,
        events,
        reports: Vec::new(),
        clock,
    };
    sensor.event_loop(basic, args.stats_interval_ms)
}

fn policy_summary(modes: &[Mode], c: &PortConfig) -> Option<String> {
    let mut parts = Vec::new();
    if modes.contains(&Mode::Stcp) {
        parts.push(format!("stealth TCP ports {:?}", c.tcp_ports));
    }
    if modes.contains(&Mode::Sudp) {
        parts.push(format!("stealth UDP ports {:?}", c.udp_ports));
    }
    if modes.contains(&Mode::Atcp) {
        parts.push(format!(
            "advanced TCP ports 1-{} excluding {:?} and listening services",
            c.advanced_ports_tcp.saturating_sub(1),
            c.advanced_exclude_tcp
        ));
    }
    if modes.contains(&Mode::Audp) {
        parts.push(format!(
            "advanced UDP ports 1-{} excluding {:?} and bound services",
            c.advanced_ports_udp.saturating_sub(1),
            c.advanced_exclude_udp
        ));
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!("adminalert: Watching {}", parts.join("; ")))
    }
}

struct Sensor {
    /// The packet path: frames and basic-mode hits in, reports out.
    detector: Detector,
    stats: SensorStats,
    /// Stealth or advanced modes run: an NFLOG socket from the enforcer is wanted.
    capturing: bool,
    log: Logger,
    client: Client,
    events: Vec<Event>,
    /// Reports of this wake-up, on their way to the client.
    reports: Vec<Report>,
    clock: Clock,
}

impl Sensor {
    fn now(&self) -> Mono {
        self.clock.now()
    }

    /// Hand this wake-up's reports to the client.
    fn send_reports(&mut self) {
        for r in self.reports.drain(..) {
            self.client.enqueue(r);
        }
    }

    fn event_loop(&mut self, mut basic: Basic, stats_ms: u64) -> i32 {
        let mut fds: Vec<PollFd> = Vec::new();
        let mut next_housekeeping = Mono(0);
        let mut next_stats = Mono(stats_ms);
        let mut basic_hits: Vec<Hit> = Vec::new();
        let mut logged_drops = (0u64, 0u64);
        let mut logged_untracked = 0u64;
        // The detection input: none until the enforcer hands its NFLOG socket over (until
        // then only the basic modes detect anything).
        let mut nflog: Option<Nflog> = None;
        let mut nflog_seen = (0u64, 0u64);
        if self.capturing {
            self.log.notice(
                "adminalert: waiting for sentry-enforcer to hand over the detection input (NFLOG); stealth and advanced modes detect nothing until then, basic modes work",
            );
        }
        loop {
            // Poll set: [nflog] [client] basic...
            fds.clear();
            if let Some(n) = &nflog {
                fds.push(PollFd {
                    fd: n.fd(),
                    events: POLLIN,
                    revents: 0,
                });
            }
            let client_idx = self.client.poll_interest().map(|(fd, out)| {
                fds.push(PollFd {
                    fd,
                    events: POLLIN | if out { POLLOUT } else { 0 },
                    revents: 0,
                });
                fds.len() - 1
            });
            let basic_start = fds.len();
            fds.extend(basic.fds().map(|fd| PollFd {
                fd,
                events: POLLIN,
                revents: 0,
            }));

            let now = self.now();
            let mut timeout = next_housekeeping.min(next_stats).ms_since(now);
            if let Some(t) = self.client.next_attempt_in(now) {
                timeout = timeout.min(t);
            }
            if let Some(due) = self.detector.pending_due() {
                timeout = timeout.min(due.ms_since(now));
            }
            let timeout = Duration::from_millis(timeout.min(1_000));
            if let Err(e) = sys::poll(&mut fds, timeout) {
                return fatal(&mut self.log, &format!("poll: {e}"));
            }

            // Detection input first: it is the latency-critical path.
            let nflog_ready = fds
                .first()
                .is_some_and(|p| nflog.is_some() && p.revents != 0);
            if let (Some(n), true) = (&mut nflog, nflog_ready) {
                let at = (self.now(), Wall::now());
                let (d, log, out) = (&mut self.detector, &mut self.log, &mut self.reports);
                let r = n.drain(MAX_FRAMES_PER_WAKE, |m| match m {
                    Message::Packet(p) => d.frame(p.payload, p.state, at, log, out),
                    Message::Control => {}
                    Message::Bad(_) => d.counters.malformed += 1,
                });
                if let Err(e) = r {
                    self.log.error(&format!(
                        "adminalert: ERROR: reading the NFLOG socket failed ({e}); stealth and advanced detection stop until sentry-enforcer hands over a new one"
                    ));
                    nflog = None;
                }
                let now = self.now();
                self.detector
                    .judge_pending(now, false, &mut self.log, &mut self.reports);
                self.send_reports();
                // Reports of this wake go out now, in one write, not after another poll.
                self.client.flush(self.now(), &mut self.events);
            }
            if let Some(i) = client_idx {
                if let Some(p) = fds.get(i) {
                    let now = self.now();
                    self.client.on_ready(
                        p.revents & POLLIN != 0,
                        p.revents & POLLOUT != 0,
                        p.revents & (POLLHUP | POLLERR) != 0,
                        now,
                        &mut self.events,
                    );
                }
            }
            if let Some(fd) = self.client.take_capture() {
                if self.capturing {
                    // A new one replaces the old (which the enforcer could only bind after
                    // the old binding was gone, so the old one no longer receives).
                    nflog = Some(Nflog::new(fd));
                    nflog_seen = (0, 0);
                } else {
                    drop(fd);
                }
            }
            let mut basic_errors = 0;
            for (i, p) in fds.iter().enumerate().skip(basic_start) {
                if p.revents & POLLIN != 0 {
                    basic.on_ready(i - basic_start, &mut basic_hits, &mut basic_errors);
                }
            }
            if !basic_hits.is_empty() {
                let at = (self.now(), Wall::now());
                for h in basic_hits.drain(..) {
                    let r = self.detector.basic(&h, at, &mut self.log);
                    self.reports.extend(r);
                }
                self.send_reports();
            }

            // A held-back probe whose re-check is due although no frame arrived to
            // trigger it (the last probes of a burst): judged now, not at the next packet
            // (the poll above already woke for it).
            if self.detector.pending_due().is_some() {
                let now = self.now();
                self.detector
                    .judge_pending(now, false, &mut self.log, &mut self.reports);
                if !self.reports.is_empty() {
                    self.send_reports();
                    self.client.flush(self.now(), &mut self.events);
                }
            }
            let now = self.now();
            self.client.tick(now, &mut self.events);
            if now >= next_housekeeping {
                next_housekeeping = now.plus_ms(HOUSEKEEPING_MS);
                self.detector.state_mut().expire(now);
                if let Some(n) = &nflog {
                    let seen = (n.overruns, n.truncated);
                    self.stats.kernel_drops += seen.0 - nflog_seen.0;
                    self.detector.counters.malformed += seen.1 - nflog_seen.1;
                    if seen.0 != nflog_seen.0 {
                        self.log.notice(&format!(
                            "adminalert: WARNING: the NFLOG socket overran {} times (the kernel dropped probes before the sensor read them)",
                            seen.0 - nflog_seen.0
                        ));
                    }
                    nflog_seen = seen;
                }
                self.detector
                    .refresh_listeners(now, (true, true), &mut self.log);
                let drops = (self.client.queue_drops, self.client.in_flight_evictions);
                if drops != logged_drops {
                    self.log.notice(&format!(
                        "adminalert: WARNING: enforcer queue full (SENSOR_QUEUE): dropped the {} oldest unsent requests ({} in total); {} requests already sent stopped waiting for their answer ({} in total)",
                        drops.0 - logged_drops.0,
                        drops.0,
                        drops.1 - logged_drops.1,
                        drops.1
                    ));
                    logged_drops = drops;
                }
                let untracked = self.detector.state().untracked();
                if untracked != logged_untracked {
                    self.log.notice(&format!(
                        "adminalert: WARNING: state table full (STATE_MAX_SOURCES) of sources with more evidence: {} new single-packet sources not tracked ({} in total)",
                        untracked - logged_untracked,
                        untracked
                    ));
                    logged_untracked = untracked;
                }
            }
            if now >= next_stats {
                next_stats = now.plus_ms(stats_ms);
                let d = &self.detector;
                self.stats.packets = d.counters.packets;
                self.stats.malformed = d.counters.malformed;
                self.stats.ignored = d.counters.ignored;
                self.stats.hits = d.hits;
                self.stats.reports = d.reports;
                self.stats.tracked_sources = d.state().len() as u64;
                self.stats.evictions = d.state().evictions();
                self.stats.queue_drops = self.client.queue_drops;
                self.client
                    .send_stats(self.stats.clone(), now, &mut self.events);
            }
            self.log.tick(now);
            self.drain_events();
        }
    }

    fn drain_events(&mut self) {
        let now = self.now();
        for e in std::mem::take(&mut self.events) {
            match e {
                Event::Connected => self.log.notice(&format!(
                    "adminalert: connected to sentry-enforcer at {}",
                    self.client.socket_path().display()
                )),
                Event::Disconnected(why) => self.log.notice(&format!(
                    "adminalert: lost connection to sentry-enforcer ({why}); {} requests queued, reconnecting",
                    self.client.queued()
                )),
                Event::Refused(r) => self
                    .log
                    .error(&format!("adminalert: ERROR: sentry-enforcer refused the connection: {r:?}")),
                Event::Capture { group, snaplen } => self.log.notice(&format!(
                    "adminalert: detection input from sentry-enforcer: NFLOG group {group}, {snaplen} bytes per packet (packets this host's input path accepts)"
                )),
                Event::CaptureProblem(why) => self
                    .log
                    .error(&format!("adminalert: ERROR: capture hand-over: {why}")),
                Event::Unblocked(addr) => self.detector.state_mut().forget(addr),
                Event::Decided { report, decision } => {
                    // Refused for want of budget: more evidence may change the answer.
                    if matches!(decision, Decision::RateLimited | Decision::Capped) {
                        self.detector
                            .state_mut()
                            .escalate(report.src, report.distinct_ports);
                    }
                    self.log.packet(now, report.src, || {
                        crate::log::decision_line(
                            report.src,
                            report.scan,
                            report.mode,
                            report.port,
                            decision,
                        )
                    })
                }
            }
        }
    }
}
