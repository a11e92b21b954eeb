//! sentry's nftables table: one fixed skeleton, `table.nft` (read it for the rules and
//! why each is there), filled with set elements and a few scalars, and the `nft -f -`
//! transactions that load it. Everything after start-up goes over netlink
//! ([`crate::kernel::netlink`]); nft(8) is used here because the table is built once and
//! its text form is what an administrator reads back with `nft list table`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::Duration;

use policy::{Config, IgnoreList};
use sentry_privsep::{Modes, NFLOG_PREFIX_INVALID, NFLOG_PREFIX_NEW, NOT_PROBE_PROTOCOLS};

use crate::effects::exec;
use crate::kernel::netlink::SetElem;

/// The table's rules, the same on every host; its header says how it is filled.
const SKELETON: &str = include_str!("table.nft");
/// The line after which the skeleton holds what only the detection script loads.
const DETECTION_PART: &str = "\n#@detection\n";

/// Names of the enforcer's block sets in the table.
pub const SET_V4: &str = "v4";
pub const SET_V6: &str = "v6";
/// The set of IPv6 networks (BLOCK_PREFIX6), looked up with the source masked.
pub const SET_V6NET: &str = "v6net";
/// The maps the kernel's first hit fills (SCAN_TRIGGER=0), which the enforcer audits.
pub const HIT_V4: &str = "hit4";
pub const HIT_V6: &str = "hit6";

/// The script that deletes the table and makes it again, empty: its block sets, the base
/// chains every block acts in, and the detection objects' declarations (the skeleton up
/// to its detection part). [`build`] adds the surviving blocks; the detection rules come
/// with [`detection_script`] once the sensor announces its modes.
pub fn setup_script(table: &str, prefix6: u8) -> Result<String, String> {
    let (shared, _) = SKELETON
        .split_once(DETECTION_PART)
        .ok_or("table.nft has no detection part")?;
    let body = render(shared, table, &DetectSpec::blocks_only(Some(prefix6)))?;
    Ok(format!(
        "table inet {table} {{}}\ndelete table inet {table}\n{body}"
    ))
}

/// `add element` statements for `elems` (appended to [`setup_script`]): single addresses
/// into `v4`/`v6`, or, with `nets`, IPv6 network addresses into `v6net`.
pub fn elements_script(table: &str, elems: &[SetElem], nets: bool) -> String {
    /// One element as nft writes it, formatted straight into the script.
    struct Item<'a>(&'a SetElem);
    impl Display for Item<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0.timeout {
                Some(t) => write!(f, "{} timeout {}ms", self.0.addr, t.as_millis().max(1)),
                None => write!(f, "{}", self.0.addr),
            }
        }
    }
    let (mut out, v6set) = (String::new(), if nets { SET_V6NET } else { SET_V6 });
    for (set, v4) in [(SET_V4, true), (v6set, false)] {
        let mine = elems.iter().filter(|e| e.addr.is_ipv4() == v4);
        elements(&mut out, table, set, mine.map(Item));
    }
    out
}

/// Delete and recreate the table with `hosts` and IPv6 `nets` in it, in one transaction,
/// so a restart never opens a window in which the surviving blocks pass.
pub fn build(cfg: &Config, hosts: &[SetElem], nets: &[SetElem]) -> Result<(), String> {
    let mut script = setup_script(&cfg.nft_table, cfg.block_prefix6)?;
    script.push_str(&elements_script(&cfg.nft_table, hosts, false));
    script.push_str(&elements_script(&cfg.nft_table, nets, true));
    nft_table(cfg, &script)
}

/// What fills the skeleton's detection part: derived from the policy and the modes the
/// sensor announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectSpec {
    /// Interval items of the skeleton's static sets, by set: the watched ports
    /// (`detect_stcp`, `detect_sudp`, `detect_atcp`, `detect_audp`), the ignore list
    /// (`detect_ign4`/`6`), the IP protocols a probe may name (`detect_ipproto`) and what
    /// the first hit never blocks (`detect_never4`/`6`, [`kernel_never`]). A set not named
    /// here is empty, and the rules that look it up match nothing.
    pub sets: BTreeMap<&'static str, Vec<String>>,
    /// The kernel has the `socket` expression (CONFIG_NFT_SOCKET): advanced modes skip
    /// served ports in the kernel. Without it the sensor's own listener check does it.
    pub socket_expr: bool,
    /// The in-kernel first hit (SCAN_TRIGGER=0 with BLOCK_*=1 and the native set); never
    /// without `socket_expr` ([`DetectSpec::with_tripwire`]): its chains look sockets up.
    pub tripwire: Option<Tripwire>,
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
}

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
    (
        items(v4, |x: u32| x.checked_add(1), Ipv4Addr::from),
        items(v6, |x: u128| x.checked_add(1), Ipv6Addr::from),
    )
}

