//! sentry's nftables table: its shape, and the one `nft -f -` transaction that builds it
//! with the surviving blocks at start. Everything after start-up goes over netlink
//! ([`crate::kernel::netlink`]); nft(8) is used here because the table is built once and its
//! text form is what an administrator reads back with `nft list table`.

use std::fmt::Write as _;
use std::time::Duration;

use policy::{Config, IgnoreList};
use sentry_privsep::{Modes, NFLOG_PREFIX_INVALID, NFLOG_PREFIX_NEW, NOT_PROBE_PROTOCOLS};

use crate::effects::exec;
use crate::kernel::netlink::SetElem;

/// Names of the two sets in the nftables table.
pub const SET_V4: &str = "v4";
pub const SET_V6: &str = "v6";
/// The set of IPv6 networks (BLOCK_PREFIX6), looked up with the source masked.
pub const SET_V6NET: &str = "v6net";

/// The regular chain every new, invalid or untracked packet goes through: a source in a
/// block set (or, from the detection script, a first-hit map) is dropped here.
///
/// Packets of established flows never come here: a block takes away the right to open
/// connections to or through this host, not the flows the address had opened before it
/// (they end with the connection, or with conntrack's timeout). That keeps the host's
/// own traffic at one base chain and one compare per packet: a block-set lookup for every
/// established packet cost 3-4 % of the 64-byte UDP rate (`sentry-bench overhead`, issue
/// #19 item 7), and a forged probe then no longer cuts the sessions a client of this
/// host already has.
pub const CHAIN_BLOCKED: &str = "blocked";

/// Build the `nft -f -` script that (re)creates the table: sets with per-element timeouts
/// for single addresses (`v4`, `v6`) and for IPv6 networks of BLOCK_PREFIX6 (`v6net`,
/// looked up with the source masked, so it stays a plain hash set), and the two base
/// chains every block acts in.
///
/// A block removes only what the blocked address originates, and only new flows: both
/// base chains sit after connection tracking (priority -150) and let established and
/// related packets pass first, so the replies in a flow this host (or, on a router, one of
/// its clients) opened are never dropped, and neither is a flow opened before the block
/// ([`CHAIN_BLOCKED`]). A forged probe "from" a server the host talks to (its LAPI, NTP server, package
/// mirror) then costs the host nothing; the forged address only loses the right to open
/// connections to or through this host. `input` is rebuilt with the detection rules when
/// the sensor announces its modes ([`detection_script`]); `forward` (a router's, a
/// container host's) never changes.
pub fn setup_script(table: &str, prefix6: u8) -> String {
    let mut o = format!(
        "table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tset {SET_V4} {{ type ipv4_addr; flags timeout; }}\n\
         \tset {SET_V6} {{ type ipv6_addr; flags timeout; }}\n\
         \tset {SET_V6NET} {{ type ipv6_addr; flags timeout; }}\n\
         }}\n"
    );
    base_chains(&mut o, table);
    for r in blocked_rules(Some(prefix6), false) {
        let _ = writeln!(o, "add rule inet {table} {CHAIN_BLOCKED} {r}");
    }
    for r in [
        "ct state established,related return".to_string(),
        format!("goto {CHAIN_BLOCKED}"),
    ] {
        let _ = writeln!(o, "add rule inet {table} input {r}");
    }
    o
}

/// Declare the base chains and the block chain (a no-op for those that exist), then
/// empty the ones whose rules the caller writes next (`input`, the block chain);
/// `forward`'s rules never change and are written here.
fn base_chains(o: &mut String, table: &str) {
    let _ = writeln!(
        o,
        "add chain inet {table} input {{ type filter hook input priority -150; policy accept; }}\n\
         add chain inet {table} {CHAIN_BLOCKED}\n\
         add chain inet {table} forward {{ type filter hook forward priority -150; policy accept; }}\n\
         flush chain inet {table} input\n\
         flush chain inet {table} {CHAIN_BLOCKED}\n\
         flush chain inet {table} forward\n\
         add rule inet {table} forward ct state established,related return\n\
         add rule inet {table} forward goto {CHAIN_BLOCKED}"
    );
}

/// The lookups of a blocked source: the enforcer's own sets (`native`: they exist, with
/// this BLOCK_PREFIX6) and the first hit's maps (`hits`), each ending in `drop`.
fn blocked_rules(native: Option<u8>, hits: bool) -> Vec<String> {
    blocked_lookups(native, hits, "counter drop")
}

/// `ip saddr @set VERDICT` for every set and map a blocked source is in.
fn blocked_lookups(native: Option<u8>, hits: bool, verdict: &str) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(prefix6) = native {
        let mask = std::net::Ipv6Addr::from(policy::prefix6_bits(prefix6));
        v.push(format!("ip saddr @{SET_V4} {verdict}"));
        v.push(format!("ip6 saddr @{SET_V6} {verdict}"));
        v.push(format!("ip6 saddr & {mask} @{SET_V6NET} {verdict}"));
    }
    if hits {
        v.push(format!("ip saddr @{HIT_V4} {verdict}"));
        v.push(format!("ip6 saddr @{HIT_V6} {verdict}"));
    }
    v
}

/// `add element` statements for `elems` (appended to [`setup_script`]): single addresses
/// into `v4`/`v6`, or, with `nets`, IPv6 network addresses into `v6net`.
pub fn elements_script(table: &str, elems: &[SetElem], nets: bool) -> String {
    let mut out = String::new();
    let v6 = if nets { SET_V6NET } else { SET_V6 };
    for (set, v4) in [(SET_V4, true), (v6, false)] {
        let mine: Vec<&SetElem> = elems.iter().filter(|e| e.addr.is_ipv4() == v4).collect();
        for chunk in mine.chunks(1000) {
            out.push_str(&format!("add element inet {table} {set} {{ "));
            for (i, e) in chunk.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&e.addr.to_string());
                if let Some(t) = e.timeout {
                    out.push_str(&format!(" timeout {}ms", t.as_millis().max(1)));
                }
            }
            out.push_str(" }\n");
        }
    }
    out
}

/// Delete and recreate the table with `hosts` and IPv6 `nets` in it, in one transaction,
/// so a restart never opens a window in which the surviving blocks pass.
pub fn build(cfg: &Config, hosts: &[SetElem], nets: &[SetElem]) -> Result<(), String> {
    let mut script = setup_script(&cfg.nft_table, cfg.block_prefix6);
    script.push_str(&elements_script(&cfg.nft_table, hosts, false));
    script.push_str(&elements_script(&cfg.nft_table, nets, true));
    nft_table(cfg, &script)
}

/// Most candidates per second the detection chain copies to the sensor; beyond this they
/// are counted (the `counter` on the limit rule, `nft list chain inet T detect_copy`) and
/// not copied, so a flood cannot drown the sensor. Far above what a scan needs to cross
/// SCAN_TRIGGER.
pub const DETECT_RATE: u32 = 20_000;
/// Burst the limit lets through at once.
pub const DETECT_BURST: u32 = 2_000;

