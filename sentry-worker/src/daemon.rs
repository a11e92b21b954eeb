//! The `sentry-enforcer` process: command line, sockets, peer checks, threads, signals and
//! confinement. Decisions are made by [`crate::engine::Engine`].

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use interprocess::local_socket::traits::{Listener as _, Stream as _};
use interprocess::os::unix::uds_local_socket::{Listener, Stream};
use interprocess::TryClone as _;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Group, Uid, User};
use sentry_proto::{
    encode_frame, read_frame, write_frame, BlockMeta, ControlRequest, ControlResponse,
    EnforcerFrame, ProtoError, Refusal, SensorInfo, PROTOCOL_VERSION,
};

use crate::audit::{Level, Logger, Peer};
use crate::engine::{Engine, Options};
use crate::error::EnforcerError;
use crate::session::{Event, Session};
use crate::time::{WallMs, WallUs};

/// Time a new sensor connection has from accept to a complete Hello: one deadline for
/// the whole handshake, not per read (a peer dripping a byte at a time gains nothing).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a frame has from its first byte to its last, likewise one deadline per frame.
const FRAME_STALL: Duration = Duration::from_secs(10);
/// Deadline of one control frame, from the moment the enforcer starts waiting for it to
/// its last byte: an idle connection ends after this, and so does one that drips a byte
/// now and then (a per-read timeout would let it hold its slot for ever).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// A control stream read under one deadline for the whole frame ([`CONTROL_TIMEOUT`]).
struct FrameDeadline<'a> {
    s: &'a mut Stream,
    deadline: Instant,
}

impl io::Read for FrameDeadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.s.set_recv_timeout(Some(left))?;
        self.s.read(buf)
    }
}
/// Most "sensor connected" lines per second; a process with the sensor's uid that
/// reconnects in a loop must not be able to flood syslog (the rest are counted and
/// summarised).
const CONNECT_LINES_PER_SECOND: u32 = 5;
/// Most refusal audit records per second; the rest are only counted.
const REFUSALS_PER_SECOND: u32 = 20;
/// How often the metrics textfile in METRICS_DIR is rewritten, in seconds.
const METRICS_EVERY_S: u64 = 5;

pub const USAGE: &str = "\
usage: sentry-enforcer [--config FILE] [--runtime-dir DIR] [--state-dir DIR]
                       [--sensor-user USER] [--sensor-exe PATH] [--sensor-unit UNIT]
                       [--log-stderr]
       sentry-enforcer --recover [--config FILE] [--runtime-dir DIR] [--state-dir DIR]
       sentry-enforcer --help | --version

The root half of sentry: authenticates the sensor on DIR/enforcer.sock, re-checks every
block request against its own rules, runs the configured kill actions, persists state in
the state directory and writes one audit record per decision. sentryctl talks to it on
DIR/control.sock.

  --config FILE       configuration (default /etc/sentry/sentry.conf, or
                      /etc/portsentry/portsentry.conf if only that exists)
  --runtime-dir DIR   sockets (default /run/sentry)
  --state-dir DIR     persistent block state (default /var/lib/sentry)
  --sensor-user USER  the only user allowed on enforcer.sock (default sentry)
  --sensor-exe PATH   the sensor binary: the detection input goes only to a process
                      running this file (same device and inode; default sentry-sensor
                      next to this executable)
  --sensor-unit UNIT  under systemd, the unit the sensor must run in (default
                      sentry-sensor.service)
  --log-stderr        log to stderr instead of syslog (also when JOURNAL_STREAM is set)
  --recover           rebuild a damaged (or newer version's) state from what still
                      verifies, BLOCKED_FILE and sentry's hosts.deny markers, keep the
                      old files as *.damaged-EPOCH, and exit (the enforcer must be stopped)
";

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub config: PathBuf,
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
    pub sensor_user: String,
    /// `--sensor-exe`: `None` is `sentry-sensor` next to our own executable.
    pub sensor_exe: Option<PathBuf>,
    /// `--sensor-unit`: `None` is [`sentry_enforcer::peercheck::DEFAULT_UNIT`].
    pub sensor_unit: Option<String>,
    pub log_stderr: bool,
    /// For tests: the directory the resolver and lease files are looked up
    /// under instead of `/` (`--infra-root`, not in the usage text).
    pub infra_root: PathBuf,
    /// For tests: the file the kernel's boot id is read from instead of
    /// /proc/sys/kernel/random/boot_id, so a reboot can be faked (`--boot-id-file`, not
    /// in the usage text).
    pub boot_id_file: PathBuf,
    /// `--boot-id ID`: the current boot's id (the unit passes systemd's `%b`, because its
    /// `ProcSubset=pid` hides the kernel's file).
    pub boot_id: Option<String>,
    /// `--recover`.
    pub recover: bool,
    /// `--privsep`: started by the root parent, with its channels and the listening
    /// sockets at the descriptors [`crate::privsep`] names. Without it (and without
    /// `--recover`) the worker refuses to run.
    pub privsep: bool,
}

/// What the command line asks for.
// Made once, at start, and matched at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Run(Args),
    Help,
    Version,
}

/// Parse arguments (without `argv[0]`). Every option may be given as `--opt VALUE` or
/// `--opt=VALUE`; repeated or unknown options are errors.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Cmd, String> {
    let mut g = Given::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let a = a
            .into_string()
            .map_err(|a| format!("argument is not valid UTF-8: {}", a.to_string_lossy()))?;
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let slot: &mut Option<String> = match name.as_str() {
            "--help" | "-h" => return Ok(Cmd::Help),
            "--version" | "-V" => return Ok(Cmd::Version),
            "--log-stderr" => {
                if inline.is_some() {
                    return Err("--log-stderr takes no value".into());
                }
                g.log_stderr = true;
                continue;
            }
            "--recover" => {
                if inline.is_some() || g.recover {
                    return Err("--recover takes no value and is given once".into());
                }
                g.recover = true;
                continue;
            }
            "--privsep" => {
                if inline.is_some() || g.privsep {
                    return Err("--privsep takes no value and is given once".into());
                }
                g.privsep = true;
                continue;
            }
            // The parent's own options, passed through with the rest: checked there.
            "--worker-user" => &mut g.worker_user,
            "--worker" => &mut g.worker,
            "--config" => &mut g.config,
            "--runtime-dir" => &mut g.runtime_dir,
            "--state-dir" => &mut g.state_dir,
            "--sensor-user" => &mut g.sensor_user,
            "--sensor-exe" => &mut g.sensor_exe,
            "--sensor-unit" => &mut g.sensor_unit,
            "--infra-root" => &mut g.infra_root,
            "--boot-id-file" => &mut g.boot_id_file,
            "--boot-id" => &mut g.boot_id,
            other => return Err(format!("unknown argument {other:?}")),
        };
        if slot.is_some() {
            return Err(format!("{name} given twice"));
        }
        let v = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .into_string()
                .map_err(|_| format!("{name}: value is not valid UTF-8"))?,
        };
        if v.is_empty() {
            return Err(format!("{name}: empty value"));
        }
        *slot = Some(v);
    }
    g.into_args().map(Cmd::Run)
}

/// The options as given, before their defaults.
#[derive(Debug, Default)]
struct Given {
    config: Option<String>,
    runtime_dir: Option<String>,
    state_dir: Option<String>,
    sensor_user: Option<String>,
    sensor_exe: Option<String>,
    sensor_unit: Option<String>,
    infra_root: Option<String>,
    boot_id_file: Option<String>,
    boot_id: Option<String>,
    worker_user: Option<String>,
    worker: Option<String>,
    log_stderr: bool,
    recover: bool,
    privsep: bool,
}

