//! Fuzz the NFLOG datagram parser: arbitrary bytes as one datagram from the socket the
//! enforcer handed over. Never panics; every packet it yields lies inside the datagram,
//! and goes on through the per-packet path without panicking either.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use policy::IgnoreList;
use sentry_proto::Mode;
use sentry_sensor::listeners::Listeners;
use sentry_sensor::nflog::{for_each_message, Message};
use sentry_sensor::pipeline::{candidate, Counters};
use sentry_sensor::ports::{PortConfig, PortPolicy};

fuzz_target!(|data: &[u8]| {
    let policy = PortPolicy::new(
        &[Mode::Stcp, Mode::Audp],
        &PortConfig {
            tcp_ports: vec![23],
            udp_ports: vec![],
            advanced_ports_tcp: 1024,
            advanced_ports_udp: 1024,
            advanced_exclude_tcp: vec![],
            advanced_exclude_udp: vec![],
        },
    );
    let ignore = IgnoreList::parse("", Path::new("fuzz")).unwrap();
    let listeners = Listeners::default();
    let mut c = Counters::default();
    let range = data.as_ptr_range();
    for_each_message(data, |m| {
        if let Message::Packet(p) = m {
            let r = p.payload.as_ptr_range();
            assert!(r.start >= range.start && r.end <= range.end);
            let _ = candidate(p.payload, p.state, &policy, &listeners, &ignore, &mut c);
        }
    });
});
