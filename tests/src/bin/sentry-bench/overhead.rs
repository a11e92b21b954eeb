//! Scenario 6 (`overhead`): what sentry's table costs the host's own traffic.
//!
//! Two namespace pairs side by side, each a client and a server joined by a veth pair.
//! Both servers run a conntrack host firewall (established/related accepted first, invalid
//! dropped, the test ports accepted). One configuration at a time is loaded on top in the
//! measured pair, the reference pair keeps the firewall alone, and the rounds alternate,
//! so drift of the machine's load hits both:
//! * `firewall alone`;
//! * `+ previous table` (the layout before issue #19: two prerouting base chains at -300
//!   with five set lookups before conntrack, plus the detection chain in input);
//! * `+ sentry table` (the current one: one input and one forward base chain after
//!   conntrack, established and related packets out at the first rule), built with the
//!   enforcer's own scripts from the shipped policy, first hit on, with
//!   `--overhead-blocks` addresses in the block sets.
//!
//! Measured, each as the ratio of the measured pair to the reference pair in the same
//! round, both pairs in alternating 50 ms slices from one client thread ([`in_turns`]), so
//! that the machine's load falls on both alike:
//! * 64-byte UDP datagrams per second of one established flow (the server answered its
//!   first datagram), unpaced: each send carries the datagram through the server's whole
//!   receive path on the client's CPU, so the rate is that path's cost, netfilter
//!   included. The sender does nothing else per datagram (iperf3, used before, also reads
//!   the clock and writes a sequence number for each, which thins out the table's share:
//!   the same table measured 0.971 with iperf3 and 0.94-0.95 with this sender);
//! * new TCP connections per second to a served port (each SYN passes the detection
//!   chain's candidate checks), connect and RST close, the server only accepting.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentry_tests::cmd::run;
use sentry_tests::netns::{NetPair, Side, TARGET_V4};

use crate::table::Table;
use crate::Opts;

const TABLE: &str = "sentry";
/// The client of a measurement runs on CPU 0, the server on CPU 1, in both pairs: a veth
/// packet is processed in the sender's softirq, so the client's CPU carries the whole
/// receive path, netfilter included, and is the bottleneck that the table's cost shows
/// in. Unpinned, the scheduler's placement alone moved the rate of two identical pairs
/// by 15-35 % on a 2-core machine.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

/// Give the calling thread (a server) the lowest real-time priority, so that other work
/// on its CPU cannot hold it off: a TCP server held off for 160 ms let 4096 connections
/// pile up, its accept queue overflowed and the next SYN waited 1 s for its
/// retransmission (`ListenOverflows`, seen under a load of 2-3 from other builds). The
/// servers only drain their sockets; the round's work is the client's.
fn realtime() {
    let tid = nix::unistd::gettid().to_string();
    let _ = std::process::Command::new("chrt")
        .args(["-f", "-p", "1", &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Pin the calling thread to `cpu`.
fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}
const FIREWALL: &str = "table inet hostfw {}\ndelete table inet hostfw\n\
table inet hostfw {\n chain input {\n  type filter hook input priority 0; policy drop;\n  ct state established,related accept\n  ct state invalid drop\n  iif lo accept\n  meta l4proto icmp accept\n  meta l4proto ipv6-icmp accept\n  tcp dport { 5201, 8080 } accept\n  udp dport 5201 accept\n }\n}\n";

/// What is loaded on top of the firewall in the measured pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    FirewallAlone,
    Previous,
    Current,
}

impl Layout {
    fn label(self) -> &'static str {
        match self {
            Self::FirewallAlone => "firewall alone",
            Self::Previous => "+ previous table (before #19)",
            Self::Current => "+ sentry table",
        }
    }
}

fn nft(pair: &NetPair, script: &str) -> Result<(), String> {
    let path =
        std::env::temp_dir().join(format!("sentry-bench-overhead-{}.nft", std::process::id()));
    std::fs::write(&path, script).map_err(|e| e.to_string())?;
    let out = run(
        pair.command(Side::Target, "nft").arg("-f").arg(&path),
        Duration::from_secs(60),
    );
    let _ = std::fs::remove_file(&path);
    if out.success() {
        Ok(())
    } else {
        Err(format!("nft: {out}"))
    }
}

