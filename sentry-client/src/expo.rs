//! Prometheus text exposition (format 0.0.4): a writer that keeps each family's HELP and
//! TYPE next to its samples, and the atomic textfile writer for node_exporter's textfile
//! collector. Used by the enforcer (its counters) and the fleet bridge (its own).

use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// A small writer that keeps HELP and TYPE next to each family.
#[derive(Debug, Default)]
pub struct Expo(String);

impl Expo {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        self
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: u64) -> &mut Self {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values here are fixed identifiers, never input; escape anyway.
                let esc = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{esc}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
        self
    }

    /// One family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, v: u64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], v)
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// METRICS_DIR gets the state directory's checks (issue #21): a directory owned by root
/// (or by us) that neither group nor others can write. In a directory another user can
/// write, that user could put a file, a symlink or a directory where the temporary file
/// or the textfile goes, and so stop it from being written or replace what
/// node_exporter reads.
pub fn check_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dir)?;
    if !md.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    let me = nix::unistd::geteuid().as_raw();
    if (md.uid() != 0 && md.uid() != me) || md.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "must be owned by root and not writable by group or others (owner uid {}, mode {:o}); not written",
            md.uid(),
            md.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Write `text` as `dir/name` atomically: a temporary file in the same directory, then
/// rename, so the textfile collector never reads half a file. Mode 0644 (node_exporter
/// runs as its own user). The directory is checked first ([`check_dir`]).
pub fn write_textfile(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    check_dir(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let r = f.write_all(text.as_bytes()).and_then(|()| f.sync_data());
    drop(f);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    std::fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_textfile_is_replaced_atomically() {
        let d = tempfile::tempdir().unwrap();
        write_textfile(d.path(), "x.prom", "a 1\n").unwrap();
        write_textfile(d.path(), "x.prom", "a 2\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("x.prom")).unwrap(),
            "a 2\n"
        );
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.prom"], "no temporary file left");
        assert!(write_textfile(&d.path().join("missing"), "x.prom", "").is_err());
    }

    #[test]
    fn labels_are_escaped() {
        let mut e = Expo::default();
        e.family("a_total", "counter", "A.").sample(
            "a_total",
            &[("k", "x\"y\\z\n"), ("j", "2")],
            3,
        );
        assert_eq!(
            e.finish(),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"x\\\"y\\\\z\\n\",j=\"2\"} 3\n"
        );
    }
}
