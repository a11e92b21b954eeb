//! sentry-enforcer
