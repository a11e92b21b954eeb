//! The bounded on-disk queue of alerts not yet accepted by a LAPI (`STATE_DIR/queue`),
//! and the decision-stream cursor (`STATE_DIR/cursor`). A report is appended and
//! fdatasync'd before the cursor moves past its record, and removed (atomic rewrite)
//! only after a LAPI accepted it: an outage or a restart loses nothing, a crash can at
//! worst send one alert twice. Full queue: the report is refused (the caller counts and
//! logs it). A damaged line is skipped, counted and reported, never a panic.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sentry_proto::Cursor;

use crate::lapi::Report;

const HEADER: &str = r#"{"format":"sentry-share-queue","version":1}"#;
/// Longest line accepted from the file.
const MAX_LINE: usize = 1024;

/// What loading found besides the reports.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Lines that did not parse (each named in `problems`).
    pub rejected: u64,
    /// Reports beyond QUEUE_MAX (oldest kept).
    pub over_max: u64,
    pub problems: Vec<String>,
}

#[derive(Debug)]
pub struct Queue {
    path: PathBuf,
    items: VecDeque<Report>,
    max: usize,
    file: File,
}

/// Parse queue file bytes (also the fuzz target's entry point).
pub fn parse(b: &[u8], max: usize) -> Result<(VecDeque<Report>, LoadReport), String> {
    let mut rep = LoadReport::default();
    let mut items = VecDeque::new();
    if b.is_empty() {
        return Ok((items, rep));
    }
    let mut lines = b.split_inclusive(|&c| c == b'\n').enumerate();
    match lines.next() {
        Some((_, h)) if h.strip_suffix(b"\n").unwrap_or(h) == HEADER.as_bytes() => {}
        Some((_, h)) => {
            let h = String::from_utf8_lossy(h.get(..80.min(h.len())).unwrap_or(&[])).to_string();
            return Err(format!(
                "line 1 is not this version's queue header ({h:?}); the file was left as it is"
            ));
        }
        None => {}
    }
    for (i, raw) in lines {
        let n = i + 1;
        let Some(line) = raw.strip_suffix(b"\n") else {
            rep.problems.push(format!(
                "line {n}: torn last line (interrupted write) ignored"
            ));
            rep.rejected += 1;
            break;
        };
        if line.len() > MAX_LINE {
            rep.rejected += 1;
            rep.problems
                .push(format!("line {n}: longer than {MAX_LINE} bytes, skipped"));
            continue;
        }
        match serde_json::from_slice::<Report>(line) {
            Ok(r) if items.len() < max => items.push_back(r),
            Ok(_) => rep.over_max += 1,
            Err(e) => {
                rep.rejected += 1;
                rep.problems.push(format!("line {n}: {e}; skipped"));
            }
        }
    }
    if rep.over_max > 0 {
        rep.problems.push(format!(
            "{} reports beyond QUEUE_MAX={max} dropped (oldest kept)",
            rep.over_max
        ));
    }
    Ok((items, rep))
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc_flags())
        .open(path)
}

fn libc_flags() -> i32 {
    libc::O_NOFOLLOW | libc::O_CLOEXEC
}

