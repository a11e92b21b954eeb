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
    read_frame, write_frame, ControlRequest, ControlResponse, Status, PROTOCOL_VERSION,
};

pub const USAGE: &str = "\
usage: sentryctl [--runtime-dir DIR] [--json] COMMAND
commands:
  status             enforcer uptime, sensor connection, counters, recent decisions
  blocked            active blocks
  unblock ADDR       lift the block on ADDR (firewall, route, hosts.deny, state)
  check-config FILE  validate a configuration and the files it names (runs locally)
options:
  --runtime-dir DIR  where control.sock lives (default /run/sentry)
  --json             machine-readable output
";

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Blocked,
    Unblock(IpAddr),
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
        ["check-config", file] => Command::CheckConfig(PathBuf::from(file)),
        [] => return Err("no command given".into()),
        [cmd, ..] => return Err(format!("unknown command or wrong arguments: {cmd}")),
    };
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

/// One request/response exchange after the handshake.
pub fn request(runtime_dir: &Path, req: &ControlRequest) -> Result<ControlResponse, String> {
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
        ControlResponse::Welcome { .. } => {}
        ControlResponse::Error(e) => return Err(format!("enforcer refused: {e}")),
        other => return Err(format!("unexpected reply to Hello: {other:?}")),
    }
    write_frame(&mut s, req).map_err(|e| format!("send: {e}"))?;
    match read_frame::<ControlResponse, _>(&mut s).map_err(|e| format!("receive: {e}"))? {
        ControlResponse::Error(e) => Err(format!("enforcer: {e}")),
        r => Ok(r),
    }
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
                        println!(
                            "{:<39}  {} {:<5}  {:<4} {:<7}  since {}  {}",
                            match b.prefix6 {
                                Some(len) => format!("{}/{len}", b.addr),
                                None => b.addr.to_string(),
                            },
                            b.protocol.as_upper(),
                            b.port,
                            b.mode.as_str(),
                            b.scan.as_str(),
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
    fn durations() {
        assert_eq!(fmt_duration(5), "5s");
        assert_eq!(fmt_duration(3_725), "1h 2m 5s");
        assert_eq!(fmt_duration(90_061), "1d 1h 1m 1s");
    }
}
