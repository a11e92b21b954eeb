//! What the enforcer tells its clients, none of it privileged: the decision stream of
//! `sentryctl watch` and the fleet bridge ([`watch`]), per-uid control connection slots
//! ([`slots`]) and the Prometheus metrics and textfile ([`metrics`]). The control
//! connections themselves are served in [`crate::daemon`].

pub mod metrics;
pub mod slots;
pub mod watch;
