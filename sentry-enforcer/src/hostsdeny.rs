//! The TCP-wrappers deny file (HOSTS_DENY_FILE). Lines are added by appending and removed
//! by rewriting the file in place (see [`remove`] for why not by rename).
//!
//! The file is opened with O_NOFOLLOW (a symlink is refused), must be a regular file owned
//! by root (or by us) and not writable by group or others, and its directory must not be
//! writable by group or others either (otherwise the file could be swapped under us).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Refuse to read deny files larger than this (an attacker-inflated file must not make us
/// allocate without bound).
pub const MAX_FILE: u64 = 32 << 20;

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
    check_dir(path)?;
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
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

fn read_all(f: &mut File, path: &Path) -> io::Result<String> {
    let mut s = String::new();
    f.take(MAX_FILE + 1).read_to_string(&mut s)?;
    if s.len() as u64 > MAX_FILE {
        return Err(err(path, "grew past the size limit while reading"));
    }
    Ok(s)
}

fn check_line(line: &str) -> io::Result<()> {
    if line.is_empty() || line.contains(['\n', '\r', '\0']) {
        return Err(io::Error::other(
            "rendered deny line is empty or contains a line break",
        ));
    }
    Ok(())
}

/// Append `line` unless an identical line is present. Returns whether it was added.
pub fn add(path: &Path, line: &str) -> io::Result<bool> {
    Ok(add_many(path, &[line])? > 0)
}

/// Append every line of `lines` that is not present yet, with one read and one write
/// (used when many blocks are restored at once). Returns how many were added.
pub fn add_many(path: &Path, lines: &[&str]) -> io::Result<usize> {
    for l in lines {
        check_line(l)?;
    }
    let mut f = open(path)?;
    let text = read_all(&mut f, path)?;
    let mut present: std::collections::HashSet<&str> = text.lines().map(str::trim_end).collect();
    let mut out = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        out.push('\n');
    }
    let mut added = 0;
    for l in lines {
        if present.insert(l) {
            out.push_str(l);
            out.push('\n');
            added += 1;
        }
    }
    if added > 0 {
        f.write_all(out.as_bytes())?;
        f.sync_data()?;
    }
    Ok(added)
}

/// Whether an identical line is present.
pub fn contains(path: &Path, line: &str) -> io::Result<bool> {
    let mut f = open(path)?;
    let text = read_all(&mut f, path)?;
    Ok(text.lines().any(|l| l.trim_end() == line))
}

/// Remove every line identical to one of `lines`. Returns how many lines were removed.
///
/// The file is rewritten in place (same inode: write from offset 0, truncate, fsync)
/// rather than replaced by rename. That needs only the file itself to be writable, so
/// the unit can grant `ReadWritePaths=/etc/hosts.deny` instead of all of /etc to a root
/// daemon. A crash between the write and the truncate can only leave extra bytes of the
/// old content after the new content — more deny lines, never fewer — and the next
/// removal rewrites them away.
pub fn remove(path: &Path, lines: &[&str]) -> io::Result<usize> {
    use std::io::{Seek, SeekFrom};
    check_dir(path)?;
    let mut f = open(path)?;
    let text = read_all(&mut f, path)?;
    let mut kept = String::with_capacity(text.len());
    let mut removed = 0;
    for l in text.lines() {
        if lines.contains(&l.trim_end()) {
            removed += 1;
        } else {
            kept.push_str(l);
            kept.push('\n');
        }
    }
    if removed == 0 {
        return Ok(0);
    }
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
    w.seek(SeekFrom::Start(0))?;
    w.write_all(kept.as_bytes())?;
    w.set_len(kept.len() as u64)?;
    w.sync_data()?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn add_dedupe_remove() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        std::fs::write(&p, "# keep me\nALL: 10.0.0.1").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(add(&p, "ALL: 192.0.2.1").unwrap());
        assert!(!add(&p, "ALL: 192.0.2.1").unwrap());
        assert!(add(&p, "ALL: [2001:db8::1]").unwrap());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "# keep me\nALL: 10.0.0.1\nALL: 192.0.2.1\nALL: [2001:db8::1]\n"
        );
        assert!(contains(&p, "ALL: 192.0.2.1").unwrap());
        assert_eq!(remove(&p, &["ALL: 192.0.2.1"]).unwrap(), 1);
        assert_eq!(remove(&p, &["ALL: 192.0.2.1"]).unwrap(), 0);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "# keep me\nALL: 10.0.0.1\nALL: [2001:db8::1]\n"
        );
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
    }

    #[test]
    fn remove_keeps_the_inode_so_a_single_file_bind_mount_works() {
        let d = dir();
        let p = d.path().join("hosts.deny");
        std::fs::write(&p, "ALL: 192.0.2.1\nALL: 192.0.2.2\nALL: 192.0.2.3\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let before = std::fs::metadata(&p).unwrap().ino();
        assert_eq!(
            remove(&p, &["ALL: 192.0.2.1", "ALL: 192.0.2.3"]).unwrap(),
            2
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "ALL: 192.0.2.2\n");
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), before);
        // No temporary files are left in (or needed from) the directory.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn add_many_once() {
        let d = dir();
        let p = d.path().join("deny");
        std::fs::write(&p, "ALL: 1.1.1.1").unwrap();
        assert_eq!(
            add_many(&p, &["ALL: 1.1.1.1", "ALL: 2.2.2.2", "ALL: 2.2.2.2"]).unwrap(),
            1
        );
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "ALL: 1.1.1.1\nALL: 2.2.2.2\n"
        );
        assert_eq!(add_many(&p, &[]).unwrap(), 0);
    }

    #[test]
    fn creates_missing_file() {
        let d = dir();
        let p = d.path().join("deny");
        assert!(add(&p, "ALL: 192.0.2.9").unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "ALL: 192.0.2.9\n");
    }

    #[test]
    fn refuses_symlink_and_writable() {
        let d = dir();
        let target = d.path().join("real");
        std::fs::write(&target, "").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = add(&link, "ALL: 192.0.2.1").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "");

        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = add(&target, "ALL: 192.0.2.1").unwrap_err();
        assert!(e.to_string().contains("writable"), "{e}");

        let wd = dir();
        std::fs::set_permissions(wd.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = add(&wd.path().join("x"), "ALL: 192.0.2.1").unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn refuses_line_breaks() {
        let d = dir();
        let p = d.path().join("deny");
        assert!(add(&p, "ALL: 1.2.3.4\nALL: ALL").is_err());
        assert!(add(&p, "").is_err());
    }
}
