//! sentryctl as an administrator uses it (issue #20): a closed pipe, explain, unblock
//! --all, ignore add/remove, per-command help, completions, errors that say what to do,
//! and watch --follow across an enforcer restart. The real binaries; the root tests run
//! the pair in their own network namespaces.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use sentry_tests::netns::{SCANNER2_V4, SCANNER_V4, TARGET_V4};
use sentry_tests::{
    bins, require_root, require_tool, run, wait_until, AuditDecision, Sentry, Settings, Side,
};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

fn sentryctl(args: &[&str]) -> std::process::Output {
    Command::new(bins().sentryctl).args(args).output().unwrap()
}

fn syns(s: &Sentry, src: IpAddr, first_port: u16) {
    let target = TARGET_V4.to_string();
    let (port, src) = (format!("++{first_port}"), src.to_string());
    s.hping(&[
        "-a", &src, "-S", "-p", &port, "-c", "3", "-i", "u10000", &target,
    ]);
}

fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "hping3") && require_tool(test, "nft")
}

/// `n` IPv4 and `n` IPv6 blocks in a version-1 state file, restored at the next start.
fn persist(env: &Sentry, n: u32) {
    sentry_tests::state::persist_blocks(&env.state_dir, n, 3_600_000).unwrap();
}

/// `sentryctl ARGS | READER` in bash: (sentryctl's exit status, its stderr).
fn piped(s: &Sentry, args: &str, reader: &str) -> (i32, String) {
    let err = s.dir.path().join("pipe.err");
    let script = format!(
        "{} --runtime-dir {} {args} 2>{} | {reader} >/dev/null; exit ${{PIPESTATUS[0]}}",
        bins().sentryctl.display(),
        s.runtime_dir.display(),
        err.display()
    );
    let out = run(
        Command::new("bash").args(["-c", &script]),
        Duration::from_secs(20),
    );
    assert!(!out.timed_out, "{out}");
    let code = out.status.and_then(|c| c.code()).unwrap_or(-1);
    (code, std::fs::read_to_string(&err).unwrap_or_default())
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let test = "output_into_a_closed_pipe_ends_quietly";
    if !require_root(test) {
        return;
    }
    let mut s = Sentry::prepare(test, Settings::enforcer(&[]));
    persist(&s, 300);
    s.start_enforcer();
    wait_until(
        Duration::from_secs(60),
        "600 blocks restored",
        || (s.ctl_json(&["status"])["active_blocks"] == 600).then_some(()),
        || s.diag(),
    );
    // `head -1` as in the issue; `true` never reads, so the pipe is closed before
    // sentryctl's first write and EPIPE is certain, whatever the scheduling.
    for (args, reader) in [
        ("blocked", "head -1"),
        ("blocked", "true"),
        ("blocked --json", "head -c 10"),
        ("blocked --json", "true"),
        ("status --json", "true"),
        ("metrics", "head -1"),
        ("metrics", "true"),
        ("explain 10.0.0.1", "true"),
    ] {
        for _ in 0..3 {
            let (code, err) = piped(&s, args, reader);
            assert!(
                code == 0 || code == 141,
                "sentryctl {args} | {reader}: exit {code}\n{err}"
            );
            assert!(
                !err.contains("panicked") && !err.contains("Broken pipe"),
                "sentryctl {args} | {reader}: {err}"
            );
        }
    }
    // Unpiped, the same list is whole.
    let out = s.sentryctl(&["blocked"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.lines().count(), 601, "{}", out.stderr);
    assert!(out.stdout.ends_with("600 active blocks\n"));
}

#[test]
fn explain_names_the_block_and_why_not() {
    let test = "explain_names_the_block_and_why_not";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    syns(&s, SCANNER, 20);
    s.wait_blocked(SCANNER);
    let x = s.ctl_json(&["explain", &SCANNER.to_string()]);
    assert_eq!(x["address"], SCANNER.to_string(), "{x}");
    assert_eq!(x["blocked"], true, "{x}");
    let e = &x["entries"][0];
    assert_eq!(e["matched"], "address", "{x}");
    assert_eq!(e["origin"], "sensor", "{x}");
    assert_eq!(e["fleet"], false, "{x}");
    assert!(e["distinct_ports"].as_u64().unwrap() >= 1, "{x}");
    assert!(e["since_ms"].as_u64().is_some(), "{x}");
    let decisions = x["decisions"].as_array().expect("decisions");
    assert!(
        decisions.iter().any(|d| d["decision"] == "blocked"
            && d["source"] == SCANNER.to_string()
            && d["schema"] == 1),
        "{x}"
    );
    let out = s.sentryctl(&["explain", &SCANNER.to_string()]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .starts_with(&format!("{SCANNER}: blocked: blocked (origin sensor)")),
        "{out}"
    );
    // Another user, neither root nor in CONTROL_GROUP, is told what to do.
    if let Ok(setpriv) = which("setpriv") {
        let out = run(
            Command::new(setpriv)
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&s.bins.sentryctl)
                .arg("--runtime-dir")
                .arg(&s.runtime_dir)
                .arg("status"),
            Duration::from_secs(10),
        );
        assert_eq!(out.status.and_then(|c| c.code()), Some(1), "{out}");
        assert!(
            out.stderr
                .contains("run as root or add yourself to CONTROL_GROUP"),
            "{out}"
        );
    }
    // A fleet decision.
    assert!(s
        .sentryctl(&["block", "192.0.2.44", "--origin", "crowdsec"])
        .success());
    let x = s.ctl_json(&["explain", "192.0.2.44"]);
    assert_eq!(
        (&x["blocked"], &x["entries"][0]["fleet"]),
        (&Value::Bool(true), &Value::Bool(true)),
        "{x}"
    );
    assert_eq!(x["entries"][0]["origin"], "crowdsec", "{x}");
    // No made-up probe for it, and no fleet metadata it was not given.
    for k in [
        "protocol",
        "port",
        "mode",
        "scan",
        "scenario",
        "decision_id",
    ] {
        assert!(x["entries"][0].get(k).is_none(), "{k}: {x}");
    }
    // This host's own address.
    let x = s.ctl_json(&["explain", &TARGET_V4.to_string()]);
    assert_eq!(x["blocked"], false, "{x}");
    assert_eq!(x["never_block"], "one of this host's addresses", "{x}");
    assert!(x["entries"].as_array().unwrap().is_empty(), "{x}");
    // The namespace's default gateway, once there is one (the enforcer follows route
    // changes).
    s.net.run_ok(
        Side::Target,
        "ip",
        &["route", "add", "default", "via", "10.203.0.4"],
    );
    let gw = wait_until(
        Duration::from_secs(15),
        "explain to name the new default gateway",
        || {
            let x = s.ctl_json(&["explain", "10.203.0.4"]);
            (x["never_block"] == "default gateway").then_some(x)
        },
        || s.diag(),
    );
    assert_eq!(gw["blocked"], false, "{gw}");
    assert_eq!(gw["reason"], "never-block: default gateway", "{gw}");
    assert!(gw["decisions"].is_array(), "{gw}");
    // Never seen.
    let x = s.ctl_json(&["explain", "192.0.2.201"]);
    assert_eq!(x["blocked"], false, "{x}");
    assert!(x["decisions"].as_array().unwrap().is_empty(), "{x}");
    assert!(
        x["reason"].as_str().unwrap().contains("SCAN_TRIGGER"),
        "{x}"
    );
}

