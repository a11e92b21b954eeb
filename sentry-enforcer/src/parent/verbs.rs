//! The verbs themselves, on items [`super::serve::check`] passed: set elements and routes
//! over netlink, deny-file lines, the table and its detection chain (`nft -f -`), the
//! NFLOG socket, read-backs of the sets and maps, and the sensor's peer check.

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use sentry_privsep::{
    full_prefix, DumpItem, Hello, Modes, Refusal, Reply, ReplyKind, Request, SetName, Verb,
    ELEMS_PER_REPLY,
};

use super::floor::Kind;
use super::serve::{Answer, Batch, Tally};
use super::{say, Parent};
use crate::effects::hostsdeny;
use crate::kernel::netlink::{NlError, NlSocket, SetElem};
use crate::kernel::table::{self, DetectSpec, Tripwire, HIT_V4, HIT_V6, SET_V4, SET_V6, SET_V6NET};
use crate::kernel::{capture, served};

fn elem(r: &Request, addr: IpAddr) -> SetElem {
    SetElem {
        addr,
        timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
    }
}

/// The KILL_HOSTS_DENY line for a block (IPv6 in brackets, as hosts_access(5) wants; a
/// network as `[net]/len`), rendered by the parent from its own template.
pub fn deny_line(cfg: &policy::Config, r: &Request, a: IpAddr, net: Option<u8>) -> Option<String> {
    let tpl = cfg.kill_hosts_deny.as_ref()?;
    let target = match (a, net) {
        (IpAddr::V4(a), _) => a.to_string(),
        (IpAddr::V6(a), None) => format!("[{a}]"),
        (IpAddr::V6(a), Some(len)) => format!("[{a}]/{len}"),
    };
    Some(tpl.render(&policy::Vars {
        target: &target,
        port: r.port,
        mode: r.proto.as_str(),
    }))
}

fn enoent(e: &NlError) -> bool {
    match e {
        NlError::Kernel(Errno::ENOENT) => true,
        NlError::Partial { first, .. } => enoent(first),
        _ => false,
    }
}

fn nl_fail(id: u32, what: &str, e: &NlError) -> Reply {
    let errno = match e {
        NlError::Kernel(x) | NlError::Io(x) => *x as u64,
        _ => 0,
    };
    Reply::fail(id, errno, &format!("{what}: {e}"))
}

/// Add or delete `hosts` (v4/v6) and `nets` (v6net) in one call each. A delete of
/// elements that are gone is no failure: the kernel aborts a batch on the first missing
/// element, so such a batch is done again element by element.
fn setelems(
    s: &mut NlSocket,
    table: &str,
    hosts: &[SetElem],
    nets: &[SetElem],
    add: bool,
) -> Result<(), NlError> {
    for (v6, elems) in [(SET_V6, hosts), (SET_V6NET, nets)] {
        if elems.is_empty() {
            continue;
        }
        match s.setelems(table, SET_V4, v6, elems, add) {
            Err(e) if !add && enoent(&e) && elems.len() > 1 => {
                for one in elems.chunks(1) {
                    match s.setelems(table, SET_V4, v6, one, false) {
                        Err(e) if !enoent(&e) => return Err(e),
                        _ => {}
                    }
                }
            }
            Err(e) if !add && enoent(&e) => {}
            other => other?,
        }
    }
    Ok(())
}

impl Parent {
    pub fn hello(&self, id: u32) -> Reply {
        let mut bits = 0;
        if self.nft_on() {
            bits |= Hello::NFT;
        }
        if self.route.is_some() {
            bits |= Hello::ROUTE;
        }
        if self.support.nftables.is_ok() {
            bits |= Hello::NFTABLES;
        }
        if self.support.socket.is_ok() {
            bits |= Hello::SOCKET;
        }
        Reply {
            a: bits,
            port: self.detect.group,
            ..Reply::ok(id)
        }
    }

    /// The block sets are in effect: FIREWALL="nftables" and its socket is open.
    pub fn nft_on(&self) -> bool {
        self.nft.is_some() && self.cfg.firewall == policy::Firewall::Nftables
    }

