//! `portsentry.conf` / `sentry.conf`: PortSentry 1.2 syntax, strictly validated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{lines, read_text, ConfigError, ConfigErrors};
use crate::ignore::IgnoreList;
use crate::ports::{parse_port, PortSet};
use crate::template::{CommandTemplate, LineTemplate, TemplateError};

/// Where sentry looks first.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sentry/sentry.conf";
/// Where PortSentry keeps its configuration (used when only that exists).
pub const PORTSENTRY_CONFIG_PATH: &str = "/etc/portsentry/portsentry.conf";

/// `BLOCK_TCP` / `BLOCK_UDP`.
/// Which BLOCK_* key a probe falls under: TCP and UDP scans PortSentry knew, or the
/// others (SCTP INIT, IP-protocol probes, ACK and Maimon scans: BLOCK_OTHER_SCANS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanClass {
    Tcp,
    Udp,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockMode {
    /// 0: detect and log only.
    LogOnly = 0,
    /// 1: run the configured blocking actions.
    Block = 1,
    /// 2: run `KILL_RUN_CMD` only.
    CommandOnly = 2,
}

impl BlockMode {
    /// The key's value: 0, 1 or 2.
    pub fn as_num(self) -> u8 {
        self as u8
    }
}

/// `FIREWALL`: the native blocking backend of the enforcer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    None,
    /// One nftables table with an address set per family.
    Nftables,
}

/// Where [`Config::firewall`] came from: a PortSentry configuration has no `FIREWALL`
/// key, and still gets the native set (where the kernel has nf_tables) in front of its
/// KILL_* actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallOrigin {
    /// `FIREWALL` not set: nftables when the kernel offers it, else the KILL_* actions only.
    Default,
    /// Set in the file: `nftables` must work, `none` opts out.
    Key,
}

/// A parsed, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub tcp_ports: PortSet,
    pub udp_ports: PortSet,
    pub advanced_ports_tcp: u16,
    pub advanced_ports_udp: u16,
    pub advanced_exclude_tcp: PortSet,
    pub advanced_exclude_udp: PortSet,
    pub ignore_file: Option<PathBuf>,
    pub history_file: Option<PathBuf>,
    pub blocked_file: Option<PathBuf>,
    pub resolve_host: bool,
    pub block_tcp: BlockMode,
    pub block_udp: BlockMode,
    pub kill_route: Option<CommandTemplate>,
    pub kill_hosts_deny: Option<LineTemplate>,
    pub kill_run_cmd: Option<CommandTemplate>,
    pub kill_run_cmd_first: bool,
    pub scan_trigger: u32,
    pub port_banner: Option<String>,
    pub hosts_deny_file: PathBuf,
    pub audit_log: PathBuf,
    pub block_timeout: Option<Duration>,
    pub max_blocks: u32,
    pub block_rate: u32,
    pub firewall: Firewall,
    pub firewall_origin: FirewallOrigin,
    pub nft_table: String,
    pub blackhole_route: bool,
    pub kill_timeout: Duration,
    pub scan_window: Duration,
    pub state_max_sources: usize,
    pub sensor_queue: usize,
    /// LOG_RATE: most packet-triggered log lines per second from one source.
    pub log_rate: u32,
    /// LOG_RATE_TOTAL: most packet-triggered log lines per second from all sources.
    pub log_rate_total: u32,
    /// BLOCK_PREFIX6: an IPv6 scanner is blocked, and counted by the sensor, as this
    /// network prefix (an IPv6 host owns a whole /64 and can rotate through it); 128 is
    /// the address alone.
    pub block_prefix6: u8,
    /// AUDIT_RATE: most audit records (and enforcer log lines) per second for block
    /// requests that changed nothing; the rest are summarised once per second.
    pub audit_rate: u32,
    pub control_group: Option<String>,
    /// NEVER_BLOCK_INFRASTRUCTURE: never block this host's default gateways, nameservers,
    /// point-to-point peers and DHCP servers (default on).
    pub never_block_infrastructure: bool,
    /// METRICS_DIR: where the enforcer writes `sentry-enforcer.prom` (Prometheus text
    /// format, replaced atomically every 5 s) for node_exporter's textfile collector;
    /// unset (default): no file (`sentryctl metrics` prints the same text).
    pub metrics_dir: Option<PathBuf>,
    /// BLOCK_OTHER_SCANS: block the probes PortSentry never saw (ACK-family, IP-protocol,
    /// SCTP INIT; [`sentry_proto::ScanKind::is_other`]) as BLOCK_TCP=1 would, instead of
    /// only logging and auditing them (default off).
    pub block_other_scans: bool,
    /// ANSWER_PROBES: let the stack answer probes of watched ports where nothing is
    /// served (a RST, an ICMP port unreachable), as PortSentry did. Off (default): the
    /// detection chain drops them, so a scanner learns nothing from a port sentry
    /// watches, whatever its block budget allows; and FIN, NULL and XMAS probes of the
    /// ports it does not watch, which no TCP exchange sends.
    pub answer_probes: bool,
    /// RESTART_GRACE: a port a service served within this long is still treated as
    /// served, by the kernel's first hit and by the sensor alike, so a client that
    /// retries while its service restarts is never taken for a scanner (0: served only
    /// while a socket is there).
    pub restart_grace: Duration,
    /// FLEET_MAX_BLOCKS: most active blocks asked for over the control socket by anyone
    /// but root's `sentryctl block` (the fleet bridge, other CONTROL_GROUP clients);
    /// `None`: a quarter of MAX_BLOCKS. Such blocks never count against the sensor's
    /// budgets, and a local block with multi-port evidence evicts the oldest of them
    /// when MAX_BLOCKS is reached.
    pub fleet_max_blocks: Option<u32>,
    /// FLEET_BLOCK_RATE: most fleet blocks started per minute.
    pub fleet_block_rate: u32,
    /// FLEET_MAX_DURATION: the longest a fleet block lasts; a longer duration asked for is
    /// shortened to it (said in the audit record's reason).
    pub fleet_max_duration: Duration,
    /// Line on which each key was set, for error messages about cross-key problems.
    pub key_lines: HashMap<String, usize>,
    /// Non-fatal remarks (for `sentryctl check-config` and the start-up log).
    pub warnings: Vec<ConfigError>,
    /// Keys given an empty value that needs one (reported after the pass).
    empty_required: Vec<String>,
}

