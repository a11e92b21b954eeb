//! Who may talk to the enforcer: control.sock is root-only by default, CONTROL_GROUP opens
//! it to one group, and the sensor's user never gets the control socket.

use std::time::Duration;

use sentry_tests::{require_root, run, Sentry, Settings};

fn sentryctl_as(s: &Sentry, user: &str, group: &str, extra_groups: &str) -> sentry_tests::Output {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid", user, "--regid", group]);
    if extra_groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        c.args(["--groups", extra_groups]);
    }
    c.arg(&s.bins.sentryctl)
        .arg("--runtime-dir")
        .arg(&s.runtime_dir)
        .args(["status", "--json"]);
    run(&mut c, Duration::from_secs(20))
}

#[test]
fn control_socket_is_root_only_by_default() {
    let test = "control_socket_is_root_only_by_default";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    assert!(s.sentryctl(&["status"]).success());
    for (user, group) in [("nobody", "nogroup"), ("sentry", "sentry")] {
        let out = sentryctl_as(&s, user, group, "");
        assert!(!out.success(), "{user} could use control.sock: {out}");
    }
}

#[test]
fn control_group_members_may_use_sentryctl() {
    let test = "control_group_members_may_use_sentryctl";
    if !require_root(test) {
        return;
    }
    let Ok(Some(adm)) = nix::unistd::Group::from_name("adm") else {
        panic!("group adm missing (Debian base system)");
    };
    let s = Sentry::start(test, Settings::new(&["atcp"]).set("CONTROL_GROUP", "adm"));
    let out = sentryctl_as(&s, "nobody", "nogroup", &adm.gid.to_string());
    assert!(out.success(), "a CONTROL_GROUP member was refused: {out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    assert!(v["sensor"].is_object(), "{v}");
    let out = sentryctl_as(&s, "nobody", "nogroup", "");
    assert!(!out.success(), "a non-member could use control.sock: {out}");
}
