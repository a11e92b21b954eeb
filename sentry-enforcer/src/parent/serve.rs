//! The worker's requests: gathering the items of a batch, the checks every item passes
//! before anything is done ([`check`], pure, fuzzed), and the dispatch to the verbs
//! (`verbs.rs`). Each request gets exactly one reply (a dump: its elements, then End).

use std::net::IpAddr;
use std::os::fd::OwnedFd;

use sentry_privsep::{Refusal, Reply, Request, SetName, Verb, VERSION};

use super::floor::Floor;
use super::Parent;

/// The block an item names: an address, and for an IPv6 network block its length.
pub type Subject = (IpAddr, Option<u8>);

/// The items of one request, gathered until the last (`more` unset).
#[derive(Debug)]
pub struct Batch {
    pub verb: Verb,
    pub id: u32,
    pub items: Vec<Request>,
    /// More items came than the hard cap: the rest were not kept.
    pub over: bool,
    pub fd: Option<OwnedFd>,
}

/// What one received item leads to.
#[derive(Debug)]
pub enum Step {
    /// A batch goes on: wait for its next item.
    Wait,
    /// The request is complete.
    Act(Batch),
    /// The batch under way (its verb and id) is refused: another verb or id came in the
    /// middle of it. The item that broke it is then taken as a request of its own.
    Break(Verb, u32, Request, Option<OwnedFd>),
}

/// Most items of one request of `verb`: the block cap (`MAX_BLOCKS`-derived) for the
/// block verbs, one nfnetlink batch for the served ports.
pub fn cap(verb: Verb, block_cap: usize) -> usize {
    match verb {
        Verb::Served => sentry_privsep::SERVED_BATCH,
        _ => block_cap,
    }
}

/// Add `r` to the batch under way on its channel (`pending`), keeping at most `cap` items.
pub fn gather(pending: &mut Option<Batch>, r: Request, fd: Option<OwnedFd>, cap: usize) -> Step {
    if let Some(b) = pending.as_mut() {
        if b.verb != r.verb || b.id != r.id {
            let (verb, id) = (b.verb, b.id);
            *pending = None;
            return Step::Break(verb, id, r, fd);
        }
        if b.items.len() < cap {
            b.items.push(r);
        } else {
            b.over = true;
        }
    } else {
        *pending = Some(Batch {
            verb: r.verb,
            id: r.id,
            items: vec![r],
            over: false,
            fd,
        });
    }
    match r.more {
        true => Step::Wait,
        false => pending.take().map_or(Step::Wait, Step::Act),
    }
}

/// The block an item names, after the checks that need nothing but the item and the
/// floor: its shape for the verb, and for an add (or a Build item) the floor itself.
/// `Ok(None)`: an item without an address where the verb allows one.
pub fn check(r: &Request, floor: &Floor) -> Result<Option<Subject>, Refusal> {
    match r.verb {
        Verb::Hello if r.extra != VERSION => Err(Refusal::Version),
        // A served-port item's shape is all there is to check, and the decoder did.
        Verb::Hello | Verb::Nflog | Verb::Peer | Verb::Reload | Verb::Metrics | Verb::Served => {
            Ok(None)
        }
        Verb::Dump if SetName::from_u8(r.flag).is_some() && r.addr.is_none() => Ok(None),
        Verb::Dump => Err(Refusal::Malformed),
        Verb::Detect => Ok(r.addr.map(|a| (a, None))),
        Verb::Build if r.addr.is_none() => Ok(None),
        Verb::NftDel | Verb::RouteDel | Verb::DenyDel => floor.subject(r.addr, r.prefix).map(Some),
        Verb::Forget => {
            let v4 = match SetName::from_u8(r.flag) {
                Some(SetName::Hit4) => true,
                Some(SetName::Hit6) => false,
                _ => return Err(Refusal::Malformed),
            };
            match floor.subject(r.addr, r.prefix)? {
                (a, None) if a.is_ipv4() == v4 => Ok(Some((a, None))),
                _ => Err(Refusal::Malformed),
            }
        }
        Verb::NftAdd
        | Verb::RouteAdd
        | Verb::DenyAdd
        | Verb::KillRoute
        | Verb::KillRunCmd
        | Verb::Build => {
            let (a, net) = floor.subject(r.addr, r.prefix)?;
            floor.allows(a, net)?;
            Ok(Some((a, net)))
        }
    }
}

/// What the parent does with a complete request.
#[derive(Debug)]
pub enum Answer {
    /// Send these (the descriptor with the last).
    Replies(Vec<Reply>, Option<OwnedFd>),
    /// A kill command: the helper runs it and its reply is the answer.
    Forward(Request),
}

