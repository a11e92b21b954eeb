//! sentry-enforcer: the root parent of sentry's enforcer, in the shape of OpenSSH's
//! privilege separation and OpenBSD's imsg daemons. It does the few things that need
//! root and nothing else; everything that parses, decides, remembers or reports is in the
//! unprivileged worker (`sentry-worker`), which asks for each effect in a fixed-size
//! record ([`sentry_privsep`]) that this process checks against a floor of its own.
//!
//! Reading order for an audit:
//! * [`parent`] — start-up (configuration, sockets, the worker and the command helper),
//!   the single-threaded loop, the checks of each request ([`parent::serve::check`]
//!   against [`parent::floor`]) and the parent's seccomp filter ([`parent::confine`]).
//! * [`kernel::table`] — the nftables table and the detection chain, built by `nft -f -`;
//!   [`kernel::netlink`] set elements and blackhole routes over netlink (on the plumbing
//!   in [`kernel::nl`]); [`kernel::tablewatch`] notices another process changing the
//!   table; [`kernel::capture`] binds the NFLOG socket the sensor gets; [`kernel::served`]
//!   writes the served ports the worker finds (RESTART_GRACE), and says why it may.
//! * [`effects::hostsdeny`] — the deny file: O_NOFOLLOW, owner/mode checks, atomic rewrite;
//!   [`effects::exec`] — kill commands: argv + execve, never a shell, clean environment,
//!   timeout (run by the command helper, outside the parent's seccomp filter).
//! * [`peercheck`] — is a connection the installed sensor (its executable, its unit)?
//! * `sys` — the crate's only unsafe code (descriptors, fork, pidfds).
#![deny(unsafe_code)]

pub mod effects;
pub mod kernel;
pub mod parent;
pub mod peercheck;
#[allow(unsafe_code)]
mod sys;

// The paths tests/, the fuzz targets and the worker use.
pub use effects::hostsdeny;
pub use kernel::{capture, netlink, served, table};
/// Also the worker's first call (from descriptor 8, above the ones its parent placed).
pub use sys::close_inherited_fds;