/// What the detection chain watches: derived from the policy and the modes the sensor
/// announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectSpec {
    pub stcp: Vec<(u16, u16)>,
    pub sudp: Vec<(u16, u16)>,
    pub atcp: Vec<(u16, u16)>,
    pub audp: Vec<(u16, u16)>,
    pub ignore4: Vec<String>,
    pub ignore6: Vec<String>,
    /// The kernel has the `socket` expression (CONFIG_NFT_SOCKET): advanced modes skip
    /// served ports in the kernel. Without it the sensor's own listener check does it.
    pub socket_expr: bool,
    /// The in-kernel first hit (SCAN_TRIGGER=0 with BLOCK_*=1 and the native set).
    pub tripwire: Option<Tripwire>,
    /// Addresses never blocked in the kernel (default gateways, nameservers, ...), as
    /// interval-set items: a probe from one is only copied, for the enforcer to audit.
    pub never4: Vec<String>,
    pub never6: Vec<String>,
    /// The enforcer's own block sets exist (FIREWALL="nftables" and its backend came up),
    /// with this BLOCK_PREFIX6: the block check and the evidence path look them up.
    pub native: Option<u8>,
    /// ANSWER_PROBES=1: probes of unserved watched ports are answered (copied, not
    /// dropped), as PortSentry let them be.
    pub answer_probes: bool,
    /// The NFLOG group the candidates are copied to: a fresh one on each hand-over to a
    /// verified sensor, so a socket bound for an earlier holder never gets another packet
    /// (see `crate::kernel::capture::GROUPS`).
    pub nflog_group: u16,
    /// RESTART_GRACE is on: ports in the `detect_served` sets (kept by
    /// [`crate::kernel::served`]) are no tripwires.
    pub served: bool,
}

impl Default for DetectSpec {
    fn default() -> Self {
        Self {
            stcp: Vec::new(),
            sudp: Vec::new(),
            atcp: Vec::new(),
            audp: Vec::new(),
            ignore4: Vec::new(),
            ignore6: Vec::new(),
            socket_expr: false,
            tripwire: None,
            never4: Vec::new(),
            never6: Vec::new(),
            native: None,
            answer_probes: false,
            nflog_group: crate::kernel::capture::NFLOG_GROUP,
            served: false,
        }
    }
}

/// Maps the kernel fills on a first probe (SCAN_TRIGGER=0): the source, with the
/// protocol, port and TCP flags of the probe as data, so that the enforcer can audit a
/// block the kernel made while the sensor was down. Separate from the enforcer's own sets
/// (which only it writes), dropped from in their own prerouting chain.
pub const HIT_V4: &str = "hit4";
pub const HIT_V6: &str = "hit6";

/// The first-hit settings, derived from the policy by [`Tripwire::from_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripwire {
    pub tcp: bool,
    pub udp: bool,
    /// At most this many kernel-made blocks per minute in all: the single-probe half of
    /// BLOCK_RATE, the share the enforcer gives requests made on one probe.
    pub per_minute: u32,
    /// And per IPv4 /24 or IPv6 /64: a quarter of BLOCK_RATE, as the enforcer's prefix share.
    pub per_prefix_minute: u32,
    /// Map size: MAX_BLOCKS (a full map makes the add fail; the probe is still dropped).
    pub size: u32,
    /// The kernel's own timeout of an element: long enough for the enforcer to record the
    /// block (which puts the source in its own set with BLOCK_TIMEOUT) or to take it back.
    pub timeout: Duration,
}

/// How long a kernel-made element lives on its own (BLOCK_TIMEOUT when that is shorter).
pub const HIT_TIMEOUT: Duration = Duration::from_secs(120);

impl Tripwire {
    /// `Some` when the policy blocks a source on its first probe and the native set is in
    /// effect (`nft`: the enforcer's nftables backend came up).
    pub fn from_config(cfg: &Config, nft: bool) -> Option<Self> {
        use policy::BlockMode;
        let tcp = cfg.block_tcp == BlockMode::Block;
        let udp = cfg.block_udp == BlockMode::Block;
        if !nft || cfg.scan_trigger != 0 || !(tcp || udp) {
            return None;
        }
        Some(Self {
            tcp,
            udp,
            per_minute: (cfg.block_rate / 2).max(1),
            per_prefix_minute: (cfg.block_rate / 4).max(1),
            size: cfg.max_blocks.max(1),
            timeout: cfg
                .block_timeout
                .map_or(HIT_TIMEOUT, |t| t.min(HIT_TIMEOUT)),
        })
    }
}

/// Sources the kernel's first hit never puts in its maps, besides this host's own
/// addresses (`fib saddr type local`): everything the judge never blocks whatever the
/// host's state (unspecified, loopback, link-local, multicast, broadcast and reserved
/// ranges, IPv4-compatible and -mapped IPv6) plus `extra` (infrastructure, the network
/// and broadcast addresses of the host's subnets), so the kernel never blocks what the
/// judge would release a moment later. Merged into disjoint `lo-hi` items, as an interval
/// set needs them.
pub fn kernel_never(extra: &[std::net::IpAddr]) -> (Vec<String>, Vec<String>) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut v4: Vec<(u32, u32)> = [
        (0x0000_0000, 0x00ff_ffff), // 0.0.0.0/8
        (0x7f00_0000, 0x7fff_ffff), // 127.0.0.0/8
        (0xa9fe_0000, 0xa9fe_ffff), // 169.254.0.0/16
        (0xe000_0000, 0xffff_ffff), // multicast, 240/4, 255.255.255.255
    ]
    .to_vec();
    let mut v6: Vec<(u128, u128)> = vec![
        (0, 0xffff_ffff),                     // ::/96: ::, ::1, ::a.b.c.d
        (0xffff_0000_0000, 0xffff_ffff_ffff), // ::ffff:0:0/96
        (0xfe80 << 112, (0xfec0 << 112) - 1), // fe80::/10
        (0xff00 << 112, u128::MAX),           // ff00::/8
    ];
    for a in extra {
        match a {
            IpAddr::V4(a) => v4.push((u32::from(*a), u32::from(*a))),
            IpAddr::V6(a) => v6.push((u128::from(*a), u128::from(*a))),
        }
    }
    fn merge<T: Copy + Ord + std::ops::Add<Output = T> + From<u8>>(
        mut v: Vec<(T, T)>,
        max: T,
    ) -> Vec<(T, T)> {
        v.sort();
        let mut out: Vec<(T, T)> = Vec::new();
        for (lo, hi) in v {
            match out.last_mut() {
                Some((_, h)) if *h == max || lo <= *h + T::from(1) => *h = (*h).max(hi),
                _ => out.push((lo, hi)),
            }
        }
        out
    }
    let item = |lo: String, hi: String| if lo == hi { lo } else { format!("{lo}-{hi}") };
    (
        merge(v4, u32::MAX)
            .into_iter()
            .map(|(a, b)| item(Ipv4Addr::from(a).to_string(), Ipv4Addr::from(b).to_string()))
            .collect(),
        merge(v6, u128::MAX)
            .into_iter()
            .map(|(a, b)| item(Ipv6Addr::from(a).to_string(), Ipv6Addr::from(b).to_string()))
            .collect(),
    )
}

/// Sorted, merged port ranges of `ports`.
fn ranges(mut ports: Vec<u16>) -> Vec<(u16, u16)> {
    ports.sort_unstable();
    ports.dedup();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for p in ports.into_iter().filter(|&p| p != 0) {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => out.push((p, p)),
        }
    }
    out
}

