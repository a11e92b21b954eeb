//! The control-socket client: one connection past the version handshake, one request
//! and reply at a time, or a decision stream (`watch`), optionally one that reconnects.

use interprocess::local_socket::traits::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use interprocess::os::unix::uds_local_socket::Stream;
use std::io;
use std::path::Path;
use std::time::Duration;

use sentry_proto::{
    read_frame, write_frame, ControlRequest, ControlResponse, Cursor, WatchRecord, PROTOCOL_VERSION,
};

/// What to try when the enforcer cannot be reached.
pub const HINT_NOT_RUNNING: &str =
    "is sentry-enforcer running? (systemctl status sentry-enforcer; --runtime-dir)";
/// What to try when the enforcer (or the socket's mode) refuses this user.
pub const HINT_PERMISSION: &str = "run as root or add yourself to CONTROL_GROUP";

/// A connection error, with what to do about it where that is known.
pub fn connect_error(path: &Path, e: &io::Error) -> String {
    let hint = match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Some(HINT_NOT_RUNNING),
        io::ErrorKind::PermissionDenied => Some(HINT_PERMISSION),
        _ => None,
    };
    match hint {
        Some(h) => format!("cannot connect to {}: {e}; {h}", path.display()),
        None => format!("cannot connect to {}: {e}", path.display()),
    }
}

/// A connection to the enforcer's control socket, past the version handshake. The
/// fleet bridge uses this too, so it speaks exactly what sentryctl speaks.
#[derive(Debug)]
pub struct Client {
    s: Stream,
}

impl Client {
    pub fn connect(runtime_dir: &Path) -> Result<Self, String> {
        let path = runtime_dir.join("control.sock");
        let connect_err = |e: io::Error| connect_error(&path, &e);
        let mut s = Stream::connect(
            path.as_path()
                .to_fs_name::<GenericFilePath>()
                .map_err(connect_err)?,
        )
        .map_err(connect_err)?;
        let _ = s.set_recv_timeout(Some(Duration::from_secs(30)));
        write_frame(
            &mut s,
            &ControlRequest::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .map_err(|e| format!("send: {e}"))?;
        match read_frame::<ControlResponse, _>(&mut s).map_err(|e| format!("receive: {e}"))? {
            ControlResponse::Welcome { .. } => Ok(Self { s }),
            ControlResponse::Error(e) if e == "not authorized" => {
                Err(format!("enforcer refused: {e}; {HINT_PERMISSION}"))
            }
            ControlResponse::Error(e) => Err(format!("enforcer refused: {e}")),
            other => Err(format!("unexpected reply to Hello: {other:?}")),
        }
    }

    /// One request, one reply (an `Error` reply is an `Err`).
    pub fn call(&mut self, req: &ControlRequest) -> Result<ControlResponse, String> {
        write_frame(&mut self.s, req).map_err(|e| format!("send: {e}"))?;
        match read_frame::<ControlResponse, _>(&mut self.s).map_err(|e| format!("receive: {e}"))? {
            ControlResponse::Error(e) => Err(format!("enforcer: {e}")),
            r => Ok(r),
        }
    }

    /// Turn this connection into a decision stream from `from`.
    pub fn watch(mut self, from: Option<Cursor>) -> Result<Watch, String> {
        // Heartbeats come every second: five without one is a dead or stuck enforcer.
        let _ = self.s.set_recv_timeout(Some(WATCH_SILENCE));
        match self.call(&ControlRequest::Watch { from })? {
            ControlResponse::WatchStart {
                next,
                lost,
                run_changed,
            } => Ok(Watch {
                s: self.s,
                next,
                lost,
                run_changed,
            }),
            other => Err(format!("unexpected reply to Watch: {other:?}")),
        }
    }
}

/// Longest silence tolerated on a decision stream (the enforcer sends a heartbeat each
/// second).
pub const WATCH_SILENCE: Duration = Duration::from_secs(5);

/// A decision stream.
#[derive(Debug)]
pub struct Watch {
    s: Stream,
    /// The cursor of the next record (resume from here).
    pub next: Cursor,
    /// Records between the requested cursor and the oldest the enforcer still had.
    pub lost: u64,
    /// The requested cursor named an earlier enforcer run.
    pub run_changed: bool,
}

/// What a decision stream delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Record(Box<WatchRecord>),
    Heartbeat,
    /// The enforcer ended the stream (this client fell behind), with its reason.
    End(String),
}

impl Watch {
    pub fn next_event(&mut self) -> Result<WatchEvent, String> {
        let f = read_frame::<ControlResponse, _>(&mut self.s).map_err(|e| match e {
            sentry_proto::ProtoError::Io(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                format!(
                    "no record or heartbeat from the enforcer for {}s",
                    WATCH_SILENCE.as_secs()
                )
            }
            sentry_proto::ProtoError::Closed => "the enforcer closed the stream".to_string(),
            e => format!("receive: {e}"),
        })?;
        match f {
            ControlResponse::Record(r) => {
                if r.seq < self.next.seq {
                    return Err(format!(
                        "record {} out of order (expected {} or later)",
                        r.seq, self.next.seq
                    ));
                }
                self.next = r.next_cursor(self.next.run);
                Ok(WatchEvent::Record(r))
            }
            ControlResponse::Heartbeat { next } => {
                self.next = next;
                Ok(WatchEvent::Heartbeat)
            }
            ControlResponse::WatchEnd { reason } => Ok(WatchEvent::End(reason)),
            ControlResponse::Error(e) => Err(format!("enforcer: {e}")),
            other => Err(format!("unexpected frame on the stream: {other:?}")),
        }
    }
}

/// One request/response exchange after the handshake.
pub fn request(runtime_dir: &Path, req: &ControlRequest) -> Result<ControlResponse, String> {
    Client::connect(runtime_dir)?.call(req)
}

/// Waits between reconnection attempts of `watch --follow`: doubling from 200 ms, never
/// more than 5 s (an enforcer restart takes about a second; a long outage costs one
/// attempt every 5 s).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let w = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        w
    }

    /// A connection worked: start again from the shortest wait.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<u128> = (0..8).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_wait(), Backoff::FIRST);
    }

    #[test]
    fn connection_errors_say_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        // No socket at all: the enforcer is not running (or another --runtime-dir).
        let e = Client::connect(d.path()).unwrap_err();
        assert!(e.contains(HINT_NOT_RUNNING), "{e}");
        // A stale socket nobody listens on: connection refused.
        let p = d.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        let e = Client::connect(d.path()).unwrap_err();
        assert!(e.contains("refused") && e.contains(HINT_NOT_RUNNING), "{e}");
        let e = connect_error(&p, &io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(e.ends_with(HINT_PERMISSION), "{e}");
        let e = connect_error(&p, &io::Error::from(io::ErrorKind::InvalidInput));
        assert!(!e.contains(HINT_PERMISSION) && !e.contains(HINT_NOT_RUNNING));
    }
}
