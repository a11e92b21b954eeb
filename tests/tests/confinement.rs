//! The running sensor, started as the harness (and the unit) starts it, holds no privilege
//! worth stealing.

use sentry_tests::{require_root, Sentry, Settings};

#[test]
fn running_sensor_is_unprivileged_and_seccomp_confined() {
    let test = "running_sensor_is_unprivileged_and_seccomp_confined";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp", "audp", "stcp", "sudp"]));
    let pid = s.sensor_pid();
    let field = |f: &str| Sentry::proc_status(pid, f).unwrap_or_else(|| panic!("no {f}"));
    let uids: Vec<u32> = field("Uid")
        .split_whitespace()
        .filter_map(|u| u.parse().ok())
        .collect();
    assert_eq!(uids.len(), 4);
    assert!(
        uids.iter().all(|&u| u == s.sensor_uid),
        "sensor uids {uids:?}"
    );
    const NET_RAW: u64 = 1 << 13;
    for cap in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
        let v = u64::from_str_radix(&field(cap), 16).unwrap();
        assert_eq!(v & !NET_RAW, 0, "{cap} = {v:#x}: more than CAP_NET_RAW");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "no seccomp filter");
    // The enforcer's socket is group-shared with the sensor only.
    let meta = std::fs::metadata(s.runtime_dir.join("enforcer.sock")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 0);
    let ctl = std::fs::metadata(s.runtime_dir.join("control.sock")).unwrap();
    assert_eq!(
        ctl.permissions().mode() & 0o007,
        0,
        "control.sock is world-accessible"
    );
}
