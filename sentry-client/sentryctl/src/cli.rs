//! The command line and what each command prints.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use sentry_client::check::{check_config, parse_block_duration, parse_origin, DEFAULT_ORIGIN};
use sentry_client::client::{request, Backoff, Client, WatchEvent, HINT_NOT_RUNNING};
use sentry_client::format::{format_block, format_explanation, format_record, format_status};
use sentry_client::ignorefile;
use sentry_proto::{ControlRequest, ControlResponse, Cursor, Decision};

/// Query and steer the sentry enforcer over its control socket.
#[derive(Debug, Parser)]
#[command(name = "sentryctl", version, propagate_version = true)]
#[command(after_help = "Each command has its own --help. Manual: sentryctl(8).")]
pub struct Cli {
    /// Where control.sock lives
    #[arg(long, global = true, value_name = "DIR", default_value = "/run/sentry")]
    pub runtime_dir: PathBuf,
    /// Machine-readable output (watch: one JSON object per line)
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Cmd {
    /// Enforcer uptime, sensor connection, counters, recent decisions
    Status,
    /// Active blocks
    Blocked,
    /// Is ADDR blocked now, by which block (its address, its IPv6 network, a fleet
    /// decision), and why or why not; with the decisions recorded for it
    Explain {
        /// IPv4 or IPv6 address
        addr: IpAddr,
    },
    /// Lift the block on ADDR (firewall, route, hosts.deny, state), or every block
    Unblock {
        /// IPv4 or IPv6 address (an address inside a blocked IPv6 network lifts the
        /// network)
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        addr: Option<IpAddr>,
        /// Lift every active block, each as a single unblock does; prints how many
        #[arg(long)]
        all: bool,
    },
    /// Block ADDR through the enforcer's own checks (never-block set, ignore list,
    /// BLOCK_RATE, MAX_BLOCKS)
    Block {
        /// IPv4 or IPv6 address
        addr: IpAddr,
        /// How long: Go-style (4h, 90m, 1h30m), 1s to 87600h [default: BLOCK_TIMEOUT]
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_block_duration)]
        duration: Option<Duration>,
        /// Recorded as the block's origin
        #[arg(long, value_name = "NAME", default_value = DEFAULT_ORIGIN, value_parser = parse_origin)]
        origin: String,
    },
    /// Follow the decisions as they are made (what the audit log gets)
    Watch {
        /// Resume from a cursor printed by an earlier watch
        #[arg(long, value_name = "RUN:SEQ", value_parser = parse_cursor)]
        from: Option<Cursor>,
        /// Reconnect when the enforcer restarts or the stream breaks, resuming from the
        /// cursor (waits 0.2 s, doubling up to 5 s, between attempts)
        #[arg(long)]
        follow: bool,
    },
    /// The enforcer's counters in Prometheus text format
    Metrics,
    /// Add, remove or list IGNORE_FILE entries, then have the enforcer reload the list
    Ignore {
        /// The configuration naming IGNORE_FILE [default: the running enforcer's, else
        /// /etc/sentry/sentry.conf or PortSentry's]
        #[arg(long, global = true, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: IgnoreCmd,
    },
    /// Validate a configuration and the files it names (runs locally)
    CheckConfig {
        /// The configuration file
        file: PathBuf,
    },
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// `sentryctl version`, as the former command line had it (same as --version)
    #[command(hide = true)]
    Version,
}

#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum IgnoreCmd {
    /// Append ENTRY with a marker comment (nothing when the list already covers it)
    Add {
        /// ADDR, ADDR/LEN or ADDR/MASK
        entry: String,
    },
    /// Remove the lines sentryctl added for ENTRY, or whose entry is exactly ENTRY
    Remove {
        /// ADDR, ADDR/LEN or ADDR/MASK
        entry: String,
    },
    /// The entries of IGNORE_FILE, with their line numbers
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

fn parse_cursor(s: &str) -> Result<Cursor, String> {
    s.parse::<Cursor>()
}

/// Why a command stopped early.
#[derive(Debug)]
enum Fail {
    /// The reader of stdout went away: end quietly.
    Pipe,
    /// Told to the user; exit status 1.
    Msg(String),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Fail::Pipe
        } else {
            Fail::Msg(format!("cannot write the output: {e}"))
        }
    }
}

impl From<String> for Fail {
    fn from(e: String) -> Self {
        Fail::Msg(e)
    }
}

