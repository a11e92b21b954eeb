//! `/etc/sentry/share.conf`: `KEY="value"` lines like sentry.conf(5), `#` comments.
//! Every key is known and checked here, in one place; an unknown or repeated key, a
//! bad value or a missing required one is an error naming the line.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest configuration file read.
const MAX_CONFIG: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// LAPI_URLS: one or more base URLs (`https://lapi.example:8080`), tried in order.
    pub lapi_urls: Vec<String>,
    /// PUSH: send local blocks as alerts (needs MACHINE_ID and MACHINE_PASSWORD_FILE).
    pub push: bool,
    pub machine_id: Option<String>,
    pub machine_password_file: Option<PathBuf>,
    /// PULL: take the fleet's decisions as blocks (needs BOUNCER_KEY_FILE).
    pub pull: bool,
    pub bouncer_key_file: Option<PathBuf>,
    /// PULL_INTERVAL: between two decision-stream polls (at least 1 s).
    pub pull_interval: Duration,
    /// PUSH_MIN_PORTS: a block without a completed handshake is pushed only when the
    /// source touched at least this many distinct ports (see [`DEFAULT_PUSH_MIN_PORTS`]).
    pub push_min_ports: u32,
    /// DECISION_DURATION: unset (default): alerts carry no decision and the LAPI's
    /// profiles decide (`remediation: true`); set: an explicit ban of this long.
    pub decision_duration: Option<Duration>,
    /// ORIGIN: the origin name of the blocks made from fleet decisions.
    pub origin: String,
    /// PULL_ORIGINS: the decision origins enforced (default the LAPI's own: `crowdsec`,
    /// from alerts and profiles, and `cscli`, added by hand); others (`CAPI`, `lists`:
    /// the Central API's community blocklists) are counted and skipped.
    pub pull_origins: Vec<String>,
    /// RUNTIME_DIR: where the enforcer's control.sock is.
    pub runtime_dir: PathBuf,
    /// STATE_DIR: the queue and the stream cursor.
    pub state_dir: PathBuf,
    /// QUEUE_MAX: most alerts waiting for a LAPI.
    pub queue_max: usize,
    /// METRICS_DIR: where sentry-share.prom is written (unset: none).
    pub metrics_dir: Option<PathBuf>,
    /// DELETE_ON_UNBLOCK: `sentryctl unblock` of a fleet block also deletes the
    /// fleet's decisions for the address (`DELETE /v1/decisions?ip=`, machine JWT).
    pub delete_on_unblock: bool,
    /// HTTP_TIMEOUT: one LAPI call, connect to last byte.
    pub http_timeout: Duration,
    /// DELETE_LIFTS_LOCAL: a fleet decision that followed this host's own alert and is
    /// deleted in CrowdSec before its end also lifts this host's own (sensor) block.
    pub delete_lifts_local: bool,
    /// SENTRY_CONFIG: the enforcer's configuration, read by `--check-config` only (for
    /// SCAN_TRIGGER, against PUSH_MIN_PORTS).
    pub sentry_config: PathBuf,
}

/// PUSH_MIN_PORTS' default. Port counts cost a forger one packet each, so no count proves
/// a source's address; what the count decides is how cheap a fleet-wide ban of an
/// address of the forger's choice is, and which real clients never become one. 20: a
/// real scan gets there within a second of its block (the kernel keeps copying a blocked
/// source's probes, 50 a second; nmap's smallest usual scan, `-F`, is 100 ports), while
/// a client trying a few services (a mail client's 7 ports, a monitoring check) and
/// every forgery of fewer than 20 packets to 20 ports of one host stays local.
pub const DEFAULT_PUSH_MIN_PORTS: u32 = 20;

/// Below this, `--check-config` warns whatever the trigger: a handful of forged packets
/// would make a fleet ban.
pub const PUSH_MIN_PORTS_FLOOR: u32 = 10;

