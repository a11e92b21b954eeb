//! What the bridge must remember across its own restarts about fleet decisions
//! (`STATE_DIR/fleet.json`), besides the queue and the cursor:
//!
//! * `unblocked`: fleet decisions whose block the administrator lifted on this host with
//!   `sentryctl unblock` while they lasted. The decision stream hands every active
//!   decision out again at a restart (`startup=true`, also after an LAPI outage or a
//!   failover); without this memory the bridge would block the address again.
//! * `ours`: fleet decisions that followed this host's own alert (same address, scenario
//!   `sentry/portscan`, soon after the push). Deleting one in CrowdSec before its end
//!   lifts this host's own sensor block of the address too (DELETE_LIFTS_LOCAL); the
//!   bridge must know that also for a deletion made while it was down.
//!
//! Each entry is kept until its decision's end (the LAPI's duration when it was seen),
//! then dropped; each map holds at most [`MAX_ENTRIES`] (the oldest ends go first). The
//! file is rewritten atomically; a damaged one is reported and replaced, never a panic.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most entries per map.
pub const MAX_ENTRIES: usize = 65_536;
/// Largest file read.
const MAX_FILE: u64 = 16 << 20;
const FORMAT: &str = "sentry-share-fleet";
const VERSION: u32 = 1;

/// One fleet decision remembered: its address and when it ends (ms since the epoch).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Held {
    pub addr: IpAddr,
    pub until_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    version: u32,
    unblocked: BTreeMap<i64, Held>,
    ours: BTreeMap<i64, Held>,
}

#[derive(Debug, Default)]
pub struct FleetState {
    path: PathBuf,
    /// Decision id → the decision, lifted here by `sentryctl unblock`.
    pub unblocked: BTreeMap<i64, Held>,
    /// Decision id → the decision, which followed this host's alert.
    pub ours: BTreeMap<i64, Held>,
}

fn bound(m: &mut BTreeMap<i64, Held>) {
    while m.len() > MAX_ENTRIES {
        let Some(id) = m.iter().min_by_key(|(_, h)| h.until_ms).map(|(id, _)| *id) else {
            break;
        };
        m.remove(&id);
    }
}

impl FleetState {
    /// A state that lives in memory only (tests, and when the file cannot be read).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Load `path`; a missing file is an empty state, a damaged one is an empty state and
    /// a message for the log.
    pub fn load(path: &Path, now_ms: u64) -> (Self, Option<String>) {
        use std::io::Read as _;
        let mut st = FleetState {
            path: path.to_path_buf(),
            ..Self::default()
        };
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (st, None),
            Err(e) => return (st, Some(format!("{}: {e}; starting empty", path.display()))),
        };
        let mut b = Vec::new();
        if let Err(e) = f.take(MAX_FILE + 1).read_to_end(&mut b) {
            return (st, Some(format!("{}: {e}; starting empty", path.display())));
        }
        if b.len() as u64 > MAX_FILE {
            return (
                st,
                Some(format!(
                    "{}: larger than 16 MiB; starting empty",
                    path.display()
                )),
            );
        }
        match parse(&b) {
            Ok(file) => {
                st.unblocked = file.unblocked;
                st.ours = file.ours;
                st.prune(now_ms);
                (st, None)
            }
            Err(e) => (st, Some(format!("{}: {e}; starting empty", path.display()))),
        }
    }

    /// Forget decisions that have ended.
    pub fn prune(&mut self, now_ms: u64) {
        self.unblocked.retain(|_, h| h.until_ms > now_ms);
        self.ours.retain(|_, h| h.until_ms > now_ms);
        bound(&mut self.unblocked);
        bound(&mut self.ours);
    }

    /// Write the file (atomically); a state without a path is not written.
    pub fn save(&self) -> std::io::Result<()> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let f = File {
            format: FORMAT.into(),
            version: VERSION,
            unblocked: self.unblocked.clone(),
            ours: self.ours.clone(),
        };
        let mut text = serde_json::to_vec(&f).map_err(std::io::Error::other)?;
        text.push(b'\n');
        crate::queue::write_atomic(&self.path, &text)
    }
}

/// Parse the file's bytes (strict: the format name, the version, known fields only).
fn parse(b: &[u8]) -> Result<File, String> {
    if b.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
        return Err("not a JSON object".into());
    }
    let f: File = serde_json::from_slice(b).map_err(|e| format!("not the expected JSON: {e}"))?;
    if f.format != FORMAT {
        return Err(format!("format {:?}, expected {FORMAT:?}", f.format));
    }
    if f.version != VERSION {
        return Err(format!(
            "version {} (this bridge reads {VERSION})",
            f.version
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(a: &str, until_ms: u64) -> Held {
        Held {
            addr: a.parse().unwrap(),
            until_ms,
        }
    }

    #[test]
    fn survives_a_restart_and_forgets_ended_decisions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fleet.json");
        let (mut st, msg) = FleetState::load(&p, 1_000);
        assert!(msg.is_none());
        st.unblocked.insert(7, held("10.0.0.5", 5_000));
        st.unblocked.insert(8, held("10.0.0.6", 2_000));
        st.ours.insert(9, held("2001:db8::1", 9_000));
        st.save().unwrap();
        let (st, msg) = FleetState::load(&p, 3_000);
        assert!(msg.is_none(), "{msg:?}");
        assert_eq!(st.unblocked.keys().copied().collect::<Vec<_>>(), [7]);
        assert_eq!(st.ours[&9], held("2001:db8::1", 9_000));
    }

    #[test]
    fn a_damaged_file_is_reported_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fleet.json");
        for bad in [
            &b"garbage"[..],
            b"[]",
            b"{\"format\":\"x\",\"version\":1,\"unblocked\":{},\"ours\":{}}",
            b"{\"format\":\"sentry-share-fleet\",\"version\":2,\"unblocked\":{},\"ours\":{}}",
            b"{\"format\":\"sentry-share-fleet\",\"version\":1,\"unblocked\":{\"x\":1},\"ours\":{}}",
        ] {
            std::fs::write(&p, bad).unwrap();
            let (st, msg) = FleetState::load(&p, 0);
            assert!(msg.is_some(), "{}", String::from_utf8_lossy(bad));
            assert!(st.unblocked.is_empty() && st.ours.is_empty());
            // ...and the next save replaces it with a good one.
            st.save().unwrap();
            assert!(FleetState::load(&p, 0).1.is_none());
        }
    }

    #[test]
    fn bounded() {
        let mut st = FleetState::in_memory();
        for i in 0..(MAX_ENTRIES as i64 + 10) {
            st.ours.insert(i, held("10.0.0.1", 10_000 + i as u64));
        }
        st.prune(0);
        assert_eq!(st.ours.len(), MAX_ENTRIES);
        assert!(!st.ours.contains_key(&0), "the earliest end goes first");
    }
}
