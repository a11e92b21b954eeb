//! `sentry-sensor`: see the library crate for everything.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(sentry_sensor::main_with_args(std::env::args_os().skip(1)));
}
