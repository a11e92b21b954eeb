//! PortSentry's text formats and the time formats sentry writes.

use std::net::IpAddr;

use crate::Protocol;

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day, hour, minute, second) of a Unix time in UTC.
fn parts(epoch_s: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = i64::try_from(epoch_s / 86_400).unwrap_or(i64::MAX / 2);
    let (y, mo, d) = civil_from_days(days);
    let secs = epoch_s % 86_400;
    (y, mo, d, secs / 3600, secs % 3600 / 60, secs % 60)
}

/// RFC 3339 in UTC with milliseconds: `2026-11-21T13:05:00.123Z`.
pub fn format_utc(epoch_ms: u64) -> String {
    let (y, mo, d, h, mi, s) = parts(epoch_ms / 1000);
    let ms = epoch_ms % 1000;
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// A line of PortSentry's BLOCKED_FILE / HISTORY_FILE:
/// `<epoch> - MM/DD/YYYY HH:MM:SS Host: <name>/<ip> Port: <n> <TCP|UDP> Blocked`.
/// sentry never resolves names, so `<name>` is the address; the time is UTC.
pub fn history_line(epoch_s: u64, ip: IpAddr, port: u16, proto: Protocol) -> String {
    let (y, mo, d, h, mi, s) = parts(epoch_s);
    format!(
        "{epoch_s} - {mo:02}/{d:02}/{y:04} {h:02}:{mi:02}:{s:02} Host: {ip}/{ip} Port: {port} {} Blocked",
        proto.as_upper()
    )
}

/// Parse the address and protocol back out of a [`history_line`] (for reading an existing
/// BLOCKED_FILE). Returns `None` for lines in any other shape.
pub fn parse_history_line(line: &str) -> Option<(u64, IpAddr, u16, Protocol)> {
    let (epoch, rest) = line.split_once(" - ")?;
    let epoch = epoch.trim().parse().ok()?;
    let host = rest.split_once("Host: ")?.1;
    let (name_ip, rest) = host.split_once(' ')?;
    let ip = name_ip
        .rsplit_once('/')
        .map_or(name_ip, |(_, ip)| ip)
        .parse()
        .ok()?;
    let rest = rest.strip_prefix("Port: ")?;
    let mut words = rest.split_whitespace();
    let port = words.next()?.parse().ok()?;
    let word = words.next()?;
    let proto = Protocol::ALL.into_iter().find(|p| p.as_upper() == word)?;
    Some((epoch, ip, port, proto))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_utc(1_795_525_200_000), "2026-11-24T13:00:00.000Z");
    }

    #[test]
    fn portsentry_history_line() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let line = history_line(1_795_525_200, ip, 143, Protocol::Tcp);
        assert_eq!(
            line,
            "1795525200 - 11/24/2026 13:00:00 Host: 192.0.2.9/192.0.2.9 Port: 143 TCP Blocked"
        );
        assert_eq!(
            parse_history_line(&line),
            Some((1_795_525_200, ip, 143, Protocol::Tcp))
        );
        let v6: IpAddr = "2001:db8::9".parse().unwrap();
        let line = history_line(5, v6, 53, Protocol::Udp);
        assert_eq!(parse_history_line(&line), Some((5, v6, 53, Protocol::Udp)));
        assert_eq!(parse_history_line("garbage"), None);
    }
}
