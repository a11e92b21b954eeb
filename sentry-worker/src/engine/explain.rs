//! The administrator's per-address and all-address requests: `sentryctl explain` (is
//! this address blocked, by which block, and why or why not), `sentryctl unblock --all`,
//! and the ignore-list reload `sentryctl ignore` asks for. Read-only except where it
//! goes through the same paths as `sentryctl unblock` and SIGHUP.

use std::net::IpAddr;

use sentry_proto::{Coverage, ExplainEntry, Explanation, WatchRecord, ORIGIN_SENSOR};

use super::status::entry_of;
use super::Engine;
use crate::audit::Peer;
use crate::error::EnforcerError;
use crate::time::WallMs;

/// Most decisions an explanation lists (the newest).
pub const EXPLAIN_DECISIONS: usize = 50;

/// Does `r` concern `addr`: its source, or the network it names?
fn about(r: &WatchRecord, addr: IpAddr) -> bool {
    match (r.source, r.prefix, addr) {
        // A network block's record may carry the scanner's own address with the length.
        (Some(IpAddr::V6(s)), Some(len), IpAddr::V6(a)) => {
            policy::mask6(a, len) == policy::mask6(s, len)
        }
        (Some(s), _, _) => s == addr,
        _ => false,
    }
}

impl Engine {
    /// `sentryctl explain ADDR` (`addr` already canonical: IPv4-mapped is IPv4).
    pub fn explain(&self, addr: IpAddr) -> Explanation {
        let mut entries: Vec<ExplainEntry> = self
            .blocks
            .values()
            .filter_map(|b| {
                let matched = match (b.prefix6, addr) {
                    (None, _) if b.addr == addr => Coverage::Address,
                    (Some(len), IpAddr::V6(a)) if b.addr == IpAddr::V6(policy::mask6(a, len)) => {
                        Coverage::Network
                    }
                    _ => return None,
                };
                Some(ExplainEntry {
                    matched,
                    fleet: b.origin.as_deref().is_some_and(|o| o != ORIGIN_SENSOR),
                    block: entry_of(b),
                })
            })
            .collect();
        entries.sort_by_key(|e| (e.matched != Coverage::Address, e.block.since_ms));
        let ignored = self.ignore.contains(addr);
        let never_block = self.never.check(addr).map(|r| r.to_string());
        let decisions = self.watch.recent(EXPLAIN_DECISIONS, |r| about(r, addr));
        let reason = if let Some(e) = entries.first() {
            let target = match e.block.prefix6 {
                Some(len) => format!("{}/{len}", e.block.addr),
                None => e.block.addr.to_string(),
            };
            match e.matched {
                Coverage::Address => format!("blocked (origin {})", e.block.origin),
                Coverage::Network => format!(
                    "its network {target} is blocked (BLOCK_PREFIX6, origin {})",
                    e.block.origin
                ),
            }
        } else if ignored {
            "on the ignore list (IGNORE_FILE): probes from it are not reported or blocked"
                .to_string()
        } else if let Some(n) = &never_block {
            format!("never-block: {n}")
        } else if let Some(last) = decisions.last() {
            format!(
                "not blocked now; its last decision was {}: {}",
                last.kind, last.reason
            )
        } else {
            format!(
                "no decision about it since the enforcer started: not seen, or below the \
                 sensor's trigger (SCAN_TRIGGER={})",
                self.cfg.scan_trigger
            )
        };
        Explanation {
            address: addr,
            blocked: !entries.is_empty(),
            entries,
            ignored,
            never_block,
            reason,
            decisions,
        }
    }

    /// `sentryctl unblock --all`: every active block lifted as `sentryctl unblock` lifts
    /// one (audit record, hosts.deny and route removal, the sensor told). Returns how many
    /// were lifted and their actions' errors, each prefixed with its address.
    pub fn unblock_all(&mut self, peer: Peer, now: WallMs) -> (u64, Vec<String>) {
        let mut addrs: Vec<IpAddr> = self.blocks.keys().copied().collect();
        addrs.sort();
        let mut count = 0;
        let mut errors = Vec::new();
        for a in addrs {
            if let Some(errs) = self.unblock(a, peer, now) {
                count += 1;
                errors.extend(errs.into_iter().map(|e| format!("{a}: {e}")));
            }
        }
        (count, errors)
    }