impl Answer {
    pub fn one(r: Reply) -> Self {
        Answer::Replies(vec![r], None)
    }
}

/// How many items were acted on and refused, and the last refusal.
#[derive(Debug, Default)]
pub struct Tally {
    pub done: u64,
    pub refused: u64,
    pub last: Option<Refusal>,
}

impl Tally {
    /// The reply to a batch: a single refused item is a refusal; anything else is Ok with
    /// `a` = done and `b` = refused.
    pub fn reply(&self, id: u32, items: usize) -> Reply {
        match (items, self.last) {
            (1, Some(why)) => Reply::refused(id, why),
            _ => Reply {
                a: self.done,
                b: self.refused,
                ..Reply::ok(id)
            },
        }
    }
}

impl Parent {
    /// Check every item of `b`; the refused ones are logged and counted here. Returns
    /// the subjects of the items that passed (`None` for address-less items).
    pub fn checked(&mut self, b: &Batch, t: &mut Tally) -> Vec<(Request, Option<Subject>)> {
        let mut out = Vec::with_capacity(b.items.len());
        for r in &b.items {
            match check(r, &self.floor) {
                Ok(s) => out.push((*r, s)),
                Err(why) => self.refuse_item(r, why, t),
            }
        }
        out
    }

    /// A refusal, said (rate-limited) and counted.
    pub fn refuse(&mut self, verb: Verb, addr: Option<IpAddr>, id: u32, why: Refusal) -> Reply {
        self.log.refused(verb, addr, why);
        Reply::refused(id, why)
    }

    pub fn refuse_item(&mut self, r: &Request, why: Refusal, t: &mut Tally) {
        self.log.refused(r.verb, r.addr, why);
        t.refused += 1;
        t.last = Some(why);
    }

