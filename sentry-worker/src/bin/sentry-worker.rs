//! `sentry-worker`: see the library documentation.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    sentry_worker::daemon::main()
}