/// Write `data` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_flags())
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl Queue {
    /// Open (creating) the queue at `path`. A file of another format is an error (left
    /// as it is); damaged lines are dropped and reported.
    pub fn open(path: &Path, max: usize) -> Result<(Self, LoadReport), String> {
        let cap = (max as u64).saturating_mul(MAX_LINE as u64 + 1) + 4096;
        let mut b = Vec::new();
        match File::open(path) {
            Ok(f) => {
                f.take(cap + 1)
                    .read_to_end(&mut b)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if b.len() as u64 > cap {
                    return Err(format!(
                        "{}: larger than QUEUE_MAX lines can be; left as it is",
                        path.display()
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let (items, rep) = parse(&b, max).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = open_append(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut q = Self {
            path: path.to_path_buf(),
            items,
            max,
            file,
        };
        // A clean file (header, whole lines only) before anything is appended.
        q.rewrite()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((q, rep))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Append `r`, durably. `Ok(false)`: the queue is full and `r` was not taken.
    pub fn push(&mut self, r: &Report) -> io::Result<bool> {
        if self.items.len() >= self.max {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.items.push_back(r.clone());
        Ok(true)
    }

    /// The oldest `n` reports.
    pub fn front(&self, n: usize) -> Vec<Report> {
        self.items.iter().take(n).cloned().collect()
    }

    /// Remove the oldest `n` (a LAPI accepted them), durably.
    pub fn pop(&mut self, n: usize) -> io::Result<()> {
        for _ in 0..n.min(self.items.len()) {
            self.items.pop_front();
        }
        self.rewrite()
    }

    fn rewrite(&mut self) -> io::Result<()> {
        let mut data = Vec::with_capacity(64 + self.items.len() * 200);
        data.extend_from_slice(HEADER.as_bytes());
        data.push(b'\n');
        for r in &self.items {
            data.extend_from_slice(&serde_json::to_vec(r).map_err(io::Error::other)?);
            data.push(b'\n');
        }
        write_atomic(&self.path, &data)?;
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

/// The saved decision-stream cursor; `Ok(None)` when there is none yet.
pub fn load_cursor(path: &Path) -> Result<Option<Cursor>, String> {
    match std::fs::read(path) {
        Ok(b) if b.len() <= 64 => {
            let s = std::str::from_utf8(&b).map_err(|_| format!("{}: not text", path.display()))?;
            s.trim_end_matches('\n')
                .parse::<Cursor>()
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        Ok(_) => Err(format!("{}: longer than a cursor", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn save_cursor(path: &Path, c: Cursor) -> io::Result<()> {
    write_atomic(path, format!("{c}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(i: u8) -> Report {
        Report {
            source: format!("10.0.0.{i}").parse().unwrap(),
            prefix: None,
            protocol: "tcp".into(),
            port: 22,
            scan: "syn".into(),
            mode: "stcp".into(),
            distinct_ports: 9,
            handshake: false,
            time_us: 1,
        }
    }

    #[test]
    fn survives_reopen_and_stays_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("queue");
        let (mut q, r) = Queue::open(&p, 3).unwrap();
        assert_eq!(r, LoadReport::default());
        for i in 1..=3 {
            assert!(q.push(&rep(i)).unwrap());
        }
        assert!(!q.push(&rep(4)).unwrap(), "full: refused, not grown");
        drop(q);
        let (mut q, _) = Queue::open(&p, 3).unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q.front(2), [rep(1), rep(2)]);
        q.pop(2).unwrap();
        drop(q);
        let (q, _) = Queue::open(&p, 3).unwrap();
        assert_eq!(q.front(9), [rep(3)]);
        // Reopened with a smaller bound: the oldest are kept, the rest reported.
        drop(q);
        let (mut q, _) = Queue::open(&p, 3).unwrap();
        q.push(&rep(5)).unwrap();
        drop(q);
        let (q, r) = Queue::open(&p, 1).unwrap();
        assert_eq!((q.len(), r.over_max), (1, 1));
    }

    #[test]
    fn damage_is_reported_not_fatal_and_foreign_files_are_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("queue");
        let good = serde_json::to_string(&rep(1)).unwrap();
        std::fs::write(
            &p,
            format!("{HEADER}\n{good}\n{{\"source\":\"x\"}}\nnot json\n{good}\n{{\"torn"),
        )
        .unwrap();
        let (q, r) = Queue::open(&p, 10).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(r.rejected, 3);
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
        assert!(r.problems[2].contains("torn"), "{:?}", r.problems);
        // Rewritten clean.
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3);
        std::fs::write(&p, "something else\n").unwrap();
        assert!(Queue::open(&p, 10).unwrap_err().contains("header"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "something else\n");
    }

    #[test]
    fn cursors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cursor");
        assert_eq!(load_cursor(&p), Ok(None));
        save_cursor(&p, Cursor { run: 5, seq: 9 }).unwrap();
        assert_eq!(load_cursor(&p), Ok(Some(Cursor { run: 5, seq: 9 })));
        std::fs::write(&p, "5:x\n").unwrap();
        assert!(load_cursor(&p).is_err());
    }
}
