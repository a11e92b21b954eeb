//! Framing and message tests: every message round-trips, and every kind of broken or
//! hostile frame is its own error, never a panic and never a large allocation.

// Test frames are a few bytes long; length casts cannot truncate here.
#![allow(clippy::cast_possible_truncation)]

use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sentry_proto::*;

fn block(seq: u64, source: IpAddr) -> BlockRequest {
    BlockRequest {
        seq,
        source,
        protocol: Protocol::Tcp,
        port: 143,
        scan: ScanKind::Syn,
        mode: Mode::Atcp,
        distinct_ports: 2,
        first_seen_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_000_500,
        ip_options: false,
    }
}

fn status() -> Status {
    Status {
        version: "0.1.0".into(),
        pid: 42,
        uptime_s: 10,
        config_path: "/etc/sentry/sentry.conf".into(),
        sensor: Some(SensorInfo {
            uid: 998,
            pid: 77,
            name: "host".into(),
            modes: vec![Mode::Atcp, Mode::Sudp],
            protocol_version: PROTOCOL_VERSION,
            connected_since_ms: 5,
            stats: Some(SensorStats {
                packets: 9,
                ..Default::default()
            }),
        }),
        counters: Counters {
            requests: 3,
            blocked: 1,
            ..Default::default()
        },
        active_blocks: 1,
        max_blocks: 10_000,
        backends: vec!["nftables".into()],
        recent: vec![RecentDecision {
            time_ms: 1,
            source: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            decision: "blocked".into(),
            reason: "scan".into(),
        }],
    }
}

fn fleet_meta() -> BlockMeta {
    BlockMeta {
        scenario: Some("sentry/portscan".into()),
        decision_id: Some(12),
        alert_id: Some(7),
        machine: Some("hostA".into()),
    }
}

fn roundtrip<T: Message + PartialEq + std::fmt::Debug>(m: T) {
    let frame = encode_frame(&m).expect("encodes");
    assert_eq!(decode_frame::<T>(&frame).expect("decodes"), m);
    let mut cur = Cursor::new(frame.clone());
    assert_eq!(read_frame::<T, _>(&mut cur).expect("reads"), m);
    let mut out = Vec::new();
    write_frame(&mut out, &m).unwrap();
    assert_eq!(out, frame);
}

