//! A worker taken over: started by `sentry-enforcer --worker <this>` in place of
//! `sentry-worker`, it speaks the parent's protocol (sentry-privsep) with hostile requests
//! and prints one line per answer, for tests/tests/privsep.rs to check:
//!
//! * `RESULT <name> <verb> <kind> <code>` for each verb tried on each address of the plan
//!   (`hostile-worker.plan` beside the configuration: lines `<name> <address>[/<len>]`);
//! * `CAP <kind> <code>`: a table build with more elements than the parent's hard cap;
//! * `RATE ok=<n> refused=<n>`: single adds of distinct addresses as fast as it can;
//! * `SERVED <kind> <code> <a>`: a served-port item (RESTART_GRACE), then
//!   `SERVED_OVER <kind> <code>`: a served-port request with more items than the
//!   parent's hard cap;
//! * `GARBAGE`: a record of the wrong length, after which the parent must kill and
//!   restart it. The next start prints `RESTARTED`, sends a served-port add without a
//!   timeout (a record of the right length that does not decode) and prints
//!   `SERVED_GARBAGE`: the parent must kill and restart it again; the start after that
//!   prints `RESTARTED 2` and only waits.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use sentry_privsep::{
    Channel, Proto, Reply, ReplyKind, Request, Verb, SERVED_ADD, SERVED_BATCH, SERVED_DEL, VERSION,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .expect("--config");
    let dir = config.parent().expect("config dir").to_path_buf();
    // The state directory is the worker's own: the only place it may write.
    let state = args
        .iter()
        .position(|a| a == "--state-dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .expect("--state-dir");
    let marker = state.join("hostile-worker.started");
    let again = state.join("hostile-worker.restarted");
    if again.exists() {
        println!("RESTARTED 2");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if marker.exists() {
        std::fs::write(&again, b"1").expect("marker");
        println!("RESTARTED");
        let rpc = Channel::from_inherited(3).expect("fd 3");
        // A served-port add without a timeout: the right length, but no valid record.
        let mut r = served_item(Some(Duration::from_secs(60)));
        r.timeout_ms = 0;
        rpc.send_request(&r, None).expect("send");
        println!("SERVED_GARBAGE");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::fs::write(&marker, b"1").expect("marker");
    let rpc = Channel::from_inherited(3).expect("fd 3");
    let fx = Channel::from_inherited(4).expect("fd 4");
    let plan = std::fs::read_to_string(dir.join("hostile-worker.plan")).expect("plan");
    let cap: usize = std::fs::read_to_string(dir.join("hostile-worker.cap"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100_000);
    let mut id = 0u32;
    let mut ask = |chan: &Channel, items: &[Request]| -> Reply {
        id += 1;
        let last = items.len() - 1;
        for (i, it) in items.iter().enumerate() {
            let mut r = *it;
            r.id = id;
            r.more = i < last;
            chan.send_request(&r, None).expect("send");
        }
        chan.recv_reply().expect("reply").0
    };
    let mut hello = Request::new(Verb::Hello, 0);
    hello.extra = VERSION;
    let h = ask(&rpc, &[hello]);
    println!("HELLO {:?} {}", h.kind, h.a);
    let b = ask(&rpc, &[Request::new(Verb::Build, 0)]);
    println!("BUILD {:?} {}", b.kind, b.code);
    for line in plan.lines().filter(|l| !l.trim().is_empty()) {
        let (name, spec) = line.split_once(' ').expect("plan line");
        let (addr, prefix) = match spec.split_once('/') {
            Some((a, l)) => (
                a.parse::<IpAddr>().expect("addr"),
                Some(l.parse::<u8>().expect("len")),
            ),
            None => (spec.parse::<IpAddr>().expect("addr"), None),
        };
        for verb in [
            Verb::NftAdd,
            Verb::RouteAdd,
            Verb::DenyAdd,
            Verb::KillRunCmd,
        ] {
            let mut r = Request::for_addr(verb, 0, addr);
            if let Some(l) = prefix {
                r.prefix = l;
            }
            r.port = 22;
            let chan = if verb == Verb::KillRunCmd { &fx } else { &rpc };
            let rep = ask(chan, &[r]);
            println!("RESULT {name} {verb:?} {:?} {}", rep.kind, rep.code);
        }
    }
    // More elements than the hard cap in one build.
    let many: Vec<Request> = (0..=cap)
        .map(|i| {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a40_0000 | (i & 0x3f_ffff)));
            Request::for_addr(Verb::Build, 0, a)
        })
        .collect();
    let c = ask(&rpc, &many);
    println!("CAP {:?} {}", c.kind, c.code);
    // Single adds as fast as the channel takes them.
    let (mut ok, mut refused) = (0u32, 0u32);
    for i in 0..3000u32 {
        let a = IpAddr::V4(std::net::Ipv4Addr::from(
            0xc633_6400 | (i & 0xff) | ((i >> 8) << 16),
        ));
        let rep = ask(&rpc, &[Request::for_addr(Verb::NftAdd, 0, a)]);
        match rep.kind {
            ReplyKind::Ok => ok += 1,
            _ => refused += 1,
        }
    }
    println!("RATE ok={ok} refused={refused}");
    // One served-port item (the sets may not exist: no detection chain was asked for),
    // then more items in one request than the parent takes.
    let one = ask(&rpc, &[served_item(Some(Duration::from_secs(60)))]);
    println!("SERVED {:?} {} {}", one.kind, one.code, one.a);
    let over: Vec<Request> = (0..=SERVED_BATCH).map(|_| served_item(None)).collect();
    let o = ask(&rpc, &over);
    println!("SERVED_OVER {:?} {}", o.kind, o.code);
    // A record of the wrong length: the parent must treat the worker as hostile.
    let fd = rpc.into_fd();
    let _ = nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &[0u8; 47],
        nix::sys::socket::MsgFlags::empty(),
    );
    println!("GARBAGE");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A served-port item for TCP port 8080 on any address: an add with `timeout`, or a
/// delete.
fn served_item(timeout: Option<Duration>) -> Request {
    let mut r = Request::new(Verb::Served, 0);
    (r.proto, r.port) = (Proto::Tcp, 8080);
    match timeout {
        Some(t) => {
            (r.flag, r.timeout_ms) = (SERVED_ADD, u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
        }
        None => r.flag = SERVED_DEL,
    }
    r
}
