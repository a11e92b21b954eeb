//! Persistent block state in `--state-dir`: a snapshot (`blocks.json`, replaced atomically:
//! temp file, fsync, rename, fsync directory) plus an append-only journal
//! (`blocks.journal`, one JSON line per change, fdatasync'd before the enforcer replies).
//!
//! Appending keeps the cost of a block flat however many blocks exist; the journal is folded
//! into a new snapshot when it grows past twice the live set (amortised O(1) per change).
//! A torn last line (SIGKILL or power loss in the middle of a write) is ignored on load.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sentry_proto::{BlockMeta, Mode, Protocol, ScanKind};
use serde::{Deserialize, Serialize};

const SNAPSHOT: &str = "blocks.json";
const JOURNAL: &str = "blocks.journal";
/// The state format this version writes, and the newest it reads. Version 1 (a single
/// JSON object `{"version":1,"blocks":[...]}` and plain JSON journal lines) is read for
/// the upgrade; version 2 is a header line plus one checksummed record per line; version
/// 3 is version 2 whose records may carry an `origin` (a block asked for over the
/// control socket: `sentryctl block`, the fleet bridge). Version 2 is read as it is (its
/// blocks are the sensor's); an older enforcer refuses a version-3 file as newer rather
/// than take fleet blocks for its sensor's.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest header version read as it is.
const OLDEST_HEADER_VERSION: u32 = 2;
/// `format` of the version-2 header line.
const FORMAT_NAME: &str = "sentry-enforcer-state";
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
    /// Distinct ports the request saw (its evidence; 0 in records written before it was
    /// kept, read as a single probe).
    #[serde(default)]
    pub distinct_ports: u32,
    /// Set when the block covers the IPv6 network `addr`/len (BLOCK_PREFIX6); `addr` is
    /// then the network address.
    #[serde(default)]
    pub prefix6: Option<u8>,
    /// The line was written by a version that did not mark its hosts.deny lines (records
    /// without this field); see [`sentry_enforcer::effects::hostsdeny`] for how such a line is removed.
    #[serde(default = "legacy_default")]
    pub hosts_deny_legacy: bool,
    /// Who asked for the block over the control socket (`None`: the local sensor). Its
    /// `protocol`, `port`, `mode` and `scan` are then placeholders (TCP, port 0), not
    /// evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// A fleet block's decision: scenario, ids, detecting machine (empty, and not
    /// written, for every other block; records from before it was kept read as empty).
    #[serde(default, skip_serializing_if = "BlockMeta::is_empty")]
    pub meta: BlockMeta,
}

fn legacy_default() -> bool {
    true
}

/// Version 1 snapshot (read for the upgrade only).
#[derive(Deserialize)]
struct SnapshotV1 {
    version: u32,
    blocks: Vec<BlockRecord>,
}

/// Just the version of a version-1-shaped file, so a newer one is refused before its
/// blocks are interpreted.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// First line of a version-2 snapshot.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    /// Number of record lines that follow (a truncated file is damage, not fewer blocks).
    records: u64,
    /// The kernel boot (`/proc/sys/kernel/random/boot_id`) whose start-up last re-ran
    /// KILL_ROUTE for the restored blocks. Optional, so files without it (and readers
    /// that do not know it) stay version 2: a reboot is noticed by comparing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
}

/// A boot id as the kernel writes it: 36 characters, hex digits and dashes. Anything else
/// in a header is ignored (treated as unknown), never trusted as a name.
pub fn valid_boot_id(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')
}

/// A boot id as the kernel writes it (8-4-4-4-12 hex digits), from that form or from the
/// 32 digits systemd's `%b` gives; `None` for anything else.
pub fn normalize_boot_id(s: &str) -> Option<String> {
    let s = s.trim();
    if valid_boot_id(s) {
        return Some(s.to_ascii_lowercase());
    }
    if s.len() != 32 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let s = s.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &s[..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..]
    ))
}

