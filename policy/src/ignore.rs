//! `portsentry.ignore`: addresses and networks that are never reported or blocked.
//!
//! Entries become inclusive address ranges with the host bits masked off (so
//! `10.1.2.3/24` covers 10.1.2.0-10.1.2.255, which PortSentry got wrong), merged and
//! sorted: a lookup is a binary search, whatever the number of entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::error::{lines, read_text, ConfigError, ConfigErrors};

/// Parsed ignore list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreList {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    entries: usize,
}

/// One network: first address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// Parse one entry (comment already removed, trimmed, non-empty).
fn parse_entry(s: &str) -> Result<Net, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim())),
        None => (s, None),
    };
    if addr.contains('%') {
        return Err(format!("'{s}': zone identifiers are not supported"));
    }
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{addr}' is not an IPv4 or IPv6 address"))?;
    let digits = |l: &str, max: u8| -> Result<u8, String> {
        if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("'{l}' is not a prefix length"));
        }
        match l.parse::<u8>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(format!("prefix length {l} out of range 0-{max}")),
        }
    };
    match ip {
        IpAddr::V4(a) => {
            let len = match len {
                None => 32,
                Some(l) if l.contains('.') => {
                    let m: Ipv4Addr = l.parse().map_err(|_| format!("'{l}' is not a netmask"))?;
                    let m = u32::from(m);
                    if m.leading_ones() + m.trailing_zeros() != 32 {
                        return Err(format!("netmask {l} is not contiguous"));
                    }
                    u8::try_from(m.leading_ones()).map_err(|_| format!("netmask {l} is invalid"))?
                }
                Some(l) => digits(l, 32)?,
            };
            Ok(Net::V4(u32::from(a) & mask4(len), len))
        }
        IpAddr::V6(a) => {
            let len = match len {
                None => 128,
                Some(l) => digits(l, 128)?,
            };
            let base = u128::from(crate::mask6(a, len));
            // An IPv4-mapped network is the IPv4 network it maps.
            if len >= 96 && Ipv6Addr::from(base).to_ipv4_mapped().is_some() {
                let v4 = u32::try_from(base & u128::from(u32::MAX)).unwrap_or(0);
                return Ok(Net::V4(v4, len - 96));
            }
            Ok(Net::V6(base, len))
        }
    }
}

