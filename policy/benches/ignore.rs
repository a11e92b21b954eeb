//! Ignore-list lookup cost at 10, 10k and 100k entries (it must not grow linearly).
use std::fmt::Write;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use policy::IgnoreList;

/// Deterministic pseudo-random /24 and /32 entries spread over the space.
fn list(n: u32) -> IgnoreList {
    let mut text = String::new();
    let mut x: u32 = 0x9e37_79b9;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let len = if i % 4 == 0 { 24 } else { 32 };
        let _ = writeln!(text, "{}/{}", Ipv4Addr::from(x), len);
    }
    IgnoreList::parse(&text, Path::new("bench")).expect("generated list parses")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ignore_lookup");
    for n in [10u32, 10_000, 100_000] {
        let l = list(n);
        let probes: Vec<IpAddr> = (0..1024u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761))))
            .collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &l, |b, l| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(l.contains(black_box(probes[i])))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