fn advanced(limit: u16, exclude: &policy::PortSet) -> Vec<(u16, u16)> {
    ranges((1..limit).filter(|p| !exclude.contains(*p)).collect())
}

impl DetectSpec {
    /// What the chains watch for `modes`; `native`: the enforcer's block sets are in the
    /// table (`Some(BLOCK_PREFIX6)`: FIREWALL="nftables" and the parent's set socket), so the block
    /// check looks them up. Basic modes alone watch nothing here.
    pub fn new(
        cfg: &Config,
        modes: Modes,
        ignore: &IgnoreList,
        socket_expr: bool,
        native: Option<u8>,
    ) -> Self {
        if modes.basic_only() {
            return Self::blocks_only(native);
        }
        let has = |m| modes.has(m);
        let mut s = Self {
            native,
            socket_expr,
            answer_probes: cfg.answer_probes,
            nflog_group: crate::kernel::capture::NFLOG_GROUP,
            served: !cfg.restart_grace.is_zero(),
            ..Self::default()
        };
        if has(Modes::STCP) {
            s.stcp = ranges(cfg.tcp_ports.iter().collect());
        }
        if has(Modes::SUDP) {
            s.sudp = ranges(cfg.udp_ports.iter().collect());
        }
        if has(Modes::ATCP) {
            s.atcp = advanced(cfg.advanced_ports_tcp, &cfg.advanced_exclude_tcp);
        }
        if has(Modes::AUDP) {
            s.audp = advanced(cfg.advanced_ports_udp, &cfg.advanced_exclude_udp);
        }
        let range = |lo: String, hi: String| if lo == hi { lo } else { format!("{lo}-{hi}") };
        s.ignore4 = ignore
            .ranges_v4()
            .map(|(a, b)| range(a.to_string(), b.to_string()))
            .collect();
        s.ignore6 = ignore
            .ranges_v6()
            .map(|(a, b)| range(a.to_string(), b.to_string()))
            .collect();
        s
    }

    /// The same, with the in-kernel first hit and the addresses it must never block.
    /// Without the `socket` expression there is no first hit: the kernel could not tell a
    /// served port from a tripwire, and only the sensor's listener table can.
    pub fn with_tripwire(mut self, t: Option<Tripwire>, never: &[std::net::IpAddr]) -> Self {
        self.tripwire = t.filter(|_| self.socket_expr);
        (self.never4, self.never6) = kernel_never(never);
        self
    }

    /// No candidates (basic modes listen on their own sockets), only the block check.
    pub fn blocks_only(native: Option<u8>) -> Self {
        Self {
            native,
            nflog_group: crate::kernel::capture::NFLOG_GROUP,
            ..Self::default()
        }
    }
}

fn elements(out: &mut String, table: &str, set: &str, items: impl IntoIterator<Item = String>) {
    let items: Vec<String> = items.into_iter().collect();
    for chunk in items.chunks(1000) {
        let _ = writeln!(
            out,
            "add element inet {table} {set} {{ {} }}",
            chunk.join(", ")
        );
    }
}

fn port_items(r: &[(u16, u16)]) -> impl Iterator<Item = String> + '_ {
    r.iter().map(|&(a, b)| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    })
}

/// The detection chains' interval sets and their key types.
const DETECT_SETS: [(&str, &str); 8] = [
    ("detect_ign4", "ipv4_addr"),
    ("detect_ign6", "ipv6_addr"),
    ("detect_never4", "ipv4_addr"),
    ("detect_never6", "ipv6_addr"),
    ("detect_stcp", "inet_service"),
    ("detect_sudp", "inet_service"),
    ("detect_atcp", "inet_service"),
    ("detect_audp", "inet_service"),
];

/// The regular chains `input` jumps or goes to.
const DETECT_CHAINS: [&str; 11] = [
    "detect_tcp",
    "detect_udp",
    "detect_copy",
    "detect_ack",
    "detect_sctp",
    "detect_hit_tcp",
    "detect_hit_udp",
    "detect_cand",
    "detect_seen",
    "detect_log",
    "detect_drop",
];

/// Most copies a second of one blocked source's later probes (the evidence that keeps
/// growing after its block), with this burst; and of all blocked sources together. A
/// scanner that is blocked on its first probe and goes on through 1024 ports still shows
/// a few hundred of them; a flood from blocked sources cannot drown the sensor.
pub const SEEN_RATE: u32 = 50;
pub const SEEN_BURST: u32 = 400;
pub const SEEN_RATE_TOTAL: u32 = 2_000;

/// The chains that evidence-after-block and the first hit need, declared whether used or
/// not (re-declaring updates size and timeout; elements stay, so a rebuild keeps the
/// kernel's recent blocks and its meters).
fn declare_dynamic(o: &mut String, table: &str, spec: &DetectSpec) {
    let (size, timeout) = spec
        .tripwire
        .map_or((1, HIT_TIMEOUT), |t| (t.size, t.timeout));
    for (map, key) in [(HIT_V4, "ipv4_addr"), (HIT_V6, "ipv6_addr")] {
        let _ = writeln!(
            o,
            "add map inet {table} {map} {{ type {key} : inet_proto . inet_service . tcp_flag; flags dynamic, timeout; size {size}; timeout {}s; }}",
            timeout.as_secs().max(1)
        );
    }
    // The served ports (crate::kernel::served writes them; never flushed here, so a rebuild of
    // the chains keeps the grace of a service that just stopped).
    o.push_str(&crate::kernel::served::declare(table));
    for (set, key) in [
        ("detect_rl4", "ipv4_addr"),
        ("detect_rl6", "ipv6_addr"),
        ("detect_ev4", "ipv4_addr"),
        ("detect_ev6", "ipv6_addr"),
    ] {
        let _ = writeln!(
            o,
            "add set inet {table} {set} {{ type {key}; flags dynamic, timeout; size 65536; timeout 60s; }}"
        );
    }
}

