//! Per-packet cost of the sensor's hot path: parse → classify → ignore list → port policy
//! → state engine, over pre-built SYN probes from 10k and from 1M distinct sources.
//!
//! `cargo bench -p sentry-sensor --bench pipeline`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use policy::IgnoreList;
use sentry_proto::Mode;
use sentry_sensor::listeners::Listeners;
use sentry_sensor::nflog::CtState;
use sentry_sensor::packet::{self, build};
use sentry_sensor::pipeline::{candidate, Counters};
use sentry_sensor::ports::{PortConfig, PortPolicy};
use sentry_sensor::state::{State, StateConfig};
use sentry_sensor::time::{Mono, Wall};

const BATCH: usize = 100_000;

/// `n` probes from `sources` distinct sources, stored back to back like the payloads of
/// NFLOG messages.
struct Frames {
    buf: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Frames {
    fn get(&self, i: usize) -> &[u8] {
        let (a, b) = self.spans[i];
        &self.buf[a..b]
    }
    fn len(&self) -> usize {
        self.spans.len()
    }
}

fn packets(sources: u32, n: usize) -> Frames {
    let mut f = Frames {
        buf: Vec::new(),
        spans: Vec::new(),
    };
    for p in raw_packets(sources, n) {
        let a = f.buf.len();
        f.buf.extend_from_slice(&p);
        f.spans.push((a, f.buf.len()));
    }
    f
}

fn raw_packets(sources: u32, n: usize) -> Vec<Vec<u8>> {
    let dst = Ipv4Addr::new(192, 0, 2, 2);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let src = Ipv4Addr::from(0x0a00_0000 + (u32::try_from(i).unwrap() % sources));
            let port = u16::try_from(1 + x % 1023).unwrap();
            if i % 8 == 7 {
                // Some IPv6 with a hop-by-hop header, to keep that path honest.
                let s6 = Ipv6Addr::from(
                    0xfd00_0000_0000_0000_0000_0000_0000_0000u128
                        + u128::from(u32::try_from(i).unwrap() % sources),
                );
                let d6: Ipv6Addr = "fd00::2".parse().unwrap();
                build::ipv6(
                    s6,
                    d6,
                    0,
                    &[6, 0, 1, 4, 0, 0, 0, 0],
                    &build::tcp_header(4000, port, 0x02),
                )
            } else {
                build::tcp4(src, dst, 40000, port, 0x02)
            }
        })
        .collect()
}

fn setup() -> (PortPolicy, Listeners, IgnoreList) {
    let policy = PortPolicy::new(
        &[Mode::Stcp, Mode::Atcp, Mode::Sudp, Mode::Audp],
        &PortConfig {
            tcp_ports: vec![
                1, 11, 15, 79, 111, 119, 143, 540, 635, 1080, 1524, 2000, 31337,
            ],
            udp_ports: vec![1, 7, 9, 69, 161, 162, 513, 635, 31337],
            advanced_ports_tcp: 1024,
            advanced_ports_udp: 1024,
            advanced_exclude_tcp: vec![113, 139],
            advanced_exclude_udp: vec![520, 138, 137, 67],
        },
    );
    let mut l = Listeners::default();
    l.add(
        sentry_proto::Protocol::Tcp,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        22,
    );
    l.add(
        sentry_proto::Protocol::Tcp,
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        80,
    );
    let ignore = IgnoreList::parse(
        "127.0.0.1\n192.168.0.0/16\n172.16.0.0/12\n2001:db8::/32\n",
        Path::new("bench.ignore"),
    )
    .unwrap();
    (policy, l, ignore)
}

fn bench(c: &mut Criterion) {
    let (policy, listeners, ignore) = setup();

    let mut g = c.benchmark_group("parse");
    let pk = packets(1, 1);
    g.throughput(Throughput::Elements(1));
    g.bench_function("ipv4_syn", |b| {
        b.iter(|| packet::parse(black_box(pk.get(0))))
    });
    g.finish();

    for (name, sources, max_sources) in [
        ("10k_sources", 10_000u32, 65_536usize),
        ("1M_sources_cap_65536", 1_000_000, 65_536),
        ("1M_sources_cap_1M", 1_000_000, 1_048_576),
    ] {
        let pk = packets(sources, 1_000_000);
        let mut g = c.benchmark_group("pipeline");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.sample_size(20);
        // Warm state: every source already seen once (the steady state under a flood).
        let mut state = State::new(StateConfig {
            trigger: 2,
            window_ms: 300_000,
            max_sources,
            rereport_ms: sentry_sensor::state::DEFAULT_REREPORT_MS,
        });
        let mut counters = Counters::default();
        let mut now = 1u64;
        for i in 0..pk.len() {
            if let Some(cand) = candidate(
                pk.get(i),
                CtState::New,
                &policy,
                &listeners,
                &ignore,
                &mut counters,
            ) {
                state.hit(&cand, Mono(now), Wall(now));
            }
        }
        let mut off = 0usize;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    off = (off + BATCH) % (pk.len() - BATCH);
                    off
                },
                |start| {
                    now += 1;
                    let mut reports = 0u32;
                    for i in start..start + BATCH {
                        if let Some(cand) = candidate(
                            black_box(pk.get(i)),
                            CtState::New,
                            &policy,
                            &listeners,
                            &ignore,
                            &mut counters,
                        ) {
                            if let sentry_sensor::state::Outcome::Report(_) =
                                state.hit(&cand, Mono(now), Wall(now))
                            {
                                reports += 1;
                            }
                        }
                    }
                    reports
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
        eprintln!(
            "{name}: tracked {} sources, {} evictions",
            state.len(),
            state.evictions()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