type Done = Result<ExitCode, Fail>;

fn unexpected(r: &ControlResponse) -> Fail {
    Fail::Msg(format!("unexpected reply: {r:?}"))
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// stderr never fails a command (and never panics).
fn note(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}

fn code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout (exit 0), usage errors to stderr (exit 2);
            // a closed pipe is no reason to panic either way.
            let _ = e.print();
            if e.use_stderr() {
                let text = e.to_string();
                if !text.contains("Usage:") {
                    note(&format!("\n{}", usage_of(&args)));
                }
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let out = io::stdout();
    let mut o = out.lock();
    let r = run(&cli, &mut o).and_then(|c| {
        o.flush()?;
        Ok(c)
    });
    match r {
        Ok(c) => c,
        Err(Fail::Pipe) => ExitCode::SUCCESS,
        Err(Fail::Msg(e)) => {
            if cli.json {
                let _ = writeln!(o, "{}", json(&serde_json::json!({ "error": e })));
                let _ = o.flush();
            } else {
                note(&format!("sentryctl: {e}"));
            }
            ExitCode::from(1)
        }
    }
}

/// The usage line of the (sub)command `args` name, e.g. `Usage: sentryctl block [OPTIONS]
/// <ADDR>`: every usage error names its command.
fn usage_of(args: &[std::ffi::OsString]) -> String {
    let mut root = Cli::command();
    root.build();
    let mut cur = &root;
    for a in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if let Some(sc) = cur.find_subcommand(a) {
            cur = sc;
        }
    }
    cur.clone().render_usage().to_string()
}

