//! `sentryctl`: status, blocked, unblock (over control.sock) and check-config (local).

use interprocess::local_socket::traits::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use interprocess::os::unix::uds_local_socket::Stream;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use sentry_proto::{
    read_frame, write_frame, ControlRequest, ControlResponse, Cursor, Decision, Status,
    WatchRecord, MAX_BLOCK_DURATION_MS, PROTOCOL_VERSION,
};

pub const USAGE: &str = "\
usage: sentryctl [--runtime-dir DIR] [--json] COMMAND
commands:
  status             enforcer uptime, sensor connection, counters, recent decisions
  blocked            active blocks
  unblock ADDR       lift the block on ADDR (firewall, route, hosts.deny, state)
  block ADDR [--for DURATION] [--origin NAME]
                     block ADDR through the enforcer's own checks (never-block set,
                     ignore list, BLOCK_RATE, MAX_BLOCKS); DURATION is Go-style (4h,
                     90m, 1h30m; default BLOCK_TIMEOUT), NAME is recorded as the
                     block's origin (default manual)
  watch [--from RUN:SEQ]
                     follow the decisions as they are made (what the audit log gets),
                     from a cursor printed by an earlier watch
  metrics            the enforcer's counters in Prometheus text format
  check-config FILE  validate a configuration and the files it names (runs locally)
options:
  --runtime-dir DIR  where control.sock lives (default /run/sentry)
  --json             machine-readable output (watch: one JSON object per line)
";

/// The origin `sentryctl block` records without `--origin`.
pub const DEFAULT_ORIGIN: &str = "manual";

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Blocked,
    Unblock(IpAddr),
    Block {
        addr: IpAddr,
        duration: Option<Duration>,
        origin: String,
    },
    Watch {
        from: Option<Cursor>,
    },
    Metrics,
    CheckConfig(PathBuf),
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlArgs {
    pub runtime_dir: PathBuf,
    pub json: bool,
    pub command: Command,
}

pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<CtlArgs, String> {
    let mut runtime_dir = None;
    let mut json = false;
    let mut words = Vec::new();
    let mut dur: Option<String> = None;
    let mut origin: Option<String> = None;
    let mut from: Option<String> = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let a = a
            .into_string()
            .map_err(|a| format!("argument is not valid UTF-8: {}", a.to_string_lossy()))?;
        match a.as_str() {
            "--json" => json = true,
            "--help" | "-h" => words.push("help".to_string()),
            "--version" | "-V" => words.push("version".to_string()),
            "--runtime-dir" => {
                if runtime_dir.is_some() {
                    return Err("--runtime-dir given twice".into());
                }
                runtime_dir = Some(
                    it.next()
                        .and_then(|v| v.into_string().ok())
                        .filter(|v| !v.is_empty())
                        .ok_or("--runtime-dir needs a value")?,
                );
            }
            s if s.starts_with("--runtime-dir=") => {
                if runtime_dir.is_some() {
                    return Err("--runtime-dir given twice".into());
                }
                let v = &s["--runtime-dir=".len()..];
                if v.is_empty() {
                    return Err("--runtime-dir needs a value".into());
                }
                runtime_dir = Some(v.to_string());
            }
            "--for" | "--origin" | "--from" => {
                let slot = match a.as_str() {
                    "--for" => &mut dur,
                    "--origin" => &mut origin,
                    _ => &mut from,
                };
                if slot.is_some() {
                    return Err(format!("{a} given twice"));
                }
                *slot = Some(
                    it.next()
                        .and_then(|v| v.into_string().ok())
                        .ok_or_else(|| format!("{a} needs a value"))?,
                );
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s:?}")),
            _ => words.push(a),
        }
    }
    let command = match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["help"] => Command::Help,
        ["version"] => Command::Version,
        ["status"] => Command::Status,
        ["blocked"] => Command::Blocked,
        ["unblock", addr] => Command::Unblock(
            addr.parse()
                .map_err(|_| format!("unblock: {addr:?} is not an IP address"))?,
        ),
        ["block", addr] => {
            let addr = addr
                .parse()
                .map_err(|_| format!("block: {addr:?} is not an IP address"))?;
            let duration = dur.take().map(|d| parse_block_duration(&d)).transpose()?;
            let origin = origin.take().unwrap_or_else(|| DEFAULT_ORIGIN.to_string());
            sentry_proto::validate_origin(&origin).map_err(|e| format!("--origin: {e}"))?;
            if origin == sentry_proto::ORIGIN_SENSOR {
                return Err("--origin: \"sensor\" is reserved for the local sensor".into());
            }
            Command::Block {
                addr,
                duration,
                origin,
            }
        }
        ["watch"] => Command::Watch {
            from: from
                .take()
                .map(|c| c.parse::<Cursor>().map_err(|e| format!("--from: {e}")))
                .transpose()?,
        },
        ["metrics"] => Command::Metrics,
        ["check-config", file] => Command::CheckConfig(PathBuf::from(file)),
        [] => return Err("no command given".into()),
        [cmd, ..] => return Err(format!("unknown command or wrong arguments: {cmd}")),
    };
    for (opt, v) in [("--for", &dur), ("--origin", &origin), ("--from", &from)] {
        if v.is_some() {
            let belongs = if opt == "--from" { "watch" } else { "block" };
            return Err(format!("{opt} belongs to {belongs}"));
        }
    }
    Ok(CtlArgs {
        runtime_dir: PathBuf::from(runtime_dir.unwrap_or_else(|| "/run/sentry".into())),
        json,
        command,
    })
}

