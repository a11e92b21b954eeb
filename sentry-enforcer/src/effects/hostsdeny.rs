//! The TCP-wrappers deny file (HOSTS_DENY_FILE). Lines are added by appending and removed
//! by rewriting the file in place (see [`remove`] for why not by rename).
//!
//! The file is opened with O_NOFOLLOW (a symlink is refused), must be a regular file owned
//! by root (or by us) and not writable by group or others, and its directory must not be
//! writable by group or others either (otherwise the file could be swapped under us).
//!
//! # Only what sentry wrote is taken back
//!
//! Every line sentry adds is preceded by a marker line of its own:
//!
//! ```text
//! # sentry: 192.0.2.7 1764626400
//! ALL: 192.0.2.7 : DENY
//! ```
//!
//! and unblock or expiry remove only such pairs. An admin's line identical to sentry's
//! (a permanent ban of the same host) is not sentry's and stays, byte for byte, as does
//! everything else in the file (CRLF line ends, a missing final newline).
//!
//! Why a marker *line* and not a trailing comment: libwrap (hosts_access.c) treats a line
//! as a comment only when its very first character is `#`; a `#` later on the line is
//! part of the rule, so `ALL: 192.0.2.7 # sentry` would no longer match that host. A
//! line starting with `#` in column 0 is skipped by every libwrap version, so the marker
//! changes nothing for tcpd. libwrap also joins a line ending in a backslash with the
//! next one: after such a line sentry first writes an empty line, so that its marker
//! (and rule) can never be glued onto an admin's rule. A marker ending in ` +sep` records
//! that sentry wrote the one `\n` before it (to end an unterminated last line, or that
//! empty line); when that pair is removed and nothing follows it, the `\n` goes too.
//!
//! Lines written by the previous version carry no marker. Their state records say so
//! ([`Entry::legacy`]); such a line is removed only when no marked copy exists and it is
//! the only occurrence of that exact line in the file; otherwise it is left alone and
//! reported ([`Removed::kept`]), because it may be the admin's.
//!
//! # Other writers
//!
//! The root parent is sentry's only writer: one process with one thread (the worker's
//! `--recover` only reads the markers, and only while no enforcer runs), so sentry's own
//! edits need no lock. The deny file itself is never locked: it is world-readable, so any
//! local user could open it and hold an `flock` on it, and every block would wait on that
//! user (issue #21). Other programs' lines are kept without any lock:
//!
//! * adds are single `write(2)`s on an O_APPEND descriptor, which the kernel positions
//!   at the end atomically with respect to every other O_APPEND writer (fail2ban,
//!   DenyHosts, `echo >>`), so no line of theirs is overwritten;
//! * a removal re-reads the file and compares its identity, size and times right before
//!   the in-place write; on any change it reads and merges again (up to
//!   [`REWRITE_TRIES`] times). Bytes another writer appends between that check and our
//!   truncate are carried over: after writing, the file's size is compared with the size
//!   read, and anything beyond it is copied behind our content before the truncate (see
//!   [`rewrite_in_place`]);
//! * an editor that replaces the file by rename makes a new inode: the rewrite refuses
//!   ("replaced while being edited") and the removal is retried later, so the worst case
//!   is a sentry line that stays, never an admin's line that goes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Refuse to read deny files larger than this (an attacker-inflated file must not make us
/// allocate without bound).
pub const MAX_FILE: u64 = 32 << 20;
/// Reads and merges a removal tries before giving up when the file keeps changing.
pub const REWRITE_TRIES: usize = 5;

/// Start of every marker line.
pub const MARKER: &str = "# sentry: ";
const SEP_FLAG: &str = " +sep";

/// One line sentry owns (or owned, for [`remove`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub addr: IpAddr,
    pub line: &'a str,
    /// Written by a version without markers (state record without `hosts_deny_legacy:
    /// false`).
    pub legacy: bool,
}

/// What [`remove`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Lines removed (marked pairs count once, plus unmarked legacy lines).
    pub removed: usize,
    /// Legacy lines left in place because they were not provably sentry's (absent, or
    /// present more than once): for the caller to log.
    pub kept: Vec<String>,
}

/// Borrow `(addr, line, legacy)` triples as entries (the engine's batch paths).
pub fn entries(v: &[(IpAddr, String, bool)]) -> Vec<Entry<'_>> {
    v.iter()
        .map(|(addr, line, legacy)| Entry {
            addr: *addr,
            line,
            legacy: *legacy,
        })
        .collect()
}

