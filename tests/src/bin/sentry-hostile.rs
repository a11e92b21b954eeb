//! A hostile (or merely broken) client of the enforcer socket, for the e2e fault tests.
//!
//! `sentry-hostile SOCKET MODE [ARGS...]` connects to SOCKET, misbehaves as MODE says, and
//! prints one JSON line describing how the enforcer reacted:
//! `{"mode":..,"replies":[..],"closed":bool,"decisions":{..},"error":..}`.
//!
//! Modes: `garbage`, `huge` (length prefix 0xFFFFFFFF), `zero` (length 0), `truncated`
//! (prefix promises more than is sent, then EOF), `bad-version`, `no-hello`, `trailing`
//! (a Hello with extra bytes inside the frame), `hello` (a valid Hello, then wait),
//! `hold SECS` (half a header, then sit on the connection), `drip MS` (a valid Hello sent
//! one byte every MS milliseconds, so no single read waits long), `reconnect N` (N times:
//! connect, Hello, Welcome, close), `flood N ADDR...` (a valid Hello, then N block
//! requests cycling over ADDRs, counting the decisions).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use sentry_proto::{
    encode_frame, read_frame, EnforcerFrame, Hello, Mode, ProtoError, Protocol, SensorFrame,
    PROTOCOL_VERSION,
};
use sentry_tests::Req;

struct Report {
    replies: Vec<String>,
    closed: bool,
    decisions: BTreeMap<String, u64>,
    error: Option<String>,
}

fn hello(version: u16) -> SensorFrame {
    SensorFrame::Hello(Hello {
        version,
        sensor: "hostile".into(),
        pid: std::process::id(),
        modes: vec![Mode::Atcp],
    })
}

fn request(seq: u64, source: IpAddr) -> SensorFrame {
    Req::new(source, Protocol::Tcp)
        .mode(Mode::Atcp)
        .seq(seq)
        .frame()
}

fn frame(msg: &SensorFrame) -> Vec<u8> {
    encode_frame(msg).unwrap_or_else(|e| fail(&format!("encode: {e}")))
}

fn fail(msg: &str) -> ! {
    eprintln!("sentry-hostile: {msg}");
    std::process::exit(2)
}

/// Read replies until the enforcer closes the connection or stays quiet for the timeout.
fn drain(s: &mut UnixStream, r: &mut Report, max: usize) {
    for _ in 0..max {
        match read_frame::<EnforcerFrame, _>(s) {
            Ok(f) => r.replies.push(format!("{f:?}")),
            Err(ProtoError::Closed) => {
                r.closed = true;
                return;
            }
            Err(ProtoError::Io(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)) => {
                return
            }
            Err(ProtoError::Io(std::io::ErrorKind::ConnectionReset)) => {
                r.closed = true;
                return;
            }
            Err(e) => {
                r.error = Some(e.to_string());
                r.closed = true;
                return;
            }
        }
    }
}