#[test]
fn every_message_roundtrips() {
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9));
    roundtrip(SensorFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        sensor: "host-1".into(),
        pid: 7,
        modes: Mode::ALL.to_vec(),
    }));
    roundtrip(SensorFrame::Block(block(
        1,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
    )));
    let mut b = block(2, v6);
    b.scan = ScanKind::Oddball { flags: 0x28 };
    roundtrip(SensorFrame::Block(b));
    roundtrip(SensorFrame::Stats(SensorStats {
        packets: u64::MAX,
        ..Default::default()
    }));
    roundtrip(EnforcerFrame::Welcome {
        version: PROTOCOL_VERSION,
    });
    for d in [
        Decision::Blocked,
        Decision::AlreadyBlocked,
        Decision::Ignored,
        Decision::NeverBlock,
        Decision::LogOnly,
        Decision::CommandOnly,
        Decision::RateLimited,
        Decision::Capped,
        Decision::Rejected,
        Decision::Failed,
    ] {
        roundtrip(EnforcerFrame::Ack {
            seq: 9,
            decision: d,
        });
    }
    roundtrip(EnforcerFrame::Refused(Refusal::VersionMismatch { ours: 1 }));
    roundtrip(EnforcerFrame::Capture {
        group: 0x5e47,
        snaplen: 1280,
    });
    roundtrip(ControlRequest::Hello {
        version: PROTOCOL_VERSION,
    });
    roundtrip(ControlRequest::Status);
    roundtrip(ControlRequest::Blocked);
    roundtrip(ControlRequest::Unblock { addr: v6 });
    roundtrip(ControlResponse::Welcome { version: 1 });
    roundtrip(ControlResponse::Status(Box::new(status())));
    roundtrip(ControlResponse::Blocked(vec![BlockEntry {
        addr: v6,
        protocol: Some(Protocol::Udp),
        port: Some(53),
        mode: Some(Mode::Sudp),
        scan: Some(ScanKind::Udp),
        since_ms: 1,
        expires_ms: Some(2),
        prefix6: Some(64),
        origin: ORIGIN_SENSOR.into(),
        distinct_ports: Some(300),
        meta: BlockMeta::default(),
    }]));
    roundtrip(ControlRequest::Block {
        addr: v6,
        duration_ms: Some(4 * 3_600_000),
        origin: "crowdsec".into(),
    });
    roundtrip(ControlRequest::UnblockOrigin {
        addr: v6,
        origin: "crowdsec".into(),
    });
    roundtrip(ControlRequest::Watch {
        from: Some(sentry_proto::Cursor { run: 1, seq: 2 }),
    });
    roundtrip(ControlRequest::Metrics);
    roundtrip(ControlResponse::BlockResult {
        addr: v6,
        decision: Decision::NeverBlock,
        reason: "default gateway".into(),
        expires_ms: None,
    });
    roundtrip(ControlResponse::WatchStart {
        next: sentry_proto::Cursor { run: 1, seq: 0 },
        lost: 3,
        run_changed: false,
    });
    roundtrip(ControlResponse::Record(Box::new(WatchRecord {
        seq: 4,
        time_us: 5,
        kind: "blocked".into(),
        source: Some(v6),
        prefix: Some(64),
        protocol: Some(Protocol::Tcp),
        port: Some(22),
        scan: Some(ScanKind::Syn),
        mode: Some(Mode::Stcp),
        origin: Some(ORIGIN_SENSOR.into()),
        evidence: Some(EvidenceInfo {
            distinct_ports: 7,
            handshake: false,
        }),
        expires_ms: Some(9),
        suppressed: None,
        reason: "blocked".into(),
        meta: BlockMeta::default(),
    })));
    roundtrip(ControlResponse::Metrics("a_total 1\n".into()));
    roundtrip(ControlResponse::Unblocked {
        addr: v6,
        was_blocked: true,
        errors: vec![],
    });
    roundtrip(ControlResponse::Error("no".into()));
    roundtrip(ControlRequest::Explain { addr: v6 });
    roundtrip(ControlRequest::UnblockAll);
    roundtrip(ControlRequest::Reload);
    roundtrip(ControlRequest::BlockWith {
        addr: v6,
        duration_ms: Some(4 * 3_600_000),
        origin: "crowdsec".into(),
        meta: fleet_meta(),
    });
    roundtrip(ControlRequest::BlockWith {
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        duration_ms: None,
        origin: "crowdsec".into(),
        meta: BlockMeta::default(),
    });
    // A control block has no probe: no protocol, port, mode or scan kind.
    let entry = BlockEntry {
        addr: v6,
        protocol: None,
        port: None,
        mode: None,
        scan: None,
        since_ms: 1,
        expires_ms: None,
        prefix6: Some(64),
        origin: "crowdsec".into(),
        distinct_ports: None,
        meta: fleet_meta(),
    };
    roundtrip(ControlResponse::Blocked(vec![entry.clone()]));
    roundtrip(ControlResponse::Explain(Box::new(Explanation {
        address: v6,
        blocked: true,
        entries: vec![ExplainEntry {
            matched: Coverage::Network,
            fleet: true,
            block: entry,
        }],
        ignored: false,
        never_block: Some("default gateway".into()),
        reason: "blocked".into(),
        decisions: vec![WatchRecord {
            seq: 1,
            time_us: 2,
            kind: "blocked".into(),
            source: Some(v6),
            prefix: None,
            protocol: None,
            port: None,
            scan: None,
            mode: None,
            origin: Some("ops".into()),
            evidence: None,
            expires_ms: None,
            suppressed: None,
            reason: "x".into(),
            meta: fleet_meta(),
        }],
    })));
    roundtrip(ControlResponse::UnblockedAll {
        count: 600,
        errors: vec!["192.0.2.1: hosts.deny: gone".into()],
    });
    roundtrip(ControlResponse::Reloaded {
        entries: 3,
        lifted: 1,
    });
}