/// `--check-config`'s rule: a warning when PUSH_MIN_PORTS is below
/// [`PUSH_MIN_PORTS_FLOOR`] or below twice the ports the enforcer's SCAN_TRIGGER needs
/// for a local report (SCAN_TRIGGER+1): near that, every local block, forged ones
/// included, becomes a fleet ban.
pub fn push_min_ports_warning(push_min_ports: u32, scan_trigger: Option<u32>) -> Option<String> {
    let trigger_ports = scan_trigger.map(|t| t.saturating_add(1));
    let want = trigger_ports
        .map_or(PUSH_MIN_PORTS_FLOOR, |p| p.saturating_mul(2))
        .max(PUSH_MIN_PORTS_FLOOR);
    if push_min_ports >= want {
        return None;
    }
    let why = match (scan_trigger, trigger_ports) {
        (Some(t), Some(p)) if push_min_ports < p.saturating_mul(2) => format!(
            "the enforcer's SCAN_TRIGGER={t} reports a source at {p} port(s), so nearly every local block, forged ones included, becomes a fleet ban"
        ),
        _ => format!(
            "fewer than {PUSH_MIN_PORTS_FLOOR} forged packets (one per port) make a fleet-wide ban"
        ),
    };
    Some(format!(
        "PUSH_MIN_PORTS={push_min_ports} is low: {why}; at least {want} is advised (default {DEFAULT_PUSH_MIN_PORTS})"
    ))
}

