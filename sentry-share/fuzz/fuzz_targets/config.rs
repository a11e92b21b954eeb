//! share.conf on arbitrary text: a configuration or an error naming a line.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match sentry_share::config::Config::parse(s) {
        Ok(c) => assert!(!c.lapi_urls.is_empty()),
        Err(e) => assert!(e.split(':').next().is_some_and(|n| n.parse::<usize>().is_ok()), "{e}"),
    }
});
