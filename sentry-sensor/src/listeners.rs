//! Which ports real services listen on, learnt without privilege.
//!
//! Preferred source: a `NETLINK_SOCK_DIAG` socket opened at start-up (before the seccomp
//! filter) and queried with plain write/read: listening TCP sockets (the kernel then walks
//! only its listening hash, so the cost does not grow with the number of established
//! connections) and every UDP socket, IPv4 and IPv6. Fallback when sock_diag is
//! unavailable: the tables `/proc/net/{tcp,tcp6,udp,udp6}`, opened at start-up and re-read
//! from offset 0 (each read walks every TCP connection of the host, so it costs more as
//! the host has more connections).
//! Sockets whose inode is one of the sensor's own basic-mode sockets are not services.
//! No socket is ever bound to test a port, and no privilege is needed for either source.
//!
//! RESTART_GRACE: a binding that disappeared from the table still serves its port until
//! [`sensor_grace`] after the last read that saw it, so a client retrying while its
//! service restarts is no scanner. A connected UDP socket (a client's) is no service: it
//! receives only from its peer, as the kernel's own socket lookup finds it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use sentry_proto::Protocol;

use crate::ports::PortBits;
use crate::time::Mono;

/// How much earlier than RESTART_GRACE the sensor's grace ends. The enforcer writes a
/// port's grace into the kernel at the poll that found it gone (up to 250 ms after it
/// closed; sentry-enforcer's `served::SENSOR_MARGIN`), the sensor counts from the last
/// read that saw it served: with this margin whatever the sensor calls served the kernel
/// does too, so the kernel's first hit never blocks a probe the sensor would not report.
pub const SENSOR_MARGIN_MS: u64 = 500;

