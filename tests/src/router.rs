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

/// The Docker-style bridge's addresses: the host's bridge and one container behind it.
pub const BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
pub const CONTAINER_V4: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
/// The container's port the host publishes on its WAN address (DNAT), as `docker run -p`.
pub const PUBLISHED_PORT: u16 = 80;
const BRIDGE_IF: &str = "sbr0";
const HOST_CTR_IF: &str = "tc0";
const CTR_IF: &str = "cc0";

/// A container namespace behind a bridge in the target (which must have a [`Wan`]): the
/// target masquerades the container's traffic to the WAN and publishes the container's
/// port [`PUBLISHED_PORT`] on its WAN address, as Docker does, in a table of the test's own
/// (`inet sentrykit_nat`). Deleted on drop (namespace, bridge, table).
#[derive(Debug)]
pub struct Container {
    pub ns: String,
    target: String,
}

impl Container {
    pub fn attach(net: &NetPair) -> Container {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let c = Container {
            ns: format!("snt{}xc{n}-c", std::process::id()),
            target: net.name(Side::Target).to_string(),
        };
        let (t, ns) = (c.target.as_str(), c.ns.as_str());
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", t, "link", "add", BRIDGE_IF, "type", "bridge"]);
        ip(&[
            "-n",
            t,
            "addr",
            "add",
            &format!("{BRIDGE_V4}/24"),
            "dev",
            BRIDGE_IF,
        ]);
        ip(&["-n", t, "link", "set", BRIDGE_IF, "up"]);
        ip(&[
            "-n",
            t,
            "link",
            "add",
            HOST_CTR_IF,
            "type",
            "veth",
            "peer",
            "name",
            CTR_IF,
            "netns",
            ns,
        ]);
        ip(&["-n", t, "link", "set", HOST_CTR_IF, "master", BRIDGE_IF]);
        ip(&["-n", t, "link", "set", HOST_CTR_IF, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{CONTAINER_V4}/24"),
            "dev",
            CTR_IF,
        ]);
        ip(&["-n", ns, "link", "set", CTR_IF, "up"]);
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &BRIDGE_V4.to_string(),
        ]);
        let nat = format!(
            "table inet sentrykit_nat {{\n\
             \tchain pre {{ type nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"{ROUTER_WAN_IF}\" tcp dport {PUBLISHED_PORT} dnat ip to {CONTAINER_V4}:{PUBLISHED_PORT}\n\
             \t}}\n\
             \tchain post {{ type nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 172.30.0.0/24 oifname \"{ROUTER_WAN_IF}\" masquerade\n\
             \t}}\n\
             }}\n"
        );
        let path = std::env::temp_dir().join(format!("{}.nft", c.ns));
        std::fs::write(&path, nat).expect("write the nat script");
        run_ok(
            net.command(Side::Target, "nft").arg("-f").arg(&path),
            CMD_TIMEOUT,
        );
        let _ = std::fs::remove_file(&path);
        c
    }

    /// A command inside the container namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let t = self.target.as_str();
        for args in [
            vec![
                "netns",
                "exec",
                t,
                "nft",
                "delete",
                "table",
                "inet",
                "sentrykit_nat",
            ],
            vec!["-n", t, "link", "del", BRIDGE_IF],
            vec!["netns", "del", &self.ns],
        ] {
            let _ = crate::cmd::run(Command::new("ip").args(&args), CMD_TIMEOUT);
        }
    }
}
