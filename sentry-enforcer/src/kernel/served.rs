//! RESTART_GRACE in the kernel (issue #21): the ports real services served within the last
//! RESTART_GRACE seconds, kept in the table's `detect_served` sets so that the detection
//! chain treats them as served — no drop, no copy, no first hit — while a service restarts.
//!
//! The worker finds the served ports (sentry-worker's `served`: a sock_diag dump every
//! 250 ms, no privilege needed) and asks for each change with
//! [`Verb::Served`](sentry_privsep::Verb::Served) items;
//! this is the only part that needs CAP_NET_ADMIN: the set writes. Each item is written
//! as add (creates a missing element), delete, add with the timeout, all in one nfnetlink
//! batch — a re-add does not refresh an element's timeout, and in one batch the change
//! is atomic: a packet sees the old element or the new one, never none. A delete item is
//! add then delete (deleting a missing element would abort the batch).
//!
//! Why the parent may take these elements from the worker unchecked beyond their shape
//! ([`sentry_privsep::Request::decode`]): an element of these sets only makes the
//! detection chain *return* for its port — the packet goes on to `input`, whose block
//! check still drops a blocked source, and to the service (or the kernel's own answer).
//! The chain's `socket` lookups still protect every live socket whatever the sets hold.
//! A lying worker can therefore at worst drop the restart grace (write nothing, delete)
//! or watch fewer ports (claim more are served) — no more than it can already do by
//! not blocking; it cannot make a served port be dropped. And it cannot keep an element
//! alive without asking again: each expires after its timeout (at most one hour, the
//! largest RESTART_GRACE; the worker holds a served port for 60 s and rewrites it every
//! 20 s), so a dead worker leaves nothing behind for long.

use std::net::IpAddr;
use std::time::Duration;

use sentry_privsep::{Proto, Request, SERVED_ADD};

use crate::kernel::netlink::{NlError, NlSocket, SetElemBatch};

/// Port served on any address (`inet_proto . inet_service`).
pub const SET_ANY: &str = "detect_served";
/// Port served on one IPv4 address (`ipv4_addr . inet_proto . inet_service`).
pub const SET_V4: &str = "detect_served4";
/// Port served on one IPv6 address (`ipv6_addr . inet_proto . inet_service`).
pub const SET_V6: &str = "detect_served6";

/// One element write, from a [`Verb::Served`](sentry_privsep::Verb::Served) item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    pub set: &'static str,
    /// The concatenation's fields, each in a 4-byte register.
    pub key: Vec<u8>,
    /// `None`: remove it.
    pub timeout: Option<Duration>,
}

impl Elem {
    /// The element an item names (its shape was checked by the decoder).
    pub fn of(r: &Request) -> Self {
        let proto = match r.proto {
            Proto::Udp => 17,
            _ => 6,
        };
        let p = r.port.to_be_bytes();
        let tail = [proto, 0, 0, 0, p[0], p[1], 0, 0];
        let (set, key) = match r.addr {
            None => (SET_ANY, tail.to_vec()),
            Some(IpAddr::V4(a)) => (SET_V4, [&a.octets()[..], &tail].concat()),
            Some(IpAddr::V6(a)) => (SET_V6, [&a.octets()[..], &tail].concat()),
        };
        let timeout = (r.flag == SERVED_ADD).then(|| Duration::from_millis(r.timeout_ms));
        Self { set, key, timeout }
    }
}

/// Encode one nfnetlink batch that writes `elems` into the served sets of `table`: for
/// each set, add (no-op if present), delete, then add again with the timeout.
pub fn encode_batch(table: &str, elems: &[Elem], first_seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut b = SetElemBatch::new(first_seq, elems.len() * 3);
    for set in [SET_ANY, SET_V4, SET_V6] {
        let mine: Vec<&Elem> = elems.iter().filter(|e| e.set == set).collect();
        if mine.is_empty() {
            continue;
        }
        let untimed = || mine.iter().map(|e| (&e.key[..], None));
        b.push(table, set, true, untimed());
        b.push(table, set, false, untimed());
        let readd: Vec<&&Elem> = mine.iter().filter(|e| e.timeout.is_some()).collect();
        if !readd.is_empty() {
            b.push(
                table,
                set,
                true,
                readd.iter().map(|e| (&e.key[..], e.timeout)),
            );
        }
    }
    b.finish()
}