fn run(a: &Cli, o: &mut impl Write) -> Done {
    let rt = a.runtime_dir.as_path();
    match &a.command {
        Cmd::CheckConfig { file } => check(a, file, o),
        Cmd::Version => {
            writeln!(o, "sentryctl {}", env!("CARGO_PKG_VERSION"))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { shell } => {
            let sh = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut buf = Vec::new();
            clap_complete::generate(sh, &mut Cli::command(), "sentryctl", &mut buf);
            o.write_all(&buf)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status => match request(rt, &ControlRequest::Status)? {
            ControlResponse::Status(st) => {
                if a.json {
                    writeln!(o, "{}", json(&st))?;
                } else {
                    write!(o, "{}", format_status(&st))?;
                }
                Ok(ExitCode::SUCCESS)
            }
            other => Err(unexpected(&other)),
        },
        Cmd::Blocked => match request(rt, &ControlRequest::Blocked)? {
            ControlResponse::Blocked(list) => {
                if a.json {
                    writeln!(o, "{}", json(&list))?;
                } else {
                    for b in &list {
                        writeln!(o, "{}", format_block(b))?;
                    }
                    writeln!(o, "{} active blocks", list.len())?;
                }
                Ok(ExitCode::SUCCESS)
            }
            other => Err(unexpected(&other)),
        },
        Cmd::Explain { addr } => match request(rt, &ControlRequest::Explain { addr: *addr })? {
            ControlResponse::Explain(x) => {
                if a.json {
                    writeln!(o, "{}", json(&x))?;
                } else {
                    write!(o, "{}", format_explanation(&x))?;
                }
                Ok(ExitCode::SUCCESS)
            }
            other => Err(unexpected(&other)),
        },
        Cmd::Metrics => match request(rt, &ControlRequest::Metrics)? {
            ControlResponse::Metrics(text) => {
                write!(o, "{text}")?;
                Ok(ExitCode::SUCCESS)
            }
            other => Err(unexpected(&other)),
        },
        Cmd::Block {
            addr,
            duration,
            origin,
        } => {
            let req = ControlRequest::Block {
                addr: *addr,
                duration_ms: duration.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                origin: origin.clone(),
            };
            match request(rt, &req)? {
                ControlResponse::BlockResult {
                    addr,
                    decision,
                    reason,
                    expires_ms,
                } => {
                    if a.json {
                        writeln!(
                            o,
                            "{}",
                            json(&serde_json::json!({"addr": addr, "decision": decision,
                                "reason": reason, "expires_ms": expires_ms, "origin": origin}))
                        )?;
                    } else {
                        writeln!(o, "{addr}: {decision} ({reason})")?;
                    }
                    Ok(code(matches!(
                        decision,
                        Decision::Blocked | Decision::AlreadyBlocked
                    )))
                }
                other => Err(unexpected(&other)),
            }
        }
        Cmd::Unblock {
            addr: Some(addr), ..
        } => match request(rt, &ControlRequest::Unblock { addr: *addr })? {
            ControlResponse::Unblocked {
                addr,
                was_blocked,
                errors,
            } => {
                if a.json {
                    writeln!(
                        o,
                        "{}",
                        json(
                            &serde_json::json!({"addr": addr, "was_blocked": was_blocked,
                                "errors": errors})
                        )
                    )?;
                } else if !was_blocked {
                    writeln!(o, "{addr} was not blocked")?;
                } else if errors.is_empty() {
                    writeln!(o, "{addr} unblocked")?;
                } else {
                    writeln!(o, "{addr} unblocked, with errors:")?;
                    for e in &errors {
                        writeln!(o, "  {e}")?;
                    }
                }
                Ok(code(errors.is_empty()))
            }
            other => Err(unexpected(&other)),
        },
        Cmd::Unblock { addr: None, .. } => match request(rt, &ControlRequest::UnblockAll)? {
            ControlResponse::UnblockedAll { count, errors } => {
                if a.json {
                    writeln!(
                        o,
                        "{}",
                        json(&serde_json::json!({"unblocked": count, "errors": errors}))
                    )?;
                } else {
                    writeln!(
                        o,
                        "{count} block{} lifted",
                        if count == 1 { "" } else { "s" }
                    )?;
                    if !errors.is_empty() {
                        writeln!(o, "errors:")?;
                        for e in &errors {
                            writeln!(o, "  {e}")?;
                        }
                    }
                }
                Ok(code(errors.is_empty()))
            }
            other => Err(unexpected(&other)),
        },
        Cmd::Watch { from, follow } => watch(a, *from, *follow, o),
        Cmd::Ignore { config, action } => ignore(a, config.as_deref(), action, o),
    }
}

fn check(a: &Cli, file: &Path, o: &mut impl Write) -> Done {
    let r = check_config(file, || {
        sentry_worker::infra::discover(&sentry_worker::infra::InfraPaths::system()).0
    });
    if a.json {
        writeln!(o, "{}", json(&r))?;
    } else {
        for w in &r.warnings {
            note(&format!("warning: {w}"));
        }
        for e in &r.errors {
            note(e);
        }
        if r.ok {
            if let Some(b) = &r.blocking {
                writeln!(o, "blocking: {b}")?;
            }
            writeln!(o, "{}: OK", file.display())?;
        }
    }
    Ok(code(r.ok))
}

fn watch(a: &Cli, from: Option<Cursor>, follow: bool, o: &mut impl Write) -> Done {
    let mut from = from;
    let mut backoff = Backoff::new();
    // In --follow, an outage is told once, not at every attempt.
    let mut down: Option<String> = None;
    loop {
        let mut w = match Client::connect(&a.runtime_dir).and_then(|c| c.watch(from)) {
            Ok(w) => w,
            Err(e) if follow => {
                if down.as_deref() != Some(e.as_str()) {
                    note(&format!("sentryctl: {e}; reconnecting"));
                    down = Some(e);
                }
                std::thread::sleep(backoff.next_wait());
                continue;
            }
            Err(e) => return Err(Fail::Msg(e)),
        };
        down = None;
        let start = serde_json::json!({"event": "start", "cursor": w.next.to_string(),
            "lost": w.lost, "run_changed": w.run_changed});
        if a.json {
            writeln!(o, "{start}")?;
            o.flush()?;
        } else {
            note(&format!(
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
            ));
        }
        let why = loop {
            match w.next_event() {
                Ok(WatchEvent::Record(r)) => {
                    backoff.reset();
                    let line = if a.json {
                        let mut v = serde_json::to_value(&*r).unwrap_or_default();
                        if let Some(m) = v.as_object_mut() {
                            m.insert("cursor".into(), w.next.to_string().into());
                        }
                        v.to_string()
                    } else {
                        format_record(&r)
                    };
                    writeln!(o, "{line}")?;
                    o.flush()?;
                }
                Ok(WatchEvent::Heartbeat) => backoff.reset(),
                Ok(WatchEvent::End(reason)) => {
                    break format!("the enforcer ended the stream: {reason}")
                }
                Err(e) => break format!("{e} (resume with --from {})", w.next),
            }
        };
        if !follow {
            return Err(Fail::Msg(why));
        }
        note(&format!("sentryctl: {why}; reconnecting"));
        from = Some(w.next);
        std::thread::sleep(backoff.next_wait());
    }
}

/// The configuration `sentryctl ignore` edits the IGNORE_FILE of: `--config`, else the
/// running enforcer's, else the default one.
fn ignore_config(a: &Cli, config: Option<&Path>) -> PathBuf {
    if let Some(c) = config {
        return c.to_path_buf();
    }
    match request(&a.runtime_dir, &ControlRequest::Status) {
        Ok(ControlResponse::Status(st)) => PathBuf::from(st.config_path),
        _ => policy::Config::default_path(),
    }
}

fn ignore(a: &Cli, config: Option<&Path>, action: &IgnoreCmd, o: &mut impl Write) -> Done {
    let conf = ignore_config(a, config);
    let cfg = policy::Config::load(&conf).map_err(|e| format!("{e}"))?;
    let file = cfg
        .ignore_file
        .clone()
        .ok_or_else(|| format!("{}: sets no IGNORE_FILE", conf.display()))?;
    let (entry, edit) = match action {
        IgnoreCmd::List => {
            let text = ignorefile::read(&file)?.unwrap_or_default();
            let entries = ignorefile::list(&text);
            if a.json {
                writeln!(
                    o,
                    "{}",
                    json(&serde_json::json!({"file": file, "entries": entries}))
                )?;
            } else {
                for e in &entries {
                    writeln!(
                        o,
                        "{:<43}  line {}{}",
                        e.entry,
                        e.line,
                        if e.added_by_sentryctl {
                            ", added by sentryctl"
                        } else {
                            ""
                        }
                    )?;
                }
                writeln!(o, "{} entries in {}", entries.len(), file.display())?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        IgnoreCmd::Add { entry } => {
            let date = ignorefile::today();
            (
                entry,
                ignorefile::edit_file(&file, |t| ignorefile::add(t, entry, &date, &file))?,
            )
        }
        IgnoreCmd::Remove { entry } => (
            entry,
            ignorefile::edit_file(&file, |t| ignorefile::remove(t, entry, &file))?,
        ),
    };
    // The enforcer reloads only when the file changed. Not running: it reads the file
    // when it starts, so the edit stands.
    let reload = if edit.changed == 0 {
        None
    } else {
        Some(request(&a.runtime_dir, &ControlRequest::Reload))
    };
    let (ok, reloaded, reload_note) = match reload {
        None => (true, None, None),
        Some(Ok(ControlResponse::Reloaded { entries, lifted })) => (
            true,
            Some(serde_json::json!({"entries": entries, "lifted": lifted})),
            Some(format!(
                "the enforcer reloaded the ignore list: {entries} entries, {lifted} blocks lifted"
            )),
        ),
        Some(Ok(other)) => return Err(unexpected(&other)),
        Some(Err(e)) if e.contains(HINT_NOT_RUNNING) => (
            true,
            None,
            Some(format!(
                "the enforcer was not told ({e}); it reads the file when it starts"
            )),
        ),
        Some(Err(e)) => (
            false,
            None,
            Some(format!(
                "{} was changed, but the enforcer did not reload it: {e}",
                file.display()
            )),
        ),
    };
    if a.json {
        writeln!(
            o,
            "{}",
            json(
                &serde_json::json!({"file": file, "entry": entry, "changed": edit.changed,
                "note": edit.note, "reloaded": reloaded, "reload_error": (!ok).then_some(&reload_note)})
            )
        )?;
    } else {
        writeln!(o, "{}", edit.note)?;
        if let Some(n) = &reload_note {
            if ok {
                writeln!(o, "{n}")?;
            } else {
                note(&format!("sentryctl: {n}"));
            }
        }
    }
    Ok(code(ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sentryctl").chain(v.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn existing_command_lines_parse_as_before() {
        let a = parse(&["--runtime-dir", "/r", "status", "--json"]).unwrap();
        assert_eq!(a.runtime_dir, PathBuf::from("/r"));
        assert!(a.json);
        assert_eq!(a.command, Cmd::Status);
        let a = parse(&["unblock", "2001:db8::1"]).unwrap();
        assert_eq!(
            a.command,
            Cmd::Unblock {
                addr: Some("2001:db8::1".parse().unwrap()),
                all: false
            }
        );
        assert_eq!(a.runtime_dir, PathBuf::from("/run/sentry"));
        assert_eq!(
            parse(&["--runtime-dir=/x", "blocked"]).unwrap().runtime_dir,
            PathBuf::from("/x")
        );
        let a = parse(&[
            "block",
            "192.0.2.1",
            "--for",
            "1h30m",
            "--origin",
            "fleet-1",
        ])
        .unwrap();
        assert_eq!(
            a.command,
            Cmd::Block {
                addr: "192.0.2.1".parse().unwrap(),
                duration: Some(Duration::from_secs(5400)),
                origin: "fleet-1".into()
            }
        );
        assert_eq!(
            parse(&["block", "2001:db8::1"]).unwrap().command,
            Cmd::Block {
                addr: "2001:db8::1".parse().unwrap(),
                duration: None,
                origin: DEFAULT_ORIGIN.into()
            }
        );
        assert_eq!(
            parse(&["watch", "--from", "17:4"]).unwrap().command,
            Cmd::Watch {
                from: Some(Cursor { run: 17, seq: 4 }),
                follow: false
            }
        );
        assert_eq!(
            parse(&["check-config", "/x"]).unwrap().command,
            Cmd::CheckConfig { file: "/x".into() }
        );
        assert_eq!(parse(&["metrics"]).unwrap().command, Cmd::Metrics);
        assert_eq!(parse(&["version"]).unwrap().command, Cmd::Version);
    }

    #[test]
    fn usage_errors_name_the_command() {
        for bad in [
            &["unblock"][..],
            &["unblock", "example.com"],
            &["unblock", "192.0.2.1", "--all"],
            &[],
            &["status", "extra"],
            &["--frob", "status"],
            &["block", "192.0.2.1", "--for", "4"],
            &["block", "192.0.2.1", "--for", "4d"],
            &["block", "192.0.2.1", "--for", "500ms"],
            &["block", "192.0.2.1", "--for"],
            &["block", "192.0.2.1", "--for", "1h", "--for", "2h"],
            &["block", "192.0.2.1", "--origin", "sensor"],
            &["block", "192.0.2.1", "--origin", ""],
            &["status", "--for", "1h"],
            &["watch", "--from", "12"],
            &["block", "192.0.2.1", "--from", "1:2"],
            &["explain"],
            &["ignore"],
            &["ignore", "add"],
            &["completions", "tcsh"],
            &["--runtime-dir", "/a", "--runtime-dir", "/b", "status"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        let e = parse(&["unblock"]).unwrap_err().to_string();
        assert!(e.contains("sentryctl unblock"), "{e}");
        let e = parse(&["block", "192.0.2.1", "--for", "4d"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown unit \"d\""), "{e}");
        let os = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(Into::into).collect() };
        let u = usage_of(&os(&["sentryctl", "block", "192.0.2.1", "--for", "4d"]));
        assert!(u.contains("Usage: sentryctl block [OPTIONS] <ADDR>"), "{u}");
        let u = usage_of(&os(&["sentryctl", "--json", "ignore", "add"]));
        assert!(u.contains("sentryctl ignore add"), "{u}");
    }

    #[test]
    fn new_commands_parse() {
        assert_eq!(
            parse(&["unblock", "--all"]).unwrap().command,
            Cmd::Unblock {
                addr: None,
                all: true
            }
        );
        assert_eq!(
            parse(&["explain", "192.0.2.1", "--json"]).unwrap().command,
            Cmd::Explain {
                addr: "192.0.2.1".parse().unwrap()
            }
        );
        assert_eq!(
            parse(&["ignore", "add", "10.0.0.0/8", "--config", "/c"])
                .unwrap()
                .command,
            Cmd::Ignore {
                config: Some("/c".into()),
                action: IgnoreCmd::Add {
                    entry: "10.0.0.0/8".into()
                }
            }
        );
        assert!(parse(&["watch", "--follow"]).is_ok());
        assert!(parse(&["completions", "fish"]).is_ok());
    }

    #[test]
    fn a_closed_pipe_is_not_an_error() {
        assert!(matches!(
            Fail::from(io::Error::from(io::ErrorKind::BrokenPipe)),
            Fail::Pipe
        ));
        assert!(matches!(
            Fail::from(io::Error::from(io::ErrorKind::StorageFull)),
            Fail::Msg(_)
        ));
    }
}
