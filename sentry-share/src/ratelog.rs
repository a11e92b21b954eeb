//! Log lines limited per topic: at most one line per topic every `every`; the lines in
//! between are counted, and the next line (or [`RateLog::flush`] once the period is
//! over) says how many were left out. Used for blocks that are not pushed: each is
//! worth a line with its reason, but a flood of forged probes must not flood the
//! journal.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Topic {
    last: Instant,
    suppressed: u64,
    latest: String,
}

#[derive(Debug)]
pub struct RateLog {
    every: Duration,
    topics: HashMap<&'static str, Topic>,
}

impl RateLog {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            topics: HashMap::new(),
        }
    }

    /// The line to log now for `topic`, if any.
    pub fn note(&mut self, topic: &'static str, line: String, now: Instant) -> Option<String> {
        let secs = self.every.as_secs();
        match self.topics.get_mut(topic) {
            Some(t) if now.duration_since(t.last) < self.every => {
                t.suppressed += 1;
                t.latest = line;
                None
            }
            Some(t) => {
                let n = std::mem::take(&mut t.suppressed);
                t.last = now;
                t.latest.clear();
                Some(if n > 0 {
                    format!("{line} ({n} more of these in the last {secs}s not logged)")
                } else {
                    line
                })
            }
            None => {
                self.topics.insert(
                    topic,
                    Topic {
                        last: now,
                        suppressed: 0,
                        latest: String::new(),
                    },
                );
                Some(line)
            }
        }
    }

    /// Summary lines for topics whose period ended with lines left out.
    pub fn flush(&mut self, now: Instant) -> Vec<String> {
        let secs = self.every.as_secs();
        let mut out = Vec::new();
        let mut names: Vec<&'static str> = self.topics.keys().copied().collect();
        names.sort_unstable();
        for name in names {
            let Some(t) = self.topics.get_mut(name) else {
                continue;
            };
            if t.suppressed > 0 && now.duration_since(t.last) >= self.every {
                out.push(format!(
                    "{} more of these in the last {secs}s not logged ({name}); the latest: {}",
                    t.suppressed, t.latest
                ));
                t.suppressed = 0;
                t.latest.clear();
                t.last = now;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_topic_per_period_with_a_count() {
        let mut l = RateLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.note("weak", "a".into(), t0).as_deref(), Some("a"));
        assert_eq!(l.note("other", "x".into(), t0).as_deref(), Some("x"));
        for i in 0..5 {
            assert!(l
                .note("weak", format!("b{i}"), t0 + Duration::from_secs(i))
                .is_none());
        }
        assert!(l.flush(t0 + Duration::from_secs(30)).is_empty());
        let f = l.flush(t0 + Duration::from_secs(60));
        assert_eq!(
            f,
            ["5 more of these in the last 60s not logged (weak); the latest: b4"]
        );
        // The flush started a new period: the next line waits for its end.
        assert!(l
            .note("weak", "c".into(), t0 + Duration::from_secs(61))
            .is_none());
        assert_eq!(
            l.note("weak", "d".into(), t0 + Duration::from_secs(121))
                .as_deref(),
            Some("d (1 more of these in the last 60s not logged)")
        );
        assert!(l.flush(t0 + Duration::from_secs(500)).is_empty());
    }
}
