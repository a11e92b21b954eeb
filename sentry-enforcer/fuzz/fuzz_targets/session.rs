//! The enforcer's sensor-socket frame handling: arbitrary bytes, delivered in arbitrary
//! chunk sizes, through the same `Session` state machine the daemon uses, then field
//! validation of every block request that gets through. Must never panic, never buffer
//! more than one capped frame, and stay dead after the first error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentry_enforcer::session::{Event, Session};
use sentry_proto::{HEADER_LEN, MAX_SMALL_FRAME};

fuzz_target!(|data: &[u8]| {
    // First byte: chunk size for delivery (1..=256), the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut s = Session::new();
    let mut dead = false;
    for piece in stream.chunks(chunk) {
        match s.feed(piece) {
            Ok(events) => {
                assert!(!dead, "accepted input after an error");
                for ev in events {
                    if let Event::Block(b) = ev {
                        let _ = b.validate(1_800_000_000_000);
                        let _ = b.validate(0);
                    }
                }
                if let Ok(w) = s.wanted() {
                    assert!(w <= MAX_SMALL_FRAME + HEADER_LEN);
                }
            }
            Err(e) => {
                let _ = e.refusal();
                let _ = e.to_string();
                dead = true;
            }
        }
    }
});
