//! sentry-enforcer: the small root core of sentry that decides, blocks, remembers and
//! audits. It trusts nothing that arrives on its socket: every frame is checked for its
//! peer (SO_PEERCRED), size, shape and fields, then every request is re-decided against
//! the enforcer's own never-block set, ignore list, block mode, rate limit and cap.
//! Its clients (`sentryctl`, the fleet bridge) are in `sentry-client`.
//!
//! Reading order for an audit:
//! * [`daemon`] — command line, sockets (modes set explicitly after bind), peer checks,
//!   one sensor connection at a time (a second is refused, not allowed to replace it),
//!   threads, signals (SIGHUP: ignore list + audit log reopen; SIGTERM: clean exit, the
//!   nftables table is kept so hosts stay blocked), capability confinement.
//! * [`session`] — the sensor connection's protocol state machine (handshake first, no
//!   second Hello, strictly increasing sequence numbers) and the one place every block
//!   request is checked (fields, announced mode); fuzzed in `fuzz/`.
//! * [`confine`] — the worker's seccomp allowlist, one reason per system call, installed
//!   once start-up is done and before any other thread starts.
//! * [`judge`] — the decision order, pure: request + state snapshot in, verdict out.
//! * [`engine`] — owns the state; per decision: judge, act, persist, audit; restore,
//!   expiry and status in its submodules.
//! * [`effects::action`] — typed actions (`Nft`, `Route`, `HostsDeny`, `Command`) and the
//!   executor that runs them and records their outcomes.
//! * [`kernel::table`] — the nftables table's layout, built in one transaction at start, and
//!   the detection chain in the input path, rebuilt whenever a sensor announces its modes;
//!   [`kernel::tablewatch`] notices when another process deletes or flushes it.
//! * [`kernel::capture`] — the NFLOG socket the enforcer binds and hands to the sensor.
//! * [`error`], [`time`] — the one error type; wall-clock newtypes.
//! * [`effects::exec`] — kill commands: argv + execve, never a shell, clean environment, timeout.
//! * [`infra`] — default gateways, nameservers, point-to-point peers and DHCP servers
//!   (never blocked), kept current from rtnetlink notifications and file changes.
//! * [`served`] — RESTART_GRACE: the served ports from a sock_diag dump every 250 ms;
//!   the root parent writes what changed into the kernel's `detect_served` sets.
//! * [`effects::hostsdeny`] — the deny file: O_NOFOLLOW, owner/mode checks, atomic rewrite.
//! * [`kernel::netlink`] — nftables set elements and blackhole routes over netlink (written here:
//!   the only complete nftables crate is GPL-3.0; the project is MIT OR Apache-2.0);
//!   `kernel::nl` holds the netlink plumbing it shares with [`infra`], [`kernel::tablewatch`] and
//!   [`kernel::capture`] (builder, checked splitters, sockets).
//! * [`store`] — snapshot + fdatasync'd journal in the state directory, one CRC-32 per
//!   record; damaged or newer state is refused with its place named.
//! * [`recover`] — `--recover`: rebuild the state from what still verifies,
//!   BLOCKED_FILE and the hosts.deny markers.
//! * [`audit`] — JSON-lines audit log and syslog/stderr lines in PortSentry's wording.
//! * [`budget`] — AUDIT_RATE: per-second bound on records and log lines of decisions
//!   that changed nothing, with one summary per kind for the rest.
//! * `sys` — the crate's only unsafe code: closing inherited descriptors, peer groups,
//!   poll (`sched_setattr`, shared with the sensor, is in the `sentry-sched` crate).
//!
//! Files are grouped by role: `kernel/` (nftables, netlink, NFLOG, the table watch,
//! served ports), `effects/` (actions, kill commands, hosts.deny), `control/` (watch
//! stream, slots, metrics), `engine/` (state per decision); the rest (daemon, session,
//! peer check, judge, store, audit, budget, infra, recover) at the top.
#![deny(unsafe_code)]

pub mod action;
pub mod audit;
pub mod budget;
pub mod confine;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod infra;
pub mod judge;
pub mod privsep;
pub mod recover;
pub mod served;
pub mod session;
pub mod store;
#[allow(unsafe_code)]
mod sys;
pub mod time;
