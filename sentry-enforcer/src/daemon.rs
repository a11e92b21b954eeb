//! The `sentry-enforcer` process: command line, sockets, peer checks, threads, signals and
//! confinement. Decisions are made by [`crate::engine::Engine`].

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Group, Uid, User};
use sentry_proto::{
    encode_frame, read_frame, write_frame, ControlRequest, ControlResponse, EnforcerFrame,
    ProtoError, Refusal, SensorInfo, PROTOCOL_VERSION,
};

use crate::audit::{Level, Logger, Peer};
use crate::engine::{now_ms, now_us, Engine, Options};
use crate::session::{Event, Session};

/// Time a new sensor connection has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A frame must not stall longer than this once its first byte arrived.
const FRAME_STALL: Duration = Duration::from_secs(10);
/// Idle limit for control connections.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections being served at once (sensor + control + not yet refused).
const MAX_CONNECTIONS: usize = 16;
/// Most refusal audit records per second; the rest are only counted.
const REFUSALS_PER_SECOND: u32 = 20;

pub const USAGE: &str = "\
usage: sentry-enforcer [--config FILE] [--runtime-dir DIR] [--state-dir DIR]
                       [--sensor-user USER] [--log-stderr]
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
    pub log_stderr: bool,
    /// issue #11, for tests: the directory the resolver and lease files are looked up
    /// under instead of `/` (`--infra-root`, not in the usage text).
    pub infra_root: PathBuf,
    /// issue #11 C: `--recover`.
    pub recover: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Run(Args),
    Help,
    Version,
}

/// Parse arguments (without `argv[0]`). Every option may be given as `--opt VALUE` or
/// `--opt=VALUE`; repeated or unknown options are errors.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Cmd, String> {
    let mut config = None;
    let mut runtime_dir = None;
    let mut state_dir = None;
    let mut sensor_user = None;
    let mut infra_root = None;
    let mut log_stderr = false;
    let mut recover = false;
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
                log_stderr = true;
                continue;
            }
            "--recover" => {
                if inline.is_some() || recover {
                    return Err("--recover takes no value and is given once".into());
                }
                recover = true;
                continue;
            }
            "--config" => &mut config,
            "--runtime-dir" => &mut runtime_dir,
            "--state-dir" => &mut state_dir,
            "--sensor-user" => &mut sensor_user,
            "--infra-root" => &mut infra_root,
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
    Ok(Cmd::Run(Args {
        config: config.map_or_else(policy::Config::default_path, PathBuf::from),
        runtime_dir: PathBuf::from(runtime_dir.unwrap_or_else(|| "/run/sentry".into())),
        state_dir: PathBuf::from(state_dir.unwrap_or_else(|| "/var/lib/sentry".into())),
        sensor_user: sensor_user.unwrap_or_else(|| "sentry".into()),
        log_stderr,
        infra_root: PathBuf::from(infra_root.unwrap_or_else(|| "/".into())),
        recover,
    }))
}

/// State shared by the threads.
struct Shared {
    engine: Mutex<Engine>,
    log: Arc<Logger>,
    config_path: PathBuf,
    sensor_uid: Uid,
    control_gid: Option<Gid>,
    sensor_busy: AtomicBool,
    connections: AtomicUsize,
    refusals: Mutex<(u64, u32)>,
    sockets: Vec<PathBuf>,
}

