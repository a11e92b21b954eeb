//! The enforcer's state reader (snapshot + journal, versions 1 and 2): arbitrary bytes
//! as either file, or split between both. Must never panic; a result must be either a
//! usable state or an error that names a line and a byte offset inside the input.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sentry_worker::store::{read_state, LoadedState, StateError};

fn check(r: Result<LoadedState, StateError>, len: usize) {
    match r {
        Ok((blocks, _, _)) => {
            for (addr, b) in &blocks {
                assert_eq!(*addr, b.addr);
            }
        }
        Err(StateError::Damaged { line, byte, .. }) => {
            assert!(line >= 1);
            assert!(byte as usize <= len, "offset {byte} past the end ({len})");
        }
        Err(StateError::Newer { version, .. }) => assert!(version > 2),
        Err(StateError::Io { .. }) => panic!("no I/O in the parser"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (s, j) = (Path::new("blocks.json"), Path::new("blocks.journal"));
    check(read_state(Some((s, data)), None), data.len());
    check(read_state(None, Some((j, data))), data.len());
    // First byte: where to split the input between the two files.
    if let Some((&cut, rest)) = data.split_first() {
        let at = usize::from(cut).min(rest.len());
        let (a, b) = rest.split_at(at);
        check(read_state(Some((s, a)), Some((j, b))), a.len().max(b.len()));
    }
});
