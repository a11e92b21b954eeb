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
pub mod logfmt;
mod neverblock;
mod ports;
mod template;

pub use config::{
    creatable, BlockMode, Config, FileCheck, Firewall, FirewallOrigin, DEFAULT_CONFIG_PATH,
    PORTSENTRY_CONFIG_PATH,
};
pub use error::{ConfigError, ConfigErrors};
pub use ignore::IgnoreList;
pub use neverblock::{InfraReason, NeverBlock, NeverBlockReason};
pub use ports::PortSet;
pub use template::{CommandTemplate, LineTemplate, TemplateError, Token, Vars};

/// Largest configuration or ignore file accepted (bytes). Anything bigger is refused
/// rather than read into memory.
pub const MAX_FILE_SIZE: u64 = 16 << 20;
