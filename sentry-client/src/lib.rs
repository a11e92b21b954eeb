//! The clients of sentry's enforcer, as a library: what `sentryctl` and the fleet bridge
//! (`sentry-share`) share, so that neither links the root enforcer's crate and the
//! enforcer links only the small pieces it needs ([`expo`]).
//!
//! * [`client`] — the control-socket client (version handshake, one request and reply,
//!   the decision stream), with errors that say what to do.
//! * [`format`] — the text sentryctl prints.
//! * [`check`] — `check-config` and the command-line values the enforcer checks too.
//! * [`ignorefile`] — `sentryctl ignore`: edits IGNORE_FILE, keeping every line of the
//!   administrator's byte for byte; fuzzed in `fuzz/`.
//! * [`expo`] — the Prometheus text writer and the atomic textfile writer; [`procstat`]
//!   — the standard `process_*` families from `/proc/self`.
//!
//! The command line (clap) is the `sentryctl` crate's, never this library's: the
//! enforcer links this library, and every dependency of the root process is attack
//! surface.
#![forbid(unsafe_code)]

pub mod check;
pub mod client;
pub mod expo;
pub mod format;
pub mod ignorefile;
pub mod procstat;
