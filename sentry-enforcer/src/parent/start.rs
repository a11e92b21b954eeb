//! Start-up as root, before anything untrusted runs: accounts, directories (the worker's
//! checked to be its own), the two listening sockets, the kernel's sockets, the children, and
//! confinement; then the loop ([`super::run`]). And `--recover`.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{Gid, Group, Uid, User};

use super::args::Args;
use super::host::HostWatch;
use super::run::Loop;
use super::spawn::{self, Plan};
use super::{floor::Floor, say, Detect, Log, Parent};
use crate::kernel::{capture, netlink::NlSocket, table};

/// The users and groups the parent needs, looked up before anything is bound.
#[derive(Debug)]
pub struct Accounts {
    pub sensor: (Uid, Gid),
    pub worker: (Uid, Gid),
    pub control_gid: Option<Gid>,
}

fn user(name: &str, what: &str) -> Result<(Uid, Gid), String> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok((u.uid, u.gid)),
        Ok(None) => Err(format!("{what} {name} does not exist")),
        Err(e) => Err(format!("{what} {name}: {e}")),
    }
}

pub fn accounts(args: &Args, cfg: &policy::Config) -> Result<Accounts, String> {
    let sensor = user(&args.sensor_user, "sensor user")?;
    let hint = "create it with `useradd --system --no-create-home --shell /usr/sbin/nologin sentry-worker` (or pass --worker-user)";
    let worker = user(&args.worker_user, "worker user").map_err(|e| format!("{e}: {hint}"))?;
    if worker.0.is_root() {
        return Err(format!(
            "worker user {} is root: the worker must run unprivileged; {hint}",
            args.worker_user
        ));
    }
    let control_gid = match &cfg.control_group {
        Some(g) => match Group::from_name(g) {
            Ok(Some(g)) => Some(g.gid),
            Ok(None) => return Err(format!("CONTROL_GROUP {g} does not exist")),
            Err(e) => return Err(format!("CONTROL_GROUP {g}: {e}")),
        },
        None => None,
    };
    Ok(Accounts {
        sensor,
        worker,
        control_gid,
    })
}

/// The runtime directory: created 0755 when missing; it must be root's and not writable
/// by group or others.
pub fn runtime_dir(dir: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| err(&e))?;
        std::fs::set_permissions(dir, PermissionsExt::from_mode(0o755)).map_err(|e| err(&e))?;
    }
    let md = std::fs::symlink_metadata(dir).map_err(|e| err(&e))?;
    if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(err(&format!(
            "must be a directory owned by root and not writable by group or others (mode {:o}, uid {})",
            md.mode() & 0o7777,
            md.uid()
        )));
    }
    Ok(())
}

