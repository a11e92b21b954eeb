//! `sentry-bench`: measures sentry on real traffic between two network namespaces and
//! compares it with PortSentry 1.2 on the same scans.
//!
//! ```text
//! cargo build --release -p sentry-sensor -p sentry-enforcer -p sentryctl -p sentry-tests --bins
//! target/release/sentry-bench [OPTIONS] [SCENARIO...]
//! ```
//! Scenarios: `syn` (1: nmap -sS exposure and block latency vs PortSentry), `scans`
//! (2: -sS -T5 --min-rate, -sF -sN -sX, IPv6, -sU -T5, masscan at 1M packets/s), `capture` (3: sensor capture rate and CPU per packet),
//! `flood` (4: spoofed-source flood), `enforce` (5: cost of the Nth block and data-path
//! cost per backend), `overhead` (6: what the table costs the host's own traffic), `all`
//! (default).
//!
//! Everything runs inside namespaces this process creates; nothing touches the root
//! namespace's firewall, routes or /etc. Interrupting (Ctrl-C) stops every process and
//! deletes every namespace and temporary file it created.

mod capture;
mod cleanup;
mod enforce;
mod flood;
mod overhead;
mod packet;
mod pcap;
mod portsentry;
mod probe;
mod procfs;
mod restore;
mod scans;
mod sensorctl;
mod sys;
mod table;

use std::path::PathBuf;

const USAGE: &str = "\
usage: sentry-bench [OPTIONS] [SCENARIO...]