/// `n` addresses of 198.18.0.0/15 (benchmarking space), as set elements.
fn blocked(n: u64) -> Vec<sentry_enforcer::netlink::SetElem> {
    (0..u32::try_from(n).unwrap_or(0).min(1 << 17))
        .map(|i| sentry_enforcer::netlink::SetElem {
            addr: std::net::IpAddr::V4(Ipv4Addr::from(0xc612_0000u32 + i)),
            timeout: None,
        })
        .collect()
}

/// The current table, from the enforcer's own scripts and the shipped policy.
fn current_script(n: u64) -> Result<String, String> {
    use sentry_enforcer::table::{
        detection_script, elements_script, setup_script, DetectSpec, Tripwire,
    };
    let text = include_str!("../../../../policy/dist/sentry.conf")
        .replace("IGNORE_FILE=\"/etc/sentry/sentry.ignore\"", "");
    let cfg = policy::Config::parse(&text, std::path::Path::new("sentry.conf"))
        .map_err(|e| format!("shipped policy: {e:?}"))?;
    let ignore = policy::IgnoreList::parse("127.0.0.1\n0.0.0.0\n", std::path::Path::new("i"))
        .map_err(|e| format!("{e:?}"))?;
    let modes = [
        sentry_proto::Mode::Stcp,
        sentry_proto::Mode::Atcp,
        sentry_proto::Mode::Sudp,
        sentry_proto::Mode::Audp,
    ];
    let spec = DetectSpec::new(
        &cfg,
        sentry_worker::privsep::mode_bits(&modes),
        &ignore,
        true,
        Some(cfg.block_prefix6),
    )
    .with_tripwire(Tripwire::from_config(&cfg, true), &[]);
    let mut s = setup_script(TABLE, cfg.block_prefix6)?;
    s.push_str(&elements_script(TABLE, &blocked(n), false));
    s.push_str(&detection_script(TABLE, &spec)?);
    // The servers' ports, as the worker's poll of the listening sockets has the parent
    // write them (sentry_worker::served) on a host that runs these services.
    s.push_str(&format!(
        "add element inet {TABLE} {} {{ tcp . 8080 timeout {hold}s, udp . 5201 timeout {hold}s }}\n",
        sentry_enforcer::served::SET_ANY,
        hold = sentry_worker::served::HOLD.as_secs()
    ));
    Ok(s)
}

/// The layout before issue #19, rule for rule where a packet of the host's own traffic
/// goes: drop chains before conntrack in prerouting (the enforcer's three sets, the first
/// hit's two maps), then the detection chain's first rules in input.
fn previous_script(n: u64) -> String {
    let mut s = format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
         \tset v4 {{ type ipv4_addr; flags timeout; }}\n\tset v6 {{ type ipv6_addr; flags timeout; }}\n\tset v6net {{ type ipv6_addr; flags timeout; }}\n\
         \tmap hit4 {{ type ipv4_addr : inet_proto . inet_service . tcp_flag; flags dynamic, timeout; size 10000; timeout 120s; }}\n\
         \tmap hit6 {{ type ipv6_addr : inet_proto . inet_service . tcp_flag; flags dynamic, timeout; size 10000; timeout 120s; }}\n\
         \tset ign4 {{ type ipv4_addr; flags interval; elements = {{ 127.0.0.1 }} }}\n\
         \tset ign6 {{ type ipv6_addr; flags interval; elements = {{ ::1 }} }}\n\
         \tchain prerouting {{ type filter hook prerouting priority -300; policy accept;\n\
         \t\tip saddr @v4 counter drop\n\t\tip6 saddr @v6 counter drop\n\t\tip6 saddr & ffff:ffff:ffff:ffff:: @v6net counter drop\n\t}}\n\
         \tchain detect_pre {{ type filter hook prerouting priority -300; policy accept;\n\
         \t\tip saddr @hit4 counter drop\n\t\tip6 saddr @hit6 counter drop\n\t}}\n\
         \tchain detect_tcp {{ }}\n\tchain detect_udp {{ }}\n\
         \tchain detect {{ type filter hook input priority -150; policy accept;\n\
         \t\tmeta pkttype != host return\n\t\tct state established,related return\n\
         \t\tip saddr @ign4 return\n\t\tip6 saddr @ign6 return\n\
         \t\tmeta l4proto tcp jump detect_tcp\n\t\tmeta l4proto udp ct state new jump detect_udp\n\t}}\n}}\n"
    );
    s.push_str(&sentry_enforcer::table::elements_script(
        TABLE,
        &blocked(n),
        false,
    ));
    s
}

