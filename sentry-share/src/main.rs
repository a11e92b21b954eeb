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
       sentry-share --check-config [--config FILE]
       sentry-share --help | --version

sentry's fleet bridge: pushes the local sensor's well-evidenced blocks to a CrowdSec
Local API as alerts, and turns the fleet's decisions into blocks through the
enforcer's control socket (origin crowdsec), with the enforcer's own checks.

  --config FILE    configuration (default /etc/sentry/share.conf)
  --check-config   load and check the configuration and the secret files, then exit
";

fn main() -> ExitCode {
    let mut config = None;
    let mut check = false;
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
    let path = config.unwrap_or_else(Config::default_path);
    match run(&path, check) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sentry-share: ERROR: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(path: &std::path::Path, check: bool) -> Result<(), String> {
    let cfg = Config::load(path)?;
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
    if check {
        println!("{}: OK", path.display());
        return Ok(());
    }
    if !cfg.state_dir.is_dir() {
        return Err(format!(
            "STATE_DIR {} is not a directory (the unit's StateDirectory= creates it)",
            cfg.state_dir.display()
        ));
    }
    let sh = Arc::new(Shared::new(cfg.clone()));
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
        }
        *sh.queue.lock().unwrap_or_else(|p| p.into_inner()) = Some(q);
        let lapi = Lapi::new(cfg.lapi_urls.clone(), machine, None, cfg.http_timeout);
        let s = Arc::clone(&sh);
        threads.push(spawn("push", Box::new(move || bridge::push_loop(s, lapi)))?);
        let s = Arc::clone(&sh);
        threads.push(spawn("watch", Box::new(move || bridge::watch_loop(s)))?);
    }
    if cfg.pull {
        let lapi = Lapi::new(cfg.lapi_urls.clone(), None, key, cfg.http_timeout);
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
