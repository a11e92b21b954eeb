//! sentry-sensor
