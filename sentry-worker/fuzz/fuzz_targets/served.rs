//! The worker's served-port poller's sock_diag reply parser (issue #21): the kernel's reply is
//! checked, never trusted. Must never panic; every key it yields is one a probe can
//! reach (a port, no loopback address), and the set stays bounded.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use sentry_worker::served::{parse_dump, Key, MAX_KEYS};

fuzz_target!(|data: &[u8]| {
    let (proto, seq, rest) = match data {
        [p, a, b, c, d, rest @ ..] => (*p, u32::from_ne_bytes([*a, *b, *c, *d]), rest),
        _ => return,
    };
    let mut out = BTreeSet::new();
    let _ = parse_dump(rest, seq, proto, Some(0), &mut out);
    assert!(out.len() <= MAX_KEYS);
    for k in out {
        match k {
            Key::Any { port, .. } => assert_ne!(port, 0),
            Key::V4 { addr, port, .. } => assert!(port != 0 && !addr.is_loopback()),
            Key::V6 { addr, port, .. } => {
                assert!(port != 0 && !addr.is_loopback() && addr.to_ipv4_mapped().is_none())
            }
        }
    }
});