impl Given {
    /// The arguments, with the defaults for what was not given.
    fn into_args(self) -> Result<Args, String> {
        let Given {
            config,
            runtime_dir,
            state_dir,
            sensor_user,
            sensor_exe,
            sensor_unit,
            infra_root,
            boot_id_file,
            boot_id,
            log_stderr,
            recover,
            privsep,
            worker_user: _,
            worker: _,
        } = self;
        Ok(Args {
            config: config.map_or_else(policy::Config::default_path, PathBuf::from),
            runtime_dir: PathBuf::from(runtime_dir.unwrap_or_else(|| "/run/sentry".into())),
            state_dir: PathBuf::from(state_dir.unwrap_or_else(|| "/var/lib/sentry".into())),
            sensor_user: sensor_user.unwrap_or_else(|| "sentry".into()),
            sensor_exe: sensor_exe.map(PathBuf::from),
            sensor_unit,
            log_stderr,
            infra_root: PathBuf::from(infra_root.unwrap_or_else(|| "/".into())),
            boot_id_file: boot_id_file.map_or_else(
                || PathBuf::from(crate::engine::DEFAULT_BOOT_ID_PATH),
                PathBuf::from,
            ),
            boot_id: match boot_id {
                Some(v) => Some(
                    crate::store::normalize_boot_id(&v)
                        .ok_or_else(|| format!("--boot-id: {v:?} is not a boot id"))?,
                ),
                None => None,
            },
            recover,
            privsep,
        })
    }
}

/// State shared by the threads.
struct Shared {
    engine: Mutex<Engine>,
    log: Arc<Logger>,
    config_path: PathBuf,
    sensor_uid: Uid,
    /// Ties a sensor connection to the installed sensor before it gets anything.
    /// The root parent's request channel (peer checks, the detection chain, NFLOG).
    parent: Arc<crate::privsep::Link>,
    control_gid: Option<Gid>,
    sensor_busy: AtomicBool,
    /// Control connection slots: root's reserved, each other uid capped ([`crate::control::slots`]).
    control_slots: Mutex<crate::control::slots::Slots>,
    refusals: Mutex<(u64, u32)>,
    /// The connected sensor's stream, for every write to it (acks from its own thread,
    /// block-ended notices from the others), so frames never interleave.
    sensor_out: Mutex<Option<Stream>>,
    /// Per-second budget of "sensor connected" lines: (second, lines, suppressed).
    connect_lines: Mutex<(u64, u32, u64)>,
    // --- detection input (issue #13): the detection chain and the NFLOG hand-over ---
    detect: Mutex<Detect>,
}

/// What the peer check found: the executable, and why it is refused (if it is).
struct Verdict {
    exe: String,
    refused: Option<String>,
}

/// The detection chain's inputs. `modes` are the last ones a sensor announced, kept in
/// the state directory ([`MODES_FILE`]), so the chain holds while the sensor is down and
/// is rebuilt at the next start before any sensor connects. The chain itself, its NFLOG
/// group and the socket bound to it are the root parent's.
struct Detect {
    modes: Option<Vec<sentry_proto::Mode>>,
    /// nf_tables is usable (the parent's probe at start).
    nftables: bool,
    state_dir: PathBuf,
}

/// The announced modes, one line of mode names (`stcp sudp atcp audp`).
const MODES_FILE: &str = "modes";
/// Longer than any list of the six modes: a bigger file is not ours.
const MODES_FILE_MAX: u64 = 128;

/// The modes a previous sensor announced, from the state directory: `Ok(None)` when none
/// were recorded, an error naming the file when it is not a list of mode names.
fn load_modes(dir: &Path) -> Result<Option<Vec<sentry_proto::Mode>>, String> {
    use std::io::Read as _;
    let path = dir.join(MODES_FILE);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut text = String::new();
    f.take(MODES_FILE_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MODES_FILE_MAX {
        return Err(format!(
            "{}: longer than {MODES_FILE_MAX} bytes",
            path.display()
        ));
    }
    parse_modes(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_modes(text: &str) -> Result<Vec<sentry_proto::Mode>, String> {
    let mut modes = Vec::new();
    for w in text.split_ascii_whitespace() {
        let m = sentry_proto::Mode::parse(w).ok_or_else(|| format!("unknown mode {w:?}"))?;
        if modes.contains(&m) {
            return Err(format!("mode {w} twice"));
        }
        modes.push(m);
    }
    if modes.is_empty() {
        return Err("no mode".into());
    }
    Ok(modes)
}

fn save_modes(dir: &Path, modes: &[sentry_proto::Mode]) -> io::Result<()> {
    let line: Vec<&str> = modes.iter().map(|m| m.as_str()).collect();
    crate::store::write_atomic(
        &dir.join(MODES_FILE),
        format!("{}\n", line.join(" ")).as_bytes(),
        0o600,
    )
}
// --- end detection input ---

/// Lock `m`, poisoned or not. A panic while holding one of the daemon's locks cannot leave
/// its data half-updated in a way that matters more than stopping would: keep serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        lock(&self.engine)
    }

    /// Audit a refusal, at most REFUSALS_PER_SECOND per second (the rest only counted).
    fn refuse(&self, reason: &str, peer: Option<Peer>) {
        let now = WallMs::now();
        let allowed = {
            let mut r = lock(&self.refusals);
            let sec = now.secs();
            if r.0 != sec {
                *r = (sec, 0);
            }
            r.1 += 1;
            r.1 <= REFUSALS_PER_SECOND
        };
        let mut e = self.engine();
        if allowed {
            e.reject(now, reason, peer);
        } else {
            e.count_suppressed_rejection();
        }
    }
}

impl Shared {
    /// Write one frame to the connected sensor. `false` when there is none or the write
    /// failed (the sensor's own thread then sees the connection end).
    fn write_sensor(&self, f: &EnforcerFrame) -> bool {
        let mut out = lock(&self.sensor_out);
        match out.as_mut() {
            Some(s) => write_frame(s, f).is_ok(),
            None => false,
        }
    }

    /// Tell the sensor which blocks ended (taken from the engine, then sent without
    /// holding its lock).
    fn notify_lifted(&self) {
        let lifted = self.engine().take_lifted();
        for addr in lifted {
            if !self.write_sensor(&EnforcerFrame::Unblocked { addr }) {
                return;
            }
        }
    }

    /// Log that a sensor connected, at most CONNECT_LINES_PER_SECOND a second; the count
    /// of the rest is logged once that second is over.
    fn log_connected(&self, line: &str) {
        let sec = WallMs::now().secs();
        let mut c = lock(&self.connect_lines);
        self.roll_connect_lines(&mut c, sec);
        if c.1 < CONNECT_LINES_PER_SECOND {
            c.1 += 1;
            self.log.info(line);
        } else {
            c.2 += 1;
        }
    }

    /// The one-second tick's part: summarise a second that is over even when no
    /// connection follows it.
    fn flush_connect_lines(&self) {
        let sec = WallMs::now().secs();
        let mut c = lock(&self.connect_lines);
        self.roll_connect_lines(&mut c, sec);
    }

    fn roll_connect_lines(&self, c: &mut (u64, u32, u64), sec: u64) {
        if c.0 == sec {
            return;
        }
        if c.2 > 0 {
            self.log.info(&format!(
                "adminalert: {} further sensor connections not logged individually",
                c.2
            ));
        }
        *c = (sec, 0, 0);
    }
}

fn peer_of(s: &Stream) -> io::Result<(Peer, u32)> {
    let c = getsockopt(s, sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok((
        Peer {
            uid: c.uid(),
            pid: u32::try_from(c.pid()).unwrap_or(0),
        },
        c.gid(),
    ))
}

fn send_refusal(s: &mut Stream, r: Refusal) {
    let _ = write_frame(s, &EnforcerFrame::Refused(r));
}

/// How long a new sensor connection waits for the previous one's slot.
const SLOT_WAIT: Duration = Duration::from_millis(50);

struct SensorSlot<'a>(&'a Shared);

impl Drop for SensorSlot<'_> {
    fn drop(&mut self) {
        *lock(&self.0.sensor_out) = None;
        self.0.engine().sensor = None;
        self.0.sensor_busy.store(false, Ordering::SeqCst);
    }
}

/// Authenticate a new connection before any thread or slot is spent on it: the peer's
/// credentials are the kernel's, available at once, so nothing here waits on the peer.
fn admit(sh: &Shared, s: &mut Stream, sensor: bool) -> Option<Peer> {
    let (peer, gid) = match peer_of(s) {
        Ok(p) => p,
        Err(e) => {
            sh.refuse(&format!("cannot read peer credentials: {e}"), None);
            return None;
        }
    };
    let admitted = if sensor {
        admit_sensor(sh, s, peer)
    } else {
        admit_control(sh, s, peer, gid)
    };
    admitted.then_some(peer)
}

