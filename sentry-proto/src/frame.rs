//! Length-prefixed framing: a 4-byte big-endian length, then exactly that many body bytes.

use std::fmt;
use std::io::{self, Read, Write};

use bincode::config;
use bincode::error::{DecodeError, EncodeError};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Everything that can go wrong turning bytes into a message. Each failure is distinct so
/// the enforcer can count and audit it precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The length prefix was zero: no message is empty.
    Empty,
    /// The length prefix exceeds the cap for this direction. Nothing of the body was read.
    TooLarge { len: u64, max: usize },
    /// Fewer bytes than the prefix promised (or than the header needs).
    Truncated { expected: usize, got: usize },
    /// The body decoded to a message but bytes were left over.
    TrailingBytes { consumed: usize, len: usize },
    /// An enum tag that this version does not know.
    UnknownVariant { type_name: &'static str, found: u32 },
    /// The body claimed a container larger than the frame could hold.
    LimitExceeded,
    /// The body ran out in the middle of a value.
    UnexpectedEnd,
    /// Any other malformed content (bad UTF-8, bad bool, bad address, ...).
    Malformed(String),
    /// A message too large to send, or that could not be encoded.
    Encode(String),
    /// The peer closed the connection cleanly between frames.
    Closed,
    /// Transport error (only from [`read_frame`] / [`write_frame`]).
    Io(io::ErrorKind),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty frame (length 0)"),
            Self::TooLarge { len, max } => write!(f, "frame length {len} exceeds cap {max}"),
            Self::Truncated { expected, got } => {
                write!(f, "truncated frame: expected {expected} bytes, got {got}")
            }
            Self::TrailingBytes { consumed, len } => {
                write!(f, "trailing bytes: message used {consumed} of {len} bytes")
            }
            Self::UnknownVariant { type_name, found } => {
                write!(f, "unknown tag {found} for {type_name}")
            }
            Self::LimitExceeded => write!(f, "declared size exceeds the frame limit"),
            Self::UnexpectedEnd => write!(f, "message ends in the middle of a value"),
            Self::Malformed(m) => write!(f, "malformed message: {m}"),
            Self::Encode(m) => write!(f, "cannot encode message: {m}"),
            Self::Closed => write!(f, "connection closed"),
            Self::Io(k) => write!(f, "i/o error: {k}"),
        }
    }
}

impl std::error::Error for ProtoError {}

impl ProtoError {
    /// A short stable identifier, for counters and audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge { .. } => "too_large",
            Self::Truncated { .. } => "truncated",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::UnknownVariant { .. } => "unknown_variant",
            Self::LimitExceeded => "limit_exceeded",
            Self::UnexpectedEnd => "unexpected_end",
            Self::Malformed(_) => "malformed",
            Self::Encode(_) => "encode",
            Self::Closed => "closed",
            Self::Io(_) => "io",
        }
    }
}

impl From<DecodeError> for ProtoError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnexpectedVariant {
                type_name, found, ..
            } => Self::UnknownVariant { type_name, found },
            DecodeError::LimitExceeded => Self::LimitExceeded,
            DecodeError::UnexpectedEnd { .. } => Self::UnexpectedEnd,
            other => Self::Malformed(other.to_string()),
        }
    }
}

impl From<EncodeError> for ProtoError {
    fn from(e: EncodeError) -> Self {
        Self::Encode(e.to_string())
    }
}

/// A message type with its own frame cap. Only this crate implements it.
pub trait Message: Sized + bincode::Encode + bincode::Decode<()> {
    /// Largest body accepted or produced for this message type.
    const MAX_FRAME: usize;
    #[doc(hidden)]
    fn decode_limited(body: &[u8]) -> Result<(Self, usize), DecodeError>;
}

/// Fixed-width big-endian integers: every field has one encoding, and the decoder's byte
/// limit is the frame cap, so a claimed length can never exceed what the frame holds.
type BaseConfig = config::Configuration<config::BigEndian, config::Fixint, config::NoLimit>;

pub(crate) fn base_config() -> BaseConfig {
    config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
}

macro_rules! message {
    ($t:ty, $max:expr) => {
        impl $crate::frame::Message for $t {
            const MAX_FRAME: usize = $max;
            fn decode_limited(body: &[u8]) -> Result<(Self, usize), ::bincode::error::DecodeError> {
                let config = $crate::frame::base_config().with_limit::<{ $max }>();
                ::bincode::decode_from_slice(body, config)
            }
        }
    };
}
pub(crate) use message;

