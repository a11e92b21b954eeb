//! `sentryctl ignore add|remove|list`: edits IGNORE_FILE.
//!
//! The file stays the administrator's: every line sentryctl did not add is kept byte for
//! byte (comments, blank lines, CRLF, spacing), a line sentryctl adds carries a marker
//! comment (`192.0.2.9 # added by sentryctl 2026-12-07`), and `remove` takes away only
//! lines with that marker or lines whose entry is exactly what was asked. Entries are
//! checked with the policy crate's own ignore-list parser (the one the enforcer loads the
//! file with), and the whole edited text must load before it is written: sentryctl never
//! writes a file the enforcer would refuse. The file is replaced atomically (a temporary
//! file in the same directory, same owner and mode, then rename) under an exclusive lock
//! on its directory.
//!
//! The text functions ([`add`], [`remove`], [`list`]) are pure and fuzzed.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use policy::IgnoreList;

/// The comment that marks a line sentryctl added.
pub const MARKER: &str = "added by sentryctl";

/// Largest IGNORE_FILE read (the policy crate's bound on every file it reads).
pub const MAX_SIZE: u64 = policy::MAX_FILE_SIZE;

/// The outcome of an edit of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The new text (the old one when nothing changed).
    pub text: String,
    /// Lines added or removed.
    pub changed: usize,
    /// What happened, for the administrator.
    pub note: String,
}

/// One entry of the file, for `list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    /// 1-based, as the enforcer's error messages count.
    pub line: usize,
    pub entry: String,
    /// The line carries sentryctl's marker.
    pub added_by_sentryctl: bool,
}

/// The lines of `text`, each with its terminator (the last one may have none).
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

/// The entry of a line: what precedes `#`, trimmed (`None` for blank and comment lines).
/// The same split as the policy parser's.
pub fn entry_of(line: &str) -> Option<&str> {
    let e = line.split_once('#').map_or(line, |(l, _)| l).trim();
    (!e.is_empty()).then_some(e)
}

/// The line carries sentryctl's marker: its comment starts with [`MARKER`].
pub fn is_ours(line: &str) -> bool {
    line.split_once('#')
        .is_some_and(|(_, c)| c.trim_start().starts_with(MARKER))
}

/// Check one entry as given on the command line (`ADDR`, `ADDR/LEN`, `ADDR/MASK`) with
/// the policy parser, and return it as a one-entry list.
pub fn validate(entry: &str) -> Result<IgnoreList, String> {
    if entry.is_empty() {
        return Err("empty entry".into());
    }
    if let Some(c) = entry
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '#')
    {
        return Err(format!(
            "{entry:?}: {c:?} is not allowed in an entry (one address or network, no comment)"
        ));
    }
    IgnoreList::parse(entry, Path::new("entry")).map_err(|e| {
        // "entry:1: 'x' is not an IPv4 or IPv6 address" -> "'x' is not ..."
        let m = e.to_string();
        m.strip_prefix("entry:1: ").map(str::to_string).unwrap_or(m)
    })
}

/// The merged ranges of a list: two lists with the same ranges cover the same addresses.
fn ranges(l: &IgnoreList) -> (Vec<String>, Vec<String>) {
    (
        l.ranges_v4().map(|(a, b)| format!("{a}-{b}")).collect(),
        l.ranges_v6().map(|(a, b)| format!("{a}-{b}")).collect(),
    )
}

fn parse_one(entry: &str) -> Option<IgnoreList> {
    IgnoreList::parse(entry, Path::new("entry")).ok()
}

/// Does the list `outer` cover every address of `inner`? (Outer's ranges are merged and
/// disjoint, so each of inner's ranges must lie inside one of them.)
fn covers(outer: &IgnoreList, inner: &IgnoreList) -> bool {
    inner
        .ranges_v4()
        .all(|(lo, hi)| outer.ranges_v4().any(|(a, b)| a <= lo && hi <= b))
        && inner
            .ranges_v6()
            .all(|(lo, hi)| outer.ranges_v6().any(|(a, b)| a <= lo && hi <= b))
}

/// The whole text must load as the enforcer loads it.
fn load(text: &str, path: &Path) -> Result<IgnoreList, String> {
    IgnoreList::parse(text, path).map_err(|e| e.to_string())
}