/// The boot id recorded in a version-2 snapshot's header, if any (and well-formed).
fn header_boot_id(b: &[u8]) -> Option<String> {
    let first = b.split(|&c| c == b'\n').next()?;
    let h = serde_json::from_slice::<Header>(first).ok()?;
    h.boot_id.filter(|id| valid_boot_id(id))
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Op {
    Add(BlockRecord),
    Del { addr: IpAddr },
}

/// Why the state cannot be used as it is. The files are never changed when this is
/// returned: the enforcer refuses to start and names the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The bytes at `line` (1-based) / `byte` (0-based offset in the file) are not what
    /// this enforcer wrote.
    Damaged {
        path: PathBuf,
        line: usize,
        byte: u64,
        what: String,
    },
    /// Written by a newer version, in a format this one does not know.
    Newer { path: PathBuf, version: u32 },
    /// Could not be read at all.
    Io { path: PathBuf, what: String },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Damaged {
                path,
                line,
                byte,
                what,
            } => write!(
                f,
                "{}: damaged at line {line}, byte offset {byte}: {what}; the file was left untouched (keep a copy, then rebuild the state with `sentry-enforcer --recover`)",
                path.display()
            ),
            Self::Newer { path, version } => write!(
                f,
                "{}: written by a newer sentry-enforcer (state format version {version}; this one reads up to {FORMAT_VERSION}); refusing to start rather than lose its blocks (run the newer version, or rebuild with `sentry-enforcer --recover`)",
                path.display()
            ),
            Self::Io { path, what } => write!(f, "{}: {what}", path.display()),
        }
    }
}

impl std::error::Error for StateError {}

/// CRC-32 (IEEE 802.3, reflected), table built at compile time. Detects the damage a
/// JSON parser would accept (a changed digit in an address or a time).
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i: u32 = 0;
    while i < 256 {
        let mut c = i;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i as usize] = c;
        i += 1;
    }
    t
};

pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[usize::from(c.to_le_bytes()[0] ^ b)] ^ (c >> 8);
    }
    !c
}

/// A version-2 line: `CCCCCCCC JSON` (the checksum of JSON, 8 lower-case hex digits).
fn checked_line(json: &[u8]) -> Vec<u8> {
    let mut out = format!("{:08x} ", crc32(json)).into_bytes();
    out.extend_from_slice(json);
    out.push(b'\n');
    out
}

/// Lines of `b` with their 1-based number and byte offset; the flag says whether the
/// line was terminated.
fn lines_at(b: &[u8]) -> Vec<(usize, u64, &[u8], bool)> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut n = 0;
    while start < b.len() {
        n += 1;
        let (end, next, done) = match b[start..].iter().position(|&c| c == b'\n') {
            Some(i) => (start + i, start + i + 1, true),
            None => (b.len(), b.len(), false),
        };
        out.push((n, start as u64, &b[start..end], done));
        start = next;
    }
    out
}

/// Byte offset of serde_json's (line, column) within `b` (both 1-based).
fn json_offset(b: &[u8], e: &serde_json::Error) -> u64 {
    let mut line = 1;
    let mut at = 0usize;
    for (i, &c) in b.iter().enumerate() {
        if line == e.line() {
            break;
        }
        if c == b'\n' {
            line += 1;
            at = i + 1;
        }
    }
    (at + e.column().saturating_sub(1)).min(b.len()) as u64
}

/// Verify one `CCCCCCCC JSON` line and decode it.
fn decode_checked<T: serde::de::DeserializeOwned>(
    path: &Path,
    (n, off, line, _): (usize, u64, &[u8], bool),
) -> Result<T, StateError> {
    let damaged = |byte: u64, what: String| StateError::Damaged {
        path: path.to_path_buf(),
        line: n,
        byte,
        what,
    };
    let (crc, json) = match (line.get(..8), line.get(8), line.get(9..)) {
        (Some(c), Some(b' '), Some(j)) => (c, j),
        _ => return Err(damaged(off, "not a checksummed record line".into())),
    };
    let want = std::str::from_utf8(crc)
        .ok()
        .filter(|s| s.bytes().all(|c| c.is_ascii_hexdigit()))
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| damaged(off, "bad checksum field".into()))?;
    if crc32(json) != want {
        return Err(damaged(
            off,
            format!(
                "checksum mismatch (the {}-byte record was changed after it was written)",
                json.len()
            ),
        ));
    }
    serde_json::from_slice(json)
        .map_err(|e| damaged(off + 9 + json_offset(json, &e), e.to_string()))
}