/// New control messages are appended: the variant index (the first four bytes of a
/// frame's body) of every earlier one is what enforcers and clients already speak.
#[test]
fn control_variant_indices_are_stable() {
    let idx = |f: Vec<u8>| u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
    let a: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
    for (req, want) in [
        (ControlRequest::Hello { version: 1 }, 0),
        (ControlRequest::Status, 1),
        (ControlRequest::Metrics, 7),
        (ControlRequest::Explain { addr: a }, 8),
        (ControlRequest::UnblockAll, 9),
        (ControlRequest::Reload, 10),
        (
            ControlRequest::BlockWith {
                addr: a,
                duration_ms: None,
                origin: "crowdsec".into(),
                meta: BlockMeta::default(),
            },
            11,
        ),
    ] {
        assert_eq!(idx(encode_frame(&req).unwrap()), want, "{req:?}");
    }
    for (resp, want) in [
        (ControlResponse::Welcome { version: 1 }, 0),
        (ControlResponse::Metrics(String::new()), 10),
        (ControlResponse::Error(String::new()), 11),
        (
            ControlResponse::UnblockedAll {
                count: 0,
                errors: vec![],
            },
            13,
        ),
        (
            ControlResponse::Reloaded {
                entries: 0,
                lifted: 0,
            },
            14,
        ),
    ] {
        assert_eq!(idx(encode_frame(&resp).unwrap()), want, "{resp:?}");
    }
}