/// Outcome of `check-config`: errors (each `path:LINE: message`) and warnings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Which blocking is in effect, in order (`None` when the file did not load).
    pub blocking: Option<String>,
}

/// One warning per infrastructure address (`found`, with its reason) that the
/// ignore list does not name. With NEVER_BLOCK_INFRASTRUCTURE=1 the enforcer still never
/// blocks it, but the sensor keeps reporting it; with 0 a forged probe can block it.
pub fn infra_warnings(
    cfg: &policy::Config,
    ignore: &policy::IgnoreList,
    found: &[(IpAddr, policy::InfraReason)],
) -> Vec<String> {
    found
        .iter()
        .filter(|(a, _)| !ignore.contains(*a))
        .map(|(a, why)| {
            let what = if cfg.never_block_infrastructure {
                "the enforcer never blocks it (NEVER_BLOCK_INFRASTRUCTURE=1), but the sensor reports probes from it"
            } else {
                "with NEVER_BLOCK_INFRASTRUCTURE=0 a single forged probe can block it"
            };
            format!(
                "{}: IGNORE_FILE: {a} ({why}) is not on the ignore list; {what}",
                cfg.path.display()
            )
        })
        .collect()
}

pub fn check_config(path: &Path) -> CheckReport {
    match policy::Config::load(path) {
        Err(e) => CheckReport {
            ok: false,
            errors: e.0.iter().map(|e| e.to_string()).collect(),
            warnings: Vec::new(),
            blocking: None,
        },
        Ok(cfg) => {
            let mut warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
            // Infrastructure of this host not named by the ignore list.
            if let Ok(ignore) = cfg.load_ignore() {
                let (found, _) = crate::infra::discover(&crate::infra::InfraPaths::system());
                warnings.extend(infra_warnings(&cfg, &ignore, &found));
            }
            // A directory the enforcer creates at start is a warning.
            let files = cfg.check_files();
            warnings.extend(files.warnings.iter().map(|w| w.to_string()));
            let errors: Vec<String> = files.errors.iter().map(|e| e.to_string()).collect();
            CheckReport {
                ok: errors.is_empty(),
                errors,
                warnings,
                blocking: Some(cfg.blocking_summary()),
            }
        }
    }
}