Scenarios (default: all):
  syn        1. nmap -sS -p1-1024 -T4: ports answered before the block (counted on the
                scanner's interface), and latency, PortSentry 1.2 vs sentry (shipped policy)
                vs sentry (Debian's portsentry.conf + BLOCK_TCP/UDP=1, no FIREWALL key)
  scans      2. the same for nmap -sS -T5 --min-rate 20000, -sF, -sN, -sX, -6 -sS,
                -sU -T5 -p1-300, and masscan --rate 1000000 -p1-1024
  capture    3. packets/s the sensor keeps up with (fixed rates, then unpaced) and its
                CPU per packet
  flood      4. one SYN per distinct spoofed source (10k and 1M sources): blocks/s, caps,
                CPU and peak memory of both daemons; PortSentry 1.2 on a slower flood
  enforce    5. time to add the Nth block (N = 1, N/10, N) per backend (nftables set,
                iptables rule per host, blackhole route) and SYN->RST data-path rate
                with N active blocks vs none
  overhead   6. the host's own traffic over a conntrack firewall, alone, with the previous
                table and with sentry's table: 64-byte UDP datagrams/s of an established
                flow and new TCP connections/s to a served port, as ratios to the
                firewall alone (both pairs in alternating 50 ms slices), every round
  restore    7. a state of N blocks restored into an empty ruleset (as after a boot):
                seconds to every block in the kernel's sets, peak memory of both processes
  all        every scenario above

Options:
  --runs N               runs per tool and scan (median reported; default 5)
  --scans LIST           only these scans, by id: syn,syn-t5,fin,null,xmas,syn6,udp,masscan
                         (with --scans, `syn` and `scans` mean the same: the listed scans)
  --portsentry-deb FILE  use this portsentry .deb instead of `apt-get download portsentry`
  --no-portsentry        skip the PortSentry rows
  --enforce-n N          blocks for the enforcement-cost scenario (default 10000)
  --restore-n N          blocks for the restore scenario (default 100000, MAX_BLOCKS' bound)
  --capture-rates LIST   paced rates for `capture`, packets/s (default 25000,50000,100000,200000)
  --step-secs N          seconds per capture step (default 3)
  --flood-sizes LIST     distinct sources per flood (default 10000,1000000)
  --flood-secs N         time bound of each flood (default 30)
  --ps-flood-packets N   PortSentry flood size (default 20000)
  --ps-flood-rate N      PortSentry flood rate, packets/s (default 1000)
  --ps-settle-secs N     how long PortSentry may keep blocking after its flood (default 60)
  --settle-secs N        how long sentry may keep working after a flood (default 60)
  --overhead-secs N      seconds each pair is measured per overhead round (default 3)
  --overhead-blocks N    blocked addresses in the sets during `overhead` (default 10000)
Environment: SENTRY_BENCH_TREE=COMMIT names the source tree in the output when it has no .git;
SENTRY_BENCH_VERBOSE=1 prints each sentry run's audit record and sensor log;
SENTRY_BENCH_STRACE=FILE straces the sensor during each sentry scan run;
SENTRY_BENCH_KEEP_PCAP=DIR keeps the capture of each sentry scan run in which a port answered.
  --help
Needs root, nmap, masscan, tcpdump, iptables, nft, ip, unshare, setpriv, dpkg-deb, apt-get, and
the release binaries of sentry-sensor and sentry-enforcer next to this one (or
SENTRY_BIN_DIR).";

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub runs: usize,
    pub portsentry_deb: Option<PathBuf>,
    pub no_portsentry: bool,
    pub enforce_n: u64,
    pub restore_n: u64,
    pub capture_rates: Vec<u64>,
    pub step_secs: u64,
    pub flood_sizes: Vec<u64>,
    pub flood_secs: u64,
    pub ps_flood_packets: u64,
    pub ps_flood_rate: u64,
    pub ps_settle_secs: u64,
    pub settle_secs: u64,
    pub overhead_secs: u64,
    pub overhead_blocks: u64,
    pub scenarios: Vec<String>,
    /// `--scans`: replaces the scan lists of `syn` and `scans`.
    pub scans: Option<Vec<probe::Scan>>,
}

const SCENARIOS: [&str; 7] = [
    "syn", "scans", "capture", "flood", "enforce", "overhead", "restore",
];

/// A number within `lo..=hi`, or an error naming the option.
fn num(name: &str, v: &str, lo: u64, hi: u64) -> Result<u64, String> {
    v.parse::<u64>()
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or(format!("{name}: {v:?} is not a number in {lo}-{hi}"))
}

/// A comma-separated list of such numbers (at most 16).
fn list(name: &str, v: &str, lo: u64, hi: u64) -> Result<Vec<u64>, String> {
    let items: Vec<u64> = v
        .split(',')
        .map(|x| num(name, x.trim(), lo, hi))
        .collect::<Result<_, _>>()?;
    if items.is_empty() || items.len() > 16 {
        return Err(format!("{name}: give 1-16 comma-separated numbers"));
    }
    Ok(items)
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        runs: 5,
        portsentry_deb: None,
        no_portsentry: false,
        enforce_n: 10_000,
        restore_n: 100_000,
        capture_rates: vec![25_000, 50_000, 100_000, 200_000],
        step_secs: 3,
        flood_sizes: vec![10_000, 1_000_000],
        flood_secs: 30,
        ps_flood_packets: 20_000,
        ps_flood_rate: 1_000,
        ps_settle_secs: 60,
        settle_secs: 60,
        overhead_secs: 3,
        overhead_blocks: 10_000,
        scenarios: Vec::new(),
        scans: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--help" | "-h" => return Err(String::new()),
            "--runs" => {
                let v = value("--runs")?;
                o.runs = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=101).contains(n))
                    .ok_or(format!("--runs: {v:?} is not a number in 1-101"))?;
            }
            "--portsentry-deb" => {
                o.portsentry_deb = Some(PathBuf::from(value("--portsentry-deb")?))
            }
            "--no-portsentry" => o.no_portsentry = true,
            "--scans" => o.scans = Some(probe::select(&value("--scans")?)?),
            "--restore-n" => o.restore_n = num("--restore-n", &value("--restore-n")?, 2, 100_000)?,
            "--enforce-n" => {
                let v = value("--enforce-n")?;
                o.enforce_n = v
                    .parse()
                    .ok()
                    .filter(|n| (20..=200_000).contains(n))
                    .ok_or(format!("--enforce-n: {v:?} is not a number in 20-200000"))?;
            }
            "--capture-rates" => {
                o.capture_rates =
                    list("--capture-rates", &value("--capture-rates")?, 1, 10_000_000)?
            }
            "--flood-sizes" => {
                o.flood_sizes = list("--flood-sizes", &value("--flood-sizes")?, 1, 4_000_000)?
            }
            "--step-secs" => o.step_secs = num("--step-secs", &value("--step-secs")?, 1, 60)?,
            "--flood-secs" => o.flood_secs = num("--flood-secs", &value("--flood-secs")?, 1, 300)?,
            "--ps-flood-packets" => {
                o.ps_flood_packets = num(
                    "--ps-flood-packets",
                    &value("--ps-flood-packets")?,
                    1,
                    1_000_000,
                )?
            }
            "--ps-flood-rate" => {
                o.ps_flood_rate = num("--ps-flood-rate", &value("--ps-flood-rate")?, 1, 1_000_000)?
            }
            "--ps-settle-secs" => {
                o.ps_settle_secs = num("--ps-settle-secs", &value("--ps-settle-secs")?, 1, 600)?
            }
            "--settle-secs" => {
                o.settle_secs = num("--settle-secs", &value("--settle-secs")?, 1, 600)?
            }
            "--overhead-secs" => {
                o.overhead_secs = num("--overhead-secs", &value("--overhead-secs")?, 1, 60)?
            }
            "--overhead-blocks" => {
                o.overhead_blocks =
                    num("--overhead-blocks", &value("--overhead-blocks")?, 0, 60_000)?
            }
            "all" => o.scenarios.extend(SCENARIOS.iter().map(|s| s.to_string())),
            s if SCENARIOS.contains(&s) => o.scenarios.push(s.to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios.extend(SCENARIOS.iter().map(|s| s.to_string()));
    }
    o.scenarios.dedup();
    Ok(o)
}