/// The interval items of `ports` (port 0 is none).
fn ports(ports: impl Iterator<Item = u16>) -> Vec<String> {
    let ports = ports.filter(|&p| p != 0).map(|p| (p, p)).collect();
    items(ports, |p: u16| p.checked_add(1), |p| p)
}

/// An advanced mode's ports: those below `limit`, but for `exclude`.
fn advanced(limit: u16, exclude: &policy::PortSet) -> Vec<String> {
    ports((1..limit).filter(|p| !exclude.contains(*p)))
}

/// `v`'s intervals merged ([`policy::merge_ranges`]; `next`: a value's successor), as the
/// items an interval set needs (`show`: what is written of a value).
fn items<T: Ord + Copy, D: PartialEq + Display>(
    v: Vec<(T, T)>,
    next: impl Fn(T) -> Option<T>,
    show: impl Fn(T) -> D,
) -> Vec<String> {
    policy::merge_ranges(v, next)
        .into_iter()
        .map(|(a, b)| item(show(a), show(b)))
        .collect()
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
        let mut s = Self {
            socket_expr,
            answer_probes: cfg.answer_probes,
            ..Self::blocks_only(native)
        };
        let mut watch = |mode, set, items: Vec<String>| {
            if modes.has(mode) && !items.is_empty() {
                s.sets.insert(set, items);
            }
        };
        watch(Modes::STCP, "detect_stcp", ports(cfg.tcp_ports.iter()));
        watch(Modes::SUDP, "detect_sudp", ports(cfg.udp_ports.iter()));
        watch(
            Modes::ATCP,
            "detect_atcp",
            advanced(cfg.advanced_ports_tcp, &cfg.advanced_exclude_tcp),
        );
        watch(
            Modes::AUDP,
            "detect_audp",
            advanced(cfg.advanced_ports_udp, &cfg.advanced_exclude_udp),
        );
        // IP-protocol probes are the advanced modes' job.
        if s.sets.contains_key("detect_atcp") || s.sets.contains_key("detect_audp") {
            s.sets.insert("detect_ipproto", probe_protocols());
        }
        let (v4, v6) = (ignore.ranges_v4(), ignore.ranges_v6());
        s.sets
            .insert("detect_ign4", v4.map(|(a, b)| item(a, b)).collect());
        s.sets
            .insert("detect_ign6", v6.map(|(a, b)| item(a, b)).collect());
        s
    }

    /// The same, with the in-kernel first hit and the addresses it must never block.
    /// Without the `socket` expression there is no first hit: the kernel could not tell a
    /// served port from a tripwire, and only the sensor's listener table can.
    pub fn with_tripwire(mut self, t: Option<Tripwire>, never: &[std::net::IpAddr]) -> Self {
        self.tripwire = t.filter(|_| self.socket_expr);
        let (v4, v6) = kernel_never(never);
        self.sets.insert("detect_never4", v4);
        self.sets.insert("detect_never6", v6);
        self
    }

    /// No candidates (basic modes listen on their own sockets), only the block check; the
    /// first NFLOG group (see `crate::kernel::capture::GROUPS`).
    pub fn blocks_only(native: Option<u8>) -> Self {
        Self {
            sets: BTreeMap::new(),
            socket_expr: false,
            tripwire: None,
            native,
            answer_probes: false,
            nflog_group: crate::kernel::capture::NFLOG_GROUP,
        }
    }
}

/// The detection script: the whole skeleton for `spec`, then the elements of its static
/// sets (flushed by the skeleton). It works whether the table exists (FIREWALL="nftables":
/// its block sets are left alone) or not (any other FIREWALL: the table then holds only
/// the detection objects), and never deletes anything.
pub fn detection_script(table: &str, spec: &DetectSpec) -> Result<String, String> {
    let mut o = render(SKELETON, table, spec)?;
    // The first hit's protocols come from the tripwire itself, so that no probe is ever
    // sent to a first-hit chain that was not loaded.
    let t = spec.tripwire.iter();
    let hit = t.flat_map(|t| [(t.tcp, "tcp"), (t.udp, "udp")]);
    let hit = hit.filter(|(on, _)| *on).map(|(_, p)| p.to_string());
    elements(&mut o, table, "detect_hitproto", hit);
    for (set, items) in &spec.sets {
        elements(&mut o, table, set, items.iter().cloned());
    }
    Ok(o)
}