fn with_len(len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn forged_lengths() {
    assert_eq!(
        decode_frame::<SensorFrame>(&with_len(0, &[])),
        Err(ProtoError::Empty)
    );
    let cap = MAX_SMALL_FRAME as u32;
    assert_eq!(
        decode_frame::<SensorFrame>(&with_len(cap + 1, &[])),
        Err(ProtoError::TooLarge {
            len: u64::from(cap) + 1,
            max: MAX_SMALL_FRAME
        })
    );
    assert_eq!(
        decode_frame::<SensorFrame>(&with_len(u32::MAX, &[0; 8])),
        Err(ProtoError::TooLarge {
            len: u64::from(u32::MAX),
            max: MAX_SMALL_FRAME
        })
    );
    // The reader refuses before reading (or allocating) any body byte: the cursor has
    // advanced past the header only.
    let data = with_len(u32::MAX, &[0; 64]);
    let mut cur = Cursor::new(&data);
    assert!(matches!(
        read_frame::<SensorFrame, _>(&mut cur),
        Err(ProtoError::TooLarge { .. })
    ));
    assert_eq!(cur.position(), 4);
    // The control response cap is larger but still finite.
    assert!(matches!(
        decode_frame::<ControlResponse>(&with_len(u32::MAX, &[])),
        Err(ProtoError::TooLarge {
            max: MAX_CONTROL_RESPONSE,
            ..
        })
    ));
}

#[test]
fn truncated_frames() {
    let frame = encode_frame(&SensorFrame::Block(block(
        1,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )))
    .unwrap();
    assert_eq!(
        decode_frame::<SensorFrame>(&frame[..2]),
        Err(ProtoError::Truncated {
            expected: 4,
            got: 2
        })
    );
    let body = frame.len() - 4;
    assert_eq!(
        decode_frame::<SensorFrame>(&frame[..frame.len() - 3]),
        Err(ProtoError::Truncated {
            expected: body,
            got: body - 3
        })
    );
    let mut cur = Cursor::new(&frame[..frame.len() - 1]);
    assert_eq!(
        read_frame::<SensorFrame, _>(&mut cur),
        Err(ProtoError::Truncated {
            expected: body,
            got: body - 1
        })
    );
    // A length prefix that is honest about a body too short for the message.
    let cut = with_len(3, &frame[4..7]);
    assert_eq!(
        decode_frame::<SensorFrame>(&cut),
        Err(ProtoError::UnexpectedEnd)
    );
    // Clean close before any byte.
    assert_eq!(
        read_frame::<SensorFrame, _>(&mut Cursor::new(&[] as &[u8])),
        Err(ProtoError::Closed)
    );
}

#[test]
fn trailing_bytes() {
    let frame = encode_frame(&ControlRequest::Status).unwrap();
    let mut longer_body = frame[4..].to_vec();
    longer_body.extend_from_slice(&[0, 0]);
    let forged = with_len(longer_body.len() as u32, &longer_body);
    assert_eq!(
        decode_frame::<ControlRequest>(&forged),
        Err(ProtoError::TrailingBytes {
            consumed: 4,
            len: 6
        })
    );
    // Bytes beyond the frame's own length are refused by the whole-frame decoder too.
    let mut extra = frame.clone();
    extra.push(1);
    assert!(matches!(
        decode_frame::<ControlRequest>(&extra),
        Err(ProtoError::TrailingBytes { .. })
    ));
}

#[test]
fn unknown_enum_tags() {
    // Variant index 99 of SensorFrame.
    let f = with_len(4, &99u32.to_be_bytes());
    assert_eq!(
        decode_frame::<SensorFrame>(&f),
        Err(ProtoError::UnknownVariant {
            type_name: "SensorFrame",
            found: 99
        })
    );
    // A known outer tag with an unknown inner enum (Protocol = 7) inside a BlockRequest.
    let frame = encode_frame(&SensorFrame::Block(block(
        1,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )))
    .unwrap();
    let mut body = frame[4..].to_vec();
    // outer tag (4) + seq (8) + IpAddr tag (4) + 4 address bytes = offset 20 for Protocol.
    body[20..24].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(
        decode_frame::<SensorFrame>(&with_len(body.len() as u32, &body)),
        Err(ProtoError::UnknownVariant {
            type_name: "Protocol",
            found: 7
        })
    );
}

#[test]
fn claimed_container_length_is_limited() {
    // Hello with a sensor name claiming 2^60 bytes: refused without allocating.
    let mut body = 0u32.to_be_bytes().to_vec(); // SensorFrame::Hello
    body.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    body.extend_from_slice(&(1u64 << 60).to_be_bytes());
    body.extend_from_slice(b"abc");
    let err = decode_frame::<SensorFrame>(&with_len(body.len() as u32, &body)).unwrap_err();
    assert_eq!(err, ProtoError::LimitExceeded);
}

#[test]
fn wrong_version() {
    let h = Hello {
        version: 0,
        sensor: "s".into(),
        pid: 1,
        modes: vec![Mode::Tcp],
    };
    assert_eq!(
        h.validate(),
        Err(FieldError::Version {
            ours: PROTOCOL_VERSION,
            theirs: 0
        })
    );
}

#[test]
fn each_error_kind_is_distinct() {
    let kinds = [
        ProtoError::Empty,
        ProtoError::TooLarge { len: 1, max: 1 },
        ProtoError::Truncated {
            expected: 1,
            got: 0,
        },
        ProtoError::TrailingBytes {
            consumed: 1,
            len: 2,
        },
        ProtoError::UnknownVariant {
            type_name: "X",
            found: 1,
        },
        ProtoError::LimitExceeded,
        ProtoError::UnexpectedEnd,
        ProtoError::Malformed(String::new()),
        ProtoError::Encode(String::new()),
        ProtoError::Closed,
        ProtoError::Io(std::io::ErrorKind::Other),
    ];
    let mut names: Vec<&str> = kinds.iter().map(ProtoError::kind).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), kinds.len());
}