/// One round of [`udp_rates`], for one pair: datagrams per second.
#[derive(Debug, Clone, Copy, Default)]
struct Udp {
    /// Sent by the client: each send carries its datagram through the server's whole
    /// receive path (netfilter included) before it returns, on the client's CPU.
    sent: f64,
    /// Received by the server's socket reader.
    received: f64,
}

/// The UDP server of [`udp_rates`] on port 5201 of `pair`'s server, until `stop` is
/// set: counts the datagrams it reads into `count`, and answers the first datagram of
/// each client so that conntrack sees a reply and the flow is established.
fn udp_server(
    pair: &NetPair,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let rd = ready.clone();
    let server = pair.spawn_in_ns(Side::Target, move || {
        pin(SERVER_CPU);
        realtime();
        let sock = UdpSocket::bind((TARGET_V4, 5201));
        rd.store(true, Ordering::SeqCst);
        let Ok(sock) = sock else {
            return;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
        let mut answered = std::collections::HashSet::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = sock.recv_from(&mut buf) {
                count.fetch_add(1, Ordering::Relaxed);
                if answered.insert(from) {
                    let _ = sock.send_to(b"established", from);
                }
            }
        }
    });
    while !ready.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    server
}

/// 64-byte UDP datagrams per second from the client to the server of each of `pairs`,
/// one established flow each, unpaced, for `secs` in all, in alternating slices
/// ([`in_turns`]). The flow is established (the server answered its first datagram)
/// before it is measured.
fn udp_rates(pairs: [&NetPair; 2], secs: u64, first: usize) -> [Udp; 2] {
    let stop = Arc::new(AtomicBool::new(false));
    let received = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let servers: Vec<_> = (0..2)
        .map(|i| udp_server(pairs[i], stop.clone(), received[i].clone()))
        .collect();
    let mut socks: [Option<UdpSocket>; 2] = [None, None];
    let counts = in_turns(pairs, secs, first, move |i, until| {
        let sock = match &socks[i] {
            Some(s) => s,
            None => {
                let Ok(s) = established_udp() else {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    return 0;
                };
                socks[i].insert(s)
            }
        };
        let payload = [0u8; 64];
        let mut n = 0;
        loop {
            for _ in 0..32 {
                if sock.send(&payload).is_ok() {
                    n += 1;
                }
            }
            if Instant::now() >= until {
                return n;
            }
        }
    });
    // What is still in the servers' sockets belongs to the last slices.
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    for s in servers {
        let _ = s.join();
    }
    std::array::from_fn(|i| {
        let t = counts[i].1.as_secs_f64().max(1e-9);
        Udp {
            sent: counts[i].0 as f64 / t,
            received: received[i].load(Ordering::Relaxed) as f64 / t,
        }
    })
}

/// A UDP socket connected to the server, in the calling thread's namespace, whose flow
/// the server has answered (conntrack: established).
fn established_udp() -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect((TARGET_V4, 5201))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    for _ in 0..10 {
        sock.send(b"hello")?;
        if sock.recv(&mut [0u8; 64]).is_ok() {
            return Ok(sock);
        }
    }
    Err(std::io::Error::other("the UDP server never answered"))
}

/// A connect that took longer than this lost a SYN (or its SYN/ACK) and waited for the
/// 1 s initial retransmission timeout: a stall, not the table's cost.
const STALL: Duration = Duration::from_millis(200);

/// One round of [`conn_rates`], for one pair.
#[derive(Debug, Clone, Copy, Default)]
struct Conns {
    /// Connections per second.
    rate: f64,
    /// Connects that took longer than [`STALL`].
    stalls: u64,
    /// The server namespace's `ListenOverflows` during the round (SYNs dropped because the
    /// accept queue was full).
    overflows: u64,
}