/// Check a length prefix against the cap for `T`; returns the body length.
pub fn frame_len<T: Message>(header: [u8; HEADER_LEN]) -> Result<usize, ProtoError> {
    let len = u32::from_be_bytes(header);
    if len == 0 {
        return Err(ProtoError::Empty);
    }
    match usize::try_from(len) {
        Ok(n) if n <= T::MAX_FRAME => Ok(n),
        _ => Err(ProtoError::TooLarge {
            len: u64::from(len),
            max: T::MAX_FRAME,
        }),
    }
}

/// Decode one body: size-limited, and every byte must belong to the message.
fn decode_body<T: Message>(body: &[u8]) -> Result<T, ProtoError> {
    if body.len() > T::MAX_FRAME {
        return Err(ProtoError::TooLarge {
            len: body.len() as u64,
            max: T::MAX_FRAME,
        });
    }
    let (msg, consumed) = T::decode_limited(body)?;
    if consumed != body.len() {
        return Err(ProtoError::TrailingBytes {
            consumed,
            len: body.len(),
        });
    }
    Ok(msg)
}

/// Encode a message as one frame (prefix included). Refuses messages over the cap.
pub fn encode_frame<T: Message>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::encode_into_std_write(msg, &mut out, base_config())?;
    let body_len = out.len() - HEADER_LEN;
    if body_len > T::MAX_FRAME {
        return Err(ProtoError::Encode(format!(
            "message of {body_len} bytes exceeds cap {}",
            T::MAX_FRAME
        )));
    }
    let prefix = u32::try_from(body_len)
        .map_err(|_| ProtoError::Encode("message length does not fit 32 bits".into()))?;
    out[..HEADER_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Decode exactly one complete frame (prefix included) from `bytes`.
pub fn decode_frame<T: Message>(bytes: &[u8]) -> Result<T, ProtoError> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(ProtoError::Truncated {
            expected: HEADER_LEN,
            got: bytes.len(),
        });
    };
    let len = frame_len::<T>(*header)?;
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(ProtoError::Truncated {
            expected: len,
            got: body.len(),
        }),
        std::cmp::Ordering::Greater => Err(ProtoError::TrailingBytes {
            consumed: len,
            len: body.len(),
        }),
        std::cmp::Ordering::Equal => decode_body(body),
    }
}

/// Read one frame from a blocking reader. The body buffer is allocated only after the
/// prefix passed the cap, and only to the checked length.
pub fn read_frame<T: Message, R: Read>(r: &mut R) -> Result<T, ProtoError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Err(ProtoError::Closed);
    }
    if got < HEADER_LEN {
        return Err(ProtoError::Truncated {
            expected: HEADER_LEN,
            got,
        });
    }
    let len = frame_len::<T>(header)?;
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(ProtoError::Truncated { expected: len, got });
    }
    decode_body(&body)
}

/// Write one frame to a blocking writer.
pub fn write_frame<T: Message, W: Write>(w: &mut W, msg: &T) -> Result<(), ProtoError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame).map_err(|e| ProtoError::Io(e.kind()))?;
    w.flush().map_err(|e| ProtoError::Io(e.kind()))
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ProtoError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtoError::Io(e.kind())),
        }
    }
    Ok(got)
}

/// Incremental decoder for non-blocking sockets: feed whatever arrived, take whole
/// messages out. It never holds more than one header plus one capped body.
#[derive(Debug)]
pub struct FrameBuf<T> {
    buf: Vec<u8>,
    _msg: std::marker::PhantomData<fn() -> T>,
}

impl<T: Message> Default for FrameBuf<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Message> FrameBuf<T> {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            _msg: std::marker::PhantomData,
        }
    }

    /// How many more bytes may be fed before a frame is complete. Feed at most this many
    /// bytes per call so that the buffer never grows past one frame.
    pub fn wanted(&self) -> Result<usize, ProtoError> {
        match self.buf.first_chunk::<HEADER_LEN>() {
            None => Ok(HEADER_LEN - self.buf.len()),
            Some(header) => Ok(HEADER_LEN + frame_len::<T>(*header)? - self.buf.len()),
        }
    }

    /// Append bytes. Refuses (without buffering) more than [`Self::wanted`] allows, and
    /// rejects a bad length prefix as soon as its four bytes are in.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProtoError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let want = self.wanted()?;
            if want == 0 {
                return Err(ProtoError::Malformed(
                    "a complete frame must be taken before feeding more".into(),
                ));
            }
            let take = want.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            // Validate the prefix as soon as it is complete.
            self.wanted()?;
        }
        Ok(())
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Option<Result<T, ProtoError>> {
        match self.wanted() {
            Ok(0) => {
                let res = decode_body(&self.buf[HEADER_LEN..]);
                self.buf.clear();
                Some(res)
            }
            Ok(_) => None,
            Err(e) => {
                self.buf.clear();
                Some(Err(e))
            }
        }
    }

    /// True when no partial frame is buffered (a close here is a clean close).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
    }
}