impl Config {
    pub fn default_path() -> PathBuf {
        PathBuf::from("/etc/sentry/share.conf")
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        use std::io::Read as _;
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        f.take(MAX_CONFIG + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_CONFIG {
            return Err(format!("{}: larger than 64 KiB", path.display()));
        }
        Self::parse(&text).map_err(|e| format!("{}:{e}", path.display()))
    }

    /// Parse the text of a configuration; errors are `LINE: message`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut c = Config {
            lapi_urls: Vec::new(),
            push: true,
            machine_id: None,
            machine_password_file: None,
            pull: true,
            bouncer_key_file: None,
            pull_interval: Duration::from_secs(10),
            push_min_ports: DEFAULT_PUSH_MIN_PORTS,
            decision_duration: None,
            origin: "crowdsec".into(),
            pull_origins: vec!["crowdsec".into(), "cscli".into()],
            runtime_dir: PathBuf::from("/run/sentry"),
            state_dir: PathBuf::from("/var/lib/sentry-share"),
            queue_max: 10_000,
            metrics_dir: None,
            delete_on_unblock: false,
            http_timeout: Duration::from_secs(10),
            delete_lifts_local: true,
            sentry_config: PathBuf::from("/etc/sentry/sentry.conf"),
        };
        let mut seen: Vec<&str> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("{n}: expected KEY=\"value\""))?;
            let k = k.trim();
            let v = v.trim();
            let v = match v.strip_prefix('"') {
                Some(rest) => rest
                    .strip_suffix('"')
                    .filter(|x| !x.contains('"'))
                    .ok_or_else(|| format!("{n}: {k}: unterminated or nested quote"))?,
                None if v.contains(['"', ' ', '\t']) => {
                    return Err(format!("{n}: {k}: quote a value with spaces"))
                }
                None => v,
            };
            let err = |m: String| format!("{n}: {k}: {m}");
            let path = |v: &str| -> Result<Option<PathBuf>, String> {
                if v.is_empty() {
                    Ok(None)
                } else if v.starts_with('/') {
                    Ok(Some(PathBuf::from(v)))
                } else {
                    Err(err(format!("'{v}' must be an absolute path")))
                }
            };
            let bool01 = |v: &str| match v {
                "0" => Ok(false),
                "1" => Ok(true),
                _ => Err(err(format!("expected 0 or 1, got '{v}'"))),
            };
            let num = |v: &str, lo: u64, hi: u64| -> Result<u64, String> {
                let x: u64 = v
                    .parse()
                    .map_err(|_| err(format!("'{v}' is not a number")))?;
                if x < lo || x > hi {
                    return Err(err(format!("{x} is outside {lo}-{hi}")));
                }
                Ok(x)
            };
            let dur = |v: &str| {
                sentry_proto::parse_go_duration(v).map_err(|e| err(format!("'{v}': {e}")))
            };
            let key: &'static str = match k {
                "LAPI_URLS" => {
                    let urls: Vec<String> = v.split_whitespace().map(str::to_string).collect();
                    if urls.is_empty() || urls.len() > 8 {
                        return Err(err("one to eight URLs, separated by spaces".into()));
                    }
                    for u in &urls {
                        check_url(u).map_err(&err)?;
                    }
                    c.lapi_urls = urls;
                    "LAPI_URLS"
                }
                "PUSH" => {
                    c.push = bool01(v)?;
                    "PUSH"
                }
                "PULL" => {
                    c.pull = bool01(v)?;
                    "PULL"
                }
                "DELETE_LIFTS_LOCAL" => {
                    c.delete_lifts_local = bool01(v)?;
                    "DELETE_LIFTS_LOCAL"
                }
                "SENTRY_CONFIG" => {
                    c.sentry_config = path(v)?.ok_or_else(|| err("needs a value".into()))?;
                    "SENTRY_CONFIG"
                }
                "DELETE_ON_UNBLOCK" => {
                    c.delete_on_unblock = bool01(v)?;
                    "DELETE_ON_UNBLOCK"
                }
                "MACHINE_ID" => {
                    if v.is_empty()
                        || v.len() > 64
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                    {
                        return Err(err(
                            "1 to 64 letters, digits, '.', '_' or '-' (as cscli machines add takes)"
                                .into(),
                        ));
                    }
                    c.machine_id = Some(v.to_string());
                    "MACHINE_ID"
                }
                "MACHINE_PASSWORD_FILE" => {
                    c.machine_password_file = path(v)?;
                    "MACHINE_PASSWORD_FILE"
                }
                "BOUNCER_KEY_FILE" => {
                    c.bouncer_key_file = path(v)?;
                    "BOUNCER_KEY_FILE"
                }
                "PULL_INTERVAL" => {
                    let d = dur(v)?;
                    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                        return Err(err("between 1s and 1h".into()));
                    }
                    c.pull_interval = d;
                    "PULL_INTERVAL"
                }
                "PUSH_MIN_PORTS" => {
                    c.push_min_ports =
                        u32::try_from(num(v, 2, 65_535)?).unwrap_or(DEFAULT_PUSH_MIN_PORTS);
                    "PUSH_MIN_PORTS"
                }
                "DECISION_DURATION" => {
                    c.decision_duration = if v.is_empty() {
                        None
                    } else {
                        let d = dur(v)?;
                        if d < Duration::from_secs(60) || d.as_secs() > 10 * 365 * 86_400 {
                            return Err(err("between 1m and 87600h, or empty".into()));
                        }
                        if d.subsec_nanos() != 0 {
                            return Err(err("whole seconds".into()));
                        }
                        Some(d)
                    };
                    "DECISION_DURATION"
                }
                "ORIGIN" => {
                    sentry_proto::validate_origin(v).map_err(|e| err(e.to_string()))?;
                    if v == sentry_proto::ORIGIN_SENSOR {
                        return Err(err("\"sensor\" is the local sensor's origin".into()));
                    }
                    c.origin = v.to_string();
                    "ORIGIN"
                }
                "PULL_ORIGINS" => {
                    let v: Vec<String> = v.split_whitespace().map(str::to_string).collect();
                    if v.is_empty() || v.len() > 16 {
                        return Err(err("one to sixteen origin names".into()));
                    }
                    for o in &v {
                        if o.len() > 64 || !o.bytes().all(|b| b.is_ascii_graphic()) {
                            return Err(err(format!("{o:?} is not an origin name")));
                        }
                    }
                    c.pull_origins = v;
                    "PULL_ORIGINS"
                }
                "RUNTIME_DIR" => {
                    c.runtime_dir = path(v)?.ok_or_else(|| err("needs a value".into()))?;
                    "RUNTIME_DIR"
                }
                "STATE_DIR" => {
                    c.state_dir = path(v)?.ok_or_else(|| err("needs a value".into()))?;
                    "STATE_DIR"
                }
                "QUEUE_MAX" => {
                    c.queue_max = usize::try_from(num(v, 1, 1_000_000)?).unwrap_or(10_000);
                    "QUEUE_MAX"
                }
                "METRICS_DIR" => {
                    c.metrics_dir = path(v)?;
                    "METRICS_DIR"
                }
                "HTTP_TIMEOUT" => {
                    let d = dur(v)?;
                    if d < Duration::from_secs(1) || d > Duration::from_secs(120) {
                        return Err(err("between 1s and 2m".into()));
                    }
                    c.http_timeout = d;
                    "HTTP_TIMEOUT"
                }
                _ => return Err(format!("{n}: unknown key {k:?}")),
            };
            if seen.contains(&key) {
                return Err(format!("{n}: {k} given twice"));
            }
            seen.push(key);
        }
        if c.lapi_urls.is_empty() {
            return Err("0: LAPI_URLS is required".into());
        }
        if c.push && (c.machine_id.is_none() || c.machine_password_file.is_none()) {
            return Err("0: PUSH=1 needs MACHINE_ID and MACHINE_PASSWORD_FILE".into());
        }
        if c.pull && c.bouncer_key_file.is_none() {
            return Err("0: PULL=1 needs BOUNCER_KEY_FILE".into());
        }
        if c.delete_on_unblock && (c.machine_id.is_none() || c.machine_password_file.is_none()) {
            return Err("0: DELETE_ON_UNBLOCK=1 needs MACHINE_ID and MACHINE_PASSWORD_FILE".into());
        }
        if !c.push && !c.pull {
            return Err("0: PUSH=0 and PULL=0: nothing to do".into());
        }
        Ok(c)
    }
}

