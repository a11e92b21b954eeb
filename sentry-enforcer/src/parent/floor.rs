//! The parent's own floor under every effect the worker asks for: what it knows by
//! itself (the fixed never-block ranges, this host's addresses, the network and broadcast
//! addresses of its subnets, its default gateways, the ignore list) and hard caps on how
//! many and how fast. A worker taken over can do no more through it than a sensor could.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use policy::{Config, IgnoreList, InfraReason, NeverBlock, NeverBlockReason};
use sentry_privsep::Refusal;

/// What an add is charged to: each kind of effect has its own rolling minute, so one
/// block that sets an element, a route and a deny line and runs a command costs one of
/// each, not four of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nft = 0,
    Route = 1,
    Deny = 2,
    Kill = 3,
}

/// The floor: see the module documentation.
#[derive(Debug)]
pub struct Floor {
    never: NeverBlock,
    ignore: IgnoreList,
    prefix6: u8,
    /// Most elements per Build, per Dump and per batch.
    pub cap: usize,
    /// Most adds of one [`Kind`] per rolling minute.
    pub rate: usize,
    adds: [VecDeque<Instant>; 4],
}

const MINUTE: Duration = Duration::from_secs(60);

impl Floor {
    /// `HARD_CAP = max(MAX_BLOCKS, 1) * 2`,
    /// `HARD_RATE = 2 * max(BLOCK_RATE + FLEET_BLOCK_RATE, 60)`.
    pub fn new(cfg: &Config, ignore: IgnoreList) -> Self {
        let cap = usize::try_from(cfg.max_blocks.max(1)).unwrap_or(usize::MAX / 2) * 2;
        let rate = cfg.block_rate.saturating_add(cfg.fleet_block_rate).max(60);
        Self {
            never: NeverBlock::default(),
            ignore,
            prefix6: cfg.block_prefix6,
            cap,
            rate: usize::try_from(rate).unwrap_or(usize::MAX / 2) * 2,
            adds: Default::default(),
        }
    }

    /// This host as the kernel describes it now: its addresses, the network and
    /// broadcast addresses of its IPv4 subnets, its default gateways.
    pub fn set_host(&mut self, own: Vec<IpAddr>, ends: Vec<Ipv4Addr>, gateways: &[IpAddr]) {
        self.never.set_own(own);
        self.never.set_broadcasts(ends);
        let gw = gateways.iter().map(|g| (*g, InfraReason::DefaultGateway));
        self.never.set_infrastructure(gw);
    }

    pub fn gateways(&self) -> Vec<IpAddr> {
        self.never
            .infrastructure()
            .into_iter()
            .map(|(a, _)| a)
            .collect()
    }

    pub fn set_ignore(&mut self, ignore: IgnoreList) {
        self.ignore = ignore;
    }

    pub fn ignore(&self) -> &IgnoreList {
        &self.ignore
    }

    /// The block a request names: a single address (prefix 32 or 128), or the IPv6
    /// network of BLOCK_PREFIX6 around it (`Some(len)`, the address masked). Any other
    /// prefix is malformed: the kernel's `v6net` set is looked up with BLOCK_PREFIX6 only.
    pub fn subject(
        &self,
        addr: Option<IpAddr>,
        prefix: u8,
    ) -> Result<(IpAddr, Option<u8>), Refusal> {
        match addr {
            Some(a @ IpAddr::V4(_)) if prefix == 32 => Ok((a, None)),
            Some(a @ IpAddr::V6(_)) if prefix == 128 => Ok((a, None)),
            Some(IpAddr::V6(a)) if prefix == self.prefix6 => {
                Ok((IpAddr::V6(policy::mask6(a, prefix)), Some(prefix)))
            }
            _ => Err(Refusal::Malformed),
        }
    }

    /// May `addr` (with `net`: the whole IPv6 network `addr`/len) be blocked?
    pub fn allows(&self, addr: IpAddr, net: Option<u8>) -> Result<(), Refusal> {
        if let IpAddr::V6(a) = addr {
            // IPv4-mapped sources never reach a socket as such; NeverBlock would read
            // them as the IPv4 address, so they are refused here first.
            let mapped = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0);
            if policy::mask6(a, 96) == mapped
                || net.is_some_and(|l| l <= 96 && policy::mask6(mapped, l) == a)
            {
                return Err(Refusal::Reserved);
            }
        }
        let why = match (addr, net) {
            (IpAddr::V6(a), Some(len)) => self.never.check_net6(a, len),
            _ => self.never.check(addr),
        };
        if let Some(r) = why {
            return Err(refusal(r));
        }
        let ignored = match (addr, net) {
            (IpAddr::V6(a), Some(len)) => self.ignore.overlaps_net6(a, len),
            _ => self.ignore.contains(addr),
        };
        if ignored {
            return Err(Refusal::Ignored);
        }
        Ok(())
    }

    /// How many adds of `kind` the rolling minute still has room for.
    pub fn room(&mut self, kind: Kind, now: Instant) -> usize {
        let w = &mut self.adds[kind as usize];
        while w
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            w.pop_front();
        }
        self.rate.saturating_sub(w.len())
    }

    /// Count `n` adds of `kind` made at `now` (the window never holds more than the
    /// rate: an overshoot of one batch ages out like the rest).
    pub fn charge(&mut self, kind: Kind, n: usize, now: Instant) {
        let w = &mut self.adds[kind as usize];
        for _ in 0..n.min(self.rate) {
            if w.len() >= self.rate {
                w.pop_front();
            }
            w.push_back(now);
        }
    }
}