/// `text` (the skeleton or its shared part) for `table` and `spec`: the lines whose tag
/// is off dropped, the scalars filled in. The first hit's budgets have a value only with
/// the first hit, so a rule of it left in without one is an error, not a guess.
fn render(text: &str, table: &str, spec: &DetectSpec) -> Result<String, String> {
    let tags = [
        ("native", spec.native.is_some()),
        ("hit", spec.tripwire.is_some()),
        ("socket", spec.socket_expr),
        ("nosocket", !spec.socket_expr),
        ("drop", !spec.answer_probes),
    ];
    let t = spec.tripwire;
    let (size, timeout) = t.map_or((1, HIT_TIMEOUT), |t| (t.size, t.timeout));
    let mask = std::net::Ipv6Addr::from(policy::prefix6_bits(spec.native.unwrap_or(64)));
    let mut vars = vec![
        ("TABLE", table.to_string()),
        ("MASK6", mask.to_string()),
        ("HIT_SIZE", size.to_string()),
        ("HIT_TIMEOUT", timeout.as_secs().max(1).to_string()),
        ("GROUP", spec.nflog_group.to_string()),
        ("SNAPLEN", crate::kernel::capture::NFLOG_SNAPLEN.to_string()),
        ("PREFIX_NEW", NFLOG_PREFIX_NEW.to_string()),
        ("PREFIX_INVALID", NFLOG_PREFIX_INVALID.to_string()),
    ];
    if let Some(t) = t {
        vars.push(("HIT_RATE", t.per_minute.to_string()));
        vars.push(("HIT_PREFIX_RATE", t.per_prefix_minute.to_string()));
    }
    fill(&select(text, &tags)?, &vars)
}

/// The lines of `text` that go to nft: blank and comment-only lines dropped, and a line
/// ending in `# if:TAG` kept (without its tag) only when TAG is on in `tags`. An unknown
/// tag is an error, so that a typo never silently drops a rule.
fn select(text: &str, tags: &[(&str, bool)]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for line in text.lines().map(str::trim_end) {
        if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (rule, on) = match line.split_once("# if:") {
            None => (line, true),
            Some((rule, tag)) => match tags.iter().find(|(name, _)| *name == tag.trim()) {
                Some((_, on)) => (rule.trim_end(), *on),
                None => return Err(format!("table.nft: unknown tag {tag:?}")),
            },
        };
        if on {
            out.push_str(rule);
            out.push('\n');
        }
    }
    Ok(out)
}

/// `text` with each `@NAME@` replaced by NAME's value in `vars` (a value never holds an
/// `@`: numbers, an address, the fixed prefixes, the table's name, which the policy
/// checks is an identifier). A placeholder left without a value is an error: nft never
/// gets a rule with a hole in it. nft's own `@set` references are lower case.
fn fill(text: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let mut s = text.to_string();
    for (name, value) in vars {
        s = s.replace(&format!("@{name}@"), value);
    }
    let left = s
        .split('@')
        .skip(1)
        .find(|w| w.starts_with(char::is_uppercase));
    match left {
        Some(name) => Err(format!("table.nft: no value for @{name}@")),
        None => Ok(s),
    }
}

/// `add element` lines for `items` of `set`, 1000 to a statement, written straight into
/// `out`: a restore's 100,000 blocks never exist as 100,000 separate strings.
fn elements<D: Display>(
    out: &mut String,
    table: &str,
    set: &str,
    items: impl IntoIterator<Item = D>,
) {
    use std::fmt::Write as _;
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let _ = write!(out, "add element inet {table} {set} {{ ");
        for (k, i) in items.by_ref().take(1000).enumerate() {
            let _ = write!(out, "{}{i}", if k > 0 { ", " } else { "" });
        }
        out.push_str(" }\n");
    }
}

