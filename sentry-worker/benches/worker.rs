//! Decision + block latency, and the cost of one block at 1, 1,000 and 10,000 active blocks.
//!
//! Needs root: the benchmark re-executes itself under `unshare --net` so that the nftables
//! table it creates lives in a private, throw-away network namespace (never the host's).
//! Run: `cargo bench -p sentry-enforcer --bench enforcer`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use sentry_enforcer::netlink::{NlSocket, SetElem};
use sentry_proto::{BlockRequest, Decision, Mode, Protocol, ScanKind};
use sentry_worker::action::{SET_V4, SET_V6};
use sentry_worker::audit::{Logger, Peer};
use sentry_worker::engine::{Engine, Options};
use sentry_worker::session::{check_request, Checked};
use sentry_worker::store::BlockRecord;
use sentry_worker::time::{WallMs, WallUs};

const MARK: &str = "SENTRY_BENCH_IN_NETNS";
const PEER: Peer = Peer { uid: 0, pid: 1 };

fn addr(i: u32) -> IpAddr {
    // 10.0.0.0/8 and 100.64.0.0/10 keep clear of anything this host uses.
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// A request as the session hands it to the engine (checking is not what is measured).
fn req(seq: u64, source: IpAddr) -> Checked {
    let now = WallMs::now().0;
    let r = BlockRequest {
        seq,
        source,
        protocol: Protocol::Tcp,
        port: 22,
        scan: ScanKind::Syn,
        mode: Mode::Stcp,
        distinct_ports: 1,
        first_seen_ms: now,
        last_seen_ms: now,
        ip_options: false,
    };
    check_request(r, &Mode::ALL, WallMs::now()).unwrap_or_else(|(_, e)| panic!("{e}"))
}

/// An engine whose state directory already holds `n` blocks (restored with one netlink
/// batch on start, which is also what a restart does).
fn engine(dir: &Path, n: u32, block_tcp: &str) -> Engine {
    let state = dir.join(format!("state-{n}"));
    std::fs::create_dir_all(&state).unwrap();
    let now = WallMs::now().0;
    let blocks: Vec<BlockRecord> = (0..n)
        .map(|i| BlockRecord {
            meta: Default::default(),
            addr: addr(1_000_000 + i),
            protocol: Protocol::Tcp,
            port: 22,
            mode: Mode::Stcp,
            scan: ScanKind::Syn,
            since_ms: now,
            expires_ms: None,
            nft: true,
            blackhole: false,
            hosts_deny_line: None,
            distinct_ports: 1,
            prefix6: None,
            hosts_deny_legacy: false,
            origin: None,
        })
        .collect();
    std::fs::write(
        state.join("blocks.json"),
        serde_json::to_vec(&serde_json::json!({"version": 1, "blocks": blocks})).unwrap(),
    )
    .unwrap();
    let conf = dir.join(format!("bench-{n}.conf"));
    std::fs::write(
        &conf,
        format!(
            "FIREWALL=\"nftables\"\nNFT_TABLE=\"sentry_bench\"\nBLOCK_TCP=\"{block_tcp}\"\nBLOCK_UDP=\"1\"\n\
             BLOCK_RATE=\"1000000\"\nMAX_BLOCKS=\"100000\"\nAUDIT_LOG=\"{d}/audit-{n}.jsonl\"\n\
             HISTORY_FILE=\"{d}/history-{n}\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let cfg = policy::Config::load(&conf).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let e = Engine::new(
        cfg,
        Options {
            state_dir: state,
            refresh_own_addresses: true,
            infra: None,
            boot_id_path: sentry_worker::engine::DEFAULT_BOOT_ID_PATH.into(),
            boot_id: None,
            parent: None,
        },
        Arc::new(Logger::new(true, "bench")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "engine start with {n} persisted blocks (nft table setup + restore): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(e.active_blocks(), n as usize);
    e
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::Builder::new()
        .prefix("sentry-enforcer-bench-")
        .tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .unwrap();

    // Full path: validate, own-address check (one non-blocking read of the address-change
    // socket), never-block, ignore, mode, dedupe, rate, cap, netlink NEWSETELEM + ACK,
    // journal append + fdatasync (one: the write-ahead record is the final one when every
    // action took effect), history line, audit line.
    let mut g = c.benchmark_group("decide_block_nft");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    let mut seq = 0u64;
    for n in [1u32, 1_000, 10_000] {
        let mut e = engine(dir.path(), n - 1, "1");
        let mut next = 0u32;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    next += 1;
                    seq += 1;
                    let a = addr(next);
                    let r = req(seq, a);
                    let t = Instant::now();
                    let d = e.decide(&r, PEER, WallUs::now());
                    total += t.elapsed();
                    assert_eq!(d, Decision::Blocked);
                    // Keep the number of active blocks at n.
                    e.unblock(a, PEER, WallMs::now());
                }
                total
            })
        });
        assert_eq!(e.active_blocks(), (n - 1) as usize);
    }
    g.finish();

    // The same without persistence cost dominating: log-only decision (audit line only).
    let mut g = c.benchmark_group("decide_log_only");
    let mut e = engine(dir.path(), 0, "0");
    g.bench_function("tcp", |b| {
        b.iter(|| {
            seq += 1;
            e.decide(&req(seq, addr(5)), PEER, WallUs::now())
        })
    });
    g.finish();
    drop(e);

    // Kernel cost alone: one NEWSETELEM (+ACK) into a set holding n elements.
    let mut g = c.benchmark_group("nft_add_element");
    g.sample_size(50);
    let mut nl = NlSocket::netfilter().unwrap();
    for n in [1u32, 1_000, 10_000] {
        let fill: Vec<SetElem> = (0..n.saturating_sub(1))
            .map(|i| SetElem {
                addr: addr(2_000_000 + i),
                timeout: None,
            })
            .collect();
        nl.setelems("sentry_bench", SET_V4, SET_V6, &fill, true)
            .unwrap();
        let mut next = 0u32;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    next += 1;
                    let el = [SetElem {
                        addr: addr(3_000_000 + next),
                        timeout: Some(Duration::from_secs(3600)),
                    }];
                    let t = Instant::now();
                    nl.setelems("sentry_bench", SET_V4, SET_V6, &el, true)
                        .unwrap();
                    total += t.elapsed();
                    nl.setelems("sentry_bench", SET_V4, SET_V6, &el, false)
                        .unwrap();
                }
                total
            })
        });
        nl.setelems("sentry_bench", SET_V4, SET_V6, &fill, false)
            .unwrap();
    }
    g.finish();

    // BLACKHOLE_ROUTE: one RTM_NEWROUTE (+ACK) with n blackhole routes present.
    let mut g = c.benchmark_group("blackhole_route_add");
    g.sample_size(50);
    let mut rt = NlSocket::route().unwrap();
    for n in [1u32, 1_000, 10_000] {
        let fill: Vec<IpAddr> = (0..n.saturating_sub(1))
            .map(|i| addr(4_000_000 + i))
            .collect();
        for a in &fill {
            rt.blackhole(*a, 32, true).unwrap();
        }
        let mut next = 0u32;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    next += 1;
                    let a = addr(5_000_000 + next);
                    let t = Instant::now();
                    rt.blackhole(a, 32, true).unwrap();
                    total += t.elapsed();
                    rt.blackhole(a, 32, false).unwrap();
                }
                total
            })
        });
        for a in &fill {
            rt.blackhole(*a, 32, false).unwrap();
        }
    }
    g.finish();

    // KILL_HOSTS_DENY: append one line to a deny file that already holds n lines (the
    // duplicate check reads the file, so this one grows with n; fsync included).
    let mut g = c.benchmark_group("hosts_deny_add");
    g.sample_size(30);
    for n in [1u32, 1_000, 10_000] {
        let p = dir.path().join(format!("hosts.deny.{n}"));
        let base: String = (0..n.saturating_sub(1))
            .map(|i| format!("ALL: {} : DENY\n", addr(6_000_000 + i)))
            .collect();
        std::fs::write(&p, &base).unwrap();
        let mut next = 0u32;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    next += 1;
                    let line = format!("ALL: {} : DENY", addr(7_000_000 + next));
                    let t = Instant::now();
                    let e = sentry_enforcer::hostsdeny::Entry {
                        addr: addr(7_000_000 + next),
                        line: &line,
                        legacy: false,
                    };
                    sentry_enforcer::hostsdeny::add_many(&p, std::slice::from_ref(&e)).unwrap();
                    total += t.elapsed();
                    std::fs::write(&p, &base).unwrap();
                }
                total
            })
        });
    }
    g.finish();
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED (needs root): enforcer benchmark");
        return;
    }
    if std::env::var_os(MARK).is_none() {
        // Re-run inside a new, private network namespace that disappears with us.
        let st = std::process::Command::new("unshare")
            .arg("--net")
            .arg("--")
            .arg(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(MARK, "1")
            .status()
            .expect("unshare --net");
        std::process::exit(st.code().unwrap_or(1));
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
