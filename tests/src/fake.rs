//! Fakes that speak sentry-proto: a [`FakeSensor`] for driving the real enforcer, and a
//! [`FakeEnforcer`] for observing the real sensor.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentry_proto::{
    encode_frame, read_frame, write_frame, BlockRequest, Decision, EnforcerFrame, Hello, Mode,
    Protocol, SensorFrame, SensorStats, PROTOCOL_VERSION,
};

use crate::netns::NetPair;
use crate::req::Req;
use crate::sensor::RunDir;

/// The Hello of the fake sensor: `fake-sensor`, this process, modes stcp + sudp.
pub fn hello() -> SensorFrame {
    SensorFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        sensor: "fake-sensor".into(),
        pid: std::process::id(),
        modes: vec![Mode::Stcp, Mode::Sudp],
    })
}

/// A frame's bytes on the wire.
pub fn frame(f: &SensorFrame) -> Vec<u8> {
    encode_frame(f).expect("encode frame")
}

/// A fake sensor: a client of the enforcer socket.
#[derive(Debug)]
pub struct FakeSensor {
    pub s: UnixStream,
    /// The last sequence number used by [`FakeSensor::block`].
    pub seq: u64,
    /// Addresses the enforcer said are no longer blocked.
    pub unblocked: Vec<std::net::IpAddr>,
}

impl FakeSensor {
    pub fn connect(path: &Path) -> FakeSensor {
        let s =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        FakeSensor {
            s,
            seq: 0,
            unblocked: Vec::new(),
        }
    }

