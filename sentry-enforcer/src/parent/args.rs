//! The command line: today's enforcer options (passed on to the worker unchanged) plus
//! the parent's own `--worker-user` and `--worker`.

use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: sentry-enforcer [--config FILE] [--runtime-dir DIR] [--state-dir DIR]
                       [--sensor-user USER] [--sensor-exe PATH] [--sensor-unit UNIT]
                       [--worker-user USER] [--worker PATH] [--log-stderr] [--boot-id ID]
       sentry-enforcer --recover [--config FILE] [--runtime-dir DIR] [--state-dir DIR]
       sentry-enforcer --help | --version

The root parent of sentry: binds DIR/enforcer.sock and DIR/control.sock, starts the
unprivileged worker (which authenticates the sensor, judges, persists and audits) and
carries out the worker's requests for nftables elements, routes, hosts.deny lines and
kill commands, each checked against the parent's own floor.

  --config FILE       configuration (default /etc/sentry/sentry.conf, or
                      /etc/portsentry/portsentry.conf if only that exists)
  --runtime-dir DIR   sockets (default /run/sentry)
  --state-dir DIR     persistent block state, owned by the worker user
                      (default /var/lib/sentry)
  --sensor-user USER  the only user allowed on enforcer.sock (default sentry)
  --sensor-exe PATH   the sensor binary (default sentry-sensor next to this executable)
  --sensor-unit UNIT  under systemd, the sensor's unit (default sentry-sensor.service)
  --worker-user USER  the worker's user (default sentry-worker; never root)
  --worker PATH       the worker binary (default sentry-worker next to this executable)
  --log-stderr        the worker logs to stderr instead of syslog (the parent always
                      writes its few lines to stderr)
  --boot-id ID        the current boot's id (the unit passes systemd's %b)
  --recover           run the worker's offline recovery as the worker user, and exit
";

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub config: PathBuf,
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
    pub sensor_user: String,
    pub sensor_exe: Option<PathBuf>,
    pub sensor_unit: Option<String>,
    pub worker_user: String,
    /// `None`: `sentry-worker` in the directory of our own executable.
    pub worker: Option<PathBuf>,
    pub recover: bool,

    /// Every argument as given, for the worker's command line.
    pub raw: Vec<String>,
}

/// What the command line asks for.
// Made once, at start, and matched at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Run(Args),
    Help,
    Version,
}

/// Options that take a value; the parent reads some of them, the worker all.
const VALUED: [&str; 11] = [
    "--config",
    "--runtime-dir",
    "--state-dir",
    "--sensor-user",
    "--sensor-exe",
    "--sensor-unit",
    "--worker-user",
    "--worker",
    "--infra-root",
    "--boot-id-file",
    "--boot-id",
];

/// Parse arguments (without `argv[0]`): `--opt VALUE` or `--opt=VALUE`; a repeated or
/// unknown option, or an empty value, is an error.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cmd, String> {
    let mut raw = Vec::new();
    let mut given: Vec<(&'static str, String)> = Vec::new();
    let mut flags: Vec<&'static str> = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let a = a
            .into_string()
            .map_err(|a| format!("argument is not valid UTF-8: {}", a.to_string_lossy()))?;
        raw.push(a.clone());
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        match name {
            "--help" | "-h" => return Ok(Cmd::Help),
            "--version" | "-V" => return Ok(Cmd::Version),
            "--log-stderr" | "--recover" => {
                let f = if name == "--recover" {
                    "--recover"
                } else {
                    "--log-stderr"
                };
                if inline.is_some() || flags.contains(&f) {
                    return Err(format!("{f} takes no value and is given once"));
                }
                flags.push(f);
                continue;
            }
            _ => {}
        }
        let Some(opt) = VALUED.into_iter().find(|o| *o == name) else {
            return Err(format!("unknown argument {name:?}"));
        };
        if given.iter().any(|(o, _)| *o == opt) {
            return Err(format!("{opt} given twice"));
        }
        let v = match inline {
            Some(v) => v,
            None => {
                let v = it.next().ok_or_else(|| format!("{opt} needs a value"))?;
                let v = v
                    .into_string()
                    .map_err(|_| format!("{opt}: not valid UTF-8"))?;
                raw.push(v.clone());
                v
            }
        };
        if v.is_empty() {
            return Err(format!("{opt}: empty value"));
        }
        // A path component under /sys/fs/cgroup (the sensor check): a name, nothing more.
        if opt == "--sensor-unit" && !crate::peercheck::is_service_name(&v) {
            return Err(format!(
                "{opt}: {v:?} is not a service unit name (NAME.service)"
            ));
        }
        given.push((opt, v));
    }
    let get = |o: &str| given.iter().find(|(n, _)| *n == o).map(|(_, v)| v.clone());
    Ok(Cmd::Run(Args {
        config: get("--config").map_or_else(policy::Config::default_path, PathBuf::from),
        runtime_dir: get("--runtime-dir")
            .unwrap_or_else(|| "/run/sentry".into())
            .into(),
        state_dir: get("--state-dir")
            .unwrap_or_else(|| "/var/lib/sentry".into())
            .into(),
        sensor_user: get("--sensor-user").unwrap_or_else(|| "sentry".into()),
        sensor_exe: get("--sensor-exe").map(PathBuf::from),
        sensor_unit: get("--sensor-unit"),
        worker_user: get("--worker-user").unwrap_or_else(|| "sentry-worker".into()),
        worker: get("--worker").map(PathBuf::from),
        recover: flags.contains(&"--recover"),
        raw,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(v: &[&str]) -> Result<Args, String> {
        match parse(v.iter().map(OsString::from))? {
            Cmd::Run(a) => Ok(a),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn options_defaults_and_raw() {
        let a = run(&[
            "--config",
            "/x.conf",
            "--runtime-dir=/r",
            "--worker-user",
            "w",
            "--worker=/opt/w",
            "--log-stderr",
            "--boot-id",
            "abc",
        ])
        .unwrap();
        assert_eq!(a.config, PathBuf::from("/x.conf"));
        assert_eq!(a.runtime_dir, PathBuf::from("/r"));
        assert_eq!(a.worker_user, "w");
        assert_eq!(a.worker, Some(PathBuf::from("/opt/w")));
        assert!(!a.recover);
        assert_eq!(a.raw.len(), 9);
        assert_eq!(a.raw[1], "/x.conf");
        let d = run(&[]).unwrap();
        assert_eq!(d.state_dir, PathBuf::from("/var/lib/sentry"));
        assert_eq!(
            (d.sensor_user.as_str(), d.worker_user.as_str()),
            ("sentry", "sentry-worker")
        );
        assert_eq!(d.worker, None);
        assert!(run(&["--recover"]).unwrap().recover);
    }

    #[test]
    fn refusals() {
        for bad in [
            &["--bogus"][..],
            &["--config"],
            &["--config", "a", "--config=b"],
            &["--state-dir="],
            &["--log-stderr=1"],
            &["--recover", "--recover"],
            &["-x"],
            &["--sensor-unit", "../../x.service"],
            &["--sensor-unit=sentry-sensor"],
        ] {
            assert!(run(bad).is_err(), "{bad:?}");
        }
        let e = run(&["--bogus"]).unwrap_err();
        assert!(e.contains("unknown argument \"--bogus\""), "{e}");
        assert_eq!(parse([OsString::from("--help")]), Ok(Cmd::Help));
        assert_eq!(parse([OsString::from("-V")]), Ok(Cmd::Version));
    }
}