    pub fn nft(&mut self, b: &Batch) -> Reply {
        let add = b.verb == Verb::NftAdd;
        let mut t = Tally::default();
        let now = Instant::now();
        let mut room = self.floor.room(Kind::Nft, now);
        let (mut hosts, mut nets) = (Vec::new(), Vec::new());
        for (r, s) in self.checked(b, &mut t) {
            let Some((a, net)) = s else { continue };
            if add && room == 0 {
                self.refuse_item(&r, Refusal::Rate, &mut t);
                continue;
            }
            room = room.saturating_sub(1);
            match net {
                Some(_) => nets.push(elem(&r, a)),
                None => hosts.push(elem(&r, a)),
            }
        }
        let n = hosts.len() + nets.len();
        let Some(s) = self.nft.as_mut().filter(|_| n > 0) else {
            if n > 0 {
                return self.refuse(b.verb, None, b.id, Refusal::NotConfigured);
            }
            return t.reply(b.id, b.items.len());
        };
        if let Err(e) = setelems(s, &self.cfg.nft_table, &hosts, &nets, add) {
            return nl_fail(b.id, "nftables", &e);
        }
        if add {
            self.floor.charge(Kind::Nft, n, now);
        }
        t.done = n as u64;
        t.reply(b.id, b.items.len())
    }

    pub fn route(&mut self, b: &Batch) -> Reply {
        let r = b.items[0];
        let add = b.verb == Verb::RouteAdd;
        let Ok(Some((a, net))) = super::serve::check(&r, &self.floor) else {
            return self.refuse(r.verb, r.addr, b.id, Refusal::Malformed);
        };
        let now = Instant::now();
        if add && self.floor.room(Kind::Route, now) == 0 {
            return self.refuse(r.verb, r.addr, b.id, Refusal::Rate);
        }
        let Some(s) = self.route.as_mut() else {
            return self.refuse(r.verb, r.addr, b.id, Refusal::NotConfigured);
        };
        match (
            s.blackhole(a, net.unwrap_or_else(|| full_prefix(a)), add),
            add,
        ) {
            (Ok(()), true) => self.floor.charge(Kind::Route, 1, now),
            // Already there / already gone: the state asked for.
            (Ok(()), false) | (Err(NlError::Kernel(Errno::EEXIST)), true) => {}
            (Err(NlError::Kernel(Errno::ESRCH | Errno::ENOENT)), false) => {}
            (Err(e), _) => return nl_fail(b.id, "route", &e),
        }
        Reply::ok(b.id)
    }

    pub fn deny(&mut self, b: &Batch) -> Reply {
        let add = b.verb == Verb::DenyAdd;
        if self.cfg.kill_hosts_deny.is_none() {
            return self.refuse(b.verb, None, b.id, Refusal::NotConfigured);
        }
        let now = Instant::now();
        if add && self.floor.room(Kind::Deny, now) == 0 {
            return self.refuse(b.verb, b.items[0].addr, b.id, Refusal::Rate);
        }
        let mut t = Tally::default();
        let mut lines = Vec::new();
        for (r, s) in self.checked(b, &mut t) {
            if let Some((a, net)) = s {
                let line = deny_line(&self.cfg, &r, a, net).unwrap_or_default();
                lines.push((a, line, r.flag == 1));
            }
        }
        let path = self.cfg.hosts_deny_file.clone();
        let entries = hostsdeny::entries(&lines);
        let r = match add {
            true => hostsdeny::add_many(&path, &entries).map(|n| {
                self.floor.charge(Kind::Deny, n, now);
                String::new()
            }),
            false => hostsdeny::remove(&path, &entries).map(|r| r.kept.join("; ")),
        };
        match r {
            Ok(kept) => {
                t.done = lines.len() as u64;
                Reply {
                    text: kept,
                    ..t.reply(b.id, b.items.len())
                }
            }
            // The deny file's errors name the file already.
            Err(e) => Reply::fail(
                b.id,
                e.raw_os_error().map_or(0, |x| x as u64),
                &e.to_string(),
            ),
        }
    }

