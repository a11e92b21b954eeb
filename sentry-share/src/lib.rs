//! `sentry-share`, sentry's fleet bridge to a CrowdSec Local API. It is its own program
//! (and crate) so that HTTP, TLS and JSON from the network never enter the root
//! enforcer: it runs as the unprivileged `sentry-share` user with no capability, and
//! talks to the enforcer only through the control socket, with sentryctl's own client
//! code and the enforcer's own checks on everything it asks for.
//!
//! * push: the enforcer's decision stream (`sentryctl watch`) → local `blocked`
//!   decisions of the sensor with strong evidence → bounded on-disk queue → `POST
//!   /v1/alerts` as a registered machine ([`bridge::push_filter`], [`queue`], [`lapi`]).
//! * pull: `GET /v1/decisions/stream` as a bouncer → `block`/`unblock` control
//!   requests with origin `crowdsec` ([`bridge::classify`], [`bridge::apply_stream`]).
#![forbid(unsafe_code)]

pub mod bridge;
pub mod config;
pub mod lapi;
pub mod queue;
pub mod ratelog;
pub mod rfc3339;
pub mod state;
