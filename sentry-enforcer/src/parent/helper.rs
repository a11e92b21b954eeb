//! The command helper: a root child forked before the parent confines itself, so the
//! KILL_ROUTE / KILL_RUN_CMD commands (iptables, ip, a site script) run outside the
//! parent's seccomp filter, with CAP_NET_ADMIN (and CAP_NET_RAW when held or a legacy
//! iptables needs it: `spawn::helper`). It takes only the two kill verbs, from the parent
//! alone (its end of a private socket pair), renders the argv from its own copy of the
//! configuration's templates, runs it without a shell ([`crate::effects::exec`]) and
//! answers once. It exits when the parent's end closes.

use policy::{CommandTemplate, Config, Vars};
use sentry_privsep::{full_prefix, Channel, Outcome, Reply, Request, Verb};

use crate::effects::exec;

/// `$TARGET$`: the address, or `network/len` for an IPv6 network block.
pub fn target(r: &Request) -> String {
    match r.addr {
        Some(a) if r.prefix < full_prefix(a) => format!("{a}/{}", r.prefix),
        Some(a) => a.to_string(),
        None => String::new(),
    }
}

/// The argv for a kill request, from the configuration's template.
pub fn render(cfg: &Config, r: &Request) -> Option<Vec<String>> {
    let tpl: &CommandTemplate = match r.verb {
        Verb::KillRoute => cfg.kill_route.as_ref()?,
        Verb::KillRunCmd => cfg.kill_run_cmd.as_ref()?,
        _ => return None,
    };
    r.addr?;
    let t = target(r);
    Some(tpl.render(&Vars {
        target: &t,
        port: r.port,
        mode: r.proto.as_str(),
    }))
}

/// Run one request: `Ok` with the [`Outcome`] in `code`, the exit status or signal in
/// `a`, the head of stderr (or why it did not start) in `text`.
pub fn answer(cfg: &Config, r: &Request) -> Reply {
    let Some(argv) = render(cfg, r) else {
        return Reply {
            code: Outcome::NotStarted as u8,
            text: "not configured".into(),
            ..Reply::ok(r.id)
        };
    };
    let run = exec::run(&argv, None, cfg.kill_timeout);
    let (code, a, text) = match run.outcome {
        exec::Outcome::Exited(c) => (Outcome::Exited, u64::try_from(c).unwrap_or(255), run.stderr),
        exec::Outcome::Signaled(s) => {
            (Outcome::Signaled, u64::try_from(s).unwrap_or(0), run.stderr)
        }
        exec::Outcome::TimedOut => (Outcome::TimedOut, 0, run.stderr),
        exec::Outcome::SpawnFailed(e) => (Outcome::NotStarted, 0, e),
    };
    Reply {
        code: code as u8,
        a,
        text,
        ..Reply::ok(r.id)
    }
}

/// The helper's life: one request, one reply, until the parent's end closes.
pub fn serve(chan: &Channel, cfg: &Config) {
    while let Ok((r, _)) = chan.recv_request() {
        if chan.send_reply(&answer(cfg, &r), None).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentry_privsep::{Proto, ReplyKind};

    fn cfg(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("t.conf")).unwrap()
    }

    #[test]
    fn argv_and_outcomes() {
        let c = cfg("KILL_ROUTE=\"/bin/echo $TARGET$ $PORT$ $MODE$\"\nKILL_RUN_CMD=\"/bin/false $TARGET$\"\n");
        let mut r = Request::for_addr(Verb::KillRoute, 4, "2001:db8::".parse().unwrap());
        r.prefix = 64;
        r.port = 22;
        r.proto = Proto::Udp;
        assert_eq!(
            render(&c, &r).unwrap(),
            ["/bin/echo", "2001:db8::/64", "22", "udp"]
        );
        r.prefix = 128;
        assert_eq!(render(&c, &r).unwrap()[1], "2001:db8::");
        let ok = answer(&c, &r);
        assert_eq!(
            (ok.kind, ok.code, ok.a, ok.id),
            (ReplyKind::Ok, Outcome::Exited as u8, 0, 4)
        );
        let f = answer(
            &c,
            &Request::for_addr(Verb::KillRunCmd, 5, "192.0.2.9".parse().unwrap()),
        );
        assert_eq!((f.code, f.a), (Outcome::Exited as u8, 1));
        let none = answer(&cfg(""), &r);
        assert_eq!(none.code, Outcome::NotStarted as u8);
        assert!(render(&c, &Request::new(Verb::NftAdd, 1)).is_none());
    }

    #[test]
    fn serves_until_closed() {
        let c = cfg("KILL_RUN_CMD=\"/bin/true $TARGET$\"\n");
        let (parent, child) = Channel::pair().unwrap();
        let t = std::thread::spawn(move || serve(&child, &c));
        let r = Request::for_addr(Verb::KillRunCmd, 9, "192.0.2.9".parse().unwrap());
        parent.send_request(&r, None).unwrap();
        let (rep, _) = parent.recv_reply().unwrap();
        assert_eq!((rep.id, rep.code), (9, Outcome::Exited as u8));
        drop(parent);
        t.join().unwrap();
    }
}