    /// Act on a complete request. A verb that takes one item is checked here; the items
    /// of a batch are checked by its verb.
    pub fn act(&mut self, b: Batch) -> Answer {
        if b.over {
            let why = if b.verb == Verb::Build {
                Refusal::Cap
            } else {
                Refusal::TooMany
            };
            return Answer::one(self.refuse(b.verb, None, b.id, why));
        }
        let first = b.items[0];
        if !b.verb.batches() {
            if let Err(why) = check(&first, &self.floor) {
                return Answer::one(self.refuse(b.verb, first.addr, b.id, why));
            }
        }
        match b.verb {
            Verb::Hello => Answer::one(self.hello(b.id)),
            Verb::NftAdd | Verb::NftDel => Answer::one(self.nft(&b)),
            Verb::RouteAdd | Verb::RouteDel => Answer::one(self.route(&b)),
            Verb::DenyAdd | Verb::DenyDel => Answer::one(self.deny(&b)),
            Verb::KillRoute | Verb::KillRunCmd => self.kill(&b),
            Verb::Build => Answer::one(self.build(&b)),
            Verb::Detect => Answer::one(self.detect(&b)),
            Verb::Nflog => self.nflog(b.id),
            Verb::Dump => Answer::Replies(self.dump(&first), None),
            Verb::Forget => Answer::one(self.forget(&first)),
            Verb::Peer => Answer::one(self.peer(b.id, b.fd)),
            Verb::Reload => Answer::one(self.reload_ignore(b.id)),
            Verb::Metrics => Answer::one(self.metrics(b.id, b.fd)),
            Verb::Served => Answer::one(self.served(&b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::floor::tests::floor;
    use super::*;
    use sentry_privsep::Proto;

    fn req(verb: Verb, id: u32, addr: &str, more: bool) -> Request {
        Request {
            more,
            ..Request::for_addr(verb, id, addr.parse().unwrap())
        }
    }

    #[test]
    fn batches_gather_and_break() {
        let mut p = None;
        assert!(matches!(
            gather(&mut p, req(Verb::NftAdd, 1, "192.0.2.9", true), None, 3),
            Step::Wait
        ));
        assert!(matches!(
            gather(&mut p, req(Verb::NftAdd, 1, "192.0.2.8", true), None, 3),
            Step::Wait
        ));
        let Step::Act(b) = gather(&mut p, req(Verb::NftAdd, 1, "192.0.2.7", false), None, 3) else {
            panic!()
        };
        assert_eq!((b.items.len(), b.over, b.id), (3, false, 1));
        assert!(p.is_none());
        // Over the cap: the rest is not kept, the batch is marked.
        for i in 0..5 {
            let _ = gather(&mut p, req(Verb::DenyAdd, 2, "192.0.2.9", i < 4), None, 3);
        }
        assert!(p.is_none());
        let _ = gather(&mut p, req(Verb::Build, 3, "192.0.2.9", true), None, 3);
        let Step::Break(verb, id, next, _) =
            gather(&mut p, req(Verb::NftDel, 4, "192.0.2.9", false), None, 3)
        else {
            panic!()
        };
        assert_eq!((verb, id, next.verb), (Verb::Build, 3, Verb::NftDel));
        assert!(p.is_none());
        // A single request is complete at once.
        assert!(matches!(
            gather(&mut p, Request::new(Verb::Nflog, 5), None, 3),
            Step::Act(_)
        ));
        // Served-port requests have their own cap, whatever the block cap.
        assert_eq!(cap(Verb::Served, 3), sentry_privsep::SERVED_BATCH);
        assert_eq!(cap(Verb::Build, 3), 3);
        let mut served = Request::new(Verb::Served, 6);
        (served.flag, served.port) = (sentry_privsep::SERVED_DEL, 22);
        let n = sentry_privsep::SERVED_BATCH + 1;
        let mut over = false;
        for i in 0..n {
            let r = Request {
                more: i + 1 < n,
                ..served
            };
            if let Step::Act(b) = gather(&mut p, r, None, cap(r.verb, 3)) {
                over = b.over && b.items.len() == n - 1;
            }
        }
        assert!(over && p.is_none());
        let last = gather(&mut p, served, None, cap(Verb::Served, 3));
        let Step::Act(b) = last else { panic!() };
        assert!(!b.over && b.items.len() == 1);
    }

    #[test]
    fn checks() {
        let f = floor("", "10.0.0.0/8\n");
        let c = |r: Request| check(&r, &f);
        let mut hello = Request::new(Verb::Hello, 1);
        assert_eq!(c(hello), Err(Refusal::Version));
        hello.extra = VERSION;
        assert_eq!(c(hello), Ok(None));
        assert_eq!(
            c(req(Verb::NftAdd, 1, "192.0.2.1", false)),
            Err(Refusal::Gateway)
        );
        assert_eq!(
            c(req(Verb::KillRunCmd, 1, "10.1.1.1", false)),
            Err(Refusal::Ignored)
        );
        assert_eq!(
            c(req(Verb::RouteAdd, 1, "127.0.0.1", false)),
            Err(Refusal::Loopback)
        );
        // Deletes have no floor; their shape is still checked.
        assert!(c(req(Verb::NftDel, 1, "192.0.2.1", false)).is_ok());
        assert_eq!(c(Request::new(Verb::NftDel, 1)), Err(Refusal::Malformed));
        assert_eq!(c(Request::new(Verb::Build, 1)), Ok(None));
        assert_eq!(
            c(req(Verb::Build, 1, "192.0.2.10", false)),
            Err(Refusal::OwnAddress)
        );
        assert_eq!(
            c(req(Verb::Detect, 1, "192.0.2.1", false))
                .unwrap()
                .unwrap()
                .1,
            None
        );
        assert_eq!(c(Request::new(Verb::Reload, 1)), Ok(None));
        let mut served = Request::new(Verb::Served, 1);
        (served.flag, served.port) = (sentry_privsep::SERVED_DEL, 22);
        assert_eq!(c(served), Ok(None));
        let mut dump = Request::new(Verb::Dump, 1);
        assert_eq!(c(dump), Ok(None));
        dump.flag = 7;
        assert_eq!(c(dump), Err(Refusal::Malformed));
        let mut forget = req(Verb::Forget, 1, "2001:db8::1", false);
        forget.flag = SetName::Hit4 as u8;
        assert_eq!(c(forget), Err(Refusal::Malformed));
        forget.flag = SetName::Hit6 as u8;
        assert!(c(forget).is_ok());
        let mut odd = req(Verb::NftAdd, 1, "2001:db8::1", false);
        odd.prefix = 100;
        odd.proto = Proto::Udp;
        assert_eq!(c(odd), Err(Refusal::Malformed));
    }

    #[test]
    fn batch_replies() {
        let t = Tally {
            done: 0,
            refused: 1,
            last: Some(Refusal::Rate),
        };
        assert_eq!(t.reply(9, 1), Reply::refused(9, Refusal::Rate));
        let r = t.reply(9, 2);
        assert_eq!((r.kind, r.a, r.b), (sentry_privsep::ReplyKind::Ok, 0, 1));
    }
}
