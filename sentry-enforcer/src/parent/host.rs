//! What the floor knows of this host, read from the kernel by the parent itself: its
//! addresses and subnets (getifaddrs), its default gateways (an rtnetlink route dump),
//! and a notification socket that says when either changed.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recvfrom, setsockopt, sockopt, NetlinkAddr, SockFlag, SockProtocol};
use nix::sys::time::TimeVal;

use crate::kernel::nl::{
    self, AF_INET, AF_INET6, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST, RECV_BUF,
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTM_DELROUTE, RTM_NEWROUTE,
};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETROUTE: u16 = 26;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTA_VIA: u16 = 18;
const RTN_UNICAST: u8 = 1;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// This host's addresses, and the network and broadcast addresses of its IPv4 subnets
/// (none for /31 and /32, whose addresses are all hosts).
pub fn addresses() -> (Vec<IpAddr>, Vec<Ipv4Addr>) {
    let (mut own, mut ends) = (Vec::new(), Vec::new());
    for ifa in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        let Some(a) = ifa.address.as_ref() else {
            continue;
        };
        if let Some(v6) = a.as_sockaddr_in6() {
            own.push(IpAddr::V6(v6.ip()));
        }
        let Some(v4) = a.as_sockaddr_in().map(|s| s.ip()) else {
            continue;
        };
        own.push(IpAddr::V4(v4));
        ends.extend(
            ifa.broadcast
                .as_ref()
                .and_then(|b| b.as_sockaddr_in())
                .map(|b| b.ip()),
        );
        let m = ifa
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map_or(u32::MAX, |m| u32::from(m.ip()));
        if m.leading_ones() <= 30 && m.leading_ones() + m.trailing_zeros() == 32 {
            ends.push(Ipv4Addr::from(u32::from(v4) & m));
            ends.push(Ipv4Addr::from(u32::from(v4) | !m));
        }
    }
    (own, ends)
}

fn ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        AF_INET6 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The next hops of one route message's payload when it is a unicast default route (in
/// any table; multipath and RTA_VIA included).
pub fn gateways_of(payload: &[u8], out: &mut Vec<IpAddr>) {
    let Some((hdr, rest)) = payload.split_at_checked(12) else {
        return;
    };
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    if hdr[1] != 0 || hdr[7] != RTN_UNICAST {
        return;
    }
    let hop = |t: u16, v: &[u8], out: &mut Vec<IpAddr>| match t {
        RTA_GATEWAY => out.extend(ip(hdr[0], v)),
        // struct rtvia: a 16-bit family, then the address.
        RTA_VIA if v.len() > 2 => {
            let family = u8::try_from(u16::from_ne_bytes([v[0], v[1]])).unwrap_or(0);
            out.extend(ip(family, &v[2..]));
        }
        _ => {}
    };
    for (t, v) in nl::attrs(rest).map_while(Result::ok) {
        if t != RTA_MULTIPATH {
            hop(t, v, out);
            continue;
        }
        // struct rtnexthop {len u16, flags u8, hops u8, ifindex i32} + its attributes.
        for (_, attrs) in nl::split(v, 8, nl::len16, "rtnexthop").map_while(Result::ok) {
            for (t, v) in nl::attrs(attrs).map_while(Result::ok) {
                hop(t, v, out);
            }
        }
    }
}

