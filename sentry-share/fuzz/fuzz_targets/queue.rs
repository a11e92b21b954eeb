//! The on-disk queue's reader on arbitrary bytes: an error (foreign header) or reports
//! within the bound, with every skipped line counted.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((items, rep)) = sentry_share::queue::parse(data, 8) {
        assert!(items.len() <= 8);
        assert!(rep.problems.len() as u64 >= rep.rejected.min(1));
    }
});