/// The worker's files must be its own before it starts; the parent only looks, and
/// creates or chowns nothing (issue #22: the installers, which run as root once, make
/// them: the tmpfiles.d snippet under systemd, tests/scripts/sentry-pair.sh without it).
/// A worker that cannot write its state would run and lose what it must remember, so a
/// file that is not the worker's fails the start, naming the fix.
///
/// Checked: the state directory and each directory named `sentry` (/var/log/sentry)
/// among those of AUDIT_LOG, HISTORY_FILE and BLOCKED_FILE are the worker's; those files
/// are the worker's, or missing in a directory of the worker's (where it creates them).
/// What root cannot even look at (inside the worker's 0700 directory; root holds no
/// CAP_DAC_OVERRIDE under the unit) is the worker's. Symbolic links are not followed: a
/// link in place of one of them is not the worker's file.
pub fn worker_files(
    cfg: &policy::Config,
    state: &Path,
    uid: Uid,
    user: &str,
) -> Result<(), String> {
    use std::io::ErrorKind;
    let mut bad = Vec::new();
    let mut dirs = vec![state];
    for (_, d) in cfg.worker_dirs() {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    for (i, d) in dirs.iter().enumerate() {
        let needed = i == 0 || d.file_name().is_some_and(|n| n == "sentry");
        match std::fs::symlink_metadata(d) {
            Ok(md) if !md.is_dir() => bad.push(format!("{} is not a directory", d.display())),
            Ok(md) if needed && md.uid() != uid.as_raw() => {
                bad.push(format!("{} is owned by uid {}", d.display(), md.uid()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                bad.push(format!("{} does not exist", d.display()));
            }
            Err(e) => bad.push(format!("{}: {e}", d.display())),
        }
    }
    for (_, f) in cfg.worker_files() {
        let Some(f) = f else { continue };
        match std::fs::symlink_metadata(f) {
            Ok(md) if md.is_file() && md.uid() == uid.as_raw() => {}
            Ok(md) if !md.is_file() => bad.push(format!("{} is not a regular file", f.display())),
            Ok(md) => bad.push(format!("{} is owned by uid {}", f.display(), md.uid())),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
                let dir_uid = dir.and_then(|d| std::fs::symlink_metadata(d).ok().map(|m| m.uid()));
                if dir_uid != Some(uid.as_raw()) {
                    bad.push(format!(
                        "{} does not exist and its directory is not the worker's",
                        f.display()
                    ));
                }
            }
            Err(e) => bad.push(format!("{}: {e}", f.display())),
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the worker ({user}, uid {uid}) must own its files before the enforcer starts, \
         which creates and chowns nothing: {}. Fix: with systemd, `systemd-tmpfiles \
         --create sentry.conf` (the tmpfiles.d snippet the package and `make install` \
         install: /var/lib/sentry and /var/log/sentry); without systemd, start with \
         `sentry-pair.sh start` (`make run`), which makes them; for other paths, \
         `install -d -o {user} -g {user} -m 0700 DIR` for each directory named and \
         `chown {user}: FILE` for each file",
        bad.join("; ")
    ))
}

/// Remove a stale socket left by a previous run; refuse anything that is not a socket,
/// and refuse to start while another enforcer answers on it.
fn clear_stale_socket(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(md) if !md.file_type().is_socket() => Err(format!(
            "{}: exists and is not a socket; refusing to remove it",
            path.display()
        )),
        // A worker of a parent that was just killed may hold it for a moment more.
        Ok(_)
            if (0..20).all(|_| {
                let live = UnixStream::connect(path).is_ok();
                if live {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                live
            }) =>
        {
            Err(format!(
                "{}: another enforcer is running (the socket accepts connections)",
                path.display()
            ))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// Bind a listening socket with `mode` and group `gid` (owner root). Under the parent's
/// umask 077 the file never exists with a wider mode than asked.
pub fn bind_socket(path: &Path, gid: Gid, mode: u32) -> Result<UnixListener, String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    clear_stale_socket(path)?;
    let l = UnixListener::bind(path).map_err(|e| err(&format!("bind: {e}")))?;
    let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(0)),
        Some(gid),
        flags,
    )
    .map_err(|e| err(&format!("chown: {e}")))?;
    std::fs::set_permissions(path, PermissionsExt::from_mode(mode))
        .map_err(|e| err(&format!("chmod: {e}")))?;
    Ok(l)
}

/// Start-up as root, the children, confinement, then the loop.
pub fn run(args: Args) -> Result<(), String> {
    let sig = block_signals()?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let (parent, plan, sockets) = start_up(&args)?;
    let helper =
        spawn::helper(&parent.cfg).map_err(|e| format!("cannot start the command helper: {e}"))?;
    let host = HostWatch::open().map_err(|e| say(&format!("adminalert: cannot watch address changes ({e}); own addresses are read at start only"))).ok();
    let mut l = Loop::new(parent, plan, helper, sig, sockets);
    l.host = host;
    l.p.refresh_host();
    let worker = spawn::worker(&l.plan).map_err(|e| format!("cannot start the worker: {e}"))?;
    say(&format!(
        "worker started (pid {}, uid {})",
        worker.pid, l.plan.uid
    ));
    l.worker = Some(worker);
    let keep = super::confine::parent_caps(crate::peercheck::needs_ptrace(&l.p.sensor_want));
    confine(&keep)?;
    say(&format!(
        "started: config {}, capabilities kept {keep:?}",
        l.p.cfg.path.display(),
    ));
    // Every block waits for this thread: a short slice lets it preempt a busy task when
    // the worker's request wakes it, as the worker's sensor thread does (the kernel's
    // minimum, 100 us; no more CPU in total). Forked children do not inherit it.
    if let Err(e) = sentry_sched::set_sched_slice(100_000) {
        say(&format!(
            "adminalert: warning: cannot set a short scheduler slice: {e}"
        ));
    }
    l.serve()
}

/// The parent's capabilities and its seccomp filter.
pub fn confine(keep: &[caps::Capability]) -> Result<(), String> {
    use caps::Capability::CAP_NET_ADMIN;
    for w in super::confine::keep_only(keep, &[CAP_NET_ADMIN])? {
        say(&format!("adminalert: confinement: {w}"));
    }
    super::confine::apply_seccomp()
}

pub fn block_signals() -> Result<SignalFd, String> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| format!("sigprocmask: {e}"))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))
}

