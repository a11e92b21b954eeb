//! The standard `process_*` metric families (as Prometheus' own client libraries export
//! them), read from `/proc/self`: CPU time, resident and virtual memory, open and maximum
//! descriptors, start time. The daemons' units limit memory and descriptors, so these are
//! what an administrator alerts on.
//!
//! Only `/proc/self/{stat,limits,fd}` are read: they stay visible under the units'
//! `ProtectProc=invisible` and `ProcSubset=pid`, which hide `/proc/stat` (the boot time)
//! — the start time is therefore computed from CLOCK_BOOTTIME instead. Everything read is
//! parsed without trusting its shape: a field that is missing or not a number leaves its
//! family out, never a panic.

use std::path::Path;

use crate::expo::Expo;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// The soft RLIMIT_NOFILE (what `open` runs into).
    pub max_fds: Option<u64>,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// The fields of `/proc/PID/stat` used here, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: u64,
}

/// Parse `/proc/PID/stat`. The command name (field 2) is in parentheses and may itself
/// hold spaces and parentheses, so the fields are counted from the LAST `)`.
pub fn parse_stat(text: &str) -> Option<StatFields> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state is field 3; utime 14, stime 15, starttime 22, vsize 23,
    // rss 24 (proc(5)), i.e. indexes 11, 12, 19, 20, 21 of what follows the name.
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(StatFields {
        cpu_ticks: num(11)?.checked_add(num(12)?)?,
        start_ticks: num(19)?,
        vsize_bytes: num(20)?,
        // rss is signed in the kernel's format; a negative value is not a size.
        rss_pages: f
            .get(21)?
            .parse::<i64>()
            .ok()
            .and_then(|v| u64::try_from(v).ok())?,
    })
}

/// The soft "Max open files" limit from `/proc/PID/limits` (`unlimited` gives `None`:
/// no number to compare against).
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Read this process's figures. Each that cannot be read is `None`.
pub fn read_self() -> ProcessStats {
    read_at(Path::new("/proc/self"))
}

fn read_at(dir: &Path) -> ProcessStats {
    let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap_or(100)
        .max(1);
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096);
    let stat = std::fs::read_to_string(dir.join("stat"))
        .ok()
        .and_then(|t| parse_stat(&t));
    // The wall-clock start: now, minus how long ago (on the boot clock, which also counts
    // suspend, as the kernel's starttime does) the process started.
    let start_time_seconds = stat.and_then(|s| {
        let boot_now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
        let boot_now = boot_now.tv_sec() as f64 + boot_now.tv_nsec() as f64 / 1e9;
        let wall_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        let started = s.start_ticks as f64 / ticks as f64;
        let ago = (boot_now - started).max(0.0);
        // Whole milliseconds: finer digits only change from one scrape to the next.
        Some(((wall_now - ago) * 1000.0).round() / 1000.0)
    });
    let open_fds = std::fs::read_dir(dir.join("fd"))
        .ok()
        .map(|d| d.filter(Result::is_ok).count() as u64);
    ProcessStats {
        cpu_seconds: stat.map(|s| s.cpu_ticks as f64 / ticks as f64),
        resident_bytes: stat.map(|s| s.rss_pages.saturating_mul(page)),
        virtual_bytes: stat.map(|s| s.vsize_bytes),
        open_fds,
        max_fds: std::fs::read_to_string(dir.join("limits"))
            .ok()
            .and_then(|t| parse_max_fds(&t)),
        start_time_seconds,
    }
}

fn sysconf(v: nix::unistd::SysconfVar) -> Option<u64> {
    nix::unistd::sysconf(v)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
}

/// Write the `process_*` families (those that could be read) under their standard names.
pub fn render(e: &mut Expo, p: &ProcessStats) {
    if let Some(v) = p.cpu_seconds {
        e.single_f64(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            v,
        );
    }
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_bytes,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors.",
            p.max_fds,
        ),
    ];
    for (name, help, v) in gauges {
        if let Some(v) = v {
            e.single(name, "gauge", help, v);
        }
    }
    if let Some(v) = p.start_time_seconds {
        e.single_f64(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            v,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
        150 50 0 0 20 0 3 0 123456 10485760 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s,
            StatFields {
                cpu_ticks: 200,
                start_ticks: 123_456,
                vsize_bytes: 10_485_760,
                rss_pages: 2560,
            }
        );
    }

    #[test]
    fn damaged_stat_lines_are_none_not_panics() {
        for bad in [
            "",
            "4242 (a",
            "4242 (a) S 1",
            &STAT.replace(" 150 ", " x "),
            &STAT.replace(" 2560 ", " -5 "),
            "1 (x) S 1 1 1 0 -1 0 0 0 0 0 18446744073709551615 1 0 0 20 0 1 0 1 1 1",
        ] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_soft_descriptor_limit_is_read() {
        let limits =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max processes             63408                63408                processes \n\
            Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(parse_max_fds("garbage"), None);
    }

    #[test]
    fn this_process_has_sane_figures() {
        let p = read_self();
        let rss = p.resident_bytes.unwrap();
        assert!(rss > 100_000 && rss <= p.virtual_bytes.unwrap(), "{p:?}");
        assert!(p.open_fds.unwrap() >= 3, "{p:?}");
        assert!(p.max_fds.unwrap() >= p.open_fds.unwrap(), "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        assert!(start <= now + 1.0 && start > now - 86_400.0, "{p:?}");
        assert!(p.cpu_seconds.unwrap() >= 0.0);
        let mut e = Expo::default();
        render(&mut e, &p);
        let t = e.finish();
        for f in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(t.contains(&format!("# TYPE {f} ")), "{f}: {t}");
        }
    }
}
