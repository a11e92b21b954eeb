//! Arbitrary configuration text: a Config or located errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match policy::Config::parse(text, std::path::Path::new("fuzz.conf")) {
            Ok(cfg) => {
                let v = policy::Vars { target: "192.0.2.1", port: 1, mode: "tcp" };
                if let Some(t) = &cfg.kill_route {
                    assert!(!t.render(&v).is_empty());
                }
            }
            Err(e) => assert!(!e.0.is_empty()),
        }
    }
});