/// Where a key's value is stored.
type Field<T> = fn(&mut Config) -> &mut T;

/// Value kinds, so that every key is validated the same way, each with the field it sets.
enum Kind {
    Ports(Field<PortSet>),
    Port(Field<u16>),
    /// An absolute path; empty: unset.
    Path(Field<Option<PathBuf>>),
    /// An absolute path that must not be empty.
    RequiredPath(Field<PathBuf>),
    Bool(Field<bool>),
    Block(Field<BlockMode>),
    Command(Field<Option<CommandTemplate>>),
    Line(Field<Option<LineTemplate>>),
    Text(Field<Option<String>>),
    /// Unsigned number with inclusive bounds, and how to store it.
    Num(u64, u64, fn(&mut Config, u64)),
    Firewall,
    /// An identifier; empty: unset.
    Ident(Field<Option<String>>),
    /// An identifier that must not be empty.
    RequiredIdent(Field<String>),
}

/// The kind of every key sentry understands, with the field it sets: PortSentry 1.2's,
/// then sentry's own. Exact names only; there is no prefix matching.
fn kind(key: &str) -> Option<Kind> {
    Some(match key {
        "TCP_PORTS" => Kind::Ports(|c| &mut c.tcp_ports),
        "UDP_PORTS" => Kind::Ports(|c| &mut c.udp_ports),
        "ADVANCED_PORTS_TCP" => Kind::Port(|c| &mut c.advanced_ports_tcp),
        "ADVANCED_PORTS_UDP" => Kind::Port(|c| &mut c.advanced_ports_udp),
        "ADVANCED_EXCLUDE_TCP" => Kind::Ports(|c| &mut c.advanced_exclude_tcp),
        "ADVANCED_EXCLUDE_UDP" => Kind::Ports(|c| &mut c.advanced_exclude_udp),
        "IGNORE_FILE" => Kind::Path(|c| &mut c.ignore_file),
        "HISTORY_FILE" => Kind::Path(|c| &mut c.history_file),
        "BLOCKED_FILE" => Kind::Path(|c| &mut c.blocked_file),
        "RESOLVE_HOST" => Kind::Bool(|c| &mut c.resolve_host),
        "BLOCK_TCP" => Kind::Block(|c| &mut c.block_tcp),
        "BLOCK_UDP" => Kind::Block(|c| &mut c.block_udp),
        "KILL_ROUTE" => Kind::Command(|c| &mut c.kill_route),
        "KILL_HOSTS_DENY" => Kind::Line(|c| &mut c.kill_hosts_deny),
        "KILL_RUN_CMD" => Kind::Command(|c| &mut c.kill_run_cmd),
        "KILL_RUN_CMD_FIRST" => Kind::Bool(|c| &mut c.kill_run_cmd_first),
        "SCAN_TRIGGER" => Kind::Num(0, 65_534, |c, n| fit(&mut c.scan_trigger, n)),
        "PORT_BANNER" => Kind::Text(|c| &mut c.port_banner),
        "HOSTS_DENY_FILE" => Kind::RequiredPath(|c| &mut c.hosts_deny_file),
        "AUDIT_LOG" => Kind::RequiredPath(|c| &mut c.audit_log),
        "BLOCK_TIMEOUT" => Kind::Num(0, 10 * 365 * 86_400, |c, n| c.block_timeout = secs(n)),
        // What the shipped enforcer unit (MemoryMax=256M), the state-file cap and the 32 MiB
        // `sentryctl blocked` reply can all hold with margin (docs/performance.md, "MAX_BLOCKS bound").
        "MAX_BLOCKS" => Kind::Num(1, 100_000, |c, n| fit(&mut c.max_blocks, n)),
        "BLOCK_RATE" => Kind::Num(1, 1_000_000, |c, n| fit(&mut c.block_rate, n)),
        "FIREWALL" => Kind::Firewall,
        "NFT_TABLE" => Kind::RequiredIdent(|c| &mut c.nft_table),
        "BLACKHOLE_ROUTE" => Kind::Bool(|c| &mut c.blackhole_route),
        "KILL_TIMEOUT" => Kind::Num(1, 300, |c, n| c.kill_timeout = Duration::from_secs(n)),
        "SCAN_WINDOW" => Kind::Num(1, 86_400, |c, n| c.scan_window = Duration::from_secs(n)),
        "STATE_MAX_SOURCES" => Kind::Num(16, 16_777_216, |c, n| fit(&mut c.state_max_sources, n)),
        "SENSOR_QUEUE" => Kind::Num(1, 1_000_000, |c, n| fit(&mut c.sensor_queue, n)),
        "LOG_RATE" => Kind::Num(1, 100_000, |c, n| fit(&mut c.log_rate, n)),
        "LOG_RATE_TOTAL" => Kind::Num(1, 1_000_000, |c, n| fit(&mut c.log_rate_total, n)),
        "BLOCK_PREFIX6" => Kind::Num(32, 128, |c, n| fit(&mut c.block_prefix6, n)),
        "AUDIT_RATE" => Kind::Num(1, 100_000, |c, n| fit(&mut c.audit_rate, n)),
        "CONTROL_GROUP" => Kind::Ident(|c| &mut c.control_group),
        "NEVER_BLOCK_INFRASTRUCTURE" => Kind::Bool(|c| &mut c.never_block_infrastructure),
        "METRICS_DIR" => Kind::Path(|c| &mut c.metrics_dir),
        "BLOCK_OTHER_SCANS" => Kind::Bool(|c| &mut c.block_other_scans),
        "ANSWER_PROBES" => Kind::Bool(|c| &mut c.answer_probes),
        "RESTART_GRACE" => Kind::Num(0, 3600, |c, n| c.restart_grace = Duration::from_secs(n)),
        "FLEET_MAX_BLOCKS" => Kind::Num(1, 100_000, |c, n| {
            c.fleet_max_blocks = u32::try_from(n).ok();
        }),
        "FLEET_BLOCK_RATE" => Kind::Num(1, 1_000_000, |c, n| fit(&mut c.fleet_block_rate, n)),
        "FLEET_MAX_DURATION" => Kind::Num(1, 10 * 365 * 86_400, |c, n| {
            c.fleet_max_duration = Duration::from_secs(n);
        }),
        _ => return None,
    })
}