    pub fn kill(&mut self, b: &Batch) -> Answer {
        let mut r = b.items[0];
        let tpl = match r.verb {
            Verb::KillRoute => self.cfg.kill_route.is_some(),
            _ => self.cfg.kill_run_cmd.is_some(),
        };
        let why = if !tpl {
            Some(Refusal::NotConfigured)
        } else {
            (self.floor.room(Kind::Kill, Instant::now()) == 0).then_some(Refusal::Rate)
        };
        if let Some(why) = why {
            return Answer::one(self.refuse(r.verb, r.addr, b.id, why));
        }
        if let Ok(Some((a, _))) = super::serve::check(&r, &self.floor) {
            r.addr = Some(a);
        }
        self.floor.charge(Kind::Kill, 1, Instant::now());
        Answer::Forward(r)
    }

    pub fn build(&mut self, b: &Batch) -> Reply {
        let mut t = Tally::default();
        let (mut hosts, mut nets) = (Vec::new(), Vec::new());
        for (r, s) in self.checked(b, &mut t) {
            match s {
                Some((a, Some(_))) => nets.push(elem(&r, a)),
                Some((a, None)) => hosts.push(elem(&r, a)),
                None => {}
            }
        }
        if let Err(e) = table::build(&self.cfg, &hosts, &nets) {
            return Reply::fail(b.id, 0, &e);
        }
        self.after_build();
        t.done = (hosts.len() + nets.len()) as u64;
        t.reply(b.id, 0)
    }

    /// The table is new: watch it (from now on, so its own build is no news), put the
    /// detection chain back when its inputs are known. (The worker rewrites the served
    /// ports after its Build.)
    fn after_build(&mut self) {
        if self.watch.is_none() && self.nft.is_some() {
            match crate::kernel::tablewatch::TableWatch::open() {
                Ok(w) => self.watch = Some(w),
                Err(e) => say(&format!("adminalert: cannot watch the nftables table ({e}); if another process deletes it, it is rebuilt only at the next start")),
            }
        }
        self.drain_own_changes();
        self.detect.applied = None;
        if self.detect.input.is_some() {
            if let Err(e) = self.apply_detection() {
                say(&format!(
                    "adminalert: ERROR: detection chain not rebuilt with the table: {e}"
                ));
            }
        }
    }

    /// Read our own `nft` run's notifications; a change by another process that came in
    /// meanwhile is still news.
    pub fn drain_own_changes(&mut self) {
        let own = self.nft_portid();
        if let Some(w) = self.watch.as_mut() {
            if let Ok(c) = w.drain(&self.cfg.nft_table, own) {
                self.table_foreign |= c.by.is_some();
            }
        }
    }

    pub fn nft_portid(&self) -> u32 {
        self.nft.as_ref().and_then(|s| s.portid().ok()).unwrap_or(0)
    }

    pub fn detect(&mut self, b: &Batch) -> Reply {
        let Some(last) = b.items.iter().find(|r| r.addr.is_none()) else {
            return self.refuse(b.verb, None, b.id, Refusal::Malformed);
        };
        let modes = Modes(u8::try_from(last.extra).unwrap_or(0));
        let never = b.items.iter().filter_map(|r| r.addr).collect();
        self.detect.input = Some((modes, never));
        match self.apply_detection() {
            Ok(()) => Reply::ok(b.id),
            Err(e) => Reply::fail(b.id, 0, &e),
        }
    }

    /// (Re)build the detection chain from its last inputs, unless the kernel holds it.
    pub fn apply_detection(&mut self) -> Result<(), String> {
        let Some((modes, never)) = &self.detect.input else {
            return Ok(());
        };
        if let Err(e) = &self.support.nftables {
            return Err(format!("nf_tables is not usable ({e})"));
        }
        let nft = self.nft_on();
        let mut never = never.clone();
        never.extend(self.floor.gateways());
        let native = nft.then_some(self.cfg.block_prefix6);
        let mut spec = DetectSpec::new(
            &self.cfg,
            *modes,
            self.floor.ignore(),
            self.support.socket.is_ok(),
            native,
        )
        .with_tripwire(Tripwire::from_config(&self.cfg, nft), &never);
        spec.nflog_group = self.detect.group;
        if self.detect.applied.as_ref() == Some(&spec) {
            return Ok(());
        }
        table::apply_detection(&self.cfg, &spec)?;
        self.detect.applied = Some(spec);
        self.drain_own_changes();
        Ok(())
    }

