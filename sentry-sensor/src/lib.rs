//! sentry-sensor: detects port scans in all six PortSentry modes, unprivileged and
//! seccomp-confined, and asks `sentry-enforcer` to block the scanners.
//!
//! Pipeline: [`nflog`] (packets the enforcer's input-path chain copies, from the NFLOG
//! socket it hands over) / [`basic`] (listening sockets) → [`pipeline::Detector`], one
//! object that takes a frame (or a basic-mode hit) and gives at most one report: [`packet`]
//! (parser) → [`classify`] → ignore list → [`ports`] (+ [`listeners`]) → [`state`]; then
//! [`client`] (enforcer.sock), with [`log`] in PortSentry's formats and [`confine`] applied
//! before the first packet is parsed. Times are [`time::Mono`] or [`time::Wall`], never
//! bare numbers. All `unsafe` code lives in [`sys`].
#![deny(unsafe_code)]

pub mod basic;
pub mod classify;
pub mod cli;
pub mod client;
pub mod confine;
pub mod daemon;
pub mod listeners;
pub mod log;
pub mod nflog;
pub mod packet;
pub mod pipeline;
pub mod ports;
pub mod state;
#[allow(unsafe_code)]
pub mod sys;
pub mod time;

pub use daemon::main_with_args;