fn send(s: &mut UnixStream, bytes: &[u8], r: &mut Report) -> bool {
    match s.write_all(bytes).and_then(|()| s.flush()) {
        Ok(()) => true,
        Err(e) => {
            // EPIPE/ECONNRESET: the enforcer already hung up on us.
            r.closed = true;
            r.error = Some(format!("write: {e}"));
            false
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(mode)) = (args.get(1), args.get(2)) else {
        fail("usage: sentry-hostile SOCKET MODE [ARGS...]");
    };
    let mut s = UnixStream::connect(path).unwrap_or_else(|e| fail(&format!("connect {path}: {e}")));
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap_or_else(|e| fail(&format!("timeout: {e}")));
    let mut r = Report {
        replies: Vec::new(),
        closed: false,
        decisions: BTreeMap::new(),
        error: None,
    };
    match mode.as_str() {
        "garbage" => {
            // Deterministic junk that is not a plausible frame header.
            let junk: Vec<u8> = (0u8..=255).map(|i| i.wrapping_mul(97) ^ 0x5a).collect();
            if send(&mut s, &junk, &mut r) {
                drain(&mut s, &mut r, 4);
            }
        }
        "huge" => {
            if send(&mut s, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4], &mut r) {
                drain(&mut s, &mut r, 4);
            }
        }
        "zero" => {
            if send(&mut s, &[0, 0, 0, 0], &mut r) {
                drain(&mut s, &mut r, 4);
            }
        }
        "truncated" => {
            if send(&mut s, &[0, 0, 0, 100, 1, 2, 3], &mut r) {
                let _ = s.shutdown(std::net::Shutdown::Write);
                drain(&mut s, &mut r, 4);
            }
        }
        "bad-version" => {
            if send(
                &mut s,
                &frame(&hello(PROTOCOL_VERSION.wrapping_add(98))),
                &mut r,
            ) {
                drain(&mut s, &mut r, 4);
            }
        }
        "no-hello" => {
            let req = request(1, "192.0.2.1".parse().unwrap_or_else(|_| fail("addr")));
            if send(&mut s, &frame(&req), &mut r) {
                drain(&mut s, &mut r, 4);
            }
        }
        "trailing" => {
            let mut f = frame(&hello(PROTOCOL_VERSION));
            f.extend_from_slice(&[0xAA; 8]);
            let len = u32::try_from(f.len() - 4).unwrap_or_else(|_| fail("len"));
            f[..4].copy_from_slice(&len.to_be_bytes());
            if send(&mut s, &f, &mut r) {
                drain(&mut s, &mut r, 4);
            }
        }
        "hello" => {
            // A refusal may come before the Hello is written (the peer check answers at
            // accept): whether or not the write went through, read what was sent.
            send(&mut s, &frame(&hello(PROTOCOL_VERSION)), &mut r);
            drain(&mut s, &mut r, 4);
        }
        "hold" => {
            let secs: u64 = args
                .get(3)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| fail("hold SECS"));
            if send(&mut s, &[0, 0], &mut r) {
                std::thread::sleep(Duration::from_secs(secs.min(30)));
                drain(&mut s, &mut r, 1);
            }
        }
        "drip" => {
            let ms: u64 = args
                .get(3)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| fail("drip MS"));
            for b in frame(&hello(PROTOCOL_VERSION)) {
                if !send(&mut s, &[b], &mut r) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(ms.min(2_000)));
            }
            if !r.closed {
                drain(&mut s, &mut r, 4);
            }
        }
        "reconnect" => {
            let n: u64 = args
                .get(3)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| fail("reconnect N"));
            drop(s);
            let mut welcomed = 0u64;
            for _ in 0..n.min(10_000) {
                let mut c = UnixStream::connect(path)
                    .unwrap_or_else(|e| fail(&format!("connect {path}: {e}")));
                let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                if send(&mut c, &frame(&hello(PROTOCOL_VERSION)), &mut r)
                    && matches!(
                        read_frame::<EnforcerFrame, _>(&mut c),
                        Ok(EnforcerFrame::Welcome { .. })
                    )
                {
                    welcomed += 1;
                    // As a sensor does, take the NFLOG hand-over that follows (read(2)
                    // discards its descriptor) before going away.
                    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = read_frame::<EnforcerFrame, _>(&mut c);
                }
            }
            r.decisions.insert("welcomed".into(), welcomed);
        }
        "flood" => {
            let n: u64 = args
                .get(3)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| fail("flood N ADDR..."));
            let addrs: Vec<IpAddr> = args
                .iter()
                .skip(4)
                .map(|a| {
                    a.parse()
                        .unwrap_or_else(|_| fail(&format!("bad address {a}")))
                })
                .collect();
            if addrs.is_empty() {
                fail("flood needs at least one address");
            }
            if !send(&mut s, &frame(&hello(PROTOCOL_VERSION)), &mut r) {
                finish(mode, &r);
            }
            match read_frame::<EnforcerFrame, _>(&mut s) {
                Ok(EnforcerFrame::Welcome { .. }) => {}
                Ok(other) => {
                    r.replies.push(format!("{other:?}"));
                    finish(mode, &r);
                }
                Err(e) => {
                    r.error = Some(format!("handshake: {e}"));
                    finish(mode, &r);
                }
            }
            // Pipelined in batches so a slow enforcer cannot deadlock us on full buffers.
            let mut seq = 0u64;
            while seq < n && !r.closed {
                let batch = (n - seq).min(64);
                let mut bytes = Vec::new();
                for i in 0..batch {
                    let idx = usize::try_from((seq + i) % addrs.len() as u64).unwrap_or(0);
                    let addr = addrs.get(idx).copied().unwrap_or_else(|| fail("index"));
                    bytes.extend(frame(&request(seq + i + 1, addr)));
                }
                if !send(&mut s, &bytes, &mut r) {
                    break;
                }
                let mut answered = 0;
                while answered < batch {
                    match read_frame::<EnforcerFrame, _>(&mut s) {
                        Ok(EnforcerFrame::Ack { decision, .. }) => {
                            answered += 1;
                            *r.decisions
                                .entry(decision.as_str().to_string())
                                .or_default() += 1;
                        }
                        // Notices of ended blocks and the NFLOG hand-over after the Welcome
                        // (its descriptor is discarded by the kernel: this reads with
                        // read(2)) are not answers.
                        Ok(EnforcerFrame::Unblocked { .. } | EnforcerFrame::Capture { .. }) => {}
                        Ok(other) => {
                            answered += 1;
                            r.replies.push(format!("{other:?}"));
                        }
                        Err(e) => {
                            r.error = Some(e.to_string());
                            r.closed = true;
                            break;
                        }
                    }
                }
                seq += batch;
            }
        }
        other => fail(&format!("unknown mode {other}")),
    }
    finish(mode, &r);
}

fn finish(mode: &str, r: &Report) -> ! {
    let mut out = std::io::stdout();
    let replies = serde_json::Value::from(r.replies.clone());
    let decisions: serde_json::Map<String, serde_json::Value> = r
        .decisions
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
        .collect();
    let v = serde_json::json!({
        "mode": mode,
        "replies": replies,
        "closed": r.closed,
        "decisions": decisions,
        "error": r.error,
    });
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
    std::process::exit(0)
}
