//! Which ports real services listen on, learnt without privilege.
//!
//! The kernel's socket tables `/proc/net/{tcp,tcp6,udp,udp6}` are opened once at start-up
//! (before the seccomp filter; they stay readable as the `sentry` user) and re-read from
//! offset 0 periodically and on demand. Listening TCP sockets (state 0A) and every UDP
//! socket count. Sockets whose inode is one of the sensor's own basic-mode sockets are not
//! services. No socket is ever bound to test a port.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use sentry_proto::Protocol;

use crate::ports::PortBits;

/// Bound addresses per port, for one protocol.
#[derive(Debug, Clone, Default)]
struct Bound {
    any: PortBits,
    addrs: HashMap<u16, Vec<IpAddr>>,
}

impl Bound {
    fn add(&mut self, addr: IpAddr, port: u16) {
        self.any.insert(port);
        let v = self.addrs.entry(port).or_default();
        if !v.contains(&addr) {
            v.push(addr);
        }
    }

    fn serves(&self, dst: IpAddr, port: u16) -> bool {
        if !self.any.contains(port) {
            return false;
        }
        self.addrs
            .get(&port)
            .is_some_and(|v| v.iter().any(|&b| covers(b, dst)))
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
}

impl Listeners {
    pub fn add(&mut self, proto: Protocol, addr: IpAddr, port: u16) {
        match proto {
            Protocol::Tcp => self.tcp.add(addr, port),
            Protocol::Udp => self.udp.add(addr, port),
        }
    }

    /// A real service receives `proto` traffic for `dst`:`port`.
    #[inline]
    pub fn serves(&self, proto: Protocol, dst: IpAddr, port: u16) -> bool {
        match proto {
            Protocol::Tcp => self.tcp.serves(dst, port),
            Protocol::Udp => self.udp.serves(dst, port),
        }
    }

    pub fn count(&self, proto: Protocol) -> usize {
        let b = match proto {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        };
        b.addrs.values().map(Vec::len).sum()
    }
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
    let _remote = f.next()?;
    let state = f.next()?;
    if proto == Protocol::Tcp && state != TCP_LISTEN {
        return None;
    }
    // tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    let inode = f.nth(5)?.parse::<u64>().ok()?;
    let (addr, port) = parse_addr(local, v6)?;
    Some((addr, port, inode))
}

/// The open socket-table files.
#[derive(Debug)]
pub struct ListenerSource {
    files: Vec<(File, Protocol, bool)>,
    line: String,
}

impl ListenerSource {
    /// Open the tables for the protocols in use. A missing IPv6 table (IPv6 disabled) is
    /// skipped; a missing IPv4 table is an error.
    pub fn open(tcp: bool, udp: bool) -> io::Result<Self> {
        Self::open_at(Path::new("/proc/self/net"), tcp, udp)
    }

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
            files,
            line: String::with_capacity(256),
        })
    }

    /// Re-read every table. Sockets whose inode is in `own` are skipped.
    pub fn read(&mut self, own: &HashSet<u64>) -> io::Result<Listeners> {
        let mut l = Listeners::default();
        for (file, proto, v6) in &mut self.files {
            file.seek(SeekFrom::Start(0))?;
            let mut r = BufReader::with_capacity(64 * 1024, &*file);
            let mut first = true;
            loop {
                self.line.clear();
                if r.read_line(&mut self.line)? == 0 {
                    break;
                }
                if std::mem::take(&mut first) {
                    continue; // header
                }
                if let Some((addr, port, inode)) = parse_line(&self.line, *proto, *v6) {
                    if !own.contains(&inode) {
                        l.add(*proto, addr, port);
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
    fn real_proc_tables_are_readable() {
        let mut src = ListenerSource::open(true, true).unwrap();
        let l = src.read(&HashSet::new()).unwrap();
        // Bind a listener and see it appear.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        assert!(!l.serves(Protocol::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        let l = src.read(&HashSet::new()).unwrap();
        assert!(l.serves(Protocol::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
}
