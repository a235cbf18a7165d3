//! Operational watches: when a relay's publisher spool grows, its quarantine grows, or
//! the projectors fall behind, and when that is over. No IO; the readings and the time
//! are passed in.
//!
//! A watch raises once when its measure crosses the alert threshold and again only
//! after the measure went back down (to half the threshold, so a measure hovering
//! around it does not flap), with a `recovered` notice in between. Each raise starts a
//! new episode; the caller derives the notice's id from the episode, so retrying the
//! same notice is harmless.

use chrono::{DateTime, TimeDelta, Utc};
use std::collections::HashMap;
use std::time::Duration;

/// A change a watch reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The measure crossed its threshold: episode `n` began.
    Raised(u32),
    /// The measure is back to normal: episode `n` ended.
    Recovered(u32),
}

/// A level with hysteresis: raised when `high`, lowered when `low`, unchanged in
/// between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Level {
    /// Whether an episode is under way.
    raised: bool,
    /// Episodes begun so far.
    episode: u32,
}

impl Level {
    /// Feeds one reading: `high` (over the alert threshold), `low` (back under the
    /// recovery threshold).
    pub fn observe(&mut self, high: bool, low: bool) -> Option<Change> {
        if !self.raised && high {
            self.raised = true;
            self.episode += 1;
            return Some(Change::Raised(self.episode));
        }
        if self.raised && low && !high {
            self.raised = false;
            return Some(Change::Recovered(self.episode));
        }
        None
    }

    /// Whether an episode is under way.
    pub fn raised(&self) -> bool {
        self.raised
    }
}

/// What a process's publisher holds back (from its stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Events in the spool, waiting for the log.
    pub spool_events: u64,
    /// Events the log refused for good, set aside.
    pub quarantine_events: u64,
}

/// What a [`PublisherWatch`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherChange {
    /// The spool passed the threshold (episode `n`), or drained again.
    Spool(Change),
    /// The quarantine grew (occurrence `n`); from `before` to `now` events.
    QuarantineGrew {
        /// The n-th time in this process.
        n: u32,
        /// Events quarantined when last reported (or at the first reading).
        before: u64,
        /// Events quarantined now.
        now: u64,
    },
}

/// Watches one process's publisher: the spool against a threshold, the quarantine
/// for growth.
///
/// The quarantine does not shrink by itself (an operator clears it), so it has no
/// recovery: it is reported when it grew since the last report, at most once per
/// `quiet` (the report then covers all growth since the last). Events already
/// quarantined when the process starts are not reported again.
#[derive(Debug, Clone)]
pub struct PublisherWatch {
    /// Alert when the spool holds more than this many events.
    spool_threshold: u64,
    /// Least time between two quarantine reports.
    quiet: Duration,
    /// The spool's level.
    spool: Level,
    /// Quarantined events when last reported (or at the first reading).
    quarantine_seen: Option<u64>,
    /// When the quarantine was last reported.
    quarantine_at: Option<DateTime<Utc>>,
    /// Quarantine reports so far.
    quarantine_reports: u32,
}

impl PublisherWatch {
    /// A watch alerting above `spool_threshold` spooled events and on quarantine growth
    /// at most once per `quiet`.
    pub fn new(spool_threshold: u64, quiet: Duration) -> Self {
        Self {
            spool_threshold,
            quiet,
            spool: Level::default(),
            quarantine_seen: None,
            quarantine_at: None,
            quarantine_reports: 0,
        }
    }

    /// Feeds one reading.
    pub fn observe(&mut self, now: DateTime<Utc>, b: Backlog) -> Vec<PublisherChange> {
        let mut out = Vec::new();
        let t = self.spool_threshold;
        if let Some(c) = self
            .spool
            .observe(b.spool_events > t, b.spool_events <= t / 2)
        {
            out.push(PublisherChange::Spool(c));
        }
        let seen = *self.quarantine_seen.get_or_insert(b.quarantine_events);
        if b.quarantine_events < seen {
            // Cleared by an operator: growth counts from here.
            self.quarantine_seen = Some(b.quarantine_events);
        } else if b.quarantine_events > seen {
            let quiet = TimeDelta::from_std(self.quiet).unwrap_or(TimeDelta::MAX);
            let due = self.quarantine_at.is_none_or(|at| now - at >= quiet);
            if due {
                self.quarantine_reports += 1;
                self.quarantine_seen = Some(b.quarantine_events);
                self.quarantine_at = Some(now);
                out.push(PublisherChange::QuarantineGrew {
                    n: self.quarantine_reports,
                    before: seen,
                    now: b.quarantine_events,
                });
            }
        }
        out
    }
}