/// The first three fields of /proc/loadavg: other work on the machine shows up here.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> String {
    let cmd = |p: &str, a: &[&str]| {
        std::process::Command::new(p)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let src = env!("CARGO_MANIFEST_DIR");
    // A tree exported with `git archive` has no .git: the caller names the commit.
    let head = std::env::var("SENTRY_BENCH_TREE")
        .unwrap_or_else(|_| cmd("git", &["-C", src, "rev-parse", "--short", "HEAD"]));
    let dirty = !cmd(
        "git",
        &["-C", src, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_empty();
    format!(
        "date {} | nproc {} | kernel {} | cpu {} | load {} | sentry tree {}{} | nmap {} | {}",
        cmd("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        cmd("nproc", &[]),
        cmd("uname", &["-r"]),
        cpu,
        loadavg(),
        head,
        if dirty { " + uncommitted changes" } else { "" },
        cmd("nmap", &["--version"])
            .lines()
            .next()
            .unwrap_or_default(),
        cmd("iptables", &["--version"]),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The enforcer's stand-in sensor, re-executed as the sensor user by `enforce`.
    if args.first().is_some_and(|a| a == "__client") {
        std::process::exit(enforce::client_main(&args[1..]));
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("sentry-bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "sentry-bench: needs root (network namespaces, raw sockets, firewall inside them)"
        );
        std::process::exit(2);
    }
    cleanup::install();
    println!(
        "# sentry-bench\n\ncommand: sentry-bench {}\n\nmachine: {}",
        args.join(" "),
        machine()
    );
    let want = |s: &str| opts.scenarios.iter().any(|x| x == s);
    let pkg = if (want("syn") || want("scans") || want("flood")) && !opts.no_portsentry {
        match portsentry::Package::fetch(opts.portsentry_deb.as_deref()) {
            Ok(p) => {
                println!(
                    "PortSentry: Debian package portsentry {} (unpacked, not installed); \
                     sentry's Debian row: {}",
                    p.version,
                    match p.debian_conf.as_deref() {
                        Some(c) if c == scans::DEBIAN_CONF_FIXTURE => {
                            "the package's portsentry.conf (its settings are policy/tests/fixtures/debian-package.conf)"
                        }
                        Some(_) =>
                            "the package's portsentry.conf (differs from the repository's fixture)",
                        None => "policy/tests/fixtures/debian-package.conf (the package has none)",
                    }
                );
                Some(p)
            }
            Err(e) => {
                eprintln!("sentry-bench: PortSentry unavailable, its rows are skipped: {e}");
                None
            }
        }
    } else {
        None
    };
    println!("scans: {}", scans::describe());
    if want("syn") || want("scans") {
        println!("{}", scans::proc_net_read_cost());
    }
    if let Some(list) = &opts.scans {
        if want("syn") || want("scans") {
            scans::scenario(&opts, pkg.as_ref(), list);
        }
    } else {
        if want("syn") {
            scans::scenario(&opts, pkg.as_ref(), &probe::SCANS[..1]);
        }
        if want("scans") {
            scans::scenario(&opts, pkg.as_ref(), &probe::SCANS[1..]);
        }
    }
    if want("capture") {
        capture::scenario(&opts);
    }
    if want("flood") {
        flood::scenario(&opts, pkg.as_ref());
    }
    if want("enforce") {
        enforce::scenario(&opts);
    }
    if want("overhead") {
        overhead::scenario(&opts);
    }
    if want("restore") {
        restore::scenario(&opts);
    }
    drop(pkg);
    cleanup::emergency_cleanup();
}
