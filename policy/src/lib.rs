//! Configuration and address policy for sentry, shared by both daemons.
//!
//! * [`Config`] reads PortSentry 1.2 configuration files unchanged (plus sentry's own keys in
//!   the same syntax) and is strict: every error names the file, the line and the key.
//! * [`IgnoreList`] reads `portsentry.ignore` files into sorted, merged address ranges.
//! * [`NeverBlock`] is the fixed set of addresses the enforcer refuses to block whatever
//!   the configuration says.
//! * [`logfmt`] holds PortSentry's text formats (blocked/history lines) and time formatting.
//!
//! This crate does no I/O beyond reading the files it is given.
#![forbid(unsafe_code)]

mod config;
mod error;
mod ignore;
mod neverblock;
mod ports;
mod template;

pub use config::{
    BlockMode, Config, Firewall, FirewallOrigin, ScanClass, DEFAULT_CONFIG_PATH,
    PORTSENTRY_CONFIG_PATH,
};
pub use error::{ConfigError, ConfigErrors};
pub use ignore::{merge_ranges, IgnoreList};
pub use neverblock::{InfraReason, NeverBlock, NeverBlockReason};
pub use ports::PortSet;
pub use template::{CommandTemplate, LineTemplate, TemplateError, Token, Vars};

/// The bits of an IPv6 prefix of `len` (over 128 counts as 128): the one place every
/// IPv6 network (BLOCK_PREFIX6, ignore entries, the never-block check) is masked.
pub fn prefix6_bits(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// The network address of `a` in its /`len`.
pub fn mask6(a: std::net::Ipv6Addr, len: u8) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::from(u128::from(a) & prefix6_bits(len))
}

/// Largest configuration or ignore file accepted (bytes). Anything bigger is refused
/// rather than read into memory.
pub const MAX_FILE_SIZE: u64 = 16 << 20;

/// Why [`read_bounded`] failed.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// A directory, a FIFO, a device: never read.
    NotRegular,
    /// Larger than the cap given.
    TooLarge(u64),
}

/// Read a regular file of at most `max` bytes: checked on the opened descriptor (no race
/// with a rename between a stat and the open), never more than `max` + 1 bytes read, so
/// a huge or endless file costs nothing. `Ok(None)`: it does not exist. The one bounded
/// reader of the small files the enforcer and sentryctl read (resolver and lease files,
/// the ignore file they edit).
pub fn read_bounded(path: &std::path::Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    };
    if !f.metadata().map_err(ReadError::Io)?.is_file() {
        return Err(ReadError::NotRegular);
    }
    let mut b = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut b)
        .map_err(ReadError::Io)?;
    if b.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(Some(b))
}
