//! Command line: `sentry-sensor --config FILE --runtime-dir DIR [--user USER] MODE...`.

use std::ffi::OsString;
use std::path::PathBuf;

use sentry_proto::Mode;

pub const USAGE: &str = "\
Usage: sentry-sensor --config FILE --runtime-dir DIR [--user USER] [--log-stderr] MODE...

Detects port scans in PortSentry's modes and asks sentry-enforcer (DIR/enforcer.sock)
to block the scanners. Several modes run in one process.

Modes (PortSentry's flags; also --mode NAME):
  -tcp   basic: listen on TCP_PORTS; a completed connect is a hit
  -udp   basic: bind UDP_PORTS; a datagram is a hit
  -stcp  stealth: capture TCP probes (SYN, FIN, NULL, XMAS, odd flags) to TCP_PORTS
  -sudp  stealth: capture UDP to UDP_PORTS
  -atcp  advanced: capture TCP probes to every port below ADVANCED_PORTS_TCP except
         ADVANCED_EXCLUDE_TCP and ports where a real service listens
  -audp  advanced: the same for UDP

Options:
  --config FILE       portsentry.conf-compatible configuration (required)
  --runtime-dir DIR   directory holding enforcer.sock (required)
  --user USER         when started as root: user to switch to after opening sockets
  --log-stderr        log to stderr instead of syslog (/dev/log, which is journald's
                      socket under systemd); all lines then share one tag
  --syslog-socket P   syslog socket to use instead of /dev/log
  --help, --version

Privileges: none. Start it as an unprivileged user (systemd User=sentry), or as root
with --user. Stealth and advanced modes read the NFLOG socket sentry-enforcer binds and
hands over on enforcer.sock; only a basic mode binding ports below 1024 needs
CAP_NET_BIND_SERVICE (ambient), dropped once the ports are bound. The sensor never keeps
running as uid 0.
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub config: PathBuf,
    pub runtime_dir: PathBuf,
    pub user: Option<String>,
    pub modes: Vec<Mode>,
    pub log_stderr: bool,
    /// Syslog socket (default /dev/log).
    pub syslog_socket: Option<PathBuf>,
    /// Milliseconds between Stats frames (hidden; tests use a short interval).
    pub stats_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Args),
    Help,
    Version,
    /// Hidden: install the seccomp filter, then make a forbidden system call. The process
    /// must die by SIGSYS; used by the test suite to prove the filter is enforced.
    SelftestSeccomp,
}

pub const DEFAULT_STATS_INTERVAL_MS: u64 = 5_000;

/// Parse the arguments (without the program name).
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, String> {
    let mut config = None;
    let mut runtime_dir = None;
    let mut user = None;
    let mut modes: Vec<Mode> = Vec::new();
    let mut log_stderr = false;
    let mut syslog_socket = None;
    let mut stats_interval_ms = DEFAULT_STATS_INTERVAL_MS;
    let mut it = args.into_iter();
    while let Some(raw) = it.next() {
        let arg = raw
            .into_string()
            .map_err(|a| format!("argument is not valid UTF-8: {a:?}"))?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .ok_or_else(|| format!("{what} needs a value"))?
                    .into_string()
                    .map_err(|a| format!("{what}: value is not valid UTF-8: {a:?}")),
            }
        };
        match name.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            "--selftest-seccomp" => return Ok(Command::SelftestSeccomp),
            "--config" | "-c" => {
                config = Some(PathBuf::from(non_empty(value("--config")?, "--config")?))
            }
            "--runtime-dir" => {
                runtime_dir = Some(PathBuf::from(non_empty(
                    value("--runtime-dir")?,
                    "--runtime-dir",
                )?))
            }
            "--user" | "-u" => user = Some(non_empty(value("--user")?, "--user")?),
            "--log-stderr" => log_stderr = true,
            "--syslog-socket" => {
                syslog_socket = Some(PathBuf::from(non_empty(
                    value("--syslog-socket")?,
                    "--syslog-socket",
                )?))
            }
            "--stats-interval-ms" => {
                let v = value("--stats-interval-ms")?;
                stats_interval_ms = v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (10..=3_600_000).contains(n))
                    .ok_or_else(|| {
                        format!("--stats-interval-ms: {v:?} is not a number of milliseconds in 10-3600000")
                    })?;
            }
            "--mode" => {
                let v = value("--mode")?;
                let m = Mode::parse(&v).ok_or_else(|| {
                    format!("--mode: unknown mode {v:?} (tcp, udp, stcp, sudp, atcp, audp)")
                })?;
                push_mode(&mut modes, m)?;
            }
            other => match Mode::parse(other)
                .filter(|_| other.starts_with('-') && !other.starts_with("--"))
            {
                Some(m) => push_mode(&mut modes, m)?,
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    let config = config.ok_or("--config FILE is required")?;
    let runtime_dir = runtime_dir.ok_or("--runtime-dir DIR is required")?;
    if modes.is_empty() {
        return Err("at least one mode is required (-tcp -udp -stcp -sudp -atcp -audp)".into());
    }
    Ok(Command::Run(Args {
        config,
        runtime_dir,
        user,
        modes,
        log_stderr,
        syslog_socket,
        stats_interval_ms,
    }))
}