#[test]
fn framebuf_incremental_and_hostile() {
    let a = encode_frame(&SensorFrame::Block(block(
        1,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    )))
    .unwrap();
    let b = encode_frame(&SensorFrame::Stats(SensorStats::default())).unwrap();
    let mut stream = a.clone();
    stream.extend_from_slice(&b);
    // Feed one byte at a time, respecting `wanted`.
    let mut fb = FrameBuf::<SensorFrame>::new();
    let mut got = Vec::new();
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let n = fb.wanted().unwrap().min(rest.len()).min(1);
        fb.feed(&rest[..n]).unwrap();
        rest = &rest[n..];
        if let Some(m) = fb.next_message() {
            got.push(m.unwrap());
        }
    }
    assert_eq!(got.len(), 2);
    assert!(fb.is_idle());
    // A bad prefix is refused as soon as it is complete.
    let mut fb = FrameBuf::<SensorFrame>::new();
    assert_eq!(
        fb.feed(&u32::MAX.to_be_bytes()),
        Err(ProtoError::TooLarge {
            len: u64::from(u32::MAX),
            max: MAX_SMALL_FRAME
        })
    );
    // Feeding more than one frame at once is refused rather than buffered.
    let mut fb = FrameBuf::<SensorFrame>::new();
    assert!(fb.feed(&stream).is_err());
}

