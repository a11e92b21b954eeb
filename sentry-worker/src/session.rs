//! The sensor connection's protocol state machine, free of I/O so it can be unit-tested
//! and fuzzed: bytes in, events or a connection-closing error out.
//!
//! Rules: the first frame must be a valid `Hello` with our protocol version; no second
//! `Hello`; block request sequence numbers strictly increase. Framing errors (length cap,
//! decode limit, trailing bytes, unknown tags) come from `sentry_proto::FrameBuf`.
//! Any error ends the connection; a block request that fails its checks does not (it is
//! answered `Rejected`).
//!
//! This is the one place where what the sensor sends is checked: framing (through
//! `sentry_proto::FrameBuf`), the handshake, sequence numbers, and every block request's
//! fields and mode ([`check_request`]). Past this module a request is a [`Checked`], which
//! nothing else can construct, so the engine cannot be handed an unchecked one.

use std::fmt;

use sentry_proto::{
    BlockRequest, FieldError, FrameBuf, Hello, Mode, ProtoError, Refusal, SensorFrame, SensorStats,
    PROTOCOL_VERSION,
};

use crate::time::WallMs;

/// A block request that passed [`check_request`]. Only this module can make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked(BlockRequest);

impl std::ops::Deref for Checked {
    type Target = BlockRequest;
    fn deref(&self) -> &BlockRequest {
        &self.0
    }
}

/// Why a block request is answered `Rejected` (the connection stays open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The request's mode was not among those its sensor announced in its Hello.
    ModeNotAnnounced(Mode),
    /// A field is out of range or inconsistent with another.
    Field(FieldError),
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ModeNotAnnounced(m) => {
                write!(f, "mode {m} was not announced in the sensor's Hello")
            }
            Self::Field(e) => write!(f, "{e}"),
        }
    }
}

/// Check a request against the modes its sensor announced and against itself (fields,
/// consistency, a clock no more than the allowed skew ahead of `now`). Address policy
/// (never-block, ignore list) is the judge's, not a validity question.
pub fn check_request(
    req: BlockRequest,
    announced: &[Mode],
    now: WallMs,
) -> Result<Checked, (BlockRequest, Invalid)> {
    if !announced.contains(&req.mode) {
        let m = req.mode;
        return Err((req, Invalid::ModeNotAnnounced(m)));
    }
    match req.validate(now.0) {
        Ok(()) => Ok(Checked(req)),
        Err(e) => Err((req, Invalid::Field(e))),
    }
}

/// Something the daemon must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Handshake accepted: reply `Welcome`.
    Hello(Hello),
    /// Decide and reply `Ack`.
    Block(Checked),
    /// Reply `Ack` with `Rejected` (counted and audited).
    Invalid(BlockRequest, Invalid),
    /// Store for `sentryctl status`.
    Stats(SensorStats),
}

/// Why the connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    Frame(ProtoError),
    HandshakeRequired,
    BadHello(FieldError),
    DuplicateHello,
    SeqNotIncreasing { last: u64, got: u64 },
}

