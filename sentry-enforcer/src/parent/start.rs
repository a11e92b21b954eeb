//! Start-up as root, before anything untrusted runs: accounts, directories (the worker's
//! given to it), the two listening sockets, and the kernel's sockets.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Group, Uid, User};

use super::args::Args;

/// The users and groups the parent needs, looked up before anything is bound.
#[derive(Debug)]
pub struct Accounts {
    pub sensor: (Uid, Gid),
    pub worker: (Uid, Gid),
    pub control_gid: Option<Gid>,
}

fn user(name: &str, what: &str) -> Result<(Uid, Gid), String> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok((u.uid, u.gid)),
        Ok(None) => Err(format!("{what} {name} does not exist")),
        Err(e) => Err(format!("{what} {name}: {e}")),
    }
}

pub fn accounts(args: &Args, cfg: &policy::Config) -> Result<Accounts, String> {
    let sensor = user(&args.sensor_user, "sensor user")?;
    let hint = "create it with `useradd --system --no-create-home --shell /usr/sbin/nologin sentry-worker` (or pass --worker-user)";
    let worker = user(&args.worker_user, "worker user").map_err(|e| format!("{e}: {hint}"))?;
    if worker.0.is_root() {
        return Err(format!(
            "worker user {} is root: the worker must run unprivileged; {hint}",
            args.worker_user
        ));
    }
    let control_gid = match &cfg.control_group {
        Some(g) => match Group::from_name(g) {
            Ok(Some(g)) => Some(g.gid),
            Ok(None) => return Err(format!("CONTROL_GROUP {g} does not exist")),
            Err(e) => return Err(format!("CONTROL_GROUP {g}: {e}")),
        },
        None => None,
    };
    Ok(Accounts {
        sensor,
        worker,
        control_gid,
    })
}

/// The runtime directory: created 0755 when missing; it must be root's and not writable
/// by group or others.
pub fn runtime_dir(dir: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| err(&e))?;
        std::fs::set_permissions(dir, PermissionsExt::from_mode(0o755)).map_err(|e| err(&e))?;
    }
    let md = std::fs::symlink_metadata(dir).map_err(|e| err(&e))?;
    if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(err(&format!(
            "must be a directory owned by root and not writable by group or others (mode {:o}, uid {})",
            md.mode() & 0o7777,
            md.uid()
        )));
    }
    Ok(())
}

/// Create `dir` (missing parents 0755, itself `mode`, root's) unless it exists, only
/// below a root-owned directory no one else can write. Returns whether it was created.
fn ensure_dir(dir: &Path, mode: u32) -> Result<bool, String> {
    match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() => return Ok(false),
        Ok(_) => return Err(format!("{}: exists and is not a directory", dir.display())),
        Err(_) if std::fs::symlink_metadata(dir).is_ok() => {
            return Err(format!("{}: is a dangling symbolic link", dir.display()))
        }
        Err(_) => {}
    }
    policy::creatable(dir)
        .map_err(|why| format!("{}: will not be created: {why}", dir.display()))?;
    let mut missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| std::fs::symlink_metadata(p).is_err())
        .collect();
    missing.reverse();
    for (i, m) in missing.iter().enumerate() {
        let want = if i + 1 == missing.len() { mode } else { 0o755 };
        std::fs::DirBuilder::new()
            .mode(want)
            .create(m)
            .map_err(|e| format!("{}: mkdir: {e}", m.display()))?;
        nix::unistd::chown(*m, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
            .map_err(|e| format!("{}: chown: {e}", m.display()))?;
        std::fs::set_permissions(m, PermissionsExt::from_mode(want))
            .map_err(|e| format!("{}: chmod: {e}", m.display()))?;
    }
    Ok(true)
}

/// Give `fd` (opened without following a symbolic link) to the worker, when it is a
/// directory, or a regular file with one link (a hard link the worker made to another
/// file is never given away).
fn give(fd: &OwnedFd, to: (Uid, Gid), what: &Path) -> Result<(), String> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| format!("{}: {e}", what.display()))?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFDIR || (kind == libc::S_IFREG && st.st_nlink == 1) {
        nix::unistd::fchown(fd.as_fd(), Some(to.0), Some(to.1))
            .map_err(|e| format!("{}: chown: {e}", what.display()))?;
    }
    Ok(())
}

fn open_nofollow(dir: Option<&OwnedFd>, p: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    match dir {
        Some(d) => nix::fcntl::openat(d, p, flags, Mode::empty()),
        None => nix::fcntl::open(p, flags, Mode::empty()),
    }
}

