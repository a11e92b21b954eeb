//! What `sentryctl status` and `sentryctl blocked` show.

use std::path::Path;

use sentry_proto::{BlockEntry, Status};

use super::Engine;

impl Engine {
    pub fn status(&self, config_path: &Path) -> Status {
        let mut backends = Vec::new();
        let b = self.exec.backends();
        if b.nft {
            backends.push(format!("nftables inet {} (netlink)", self.cfg.nft_table));
        }
        if b.route {
            backends.push("blackhole routes (netlink)".into());
        }
        if let Some(t) = &self.cfg.kill_route {
            backends.push(format!("KILL_ROUTE {}", t.source()));
        }
        if let Some(t) = &self.cfg.kill_hosts_deny {
            backends.push(format!(
                "KILL_HOSTS_DENY {} -> {}",
                t.source(),
                self.cfg.hosts_deny_file.display()
            ));
        }
        if let Some(t) = &self.cfg.kill_run_cmd {
            backends.push(format!("KILL_RUN_CMD {}", t.source()));
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            config_path: config_path.display().to_string(),
            sensor: self.sensor.clone(),
            counters: self.counters.clone(),
            active_blocks: self.blocks.len() as u64,
            max_blocks: u64::from(self.cfg.max_blocks),
            backends,
            recent: self.recent.iter().cloned().collect(),
        }
    }

    pub fn blocked(&self) -> Vec<BlockEntry> {
        let mut v: Vec<BlockEntry> = self.blocks.values().map(entry_of).collect();
        v.sort_by_key(|b| (b.since_ms, b.addr));
        v
    }
}

/// A block as `sentryctl blocked` (and `explain`) lists it: a sensor block's probe and
/// evidence with it, a control block's origin and metadata instead (its record's probe
/// fields are placeholders for the templates, not something that was seen).
pub(super) fn entry_of(b: &crate::store::BlockRecord) -> BlockEntry {
    let sensor = b.origin.is_none();
    BlockEntry {
        addr: b.addr,
        protocol: sensor.then_some(b.protocol),
        port: sensor.then_some(b.port),
        mode: sensor.then_some(b.mode),
        scan: sensor.then_some(b.scan),
        since_ms: b.since_ms,
        expires_ms: b.expires_ms,
        prefix6: b.prefix6,
        origin: b
            .origin
            .clone()
            .unwrap_or_else(|| sentry_proto::ORIGIN_SENSOR.to_string()),
        distinct_ports: sensor.then_some(b.distinct_ports),
        meta: b.meta.clone(),
    }
}
