//! sentry-sensor: detects port scans in all six PortSentry modes, unprivileged and
//! seccomp-confined, and asks `sentry-enforcer` to block the scanners.
//!
//! All `unsafe` code lives in [`sys`].
#![deny(unsafe_code)]

pub mod capture;
pub mod classify;
pub mod listeners;
pub mod packet;
pub mod ports;
pub mod state;
#[allow(unsafe_code)]
pub mod sys;
