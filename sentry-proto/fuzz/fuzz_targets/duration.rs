//! The text parsers of sentry-proto: Go-style durations (`sentryctl block --for`, a
//! LAPI's decision durations), watch cursors and origin names. Never a panic; a parsed
//! duration of whole seconds formats back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sentry_proto::*;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_go_duration(s) {
        assert!(s.len() <= duration::MAX_LEN);
        let whole = std::time::Duration::from_secs(d.as_secs());
        assert_eq!(parse_go_duration(&format_go_duration(whole)), Ok(whole));
    }
    if let Ok(c) = s.parse::<Cursor>() {
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
    }
    if validate_origin(s).is_ok() {
        assert!(!s.is_empty() && s.len() <= MAX_ORIGIN_LEN && s.is_ascii());
    }
});
