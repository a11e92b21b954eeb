//! Fuzz the TPACKET_V2 slot parser with arbitrary slot contents (the kernel writes these,
//! but every offset is checked anyway): never panics, never hands out bytes beyond the
//! slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentry_sensor::capture::parse_frame;

fuzz_target!(|slot: &[u8]| {
    let range = slot.as_ptr_range();
    if let Some((frame, _outgoing)) = parse_frame(slot) {
        let r = frame.as_ptr_range();
        assert!(r.start >= range.start && r.end <= range.end);
    }
});