/// Write `elems` in one batch and wait for its ACKs.
pub fn write(s: &mut NlSocket, table: &str, elems: &[Elem]) -> Result<(), NlError> {
    let n = u32::try_from(elems.len() * 3).unwrap_or(u32::MAX / 2);
    let (msg, acks) = encode_batch(table, elems, s.next_seq(n));
    if msg.len() > s.send_limit {
        return Err(NlError::Malformed("batch larger than the send limit"));
    }
    s.transact(&msg, acks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::nl;
    use sentry_privsep::{Verb, SERVED_BATCH, SERVED_DEL, SERVED_TIMEOUT_MAX_MS};

    fn item(flag: u8, timeout_ms: u64, addr: Option<&str>, proto: Proto, port: u16) -> Request {
        let mut r = match addr {
            Some(a) => Request::for_addr(Verb::Served, 1, a.parse().unwrap()),
            None => Request::new(Verb::Served, 1),
        };
        (r.flag, r.timeout_ms, r.proto, r.port) = (flag, timeout_ms, proto, port);
        r
    }

    #[test]
    fn keys() {
        let any = Elem::of(&item(SERVED_ADD, 60_000, None, Proto::Tcp, 22));
        assert_eq!(
            (any.set, &any.key[..], any.timeout),
            (
                SET_ANY,
                &[6, 0, 0, 0, 0, 22, 0, 0][..],
                Some(Duration::from_secs(60))
            )
        );
        let v4 = Elem::of(&item(SERVED_DEL, 0, Some("10.0.0.1"), Proto::Udp, 53));
        assert_eq!(
            (v4.set, &v4.key[..], v4.timeout),
            (SET_V4, &[10, 0, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0][..], None)
        );
        let v6 = Elem::of(&item(SERVED_ADD, 1, Some("fd00::1"), Proto::Tcp, 443));
        assert_eq!((v6.set, v6.key.len()), (SET_V6, 24));
    }

    #[test]
    fn batch_shape() {
        let elems = [
            Elem::of(&item(SERVED_ADD, 60_000, None, Proto::Tcp, 22)),
            Elem::of(&item(SERVED_DEL, 0, None, Proto::Tcp, 23)),
        ];
        let (msg, acks) = encode_batch("t", &elems, 10);
        // add, delete, add-with-timeout of one set, between batch begin and end.
        assert_eq!(acks, [11, 12, 13]);
        let tys: Vec<u16> = nl::messages(&msg).map(|m| m.unwrap().ty).collect();
        let set = |t| (nl::NFNL_SUBSYS_NFTABLES << 8) | t;
        assert_eq!(tys, [0x10, set(12), set(14), set(12), 0x11]);
        // Only the re-add carries a timeout (60000 ms, big-endian), once.
        let t = 60_000u64.to_be_bytes();
        assert_eq!(msg.windows(8).filter(|w| *w == t).count(), 1);
        // Deletes only: no re-add.
        let (_, acks) = encode_batch("t", &elems[1..], 1);
        assert_eq!(acks, [2, 3]);
    }

    #[test]
    fn a_full_request_fits_in_one_batch() {
        let elems: Vec<Elem> = (0..SERVED_BATCH)
            .map(|i| {
                let a = format!("2001:db8::{i:x}");
                let port = u16::try_from(i + 1).unwrap();
                Elem::of(&item(
                    SERVED_ADD,
                    SERVED_TIMEOUT_MAX_MS,
                    Some(&a),
                    Proto::Udp,
                    port,
                ))
            })
            .collect();
        let (msg, acks) = encode_batch("sentry_table_name", &elems, 0);
        assert_eq!(acks.len(), 3);
        assert!(msg.len() < 60 * 1024, "{}", msg.len());
    }

    /// Against the real kernel, in a private network namespace: an element appears with
    /// its timeout, a rewrite replaces the timeout, a delete of a missing element is no
    /// failure, and the element expires.
    #[test]
    fn kernel_round_trip() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED (needs root): kernel_round_trip");
            return;
        }
        let r = std::thread::spawn(|| -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            // The sets as the table declares them (with the rest of the detection objects).
            let script = crate::kernel::table::detection_script(
                "st",
                &crate::kernel::table::DetectSpec::blocks_only(None),
            )?;
            crate::kernel::table::nft(&script, Duration::from_secs(10))?;
            let list = || {
                let o = std::process::Command::new("nft")
                    .args(["list", "table", "inet", "st"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            let mut s = NlSocket::netfilter().map_err(|e| e.to_string())?;
            let w = |s: &mut NlSocket, items: &[Request]| {
                let e: Vec<Elem> = items.iter().map(Elem::of).collect();
                write(s, "st", &e).map_err(|e| e.to_string())
            };
            w(
                &mut s,
                &[
                    item(SERVED_ADD, 60_000, None, Proto::Tcp, 7777),
                    item(SERVED_ADD, 60_000, None, Proto::Udp, 7778),
                    item(SERVED_ADD, 60_000, Some("10.0.0.1"), Proto::Udp, 53),
                    item(SERVED_DEL, 0, Some("fd00::1"), Proto::Tcp, 9),
                ],
            )?;
            let l = list();
            if !(l.contains("tcp . 7777")
                && l.contains("udp . 7778")
                && l.contains("10.0.0.1 . udp . 53"))
            {
                return Err(l);
            }
            // The port closed: its element now expires after the grace.
            w(&mut s, &[item(SERVED_ADD, 2000, None, Proto::Tcp, 7777)])?;
            let l = list();
            if !l.contains("tcp . 7777 timeout 2s") {
                return Err(l);
            }
            std::thread::sleep(Duration::from_millis(3200));
            let l = list();
            if l.contains("tcp . 7777") || !l.contains("udp . 7778") {
                return Err(l);
            }
            w(
                &mut s,
                &[item(SERVED_DEL, 0, Some("10.0.0.1"), Proto::Udp, 53)],
            )?;
            if list().contains("10.0.0.1") {
                return Err(list());
            }
            Ok(())
        })
        .join()
        .unwrap();
        r.unwrap();
    }
}