impl SessionError {
    /// The refusal sent to the peer before closing.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::BadHello(FieldError::Version { .. }) => Refusal::VersionMismatch {
                ours: PROTOCOL_VERSION,
            },
            Self::HandshakeRequired => Refusal::HandshakeRequired,
            _ => Refusal::MalformedFrame,
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame(e) => write!(f, "bad frame ({}): {e}", e.kind()),
            Self::HandshakeRequired => write!(f, "first frame was not a Hello"),
            Self::BadHello(e) => write!(f, "bad Hello: {e}"),
            Self::DuplicateHello => write!(f, "second Hello on one connection"),
            Self::SeqNotIncreasing { last, got } => {
                write!(f, "sequence number {got} does not follow {last}")
            }
        }
    }
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct Session {
    buf: FrameBuf<SensorFrame>,
    greeted: bool,
    /// The modes of the Hello; requests for any other mode are refused.
    announced: Vec<Mode>,
    last_seq: Option<u64>,
    failed: bool,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many bytes to read next (never more than completes the current frame).
    pub fn wanted(&self) -> Result<usize, SessionError> {
        self.buf.wanted().map_err(SessionError::Frame)
    }

    /// True between frames (a close here is clean).
    pub fn is_idle(&self) -> bool {
        self.buf.is_idle()
    }

    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// Feed bytes and collect the events they complete; `now` is the enforcer's clock for
    /// the requests' time checks. After an error the session is dead and returns the same
    /// kind of error for any further input.
    pub fn feed(&mut self, mut bytes: &[u8], now: WallMs) -> Result<Vec<Event>, SessionError> {
        if self.failed {
            return Err(SessionError::Frame(ProtoError::Closed));
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let want = match self.buf.wanted() {
                Ok(w) => w,
                Err(e) => return self.fail(SessionError::Frame(e)),
            };
            let (piece, rest) = bytes.split_at(want.min(bytes.len()));
            bytes = rest;
            if let Err(e) = self.buf.feed(piece) {
                return self.fail(SessionError::Frame(e));
            }
            while let Some(msg) = self.buf.next_message() {
                match msg
                    .map_err(SessionError::Frame)
                    .and_then(|m| self.on_frame(m, now))
                {
                    Ok(ev) => out.push(ev),
                    Err(e) => return self.fail(e),
                }
            }
        }
        Ok(out)
    }

    fn fail<T>(&mut self, e: SessionError) -> Result<T, SessionError> {
        self.failed = true;
        Err(e)
    }

    fn on_frame(&mut self, m: SensorFrame, now: WallMs) -> Result<Event, SessionError> {
        match (self.greeted, m) {
            (false, SensorFrame::Hello(h)) => {
                h.validate().map_err(SessionError::BadHello)?;
                self.greeted = true;
                self.announced = h.modes.clone();
                Ok(Event::Hello(h))
            }
            (false, _) => Err(SessionError::HandshakeRequired),
            (true, SensorFrame::Hello(_)) => Err(SessionError::DuplicateHello),
            (true, SensorFrame::Block(b)) => {
                if let Some(last) = self.last_seq {
                    if b.seq <= last {
                        return Err(SessionError::SeqNotIncreasing { last, got: b.seq });
                    }
                }
                self.last_seq = Some(b.seq);
                Ok(match check_request(b, &self.announced, now) {
                    Ok(c) => Event::Block(c),
                    Err((b, why)) => Event::Invalid(b, why),
                })
            }
            (true, SensorFrame::Stats(s)) => Ok(Event::Stats(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_proto::{encode_frame, Protocol, ScanKind};

    const NOW: WallMs = WallMs(1_000);

    fn hello(version: u16) -> Vec<u8> {
        encode_frame(&SensorFrame::Hello(Hello {
            version,
            sensor: "test".into(),
            pid: 1,
            modes: vec![Mode::Stcp],
        }))
        .unwrap()
    }

    fn block(seq: u64) -> Vec<u8> {
        encode_frame(&SensorFrame::Block(BlockRequest {
            seq,
            source: "192.0.2.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 22,
            scan: ScanKind::Syn,
            mode: Mode::Stcp,
            distinct_ports: 1,
            first_seen_ms: 1,
            last_seen_ms: 1,
            ip_options: false,
        }))
        .unwrap()
    }

    #[test]
    fn byte_at_a_time_handshake_then_blocks() {
        let mut s = Session::new();
        let mut all = hello(PROTOCOL_VERSION);
        all.extend(block(1));
        all.extend(block(2));
        let mut evs = Vec::new();
        for b in &all {
            evs.extend(s.feed(std::slice::from_ref(b), NOW).unwrap());
        }
        assert_eq!(evs.len(), 3);
        assert!(matches!(evs[0], Event::Hello(_)));
        assert!(matches!(&evs[2], Event::Block(b) if b.seq == 2));
        assert!(s.is_idle());
    }

    #[test]
    fn requests_are_checked_here_and_do_not_end_the_connection() {
        let mut s = Session::new();
        s.feed(&hello(PROTOCOL_VERSION), NOW).unwrap();
        // Mode not announced (the Hello named only -stcp).
        let mut r = BlockRequest {
            seq: 1,
            source: "192.0.2.1".parse().unwrap(),
            protocol: Protocol::Udp,
            port: 53,
            scan: ScanKind::Udp,
            mode: Mode::Sudp,
            distinct_ports: 1,
            first_seen_ms: 1,
            last_seen_ms: 1,
            ip_options: false,
        };
        let ev = s
            .feed(&encode_frame(&SensorFrame::Block(r.clone())).unwrap(), NOW)
            .unwrap();
        assert!(
            matches!(
                &ev[..],
                [Event::Invalid(_, Invalid::ModeNotAnnounced(Mode::Sudp))]
            ),
            "{ev:?}"
        );
        // Port 0, then a time in the future.
        r = BlockRequest {
            seq: 2,
            protocol: Protocol::Tcp,
            scan: ScanKind::Syn,
            mode: Mode::Stcp,
            port: 0,
            ..r
        };
        let ev = s
            .feed(&encode_frame(&SensorFrame::Block(r.clone())).unwrap(), NOW)
            .unwrap();
        assert!(
            matches!(
                &ev[..],
                [Event::Invalid(_, Invalid::Field(FieldError::Port))]
            ),
            "{ev:?}"
        );
        r = BlockRequest {
            seq: 3,
            port: 22,
            last_seen_ms: NOW.0 + 3_600_000,
            ..r
        };
        let ev = s
            .feed(&encode_frame(&SensorFrame::Block(r.clone())).unwrap(), NOW)
            .unwrap();
        assert!(
            matches!(
                &ev[..],
                [Event::Invalid(_, Invalid::Field(FieldError::Times(_)))]
            ),
            "{ev:?}"
        );
        r = BlockRequest {
            seq: 4,
            last_seen_ms: 1,
            ..r
        };
        let ev = s
            .feed(&encode_frame(&SensorFrame::Block(r)).unwrap(), NOW)
            .unwrap();
        assert!(matches!(&ev[..], [Event::Block(c)] if c.seq == 4), "{ev:?}");
    }

    #[test]
    fn handshake_required_and_version_checked() {
        let mut s = Session::new();
        let e = s.feed(&block(1), NOW).unwrap_err();
        assert_eq!(e, SessionError::HandshakeRequired);
        assert_eq!(e.refusal(), Refusal::HandshakeRequired);
        assert!(
            s.feed(&hello(PROTOCOL_VERSION), NOW).is_err(),
            "dead after an error"
        );

        let mut s = Session::new();
        let e = s.feed(&hello(PROTOCOL_VERSION + 1), NOW).unwrap_err();
        assert_eq!(
            e.refusal(),
            Refusal::VersionMismatch {
                ours: PROTOCOL_VERSION
            }
        );
    }

    #[test]
    fn duplicate_hello_and_seq_replay() {
        let mut s = Session::new();
        s.feed(&hello(PROTOCOL_VERSION), NOW).unwrap();
        assert_eq!(
            s.feed(&hello(PROTOCOL_VERSION), NOW).unwrap_err(),
            SessionError::DuplicateHello
        );
        let mut s = Session::new();
        s.feed(&hello(PROTOCOL_VERSION), NOW).unwrap();
        s.feed(&block(5), NOW).unwrap();
        assert_eq!(
            s.feed(&block(5), NOW).unwrap_err(),
            SessionError::SeqNotIncreasing { last: 5, got: 5 }
        );
    }

    #[test]
    fn forged_lengths_and_garbage() {
        let mut s = Session::new();
        let e = s.feed(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3], NOW).unwrap_err();
        assert!(matches!(
            e,
            SessionError::Frame(ProtoError::TooLarge { .. })
        ));
        let mut s = Session::new();
        assert!(matches!(
            s.feed(&[0, 0, 0, 0], NOW).unwrap_err(),
            SessionError::Frame(ProtoError::Empty)
        ));
        let mut s = Session::new();
        let e = s.feed(&[0, 0, 0, 3, 9, 9, 9], NOW).unwrap_err();
        assert!(matches!(e, SessionError::Frame(_)), "{e:?}");
        // trailing bytes inside a frame
        let mut f = hello(PROTOCOL_VERSION);
        let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) + 1;
        f[..4].copy_from_slice(&len.to_be_bytes());
        f.push(0);
        let mut s = Session::new();
        assert!(matches!(
            s.feed(&f, NOW).unwrap_err(),
            SessionError::Frame(ProtoError::TrailingBytes { .. })
        ));
    }
}
