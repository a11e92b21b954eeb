//! Every LAPI reply parser on arbitrary bytes (decision stream, login, alerts), and
//! the per-decision checks on whatever a stream parsed to: a typed error, never a
//! panic; a login is never accepted with an expiry in the past.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sentry_share::bridge::{classify, decision_meta, Action};
use sentry_share::lapi::{parse_alert_of, parse_alerts_reply, parse_login, parse_stream};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_stream(data) {
        for d in r.new.iter().flatten().chain(r.deleted.iter().flatten()) {
            if let Action::Block { duration_ms, .. } = classify(d) {
                assert!(duration_ms >= 1000);
                // What reaches the enforcer passes its checks, whatever the LAPI said.
                let alert = parse_alert_of(data, d.id).ok().flatten();
                assert!(decision_meta(d, alert).0.validate().is_ok());
            }
        }
    }
    let now = 1_800_000_000;
    if let Ok((tok, exp)) = parse_login(data, now) {
        assert!(exp > now && !tok.is_empty());
    }
    let _ = parse_alerts_reply(data);
    let _ = parse_alert_of(data, 1);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = sentry_share::rfc3339::parse(s);
    }
});
