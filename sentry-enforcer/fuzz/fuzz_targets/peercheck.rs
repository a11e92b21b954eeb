//! The sensor check's parsers of /proc text (issue #21): `/proc/PID/cgroup` (cgroup path
//! names are chosen by whoever creates the cgroup, a delegated user included) and a
//! pidfd's fdinfo. Must never panic; a unit found must be a `.service` leaf of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentry_enforcer::peercheck::{fdinfo_pid, unit_of};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(u) = unit_of(&text) {
        assert!(u.ends_with(".service") && u.len() > ".service".len());
        assert!(!u.contains('/') && !u.contains('\n'));
        assert!(text.contains(u));
    }
    let _ = fdinfo_pid(&text);
});