/// Parse a snapshot (`path` is for messages). Version 1 and 2 are read; anything newer
/// is refused without interpreting its records.
pub fn parse_snapshot(path: &Path, b: &[u8]) -> Result<Vec<BlockRecord>, StateError> {
    let damaged = |line: usize, byte: u64, what: String| StateError::Damaged {
        path: path.to_path_buf(),
        line,
        byte,
        what,
    };
    let lines = lines_at(b);
    let Some(first) = lines.first().copied() else {
        return Err(damaged(1, 0, "empty file".into()));
    };
    if let Ok(h) = serde_json::from_slice::<Header>(first.2) {
        if h.format != FORMAT_NAME {
            return Err(damaged(1, 0, format!("unknown format {:?}", h.format)));
        }
        if h.version > FORMAT_VERSION {
            return Err(StateError::Newer {
                path: path.to_path_buf(),
                version: h.version,
            });
        }
        if h.version < OLDEST_HEADER_VERSION {
            return Err(damaged(1, 0, format!("header names version {}", h.version)));
        }
        let mut out = Vec::new();
        for l in lines.iter().skip(1) {
            if !l.3 {
                return Err(damaged(
                    l.0,
                    l.1,
                    "last line not terminated (truncated)".into(),
                ));
            }
            out.push(decode_checked::<BlockRecord>(path, *l)?);
        }
        if out.len() as u64 != h.records {
            let end = b.len() as u64;
            return Err(damaged(
                lines.len() + 1,
                end,
                format!("{} records, the header announces {}", out.len(), h.records),
            ));
        }
        return Ok(out);
    }
    // Not a version-2 header: the version-1 shape, or damage.
    let v = serde_json::from_slice::<VersionOnly>(b)
        .map_err(|e| damaged(e.line().max(1), json_offset(b, &e), e.to_string()))?;
    if v.version > FORMAT_VERSION {
        return Err(StateError::Newer {
            path: path.to_path_buf(),
            version: v.version,
        });
    }
    if v.version != 1 {
        return Err(damaged(
            1,
            0,
            format!("unknown format version {}", v.version),
        ));
    }
    let s = serde_json::from_slice::<SnapshotV1>(b)
        .map_err(|e| damaged(e.line().max(1), json_offset(b, &e), e.to_string()))?;
    debug_assert_eq!(s.version, 1);
    Ok(s.blocks)
}

/// Parse a journal over `blocks`. Lines are version 2 (`CCCCCCCC JSON`) or version 1
/// (plain JSON, from before the upgrade). An unterminated last line is a write the
/// enforcer was killed in the middle of: ignored with a warning. Returns the number of
/// entries and the warnings.
fn apply_journal(
    path: &Path,
    b: &[u8],
    blocks: &mut HashMap<IpAddr, BlockRecord>,
) -> Result<(usize, Vec<String>), StateError> {
    let mut warnings = Vec::new();
    let mut entries = 0;
    for l in lines_at(b) {
        let (n, off, line, done) = l;
        if line.is_empty() && done {
            continue;
        }
        let op = if line.first() == Some(&b'{') {
            serde_json::from_slice::<Op>(line).map_err(|e| StateError::Damaged {
                path: path.to_path_buf(),
                line: n,
                byte: off + json_offset(line, &e),
                what: e.to_string(),
            })
        } else {
            decode_checked::<Op>(path, l)
        };
        let op = match op {
            Ok(op) => op,
            Err(_) if !done => {
                warnings.push(format!(
                    "{}: torn last line (interrupted write) ignored",
                    path.display()
                ));
                break;
            }
            Err(e) => return Err(e),
        };
        entries += 1;
        match op {
            Op::Add(r) => {
                blocks.insert(r.addr, r);
            }
            Op::Del { addr } => {
                blocks.remove(&addr);
            }
        }
    }
    Ok((entries, warnings))
}