/// One projection's position, as `projections::read::lag` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagReading {
    /// Projection name.
    pub projection: String,
    /// Last applied position.
    pub checkpoint: u64,
    /// Events between the checkpoint and the log's head.
    pub behind: u64,
}

/// The worst of one set of readings, for the notice's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagSummary {
    /// The projection furthest behind.
    pub projection: String,
    /// How far behind it is.
    pub behind: u64,
    /// Projections behind whose checkpoint has not moved for the stall time, by name.
    pub stalled: Vec<String>,
}

/// Watches the projectors: raised when one is more than `events` behind, or has been
/// behind without moving for `stall` (zero: never); recovered when all are within
/// half of `events` and none is stalled.
#[derive(Debug, Clone)]
pub struct LagWatch {
    /// Alert when a projection is more than this many events behind.
    events: u64,
    /// Alert when a projection behind has not moved for this long (zero: off).
    stall: Duration,
    /// The level.
    level: Level,
    /// Per projection behind: its checkpoint, and since when it has been behind at it.
    moving: HashMap<String, (u64, DateTime<Utc>)>,
}

impl LagWatch {
    /// A watch with these thresholds.
    pub fn new(events: u64, stall: Duration) -> Self {
        Self {
            events,
            stall,
            level: Level::default(),
            moving: HashMap::new(),
        }
    }