    pub fn nflog(&mut self, id: u32) -> Answer {
        let (group, fd) = match capture::open_next(self.detect.group, capture::NFLOG_SNAPLEN) {
            Ok(x) => x,
            Err(e) => return Answer::one(Reply::fail(id, 0, &format!("no NFLOG group: {e}"))),
        };
        self.detect.group = group;
        let switched = self.apply_detection();
        // Whatever was handed out before stops receiving now.
        self.release_nflog();
        if let Err(e) = switched {
            return Answer::one(Reply::fail(
                id,
                0,
                &format!("detection chain not moved to NFLOG group {group}: {e}"),
            ));
        }
        match fd.try_clone() {
            Ok(copy) => self.detect.held = Some((group, copy)),
            Err(e) => {
                return Answer::one(Reply::fail(
                    id,
                    e.raw_os_error().map_or(0, |x| x as u64),
                    "dup",
                ))
            }
        }
        let r = Reply {
            port: group,
            ..Reply::ok(id)
        };
        Answer::Replies(vec![r], Some(fd))
    }

    /// RESTART_GRACE: write the served-port elements the worker found (`kernel::served`:
    /// why nothing but their shape, checked by the decoder, is asked of them).
    pub fn served(&mut self, b: &Batch) -> Reply {
        let Some(s) = self.served.as_mut() else {
            return self.refuse(b.verb, None, b.id, Refusal::NotConfigured);
        };
        let elems: Vec<served::Elem> = b.items.iter().map(served::Elem::of).collect();
        match served::write(s, &self.cfg.nft_table, &elems) {
            Ok(()) => Reply {
                a: elems.len() as u64,
                ..Reply::ok(b.id)
            },
            Err(e) => nl_fail(b.id, "served ports", &e),
        }
    }

    /// Unbind the group handed out last (its holders, a sensor gone or a child it forked,
    /// get nothing more).
    pub fn release_nflog(&mut self) {
        if let Some((g, fd)) = self.detect.held.take() {
            if let Err(e) = capture::unbind(g, fd) {
                say(&format!("adminalert: cannot unbind NFLOG group {g} ({e})"));
            }
        }
    }
}

/// One read-back element, for an Elem reply.
fn dump_item(e: &crate::kernel::netlink::DumpElem, prefix: u8) -> DumpItem {
    let mut data = [0u8; 12];
    if let Some(d) = &e.data {
        let n = d.len().min(12);
        data[..n].copy_from_slice(&d[..n]);
    }
    DumpItem {
        addr: e.addr,
        prefix,
        expires_ms: e
            .expires
            .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        data,
    }
}

impl Parent {
    pub fn dump(&mut self, r: &Request) -> Vec<Reply> {
        let limit = usize::try_from(r.extra)
            .unwrap_or(usize::MAX)
            .min(self.floor.cap);
        let sets: &[&str] = match SetName::from_u8(r.flag) {
            Some(SetName::Blocks) => &[SET_V4, SET_V6, SET_V6NET],
            Some(SetName::Hit4) => &[HIT_V4],
            _ => &[HIT_V6],
        };
        if self.nft.is_none() {
            return vec![self.refuse(r.verb, None, r.id, Refusal::NotConfigured)];
        }
        let Some(s) = self.nft.as_mut() else {
            return Vec::new();
        };
        let mut items = Vec::new();
        for set in sets {
            let left = limit.saturating_sub(items.len());
            match s.elements(&self.cfg.nft_table, set, left) {
                Ok(v) => {
                    let p = |a: IpAddr| {
                        if *set == SET_V6NET {
                            self.cfg.block_prefix6
                        } else {
                            full_prefix(a)
                        }
                    };
                    items.extend(v.iter().map(|e| dump_item(e, p(e.addr))));
                }
                Err(e) => return vec![nl_fail(r.id, "nftables read-back", &e)],
            }
        }
        let mut out: Vec<Reply> = items
            .chunks(ELEMS_PER_REPLY)
            .map(|c| Reply::elems(r.id, c))
            .collect();
        let n = items.len() as u64;
        out.push(Reply {
            a: n,
            ..Reply::new(ReplyKind::End, r.id)
        });
        out
    }

