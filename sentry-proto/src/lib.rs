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

/// IP protocols that are not probes when they arrive unasked: they are what the host's
/// own stack, tunnels and routing daemons receive (ICMP and ICMPv6, which includes
/// neighbour discovery; IGMP; IPIP, 6in4 and GRE tunnels; IPsec ESP and AH; OSPF, PIM,
/// VRRP; L2TPv3; UDP-Lite; DCCP, whose tracker marks a headerless probe invalid anyway),
/// plus TCP, UDP and SCTP, which are judged by their own rules. The detection chain
/// copies a packet of any other protocol as an IP-protocol probe (`nmap -sO` sends every
/// number), and the sensor checks the same list again.
pub const NOT_PROBE_PROTOCOLS: &[u8] = &[
    1, 2, 4, 6, 17, 33, 41, 47, 50, 51, 58, 89, 103, 112, 115, 132, 136,
];

/// NFLOG prefix of packets conntrack took as the first of a new flow (its checksum was
/// verified by conntrack unless `nf_conntrack_checksum` is 0).
pub const NFLOG_PREFIX_NEW: &str = "sentry new";
/// NFLOG prefix of packets conntrack found invalid: flag probes (FIN, NULL, XMAS, ...),
/// but also packets with a bad checksum, which the host's stack will discard: the sensor
/// verifies the checksum of these itself.
pub const NFLOG_PREFIX_INVALID: &str = "sentry invalid";

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