fn err(path: &Path, msg: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{}: {msg}", path.display()))
}

fn check_meta(path: &Path, md: &std::fs::Metadata, what: &str) -> io::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != 0 && md.uid() != me {
        return Err(err(
            path,
            format!("{what} is owned by uid {}, not root", md.uid()),
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Err(err(
            path,
            format!(
                "{what} is writable by group or others (mode {:o})",
                md.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

fn check_dir(path: &Path) -> io::Result<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let md = std::fs::metadata(&dir).map_err(|e| err(&dir, e))?;
    check_meta(&dir, &md, "directory")?;
    Ok(dir)
}

/// Open the deny file for reading and appending, creating it (mode 0644) if missing.
fn open(path: &Path) -> io::Result<File> {
    open_as(path, true)
}

/// `write`: for the writers (created when missing); else read-only, for `--recover`,
/// which runs as the worker and only reads the markers.
pub fn open_as(path: &Path, write: bool) -> io::Result<File> {
    check_dir(path)?;
    let f = OpenOptions::new()
        .read(true)
        .append(write)
        .create(write)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                err(path, "is a symbolic link; refusing")
            } else {
                err(path, e)
            }
        })?;
    let md = f.metadata()?;
    if !md.file_type().is_file() {
        return Err(err(path, "not a regular file"));
    }
    check_meta(path, &md, "file")?;
    if md.len() > MAX_FILE {
        return Err(err(path, format!("larger than {MAX_FILE} bytes; refusing")));
    }
    Ok(f)
}

/// The whole file, at most [`MAX_FILE`] bytes.
pub fn read_all(f: &mut File, path: &Path) -> io::Result<Vec<u8>> {
    let mut b = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.take(MAX_FILE + 1).read_to_end(&mut b)?;
    if b.len() as u64 > MAX_FILE {
        return Err(err(path, "grew past the size limit while reading"));
    }
    Ok(b)
}

fn check_line(line: &str) -> io::Result<()> {
    if line.is_empty() || line.contains(['\n', '\r', '\0']) {
        return Err(io::Error::other(
            "rendered deny line is empty or contains a line break",
        ));
    }
    if line.starts_with('#') || line.ends_with('\\') {
        // A leading '#' would make it a comment (no block, and a fake marker); a trailing
        // backslash would glue the next line onto it.
        return Err(io::Error::other(
            "rendered deny line starts with '#' or ends with a backslash",
        ));
    }
    Ok(())
}

/// One line of the file: its bytes including the terminator, and its text without it.
#[derive(Debug)]
pub struct Line<'a> {
    start: usize,
    end: usize,
    pub text: &'a [u8],
}

pub fn split_lines(b: &[u8]) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < b.len() {
        let end = b[start..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |i| start + i + 1);
        let mut text = &b[start..end];
        if let Some(t) = text.strip_suffix(b"\n") {
            text = t;
        }
        if let Some(t) = text.strip_suffix(b"\r") {
            text = t;
        }
        out.push(Line { start, end, text });
        start = end;
    }
    out
}

/// A marker line: `# sentry: ADDR EPOCH[ +sep]` → (addr, sep).
fn parse_marker(text: &[u8]) -> Option<(IpAddr, bool)> {
    let s = std::str::from_utf8(text).ok()?.strip_prefix(MARKER)?;
    let (s, sep) = match s.strip_suffix(SEP_FLAG) {
        Some(s) => (s, true),
        None => (s, false),
    };
    let (addr, time) = s.split_once(' ')?;
    if time.is_empty() || !time.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((addr.parse().ok()?, sep))
}