/// The blocks, the number of journal entries read, and warnings.
pub type LoadedState = (HashMap<IpAddr, BlockRecord>, usize, Vec<String>);

/// Read the whole state from the bytes of the two files (either may be absent): the
/// snapshot, then the journal over it. The enforcer's loader and the fuzz target.
pub fn read_state(
    snapshot: Option<(&Path, &[u8])>,
    journal: Option<(&Path, &[u8])>,
) -> Result<LoadedState, StateError> {
    let mut blocks = HashMap::new();
    if let Some((p, b)) = snapshot {
        for r in parse_snapshot(p, b)? {
            blocks.insert(r.addr, r);
        }
    }
    let (mut entries, mut warnings) = (0, Vec::new());
    if let Some((p, b)) = journal {
        (entries, warnings) = apply_journal(p, b, &mut blocks)?;
    }
    Ok((blocks, entries, warnings))
}

/// What `--recover` could still read from the state files: every record line that
/// verifies, in order; the lines that did not are counted.
#[derive(Debug, Default)]
pub struct Salvage {
    pub blocks: HashMap<IpAddr, BlockRecord>,
    pub from_snapshot: usize,
    pub from_journal: usize,
    pub bad_lines: usize,
}

/// Read what verifies of the snapshot and the journal in `dir`, skipping what does not.
pub fn salvage(dir: &Path) -> Salvage {
    let mut s = Salvage::default();
    let snap = dir.join(SNAPSHOT);
    if let Ok(Some(b)) = read_capped(&snap) {
        match parse_snapshot(&snap, &b) {
            Ok(v) => {
                s.from_snapshot = v.len();
                for r in v {
                    s.blocks.insert(r.addr, r);
                }
            }
            Err(_) => {
                // Line by line: a damaged record costs that record only.
                for l in lines_at(&b).into_iter().skip(1) {
                    match decode_checked::<BlockRecord>(&snap, l) {
                        Ok(r) => {
                            s.from_snapshot += 1;
                            s.blocks.insert(r.addr, r);
                        }
                        Err(_) => s.bad_lines += 1,
                    }
                }
            }
        }
    }
    let jpath = dir.join(JOURNAL);
    if let Ok(Some(b)) = read_capped(&jpath) {
        for l in lines_at(&b) {
            if l.2.is_empty() {
                continue;
            }
            let op = if l.2.first() == Some(&b'{') {
                serde_json::from_slice::<Op>(l.2).ok()
            } else {
                decode_checked::<Op>(&jpath, l).ok()
            };
            match op {
                Some(Op::Add(r)) => {
                    s.from_journal += 1;
                    s.blocks.insert(r.addr, r);
                }
                Some(Op::Del { addr }) => {
                    s.from_journal += 1;
                    s.blocks.remove(&addr);
                }
                None => s.bad_lines += 1,
            }
        }
    }
    s
}

/// The on-disk store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    journal: File,
    journal_entries: usize,
    /// Written into every snapshot header (see [`Header::boot_id`]).
    boot_id: Option<String>,
}

