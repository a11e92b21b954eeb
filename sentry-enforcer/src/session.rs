//! The sensor connection's protocol state machine, free of I/O so it can be unit-tested
//! and fuzzed: bytes in, events or a connection-closing error out.
//!
//! Rules: the first frame must be a valid `Hello` with our protocol version; no second
//! `Hello`; block request sequence numbers strictly increase. Framing errors (length cap,
//! decode limit, trailing bytes, unknown tags) come from `sentry_proto::FrameBuf`.
//! Any error ends the connection; field validation of a block request does not (the
//! engine answers it with `Rejected`).

use std::fmt;

use sentry_proto::{
    BlockRequest, FieldError, FrameBuf, Hello, ProtoError, Refusal, SensorFrame, SensorStats,
    PROTOCOL_VERSION,
};

/// Something the daemon must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Handshake accepted: reply `Welcome`.
    Hello(Hello),
    /// Decide and reply `Ack`.
    Block(BlockRequest),
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

    /// Feed bytes and collect the events they complete. After an error the session is
    /// dead and returns the same kind of error for any further input.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<Event>, SessionError> {
        if self.failed {
            return Err(SessionError::Frame(ProtoError::Closed));
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let want = match self.buf.wanted() {
                Ok(w) => w,
                Err(e) => return self.fail(SessionError::Frame(e)),
            };
            let (now, rest) = bytes.split_at(want.min(bytes.len()));
            bytes = rest;
            if let Err(e) = self.buf.feed(now) {
                return self.fail(SessionError::Frame(e));
            }
            while let Some(msg) = self.buf.next_message() {
                match msg
                    .map_err(SessionError::Frame)
                    .and_then(|m| self.on_frame(m))
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

    fn on_frame(&mut self, m: SensorFrame) -> Result<Event, SessionError> {
        match (self.greeted, m) {
            (false, SensorFrame::Hello(h)) => {
                h.validate().map_err(SessionError::BadHello)?;
                self.greeted = true;
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
                Ok(Event::Block(b))
            }
            (true, SensorFrame::Stats(s)) => Ok(Event::Stats(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_proto::{encode_frame, Mode, Protocol, ScanKind};

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
            evs.extend(s.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(evs.len(), 3);
        assert!(matches!(evs[0], Event::Hello(_)));
        assert!(matches!(&evs[2], Event::Block(b) if b.seq == 2));
        assert!(s.is_idle());
    }

    #[test]
    fn handshake_required_and_version_checked() {
        let mut s = Session::new();
        let e = s.feed(&block(1)).unwrap_err();
        assert_eq!(e, SessionError::HandshakeRequired);
        assert_eq!(e.refusal(), Refusal::HandshakeRequired);
        assert!(
            s.feed(&hello(PROTOCOL_VERSION)).is_err(),
            "dead after an error"
        );

        let mut s = Session::new();
        let e = s.feed(&hello(PROTOCOL_VERSION + 1)).unwrap_err();
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
        s.feed(&hello(PROTOCOL_VERSION)).unwrap();
        assert_eq!(
            s.feed(&hello(PROTOCOL_VERSION)).unwrap_err(),
            SessionError::DuplicateHello
        );
        let mut s = Session::new();
        s.feed(&hello(PROTOCOL_VERSION)).unwrap();
        s.feed(&block(5)).unwrap();
        assert_eq!(
            s.feed(&block(5)).unwrap_err(),
            SessionError::SeqNotIncreasing { last: 5, got: 5 }
        );
    }

    #[test]
    fn forged_lengths_and_garbage() {
        let mut s = Session::new();
        let e = s.feed(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap_err();
        assert!(matches!(
            e,
            SessionError::Frame(ProtoError::TooLarge { .. })
        ));
        let mut s = Session::new();
        assert!(matches!(
            s.feed(&[0, 0, 0, 0]).unwrap_err(),
            SessionError::Frame(ProtoError::Empty)
        ));
        let mut s = Session::new();
        let e = s.feed(&[0, 0, 0, 3, 9, 9, 9]).unwrap_err();
        assert!(matches!(e, SessionError::Frame(_)), "{e:?}");
        // trailing bytes inside a frame
        let mut f = hello(PROTOCOL_VERSION);
        let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) + 1;
        f[..4].copy_from_slice(&len.to_be_bytes());
        f.push(0);
        let mut s = Session::new();
        assert!(matches!(
            s.feed(&f).unwrap_err(),
            SessionError::Frame(ProtoError::TrailingBytes { .. })
        ));
    }
}
