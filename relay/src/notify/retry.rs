//! When a failed delivery is tried again: exponential backoff with jitter, up to a
//! maximum age, then given up. Pure: the time and the jitter are passed in.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// The retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure (before jitter).
    pub base: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
    /// How long after the delivery was queued it is given up.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            max_delay: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// The maximum age has passed: mark the delivery failed.
    GiveUp,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RetryPolicy {
    /// The delay after `attempts` failed attempts (1 = the first), before jitter:
    /// `base × 2^(attempts−1)`, at most `max_delay`.
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(30);
        self.base.saturating_mul(factor).min(self.max_delay)
    }

    /// The decision after attempt number `attempts` failed at `now`, for a delivery
    /// queued at `queued`. `jitter` in `[0, 1)` scales the delay into `[½, 1)` of
    /// itself, so receivers coming back are not hit by every sender at once. The last
    /// attempt is made at the deadline; one failing at or after it gives up.
    pub fn after_failure(
        &self,
        attempts: u32,
        queued: DateTime<Utc>,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> Next {
        let deadline = queued.timestamp_millis().saturating_add(ms(self.max_age));
        let now_ms = now.timestamp_millis();
        if now_ms >= deadline {
            return Next::GiveUp;
        }
        let full = ms(self.delay(attempts));
        let scale = 0.5 + jitter.clamp(0.0, 1.0) / 2.0;
        // Whole milliseconds; the float only scales a delay, never money.
        let delay = ((full as f64) * scale) as i64;
        let at = now_ms.saturating_add(delay.max(1)).min(deadline);
        match DateTime::from_timestamp_millis(at) {
            Some(t) => Next::RetryAt(t),
            None => Next::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = RetryPolicy {
            base: Duration::from_secs(5),
            max_delay: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        };
        let got: Vec<u64> = (1..=6).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 40, 60, 60]);
        assert_eq!(p.delay(1000).as_secs(), 60);
    }

    #[test]
    fn jitter_backoff_and_the_maximum_age() {
        let p = RetryPolicy {
            base: Duration::from_secs(10),
            max_delay: Duration::from_secs(600),
            max_age: Duration::from_secs(100),
        };
        let cases = [
            // (attempts, now, jitter, expected)
            (1, 0, 0.0, Next::RetryAt(t(5))),
            (1, 0, 1.0, Next::RetryAt(t(10))),
            (2, 20, 0.0, Next::RetryAt(t(30))),
            (3, 50, 1.0, Next::RetryAt(t(90))),
            // Never past the deadline: the last try is at it.
            (4, 90, 1.0, Next::RetryAt(t(100))),
            (5, 100, 0.5, Next::GiveUp),
            (5, 250, 0.5, Next::GiveUp),
        ];
        for (attempts, now, jitter, want) in cases {
            let got = p.after_failure(attempts, t(0), t(now), jitter);
            let got = match got {
                Next::RetryAt(at) => Next::RetryAt(Utc.timestamp_opt(at.timestamp(), 0).unwrap()),
                g => g,
            };
            assert_eq!(got, want, "attempt {attempts} at {now}");
        }
    }
}