/// `ranges` sorted, the overlapping and adjacent ones merged (`next`: a value's successor,
/// `None` for the type's largest). Shared with the enforcer's interval sets.
pub fn merge_ranges<T: Ord + Copy>(
    mut ranges: Vec<(T, T)>,
    next: impl Fn(T) -> Option<T>,
) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        if let Some(last) = out.last_mut() {
            // Overlapping or adjacent: extend.
            if lo <= last.1 || next(last.1) == Some(lo) {
                if hi > last.1 {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|&(lo, _)| lo <= x);
    i > 0 && ranges[i - 1].1 >= x
}

impl IgnoreList {
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = read_text(path)?;
        Self::parse(&text, path)
    }

    /// One entry per line; `#` starts a comment anywhere; blank lines, CRLF and a
    /// missing final newline are fine. Every bad line is reported with its number.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigErrors> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut errors = Vec::new();
        for (n, raw) in lines(text) {
            let line = raw.split_once('#').map_or(raw, |(l, _)| l).trim();
            if line.is_empty() {
                continue;
            }
            match parse_entry(line) {
                Ok(Net::V4(base, len)) => v4.push((base, base | !mask4(len))),
                Ok(Net::V6(base, len)) => v6.push((base, base | !crate::prefix6_bits(len))),
                Err(m) => errors.push(ConfigError::new(path, Some(n), None, m)),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Self {
            // Entries read, before merging.
            entries: v4.len() + v6.len(),
            v4: merge_ranges(v4, |x: u32| x.checked_add(1)),
            v6: merge_ranges(v6, |x: u128| x.checked_add(1)),
        })
    }

    /// Is `ip` covered? IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(a)),
            },
        }
    }

    /// Does any entry overlap the IPv6 network `net`/`len`? (A prefix block must not cover
    /// an address the administrator asked never to block.)
    pub fn overlaps_net6(&self, net: std::net::Ipv6Addr, len: u8) -> bool {
        let lo = u128::from(crate::mask6(net, len));
        let hi = lo | !crate::prefix6_bits(len);
        // Ranges are sorted and disjoint: the first one ending at or after `lo` is the
        // only candidate.
        let i = self.v6.partition_point(|&(_, end)| end < lo);
        self.v6.get(i).is_some_and(|&(start, _)| start <= hi)
    }

    /// Number of entries read (before merging).
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The merged IPv4 ranges (inclusive, sorted, disjoint): what the enforcer loads into
    /// the detection chain's kernel set.
    pub fn ranges_v4(&self) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> + '_ {
        self.v4
            .iter()
            .map(|&(lo, hi)| (Ipv4Addr::from(lo), Ipv4Addr::from(hi)))
    }

    /// The merged IPv6 ranges (inclusive, sorted, disjoint).
    pub fn ranges_v6(&self) -> impl Iterator<Item = (Ipv6Addr, Ipv6Addr)> + '_ {
        self.v6
            .iter()
            .map(|&(lo, hi)| (Ipv6Addr::from(lo), Ipv6Addr::from(hi)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_overlaps() {
        let l = list("2001:db8:1:2::9\n2001:db8:5::/48\n");
        let n = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        assert!(l.overlaps_net6(n("2001:db8:1:2::"), 64));
        assert!(!l.overlaps_net6(n("2001:db8:1:3::"), 64));
        assert!(l.overlaps_net6(n("2001:db8:5:7::"), 64));
        assert!(!l.overlaps_net6(n("2001:db8:6::"), 64));
        assert!(l.overlaps_net6(n("2001:db8::"), 32));
        assert!(!list("").overlaps_net6(n("2001:db8::"), 32));
    }

    fn list(text: &str) -> IgnoreList {
        IgnoreList::parse(text, Path::new("t.ignore")).unwrap()
    }

    fn has(l: &IgnoreList, s: &str) -> bool {
        l.contains(s.parse().unwrap())
    }

    #[test]
    fn ranges_for_the_kernel_set() {
        let l = list("10.1.2.3/24\n10.1.3.0/24\n192.0.2.7\n2001:db8::/126\n");
        let v4: Vec<_> = l.ranges_v4().map(|(a, b)| format!("{a}-{b}")).collect();
        // Adjacent networks are merged: an interval set rejects overlapping elements.
        assert_eq!(v4, ["10.1.2.0-10.1.3.255", "192.0.2.7-192.0.2.7"]);
        let v6: Vec<_> = l.ranges_v6().map(|(a, b)| format!("{a}-{b}")).collect();
        assert_eq!(v6, ["2001:db8::-2001:db8::3"]);
    }

    #[test]
    fn host_bits_are_masked() {
        let l = list("10.1.2.3/24\n");
        assert!(has(&l, "10.1.2.0") && has(&l, "10.1.2.255") && has(&l, "10.1.2.3"));
        assert!(!has(&l, "10.1.3.0") && !has(&l, "10.1.1.255"));
    }

    #[test]
    fn netmask_and_bare_forms() {
        let l = list("192.168.0.0/255.255.0.0\n127.0.0.1\n0.0.0.0\n");
        assert!(has(&l, "192.168.77.1") && has(&l, "127.0.0.1") && has(&l, "0.0.0.0"));
        assert!(!has(&l, "127.0.0.2") && !has(&l, "192.169.0.0"));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn ipv6_any_case_and_mapped() {
        let l = list("2001:DB8::/32\nFE80::1\n::ffff:198.51.100.0/120\n");
        assert!(has(&l, "2001:db8:ffff::1") && has(&l, "fe80::1"));
        assert!(!has(&l, "2001:db9::1") && !has(&l, "fe80::2"));
        assert!(has(&l, "198.51.100.77") && has(&l, "::ffff:198.51.100.9"));
    }

    #[test]
    fn comments_crlf_no_final_newline() {
        let l = list("# header\r\n\r\n10.0.0.1 # trailing\r\n   \n2001:db8::1/128");
        assert!(has(&l, "10.0.0.1") && has(&l, "2001:db8::1"));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn bad_lines_are_reported_with_numbers() {
        let err = IgnoreList::parse(
            "10.0.0.1\nnot-an-ip\n10.0.0.0/33\n10.0.0.0/255.0.255.0\nfe80::1%eth0\n::/129\n",
            Path::new("/etc/x.ignore"),
        )
        .unwrap_err();
        let msgs: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "/etc/x.ignore:2: 'not-an-ip' is not an IPv4 or IPv6 address",
                "/etc/x.ignore:3: prefix length 33 out of range 0-32",
                "/etc/x.ignore:4: netmask 255.0.255.0 is not contiguous",
                "/etc/x.ignore:5: 'fe80::1%eth0': zone identifiers are not supported",
                "/etc/x.ignore:6: prefix length 129 out of range 0-128",
            ]
        );
    }

    #[test]
    fn whole_space_and_merging() {
        let l = list("0.0.0.0/0\n10.0.0.0/8\n");
        assert!(has(&l, "255.255.255.255") && has(&l, "0.0.0.0"));
        assert!(!has(&l, "::1"));
        let l = list("10.0.0.0/25\n10.0.0.128/25\n");
        assert_eq!(l.v4, vec![(0x0a00_0000, 0x0a00_00ff)]);
    }
}
