//! Basic modes `-tcp` / `-udp`: real sockets on TCP_PORTS / UDP_PORTS, IPv4 and IPv6.
//!
//! A completed TCP connection is a hit: PORT_BANNER is written to the peer (best effort,
//! non-blocking) and the connection is closed. A UDP datagram is a hit; no banner is sent
//! back over UDP, because the source of a datagram is trivially spoofed and a reply would
//! make the sensor a reflector. Sockets use SO_REUSEADDR, so a leftover TIME_WAIT
//! connection does not block a port; a port that cannot be bound (a real service has it)
//! is reported with its own number and not watched.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use sentry_proto::{Mode, ScanKind};

use crate::state::Hit;
use crate::sys::{bound_socket, SockKind};

/// Most connections or datagrams handled per socket per loop iteration, so one busy port
/// cannot starve the detection input (or the other ports).
const BATCH: usize = 64;

/// A basic-mode hit: the sensor's one hit type, probed address the wildcard the
/// listening sockets are bound to (a basic hit needs no listener check).
fn basic_hit(src: IpAddr, port: u16, mode: Mode, scan: ScanKind) -> Hit {
    Hit {
        src: src.to_canonical(),
        dst: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        port,
        scan,
        mode,
        ip_options: false,
    }
}

#[derive(Debug)]
enum Sock {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

#[derive(Debug)]
pub struct Basic {
    socks: Vec<(Sock, u16)>,
    banner: Option<Vec<u8>>,
}

/// A port that could not be bound.
#[derive(Debug)]
pub struct BindFailure {
    pub mode: Mode,
    pub addr: SocketAddr,
    pub error: io::Error,
}

impl Basic {
    /// Bind every listed port for the enabled basic modes. IPv6 sockets are skipped
    /// silently when the host has no IPv6.
    pub fn open(
        tcp_ports: Option<&[u16]>,
        udp_ports: Option<&[u16]>,
        banner: Option<&str>,
    ) -> (Self, Vec<BindFailure>) {
        let mut socks = Vec::new();
        let mut failures = Vec::new();
        let addrs = |port: u16| {
            [
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            ]
        };
        for (ports, mode, kind) in [
            (tcp_ports, Mode::Tcp, SockKind::Stream),
            (udp_ports, Mode::Udp, SockKind::Datagram),
        ] {
            let Some(ports) = ports else { continue };
            for &port in ports {
                if port == 0 {
                    continue;
                }
                for addr in addrs(port) {
                    match bound_socket(addr, kind) {
                        Ok(fd) => {
                            let s = match kind {
                                SockKind::Stream => Sock::Tcp(TcpListener::from(fd)),
                                SockKind::Datagram => Sock::Udp(UdpSocket::from(fd)),
                            };
                            socks.push((s, port));
                        }
                        Err(e)
                            if addr.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                        Err(error) => failures.push(BindFailure { mode, addr, error }),
                    }
                }
            }
        }
        (
            Self {
                socks,
                banner: banner.map(|b| b.as_bytes().to_vec()),
            },
            failures,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    /// Descriptors to poll, in the order [`Basic::on_ready`] expects.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.socks.iter().map(|(s, _)| match s {
            Sock::Tcp(l) => l.as_raw_fd(),
            Sock::Udp(u) => u.as_raw_fd(),
        })
    }

    /// Socket inodes of our own sockets (so the listener table does not mistake them for
    /// real services). Read from `/proc/self/fd` at start-up.
    pub fn inodes(&self) -> HashSet<u64> {
        self.fds()
            .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
            .filter_map(|p| {
                let s = p.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
                s.parse().ok()
            })
            .collect()
    }

    /// Bound (mode, port) pairs, for the start-up log.
    pub fn bound(&self) -> Vec<(Mode, u16)> {
        let mut v: Vec<_> = self
            .socks
            .iter()
            .map(|(s, p)| match s {
                Sock::Tcp(_) => (Mode::Tcp, *p),
                Sock::Udp(_) => (Mode::Udp, *p),
            })
            .collect();
        v.dedup();
        v
    }