/// `--for`: a Go-style duration, 1 s to ten years, whole milliseconds.
pub fn parse_block_duration(s: &str) -> Result<Duration, String> {
    let d = sentry_proto::parse_go_duration(s).map_err(|e| format!("--for {s:?}: {e}"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("--for {s:?}: a block lasts at least 1s"));
    }
    if d.as_millis() > u128::from(MAX_BLOCK_DURATION_MS) {
        return Err(format!("--for {s:?}: at most ten years (87600h)"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("--for {s:?}: finer than a millisecond"));
    }
    Ok(d)
}

/// A connection to the enforcer's control socket, past the version handshake. The
/// fleet bridge uses this too, so it speaks exactly what sentryctl speaks.
#[derive(Debug)]
pub struct Client {
    s: Stream,
}

impl Client {
    pub fn connect(runtime_dir: &Path) -> Result<Self, String> {
        let path = runtime_dir.join("control.sock");
        let connect_err = |e: std::io::Error| format!("cannot connect to {}: {e}", path.display());
        let mut s = Stream::connect(
            path.as_path()
                .to_fs_name::<GenericFilePath>()
                .map_err(connect_err)?,
        )
        .map_err(connect_err)?;
        let _ = s.set_recv_timeout(Some(Duration::from_secs(30)));
        write_frame(
            &mut s,
            &ControlRequest::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .map_err(|e| format!("send: {e}"))?;
        match read_frame::<ControlResponse, _>(&mut s).map_err(|e| format!("receive: {e}"))? {
            ControlResponse::Welcome { .. } => Ok(Self { s }),
            ControlResponse::Error(e) => Err(format!("enforcer refused: {e}")),
            other => Err(format!("unexpected reply to Hello: {other:?}")),
        }
    }

    /// One request, one reply (an `Error` reply is an `Err`).
    pub fn call(&mut self, req: &ControlRequest) -> Result<ControlResponse, String> {
        write_frame(&mut self.s, req).map_err(|e| format!("send: {e}"))?;
        match read_frame::<ControlResponse, _>(&mut self.s).map_err(|e| format!("receive: {e}"))? {
            ControlResponse::Error(e) => Err(format!("enforcer: {e}")),
            r => Ok(r),
        }
    }

    /// Turn this connection into a decision stream from `from`.
    pub fn watch(mut self, from: Option<Cursor>) -> Result<Watch, String> {
        // Heartbeats come every second: five without one is a dead or stuck enforcer.
        let _ = self.s.set_recv_timeout(Some(WATCH_SILENCE));
        match self.call(&ControlRequest::Watch { from })? {
            ControlResponse::WatchStart {
                next,
                lost,
                run_changed,
            } => Ok(Watch {
                s: self.s,
                next,
                lost,
                run_changed,
            }),
            other => Err(format!("unexpected reply to Watch: {other:?}")),
        }
    }
}

/// Longest silence tolerated on a decision stream (the enforcer sends a heartbeat each
/// second).
pub const WATCH_SILENCE: Duration = Duration::from_secs(5);

/// A decision stream.
#[derive(Debug)]
pub struct Watch {
    s: Stream,
    /// The cursor of the next record (resume from here).
    pub next: Cursor,
    /// Records between the requested cursor and the oldest the enforcer still had.
    pub lost: u64,
    /// The requested cursor named an earlier enforcer run.
    pub run_changed: bool,
}

/// What a decision stream delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Record(Box<WatchRecord>),
    Heartbeat,
    /// The enforcer ended the stream (this client fell behind), with its reason.
    End(String),
}

impl Watch {
    pub fn next_event(&mut self) -> Result<WatchEvent, String> {
        let f = read_frame::<ControlResponse, _>(&mut self.s).map_err(|e| match e {
            sentry_proto::ProtoError::Io(
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut,
            ) => {
                format!(
                    "no record or heartbeat from the enforcer for {}s",
                    WATCH_SILENCE.as_secs()
                )
            }
            sentry_proto::ProtoError::Closed => "the enforcer closed the stream".to_string(),
            e => format!("receive: {e}"),
        })?;
        match f {
            ControlResponse::Record(r) => {
                if r.seq < self.next.seq {
                    return Err(format!(
                        "record {} out of order (expected {} or later)",
                        r.seq, self.next.seq
                    ));
                }
                self.next = r.next_cursor(self.next.run);
                Ok(WatchEvent::Record(r))
            }
            ControlResponse::Heartbeat { next } => {
                self.next = next;
                Ok(WatchEvent::Heartbeat)
            }
            ControlResponse::WatchEnd { reason } => Ok(WatchEvent::End(reason)),
            ControlResponse::Error(e) => Err(format!("enforcer: {e}")),
            other => Err(format!("unexpected frame on the stream: {other:?}")),
        }
    }
}

/// One request/response exchange after the handshake.
pub fn request(runtime_dir: &Path, req: &ControlRequest) -> Result<ControlResponse, String> {
    Client::connect(runtime_dir)?.call(req)
}

/// One line of `sentryctl watch`.
pub fn format_record(r: &WatchRecord) -> String {
    let src = match (r.source, r.prefix) {
        (Some(a), Some(len)) => format!("{a}/{len}"),
        (Some(a), None) => a.to_string(),
        (None, _) => "-".to_string(),
    };
    let what = match (r.protocol, r.port, r.scan, r.mode) {
        (Some(p), Some(port), Some(scan), Some(mode)) => {
            format!("{} {port} {mode}/{scan}", p.as_upper())
        }
        _ => "-".to_string(),
    };
    let ev = match r.evidence {
        Some(e) => format!(
            "ports={}{}",
            e.distinct_ports,
            if e.handshake { " handshake" } else { "" }
        ),
        None => "-".to_string(),
    };
    format!(
        "{:>6}  {}  {:<15}  {:<39}  {:<10}  {:<22}  {:<18}  {}",
        r.seq,
        fmt_time(r.time_us / 1000),
        r.kind,
        src,
        r.origin.as_deref().unwrap_or("-"),
        what,
        ev,
        r.reason
    )
}

fn fmt_time(ms: u64) -> String {
    policy::logfmt::format_utc(ms)
}

fn fmt_duration(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m {sec}s")
    } else if h > 0 {
        format!("{h}h {m}m {sec}s")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

pub fn format_status(st: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "sentry-enforcer {} (pid {}), up {}",
        st.version,
        st.pid,
        fmt_duration(st.uptime_s)
    );
    let _ = writeln!(o, "config:   {}", st.config_path);
    match &st.sensor {
        Some(s) => {
            let modes: Vec<&str> = s.modes.iter().map(|m| m.as_str()).collect();
            let _ = writeln!(
                o,
                "sensor:   connected: {} (uid {}, pid {}), modes {}, protocol v{}, since {}",
                s.name,
                s.uid,
                s.pid,
                modes.join(","),
                s.protocol_version,
                fmt_time(s.connected_since_ms)
            );
            if let Some(x) = &s.stats {
                let _ = writeln!(
                    o,
                    "          packets {} kernel_drops {} malformed {} hits {} reports {} queue_drops {} tracked {} evictions {} ignored {}",
                    x.packets, x.kernel_drops, x.malformed, x.hits, x.reports, x.queue_drops,
                    x.tracked_sources, x.evictions, x.ignored
                );
            }
        }
        None => {
            let _ = writeln!(o, "sensor:   not connected");
        }
    }
    let _ = writeln!(
        o,
        "blocks:   {} active (MAX_BLOCKS {})",
        st.active_blocks, st.max_blocks
    );
    let _ = writeln!(
        o,
        "backends: {}",
        if st.backends.is_empty() {
            "none (log only)".to_string()
        } else {
            st.backends.join("; ")
        }
    );
    let c = &st.counters;
    let _ = writeln!(
        o,
        "counters: requests {} blocked {} already_blocked {} ignored {} never_block {} log_only {} command_only {} rate_limited {} capped {} rejected {} failed {} errors {} unblocked {} expired {} restored {}",
        c.requests, c.blocked, c.already_blocked, c.ignored, c.never_block, c.log_only,
        c.command_only, c.rate_limited, c.capped, c.rejected, c.failed, c.errors, c.unblocked,
        c.expired, c.restored
    );
    if !st.recent.is_empty() {
        let _ = writeln!(o, "recent decisions:");
        for r in &st.recent {
            let src = r.source.map_or_else(|| "-".to_string(), |a| a.to_string());
            let _ = writeln!(
                o,
                "  {}  {:<39}  {:<15}  {}",
                fmt_time(r.time_ms),
                src,
                r.decision,
                r.reason
            );
        }
    }
    o
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Entry point for the `sentryctl` binary.
pub fn main() -> ExitCode {
    let a = match parse_args(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sentryctl: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let fail = |e: String| {
        if a.json {
            println!("{}", json(&serde_json::json!({ "error": e })));
        } else {
            eprintln!("sentryctl: {e}");
        }
        ExitCode::from(1)
    };
    match &a.command {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("sentryctl {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig(p) => {
            let r = check_config(p);
            if a.json {
                println!("{}", json(&r));
            } else {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
                for e in &r.errors {
                    eprintln!("{e}");
                }
                if r.ok {
                    if let Some(b) = &r.blocking {
                        println!("blocking: {b}");
                    }
                    println!("{}: OK", p.display());
                }
            }
            if r.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Status => match request(&a.runtime_dir, &ControlRequest::Status) {
            Ok(ControlResponse::Status(st)) => {
                if a.json {
                    println!("{}", json(&st));
                } else {
                    print!("{}", format_status(&st));
                }
                ExitCode::SUCCESS
            }
            Ok(other) => fail(format!("unexpected reply: {other:?}")),
            Err(e) => fail(e),
        },
        Command::Blocked => match request(&a.runtime_dir, &ControlRequest::Blocked) {
            Ok(ControlResponse::Blocked(list)) => {
                if a.json {
                    println!("{}", json(&list));
                } else {
                    for b in &list {
                        let how = if b.origin == sentry_proto::ORIGIN_SENSOR {
                            format!(
                                "{} {:<5}  {:<4} {:<7}",
                                b.protocol.as_upper(),
                                b.port,
                                b.mode.as_str(),
                                b.scan.as_str()
                            )
                        } else {
                            format!("{:<22}", format!("origin {}", b.origin))
                        };
                        println!(
                            "{:<39}  {how}  since {}  {}",
                            match b.prefix6 {
                                Some(len) => format!("{}/{len}", b.addr),
                                None => b.addr.to_string(),
                            },
                            fmt_time(b.since_ms),
                            b.expires_ms.map_or_else(
                                || "permanent".to_string(),
                                |e| format!("until {}", fmt_time(e))
                            )
                        );
                    }
                    println!("{} active blocks", list.len());
                }
                ExitCode::SUCCESS
            }
            Ok(other) => fail(format!("unexpected reply: {other:?}")),
            Err(e) => fail(e),
        },
        Command::Metrics => match request(&a.runtime_dir, &ControlRequest::Metrics) {
            Ok(ControlResponse::Metrics(text)) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Ok(other) => fail(format!("unexpected reply: {other:?}")),
            Err(e) => fail(e),
        },
        Command::Block {
            addr,
            duration,
            origin,
        } => {
            let req = ControlRequest::Block {
                addr: *addr,
                duration_ms: duration.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                origin: origin.clone(),
            };
            match request(&a.runtime_dir, &req) {
                Ok(ControlResponse::BlockResult {
                    addr,
                    decision,
                    reason,
                    expires_ms,
                }) => {
                    if a.json {
                        println!(
                            "{}",
                            json(&serde_json::json!({"addr": addr, "decision": decision,
                                "reason": reason, "expires_ms": expires_ms, "origin": origin}))
                        );
                    } else {
                        println!("{addr}: {decision} ({reason})");
                    }
                    if matches!(decision, Decision::Blocked | Decision::AlreadyBlocked) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Ok(other) => fail(format!("unexpected reply: {other:?}")),
                Err(e) => fail(e),
            }
        }
        Command::Watch { from } => {
            let mut w = match Client::connect(&a.runtime_dir).and_then(|c| c.watch(*from)) {
                Ok(w) => w,
                Err(e) => return fail(e),
            };
            let start = serde_json::json!({"event": "start", "cursor": w.next.to_string(),
                "lost": w.lost, "run_changed": w.run_changed});
            if a.json {
                println!("{start}");
            } else {
                eprintln!(
                    "sentryctl: watching from {}{}{}",
                    w.next,
                    if w.lost > 0 {
                        format!("; {} records lost (older than the enforcer keeps)", w.lost)
                    } else {
                        String::new()
                    },
                    if w.run_changed {
                        "; the enforcer restarted since that cursor (its audit log has the rest)"
                    } else {
                        ""
                    }
                );
            }
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            loop {
                match w.next_event() {
                    Ok(WatchEvent::Record(r)) => {
                        let line = if a.json {
                            let mut v = serde_json::to_value(&*r).unwrap_or_default();
                            if let Some(o) = v.as_object_mut() {
                                o.insert("cursor".into(), w.next.to_string().into());
                            }
                            v.to_string()
                        } else {
                            format_record(&r)
                        };
                        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                            return ExitCode::SUCCESS;
                        }
                    }
                    Ok(WatchEvent::Heartbeat) => {}
                    Ok(WatchEvent::End(reason)) => {
                        return fail(format!("the enforcer ended the stream: {reason}"))
                    }
                    Err(e) => return fail(format!("{e} (resume with --from {})", w.next)),
                }
            }
        }
        Command::Unblock(addr) => {
            match request(&a.runtime_dir, &ControlRequest::Unblock { addr: *addr }) {
                Ok(ControlResponse::Unblocked {
                    addr,
                    was_blocked,
                    errors,
                }) => {
                    if a.json {
                        println!(
                            "{}",
                            json(
                                &serde_json::json!({"addr": addr, "was_blocked": was_blocked, "errors": errors})
                            )
                        );
                    } else if !was_blocked {
                        println!("{addr} was not blocked");
                    } else if errors.is_empty() {
                        println!("{addr} unblocked");
                    } else {
                        println!("{addr} unblocked, with errors:");
                        for e in &errors {
                            println!("  {e}");
                        }
                    }
                    if errors.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Ok(other) => fail(format!("unexpected reply: {other:?}")),
                Err(e) => fail(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses() {
        let a = parse_args(os(&["--runtime-dir", "/r", "status", "--json"])).unwrap();
        assert_eq!(a.runtime_dir, PathBuf::from("/r"));
        assert!(a.json);
        assert_eq!(a.command, Command::Status);
        let a = parse_args(os(&["unblock", "2001:db8::1"])).unwrap();
        assert_eq!(a.command, Command::Unblock("2001:db8::1".parse().unwrap()));
        assert_eq!(a.runtime_dir, PathBuf::from("/run/sentry"));
        assert!(parse_args(os(&["unblock", "example.com"])).is_err());
        assert!(parse_args(os(&["unblock"])).is_err());
        assert!(parse_args(os(&[])).is_err());
        assert!(parse_args(os(&["status", "extra"])).is_err());
        assert!(parse_args(os(&["--frob", "status"])).is_err());
        assert_eq!(
            parse_args(os(&["check-config", "/x"])).unwrap().command,
            Command::CheckConfig("/x".into())
        );
    }

    #[test]
    fn infrastructure_not_on_the_ignore_list_is_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let ign = d.path().join("ignore");
        std::fs::write(&ign, "192.0.2.1\n").unwrap();
        let conf = d.path().join("c.conf");
        std::fs::write(&conf, format!("IGNORE_FILE=\"{}\"\n", ign.display())).unwrap();
        let cfg = policy::Config::load(&conf).unwrap();
        let ignore = cfg.load_ignore().unwrap();
        let found = [
            (
                "192.0.2.1".parse().unwrap(),
                policy::InfraReason::DefaultGateway,
            ),
            (
                "192.0.2.53".parse().unwrap(),
                policy::InfraReason::Nameserver,
            ),
        ];
        let w = infra_warnings(&cfg, &ignore, &found);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("192.0.2.53 (nameserver) is not on the ignore list"),
            "{w:?}"
        );
        assert!(w[0].contains("never blocks it"), "{w:?}");
        std::fs::write(
            &conf,
            format!(
                "IGNORE_FILE=\"{}\"\nNEVER_BLOCK_INFRASTRUCTURE=\"0\"\n",
                ign.display()
            ),
        )
        .unwrap();
        let cfg = policy::Config::load(&conf).unwrap();
        let w = infra_warnings(&cfg, &ignore, &found);
        assert!(w[0].contains("a single forged probe can block it"), "{w:?}");
    }

    #[test]
    fn parses_block_watch_metrics() {
        let a = parse_args(os(&[
            "block",
            "192.0.2.1",
            "--for",
            "1h30m",
            "--origin",
            "fleet-1",
        ]))
        .unwrap();
        assert_eq!(
            a.command,
            Command::Block {
                addr: "192.0.2.1".parse().unwrap(),
                duration: Some(Duration::from_secs(5400)),
                origin: "fleet-1".into()
            }
        );
        let a = parse_args(os(&["block", "2001:db8::1"])).unwrap();
        assert_eq!(
            a.command,
            Command::Block {
                addr: "2001:db8::1".parse().unwrap(),
                duration: None,
                origin: DEFAULT_ORIGIN.into()
            }
        );
        for bad in [
            &["block", "192.0.2.1", "--for", "4"][..],
            &["block", "192.0.2.1", "--for", "4d"],
            &["block", "192.0.2.1", "--for", "-4h"],
            &["block", "192.0.2.1", "--for", "500ms"],
            &["block", "192.0.2.1", "--for", "87601h"],
            &["block", "192.0.2.1", "--for", "1.0000001s"],
            &["block", "192.0.2.1", "--for"],
            &["block", "192.0.2.1", "--for", "1h", "--for", "2h"],
            &["block", "192.0.2.1", "--origin", "sensor"],
            &["block", "192.0.2.1", "--origin", "a b"],
            &["block", "192.0.2.1", "--origin", ""],
            &["block", "host.example"],
            &["status", "--for", "1h"],
            &["watch", "--from", "12"],
            &["watch", "--from", "1:x"],
            &["block", "192.0.2.1", "--from", "1:2"],
        ] {
            assert!(parse_args(os(bad)).is_err(), "{bad:?}");
        }
        let e = parse_args(os(&["block", "192.0.2.1", "--for", "4d"])).unwrap_err();
        assert!(e.contains("unknown unit \"d\""), "{e}");
        assert_eq!(
            parse_args(os(&["watch", "--from", "17:4"]))
                .unwrap()
                .command,
            Command::Watch {
                from: Some(Cursor { run: 17, seq: 4 })
            }
        );
        assert_eq!(
            parse_args(os(&["watch"])).unwrap().command,
            Command::Watch { from: None }
        );
        assert_eq!(
            parse_args(os(&["metrics"])).unwrap().command,
            Command::Metrics
        );
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(5), "5s");
        assert_eq!(fmt_duration(3_725), "1h 2m 5s");
        assert_eq!(fmt_duration(90_061), "1d 1h 1m 1s");
    }
}