/// Configuration, accounts, directories, sockets and the kernel's sockets.
pub fn start_up(args: &Args) -> Result<(Parent, Plan, Vec<PathBuf>), String> {
    let cfg = policy::Config::load(&args.config).map_err(|e| e.to_string())?;
    for w in &cfg.warnings {
        say(&format!("adminalert: config: {w}"));
    }
    let ignore = cfg.load_ignore().map_err(|e| e.to_string())?;
    let acc = accounts(args, &cfg)?;
    runtime_dir(&args.runtime_dir)?;
    worker_files(&cfg, &args.state_dir, acc.worker.0, &args.worker_user)?;
    let paths = vec![
        args.runtime_dir.join("enforcer.sock"),
        args.runtime_dir.join("control.sock"),
    ];
    let sensor = bind_socket(&paths[0], acc.sensor.1, 0o660)?;
    let control = match acc.control_gid {
        Some(g) => bind_socket(&paths[1], g, 0o660),
        None => bind_socket(&paths[1], Gid::from_raw(0), 0o600),
    }
    .inspect_err(|_| drop(std::fs::remove_file(&paths[0])))?;
    let opened = open_parent(cfg, ignore, args, acc.sensor.0.as_raw()).and_then(|p| {
        let (exe, argv) = worker_argv(args, true)?;
        let (uid, gid) = acc.worker;
        let (sensor, control) = (sensor.into(), control.into());
        Ok((
            p,
            Plan {
                exe,
                argv,
                uid,
                gid,
                sensor,
                control,
            },
        ))
    });
    match opened {
        Ok((p, plan)) => Ok((p, plan, paths)),
        Err(e) => {
            paths.iter().for_each(|p| drop(std::fs::remove_file(p)));
            Err(e)
        }
    }
}

/// The worker's binary and command line: `[worker, "--privsep", <our arguments>]`
/// (`--recover`: without `--privsep`).
pub fn worker_argv(args: &Args, privsep: bool) -> Result<(CString, Vec<CString>), String> {
    let exe = match &args.worker {
        Some(p) => p.clone(),
        None => crate::peercheck::default_exe()
            .map_err(|e| format!("own executable: {e}"))?
            .with_file_name("sentry-worker"),
    };
    let c = |s: &[u8]| CString::new(s).map_err(|_| "an argument holds a NUL byte".to_string());
    let exe = c(exe.as_os_str().as_bytes())?;
    let mut argv = vec![exe.clone()];
    if privsep {
        argv.push(c(b"--privsep")?);
    }
    for a in &args.raw {
        argv.push(c(a.as_bytes())?);
    }
    Ok((exe, argv))
}