/// The first line whose own entry covers all of `want`.
fn covering_line<'a>(text: &'a str, want: &IgnoreList) -> Option<(usize, &'a str)> {
    lines(text).find_map(|(n, l)| {
        let e = entry_of(l)?;
        parse_one(e).filter(|one| covers(one, want)).map(|_| (n, e))
    })
}

/// Add `entry` with the marker and `date` (YYYY-MM-DD). Nothing changes when the list
/// already covers it.
pub fn add(text: &str, entry: &str, date: &str, path: &Path) -> Result<Edit, String> {
    let want = validate(entry)?;
    let current = load(text, path).map_err(|e| format!("{e} (fix the file first)"))?;
    if covers(&current, &want) {
        let where_ = covering_line(text, &want)
            .map(|(n, e)| format!(" (line {n}: {e})"))
            .unwrap_or_default();
        return Ok(Edit {
            text: text.to_string(),
            changed: 0,
            note: format!("{entry} is already on the ignore list{where_}"),
        });
    }
    let mut out = String::with_capacity(text.len() + entry.len() + 40);
    out.push_str(text);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{entry} # {MARKER} {date}\n"));
    load(&out, path)?;
    Ok(Edit {
        text: out,
        changed: 1,
        note: format!("{entry} added to {}", path.display()),
    })
}

/// Remove the lines that name `entry`: those sentryctl added for the same network, and
/// those whose entry is exactly `entry`. Any other line is kept, also one that covers
/// `entry` (the note says which; `Err` when nothing could be removed for that reason).
pub fn remove(text: &str, entry: &str, path: &Path) -> Result<Edit, String> {
    let want = validate(entry)?;
    load(text, path).map_err(|e| format!("{e} (fix the file first)"))?;
    let same = |e: &str| parse_one(e).is_some_and(|l| ranges(&l) == ranges(&want));
    let mut out = String::with_capacity(text.len());
    let mut removed = Vec::new();
    for (n, l) in lines(text) {
        match entry_of(l) {
            Some(e) if e == entry || (is_ours(l) && same(e)) => removed.push(n),
            _ => out.push_str(l),
        }
    }
    let left = load(&out, path)?;
    let still = covers(&left, &want).then(|| covering_line(&out, &want));
    if removed.is_empty() {
        return match still {
            Some(Some((n, e))) => Err(format!(
                "{entry} is covered by line {n} ({e}), which sentryctl did not add and which \
                 is not exactly {entry}; edit {} by hand",
                path.display()
            )),
            Some(None) => Err(format!(
                "{entry} is covered by several lines of {}, none of them exactly {entry}; edit \
                 it by hand",
                path.display()
            )),
            None => Ok(Edit {
                text: text.to_string(),
                changed: 0,
                note: format!("{entry} is not on the ignore list"),
            }),
        };
    }
    let lines_s = removed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut note = format!(
        "{entry} removed from {} (line{} {lines_s})",
        path.display(),
        if removed.len() == 1 { "" } else { "s" }
    );
    match still {
        Some(Some((n, e))) => note.push_str(&format!("; still covered by line {n} ({e})")),
        Some(None) => note.push_str("; still covered by other lines"),
        None => {}
    }
    Ok(Edit {
        text: out,
        changed: removed.len(),
        note,
    })
}

/// The entries of the file, in order (what the enforcer merges into its list).
pub fn list(text: &str) -> Vec<Listed> {
    lines(text)
        .filter_map(|(n, l)| {
            entry_of(l).map(|e| Listed {
                line: n,
                entry: e.to_string(),
                added_by_sentryctl: is_ours(l),
            })
        })
        .collect()
}

/// Today's date in UTC, for the marker.
pub fn today() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    sentry_proto::logfmt::format_utc(ms)[..10].to_string()
}

/// Read IGNORE_FILE (`Ok(None)` when it does not exist).
pub fn read(path: &Path) -> Result<Option<String>, String> {
    use policy::ReadError;
    let b = match policy::read_bounded(path, MAX_SIZE) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(ReadError::Io(e)) => return Err(format!("{}: {e}", path.display())),
        Err(ReadError::NotRegular) => {
            return Err(format!("{}: not a regular file", path.display()))
        }
        Err(ReadError::TooLarge(max)) => {
            return Err(format!("{}: larger than {max} bytes", path.display()))
        }
    };
    String::from_utf8(b)
        .map(Some)
        .map_err(|_| format!("{}: not valid UTF-8 text", path.display()))
}

