//! `sentryctl check-config` (runs locally, no enforcer needed) and the checks of
//! command-line values that the enforcer would refuse anyway.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use policy::{BlockMode, Config, ConfigErrors, Firewall, FirewallOrigin};
use sentry_proto::MAX_BLOCK_DURATION_MS;

/// The origin `sentryctl block` records without `--origin`.
pub const DEFAULT_ORIGIN: &str = "manual";

/// Outcome of `check-config`: errors (each `path:LINE: message`) and warnings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Which blocking is in effect, in order (`None` when the file did not load).
    pub blocking: Option<String>,
}

/// One warning per infrastructure address (`found`, with its reason) that the
/// ignore list does not name. With NEVER_BLOCK_INFRASTRUCTURE=1 the enforcer still never
/// blocks it, but the sensor keeps reporting it; with 0 a forged probe can block it.
pub fn infra_warnings(
    cfg: &policy::Config,
    ignore: &policy::IgnoreList,
    found: &[(IpAddr, policy::InfraReason)],
) -> Vec<String> {
    found
        .iter()
        .filter(|(a, _)| !ignore.contains(*a))
        .map(|(a, why)| {
            let what = if cfg.never_block_infrastructure {
                "the enforcer never blocks it (NEVER_BLOCK_INFRASTRUCTURE=1), but the sensor reports probes from it"
            } else {
                "with NEVER_BLOCK_INFRASTRUCTURE=0 a single forged probe can block it"
            };
            format!(
                "{}: IGNORE_FILE: {a} ({why}) is not on the ignore list; {what}",
                cfg.path.display()
            )
        })
        .collect()
}

/// Check the configuration at `path` and the files it names. `infra` discovers this
/// host's infrastructure (default gateways, nameservers, ...); it is asked only when the
/// configuration and its ignore list load.
pub fn check_config(
    path: &Path,
    infra: impl FnOnce() -> Vec<(IpAddr, policy::InfraReason)>,
) -> CheckReport {
    match policy::Config::load(path) {
        Err(e) => CheckReport {
            ok: false,
            errors: e.0.iter().map(|e| e.to_string()).collect(),
            warnings: Vec::new(),
            blocking: None,
        },
        Ok(cfg) => {
            let mut warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
            // Infrastructure of this host not named by the ignore list.
            if let Ok(ignore) = cfg.load_ignore() {
                warnings.extend(infra_warnings(&cfg, &ignore, &infra()));
            }
            // A directory the enforcer creates at start is a warning.
            let files = check_files(&cfg);
            warnings.extend(files.warnings.iter().map(|w| w.to_string()));
            let errors: Vec<String> = files.errors.iter().map(|e| e.to_string()).collect();
            CheckReport {
                ok: errors.is_empty(),
                errors,
                warnings,
                blocking: Some(blocking_summary(&cfg)),
            }
        }
    }
}

/// Result of [`check_files`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileCheck {
    pub errors: Vec<policy::ConfigError>,
    pub warnings: Vec<policy::ConfigError>,
}

/// The mode of a directory made for `key`'s file: 0750 for AUDIT_LOG's (like
/// /var/log/sentry, which logrotate and admins read), 0700 for the others (like the
/// state directory).
pub fn dir_mode(key: &str) -> u32 {
    if key == "AUDIT_LOG" {
        0o750
    } else {
        0o700
    }
}

/// The directories the worker writes its files in, with the modes to make them with:
/// AUDIT_LOG's, HISTORY_FILE's and BLOCKED_FILE's (the state directory is a command-line
/// value). The enforcer creates none of them (issue #22): the installers do, and the
/// test harness uses this list to do as they do.
pub fn created_dirs(cfg: &Config) -> Vec<(PathBuf, u32)> {
    let dirs = cfg.worker_dirs().into_iter();
    dirs.map(|(key, d)| (d.to_path_buf(), dir_mode(key)))
        .collect()
}

