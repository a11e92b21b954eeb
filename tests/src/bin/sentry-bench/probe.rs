//! The scans of scenarios 1 and 2: which scanner (nmap or masscan), with what arguments,
//! from which source address, and how many target ports they cover.
//!
//! nmap sends from the scanner namespace's own address. masscan has its own TCP stack:
//! it sends from an address the scanner's kernel does not own (`MASSCAN_V4`, set with
//! `--adapter-ip`), so the kernel does not reset the target's SYN-ACKs, and it is told the
//! target's MAC (`--router-mac`) because the scanner namespace has no router to resolve;
//! the target gets a permanent neighbour entry for that address so its answers leave at
//! once.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use sentry_tests::cmd::run;
use sentry_tests::netns::{NetPair, Side, SCANNER_IF, SCANNER_V4, SCANNER_V6, TARGET_IF};
use sentry_tests::netns::{TARGET_V4, TARGET_V6};

use crate::packet::link_info;

/// masscan's source address: on the veth's /24, owned by no interface.
pub const MASSCAN_V4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 77);

/// What sends the probes.
#[derive(Debug, Clone, Copy)]
pub enum Prober {
    /// nmap with these scan-type and timing arguments (added to the fixed ones).
    Nmap(&'static [&'static str]),
    /// masscan at this many packets per second.
    Masscan { rate: u64 },
}

/// One scan: a prober, a port range and the address family.
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    /// Short name for `--scans`.
    pub id: &'static str,
    pub label: &'static str,
    pub prober: Prober,
    pub v6: bool,
    pub udp: bool,
    /// Last port scanned (the range is 1..=last).
    pub last_port: u16,
}

/// Scenario 1 (`syn`) is the first; scenario 2 (`scans`) the rest.
pub const SCANS: [Scan; 8] = [
    Scan {
        id: "syn",
        label: "nmap -sS -T4",
        prober: Prober::Nmap(&["-sS", "-T4"]),
        v6: false,
        udp: false,
        last_port: 1024,
    },
    Scan {
        id: "syn-t5",
        label: "nmap -sS -T5 --min-rate 20000",
        prober: Prober::Nmap(&["-sS", "-T5", "--min-rate", "20000"]),
        v6: false,
        udp: false,
        last_port: 1024,
    },
    Scan {
        id: "fin",
        label: "nmap -sF -T4",
        prober: Prober::Nmap(&["-sF", "-T4"]),
        v6: false,
        udp: false,
        last_port: 1024,
    },
    Scan {
        id: "null",
        label: "nmap -sN -T4",
        prober: Prober::Nmap(&["-sN", "-T4"]),
        v6: false,
        udp: false,
        last_port: 1024,
    },
    Scan {
        id: "xmas",
        label: "nmap -sX -T4",
        prober: Prober::Nmap(&["-sX", "-T4"]),
        v6: false,
        udp: false,
        last_port: 1024,
    },
    Scan {
        id: "syn6",
        label: "nmap -6 -sS -T4",
        prober: Prober::Nmap(&["-6", "-sS", "-T4"]),
        v6: true,
        udp: false,
        last_port: 1024,
    },
    Scan {
        id: "udp",
        label: "nmap -sU -T5 -p1-300",
        prober: Prober::Nmap(&["-sU", "-T5"]),
        v6: false,
        udp: true,
        last_port: 300,
    },
    Scan {
        id: "masscan",
        label: "masscan --rate 1000000",
        prober: Prober::Masscan { rate: 1_000_000 },
        v6: false,
        udp: false,
        last_port: 1024,
    },
];

/// The scans named in a comma-separated list of ids (unknown ids are an error).
pub fn select(ids: &str) -> Result<Vec<Scan>, String> {
    ids.split(',')
        .map(str::trim)
        .map(|id| {
            SCANS.iter().find(|s| s.id == id).copied().ok_or(format!(
                "--scans: unknown scan {id:?} (known: {})",
                SCANS.iter().map(|s| s.id).collect::<Vec<_>>().join(",")
            ))
        })
        .collect()
}

