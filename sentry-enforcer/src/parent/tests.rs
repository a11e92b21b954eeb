//! The parent as it runs: real start-up, the real command helper, its capabilities and
//! seccomp filter, in a private network namespace, with this test in the worker's seat
//! (hostile requests included), then a worker restart under the filter and SIGTERM.

#[cfg(test)]
mod under_filter {
    use std::net::IpAddr;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use sentry_privsep::{
        Channel, Event, Hello, Modes, Outcome, Refusal, Reply, ReplyKind, Request, SetName, Verb,
        VERSION,
    };

    use super::super::run::Loop;
    use super::super::start::{confine, start_up};
    use super::super::{args, spawn};

    const CHILD: &str = "SENTRY_PARENT_UNDER_FILTER";

    /// Run [`child`] in a process of its own (one test thread, no others running), so
    /// the fork in it happens with no lock held by another thread.
    #[test]
    fn parent_under_its_filter() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED (needs root): parent_under_its_filter");
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "parent::tests::under_filter::child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for l in text.lines().filter(|l| l.contains("round trip")) {
            eprintln!("{l}");
        }
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }

    #[test]
    #[ignore = "run by parent_under_its_filter"]
    fn child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let d = tempfile::tempdir().unwrap();
        let Some(pid) = crate::sys::fork().unwrap() else {
            let code = match std::panic::catch_unwind(|| parent(d.path())) {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    eprintln!("parent: {e}");
                    1
                }
                Err(_) => 2,
            };
            std::process::exit(code);
        };
        let st = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(st, nix::sys::wait::WaitStatus::Exited(pid, 0));
    }

    fn sh(cmd: &str) {
        let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
        assert!(st.success(), "{cmd}");
    }

    /// The forked process: set up, start the parent with this test's channels as its
    /// worker, confine it, serve until SIGTERM.
    fn parent(d: &Path) -> Result<(), String> {
        sh(
            "ip link set lo up && ip link add d0 type veth peer name d1 && ip link set d1 up && ip addr add 192.0.2.10/24 dev d0 \
            && ip link set d0 up && ip route add default via 192.0.2.1 \
            && ip -6 addr add 2001:db8:1:2::5/64 dev d0 nodad",
        );
        std::fs::set_permissions(d, PermissionsExt::from_mode(0o711)).unwrap();
        let out = d.join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, PermissionsExt::from_mode(0o777)).unwrap();
        let script = out.join("worker.sh");
        let body = format!(
            "#!/bin/sh\n{{ id -u; echo \"$@\"; ls /proc/self/fd; }} > {0}/worker.tmp && mv {0}/worker.tmp {0}/worker.out\nexec sleep 30\n",
            out.display()
        );
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(d.join("ignore"), "10.0.0.0/8\n").unwrap();
        std::fs::write(d.join("hosts.deny"), "").unwrap();
        let conf = format!(
            "IGNORE_FILE=\"{0}/ignore\"\nHOSTS_DENY_FILE=\"{0}/hosts.deny\"\nKILL_HOSTS_DENY=\"ALL: $TARGET$\"\n\
             KILL_RUN_CMD=\"/bin/true $TARGET$ $PORT$\"\nKILL_ROUTE=\"/bin/false $TARGET$\"\nBLACKHOLE_ROUTE=\"1\"\n\
             MAX_BLOCKS=\"3\"\nBLOCK_RATE=\"1\"\nFLEET_BLOCK_RATE=\"1\"\nAUDIT_LOG=\"{0}/log/sentry/audit.jsonl\"\n\
             TCP_PORTS=\"1,23\"\nBLOCK_TCP=\"1\"\n",
            d.display()
        );
        std::fs::write(d.join("c.conf"), conf).unwrap();
        // The worker's (nobody's) directories, made as the installers make them: the
        // parent only checks them.
        for (dir, mode) in [("state", 0o700), ("log/sentry", 0o750)] {
            let p = d.join(dir);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, PermissionsExt::from_mode(mode)).unwrap();
            nix::unistd::chown(
                &p,
                Some(nix::unistd::Uid::from_raw(65534)),
                Some(nix::unistd::Gid::from_raw(65534)),
            )
            .unwrap();
        }
        let argv = [
            "--config",
            &format!("{}/c.conf", d.display()),
            "--runtime-dir",
            &format!("{}/run", d.display()),
            "--state-dir",
            &format!("{}/state", d.display()),
            "--sensor-user",
            "nobody",
            "--worker-user",
            "nobody",
            "--sensor-exe",
            &std::env::current_exe().unwrap().display().to_string(),
            "--worker",
            &script.display().to_string(),
            "--log-stderr",
        ];
        let args::Cmd::Run(a) = args::parse(argv.iter().map(std::ffi::OsString::from))? else {
            return Err("args".into());
        };
        run_parent(&a, d)
    }

    fn run_parent(a: &args::Args, d: &Path) -> Result<(), String> {
        let sig = super::super::start::block_signals()?;
        let (p, plan, sockets) = start_up(a)?;
        let helper = spawn::helper(&p.cfg).map_err(|e| e.to_string())?;
        let mut l = Loop::new(p, plan, helper, sig, sockets.clone());
        l.host = super::super::host::HostWatch::open().ok();
        l.p.refresh_host();
        // This test is the worker: a stand-in process gives it a pid and a pidfd. It runs
        // as the worker user (nobody), as a real worker does: the parent, without
        // CAP_KILL, must still stop it (events_and_restart) and, at the end, SIGTERM it.
        let stand_in = Command::new("sleep")
            .arg("1000")
            .uid(65534)
            .gid(65534)
            .spawn()
            .map_err(|e| e.to_string())?;
        let (ends, mine) = pairs();
        let [rpc, fx, events] = ends;
        for c in [&rpc, &fx, &events] {
            spawn::nonblocking(c).map_err(|e| e.to_string())?;
        }
        l.worker = Some(spawn::Worker {
            pid: nix::unistd::Pid::from_raw(i32::try_from(stand_in.id()).unwrap()),
            pidfd: crate::sys::pidfd_open(stand_in.id()).map_err(|e| e.to_string())?,
            rpc,
            fx,
            events,
            started: Instant::now(),
        });
        let dir = d.to_path_buf();
        let worker = std::thread::spawn(move || play_worker(mine, &dir));
        if std::env::var_os("SENTRY_TEST_NO_SECCOMP").is_some() {
            // For strace runs that list what the filter must allow.
            super::super::confine::keep_only(&super::super::confine::parent_caps(true), &[])?;
        } else {
            confine(&super::super::confine::parent_caps(true))?;
        }
        l.serve()?;
        let r = worker
            .join()
            .map_err(|_| "the worker's thread panicked".to_string())?;
        if sockets.iter().any(|s| s.exists()) {
            return Err("sockets left behind".into());
        }
        r
    }

    fn pairs() -> ([Channel; 3], [Channel; 3]) {
        let (a, b) = Channel::pair().unwrap();
        let (c, e) = Channel::pair().unwrap();
        let (f, g) = Channel::pair().unwrap();
        ([a, c, f], [b, e, g])
    }

    struct W {
        rpc: Channel,
        fx: Channel,
        events: Channel,
        id: u32,
    }

    impl W {
        fn call_on(
            &mut self,
            fx: bool,
            items: &[Request],
            fd: Option<std::os::fd::BorrowedFd<'_>>,
        ) -> (Vec<Reply>, Option<OwnedFd>) {
            self.id += 1;
            let ch = if fx { &self.fx } else { &self.rpc };
            let last = items.len() - 1;
            for (i, it) in items.iter().enumerate() {
                let r = Request {
                    id: self.id,
                    more: i < last,
                    ..*it
                };
                ch.send_request(&r, if i == last { fd } else { None })
                    .unwrap();
            }
            let mut out = Vec::new();
            loop {
                let (rep, fd) = ch.recv_reply().unwrap();
                assert_eq!(rep.id, self.id);
                let more = rep.kind == ReplyKind::Elem;
                out.push(rep);
                if !more {
                    return (out, fd);
                }
            }
        }

        fn call(&mut self, items: &[Request]) -> Reply {
            self.call_on(false, items, None).0.pop().unwrap()
        }

        fn one(&mut self, verb: Verb, addr: &str) -> Reply {
            self.call(&[Request::for_addr(verb, 0, addr.parse().unwrap())])
        }
    }

    fn refused(r: &Reply) -> Option<Refusal> {
        (r.kind == ReplyKind::Refused)
            .then(|| Refusal::ALL.into_iter().find(|x| *x as u8 == r.code))
            .flatten()
    }

    fn ok(r: &Reply) -> bool {
        r.kind == ReplyKind::Ok
    }

    fn play_worker(mine: [Channel; 3], d: &Path) -> Result<(), String> {
        let [rpc, fx, events] = mine;
        let mut w = W {
            rpc,
            fx,
            events,
            id: 0,
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| script(&mut w, d)));
        // Whatever happened, stop the parent.
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
        r.map_err(|e| {
            format!(
                "worker script: {:?}",
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            )
        })
    }

    fn script(w: &mut W, d: &Path) {
        kernel_verbs(w);
        // The parent's thread (the process's main one) is confined by now.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(
            status.contains("Seccomp:\t2") && status.contains("NoNewPrivs:\t1"),
            "{status}"
        );
        // ...and holds neither CAP_KILL (bit 5: it signals its worker through a child with
        // the worker's uid) nor CAP_CHOWN (bit 0: it gives nothing away), but CAP_SETUID
        // (bit 7).
        let capeff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap();
        assert_eq!(capeff & (1 << 5 | 1 << 0 | 1 << 7), 1 << 7, "{status}");
        floor_and_caps(w);
        effects(w, d);
        events_and_restart(w, d);
    }

    fn kernel_verbs(w: &mut W) {
        let mut hello = Request::new(Verb::Hello, 0);
        assert_eq!(refused(&w.call(&[hello])), Some(Refusal::Version));
        hello.extra = VERSION;
        let h = w.call(&[hello]);
        assert!(ok(&h), "{h:?}");
        let bits = Hello(h.a);
        assert!(
            bits.has(Hello::NFT) && bits.has(Hello::ROUTE) && bits.has(Hello::NFTABLES),
            "{h:?}"
        );
        let mut net = Request::for_addr(Verb::Build, 0, "2001:db8:5::".parse().unwrap());
        net.prefix = 64;
        let build = [
            Request::for_addr(Verb::Build, 0, "198.51.100.7".parse().unwrap()),
            net,
            Request::for_addr(Verb::Build, 0, "192.0.2.10".parse().unwrap()),
        ];
        let b = w.call(&build);
        assert!(ok(&b) && b.a == 2 && b.b == 1, "{b:?}");
        let too_many: Vec<Request> = (0..7u8)
            .map(|i| Request::for_addr(Verb::Build, 0, IpAddr::from([198, 51, 100, 20 + i])))
            .collect();
        assert_eq!(refused(&w.call(&too_many)), Some(Refusal::Cap));
        let mut modes = Request::new(Verb::Detect, 0);
        modes.extra = u64::from(Modes::STCP | Modes::ATCP);
        let det = w.call(&[
            Request::for_addr(Verb::Detect, 0, "192.0.2.53".parse().unwrap()),
            modes,
        ]);
        assert!(ok(&det), "{det:?}");
        let (r1, fd1) = w.call_on(false, &[Request::new(Verb::Nflog, 0)], None);
        let (r2, fd2) = w.call_on(false, &[Request::new(Verb::Nflog, 0)], None);
        assert!(
            ok(&r1[0]) && ok(&r2[0]) && fd1.is_some() && fd2.is_some(),
            "{r1:?} {r2:?}"
        );
        assert_ne!(r1[0].port, r2[0].port);
        let mut add = Request::for_addr(Verb::NftAdd, 0, "198.51.100.8".parse().unwrap());
        add.timeout_ms = 60_000;
        assert!(ok(&w.call(&[add])));
        let mut dump = Request::new(Verb::Dump, 0);
        dump.extra = 100;
        let (elems, _) = w.call_on(false, &[dump], None);
        let end = elems.last().unwrap();
        assert_eq!((end.kind, end.a), (ReplyKind::End, 3), "{elems:?}");
        let items: Vec<_> = elems.iter().flat_map(|r| r.elems.iter()).collect();
        assert!(items.iter().any(|e| e.addr
            == "2001:db8:5::".parse::<std::net::IpAddr>().unwrap()
            && e.prefix == 64));
        assert!(items.iter().any(|e| e.addr
            == "198.51.100.8".parse::<std::net::IpAddr>().unwrap()
            && e.expires_ms > 50_000));
        let gone = [
            add,
            Request::for_addr(Verb::NftDel, 0, "198.51.100.200".parse().unwrap()),
        ];
        let del = w.call(&gone.map(|r| Request {
            verb: Verb::NftDel,
            ..r
        }));
        assert!(ok(&del), "{del:?}");
        let mut forget = Request::for_addr(Verb::Forget, 0, "198.51.100.7".parse().unwrap());
        forget.flag = SetName::Hit4 as u8;
        assert!(ok(&w.call(&[forget])));
        assert!(ok(&w.call(&[Request::new(Verb::Reload, 0)])));
    }

    fn floor_and_caps(w: &mut W) {
        for (a, why) in [
            ("192.0.2.1", Refusal::Gateway),
            ("192.0.2.10", Refusal::OwnAddress),
            ("2001:db8:1:2::5", Refusal::OwnAddress),
            ("127.0.0.2", Refusal::Loopback),
            ("10.1.2.3", Refusal::Ignored),
            ("192.0.2.255", Refusal::Broadcast),
            ("224.0.0.1", Refusal::Multicast),
            ("fe80::1", Refusal::LinkLocal),
        ] {
            for verb in [
                Verb::NftAdd,
                Verb::RouteAdd,
                Verb::DenyAdd,
                Verb::KillRunCmd,
            ] {
                assert_eq!(refused(&w.one(verb, a)), Some(why), "{verb:?} {a}");
            }
        }
        let mixed = [
            Request::for_addr(Verb::NftAdd, 0, "198.51.100.9".parse().unwrap()),
            Request::for_addr(Verb::NftAdd, 0, "192.0.2.1".parse().unwrap()),
        ];
        let m = w.call(&mixed);
        assert!(ok(&m) && m.a == 1 && m.b == 1, "{m:?}");
        // A batch broken by another verb is refused; the new request is still answered.
        let start = Request {
            id: w.id + 1,
            more: true,
            ..Request::for_addr(Verb::NftAdd, 0, "198.51.100.30".parse().unwrap())
        };
        let del = Request {
            id: w.id + 2,
            ..Request::for_addr(Verb::NftDel, 0, "198.51.100.31".parse().unwrap())
        };
        w.id += 2;
        w.rpc.send_request(&start, None).unwrap();
        w.rpc.send_request(&del, None).unwrap();
        let (broken, _) = w.rpc.recv_reply().unwrap();
        assert_eq!(
            (broken.id, refused(&broken)),
            (start.id, Some(Refusal::Malformed)),
            "{broken:?}"
        );
        let (after, _) = w.rpc.recv_reply().unwrap();
        assert!(after.id == del.id && ok(&after), "{after:?}");
        // The hard rate: 120 element adds a minute (2 made so far).
        let mut n_ok = 0;
        let mut rate = false;
        let mut took = Vec::new();
        for i in 0..200u32 {
            let t = Instant::now();
            let r = w.one(
                Verb::NftAdd,
                &IpAddr::from((0xcb00_7100u32 + i).to_be_bytes()).to_string(),
            );
            if ok(&r) {
                took.push(t.elapsed());
            }
            n_ok += u32::from(ok(&r));
            rate |= refused(&r) == Some(Refusal::Rate);
        }
        assert!(rate && n_ok == 118, "{n_ok} {rate}");
        took.sort();
        let p = |q: usize| took[(took.len() - 1) * q / 100];
        eprintln!(
            "NftAdd round trip through the parent: p50 {:?}, p99 {:?}",
            p(50),
            p(99)
        );
    }

    fn effects(w: &mut W, d: &Path) {
        for _ in 0..2 {
            assert!(ok(&w.one(Verb::RouteAdd, "198.51.100.7")));
        }
        for _ in 0..2 {
            assert!(ok(&w.one(Verb::RouteDel, "198.51.100.7")));
        }
        let mut v6 = Request::for_addr(Verb::DenyAdd, 0, "2001:db8::9".parse().unwrap());
        v6.port = 22;
        let deny = w.call(&[
            Request::for_addr(Verb::DenyAdd, 0, "198.51.100.7".parse().unwrap()),
            v6,
        ]);
        assert!(ok(&deny) && deny.a == 2, "{deny:?}");
        let text = std::fs::read_to_string(d.join("hosts.deny")).unwrap();
        assert!(
            text.contains("ALL: 198.51.100.7") && text.contains("ALL: [2001:db8::9]"),
            "{text}"
        );
        assert!(ok(&w.call(&[Request {
            verb: Verb::DenyDel,
            ..v6
        }])));
        assert!(!std::fs::read_to_string(d.join("hosts.deny"))
            .unwrap()
            .contains("2001:db8::9"));
        let run = w
            .call_on(
                true,
                &[Request::for_addr(
                    Verb::KillRunCmd,
                    0,
                    "198.51.100.7".parse().unwrap(),
                )],
                None,
            )
            .0;
        assert_eq!(
            (run[0].kind, run[0].code, run[0].a),
            (ReplyKind::Ok, Outcome::Exited as u8, 0),
            "{run:?}"
        );
        let route = w
            .call_on(
                true,
                &[Request::for_addr(
                    Verb::KillRoute,
                    0,
                    "198.51.100.7".parse().unwrap(),
                )],
                None,
            )
            .0;
        assert_eq!(
            (route[0].code, route[0].a),
            (Outcome::Exited as u8, 1),
            "{route:?}"
        );
        peer(w, d);
    }

    /// A connection from a process of the sensor's uid (nobody): the parent checks its
    /// executable under its filter (the verdict depends on the unit this test runs in).
    fn peer(w: &mut W, d: &Path) {
        let path = d.join("out/peer.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o777)).unwrap();
        let Some(pid) = crate::sys::fork().unwrap() else {
            let nobody = nix::unistd::Uid::from_raw(65534);
            let _ = nix::unistd::setresgid(
                nix::unistd::Gid::from_raw(65534),
                nix::unistd::Gid::from_raw(65534),
                nix::unistd::Gid::from_raw(65534),
            );
            let _ = nix::unistd::setresuid(nobody, nobody, nobody);
            let _s = std::os::unix::net::UnixStream::connect(&path);
            // Killed by the test once checked.
            loop {
                std::thread::sleep(Duration::from_secs(5));
            }
        };
        let (s, _) = l.accept().unwrap();
        let r = w
            .call_on(false, &[Request::new(Verb::Peer, 0)], Some(s.as_fd()))
            .0[0]
            .clone();
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        let unit = crate::peercheck::own_unit().is_some();
        assert!(
            (ok(&r) && !unit) || (r.kind == ReplyKind::Fail && r.text.contains("unit")),
            "{r:?}"
        );
        let (wrong, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let r = w
            .call_on(false, &[Request::new(Verb::Peer, 0)], Some(wrong.as_fd()))
            .0[0]
            .clone();
        assert!(
            r.kind == ReplyKind::Fail && r.text.contains("not the sensor user"),
            "{r:?}"
        );
    }

    fn events_and_restart(w: &mut W, d: &Path) {
        nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGHUP).unwrap();
        assert_eq!(next_event(&w.events), Event::Reload);
        sh("nft flush set inet sentry v4");
        assert_eq!(next_event(&w.events), Event::TableChanged);
        // A record that is no request: the worker is stopped and restarted, under the
        // parent's filter, as the worker user with its descriptors at 3-7.
        w.rpc.send_reply(&Reply::ok(1), None).unwrap();
        let out = d.join("out/worker.out");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first(), Some(&"65534"), "{text}");
        assert!(
            lines
                .get(1)
                .is_some_and(|l| l.starts_with("--privsep --config")),
            "{text}"
        );
        let fds: Vec<&str> = lines[2..].to_vec();
        assert!(
            ["0", "1", "2", "3", "4", "5", "6", "7"]
                .iter()
                .all(|f| fds.contains(f))
                && !fds.contains(&"9"),
            "{text}"
        );
    }

    fn next_event(ch: &Channel) -> Event {
        let (r, _) = ch.recv_reply().unwrap();
        Event::from_u8(r.code).unwrap()
    }
}
