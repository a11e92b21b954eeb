//! `sentry-enforcer --recover`: rebuild the block state when the enforcer refuses to
//! start because its state files are damaged or from a newer version.
//!
//! Sources, in order (a later one only adds what the earlier ones do not know):
//! 1. every record line of the snapshot and the journal that still verifies (version-2
//!    lines carry a CRC-32 each, so one damaged record costs that record only);
//! 2. `BLOCKED_FILE` (PortSentry's line format: time, address, port, protocol);
//! 3. the marker lines sentry writes before each of its hosts.deny lines
//!    (`# sentry: ADDR EPOCH`), which also give back the exact line to take away later.
//!
//! Blocks learnt only from 2 or 3 get the mode and scan kind of a stealth detection of
//! their protocol (TCP for 3; port 0 when unknown), expire `BLOCK_TIMEOUT` after the time
//! recorded, and are re-applied by the next start like any restored block (nftables,
//! blackhole route, hosts.deny line), which also lifts those now ignored, never-blocked or
//! expired. The old files are renamed (`blocks.json.damaged-EPOCH`, likewise the
//! journal), never changed or deleted.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use policy::{Config, Firewall};
use sentry_proto::{Mode, Protocol, ScanKind};

use crate::store::{self, BlockRecord};
use sentry_enforcer::effects::hostsdeny;

/// Largest BLOCKED_FILE read.
const MAX_BLOCKED_FILE: u64 = 64 << 20;

/// What the recovery found and did, one line each, for the operator.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub blocks: usize,
}

fn new_record(cfg: &Config, addr: IpAddr, since_s: u64, port: u16, proto: Protocol) -> BlockRecord {
    let since_ms = since_s.saturating_mul(1000);
    let (mode, scan) = match proto {
        Protocol::Tcp => (Mode::Stcp, ScanKind::Syn),
        Protocol::Udp => (Mode::Sudp, ScanKind::Udp),
        // Lines sentry wrote for BLOCK_OTHER_SCANS=1 blocks.
        Protocol::Sctp => (Mode::Atcp, ScanKind::SctpInit),
        Protocol::Ip => (Mode::Atcp, ScanKind::IpProtocol),
    };
    BlockRecord {
        // Unknown: such a block counts as made on a single probe.
        distinct_ports: 0,
        prefix6: None,
        meta: sentry_proto::BlockMeta::default(),
        addr,
        protocol: proto,
        port,
        mode,
        scan,
        since_ms,
        expires_ms: cfg
            .block_timeout
            .map(|t| since_ms.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
        nft: cfg.firewall == Firewall::Nftables,
        blackhole: cfg.blackhole_route,
        hosts_deny_line: crate::action::hosts_deny_line(
            cfg,
            &crate::action::Subject {
                addr,
                port,
                protocol: proto,
                prefix6: None,
                timeout: None,
            },
        ),
        hosts_deny_legacy: false,
        origin: None,
    }
}

fn read_blocked_file(path: &Path) -> Result<Option<String>, String> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut b = Vec::new();
    f.take(MAX_BLOCKED_FILE + 1)
        .read_to_end(&mut b)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if b.len() as u64 > MAX_BLOCKED_FILE {
        return Err(format!(
            "{}: larger than {MAX_BLOCKED_FILE} bytes; not read",
            path.display()
        ));
    }
    Ok(Some(String::from_utf8_lossy(&b).into_owned()))
}

/// Rebuild the state in `state_dir` from what can still be read. `now_s` names the kept
/// copies of the old files.
pub fn recover(cfg: &Config, state_dir: &Path, now_s: u64) -> Result<Report, String> {
    let md = std::fs::symlink_metadata(state_dir)
        .map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !md.is_dir() || (md.uid() != 0 && md.uid() != me) || md.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: state directory must be a directory owned by root and not writable by group or others",
            state_dir.display()
        ));
    }
    let mut r = Report::default();
    let s = store::salvage(state_dir);
    r.lines.push(format!(
        "state files: {} records from the snapshot, {} journal entries, {} damaged lines skipped",
        s.from_snapshot, s.from_journal, s.bad_lines
    ));
    let mut blocks: HashMap<IpAddr, BlockRecord> = s.blocks;

    if let Some(path) = &cfg.blocked_file {
        r.lines.push(from_blocked_file(cfg, path, &mut blocks)?);
    }

    if cfg.uses_hosts_deny() && cfg.hosts_deny_file.exists() {
        r.lines.push(from_hosts_deny(cfg, &mut blocks)?);
    }

    let moved = store::rebuild(state_dir, &blocks, &format!("damaged-{now_s}"))
        .map_err(|e| format!("{}: {e}", state_dir.display()))?;
    for m in moved {
        r.lines.push(format!("old file kept as {}", m.display()));
    }
    r.blocks = blocks.len();
    r.lines.push(format!(
        "state rebuilt with {} blocks; the next start restores them",
        r.blocks
    ));
    Ok(r)
}

/// Add the blocks of BLOCKED_FILE that the state does not have; the report line.
fn from_blocked_file(
    cfg: &Config,
    path: &Path,
    blocks: &mut HashMap<IpAddr, BlockRecord>,
) -> Result<String, String> {
    Ok(match read_blocked_file(path)? {
        Some(text) => {
            let (mut added, mut bad) = (0, 0);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match sentry_proto::logfmt::parse_history_line(line) {
                    Some((t, addr, port, proto)) => {
                        if let std::collections::hash_map::Entry::Vacant(v) = blocks.entry(addr) {
                            v.insert(new_record(cfg, addr, t, port, proto));
                            added += 1;
                        }
                    }
                    None => bad += 1,
                }
            }
            format!(
                "{}: {added} more blocks, {bad} lines not understood",
                path.display()
            )
        }
        None => format!("{}: not there", path.display()),
    })
}