/// The sensor's checks: its uid, the verified executable, one at a time.
fn admit_sensor(sh: &Shared, s: &mut Stream, peer: Peer) -> bool {
    if peer.uid != sh.sensor_uid.as_raw() {
        send_refusal(s, Refusal::NotAuthorized);
        sh.refuse(
            &format!(
                "peer uid {} (pid {}) is not the sensor user (uid {})",
                peer.uid,
                peer.pid,
                sh.sensor_uid.as_raw()
            ),
            Some(peer),
        );
        return false;
    }
    // Same uid is not enough (issue #21): the peer must be the installed sensor. A
    // root peer could bind the NFLOG group itself, so checking it adds nothing.
    if peer.uid != 0 {
        use std::os::fd::AsFd;
        let mut req = sentry_privsep::Request::new(sentry_privsep::Verb::Peer, 0);
        req.extra = u64::from(sh.sensor_uid.as_raw());
        let v = match sh.parent.call(&[req], Some(s.as_fd())) {
            Ok((mut r, _)) => match r.pop().map(crate::privsep::check) {
                Some(Ok(rep)) => Verdict {
                    exe: rep.text,
                    refused: None,
                },
                Some(Err(f)) => Verdict {
                    exe: "unknown".into(),
                    refused: Some(f.to_string()),
                },
                None => Verdict {
                    exe: "unknown".into(),
                    refused: Some("no reply".into()),
                },
            },
            Err(f) => Verdict {
                exe: "unknown".into(),
                refused: Some(f.to_string()),
            },
        };
        if let Some(why) = v.refused {
            send_refusal(s, Refusal::NotAuthorized);
            sh.refuse(
                &format!(
                    "sensor claimant uid {} pid {} exe {} is not the verified sensor: {why}; it gets no detection input",
                    peer.uid, peer.pid, v.exe
                ),
                Some(peer),
            );
            return false;
        }
    }
    // One sensor at a time: a second connection is refused, not allowed to replace
    // the first (a dead sensor's socket closes when its process exits, so a restarted
    // sensor gets in; a second live one would only duplicate or hijack the stream).
    // A sensor that restarts connects again right after its old connection closed,
    // and that connection's thread may not have let go of the slot yet: wait for it a
    // moment (in this accept thread only) before refusing.
    let deadline = Instant::now() + SLOT_WAIT;
    while sh.sensor_busy.swap(true, Ordering::SeqCst) {
        if Instant::now() >= deadline {
            send_refusal(s, Refusal::AlreadyConnected);
            sh.refuse(
                &format!(
                    "second sensor claimant uid {} pid {} refused: a sensor is already connected",
                    peer.uid, peer.pid
                ),
                Some(peer),
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// A control client's checks: CONTROL_GROUP (or root), and a free slot for its uid.
fn admit_control(sh: &Shared, s: &mut Stream, peer: Peer, gid: u32) -> bool {
    if !control_authorized(sh, s, peer, gid) {
        let _ = write_frame(s, &ControlResponse::Error("not authorized".into()));
        sh.refuse(
            &format!(
                "control connection from uid {} (pid {}) not authorized",
                peer.uid, peer.pid
            ),
            Some(peer),
        );
        return false;
    }
    if let Err(full) = lock(&sh.control_slots).take(peer.uid) {
        let _ = write_frame(s, &ControlResponse::Error(full.to_string()));
        sh.refuse(
            &format!(
                "control connection from uid {} (pid {}) refused: {full}",
                peer.uid, peer.pid
            ),
            Some(peer),
        );
        return false;
    }
    true
}

/// What a read on the sensor connection may wait for: the rest of the handshake, the
/// rest of the current frame, or (between frames) the next one.
fn read_deadline(session: &Session, handshake: Instant, frame: Option<Instant>) -> Instant {
    if !session.greeted() {
        handshake + HANDSHAKE_TIMEOUT
    } else {
        frame.map_or_else(|| Instant::now() + FRAME_STALL, |f| f + FRAME_STALL)
    }
}

/// Serve an authenticated sensor (its slot was taken in [`admit`]).
fn serve_sensor(sh: &Shared, mut s: Stream, peer: Peer) {
    let _slot = SensorSlot(sh);
    let accepted = Instant::now();
    // When the current frame's first byte arrived (None between frames).
    let mut frame_start: Option<Instant> = None;
    let mut session = Session::new();
    let mut buf = vec![0u8; sentry_proto::MAX_SMALL_FRAME + sentry_proto::HEADER_LEN];
    loop {
        let want = match session.wanted() {
            Ok(w) => w.min(buf.len()),
            Err(e) => {
                send_refusal(&mut s, e.refusal());
                sh.refuse(&e.to_string(), Some(peer));
                return;
            }
        };
        let deadline = read_deadline(&session, accepted, frame_start);
        let into = buf.get_mut(..want).unwrap_or(&mut []);
        let n = match read_sensor(sh, &mut s, &session, into, deadline, peer) {
            SensorRead::Bytes(n) => n,
            SensorRead::Again => continue,
            SensorRead::Closed => return,
        };
        if frame_start.is_none() {
            frame_start = Some(Instant::now());
        }
        let events = match session.feed(buf.get(..n).unwrap_or(&[]), WallMs::now()) {
            Ok(ev) => ev,
            Err(e) => {
                send_refusal(&mut s, e.refusal());
                sh.refuse(&e.to_string(), Some(peer));
                return;
            }
        };
        if session.is_idle() {
            frame_start = None;
        }
        for ev in events {
            let reply = match ev {
                Event::Hello(h) => {
                    if welcome(sh, &mut s, peer, &h).is_err() {
                        return;
                    }
                    continue;
                }
                Event::Block(req) => EnforcerFrame::Ack {
                    seq: req.seq,
                    decision: sh.engine().decide(&req, peer, WallUs::now()),
                },
                Event::Invalid(req, why) => EnforcerFrame::Ack {
                    seq: req.seq,
                    decision: sh.engine().reject_request(&req, &why, peer, WallUs::now()),
                },
                Event::Stats(st) => {
                    if let Some(si) = sh.engine().sensor.as_mut() {
                        si.stats = Some(st);
                    }
                    continue;
                }
            };
            if !sh.write_sensor(&reply) {
                sh.log.warn("adminalert: cannot reply to the sensor");
                return;
            }
            sh.notify_lifted();
        }
    }
}

/// What one read on the sensor's connection gave.
enum SensorRead {
    Bytes(usize),
    /// Nothing yet (interrupted, or a timeout between frames): read again.
    Again,
    /// The connection is done (closed, refused or broken; said and counted).
    Closed,
}

/// Read what the session wants into `into`, until `deadline` (the handshake's, or the
/// current frame's); a timeout mid-handshake or mid-frame refuses the sensor.
fn read_sensor(
    sh: &Shared,
    s: &mut Stream,
    session: &Session,
    into: &mut [u8],
    deadline: Instant,
    peer: Peer,
) -> SensorRead {
    let left = deadline.saturating_duration_since(Instant::now());
    // A zero timeout means "block forever" to the kernel: past the deadline, the
    // read is not even tried.
    let r = if left.is_zero() {
        Err(io::Error::from(io::ErrorKind::TimedOut))
    } else {
        let _ = s.set_recv_timeout(Some(left));
        s.read(into)
    };
    match r {
        Ok(0) => {
            if !session.is_idle() {
                sh.refuse("connection closed in the middle of a frame", Some(peer));
            } else if !session.greeted() {
                sh.refuse("connection closed before the handshake", Some(peer));
            }
            SensorRead::Closed
        }
        Ok(n) => SensorRead::Bytes(n),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => SensorRead::Again,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            if !session.greeted() {
                send_refusal(s, Refusal::HandshakeRequired);
                sh.refuse("no handshake within the time limit", Some(peer));
                return SensorRead::Closed;
            }
            if !session.is_idle() {
                send_refusal(s, Refusal::MalformedFrame);
                sh.refuse("frame not completed within the time limit", Some(peer));
                return SensorRead::Closed;
            }
            SensorRead::Again
        }
        Err(e) => {
            sh.log.warn(&format!("adminalert: sensor connection: {e}"));
            SensorRead::Closed
        }
    }
}

/// Answer the sensor's Hello. The Welcome goes first, on this thread, and the NFLOG
/// hand-over right after it; only then may other threads write to the sensor (a notice
/// before them would break the handshake). `Err`: the connection is done.
fn welcome(sh: &Shared, s: &mut Stream, peer: Peer, h: &sentry_proto::Hello) -> Result<(), ()> {
    let welcome = EnforcerFrame::Welcome {
        version: PROTOCOL_VERSION,
    };
    if write_frame(s, &welcome).is_err() {
        sh.log.warn("adminalert: cannot reply to the sensor");
        return Err(());
    }
    let holds = hand_over(sh, s, h.modes.clone())?;
    // "Connected" in status and metrics means: the verified sensor holds
    // the current detection input (or its modes need none).
    if holds {
        sh.engine().sensor = Some(SensorInfo {
            uid: peer.uid,
            pid: peer.pid,
            name: h.sensor.clone(),
            modes: h.modes.clone(),
            protocol_version: h.version,
            connected_since_ms: WallMs::now().0,
            stats: None,
        });
        sh.log_connected(&format!(
            "adminalert: sensor {} connected (uid {}, pid {})",
            h.sensor, peer.uid, peer.pid
        ));
    }
    let clone = s.try_clone();
    if let Ok(c) = &clone {
        // A sensor that stops reading must not hold a writer (and the
        // engine's callers) for long.
        let tv = nix::sys::time::TimeVal::new(1, 0);
        let _ = nix::sys::socket::setsockopt(c, sockopt::SendTimeout, &tv);
    }
    *lock(&sh.sensor_out) = clone.ok();
    sh.notify_lifted();
    Ok(())
}

// --- detection input (issue #13) ---

/// Send `frame` (an encoded `EnforcerFrame::Capture`) with `fd` attached. The caller keeps
/// its `fd` only to [`unbind`] the group later.
pub fn send_with_fd(
    stream: &impl std::os::fd::AsFd,
    frame: &[u8],
    fd: &std::os::fd::OwnedFd,
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let mut sent = 0;
    while sent < frame.len() {
        let rest = frame.get(sent..).unwrap_or(&[]);
        let iov = [io::IoSlice::new(rest)];
        // The descriptor travels with the first byte only.
        let c: &[ControlMessage] = if sent == 0 { &cmsg } else { &[] };
        match sendmsg::<UnixAddr>(
            stream.as_fd().as_raw_fd(),
            &iov,
            c,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// After the Welcome: bind a fresh NFLOG group, switch the detection chain (for the modes
/// the sensor announced) to it, and send the socket to the sensor (`Capture` frame +
/// SCM_RIGHTS). Our copy is kept in [`Detect::held`] to unbind the group when this
/// connection ends. `Ok(true)` when the sensor now holds the chain's group (or its modes
/// need no detection input, or this kernel has none to give); `Err` only when the
/// connection itself failed.
fn hand_over(sh: &Shared, s: &Stream, modes: Vec<sentry_proto::Mode>) -> Result<bool, ()> {
    use sentry_enforcer::kernel::capture::NFLOG_SNAPLEN;
    let basic = modes.iter().all(|m| m.is_basic());
    // The modes first: the parent moves the chain to the new group with them.
    if !rebuild_detection(sh, Some(modes)) || basic {
        return Ok(true);
    }
    // A fresh group from the parent: the chain moves to it before the socket comes back,
    // and whatever an earlier connection held stops receiving.
    let req = sentry_privsep::Request::new(sentry_privsep::Verb::Nflog, 0);
    let (group, fd) = match sh.parent.call(&[req], None) {
        Ok((mut r, Some(fd))) => match r.pop().map(crate::privsep::check) {
            Some(Ok(rep)) => (rep.port, fd),
            Some(Err(e)) => return Ok(nflog_failed(sh, &e.to_string())),
            None => return Ok(nflog_failed(sh, "no reply")),
        },
        Ok((mut r, None)) => {
            let why = match r.pop().map(crate::privsep::check) {
                Some(Err(e)) => e.to_string(),
                _ => "no descriptor came with the reply".to_string(),
            };
            return Ok(nflog_failed(sh, &why));
        }
        Err(e) => return Ok(nflog_failed(sh, &e.to_string())),
    };
    let frame = match encode_frame(&EnforcerFrame::Capture {
        group,
        snaplen: NFLOG_SNAPLEN,
    }) {
        Ok(f) => f,
        Err(e) => {
            sh.log
                .err(&format!("adminalert: ERROR: cannot encode Capture: {e}"));
            return Ok(false);
        }
    };
    match send_with_fd(s, &frame, &fd) {
        Ok(()) => {
            // Under the same per-second budget as the "connected" line it precedes.
            sh.log_connected(&format!(
                "adminalert: handed NFLOG group {group} (snaplen {NFLOG_SNAPLEN}) to the verified sensor"
            ));
            Ok(true)
        }
        // The sensor closed the connection already: nothing to say about the hand-over.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => Err(()),
        Err(e) => {
            sh.log.warn(&format!(
                "adminalert: cannot hand the capture socket to the sensor: {e}"
            ));
            Err(())
        }
    }
}

/// No NFLOG socket for this sensor: said, and tried again at its next connection.
fn nflog_failed(sh: &Shared, why: &str) -> bool {
    sh.log.err(&format!(
        "adminalert: ERROR: no detection input handed over ({why}); trying again on the next sensor connection"
    ));
    false
}

/// Rebuild the detection chain (with new modes, or the remembered ones after SIGHUP).
/// Returns whether the chain is in place. Holds the engine lock while `nft` runs and
/// drains the watch after it (see [`Shared::watch`]).
fn rebuild_detection(sh: &Shared, modes: Option<Vec<sentry_proto::Mode>>) -> bool {
    let e = sh.engine();
    rebuild_detection_locked(sh, &e, modes)
}

/// [`rebuild_detection`] for a caller that holds the engine lock (`e`) and drains the
/// watch. The engine says whether the kernel makes the first block itself and which
/// addresses it must never block.
fn rebuild_detection_locked(
    sh: &Shared,
    e: &Engine,
    modes: Option<Vec<sentry_proto::Mode>>,
) -> bool {
    let mut d = lock(&sh.detect);
    if let Some(m) = modes {
        if d.modes.as_ref() != Some(&m) {
            if let Err(e) = save_modes(&d.state_dir, &m) {
                sh.log.err(&format!(
                    "adminalert: ERROR: cannot record the sensor's modes in {} ({e}): after a restart the detection chain waits for the sensor",
                    d.state_dir.join(MODES_FILE).display()
                ));
            }
        }
        d.modes = Some(m);
    }
    let Some(modes) = d.modes.clone() else {
        return false;
    };
    if !d.nftables {
        sh.log.err(
            "adminalert: ERROR: nf_tables is not usable: no detection chain, so stealth and advanced detection are off; basic modes (-tcp -udp) still work",
        );
        return false;
    }
    drop(d);
    // The infrastructure the kernel must never block (the parent adds its own floor),
    // then the modes: one batch, one `nft -f -` in the parent.
    let mut items: Vec<sentry_privsep::Request> = e
        .never_block_addrs()
        .into_iter()
        .map(|a| sentry_privsep::Request::for_addr(sentry_privsep::Verb::Detect, 0, a))
        .collect();
    let mut last = sentry_privsep::Request::new(sentry_privsep::Verb::Detect, 0);
    last.extra = u64::from(crate::privsep::mode_bits(&modes).0);
    items.push(last);
    match sh.parent.ask(&items) {
        Ok(_) => true,
        Err(e) => {
            sh.log.err(&format!(
                "adminalert: ERROR: detection chain not built: {e}; stealth and advanced detection are off, basic modes still work"
            ));
            false
        }
    }
}
// --- end detection input ---

/// Root, or a member of CONTROL_GROUP by the peer's own credentials at connect time:
/// its primary gid (SO_PEERCRED) or one of its supplementary groups (SO_PEERGROUPS). The
/// group database is not consulted: it can disagree with what the process really holds.
fn control_authorized(sh: &Shared, s: &Stream, peer: Peer, peer_gid: u32) -> bool {
    if peer.uid == 0 {
        return true;
    }
    let Some(cg) = sh.control_gid else {
        return false;
    };
    if peer_gid == cg.as_raw() {
        return true;
    }
    use std::os::fd::AsFd;
    matches!(crate::sys::peer_groups(s.as_fd()), Ok(groups) if groups.contains(&cg.as_raw()))
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn send_control(s: &mut Stream, r: &ControlResponse) -> Result<(), ProtoError> {
    match encode_frame(r) {
        Ok(bytes) => s.write_all(&bytes).map_err(|e| ProtoError::Io(e.kind())),
        Err(e) => write_frame(
            s,
            &ControlResponse::Error(format!("reply too large to send: {e}")),
        ),
    }
}

/// `sentryctl block` and the fleet bridge's blocks (with the fleet decision's `meta`):
/// judged, acted on and answered.
fn control_block(
    sh: &Shared,
    peer: Peer,
    addr: IpAddr,
    duration_ms: Option<u64>,
    origin: String,
    meta: BlockMeta,
) -> ControlResponse {
    let addr = canonical(addr);
    let ctl = crate::engine::ControlBlock {
        origin,
        duration: duration_ms.map(Duration::from_millis),
        meta,
    };
    let (decision, reason, expires_ms) =
        sh.engine().decide_control(addr, &ctl, peer, WallUs::now());
    sh.notify_lifted();
    ControlResponse::BlockResult {
        addr,
        decision,
        reason,
        expires_ms,
    }
}

/// Serve an authorised control client (counted in [`admit`]).
fn serve_control(sh: &Shared, mut s: Stream, peer: Peer) {
    let mut greeted = false;
    loop {
        let mut r = FrameDeadline {
            s: &mut s,
            deadline: Instant::now() + CONTROL_TIMEOUT,
        };
        let req = match read_frame::<ControlRequest, _>(&mut r) {
            Ok(r) => r,
            Err(ProtoError::Closed) => return,
            Err(e) => {
                let _ = write_frame(&mut s, &ControlResponse::Error(format!("bad request: {e}")));
                return;
            }
        };
        let resp = match (greeted, req) {
            (false, ControlRequest::Hello { version }) if version == PROTOCOL_VERSION => {
                greeted = true;
                ControlResponse::Welcome {
                    version: PROTOCOL_VERSION,
                }
            }
            (false, ControlRequest::Hello { version }) => {
                let _ = write_frame(
                    &mut s,
                    &ControlResponse::Error(format!(
                        "protocol version {version} not supported (ours {PROTOCOL_VERSION})"
                    )),
                );
                return;
            }
            (false, _) => {
                let _ = write_frame(&mut s, &ControlResponse::Error("Hello first".into()));
                return;
            }
            (true, ControlRequest::Watch { from }) => {
                let sub = sh.engine().watch.subscribe(from);
                match sub {
                    Ok(sub) => {
                        let id = sub.id;
                        serve_watch(sh, s, sub);
                        sh.engine().watch.unsubscribe(id);
                    }
                    Err(e) => {
                        let _ = send_control(&mut s, &ControlResponse::Error(e));
                    }
                }
                return;
            }
            (true, req) => answer_control(sh, peer, req),
        };
        if send_control(&mut s, &resp).is_err() {
            return;
        }
    }
}

/// The answer to one request after the Hello. (A Watch takes the connection over and is
/// served by [`serve_control`] itself.)
fn answer_control(sh: &Shared, peer: Peer, req: ControlRequest) -> ControlResponse {
    match req {
        ControlRequest::Hello { .. } => ControlResponse::Error("second Hello".into()),
        ControlRequest::Status => {
            ControlResponse::Status(Box::new(sh.engine().status(&sh.config_path)))
        }
        ControlRequest::Blocked => ControlResponse::Blocked(sh.engine().blocked()),
        ControlRequest::Metrics => {
            let snap = sh.engine().metrics_snapshot();
            ControlResponse::Metrics(crate::control::metrics::render_live(snap))
        }
        ControlRequest::Block {
            addr,
            duration_ms,
            origin,
        } => control_block(sh, peer, addr, duration_ms, origin, BlockMeta::default()),
        ControlRequest::BlockWith {
            addr,
            duration_ms,
            origin,
            meta,
        } => control_block(sh, peer, addr, duration_ms, origin, meta),
        ControlRequest::UnblockOrigin { addr, origin } => {
            let addr = canonical(addr);
            let r = sh
                .engine()
                .unblock_origin(addr, &origin, peer, WallMs::now());
            sh.notify_lifted();
            let (was_blocked, other_origin, errors) = match r {
                Ok(errors) => (errors.is_some(), None, errors.unwrap_or_default()),
                Err(other) => (true, Some(other), Vec::new()),
            };
            ControlResponse::UnblockedOrigin {
                addr,
                was_blocked,
                other_origin,
                errors,
            }
        }
        ControlRequest::Unblock { addr } => {
            let addr = canonical(addr);
            let r = sh.engine().unblock(addr, peer, WallMs::now());
            sh.notify_lifted();
            ControlResponse::Unblocked {
                addr,
                was_blocked: r.is_some(),
                errors: r.unwrap_or_default(),
            }
        }
        // sentryctl explain / unblock --all / ignore (engine/explain.rs).
        ControlRequest::Explain { addr } => {
            ControlResponse::Explain(Box::new(sh.engine().explain(canonical(addr))))
        }
        ControlRequest::UnblockAll => {
            let (count, errors) = sh.engine().unblock_all(peer, WallMs::now());
            sh.notify_lifted();
            ControlResponse::UnblockedAll { count, errors }
        }
        ControlRequest::Reload => match reload(sh, true) {
            Ok((entries, lifted)) => ControlResponse::Reloaded { entries, lifted },
            Err(e) => ControlResponse::Error(format!("ignore list not reloaded: {e}")),
        },
        ControlRequest::Watch { .. } => {
            ControlResponse::Error("watch is served on its own connection".into())
        }
    }
}

/// Most time one write to a watch client may take before the stream is ended.
const WATCH_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Stream decisions to a watch client until it leaves, falls behind (its bounded buffer
/// overflowed: the engine dropped it and counted it) or a write stalls.
fn serve_watch(sh: &Shared, mut s: Stream, sub: crate::control::watch::Subscription) {
    use std::sync::mpsc::RecvTimeoutError;
    let tv =
        nix::sys::time::TimeVal::new(i64::try_from(WATCH_SEND_TIMEOUT.as_secs()).unwrap_or(5), 0);
    let _ = nix::sys::socket::setsockopt(&s, sockopt::SendTimeout, &tv);
    let run = sub.next.run;
    let mut next = sub.next;
    let start = ControlResponse::WatchStart {
        next,
        lost: sub.lost,
        run_changed: sub.run_changed,
    };
    if send_control(&mut s, &start).is_err() {
        return;
    }
    for r in sub.backlog {
        next = r.next_cursor(run);
        if send_control(&mut s, &ControlResponse::Record(Box::new(r))).is_err() {
            return;
        }
    }
    loop {
        let msg = match sub.rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) if r.seq < next.seq => continue,
            Ok(r) => {
                next = r.next_cursor(run);
                ControlResponse::Record(Box::new(r))
            }
            Err(RecvTimeoutError::Timeout) => ControlResponse::Heartbeat { next },
            Err(RecvTimeoutError::Disconnected) => {
                let reason = format!(
                    "dropped: more than {} records buffered and not read (resume with --from {next})",
                    crate::control::watch::CLIENT_BUFFER
                );
                sh.log.warn(&format!("adminalert: watch client {reason}"));
                let _ = send_control(&mut s, &ControlResponse::WatchEnd { reason });
                return;
            }
        };
        if send_control(&mut s, &msg).is_err() {
            return;
        }
    }
}

/// Scheduler slice of a sensor connection's thread (the kernel's minimum is 100 us).
const SENSOR_THREAD_SLICE_NS: u64 = 100_000;

fn spawn_conn(sh: &Arc<Shared>, mut s: Stream, sensor: bool) {
    let Some(peer) = admit(sh, &mut s, sensor) else {
        return;
    };
    let sh2 = Arc::clone(sh);
    let r = std::thread::Builder::new()
        .name(if sensor { "sensor" } else { "control" }.into())
        .spawn(move || {
            if sensor {
                // Block requests are latency-critical (the scanner is answered until the
                // element is in); a short slice lets this thread preempt on wake-up.
                if let Err(e) = sentry_sched::set_sched_slice(SENSOR_THREAD_SLICE_NS) {
                    sh2.log.warn(&format!(
                        "adminalert: warning: cannot set a short scheduler slice: {e}"
                    ));
                }
                serve_sensor(&sh2, s, peer);
            } else {
                serve_control(&sh2, s, peer);
                lock(&sh2.control_slots).give(peer.uid);
            }
        });
    if r.is_err() {
        // The closure (and with it the sensor slot guard, if any) was never run.
        if sensor {
            sh.sensor_busy.store(false, Ordering::SeqCst);
        } else {
            lock(&sh.control_slots).give(peer.uid);
        }
        sh.log.err("adminalert: cannot start a connection thread");
    }
}

fn accept_loop(sh: Arc<Shared>, l: Listener, sensor: bool) {
    loop {
        match l.accept() {
            Ok(s) => spawn_conn(&sh, s, sensor),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                sh.log.err(&format!("adminalert: accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn signal_loop(sh: Arc<Shared>, set: SigSet) {
    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        match sig {
            Signal::SIGHUP => {
                let _ = reload(&sh, true);
            }
            _ => {
                // Wait for any decision in progress, then leave. The nftables table stays
                // in place so blocked hosts stay blocked while we are down; it is rebuilt
                // from the persisted state on the next start.
                let mut e = sh.engine();
                e.finish_audit_budget(WallUs::now());
                sh.log
                    .notice(&format!("adminalert: sentry-enforcer stopping on {sig}"));
                std::process::exit(0);
            }
        }
    }
}

/// SIGHUP and `sentryctl ignore`: re-read the ignore list (lifting what it now covers)
/// and rebuild the detection chain's ignore sets; a list that does not load is logged
/// and the old one kept. Returns (entries, blocks lifted).
fn reload(sh: &Shared, tell_parent: bool) -> Result<(u64, u64), EnforcerError> {
    // The parent's floor reads the same ignore list: a SIGHUP that reached the worker
    // (`kill -HUP` of the pid `sentryctl status` shows) goes on to the parent; one that
    // reached the parent came here as its event.
    if tell_parent {
        let req = sentry_privsep::Request::new(sentry_privsep::Verb::Reload, 0);
        if let Err(e) = sh.parent.ask(&[req]) {
            sh.log.err(&format!(
                "adminalert: ERROR: the root parent's ignore list: {e}"
            ));
        }
    }
    let r = sh.engine().reload(WallMs::now());
    sh.notify_lifted();
    match &r {
        Err(e) => sh.log.err(&format!(
            "adminalert: ERROR: ignore list not reloaded (old one kept): {e}"
        )),
        // The detection chain's ignore sets follow the file.
        Ok(_) => {
            rebuild_detection(sh, None);
        }
    }
    r
}

/// Publish the metrics textfile: rendered into the worker's own state directory, then
/// handed to the root parent, which copies it into METRICS_DIR (a collector directory is
/// root's, and the worker cannot write there).
fn publish_metrics(sh: &Shared, text: &str) -> io::Result<()> {
    use std::os::fd::AsFd;
    let path = lock(&sh.detect).state_dir.join(".metrics.prom");
    crate::store::write_atomic(&path, text.as_bytes(), 0o600)?;
    let f = std::fs::File::open(&path)?;
    let req = sentry_privsep::Request::new(sentry_privsep::Verb::Metrics, 0);
    match sh.parent.call(&[req], Some(f.as_fd())) {
        Ok((mut r, _)) => match r.pop().map(crate::privsep::check) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(io::Error::other(e.to_string())),
            None => Err(io::Error::other("no reply from the root parent")),
        },
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// The one-second tick: BLOCK_TIMEOUT expiry, and the AUDIT_RATE summaries of a second
/// that is over (written within about two seconds even when no further request comes).
fn expiry_loop(sh: Arc<Shared>) {
    let metrics_dir = sh.engine().config().metrics_dir.clone();
    let mut tick: u64 = 0;
    let mut last_metrics_error: Option<String> = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        tick += 1;
        if let (Some(dir), 0) = (&metrics_dir, tick % METRICS_EVERY_S) {
            let snap = sh.engine().metrics_snapshot();
            let text = crate::control::metrics::render_live(snap);
            match publish_metrics(&sh, &text) {
                Ok(()) => last_metrics_error = None,
                Err(e) => {
                    let why = format!(
                        "adminalert: ERROR: cannot write metrics textfile in METRICS_DIR {}: {e}",
                        dir.display()
                    );
                    // Counted every time, logged when it starts or changes.
                    sh.engine()
                        .count_error(crate::control::metrics::ErrorKind::Metrics);
                    if last_metrics_error.as_deref() != Some(why.as_str()) {
                        sh.log.err(&why);
                        last_metrics_error = Some(why);
                    }
                }
            }
        }
        sh.flush_connect_lines();
        {
            let mut e = sh.engine();
            e.flush_audit_budget(WallUs::now());
            // Resolver and lease files, at most once per second, off the decision path.
            e.refresh_infra(true);
            e.expire(WallMs::now());
            // The kernel's never-block set follows the enforcer's.
            if e.take_never_changed() {
                rebuild_detection_locked(&sh, &e, None);
            }
            let modes = lock(&sh.detect).modes.clone();
            if let Some(m) = modes {
                e.audit_kernel_hits(&m, WallUs::now());
            }
        }
        sh.notify_lifted();
    }
}

/// Take this host's address changes as they happen (between decisions), so a decision
/// normally finds its never-block set current and pays one empty non-blocking read for
/// the check. Waits on the socket without reading it; the engine drains it under its lock
/// (the next decision does the same, so a change is never missed if this thread is late).
fn addr_watch_loop(sh: Arc<Shared>, fd: Arc<std::os::fd::OwnedFd>) {
    use std::os::fd::AsFd;
    loop {
        if let Err(e) = crate::sys::wait_readable(fd.as_fd()) {
            if e.kind() != io::ErrorKind::Interrupted {
                sh.log.err(&format!("adminalert: address-change wait: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        let mut e = sh.engine();
        e.refresh_own_addresses();
        let gave_up = e.addr_watch_fd().is_none();
        drop(e);
        sh.notify_lifted();
        if gave_up {
            // The engine gave the socket up (and logged why): it now re-reads the
            // addresses before every decision, nothing is left to wait for.
            return;
        }
    }
}

/// What the root parent says unasked: another process changed the table (rebuild it
/// with every block, then the detection chain), or SIGHUP reached it (reload). The parent
/// gone, the worker exits: its blocks stay in the kernel, and systemd restarts the pair.
fn events_loop(sh: Arc<Shared>, events: sentry_privsep::Channel) {
    loop {
        let rep = match events.recv_reply() {
            Ok((r, _)) => r,
            Err(sentry_privsep::RecvError::Os(nix::errno::Errno::EINTR)) => continue,
            Err(e) => {
                sh.log.err(&format!(
                    "adminalert: ERROR: the root parent's event channel ended ({e}); exiting"
                ));
                std::process::exit(1);
            }
        };
        match sentry_privsep::Event::from_u8(rep.code) {
            Some(sentry_privsep::Event::TableChanged) => {
                let mut e = sh.engine();
                let by = u32::try_from(rep.a).ok().filter(|p| *p != 0);
                let _ = e.rebuild_table(by, WallMs::now());
                rebuild_detection_locked(&sh, &e, None);
            }
            Some(sentry_privsep::Event::Reload) => {
                if let Err(e) = reload(&sh, false) {
                    sh.log
                        .err(&format!("adminalert: ERROR: reload failed: {e}"));
                }
            }
            None => sh.log.warn(&format!(
                "adminalert: unknown event {} from the root parent",
                rep.code
            )),
        }
    }
}

/// The effects worker (`engine::effects`): runs the deferred actions of each block in
/// the order decided, without the engine lock, and hands the results back to the engine.
fn effects_loop(
    sh: Arc<Shared>,
    rx: std::sync::mpsc::Receiver<()>,
    mut exec: crate::action::Executor,
    cfg: policy::Config,
) {
    while rx.recv().is_ok() {
        loop {
            let Some(job) = sh.engine().take_effects() else {
                break;
            };
            let actions = crate::engine::effects::run(&mut exec, &cfg, &job);
            sh.engine().finish_effects(job, actions, WallMs::now());
        }
    }
}

/// Entry point for the `sentry-enforcer` binary.
pub fn main() -> ExitCode {
    // Before anything else opens a descriptor or starts a thread.
    // The parent's channels and listeners are at 3..=7 (crate::privsep); nothing else.
    let first = u32::try_from(crate::privsep::FD_CONTROL_LISTENER + 1).unwrap_or(8);
    let fd_result = sentry_enforcer::close_inherited_fds(first);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    for (k, _) in std::env::vars_os() {
        std::env::remove_var(k);
    }
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(Cmd::Run(a)) => a,
        Ok(Cmd::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Cmd::Version) => {
            println!("sentry-worker {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sentry-enforcer: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let log = Arc::new(Logger::new(args.log_stderr || journal, "sentry-enforcer"));
    if let Err(e) = fd_result {
        log.warn(&format!(
            "adminalert: could not close inherited descriptors: {e}"
        ));
    }
    if args.recover {
        return recover_main(&args);
    }
    if !args.privsep {
        log.err("adminalert: ERROR: sentry-worker is started by sentry-enforcer (its root parent), which hands it its sockets; run sentry-enforcer");
        return ExitCode::from(2);
    }
    match run(args, Arc::clone(&log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log.log(Level::Err, &format!("adminalert: ERROR: {e}"));
            if !journal {
                eprintln!("sentry-enforcer: {e}");
            }
            // A start that cannot succeed (configuration, damaged state, accounts): the
            // parent stops too instead of restarting it in a loop.
            ExitCode::from(sentry_privsep::EXIT_START_FAILED)
        }
    }
}

/// `--recover`, refused while an enforcer answers on the control socket.
fn recover_main(args: &Args) -> ExitCode {
    let r = (|| {
        let control = args.runtime_dir.join("control.sock");
        if UnixStream::connect(&control).is_ok() {
            return Err(format!(
                "{}: an enforcer is running; stop it before --recover",
                control.display()
            ));
        }
        let cfg = policy::Config::load(&args.config).map_err(|e| e.to_string())?;
        crate::recover::recover(&cfg, &args.state_dir, WallMs::now().secs())
    })();
    match r {
        Ok(rep) => {
            for l in &rep.lines {
                println!("sentry-enforcer: recover: {l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sentry-enforcer: recover: {e}");
            ExitCode::from(1)
        }
    }
}

/// A user or group looked up by name: an error names `what` when the lookup failed or
/// found nothing.
fn account<T>(what: String, found: nix::Result<Option<T>>) -> Result<T, EnforcerError> {
    match found {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(EnforcerError::Account {
            what,
            detail: "does not exist".into(),
        }),
        Err(e) => Err(EnforcerError::Account {
            what,
            detail: e.to_string(),
        }),
    }
}

fn run(args: Args, log: Arc<Logger>) -> Result<(), EnforcerError> {
    use crate::privsep::{Link, FD_CONTROL_LISTENER, FD_EVENTS, FD_FX, FD_RPC, FD_SENSOR_LISTENER};
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cfg = policy::Config::load(&args.config)?;
    for w in &cfg.warnings {
        log.warn(&format!("adminalert: config: {w}"));
    }
    let (sensor, control_gid) = accounts(&args, &cfg, &log)?;
    let sigs = block_signals()?;
    let inherited = |what: &str, r: Result<Link, String>| {
        r.map(Arc::new)
            .map_err(|e| EnforcerError::system(what.to_string(), io::Error::other(e)))
    };
    let rpc = inherited("rpc channel", Link::inherited(FD_RPC))?;
    let fx = inherited("effects channel", Link::inherited(FD_FX))?;
    let adopt = |fd| {
        sentry_privsep::Channel::from_inherited(fd)
            .map(sentry_privsep::Channel::into_fd)
            .map_err(|e| EnforcerError::system(format!("descriptor {fd}"), io::Error::from(e)))
    };
    let events = sentry_privsep::Channel::from_fd(adopt(FD_EVENTS)?);
    let sensor_l = Listener::from(adopt(FD_SENSOR_LISTENER)?);
    let control_l = Listener::from(adopt(FD_CONTROL_LISTENER)?);
    let hello = parent_hello(&rpc)?;
    let config_path = cfg.path.clone();
    let detect = detection_input(&args.state_dir, hello, &log);
    let backends = crate::action::Backends {
        nft: hello.has(sentry_privsep::Hello::NFT),
        route: hello.has(sentry_privsep::Hello::ROUTE),
    };
    let served = served_poller(&cfg, hello, sensor.uid, &log);
    let mut engine = open_engine(cfg, &args, &log, Some((Arc::clone(&rpc), backends)))?;
    log_started(&log, &engine, &config_path, sensor.uid);
    let effects = effects_worker(&mut engine, &log, fx)?;
    // Start-up is done: everything the worker opens from here on is what the filter
    // allows, and every thread started below inherits it.
    crate::confine::apply().map_err(|e| EnforcerError::confine("seccomp filter", e))?;
    let addr_fd = engine.addr_watch_fd();
    let sh = Arc::new(Shared {
        engine: Mutex::new(engine),
        log: Arc::clone(&log),
        config_path,
        sensor_uid: sensor.uid,
        parent: rpc,
        control_gid,
        sensor_busy: AtomicBool::new(false),
        control_slots: Mutex::new(crate::control::slots::Slots::default()),
        refusals: Mutex::new((0, 0)),
        connect_lines: Mutex::new((0, 0, 0)),
        sensor_out: Mutex::new(None),
        detect: Mutex::new(detect),
    });
    // The remembered modes' chain goes in now, before any sensor connects, so the
    // kernel sees probes across a restart and while the sensor is down.
    if lock(&sh.detect).modes.is_some() {
        rebuild_detection(&sh, None);
    }
    let threads = Threads {
        sigs,
        effects,
        addr_fd,
        events,
        control_l,
        served,
    };
    start_threads(&sh, threads)?;
    accept_loop(sh, sensor_l, true);
    Ok(())
}

/// RESTART_GRACE's poller (crate::served), when the grace is on and the kernel can hold
/// the detection chain: its sock_diag socket is opened here, before the seccomp filter.
fn served_poller(
    cfg: &policy::Config,
    hello: sentry_privsep::Hello,
    sensor: Uid,
    log: &Logger,
) -> Option<crate::served::Poller> {
    if cfg.restart_grace.is_zero() || !hello.has(sentry_privsep::Hello::NFTABLES) {
        return None;
    }
    // The sensor's basic-mode listeners are no services (a root sensor's are not told
    // apart from root's services: nothing is skipped).
    let skip = (!sensor.is_root()).then_some(sensor.as_raw());
    crate::served::Poller::open(skip, cfg.restart_grace)
        .map_err(|e| log.err(&format!("adminalert: ERROR: cannot poll the served ports ({e}): RESTART_GRACE holds in the sensor only")))
        .ok()
}

/// Poll the served ports every [`crate::served::POLL`] and have the parent write what
/// changed. A failure is said once (and its end once); until the detection chain exists
/// the sets are missing (ENOENT), which is retried quietly. A parent that has no socket
/// for the sets (it said why) ends the poller.
fn served_loop(sh: Arc<Shared>, mut p: crate::served::Poller) {
    use crate::privsep::Failure;
    use crate::served::Error;
    let mut failing: Option<String> = None;
    let mut due = Instant::now();
    loop {
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        due = now + crate::served::POLL;
        let epoch = sh.parent.rebuilds();
        match p.poll(now, epoch, &mut |items| sh.parent.ask(items).map(drop)) {
            Ok(_) => {
                if failing.take().is_some() {
                    sh.log
                        .notice("adminalert: served ports are written to the kernel again");
                }
            }
            Err(Error::Parent(f)) if f.errno() == Some(nix::errno::Errno::ENOENT) => {}
            Err(Error::Parent(Failure::Refused(sentry_privsep::Refusal::NotConfigured))) => {
                sh.log.err("adminalert: ERROR: the root parent cannot write the served ports: RESTART_GRACE holds in the sensor only");
                return;
            }
            Err(e) => {
                let text = e.to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    sh.log.err(&format!(
                        "adminalert: cannot write the served ports ({text})"
                    ));
                }
                failing = Some(text);
            }
        }
    }
}

/// The first request: the protocol version; the parent answers with what it has.
fn parent_hello(rpc: &crate::privsep::Link) -> Result<sentry_privsep::Hello, EnforcerError> {
    let mut req = sentry_privsep::Request::new(sentry_privsep::Verb::Hello, 0);
    req.extra = sentry_privsep::VERSION;
    rpc.ask(&[req])
        .map(|r| sentry_privsep::Hello(r.a))
        .map_err(|e| EnforcerError::Parent(format!("root parent: {e}")))
}

/// The sensor's user and CONTROL_GROUP's group, looked up before anything is bound.
fn accounts(
    args: &Args,
    cfg: &policy::Config,
    log: &Logger,
) -> Result<(User, Option<Gid>), EnforcerError> {
    let sensor = account(
        format!("sensor user {}", args.sensor_user),
        User::from_name(&args.sensor_user),
    )?;
    if sensor.uid.is_root() {
        log.warn("adminalert: --sensor-user is root: the sensor socket is then open to any root process only, and the sensor is not privilege-separated");
    }
    let control_gid = match &cfg.control_group {
        Some(g) => Some(account(format!("CONTROL_GROUP {g}"), Group::from_name(g))?.gid),
        None => None,
    };
    Ok((sensor, control_gid))
}

/// Open the engine (state, audit log, backends, restored blocks) and check METRICS_DIR.
fn open_engine(
    cfg: policy::Config,
    args: &Args,
    log: &Arc<Logger>,
    parent: Option<(Arc<crate::privsep::Link>, crate::action::Backends)>,
) -> Result<Engine, EnforcerError> {
    let engine = Engine::new(
        cfg,
        Options {
            state_dir: args.state_dir.clone(),
            refresh_own_addresses: true,
            infra: Some(crate::infra::InfraPaths {
                root: args.infra_root.clone(),
            }),
            boot_id_path: args.boot_id_file.clone(),
            boot_id: args.boot_id.clone(),
            parent,
        },
        Arc::clone(log),
    )?;
    if let Some(dir) = &engine.config().metrics_dir {
        if let Err(e) = crate::control::metrics::check_dir(dir) {
            log.err(&format!(
                "adminalert: ERROR: METRICS_DIR {}: {e}",
                dir.display()
            ));
        }
    }
    Ok(engine)
}

/// The start line: version, config, blocks, capabilities, sensor and blocking.
fn log_started(log: &Logger, engine: &Engine, config_path: &Path, sensor_uid: Uid) {
    log.notice(&format!(
        "adminalert: sentry-enforcer {} started: config {}, {} active blocks, worker uid {} (no capabilities), sensor uid {}, blocking: {}",
        env!("CARGO_PKG_VERSION"),
        config_path.display(),
        engine.active_blocks(),
        nix::unistd::getuid(),
        sensor_uid,
        engine.blocking_in_effect()
    ));
}

/// The effects worker's doorbell, executor and configuration: slow effects (KILL_*,
/// hosts.deny) run in their own worker, off the decision path.
fn effects_worker(
    engine: &mut Engine,
    _log: &Arc<Logger>,
    fx: Arc<crate::privsep::Link>,
) -> Result<EffectsWorker, EnforcerError> {
    let (doorbell, effects_rx) = std::sync::mpsc::sync_channel(1);
    engine.enable_effects(doorbell);
    let exec = engine.executor().with_link(fx);
    Ok((effects_rx, exec, engine.config().clone()))
}

/// What the effects thread runs with: its doorbell, its executor, the configuration.
type EffectsWorker = (
    std::sync::mpsc::Receiver<()>,
    crate::action::Executor,
    policy::Config,
);

/// Signals are handled by one thread with sigwait; block them before threads exist.
fn block_signals() -> Result<SigSet, EnforcerError> {
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        sigs.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigs), None)
        .map_err(|e| EnforcerError::system("sigprocmask", e))?;
    Ok(sigs)
}

/// The detection input: what the kernel offers (said once at start), the sensor modes
/// recorded by the last run, and a fresh NFLOG group.
fn detection_input(state_dir: &Path, hello: sentry_privsep::Hello, log: &Logger) -> Detect {
    use sentry_privsep::Hello;
    if !hello.has(Hello::NFTABLES) {
        log.err("adminalert: ERROR: nf_tables is missing or unusable: no detection chain can be built, so stealth and advanced modes (-stcp -sudp -atcp -audp) detect nothing; basic modes (-tcp -udp) and blocking still work");
    } else if !hello.has(Hello::SOCKET) {
        log.warn("adminalert: the nftables socket expression is missing (CONFIG_NFT_SOCKET): advanced modes copy every probe to the sensor, which skips served ports with its own listener table; everything else works");
    }
    let modes = match load_modes(state_dir) {
        Ok(m) => m,
        Err(e) => {
            log.err(&format!(
                "adminalert: ERROR: recorded sensor modes not used ({e}): the detection chain waits for the sensor's Hello"
            ));
            None
        }
    };
    Detect {
        modes,
        nftables: hello.has(Hello::NFTABLES),
        state_dir: state_dir.to_path_buf(),
    }
}

/// What the daemon's threads (besides the sensor's accept loop) are started with.
struct Threads {
    sigs: SigSet,
    effects: EffectsWorker,
    addr_fd: Option<Arc<std::os::fd::OwnedFd>>,
    events: sentry_privsep::Channel,
    control_l: Listener,
    served: Option<crate::served::Poller>,
}

/// Start the signal, expiry, effects, address, parent-event and control threads.
fn start_threads(sh: &Arc<Shared>, t: Threads) -> Result<(), EnforcerError> {
    let spawn = |name: &str, f: Box<dyn FnOnce(Arc<Shared>) + Send>| {
        let sh = Arc::clone(sh);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(sh))
            .map(drop)
            .map_err(|e| EnforcerError::system(format!("cannot start {name} thread"), e))
    };
    let Threads {
        sigs,
        effects: (effects_rx, effects_exec, effects_cfg),
        addr_fd,
        events,
        control_l,
        served,
    } = t;
    spawn("signals", Box::new(move |sh| signal_loop(sh, sigs)))?;
    spawn("expiry", Box::new(expiry_loop))?;
    spawn(
        "effects",
        Box::new(move |sh| effects_loop(sh, effects_rx, effects_exec, effects_cfg)),
    )?;
    if let Some(fd) = addr_fd {
        spawn("addresses", Box::new(move |sh| addr_watch_loop(sh, fd)))?;
    }
    spawn("parent", Box::new(move |sh| events_loop(sh, events)))?;
    if let Some(p) = served {
        spawn("served", Box::new(move |sh| served_loop(sh, p)))?;
    }
    spawn(
        "control",
        Box::new(move |sh| accept_loop(sh, control_l, false)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn args() {
        let Cmd::Run(a) = parse_args(os(&[
            "--config",
            "/x.conf",
            "--runtime-dir=/r",
            "--state-dir",
            "/s",
            "--sensor-user",
            "nobody",
            "--log-stderr",
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.config, PathBuf::from("/x.conf"));
        assert_eq!(a.runtime_dir, PathBuf::from("/r"));
        assert_eq!(a.state_dir, PathBuf::from("/s"));
        assert_eq!(a.sensor_user, "nobody");
        assert!(a.log_stderr);
        let Cmd::Run(d) = parse_args(os(&[])).unwrap() else {
            panic!()
        };
        assert_eq!(d.runtime_dir, PathBuf::from("/run/sentry"));
        assert_eq!(d.state_dir, PathBuf::from("/var/lib/sentry"));
        assert_eq!(d.sensor_user, "sentry");
        assert_eq!(parse_args(os(&["--help"])).unwrap(), Cmd::Help);
        assert_eq!(parse_args(os(&["--version"])).unwrap(), Cmd::Version);
        assert!(parse_args(os(&["--config"])).is_err());
        assert!(parse_args(os(&["--config", "a", "--config", "b"])).is_err());
        assert!(parse_args(os(&["--bogus"])).is_err());
        assert!(parse_args(os(&["--state-dir="])).is_err());
        assert!(parse_args(os(&["--log-stderr=1"])).is_err());
        let Cmd::Run(r) = parse_args(os(&["--recover", "--infra-root", "/t"])).unwrap() else {
            panic!()
        };
        assert!(r.recover && !d.recover);
        assert_eq!(r.infra_root, PathBuf::from("/t"));
        assert_eq!(d.infra_root, PathBuf::from("/"));
        assert_eq!(
            d.boot_id_file,
            PathBuf::from("/proc/sys/kernel/random/boot_id")
        );
        let Cmd::Run(b) = parse_args(os(&["--boot-id-file=/b"])).unwrap() else {
            panic!()
        };
        assert_eq!(b.boot_id_file, PathBuf::from("/b"));
        assert!(parse_args(os(&["--recover", "--recover"])).is_err());
        assert!(parse_args(os(&["--recover=1"])).is_err());
    }
}
