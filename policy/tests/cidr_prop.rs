//! Property test: the range-merging ignore list answers exactly like a naive scan of
//! every entry with its mask.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use policy::IgnoreList;
use proptest::prelude::*;

fn naive_v4(entries: &[(u32, u8)], q: u32) -> bool {
    entries.iter().any(|&(a, len)| {
        let m = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        a & m == q & m
    })
}

fn naive_v6(entries: &[(u128, u8)], q: u128) -> bool {
    entries.iter().any(|&(a, len)| {
        let m = if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        a & m == q & m
    })
}

/// Addresses clustered in a small space so that queries often hit entries.
fn v4_addr() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        (0u32..4096).prop_map(|x| 0x0a00_0000 | (x << 4))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v4_matches_naive(entries in prop::collection::vec((v4_addr(), 0u8..=32), 0..40),
                        queries in prop::collection::vec(v4_addr(), 1..60)) {
        let text: String = entries.iter().map(|(a, l)| format!("{}/{}\n", Ipv4Addr::from(*a), l)).collect();
        let list = IgnoreList::parse(&text, Path::new("p")).unwrap();
        for q in queries.iter().copied().chain(entries.iter().map(|e| e.0)) {
            prop_assert_eq!(list.contains(IpAddr::V4(q.into())), naive_v4(&entries, q), "query {}", Ipv4Addr::from(q));
        }
    }

    #[test]
    fn v6_matches_naive(entries in prop::collection::vec((any::<u128>().prop_map(|x| (0x2001_0db8u128 << 96) | (x >> 80)), 0u8..=128), 0..30),
                        queries in prop::collection::vec(any::<u128>().prop_map(|x| (0x2001_0db8u128 << 96) | (x >> 80)), 1..60)) {
        let text: String = entries.iter().map(|(a, l)| format!("{}/{}\n", Ipv6Addr::from(*a), l)).collect();
        let list = IgnoreList::parse(&text, Path::new("p")).unwrap();
        for q in queries.iter().copied().chain(entries.iter().map(|e| e.0)) {
            prop_assert_eq!(list.contains(IpAddr::V6(q.into())), naive_v6(&entries, q));
        }
    }

    #[test]
    fn netmask_form_equals_prefix_form(a in any::<u32>(), len in 0u8..=32, q in any::<u32>()) {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
        let by_len = IgnoreList::parse(&format!("{}/{}", Ipv4Addr::from(a), len), Path::new("p")).unwrap();
        let by_mask = IgnoreList::parse(&format!("{}/{}", Ipv4Addr::from(a), Ipv4Addr::from(mask)), Path::new("p")).unwrap();
        prop_assert_eq!(by_len.contains(IpAddr::V4(q.into())), by_mask.contains(IpAddr::V4(q.into())));
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = IgnoreList::parse(&text, Path::new("p"));
        let _ = policy::Config::parse(&text, Path::new("p"));
    }
}