/// The kernel side: what nf_tables offers, the set, served-port and route sockets, the
/// first NFLOG group, the sensor's expected executable.
fn open_parent(
    cfg: policy::Config,
    ignore: policy::IgnoreList,
    args: &Args,
    sensor_uid: u32,
) -> Result<Parent, String> {
    let support = table::probe_support(&cfg.nft_table);
    if let Err(e) = &support.nftables {
        say(&format!("adminalert: ERROR: nf_tables is missing or unusable ({e}): no table and no detection chain can be built"));
    }
    let nft = match cfg.firewall {
        policy::Firewall::Nftables => NlSocket::netfilter()
            .map_err(|e| say(&format!("adminalert: ERROR: netfilter netlink: {e}")))
            .ok(),
        policy::Firewall::None => None,
    };
    let route = match cfg.blackhole_route {
        true => Some(NlSocket::route().map_err(|e| format!("route netlink: {e}"))?),
        false => None,
    };
    // Its own socket: the served sets are part of the detection chain, which is built
    // whatever FIREWALL says (the block sets' socket exists only for nftables).
    let served = match (cfg.restart_grace.is_zero(), &support.nftables) {
        (false, Ok(())) => NlSocket::netfilter()
            .map_err(|e| say(&format!("adminalert: ERROR: cannot write the served ports ({e}): RESTART_GRACE holds in the sensor only")))
            .ok(),
        _ => None,
    };
    // Start on a group nobody holds (a sensor of an earlier run may keep its socket).
    let group =
        capture::open_next(*capture::GROUPS.end(), 0).map_or(capture::NFLOG_GROUP, |(g, _)| g);
    let exe = match &args.sensor_exe {
        Some(p) => p.clone(),
        None => crate::peercheck::default_exe().map_err(|e| format!("own executable: {e}"))?,
    };
    let unit = crate::peercheck::own_unit().map(|own| {
        let name = args.sensor_unit.as_deref();
        crate::peercheck::Unit::sibling(&own, name.unwrap_or(crate::peercheck::DEFAULT_UNIT))
    });
    say(&format!(
        "adminalert: the detection input goes only to a sensor running {}{}",
        exe.display(),
        unit.as_ref()
            .map(|u| format!(" in unit {} ({})", u.name, u.dir.display()))
            .unwrap_or_default()
    ));
    Ok(Parent {
        floor: Floor::new(&cfg, ignore),
        cfg,
        nft,
        route,
        support,
        watch: None,
        table_foreign: false,
        served,
        detect: Detect {
            group,
            ..Detect::default()
        },
        sensor_uid,
        sensor_want: crate::peercheck::Expected { exe, unit },
        log: Log::default(),
        metrics_at: None,
    })
}

impl Parent {
    /// METRICS_DIR's textfile from the worker's rendered file (`fd`).
    pub fn metrics(&mut self, id: u32, fd: Option<OwnedFd>) -> sentry_privsep::Reply {
        use sentry_privsep::{Refusal, Reply, Verb};
        let Some(dir) = self.cfg.metrics_dir.clone() else {
            return self.refuse(Verb::Metrics, None, id, Refusal::NotConfigured);
        };
        let Some(fd) = fd else {
            return self.refuse(Verb::Metrics, None, id, Refusal::Malformed);
        };
        let now = std::time::Instant::now();
        if self
            .metrics_at
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_millis(900))
        {
            return self.refuse(Verb::Metrics, None, id, Refusal::Rate);
        }
        self.metrics_at = Some(now);
        match crate::effects::textfile::publish(&dir, fd) {
            Ok(()) => Reply::ok(id),
            Err(e) => Reply::fail(
                id,
                e.raw_os_error().map_or(0, |x| x as u64),
                &format!("METRICS_DIR {}: {e}", dir.display()),
            ),
        }
    }

    /// The ignore list again (a list that does not load is said and the old one kept),
    /// the detection chain's ignore sets with it: on SIGHUP, and when the worker got one.
    pub fn reload_ignore(&mut self, id: u32) -> sentry_privsep::Reply {
        use sentry_privsep::Reply;
        match self.cfg.load_ignore() {
            Ok(i) => {
                self.floor.set_ignore(i);
                if let Err(e) = self.apply_detection() {
                    say(&format!(
                        "adminalert: ERROR: detection chain not rebuilt with the ignore list: {e}"
                    ));
                }
                Reply::ok(id)
            }
            Err(e) => {
                let m = format!("ignore list not reloaded (old one kept): {e}");
                say(&format!("adminalert: ERROR: {m}"));
                Reply::fail(id, 0, &m)
            }
        }
    }

    /// Read this host's addresses and default gateways again; rebuild the detection chain
    /// when the gateways (which it never blocks) changed.
    pub fn refresh_host(&mut self) {
        let (own, ends) = super::host::addresses();
        let gateways = match super::host::default_gateways() {
            Ok(g) => g,
            Err(e) => {
                say(&format!(
                    "adminalert: cannot read the default gateways ({e}); the last ones are kept"
                ));
                self.floor.gateways()
            }
        };
        let changed = gateways != self.floor.gateways();
        self.floor.set_host(own, ends, &gateways);
        if changed {
            if let Err(e) = self.apply_detection() {
                say(&format!(
                    "adminalert: ERROR: detection chain not rebuilt for the gateways: {e}"
                ));
            }
        }
    }
}

