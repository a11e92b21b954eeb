//! CPU time and peak memory of a process, from /proc.

use std::fs;

/// Clock ticks per second for /proc/<pid>/stat times (`getconf CLK_TCK`; 100 on Linux).
fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// CPU seconds of a process: (own user+system, waited-for children user+system).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub own_s: f64,
    pub children_s: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.own_s + self.children_s
    }

    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            own_s: self.own_s - before.own_s,
            children_s: self.children_s - before.children_s,
        }
    }
}

pub fn cpu(pid: u32) -> Option<Cpu> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the last ')' start at field 3 (state); utime is field 14.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let tck = clk_tck();
    Some(Cpu {
        own_s: (num(11)? + num(12)?) / tck,
        children_s: (num(13)? + num(14)?) / tck,
    })
}

/// A `kB` field of /proc/<pid>/status (VmHWM, VmRSS), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Median of a list (mean of the middle two for an even count); `None` when empty.
/// The `q`-quantile (0..=1) of `v` by nearest rank: the smallest sample with at least
/// `q` of the samples at or below it (the maximum for q = 1).
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    s.sort_by(f64::total_cmp);
    // Nearest rank: the first k (1-based) with k >= q * n; no float-to-integer cast.
    let n = u32::try_from(s.len()).ok()?;
    let rank = (1..=n)
        .find(|&k| f64::from(k) >= q * f64::from(n))
        .unwrap_or(n);
    s.get(usize::try_from(rank).ok()? - 1).copied()
}

pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

pub fn min_max(v: &[f64]) -> Option<(f64, f64)> {
    let mut it = v.iter().copied().filter(|x| x.is_finite());
    let first = it.next()?;
    Some(it.fold((first, first), |(lo, hi), x| (lo.min(x), hi.max(x))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), Some((1.0, 5.0)));
    }

    #[test]
    fn quantile_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&v, 1.5), None);
    }

    #[test]
    fn own_cpu_is_readable() {
        let c = cpu(std::process::id()).expect("own /proc/self/stat");
        assert!(c.own_s >= 0.0 && c.children_s >= 0.0);
        assert!(status_kib(std::process::id(), "VmHWM").is_some_and(|k| k > 0));
    }
}