    /// The ignore-list reload of SIGHUP, answered: entries now in use and blocks lifted.
    pub fn reload(&mut self, now: WallMs) -> Result<(u64, u64), EnforcerError> {
        let r = self.reload_ignore(now);
        // For sentry_config_last_reload_successful: a list that does not load keeps the
        // old one, which nothing else would tell an alert about.
        self.note_reload(r.is_ok(), now);
        let lifted = r?;
        Ok((self.ignore.len() as u64, lifted as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Logger;
    use crate::engine::{ControlBlock, Options, DEFAULT_BOOT_ID_PATH};
    use crate::time::WallUs;
    use sentry_proto::{BlockRequest, Decision, Mode, Protocol, ScanKind};
    use std::sync::Arc;

    const PEER: Peer = Peer { uid: 0, pid: 1 };

    fn engine(dir: &tempfile::TempDir) -> Engine {
        let d = dir.path().display();
        std::fs::write(dir.path().join("ignore"), "198.51.100.0/24\n").unwrap();
        let conf = dir.path().join("sentry.conf");
        std::fs::write(
            &conf,
            format!(
                "IGNORE_FILE=\"{d}/ignore\"\nAUDIT_LOG=\"{d}/audit.jsonl\"\n\
                 HOSTS_DENY_FILE=\"{d}/hosts.deny\"\nKILL_HOSTS_DENY=\"ALL: $TARGET$\"\n\
                 BLOCK_TCP=\"1\"\nBLOCK_UDP=\"1\"\nFIREWALL=\"none\"\nSCAN_TRIGGER=\"2\"\n\
                 BLOCK_PREFIX6=\"64\"\n"
            ),
        )
        .unwrap();
        let cfg = policy::Config::load(&conf).unwrap();
        let parent = Some(crate::privsep::testing::parent(&cfg));
        Engine::new(
            cfg,
            Options {
                state_dir: dir.path().join("state"),
                refresh_own_addresses: false,
                infra: None,
                boot_id_path: DEFAULT_BOOT_ID_PATH.into(),
                boot_id: None,
                parent,
            },
            Arc::new(Logger::new(true, "test")),
        )
        .unwrap()
    }

    fn scan(e: &mut Engine, seq: u64, src: &str) -> Decision {
        let now = WallUs::now();
        let req = BlockRequest {
            seq,
            source: src.parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 143,
            scan: ScanKind::Syn,
            mode: Mode::Stcp,
            distinct_ports: 5,
            first_seen_ms: now.ms().0 - 10,
            last_seen_ms: now.ms().0,
            ip_options: false,
        };
        let c = crate::session::check_request(req, &Mode::ALL, now.ms()).unwrap();
        e.decide(&c, PEER, now)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_scanner_its_network_and_a_fleet_block_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(&dir);
        assert_eq!(scan(&mut e, 1, "192.0.2.9"), Decision::Blocked);
        let x = e.explain(ip("192.0.2.9"));
        assert!(x.blocked, "{x:?}");
        assert_eq!(x.entries.len(), 1);
        let en = &x.entries[0];
        assert_eq!(
            (en.matched, en.fleet, en.block.distinct_ports),
            (Coverage::Address, false, Some(5))
        );
        assert_eq!(en.block.origin, "sensor");
        assert_eq!(x.decisions.last().map(|d| d.kind.as_str()), Some("blocked"));
        assert_eq!(x.reason, "blocked (origin sensor)");
        // An IPv6 scanner blocks its /64: another address of it is covered by the network.
        assert_eq!(scan(&mut e, 2, "2001:db8::7"), Decision::Blocked);
        let x = e.explain(ip("2001:db8::99"));
        assert!(x.blocked, "{x:?}");
        assert_eq!(x.entries[0].matched, Coverage::Network);
        assert!(x.reason.contains("2001:db8::/64"), "{}", x.reason);
        assert!(
            !x.decisions.is_empty(),
            "the network's decisions are the address's"
        );
        // A fleet decision.
        let ctl = ControlBlock {
            meta: Default::default(),
            origin: "crowdsec".into(),
            duration: None,
        };
        let (d, ..) = e.decide_control(ip("203.0.113.4"), &ctl, PEER, WallUs::now());
        assert_eq!(d, Decision::Blocked);
        let x = e.explain(ip("203.0.113.4"));
        assert!(
            x.entries[0].fleet && x.reason.contains("origin crowdsec"),
            "{x:?}"
        );
    }

    #[test]
    fn what_is_not_blocked_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(&dir);
        let x = e.explain(ip("198.51.100.3"));
        assert!(!x.blocked && x.ignored, "{x:?}");
        assert!(x.reason.starts_with("on the ignore list"), "{}", x.reason);
        let x = e.explain(ip("127.0.0.1"));
        assert_eq!(x.never_block.as_deref(), Some("loopback address"));
        assert_eq!(x.reason, "never-block: loopback address");
        let x = e.explain(ip("192.0.2.200"));
        assert!(x.decisions.is_empty() && !x.blocked);
        assert!(x.reason.contains("SCAN_TRIGGER=2"), "{}", x.reason);
        // Unblocked: the last decision says so.
        scan(&mut e, 1, "192.0.2.9");
        e.unblock(ip("192.0.2.9"), PEER, WallMs::now()).unwrap();
        let x = e.explain(ip("192.0.2.9"));
        assert!(!x.blocked);
        assert!(
            x.reason
                .starts_with("not blocked now; its last decision was unblocked"),
            "{}",
            x.reason
        );
    }

    #[test]
    fn unblock_all_lifts_every_block_through_unblock() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(&dir);
        for (i, a) in ["192.0.2.1", "192.0.2.2", "2001:db8:5::1"]
            .iter()
            .enumerate()
        {
            assert_eq!(scan(&mut e, i as u64 + 1, a), Decision::Blocked);
        }
        let deny = std::fs::read_to_string(dir.path().join("hosts.deny")).unwrap();
        assert!(deny.contains("192.0.2.1"), "{deny}");
        let (n, errors) = e.unblock_all(PEER, WallMs::now());
        assert_eq!((n, errors.len()), (3, 0), "{errors:?}");
        assert_eq!(e.active_blocks(), 0);
        assert_eq!(e.counters().unblocked, 3);
        let deny = std::fs::read_to_string(dir.path().join("hosts.deny")).unwrap();
        assert!(!deny.contains("192.0.2."), "{deny}");
        let mut lifted = e.take_lifted();
        lifted.sort();
        assert_eq!(lifted.len(), 3, "the sensor is told of each: {lifted:?}");
        assert_eq!(e.unblock_all(PEER, WallMs::now()).0, 0);
    }

    #[test]
    fn reload_answers_entries_and_lifted_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(&dir);
        scan(&mut e, 1, "192.0.2.9");
        std::fs::write(dir.path().join("ignore"), "198.51.100.0/24\n192.0.2.9\n").unwrap();
        assert_eq!(e.reload(WallMs::now()).unwrap(), (2, 1));
        assert!(!e.is_blocked(ip("192.0.2.9")));
        std::fs::write(dir.path().join("ignore"), "bogus\n").unwrap();
        assert!(e.reload(WallMs::now()).is_err());
        assert!(e.explain(ip("192.0.2.9")).ignored, "the old list is kept");
    }

