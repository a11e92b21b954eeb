//! One end of a `SOCK_SEQPACKET` socket pair: a record per send, at most one descriptor
//! beside it (`SCM_RIGHTS`). A record of the wrong length, a truncated one, or more than
//! one descriptor is an error, never a partial read.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

use crate::{DecodeError, Reply, Request, REP_LEN, REQ_LEN};

/// Why a receive failed.
#[derive(Debug)]
pub enum RecvError {
    /// The other end closed.
    Closed,
    Os(Errno),
    /// The record or its descriptors were cut (MSG_TRUNC / MSG_CTRUNC), or more than one
    /// descriptor came.
    Truncated,
    Decode(DecodeError),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Closed => f.write_str("the other end closed"),
            RecvError::Os(e) => write!(f, "{e}"),
            RecvError::Truncated => f.write_str("a truncated record or extra descriptors"),
            RecvError::Decode(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RecvError {}

/// One end of a channel.
#[derive(Debug)]
pub struct Channel(OwnedFd);

impl Channel {
    /// A connected pair (close-on-exec: the side handed to a child is cleared of it
    /// explicitly).
    pub fn pair() -> Result<(Channel, Channel), Errno> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel(a), Channel(b)))
    }

    /// Wrap a descriptor inherited across exec.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Channel(fd)
    }

    /// Take a descriptor inherited across exec (the worker's channels): it must be open;
    /// from here on this process owns it.
    pub fn from_inherited(fd: RawFd) -> Result<Self, Errno> {
        Ok(Channel(crate::sys::adopt(fd)?))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.0
    }

    fn send(&self, rec: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
        let iov = [IoSlice::new(rec)];
        let raw: [RawFd; 1];
        let cmsg: Vec<ControlMessage<'_>> = match fd {
            Some(f) => {
                raw = [f.as_raw_fd()];
                vec![ControlMessage::ScmRights(&raw)]
            }
            None => Vec::new(),
        };
        loop {
            match sendmsg::<UnixAddr>(
                self.0.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// One record of exactly `N` bytes (one more byte of room tells a longer one apart),
    /// and the descriptor beside it.
    fn recv<const N: usize>(&self) -> Result<([u8; N], Option<OwnedFd>), RecvError> {
        let mut buf = vec![0u8; N + 1];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = recvmsg::<UnixAddr>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match r {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(RecvError::Os(e)),
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        fds.extend(v.into_iter().map(crate::sys::received));
                    }
                }
            }
            let flags = msg.flags;
            let n = msg.bytes;
            if n == 0 && fds.is_empty() {
                return Err(RecvError::Closed);
            }
            if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || fds.len() > 1 {
                return Err(RecvError::Truncated);
            }
            if n != N {
                return Err(RecvError::Decode(DecodeError::Length(n)));
            }
            let mut out = [0u8; N];
            out.copy_from_slice(&buf[..N]);
            return Ok((out, fds.pop()));
        }
    }

    pub fn send_request(&self, r: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
        self.send(&r.encode(), fd)
    }

    pub fn send_reply(&self, r: &Reply, fd: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
        self.send(&r.encode(), fd)
    }

    /// A request, decoded; a descriptor with a verb that takes none is closed here and
    /// the request refused as truncated.
    pub fn recv_request(&self) -> Result<(Request, Option<OwnedFd>), RecvError> {
        let (b, fd) = self.recv::<REQ_LEN>()?;
        let r = Request::decode(&b).map_err(RecvError::Decode)?;
        if fd.is_some() && !r.verb.takes_fd() {
            return Err(RecvError::Truncated);
        }
        Ok((r, fd))
    }

    pub fn recv_reply(&self) -> Result<(Reply, Option<OwnedFd>), RecvError> {
        let (b, fd) = self.recv::<REP_LEN>()?;
        Ok((Reply::decode(&b).map_err(RecvError::Decode)?, fd))
    }
}
