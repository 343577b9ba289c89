//! Warnings about outside events at most once a minute, the rest counted.
//!
//! A container or a remote can make an event happen thousands of times a
//! second (a full hand-off queue, a reply that cannot be bound); a warning
//! per event would turn a flood into a log flood. Each warning site keeps
//! an [`Every`]: the first event logs, the next ones within the interval are
//! counted, and the next warning says how many were left out. The events
//! themselves are counted in the metrics whatever the log says.

use std::time::{Duration, Instant};

/// How often one warning site may log.
pub const INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone)]
pub struct Every {
    last: Option<Instant>,
    suppressed: u64,
}

impl Every {
    /// Whether to log the event at `now`: `Some(n)` with the number of
    /// events left out since the last one logged, `None` to stay quiet.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// `" (N more like it since the last)"`, or nothing when none were left out.
pub fn more(n: u64) -> String {
    if n == 0 { String::new() } else { format!(" ({n} more like it in the last minute, not logged)") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_a_minute_and_the_rest_counted() {
        let mut e = Every::default();
        let t0 = Instant::now();
        assert_eq!(e.due(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(e.due(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(e.due(t0 + INTERVAL), Some(1000));
        assert_eq!(e.due(t0 + INTERVAL + Duration::from_secs(1)), None);
        assert_eq!(more(0), "");
        assert!(more(3).contains("3 more"));
    }
}