/// The sensor's grace for RESTART_GRACE `restart_grace` (0 stays 0).
pub fn sensor_grace(restart_grace: std::time::Duration) -> u64 {
    u64::try_from(restart_grace.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_sub(SENSOR_MARGIN_MS)
}

/// Bound addresses per port, for one protocol.
#[derive(Debug, Clone, Default)]
struct Bound {
    any: PortBits,
    addrs: HashMap<u16, Vec<IpAddr>>,
    /// Bindings gone from the table, with the last read that saw them (RESTART_GRACE).
    recent: HashMap<u16, Vec<(IpAddr, Mono)>>,
    /// When this part was read.
    read_at: Mono,
}

impl Bound {
    fn add(&mut self, addr: IpAddr, port: u16) {
        self.any.insert(port);
        let v = self.addrs.entry(port).or_default();
        if !v.contains(&addr) {
            v.push(addr);
        }
    }

    fn serves(&self, dst: IpAddr, port: u16, now: Mono, grace_ms: u64) -> bool {
        let recent = || {
            self.recent.get(&port).is_some_and(|v| {
                v.iter()
                    .any(|&(b, seen)| now.ms_since(seen) < grace_ms && covers(b, dst))
            })
        };
        if !self.any.contains(port) {
            return !self.recent.is_empty() && recent();
        }
        self.addrs
            .get(&port)
            .is_some_and(|v| v.iter().any(|&b| covers(b, dst)))
            || recent()
    }

    /// Take `new` (read at `now`) as the current table, remembering for `grace_ms` the
    /// bindings it no longer has: from the read before (`self.read_at`), the last that saw
    /// them.
    fn replace(&mut self, mut new: Bound, now: Mono, grace_ms: u64) {
        new.read_at = now;
        if grace_ms > 0 {
            let live = |seen: Mono| now.ms_since(seen) < grace_ms;
            let still = |new: &Bound, port: u16, a: IpAddr| {
                new.addrs.get(&port).is_some_and(|v| v.contains(&a))
            };
            let mut recent: HashMap<u16, Vec<(IpAddr, Mono)>> = HashMap::new();
            let gone = self
                .addrs
                .iter()
                .flat_map(|(p, v)| v.iter().map(|a| (*p, *a, self.read_at)));
            let older = self
                .recent
                .iter()
                .flat_map(|(p, v)| v.iter().map(|(a, t)| (*p, *a, *t)));
            for (port, a, seen) in gone.chain(older) {
                if live(seen) && !still(&new, port, a) {
                    let v = recent.entry(port).or_default();
                    match v.iter_mut().find(|(b, _)| *b == a) {
                        Some((_, t)) => *t = (*t).max(seen),
                        None => v.push((a, seen)),
                    }
                }
            }
            new.recent = recent;
        }
        *self = new;
    }
}

/// Does a socket bound to `bound` receive traffic for `dst`?
fn covers(bound: IpAddr, dst: IpAddr) -> bool {
    match (bound, dst) {
        (IpAddr::V4(b), IpAddr::V4(d)) => b.is_unspecified() || b == d,
        // An IPv6 wildcard socket also receives IPv4 unless IPV6_V6ONLY is set, which the
        // socket table does not show; assuming it does errs towards not watching the port.
        (IpAddr::V6(b), IpAddr::V4(d)) => b.is_unspecified() || b.to_ipv4_mapped() == Some(d),
        (IpAddr::V6(b), IpAddr::V6(d)) => b.is_unspecified() || b == d,
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// A snapshot of the listening/bound sockets of this network namespace.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    tcp: Bound,
    udp: Bound,
    /// SCTP endpoints (read with the TCP part: SCTP INITs are watched on the TCP ports).
    sctp: Bound,
    /// RESTART_GRACE as the sensor holds it ([`sensor_grace`]); 0: served only while a
    /// socket is there.
    grace_ms: u64,
    /// The time lookups are made at ([`Listeners::set_now`], and each update).
    now: Mono,
}

impl Listeners {
    pub fn add(&mut self, proto: Protocol, addr: IpAddr, port: u16) {
        match proto {
            Protocol::Tcp => self.tcp.add(addr, port),
            Protocol::Udp => self.udp.add(addr, port),
            Protocol::Sctp => self.sctp.add(addr, port),
            // No socket serves a bare IP protocol.
            Protocol::Ip => {}
        }
    }

    /// Keep bindings that disappear for this long ([`sensor_grace`] of RESTART_GRACE).
    pub fn set_grace_ms(&mut self, ms: u64) {
        self.grace_ms = ms;
    }

    /// The time of the lookups that follow (the grace is counted to it).
    #[inline]
    pub fn set_now(&mut self, now: Mono) {
        self.now = self.now.max(now);
    }

    /// A real service receives `proto` traffic for `dst`:`port`, or did within the grace.
    #[inline]
    pub fn serves(&self, proto: Protocol, dst: IpAddr, port: u16) -> bool {
        let (now, g) = (self.now, self.grace_ms);
        match proto {
            Protocol::Tcp => self.tcp.serves(dst, port, now, g),
            Protocol::Udp => self.udp.serves(dst, port, now, g),
            Protocol::Sctp => self.sctp.serves(dst, port, now, g),
            Protocol::Ip => false,
        }
    }

    /// Take the TCP (with SCTP) and/or UDP part of `other` (a
    /// [`ListenerSource::read_some`] result), keeping this snapshot's other part.
    pub fn update(&mut self, other: Listeners, tcp: bool, udp: bool) {
        let now = self.now;
        self.update_at(other, tcp, udp, now);
    }

    /// [`Listeners::update`] with a read made at `now`: bindings the new part lacks stay
    /// served for the grace, counted from the read before, the last that saw them.
    pub fn update_at(&mut self, other: Listeners, tcp: bool, udp: bool, now: Mono) {
        self.set_now(now);
        let (now, g) = (self.now, self.grace_ms);
        if tcp {
            self.tcp.replace(other.tcp, now, g);
            self.sctp.replace(other.sctp, now, g);
        }
        if udp {
            self.udp.replace(other.udp, now, g);
        }
    }

    pub fn count(&self, proto: Protocol) -> usize {
        let b = match proto {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
            Protocol::Sctp => &self.sctp,
            Protocol::Ip => return 0,
        };
        b.addrs.values().map(Vec::len).sum()
    }
}

/// One line of `/proc/net/sctp/eps` (` ENDPT SOCK STY SST HBKT LPORT UID INODE LADDRS`):
/// the port, the inode and the bound addresses (an endpoint bound to the wildcard lists
/// `0.0.0.0` or `::`; a `*` marks a primary address). `None` for the header and garbage.
pub fn parse_sctp_line(line: &str) -> Option<(u16, u64, Vec<IpAddr>)> {
    let mut f = line.split_whitespace();
    let port: u16 = f.nth(5)?.parse().ok()?;
    let inode: u64 = f.nth(1)?.parse().ok()?;
    let addrs: Vec<IpAddr> = f
        .filter_map(|a| a.trim_start_matches('*').parse().ok())
        .collect();
    Some((port, inode, addrs))
}

const TCP_LISTEN: &str = "0A";

/// Parse a `/proc/net/{tcp,udp}[6]` address `HEX:PORT`. The address words are printed as
/// native-endian 32-bit integers.
fn parse_addr(s: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    if !v6 {
        if a.len() != 8 {
            return None;
        }
        let w = u32::from_str_radix(a, 16).ok()?;
        return Some((IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())), port));
    }
    if a.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
        let hex = a.get(i * 8..i * 8 + 8)?;
        let w = u32::from_str_radix(hex, 16).ok()?;
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    Some((IpAddr::V6(Ipv6Addr::from(bytes)), port))
}