/// Index of every marked pair: (marker line index, addr, sep flag); the owned line is
/// the next one.
pub fn marked_pairs(lines: &[Line<'_>]) -> Vec<(usize, IpAddr, bool)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        if let Some((addr, sep)) = parse_marker(lines[i].text) {
            out.push((i, addr, sep));
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

/// Lines sentry owns (after a marker) and the admin's (everything else but markers).
fn owned_and_foreign<'a>(lines: &'a [Line<'a>]) -> (Vec<&'a [u8]>, Vec<&'a [u8]>) {
    let pairs = marked_pairs(lines);
    let mut owned_idx = std::collections::HashSet::new();
    let mut marker_idx = std::collections::HashSet::new();
    for (i, _, _) in &pairs {
        marker_idx.insert(*i);
        owned_idx.insert(i + 1);
    }
    let mut owned = Vec::new();
    let mut foreign = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if owned_idx.contains(&i) {
            owned.push(trim_end(l.text));
        } else if !marker_idx.contains(&i) {
            foreign.push(trim_end(l.text));
        }
    }
    (owned, foreign)
}

/// `b` without trailing whitespace.
pub fn trim_end(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &b[..n]
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the last add read or wrote, so the next add under a flood of blocks does not
/// re-read and re-parse the whole file (which grows by two lines per block): valid only
/// while the file's identity, size, mtime and ctime are exactly what this process left.
/// Any other writer (an admin's editor, fail2ban, DenyHosts) changes at least one of
/// them, and the next add reads the file again.
#[derive(Debug)]
struct Parsed {
    path: std::path::PathBuf,
    stamp: Stamp,
    present: std::collections::HashSet<Vec<u8>>,
    foreign: std::collections::HashSet<Vec<u8>>,
    /// The byte before our next marker must be a newline we write.
    sep: bool,
}

type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(md: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (
        md.dev(),
        md.ino(),
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
    )
}

static PARSED: std::sync::Mutex<Option<Parsed>> = std::sync::Mutex::new(None);

/// Append every entry that is not present yet, with one read and one write (used when
/// many blocks are restored at once). A marked copy counts as present; for a legacy entry
/// an unmarked copy does too (it is the line the previous version wrote). Returns how
/// many were added.
pub fn add_many(path: &Path, entries: &[Entry<'_>]) -> io::Result<usize> {
    for e in entries {
        check_line(e.line)?;
    }
    let mut f = open(path)?;
    let mut cache = PARSED.lock().unwrap_or_else(|p| p.into_inner());
    let now = stamp(&f.metadata()?);
    let fresh = cache
        .as_ref()
        .is_some_and(|c| c.path == path && c.stamp == now);
    if !fresh {
        let text = read_all(&mut f, path)?;
        let lines = split_lines(&text);
        let (owned, foreign) = owned_and_foreign(&lines);
        *cache = Some(Parsed {
            path: path.to_path_buf(),
            stamp: now,
            present: owned.iter().map(|l| l.to_vec()).collect(),
            foreign: foreign.iter().map(|l| l.to_vec()).collect(),
            sep: lines
                .last()
                .is_some_and(|last| !text.ends_with(b"\n") || last.text.ends_with(b"\\")),
        });
    }
    let Some(parsed) = cache.as_mut() else {
        return Err(io::Error::other("hosts.deny cache lost"));
    };
    let present = &mut parsed.present;
    let foreign = &parsed.foreign;
    let mut out = String::new();
    // Whether the byte before our first marker must be written by us.
    let mut sep = parsed.sep;
    let when = now_s();
    let mut added = 0;
    for e in entries {
        if present.contains(e.line.as_bytes()) || (e.legacy && foreign.contains(e.line.as_bytes()))
        {
            continue;
        }
        present.insert(e.line.as_bytes().to_vec());
        if std::mem::take(&mut sep) {
            out.push('\n');
            out.push_str(&format!("{MARKER}{} {when}{SEP_FLAG}\n", e.addr));
        } else {
            out.push_str(&format!("{MARKER}{} {when}\n", e.addr));
        }
        out.push_str(e.line);
        out.push('\n');
        added += 1;
    }
    if added > 0 {
        // Until the write is known to be complete, the cache says nothing.
        let written = f.write_all(out.as_bytes()).and_then(|()| f.sync_data());
        match (written, f.metadata()) {
            (Ok(()), Ok(md)) => {
                parsed.stamp = stamp(&md);
                parsed.sep = false;
            }
            (r, _) => {
                *cache = None;
                r?;
            }
        }
    }
    Ok(added)
}

/// Remove sentry's lines for `entries` (and their markers); see the module documentation
/// for legacy (unmarked) lines.
///
/// The file is rewritten in place (same inode: write from offset 0, truncate, fsync)
/// rather than replaced by rename. That needs only the file itself to be writable, so
/// the unit can grant `ReadWritePaths=/etc/hosts.deny` instead of all of /etc to a root
/// daemon. A crash between the write and the truncate can only leave extra bytes of the
/// old content after the new content — more deny lines, never fewer — and the next
/// removal rewrites them away.
pub fn remove(path: &Path, entries: &[Entry<'_>]) -> io::Result<Removed> {
    // Rewritten in place below: the next add reads it again.
    *PARSED.lock().unwrap_or_else(|p| p.into_inner()) = None;
    for _ in 0..REWRITE_TRIES {
        if let Some(r) = remove_once(path, entries)? {
            return Ok(r);
        }
    }
    Err(err(
        path,
        format!("changed by another writer during each of {REWRITE_TRIES} attempts; not changed"),
    ))
}

/// One read-merge-rewrite; `None` when the file changed between the read and the write
/// (the caller reads it again).
fn remove_once(path: &Path, entries: &[Entry<'_>]) -> io::Result<Option<Removed>> {
    let mut f = open(path)?;
    let before = stamp(&f.metadata()?);
    let text = read_all(&mut f, path)?;
    let lines = split_lines(&text);
    let pairs = marked_pairs(&lines);
    let (drop, sep_before, report) = mark_removals(path, &lines, &pairs, entries);
    if report.removed == 0 {
        return Ok(Some(report));
    }
    let kept = kept_text(&text, &lines, &drop, &sep_before);
    // `open` gives an O_APPEND handle; the rewrite needs a positional one on the same
    // file, re-checked the same way (O_NOFOLLOW, owner, mode) and required to be the
    // very inode we just read.
    let mut w = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| err(path, e))?;
    let (a, b) = (f.metadata()?, w.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(err(path, "replaced while being edited; refusing"));
    }
    check_meta(path, &b, "file")?;
    // Compare and retry: a writer that came in since the read is merged by reading again.
    if stamp(&b) != before {
        return Ok(None);
    }
    rewrite_in_place(&mut w, &kept, text.len() as u64)?;
    Ok(Some(report))
}

/// Which lines go for `entries`: each entry's marked pair, or (for a block made by an
/// older version) its unmarked line when that is unambiguous. Returns the lines to drop,
/// each dropped marker's ` +sep` flag, and the report.
fn mark_removals(
    path: &Path,
    lines: &[Line<'_>],
    pairs: &[(usize, IpAddr, bool)],
    entries: &[Entry<'_>],
) -> (Vec<bool>, Vec<bool>, Removed) {
    let mut drop = vec![false; lines.len()];
    // Per marker line: its ` +sep` flag (recorded for dropped markers only).
    let mut sep_before = vec![false; lines.len()];
    let mut report = Removed::default();
    for e in entries {
        let want = e.line.as_bytes();
        let mut found = false;
        for (i, _, sep) in pairs {
            if trim_end(lines[i + 1].text) == want {
                if !drop[*i] {
                    drop[*i] = true;
                    drop[i + 1] = true;
                    sep_before[*i] = *sep;
                    report.removed += 1;
                }
                found = true;
            }
        }
        if found || !e.legacy {
            continue;
        }
        // A line of the previous version: only when it is unambiguous.
        let owned: std::collections::HashSet<usize> =
            pairs.iter().flat_map(|(i, _, _)| [*i, i + 1]).collect();
        let unmarked: Vec<usize> = (0..lines.len())
            .filter(|i| !owned.contains(i) && trim_end(lines[*i].text) == want)
            .collect();
        match unmarked.as_slice() {
            [only] if !drop[*only] => {
                drop[*only] = true;
                report.removed += 1;
            }
            [_] => {}
            [] => report.kept.push(format!(
                "{}: unmarked line {:?} of a block made by an older version is no longer there",
                path.display(),
                e.line
            )),
            many => report.kept.push(format!(
                "{}: unmarked line {:?} of a block made by an older version appears {} times; none removed (one may be the admin's)",
                path.display(),
                e.line,
                many.len()
            )),
        }
    }
    (drop, sep_before, report)
}

/// The file without the dropped lines.
fn kept_text(text: &[u8], lines: &[Line<'_>], drop: &[bool], sep_before: &[bool]) -> Vec<u8> {
    // A removed marker with ` +sep` owned the `\n` before it. If the next line kept is
    // another of sentry's markers, that one inherits the flag; if nothing is kept after
    // it, the `\n` goes (the admin's unterminated last line is restored exactly); if an
    // admin's line follows, the `\n` now ends the line before it and stays.
    let mut kept: Vec<u8> = Vec::with_capacity(text.len());
    let mut pending_sep = false;
    for (i, l) in lines.iter().enumerate() {
        if drop[i] {
            pending_sep |= sep_before[i];
            continue;
        }
        if std::mem::take(&mut pending_sep) {
            if let Some((_, false)) = parse_marker(l.text) {
                kept.extend_from_slice(l.text);
                kept.extend_from_slice(SEP_FLAG.as_bytes());
                kept.extend_from_slice(&text[l.start + l.text.len()..l.end]);
                continue;
            }
        }
        kept.extend_from_slice(&text[l.start..l.end]);
    }
    if pending_sep && kept.ends_with(b"\n") {
        kept.pop();
    }
    kept
}

/// Write `kept` over the file from offset 0 and cut it to its new length, keeping whatever
/// another writer appended after the `read_len` bytes we read: those bytes are copied
/// behind `kept` before the truncate (repeated while the file keeps growing, a bounded
/// number of times). The window left is the one between the last size check and the
/// truncate, a few instructions; see SECURITY.md.
pub fn rewrite_in_place(w: &mut File, kept: &[u8], read_len: u64) -> io::Result<()> {
    // Appended bytes must be read before our write can overwrite them (when `kept` is
    // shorter than the old content they are past its end, but a removal never makes the
    // file longer, so the old tail is never overwritten by `kept` itself).
    let mut seen = read_len;
    let mut tail: Vec<u8> = Vec::new();
    let grab = |w: &mut File, from: u64, tail: &mut Vec<u8>| -> io::Result<u64> {
        let len = w.metadata()?.len();
        if len > from {
            let mut more = Vec::new();
            w.seek(SeekFrom::Start(from))?;
            w.take(MAX_FILE.min(len - from)).read_to_end(&mut more)?;
            tail.extend_from_slice(&more);
            return Ok(from + more.len() as u64);
        }
        Ok(from)
    };
    seen = grab(w, seen, &mut tail)?;
    w.seek(SeekFrom::Start(0))?;
    w.write_all(kept)?;
    w.write_all(&tail)?;
    for _ in 0..REWRITE_TRIES {
        let before = tail.len();
        seen = grab(w, seen, &mut tail)?;
        if tail.len() == before {
            break;
        }
        w.seek(SeekFrom::Start(kept.len() as u64 + before as u64))?;
        w.write_all(tail.get(before..).unwrap_or(&[]))?;
    }
    w.set_len((kept.len() + tail.len()) as u64)?;
    w.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    /// Append `e.line` (with its marker) unless sentry's marked copy is present. Returns
    /// whether it was added. (The parent adds a request's lines at once: `add_many`.)
    fn add(path: &Path, e: &Entry<'_>) -> io::Result<bool> {
        Ok(add_many(path, std::slice::from_ref(e))? > 0)
    }

    /// Whether sentry's marked copy of `line` is present.
    fn contains(path: &Path, line: &str) -> io::Result<bool> {
        let mut f = open(path)?;
        let text = read_all(&mut f, path)?;
        let lines = split_lines(&text);
        let (owned, _) = owned_and_foreign(&lines);
        Ok(owned.contains(&line.as_bytes()))
    }

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn e(line: &str) -> Entry<'_> {
        let addr = line
            .trim_start_matches("ALL: ")
            .split(' ')
            .next()
            .unwrap()
            .trim_matches(['[', ']'])
            .parse()
            .unwrap();
        Entry {
            addr,
            line,
            legacy: false,
        }
    }

    fn legacy(line: &str) -> Entry<'_> {
        Entry {
            legacy: true,
            ..e(line)
        }
    }

    /// The file without sentry's marker lines.
    fn rules(p: &Path) -> String {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with(MARKER))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn another_users_flock_on_the_deny_file_stalls_nothing() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        std::fs::write(&p, "ALL: 203.0.113.1\n").unwrap();
        // Anyone who can read the file can hold this lock; we no longer take it.
        let held = Flock::lock(File::open(&p).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
        let t = Instant::now();
        assert!(add(&p, &e("ALL: 192.0.2.7 : DENY")).unwrap());
        assert_eq!(
            remove(&p, &[e("ALL: 192.0.2.7 : DENY")]).unwrap().removed,
            1
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(rules(&p), "ALL: 203.0.113.1\n");
        drop(held);
    }

    #[test]
    fn a_line_appended_during_a_rewrite_is_carried_over() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        let old = b"ALL: 203.0.113.1\n# sentry: 192.0.2.7 1\nALL: 192.0.2.7 : DENY\n";
        std::fs::write(&p, old).unwrap();
        // fail2ban appends after our read, before our write.
        let mut other = OpenOptions::new().append(true).open(&p).unwrap();
        other.write_all(b"ALL: 198.51.100.9\n").unwrap();
        let mut w = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        rewrite_in_place(&mut w, b"ALL: 203.0.113.1\n", old.len() as u64).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "ALL: 203.0.113.1\nALL: 198.51.100.9\n"
        );
    }

    #[test]
    fn another_writer_between_two_adds_is_seen() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        std::fs::write(&p, "# admin\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(add(&p, &e("ALL: 192.0.2.1")).unwrap());
        // Another writer puts the file back as it was (sentry's line gone): the next add
        // must see that, not the cache of its last write.
        std::fs::write(&p, "# admin\n").unwrap();
        assert!(add(&p, &e("ALL: 192.0.2.1")).unwrap(), "{}", rules(&p));
        assert!(contains(&p, "ALL: 192.0.2.1").unwrap());
        // An append by another writer without a final newline.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"ALL: 10.9.9.9").unwrap();
        drop(f);
        assert!(add(&p, &e("ALL: 192.0.2.2")).unwrap());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("ALL: 10.9.9.9\n# sentry: 192.0.2.2 "),
            "{text}"
        );
        // Unchanged in between: the cached parse still dedupes.
        assert!(!add(&p, &e("ALL: 192.0.2.2")).unwrap());
    }

    #[test]
    fn add_dedupe_remove() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        std::fs::write(&p, "# keep me\nALL: 10.0.0.1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(add(&p, &e("ALL: 192.0.2.1")).unwrap());
        assert!(!add(&p, &e("ALL: 192.0.2.1")).unwrap());
        assert!(add(&p, &e("ALL: [2001:db8::1]")).unwrap());
        let text = std::fs::read_to_string(&p).unwrap();
        let l: Vec<&str> = text.lines().collect();
        assert_eq!(l.len(), 6, "{text}");
        assert!(l[2].starts_with("# sentry: 192.0.2.1 "), "{text}");
        assert_eq!(l[3], "ALL: 192.0.2.1");
        assert!(l[4].starts_with("# sentry: 2001:db8::1 "), "{text}");
        assert!(contains(&p, "ALL: 192.0.2.1").unwrap());
        assert!(
            !contains(&p, "ALL: 10.0.0.1").unwrap(),
            "the admin's line is not ours"
        );
        assert_eq!(remove(&p, &[e("ALL: 192.0.2.1")]).unwrap().removed, 1);
        assert_eq!(remove(&p, &[e("ALL: 192.0.2.1")]).unwrap().removed, 0);
        assert_eq!(rules(&p), "# keep me\nALL: 10.0.0.1\nALL: [2001:db8::1]\n");
        assert_eq!(remove(&p, &[e("ALL: [2001:db8::1]")]).unwrap().removed, 1);
        assert_eq!(std::fs::read(&p).unwrap(), b"# keep me\nALL: 10.0.0.1\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
    }

    #[test]
    fn an_admin_line_identical_to_sentrys_survives_unblock() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        // The admin banned 192.0.2.9 for good, with the very line sentry would write.
        let admin = b"ALL: 192.0.2.9 : DENY\n".to_vec();
        std::fs::write(&p, &admin).unwrap();
        let mine = e("ALL: 192.0.2.9 : DENY");
        assert!(add(&p, &mine).unwrap(), "sentry keeps a copy of its own");
        assert_eq!(rules(&p), "ALL: 192.0.2.9 : DENY\nALL: 192.0.2.9 : DENY\n");
        // The scanner scans once, the block expires: only sentry's copy goes.
        assert_eq!(remove(&p, &[mine]).unwrap().removed, 1);
        assert_eq!(std::fs::read(&p).unwrap(), admin);
        // And with nothing of sentry's left, nothing more is removed.
        assert_eq!(remove(&p, &[mine]).unwrap(), Removed::default());
        assert_eq!(std::fs::read(&p).unwrap(), admin);
    }

    #[test]
    fn crlf_and_missing_final_newline_are_preserved_byte_for_byte() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        for before in [
            &b"# admin\r\nALL: 10.0.0.1 : DENY\r\nsshd: 10.0.0.2"[..],
            &b"ALL: 10.0.0.3"[..],
            &b"sshd: 10.0.0.4 \\\n"[..],
            &b""[..],
            &b"\r\n\r\n"[..],
        ] {
            std::fs::write(&p, before).unwrap();
            assert!(add(&p, &e("ALL: 192.0.2.1")).unwrap());
            assert!(add(&p, &e("ALL: 192.0.2.2")).unwrap());
            let mid = std::fs::read(&p).unwrap();
            assert!(mid.starts_with(before), "{before:?}");
            let text = String::from_utf8(mid).unwrap();
            // tcpd would see the rules on lines of their own, never glued to the admin's.
            assert!(text.contains("\nALL: 192.0.2.1\n"), "{text:?}");
            assert_eq!(
                remove(&p, &[e("ALL: 192.0.2.1"), e("ALL: 192.0.2.2")])
                    .unwrap()
                    .removed,
                2
            );
            assert_eq!(std::fs::read(&p).unwrap(), before, "{before:?}");
        }
        // One at a time, the first-added first (its ` +sep` passes to the next marker),
        // and in the other order: both end byte-identical.
        for order in [[1, 2], [2, 1]] {
            let before = b"ALL: 10.0.0.6";
            std::fs::write(&p, before).unwrap();
            assert!(add(&p, &e("ALL: 192.0.2.1")).unwrap());
            assert!(add(&p, &e("ALL: 192.0.2.2")).unwrap());
            for n in order {
                let l = format!("ALL: 192.0.2.{n}");
                assert_eq!(remove(&p, &[e(&l)]).unwrap().removed, 1);
            }
            assert_eq!(std::fs::read(&p).unwrap(), before, "{order:?}");
        }
        // An admin line appended after sentry's: the separator now ends the admin's first
        // line and stays.
        std::fs::write(&p, b"ALL: 10.0.0.7").unwrap();
        add(&p, &e("ALL: 192.0.2.1")).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"ALL: 10.0.0.8\n")
            .unwrap();
        remove(&p, &[e("ALL: 192.0.2.1")]).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"ALL: 10.0.0.7\nALL: 10.0.0.8\n"
        );
        // Removal in the other order, one at a time, also ends byte-identical.
        let before = b"ALL: 10.0.0.5";
        std::fs::write(&p, before).unwrap();
        assert!(add(&p, &e("ALL: 192.0.2.1")).unwrap());
        assert!(add(&p, &e("ALL: 192.0.2.2")).unwrap());
        remove(&p, &[e("ALL: 192.0.2.2")]).unwrap();
        remove(&p, &[e("ALL: 192.0.2.1")]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn a_backslash_continuation_never_swallows_sentrys_marker() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        std::fs::write(&p, "sshd: 10.0.0.1 \\\n").unwrap();
        add(&p, &e("ALL: 192.0.2.1")).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("sshd: 10.0.0.1 \\\n\n# sentry: 192.0.2.1 "),
            "{text:?}"
        );
    }

    #[test]
    fn legacy_lines_are_removed_only_when_unambiguous() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        // Written by the previous version (no marker), recorded in the state as sentry's.
        std::fs::write(
            &p,
            "# admin\nALL: 192.0.2.1\nALL: 192.0.2.2\nALL: 192.0.2.2\n",
        )
        .unwrap();
        // Restore does not add a marked duplicate of a legacy line that is still there.
        assert_eq!(add_many(&p, &[legacy("ALL: 192.0.2.1")]).unwrap(), 0);
        let r = remove(&p, &[legacy("ALL: 192.0.2.1"), legacy("ALL: 192.0.2.2")]).unwrap();
        assert_eq!(r.removed, 1);
        assert_eq!(r.kept.len(), 1);
        assert!(r.kept[0].contains("appears 2 times"), "{r:?}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "# admin\nALL: 192.0.2.2\nALL: 192.0.2.2\n"
        );
        let r = remove(&p, &[legacy("ALL: 192.0.2.9")]).unwrap();
        assert_eq!((r.removed, r.kept.len()), (0, 1));
        // A new-format record never takes an unmarked line, even a single one.
        std::fs::write(&p, "ALL: 192.0.2.3\n").unwrap();
        assert_eq!(remove(&p, &[e("ALL: 192.0.2.3")]).unwrap().removed, 0);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "ALL: 192.0.2.3\n");
        // A legacy record whose line is marked (re-added after a restore) takes the
        // marked copy, not an admin's.
        add(&p, &e("ALL: 192.0.2.3")).unwrap();
        assert_eq!(remove(&p, &[legacy("ALL: 192.0.2.3")]).unwrap().removed, 1);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "ALL: 192.0.2.3\n");
    }

    #[test]
    fn remove_keeps_the_inode_so_a_single_file_bind_mount_works() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        for a in ["ALL: 192.0.2.1", "ALL: 192.0.2.2", "ALL: 192.0.2.3"] {
            add(&p, &e(a)).unwrap();
        }
        let before = std::fs::metadata(&p).unwrap().ino();
        assert_eq!(
            remove(&p, &[e("ALL: 192.0.2.1"), e("ALL: 192.0.2.3")])
                .unwrap()
                .removed,
            2
        );
        assert_eq!(rules(&p), "ALL: 192.0.2.2\n");
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), before);
        // No temporary files are left in (or needed from) the directory.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let text = std::fs::read(&p).unwrap();
        let lines = split_lines(&text);
        let m = marked_pairs(&lines);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].1, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(lines[m[0].0 + 1].text, b"ALL: 192.0.2.2");
    }

    #[test]
    fn add_many_once() {
        let d = dir();
        let p = d.path().join("deny");
        std::fs::write(&p, "").unwrap();
        add(&p, &e("ALL: 1.1.1.1")).unwrap();
        assert_eq!(
            add_many(
                &p,
                &[e("ALL: 1.1.1.1"), e("ALL: 2.2.2.2"), e("ALL: 2.2.2.2")]
            )
            .unwrap(),
            1
        );
        assert_eq!(rules(&p), "ALL: 1.1.1.1\nALL: 2.2.2.2\n");
        assert_eq!(add_many(&p, &[]).unwrap(), 0);
    }

    #[test]
    fn creates_missing_file() {
        let d = dir();
        let p = d.path().join("deny");
        assert!(add(&p, &e("ALL: 192.0.2.9")).unwrap());
        assert_eq!(rules(&p), "ALL: 192.0.2.9\n");
    }

    #[test]
    fn refuses_symlink_and_writable() {
        let d = dir();
        let target = d.path().join("real");
        std::fs::write(&target, "").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let x = add(&link, &e("ALL: 192.0.2.1")).unwrap_err();
        assert!(x.to_string().contains("symbolic link"), "{x}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "");

        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
        let x = add(&target, &e("ALL: 192.0.2.1")).unwrap_err();
        assert!(x.to_string().contains("writable"), "{x}");

        let wd = dir();
        std::fs::set_permissions(wd.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let x = add(&wd.path().join("x"), &e("ALL: 192.0.2.1")).unwrap_err();
        assert!(x.to_string().contains("directory"), "{x}");
    }

    #[test]
    fn refuses_line_breaks_comments_and_continuations() {
        let d = dir();
        let p = d.path().join("deny");
        let a: IpAddr = "1.2.3.4".parse().unwrap();
        for bad in [
            "ALL: 1.2.3.4\nALL: ALL",
            "",
            "# sentry: 1.2.3.4 1",
            "ALL: 1.2.3.4 \\",
        ] {
            let x = Entry {
                addr: a,
                line: bad,
                legacy: false,
            };
            assert!(add(&p, &x).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn markers_parse_strictly() {
        assert_eq!(
            parse_marker(b"# sentry: 192.0.2.1 17"),
            Some(("192.0.2.1".parse().unwrap(), false))
        );
        assert_eq!(
            parse_marker(b"# sentry: 2001:db8::1 17 +sep"),
            Some(("2001:db8::1".parse().unwrap(), true))
        );
        for bad in [
            &b"# sentry: 192.0.2.1"[..],
            b"# sentry: nonsense 17",
            b"# sentry: 192.0.2.1 x",
            b" # sentry: 192.0.2.1 17",
            b"#sentry: 192.0.2.1 17",
            b"\xff",
        ] {
            assert_eq!(parse_marker(bad), None, "{bad:?}");
        }
    }
}