/// The default gateways of every routing table, IPv4 and IPv6 (one RTM_GETROUTE dump).
pub fn default_gateways() -> Result<Vec<IpAddr>, Errno> {
    let fd = nl::open(SockProtocol::NetlinkRoute, 0, SockFlag::empty())?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
    let seq = std::process::id().wrapping_mul(7919);
    let mut b = nl::MsgBuilder::new(Vec::with_capacity(28));
    b.begin(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq);
    b.bytes(&[0; 12]);
    b.end();
    nl::send(&fd, &b.finish())?;
    let (mut out, mut buf) = (Vec::new(), vec![0u8; RECV_BUF]);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let (n, from) = match recvfrom::<NetlinkAddr>(fd.as_raw_fd(), &mut buf) {
            Err(Errno::EINTR) => continue,
            r => r?,
        };
        if from.is_none_or(|f| f.pid() != 0) {
            continue;
        }
        for m in nl::messages(&buf[..n.min(buf.len())]).map_while(Result::ok) {
            match m.ty {
                _ if m.seq != seq => {}
                NLMSG_DONE => {
                    out.sort();
                    out.dedup();
                    return Ok(out);
                }
                NLMSG_ERROR => match nl::error_code(m.payload) {
                    Some(0) => {}
                    code => return Err(Errno::from_raw(-code.unwrap_or(-libc::EIO))),
                },
                RTM_NEWROUTE => gateways_of(m.payload, &mut out),
                _ => {}
            }
        }
    }
    Err(Errno::ETIMEDOUT)
}

/// A notification socket for address changes and default-route changes.
#[derive(Debug)]
pub struct HostWatch(nl::Watch);

impl HostWatch {
    pub fn open() -> Result<Self, Errno> {
        let groups =
            RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
        nl::Watch::open(SockProtocol::NetlinkRoute, groups, RECV_BUF).map(Self)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd.as_fd()
    }

    /// Read what is queued; whether an address or a default route changed (or changes
    /// were lost). Other routes (the blackhole routes of blocks) are not news.
    pub fn drain(&mut self) -> Result<bool, Errno> {
        let mut changed = false;
        let lost = self.0.drain(256, |b| {
            for m in nl::messages(b.unwrap_or(&[])).map_while(Result::ok) {
                changed |= match m.ty {
                    RTM_NEWADDR | RTM_DELADDR => true,
                    RTM_NEWROUTE | RTM_DELROUTE => m.payload.get(1) == Some(&0),
                    _ => false,
                };
            }
        })?;
        Ok(lost || changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(4 + payload.len())
            .unwrap()
            .to_ne_bytes()
            .to_vec();
        v.extend(ty.to_ne_bytes());
        v.extend(payload);
        v.resize(nl::pad4(v.len()), 0);
        v
    }

    #[test]
    fn default_routes_only_with_multipath_and_via() {
        let rt = |family: u8, dst_len: u8, ty: u8| {
            vec![family, dst_len, 0, 0, 254, 4, 0, ty, 0, 0, 0, 0]
        };
        let mut out = Vec::new();
        let mut p = rt(AF_INET, 0, RTN_UNICAST);
        p.extend(attr(RTA_GATEWAY, &[192, 0, 2, 1]));
        gateways_of(&p, &mut out);
        let mut other = rt(AF_INET, 24, RTN_UNICAST);
        other.extend(attr(RTA_GATEWAY, &[192, 0, 2, 9]));
        gateways_of(&other, &mut out);
        let mut bh = rt(AF_INET, 0, 6);
        bh.extend(attr(RTA_GATEWAY, &[192, 0, 2, 8]));
        gateways_of(&bh, &mut out);
        let hop = |a: Vec<u8>| {
            let mut h = u16::try_from(8 + a.len()).unwrap().to_ne_bytes().to_vec();
            h.extend([0, 0, 1, 0, 0, 0]);
            h.extend(a);
            h
        };
        let mut mp = hop(attr(RTA_GATEWAY, &[10, 0, 0, 1]));
        mp.extend(hop(attr(RTA_GATEWAY, &[10, 0, 0, 2])));
        let mut p4 = rt(AF_INET, 0, RTN_UNICAST);
        p4.extend(attr(RTA_MULTIPATH, &mp));
        gateways_of(&p4, &mut out);
        let mut p6 = rt(AF_INET6, 0, RTN_UNICAST);
        let mut via = vec![AF_INET6, 0];
        via.extend("fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p6.extend(attr(RTA_VIA, &via));
        gateways_of(&p6, &mut out);
        gateways_of(&[1, 2, 3], &mut out);
        let want: Vec<IpAddr> = ["192.0.2.1", "10.0.0.1", "10.0.0.2", "fe80::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn this_host() {
        let _ = addresses();
        let _ = default_gateways();
    }
}