/// Longest PORT_BANNER accepted (PortSentry's buffer was 1 KiB).
const MAX_BANNER: usize = 1024;

/// Store a number in a narrower field. Bounds were checked against [`kind`]'s, so it always
/// fits; the field keeps its default if it ever did not.
fn fit<T: TryFrom<u64>>(field: &mut T, n: u64) {
    if let Ok(v) = T::try_from(n) {
        *field = v;
    }
}

/// BLOCK_TIMEOUT: 0 is permanent.
fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

fn path(s: &str) -> Result<Option<PathBuf>, String> {
    if s.is_empty() {
        Ok(None)
    } else if !s.starts_with('/') {
        Err(format!("'{s}' must be an absolute path"))
    } else {
        Ok(Some(PathBuf::from(s)))
    }
}

fn ident(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        Ok(None)
    } else if s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && s.as_bytes()[0].is_ascii_alphabetic()
    {
        Ok(Some(s.to_owned()))
    } else {
        Err(format!(
            "'{s}' must be 1-32 letters, digits, '_' or '-', starting with a letter"
        ))
    }
}

/// A template, or `None` for a blank value.
fn template<T>(
    raw: &str,
    parse: fn(&str) -> Result<T, TemplateError>,
) -> Result<Option<T>, String> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    parse(raw).map(Some).map_err(|e| e.to_string())
}

