//! Issue #21: nothing another local user holds stalls a block or locks root out. An flock
//! on the (world-readable) hosts.deny held by uid 65534, and idle control connections of
//! a CONTROL_GROUP member. Real binaries in private namespaces; needs root, hping3, nft.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sentry_tests::netns::{SCANNER_V4, TARGET_V4};
use sentry_tests::{require_root, require_tool, wait_until, Sentry, Settings};

const SCANNER: IpAddr = IpAddr::V4(SCANNER_V4);

/// A child that kills itself when dropped.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ready(test: &str) -> bool {
    require_root(test) && require_tool(test, "hping3") && require_tool(test, "nft")
}

fn scan(s: &Sentry, first_port: u16) {
    let (target, src, port) = (
        TARGET_V4.to_string(),
        SCANNER.to_string(),
        format!("++{first_port}"),
    );
    s.hping(&[
        "-a", &src, "-S", "-p", &port, "-c", "6", "-i", "u20000", &target,
    ]);
}

#[test]
fn another_users_flock_on_hosts_deny_stalls_no_block() {
    let test = "another_users_flock_on_hosts_deny_stalls_no_block";
    if !ready(test) {
        return;
    }
    // SCAN_TRIGGER=2: the block is the enforcer's decision (nft element and hosts.deny
    // line together), not the kernel's first hit.
    let s = Sentry::start(test, Settings::new(&["atcp"]).set("SCAN_TRIGGER", "2"));
    // uid 65534 takes an exclusive flock on the deny file (it may read it: 0644) and
    // keeps it for 10 s. The descriptor is opened here and handed to it as stdin, since
    // the test's directory is not open to that user; the lock is then its alone.
    let file = std::fs::File::open(&s.hosts_deny).unwrap();
    let holder = Holder(
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .args(["sh", "-c", "flock -x 0 && echo locked && exec sleep 10"])
            .stdin(file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the lock holder"),
    );
    let mut holder = holder;
    {
        use std::io::Read;
        let mut buf = [0u8; 7];
        let out = holder.0.stdout.as_mut().unwrap();
        out.read_exact(&mut buf).expect("the holder took its lock");
        assert_eq!(&buf, b"locked\n");
    }
    let locked_at = Instant::now();
    scan(&s, 40);
    let scanned = Instant::now();
    wait_until(
        Duration::from_secs(1),
        "the scanner in the firewall within 1 s while another user holds the hosts.deny flock",
        || s.nft_elements().contains(&SCANNER).then_some(()),
        || s.diag(),
    );
    let firewall = scanned.elapsed();
    let t = Instant::now();
    let st = s.status();
    let status = t.elapsed();
    assert!(
        status < Duration::from_secs(1),
        "sentryctl status took {status:?}"
    );
    assert!(st.get("pid").is_some(), "{st}");
    // The line is there while the lock is still held: the block never waited for it.
    wait_until(
        Duration::from_secs(2),
        "the hosts.deny line",
        || s.hosts_deny_has(SCANNER).then_some(()),
        || s.diag(),
    );
    assert!(
        locked_at.elapsed() < Duration::from_secs(10) && holder.0.try_wait().unwrap().is_none(),
        "the lock was released before the checks ({:?})",
        locked_at.elapsed()
    );
    eprintln!("firewall after {firewall:?}, status in {status:?}");
    drop(holder);
}

#[test]
fn idle_control_connections_of_a_group_member_leave_root_a_slot() {
    let test = "idle_control_connections_of_a_group_member_leave_root_a_slot";
    if !require_root(test) {
        return;
    }
    // uid 65534's primary group is nogroup: a CONTROL_GROUP member.
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"]).set("CONTROL_GROUP", "nogroup"),
    );
    let sock = s.runtime_dir.join("control.sock");
    let bin = sentry_tests::bin_dir().join("sentry-hostile");
    // 12 connections, each sitting on half a frame header for 8 s (within the enforcer's
    // idle limit, so they are held, not timed out, while root asks).
    let holders: Vec<Holder> = (0..12)
        .map(|_| {
            Holder(
                Command::new("setpriv")
                    .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                    .arg(&bin)
                    .arg(&sock)
                    .args(["hold", "8"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn an idle client"),
            )
        })
        .collect();
    // Let them all connect.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let out = s.sentryctl(&["status"]);
    assert!(
        out.success(),
        "root's sentryctl status was refused: {out}\n{}",
        s.diag()
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The member was capped, and the refusals name it.
    let log = s.enforcer_log();
    assert!(
        log.lines()
            .any(|l| l.contains("control connection from uid 65534")
                && l.contains("too many control connections from this uid")),
        "no refusal for the 5th connection of uid 65534:\n{log}"
    );
    drop(holders);
}

/// A CONTROL_GROUP member dripping one byte every 2 s never completes a frame: the
/// enforcer cuts it off at the frame's deadline (10 s), not after each byte's, so it
/// cannot hold a control slot for ever.
#[test]
fn a_dripping_control_client_is_cut_off_at_the_frame_deadline() {
    let test = "a_dripping_control_client_is_cut_off_at_the_frame_deadline";
    if !require_root(test) {
        return;
    }
    let s = Sentry::start(
        test,
        Settings::new(&["atcp"]).set("CONTROL_GROUP", "nogroup"),
    );
    let sock = s.runtime_dir.join("control.sock");
    let bin = sentry_tests::bin_dir().join("sentry-hostile");
    let t = Instant::now();
    let mut c = Holder(
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(&bin)
            .arg(&sock)
            .args(["drip", "2000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the dripping client"),
    );
    // Every byte came well within a per-read timeout; the frame took longer than its
    // deadline. The client ends when its next byte hits the closed connection.
    wait_until(
        Duration::from_secs(20),
        "the dripping client to be cut off",
        || c.0.try_wait().ok().flatten(),
        || s.diag(),
    );
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the dripping client held its connection for {took:?}"
    );
    assert!(s.sentryctl(&["status"]).success());
}