impl Shared {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock cannot leave the engine half-updated in a way
        // that matters more than stopping would: keep serving.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Audit a refusal, at most REFUSALS_PER_SECOND per second (the rest only counted).
    fn refuse(&self, reason: &str, peer: Option<Peer>) {
        let now = now_ms();
        let allowed = {
            let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            let sec = now / 1000;
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

fn peer_of(s: &UnixStream) -> io::Result<(Peer, u32)> {
    let c = getsockopt(s, sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok((
        Peer {
            uid: c.uid(),
            pid: u32::try_from(c.pid()).unwrap_or(0),
        },
        c.gid(),
    ))
}

fn send_refusal(s: &mut UnixStream, r: Refusal) {
    let _ = write_frame(s, &EnforcerFrame::Refused(r));
}

struct SensorSlot<'a>(&'a Shared);

impl Drop for SensorSlot<'_> {
    fn drop(&mut self) {
        self.0.engine().sensor = None;
        self.0.sensor_busy.store(false, Ordering::SeqCst);
    }
}

fn serve_sensor(sh: &Shared, mut s: UnixStream) {
    let (peer, _) = match peer_of(&s) {
        Ok(p) => p,
        Err(e) => {
            sh.refuse(&format!("cannot read peer credentials: {e}"), None);
            return;
        }
    };
    if peer.uid != sh.sensor_uid.as_raw() {
        send_refusal(&mut s, Refusal::NotAuthorized);
        sh.refuse(
            &format!(
                "peer uid {} (pid {}) is not the sensor user (uid {})",
                peer.uid,
                peer.pid,
                sh.sensor_uid.as_raw()
            ),
            Some(peer),
        );
        return;
    }
    // One sensor at a time: a second connection is refused, not allowed to replace the
    // first (a dead sensor's socket closes when its process exits, so a restarted sensor
    // gets in; a second live one would only duplicate or hijack the stream).
    if sh.sensor_busy.swap(true, Ordering::SeqCst) {
        send_refusal(&mut s, Refusal::AlreadyConnected);
        sh.refuse("a sensor is already connected", Some(peer));
        return;
    }
    let _slot = SensorSlot(sh);
    let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let mut session = Session::new();
    let mut announced: Vec<sentry_proto::Mode> = Vec::new();
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
        let n = match s.read(buf.get_mut(..want).unwrap_or(&mut [])) {
            Ok(0) => {
                if !session.is_idle() {
                    sh.refuse("connection closed in the middle of a frame", Some(peer));
                } else if !session.greeted() {
                    sh.refuse("connection closed before the handshake", Some(peer));
                }
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if !session.greeted() {
                    send_refusal(&mut s, Refusal::HandshakeRequired);
                    sh.refuse("no handshake within the time limit", Some(peer));
                    return;
                }
                if !session.is_idle() {
                    send_refusal(&mut s, Refusal::MalformedFrame);
                    sh.refuse("frame stalled part-way", Some(peer));
                    return;
                }
                continue;
            }
            Err(e) => {
                sh.log.warn(&format!("adminalert: sensor connection: {e}"));
                return;
            }
        };
        let events = match session.feed(buf.get(..n).unwrap_or(&[])) {
            Ok(ev) => ev,
            Err(e) => {
                send_refusal(&mut s, e.refusal());
                sh.refuse(&e.to_string(), Some(peer));
                return;
            }
        };
        for ev in events {
            let reply = match ev {
                Event::Hello(h) => {
                    let _ = s.set_read_timeout(Some(FRAME_STALL));
                    announced = h.modes.clone();
                    let mut e = sh.engine();
                    e.sensor = Some(SensorInfo {
                        uid: peer.uid,
                        pid: peer.pid,
                        name: h.sensor.clone(),
                        modes: h.modes.clone(),
                        protocol_version: h.version,
                        connected_since_ms: now_ms(),
                        stats: None,
                    });
                    drop(e);
                    sh.log.info(&format!(
                        "adminalert: sensor {} connected (uid {}, pid {})",
                        h.sensor, peer.uid, peer.pid
                    ));
                    Some(EnforcerFrame::Welcome {
                        version: PROTOCOL_VERSION,
                    })
                }
                Event::Block(req) => {
                    let d = if announced.contains(&req.mode) {
                        sh.engine().decide_at_us(&req, peer, now_us())
                    } else {
                        sh.engine().reject_request(
                            &req,
                            peer,
                            now_ms(),
                            format!("mode {} was not announced in the sensor's Hello", req.mode),
                        )
                    };
                    Some(EnforcerFrame::Ack {
                        seq: req.seq,
                        decision: d,
                    })
                }
                Event::Stats(st) => {
                    if let Some(si) = sh.engine().sensor.as_mut() {
                        si.stats = Some(st);
                    }
                    None
                }
            };
            if let Some(r) = reply {
                if let Err(e) = write_frame(&mut s, &r) {
                    sh.log
                        .warn(&format!("adminalert: cannot reply to the sensor: {e}"));
                    return;
                }
            }
        }
    }
}

/// Root, or a member of CONTROL_GROUP by the peer's own credentials at connect time:
/// its primary gid (SO_PEERCRED) or one of its supplementary groups (SO_PEERGROUPS). The
/// group database is not consulted: it can disagree with what the process really holds.
fn control_authorized(sh: &Shared, s: &UnixStream, peer: Peer, peer_gid: u32) -> bool {
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

fn send_control(s: &mut UnixStream, r: &ControlResponse) -> Result<(), ProtoError> {
    match encode_frame(r) {
        Ok(bytes) => s.write_all(&bytes).map_err(|e| ProtoError::Io(e.kind())),
        Err(e) => write_frame(
            s,
            &ControlResponse::Error(format!("reply too large to send: {e}")),
        ),
    }
}

fn serve_control(sh: &Shared, mut s: UnixStream) {
    let (peer, gid) = match peer_of(&s) {
        Ok(p) => p,
        Err(_) => return,
    };
    if !control_authorized(sh, &s, peer, gid) {
        let _ = write_frame(&mut s, &ControlResponse::Error("not authorized".into()));
        sh.refuse(
            &format!(
                "control connection from uid {} (pid {}) not authorized",
                peer.uid, peer.pid
            ),
            Some(peer),
        );
        return;
    }
    let _ = s.set_read_timeout(Some(CONTROL_TIMEOUT));
    let mut greeted = false;
    loop {
        let req = match read_frame::<ControlRequest, _>(&mut s) {
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
            (true, ControlRequest::Hello { .. }) => ControlResponse::Error("second Hello".into()),
            (true, ControlRequest::Status) => {
                ControlResponse::Status(Box::new(sh.engine().status(&sh.config_path)))
            }
            (true, ControlRequest::Blocked) => ControlResponse::Blocked(sh.engine().blocked()),
            (true, ControlRequest::Unblock { addr }) => {
                let addr = canonical(addr);
                match sh.engine().unblock(addr, peer, now_ms()) {
                    Some(errors) => ControlResponse::Unblocked {
                        addr,
                        was_blocked: true,
                        errors,
                    },
                    None => ControlResponse::Unblocked {
                        addr,
                        was_blocked: false,
                        errors: Vec::new(),
                    },
                }
            }
        };
        if send_control(&mut s, &resp).is_err() {
            return;
        }
    }
}

/// Remove a stale socket left by a previous run. Refuses anything that is not a socket,
/// and refuses to start when another enforcer still answers on it.
fn clear_stale_socket(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(md) if !md.file_type().is_socket() => Err(format!(
            "{}: exists and is not a socket; refusing to remove it",
            path.display()
        )),
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "{}: another enforcer is running (the socket accepts connections)",
                    path.display()
                ));
            }
            std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