    pub fn forget(&mut self, r: &Request) -> Reply {
        if self.nft.is_none() {
            return self.refuse(r.verb, r.addr, r.id, Refusal::NotConfigured);
        }
        let (Some(a), Some(s)) = (r.addr, self.nft.as_mut()) else {
            return self.refuse(r.verb, r.addr, r.id, Refusal::Malformed);
        };
        let map = if a.is_ipv4() { HIT_V4 } else { HIT_V6 };
        // Look first: deleting a missing element aborts a transaction (an RCU grace
        // period); most refused sources were never in the map.
        match s.has_element(&self.cfg.nft_table, map, a) {
            Ok(false) => return Reply::ok(r.id),
            Ok(true) => {}
            Err(e) => return nl_fail(r.id, "nftables lookup", &e),
        }
        let e = [SetElem {
            addr: a,
            timeout: None,
        }];
        match s.setelems(&self.cfg.nft_table, HIT_V4, HIT_V6, &e, false) {
            Ok(()) | Err(NlError::Kernel(Errno::ENOENT)) => Reply::ok(r.id),
            Err(e) => nl_fail(r.id, "nftables", &e),
        }
    }

    /// Is the peer of the connection passed (the worker accepted it) the installed
    /// sensor? Its uid, then its executable and unit (crate::peercheck).
    pub fn peer(&mut self, id: u32, fd: Option<OwnedFd>) -> Reply {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let Some(fd) = fd else {
            return self.refuse(Verb::Peer, None, id, Refusal::Malformed);
        };
        let cred = match getsockopt(&fd, PeerCredentials) {
            Ok(c) => c,
            Err(e) => return Reply::fail(id, e as u64, &format!("SO_PEERCRED: {e}")),
        };
        let (uid, pid) = (cred.uid(), u32::try_from(cred.pid()).unwrap_or(0));
        if uid != self.sensor_uid {
            return Reply::fail(
                id,
                0,
                &format!(
                    "peer uid {uid} (pid {pid}) is not the sensor user (uid {})",
                    self.sensor_uid
                ),
            );
        }
        // A root sensor could bind an NFLOG group itself: checking it adds nothing.
        if uid == 0 {
            return Reply {
                text: "root".into(),
                ..Reply::ok(id)
            };
        }
        let pidfd =
            match crate::sys::peer_pidfd(fd.as_fd()).or_else(|_| crate::sys::pidfd_open(pid)) {
                Ok(p) => p,
                Err(e) => return Reply::fail(id, 0, &format!("pidfd of pid {pid}: {e}")),
            };
        let v = crate::peercheck::check(&self.sensor_want, pid, &pidfd);
        match v.refused {
            None => Reply {
                text: v.exe,
                ..Reply::ok(id)
            },
            Some(why) => Reply::fail(id, 0, &format!("{why} (exe {})", v.exe)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_privsep::Proto;

    #[test]
    fn deny_lines() {
        let cfg = policy::Config::parse(
            "KILL_HOSTS_DENY=\"ALL: $TARGET$ : $PORT$ $MODE$\"\n",
            std::path::Path::new("t.conf"),
        )
        .unwrap();
        let mut r = Request::new(Verb::DenyAdd, 1);
        r.port = 22;
        r.proto = Proto::Udp;
        let line = |a: &str, net| deny_line(&cfg, &r, a.parse().unwrap(), net).unwrap();
        assert_eq!(line("192.0.2.9", None), "ALL: 192.0.2.9 : 22 udp");
        assert_eq!(line("2001:db8::9", None), "ALL: [2001:db8::9] : 22 udp");
        assert_eq!(
            line("2001:db8::", Some(64)),
            "ALL: [2001:db8::]/64 : 22 udp"
        );
        let none = policy::Config::parse("", std::path::Path::new("t.conf")).unwrap();
        assert_eq!(
            deny_line(&none, &r, "192.0.2.9".parse().unwrap(), None),
            None
        );
    }
}
