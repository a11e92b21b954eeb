//! Frame encode/decode cost for the message the sensor sends most.
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use sentry_proto::*;

fn sample() -> SensorFrame {
    SensorFrame::Block(BlockRequest {
        seq: 42,
        source: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        protocol: Protocol::Tcp,
        port: 1080,
        scan: ScanKind::Syn,
        mode: Mode::Atcp,
        distinct_ports: 3,
        first_seen_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_000_100,
        ip_options: false,
    })
}

fn bench(c: &mut Criterion) {
    let msg = sample();
    let frame = encode_frame(&msg).expect("encodes");
    c.bench_function("encode_block_request", |b| {
        b.iter(|| encode_frame(black_box(&msg)))
    });
    c.bench_function("decode_block_request", |b| {
        b.iter(|| decode_frame::<SensorFrame>(black_box(&frame)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