    /// Handle socket `i` being readable; hits are appended to `hits`.
    pub fn on_ready(&mut self, i: usize, hits: &mut Vec<Hit>, errors: &mut u64) {
        let Some((sock, port)) = self.socks.get(i) else {
            return;
        };
        let port = *port;
        match sock {
            Sock::Tcp(l) => {
                for _ in 0..BATCH {
                    match l.accept() {
                        Ok((mut stream, peer)) => {
                            if let Some(b) = &self.banner {
                                // Non-blocking: a peer that never reads cannot stall the
                                // sensor; the banner is small and fits the send buffer.
                                if stream.set_nonblocking(true).is_ok() {
                                    let _ = stream.write(b);
                                }
                            }
                            drop(stream);
                            hits.push(basic_hit(peer.ip(), port, Mode::Tcp, ScanKind::Connect));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            // ECONNABORTED, EMFILE, ...: counted, try again next round.
                            *errors += 1;
                            break;
                        }
                    }
                }
            }
            Sock::Udp(u) => {
                let mut buf = [0u8; 64];
                for _ in 0..BATCH {
                    match u.recv_from(&mut buf) {
                        Ok((_, peer)) => {
                            hits.push(basic_hit(peer.ip(), port, Mode::Udp, ScanKind::Udp))
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            *errors += 1;
                            break;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn tcp_connect_is_a_hit_and_gets_the_banner() {
        let port = free_port();
        let (mut b, fails) = Basic::open(Some(&[port]), None, Some("go away\n"));
        assert!(fails.is_empty(), "{fails:?}");
        assert!(!b.inodes().is_empty());
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut hits = Vec::new();
        let mut errors = 0;
        for _ in 0..100 {
            for i in 0..b.len() {
                b.on_ready(i, &mut hits, &mut errors);
            }
            if !hits.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            hits,
            vec![Hit {
                src: IpAddr::V4(Ipv4Addr::LOCALHOST),
                dst: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                port,
                mode: Mode::Tcp,
                scan: ScanKind::Connect,
                ip_options: false,
            }]
        );
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "go away\n");
    }

    #[test]
    fn port_in_use_is_reported_with_its_own_number() {
        // A dual-stack service on [::] takes the port for IPv4 and IPv6.
        let taken = std::net::TcpListener::bind("[::]:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let free = free_port();
        let (b, fails) = Basic::open(Some(&[free, busy]), None, None);
        assert_eq!(fails.len(), 2, "{fails:?}");
        for f in &fails {
            assert_eq!(f.addr.port(), busy);
            assert_eq!(f.mode, Mode::Tcp);
        }
        assert!(b.bound().contains(&(Mode::Tcp, free)));
        assert!(!b.bound().contains(&(Mode::Tcp, busy)));
    }

    #[test]
    fn time_wait_does_not_block_rebinding() {
        let port = free_port();
        {
            let (mut b, fails) = Basic::open(Some(&[port]), None, None);
            assert!(fails.is_empty());
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut hits = Vec::new();
            let mut e = 0;
            for _ in 0..100 {
                for i in 0..b.len() {
                    b.on_ready(i, &mut hits, &mut e);
                }
                if !hits.is_empty() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            drop(c);
        }
        // The server side closed first, so its end sits in TIME_WAIT.
        let (_b, fails) = Basic::open(Some(&[port]), None, None);
        assert!(fails.is_empty(), "{fails:?}");
    }

    #[test]
    fn udp_datagram_is_a_hit() {
        let port = free_port();
        let (mut b, fails) = Basic::open(None, Some(&[port]), Some("banner"));
        assert!(fails.is_empty(), "{fails:?}");
        let c = UdpSocket::bind("[::1]:0").unwrap();
        c.send_to(b"x", ("::1", port)).unwrap();
        let mut hits = Vec::new();
        let mut e = 0;
        for _ in 0..100 {
            for i in 0..b.len() {
                b.on_ready(i, &mut hits, &mut e);
            }
            if !hits.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].src, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(hits[0].mode, Mode::Udp);
    }
}
