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
        self.sample_text(name, labels, &v.to_string())
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values are fixed identifiers or checked origin names
                // ([A-Za-z0-9._-]), never free text; escaped anyway.
                let esc = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{esc}\"");
            }
            self.0.push('}');
        }
    }

    /// One family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, v: u64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], v)
    }

    /// A sample whose value is not a whole number (seconds, as Prometheus wants them).
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], v: f64) -> &mut Self {
        self.sample_text(name, labels, &fmt_f64(v))
    }

    /// [`Expo::single`] with a value that is not a whole number.
    pub fn single_f64(&mut self, name: &str, kind: &str, help: &str, v: f64) -> &mut Self {
        self.family(name, kind, help).sample_f64(name, &[], v)
    }

    /// A histogram family: the cumulative `_bucket` samples (with `le="+Inf"` last),
    /// then `_sum` and `_count`, as the exposition format orders them.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, le) in h.bounds.iter().enumerate() {
            cumulative = cumulative.saturating_add(h.counts.get(i).copied().unwrap_or(0));
            self.sample(&bucket, &[("le", &fmt_f64(*le))], cumulative);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        self.sample_f64(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count)
    }

    fn sample_text(&mut self, name: &str, labels: &[(&str, &str)], v: &str) -> &mut Self {
        self.0.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.0, " {v}");
        self
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// A float as the exposition format spells it: `+Inf`, `-Inf` and `NaN` by name (Rust
/// would print `inf`), everything else in Rust's shortest round-trip form, which never
/// uses an exponent and so parses everywhere.
pub fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

/// A Prometheus histogram kept in memory: per-bucket counts (not cumulative; the writer
/// adds them up), their sum and the number of observations. The bounds are fixed when it
/// is made, so its size never depends on what is observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// `bounds` are the buckets' upper bounds, increasing (`+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Count one value (a value above every bound lands in `+Inf` only). Not a finite,
    /// non-negative number: ignored, so a bad value can never make the sum `NaN` for the
    /// rest of the process's life.
    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() || v < 0.0 {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
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

    #[test]
    fn histograms_are_cumulative_and_refuse_bad_values() {
        static B: &[f64] = &[0.001, 0.5, 1.0];
        let mut h = Histogram::new(B);
        for v in [0.0005, 0.0005, 0.3, 7.0, -1.0, f64::NAN, f64::INFINITY] {
            h.observe(v);
        }
        assert_eq!(h.count(), 4);
        let mut e = Expo::default();
        e.histogram("x_seconds", "X.", &h);
        assert_eq!(
            e.finish(),
            "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"0.001\"} 2\nx_seconds_bucket{le=\"0.5\"} 3\n\
             x_seconds_bucket{le=\"1\"} 3\nx_seconds_bucket{le=\"+Inf\"} 4\n\
             x_seconds_sum 7.301\nx_seconds_count 4\n"
        );
        assert_eq!(fmt_f64(f64::INFINITY), "+Inf");
        assert_eq!(fmt_f64(f64::NEG_INFINITY), "-Inf");
        assert_eq!(fmt_f64(f64::NAN), "NaN");
        assert_eq!(fmt_f64(1e-7), "0.0000001");
    }
}
