//! Persistent block state in `--state-dir`: a snapshot (`blocks.json`, replaced atomically:
//! temp file, fsync, rename, fsync directory) plus an append-only journal
//! (`blocks.journal`, one JSON line per change, fdatasync'd before the enforcer replies).
//!
//! Appending keeps the cost of a block flat however many blocks exist; the journal is folded
//! into a new snapshot when it grows past twice the live set (amortised O(1) per change).
//! A torn last line (SIGKILL or power loss in the middle of a write) is ignored on load.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sentry_proto::{Mode, Protocol, ScanKind};
use serde::{Deserialize, Serialize};

const SNAPSHOT: &str = "blocks.json";
const JOURNAL: &str = "blocks.journal";
const FORMAT_VERSION: u32 = 1;
/// Refuse state files larger than this.
const MAX_STATE_FILE: u64 = 256 << 20;

/// One active block and what was done to apply it (so exactly that can be undone).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub mode: Mode,
    pub scan: ScanKind,
    pub since_ms: u64,
    /// `None`: permanent.
    pub expires_ms: Option<u64>,
    /// Added to the nftables set.
    #[serde(default)]
    pub nft: bool,
    /// A blackhole route was added.
    #[serde(default)]
    pub blackhole: bool,
    /// The exact line written to the deny file, if any.
    #[serde(default)]
    pub hosts_deny_line: Option<String>,
    /// The line was written by a version that did not mark its hosts.deny lines (records
    /// without this field); see [`crate::hostsdeny`] for how such a line is removed.
    #[serde(default = "legacy_default")]
    pub hosts_deny_legacy: bool,
}

fn legacy_default() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    blocks: Vec<BlockRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Op {
    Add(BlockRecord),
    Del { addr: IpAddr },
}

/// The on-disk store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    journal: File,
    journal_entries: usize,
}

fn read_capped(path: &Path) -> io::Result<Option<String>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut s = String::new();
    f.take(MAX_STATE_FILE + 1).read_to_string(&mut s)?;
    if s.len() as u64 > MAX_STATE_FILE {
        return Err(io::Error::other(format!(
            "{}: larger than {MAX_STATE_FILE} bytes",
            path.display()
        )));
    }
    Ok(Some(s))
}

/// Write `data` to `path` atomically (temp file in the same directory, fsync, rename,
/// fsync the directory).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

