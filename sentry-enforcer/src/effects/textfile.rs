//! METRICS_DIR's textfile, written for the worker (which cannot write into a root-owned
//! collector directory): the bytes of the worker's rendered file, copied as they are,
//! never parsed, bounded, written atomically (temporary file, then rename), mode 0644 for
//! node_exporter.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use sentry_privsep::MAX_TEXTFILE;

/// The file's name in METRICS_DIR.
pub const NAME: &str = "sentry-enforcer.prom";

/// Copy `from` (read from its start) to `dir/NAME`.
pub fn publish(dir: &Path, from: OwnedFd) -> io::Result<()> {
    let md = std::fs::metadata(dir)?;
    if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "must be a directory owned by root and not writable by group or others (owner uid {}, mode {:o})",
            md.uid(),
            md.mode() & 0o7777
        )));
    }
    let mut text = Vec::new();
    File::from(from)
        .take(MAX_TEXTFILE + 1)
        .read_to_end(&mut text)?;
    if text.len() as u64 > MAX_TEXTFILE {
        return Err(io::Error::other(format!(
            "the worker's textfile is larger than {MAX_TEXTFILE} bytes; not written"
        )));
    }
    let tmp = dir.join(format!(".{NAME}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    // The parent's umask is 077; node_exporter runs as its own user.
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    f.write_all(&text)?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_bounded_bytes_atomically_and_refuses_an_open_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let src = d.path().join("src");
        std::fs::write(&src, "x 1\n").unwrap();
        let fd = OwnedFd::from(File::open(&src).unwrap());
        if nix::unistd::geteuid().is_root() {
            publish(d.path(), fd).unwrap();
            let out = d.path().join(NAME);
            assert_eq!(std::fs::read_to_string(&out).unwrap(), "x 1\n");
            assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o644);
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            let fd = OwnedFd::from(File::open(&src).unwrap());
            assert!(publish(d.path(), fd).is_err());
        } else {
            // Not root-owned: refused before anything is read.
            assert!(publish(d.path(), fd).is_err());
        }
    }
}
