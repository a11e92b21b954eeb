//! The root parent's only peer protocol (issue #22): whatever bytes a worker taken over
//! sends, the decoder refuses what is not exactly one record, a record it takes
//! re-encodes to the same bytes, and the parent's checks (batching, shape, floor) never
//! panic and never let an add through for an address its floor refuses. A served-port
//! item it takes is one element of the right set: a TCP or UDP port, a bounded timeout
//! for an add and none for a delete, no unspecified, loopback or mapped address. And the
//! worker's reply decoder: what it takes re-encodes to the same reply.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sentry_enforcer::parent::floor::Floor;
use sentry_enforcer::parent::serve::{cap, check, gather, Step};
use sentry_enforcer::served::{Elem, SET_ANY, SET_V4, SET_V6};
use sentry_privsep::{
    Reply, ReplyKind, Request, Verb, ELEMS_PER_REPLY, REQ_LEN, SERVED_ADD, SERVED_BATCH,
    SERVED_TIMEOUT_MAX_MS,
};

fn floor() -> &'static Floor {
    static F: OnceLock<Floor> = OnceLock::new();
    F.get_or_init(|| {
        let p = std::path::Path::new("fuzz.conf");
        let cfg = policy::Config::parse("MAX_BLOCKS=\"4\"\nBLOCK_PREFIX6=\"64\"\n", p).unwrap();
        let ignore = policy::IgnoreList::parse("10.0.0.0/8\n2001:db8:77::/48\n", p).unwrap();
        let mut f = Floor::new(&cfg, ignore);
        f.set_host(
            vec!["192.0.2.10".parse().unwrap(), "2001:db8:1:2::5".parse().unwrap()],
            vec!["192.0.2.0".parse().unwrap(), "192.0.2.255".parse().unwrap()],
            &["192.0.2.1".parse().unwrap()],
        );
        f
    })
}

fuzz_target!(|data: &[u8]| {
    let f = floor();
    // A whole datagram of any length is one decode; then the bytes as records.
    let _ = Request::decode(data);
    // The worker's side: a reply it takes (a dump's packed elements included) encodes to
    // a record that decodes to the same reply.
    if let Ok(rep) = Reply::decode(data) {
        assert!(rep.elems.len() <= ELEMS_PER_REPLY);
        assert_eq!(rep.elems.is_empty(), rep.kind != ReplyKind::Elem);
        assert_eq!(Reply::decode(&rep.encode()), Ok(rep));
    }
    let mut pending = None;
    for chunk in data.chunks(REQ_LEN) {
        let Ok(r) = Request::decode(chunk) else { continue };
        assert_eq!(&r.encode()[..], chunk);
        let adds = matches!(
            r.verb,
            Verb::NftAdd | Verb::RouteAdd | Verb::DenyAdd | Verb::KillRoute | Verb::KillRunCmd
        );
        match check(&r, f) {
            Ok(Some((a, net))) if adds || (r.verb == Verb::Build && r.addr.is_some()) => {
                assert!(f.allows(a, net).is_ok());
                assert!(!a.is_loopback() && !a.is_multicast() && !a.is_unspecified());
                assert_ne!(a, "192.0.2.1".parse::<std::net::IpAddr>().unwrap());
            }
            Ok(None) => assert!(!adds),
            _ => {}
        }
        if r.verb == Verb::Served {
            let e = Elem::of(&r);
            let (set, len) = match r.addr {
                None => (SET_ANY, 8),
                Some(a) => {
                    assert!(!a.is_unspecified() && !a.is_loopback());
                    if a.is_ipv4() {
                        (SET_V4, 12)
                    } else {
                        (SET_V6, 24)
                    }
                }
            };
            assert_eq!((e.set, e.key.len()), (set, len));
            assert!(e.key[len - 8] == 6 || e.key[len - 8] == 17);
            assert_ne!(r.port, 0);
            match e.timeout {
                Some(t) => {
                    assert_eq!(r.flag, SERVED_ADD);
                    assert!(!t.is_zero() && t.as_millis() <= u128::from(SERVED_TIMEOUT_MAX_MS));
                }
                None => assert_eq!(r.timeout_ms, 0),
            }
            assert_eq!(check(&r, f), Ok(None));
        }
        let c = cap(r.verb, f.cap);
        if let Step::Act(b) = gather(&mut pending, r, None, c) {
            assert!(b.items.len() <= c && !b.items.is_empty());
            assert!(b.verb != Verb::Served || c == SERVED_BATCH);
            assert!(b.items.iter().all(|i| i.verb == b.verb && i.id == b.id));
        }
    }
});
