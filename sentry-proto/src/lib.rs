//! Typed messages and framing shared by `sentry-sensor`, `sentry-enforcer` and `sentryctl`.
//!
//! This crate does no I/O of its own: it turns messages into length-prefixed frames and
//! back, and it says which field values are acceptable. Everything that arrives from a
//! peer is untrusted; the decoder enforces a hard size cap per direction *before* any
//! body byte is read, decodes with a byte limit equal to that cap, and insists that the
//! whole frame was consumed. A frame that fails any check is a [`ProtoError`], never a
//! panic and never an allocation of an attacker-claimed size.
//!
//! The codec (bincode 2.0.1, pinned) stays private to this crate so it can be replaced
//! without touching the daemons.
#![forbid(unsafe_code)]

pub mod duration;
mod frame;
pub mod logfmt;
mod msg;
pub mod record;

pub use duration::{format_go_duration, parse_go_duration, DurationError};
pub use frame::{
    decode_frame, encode_frame, frame_len, read_frame, write_frame, FrameBuf, Message, ProtoError,
    HEADER_LEN,
};
pub use msg::*;
pub use record::{RECORD_SCHEMA, SCAN_KINDS};

#[cfg(test)]
mod meta_tests;

/// Protocol version spoken by this build. A peer with any other version is refused.
/// 2: `EnforcerFrame::Unblocked`; 3: `EnforcerFrame::Capture` (the NFLOG descriptor
/// hand-over); 4 (one step for this release): the control socket's `Block`,
/// `UnblockOrigin`, `Watch`, `Metrics`, origins in `BlockEntry` and the counters, and
/// `ScanKind::{Ack, Maimon, IpProtocol, SctpInit}` with `Protocol::{Sctp, Ip}` (a
/// version-3 peer would misread them, so it is refused at the handshake). 5:
/// `ControlRequest::BlockWith` and `BlockMeta` in `BlockEntry` and `WatchRecord`, whose
/// probe fields are optional now (a control block has no probe): a version-4 client
/// would misread `Blocked` and `Record` replies, so it is refused at the handshake
/// instead.
pub const PROTOCOL_VERSION: u16 = 5;

// What the kernel's detection chain and the sensor agree on (protocols that are no
// probes, the NFLOG prefixes): defined once, beside the root parent's records, because
// the parent builds the chain and links no sentry-proto.
pub use sentry_privsep::{NFLOG_PREFIX_INVALID, NFLOG_PREFIX_NEW, NOT_PROBE_PROTOCOLS};

/// Cap for frames on the sensor socket, both directions, and for control requests.
pub const MAX_SMALL_FRAME: usize = 4096;

/// Cap for replies from the enforcer to `sentryctl` (a list of up to `MAX_BLOCKS` blocks).
/// The enforcer is the trusted side here, but `sentryctl` still refuses anything larger.
/// bincode's limit counts what a reply may make the decoder allocate (a `Vec`'s length
/// times its element's size in memory, about 170 bytes for a `BlockEntry` with its fleet
/// metadata), not the bytes on the wire (about 70 each): 100,000 blocks need 17 MB.
pub const MAX_CONTROL_RESPONSE: usize = 32 << 20;

/// Longest sensor name accepted in a [`Hello`].
pub const MAX_NAME_LEN: usize = 64;

/// Most decisions carried in a [`Status`] reply.
pub const MAX_RECENT_DECISIONS: usize = 32;