/// The detection objects, as one `nft -f -` transaction that works whether the table
/// exists (FIREWALL="nftables": its block sets are left alone) or not (any other
/// FIREWALL: the table then holds only these). Every object is declared first (a no-op
/// when it exists with the same definition, which it always has), then emptied and
/// refilled, so the swap is atomic: no packet sees a half-built chain.
///
/// One base chain per hook, so a packet of the host's own traffic pays for one chain and
/// a few compares (the `overhead` benchmark of sentry-bench measures it). `input`
/// (`type filter hook input priority -150`: after conntrack (-200) and defragmentation,
/// before the host's own filter rules (0), so a host firewall that drops a scan does not
/// hide it; the input hook only sees packets for this host, never forwarded ones):
/// * established and related packets return first: the replies within the host's own
///   flows (a block never cuts the host off from a server it talks to) and the flows
///   others opened before any block ([`CHAIN_BLOCKED`]): one compare for most of the
///   host's traffic;
/// * packets not unicast to us go to the block check;
/// * the ignore list returns (the enforcer never blocks it);
/// * what is left is new, invalid or untracked (`notrack` rules too: they are probes
///   all the same) and goes through the per-protocol candidate chains, then the block
///   check.
///
/// A candidate is a probe of a watched port: `detect_tcp`/`detect_udp` (ACK/RST-bearing
/// segments are never probes; stealth ports `detect_stcp`/`detect_sudp`; advanced ports
/// `detect_atcp`/`detect_audp` unless a socket serves them), the other kinds
/// (`other_kinds`). Every candidate reaches `detect_copy` or a first-hit chain, and both
/// begin with `detect_cand`: a source already blocked goes to `detect_seen`, which copies
/// its probe under a per-source rate ([`SEEN_RATE`]) so the evidence keeps growing after
/// the block, and drops it. Any other candidate is copied to the sensor ([`DETECT_RATE`]
/// bounds the copies, never the drop) and dropped in `detect_drop` unless a service
/// serves its port: a probe of a port where nothing listens is never answered, whatever a
/// forger spent of the block budgets (ANSWER_PROBES=1 answers them as PortSentry did).
pub fn detection_script(table: &str, spec: &DetectSpec) -> String {
    let mut o = String::new();
    detection_objects(&mut o, table, spec);
    for r in blocked_rules(spec.native, spec.tripwire.is_some()) {
        add_rule(&mut o, table, CHAIN_BLOCKED, &r);
    }
    input_rules(&mut o, table, spec);
    protocol_rules(&mut o, table, spec);
    seen_and_copy_rules(&mut o, table, spec);
    log_rules(&mut o, table, spec.nflog_group);
    drop_rules(&mut o, table, spec);
    o
}

/// `add rule inet TABLE CHAIN RULE`, one line of the script.
fn add_rule(o: &mut String, table: &str, chain: &str, r: &str) {
    let _ = writeln!(o, "add rule inet {table} {chain} {r}");
}

/// The table, its sets, maps and chains, emptied and refilled: the objects the rules
/// below refer to.
fn detection_objects(o: &mut String, table: &str, spec: &DetectSpec) {
    let _ = writeln!(o, "add table inet {table}");
    for (set, ty) in DETECT_SETS {
        let _ = writeln!(
            o,
            "add set inet {table} {set} {{ type {ty}; flags interval; }}"
        );
    }
    declare_dynamic(o, table, spec);
    base_chains(o, table);
    for c in DETECT_CHAINS {
        let _ = writeln!(o, "add chain inet {table} {c}");
    }
    for c in DETECT_CHAINS {
        let _ = writeln!(o, "flush chain inet {table} {c}");
    }
    for (set, _) in DETECT_SETS {
        let _ = writeln!(o, "flush set inet {table} {set}");
    }
    elements(o, table, "detect_ign4", spec.ignore4.iter().cloned());
    elements(o, table, "detect_ign6", spec.ignore6.iter().cloned());
    elements(o, table, "detect_never4", spec.never4.iter().cloned());
    elements(o, table, "detect_never6", spec.never6.iter().cloned());
    elements(o, table, "detect_stcp", port_items(&spec.stcp));
    elements(o, table, "detect_sudp", port_items(&spec.sudp));
    elements(o, table, "detect_atcp", port_items(&spec.atcp));
    elements(o, table, "detect_audp", port_items(&spec.audp));
}

/// The `input` chain: established flows (replies included) out, then not-for-us and
/// ignored sources, then each protocol's candidates to its detect chain; the rest to the
/// block check.
fn input_rules(o: &mut String, table: &str, spec: &DetectSpec) {
    let rule = |o: &mut String, r: &str| add_rule(o, table, "input", r);
    rule(o, "ct state established,related return");
    rule(o, &format!("meta pkttype != host goto {CHAIN_BLOCKED}"));
    rule(o, "ip saddr @detect_ign4 return");
    rule(o, "ip6 saddr @detect_ign6 return");
    let tcp = !(spec.stcp.is_empty() && spec.atcp.is_empty());
    let udp = !(spec.sudp.is_empty() && spec.audp.is_empty());
    if tcp {
        rule(o, "meta l4proto tcp jump detect_tcp");
    }
    if udp {
        // An invalid datagram is one the stack drops (bad checksum, truncated).
        rule(o, "meta l4proto udp ct state new,untracked jump detect_udp");
    }
    served_rules(o, table, spec, tcp, udp);
    other_kinds(o, table, spec);
    rule(o, &format!("goto {CHAIN_BLOCKED}"));
}

/// `detect_tcp` and `detect_udp`: a watched port's candidate goes to the first hit
/// (kernel block, then the copy) or to the copy.
fn protocol_rules(o: &mut String, table: &str, spec: &DetectSpec) {
    let t = spec.tripwire;
    add_rule(
        o,
        table,
        "detect_tcp",
        "tcp flags & (ack | rst) != 0 return",
    );
    for (chain, proto, stealth, adv, first_hit) in [
        (
            "detect_tcp",
            "tcp",
            &spec.stcp,
            &spec.atcp,
            t.is_some_and(|t| t.tcp),
        ),
        (
            "detect_udp",
            "udp",
            &spec.sudp,
            &spec.audp,
            t.is_some_and(|t| t.udp),
        ),
    ] {
        let short = &chain[7..];
        let target = if first_hit {
            format!("detect_hit_{short}")
        } else {
            "detect_copy".to_string()
        };
        if let Some(tw) = t.filter(|_| first_hit) {
            first_hit_rules(o, table, proto, &tw);
        }
        if !stealth.is_empty() {
            add_rule(
                o,
                table,
                chain,
                &format!("{proto} dport @detect_s{short} goto {target}"),
            );
        }
        if !adv.is_empty() {
            if spec.socket_expr && !first_hit {
                add_rule(
                    o,
                    table,
                    chain,
                    &format!("{proto} dport @detect_a{short} socket transparent 0-1 return"),
                );
            }
            add_rule(
                o,
                table,
                chain,
                &format!("{proto} dport @detect_a{short} goto {target}"),
            );
        }
    }
}

/// `detect_cand`, `detect_seen` and `detect_copy`: a blocked source's candidate adds
/// evidence and is dropped; any other is copied to the sensor within DETECT_RATE.
fn seen_and_copy_rules(o: &mut String, table: &str, spec: &DetectSpec) {
    for r in blocked_lookups(spec.native, spec.tripwire.is_some(), "goto detect_seen") {
        add_rule(o, table, "detect_cand", &r);
    }
    let mask = std::net::Ipv6Addr::from(policy::prefix6_bits(spec.native.unwrap_or(64)));
    for r in [
        format!("add @detect_ev4 {{ ip saddr limit rate over {SEEN_RATE}/second burst {SEEN_BURST} packets }} drop"),
        format!("add @detect_ev6 {{ ip6 saddr & {mask} limit rate over {SEEN_RATE}/second burst {SEEN_BURST} packets }} drop"),
        format!("limit rate over {SEEN_RATE_TOTAL}/second burst {SEEN_BURST} packets counter drop"),
        "jump detect_log".to_string(),
        "drop".to_string(),
    ] {
        add_rule(o, table, "detect_seen", &r);
    }
    let rule = |o: &mut String, r: &str| add_rule(o, table, "detect_copy", r);
    rule(o, "jump detect_cand");
    rule(
        o,
        &format!("limit rate over {DETECT_RATE}/second burst {DETECT_BURST} packets counter goto detect_drop"),
    );
    rule(o, "jump detect_log");
    rule(o, "goto detect_drop");
}