/// `TcpExtListenOverflows` of the namespace `side` of `pair`.
fn listen_overflows(pair: &NetPair, side: Side) -> u64 {
    let out = run(
        pair.command(side, "cat").arg("/proc/net/netstat"),
        Duration::from_secs(10),
    );
    let mut lines = out.stdout.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// How long the client stays in one pair's namespace before it turns to the other one.
/// The two pairs are measured in many short alternating slices rather than one after the
/// other, so a change in the machine's load (other builds, the hypervisor's other guests)
/// falls on both alike: measured 3 s apart, two identical pairs differed by up to 10 %.
const SLICE: Duration = Duration::from_millis(50);

/// Run `work` for `secs` in all, on [`CLIENT_CPU`], in slices of [`SLICE`] that alternate
/// between the client namespaces of `pairs[first]` and the other pair: `work(i, until)`
/// runs in the client namespace of `pairs[i]` until `until` and returns what it counted.
/// The counts and the time spent in each namespace.
fn in_turns<F>(pairs: [&NetPair; 2], secs: u64, first: usize, mut work: F) -> [(u64, Duration); 2]
where
    F: FnMut(usize, Instant) -> u64 + Send + 'static,
{
    let paths = pairs.map(|p| format!("/run/netns/{}", p.name(Side::Scanner)));
    std::thread::spawn(move || {
        pin(CLIENT_CPU);
        let fds = paths.map(|p| std::fs::File::open(&p).unwrap_or_else(|e| panic!("{p}: {e}")));
        let mut out = [(0u64, Duration::ZERO); 2];
        let end = Instant::now() + Duration::from_secs(secs);
        let mut k = first;
        while Instant::now() < end {
            let i = k % 2;
            k += 1;
            nix::sched::setns(&fds[i], nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns: {e}"));
            let t0 = Instant::now();
            out[i].0 += work(i, t0 + SLICE);
            out[i].1 += t0.elapsed();
        }
        out
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The TCP server of [`conn_rates`] on port 8080 of `pair`'s server, until `stop` is set
/// (and one more connection wakes it). It only accepts and drops each connection (its
/// socket is reset or closed already), from an accept queue of 4096. It once waited for
/// each client's RST before the next accept: that made it slower than the client, its
/// accept queue of 128 (std's backlog) overflowed, the SYN was dropped
/// (`ListenOverflows`) and the client waited for the 1 s retransmission: 2-3 such stalls
/// in a 3 s round, so the rounds' rates varied by a factor of two or more with the number
/// of stalls, whatever the table.
fn accept_and_drop(pair: &NetPair, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let rd = ready.clone();
    let server = pair.spawn_in_ns(Side::Target, move || {
        pin(SERVER_CPU);
        realtime();
        let listener = TcpListener::bind((TARGET_V4, 8080)).and_then(|l| {
            let backlog = nix::sys::socket::Backlog::new(4096).map_err(std::io::Error::from)?;
            nix::sys::socket::listen(&l, backlog).map_err(std::io::Error::from)?;
            Ok(l)
        });
        rd.store(true, Ordering::SeqCst);
        let Ok(l) = listener else {
            return;
        };
        while !stop.load(Ordering::SeqCst) {
            // Dropped at once: a close needs no wake-up for the client's RST, so the
            // server keeps ahead of the client and the queue never fills.
            drop(l.accept());
        }
    });
    while !ready.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    server
}

/// New TCP connections per second from the client to the server's port 8080 in each of
/// `pairs`, for `secs` in all, in alternating slices ([`in_turns`]): the client connects
/// and closes with a RST (SO_LINGER 0), one connection after the other, so neither side
/// keeps a TIME_WAIT and no round runs out of ports.
fn conn_rates(pairs: [&NetPair; 2], secs: u64, first: usize) -> [Conns; 2] {
    let overflows = pairs.map(|p| listen_overflows(p, Side::Target));
    let stop = Arc::new(AtomicBool::new(false));
    let servers = pairs.map(|p| accept_and_drop(p, stop.clone()));
    let stalls = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let st = stalls.clone();
    let to = SocketAddr::from((TARGET_V4, 8080));
    let counts = in_turns(pairs, secs, first, move |i, until| {
        let mut n = 0;
        while Instant::now() < until {
            let t0 = Instant::now();
            let c = TcpStream::connect_timeout(&to, Duration::from_secs(3));
            if t0.elapsed() > STALL {
                st[i].fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(c) = c {
                let _ = nix::sys::socket::setsockopt(
                    &c,
                    nix::sys::socket::sockopt::Linger,
                    &nix::libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                );
                n += 1;
            }
        }
        n
    });
    // One more connection in each pair wakes its server from accept, now told to stop.
    stop.store(true, Ordering::SeqCst);
    for p in pairs {
        p.in_ns(Side::Scanner, move || {
            let _ = TcpStream::connect_timeout(&to, Duration::from_secs(1));
        });
    }
    for s in servers {
        let _ = s.join();
    }
    std::array::from_fn(|i| Conns {
        rate: counts[i].0 as f64 / counts[i].1.as_secs_f64().max(1e-9),
        stalls: stalls[i].load(Ordering::Relaxed),
        overflows: listen_overflows(pairs[i], Side::Target).saturating_sub(overflows[i]),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `median (min-max)` of `v`, with `digits` decimals.
fn spread(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "-".to_string();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.digits$} ({lo:.digits$}-{hi:.digits$})",
        median(v.to_vec())
    )
}

/// One round: each measurement in both pairs, the pair that goes first alternating.
/// Index 0 is the measured pair, 1 the reference.
#[derive(Debug, Default)]
struct Round {
    udp: [Udp; 2],
    conn: [Conns; 2],
}

fn round(measured: &NetPair, reference: &NetPair, first: usize, secs: u64) -> Round {
    Round {
        udp: udp_rates([measured, reference], secs * 2, first),
        conn: conn_rates([measured, reference], secs * 2, first),
    }
}

fn setup(pair: &NetPair) -> Result<(), String> {
    // Short-lived client connections: TIME_WAIT must not run out of ports.
    run(
        pair.command(Side::Scanner, "sysctl").args([
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65000",
        ]),
        Duration::from_secs(10),
    );
    nft(pair, FIREWALL)
}

pub fn scenario(opts: &Opts) {
    let (reference, measured) = (NetPair::new(), NetPair::new());
    for p in [&reference, &measured] {
        if let Err(e) = setup(p) {
            eprintln!("sentry-bench overhead: {e}");
            return;
        }
    }
    let secs = opts.overhead_secs;
    let mut t = Table::new(
        &format!(
            "overhead: the host's own traffic with sentry's table ({} rounds of {secs} s, alternating; {} blocked addresses)",
            opts.runs, opts.overhead_blocks
        ),
        &[
            "on top of a conntrack firewall",
            "64-byte UDP, datagrams/s (median)",
            "ratio to firewall alone, median (min-max)",
            "new TCP connections/s to a served port",
            "ratio to firewall alone, median (min-max)",
            "stalled connects",
        ],
    );
    let mut rounds = Table::new(
        "overhead, every round (measured pair / reference pair)",
        &[
            "on top of a conntrack firewall",
            "round",
            "UDP datagrams/s",
            "ratio",
            "UDP received/s",
            "ratio",
            "connections/s",
            "ratio",
            "stalled connects (ListenOverflows)",
        ],
    );
    for layout in [Layout::FirewallAlone, Layout::Previous, Layout::Current] {
        let script = match layout {
            Layout::FirewallAlone => {
                format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
            }
            Layout::Previous => previous_script(opts.overhead_blocks),
            Layout::Current => match current_script(opts.overhead_blocks) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("sentry-bench overhead: {e}");
                    continue;
                }
            },
        };
        if let Err(e) = nft(&measured, &script) {
            eprintln!("sentry-bench overhead: {}: {e}", layout.label());
            continue;
        }
        let (mut udp, mut udp_ratio, mut conn, mut conn_ratio) = (vec![], vec![], vec![], vec![]);
        let mut stalls = 0;
        for i in 0..opts.runs {
            let r = round(&measured, &reference, usize::from(i % 2 == 1), secs);
            let (u, c) = (r.udp, r.conn);
            if u[1].sent > 0.0 {
                udp.push(u[0].sent);
                udp_ratio.push(u[0].sent / u[1].sent);
            }
            if c[1].rate > 0.0 {
                conn.push(c[0].rate);
                conn_ratio.push(c[0].rate / c[1].rate);
            }
            stalls += c[0].stalls + c[1].stalls;
            rounds.row(vec![
                layout.label().to_string(),
                (i + 1).to_string(),
                format!("{:.0} / {:.0}", u[0].sent, u[1].sent),
                format!("{:.3}", u[0].sent / u[1].sent),
                format!("{:.0} / {:.0}", u[0].received, u[1].received),
                format!("{:.3}", u[0].received / u[1].received),
                format!("{:.0} / {:.0}", c[0].rate, c[1].rate),
                format!("{:.3}", c[0].rate / c[1].rate),
                format!(
                    "{} / {} ({} / {})",
                    c[0].stalls, c[1].stalls, c[0].overflows, c[1].overflows
                ),
            ]);
        }
        t.row(vec![
            layout.label().to_string(),
            format!("{:.0}", median(udp)),
            spread(&udp_ratio, 3),
            format!("{:.0}", median(conn)),
            spread(&conn_ratio, 3),
            stalls.to_string(),
        ]);
    }
    t.print();
    rounds.print();
}