fn prepare_runtime_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        // Traversable by the sensor whatever the umask; the sockets' modes decide access.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: chmod: {e}", dir.display()))?;
    }
    let md = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !md.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    if md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: runtime directory must be owned by root and not writable by group or others (mode {:o}, uid {})",
            dir.display(),
            md.mode() & 0o7777,
            md.uid()
        ));
    }
    Ok(())
}

fn bind_socket(path: &Path, gid: Option<Gid>, mode: u32) -> Result<UnixListener, String> {
    clear_stale_socket(path)?;
    let l = UnixListener::bind(path).map_err(|e| format!("{}: bind: {e}", path.display()))?;
    // Ownership and mode set explicitly: the umask must not decide who may connect.
    nix::unistd::chown(path, Some(Uid::from_raw(0)), gid)
        .map_err(|e| format!("{}: chown: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: chmod: {e}", path.display()))?;
    Ok(l)
}

/// Keep only `keep` in the effective, permitted, inheritable and bounding sets (and
/// ambient, so that kill commands started by a root whose securebits deny it full
/// capabilities still get exactly these). Returns warnings for what could not be done.
pub fn confine(keep: &CapsHashSet) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let can_setpcap =
        caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    let bounding = caps::read(None, CapSet::Bounding).map_err(|e| e.to_string())?;
    for c in bounding.difference(keep) {
        if can_setpcap {
            caps::drop(None, CapSet::Bounding, *c)
                .map_err(|e| format!("drop {c} from bounding set: {e}"))?;
        } else {
            warnings.push(format!(
                "cannot drop {c} from the bounding set without CAP_SETPCAP"
            ));
        }
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    let keep_now: CapsHashSet = keep.intersection(&permitted).copied().collect();
    for c in keep.difference(&permitted) {
        warnings.push(format!(
            "{c} is needed by the configured actions but not held"
        ));
    }
    caps::set(None, CapSet::Inheritable, &keep_now).map_err(|e| format!("inheritable: {e}"))?;
    caps::set(None, CapSet::Effective, &keep_now).map_err(|e| format!("effective: {e}"))?;
    caps::set(None, CapSet::Permitted, &keep_now).map_err(|e| format!("permitted: {e}"))?;
    let _ = caps::clear(None, CapSet::Ambient);
    for c in &keep_now {
        if let Err(e) = caps::raise(None, CapSet::Ambient, *c) {
            warnings.push(format!("ambient {c}: {e}"));
        }
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(warnings)
}

/// Scheduler slice of a sensor connection's thread (the kernel's minimum is 100 us).
const SENSOR_THREAD_SLICE_NS: u64 = 100_000;

fn spawn_conn(sh: &Arc<Shared>, s: UnixStream, sensor: bool) {
    if sh.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        sh.connections.fetch_sub(1, Ordering::SeqCst);
        sh.refuse("too many connections at once", None);
        return;
    }
    let sh2 = Arc::clone(sh);
    let r = std::thread::Builder::new()
        .name(if sensor { "sensor" } else { "control" }.into())
        .spawn(move || {
            if sensor {
                // Block requests are latency-critical (the scanner is answered until the
                // element is in); a short slice lets this thread preempt on wake-up.
                if let Err(e) = crate::sys::set_sched_slice(SENSOR_THREAD_SLICE_NS) {
                    sh2.log.warn(&format!(
                        "adminalert: warning: cannot set a short scheduler slice: {e}"
                    ));
                }
                serve_sensor(&sh2, s);
            } else {
                serve_control(&sh2, s);
            }
            sh2.connections.fetch_sub(1, Ordering::SeqCst);
        });
    if r.is_err() {
        sh.connections.fetch_sub(1, Ordering::SeqCst);
        sh.log.err("adminalert: cannot start a connection thread");
    }
}