fn refusal(r: NeverBlockReason) -> Refusal {
    match r {
        NeverBlockReason::Unspecified | NeverBlockReason::Reserved => Refusal::Reserved,
        NeverBlockReason::Loopback => Refusal::Loopback,
        NeverBlockReason::Multicast => Refusal::Multicast,
        NeverBlockReason::Broadcast => Refusal::Broadcast,
        NeverBlockReason::LinkLocal => Refusal::LinkLocal,
        NeverBlockReason::OwnAddress => Refusal::OwnAddress,
        NeverBlockReason::Infrastructure(_) => Refusal::Gateway,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn floor(conf: &str, ignore: &str) -> Floor {
        let cfg = Config::parse(conf, std::path::Path::new("t.conf")).unwrap();
        let ign = IgnoreList::parse(ignore, std::path::Path::new("i")).unwrap();
        let mut f = Floor::new(&cfg, ign);
        f.set_host(
            vec![
                "192.0.2.10".parse().unwrap(),
                "2001:db8:1:2::5".parse().unwrap(),
            ],
            vec!["192.0.2.0".parse().unwrap(), "192.0.2.255".parse().unwrap()],
            &[
                "192.0.2.1".parse().unwrap(),
                "2001:db8:9::1".parse().unwrap(),
            ],
        );
        f
    }

    fn why(f: &Floor, s: &str) -> Result<(), Refusal> {
        f.allows(s.parse().unwrap(), None)
    }

    #[test]
    fn single_addresses() {
        use Refusal::*;
        let f = floor("", "10.0.0.0/8\n2001:db8:77::/48\n");
        for (a, r) in [
            ("0.0.0.0", Reserved),
            ("0.1.2.3", Reserved),
            ("::", Reserved),
            ("::ffff:198.51.100.7", Reserved),
            ("127.0.0.1", Loopback),
            ("::1", Loopback),
            ("169.254.3.4", LinkLocal),
            ("fe80::1", LinkLocal),
            ("224.0.0.1", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("192.0.2.255", Broadcast),
            ("192.0.2.0", Broadcast),
            ("192.0.2.10", OwnAddress),
            ("2001:db8:1:2::5", OwnAddress),
            ("192.0.2.1", Gateway),
            ("2001:db8:9::1", Gateway),
            ("10.9.8.7", Ignored),
            ("2001:db8:77::1", Ignored),
        ] {
            assert_eq!(why(&f, a), Err(r), "{a}");
        }
        for a in ["192.0.2.9", "198.51.100.7", "2001:db8::9"] {
            assert_eq!(why(&f, a), Ok(()), "{a}");
        }
    }

    #[test]
    fn networks_cover_every_address_inside() {
        let f = floor("BLOCK_PREFIX6=\"64\"\n", "2001:db8:77::/48\n");
        let net = |s: &str| f.allows(s.parse().unwrap(), Some(64));
        assert_eq!(net("2001:db8:1:2::"), Err(Refusal::OwnAddress));
        assert_eq!(net("2001:db8:9::"), Err(Refusal::Gateway));
        assert_eq!(net("2001:db8:77:5::"), Err(Refusal::Ignored));
        assert_eq!(net("fe80::"), Err(Refusal::LinkLocal));
        assert_eq!(net("::"), Err(Refusal::Reserved));
        assert_eq!(net("2001:db8:1:3::"), Ok(()));
        // Only BLOCK_PREFIX6 or a single address, and the network address masked.
        let sub = |s: &str, p| f.subject(Some(s.parse().unwrap()), p);
        assert_eq!(
            sub("2001:db8::1", 64),
            Ok(("2001:db8::".parse().unwrap(), Some(64)))
        );
        assert_eq!(
            sub("2001:db8::1", 128),
            Ok(("2001:db8::1".parse().unwrap(), None))
        );
        assert_eq!(sub("2001:db8::1", 48), Err(Refusal::Malformed));
        assert_eq!(sub("192.0.2.9", 24), Err(Refusal::Malformed));
        assert_eq!(f.subject(None, 0), Err(Refusal::Malformed));
        let wide = floor("BLOCK_PREFIX6=\"32\"\n", "");
        assert_eq!(
            wide.allows("::".parse().unwrap(), Some(32)),
            Err(Refusal::Reserved)
        );
    }

    #[test]
    fn hard_caps() {
        let mut f = floor(
            "MAX_BLOCKS=\"5\"\nBLOCK_RATE=\"10\"\nFLEET_BLOCK_RATE=\"20\"\n",
            "",
        );
        assert_eq!((f.cap, f.rate), (10, 120));
        let big = floor("BLOCK_RATE=\"100\"\nFLEET_BLOCK_RATE=\"50\"\n", "");
        assert_eq!(big.rate, 300);
        let t0 = Instant::now();
        assert_eq!(f.room(Kind::Nft, t0), 120);
        f.charge(Kind::Nft, 119, t0);
        assert_eq!(f.room(Kind::Nft, t0), 1);
        // Kinds are counted apart.
        assert_eq!(f.room(Kind::Route, t0), 120);
        f.charge(Kind::Nft, 5, t0 + Duration::from_secs(30));
        assert_eq!(f.room(Kind::Nft, t0 + Duration::from_secs(30)), 0);
        // The first 115 age out a minute after they were made.
        assert_eq!(f.room(Kind::Nft, t0 + Duration::from_secs(60)), 115);
        assert_eq!(f.room(Kind::Nft, t0 + Duration::from_secs(91)), 120);
    }
}