/// RESTART_GRACE: a port a service served within the grace ([`crate::kernel::served`]) is no
/// tripwire. First in `detect_tcp` and `detect_udp`, so that no probe of it (ACK-family
/// included: the late segments of the restarted service's old connections) is dropped,
/// copied or put in a first-hit map; it returns to `input`, whose block check still drops
/// a blocked source. The kernel's `socket` lookups stay for sockets bound since the last
/// poll.
fn served_rules(o: &mut String, table: &str, spec: &DetectSpec, tcp: bool, udp: bool) {
    if !spec.served {
        return;
    }
    use crate::kernel::served::{SET_ANY, SET_V4, SET_V6};
    for (chain, on) in [("detect_tcp", tcp), ("detect_udp", udp)] {
        if !on {
            continue;
        }
        for r in [
            format!("meta l4proto . th dport @{SET_ANY} return"),
            format!("ip daddr . meta l4proto . th dport @{SET_V4} return"),
            format!("ip6 daddr . meta l4proto . th dport @{SET_V6} return"),
        ] {
            let _ = writeln!(o, "add rule inet {table} {chain} {r}");
        }
    }
}

/// `detect_log`: the copy to the sensor, with a prefix saying whether conntrack found the
/// packet `new` (its checksum verified on the way) or not (`invalid`, or `untracked`
/// under a notrack rule: the sensor verifies the checksum itself).
fn log_rules(o: &mut String, table: &str, group: u16) {
    let snaplen = crate::kernel::capture::NFLOG_SNAPLEN;
    let _ = writeln!(
        o,
        "add rule inet {table} detect_log ct state new log prefix \"{NFLOG_PREFIX_NEW}\" group {group} snaplen {snaplen}\n\
         add rule inet {table} detect_log ct state invalid,untracked log prefix \"{NFLOG_PREFIX_INVALID}\" group {group} snaplen {snaplen}"
    );
}

/// `detect_drop`: a candidate nobody serves is dropped, so it is never answered. A port a
/// socket serves returns (its service answers; a blocked source was dropped before it got
/// here). SCTP has no `socket` lookup and without the expression the kernel cannot tell a
/// served port: those are copied only, as before.
fn drop_rules(o: &mut String, table: &str, spec: &DetectSpec) {
    if spec.answer_probes {
        return;
    }
    // This host's own traffic (it arrives on loopback, whichever of its addresses it
    // uses): a local program trying a closed port must still get its refusal at once,
    // not a time-out.
    let rules: &[&str] = if spec.socket_expr {
        &[
            "meta iif lo return",
            "meta l4proto sctp return",
            "socket transparent 0-1 return",
            "counter drop",
        ]
    } else {
        &[
            "meta iif lo return",
            "meta l4proto { tcp, udp, sctp } return",
            "counter drop",
        ]
    };
    for r in rules {
        let _ = writeln!(o, "add rule inet {table} detect_drop {r}");
    }
}

/// The probes PortSentry never saw (the sensor reports them as `ScanKind::{Ack, Maimon,
/// SctpInit, IpProtocol}`; the enforcer only logs them unless BLOCK_OTHER_SCANS=1). Their
/// rules are kept apart from the SYN/flag-probe rules: copies only, through `detect_copy`
/// and so under its rate limit, never an in-kernel block.
///
/// * ACK-family (`nmap -sA`/`-sW`: a bare ACK; `-sM`: FIN+ACK), in front of the rule of
///   `detect_tcp` that returns every ACK-bearing segment: only those two exact shapes
///   (ECN bits aside) go to `detect_ack`. A reply within one of the host's own flows never
///   gets here (`ct state established,related return` in `detect`); what does belongs to
///   no flow conntrack knows — with nf_conntrack_tcp_loose=1 (the default) conntrack picks
///   a bare ACK up as `new`, FIN+ACK and everything with loose=0 is `invalid`, and
///   `detect_copy` copies both (the sensor verifies the checksum of the invalid ones).
///   `detect_ack` uses the same tripwire sets and socket lookup as SYNs, so a port a
///   service serves (which also finds the late segments of its own closed connections in
///   TIME_WAIT) never counts.
/// * SCTP INIT (`nmap -sY`), `ct state new` only (conntrack verified the CRC32c and calls
///   only an INIT new), on the TCP modes' tripwire sets: PortSentry has no SCTP port lists
///   and a scanner probes the same service ports. nft's `socket` has no SCTP lookup; the
///   sensor skips ports an SCTP endpoint serves.
/// * IP protocols (`nmap -sO`) other than [`NOT_PROBE_PROTOCOLS`] (the ones the host's
///   stack, tunnels and routing daemons use, and TCP/UDP/SCTP), `ct state new`, when an
///   advanced mode runs: the protocol a probe names is its "port".
fn other_kinds(o: &mut String, table: &str, spec: &DetectSpec) {
    let rule = |o: &mut String, chain: &str, r: &str| {
        let _ = writeln!(o, "add rule inet {table} {chain} {r}");
    };
    let tcp = !(spec.stcp.is_empty() && spec.atcp.is_empty());
    if tcp {
        rule(
            o,
            "detect_tcp",
            "tcp flags & (fin | syn | rst | psh | ack | urg) { ack, fin | ack } goto detect_ack",
        );
        rule(
            o,
            "input",
            "meta l4proto sctp ct state new,untracked jump detect_sctp",
        );
        for (chain, match_) in [("detect_ack", "tcp dport"), ("detect_sctp", "sctp dport")] {
            if !spec.stcp.is_empty() {
                rule(o, chain, &format!("{match_} @detect_stcp goto detect_copy"));
            }
            if !spec.atcp.is_empty() {
                if spec.socket_expr && chain == "detect_ack" {
                    rule(
                        o,
                        chain,
                        &format!("{match_} @detect_atcp socket transparent 0-1 return"),
                    );
                }
                rule(o, chain, &format!("{match_} @detect_atcp goto detect_copy"));
            }
        }
    }
    if !(spec.atcp.is_empty() && spec.audp.is_empty()) {
        let used: Vec<String> = NOT_PROBE_PROTOCOLS.iter().map(u8::to_string).collect();
        rule(
            o,
            "input",
            &format!(
                "meta l4proto != {{ {} }} ct state new,untracked jump detect_copy",
                used.join(", ")
            ),
        );
    }
}