fn read_capped(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut s = Vec::new();
    f.take(MAX_STATE_FILE + 1).read_to_end(&mut s)?;
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
        // Both files are read and checked before anything is written: a damaged or newer
        // state makes this fail with the place named, and the files stay as they are.
        let snap_path = dir.join(SNAPSHOT);
        let jpath = dir.join(JOURNAL);
        let snap = read_capped(&snap_path)?;
        let jour = read_capped(&jpath)?;
        let (blocks, entries, warnings) = read_state(
            snap.as_deref().map(|b| (snap_path.as_path(), b)),
            jour.as_deref().map(|b| (jpath.as_path(), b)),
        )
        .map_err(io::Error::other)?;
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
            boot_id: snap.as_deref().and_then(header_boot_id),
        };
        // Start from a clean snapshot so a torn line can never be followed by good ones.
        store.compact(&blocks)?;
        Ok((store, blocks, warnings))
    }

    /// The boot whose start-up last re-ran KILL_ROUTE, as read from the snapshot.
    pub fn boot_id(&self) -> Option<&str> {
        self.boot_id.as_deref()
    }

    /// Record `id` as that boot; written (durably) by the next [`Store::compact`].
    pub fn set_boot_id(&mut self, id: String) {
        self.boot_id = Some(id);
    }

    fn append(&mut self, op: &Op) -> io::Result<()> {
        let json = serde_json::to_vec(op).map_err(io::Error::other)?;
        let line = checked_line(&json);
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
        let mut blocks: Vec<&BlockRecord> = live.values().collect();
        blocks.sort_by_key(|b| (b.since_ms, b.addr));
        let data = encode_snapshot(&blocks, self.boot_id.as_deref())?;
        write_atomic(&self.dir.join(SNAPSHOT), &data, 0o600)?;
        // Crash here: the journal is replayed over a snapshot that already contains it,
        // which yields the same state (each op sets one key).
        self.journal.set_len(0)?;
        self.journal.sync_all()?;
        self.journal_entries = 0;
        Ok(())
    }
}

/// A version-2 snapshot: the header line, then one checksummed line per record.
fn encode_snapshot(blocks: &[&BlockRecord], boot_id: Option<&str>) -> io::Result<Vec<u8>> {
    let header = Header {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        records: blocks.len() as u64,
        boot_id: boot_id.map(str::to_owned),
    };
    let mut data = serde_json::to_vec(&header).map_err(io::Error::other)?;
    data.push(b'\n');
    for b in blocks {
        let json = serde_json::to_vec(b).map_err(io::Error::other)?;
        data.extend_from_slice(&checked_line(&json));
    }
    Ok(data)
}

