//! The worker's side of the root parent's channels ([`sentry_privsep`]): every effect the
//! worker decides on (a set element, a route, a hosts.deny line, a kill command, the
//! table, the detection chain, an NFLOG socket, the sensor's peer check) is one request
//! and one reply. The parent checks each against its own floor; a refusal comes back as
//! an error naming the reason, and the worker records it like any failed action.
//!
//! Two request channels: `rpc` for the decision path and start-up, `fx` for the effects
//! thread, so a slow kill command never holds up a block. Each is one lock around one
//! request/reply exchange (the parent answers each in order).

use std::net::IpAddr;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sentry_privsep::{Channel, Refusal, Reply, ReplyKind, Request, Verb};

/// The descriptor numbers the parent gives the worker (see the parent's spawn).
pub const FD_RPC: RawFd = 3;
pub const FD_FX: RawFd = 4;
pub const FD_EVENTS: RawFd = 5;
pub const FD_SENSOR_LISTENER: RawFd = 6;
pub const FD_CONTROL_LISTENER: RawFd = 7;

/// Why a request did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The parent's floor refused it.
    Refused(Refusal),
    /// Tried and failed: errno (0 when none) and the parent's words.
    Failed(i32, String),
    /// The channel broke (the parent is gone or answered out of order).
    Channel(String),
}

impl Failure {
    /// The errno of a failure the kernel reported.
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Failure::Failed(e, _) if *e != 0 => Some(nix::errno::Errno::from_raw(*e)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(r) => write!(f, "refused by the root parent: {}", r.as_str()),
            Failure::Failed(0, t) => f.write_str(t),
            Failure::Failed(e, t) if t.is_empty() => {
                write!(f, "{}", nix::errno::Errno::from_raw(*e))
            }
            Failure::Failed(_, t) => f.write_str(t),
            Failure::Channel(t) => write!(f, "root parent: {t}"),
        }
    }
}

impl std::error::Error for Failure {}

/// One request channel to the parent.
#[derive(Debug)]
pub struct Link {
    chan: Mutex<(Channel, u32)>,
    /// Requests that rebuilt the table or its detection chain (Build, Detect, Nflog), so
    /// that the served-port poller rewrites its elements into sets that may be new.
    rebuilds: AtomicU64,
}

impl Link {
    pub fn new(chan: Channel) -> Self {
        Self {
            chan: Mutex::new((chan, 0)),
            rebuilds: AtomicU64::new(0),
        }
    }

    /// The channel the parent left at `fd`.
    pub fn inherited(fd: RawFd) -> Result<Self, String> {
        Channel::from_inherited(fd)
            .map(Self::new)
            .map_err(|e| format!("privsep descriptor {fd}: {e}"))
    }

    /// Send `items` (one request, or the items of a batch: `more` is set here on all but
    /// the last) and collect the answer: one reply, or for a dump the elements up to End.
    pub fn call(
        &self,
        items: &[Request],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(Vec<Reply>, Option<OwnedFd>), Failure> {
        let mut g = self
            .chan
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.1 = g.1.wrapping_add(1);
        let id = g.1;
        let last = items.len().saturating_sub(1);
        for (i, it) in items.iter().enumerate() {
            let mut r = *it;
            r.id = id;
            r.more = i < last;
            g.0.send_request(&r, if i == last { fd } else { None })
                .map_err(|e| Failure::Channel(format!("send: {e}")))?;
        }
        let dump = items.first().is_some_and(|r| r.verb == Verb::Dump);
        if items
            .first()
            .is_some_and(|r| matches!(r.verb, Verb::Build | Verb::Detect | Verb::Nflog))
        {
            // Counted before the reply: a poll that reads the count after this rebuild
            // began rewrites everything, whether or not it saw the rebuild end.
            self.rebuilds.fetch_add(1, Ordering::Relaxed);
        }
        let mut out = Vec::new();
        loop {
            let (rep, fd) =
                g.0.recv_reply()
                    .map_err(|e| Failure::Channel(format!("receive: {e}")))?;
            if rep.id != id {
                return Err(Failure::Channel(format!(
                    "reply {} to request {id}",
                    rep.id
                )));
            }
            let done = !dump || rep.kind != ReplyKind::Elem;
            out.push(rep);
            if done {
                return Ok((out, fd));
            }
        }
    }

    /// How many requests that rebuild the table or its detection chain went through.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// One request whose single reply must be Ok: the reply, or the failure it names.
    pub fn ask(&self, items: &[Request]) -> Result<Reply, Failure> {
        let (mut v, _) = self.call(items, None)?;
        let r = v.pop().ok_or_else(|| Failure::Channel("no reply".into()))?;
        check(r)
    }
}

/// A reply that is Ok (or a dump's End), or the failure it names.
pub fn check(r: Reply) -> Result<Reply, Failure> {
    match r.kind {
        ReplyKind::Ok | ReplyKind::End | ReplyKind::Elem => Ok(r),
        ReplyKind::Refused => Err(Failure::Refused(
            Refusal::from_u8(r.code).unwrap_or(Refusal::Malformed),
        )),
        ReplyKind::Fail => Err(Failure::Failed(
            i32::try_from(r.a).unwrap_or(0),
            r.text.clone(),
        )),
    }
}

/// A request about `addr` as a block of `prefix` bits (a single address when `None`),
/// with a kernel timeout.
pub fn subject(
    verb: Verb,
    addr: IpAddr,
    prefix6: Option<u8>,
    timeout: Option<Duration>,
) -> Request {
    let mut r = Request::for_addr(verb, 0, addr);
    if let (Some(len), IpAddr::V6(_)) = (prefix6, addr) {
        r.prefix = len;
    }
    r.timeout_ms = timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    r
}

/// The modes as the parent's bits.
pub fn mode_bits(modes: &[sentry_proto::Mode]) -> sentry_privsep::Modes {
    use sentry_privsep::Modes;
    let mut b = 0;
    for m in modes {
        b |= match m {
            sentry_proto::Mode::Tcp => Modes::TCP,
            sentry_proto::Mode::Udp => Modes::UDP,
            sentry_proto::Mode::Stcp => Modes::STCP,
            sentry_proto::Mode::Sudp => Modes::SUDP,
            sentry_proto::Mode::Atcp => Modes::ATCP,
            sentry_proto::Mode::Audp => Modes::AUDP,
        };
    }
    Modes(b)
}

/// The root parent's own verbs, served in a thread over a real channel pair, without
/// kernel sockets: the unit tests' hosts.deny lines and kill commands run for real,
/// through the same floor, line rendering and command helper code the parent runs.
#[cfg(test)]
pub mod testing {
    use std::sync::Arc;