/// The state directory (0700) and the configuration's log and record directories,
/// created when missing; the worker's files given to the worker: the state directory
/// and the regular files in it, each directory created now or named `sentry` (the
/// shipped LogsDirectory=), and AUDIT_LOG, HISTORY_FILE and BLOCKED_FILE (created empty
/// when missing). Nothing is followed through a symbolic link. Returns notes for the log.
pub fn worker_files(
    cfg: &policy::Config,
    state: &Path,
    to: (Uid, Gid),
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let mut dirs = vec![(state.to_path_buf(), 0o700)];
    dirs.extend(cfg.created_dirs());
    // Directories are given last: once one is the worker's (0700), root without
    // CAP_DAC_OVERRIDE can no longer look inside it.
    let mut give_dirs = Vec::new();
    for (i, (d, mode)) in dirs.iter().enumerate() {
        let made = ensure_dir(d, *mode)?;
        if made {
            notes.push(format!("created {} (mode {mode:o})", d.display()));
        }
        // Already the worker's (an earlier start gave it): nothing to do, and nothing root
        // without CAP_DAC_OVERRIDE could open.
        let mine = std::fs::symlink_metadata(d).is_ok_and(|m| m.uid() == to.0.as_raw());
        if !mine && (i == 0 || made || d.file_name().is_some_and(|n| n == "sentry")) {
            let fd = open_nofollow(None, d, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(|e| format!("{}: {e}", d.display()))?;
            give_dirs.push((fd, d.clone()));
        }
    }
    // The files an earlier, single-process enforcer left as root's (a state directory
    // that is already the worker's holds only its files).
    let root_owned = std::fs::symlink_metadata(state).is_ok_and(|m| m.uid() == 0);
    if root_owned {
        let sd = open_nofollow(None, state, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| format!("{}: {e}", state.display()))?;
        for e in std::fs::read_dir(state).map_err(|e| format!("{}: {e}", state.display()))? {
            let name = PathBuf::from(e.map_err(|e| e.to_string())?.file_name());
            if let Ok(fd) = open_nofollow(Some(&sd), &name, OFlag::O_RDONLY) {
                give(&fd, to, &state.join(&name))?;
            }
        }
    }
    let files = [
        (Some(&cfg.audit_log), 0o640),
        (cfg.history_file.as_ref(), 0o600),
        (cfg.blocked_file.as_ref(), 0o600),
    ];
    for (f, mode) in files.into_iter().filter_map(|(f, m)| Some((f?, m))) {
        let opened = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(f);
        match opened {
            Ok(file) => give(&OwnedFd::from(file), to, f)?,
            // Inside a directory that is already the worker's: the worker made it.
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
            Err(e) => notes.push(format!("{}: not given to the worker: {e}", f.display())),
        }
    }
    for (fd, d) in give_dirs {
        give(&fd, to, &d)?;
    }
    Ok(notes)
}

/// Remove a stale socket left by a previous run; refuse anything that is not a socket,
/// and refuse to start while another enforcer answers on it.
fn clear_stale_socket(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(md) if !md.file_type().is_socket() => Err(format!(
            "{}: exists and is not a socket; refusing to remove it",
            path.display()
        )),
        Ok(_) if UnixStream::connect(path).is_ok() => Err(format!(
            "{}: another enforcer is running (the socket accepts connections)",
            path.display()
        )),
        Ok(_) => std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// Bind a listening socket with `mode` and group `gid` (owner root). Under the parent's
/// umask 077 the file never exists with a wider mode than asked.
pub fn bind_socket(path: &Path, gid: Gid, mode: u32) -> Result<UnixListener, String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    clear_stale_socket(path)?;
    let l = UnixListener::bind(path).map_err(|e| err(&format!("bind: {e}")))?;
    let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(0)),
        Some(gid),
        flags,
    )
    .map_err(|e| err(&format!("chown: {e}")))?;
    std::fs::set_permissions(path, PermissionsExt::from_mode(mode))
        .map_err(|e| err(&format!("chmod: {e}")))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_sockets() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sock");
        assert!(clear_stale_socket(&p).is_ok());
        std::fs::write(&p, "").unwrap();
        assert!(clear_stale_socket(&p).unwrap_err().contains("not a socket"));
        std::fs::remove_file(&p).unwrap();
        let l = UnixListener::bind(&p).unwrap();
        assert!(clear_stale_socket(&p)
            .unwrap_err()
            .contains("another enforcer"));
        drop(l);
        assert!(clear_stale_socket(&p).is_ok() && !p.exists());
    }

    #[test]
    fn files_given_to_the_worker() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED (needs root): files_given_to_the_worker");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let conf = format!(
            "AUDIT_LOG=\"{0}/log/sentry/audit.jsonl\"\nHISTORY_FILE=\"{0}/state/h\"\nBLOCKED_FILE=\"{0}/rec/b\"\n",
            d.path().display()
        );
        let cfg = policy::Config::parse(&conf, Path::new("t.conf")).unwrap();
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("journal"), "x").unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        std::fs::hard_link(d.path().join("secret"), state.join("linked")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), state.join("sym")).unwrap();
        let to = (Uid::from_raw(65534), Gid::from_raw(65534));
        let notes = worker_files(&cfg, &state, to).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        let uid = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        for p in [
            &state,
            &state.join("journal"),
            &state.join("h"),
            &d.path().join("rec"),
            &d.path().join("rec/b"),
        ] {
            assert_eq!(uid(p), 65534, "{}", p.display());
        }
        let log = d.path().join("log/sentry");
        assert_eq!((uid(&log), uid(&log.join("audit.jsonl"))), (65534, 65534));
        assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o7777, 0o750);
        // Never through a link: the hard link's and the symlink's target stay root's.
        assert_eq!(
            (uid(&d.path().join("secret")), uid(&state.join("sym"))),
            (0, 0)
        );
        assert_eq!(uid(&d.path().join("log")), 0);
    }
}
