//! sentry's nftables table: its shape, and the one `nft -f -` transaction that builds it
//! with the surviving blocks at start. Everything after start-up goes over netlink
//! ([`crate::netlink`]); nft(8) is used here because the table is built once and its
//! text form is what an administrator reads back with `nft list table`.

use std::time::Duration;

use policy::Config;

use crate::action::{SET_V4, SET_V6, SET_V6NET};
use crate::error::EnforcerError;
use crate::exec;
use crate::netlink::SetElem;

/// Build the `nft -f -` script that (re)creates the table: sets with per-element timeouts
/// for single addresses (`v4`, `v6`) and for IPv6 networks of BLOCK_PREFIX6 (`v6net`,
/// looked up with the source masked, so it stays a plain hash set), one drop rule each,
/// in a prerouting hook at priority -300 (before connection tracking, so not even an
/// established flow from a blocked host passes).
pub fn setup_script(table: &str, prefix6: u8) -> String {
    let mask = std::net::Ipv6Addr::from(
        u128::MAX
            .checked_shl(128 - u32::from(prefix6.min(128)))
            .unwrap_or(0),
    );
    format!(
        "table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tset {SET_V4} {{ type ipv4_addr; flags timeout; }}\n\
         \tset {SET_V6} {{ type ipv6_addr; flags timeout; }}\n\
         \tset {SET_V6NET} {{ type ipv6_addr; flags timeout; }}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority -300; policy accept;\n\
         \t\tip saddr @{SET_V4} counter drop\n\
         \t\tip6 saddr @{SET_V6} counter drop\n\
         \t\tip6 saddr & {mask} @{SET_V6NET} counter drop\n\
         \t}}\n\
         }}\n"
    )
}

/// `add element` statements for `elems` (appended to [`setup_script`]): single addresses
/// into `v4`/`v6`, or, with `nets`, IPv6 network addresses into `v6net`.
pub fn elements_script(table: &str, elems: &[SetElem], nets: bool) -> String {
    let mut out = String::new();
    let v6 = if nets { SET_V6NET } else { SET_V6 };
    for (set, v4) in [(SET_V4, true), (v6, false)] {
        let mine: Vec<&SetElem> = elems.iter().filter(|e| e.addr.is_ipv4() == v4).collect();
        for chunk in mine.chunks(1000) {
            out.push_str(&format!("add element inet {table} {set} {{ "));
            for (i, e) in chunk.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&e.addr.to_string());
                if let Some(t) = e.timeout {
                    out.push_str(&format!(" timeout {}ms", t.as_millis().max(1)));
                }
            }
            out.push_str(" }\n");
        }
    }
    out
}

/// Delete and recreate the table with `hosts` and IPv6 `nets` in it, in one transaction,
/// so a restart never opens a window in which the surviving blocks pass.
pub fn build(cfg: &Config, hosts: &[SetElem], nets: &[SetElem]) -> Result<(), EnforcerError> {
    let mut script = setup_script(&cfg.nft_table, cfg.block_prefix6);
    script.push_str(&elements_script(&cfg.nft_table, hosts, false));
    script.push_str(&elements_script(&cfg.nft_table, nets, true));
    let r = exec::run(
        &["nft".to_string(), "-f".to_string(), "-".to_string()],
        Some(script.as_bytes()),
        cfg.kill_timeout.max(Duration::from_secs(30)),
    );
    if r.outcome.success() {
        Ok(())
    } else {
        Err(EnforcerError::NftTable {
            table: cfg.nft_table.clone(),
            detail: format!("nft {}: {}", r.outcome.describe(), r.stderr),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_statements() {
        let e = [
            SetElem {
                addr: "192.0.2.1".parse().unwrap(),
                timeout: None,
            },
            SetElem {
                addr: "2001:db8::1".parse().unwrap(),
                timeout: Some(Duration::from_secs(5)),
            },
            SetElem {
                addr: "192.0.2.2".parse().unwrap(),
                timeout: Some(Duration::from_millis(1500)),
            },
        ];
        assert_eq!(
            elements_script("t", &e, false),
            "add element inet t v4 { 192.0.2.1, 192.0.2.2 timeout 1500ms }\n\
             add element inet t v6 { 2001:db8::1 timeout 5000ms }\n"
        );
        assert_eq!(elements_script("t", &[], false), "");
        assert!(elements_script("t", &e[1..2], true).starts_with("add element inet t v6net {"));
    }

    #[test]
    fn script_shape() {
        let s = setup_script("sentry", 64);
        assert!(s.contains("set v4 { type ipv4_addr; flags timeout; }"));
        assert!(s.contains("hook prerouting priority -300"));
        assert!(s.contains("ip saddr @v4 counter drop"));
        assert!(s.contains("ip6 saddr @v6 counter drop"));
        assert!(s.contains("ip6 saddr & ffff:ffff:ffff:ffff:: @v6net counter drop"));
        assert!(s.starts_with("table inet sentry {}\ndelete table inet sentry\n"));
    }
}