#[test]
fn block_request_validation() {
    let now = 1_700_000_001_000;
    let ok = block(1, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(ok.validate(now), Ok(()));
    let mut r = ok.clone();
    r.port = 0;
    assert_eq!(r.validate(now), Err(FieldError::Port));
    let mut r = ok.clone();
    r.protocol = Protocol::Udp;
    assert_eq!(r.validate(now), Err(FieldError::ProtocolMismatch));
    let mut r = ok.clone();
    r.scan = ScanKind::Connect;
    assert_eq!(r.validate(now), Err(FieldError::ProtocolMismatch));
    let mut r = ok.clone();
    r.scan = ScanKind::Oddball { flags: 0x12 };
    assert_eq!(r.validate(now), Err(FieldError::ProtocolMismatch));
    let mut r = ok.clone();
    r.distinct_ports = 0;
    assert_eq!(r.validate(now), Err(FieldError::DistinctPorts(0)));
    r.distinct_ports = 70_000;
    assert_eq!(r.validate(now), Err(FieldError::DistinctPorts(70_000)));
    let mut r = ok.clone();
    r.first_seen_ms = r.last_seen_ms + 1;
    assert!(matches!(r.validate(now), Err(FieldError::Times(_))));
    let mut r = ok.clone();
    r.last_seen_ms = now + MAX_CLOCK_SKEW_MS + 1;
    assert!(matches!(r.validate(now), Err(FieldError::Times(_))));
    let mut r = ok.clone();
    r.source = "::ffff:192.0.2.1".parse().unwrap();
    assert!(matches!(r.validate(now), Err(FieldError::Address(_))));
    let mut r = ok;
    r.mode = Mode::Tcp;
    r.scan = ScanKind::Connect;
    assert_eq!(r.validate(now), Ok(()));
}

#[test]
fn hello_validation() {
    let ok = Hello {
        version: PROTOCOL_VERSION,
        sensor: "h".into(),
        pid: 1,
        modes: vec![Mode::Atcp],
    };
    assert_eq!(ok.validate(), Ok(()));
    let mut h = ok.clone();
    h.sensor = "x".repeat(MAX_NAME_LEN + 1);
    assert_eq!(h.validate(), Err(FieldError::SensorName("too long")));
    h.sensor = "a\u{1b}[2J".into();
    assert_eq!(
        h.validate(),
        Err(FieldError::SensorName("not printable ASCII"))
    );
    let mut h = ok.clone();
    h.modes = vec![];
    assert!(matches!(h.validate(), Err(FieldError::Modes(_))));
    h.modes = vec![Mode::Tcp, Mode::Tcp];
    assert_eq!(h.validate(), Err(FieldError::Modes("duplicate mode")));
}

/// The kinds PortSentry never reported: each with its protocol and the modes that watch
/// it, and nothing else; an IP-protocol probe's port is its protocol number (0-255).
#[test]
fn other_scan_kinds_validation() {
    let now = 1_700_000_001_000;
    let ok = block(1, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let with = |scan, protocol, mode, port| BlockRequest {
        scan,
        protocol,
        mode,
        port,
        ..ok.clone()
    };
    for r in [
        with(ScanKind::Ack, Protocol::Tcp, Mode::Stcp, 80),
        with(ScanKind::Maimon, Protocol::Tcp, Mode::Atcp, 80),
        with(ScanKind::SctpInit, Protocol::Sctp, Mode::Stcp, 80),
        with(ScanKind::SctpInit, Protocol::Sctp, Mode::Atcp, 80),
        with(ScanKind::IpProtocol, Protocol::Ip, Mode::Atcp, 0),
        with(ScanKind::IpProtocol, Protocol::Ip, Mode::Audp, 255),
    ] {
        assert_eq!(r.validate(now), Ok(()), "{r:?}");
        roundtrip(SensorFrame::Block(r));
    }
    for (r, e) in [
        // An ACK probe is TCP, seen by a capture mode.
        (
            with(ScanKind::Ack, Protocol::Udp, Mode::Sudp, 80),
            FieldError::ProtocolMismatch,
        ),
        (
            with(ScanKind::Ack, Protocol::Tcp, Mode::Tcp, 80),
            FieldError::ProtocolMismatch,
        ),
        (
            with(ScanKind::SctpInit, Protocol::Tcp, Mode::Atcp, 80),
            FieldError::ProtocolMismatch,
        ),
        (
            with(ScanKind::SctpInit, Protocol::Sctp, Mode::Sudp, 80),
            FieldError::ProtocolMismatch,
        ),
        (
            with(ScanKind::SctpInit, Protocol::Sctp, Mode::Tcp, 80),
            FieldError::ProtocolMismatch,
        ),
        (
            with(ScanKind::SctpInit, Protocol::Sctp, Mode::Atcp, 0),
            FieldError::Port,
        ),
        (
            with(ScanKind::IpProtocol, Protocol::Ip, Mode::Stcp, 5),
            FieldError::ProtocolMismatch,
        ),
        (
            with(ScanKind::IpProtocol, Protocol::Ip, Mode::Atcp, 256),
            FieldError::Port,
        ),
        (
            with(ScanKind::Syn, Protocol::Ip, Mode::Atcp, 6),
            FieldError::ProtocolMismatch,
        ),
    ] {
        assert_eq!(r.validate(now), Err(e), "{r:?}");
    }
    assert!(ScanKind::Ack.is_other() && ScanKind::IpProtocol.is_other());
    assert!(!ScanKind::Syn.is_other() && !ScanKind::Oddball { flags: 0x28 }.is_other());
}

/// The fuzz corpus reaches `BlockWith` and its metadata: its seed is a real frame of it
/// (regenerate with `SENTRY_WRITE_SEEDS=1` when the message changes on purpose).
#[test]
fn the_block_with_seed_is_a_block_with_frame() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/seeds/decode/seed-ctl-block-with"
    );
    let want = encode_frame(&ControlRequest::BlockWith {
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77)),
        duration_ms: Some(4 * 3_600_000),
        origin: "crowdsec".into(),
        meta: fleet_meta(),
    })
    .unwrap();
    if std::env::var_os("SENTRY_WRITE_SEEDS").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let seed = std::fs::read(path).expect("seed file");
    assert_eq!(seed, want);
    match decode_frame::<ControlRequest>(&seed).unwrap() {
        ControlRequest::BlockWith { meta, .. } => meta.validate().unwrap(),
        other => panic!("{other:?}"),
    }
}
