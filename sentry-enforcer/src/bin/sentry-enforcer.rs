//! `sentry-enforcer`: the root parent; see the library documentation.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    sentry_enforcer::parent::main()
}