/// `detect_hit_{proto}`: a served port returns (the kernel's own socket lookup, for
/// stealth ports too: nothing a service answers is ever dropped here); a blocked source's
/// probe is evidence (`detect_cand`); this host's own addresses and the never-block set are
/// only copied; over the per-prefix or the total single-probe budget a probe is only
/// copied (the enforcer then weighs the sensor's report, and a second port is better
/// evidence that no forger's budget refuses); a probe conntrack did not find `new` is
/// copied but not put in the map (its checksum is unverified); otherwise the source goes
/// into the map (which fails, and skips only that rule, when the map is full), the probe
/// is copied to the sensor and dropped. Every branch that copies also drops
/// (`detect_copy` ends in `detect_drop`): what a forger spends of a budget decides who is
/// blocked, never which port answers.
fn first_hit_rules(o: &mut String, table: &str, proto: &str, t: &Tripwire) {
    let chain = format!("detect_hit_{proto}");
    let flags = if proto == "tcp" { "tcp flags" } else { "0x0" };
    let (q, h) = (t.per_prefix_minute, t.per_minute);
    for r in [
        // A served port first: a legitimate new connection pays for one socket lookup
        // here, not for the blocked-source lookups (a blocked source's SYN to a served
        // port is dropped by the block check after this chain returns).
        "socket transparent 0-1 return".to_string(),
        "jump detect_cand".to_string(),
        "fib saddr type local goto detect_copy".to_string(),
        "ip saddr @detect_never4 goto detect_copy".to_string(),
        "ip6 saddr @detect_never6 goto detect_copy".to_string(),
        format!("add @detect_rl4 {{ ip saddr & 255.255.255.0 limit rate over {q}/minute burst {q} packets }} goto detect_copy"),
        format!("add @detect_rl6 {{ ip6 saddr & ffff:ffff:ffff:ffff:: limit rate over {q}/minute burst {q} packets }} goto detect_copy"),
        format!("limit rate over {h}/minute burst {h} packets goto detect_copy"),
        // Only conntrack's `new` (a SYN, a first datagram) had its checksum verified on
        // the way here (nf_conntrack_checksum=1, the default): a flag probe (`invalid`),
        // or any probe under a notrack rule (`untracked`), may be a --badsum packet the
        // stack discards, so only the sensor, which checks its checksum, may report it.
        "ct state != new goto detect_copy".to_string(),
        format!("meta nfproto ipv4 add @{HIT_V4} {{ ip saddr : meta l4proto . th dport . {flags} }}"),
        format!("meta nfproto ipv6 add @{HIT_V6} {{ ip6 saddr : meta l4proto . th dport . {flags} }}"),
        "jump detect_log".to_string(),
        "drop".to_string(),
    ] {
        let _ = writeln!(o, "add rule inet {table} {chain} {r}");
    }
}

/// `nft -f -` with `script` on its stdin, killed after `timeout`.
pub fn nft(script: &str, timeout: Duration) -> Result<(), String> {
    let r = exec::run(
        &["nft".to_string(), "-f".to_string(), "-".to_string()],
        Some(script.as_bytes()),
        timeout,
    );
    if r.outcome.success() {
        Ok(())
    } else {
        Err(format!("nft {}: {}", r.outcome.describe(), r.stderr.trim()))
    }
}

/// (Re)build the detection chain in one transaction.
pub fn apply_detection(cfg: &Config, spec: &DetectSpec) -> Result<(), String> {
    nft_table(cfg, &detection_script(&cfg.nft_table, spec))
}

/// Run one `nft -f -` transaction on the table.
fn nft_table(cfg: &Config, script: &str) -> Result<(), String> {
    nft(script, cfg.kill_timeout.max(Duration::from_secs(30))).map_err(|detail| {
        format!(
            "cannot create nftables table inet {}: {detail}",
            cfg.nft_table
        )
    })
}

/// What the kernel offers the detection chain, probed once at start in a throw-away
/// table (created and deleted in the same transaction, so nothing is left behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    /// nf_tables with conntrack, `log group` and `limit` work.
    pub nftables: Result<(), String>,
    /// The `socket` expression (CONFIG_NFT_SOCKET) works.
    pub socket: Result<(), String>,
}