/// The file to edit: IGNORE_FILE itself, or what it links to (a link is kept, its
/// target is edited).
fn target(path: &Path) -> Result<PathBuf, String> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = path
                .file_name()
                .ok_or_else(|| format!("{}: not a file name", path.display()))?;
            Ok(dir.join(name))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Edit IGNORE_FILE at `path` with `f`, under an exclusive lock on its directory, and
/// replace it atomically when the text changed. A file that does not exist is edited as
/// empty and created with mode 0644.
pub fn edit_file(
    path: &Path,
    f: impl FnOnce(&str) -> Result<Edit, String>,
) -> Result<Edit, String> {
    let real = target(path)?;
    let dir = real.parent().unwrap_or(Path::new("/")).to_path_buf();
    let dir_file = std::fs::File::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _lock = nix::fcntl::Flock::lock(dir_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("{}: cannot lock: {e}", dir.display()))?;
    let old = read(&real)?;
    let edit = f(old.as_deref().unwrap_or(""))?;
    if edit.changed == 0 {
        return Ok(edit);
    }
    let (uid, gid, mode) = match std::fs::metadata(&real) {
        Ok(m) => (Some(m.uid()), Some(m.gid()), m.mode() & 0o7777),
        Err(_) => (None, None, 0o644),
    };
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.sentryctl-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut t = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&t, uid, gid)?;
        }
        t.set_permissions(std::fs::Permissions::from_mode(mode))?;
        t.write_all(edit.text.as_bytes())?;
        t.sync_all()?;
        drop(t);
        std::fs::rename(&tmp, &real)?;
        // The rename itself reaches the disk with the directory.
        std::fs::File::open(&dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: cannot write: {e}", real.display())
    })?;
    Ok(edit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/etc/sentry/sentry.ignore";

    fn p() -> &'static Path {
        Path::new(P)
    }

    const ADMIN: &str =
        "# my hosts\r\n127.0.0.0/8\n\n  10.0.0.0/255.0.0.0   # lab\n2001:db8:1::/48";

    #[test]
    fn add_appends_one_marked_line_and_keeps_the_rest() {
        let e = add(ADMIN, "192.0.2.9", "2026-12-07", p()).unwrap();
        assert_eq!(e.changed, 1);
        assert_eq!(
            e.text,
            format!("{ADMIN}\n192.0.2.9 # added by sentryctl 2026-12-07\n")
        );
        // Already covered: by itself, by a wider network of the admin's.
        let again = add(&e.text, "192.0.2.9", "2026-12-08", p()).unwrap();
        assert_eq!((again.changed, &again.text), (0, &e.text));
        assert!(again.note.contains("line 6"), "{}", again.note);
        let inside = add(ADMIN, "10.1.2.3", "2026-12-07", p()).unwrap();
        assert_eq!(inside.changed, 0);
        assert!(
            inside.note.contains("(line 4: 10.0.0.0/255.0.0.0)"),
            "{}",
            inside.note
        );
        let net = add(ADMIN, "2001:db8:1:2::/64", "d", p()).unwrap();
        assert_eq!(net.changed, 0);
        // A network that only partly overlaps is added.
        assert_eq!(add(ADMIN, "2001:db8::/32", "d", p()).unwrap().changed, 1);
        assert_eq!(
            add("", "::2", "d", p()).unwrap().text,
            "::2 # added by sentryctl d\n"
        );
    }

    #[test]
    fn bad_entries_and_broken_files_are_refused() {
        for bad in [
            "",
            "example.com",
            "192.0.2.1/33",
            "192.0.2.1 # x",
            "a b",
            "10.0.0.0/255.0.255.0",
            "fe80::1%eth0",
            "1.2.3.4\n5.6.7.8",
        ] {
            assert!(add(ADMIN, bad, "d", p()).is_err(), "{bad:?}");
            assert!(remove(ADMIN, bad, p()).is_err(), "{bad:?}");
        }
        let e = add(ADMIN, "192.0.2.300", "d", p()).unwrap_err();
        assert_eq!(e, "'192.0.2.300' is not an IPv4 or IPv6 address");
        let e = add("bogus\n", "192.0.2.1", "d", p()).unwrap_err();
        assert!(
            e.contains(&format!("{P}:1:")) && e.contains("fix the file first"),
            "{e}"
        );
    }

    #[test]
    fn remove_takes_only_marked_or_exact_lines() {
        let added = add(ADMIN, "192.0.2.9", "2026-12-07", p()).unwrap().text;
        // Marked line, named as another spelling of the same network.
        let r = remove(&added, "192.0.2.9/32", p()).unwrap();
        assert_eq!(r.changed, 1);
        assert_eq!(r.text, format!("{ADMIN}\n"));
        // The admin's own line, named exactly.
        let r = remove(ADMIN, "127.0.0.0/8", p()).unwrap();
        assert_eq!(
            r.text,
            "# my hosts\r\n\n  10.0.0.0/255.0.0.0   # lab\n2001:db8:1::/48"
        );
        // The admin's line in another spelling is not removed; the error says by what.
        let e = remove(ADMIN, "10.0.0.0/8", p()).unwrap_err();
        assert!(
            e.contains("line 4 (10.0.0.0/255.0.0.0)") && e.contains("by hand"),
            "{e}"
        );
        let e = remove(ADMIN, "10.9.9.9", p()).unwrap_err();
        assert!(e.contains("line 4"), "{e}");
        // Not on the list: nothing to do.
        let r = remove(ADMIN, "198.51.100.1", p()).unwrap();
        assert_eq!((r.changed, r.text.as_str()), (0, ADMIN));
        // Removed, but still covered by a wider entry: said.
        let t = "10.0.0.0/8\n10.1.1.1 # added by sentryctl x\n";
        let r = remove(t, "10.1.1.1", p()).unwrap();
        assert_eq!(r.text, "10.0.0.0/8\n");
        assert!(
            r.note.contains("still covered by line 1 (10.0.0.0/8)"),
            "{}",
            r.note
        );
    }

    #[test]
    fn list_names_lines_and_markers() {
        let t = add(ADMIN, "192.0.2.9", "d", p()).unwrap().text;
        let l = list(&t);
        let got: Vec<(usize, &str, bool)> = l
            .iter()
            .map(|x| (x.line, x.entry.as_str(), x.added_by_sentryctl))
            .collect();
        assert_eq!(
            got,
            [
                (2, "127.0.0.0/8", false),
                (4, "10.0.0.0/255.0.0.0", false),
                (5, "2001:db8:1::/48", false),
                (6, "192.0.2.9", true)
            ]
        );
        assert!(!is_ours("1.2.3.4 # not added by sentryctl"));
        assert!(is_ours("1.2.3.4 #added by sentryctl"));
    }

    #[test]
    fn the_file_is_replaced_with_its_owner_and_mode() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sentry.ignore");
        std::fs::write(&f, ADMIN).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        // Edited through a link: the link stays, its target changes.
        let link = d.path().join("link.ignore");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = edit_file(&link, |t| add(t, "192.0.2.9", "d", &link)).unwrap();
        assert_eq!(e.changed, 1);
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), e.text);
        let md = std::fs::metadata(&f).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|x| x.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        // A refused edit writes nothing.
        let before = std::fs::read(&f).unwrap();
        assert!(edit_file(&f, |t| add(t, "nonsense", "d", &f)).is_err());
        assert_eq!(std::fs::read(&f).unwrap(), before);
        // A missing file is created 0644.
        let n = d.path().join("new.ignore");
        edit_file(&n, |t| add(t, "::1", "d", &n)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&n).unwrap(),
            "::1 # added by sentryctl d\n"
        );
        assert_eq!(std::fs::metadata(&n).unwrap().mode() & 0o777, 0o644);
        assert!(read(d.path()).is_err());
        std::fs::write(&n, b"\xff\n").unwrap();
        assert!(read(&n).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn today_is_a_date() {
        let t = today();
        assert_eq!(t.len(), 10);
        assert!(t.starts_with("20") && t.as_bytes()[4] == b'-', "{t}");
    }
}