/// Validate `raw` for the kind of `key` and store it in `cfg`. An empty value for a key
/// that needs one is noted in `empty_required` (reported by `cross_check`).
fn set(cfg: &mut Config, key: &str, kind: Kind, raw: &str) -> Result<(), String> {
    let s = raw.trim();
    match kind {
        Kind::Ports(f) => *f(cfg) = PortSet::parse(raw)?,
        Kind::Port(f) => *f(cfg) = parse_port(s)?,
        Kind::Path(f) => *f(cfg) = path(s)?,
        Kind::RequiredPath(f) => match path(s)? {
            Some(p) => *f(cfg) = p,
            None => cfg.empty_required.push(key.to_owned()),
        },
        Kind::Bool(f) => {
            *f(cfg) = match s {
                "0" => false,
                "1" => true,
                _ => return Err(format!("expected 0 or 1, got '{s}'")),
            }
        }
        Kind::Block(f) => {
            *f(cfg) = match s {
                "0" => BlockMode::LogOnly,
                "1" => BlockMode::Block,
                "2" => BlockMode::CommandOnly,
                _ => return Err(format!("expected 0, 1 or 2, got '{s}'")),
            }
        }
        Kind::Command(f) => *f(cfg) = template(raw, CommandTemplate::parse)?,
        Kind::Line(f) => *f(cfg) = template(raw, LineTemplate::parse)?,
        Kind::Text(f) => {
            if raw.len() > MAX_BANNER {
                return Err(format!("longer than {MAX_BANNER} bytes"));
            }
            if raw.chars().any(|c| c.is_control() && c != '\t') {
                return Err("control character in value".into());
            }
            *f(cfg) = (!raw.is_empty()).then(|| raw.to_owned());
        }
        Kind::Num(min, max, store) => {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("'{s}' is not a whole number"));
            }
            match s.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => store(cfg, n),
                _ => return Err(format!("{s} out of range {min}-{max}")),
            }
        }
        Kind::Firewall => {
            cfg.firewall = match s {
                "none" | "" => Firewall::None,
                "nftables" => Firewall::Nftables,
                _ => return Err(format!("expected 'nftables' or 'none', got '{s}'")),
            };
            cfg.firewall_origin = FirewallOrigin::Key;
        }
        Kind::Ident(f) => *f(cfg) = ident(s)?,
        Kind::RequiredIdent(f) => match ident(s)? {
            Some(i) => *f(cfg) = i,
            None => cfg.empty_required.push(key.to_owned()),
        },
    }
    Ok(())
}

