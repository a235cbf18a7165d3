//! Failures counted per scope (a user name, a client address) in fixed windows, in
//! memory: what throttles failed logins and failed authentication, and what decides
//! when an aggregated failure event is due. No IO; the time is passed in.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most scopes remembered; past this, finished windows are forgotten.
const MAX_SCOPES: usize = 100_000;

/// Failure counts per scope in fixed windows.
pub struct FailureWindows<K = String> {
    /// Window length.
    window: Duration,
    /// scope → (failures, window start).
    windows: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K: std::hash::Hash + Eq + Clone> FailureWindows<K> {
    /// Counts in windows of `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            windows: Mutex::default(),
        }
    }

    /// Seconds until the scope's window ends, when it holds `max` failures or more.
    pub fn blocked<Q>(&self, scope: &Q, max: u32, now: Instant) -> Option<u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let g = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if g.is_empty() {
            return None;
        }
        let (n, start) = g.get(scope)?;
        let left = self
            .window
            .checked_sub(now.duration_since(*start))
            .filter(|d| !d.is_zero())?;
        (*n >= max).then(|| left.as_secs().max(1))
    }

    /// Counts a failure; returns the count in the current window.
    pub fn fail<Q>(&self, scope: &Q, now: Instant) -> u32
    where
        K: std::borrow::Borrow<Q>,
        Q: ToOwned<Owned = K> + std::hash::Hash + Eq + ?Sized,
    {
        let mut g = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if g.len() > MAX_SCOPES {
            let window = self.window;
            g.retain(|_, (_, start)| now.duration_since(*start) < window);
        }
        let e = g.entry(scope.to_owned()).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
        e.0
    }

    /// Forgets a scope (after a success).
    pub fn clear<Q>(&self, scope: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope);
    }
}

/// Whether the `n`-th failure of a window is one an aggregated event records: the
/// 1st, 10th, 100th, … so a flood of any size is a handful of events.
pub fn is_milestone(n: u32) -> bool {
    matches!(
        n,
        1 | 10
            | 100
            | 1_000
            | 10_000
            | 100_000
            | 1_000_000
            | 10_000_000
            | 100_000_000
            | 1_000_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_grow_tenfold() {
        let hits: Vec<u32> = (1..=100_000).filter(|n| is_milestone(*n)).collect();
        assert_eq!(hits, vec![1, 10, 100, 1_000, 10_000, 100_000]);
    }

    #[test]
    fn a_window_counts_and_then_starts_over() {
        let w: FailureWindows = FailureWindows::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(w.fail("a", t0), 1);
        assert_eq!(w.fail("a", t0 + Duration::from_secs(59)), 2);
        assert!(w.blocked("a", 2, t0 + Duration::from_secs(59)).is_some());
        assert_eq!(w.fail("a", t0 + Duration::from_secs(61)), 1);
        w.clear("a");
        assert!(w.blocked("a", 1, t0).is_none());
    }
}
