//! RFC 3339 times as a LAPI writes them (`2026-12-02T01:02:03Z`,
//! `2026-12-02T01:02:03.123456789+01:00`): the JWT expiry of a login reply, checked
//! against this host's clock. Strict: the full date and time, `T`, and `Z` or an offset.

/// Days from 1970-01-01 to the given civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &[u8], at: usize, n: usize) -> Result<u32, String> {
    let part = s
        .get(at..at + n)
        .ok_or_else(|| format!("time ends at byte {at}"))?;
    if !part.iter().all(u8::is_ascii_digit) {
        return Err(format!("expected {n} digits at byte {at}"));
    }
    Ok(part.iter().fold(0u32, |v, c| v * 10 + u32::from(c - b'0')))
}

/// Seconds since the Unix epoch (fractions dropped).
pub fn parse(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    if b.len() > 40 {
        return Err("time longer than 40 bytes".into());
    }
    let y = digits(b, 0, 4)?;
    let expect = |at: usize, c: u8| -> Result<(), String> {
        if b.get(at) == Some(&c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {at}", c as char))
        }
    };
    expect(4, b'-')?;
    let mo = digits(b, 5, 2)?;
    expect(7, b'-')?;
    let d = digits(b, 8, 2)?;
    if !matches!(b.get(10), Some(b'T') | Some(b't')) {
        return Err("expected 'T' at byte 10".into());
    }
    let h = digits(b, 11, 2)?;
    expect(13, b':')?;
    let mi = digits(b, 14, 2)?;
    expect(16, b':')?;
    let sec = digits(b, 17, 2)?;
    if !(1..=12).contains(&mo) || d == 0 || d > 31 || h > 23 || mi > 59 || sec > 60 {
        return Err(format!("{s:?}: field out of range"));
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err("expected digits after '.'".into());
        }
    }
    let offset: i64 = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if i + 6 == b.len() => {
            let oh = digits(b, i + 1, 2)?;
            expect(i + 3, b':')?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err("offset out of range".into());
            }
            let o = i64::from(oh * 3600 + om * 60);
            if *c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return Err(format!("expected 'Z' or an offset at byte {i}")),
    };
    let days = days_from_civil(i64::from(y), mo, d);
    Ok(days * 86_400 + i64::from(h * 3600 + mi * 60 + sec) - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse("2026-12-02T00:22:37Z"), Ok(1_796_170_957));
        assert_eq!(
            parse("2026-12-02T01:22:37.123456789+01:00"),
            Ok(1_796_170_957)
        );
        assert_eq!(parse("2026-12-01T23:22:37-01:00"), Ok(1_796_170_957));
        assert_eq!(parse("2000-02-29T12:00:00Z"), Ok(951_825_600));
        for bad in [
            "",
            "2026-12-02",
            "2026-12-02 00:22:37Z",
            "2026-12-02T00:22:37",
            "2026-13-02T00:22:37Z",
            "2026-12-02T24:00:00Z",
            "2026-12-02T00:22:37.Z",
            "2026-12-02T00:22:37+0100",
            "2026-12-02T00:22:37Zjunk",
            "２026-12-02T00:22:37Z",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