/// Every marked pair of the deny file: address, marker time (s), owned line. Read-only
/// (no enforcer runs during `--recover`), with the deny file's own checks (owner, mode, no
/// link, size).
pub fn marked_entries(path: &Path) -> std::io::Result<Vec<(IpAddr, u64, String)>> {
    let mut f = hostsdeny::open_as(path, false)?;
    let text = hostsdeny::read_all(&mut f, path)?;
    let lines = hostsdeny::split_lines(&text);
    let mut out = Vec::new();
    for (i, addr, _) in hostsdeny::marked_pairs(&lines) {
        let when = std::str::from_utf8(lines[i].text)
            .ok()
            .and_then(|s| s.strip_prefix(hostsdeny::MARKER))
            .and_then(|s| s.split(' ').nth(1))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let line = String::from_utf8_lossy(hostsdeny::trim_end(lines[i + 1].text)).into_owned();
        out.push((addr, when, line));
    }
    Ok(out)
}

/// Re-attach sentry's marked hosts.deny lines to their blocks, adding the blocks the
/// state lost; the report line.
fn from_hosts_deny(
    cfg: &Config,
    blocks: &mut HashMap<IpAddr, BlockRecord>,
) -> Result<String, String> {
    let marked = marked_entries(&cfg.hosts_deny_file).map_err(|e| e.to_string())?;
    let (mut added, mut lines) = (0, 0);
    for (addr, when, line) in marked {
        match blocks.get_mut(&addr) {
            Some(b) => {
                if b.hosts_deny_line.as_deref() != Some(line.as_str()) {
                    b.hosts_deny_line = Some(line);
                    b.hosts_deny_legacy = false;
                    lines += 1;
                }
            }
            None => {
                let mut b = new_record(cfg, addr, when, 0, Protocol::Tcp);
                b.hosts_deny_line = Some(line);
                blocks.insert(addr, b);
                added += 1;
            }
        }
    }
    Ok(format!(
        "{}: {added} more blocks from sentry's markers, {lines} deny lines re-attached",
        cfg.hosts_deny_file.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rebuilds_from_blocked_file_and_markers() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(
            state.join("blocks.json"),
            b"{\"version\":1,\"blo\x00\x01\x02\x03",
        )
        .unwrap();
        let blocked = d.path().join("blocked");
        let v6: IpAddr = "2001:db8::5".parse().unwrap();
        std::fs::write(
            &blocked,
            format!(
                "{}\n{}\ngarbage\n",
                sentry_proto::logfmt::history_line(
                    1_800_000_000,
                    "192.0.2.5".parse().unwrap(),
                    143,
                    Protocol::Tcp
                ),
                sentry_proto::logfmt::history_line(1_800_000_001, v6, 53, Protocol::Udp)
            ),
        )
        .unwrap();
        let deny = d.path().join("hosts.deny");
        std::fs::write(&deny, "ALL: 10.0.0.1\n").unwrap();
        for (a, l) in [
            ("192.0.2.5", "ALL: 192.0.2.5"),
            ("192.0.2.6", "ALL: 192.0.2.6"),
        ] {
            let e = hostsdeny::Entry {
                addr: a.parse().unwrap(),
                line: l,
                legacy: false,
            };
            hostsdeny::add_many(&deny, std::slice::from_ref(&e)).unwrap();
        }
        let conf = d.path().join("c.conf");
        std::fs::write(
            &conf,
            format!(
                "BLOCKED_FILE=\"{}\"\nHOSTS_DENY_FILE=\"{}\"\nKILL_HOSTS_DENY=\"ALL: $TARGET$\"\nBLOCK_TIMEOUT=\"60\"\nFIREWALL=\"nftables\"\n",
                blocked.display(),
                deny.display()
            ),
        )
        .unwrap();
        let cfg = Config::load(&conf).unwrap();
        let damaged = std::fs::read(state.join("blocks.json")).unwrap();
        let r = recover(&cfg, &state, 42).unwrap();
        assert_eq!(r.blocks, 3, "{:?}", r.lines);
        assert!(
            r.lines.iter().any(|l| l.contains("1 lines not understood")),
            "{:?}",
            r.lines
        );
        assert_eq!(
            std::fs::read(state.join("blocks.json.damaged-42")).unwrap(),
            damaged
        );
        let (_, back, _) = crate::store::Store::open(&state).unwrap();
        let b = &back[&"192.0.2.5".parse().unwrap()];
        assert_eq!(
            (b.port, b.protocol, b.since_ms),
            (143, Protocol::Tcp, 1_800_000_000_000)
        );
        assert_eq!(b.expires_ms, Some(1_800_000_060_000));
        assert!(b.nft && !b.hosts_deny_legacy);
        assert_eq!(b.hosts_deny_line.as_deref(), Some("ALL: 192.0.2.5"));
        assert_eq!(
            back[&v6].hosts_deny_line.as_deref(),
            Some("ALL: [2001:db8::5]")
        );
        let m = &back[&"192.0.2.6".parse().unwrap()];
        assert_eq!(
            (m.port, m.hosts_deny_line.as_deref()),
            (0, Some("ALL: 192.0.2.6"))
        );
        // The admin's line is not sentry's and did not become a block.
        assert!(!back.contains_key(&"10.0.0.1".parse().unwrap()));
    }
}
