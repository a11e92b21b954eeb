use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration or ignore file, located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line number, when the problem belongs to a line.
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        path: &Path,
        line: Option<usize>,
        key: Option<&str>,
        msg: impl Into<String>,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            line,
            key: key.map(str::to_owned),
            message: msg.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one pass; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn one(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read a whole text file with a size cap. Invalid UTF-8 is an error (config files are
/// ASCII in practice; a binary file is a mistake worth reporting).
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigErrors> {
    use std::io::Read;
    let err = |m: String| ConfigErrors::one(ConfigError::new(path, None, None, m));
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let mut buf = Vec::new();
    file.take(crate::MAX_FILE_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if buf.len() as u64 > crate::MAX_FILE_SIZE {
        return Err(err(format!("larger than {} bytes", crate::MAX_FILE_SIZE)));
    }
    String::from_utf8(buf).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        ConfigErrors::one(ConfigError::new(
            path,
            Some(line),
            None,
            "not valid UTF-8 text",
        ))
    })
}

/// Split text into numbered lines, tolerating CRLF and a missing final newline.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
}
