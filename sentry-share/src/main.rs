//! The `sentry-share` binary: see sentry-share(8).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use sentry_share::bridge::{self, Shared};
use sentry_share::config::{read_secret, Config};
use sentry_share::lapi::Lapi;
use sentry_share::queue::Queue;

const USAGE: &str = "\
usage: sentry-share [--config FILE]
       sentry-share --check-config [--offline] [--config FILE]
       sentry-share --help | --version

sentry's fleet bridge: pushes the local sensor's well-evidenced blocks to a CrowdSec
Local API as alerts, and turns the fleet's decisions into blocks through the
enforcer's control socket (origin crowdsec), with the enforcer's own checks.

  --config FILE    configuration (default /etc/sentry/share.conf)
  --check-config   check the configuration and the secret files, PUSH_MIN_PORTS against
                   the enforcer's SCAN_TRIGGER (SENTRY_CONFIG), then log in to every LAPI
                   as the machine and try the bouncer key there; exit 1 on any error
  --offline        with --check-config: the local checks only, no LAPI contacted
";

fn main() -> ExitCode {
    let mut config = None;
    let mut check = false;
    let mut offline = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "-h" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" | "-V" => {
                println!("sentry-share {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--check-config" if !check => check = true,
            "--offline" if !offline => offline = true,
            "--config" if config.is_none() => match it.next() {
                Some(v) if !v.is_empty() => config = Some(PathBuf::from(v)),
                _ => {
                    eprintln!("sentry-share: --config needs a value\n\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("sentry-share: unknown or repeated argument {other:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if offline && !check {
        eprintln!("sentry-share: --offline goes with --check-config\n\n{USAGE}");
        return ExitCode::from(2);
    }
    let path = config.unwrap_or_else(Config::default_path);
    if check {
        return match check_config(&path, offline) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sentry-share: ERROR: {e}");
                ExitCode::from(1)
            }
        };
    }
    match run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sentry-share: ERROR: {e}");
            ExitCode::from(1)
        }
    }
}

/// The machine credentials and the bouncer key the configuration asks for.
type Secrets = (Option<(String, String)>, Option<String>);

fn secrets(cfg: &Config) -> Result<Secrets, String> {
    let machine = match (&cfg.machine_id, &cfg.machine_password_file) {
        (Some(id), Some(p)) if cfg.push || cfg.delete_on_unblock => {
            Some((id.clone(), read_secret(p)?))
        }
        _ => None,
    };
    let key = match &cfg.bouncer_key_file {
        Some(p) if cfg.pull => Some(read_secret(p)?),
        _ => None,
    };
    Ok((machine, key))
}

/// `--check-config`: every problem is printed, then the exit status says whether any
/// was an error. Local errors (the file, the secrets) stop before the LAPI is asked.
fn check_config(path: &std::path::Path, offline: bool) -> Result<(), String> {
    let cfg = Config::load(path)?;
    let (machine, key) = secrets(&cfg)?;
    println!("{}: configuration and secret files OK", path.display());
    // PUSH_MIN_PORTS against what the enforcer's trigger makes a forger pay.
    if cfg.push {
        let trigger = match policy::Config::load(&cfg.sentry_config) {
            Ok(c) => Some(c.scan_trigger),
            Err(e) => {
                println!(
                    "note: cannot read SCAN_TRIGGER from SENTRY_CONFIG {} ({}); checking PUSH_MIN_PORTS={} against the floor only",
                    cfg.sentry_config.display(),
                    e.to_string().lines().next().unwrap_or(""),
                    cfg.push_min_ports
                );
                None
            }
        };
        if let Some(w) = sentry_share::config::push_min_ports_warning(cfg.push_min_ports, trigger) {
            println!("warning: {w}");
        } else if let Some(t) = trigger {
            println!(
                "PUSH_MIN_PORTS={} against the enforcer's SCAN_TRIGGER={t}: OK",
                cfg.push_min_ports
            );
        }
    }
    if offline {
        println!("--offline: no LAPI contacted (credentials not checked)");
        return Ok(());
    }
    let mut errors = 0;
    let has_machine = machine.is_some();
    let mut lapi = Lapi::new(
        cfg.lapi_urls.clone(),
        machine,
        key.clone(),
        cfg.http_timeout,
    );
    for (i, url) in cfg.lapi_urls.iter().enumerate() {
        if has_machine {
            let id = cfg.machine_id.as_deref().unwrap_or("");
            match lapi.check_login(i) {
                Ok(exp) => println!(
                    "{url}: machine {id}: login OK (token valid until {})",
                    sentry_proto::logfmt::format_utc(
                        u64::try_from(exp).unwrap_or(0).saturating_mul(1000)
                    )
                ),
                Err(e) => {
                    errors += 1;
                    let hint = match e {
                        sentry_share::lapi::LapiError::Credentials(_) => format!(
                            "; the password in {} must be the one given to `cscli machines add {id} --password ...` on the LAPI, and the machine validated (`cscli machines list`)",
                            cfg.machine_password_file
                                .as_ref()
                                .map_or_else(String::new, |p| p.display().to_string())
                        ),
                        _ => String::new(),
                    };
                    eprintln!("sentry-share: ERROR: {url}: machine {id}: {e}{hint}");
                }
            }
        }
        if key.is_some() {
            match lapi.check_bouncer(i) {
                Ok(_) => println!("{url}: bouncer key: OK"),
                Err(e) => {
                    errors += 1;
                    let hint = match e {
                        sentry_share::lapi::LapiError::Credentials(_) => format!(
                            "; {} must hold the key `cscli bouncers add NAME -o raw` printed on the LAPI (`cscli bouncers list`)",
                            cfg.bouncer_key_file
                                .as_ref()
                                .map_or_else(String::new, |p| p.display().to_string())
                        ),
                        _ => String::new(),
                    };
                    eprintln!("sentry-share: ERROR: {url}: bouncer key: {e}{hint}");
                }
            }
        }
    }
    if errors > 0 {
        return Err(format!(
            "{errors} LAPI check(s) failed (--offline checks the files only)"
        ));
    }
    Ok(())
}

fn run(path: &std::path::Path) -> Result<(), String> {
    let cfg = Config::load(path)?;
    let (machine, key) = secrets(&cfg)?;
    if !cfg.state_dir.is_dir() {
        return Err(format!(
            "STATE_DIR {} is not a directory (the unit's StateDirectory= creates it)",
            cfg.state_dir.display()
        ));
    }
    let sh = Arc::new(Shared::new(cfg.clone()));
    sh.load_state();
    sh.log(&format!(
        "sentry-share {} started: LAPI {}, push {}, pull {} every {}s",
        env!("CARGO_PKG_VERSION"),
        cfg.lapi_urls.join(" "),
        if cfg.push { "on" } else { "off" },
        if cfg.pull { "on" } else { "off" },
        cfg.pull_interval.as_secs()
    ));
    // Every worker loops for ever; one that ends (it cannot, short of a bug) ends the
    // process, so that systemd restarts the whole bridge rather than half of it.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<String>();
    struct Done(String, std::sync::mpsc::Sender<String>);
    impl Drop for Done {
        fn drop(&mut self) {
            let _ = self.1.send(std::mem::take(&mut self.0));
        }
    }
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        let done = Done(name.to_string(), done_tx.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _done = done;
                f();
            })
            .map_err(|e| format!("cannot start the {name} thread: {e}"))
    };
    if cfg.push || cfg.delete_on_unblock {
        let (q, rep) = Queue::open(&cfg.state_dir.join("queue"), cfg.queue_max)?;
        for p in &rep.problems {
            sh.log(&format!("queue: {p}"));
        }
        {
            let mut st = sh.stats();
            st.queue_rejected = rep.rejected;
            st.queue_depth = q.len() as u64;
        }
        if !q.is_empty() {
            sh.log(&format!(
                "{} queued alerts from before the restart",
                q.len()
            ));
            // On their way: the fleet decisions they cause are this host's.
            for r in q.front(q.len()) {
                sh.note_pushed(r.source);
            }
        }
        *sh.queue.lock().unwrap_or_else(|p| p.into_inner()) = Some(q);
        let lapi = Lapi::new(
            cfg.lapi_urls.clone(),
            machine.clone(),
            None,
            cfg.http_timeout,
        );
        let s = Arc::clone(&sh);
        threads.push(spawn("push", Box::new(move || bridge::push_loop(s, lapi)))?);
    }
    // The decision stream: blocks to push, and the administrator's unblocks (which the
    // pull side must respect, also across restarts).
    let s = Arc::clone(&sh);
    threads.push(spawn("watch", Box::new(move || bridge::watch_loop(s)))?);
    if cfg.pull {
        // The machine too: a pulled decision's alert (its id, the detecting machine) is
        // only in GET /v1/alerts, which wants a machine's token.
        let lapi = Lapi::new(cfg.lapi_urls.clone(), machine, key, cfg.http_timeout);
        let s = Arc::clone(&sh);
        threads.push(spawn("pull", Box::new(move || bridge::pull_loop(s, lapi)))?);
    }
    if cfg.metrics_dir.is_some() {
        let s = Arc::clone(&sh);
        threads.push(spawn("metrics", Box::new(move || bridge::metrics_loop(s)))?);
    }
    let name = done_rx
        .recv()
        .unwrap_or_else(|_| "every worker".to_string());
    Err(format!(
        "the {name} thread ended ({} started); exiting so the service restarts",
        threads.len()
    ))
}