pub fn probe_support(table: &str) -> Support {
    let t = format!("{table}_probe{}", std::process::id());
    let base = format!(
        "add table inet {t}
         add chain inet {t} c {{ type filter hook input priority -150; policy accept; }}
         add rule inet {t} c meta pkttype host ct state new limit rate over 1/second return
         add rule inet {t} c ct state invalid log group {} snaplen 64
",
        crate::kernel::capture::NFLOG_GROUP
    );
    let timeout = Duration::from_secs(10);
    let nftables = nft(
        &format!(
            "{base}delete table inet {t}
"
        ),
        timeout,
    );
    let socket = match &nftables {
        Ok(()) => nft(
            &format!(
                "{base}add rule inet {t} c tcp dport 1 socket transparent 0-1 return
                 delete table inet {t}
"
            ),
            timeout,
        ),
        Err(_) => Err("nf_tables is not usable".into()),
    };
    Support { nftables, socket }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Does the chain copy anything at all?
    fn watches(s: &DetectSpec) -> bool {
        !(s.stcp.is_empty() && s.sudp.is_empty() && s.atcp.is_empty() && s.audp.is_empty())
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            ranges(vec![5, 1, 2, 3, 9, 0, 2]),
            vec![(1, 3), (5, 5), (9, 9)]
        );
        assert_eq!(ranges(vec![65534, 65535]), vec![(65534, 65535)]);
        let ex: policy::PortSet = policy::PortSet::parse("113,139").unwrap();
        assert_eq!(advanced(1024, &ex), vec![(1, 112), (114, 138), (140, 1023)]);
        assert!(advanced(1, &ex).is_empty());
    }

    #[test]
    fn detection_shape() {
        let cfg = Config::parse(
            "TCP_PORTS=\"23,31337\"\nUDP_PORTS=\"161\"\nADVANCED_PORTS_TCP=\"1024\"\nADVANCED_EXCLUDE_TCP=\"113\"\n",
            std::path::Path::new("t.conf"),
        )
        .unwrap();
        let ign = IgnoreList::parse(
            "10.0.0.0/8\n192.0.2.7\n2001:db8::/32\n",
            std::path::Path::new("i"),
        )
        .unwrap();
        let spec = DetectSpec::new(
            &cfg,
            Modes(Modes::STCP | Modes::ATCP | Modes::TCP),
            &ign,
            true,
            Some(64),
        );
        assert!(watches(&spec));
        assert!(spec.sudp.is_empty() && spec.audp.is_empty());
        let s = detection_script("sentry", &spec);
        assert!(s.contains("hook input priority -150"), "{s}");
        assert!(
            s.contains("add element inet sentry detect_stcp { 23, 31337 }"),
            "{s}"
        );
        assert!(
            s.contains("add element inet sentry detect_atcp { 1-112, 114-1023 }"),
            "{s}"
        );
        assert!(
            s.contains(
                "add element inet sentry detect_ign4 { 10.0.0.0-10.255.255.255, 192.0.2.7 }"
            ),
            "{s}"
        );
        assert!(
            s.contains("detect_ign6 { 2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff }"),
            "{s}"
        );
        assert!(s.contains("tcp dport @detect_atcp socket transparent 0-1 return"));
        assert!(s.contains("meta l4proto tcp jump detect_tcp"));
        // RESTART_GRACE (on by default): a recently served port is no tripwire, before
        // any rule of the TCP chain, ACK-family included.
        let served = s
            .find("add rule inet sentry detect_tcp meta l4proto . th dport @detect_served return")
            .expect("served rule");
        assert!(served < s.find("goto detect_ack").unwrap(), "{s}");
        assert!(s.contains("detect_tcp ip6 daddr . meta l4proto . th dport @detect_served6 return"));
        assert!(s.contains("add set inet sentry detect_served4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }"));
        assert!(!s.contains("flush set inet sentry detect_served"));
        // The kinds PortSentry never saw: copies only, in their own chains.
        let ack = s
            .find("{ ack, fin | ack } goto detect_ack")
            .expect("ACK-family rule");
        let ret = s.find("tcp flags & (ack | rst) != 0 return").unwrap();
        assert!(
            ack < ret,
            "the ACK-family rule must come before the ACK return: {s}"
        );
        assert!(
            s.contains("add rule inet sentry detect_ack tcp dport @detect_stcp goto detect_copy")
        );
        assert!(s.contains("detect_ack tcp dport @detect_atcp socket transparent 0-1 return"));
        assert!(s.contains("meta l4proto sctp ct state new,untracked jump detect_sctp"));
        assert!(s.contains("detect_sctp sctp dport @detect_atcp goto detect_copy"));
        assert!(!s.contains("sctp dport @detect_atcp socket"));
        assert!(
            s.contains("meta l4proto != { 1, 2, 4, 6, 17, 33, 41, 47, 50, 51, 58, 89, 103, 112, 115, 132, 136 } ct state new,untracked jump detect_copy"),
            "{s}"
        );
        assert!(!s.contains("jump detect_udp"));
        assert!(
            s.contains("log prefix \"sentry invalid\" group 24135 snaplen 1280"),
            "{s}"
        );
        // Never deletes the table: its blocks must survive a rebuild.
        assert!(!s.contains("delete"));
        let no_socket = DetectSpec {
            socket_expr: false,
            ..spec
        };
        assert!(!detection_script("sentry", &no_socket).contains("socket"));
        // Stealth modes alone: no IP-protocol rule (that is the advanced modes' job).
        let stealth = DetectSpec::new(&cfg, Modes(Modes::STCP), &ign, true, None);
        assert!(!detection_script("sentry", &stealth).contains("meta l4proto !="));
        assert!(!watches(&DetectSpec::default()));
    }

    #[test]
    fn every_candidate_is_dropped_and_blocked_sources_keep_their_evidence() {
        let cfg = Config::parse(
            "TCP_PORTS=\"23\"\nBLOCK_TCP=\"1\"\n",
            std::path::Path::new("t.conf"),
        )
        .unwrap();
        let all = Modes(Modes::STCP | Modes::ATCP);
        let tw = Tripwire::from_config(&cfg, true);
        let spec =
            DetectSpec::new(&cfg, all, &IgnoreList::empty(), true, Some(64)).with_tripwire(tw, &[]);
        let s = detection_script("t", &spec);
        let rules = |chain: &str| -> Vec<&str> {
            let p = format!("add rule inet t {chain} ");
            s.lines()
                .filter_map(|l| l.strip_prefix(p.as_str()))
                .collect()
        };
        // Over every budget the probe is still dropped (the copy's rate limit too).
        assert_eq!(
            rules("detect_drop"),
            [
                "meta iif lo return",
                "meta l4proto sctp return",
                "socket transparent 0-1 return",
                "counter drop"
            ]
        );
        let copy = rules("detect_copy");
        assert_eq!(copy[0], "jump detect_cand");
        assert!(copy[1].ends_with("counter goto detect_drop"), "{copy:?}");
        assert_eq!(copy[3], "goto detect_drop");
        let hit = rules("detect_hit_tcp");
        assert_eq!(
            hit[..2],
            ["socket transparent 0-1 return", "jump detect_cand"]
        );
        assert!(hit
            .iter()
            .filter(|r| r.contains("limit rate over"))
            .all(|r| r.ends_with("goto detect_copy")));
        assert_eq!(hit.last(), Some(&"drop"));
        // A blocked source (either set, either map) is evidence, copied per source.
        let cand = rules("detect_cand");
        assert_eq!(cand.len(), 5, "{cand:?}");
        assert!(cand.iter().all(|r| r.ends_with("goto detect_seen")));
        assert!(rules("detect_seen")[0].contains("limit rate over 50/second"));
        // notrack'ed probes are candidates, logged as unverified.
        assert!(rules("detect_log")[1].starts_with("ct state invalid,untracked log"));
        // The block check covers the kernel's maps too, and forwarded traffic; an
        // established flow's packets (replies included) look nothing up.
        assert_eq!(rules("blocked").len(), 5);
        assert_eq!(
            rules("input")[..2],
            [
                "ct state established,related return",
                "meta pkttype != host goto blocked"
            ]
        );
        assert!(!s.contains("blocked_est"));
        // ANSWER_PROBES=1: nothing dropped for want of a block.
        let answer = DetectSpec {
            answer_probes: true,
            ..spec
        };
        assert!(!detection_script("t", &answer).contains("detect_drop counter drop"));
    }

    #[test]
    fn the_kernel_never_blocks_what_the_judge_never_blocks() {
        let (v4, v6) = kernel_never(&[
            "192.0.2.255".parse().unwrap(),
            "127.0.0.9".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ]);
        assert_eq!(
            v4,
            [
                "0.0.0.0-0.255.255.255",
                "127.0.0.0-127.255.255.255",
                "169.254.0.0-169.254.255.255",
                "192.0.2.255",
                "224.0.0.0-255.255.255.255"
            ]
        );
        assert!(
            v6.contains(&"fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff".to_string()),
            "{v6:?}"
        );
        assert!(v6.contains(&"2001:db8::1".to_string()));
        assert!(v6.contains(&"ff00::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".to_string()));
        assert_eq!(v6[0], "::-::ffff:ffff");
    }

    #[test]
    fn elements_statements() {
        let e = [
            SetElem {
                addr: "192.0.2.1".parse().unwrap(),
                timeout: None,
            },
            SetElem {
                addr: "2001:db8::1".parse().unwrap(),
                timeout: Some(Duration::from_secs(5)),
            },
            SetElem {
                addr: "192.0.2.2".parse().unwrap(),
                timeout: Some(Duration::from_millis(1500)),
            },
        ];
        assert_eq!(
            elements_script("t", &e, false),
            "add element inet t v4 { 192.0.2.1, 192.0.2.2 timeout 1500ms }\n\
             add element inet t v6 { 2001:db8::1 timeout 5000ms }\n"
        );
        assert_eq!(elements_script("t", &[], false), "");
        assert!(elements_script("t", &e[1..2], true).starts_with("add element inet t v6net {"));
    }

    #[test]
    fn script_shape() {
        let s = setup_script("sentry", 64);
        assert!(s.contains("set v4 { type ipv4_addr; flags timeout; }"));
        // After conntrack, replies in the host's own flows first: a block never cuts the
        // host off from a server it uses. Forwarded traffic is checked too (routers).
        assert!(!s.contains("prerouting"));
        assert!(s.contains("hook input priority -150"));
        assert!(s.contains("hook forward priority -150"));
        assert!(s.contains("add rule inet sentry input ct state established,related return\nadd rule inet sentry input goto blocked\n"), "{s}");
        assert!(s.contains("add rule inet sentry forward ct state established,related return\nadd rule inet sentry forward goto blocked"), "{s}");
        assert!(s.contains("ip saddr @v4 counter drop"));
        assert!(s.contains("ip6 saddr @v6 counter drop"));
        assert!(s.contains("ip6 saddr & ffff:ffff:ffff:ffff:: @v6net counter drop"));
        assert!(s.starts_with("table inet sentry {}\ndelete table inet sentry\n"));
    }

    /// The scripts against the real nft(8) and kernel, in a private network namespace.
    #[test]
    fn tripwire_only_for_a_first_probe_block_with_the_native_set() {
        let p = std::path::Path::new("t.conf");
        let cfg = |t: &str| Config::parse(t, p).unwrap();
        let on =
            Tripwire::from_config(&cfg("BLOCK_TCP=\"1\"\nBLOCK_RATE=\"600\"\n"), true).unwrap();
        assert!(on.tcp && !on.udp);
        assert_eq!((on.per_minute, on.per_prefix_minute), (300, 150));
        assert_eq!(on.timeout, HIT_TIMEOUT);
        let short =
            Tripwire::from_config(&cfg("BLOCK_UDP=\"1\"\nBLOCK_TIMEOUT=\"30\"\n"), true).unwrap();
        assert_eq!(short.timeout, Duration::from_secs(30));
        // A trigger above 0, log-only, or no native set: no first hit.
        assert!(
            Tripwire::from_config(&cfg("BLOCK_TCP=\"1\"\nSCAN_TRIGGER=\"2\"\n"), true).is_none()
        );
        assert!(Tripwire::from_config(&cfg("BLOCK_TCP=\"0\"\n"), true).is_none());
        assert!(Tripwire::from_config(&cfg("BLOCK_TCP=\"1\"\n"), false).is_none());
        // Without the socket expression the kernel cannot tell a served port: none either.
        let spec = DetectSpec::default().with_tripwire(Some(on), &[]);
        assert!(spec.tripwire.is_none());
    }

    #[test]
    fn kernel_accepts_the_chain() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED (needs root): kernel_accepts_the_chain");
            return;
        }
        let r = std::thread::spawn(|| -> Result<String, String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            let sup = probe_support("sentrytest");
            sup.nftables.clone()?;
            let cfg = Config::parse(
                "TCP_PORTS=\"23\"\nUDP_PORTS=\"161\"\nFIREWALL=\"nftables\"\nNFT_TABLE=\"sentrytest\"\n",
                std::path::Path::new("t.conf"),
            )
            .map_err(|e| format!("{e:?}"))?;
            build(&cfg, &[], &[]).map_err(|e| e.to_string())?;
            let ign = IgnoreList::parse("10.0.0.0/8\n2001:db8::1\n", std::path::Path::new("i")).unwrap();
            let all = Modes(Modes::STCP | Modes::SUDP | Modes::ATCP | Modes::AUDP);
            let spec = DetectSpec::new(&cfg, all, &ign, sup.socket.is_ok(), Some(64));
            apply_detection(&cfg, &spec).map_err(|e| e.to_string())?;
            // With the first hit (BLOCK_TCP=1, SCAN_TRIGGER=0) and a never-block address.
            let blocking = Config::parse(
                "TCP_PORTS=\"23\"\nBLOCK_TCP=\"1\"\nFIREWALL=\"nftables\"\nNFT_TABLE=\"sentrytest\"\n",
                std::path::Path::new("t.conf"),
            )
            .map_err(|e| format!("{e:?}"))?;
            let tw = Tripwire::from_config(&blocking, true);
            let gw: std::net::IpAddr = "192.0.2.254".parse().unwrap();
            let hit = DetectSpec::new(&blocking, all, &ign, sup.socket.is_ok(), Some(64)).with_tripwire(tw, &[gw]);
            apply_detection(&blocking, &hit).map_err(|e| e.to_string())?;
            let out = std::process::Command::new("nft")
                .args(["list", "table", "inet", "sentrytest"])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if sup.socket.is_ok()
                && !(text.contains("add @hit4 { ip saddr : meta l4proto . tcp dport . tcp flags }")
                    && text.contains("ip saddr @hit4 counter")
                    && text.contains("192.0.2.254"))
            {
                return Err(format!("first hit missing:\n{text}"));
            }
            // Twice: the rebuild of an existing chain works too, and keeps the block sets.
            let spec2 = DetectSpec::new(&cfg, Modes(Modes::STCP), &IgnoreList::empty(), sup.socket.is_ok(), Some(64));
            apply_detection(&cfg, &spec2).map_err(|e| e.to_string())?;
            let out = std::process::Command::new("nft")
                .args(["list", "table", "inet", "sentrytest"])
                .output()
                .map_err(|e| e.to_string())?;
            Ok(format!("socket: {:?}\n{}", sup.socket, String::from_utf8_lossy(&out.stdout)))
        })
        .join()
        .unwrap()
        .unwrap();
        assert!(r.contains("chain detect"), "{r}");
        assert!(r.contains("set v4"), "{r}");
        assert!(!r.contains("jump detect_udp"), "{r}");
        eprintln!("{r}");
    }

    /// Specs that reach every branch of [`detection_script`]: every mode with the first
    /// hit, the native sets, kernel never-block entries and RESTART_GRACE; then stealth
    /// only, without the socket expression or native sets, answering probes.
    fn golden_specs() -> [(&'static str, DetectSpec); 2] {
        let cfg = Config::parse(
            "TCP_PORTS=\"23,31337\"\nUDP_PORTS=\"161,162\"\nADVANCED_PORTS_TCP=\"1024\"\nADVANCED_EXCLUDE_TCP=\"113\"\nADVANCED_PORTS_UDP=\"600\"\nBLOCK_TCP=\"1\"\nBLOCK_UDP=\"1\"\n",
            std::path::Path::new("t.conf"),
        )
        .unwrap();
        let ign = IgnoreList::parse(
            "10.0.0.0/8\n192.0.2.7\n2001:db8::/32\n",
            std::path::Path::new("i"),
        )
        .unwrap();
        let all = Modes(Modes::TCP | Modes::STCP | Modes::SUDP | Modes::ATCP | Modes::AUDP);
        let never: Vec<std::net::IpAddr> =
            vec!["192.0.2.1".parse().unwrap(), "fe80::1".parse().unwrap()];
        let mut full = DetectSpec::new(&cfg, all, &ign, true, Some(64))
            .with_tripwire(Tripwire::from_config(&cfg, true), &never);
        full.served = true;
        let mut stealth = DetectSpec::new(&cfg, Modes(Modes::STCP), &ign, false, None);
        stealth.answer_probes = true;
        [("full", full), ("stealth", stealth)]
    }

    /// The script is what the kernel test and every deployment load: a refactoring of
    /// [`detection_script`] must leave it byte for byte as it is.
    /// After an intended change, `SENTRY_WRITE_GOLDEN=1 cargo test -p sentry-enforcer
    /// detection_script_is_byte` rewrites the stored scripts (review their diff).
    #[test]
    fn detection_script_is_byte_identical_to_the_stored_one() {
        let stored = [
            include_str!("testdata/detect_full.nft"),
            include_str!("testdata/detect_stealth.nft"),
        ];
        for ((name, spec), want) in golden_specs().into_iter().zip(stored) {
            let got = detection_script("sentry", &spec);
            if std::env::var_os("SENTRY_WRITE_GOLDEN").is_some() {
                let p = format!(
                    "{}/src/kernel/testdata/detect_{name}.nft",
                    env!("CARGO_MANIFEST_DIR")
                );
                std::fs::write(p, &got).unwrap();
                continue;
            }
            assert_eq!(got, want, "{name}");
        }
    }
}