fn accept_loop(sh: Arc<Shared>, l: UnixListener, sensor: bool) {
    loop {
        match l.accept() {
            Ok((s, _)) => spawn_conn(&sh, s, sensor),
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
                let r = sh.engine().reload_ignore(now_ms());
                if let Err(e) = r {
                    sh.log.err(&format!(
                        "adminalert: ERROR: ignore list not reloaded (old one kept): {e}"
                    ));
                }
            }
            _ => {
                // Wait for any decision in progress, then leave. The nftables table stays
                // in place so blocked hosts stay blocked while we are down; it is rebuilt
                // from the persisted state on the next start.
                let mut e = sh.engine();
                e.finish_audit_budget(now_us());
                for p in &sh.sockets {
                    let _ = std::fs::remove_file(p);
                }
                sh.log
                    .notice(&format!("adminalert: sentry-enforcer stopping on {sig}"));
                std::process::exit(0);
            }
        }
    }
}

/// The one-second tick: BLOCK_TIMEOUT expiry, and the AUDIT_RATE summaries of a second
/// that is over (written within about two seconds even when no further request comes).
fn expiry_loop(sh: Arc<Shared>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let mut e = sh.engine();
        e.flush_audit_budget(now_us());
        e.refresh_infra(true); // issue #11: resolver/lease files, at most once per second
        e.expire(now_ms());
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
        if e.addr_watch_fd().is_none() {
            // The engine gave the socket up (and logged why): it now re-reads the
            // addresses before every decision, nothing is left to wait for.
            return;
        }
    }
}

/// Entry point for the `sentry-enforcer` binary.
pub fn main() -> ExitCode {
    // Before anything else opens a descriptor or starts a thread.
    let fd_result = crate::sys::close_inherited_fds();
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
            println!("sentry-enforcer {}", env!("CARGO_PKG_VERSION"));
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
        return recover_main(&args); // issue #11 C
    }
    match run(args, Arc::clone(&log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log.log(Level::Err, &format!("adminalert: ERROR: {e}"));
            if !journal {
                eprintln!("sentry-enforcer: {e}");
            }
            ExitCode::from(1)
        }
    }
}

/// issue #11 C: `--recover`, refused while an enforcer answers on the control socket.
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
        crate::recover::recover(&cfg, &args.state_dir, now_ms() / 1000)
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

