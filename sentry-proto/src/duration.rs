//! Go-style durations (`4h`, `90m`, `1h30m`, `3h59m58.3371s`): what `sentryctl block
//! --for` takes and what CrowdSec's Local API writes. Parsed strictly: no sign (a
//! negative duration is its own error, a LAPI sends them for expired decisions), no
//! spaces, every number followed by a unit, at most [`MAX_LEN`] bytes, and no more than
//! `u64` nanoseconds (Go's own limit is `i64`, about 292 years).

use std::fmt;
use std::time::Duration;

/// Longest duration text accepted.
pub const MAX_LEN: usize = 64;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    Empty,
    TooLong(usize),
    Negative,
    /// The byte offset where the text stopped making sense, and what was expected there.
    Syntax {
        at: usize,
        expected: &'static str,
    },
    UnknownUnit(String),
    Overflow,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty duration"),
            Self::TooLong(n) => write!(f, "duration is {n} bytes long (at most {MAX_LEN})"),
            Self::Negative => f.write_str("negative duration"),
            Self::Syntax { at, expected } => {
                write!(f, "bad duration at byte {at}: expected {expected}")
            }
            Self::UnknownUnit(u) => write!(
                f,
                "unknown unit {u:?} (use h, m, s, ms, us or ns, e.g. 4h, 90m, 1h30m)"
            ),
            Self::Overflow => f.write_str("duration too large"),
        }
    }
}

impl std::error::Error for DurationError {}

fn unit_ns(u: &str) -> Option<u128> {
    Some(match u {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parse a Go-style duration. `"0"` alone is zero, as in Go.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(DurationError::TooLong(s.len()));
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    while i < b.len() {
        let start = i;
        let Number {
            int,
            frac,
            frac_scale,
            int_digits,
            frac_digits,
            end,
        } = number(b, i)?;
        i = end;
        if int_digits == 0 && frac_digits == 0 {
            return Err(DurationError::Syntax {
                at: start,
                expected: "a number",
            });
        }
        let ustart = i;
        while i < b.len() && !b[i].is_ascii_digit() && b[i] != b'.' {
            i += 1;
        }
        if ustart == i {
            return Err(DurationError::Syntax {
                at: i,
                expected: "a unit (h, m, s, ms, us, ns)",
            });
        }
        // Units are ASCII except µ/μ (two bytes each); the slice boundaries are at ASCII
        // digits or '.', so they are character boundaries.
        let unit = s.get(ustart..i).ok_or(DurationError::Syntax {
            at: ustart,
            expected: "a unit",
        })?;
        let ns = unit_ns(unit).ok_or_else(|| DurationError::UnknownUnit(unit.to_string()))?;
        let whole = int.checked_mul(ns).ok_or(DurationError::Overflow)?;
        let part = frac
            .checked_mul(ns)
            .map(|v| v / frac_scale)
            .ok_or(DurationError::Overflow)?;
        total = total
            .checked_add(whole)
            .and_then(|t| t.checked_add(part))
            .ok_or(DurationError::Overflow)?;
        if total > u128::from(u64::MAX) {
            return Err(DurationError::Overflow);
        }
    }
    let ns = u64::try_from(total).map_err(|_| DurationError::Overflow)?;
    Ok(Duration::from_nanos(ns))
}

/// A number in a duration: integer part, fraction (`frac / frac_scale`) and how many
/// digits each had; `end` is where its unit starts.
struct Number {
    int: u128,
    frac: u128,
    frac_scale: u128,
    int_digits: usize,
    frac_digits: usize,
    end: usize,
}

/// Read the number at `b[i..]` (`digits[.digits]`, either part may be empty).
fn number(b: &[u8], mut i: usize) -> Result<Number, DurationError> {
    let start = i;
    let mut int: u128 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        int = int
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(b[i] - b'0')))
            .ok_or(DurationError::Overflow)?;
        i += 1;
    }
    let int_digits = i - start;
    // Fraction: digits after the point, kept to nanosecond precision of the unit.
    let mut frac: u128 = 0;
    let mut frac_scale: u128 = 1;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            // 18 digits are more than any unit's nanoseconds need; the rest are
            // read and ignored (truncated, as Go does).
            if frac_digits < 18 {
                frac = frac * 10 + u128::from(b[i] - b'0');
                frac_scale *= 10;
            }
            frac_digits += 1;
            i += 1;
        }
    }
    Ok(Number {
        int,
        frac,
        frac_scale,
        int_digits,
        frac_digits,
        end: i,
    })
}

/// A duration in Go's notation, whole seconds (`4h0m0s` is written `4h`, `90m` as
/// `1h30m`): what the fleet bridge sends to a LAPI.
pub fn format_go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    let mut o = String::new();
    if h > 0 {
        o.push_str(&format!("{h}h"));
    }
    if m > 0 {
        o.push_str(&format!("{m}m"));
    }
    if sec > 0 || o.is_empty() {
        o.push_str(&format!("{sec}s"));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Duration, DurationError> {
        parse_go_duration(s)
    }

    #[test]
    fn go_examples() {
        assert_eq!(p("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(p("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(p("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(p("1h30m15s"), Ok(Duration::from_secs(5415)));
        assert_eq!(p("0"), Ok(Duration::ZERO));
        assert_eq!(p("0s"), Ok(Duration::ZERO));
        assert_eq!(p("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(p(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(p("5.s"), Ok(Duration::from_secs(5)));
        assert_eq!(p("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(p("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(p("2\u{b5}s"), Ok(Duration::from_micros(2)));
        assert_eq!(p("7ns"), Ok(Duration::from_nanos(7)));
        // What CrowdSec 1.4.6 writes for a decision's remaining time.
        assert_eq!(
            p("3h59m58.337135962s"),
            Ok(Duration::from_nanos(
                (3 * 3600 + 59 * 60 + 58) * 1_000_000_000 + 337_135_962
            ))
        );
    }

    #[test]
    fn strict() {
        assert_eq!(p(""), Err(DurationError::Empty));
        assert_eq!(p("-4h"), Err(DurationError::Negative));
        assert!(matches!(p("4"), Err(DurationError::Syntax { at: 1, .. })));
        assert!(matches!(p("h"), Err(DurationError::Syntax { at: 0, .. })));
        assert!(matches!(
            p("1h30"),
            Err(DurationError::Syntax { at: 4, .. })
        ));
        assert!(matches!(p("."), Err(DurationError::Syntax { .. })));
        assert_eq!(p("4d"), Err(DurationError::UnknownUnit("d".into())));
        assert_eq!(p("4 h"), Err(DurationError::UnknownUnit(" h".into())));
        assert_eq!(p("4H"), Err(DurationError::UnknownUnit("H".into())));
        assert_eq!(
            p("+4h"),
            Err(DurationError::Syntax {
                at: 0,
                expected: "a number"
            })
        );
        assert_eq!(p("99999999999999999999999h"), Err(DurationError::Overflow));
        assert_eq!(p("6000000h"), Err(DurationError::Overflow));
        assert!(matches!(
            p(&"1".repeat(65)),
            Err(DurationError::TooLong(65))
        ));
        assert!(p("1.2.3s").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(format_go_duration(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(format_go_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_go_duration(Duration::from_secs(61)), "1m1s");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        for s in [1, 59, 60, 3599, 3600, 86_399, 1_000_000] {
            let d = Duration::from_secs(s);
            assert_eq!(p(&format_go_duration(d)), Ok(d));
        }
    }
}
