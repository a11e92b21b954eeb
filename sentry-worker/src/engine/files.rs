//! PortSentry's text files: HISTORY_FILE (one line per block, appended) and BLOCKED_FILE
//! (the active blocks, appended on block and rewritten atomically when one ends).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::Engine;
use crate::control::metrics::ErrorKind;
use crate::store::{write_atomic, BlockRecord};

impl Engine {
    pub(super) fn append_text(&mut self, path: Option<PathBuf>, line: &str) {
        let Some(path) = path else { return };
        if let Err(e) = append_line(&path, line) {
            self.error(
                ErrorKind::Persist,
                format!("cannot write {}: {e}", path.display()),
            );
        }
    }

    pub(super) fn rewrite_blocked_file(&mut self) {
        let Some(path) = self.cfg.blocked_file.clone() else {
            return;
        };
        let mut recs: Vec<&BlockRecord> = self.blocks.values().collect();
        recs.sort_by_key(|b| (b.since_ms, b.addr));
        let mut text = String::new();
        for b in recs {
            text.push_str(&sentry_proto::logfmt::history_line(
                b.since_ms / 1000,
                b.addr,
                b.port,
                b.protocol,
            ));
            text.push('\n');
        }
        // In a directory the worker cannot write (PortSentry's /var/lib/portsentry, which
        // the root parent gives the file but not the directory): in place, in the file
        // the parent gave it.
        let r = write_atomic(&path, text.as_bytes(), 0o600).or_else(|e| {
            if e.kind() != std::io::ErrorKind::PermissionDenied {
                return Err(e);
            }
            rewrite_in_place(&path, text.as_bytes())
        });
        if let Err(e) = r {
            self.error(
                ErrorKind::Persist,
                format!("cannot write {}: {e}", path.display()),
            );
        }
    }
}

/// Replace the contents of an existing file of ours, refusing symlinks.
fn rewrite_in_place(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    f.write_all(data)?;
    f.sync_data()
}

/// Append one line, refusing symlinks and files writable by group or others.
fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() || md.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(
            "not a regular file, or writable by group or others",
        ));
    }
    let mut s = String::with_capacity(line.len() + 1);
    s.push_str(line);
    s.push('\n');
    f.write_all(s.as_bytes())
}
