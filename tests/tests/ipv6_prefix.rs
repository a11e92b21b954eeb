//! An IPv6 scanner that takes a new address from its /64 for every probe is blocked as
//! its /64 (BLOCK_PREFIX6, default 64): after its first probe, none of the next ones is
//! answered. Needs root, nft and python3 (for SYNs from chosen source addresses).

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use sentry_tests::netns::{SCANNER_IF, SCANNER_V6, TARGET_V6};
use sentry_tests::{require_root, require_tool, run, run_ok, wait_until, Sentry, Settings, Side};

/// The scanner's own /64, routed through the scanner (not the target's link prefix, which
/// holds the target's own address and is therefore never blocked as a whole).
fn rotating(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x204, 0, 0, 0, 0, 0x100, n)
}

/// One connect() from `src` to `port`; true if it was answered (connected or refused).
fn probe(s: &Sentry, src: Ipv6Addr, port: u16) -> bool {
    let code = format!(
        "import socket,sys\n\
         s=socket.socket(socket.AF_INET6,socket.SOCK_STREAM)\n\
         s.bind(('{src}',0)); s.settimeout(0.5)\n\
         try:\n s.connect(('{TARGET_V6}',{port})); sys.exit(0)\n\
         except ConnectionRefusedError: sys.exit(0)\n\
         except OSError: sys.exit(3)\n"
    );
    let out = run(
        s.net.command(Side::Scanner, "python3").args(["-c", &code]),
        Duration::from_secs(10),
    );
    out.success()
}

#[test]
fn a_scanner_rotating_through_its_64_is_blocked_as_the_64() {
    let test = "a_scanner_rotating_through_its_64_is_blocked_as_the_64";
    if !require_root(test) || !require_tool(test, "nft") || !require_tool(test, "python3") {
        return;
    }
    let s = Sentry::start(test, Settings::new(&["atcp"]));
    for n in 1..=12 {
        run_ok(
            s.net.command(Side::Scanner, "ip").args([
                "-6",
                "addr",
                "add",
                &format!("{}/64", rotating(n)),
                "dev",
                SCANNER_IF,
                "nodad",
            ]),
            Duration::from_secs(10),
        );
    }
    run_ok(
        s.net.command(Side::Target, "ip").args([
            "-6",
            "route",
            "add",
            "fd00:204::/64",
            "via",
            &SCANNER_V6.to_string(),
        ]),
        Duration::from_secs(10),
    );
    // First probe: detected, the /64 is blocked.
    probe(&s, rotating(1), 21);
    let net = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x204, 0, 0, 0, 0, 0, 0));
    wait_until(
        Duration::from_secs(10),
        "fd00:204::/64 in the v6net set",
        || s.nft_elements().contains(&net).then_some(()),
        || s.diag(),
    );
    // Every further probe comes from a new address of the /64: none is answered.
    let answered = (2..=12).filter(|&n| probe(&s, rotating(n), 20 + n)).count();
    assert_eq!(
        answered,
        0,
        "{answered} of 11 rotated probes answered\n{}",
        s.diag()
    );
    let list = s.blocked_list();
    assert!(list.contains(&net), "sentryctl blocked: {list:?}");
    assert!(s.nft_ruleset().contains("@v6net"), "{}", s.nft_ruleset());
}