impl Scan {
    pub fn program(&self) -> &'static str {
        match self.prober {
            Prober::Nmap(_) => "nmap",
            Prober::Masscan { .. } => "masscan",
        }
    }

    /// The scanner's arguments; `target_mac` is only used by masscan.
    pub fn args(&self, target_mac: &str) -> Vec<String> {
        let ports = format!("-p1-{}", self.last_port);
        let target = self.addrs().1.to_string();
        let mut a: Vec<String> = Vec::new();
        match self.prober {
            Prober::Nmap(flags) => {
                // Bounded: no retransmission (a dropped probe is not retried, as for every
                // tool alike) and a host timeout well inside the run's own.
                a.extend(
                    ["-n", "-Pn", "--max-retries", "0", "--host-timeout", "15s"]
                        .iter()
                        .map(|s| s.to_string()),
                );
                a.extend(flags.iter().map(|s| s.to_string()));
            }
            Prober::Masscan { rate } => {
                a.extend([
                    "--rate".to_string(),
                    rate.to_string(),
                    "--adapter".into(),
                    SCANNER_IF.into(),
                    "--adapter-ip".into(),
                    MASSCAN_V4.to_string(),
                    "--router-mac".into(),
                    target_mac.to_string(),
                    // Answers to 1024 probes sent in about a millisecond are in long before.
                    "--wait".into(),
                    "2".into(),
                ]);
            }
        }
        a.extend([ports, target]);
        a
    }

    /// The command line, for the report (the target MAC shown as a placeholder).
    pub fn command_line(&self) -> String {
        format!("{} {}", self.program(), self.args("<target-mac>").join(" "))
    }

    /// (scanner source, target) addresses of the scan's packets.
    pub fn addrs(&self) -> (IpAddr, IpAddr) {
        match (self.prober, self.v6) {
            (Prober::Masscan { .. }, _) => (IpAddr::V4(MASSCAN_V4), IpAddr::V4(TARGET_V4)),
            (_, true) => (IpAddr::V6(SCANNER_V6), IpAddr::V6(TARGET_V6)),
            (_, false) => (IpAddr::V4(SCANNER_V4), IpAddr::V4(TARGET_V4)),
        }
    }

    /// Run the scan from the scanner namespace, bounded in time.
    pub fn run(&self, net: &NetPair) -> Result<(), String> {
        let (_, tmac) = link_info(&net.target, TARGET_IF)?;
        let out = run(
            net.command(Side::Scanner, self.program())
                .args(self.args(&mac_text(tmac))),
            Duration::from_secs(120),
        );
        if out.success() {
            Ok(())
        } else {
            Err(format!("{} failed: {out}", self.program()))
        }
    }

    /// Neighbour entries this scan needs beyond the namespaces' own: the target's way back
    /// to masscan's address, as (address, MAC of the scanner's veth end).
    pub fn extra_neighbours(&self, scanner_mac: [u8; 6]) -> Vec<(IpAddr, String)> {
        match self.prober {
            Prober::Masscan { .. } => vec![(IpAddr::V4(MASSCAN_V4), mac_text(scanner_mac))],
            Prober::Nmap(_) => Vec::new(),
        }
    }
}

pub fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmap_arguments_are_bounded() {
        let a = SCANS[0].args("x");
        assert!(a.contains(&"--max-retries".to_string()) && a.contains(&"-p1-1024".to_string()));
        assert_eq!(a.last().map(String::as_str), Some("10.203.0.2"));
        let v6 = select("syn6").unwrap()[0].args("x");
        assert_eq!(v6.last().map(String::as_str), Some("fd00:203::2"));
        let udp = select("udp").unwrap()[0].args("x");
        assert!(udp.contains(&"-p1-300".to_string()), "{udp:?}");
    }

    #[test]
    fn masscan_has_its_own_source_and_the_router_mac() {
        let m = select("masscan").unwrap()[0];
        let a = m.args("02:00:00:00:00:01");
        let after = |k: &str| a.iter().position(|x| x == k).and_then(|i| a.get(i + 1));
        assert_eq!(after("--rate").map(String::as_str), Some("1000000"));
        assert_eq!(
            after("--adapter-ip").map(String::as_str),
            Some("10.203.0.77")
        );
        assert_eq!(
            after("--router-mac").map(String::as_str),
            Some("02:00:00:00:00:01")
        );
        assert_eq!(m.addrs().0, IpAddr::V4(MASSCAN_V4));
        assert!(select("syn,nope").is_err());
    }
}