    /// Connect and complete the handshake, retrying (bounded) while the enforcer still
    /// holds the slot of a sensor connection it has just closed.
    pub fn welcomed(path: &Path) -> FakeSensor {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = FakeSensor::connect(path);
            let _ = c.send_raw(&frame(&hello()));
            match c.recv() {
                Ok(EnforcerFrame::Welcome { .. }) => return c,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                other => panic!("no Welcome: {other:?}"),
            }
        }
    }

    pub fn send(&mut self, f: &SensorFrame) {
        write_frame(&mut self.s, f).expect("send");
    }

    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b)
    }

    /// The next frame, skipping the NFLOG hand-over that follows the Welcome (read with
    /// read(2), its descriptor is discarded by the kernel; the hand-over itself is tested
    /// in `tests/enforcer.rs`).
    pub fn recv(&mut self) -> Result<EnforcerFrame, sentry_proto::ProtoError> {
        loop {
            match read_frame::<EnforcerFrame, _>(&mut self.s) {
                Ok(EnforcerFrame::Capture { .. }) => continue,
                other => return other,
            }
        }
    }

    /// Send the Hello and expect the Welcome.
    pub fn handshake(&mut self) {
        self.send(&hello());
        match self.recv() {
            Ok(EnforcerFrame::Welcome { version }) => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// The next sequence number (for requests built by hand with [`Req`]).
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The request [`FakeSensor::block`] sends: a scan of three distinct ports over the
    /// last 100 ms (evidence enough for a whole share of BLOCK_RATE).
    pub fn scan_req(source: std::net::IpAddr, proto: Protocol, port: u16, seq: u64) -> Req {
        Req::new(source, proto)
            .port(port)
            .seq(seq)
            .distinct_ports(3)
            .seen_for(100)
    }

    /// Send [`FakeSensor::scan_req`] about `source` under the next sequence number; the
    /// decision.
    pub fn block(&mut self, source: &str, proto: Protocol, port: u16) -> Decision {
        let seq = self.next_seq();
        let r = FakeSensor::scan_req(parse(source), proto, port, seq).build();
        self.send_req(r)
    }

    /// Send `r` and return the decision of its Ack.
    pub fn send_req(&mut self, r: BlockRequest) -> Decision {
        let seq = r.seq;
        self.send(&SensorFrame::Block(r));
        loop {
            match self.recv() {
                Ok(EnforcerFrame::Ack { seq: s, decision }) => {
                    assert_eq!(s, seq);
                    return decision;
                }
                // Notices of ended blocks may come between answers.
                Ok(EnforcerFrame::Unblocked { addr }) => self.unblocked.push(addr),
                other => panic!("expected Ack, got {other:?}"),
            }
        }
    }

    /// Read until EOF; true when the enforcer closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                // Closed with our unread bytes still queued: the kernel resets.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

fn parse(source: &str) -> std::net::IpAddr {
    source
        .parse()
        .unwrap_or_else(|e| panic!("not an address: {source:?}: {e}"))
}

/// What the fake enforcer saw.
#[derive(Debug)]
pub enum Seen {
    Hello(Hello),
    Block(BlockRequest),
    Stats(SensorStats),
    Closed,
}

/// A fake enforcer: accepts connections on `<dir>/enforcer.sock`, answers the handshake,
/// acknowledges every request as blocked, and reports every frame on a channel. Gives up
/// by itself after two minutes.
#[derive(Debug)]
pub struct FakeEnforcer {
    pub rx: Receiver<Seen>,
    stop: Arc<AtomicBool>,
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the real enforcer does after the Welcome, done here for the sensor's own tests:
/// build the detection chain (the enforcer's own script, `sentry_enforcer::table`) in the
/// target namespace and bind an NFLOG socket there, to be handed over with SCM_RIGHTS.
fn capture_for(target_ns: &str, config: &Path, h: &Hello) -> Option<OwnedFd> {
    use sentry_enforcer::capture::{open_nflog, NFLOG_GROUP, NFLOG_SNAPLEN};
    use sentry_enforcer::table::{detection_script, DetectSpec};
    if h.modes.iter().all(|m| m.is_basic()) {
        return None;
    }
    let cfg = policy::Config::load(config).expect("test config");
    let ignore = cfg.load_ignore().expect("test ignore list");
    let spec = DetectSpec::new(
        &cfg,
        sentry_worker::privsep::mode_bits(&h.modes),
        &ignore,
        true,
        None,
    );
    let script = config.with_extension("detect.nft");
    let text = detection_script(&cfg.nft_table, &spec).expect("detection script");
    std::fs::write(&script, text).expect("write script");
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", target_ns, "nft", "-f"])
        .arg(&script);
    crate::cmd::run_ok(&mut c, Duration::from_secs(10));
    let ns = target_ns.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        open_nflog(NFLOG_GROUP, NFLOG_SNAPLEN).ok()
    })
    .join()
    .expect("nflog thread")
}

impl FakeEnforcer {
    /// A fake enforcer that also hands over the detection input, as the real one does.
    pub fn start_with_capture(net: &NetPair, dir: &RunDir) -> FakeEnforcer {
        Self::start_inner(dir.path(), Some((net.target.clone(), dir.config())))
    }

    /// A fake enforcer without a detection input (basic modes, protocol tests).
    pub fn start(dir: &Path) -> FakeEnforcer {
        Self::start_inner(dir, None)
    }

    fn start_inner(dir: &Path, capture: Option<(String, PathBuf)>) -> FakeEnforcer {
        let path = dir.join("enforcer.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind enforcer.sock");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        l.set_nonblocking(true).expect("nonblocking");
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                loop {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    match read_frame::<SensorFrame, _>(&mut s) {
                        Ok(SensorFrame::Hello(h)) => {
                            // Chain and socket first, so the detection input is in place
                            // by the time the test sees the Hello.
                            let fd = capture
                                .as_ref()
                                .and_then(|(ns, cfg)| capture_for(ns, cfg, &h));
                            let welcome = EnforcerFrame::Welcome {
                                version: PROTOCOL_VERSION,
                            };
                            let _ = write_frame(&mut s, &welcome);
                            if let Some(fd) = fd {
                                use sentry_enforcer::capture::{NFLOG_GROUP, NFLOG_SNAPLEN};
                                use sentry_worker::daemon::send_with_fd;
                                let frame = encode_frame(&EnforcerFrame::Capture {
                                    group: NFLOG_GROUP,
                                    snaplen: NFLOG_SNAPLEN,
                                })
                                .expect("encode Capture");
                                send_with_fd(&s, &frame, &fd).expect("hand over NFLOG");
                            }
                            let _ = tx.send(Seen::Hello(h));
                        }
                        Ok(SensorFrame::Block(b)) => {
                            let ack = EnforcerFrame::Ack {
                                seq: b.seq,
                                decision: Decision::Blocked,
                            };
                            let _ = write_frame(&mut s, &ack);
                            let _ = tx.send(Seen::Block(b));
                        }
                        Ok(SensorFrame::Stats(st)) => {
                            let _ = tx.send(Seen::Stats(st));
                        }
                        Err(sentry_proto::ProtoError::Io(k))
                            if k == std::io::ErrorKind::WouldBlock
                                || k == std::io::ErrorKind::TimedOut => {}
                        Err(_) => {
                            let _ = tx.send(Seen::Closed);
                            break;
                        }
                    }
                }
            }
        });
        FakeEnforcer {
            rx,
            stop,
            path,
            thread: Some(thread),
        }
    }

    /// The next frame for which `pick` returns `Some`, within `timeout`.
    fn next<T>(&self, timeout: Duration, mut pick: impl FnMut(Seen) -> Option<T>) -> Option<T> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(seen) => {
                    if let Some(v) = pick(seen) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Collect block requests until `pred` holds on the list or `timeout` passes.
    pub fn blocks_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[BlockRequest]) -> bool,
    ) -> Vec<BlockRequest> {
        let end = Instant::now() + timeout;
        let mut got = Vec::new();
        while !pred(&got) {
            let left = end.saturating_duration_since(Instant::now());
            match self.next(left, |s| match s {
                Seen::Block(b) => Some(b),
                _ => None,
            }) {
                Some(b) => got.push(b),
                None => break,
            }
        }
        got
    }

    /// The first Stats frame seen within `timeout` that satisfies `pred`.
    pub fn stats_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&SensorStats) -> bool,
    ) -> Option<SensorStats> {
        self.next(timeout, |s| match s {
            Seen::Stats(st) if pred(&st) => Some(st),
            _ => None,
        })
    }

    pub fn wait_hello(&self, timeout: Duration) -> Option<Hello> {
        self.next(timeout, |s| match s {
            Seen::Hello(h) => Some(h),
            _ => None,
        })
    }
}

impl Drop for FakeEnforcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
