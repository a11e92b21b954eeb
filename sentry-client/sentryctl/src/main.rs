//! `sentryctl`: the administrator's command for sentry. The work is in the
//! `sentry-client` library; this binary is its command line (clap) and its output, which
//! goes through a checked writer: a reader that goes away (`sentryctl blocked | head -1`)
//! ends sentryctl quietly with exit status 0, never with a panic.
#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
