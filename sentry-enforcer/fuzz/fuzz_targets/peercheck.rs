//! The sensor check's parsers of /proc text (issue #21): `/proc/self/cgroup` (cgroup path
//! names are chosen by whoever creates the cgroup, a delegated user included) and a
//! pidfd's fdinfo. Must never panic; a service found must be a `.service` leaf of a line
//! of the input, in the unified or the `name=systemd` hierarchy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentry_enforcer::peercheck::{fdinfo_pid, service_cgroup};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some((ctl, path)) = service_cgroup(&text) {
        assert!(ctl.is_empty() || ctl == "name=systemd");
        let leaf = path.rsplit('/').next().unwrap_or_default();
        assert!(leaf.ends_with(".service") && leaf.len() > ".service".len());
        assert!(!path.contains('\n'));
        assert!(text.lines().any(|l| l.ends_with(&format!(":{ctl}:{path}"))));
    }
    let _ = fdinfo_pid(&text);
});