/// `http://HOST[:PORT][/PATH]` or `https://...`; no user info, query or fragment.
pub fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("{u:?}: must start with https:// or http://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || u.len() > 256 {
        return Err(format!("{u:?}: no host"));
    }
    if u.contains(['@', '?', '#']) || !u.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{u:?}: no credentials, query or fragment in the URL, printable ASCII only"
        ));
    }
    Ok(())
}

/// Read a secret (password, API key): one line, at most 256 bytes, printable ASCII,
/// from a file nobody but its owner may read (it must not be group- or
/// world-readable).
pub fn read_secret(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let md = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if md.mode() & 0o077 != 0 {
        return Err(format!(
            "{}: readable by group or others (mode {:o}); chmod 0600 it",
            path.display(),
            md.mode() & 0o7777
        ));
    }
    let mut s = String::new();
    f.take(1025)
        .read_to_string(&mut s)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let line = s.strip_suffix('\n').unwrap_or(&s);
    if line.is_empty() || line.len() > 256 || !line.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: expected one line of 1 to 256 printable characters",
            path.display()
        ));
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "LAPI_URLS=\"http://127.0.0.1:8080 https://lapi2:8080\"\nMACHINE_ID=host-a\nMACHINE_PASSWORD_FILE=/etc/sentry/share.password\nBOUNCER_KEY_FILE=/etc/sentry/share.key\n";

    #[test]
    fn defaults_and_keys() {
        let c = Config::parse(MIN).unwrap();
        assert_eq!(c.lapi_urls.len(), 2);
        assert!(c.push && c.pull);
        assert_eq!(c.pull_interval, Duration::from_secs(10));
        assert_eq!(c.push_min_ports, DEFAULT_PUSH_MIN_PORTS);
        assert!(c.delete_lifts_local);
        assert_eq!(c.sentry_config, PathBuf::from("/etc/sentry/sentry.conf"));
        assert_eq!(c.decision_duration, None);
        assert_eq!(c.origin, "crowdsec");
        assert_eq!(c.pull_origins, ["crowdsec", "cscli"]);
        let c = Config::parse(&format!(
            "{MIN}PULL_INTERVAL=1s\nDECISION_DURATION=\"4h\"\nPUSH_MIN_PORTS=3\n# c\n\nQUEUE_MAX=5\n"
        ))
        .unwrap();
        assert_eq!(c.pull_interval, Duration::from_secs(1));
        assert_eq!(c.decision_duration, Some(Duration::from_secs(14_400)));
        assert_eq!((c.push_min_ports, c.queue_max), (3, 5));
        let c = Config::parse(&format!("{MIN}PULL_ORIGINS=\"crowdsec cscli CAPI\"\n")).unwrap();
        assert_eq!(c.pull_origins.len(), 3);
        assert!(Config::parse(&format!("{MIN}PULL_ORIGINS=\"\"\n")).is_err());
    }

    #[test]
    fn errors_name_the_line() {
        for (extra, want) in [
            (
                "PULL_INTERVAL=500ms\n",
                "5: PULL_INTERVAL: between 1s and 1h",
            ),
            ("PULL_INTERVAL=10\n", "5: PULL_INTERVAL: '10'"),
            ("FROB=1\n", "5: unknown key \"FROB\""),
            ("PUSH=2\n", "5: PUSH: expected 0 or 1"),
            ("MACHINE_ID=x\n", "5: MACHINE_ID given twice"),
            ("ORIGIN=sensor\n", "5: ORIGIN"),
            ("QUEUE_MAX=0\n", "5: QUEUE_MAX: 0 is outside"),
            ("DECISION_DURATION=4d\n", "unknown unit"),
            ("METRICS_DIR=relative\n", "absolute path"),
            ("PUSH_MIN_PORTS=1\n", "outside 2-65535"),
            ("PUSH=\"1\n", "unterminated"),
        ] {
            let e = Config::parse(&format!("{MIN}{extra}")).unwrap_err();
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        assert!(Config::parse("MACHINE_ID=a\n")
            .unwrap_err()
            .contains("LAPI_URLS"));
        assert!(Config::parse("LAPI_URLS=ftp://x\n")
            .unwrap_err()
            .contains("https://"));
        assert!(Config::parse("LAPI_URLS=http://u:p@x\n").is_err());
        assert!(
            Config::parse("LAPI_URLS=http://x\nPULL=0\nBOUNCER_KEY_FILE=/k\n")
                .unwrap_err()
                .contains("MACHINE_ID")
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = Config::parse(include_str!("../dist/share.conf")).unwrap();
        assert!(c.push && c.pull && !c.delete_on_unblock && c.delete_lifts_local);
        assert_eq!(c.decision_duration, None);
        assert_eq!(c.push_min_ports, DEFAULT_PUSH_MIN_PORTS);
        // The shipped value passes its own check against the shipped policy's trigger.
        assert_eq!(push_min_ports_warning(c.push_min_ports, Some(0)), None);
    }

    #[test]
    fn push_min_ports_is_checked_against_the_trigger() {
        assert_eq!(push_min_ports_warning(20, Some(0)), None);
        assert_eq!(push_min_ports_warning(10, None), None);
        let w = push_min_ports_warning(5, Some(0)).unwrap();
        assert!(w.contains("fewer than 10 forged packets"), "{w}");
        let w = push_min_ports_warning(20, Some(14)).unwrap();
        assert!(w.contains("SCAN_TRIGGER=14 reports a source at 15"), "{w}");
        assert!(w.contains("at least 30"), "{w}");
        assert_eq!(push_min_ports_warning(30, Some(14)), None);
        assert!(push_min_ports_warning(2, Some(u32::MAX)).is_some());
    }

    #[test]
    fn secrets() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_secret(&p).unwrap_err().contains("chmod 0600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&p).unwrap(), "s3cret");
        std::fs::write(&p, "two\nlines\n").unwrap();
        assert!(read_secret(&p).is_err());
    }
}