#[test]
fn unblock_all_lifts_every_block() {
    let test = "unblock_all_lifts_every_block";
    if !ready(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    syns(&s, SCANNER, 20);
    s.wait_blocked(SCANNER);
    for a in ["192.0.2.61", "192.0.2.62", "2001:db8::62"] {
        let out = s.sentryctl(&["block", a]);
        assert!(out.success(), "{out}");
    }
    assert_eq!(s.blocked_list().len(), 4);
    assert!(s.hosts_deny_has(SCANNER));
    let out = s.sentryctl(&["unblock", "--all"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "4 blocks lifted\n", "{out}");
    assert!(s.blocked_list().is_empty());
    assert!(!s.hosts_deny_has(SCANNER), "{}", s.hosts_deny_text());
    assert!(!s.nft_has(SCANNER));
    assert_eq!(s.audit_for(SCANNER, AuditDecision::Unblocked).len(), 1);
    for a in ["192.0.2.61", "192.0.2.62"] {
        assert_eq!(
            s.audit_for(a.parse().unwrap(), AuditDecision::Unblocked)
                .len(),
            1,
            "{a}"
        );
    }
    // One record per block (the IPv6 one is its BLOCK_PREFIX6 network's).
    let unblocked = s
        .audit()
        .iter()
        .filter(|r| r.decision == AuditDecision::Unblocked)
        .count();
    assert_eq!(unblocked, 4);
    assert_eq!(s.counter("unblocked"), 4);
    // The sensor was told: the same scanner, scanning again, is blocked again.
    syns(&s, SCANNER, 200);
    s.wait_blocked(SCANNER);
    let v = s.ctl_json(&["unblock", "--all"]);
    assert_eq!(v["unblocked"], 1, "{v}");
    assert_eq!(v["errors"], serde_json::json!([]), "{v}");
    assert_eq!(
        s.sentryctl(&["unblock", "--all"]).stdout,
        "0 blocks lifted\n"
    );
}

#[test]
fn ignore_add_stops_blocking_and_remove_restores_it() {
    let test = "ignore_add_stops_blocking_and_remove_restores_it";
    if !ready(test) {
        return;
    }
    // An admin's network, which `remove` of an address inside it must not touch.
    let s = Sentry::start(test, Settings::new(&["atcp"]).ignore("192.0.2.64/28"));
    let before = std::fs::read(&s.ignore_file).unwrap();
    let ign = |addr: &str| -> bool {
        let out = run(
            s.net.command(Side::Target, "nft").args([
                "list",
                "set",
                "inet",
                sentry_tests::sentry::NFT_TABLE,
                "detect_ign4",
            ]),
            Duration::from_secs(10),
        );
        out.stdout.contains(addr)
    };
    // The configuration is the running enforcer's (no --config).
    let out = s.sentryctl(&["ignore", "add", &SCANNER.to_string()]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("added to"), "{out}");
    assert!(
        out.stdout.contains("the enforcer reloaded the ignore list"),
        "{out}"
    );
    let after = std::fs::read_to_string(&s.ignore_file).unwrap();
    let tail = after
        .strip_prefix(std::str::from_utf8(&before).unwrap())
        .expect("every line of the admin's kept");
    assert!(
        tail.starts_with(&format!("{SCANNER} # added by sentryctl 20")),
        "{after}"
    );
    // Adding again changes nothing.
    let out = s.sentryctl(&["ignore", "add", &format!("{SCANNER}/32")]);
    assert!(
        out.success() && out.stdout.contains("already on the ignore list"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&s.ignore_file).unwrap(), after);
    let l = s.ctl_json(&["ignore", "list"]);
    assert!(
        l["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["entry"] == SCANNER.to_string() && e["added_by_sentryctl"] == true),
        "{l}"
    );
    wait_until(
        Duration::from_secs(15),
        "the detection chain's ignore set to hold the scanner",
        || ign(&SCANNER.to_string()).then_some(()),
        || s.diag(),
    );
    for port in [20, 30, 40] {
        syns(&s, SCANNER, port);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s.audit_for(SCANNER, AuditDecision::Blocked).is_empty(),
        "ignored scanner blocked\n{}",
        s.diag()
    );
    s.assert_not_blocked(SCANNER);
    let x = s.ctl_json(&["explain", &SCANNER.to_string()]);
    assert_eq!(
        (&x["blocked"], &x["ignored"]),
        (&Value::Bool(false), &Value::Bool(true))
    );
    // Remove: the file is as it was, and the scanner is blocked again.
    let out = s.sentryctl(&["ignore", "remove", &SCANNER.to_string()]);
    assert!(out.success(), "{out}");
    assert_eq!(std::fs::read(&s.ignore_file).unwrap(), before);
    wait_until(
        Duration::from_secs(15),
        "the detection chain's ignore set to drop the scanner",
        || (!ign(&SCANNER.to_string())).then_some(()),
        || s.diag(),
    );
    let mut port = 100;
    wait_until(
        Duration::from_secs(30),
        "the scanner blocked once it is no longer ignored",
        || {
            syns(&s, SCANNER, port);
            port += 10;
            s.nft_has(SCANNER).then_some(())
        },
        || s.diag(),
    );
    // An entry only the admin's own wider line covers is refused, the file untouched.
    let out = s.sentryctl(&["ignore", "remove", "192.0.2.70"]);
    assert_eq!(out.status.and_then(|c| c.code()), Some(1), "{out}");
    assert!(out.stderr.contains("by hand"), "{out}");
    assert_eq!(std::fs::read(&s.ignore_file).unwrap(), before);
    // Not an entry: refused before anything is written.
    let out = s.sentryctl(&["ignore", "add", "10.203.0.999"]);
    assert_eq!(out.status.and_then(|c| c.code()), Some(1), "{out}");
    assert!(out.stderr.contains("not an IPv4 or IPv6 address"), "{out}");
    assert_eq!(std::fs::read(&s.ignore_file).unwrap(), before);
    // The other scanner was never affected.
    syns(&s, IpAddr::V4(SCANNER2_V4), 500);
    s.wait_blocked(IpAddr::V4(SCANNER2_V4));
}

#[test]
fn watch_follow_resumes_after_an_enforcer_restart() {
    let test = "watch_follow_resumes_after_an_enforcer_restart";
    if !require_root(test) {
        return;
    }
    let mut s = Sentry::prepare(test, Settings::enforcer(&[]));
    s.start_enforcer();
    let mut child = Command::new(bins().sentryctl)
        .args(["--runtime-dir"])
        .arg(&s.runtime_dir)
        .args(["watch", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut lines: Vec<Value> = Vec::new();
    let mut wait_for = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = lines.iter().find(|v| pred(v)) {
                return v.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "watch --follow: no {what} in {lines:?}");
            if let Ok(l) = rx.recv_timeout(left) {
                lines.push(serde_json::from_str(&l).unwrap_or(Value::String(l)));
            }
        }
    };
    let first = wait_for("start", &|v| v["event"] == "start");
    assert!(s.sentryctl(&["block", "192.0.2.71"]).success());
    wait_for("first record", &|v| v["source"] == "192.0.2.71");
    s.stop_enforcer();
    s.start_enforcer();
    assert!(s.sentryctl(&["block", "192.0.2.72"]).success());
    let rec = wait_for("record after the restart", &|v| v["source"] == "192.0.2.72");
    let starts: Vec<&Value> = lines.iter().filter(|v| v["event"] == "start").collect();
    assert_eq!(starts.len(), 2, "{lines:?}");
    assert_eq!(starts[1]["run_changed"], true, "{lines:?}");
    assert_ne!(starts[1]["cursor"], first["cursor"]);
    assert!(rec["cursor"].as_str().is_some(), "{rec}");
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    use std::io::Read as _;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(err.contains("reconnecting"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn every_command_has_its_own_help() {
    for cmd in [
        &["status"][..],
        &["blocked"],
        &["explain"],
        &["unblock"],
        &["block"],
        &["watch"],
        &["metrics"],
        &["ignore"],
        &["ignore", "add"],
        &["ignore", "remove"],
        &["ignore", "list"],
        &["check-config"],
        &["completions"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = sentryctl(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            stdout.contains(&format!("Usage: sentryctl {}", cmd.join(" "))),
            "{args:?}: {stdout}"
        );
    }
    // `status --help` is help, not "unknown command or wrong arguments: status".
    let out = sentryctl(&["help", "explain"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--json"));
}

#[test]
fn usage_errors_name_the_command() {
    for (args, usage) in [
        (&["unblock"][..], "Usage: sentryctl unblock"),
        (&["explain", "example.com"], "Usage: sentryctl explain"),
        (
            &["block", "192.0.2.1", "--for", "4d"],
            "Usage: sentryctl block",
        ),
        (&["ignore", "add"], "Usage: sentryctl ignore add"),
        (&["completions", "tcsh"], "Usage: sentryctl completions"),
    ] {
        let out = sentryctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(usage), "{args:?}: {err}");
    }
}

#[test]
fn completions_are_valid_scripts() {
    let out = sentryctl(&["completions", "bash"]);
    assert!(out.status.success());
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &out.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(script.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "explain",
        "unblock",
        "ignore",
        "completions",
        "--runtime-dir",
    ] {
        assert!(text.contains(word), "bash completion lacks {word}");
    }
    for sh in ["zsh", "fish"] {
        let out = sentryctl(&["completions", sh]);
        assert!(out.status.success() && out.stdout.len() > 200, "{sh}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("explain"));
    }
}

#[test]
fn errors_say_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    let rt = d.path().to_str().unwrap();
    // No socket: the enforcer is not running, or another runtime directory.
    let out = sentryctl(&["--runtime-dir", rt, "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "is sentry-enforcer running? (systemctl status sentry-enforcer; --runtime-dir)"
        ),
        "{err}"
    );
    // A stale socket that nobody answers.
    drop(std::os::unix::net::UnixListener::bind(d.path().join("control.sock")).unwrap());
    let out = sentryctl(&["--runtime-dir", rt, "blocked"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is sentry-enforcer running?"), "{err}");
    // --json: the error is a JSON object on stdout.
    let out = sentryctl(&["--runtime-dir", rt, "explain", "192.0.2.1", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("is sentry-enforcer running?"),
        "{v}"
    );
    // A socket this user may not open (only meaningful when not root: root ignores
    // file modes, so the enforcer's own refusal is tested by the access tests).
    if !nix::unistd::Uid::effective().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let d2 = tempfile::tempdir().unwrap();
        let _l = std::os::unix::net::UnixListener::bind(d2.path().join("control.sock")).unwrap();
        std::fs::set_permissions(d2.path(), std::fs::Permissions::from_mode(0o000)).unwrap();
        let out = sentryctl(&["--runtime-dir", d2.path().to_str().unwrap(), "status"]);
        std::fs::set_permissions(d2.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("run as root or add yourself to CONTROL_GROUP"),
            "{err}"
        );
    }
}
