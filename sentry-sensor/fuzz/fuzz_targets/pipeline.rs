//! Fuzz the whole per-packet path with state: a sequence of frames (each prefixed by one
//! control byte: conntrack state new/invalid and a time step) through `candidate()`
//! (parser, checksum check of invalid packets, ignore list, port policy) and the state
//! engine. Never panics;
//! every report the state engine makes passes the enforcer's validation.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use policy::IgnoreList;
use sentry_proto::{BlockRequest, Mode};
use sentry_sensor::listeners::Listeners;
use sentry_sensor::nflog::CtState;
use sentry_sensor::pipeline::{candidate, Counters};
use sentry_sensor::ports::{PortConfig, PortPolicy};
use sentry_sensor::state::{Outcome, State, StateConfig};
use sentry_sensor::time::{Mono, Wall};

fuzz_target!(|data: &[u8]| {
    let policy = PortPolicy::new(
        &[Mode::Stcp, Mode::Sudp, Mode::Atcp, Mode::Audp],
        &PortConfig {
            tcp_ports: vec![1, 23, 31337],
            udp_ports: vec![7, 31337],
            advanced_ports_tcp: 1024,
            advanced_ports_udp: 65535,
            advanced_exclude_tcp: vec![113],
            advanced_exclude_udp: vec![137],
        },
    );
    let ignore = IgnoreList::parse("10.0.0.0/8\n", Path::new("fuzz")).unwrap();
    let listeners = Listeners::default();
    let mut counters = Counters::default();
    let mut state = State::new(StateConfig {
        trigger: 1,
        window_ms: 1000,
        max_sources: 8,
        rereport_ms: 100,
    });
    let mut now = 1u64;
    // Frames: [control][len][bytes...]
    let mut rest = data;
    while let [ctl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (frame, next) = tail.split_at(n);
        rest = next;
        now += u64::from(ctl >> 1);
        let state_ = if ctl & 1 == 1 {
            CtState::Invalid
        } else {
            CtState::New
        };
        if let Some(c) = candidate(frame, state_, &policy, &listeners, &ignore, &mut counters) {
            if let Outcome::Report(r) = state.hit(&c, Mono(now), Wall(1_700_000_000_000 + now)) {
                let req = BlockRequest {
                    seq: 1,
                    source: r.src,
                    protocol: r.scan.protocol(),
                    port: r.port,
                    scan: r.scan,
                    mode: r.mode,
                    distinct_ports: r.distinct_ports,
                    first_seen_ms: r.first_seen.0,
                    last_seen_ms: r.last_seen.0,
                    ip_options: r.ip_options,
                };
                assert_eq!(req.validate(1_800_000_000_000), Ok(()), "{req:?}");
            }
        }
        assert!(state.len() <= 8);
    }
});
