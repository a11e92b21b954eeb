//! A third namespace for router tests: the kit's target namespace becomes a router
//! between the scanner namespace (its LAN, 10.203.0.0/24) and a WAN server namespace
//! (10.204.0.0/24) added here. Traffic from the LAN client to the server crosses the
//! target's forward path only, which is what a router, a Docker host or a VPN gateway
//! running sentry sees.
//!
//! Addresses exist only inside the test's namespaces; the WAN namespace (and with it the
//! veth pair) is deleted on drop, also when the test fails.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::cmd::run_ok;
use crate::netns::{NetPair, Side, TARGET_V4};

pub const ROUTER_WAN_V4: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 1);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 2);
const ROUTER_WAN_IF: &str = "tw0";
const SERVER_IF: &str = "ww0";
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The WAN server namespace.
#[derive(Debug)]
pub struct Wan {
    pub server: String,
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args), CMD_TIMEOUT);
}

impl Wan {
    /// Attach a server namespace to `net`'s target and make the target forward between
    /// its two links (the scanner namespace routes 10.204.0.0/24 through it).
    pub fn attach(net: &NetPair) -> Wan {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Same `snt<pid>x` prefix as the kit's namespaces, so a killed test's leftover is
        // reaped by the next run.
        let wan = Wan {
            server: format!("snt{}xw{n}-w", std::process::id()),
        };
        ip(&["netns", "add", &wan.server]);
        let (t, w) = (net.name(Side::Target), wan.server.as_str());
        ip(&["-n", w, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            w,
            "link",
            "add",
            SERVER_IF,
            "type",
            "veth",
            "peer",
            "name",
            ROUTER_WAN_IF,
            "netns",
            t,
        ]);
        ip(&[
            "-n",
            w,
            "addr",
            "add",
            &format!("{SERVER_V4}/24"),
            "dev",
            SERVER_IF,
        ]);
        ip(&[
            "-n",
            t,
            "addr",
            "add",
            &format!("{ROUTER_WAN_V4}/24"),
            "dev",
            ROUTER_WAN_IF,
        ]);
        ip(&["-n", w, "link", "set", SERVER_IF, "up"]);
        ip(&["-n", t, "link", "set", ROUTER_WAN_IF, "up"]);
        ip(&[
            "-n",
            w,
            "route",
            "add",
            "10.203.0.0/24",
            "via",
            &ROUTER_WAN_V4.to_string(),
        ]);
        ip(&[
            "-n",
            net.name(Side::Scanner),
            "route",
            "add",
            "10.204.0.0/24",
            "via",
            &TARGET_V4.to_string(),
        ]);
        run_ok(
            net.command(Side::Target, "sysctl")
                .args(["-qw", "net.ipv4.ip_forward=1"]),
            CMD_TIMEOUT,
        );
        wan
    }

    /// A command inside the server namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.server]).arg(program);
        c
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        let _ = crate::cmd::run(
            Command::new("ip").args(["netns", "del", &self.server]),
            CMD_TIMEOUT,
        );
    }
}