/// `--recover`: the worker's offline recovery, run as the worker user (it reads the
/// state directory, BLOCKED_FILE and hosts.deny, and writes only the state directory).
pub fn recover(args: &Args) -> Result<(), String> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let control = args.runtime_dir.join("control.sock");
    if std::os::unix::net::UnixStream::connect(&control).is_ok() {
        return Err(format!(
            "{}: an enforcer is running; stop it before --recover",
            control.display()
        ));
    }
    let cfg = policy::Config::load(&args.config).map_err(|e| e.to_string())?;
    let acc = accounts(args, &cfg)?;
    worker_files(&cfg, &args.state_dir, acc.worker.0, &args.worker_user)?;
    let (exe, argv) = worker_argv(args, false)?;
    spawn::drop_to(acc.worker.0, acc.worker.1)?;
    crate::sys::reset_signals().map_err(|e| e.to_string())?;
    let env: [CString; 0] = [];
    let e = nix::unistd::execve(&exe, &argv, &env).unwrap_err();
    Err(format!("exec {exe:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_command_line() {
        let a = ["--worker", "/opt/w", "--config=/c", "--log-stderr"].map(std::ffi::OsString::from);
        let super::super::args::Cmd::Run(a) = super::super::args::parse(a).unwrap() else {
            panic!()
        };
        let (exe, argv) = worker_argv(&a, true).unwrap();
        assert_eq!(exe.to_str().unwrap(), "/opt/w");
        let argv: Vec<&str> = argv.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(
            argv,
            [
                "/opt/w",
                "--privsep",
                "--worker",
                "/opt/w",
                "--config=/c",
                "--log-stderr"
            ]
        );
        assert_eq!(worker_argv(&a, false).unwrap().1.len(), 5);
    }

    #[test]
    fn stale_sockets() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sock");
        assert!(clear_stale_socket(&p).is_ok());
        std::fs::write(&p, "").unwrap();
        assert!(clear_stale_socket(&p).unwrap_err().contains("not a socket"));
        std::fs::remove_file(&p).unwrap();
        let l = UnixListener::bind(&p).unwrap();
        assert!(clear_stale_socket(&p)
            .unwrap_err()
            .contains("another enforcer"));
        drop(l);
        assert!(clear_stale_socket(&p).is_ok() && !p.exists());
    }

    /// What an older, single-process enforcer left (a root-owned state directory with
    /// root's files in it, a file linked to another of root's) is refused with the fix
    /// named, and stays as it was: the parent gives nothing away, not even through the
    /// links (the run script and the packaging hand such a directory over).
    #[test]
    fn old_root_owned_state_is_refused_and_left_alone() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED (needs root): old_root_owned_state_is_refused_and_left_alone");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let conf = format!(
            "AUDIT_LOG=\"{0}/log/sentry/audit.jsonl\"\nHISTORY_FILE=\"{0}/state/h\"\nBLOCKED_FILE=\"{0}/state/linked\"\n",
            d.path().display()
        );
        let cfg = policy::Config::parse(&conf, Path::new("t.conf")).unwrap();
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir_all(d.path().join("log/sentry")).unwrap();
        std::fs::write(state.join("journal"), "x").unwrap();
        std::fs::write(state.join("h"), "").unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        std::fs::hard_link(d.path().join("secret"), state.join("linked")).unwrap();
        let w = Uid::from_raw(65534);
        let e = worker_files(&cfg, &state, w, "sentry-worker").unwrap_err();
        for named in [&state, &state.join("h"), &state.join("linked")] {
            assert!(
                e.contains(&format!("{} is owned by uid 0", named.display())),
                "{e}"
            );
        }
        assert!(
            e.contains("the worker (sentry-worker, uid 65534)")
                && e.contains("systemd-tmpfiles --create sentry.conf")
                && e.contains("sentry-pair.sh start")
                && e.contains("install -d -o sentry-worker -g sentry-worker -m 0700 DIR"),
            "{e}"
        );
        let uid = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        for p in [
            state.clone(),
            state.join("journal"),
            state.join("h"),
            d.path().join("secret"),
            d.path().join("log/sentry"),
        ] {
            assert_eq!(uid(&p), 0, "{}", p.display());
        }
        assert!(!d.path().join("log/sentry/audit.jsonl").exists());
    }

    /// Files that are not the worker's fail the start with the fix named, and nothing is
    /// created (it would be root's); once they are the worker's (what the tmpfiles.d
    /// snippet or the run script does), the start goes on and changes nothing.
    #[test]
    fn worker_files_are_checked_and_nothing_is_made() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED (needs root): worker_files_are_checked_and_nothing_is_made");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let conf = format!(
            "AUDIT_LOG=\"{0}/log/sentry/audit.jsonl\"\nHISTORY_FILE=\"{0}/state/h\"\nBLOCKED_FILE=\"{0}/state/b\"\n",
            d.path().display()
        );
        let cfg = policy::Config::parse(&conf, Path::new("t.conf")).unwrap();
        let state = d.path().join("state");
        let log = d.path().join("log/sentry");
        let w = Uid::from_raw(65534);
        let check = || worker_files(&cfg, &state, w, "nobody");
        // Missing: nothing is created (it would be root's).
        let e = check().unwrap_err();
        assert!(
            e.contains(&format!("{} does not exist", state.display()))
                && e.contains(&format!("{} does not exist", log.display()))
                && e.contains("systemd-tmpfiles --create sentry.conf"),
            "{e}"
        );
        assert!(!state.exists() && !log.exists());
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir_all(&log).unwrap();
        // Root's, as an older root-only enforcer or systemd's StateDirectory= left them.
        std::fs::write(state.join("h"), "").unwrap();
        let e = check().unwrap_err();
        for p in [&state, &log, &state.join("h")] {
            assert!(
                e.contains(&format!("{} is owned by uid 0", p.display())),
                "{e}"
            );
        }
        let own = |p: &Path| nix::unistd::chown(p, Some(w), None).unwrap();
        for p in [&state, &log, &state.join("h")] {
            own(p);
        }
        // The audit log and BLOCKED_FILE are missing in the worker's directories: it
        // creates them itself.
        check().unwrap();
        assert!(!log.join("audit.jsonl").exists() && !state.join("b").exists());
        // A symbolic link in a file's place is not the worker's file.
        std::os::unix::fs::symlink("/etc/passwd", log.join("audit.jsonl")).unwrap();
        let e = check().unwrap_err();
        assert!(e.contains("audit.jsonl is not a regular file"), "{e}");
    }
}
