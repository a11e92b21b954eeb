//! Fuzz the TPACKET_V3 block walker with arbitrary block contents (the kernel writes these,
//! but every offset is checked anyway): never panics, never hands out bytes beyond the
//! block.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentry_sensor::capture::for_each_frame;

fuzz_target!(|block: &[u8]| {
    let range = block.as_ptr_range();
    let _ = for_each_frame(block, &mut |frame: &[u8], _outgoing| {
        let r = frame.as_ptr_range();
        assert!(r.start >= range.start && r.end <= range.end);
    });
});
