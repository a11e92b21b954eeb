//! sentry-enforcer: the small root core of sentry that decides, blocks, remembers and
//! audits. It trusts nothing that arrives on its socket: every frame is checked for its
//! peer (SO_PEERCRED), size, shape and fields, then every request is re-decided against
//! the enforcer's own never-block set, ignore list, block mode, rate limit and cap.
//!
//! Also the library behind `sentryctl`.
#![deny(unsafe_code)]

pub mod audit;
pub mod ctl;
pub mod daemon;
pub mod engine;
pub mod exec;
pub mod hostsdeny;
pub mod netlink;
pub mod session;
pub mod store;
#[allow(unsafe_code)]
mod sys;
