//! Notices when another process changes sentry's nftables table — `nft flush ruleset`,
//! `systemctl restart nftables`, a deleted set or chain, a flushed set — so the enforcer
//! can rebuild it with every active block at once instead of leaving the host unprotected
//! until its next restart.
//!
//! The socket listens to nf_tables' notification group. Each notification carries the
//! port id of the netlink socket whose request caused it; changes made through the
//! enforcer's own set socket (every block and unblock) carry that socket's id and are
//! ignored. Datagrams not sent by the kernel are discarded, so no local process can make
//! the enforcer rebuild by writing to this socket. Reading notifications is reading
//! kernel objects, never packets.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recvfrom, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

use crate::netlink::NlError;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// nf_tables' multicast group (NFNLGRP_NFTABLES).
const NFNLGRP_NFTABLES: u32 = 7;
const NFPROTO_INET: u8 = 1;
/// The table-name attribute has type 1 in every message that names a table
/// (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
/// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
const ATTR_TABLE: u16 = 1;
/// NFT_MSG_NEWGEN ends every transaction and names no table.
const NFT_MSG_NEWGEN: u16 = 15;
/// Most reads per drain: the kernel is the only sender that counts, but a drain ends.
const DRAIN_MAX_READS: usize = 1024;

/// What a drain found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Port id of a foreign process that changed our table (the first one seen).
    pub by: Option<u32>,
    /// The queue overran: changes may have been lost, so assume one.
    pub overrun: bool,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.by.is_some() || self.overrun
    }
}

/// Whether one notification (one netlink message) is a change to `table` (family inet)
/// made by a socket other than `own_portid`: `Some(portid)` if so.
pub fn foreign_change(msg: &[u8], table: &str, own_portid: u32) -> Option<u32> {
    let hdr = msg.get(..NLMSG_HDRLEN)?;
    let ty = u16::from_ne_bytes([hdr[4], hdr[5]]);
    let portid = u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
    if ty >> 8 != NFNL_SUBSYS_NFTABLES || ty & 0xff == NFT_MSG_NEWGEN || portid == own_portid {
        return None;
    }
    let gen = msg.get(NLMSG_HDRLEN..NLMSG_HDRLEN + NFGENMSG_LEN)?;
    if gen[0] != NFPROTO_INET {
        return None;
    }
    let mut attrs = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let aty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 {
            return None;
        }
        let payload = attrs.get(4..len)?;
        if aty == ATTR_TABLE {
            let name = payload.split(|b| *b == 0).next()?;
            return (name == table.as_bytes()).then_some(portid);
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// Every foreign change to `table` among the netlink messages in one datagram.
pub fn scan_datagram(buf: &[u8], table: &str, own_portid: u32) -> Option<u32> {
    let mut rest = buf;
    let mut found = None;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN {
            break;
        }
        let Some(msg) = rest.get(..len) else { break };
        if found.is_none() {
            found = foreign_change(msg, table, own_portid);
        }
        rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
    }
    found
}

/// The subscribed socket.
#[derive(Debug)]
pub struct TableWatch {
    fd: Arc<OwnedFd>,
    buf: Vec<u8>,
}

impl TableWatch {
    /// Subscribe to nf_tables notifications (needs CAP_NET_ADMIN, which the enforcer holds
    /// whenever it has a table).
    pub fn open() -> Result<Self, NlError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(NlError::Io)?;
        // Groups below 32 can be joined with bind(2)'s bit mask (group n is bit n-1).
        bind(
            fd.as_raw_fd(),
            &NetlinkAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
        )
        .map_err(NlError::Io)?;
        // A flush of a large set is one notification per element batch: room for bursts.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(4usize << 20));
        Ok(Self {
            fd: Arc::new(fd),
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// The socket, for the thread that waits for it to become readable.
    pub fn poll_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd)
    }

    /// Read everything queued without waiting.
    pub fn drain(&mut self, table: &str, own_portid: u32) -> Result<Changes, NlError> {
        let mut c = Changes::default();
        for _ in 0..DRAIN_MAX_READS {
            match recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), &mut self.buf) {
                Ok((n, Some(from))) if from.pid() == 0 => {
                    if c.by.is_none() {
                        // Our own `nft` children (table and detection builds) are not news.
                        c.by = scan_datagram(self.buf.get(..n).unwrap_or(&[]), table, own_portid)
                            .filter(|p| !crate::exec::recently_spawned(*p));
                    }
                }
                Ok(_) => {}
                Err(Errno::EAGAIN) => return Ok(c),
                Err(Errno::EINTR) => {}
                Err(Errno::ENOBUFS) => c.overrun = true,
                Err(e) => return Err(NlError::Io(e)),
            }
        }
        c.overrun = true;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One nf_tables notification: header, nfgenmsg, a table-name attribute.
    fn note(msg_type: u16, family: u8, table: &str, portid: u32) -> Vec<u8> {
        let mut attr = Vec::new();
        let name_len = table.len() + 1;
        attr.extend_from_slice(&u16::try_from(4 + name_len).unwrap().to_ne_bytes());
        attr.extend_from_slice(&ATTR_TABLE.to_ne_bytes());
        attr.extend_from_slice(table.as_bytes());
        attr.push(0);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + attr.len();
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg_type).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&portid.to_ne_bytes());
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn only_foreign_changes_to_our_inet_table_count() {
        const DELTABLE: u16 = 2;
        const DELSETELEM: u16 = 14;
        assert_eq!(
            foreign_change(&note(DELTABLE, 1, "sentry", 77), "sentry", 5),
            Some(77)
        );
        // Our own set socket's changes (blocks, unblocks) are not tampering.
        assert_eq!(
            foreign_change(&note(DELSETELEM, 1, "sentry", 5), "sentry", 5),
            None
        );
        // Another table, another family, the end-of-transaction message.
        assert_eq!(
            foreign_change(&note(DELTABLE, 1, "sentry2", 77), "sentry", 5),
            None
        );
        assert_eq!(
            foreign_change(&note(DELTABLE, 1, "sentr", 77), "sentry", 5),
            None
        );
        assert_eq!(
            foreign_change(&note(DELTABLE, 2, "sentry", 77), "sentry", 5),
            None
        );
        assert_eq!(
            foreign_change(&note(NFT_MSG_NEWGEN, 1, "sentry", 77), "sentry", 5),
            None
        );
        // Several messages in one datagram: the one that matters is found.
        let mut d = note(DELTABLE, 1, "filter", 9);
        d.extend(note(DELSETELEM, 1, "sentry", 9));
        assert_eq!(scan_datagram(&d, "sentry", 5), Some(9));
    }

    #[test]
    fn malformed_notifications_never_panic() {
        let good = note(2, 1, "sentry", 77);
        for cut in 0..good.len() {
            let _ = foreign_change(&good[..cut], "sentry", 5);
            let _ = scan_datagram(&good[..cut], "sentry", 5);
        }
        let mut bad = good.clone();
        bad[20] = 2; // attribute length 2 (< header)
        bad[21] = 0;
        assert_eq!(foreign_change(&bad, "sentry", 5), None);
        let mut huge = good;
        huge[0] = 0xff; // message length past the datagram
        assert_eq!(scan_datagram(&huge, "sentry", 5), None);
    }
}