/// An interval set's item: `lo`, or `lo-hi`.
fn item<T: PartialEq + Display>(lo: T, hi: T) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// The IP protocols a probe may name: all but [`NOT_PROBE_PROTOCOLS`] (the ones the host's
/// stack, tunnels and routing daemons use, and TCP/UDP/SCTP), as interval items.
fn probe_protocols() -> Vec<String> {
    let probes = (0..=u8::MAX).filter(|p| !NOT_PROBE_PROTOCOLS.contains(p));
    items(
        probes.map(|p| (p, p)).collect(),
        |p: u8| p.checked_add(1),
        |p| p,
    )
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
    nft_table(cfg, &detection_script(&cfg.nft_table, spec)?)
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

/// What the kernel offers the detection chain, probed once at start by loading the
/// detection script itself into a throw-away table (created and deleted in the same
/// transaction, so nothing is left behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    /// nf_tables takes the detection script without the `socket` expression (conntrack,
    /// `log group`, `limit`, the meters, ...).
    pub nftables: Result<(), String>,
    /// And with it (CONFIG_NFT_SOCKET).
    pub socket: Result<(), String>,
}

pub fn probe_support(table: &str) -> Support {
    let t = format!("{table}_probe{}", std::process::id());
    let probe = |spec: &DetectSpec| {
        let script = detection_script(&t, spec)?;
        nft(
            &format!("{script}delete table inet {t}\n"),
            Duration::from_secs(10),
        )
    };
    let nftables = probe(&DetectSpec::blocks_only(None));
    let socket = match &nftables {
        Ok(()) => probe(&DetectSpec {
            socket_expr: true,
            ..DetectSpec::blocks_only(None)
        }),
        Err(_) => Err("nf_tables is not usable".into()),
    };
    Support { nftables, socket }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Does the chain copy anything at all?
    fn watches(s: &DetectSpec) -> bool {
        ["detect_stcp", "detect_sudp", "detect_atcp", "detect_audp"]
            .iter()
            .any(|set| s.sets.contains_key(set))
    }

    /// The rules `script` puts in `chain`, in order (a chain's rules may come in more than
    /// one block: the block chain's first-hit lookups are in the detection part).
    fn rules<'a>(script: &'a str, chain: &str) -> Vec<&'a str> {
        let open = format!("chain {chain} {{");
        let mut inside = false;
        let mut out = Vec::new();
        for l in script.lines().map(str::trim) {
            if l == open {
                inside = true;
            } else if l == "}" {
                inside = false;
            } else if inside {
                out.push(l);
            }
        }
        out
    }

    #[test]
    fn port_ranges() {
        assert_eq!(ports([5, 1, 2, 3, 9, 0, 2].into_iter()), ["1-3", "5", "9"]);
        assert_eq!(ports([65534, 65535].into_iter()), ["65534-65535"]);
        let ex: policy::PortSet = policy::PortSet::parse("113,139").unwrap();
        assert_eq!(advanced(1024, &ex), ["1-112", "114-138", "140-1023"]);
        assert!(advanced(1, &ex).is_empty());
    }

    #[test]
    fn tags_keep_or_drop_a_line() {
        let text = "# a comment # if:on\n\n\tkept\n\tsocket rule\t# if:on\n\tother\t# if:off\n";
        let tags = [("on", true), ("off", false)];
        assert_eq!(select(text, &tags).unwrap(), "\tkept\n\tsocket rule\n");
        // A misspelt tag would drop its rule silently: refused.
        let e = select("\trule # if:sokcet\n", &tags).unwrap_err();
        assert!(e.contains("sokcet"), "{e}");
    }

    #[test]
    fn placeholders_are_filled_and_never_left() {
        let vars = [("T", "t".to_string()), ("G", "7".to_string())];
        assert_eq!(
            fill("table inet @T@ ip saddr @v4 group @G@ @G@ a@b @", &vars).unwrap(),
            "table inet t ip saddr @v4 group 7 7 a@b @"
        );
        let e = fill("limit rate over @HIT_RATE@/minute", &vars).unwrap_err();
        assert!(e.contains("@HIT_RATE@"), "{e}");
        // The first hit's budgets have values only with the first hit: without it its
        // rules are dropped, and one left in would be refused, not loaded with a guess.
        assert!(render(SKELETON, "t", &DetectSpec::blocks_only(None)).is_ok());
        let e = render(
            "\tlimit rate over @HIT_RATE@/minute\n",
            "t",
            &DetectSpec::blocks_only(None),
        );
        assert!(e.unwrap_err().contains("@HIT_RATE@"));
        let tw = Tripwire::from_config(
            &Config::parse("BLOCK_TCP=\"1\"\n", std::path::Path::new("t")).unwrap(),
            true,
        );
        let hit = DetectSpec {
            socket_expr: true,
            ..DetectSpec::blocks_only(None)
        }
        .with_tripwire(tw, &[]);
        assert!(render(SKELETON, "t", &hit).unwrap().contains("add @hit4"));
    }

    /// The names the rest of the enforcer and the worker use are the skeleton's.
    #[test]
    fn the_skeleton_declares_what_the_code_names() {
        let spec = DetectSpec::blocks_only(Some(64));
        let s = detection_script("t", &spec).unwrap();
        use crate::kernel::served;
        for set in [
            SET_V4,
            SET_V6,
            SET_V6NET,
            served::SET_ANY,
            served::SET_V4,
            served::SET_V6,
        ] {
            assert!(s.contains(&format!("\tset {set} {{ type ")), "{set}");
        }
        for map in [HIT_V4, HIT_V6] {
            assert!(s.contains(&format!("\tmap {map} {{ type ")), "{map}");
        }
        assert_eq!(SKELETON.matches(DETECTION_PART).count(), 1);
        // A spec names only sets the skeleton flushes and refills, never a kept one.
        let (_, full) = &golden_specs()[0];
        assert_eq!(full.sets.len(), 9, "{full:?}");
        for set in full.sets.keys() {
            assert!(
                SKELETON.contains(&format!("\nflush set inet @TABLE@ {set}\n")),
                "{set}"
            );
        }
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
        assert!(!spec.sets.contains_key("detect_sudp") && !spec.sets.contains_key("detect_audp"));
        let s = detection_script("sentry", &spec).unwrap();
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
        // No UDP mode, no first hit: their sets stay empty.
        for set in ["detect_sudp", "detect_audp", "detect_hitproto"] {
            assert!(
                !s.contains(&format!("add element inet sentry {set} ")),
                "{s}"
            );
        }
        let tcp = rules(&s, "detect_tcp");
        assert!(tcp.contains(&"tcp dport @detect_atcp socket transparent 0-1 return"));
        assert!(rules(&s, "input").contains(&"meta l4proto tcp jump detect_tcp"));
        // RESTART_GRACE: a recently served port is no tripwire, before any rule of the
        // TCP chain, ACK-family included.
        assert_eq!(tcp[0], "meta l4proto . th dport @detect_served return");
        assert_eq!(
            tcp[2],
            "ip6 daddr . meta l4proto . th dport @detect_served6 return"
        );
        assert!(s.contains(
            "set detect_served4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }"
        ));
        assert!(!s.contains("flush set inet sentry detect_served"));
        // The kinds PortSentry never saw: copies only, in their own chains.
        let ack = tcp
            .iter()
            .position(|r| r.ends_with("{ ack, fin | ack } goto detect_ack"))
            .expect("ACK-family rule");
        let ret = tcp
            .iter()
            .position(|r| *r == "tcp flags & (ack | rst) != 0 return");
        assert_eq!(
            ret,
            Some(ack + 1),
            "the ACK-family rule must come before the ACK return"
        );
        assert_eq!(
            rules(&s, "detect_ack"),
            [
                "tcp dport @detect_stcp goto detect_copy",
                "tcp dport @detect_atcp socket transparent 0-1 return",
                "tcp dport @detect_atcp goto detect_copy"
            ]
        );
        assert!(rules(&s, "input")
            .contains(&"meta l4proto sctp ct state new,untracked jump detect_sctp"));
        assert_eq!(
            rules(&s, "detect_sctp"),
            [
                "sctp dport @detect_stcp goto detect_copy",
                "sctp dport @detect_atcp goto detect_copy"
            ]
        );
        // IP-protocol probes: every protocol but the ones the host itself uses.
        assert!(
            s.contains("add element inet sentry detect_ipproto { 0, 3, 5, 7-16, 18-32, 34-40, 42-46, 48-49, 52-57, 59-88, 90-102, 104-111, 113-114, 116-131, 133-135, 137-255 }"),
            "{s}"
        );
        assert!(rules(&s, "input")
            .contains(&"meta l4proto @detect_ipproto ct state new,untracked jump detect_copy"));
        assert!(
            s.contains("log prefix \"sentry invalid\" group 24135 snaplen 1280"),
            "{s}"
        );
        // Never deletes the table: its blocks must survive a rebuild.
        assert!(!s.contains("delete"));
        // Neither comments nor tags reach nft.
        assert!(!s.lines().any(|l| l.contains('#')), "{s}");
        let no_socket = DetectSpec {
            socket_expr: false,
            ..spec
        };
        let n = detection_script("sentry", &no_socket).unwrap();
        assert!(!n.contains("socket"), "{n}");
        assert_eq!(
            rules(&n, "detect_drop"),
            [
                "meta iif lo return",
                "meta l4proto sctp return",
                "meta l4proto { tcp, udp } return",
                "counter drop"
            ]
        );
        // Stealth modes alone: no IP-protocol probes (that is the advanced modes' job).
        let stealth = DetectSpec::new(&cfg, Modes(Modes::STCP), &ign, true, None);
        let st = detection_script("sentry", &stealth).unwrap();
        assert!(
            !st.contains("add element inet sentry detect_ipproto"),
            "{st}"
        );
        // Without the native sets the table holds only the detection objects.
        assert!(!st.contains("@v4") && !st.contains("set v4"), "{st}");
        assert!(rules(&st, "blocked").is_empty());
        assert!(!watches(&DetectSpec::blocks_only(Some(64))));
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
        let s = detection_script("t", &spec).unwrap();
        // Over every budget the probe is still dropped (the copy's rate limit too).
        assert_eq!(
            rules(&s, "detect_drop"),
            [
                "meta iif lo return",
                "meta l4proto sctp return",
                "socket transparent 0-1 return",
                "counter drop"
            ]
        );
        let copy = rules(&s, "detect_copy");
        assert_eq!(copy[0], "jump detect_cand");
        assert!(copy[1].ends_with("counter goto detect_drop"), "{copy:?}");
        assert_eq!(copy[3], "goto detect_drop");
        // TCP takes the first hit, UDP not: a stealth port's probe goes to it before the
        // copy; an advanced port's before the socket lookup (the hit chain has its own).
        assert!(
            s.contains("add element inet t detect_hitproto { tcp }\n"),
            "{s}"
        );
        let tcp = rules(&s, "detect_tcp");
        let at = |r: &str| tcp.iter().position(|x| *x == r).expect(r);
        assert!(
            at("meta l4proto @detect_hitproto tcp dport @detect_stcp goto detect_hit_tcp")
                < at("tcp dport @detect_stcp goto detect_copy")
        );
        assert!(
            at("meta l4proto @detect_hitproto tcp dport @detect_atcp goto detect_hit_tcp")
                < at("tcp dport @detect_atcp socket transparent 0-1 return")
        );
        let hit = rules(&s, "detect_hit_tcp");
        assert_eq!(
            hit[..2],
            ["socket transparent 0-1 return", "jump detect_cand"]
        );
        assert!(hit
            .iter()
            .filter(|r| r.contains("limit rate over"))
            .all(|r| r.ends_with("goto detect_copy")));
        assert!(
            hit.contains(&"limit rate over 300/minute burst 300 packets goto detect_copy"),
            "{hit:?}"
        );
        assert!(hit.contains(&"ct state != new goto detect_copy"));
        assert_eq!(hit.last(), Some(&"drop"));
        // A blocked source (either set, either map) is evidence, copied per source.
        let cand = rules(&s, "detect_cand");
        assert_eq!(cand.len(), 5, "{cand:?}");
        assert!(cand.iter().all(|r| r.ends_with("goto detect_seen")));
        assert!(rules(&s, "detect_seen")[0].contains("limit rate over 50/second"));
        // notrack'ed probes are candidates, logged as unverified.
        assert!(rules(&s, "detect_log")[1].starts_with("ct state invalid,untracked log"));
        // The block check covers the kernel's maps too, and forwarded traffic; an
        // established flow's packets (replies included) look nothing up.
        assert_eq!(rules(&s, "blocked").len(), 5);
        assert_eq!(
            rules(&s, "input")[..2],
            [
                "ct state established,related return",
                "meta pkttype != host goto blocked"
            ]
        );
        assert_eq!(
            rules(&s, "forward"),
            ["ct state established,related return", "goto blocked"]
        );
        assert!(s.contains("map hit4 { type ipv4_addr : inet_proto . inet_service . tcp_flag; flags dynamic, timeout; size 10000; timeout 120s; }"), "{s}");
        // ANSWER_PROBES=1: nothing dropped for want of a block.
        let answer = DetectSpec {
            answer_probes: true,
            ..spec.clone()
        };
        let a = detection_script("t", &answer).unwrap();
        assert!(!rules(&a, "detect_drop").contains(&"counter drop"), "{a}");
        // Without the first hit none of its rules is loaded (`fib` and the meters need
        // kernel support the rest does not), no protocol goes to it, and its maps (kept
        // for their elements) are declared at their smallest.
        let off = DetectSpec {
            tripwire: None,
            ..spec
        };
        let o = detection_script("t", &off).unwrap();
        assert!(rules(&o, "detect_hit_tcp").is_empty() && rules(&o, "detect_hit_udp").is_empty());
        assert_eq!(rules(&o, "blocked").len(), 3);
        assert!(!o.contains("add element inet t detect_hitproto"), "{o}");
        assert!(o.contains("size 1; timeout 120s;"), "{o}");
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
        // 1000 to a statement: 2,001 addresses are three statements, each closed.
        let many: Vec<SetElem> = (0..2001u32)
            .map(|i| SetElem {
                addr: std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
                timeout: None,
            })
            .collect();
        let s = elements_script("t", &many, false);
        assert_eq!(s.lines().count(), 3, "{}", &s[..200]);
        assert!(s
            .lines()
            .all(|l| l.starts_with("add element inet t v4 { ") && l.ends_with(" }")));
        assert_eq!(s.matches(", ").count(), 2001 - 3);
        assert!(s.ends_with("add element inet t v4 { 10.0.7.208 }\n"));
    }

    #[test]
    fn script_shape() {
        let s = setup_script("sentry", 64).unwrap();
        assert!(s.starts_with("table inet sentry {}\ndelete table inet sentry\n"));
        assert!(s.contains("set v4 { type ipv4_addr; flags timeout; }"));
        // After conntrack, replies in the host's own flows first: a block never cuts the
        // host off from a server it uses. Forwarded traffic is checked too (routers).
        assert!(!s.contains("prerouting"));
        assert!(s.contains("hook input priority -150"));
        assert!(s.contains("hook forward priority -150"));
        let input = rules(&s, "input");
        assert_eq!(input[0], "ct state established,related return");
        assert_eq!(input.last(), Some(&"goto blocked"));
        assert_eq!(
            rules(&s, "forward"),
            ["ct state established,related return", "goto blocked"]
        );
        assert_eq!(
            rules(&s, "blocked"),
            [
                "ip saddr @v4 counter drop",
                "ip6 saddr @v6 counter drop",
                "ip6 saddr & ffff:ffff:ffff:ffff:: @v6net counter drop"
            ]
        );
        assert!(setup_script("sentry", 48)
            .unwrap()
            .contains("ip6 saddr & ffff:ffff:ffff:: @v6net"));
        // Only the shared part: no detection rule, so the block sets need no more of the
        // kernel than before the sensor came (no log, limit, fib, socket, meters).
        for absent in [
            "hit4",
            "detect_served",
            " log ",
            "limit",
            "fib",
            "socket",
            "@detect_ev4",
        ] {
            assert!(!s.contains(absent), "{absent}: {s}");
        }
        // The detection chains it jumps to are declared, empty.
        assert!(s.contains("chain detect_tcp { }"), "{s}");
        assert!(rules(&s, "detect_tcp").is_empty());
    }

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
        let spec = DetectSpec::blocks_only(Some(64)).with_tripwire(Some(on), &[]);
        assert!(spec.tripwire.is_none());
    }

    /// The scripts against the real nft(8) and kernel, in a private network namespace:
    /// every variant of the skeleton loads, and a rebuild keeps the block sets, the
    /// first hit's maps, the served sets and the meters.
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
            let list = |what: &[&str]| -> Result<String, String> {
                let out = std::process::Command::new("nft")
                    .arg("list")
                    .args(what)
                    .output()
                    .map_err(|e| e.to_string())?;
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            };
            let cfg = Config::parse(
                "TCP_PORTS=\"23\"\nUDP_PORTS=\"161\"\nFIREWALL=\"nftables\"\nNFT_TABLE=\"sentrytest\"\n",
                std::path::Path::new("t.conf"),
            )
            .map_err(|e| format!("{e:?}"))?;
            let blocked = SetElem { addr: "192.0.2.9".parse().unwrap(), timeout: None };
            build(&cfg, &[blocked], &[])?;
            let ign = IgnoreList::parse("10.0.0.0/8\n2001:db8::1\n", std::path::Path::new("i")).unwrap();
            let all = Modes(Modes::STCP | Modes::SUDP | Modes::ATCP | Modes::AUDP);
            let spec = DetectSpec::new(&cfg, all, &ign, sup.socket.is_ok(), Some(64));
            apply_detection(&cfg, &spec)?;
            // With the first hit (BLOCK_TCP=1, SCAN_TRIGGER=0) and a never-block address.
            let blocking = Config::parse(
                "TCP_PORTS=\"23\"\nBLOCK_TCP=\"1\"\nFIREWALL=\"nftables\"\nNFT_TABLE=\"sentrytest\"\n",
                std::path::Path::new("t.conf"),
            )
            .map_err(|e| format!("{e:?}"))?;
            let tw = Tripwire::from_config(&blocking, true);
            let gw: std::net::IpAddr = "192.0.2.254".parse().unwrap();
            let hit = DetectSpec::new(&blocking, all, &ign, sup.socket.is_ok(), Some(64)).with_tripwire(tw, &[gw]);
            apply_detection(&blocking, &hit)?;
            let text = list(&["table", "inet", "sentrytest"])?;
            if sup.socket.is_ok()
                && !(text.contains("add @hit4 { ip saddr : meta l4proto . tcp dport . tcp flags }")
                    && text.contains("ip saddr @hit4 counter")
                    && text.contains("192.0.2.254"))
            {
                return Err(format!("first hit missing:\n{text}"));
            }
            // What the kernel and the worker put in the dynamic sets meanwhile.
            nft(
                "add element inet sentrytest hit4 { 198.51.100.1 : tcp . 23 . syn }\n\
                 add element inet sentrytest detect_served { tcp . 8080 timeout 60s }\n\
                 add element inet sentrytest detect_ev4 { 198.51.100.2 timeout 60s }\n",
                Duration::from_secs(10),
            )?;
            // Every other variant, and a rebuild of the existing chains: nothing kept is lost.
            let answering = DetectSpec { answer_probes: true, socket_expr: false, ..spec.clone() };
            let only_blocks = DetectSpec::blocks_only(None);
            let spec2 = DetectSpec::new(&cfg, Modes(Modes::STCP), &IgnoreList::empty(), sup.socket.is_ok(), Some(64));
            for s in [&answering, &only_blocks, &spec2] {
                apply_detection(&cfg, s)?;
            }
            let text = list(&["table", "inet", "sentrytest"])?;
            for kept in ["192.0.2.9", "198.51.100.1", "tcp . 8080", "198.51.100.2"] {
                if !text.contains(kept) {
                    return Err(format!("{kept} lost in a rebuild:\n{text}"));
                }
            }
            // The static sets were refilled: UDP is no longer watched.
            if list(&["set", "inet", "sentrytest", "detect_sudp"])?.contains("elements") {
                return Err(format!("detect_sudp not emptied:\n{text}"));
            }
            Ok(format!("socket: {:?}\n{text}", sup.socket))
        })
        .join()
        .unwrap()
        .unwrap();
        assert!(r.contains("chain detect"), "{r}");
        assert!(r.contains("set v4"), "{r}");
        eprintln!("{r}");
    }

    /// Specs that turn every tag of the skeleton on, then off: every mode with the first
    /// hit, the native sets and kernel never-block entries; then stealth only, without
    /// the socket expression or native sets, answering probes.
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
        let full = DetectSpec::new(&cfg, all, &ign, true, Some(64))
            .with_tripwire(Tripwire::from_config(&cfg, true), &never);
        let mut stealth = DetectSpec::new(&cfg, Modes(Modes::STCP), &ign, false, None);
        stealth.answer_probes = true;
        [("full", full), ("stealth", stealth)]
    }

    /// The script is what the kernel test and every deployment load: a change of the
    /// skeleton or of its filling must leave it byte for byte as it is, or show the
    /// difference for review.
    /// After an intended change, `SENTRY_WRITE_GOLDEN=1 cargo test -p sentry-enforcer
    /// detection_script_is_byte` rewrites the stored scripts (review their diff).
    #[test]
    fn detection_script_is_byte_identical_to_the_stored_one() {
        let stored = [
            include_str!("testdata/detect_full.nft"),
            include_str!("testdata/detect_stealth.nft"),
        ];
        for ((name, spec), want) in golden_specs().into_iter().zip(stored) {
            let got = detection_script("sentry", &spec).unwrap();
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
