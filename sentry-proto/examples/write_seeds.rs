//! Writes the fuzz seed corpus (one valid frame per message shape) into the directory
//! given as the first argument: `cargo run -p sentry-proto --example write_seeds -- sentry-proto/fuzz/seeds/decode`.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sentry_proto::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: write_seeds DIR")?;
    let req = BlockRequest {
        seq: 1,
        source: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        protocol: Protocol::Tcp,
        port: 143,
        scan: ScanKind::Xmas,
        mode: Mode::Stcp,
        distinct_ports: 3,
        first_seen_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_000_001,
        ip_options: true,
    };
    let mut v6 = req.clone();
    v6.source = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "hello",
            encode_frame(&SensorFrame::Hello(Hello {
                version: PROTOCOL_VERSION,
                sensor: "seed".into(),
                pid: 1,
                modes: vec![Mode::Atcp, Mode::Sudp],
            }))?,
        ),
        ("block-v4", encode_frame(&SensorFrame::Block(req))?),
        ("block-v6", encode_frame(&SensorFrame::Block(v6))?),
        (
            "stats",
            encode_frame(&SensorFrame::Stats(SensorStats::default()))?,
        ),
        (
            "ack",
            encode_frame(&EnforcerFrame::Ack {
                seq: 1,
                decision: Decision::Blocked,
            })?,
        ),
        (
            "ctl-unblock",
            encode_frame(&ControlRequest::Unblock {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            })?,
        ),
        (
            "ctl-block",
            encode_frame(&ControlRequest::Block {
                addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                duration_ms: Some(14_400_000),
                origin: "crowdsec".into(),
            })?,
        ),
        (
            "ctl-watch",
            encode_frame(&ControlRequest::Watch {
                from: Some(Cursor { run: 1, seq: 2 }),
            })?,
        ),
        (
            "ctl-error",
            encode_frame(&ControlResponse::Error("x".into()))?,
        ),
    ];
    for (name, bytes) in frames {
        std::fs::write(format!("{dir}/seed-{name}"), bytes)?;
    }
    Ok(())
}
