//! End-to-end test harness for sentry.