/// Parse one table line; `Some((addr, port, inode))` for a socket that counts.
pub fn parse_line(line: &str, proto: Protocol, v6: bool) -> Option<(IpAddr, u16, u64)> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let local = f.next()?;
    let remote = f.next()?;
    let state = f.next()?;
    if proto == Protocol::Tcp && state != TCP_LISTEN {
        return None;
    }
    // A connected UDP socket (a client's) receives from its peer only.
    if proto == Protocol::Udp && !remote.ends_with(":0000") {
        return None;
    }
    // tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    let inode = f.nth(5)?.parse::<u64>().ok()?;
    let (addr, port) = parse_addr(local, v6)?;
    Some((addr, port, inode))
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR: usize = 16;
const TCPF_LISTEN: u32 = 1 << 10;

/// A `SOCK_DIAG_BY_FAMILY` dump request (`nlmsghdr` + `inet_diag_req_v2`).
pub fn diag_request(seq: u32, family: u8, protocol: u8, states: u32) -> [u8; 72] {
    let mut m = [0u8; 72];
    let (hdr, body) = m.split_at_mut(NLMSG_HDR);
    hdr[0..4].copy_from_slice(&72u32.to_ne_bytes());
    hdr[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    hdr[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    hdr[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel.
    body[0] = family;
    body[1] = protocol;
    // idiag_ext 0, pad 0
    body[4..8].copy_from_slice(&states.to_ne_bytes());
    // inet_diag_sockid all zero: every socket.
    m
}

fn u16_ne(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_ne(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn bad(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {m}"))
}

/// Parse one datagram of a dump reply for request `seq`. Returns true once NLMSG_DONE was
/// seen. Messages of other sequence numbers (left over from an earlier, timed-out dump)
/// are skipped.
pub fn parse_diag(
    buf: &[u8],
    seq: u32,
    proto: Protocol,
    own: &HashSet<u64>,
    out: &mut Listeners,
) -> io::Result<bool> {
    let mut off = 0usize;
    while off + NLMSG_HDR <= buf.len() {
        let len = u32_ne(buf, off).ok_or_else(|| bad("short header"))?;
        let len = usize::try_from(len).map_err(|_| bad("length"))?;
        let typ = u16_ne(buf, off + 4).ok_or_else(|| bad("short header"))?;
        let mseq = u32_ne(buf, off + 8).ok_or_else(|| bad("short header"))?;
        if len < NLMSG_HDR || off + len > buf.len() {
            return Err(bad("message length out of range"));
        }
        let body = buf
            .get(off + NLMSG_HDR..off + len)
            .ok_or_else(|| bad("body"))?;
        off += (len + 3) & !3;
        if mseq != seq {
            continue;
        }
        match typ {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = u32_ne(body, 0).ok_or_else(|| bad("short error"))?;
                let code = i32::from_ne_bytes(code.to_ne_bytes());
                return Err(io::Error::from_raw_os_error(code.saturating_neg()));
            }
            SOCK_DIAG_BY_FAMILY => {
                // inet_diag_msg: family, state, timer, retrans, sockid (sport, dport,
                // src[16], dst[16], if, cookie[2]), expires, rqueue, wqueue, uid, inode.
                let family = *body.first().ok_or_else(|| bad("short message"))?;
                let port = body
                    .get(4..6)
                    .and_then(|p| p.try_into().ok())
                    .map(u16::from_be_bytes)
                    .ok_or_else(|| bad("short message"))?;
                let src = body.get(8..24).ok_or_else(|| bad("short message"))?;
                let inode = u64::from(u32_ne(body, 68).ok_or_else(|| bad("short message"))?);
                let dport = body.get(6..8).ok_or_else(|| bad("short message"))?;
                // A connected UDP socket (a client's) receives from its peer only.
                if proto == Protocol::Udp && dport != [0, 0] {
                    continue;
                }
                let addr = match family {
                    AF_INET => {
                        let a: [u8; 4] = src
                            .get(..4)
                            .and_then(|a| a.try_into().ok())
                            .ok_or_else(|| bad("address"))?;
                        IpAddr::V4(Ipv4Addr::from(a))
                    }
                    AF_INET6 => {
                        let a: [u8; 16] = src.try_into().map_err(|_| bad("address"))?;
                        IpAddr::V6(Ipv6Addr::from(a))
                    }
                    _ => continue,
                };
                if !own.contains(&inode) {
                    out.add(proto, addr, port);
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

#[derive(Debug)]
enum Backend {
    Diag {
        sock: File,
        buf: Vec<u8>,
        seq: u32,
    },
    Proc {
        files: Vec<(File, Protocol, bool)>,
        line: String,
    },
}

/// The source of the listener table, opened at start-up.
#[derive(Debug)]
pub struct ListenerSource {
    backend: Backend,
    tcp: bool,
    udp: bool,
    /// `/proc/self/net/sctp/eps`, read with the TCP part, when the kernel has SCTP at
    /// start-up (sock_diag for SCTP needs another module, and nothing else lists SCTP
    /// endpoints without privilege). A kernel without SCTP has no SCTP service to mistake
    /// for a probe; one that loads the module later is not seen until the sensor restarts
    /// (sentry-sensor(8)).
    sctp: Option<File>,
}

impl ListenerSource {
    /// sock_diag if the kernel offers it (the first dump is made here, before privileges
    /// are dropped, so the diag modules are loaded if needed), else /proc/net.
    pub fn open(tcp: bool, udp: bool) -> io::Result<Self> {
        if let Ok(sock) = crate::sys::sock_diag_socket(200) {
            let mut s = Self {
                backend: Backend::Diag {
                    sock,
                    buf: vec![0u8; 64 * 1024],
                    seq: 0,
                },
                tcp,
                udp,
                sctp: None,
            };
            if s.read(&HashSet::new()).is_ok() {
                s.sctp = Self::open_sctp(Path::new("/proc/self/net"), tcp);
                return Ok(s);
            }
        }
        Self::open_at(Path::new("/proc/self/net"), tcp, udp)
    }

    fn open_sctp(dir: &Path, tcp: bool) -> Option<File> {
        tcp.then(|| File::open(dir.join("sctp/eps")).ok()).flatten()
    }

    /// The /proc/net-format tables in `dir` (tests use a temporary directory). A missing
    /// IPv6 table (IPv6 disabled) is skipped; a missing IPv4 table is an error.
    pub fn open_at(dir: &Path, tcp: bool, udp: bool) -> io::Result<Self> {
        let mut files = Vec::new();
        let mut want = Vec::new();
        if tcp {
            want.push(("tcp", Protocol::Tcp, false));
            want.push(("tcp6", Protocol::Tcp, true));
        }
        if udp {
            want.push(("udp", Protocol::Udp, false));
            want.push(("udp6", Protocol::Udp, true));
        }
        for (name, proto, v6) in want {
            let path = dir.join(name);
            match File::open(&path) {
                Ok(f) => files.push((f, proto, v6)),
                Err(e) if v6 && e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            }
        }
        Ok(Self {
            backend: Backend::Proc {
                files,
                line: String::with_capacity(256),
            },
            tcp,
            udp,
            sctp: Self::open_sctp(dir, tcp),
        })
    }

    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Diag { .. } => "sock_diag netlink",
            Backend::Proc { .. } => "/proc/net",
        }
    }

    /// Re-read the table. Sockets whose inode is in `own` are skipped.
    pub fn read(&mut self, own: &HashSet<u64>) -> io::Result<Listeners> {
        self.read_some(own, true, true)
    }

    /// Re-read only the TCP and/or UDP part of the table (of those this source was opened
    /// for); the other part of the result is empty. A probe is re-checked against its own
    /// protocol only, which halves the cost on the latency-critical path.
    pub fn read_some(&mut self, own: &HashSet<u64>, tcp: bool, udp: bool) -> io::Result<Listeners> {
        let mut l = Listeners::default();
        let (tcp, udp) = (tcp && self.tcp, udp && self.udp);
        match &mut self.backend {
            Backend::Diag { sock, buf, seq } => {
                let mut dumps = Vec::new();
                if tcp {
                    dumps.push((AF_INET, IPPROTO_TCP, TCPF_LISTEN, Protocol::Tcp));
                    dumps.push((AF_INET6, IPPROTO_TCP, TCPF_LISTEN, Protocol::Tcp));
                }
                if udp {
                    dumps.push((AF_INET, IPPROTO_UDP, u32::MAX, Protocol::Udp));
                    dumps.push((AF_INET6, IPPROTO_UDP, u32::MAX, Protocol::Udp));
                }
                for (family, proto, states, p) in dumps {
                    *seq = seq.wrapping_add(1);
                    sock.write_all(&diag_request(*seq, family, proto, states))?;
                    // Bounded: a dump that never ends is cut off after this many datagrams.
                    let mut done = false;
                    for _ in 0..10_000 {
                        let n = sock.read(buf)?;
                        let data = buf.get(..n).ok_or_else(|| bad("read size"))?;
                        match parse_diag(data, *seq, p, own, &mut l) {
                            Ok(true) => {
                                done = true;
                                break;
                            }
                            Ok(false) => {}
                            // IPv6 disabled: no AF_INET6 table.
                            Err(e)
                                if family == AF_INET6
                                    && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
                            {
                                done = true;
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    if !done {
                        return Err(bad("dump did not end"));
                    }
                }
            }
            Backend::Proc { files, line } => {
                for (file, proto, v6) in files.iter_mut() {
                    let wanted = match proto {
                        Protocol::Udp => udp,
                        _ => tcp,
                    };
                    if !wanted {
                        continue;
                    }
                    file.seek(SeekFrom::Start(0))?;
                    let mut r = BufReader::with_capacity(64 * 1024, &*file);
                    let mut first = true;
                    loop {
                        line.clear();
                        if r.read_line(line)? == 0 {
                            break;
                        }
                        if std::mem::take(&mut first) {
                            continue; // header
                        }
                        if let Some((addr, port, inode)) = parse_line(line, *proto, *v6) {
                            if !own.contains(&inode) {
                                l.add(*proto, addr, port);
                            }
                        }
                    }
                }
            }
        }
        if let (Some(file), true) = (&mut self.sctp, tcp) {
            file.seek(SeekFrom::Start(0))?;
            let r = BufReader::with_capacity(16 * 1024, &*file);
            // Bounded like a sock_diag dump: a table that never ends is cut off.
            for line in r.lines().skip(1).take(1 << 20) {
                if let Some((port, _, addrs)) = parse_sctp_line(&line?) {
                    if addrs.is_empty() {
                        l.add(Protocol::Sctp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
                        l.add(Protocol::Sctp, IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
                    }
                    for a in addrs {
                        l.add(Protocol::Sctp, a, port);
                    }
                }
            }
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 100 0 0 10 0
   2: 0200090A:0016 0100090A:D431 01 00000000:00000000 00:00000000 00000000     0        0 1236 1 0000000000000000 100 0 0 10 0
   3: 00000000:0017 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 4242 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
   1: 000000FD000000000000000002000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 78 1 0000000000000000 100 0 0 10 0
";
    const UDP4: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 5555 2 0000000000000000 0
  101: 00000000:0089 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5556 2 0000000000000000 0
";

    #[test]
    fn sctp_endpoints() {
        // As the kernel prints them (sctp_eps_seq_show), a wildcard and a multi-homed one.
        let t = " ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS
ffff8881 ffff8882 1   10  29   3868      0 41234 0.0.0.0 
ffff8883 ffff8884 2   10  12   2905    107 41235 10.9.0.2 fd00:0000:0000:0000:0000:0000:0000:0002 
";
        let mut lines = t.lines();
        assert_eq!(parse_sctp_line(lines.next().unwrap()), None);
        let (p, ino, a) = parse_sctp_line(lines.next().unwrap()).unwrap();
        assert_eq!(
            (p, ino, a),
            (3868, 41234, vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)])
        );
        let (p, _, a) = parse_sctp_line(lines.next().unwrap()).unwrap();
        assert_eq!(p, 2905);
        assert_eq!(a.len(), 2);
        assert_eq!(parse_sctp_line("garbage"), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), TCP4).unwrap();
        std::fs::create_dir(dir.path().join("sctp")).unwrap();
        std::fs::write(dir.path().join("sctp/eps"), t).unwrap();
        let mut src = ListenerSource::open_at(dir.path(), true, false).unwrap();
        let l = src.read(&HashSet::new()).unwrap();
        let d4 = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2));
        assert!(l.serves(Protocol::Sctp, d4, 3868));
        assert!(l.serves(Protocol::Sctp, d4, 2905));
        assert!(!l.serves(Protocol::Sctp, IpAddr::V4(Ipv4Addr::new(10, 9, 0, 3)), 2905));
        assert!(!l.serves(Protocol::Sctp, d4, 22));
        assert!(l.serves(Protocol::Tcp, d4, 22));
        assert_eq!(l.count(Protocol::Sctp), 3);
    }

    #[test]
    fn parse_v4_lines() {
        let lines: Vec<_> = TCP4
            .lines()
            .skip(1)
            .filter_map(|l| parse_line(l, Protocol::Tcp, false))
            .collect();
        assert_eq!(
            lines,
            vec![
                (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 22, 1234),
                (IpAddr::V4(Ipv4Addr::LOCALHOST), 631, 1235),
                (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 23, 4242),
            ],
            "the ESTABLISHED line is not a listener"
        );
        let udp: Vec<_> = UDP4
            .lines()
            .skip(1)
            .filter_map(|l| parse_line(l, Protocol::Udp, false))
            .collect();
        assert_eq!(udp[0], (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)), 53, 5555));
        assert_eq!(udp[1].1, 137);
    }

    #[test]
    fn parse_v6_lines() {
        let lines: Vec<_> = TCP6
            .lines()
            .skip(1)
            .filter_map(|l| parse_line(l, Protocol::Tcp, true))
            .collect();
        assert_eq!(lines[0], (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80, 77));
        assert_eq!(lines[1], (IpAddr::V6("fd00::2".parse().unwrap()), 443, 78));
    }

    #[test]
    fn garbage_lines_are_ignored() {
        for l in [
            "",
            "x",
            "0: zz:0016 0:0 0A 0 0 0 0 0 1",
            "0: 00000000:FFFFF 00000000:0000 0A 0 0 0 0 0 1",
            "0: 0000000:0016 00000000:0000 0A 0 0 0 0 0 1",
            "0: 00000000:0016 00000000:0000 0A 0 0 0 0 0 notanumber",
        ] {
            assert_eq!(parse_line(l, Protocol::Tcp, false), None, "{l:?}");
        }
    }

    #[test]
    fn source_rereads_and_skips_own_sockets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), TCP4).unwrap();
        std::fs::write(dir.path().join("udp"), UDP4).unwrap();
        let mut src = ListenerSource::open_at(dir.path(), true, true).unwrap();
        let own: HashSet<u64> = [4242].into_iter().collect();
        let l = src.read(&own).unwrap();
        let d4 = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2));
        assert!(l.serves(Protocol::Tcp, d4, 22));
        assert!(!l.serves(Protocol::Tcp, d4, 631));
        assert!(l.serves(Protocol::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), 631));
        assert!(
            !l.serves(Protocol::Tcp, d4, 23),
            "own socket is not a service"
        );
        assert!(l.serves(Protocol::Udp, d4, 137));
        assert_eq!(l.count(Protocol::Tcp), 2);
        // Re-read after the table changed (same open file handle semantics: rewritten).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("tcp"))
            .unwrap();
        writeln!(f, "   9: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9 1 0 100 0 0 10 0").unwrap();
        let l = src.read(&own).unwrap();
        assert!(l.serves(Protocol::Tcp, d4, 8080));
    }

    #[test]
    fn partial_reread_keeps_the_other_protocol() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), TCP4).unwrap();
        std::fs::write(dir.path().join("udp"), UDP4).unwrap();
        let mut src = ListenerSource::open_at(dir.path(), true, true).unwrap();
        let own = HashSet::new();
        let mut l = src.read(&own).unwrap();
        let d4 = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2));
        // TCP table changes (port 22 gone), UDP table vanishes from disk: a TCP-only
        // re-read must not touch the file, and must keep the UDP part as it was.
        std::fs::write(dir.path().join("tcp"), TCP4.lines().next().unwrap()).unwrap();
        std::fs::write(dir.path().join("udp"), "").unwrap();
        let tcp_only = src.read_some(&own, true, false).unwrap();
        assert_eq!(tcp_only.count(Protocol::Udp), 0, "UDP not read");
        l.update(tcp_only, true, false);
        assert!(!l.serves(Protocol::Tcp, d4, 22), "TCP part replaced");
        assert!(l.serves(Protocol::Udp, d4, 137), "UDP part kept");
        let udp_only = src.read_some(&own, false, true).unwrap();
        l.update(udp_only, false, true);
        assert!(!l.serves(Protocol::Udp, d4, 137), "UDP part replaced");
    }

    #[test]
    fn a_port_served_a_moment_ago_stays_served_for_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), TCP4).unwrap();
        std::fs::write(dir.path().join("udp"), UDP4).unwrap();
        let mut src = ListenerSource::open_at(dir.path(), true, true).unwrap();
        let own = HashSet::new();
        let d4 = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2));
        let mut l = Listeners::default();
        l.set_grace_ms(sensor_grace(std::time::Duration::from_secs(5)));
        l.update_at(src.read(&own).unwrap(), true, true, Mono(1_000));
        assert!(l.serves(Protocol::Tcp, d4, 22));
        // The service stops (the table loses port 22); the read at 1.2 s no longer has
        // it, but it was seen at 1.0 s: served until 1.0 + 4.5 s.
        std::fs::write(dir.path().join("tcp"), TCP4.lines().next().unwrap()).unwrap();
        l.update_at(src.read(&own).unwrap(), true, true, Mono(1_200));
        assert!(l.serves(Protocol::Tcp, d4, 22));
        assert!(l.serves(Protocol::Udp, d4, 137), "UDP untouched");
        // Re-reads within the grace keep the first sighting, not the re-read's time.
        l.update_at(src.read(&own).unwrap(), true, false, Mono(5_000));
        l.set_now(Mono(5_499));
        assert!(l.serves(Protocol::Tcp, d4, 22));
        l.set_now(Mono(5_500));
        assert!(!l.serves(Protocol::Tcp, d4, 22), "grace over");
        assert!(!l.serves(Protocol::Tcp, d4, 23), "never served");
        l.update_at(src.read(&own).unwrap(), true, false, Mono(6_000));
        l.set_now(Mono(5_000));
        assert!(
            !l.serves(Protocol::Tcp, d4, 22),
            "forgotten after the grace"
        );
        // Without a grace a closed port is unserved at once.
        let mut z = Listeners::default();
        std::fs::write(dir.path().join("tcp"), TCP4).unwrap();
        z.update_at(src.read(&own).unwrap(), true, true, Mono(1));
        std::fs::write(dir.path().join("tcp"), "").unwrap();
        z.update_at(src.read(&own).unwrap(), true, true, Mono(2));
        assert!(!z.serves(Protocol::Tcp, d4, 22));
        assert_eq!(sensor_grace(std::time::Duration::ZERO), 0);
    }

    #[test]
    fn connected_udp_sockets_are_no_services() {
        let line = "  7: 0200090A:9C40 0100090A:0035 01 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0";
        assert_eq!(parse_line(line, Protocol::Udp, false), None);
        let mut m = diag_msg(7, AF_INET, &[10, 9, 0, 2], 40000, 1);
        m[NLMSG_HDR + 6..NLMSG_HDR + 8].copy_from_slice(&53u16.to_be_bytes());
        let mut l = Listeners::default();
        parse_diag(&m, 7, Protocol::Udp, &HashSet::new(), &mut l).unwrap();
        assert_eq!(l.count(Protocol::Udp), 0);
        parse_diag(&m, 7, Protocol::Tcp, &HashSet::new(), &mut l).unwrap();
        assert_eq!(l.count(Protocol::Tcp), 1);
    }

    fn diag_msg(seq: u32, family: u8, addr: &[u8], port: u16, inode: u32) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDR + 72];
        let len = u32::try_from(m.len()).unwrap();
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        let b = &mut m[NLMSG_HDR..];
        b[0] = family;
        b[1] = 10;
        b[4..6].copy_from_slice(&port.to_be_bytes());
        b[8..8 + addr.len()].copy_from_slice(addr);
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        m
    }

    fn done(seq: u32) -> Vec<u8> {
        let mut m = vec![0u8; 20];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m
    }

    #[test]
    fn diag_reply_parsing() {
        let mut buf = diag_msg(7, AF_INET, &[0, 0, 0, 0], 22, 100);
        buf.extend(diag_msg(
            7,
            AF_INET6,
            &Ipv6Addr::LOCALHOST.octets(),
            631,
            101,
        ));
        buf.extend(diag_msg(6, AF_INET, &[0, 0, 0, 0], 8080, 102)); // stale dump
        buf.extend(diag_msg(7, AF_INET, &[0, 0, 0, 0], 23, 999)); // our own
        let mut l = Listeners::default();
        let own: HashSet<u64> = [999].into_iter().collect();
        assert!(!parse_diag(&buf, 7, Protocol::Tcp, &own, &mut l).unwrap());
        assert!(parse_diag(&done(7), 7, Protocol::Tcp, &own, &mut l).unwrap());
        let d = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert!(l.serves(Protocol::Tcp, d, 22));
        assert!(l.serves(Protocol::Tcp, IpAddr::V6(Ipv6Addr::LOCALHOST), 631));
        assert!(!l.serves(Protocol::Tcp, d, 8080));
        assert!(!l.serves(Protocol::Tcp, d, 23));
        // Corrupt lengths are errors, never panics.
        let mut bad = diag_msg(7, AF_INET, &[0; 4], 1, 1);
        bad[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(parse_diag(&bad, 7, Protocol::Tcp, &own, &mut l).is_err());
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse_diag(&bad, 7, Protocol::Tcp, &own, &mut l).is_err());
        let mut short = diag_msg(7, AF_INET, &[0; 4], 1, 1);
        short.truncate(40);
        short[0..4].copy_from_slice(&40u32.to_ne_bytes());
        assert!(parse_diag(&short, 7, Protocol::Tcp, &own, &mut l).is_err());
        // Kernel error reply.
        let mut err = done(7);
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EINVAL).to_ne_bytes());
        let e = parse_diag(&err, 7, Protocol::Tcp, &own, &mut l).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn real_tables_are_readable() {
        let mut src = ListenerSource::open(true, true).unwrap();
        assert_eq!(src.backend(), "sock_diag netlink");
        let l = src.read(&HashSet::new()).unwrap();
        // Bind a listener and see it appear.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        assert!(!l.serves(Protocol::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        let l = src.read(&HashSet::new()).unwrap();
        assert!(l.serves(Protocol::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        let u = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let uport = u.local_addr().unwrap().port();
        let l = src.read(&HashSet::new()).unwrap();
        assert!(l.serves(Protocol::Udp, IpAddr::V6(Ipv6Addr::LOCALHOST), uport));
        assert!(!l.serves(Protocol::Tcp, IpAddr::V6(Ipv6Addr::LOCALHOST), uport));
        // The /proc fallback sees the same.
        let mut p = ListenerSource::open_at(Path::new("/proc/self/net"), true, true).unwrap();
        let lp = p.read(&HashSet::new()).unwrap();
        assert!(lp.serves(Protocol::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        assert!(lp.serves(Protocol::Udp, IpAddr::V6(Ipv6Addr::LOCALHOST), uport));
    }
}