impl Store {
    /// Open (creating) the store in `dir` and return the persisted blocks plus warnings
    /// about anything skipped while loading.
    pub fn open(dir: &Path) -> io::Result<(Self, HashMap<IpAddr, BlockRecord>, Vec<String>)> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let md = std::fs::symlink_metadata(dir)?;
        if !md.is_dir() {
            return Err(io::Error::other(format!(
                "{}: not a directory",
                dir.display()
            )));
        }
        let me = nix::unistd::geteuid().as_raw();
        if (md.uid() != 0 && md.uid() != me) || md.mode() & 0o022 != 0 {
            return Err(io::Error::other(format!(
                "{}: state directory must be owned by root and not writable by group or others",
                dir.display()
            )));
        }
        let mut warnings = Vec::new();
        let mut blocks = HashMap::new();
        let snap_path = dir.join(SNAPSHOT);
        if let Some(text) = read_capped(&snap_path)? {
            match serde_json::from_str::<Snapshot>(&text) {
                Ok(s) if s.version == FORMAT_VERSION => {
                    for b in s.blocks {
                        blocks.insert(b.addr, b);
                    }
                }
                Ok(s) => warnings.push(format!(
                    "{}: unknown format version {}; ignored",
                    snap_path.display(),
                    s.version
                )),
                Err(e) => warnings.push(format!("{}: {e}; ignored", snap_path.display())),
            }
        }
        let jpath = dir.join(JOURNAL);
        let mut entries = 0;
        if let Some(text) = read_capped(&jpath)? {
            let complete = text.ends_with('\n');
            let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
            let n = lines.len();
            for (i, line) in lines.into_iter().enumerate() {
                entries += 1;
                match serde_json::from_str::<Op>(line) {
                    Ok(Op::Add(b)) => {
                        blocks.insert(b.addr, b);
                    }
                    Ok(Op::Del { addr }) => {
                        blocks.remove(&addr);
                    }
                    Err(_) if i + 1 == n && !complete => {
                        warnings.push(format!(
                            "{}: torn last line (interrupted write) ignored",
                            jpath.display()
                        ));
                    }
                    Err(e) => {
                        warnings.push(format!("{}:{}: {e}; line ignored", jpath.display(), i + 1))
                    }
                }
            }
        }
        let journal = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&jpath)?;
        let mut store = Self {
            dir: dir.to_path_buf(),
            journal,
            journal_entries: entries,
        };
        // Start from a clean snapshot so a torn line can never be followed by good ones.
        store.compact(&blocks)?;
        Ok((store, blocks, warnings))
    }

    fn append(&mut self, op: &Op) -> io::Result<()> {
        let mut line = serde_json::to_vec(op).map_err(io::Error::other)?;
        line.push(b'\n');
        self.journal.write_all(&line)?;
        self.journal.sync_data()?;
        self.journal_entries += 1;
        Ok(())
    }

    /// Record a new or changed block; durable when this returns.
    pub fn put(&mut self, b: &BlockRecord, live: &HashMap<IpAddr, BlockRecord>) -> io::Result<()> {
        self.append(&Op::Add(b.clone()))?;
        self.maybe_compact(live)
    }

    /// Record the removal of a block; durable when this returns.
    pub fn del(&mut self, addr: IpAddr, live: &HashMap<IpAddr, BlockRecord>) -> io::Result<()> {
        self.append(&Op::Del { addr })?;
        self.maybe_compact(live)
    }

    fn maybe_compact(&mut self, live: &HashMap<IpAddr, BlockRecord>) -> io::Result<()> {
        if self.journal_entries > 1024 && self.journal_entries > 2 * live.len() {
            self.compact(live)?;
        }
        Ok(())
    }

    /// Write a snapshot of `live` and empty the journal.
    pub fn compact(&mut self, live: &HashMap<IpAddr, BlockRecord>) -> io::Result<()> {
        let mut blocks: Vec<BlockRecord> = live.values().cloned().collect();
        blocks.sort_by_key(|b| (b.since_ms, b.addr));
        let snap = Snapshot {
            version: FORMAT_VERSION,
            blocks,
        };
        let data = serde_json::to_vec(&snap).map_err(io::Error::other)?;
        write_atomic(&self.dir.join(SNAPSHOT), &data, 0o600)?;
        // Crash here: the journal is replayed over a snapshot that already contains it,
        // which yields the same state (each op sets one key).
        self.journal.set_len(0)?;
        self.journal.sync_all()?;
        self.journal_entries = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(a: &str, since: u64) -> BlockRecord {
        BlockRecord {
            addr: a.parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 22,
            mode: Mode::Stcp,
            scan: ScanKind::Syn,
            since_ms: since,
            expires_ms: Some(since + 1000),
            nft: true,
            blackhole: false,
            hosts_deny_line: Some(format!("ALL: {a}")),
            hosts_deny_legacy: false,
        }
    }

    #[test]
    fn put_del_reload() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, live0, w) = Store::open(d.path()).unwrap();
        assert!(live0.is_empty() && w.is_empty());
        let mut live = HashMap::new();
        for (i, a) in ["192.0.2.1", "192.0.2.2", "2001:db8::3"].iter().enumerate() {
            let r = rec(a, i as u64 + 1);
            live.insert(r.addr, r.clone());
            s.put(&r, &live).unwrap();
        }
        let gone: IpAddr = "192.0.2.2".parse().unwrap();
        live.remove(&gone);
        s.del(gone, &live).unwrap();
        drop(s);
        let (_, back, w) = Store::open(d.path()).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(back, live);
    }

    #[test]
    fn torn_last_line_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _, _) = Store::open(d.path()).unwrap();
        let mut live = HashMap::new();
        let r = rec("192.0.2.1", 1);
        live.insert(r.addr, r.clone());
        s.put(&r, &live).unwrap();
        drop(s);
        let mut j = OpenOptions::new()
            .append(true)
            .open(d.path().join(JOURNAL))
            .unwrap();
        j.write_all(br#"{"op":"add","addr":"192.0."#).unwrap();
        drop(j);
        let (_, back, w) = Store::open(d.path()).unwrap();
        assert_eq!(back, live);
        assert_eq!(w.len(), 1, "{w:?}");
        // After the reload the torn line is gone for good.
        let (_, back, w) = Store::open(d.path()).unwrap();
        assert_eq!(back, live);
        assert!(w.is_empty());
    }

    #[test]
    fn compaction_keeps_state() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _, _) = Store::open(d.path()).unwrap();
        let mut live = HashMap::new();
        for i in 0..3000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + (i % 700));
            let r = rec(&a.to_string(), u64::from(i) + 1);
            if i % 3 == 0 {
                live.remove(&r.addr);
                s.del(r.addr, &live).unwrap();
            } else {
                live.insert(r.addr, r.clone());
                s.put(&r, &live).unwrap();
            }
        }
        assert!(s.journal_entries <= 2 * live.len().max(1024) + 1);
        drop(s);
        let (_, back, _) = Store::open(d.path()).unwrap();
        assert_eq!(back, live);
    }

    #[test]
    fn refuses_writable_dir() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Store::open(d.path()).is_err());
    }
}
