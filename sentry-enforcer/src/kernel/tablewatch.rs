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

use nix::sys::socket::{setsockopt, sockopt, SockProtocol};

use crate::kernel::netlink::NlError;
use crate::kernel::nl::{self, NFNL_SUBSYS_NFTABLES, NFPROTO_INET};

const NFGENMSG_LEN: usize = 4;
/// nf_tables' multicast group (NFNLGRP_NFTABLES).
const NFNLGRP_NFTABLES: u32 = 7;
/// The table-name attribute has type 1 in every message that names a table
/// (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
/// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
const ATTR_TABLE: u16 = 1;
/// The set-name attribute of a set-element message (NFTA_SET_ELEM_LIST_SET).
const ATTR_SET: u16 = 2;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
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
fn foreign_change(m: nl::Msg<'_>, table: &str, own_portid: u32) -> Option<u32> {
    if m.ty >> 8 != NFNL_SUBSYS_NFTABLES || m.ty & 0xff == NFT_MSG_NEWGEN || m.portid == own_portid
    {
        return None;
    }
    let elems = matches!(m.ty & 0xff, NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM);
    let (gen, attrs) = m.payload.split_at_checked(NFGENMSG_LEN)?;
    if gen[0] != NFPROTO_INET {
        return None;
    }
    let mut ours = false;
    for a in nl::attrs(attrs) {
        let Ok((ty, payload)) = a else { break };
        let name = payload.split(|b| *b == 0).next().unwrap_or_default();
        if ty == ATTR_TABLE {
            ours = name == table.as_bytes();
        } else if ty == ATTR_SET
            && elems
            && name.starts_with(crate::kernel::served::SET_ANY.as_bytes())
        {
            // The served-port writes (crate::kernel::served, asked for by the worker's
            // poller, four a second at most): not a change to answer with a rebuild.
            // Whatever else changes them is overwritten by the next full rewrite.
            return None;
        }
    }
    ours.then_some(m.portid)
}

/// The first foreign change to `table` among the netlink messages in one datagram (they
/// are read up to the first bad length).
pub fn scan_datagram(buf: &[u8], table: &str, own_portid: u32) -> Option<u32> {
    nl::messages(buf)
        .map_while(Result::ok)
        .find_map(|m| foreign_change(m, table, own_portid))
}

/// The subscribed socket.
#[derive(Debug)]
pub struct TableWatch(nl::Watch);

impl TableWatch {
    /// Subscribe to nf_tables notifications (needs CAP_NET_ADMIN, which the enforcer holds
    /// whenever it has a table).
    pub fn open() -> Result<Self, NlError> {
        // Groups below 32 can be joined with bind(2)'s bit mask (group n is bit n-1).
        let groups = 1 << (NFNLGRP_NFTABLES - 1);
        let w = nl::Watch::open(SockProtocol::NetlinkNetFilter, groups, 64 * 1024)
            .map_err(NlError::Io)?;
        // A flush of a large set is one notification per element batch: room for bursts.
        let _ = setsockopt(&*w.fd, sockopt::RcvBuf, &(4usize << 20));
        Ok(Self(w))
    }

    /// The socket, for a poll loop (which must not read it: only [`TableWatch::drain`]
    /// consumes).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&*self.0.fd)
    }

    /// Read everything queued without waiting.
    pub fn drain(&mut self, table: &str, own_portid: u32) -> Result<Changes, NlError> {
        let mut by = None;
        let overrun = self.0.drain(DRAIN_MAX_READS, |b| {
            if by.is_none() {
                // Our own `nft` children (table and detection builds) are not news.
                by = scan_datagram(b.unwrap_or(&[]), table, own_portid)
                    .filter(|p| !crate::effects::exec::recently_spawned(*p));
            }
        });
        Ok(Changes {
            by,
            overrun: overrun.map_err(NlError::Io)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One nf_tables notification: header, nfgenmsg, a table-name attribute.
    fn note(msg_type: u16, family: u8, table: &str, portid: u32) -> Vec<u8> {
        let mut b = nl::MsgBuilder::new(Vec::new());
        b.begin((NFNL_SUBSYS_NFTABLES << 8) | msg_type, 0, 1);
        b.nfgen(family, 0);
        b.attr_strz(ATTR_TABLE, table);
        b.end();
        let mut m = b.finish();
        m[12..16].copy_from_slice(&portid.to_ne_bytes());
        m
    }

    #[test]
    fn only_foreign_changes_to_our_inet_table_count() {
        const DELTABLE: u16 = 2;
        const DELSETELEM: u16 = 14;
        assert_eq!(
            scan_datagram(&note(DELTABLE, 1, "sentry", 77), "sentry", 5),
            Some(77)
        );
        // Our own set socket's changes (blocks, unblocks) are not tampering.
        assert_eq!(
            scan_datagram(&note(DELSETELEM, 1, "sentry", 5), "sentry", 5),
            None
        );
        // Another table, another family, the end-of-transaction message.
        assert_eq!(
            scan_datagram(&note(DELTABLE, 1, "sentry2", 77), "sentry", 5),
            None
        );
        assert_eq!(
            scan_datagram(&note(DELTABLE, 1, "sentr", 77), "sentry", 5),
            None
        );
        assert_eq!(
            scan_datagram(&note(DELTABLE, 2, "sentry", 77), "sentry", 5),
            None
        );
        assert_eq!(
            scan_datagram(&note(NFT_MSG_NEWGEN, 1, "sentry", 77), "sentry", 5),
            None
        );
        // The served-port element writes are not tampering; other sets' are.
        let served = |set: &str| {
            let mut b = nl::MsgBuilder::new(Vec::new());
            b.begin((NFNL_SUBSYS_NFTABLES << 8) | DELSETELEM, 0, 1);
            b.nfgen(1, 0);
            b.attr_strz(ATTR_TABLE, "sentry");
            b.attr_strz(ATTR_SET, set);
            b.end();
            let mut m = b.finish();
            m[12..16].copy_from_slice(&77u32.to_ne_bytes());
            m
        };
        assert_eq!(scan_datagram(&served("detect_served4"), "sentry", 5), None);
        assert_eq!(scan_datagram(&served("v4"), "sentry", 5), Some(77));
        // Several messages in one datagram: the one that matters is found.
        let mut d = note(DELTABLE, 1, "filter", 9);
        d.extend(note(DELSETELEM, 1, "sentry", 9));
        assert_eq!(scan_datagram(&d, "sentry", 5), Some(9));
    }

    #[test]
    fn malformed_notifications_never_panic() {
        let good = note(2, 1, "sentry", 77);
        for cut in 0..good.len() {
            let _ = scan_datagram(&good[..cut], "sentry", 5);
        }
        let mut bad = good.clone();
        bad[20] = 2; // attribute length 2 (< header)
        bad[21] = 0;
        assert_eq!(scan_datagram(&bad, "sentry", 5), None);
        let mut huge = good;
        huge[0] = 0xff; // message length past the datagram
        assert_eq!(scan_datagram(&huge, "sentry", 5), None);
    }
}
