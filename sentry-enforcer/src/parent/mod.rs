//! The root parent (`sentry-enforcer`): start-up as root ([`start`]), the command helper
//! and the worker ([`spawn`]), confinement ([`confine`]), then one single-threaded poll
//! loop (`run.rs`) that serves the worker's requests ([`serve`], `verbs.rs`) against its
//! own [`floor`].

pub mod args;
pub mod confine;
pub mod floor;
pub mod helper;
pub mod host;
mod run;
pub mod serve;
pub mod spawn;
pub mod start;
mod verbs;

mod tests;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use sentry_privsep::{Modes, Refusal, Verb};

use crate::kernel::netlink::NlSocket;
use crate::kernel::table::{DetectSpec, Support};
use crate::kernel::tablewatch::TableWatch;

/// One line on stderr (the journal, under the unit).
pub fn say(msg: &str) {
    eprintln!("sentry-enforcer: {msg}");
}

/// The detection chain's inputs and the NFLOG group it copies to.
#[derive(Debug, Default)]
pub struct Detect {
    pub group: u16,
    /// Our copy of the socket handed out last, kept to unbind its group.
    pub held: Option<(u16, OwnedFd)>,
    /// The worker's last Detect: the sensor's modes and the addresses never blocked.
    pub input: Option<(Modes, Vec<IpAddr>)>,
    /// What the kernel holds now (`None`: unknown).
    pub applied: Option<DetectSpec>,
}

/// Refusals said on stderr, at most [`Log::PER_SECOND`] a second; all are counted.
#[derive(Debug, Default)]
pub struct Log {
    second: u64,
    lines: u32,
    held_back: u64,
    pub refusals: u64,
    pub decode_errors: u64,
}

impl Log {
    pub const PER_SECOND: u32 = 10;

    pub fn refused(&mut self, verb: Verb, addr: Option<IpAddr>, why: Refusal) {
        self.refusals += 1;
        self.tick();
        if self.lines < Self::PER_SECOND {
            self.lines += 1;
            let a = addr.map_or_else(|| "-".to_string(), |a| a.to_string());
            say(&format!("refused {verb:?} {a}: {}", why.as_str()));
        } else {
            self.held_back += 1;
        }
    }

    /// Summarise a second that is over.
    pub fn tick(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now != self.second {
            if self.held_back > 0 {
                say(&format!(
                    "{} further refusals not logged ({} in all)",
                    self.held_back, self.refusals
                ));
            }
            (self.second, self.lines, self.held_back) = (now, 0, 0);
        }
    }
}

/// Everything the verbs act on.
#[derive(Debug)]
pub struct Parent {
    pub cfg: policy::Config,
    pub floor: floor::Floor,
    pub nft: Option<NlSocket>,
    pub route: Option<NlSocket>,
    pub support: Support,
    pub watch: Option<TableWatch>,
    /// Another process changed the table (seen while draining our own changes).
    pub table_foreign: bool,
    /// The socket the served-port sets are written with (RESTART_GRACE on and nf_tables
    /// usable; `kernel::served`): the worker finds the ports, the parent writes them.
    pub served: Option<NlSocket>,
    pub detect: Detect,
    pub sensor_uid: u32,
    pub sensor_want: crate::peercheck::Expected,
    pub log: Log,
    /// When the worker's metrics textfile was last published (at most one a second).
    pub metrics_at: Option<std::time::Instant>,
}

/// Entry point of the `sentry-enforcer` binary.
pub fn main() -> ExitCode {
    // Before anything else opens a descriptor.
    let closed = crate::sys::close_inherited_fds(3);
    for (k, _) in std::env::vars_os() {
        std::env::remove_var(k);
    }
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(args::Cmd::Run(a)) => a,
        Ok(args::Cmd::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(args::Cmd::Version) => {
            println!("sentry-enforcer {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sentry-enforcer: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    if let Err(e) = closed {
        say(&format!(
            "adminalert: could not close inherited descriptors: {e}"
        ));
    }
    let r = if args.recover {
        start::recover(&args)
    } else {
        start::run(args)
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("adminalert: ERROR: {e}"));
            ExitCode::from(1)
        }
    }
}