    /// Feeds one set of readings (every projection).
    pub fn observe(
        &mut self,
        now: DateTime<Utc>,
        readings: &[LagReading],
    ) -> Option<(Change, LagSummary)> {
        let stall = TimeDelta::from_std(self.stall).unwrap_or(TimeDelta::MAX);
        let mut stalled = Vec::new();
        for r in readings {
            if r.behind == 0 {
                // Caught up: idle with nothing to do is not a stall.
                self.moving.remove(&r.projection);
                continue;
            }
            match self.moving.get_mut(&r.projection) {
                Some(entry) if entry.0 == r.checkpoint => {
                    if !self.stall.is_zero() && now - entry.1 >= stall {
                        stalled.push(r.projection.clone());
                    }
                }
                Some(entry) => *entry = (r.checkpoint, now),
                None => {
                    self.moving
                        .insert(r.projection.clone(), (r.checkpoint, now));
                }
            }
        }
        let worst = readings.iter().max_by_key(|r| r.behind);
        let behind = worst.map_or(0, |r| r.behind);
        let high = behind > self.events || !stalled.is_empty();
        let low = behind <= self.events / 2 && stalled.is_empty();
        let change = self.level.observe(high, low)?;
        Some((
            change,
            LagSummary {
                projection: worst.map(|r| r.projection.clone()).unwrap_or_default(),
                behind,
                stalled,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 3, 12, 0, 0).unwrap() + TimeDelta::seconds(secs)
    }

    #[test]
    fn a_level_raises_once_and_again_only_after_it_went_back_down() {
        // (high, low) → change
        let steps = [
            ((false, true), None),
            ((true, false), Some(Change::Raised(1))),
            ((true, false), None),
            // Between the thresholds: still raised, nothing new.
            ((false, false), None),
            ((true, false), None),
            ((false, true), Some(Change::Recovered(1))),
            ((false, true), None),
            ((false, false), None),
            ((true, false), Some(Change::Raised(2))),
        ];
        let mut l = Level::default();
        for (i, ((high, low), want)) in steps.into_iter().enumerate() {
            assert_eq!(l.observe(high, low), want, "step {i}");
        }
        assert!(l.raised());
    }

    #[test]
    fn the_spool_alerts_above_its_threshold_and_recovers_below_half() {
        use Change::*;
        use PublisherChange::Spool;
        // (spool events) → changes, threshold 1000
        let steps: [(u64, Vec<PublisherChange>); 9] = [
            (0, vec![]),
            (1000, vec![]),
            (1001, vec![Spool(Raised(1))]),
            (5000, vec![]),
            // Below the threshold but above half: no flapping.
            (900, vec![]),
            (1200, vec![]),
            (500, vec![Spool(Recovered(1))]),
            (0, vec![]),
            (2000, vec![Spool(Raised(2))]),
        ];
        let mut w = PublisherWatch::new(1000, Duration::from_secs(600));
        for (i, (spool, want)) in steps.into_iter().enumerate() {
            let got = w.observe(
                t(i as i64),
                Backlog {
                    spool_events: spool,
                    quarantine_events: 0,
                },
            );
            assert_eq!(got, want, "step {i}: {spool}");
        }
    }

    #[test]
    fn quarantine_growth_is_reported_at_most_once_per_quiet_period() {
        // (seconds, quarantined) → report
        let steps = [
            // Already quarantined at start: not this process's news.
            (0, 3, None),
            (1, 3, None),
            (2, 4, Some((1, 3, 4))),
            // Grew again within the quiet period: held back …
            (100, 6, None),
            (200, 7, None),
            // … and reported, all of it, once the period is over.
            (602, 7, Some((2, 4, 7))),
            (603, 7, None),
            // Cleared by an operator, then growing again.
            (700, 0, None),
            (1300, 2, Some((3, 0, 2))),
        ];
        let mut w = PublisherWatch::new(1000, Duration::from_secs(600));
        for (secs, q, want) in steps {
            let got = w.observe(
                t(secs),
                Backlog {
                    spool_events: 0,
                    quarantine_events: q,
                },
            );
            let want: Vec<PublisherChange> = want
                .map(|(n, before, now)| PublisherChange::QuarantineGrew { n, before, now })
                .into_iter()
                .collect();
            assert_eq!(got, want, "at {secs} s with {q}");
        }
    }

    fn lag(checkpoints: &[(&str, u64, u64)]) -> Vec<LagReading> {
        checkpoints
            .iter()
            .map(|(p, c, b)| LagReading {
                projection: (*p).to_owned(),
                checkpoint: *c,
                behind: *b,
            })
            .collect()
    }

    #[test]
    fn projector_lag_alerts_over_the_event_threshold_and_recovers_under_half() {
        let mut w = LagWatch::new(100, Duration::ZERO);
        // (usage behind, audit behind) → change
        let steps = [
            ((0, 0), None),
            ((100, 20), None),
            ((101, 20), Some(Change::Raised(1))),
            ((5000, 4000), None),
            ((60, 0), None),
            ((10, 50), Some(Change::Recovered(1))),
            ((0, 101), Some(Change::Raised(2))),
        ];
        for (i, ((u, a), want)) in steps.into_iter().enumerate() {
            // Checkpoints move every step: no stall.
            let got = w.observe(
                t(i as i64 * 1000),
                &lag(&[("usage", i as u64, u), ("audit", i as u64, a)]),
            );
            assert_eq!(got.as_ref().map(|(c, _)| *c), want, "step {i}");
            if let Some((_, s)) = got {
                assert_eq!(s.behind, u.max(a));
                assert_eq!(s.projection, if u >= a { "usage" } else { "audit" });
                assert!(s.stalled.is_empty());
            }
        }
    }

    #[test]
    fn a_projector_that_stops_moving_while_behind_alerts_after_the_stall_time() {
        let mut w = LagWatch::new(10_000, Duration::from_secs(300));
        // (seconds, checkpoint, behind) → change
        let steps = [
            (0, 10, 0, None),
            // Behind a little, and stuck.
            (10, 10, 3, None),
            (309, 10, 5, None),
            (310, 10, 5, Some(Change::Raised(1))),
            (400, 10, 9, None),
            // Moving again, still behind: no longer stalled, well under the threshold.
            (401, 12, 7, Some(Change::Recovered(1))),
            (500, 15, 4, None),
            // Stuck at 15 since 500 s.
            (799, 15, 4, None),
            (800, 15, 4, Some(Change::Raised(2))),
            // Caught up.
            (801, 15, 0, Some(Change::Recovered(2))),
            // Idle with nothing to do is not a stall.
            (5000, 15, 0, None),
        ];
        for (secs, checkpoint, behind, want) in steps {
            let got = w.observe(t(secs), &lag(&[("usage", checkpoint, behind)]));
            assert_eq!(got.as_ref().map(|(c, _)| *c), want, "at {secs} s");
            if let Some((Change::Raised(_), s)) = got {
                assert_eq!(s.stalled, ["usage"]);
            }
        }
    }
}
