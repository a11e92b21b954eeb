//! The enforcer's one error type. Every way the root daemon can fail to start or to run
//! an operation is a variant here, so a caller matches on the cause instead of searching
//! a formatted string, and the text an administrator reads is written in one place.

use std::fmt;
use std::io;
use std::path::PathBuf;

use sentry_enforcer::kernel::netlink::NlError;

/// What went wrong, with the object it went wrong on.
#[derive(Debug)]
pub enum EnforcerError {
    /// The configuration file, or a file it names (the ignore list).
    Config(policy::ConfigErrors),
    /// The state directory could not be opened or read.
    State { dir: PathBuf, source: io::Error },
    /// The audit log could not be opened.
    AuditLog(io::Error),
    /// `nft -f -` could not build the table.
    NftTable { table: String, detail: String },
    /// A netlink socket could not be opened, or an operation on it failed.
    Netlink { what: &'static str, source: NlError },
    /// The root parent refused or failed a request, or its channel broke.
    Parent(String),
    /// A backend the configuration needs is not open.
    BackendClosed(&'static str),
    /// A user or group the configuration or the command line names.
    Account { what: String, detail: String },
    /// The runtime directory or a socket in it (stale socket, bind, chown, chmod).
    Runtime { path: PathBuf, detail: String },
    /// Capability or no_new_privs confinement.
    Confine { what: String, detail: String },
    /// A system call of the process set-up (signal mask, threads).
    System { what: String, detail: String },
}

impl EnforcerError {
    /// A netlink error on `what`.
    pub fn netlink(what: &'static str, source: NlError) -> Self {
        Self::Netlink { what, source }
    }

    /// A runtime-directory or socket error on `path`.
    pub fn runtime(path: &std::path::Path, detail: impl fmt::Display) -> Self {
        Self::Runtime {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }

    /// A confinement step `what` failed.
    pub fn confine(what: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self::Confine {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    /// A process set-up step `what` failed.
    pub fn system(what: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self::System {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    /// The kernel's errno, when the kernel refused a netlink operation.
    pub fn kernel_errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Self::Netlink {
                source: NlError::Kernel(e),
                ..
            } => Some(*e),
            _ => None,
        }
    }
}

impl fmt::Display for EnforcerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => write!(f, "{e}"),
            Self::State { dir, source } => {
                write!(f, "state directory {}: {source}", dir.display())
            }
            Self::AuditLog(e) => write!(f, "{e}"),
            Self::NftTable { table, detail } => {
                write!(f, "cannot create nftables table inet {table}: {detail}")
            }
            Self::Netlink { what, source } => write!(f, "{what}: {source}"),
            Self::Parent(m) => f.write_str(m),
            Self::BackendClosed(what) => write!(f, "{what} backend not open"),
            Self::Account { what, detail } => write!(f, "{what}: {detail}"),
            Self::Runtime { path, detail } => write!(f, "{}: {detail}", path.display()),
            Self::Confine { what, detail } => write!(f, "{what}: {detail}"),
            Self::System { what, detail } => write!(f, "{what}: {detail}"),
        }
    }
}

impl std::error::Error for EnforcerError {}

impl From<policy::ConfigErrors> for EnforcerError {
    fn from(e: policy::ConfigErrors) -> Self {
        Self::Config(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errno_is_typed_not_searched() {
        let e = EnforcerError::netlink("nftables", NlError::Kernel(nix::errno::Errno::ENOENT));
        assert_eq!(e.kernel_errno(), Some(nix::errno::Errno::ENOENT));
        assert!(
            EnforcerError::netlink("nftables", NlError::Io(nix::errno::Errno::EAGAIN))
                .kernel_errno()
                .is_none()
        );
        assert_eq!(
            EnforcerError::BackendClosed("nftables").to_string(),
            "nftables backend not open"
        );
    }
}
