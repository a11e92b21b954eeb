//! The enforcer's sensor-socket frame handling: arbitrary bytes, delivered in arbitrary
//! chunk sizes, through the same `Session` state machine the daemon uses, which also
//! checks every block request that gets through (fields, announced mode). Must never
//! panic, never buffer more than one capped frame, and stay dead after the first error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentry_worker::session::{Event, Session};
use sentry_worker::time::WallMs;
use sentry_proto::{HEADER_LEN, MAX_SMALL_FRAME};

fuzz_target!(|data: &[u8]| {
    // First byte: chunk size for delivery (1..=256), the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut s = Session::new();
    let mut dead = false;
    // Alternate between a current clock and one at the epoch, so both the "in the
    // future" and the accepted paths of the time checks are reached.
    for (i, piece) in stream.chunks(chunk).enumerate() {
        let now = if i % 2 == 0 { WallMs(1_800_000_000_000) } else { WallMs(0) };
        match s.feed(piece, now) {
            Ok(events) => {
                assert!(!dead, "accepted input after an error");
                for ev in events {
                    match ev {
                        Event::Block(b) => assert!(b.validate(now.0).is_ok()),
                        Event::Invalid(_, why) => {
                            let _ = why.to_string();
                        }
                        Event::Hello(_) | Event::Stats(_) => {}
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