    use sentry_enforcer::kernel::table::Support;
    use sentry_enforcer::parent::serve::{gather, Answer, Step};
    use sentry_enforcer::parent::{floor::Floor, helper, Detect, Log, Parent};
    use sentry_privsep::{Channel, Refusal, Reply};

    use super::Link;
    use crate::action::Backends;

    /// A parent for `cfg`, and the backends it has: nftables only for a root test that
    /// asks for it (in a network namespace of its own, which the parent's thread shares).
    pub fn parent(cfg: &policy::Config) -> (Arc<Link>, Backends) {
        let (ours, theirs) = Channel::pair().expect("socketpair");
        let nft = (cfg.firewall == policy::Firewall::Nftables && nix::unistd::geteuid().is_root())
            .then(|| sentry_enforcer::kernel::netlink::NlSocket::netfilter().ok())
            .flatten();
        let backends = Backends {
            nft: nft.is_some(),
            route: false,
        };
        let cfg = cfg.clone();
        std::thread::spawn(move || serve(&cfg, nft, &theirs));
        (Arc::new(Link::new(ours)), backends)
    }

    fn serve(
        cfg: &policy::Config,
        nft: Option<sentry_enforcer::kernel::netlink::NlSocket>,
        chan: &Channel,
    ) {
        let ignore = cfg
            .load_ignore()
            .unwrap_or_else(|_| policy::IgnoreList::empty());
        // The served-port writes beside the block sets, on a socket of their own as in the
        // parent.
        let served = nft
            .as_ref()
            .and_then(|_| sentry_enforcer::kernel::netlink::NlSocket::netfilter().ok());
        let mut p = Parent {
            cfg: cfg.clone(),
            floor: Floor::new(cfg, ignore),
            nft,
            route: None,
            support: Support {
                nftables: Err("unit test".into()),
                socket: Err("unit test".into()),
            },
            watch: None,
            table_foreign: false,
            served,
            detect: Detect::default(),
            sensor_uid: 0,
            sensor_want: sentry_enforcer::peercheck::Expected {
                exe: "/nonexistent".into(),
                unit: None,
            },
            log: Log::default(),
            metrics_at: None,
        };
        let mut pending = None;
        loop {
            let Ok((r, fd)) = chan.recv_request() else {
                return;
            };
            let cap = sentry_enforcer::parent::serve::cap(r.verb, 1 << 20);
            let answer = match gather(&mut pending, r, fd, cap) {
                Step::Wait => continue,
                Step::Act(b) => p.act(b),
                Step::Break(_, id, _, _) => Answer::one(Reply::refused(id, Refusal::Malformed)),
            };
            let replies = match answer {
                Answer::Replies(v, _) => v,
                Answer::Forward(req) => vec![helper::answer(cfg, &req)],
            };
            for rep in replies {
                if chan.send_reply(&rep, None).is_err() {
                    return;
                }
            }
        }
    }
}