/// Split one non-comment line into key and raw value. Accepts `KEY="v"`, `KEY = "v"`,
/// `KEY=v`, and a trailing `# comment` after a quoted value.
fn split_line(line: &str) -> Result<(&str, &str), String> {
    let (key, rest) = line
        .split_once('=')
        .ok_or_else(|| "expected KEY=\"value\"".to_string())?;
    let key = key.trim();
    if key.is_empty() {
        return Err("missing key before '='".into());
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!("'{key}' is not a valid key name"));
    }
    let rest = rest.trim();
    let value = if let Some(body) = rest.strip_prefix('"') {
        // The value runs to the last quote on the line; only a comment may follow it.
        let close = body
            .rfind('"')
            .ok_or_else(|| format!("{key}: missing closing quote"))?;
        let after = body[close + 1..].trim();
        if !after.is_empty() && !after.starts_with('#') {
            return Err(format!(
                "{key}: unexpected text after closing quote: '{after}'"
            ));
        }
        &body[..close]
    } else {
        // Unquoted: up to a comment.
        let v = rest.split_once('#').map_or(rest, |(v, _)| v).trim();
        if v.contains('"') {
            return Err(format!("{key}: stray quote in unquoted value"));
        }
        v
    };
    Ok((key, value))
}

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = read_text(path)?;
        Self::parse(&text, path)
    }

    /// The configuration the daemons use when none is named: sentry's own, or an existing
    /// PortSentry installation's.
    pub fn default_path() -> PathBuf {
        let own = Path::new(DEFAULT_CONFIG_PATH);
        let ps = Path::new(PORTSENTRY_CONFIG_PATH);
        if !own.exists() && ps.exists() {
            ps.to_path_buf()
        } else {
            own.to_path_buf()
        }
    }

    /// Validate configuration text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigErrors> {
        let mut cfg = Self::defaults(path);
        let mut errors = Vec::new();
        for (n, raw) in lines(text) {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match split_line(line) {
                Ok(kv) => kv,
                Err(m) => {
                    errors.push(ConfigError::new(path, Some(n), None, m));
                    continue;
                }
            };
            let error = |m: String| ConfigError::new(path, Some(n), Some(key), m);
            let Some(kind) = kind(key) else {
                errors.push(error("unknown key".into()));
                continue;
            };
            if let Some(first) = cfg.key_lines.get(key) {
                errors.push(error(format!("duplicate key (first set on line {first})")));
                continue;
            }
            cfg.key_lines.insert(key.to_owned(), n);
            if let Err(m) = set(&mut cfg, key, kind, value) {
                errors.push(error(m));
            }
        }
        if errors.is_empty() {
            cfg.cross_check(&mut errors);
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn defaults(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            tcp_ports: PortSet::new(),
            udp_ports: PortSet::new(),
            advanced_ports_tcp: 1024,
            advanced_ports_udp: 1024,
            advanced_exclude_tcp: PortSet::new(),
            advanced_exclude_udp: PortSet::new(),
            ignore_file: None,
            history_file: None,
            blocked_file: None,
            resolve_host: false,
            block_tcp: BlockMode::LogOnly,
            block_udp: BlockMode::LogOnly,
            kill_route: None,
            kill_hosts_deny: None,
            kill_run_cmd: None,
            kill_run_cmd_first: false,
            scan_trigger: 0,
            port_banner: None,
            hosts_deny_file: PathBuf::from("/etc/hosts.deny"),
            audit_log: PathBuf::from("/var/log/sentry/audit.jsonl"),
            block_timeout: None,
            max_blocks: 10_000,
            block_rate: 600,
            firewall: Firewall::Nftables,
            firewall_origin: FirewallOrigin::Default,
            nft_table: "sentry".into(),
            blackhole_route: false,
            kill_timeout: Duration::from_secs(10),
            scan_window: Duration::from_secs(300),
            state_max_sources: 65_536,
            sensor_queue: 4096,
            log_rate: 50,
            log_rate_total: 500,
            block_prefix6: 64,
            audit_rate: 100,
            control_group: None,
            never_block_infrastructure: true,
            metrics_dir: None,
            block_other_scans: false,
            answer_probes: false,
            restart_grace: Duration::from_secs(5),
            fleet_max_blocks: None,
            fleet_block_rate: 600,
            fleet_max_duration: Duration::from_secs(86_400),
            key_lines: HashMap::new(),
            warnings: Vec::new(),
            empty_required: Vec::new(),
        }
    }

    /// A problem with `key`, located at the line that set it.
    pub fn key_error(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.path, self.key_lines.get(key).copied(), Some(key), msg)
    }

    fn cross_check(&mut self, errors: &mut Vec<ConfigError>) {
        for k in std::mem::take(&mut self.empty_required) {
            errors.push(self.key_error(&k, "must not be empty"));
        }
        if let Some(n) = self.fleet_max_blocks.filter(|&n| n > self.max_blocks) {
            errors.push(self.key_error(
                "FLEET_MAX_BLOCKS",
                format!(
                    "{n} is more than MAX_BLOCKS={}: the fleet's share must fit in the table",
                    self.max_blocks
                ),
            ));
        }
        for (key, mode) in [
            ("BLOCK_TCP", self.block_tcp),
            ("BLOCK_UDP", self.block_udp),
            ("BLOCK_OTHER_SCANS", self.other_scans_mode()),
        ] {
            if mode == BlockMode::CommandOnly && self.kill_run_cmd.is_none() {
                errors.push(self.key_error(key, "2 (run KILL_RUN_CMD only) needs KILL_RUN_CMD"));
            }
            if mode == BlockMode::Block && !self.has_block_action() {
                self.warnings.push(self.key_error(
                    key,
                    "1 (block) but no KILL_ROUTE, KILL_HOSTS_DENY, KILL_RUN_CMD, FIREWALL or BLACKHOLE_ROUTE is set: nothing will be blocked",
                ));
            }
        }
        if self.resolve_host {
            self.warnings.push(self.key_error(
                "RESOLVE_HOST",
                "host names are not resolved (a scanner controls its reverse DNS); logs show the address in the NAME field",
            ));
        }
    }

    /// FLEET_MAX_BLOCKS in effect: the key, or a quarter of MAX_BLOCKS.
    pub fn fleet_cap(&self) -> u32 {
        self.fleet_max_blocks
            .unwrap_or((self.max_blocks / 4).max(1))
    }

    fn has_block_action(&self) -> bool {
        self.kill_route.is_some()
            || self.kill_hosts_deny.is_some()
            || self.kill_run_cmd.is_some()
            || self.firewall != Firewall::None
            || self.blackhole_route
    }

    /// What to do with a probe of this kind: BLOCK_OTHER_SCANS for the kinds PortSentry
    /// never reported (SCTP and IP-protocol probes always are), BLOCK_TCP / BLOCK_UDP for
    /// the others.
    pub fn block_mode_for(&self, class: ScanClass) -> BlockMode {
        match class {
            ScanClass::Tcp => self.block_tcp,
            ScanClass::Udp => self.block_udp,
            ScanClass::Other => self.other_scans_mode(),
        }
    }

    fn other_scans_mode(&self) -> BlockMode {
        if self.block_other_scans {
            BlockMode::Block
        } else {
            BlockMode::LogOnly
        }
    }

    /// The ignore list named by IGNORE_FILE (empty when none is configured).
    pub fn load_ignore(&self) -> Result<IgnoreList, ConfigErrors> {
        match &self.ignore_file {
            Some(p) => IgnoreList::load(p),
            None => Ok(IgnoreList::empty()),
        }
    }

    /// True when blocks write the TCP-wrappers deny file.
    pub fn uses_hosts_deny(&self) -> bool {
        self.kill_hosts_deny.is_some()
    }

    /// The files the enforcer's worker writes, by key (`None`: not configured): they and
    /// their directories must be the worker's before the enforcer starts.
    pub fn worker_files(&self) -> [(&'static str, Option<&Path>); 3] {
        [
            ("AUDIT_LOG", Some(self.audit_log.as_path())),
            ("HISTORY_FILE", self.history_file.as_deref()),
            ("BLOCKED_FILE", self.blocked_file.as_deref()),
        ]
    }

    /// The directories of [`Config::worker_files`], each once, with the first key whose
    /// file is in it.
    pub fn worker_dirs(&self) -> Vec<(&'static str, &Path)> {
        let mut v: Vec<(&'static str, &Path)> = Vec::new();
        for (key, f) in self.worker_files() {
            let dir = f
                .and_then(Path::parent)
                .filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = dir.filter(|d| !v.iter().any(|(_, x)| x == d)) {
                v.push((key, d));
            }
        }
        v
    }
}