/// `--recover`: move the old files aside (renamed with `suffix`, bytes untouched) and
/// write `blocks` as a fresh snapshot with an empty journal. Returns the paths the old
/// files now have.
pub fn rebuild(
    dir: &Path,
    blocks: &HashMap<IpAddr, BlockRecord>,
    suffix: &str,
) -> io::Result<Vec<PathBuf>> {
    let mut moved = Vec::new();
    for name in [SNAPSHOT, JOURNAL] {
        let p = dir.join(name);
        if p.exists() {
            let to = dir.join(format!("{name}.{suffix}"));
            if to.exists() {
                return Err(io::Error::other(format!(
                    "{}: exists already; refusing to overwrite it",
                    to.display()
                )));
            }
            std::fs::rename(&p, &to)?;
            moved.push(to);
        }
    }
    let mut v: Vec<&BlockRecord> = blocks.values().collect();
    v.sort_by_key(|b| (b.since_ms, b.addr));
    // No boot id: a recovered state cannot say whether KILL_ROUTE ran in this boot, and
    // running it twice (duplicate firewall rules) is not assumed safe.
    write_atomic(&dir.join(SNAPSHOT), &encode_snapshot(&v, None)?, 0o600)?;
    write_atomic(&dir.join(JOURNAL), b"", 0o600)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_ids_from_the_kernel_or_from_systemd() {
        let k = "0f8a2c1e-1b2c-4d5e-8f90-a1b2c3d4e5f6";
        assert_eq!(normalize_boot_id(&format!("{k}\n")).as_deref(), Some(k));
        assert_eq!(
            normalize_boot_id("0F8A2C1E1B2C4D5E8F90A1B2C3D4E5F6").as_deref(),
            Some(k)
        );
        assert_eq!(normalize_boot_id("%b"), None);
        assert_eq!(normalize_boot_id("0f8a2c1e1b2c4d5e8f90a1b2c3d4e5f"), None);
    }

    fn rec(a: &str, since: u64) -> BlockRecord {
        BlockRecord {
            meta: Default::default(),
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
            distinct_ports: 1,
            prefix6: None,
            hosts_deny_legacy: false,
            origin: None,
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

    fn state_with_two(d: &Path) -> HashMap<IpAddr, BlockRecord> {
        let (mut s, _, _) = Store::open(d).unwrap();
        let mut live = HashMap::new();
        for (i, a) in ["192.0.2.1", "2001:db8::2"].iter().enumerate() {
            let r = rec(a, i as u64 + 1);
            live.insert(r.addr, r.clone());
            s.put(&r, &live).unwrap();
        }
        s.compact(&live).unwrap();
        live
    }

    fn open_err(d: &Path) -> String {
        Store::open(d).unwrap_err().to_string()
    }

    #[test]
    fn the_boot_id_survives_compaction_and_bad_ones_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let live = state_with_two(d.path());
        let (mut s, _, _) = Store::open(d.path()).unwrap();
        assert_eq!(s.boot_id(), None);
        let id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        s.set_boot_id(id.into());
        s.compact(&live).unwrap();
        drop(s);
        let snap = d.path().join(SNAPSHOT);
        let text = std::fs::read_to_string(&snap).unwrap();
        assert!(text.lines().next().unwrap().contains(id), "{text}");
        // Read back, and kept by the compaction every open does.
        for _ in 0..2 {
            let (s, back, _) = Store::open(d.path()).unwrap();
            assert_eq!(s.boot_id(), Some(id));
            assert_eq!(back, live);
        }
        // A header naming something else is read as no boot id, the records still load.
        let bad = text.replacen(id, "../../etc/passwd-xxxxxxxxxxxxxxxxxxxx", 1);
        std::fs::write(&snap, bad).unwrap();
        let (s, back, _) = Store::open(d.path()).unwrap();
        assert_eq!((s.boot_id(), back.len()), (None, 2));
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn four_changed_bytes_are_refused_with_the_place_and_nothing_is_written() {
        let d = tempfile::tempdir().unwrap();
        state_with_two(d.path());
        let snap = d.path().join(SNAPSHOT);
        let good = std::fs::read(&snap).unwrap();
        let line2 = good.iter().position(|&c| c == b'\n').unwrap() + 1;
        // Four bytes inside the first record's JSON, JSON still valid: the checksum.
        let at = line2
            + 9
            + good[line2 + 9..]
                .windows(9)
                .position(|w| w == b"192.0.2.1")
                .unwrap();
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(b"10.9");
        std::fs::write(&snap, &bad).unwrap();
        let e = open_err(d.path());
        assert!(
            e.contains(&format!(
                "{}: damaged at line 2, byte offset {line2}",
                snap.display()
            )),
            "{e}"
        );
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(e.contains("--recover"), "{e}");
        assert_eq!(std::fs::read(&snap).unwrap(), bad, "left untouched");
        // Four bytes that break the syntax: the JSON position.
        let mut bad = good.clone();
        bad[3..7].copy_from_slice(b"\x00\x01\x02\x03");
        std::fs::write(&snap, &bad).unwrap();
        let e = open_err(d.path());
        assert!(e.contains("damaged at line 1, byte offset "), "{e}");
        assert_eq!(std::fs::read(&snap).unwrap(), bad);
        // A missing record (truncated file) is damage, not fewer blocks.
        let last = good[..good.len() - 1]
            .iter()
            .rposition(|&c| c == b'\n')
            .unwrap()
            + 1;
        std::fs::write(&snap, &good[..last]).unwrap();
        assert!(open_err(d.path()).contains("records, the header announces 2"));
        std::fs::write(&snap, &good).unwrap();
        assert_eq!(Store::open(d.path()).unwrap().1.len(), 2);
    }

    #[test]
    fn a_damaged_journal_line_is_refused_unless_it_is_the_torn_last_one() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _, _) = Store::open(d.path()).unwrap();
        let mut live = HashMap::new();
        for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            let r = rec(a, 1);
            live.insert(r.addr, r.clone());
            s.put(&r, &live).unwrap();
        }
        drop(s);
        let j = d.path().join(JOURNAL);
        let good = std::fs::read(&j).unwrap();
        let second = good.iter().position(|&c| c == b'\n').unwrap() + 1;
        let mut bad = good.clone();
        bad[second + 30] ^= 0x01;
        std::fs::write(&j, &bad).unwrap();
        let e = open_err(d.path());
        assert!(
            e.contains(&format!(
                "{}: damaged at line 2, byte offset {second}",
                j.display()
            )),
            "{e}"
        );
        assert_eq!(std::fs::read(&j).unwrap(), bad);
    }

    #[test]
    fn a_newer_version_is_refused_not_parsed() {
        let d = tempfile::tempdir().unwrap();
        let snap = d.path().join(SNAPSHOT);
        std::fs::write(
            &snap,
            "{\"format\":\"sentry-enforcer-state\",\"version\":4,\"records\":1}\nzzzz whatever v4 writes\n",
        )
        .unwrap();
        let e = open_err(d.path());
        assert!(
            e.contains("newer sentry-enforcer (state format version 4"),
            "{e}"
        );
        // The old single-object shape with a higher version number too.
        std::fs::write(&snap, "{\"version\":7,\"blocks\":[{\"future\":true}]}").unwrap();
        assert!(open_err(d.path()).contains("state format version 7"));
        assert!(std::fs::read(&snap).unwrap().starts_with(b"{\"version\":7"));
    }

    /// A fleet block's metadata survives the journal and a compaction; a record from
    /// before it was kept (no `meta` key) reads as empty, and an empty one is not
    /// written (sensor blocks' lines stay as they were).
    #[test]
    fn fleet_metadata_round_trips_and_old_records_read_without_it() {
        let d = tempfile::tempdir().unwrap();
        let (mut store, _, _) = Store::open(d.path()).unwrap();
        let mut fleet = rec("192.0.2.3", 3);
        fleet.origin = Some("crowdsec".into());
        fleet.meta = BlockMeta {
            scenario: Some("sentry/portscan".into()),
            decision_id: Some(12),
            alert_id: Some(7),
            machine: Some("host-a".into()),
        };
        let plain = rec("192.0.2.4", 4);
        let mut live = HashMap::new();
        live.insert(fleet.addr, fleet.clone());
        live.insert(plain.addr, plain.clone());
        store.put(&fleet, &live).unwrap();
        store.put(&plain, &live).unwrap();
        drop(store);
        let (mut store, back, _) = Store::open(d.path()).unwrap();
        assert_eq!(back[&fleet.addr], fleet, "from the journal");
        assert_eq!(back[&plain.addr], plain);
        store.compact(&live).unwrap();
        drop(store);
        let (_, back, _) = Store::open(d.path()).unwrap();
        assert_eq!(back[&fleet.addr].meta, fleet.meta, "from the snapshot");
        assert!(back[&plain.addr].meta.is_empty());
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("meta").is_none(), "{json}");
        // A line written before the field existed.
        let mut old = serde_json::to_value(&fleet).unwrap();
        old.as_object_mut().unwrap().remove("meta");
        let r: BlockRecord = serde_json::from_value(old).unwrap();
        assert!(r.meta.is_empty());
        assert_eq!(r.origin.as_deref(), Some("crowdsec"));
    }

    #[test]
    fn version_2_files_are_read_and_origins_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let snap = d.path().join(SNAPSHOT);
        let r1 = rec("192.0.2.1", 1);
        let json = serde_json::to_vec(&r1).unwrap();
        let mut v2 =
            b"{\"format\":\"sentry-enforcer-state\",\"version\":2,\"records\":1}\n".to_vec();
        v2.extend_from_slice(&checked_line(&json));
        std::fs::write(&snap, &v2).unwrap();
        let (mut store, blocks, _) = Store::open(d.path()).unwrap();
        assert_eq!(blocks.get(&r1.addr), Some(&r1));
        assert_eq!(
            blocks[&r1.addr].origin, None,
            "version 2 blocks are the sensor's"
        );
        let mut fleet = rec("192.0.2.2", 2);
        fleet.origin = Some("crowdsec".into());
        let mut live = blocks.clone();
        live.insert(fleet.addr, fleet.clone());
        store.put(&fleet, &live).unwrap();
        store.compact(&live).unwrap();
        drop(store);
        let (_, back, _) = Store::open(d.path()).unwrap();
        assert_eq!(back[&fleet.addr].origin.as_deref(), Some("crowdsec"));
        assert!(std::fs::read(&snap)
            .unwrap()
            .starts_with(b"{\"format\":\"sentry-enforcer-state\",\"version\":3"));
    }

    #[test]
    fn version_1_files_are_upgraded() {
        let d = tempfile::tempdir().unwrap();
        let r1 = rec("192.0.2.1", 1);
        let r2 = rec("192.0.2.2", 2);
        let v1 = serde_json::json!({"version": 1, "blocks": [r1]});
        std::fs::write(d.path().join(SNAPSHOT), v1.to_string()).unwrap();
        let mut j = serde_json::to_vec(&Op::Add(r2.clone())).unwrap();
        j.push(b'\n');
        std::fs::write(d.path().join(JOURNAL), j).unwrap();
        let (_, back, w) = Store::open(d.path()).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(back.len(), 2);
        assert_eq!(back[&r2.addr], r2);
        let now = std::fs::read(d.path().join(SNAPSHOT)).unwrap();
        assert!(now.starts_with(b"{\"format\":\"sentry-enforcer-state\",\"version\":3"));
        // A record written before hosts.deny markers is a legacy one.
        let old = r#"{"addr":"192.0.2.9","protocol":"tcp","port":1,"mode":"stcp","scan":"syn","since_ms":1,"expires_ms":null,"hosts_deny_line":"ALL: 192.0.2.9"}"#;
        let r: BlockRecord = serde_json::from_str(old).unwrap();
        assert!(r.hosts_deny_legacy);
        assert!(!rec("192.0.2.9", 1).hosts_deny_legacy);
    }

    #[test]
    fn salvage_and_rebuild() {
        let d = tempfile::tempdir().unwrap();
        let live = state_with_two(d.path());
        let snap = d.path().join(SNAPSHOT);
        let mut b = std::fs::read(&snap).unwrap();
        // Damage the last record only.
        let n = b.len();
        b[n - 5] ^= 0x20;
        std::fs::write(&snap, &b).unwrap();
        assert!(Store::open(d.path()).is_err());
        let s = salvage(d.path());
        assert_eq!((s.from_snapshot, s.bad_lines), (1, 1));
        let moved = rebuild(d.path(), &s.blocks, "damaged-1").unwrap();
        assert_eq!(moved.len(), 2);
        assert_eq!(
            std::fs::read(&moved[0]).unwrap(),
            b,
            "the damaged file is kept as it was"
        );
        let (_, back, _) = Store::open(d.path()).unwrap();
        assert_eq!(back.len(), 1);
        assert!(live.contains_key(back.keys().next().unwrap()));
        assert!(
            rebuild(d.path(), &back, "damaged-1").is_err(),
            "never overwrites a kept copy"
        );
    }

    #[test]
    fn the_fuzz_seeds_are_what_their_names_say() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/state");
        let seed = |n: &str| std::fs::read(dir.join(n)).unwrap();
        let p = Path::new("x");
        let (b, _, _) = read_state(Some((p, &seed("snapshot-v2"))), None).unwrap();
        assert_eq!(b.len(), 2);
        let (b, _, _) = read_state(Some((p, &seed("snapshot-v1"))), None).unwrap();
        assert_eq!(b.len(), 2);
        let (b, n, _) = read_state(None, Some((p, &seed("journal-v2")))).unwrap();
        assert_eq!((b.len(), n), (1, 3));
        let (b, n, w) = read_state(None, Some((p, &seed("journal-v1-torn")))).unwrap();
        assert_eq!((b.len(), n, w.len()), (1, 3, 1));
        assert!(matches!(
            read_state(Some((p, &seed("snapshot-newer"))), None),
            Err(StateError::Newer { version: 4, .. })
        ));
    }

    #[test]
    fn refuses_writable_dir() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Store::open(d.path()).is_err());
    }
}