/// Whether a missing directory `dir` may safely be made for the worker: its nearest
/// existing ancestor must be a directory owned by root and not writable by group or
/// others (otherwise another user could plant something in its place first).
pub fn creatable(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mut a = dir;
    loop {
        match std::fs::metadata(a) {
            Ok(md) if !md.is_dir() => return Err(format!("{} is not a directory", a.display())),
            Ok(md) if md.mode() & 0o022 != 0 => {
                return Err(format!(
                    "{} is writable by group or others (mode {:o})",
                    a.display(),
                    md.mode() & 0o7777
                ))
            }
            Ok(md) if md.uid() != 0 => {
                return Err(format!(
                    "{} is owned by uid {}, not root",
                    a.display(),
                    md.uid()
                ))
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match a.parent() {
                Some(p) if !p.as_os_str().is_empty() => a = p,
                _ => return Err(format!("no existing parent of {}", dir.display())),
            },
            Err(e) => return Err(format!("{}: {e}", a.display())),
        }
    }
}

/// Check the files the configuration names: the ignore list parses, the directories
/// of files to be written exist, and kill programs exist and are executable. A
/// configuration's errors are told from a host that is merely not set up yet: a missing
/// directory of the worker's (those of AUDIT_LOG, HISTORY_FILE and BLOCKED_FILE, see
/// [`created_dirs`]) is a warning naming the command that makes it, when its nearest
/// existing ancestor is a root-owned directory not writable by group or others
/// ([`creatable`]), and an error otherwise.
pub fn check_files(cfg: &Config) -> FileCheck {
    use std::os::unix::fs::PermissionsExt;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if let Err(ConfigErrors(mut e)) = cfg.load_ignore() {
        errors.append(&mut e);
    }
    let writable: [(&str, Option<&Path>); 4] = [
        ("HISTORY_FILE", cfg.history_file.as_deref()),
        ("BLOCKED_FILE", cfg.blocked_file.as_deref()),
        (
            "HOSTS_DENY_FILE",
            cfg.uses_hosts_deny()
                .then_some(cfg.hosts_deny_file.as_path()),
        ),
        ("AUDIT_LOG", Some(cfg.audit_log.as_path())),
    ];
    for (key, file) in writable {
        let Some(file) = file else { continue };
        let created = key != "HOSTS_DENY_FILE";
        match file.parent() {
            Some(dir) if dir.is_dir() => {}
            Some(dir) if created && !dir.as_os_str().is_empty() => {
                match creatable(dir) {
                    Ok(()) => warnings.push(cfg.key_error(
                        key,
                        format!(
                            "directory {0} does not exist yet; the enforcer creates nothing: make it for its worker before it starts: install -d -o sentry-worker -g sentry-worker -m {1:o} {0}",
                            dir.display(),
                            dir_mode(key)
                        ),
                    )),
                    Err(why) => errors.push(cfg.key_error(
                        key,
                        format!(
                            "directory of {} does not exist, and must not be made for the worker there: {why}",
                            file.display()
                        ),
                    )),
                }
            }
            _ => errors.push(cfg.key_error(
                key,
                format!("directory of {} does not exist", file.display()),
            )),
        }
    }
    // METRICS_DIR is not created by the enforcer: it belongs to node_exporter's
    // textfile collector (and under systemd needs a ReadWritePaths= drop-in).
    if let Some(dir) = &cfg.metrics_dir {
        if !dir.is_dir() {
            errors.push(cfg.key_error(
                "METRICS_DIR",
                format!("{} is not an existing directory", dir.display()),
            ));
        }
    }
    for (key, tpl) in [
        ("KILL_ROUTE", &cfg.kill_route),
        ("KILL_RUN_CMD", &cfg.kill_run_cmd),
    ] {
        let Some(tpl) = tpl else { continue };
        let ok = std::fs::metadata(tpl.program())
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !ok {
            errors.push(cfg.key_error(key, format!("{} is not an executable file", tpl.program())));
        }
    }
    FileCheck { errors, warnings }
}

/// Which blocking is in effect, in the order it is applied (for check-config and the
/// worker's start-up line): the nftables set first, then the KILL_* actions.
pub fn blocking_summary(cfg: &Config) -> String {
    let mut parts = Vec::new();
    if cfg.firewall == Firewall::Nftables {
        parts.push(match cfg.firewall_origin {
            FirewallOrigin::Key => format!("nftables set (table inet {})", cfg.nft_table),
            FirewallOrigin::Default => format!(
                "nftables set (table inet {}; FIREWALL not set: the default where the kernel has nf_tables, FIREWALL=\"none\" opts out)",
                cfg.nft_table
            ),
        });
    }
    let cmd_first = cfg.kill_run_cmd_first && cfg.kill_run_cmd.is_some();
    if cmd_first {
        parts.push("KILL_RUN_CMD (KILL_RUN_CMD_FIRST)".into());
    }
    if cfg.blackhole_route {
        parts.push("blackhole route".into());
    }
    if cfg.kill_route.is_some() {
        parts.push("KILL_ROUTE".into());
    }
    if cfg.kill_hosts_deny.is_some() {
        parts.push(format!(
            "KILL_HOSTS_DENY ({})",
            cfg.hosts_deny_file.display()
        ));
    }
    if cfg.kill_run_cmd.is_some() && !cmd_first {
        parts.push("KILL_RUN_CMD".into());
    }
    let modes = match (cfg.block_tcp, cfg.block_udp) {
        (BlockMode::LogOnly, BlockMode::LogOnly) => {
            return "none: BLOCK_TCP and BLOCK_UDP are 0 (detect and log only)".into()
        }
        (t, u) => format!("BLOCK_TCP={} BLOCK_UDP={}", t.as_num(), u.as_num()),
    };
    if parts.is_empty() {
        format!("none ({modes}, but no blocking action is configured)")
    } else {
        format!("{} ({modes})", parts.join(", then "))
    }
}

/// `--for`: a Go-style duration, 1 s to ten years, whole milliseconds.
pub fn parse_block_duration(s: &str) -> Result<Duration, String> {
    let d = sentry_proto::parse_go_duration(s).map_err(|e| format!("--for {s:?}: {e}"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("--for {s:?}: a block lasts at least 1s"));
    }
    if d.as_millis() > u128::from(MAX_BLOCK_DURATION_MS) {
        return Err(format!("--for {s:?}: at most ten years (87600h)"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("--for {s:?}: finer than a millisecond"));
    }
    Ok(d)
}

/// `--origin`: a valid origin name that is not the local sensor's.
pub fn parse_origin(s: &str) -> Result<String, String> {
    sentry_proto::validate_origin(s).map_err(|e| format!("--origin: {e}"))?;
    if s == sentry_proto::ORIGIN_SENSOR {
        return Err("--origin: \"sensor\" is reserved for the local sensor".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infrastructure_not_on_the_ignore_list_is_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let ign = d.path().join("ignore");
        std::fs::write(&ign, "192.0.2.1\n").unwrap();
        let conf = d.path().join("c.conf");
        std::fs::write(&conf, format!("IGNORE_FILE=\"{}\"\n", ign.display())).unwrap();
        let cfg = policy::Config::load(&conf).unwrap();
        let ignore = cfg.load_ignore().unwrap();
        let found = [
            (
                "192.0.2.1".parse().unwrap(),
                policy::InfraReason::DefaultGateway,
            ),
            (
                "192.0.2.53".parse().unwrap(),
                policy::InfraReason::Nameserver,
            ),
        ];
        let w = infra_warnings(&cfg, &ignore, &found);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("192.0.2.53 (nameserver) is not on the ignore list"),
            "{w:?}"
        );
        assert!(w[0].contains("never blocks it"), "{w:?}");
        let r = check_config(&conf, || found.to_vec());
        assert!(r.warnings.iter().any(|x| x.contains("192.0.2.53")), "{r:?}");
        std::fs::write(
            &conf,
            format!(
                "IGNORE_FILE=\"{}\"\nNEVER_BLOCK_INFRASTRUCTURE=\"0\"\n",
                ign.display()
            ),
        )
        .unwrap();
        let cfg = policy::Config::load(&conf).unwrap();
        let w = infra_warnings(&cfg, &ignore, &found);
        assert!(w[0].contains("a single forged probe can block it"), "{w:?}");
    }

    #[test]
    fn a_broken_config_is_reported_without_asking_for_infrastructure() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("c.conf");
        std::fs::write(&conf, "AUDIT_RATE=\"0\"\n").unwrap();
        let r = check_config(&conf, || panic!("infrastructure asked for a broken file"));
        assert!(!r.ok && r.blocking.is_none(), "{r:?}");
        assert!(r.errors[0].contains(":1: AUDIT_RATE"), "{r:?}");
    }

    #[test]
    fn durations_and_origins() {
        assert_eq!(
            parse_block_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        for bad in ["4", "4d", "-4h", "500ms", "87601h", "1.0000001s", ""] {
            assert!(parse_block_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_block_duration("4d")
            .unwrap_err()
            .contains("unknown unit \"d\""));
        assert_eq!(parse_origin("fleet-1").unwrap(), "fleet-1");
        for bad in ["sensor", "a b", "", "-x"] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
