//! Logs that neither flood nor go quiet: per kind of failure, the first occurrence is
//! logged; later ones within [`WINDOW`] are counted, and the next one logged after the
//! window carries how many were left out (or [`LogLimiter::summaries`] reports them on
//! its own at the next health tick). A new kind of failure is always logged at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long, at most, occurrences of one kind go unreported.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Whether to log this occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `left_out` occurrences of its kind were only counted since the last
    /// line (say so when not zero).
    Log { left_out: u64 },
    /// Counted only.
    Quiet,
}

#[derive(Debug)]
struct Kind {
    last_logged: Instant,
    left_out: u64,
    last_message: String,
}

/// Occurrences left out and not reported yet, per kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub kind: &'static str,
    pub left_out: u64,
    /// The most recent one's text.
    pub last_message: String,
    pub over: Duration,
}

#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    kinds: Mutex<HashMap<&'static str, Kind>>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

impl LogLimiter {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            kinds: Mutex::default(),
        }
    }

    /// One occurrence of `kind`, at `now`.
    pub fn note_at(&self, kind: &'static str, message: &str, now: Instant) -> Verdict {
        let Ok(mut kinds) = self.kinds.lock() else {
            return Verdict::Log { left_out: 0 };
        };
        match kinds.get_mut(kind) {
            None => {
                kinds.insert(
                    kind,
                    Kind {
                        last_logged: now,
                        left_out: 0,
                        last_message: String::new(),
                    },
                );
                Verdict::Log { left_out: 0 }
            }
            Some(k) if now.saturating_duration_since(k.last_logged) >= self.window => {
                let left_out = std::mem::take(&mut k.left_out);
                k.last_logged = now;
                Verdict::Log { left_out }
            }
            Some(k) => {
                k.left_out += 1;
                message.clone_into(&mut k.last_message);
                Verdict::Quiet
            }
        }
    }

    pub fn note(&self, kind: &'static str, message: &str) -> Verdict {
        self.note_at(kind, message, Instant::now())
    }

    /// Kinds whose left-out occurrences have waited a whole window: each is reported
    /// once here (and counts as logged).
    pub fn summaries_at(&self, now: Instant) -> Vec<Summary> {
        let Ok(mut kinds) = self.kinds.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (kind, k) in kinds.iter_mut() {
            let over = now.saturating_duration_since(k.last_logged);
            if k.left_out > 0 && over >= self.window {
                out.push(Summary {
                    kind,
                    left_out: std::mem::take(&mut k.left_out),
                    last_message: std::mem::take(&mut k.last_message),
                    over,
                });
                k.last_logged = now;
            }
        }
        out.sort_by_key(|s| s.kind);
        out
    }

    pub fn summaries(&self) -> Vec<Summary> {
        self.summaries_at(Instant::now())
    }
}

/// The words a logged line adds for the occurrences left out before it: nothing, or
/// "; 213 more like it since the last report".
pub fn more(left_out: u64) -> String {
    if left_out == 0 {
        String::new()
    } else {
        format!("; {left_out} more like it since the last report")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_kind_is_logged_then_one_line_per_window() {
        let l = LogLimiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.note_at("json", "a", at(0)), Verdict::Log { left_out: 0 });
        assert_eq!(l.note_at("json", "b", at(1)), Verdict::Quiet);
        assert_eq!(l.note_at("json", "c", at(2)), Verdict::Quiet);
        // A new kind three days later is not hidden behind the first.
        assert_eq!(l.note_at("stale", "d", at(3)), Verdict::Log { left_out: 0 });
        assert!(l.summaries_at(at(30)).is_empty());
        assert_eq!(l.note_at("json", "e", at(61)), Verdict::Log { left_out: 2 });
        assert_eq!(l.note_at("json", "f", at(62)), Verdict::Quiet);
        let s = l.summaries_at(at(125));
        assert_eq!(
            s,
            vec![Summary {
                kind: "json",
                left_out: 1,
                last_message: "f".into(),
                over: Duration::from_secs(64)
            }]
        );
        // Reported once.
        assert!(l.summaries_at(at(200)).is_empty());
    }
}