fn non_empty(v: String, what: &str) -> Result<String, String> {
    if v.is_empty() {
        Err(format!("{what}: empty value"))
    } else {
        Ok(v)
    }
}

fn push_mode(modes: &mut Vec<Mode>, m: Mode) -> Result<(), String> {
    if modes.contains(&m) {
        return Err(format!("mode -{m} given twice"));
    }
    modes.push(m);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn full_command_line() {
        let c = p(&[
            "--config",
            "/etc/p.conf",
            "--runtime-dir=/run/sentry",
            "--user",
            "sentry",
            "-tcp",
            "-audp",
            "--mode",
            "stcp",
            "--log-stderr",
        ])
        .unwrap();
        assert_eq!(
            c,
            Command::Run(Args {
                config: "/etc/p.conf".into(),
                runtime_dir: "/run/sentry".into(),
                user: Some("sentry".into()),
                modes: vec![Mode::Tcp, Mode::Audp, Mode::Stcp],
                log_stderr: true,
                syslog_socket: None,
                stats_interval_ms: DEFAULT_STATS_INTERVAL_MS,
            })
        );
    }

    #[test]
    fn errors_are_clear() {
        assert!(p(&["--runtime-dir", "/r", "-tcp"])
            .unwrap_err()
            .contains("--config"));
        assert!(p(&["--config", "/c", "-tcp"])
            .unwrap_err()
            .contains("--runtime-dir"));
        assert!(p(&["--config", "/c", "--runtime-dir", "/r"])
            .unwrap_err()
            .contains("mode"));
        assert!(p(&["--config", "/c", "--runtime-dir", "/r", "-xtcp"])
            .unwrap_err()
            .contains("unknown argument"));
        assert!(p(&["--config", "/c", "--runtime-dir", "/r", "tcp"])
            .unwrap_err()
            .contains("unknown argument"));
        assert!(p(&[
            "--config",
            "/c",
            "--runtime-dir",
            "/r",
            "-tcp",
            "--mode",
            "tcp"
        ])
        .unwrap_err()
        .contains("twice"));
        assert!(p(&["--config"]).unwrap_err().contains("needs a value"));
        assert!(p(&["--config", ""]).unwrap_err().contains("empty"));
        assert!(p(&["--mode", "bogus"])
            .unwrap_err()
            .contains("unknown mode"));
        assert!(p(&["--stats-interval-ms", "0"])
            .unwrap_err()
            .contains("milliseconds"));
    }

    #[test]
    fn help_version_selftest() {
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["--version"]).unwrap(), Command::Version);
        assert_eq!(
            p(&["--selftest-seccomp"]).unwrap(),
            Command::SelftestSeccomp
        );
    }
}