fn run(args: Args, log: Arc<Logger>) -> Result<(), String> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cfg = policy::Config::load(&args.config).map_err(|e| e.to_string())?;
    for w in &cfg.warnings {
        log.warn(&format!("adminalert: config: {w}"));
    }
    let sensor = User::from_name(&args.sensor_user)
        .map_err(|e| format!("sensor user {}: {e}", args.sensor_user))?
        .ok_or_else(|| format!("sensor user {} does not exist", args.sensor_user))?;
    if sensor.uid.is_root() {
        log.warn("adminalert: --sensor-user is root: the sensor socket is then open to any root process only, and the sensor is not privilege-separated");
    }
    let control_gid = match &cfg.control_group {
        Some(g) => Some(
            Group::from_name(g)
                .map_err(|e| format!("CONTROL_GROUP {g}: {e}"))?
                .ok_or_else(|| format!("CONTROL_GROUP {g} does not exist"))?
                .gid,
        ),
        None => None,
    };
    // Signals are handled by one thread with sigwait; block them before threads exist.
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        sigs.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigs), None)
        .map_err(|e| format!("sigprocmask: {e}"))?;

    prepare_runtime_dir(&args.runtime_dir)?;
    // issue #11 D: state (0700) and log (0750) directories, created when missing.
    for l in crate::dirs::prepare(&cfg, &args.state_dir)? {
        log.notice(&format!("adminalert: {l}"));
    }
    // Sockets first (giving them to the sensor's group may need CAP_CHOWN), then drop to
    // what the actions need, then open the engine: the `nft -f -` it runs at start must
    // already see the final (ambient) capability set, as every later command does.
    let sensor_path = args.runtime_dir.join("enforcer.sock");
    let control_path = args.runtime_dir.join("control.sock");
    let sensor_l = bind_socket(&sensor_path, Some(sensor.gid), 0o660)?;
    let control_l = match control_gid {
        Some(g) => bind_socket(&control_path, Some(g), 0o660)?,
        None => bind_socket(&control_path, Some(Gid::from_raw(0)), 0o600)?,
    };
    let mut keep = CapsHashSet::new();
    let (net_admin, net_raw) = crate::engine::required_caps(&cfg);
    if net_admin {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    if net_raw {
        keep.insert(Capability::CAP_NET_RAW);
    }
    for w in confine(&keep)? {
        log.warn(&format!("adminalert: confinement: {w}"));
    }
    let config_path = cfg.path.clone();
    let engine = Engine::new(
        cfg,
        Options {
            state_dir: args.state_dir.clone(),
            refresh_own_addresses: true,
            infra: Some(crate::infra::InfraPaths {
                root: args.infra_root.clone(),
            }), // issue #11
        },
        Arc::clone(&log),
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_file(&sensor_path);
        let _ = std::fs::remove_file(&control_path);
    })?;
    let kept: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    log.notice(&format!(
        "adminalert: sentry-enforcer {} started: config {}, {} active blocks, capabilities [{}], sensor uid {}",
        env!("CARGO_PKG_VERSION"),
        config_path.display(),
        engine.active_blocks(),
        kept.join(","),
        sensor.uid
    ));

    let addr_fd = engine.addr_watch_fd();
    let sh = Arc::new(Shared {
        engine: Mutex::new(engine),
        log: Arc::clone(&log),
        config_path,
        sensor_uid: sensor.uid,
        control_gid,
        sensor_busy: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        refusals: Mutex::new((0, 0)),
        sockets: vec![sensor_path, control_path],
    });
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map(drop)
            .map_err(|e| format!("cannot start {name} thread: {e}"))
    };
    {
        let sh = Arc::clone(&sh);
        spawn("signals", Box::new(move || signal_loop(sh, sigs)))?;
    }
    {
        let sh = Arc::clone(&sh);
        spawn("expiry", Box::new(move || expiry_loop(sh)))?;
    }
    if let Some(fd) = addr_fd {
        let sh = Arc::clone(&sh);
        spawn("addresses", Box::new(move || addr_watch_loop(sh, fd)))?;
    }
    {
        let sh = Arc::clone(&sh);
        spawn(
            "control",
            Box::new(move || accept_loop(sh, control_l, false)),
        )?;
    }
    accept_loop(sh, sensor_l, true);
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
        assert!(parse_args(os(&["--recover", "--recover"])).is_err());
        assert!(parse_args(os(&["--recover=1"])).is_err());
    }

    #[test]
    fn stale_socket_handling() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sock");
        assert!(clear_stale_socket(&p).is_ok());
        std::fs::write(&p, "").unwrap();
        assert!(clear_stale_socket(&p).unwrap_err().contains("not a socket"));
        std::fs::remove_file(&p).unwrap();
        let l = UnixListener::bind(&p).unwrap();
        assert!(clear_stale_socket(&p)
            .unwrap_err()
            .contains("another enforcer"));
        drop(l);
        assert!(clear_stale_socket(&p).is_ok());
        assert!(!p.exists());
    }
}
