//! Arbitrary ignore-file text: every accepted list answers lookups without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(list) = policy::IgnoreList::parse(text, std::path::Path::new("fuzz.ignore")) {
            for a in ["0.0.0.0", "10.1.2.3", "255.255.255.255", "::", "2001:db8::1", "::ffff:10.0.0.1"] {
                let _ = list.contains(a.parse().expect("literal"));
            }
        }
    }
});