    /// The metrics follow the engine: a sensor block's latency, blocks by origin name, a
    /// failed reload (and the next good one), and errors by kind adding up to the total.
    #[test]
    fn the_metrics_see_origins_latency_reloads_and_error_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(&dir);
        assert_eq!(scan(&mut e, 1, "192.0.2.9"), Decision::Blocked);
        let ctl = ControlBlock {
            meta: Default::default(),
            origin: "crowdsec".into(),
            duration: None,
        };
        let (d, ..) = e.decide_control(ip("203.0.113.4"), &ctl, PEER, WallUs::now());
        assert_eq!(d, Decision::Blocked);
        std::fs::write(dir.path().join("ignore"), "not an address\n").unwrap();
        assert!(e.reload(WallMs::now()).is_err());
        let t = crate::control::metrics::render(&e.metrics_snapshot());
        for want in [
            "sentry_block_latency_seconds_count 1\n",
            "sentry_block_latency_clock_skew_total 0\n",
            "sentry_blocks_total{origin=\"sensor\",scan=\"syn\",protocol=\"tcp\"} 1\n",
            "sentry_blocks_total{origin=\"crowdsec\",scan=\"none\",protocol=\"none\"} 1\n",
            "sentry_requests_total{origin=\"crowdsec\"} 1\n",
            "sentry_active_blocks{origin=\"crowdsec\"} 1\n",
            "sentry_active_blocks{origin=\"sensor\"} 1\n",
            "sentry_active_blocks{origin=\"manual\"} 0\n",
            "sentry_config_last_reload_successful 0\n",
            "sentry_errors_total{kind=\"config\"} 1\n",
        ] {
            assert!(t.contains(want), "{want}: {t}");
        }
        let by_kind: u64 = t
            .lines()
            .filter(|l| l.starts_with("sentry_errors_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(by_kind, e.counters().errors);
        std::fs::write(dir.path().join("ignore"), "198.51.100.0/24\n").unwrap();
        assert!(e.reload(WallMs::now()).is_ok());
        let t = crate::control::metrics::render(&e.metrics_snapshot());
        assert!(
            t.contains("sentry_config_last_reload_successful 1\n"),
            "{t}"
        );
    }
}
