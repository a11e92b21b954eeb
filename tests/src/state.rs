//! State files written before a daemon starts: what a long-running enforcer leaves behind,
//! for the restore tests and `sentry-bench restore`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Write a version-1 block state (`blocks.json`) with `n` IPv4 blocks (10.0.0.0 upwards)
/// and `n` IPv6 blocks (one per 2001:db8:…/64), each expiring `timeout_ms` from now, and
/// leave the directory root-only, as the enforcer keeps it.
pub fn persist_blocks(state_dir: &Path, n: u32, timeout_ms: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let now = crate::now_ms();
    let mut blocks = Vec::with_capacity(usize::try_from(n).unwrap_or(0) * 2);
    for i in 0..n {
        for addr in [
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + (u128::from(i) << 64),
            )),
        ] {
            blocks.push(serde_json::json!({
                "addr": addr, "protocol": "tcp", "port": 22, "mode": "stcp", "scan": "syn",
                "since_ms": now, "expires_ms": now + timeout_ms, "nft": true,
                "distinct_ports": 3, "hosts_deny_legacy": false
            }));
        }
    }
    let snap = serde_json::json!({"version": 1, "blocks": blocks});
    std::fs::write(state_dir.join("blocks.json"), snap.to_string())?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
}
