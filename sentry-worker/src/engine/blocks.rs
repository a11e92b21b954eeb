//! The active blocks, with an index of the weakest ones: at MAX_BLOCKS a request with
//! better evidence evicts the oldest single-probe block, and finding it must not cost a
//! scan of every block while a flood is hitting the cap.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::ops::Deref;

use crate::judge::{Evidence, Origin};
use crate::store::BlockRecord;

/// The evidence a block was made on.
pub fn evidence(b: &BlockRecord) -> Evidence {
    match b.origin {
        // Asked for over the control socket (root or CONTROL_GROUP, or the fleet): not a
        // forgeable probe, never the one evicted for better evidence.
        Some(_) => Evidence::Ports,
        None => Evidence::of(b.scan, b.distinct_ports),
    }
}

/// Active blocks by address. Reads go through `Deref` to the map; every change goes
/// through [`Blocks::insert`] and [`Blocks::remove`], which keep the index in step.
#[derive(Debug, Default)]
pub struct Blocks {
    map: HashMap<IpAddr, BlockRecord>,
    /// Single-probe blocks by (start, address): the first is the one to evict.
    weak: BTreeSet<(u64, IpAddr)>,
    /// Fleet blocks ([`Origin::Fleet`]) by (start, address): FLEET_MAX_BLOCKS counts them,
    /// and at MAX_BLOCKS the first goes when no single-probe block is left to evict.
    fleet: BTreeSet<(u64, IpAddr)>,
}

impl Deref for Blocks {
    type Target = HashMap<IpAddr, BlockRecord>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Blocks {
    pub fn from_map(map: HashMap<IpAddr, BlockRecord>) -> Self {
        let mut b = Self::default();
        for (_, r) in map {
            b.insert(r);
        }
        b
    }

    pub fn insert(&mut self, r: BlockRecord) -> Option<BlockRecord> {
        let old = self.remove(&r.addr);
        if evidence(&r) == Evidence::SingleProbe {
            self.weak.insert((r.since_ms, r.addr));
        }
        if Origin::of(r.origin.as_deref()) == Origin::Fleet {
            self.fleet.insert((r.since_ms, r.addr));
        }
        self.map.insert(r.addr, r);
        old
    }

    pub fn remove(&mut self, addr: &IpAddr) -> Option<BlockRecord> {
        let r = self.map.remove(addr)?;
        self.weak.remove(&(r.since_ms, r.addr));
        self.fleet.remove(&(r.since_ms, r.addr));
        Some(r)
    }

    /// Active fleet blocks.
    pub fn fleet_len(&self) -> usize {
        self.fleet.len()
    }

    /// The oldest fleet block, if any.
    pub fn oldest_fleet(&self) -> Option<IpAddr> {
        self.fleet.first().map(|(_, a)| *a)
    }

    /// The oldest block made on a single probe, if any.
    pub fn weakest(&self) -> Option<IpAddr> {
        self.weak.first().map(|(_, a)| *a)
    }

    /// Mark every block as having its element in the set (after a table rebuild).
    pub fn set_all_in_nft(&mut self) {
        for b in self.map.values_mut() {
            b.nft = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_proto::{Mode, Protocol, ScanKind};

    fn rec(a: &str, since: u64, scan: ScanKind, ports: u32) -> BlockRecord {
        BlockRecord {
            meta: Default::default(),
            addr: a.parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 22,
            mode: if scan == ScanKind::Connect {
                Mode::Tcp
            } else {
                Mode::Atcp
            },
            scan,
            since_ms: since,
            expires_ms: None,
            nft: false,
            blackhole: false,
            hosts_deny_line: None,
            distinct_ports: ports,
            prefix6: None,
            hosts_deny_legacy: false,
            origin: None,
        }
    }

    #[test]
    fn the_oldest_single_probe_block_is_the_weakest() {
        let mut b = Blocks::default();
        b.insert(rec("192.0.2.1", 30, ScanKind::Syn, 1));
        b.insert(rec("192.0.2.2", 10, ScanKind::Syn, 5));
        b.insert(rec("192.0.2.3", 20, ScanKind::Syn, 1));
        b.insert(rec("192.0.2.4", 5, ScanKind::Connect, 1));
        // Records written before distinct_ports existed read as 0: single-probe.
        b.insert(rec("192.0.2.5", 40, ScanKind::Syn, 0));
        assert_eq!(b.weakest(), Some("192.0.2.3".parse().unwrap()));
        b.remove(&"192.0.2.3".parse().unwrap());
        assert_eq!(b.weakest(), Some("192.0.2.1".parse().unwrap()));
        // Replacing a record moves it in the index.
        b.insert(rec("192.0.2.1", 30, ScanKind::Syn, 9));
        assert_eq!(b.weakest(), Some("192.0.2.5".parse().unwrap()));
        assert_eq!(b.len(), 4);
        let m = b.map.clone();
        assert_eq!(Blocks::from_map(m).weakest(), b.weakest());
    }

    #[test]
    fn fleet_blocks_are_indexed_apart_from_manual_and_sensor_ones() {
        let mut b = Blocks::default();
        let with = |a: &str, since: u64, origin: Option<&str>| BlockRecord {
            meta: Default::default(),
            origin: origin.map(str::to_string),
            ..rec(a, since, ScanKind::Syn, 1)
        };
        b.insert(with("192.0.2.1", 30, Some("crowdsec")));
        b.insert(with("192.0.2.2", 10, Some("crowdsec")));
        b.insert(with("192.0.2.3", 5, Some("manual")));
        b.insert(with("192.0.2.4", 1, None));
        assert_eq!(b.fleet_len(), 2);
        assert_eq!(b.oldest_fleet(), Some("192.0.2.2".parse().unwrap()));
        assert_eq!(b.weakest(), Some("192.0.2.4".parse().unwrap()));
        b.remove(&"192.0.2.2".parse().unwrap());
        assert_eq!(b.oldest_fleet(), Some("192.0.2.1".parse().unwrap()));
    }
}
