//! The enforcer's own directories: the state directory (0700) and those of AUDIT_LOG
//! (0750), HISTORY_FILE and BLOCKED_FILE (0700), created at start when missing, owned by
//! root, so that a fresh host (or Debian's unchanged portsentry.conf) needs no manual
//! `mkdir`. An existing directory is never changed.
//!
//! A directory is only created below an existing one that is owned by root and not
//! writable by group or others ([`policy::creatable`]); otherwise another user could
//! have placed a directory or a symlink there first. Each component is made with
//! mkdir(2), which never follows a symlink in its place, and checked afterwards.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Create `dir` (and missing parents, 0755) with `mode`, owned by root. Returns whether
/// it was created.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<bool, String> {
    // An existing directory (also through a symlink an admin made) is used as it is;
    // the state directory's own checks are the store's.
    match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() => return Ok(false),
        Ok(_) => return Err(format!("{}: exists and is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(dir).is_ok() {
                return Err(format!("{}: is a dangling symbolic link", dir.display()));
            }
        }
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    policy::creatable(dir).map_err(|why| {
        format!(
            "{}: does not exist, and will not be created: {why}",
            dir.display()
        )
    })?;
    // The missing components, outermost first.
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut p = dir;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q,
            _ => break,
        }
    }
    missing.reverse();
    let root = nix::unistd::geteuid().is_root();
    for (i, m) in missing.iter().enumerate() {
        let want = if i + 1 == missing.len() { mode } else { 0o755 };
        std::fs::DirBuilder::new()
            .mode(want)
            .create(m)
            .map_err(|e| format!("{}: mkdir: {e}", m.display()))?;
        let md = std::fs::symlink_metadata(m).map_err(|e| format!("{}: {e}", m.display()))?;
        if !md.is_dir() {
            return Err(format!("{}: not a directory after mkdir", m.display()));
        }
        if root && (md.uid() != 0 || md.gid() != 0) {
            nix::unistd::chown(
                m,
                Some(nix::unistd::Uid::from_raw(0)),
                Some(nix::unistd::Gid::from_raw(0)),
            )
            .map_err(|e| format!("{}: chown: {e}", m.display()))?;
        }
        // Explicitly: the umask must not decide.
        std::fs::set_permissions(m, std::fs::Permissions::from_mode(want))
            .map_err(|e| format!("{}: chmod: {e}", m.display()))?;
    }
    Ok(true)
}

/// Create the state directory and the configuration's log/record directories when
/// missing. Returns one line per directory created, for the log.
pub fn prepare(cfg: &policy::Config, state_dir: &Path) -> Result<Vec<String>, String> {
    let mut made = Vec::new();
    let mut dirs = vec![(state_dir.to_path_buf(), 0o700)];
    dirs.extend(cfg.created_dirs());
    for (d, mode) in dirs {
        if ensure_dir(&d, mode)? {
            made.push(format!("created {} (mode {mode:o})", d.display()));
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_with_modes_and_leaves_existing_alone() {
        let d = tempfile::tempdir().unwrap();
        let leaf = d.path().join("var/log/sentry");
        assert!(ensure_dir(&leaf, 0o750).unwrap());
        let md = std::fs::metadata(&leaf).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o750);
        assert_eq!(
            std::fs::metadata(d.path().join("var/log")).unwrap().mode() & 0o7777,
            0o755
        );
        if nix::unistd::geteuid().is_root() {
            assert_eq!((md.uid(), md.gid()), (0, 0));
        }
        // Existing: untouched, even with another mode.
        std::fs::set_permissions(&leaf, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!ensure_dir(&leaf, 0o750).unwrap());
        assert_eq!(std::fs::metadata(&leaf).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn refuses_unsafe_parents_and_non_directories() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_dir(&open.join("a/b"), 0o700).unwrap_err();
        assert!(e.contains("writable by group or others"), "{e}");
        assert!(!open.join("a").exists());
        let f = d.path().join("file");
        std::fs::write(&f, "").unwrap();
        assert!(ensure_dir(&f, 0o700)
            .unwrap_err()
            .contains("not a directory"));
        assert!(ensure_dir(&f.join("x"), 0o700).is_err());
        // A dangling symlink in the place of the directory is not followed.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("elsewhere"), &link).unwrap();
        assert!(ensure_dir(&link, 0o700).unwrap_err().contains("dangling"));
        assert!(!d.path().join("elsewhere").exists());
        // One to a directory is used as it is.
        let good = d.path().join("good");
        std::os::unix::fs::symlink(d.path(), &good).unwrap();
        assert!(!ensure_dir(&good, 0o700).unwrap());
    }

    #[test]
    fn prepare_makes_state_and_log_dirs() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("c.conf");
        std::fs::write(
            &conf,
            format!(
                "AUDIT_LOG=\"{0}/log/audit.jsonl\"\nHISTORY_FILE=\"{0}/lib/portsentry/h\"\nBLOCKED_FILE=\"{0}/lib/portsentry/b\"\n",
                d.path().display()
            ),
        )
        .unwrap();
        let cfg = policy::Config::load(&conf).unwrap();
        let made = prepare(&cfg, &d.path().join("state")).unwrap();
        assert_eq!(made.len(), 3, "{made:?}");
        let mode = |p: &str| std::fs::metadata(d.path().join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("state"), 0o700);
        assert_eq!(mode("log"), 0o750);
        assert_eq!(mode("lib/portsentry"), 0o700);
        assert!(prepare(&cfg, &d.path().join("state")).unwrap().is_empty());
    }
}
