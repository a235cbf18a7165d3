//! Account health: the state machine fed by upstream signals.
//!
//! Each transition yields an [`AccountHealthChanged`] for the event log. Cooldown
//! states (rate-limited, overloaded, degraded) end by themselves when their time has
//! passed (checked lazily); unauthorized ends on a success or a new credential; banned
//! only by a manual reset (an event from an administrator).

use chrono::{DateTime, TimeDelta, Utc};
use schema::{AccountHealthChanged, AccountId, HealthEvidence, HealthReason, HealthState};
use std::time::Duration;

/// Cooldown lengths, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cooldowns {
    /// 429 without a usable reset time.
    pub rate_limit_default: Duration,
    /// Upper bound for any 429 cooldown.
    pub rate_limit_max: Duration,
    /// 529 / overloaded.
    pub overload: Duration,
    /// 5xx and connection errors.
    pub server_error: Duration,
    /// How many 5xx / connection failures (from different requests) within
    /// `strike_window` it takes to cool an account down: one request that upstream
    /// fails must not take an account, let alone the pool, out of service.
    pub strikes: u32,
    /// The window those failures must fall in.
    pub strike_window: Duration,
}

impl Cooldowns {
    /// Reads them from the `serve` settings.
    pub fn from_config(c: &crate::config::ServeConfig) -> Self {
        Self {
            rate_limit_default: Duration::from_secs(c.rate_limit_default_cooldown_secs),
            rate_limit_max: Duration::from_secs(c.rate_limit_max_cooldown_secs),
            overload: Duration::from_secs(c.overload_cooldown_secs),
            server_error: Duration::from_secs(c.server_error_cooldown_secs),
            strikes: c.server_error_strikes.max(1),
            strike_window: Duration::from_secs(c.server_error_window_secs.max(1)),
        }
    }
}

/// An upstream observation about an account.
#[derive(Debug, Clone)]
pub enum Signal {
    /// A successful (2xx) response.
    Success,
    /// An HTTP error response.
    Status {
        /// The status.
        status: u16,
        /// Upstream evidence (status, retry-after, error, unified headers).
        evidence: HealthEvidence,
    },
    /// No response: connect failure, reset, or timeout before the head.
    Connection {
        /// A short description (never a credential).
        message: String,
    },
}

/// One account's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Current state.
    pub state: HealthState,
    /// End of the cooldown for cooldown states.
    pub until: Option<DateTime<Utc>>,
    /// 5xx / connection failures counted towards a cooldown, and when the count began.
    pub strikes: u32,
    /// Start of the strike window.
    pub strike_start: Option<DateTime<Utc>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: HealthState::Healthy,
            until: None,
            strikes: 0,
            strike_start: None,
        }
    }
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX / 2)
}

/// Whether the state ends by itself when `until` passes.
fn is_cooldown(s: HealthState) -> bool {
    matches!(
        s,
        HealthState::RateLimited | HealthState::Overloaded | HealthState::Degraded
    )
}

impl Health {
    /// Whether the account may be scheduled at `now` (an expired cooldown counts as
    /// healthy; [`Health::expire`] records the transition).
    pub fn available(&self, now: DateTime<Utc>) -> bool {
        match self.state {
            HealthState::Healthy => true,
            s if is_cooldown(s) => self.until.is_none_or(|u| u <= now),
            _ => false,
        }
    }

    /// Ends an expired cooldown, returning the transition.
    pub fn expire(
        &mut self,
        account: &AccountId,
        now: DateTime<Utc>,
    ) -> Option<AccountHealthChanged> {
        if is_cooldown(self.state) && self.until.is_none_or(|u| u <= now) {
            return self.set(
                account,
                HealthState::Healthy,
                None,
                HealthReason::CooldownExpired,
                HealthEvidence::default(),
            );
        }
        None
    }

    /// Applies an upstream signal, returning the transition when the state changed.
    pub fn observe(
        &mut self,
        account: &AccountId,
        signal: Signal,
        now: DateTime<Utc>,
        cooldowns: &Cooldowns,
    ) -> Option<AccountHealthChanged> {
        let weak = match &signal {
            Signal::Connection { .. } => true,
            Signal::Status { status, .. } => (500..=599).contains(status) && *status != 529,
            Signal::Success => false,
        };
        if weak && self.state == HealthState::Healthy {
            // Evidence before blame: count, and cool down only at the k-th failure
            // within the window.
            let fresh = self.strike_start.is_some_and(|t| {
                now.signed_duration_since(t).to_std().unwrap_or_default() < cooldowns.strike_window
            });
            if fresh {
                self.strikes += 1;
            } else {
                self.strikes = 1;
                self.strike_start = Some(now);
            }
            if self.strikes < cooldowns.strikes {
                return None;
            }
        }
        let (to, reason, until, evidence) = match signal {
            Signal::Success => {
                self.strikes = 0;
                self.strike_start = None;
                if self.state == HealthState::Banned {
                    // Only an administrator lifts a ban.
                    return None;
                }
                (
                    HealthState::Healthy,
                    HealthReason::Succeeded,
                    None,
                    HealthEvidence::default(),
                )
            }
            Signal::Connection { message } => {
                let evidence = HealthEvidence {
                    message: Some(message),
                    ..HealthEvidence::default()
                };
                (
                    HealthState::Degraded,
                    HealthReason::ConnectionError,
                    Some(after(now, cooldowns.server_error)),
                    evidence,
                )
            }
            Signal::Status { status, evidence } => {
                let (to, reason, until) = classify(status, &evidence, now, cooldowns)?;
                (to, reason, until, evidence)
            }
        };
        // Credential and organisation problems outrank passing cooldowns: a 429 from a
        // request that was already in flight must not hide a ban.
        let sticky = matches!(self.state, HealthState::Banned | HealthState::Unauthorized);
        if sticky && is_cooldown(to) {
            return None;
        }
        if to == self.state {
            // Same state: keep the later end, without a new event.
            if let (Some(old), Some(new)) = (self.until, until) {
                self.until = Some(old.max(new));
            }
            return None;
        }
        self.set(account, to, until, reason, evidence)
    }

    /// Adopts a transition another relay (or an administrator) recorded. Expired
    /// cooldowns are adopted as healthy so old events do not resurrect them.
    pub fn apply_remote(&mut self, ev: &AccountHealthChanged, now: DateTime<Utc>) {
        if is_cooldown(ev.to) && ev.until.is_some_and(|u| u <= now) {
            *self = Health::default();
            return;
        }
        self.state = ev.to;
        self.until = if is_cooldown(ev.to) { ev.until } else { None };
    }

    /// Forces a state (manual reset, new credential).
    pub fn reset(
        &mut self,
        account: &AccountId,
        reason: HealthReason,
    ) -> Option<AccountHealthChanged> {
        self.set(
            account,
            HealthState::Healthy,
            None,
            reason,
            HealthEvidence::default(),
        )
    }

    fn set(
        &mut self,
        account: &AccountId,
        to: HealthState,
        until: Option<DateTime<Utc>>,
        reason: HealthReason,
        evidence: HealthEvidence,
    ) -> Option<AccountHealthChanged> {
        if to == self.state && until == self.until {
            return None;
        }
        let from = self.state;
        self.state = to;
        self.until = until;
        self.strikes = 0;
        self.strike_start = None;
        Some(AccountHealthChanged {
            account: account.clone(),
            from,
            to,
            reason,
            until,
            evidence,
        })
    }
}

/// Maps an upstream error status to a health state, or `None` when the status says
/// nothing about the account (e.g. 400 for a bad request).
pub fn classify(
    status: u16,
    evidence: &HealthEvidence,
    now: DateTime<Utc>,
    c: &Cooldowns,
) -> Option<(HealthState, HealthReason, Option<DateTime<Utc>>)> {
    match status {
        429 => {
            let max = after(now, c.rate_limit_max);
            let from_unified = evidence
                .unified
                .get("reset")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
                .filter(|t| *t > now);
            let from_retry = evidence
                .retry_after_s
                .map(|s| after(now, Duration::from_secs(s)));
            let until = from_unified
                .or(from_retry)
                .unwrap_or_else(|| after(now, c.rate_limit_default))
                .min(max);
            Some((
                HealthState::RateLimited,
                HealthReason::RateLimited,
                Some(until),
            ))
        }
        529 => Some((
            HealthState::Overloaded,
            HealthReason::Overloaded,
            Some(after(now, c.overload)),
        )),
        401 => Some((HealthState::Unauthorized, HealthReason::Unauthorized, None)),
        403 => {
            let msg = evidence
                .message
                .as_deref()
                .unwrap_or("")
                .to_ascii_lowercase();
            if msg.contains("oauth token has been revoked") {
                Some((HealthState::Unauthorized, HealthReason::Unauthorized, None))
            } else if msg.contains("disabled")
                || msg.contains("permission")
                || evidence.error_type.as_deref() == Some("permission_error")
            {
                Some((HealthState::Banned, HealthReason::Forbidden, None))
            } else {
                Some((
                    HealthState::Degraded,
                    HealthReason::Forbidden,
                    Some(after(now, c.server_error)),
                ))
            }
        }
        500..=599 => Some((
            HealthState::Degraded,
            HealthReason::ServerError,
            Some(after(now, c.server_error)),
        )),
        _ => None,
    }
}

/// Whether a status makes the relay try another account (before the first byte).
pub fn is_failover_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 429 | 500..=599)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cd() -> Cooldowns {
        Cooldowns {
            rate_limit_default: Duration::from_secs(60),
            rate_limit_max: Duration::from_secs(3600),
            overload: Duration::from_secs(30),
            server_error: Duration::from_secs(10),
            strikes: 1,
            strike_window: Duration::from_secs(30),
        }
    }

    fn acc() -> AccountId {
        AccountId::parse("acc_1").unwrap()
    }

    fn status(s: u16, ev: HealthEvidence) -> Signal {
        Signal::Status {
            status: s,
            evidence: ev,
        }
    }

    #[test]
    fn rate_limit_uses_unified_reset_clamped() {
        let now = Utc::now();
        let mut h = Health::default();
        let mut ev = HealthEvidence {
            retry_after_s: Some(5),
            ..Default::default()
        };
        ev.unified
            .insert("reset".into(), (now.timestamp() + 120).to_string());
        let t = h.observe(&acc(), status(429, ev), now, &cd()).unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (
                HealthState::Healthy,
                HealthState::RateLimited,
                HealthReason::RateLimited
            )
        );
        assert_eq!(t.until.unwrap().timestamp(), now.timestamp() + 120);
        assert_eq!(
            t.evidence.unified.get("reset").map(String::as_str),
            Some((now.timestamp() + 120).to_string().as_str())
        );
        assert!(!h.available(now));

        let mut h = Health::default();
        let mut ev = HealthEvidence::default();
        ev.unified
            .insert("reset".into(), (now.timestamp() + 999_999).to_string());
        let t = h.observe(&acc(), status(429, ev), now, &cd()).unwrap();
        assert_eq!(t.until.unwrap(), now + TimeDelta::seconds(3600), "clamped");

        let mut h = Health::default();
        let ev = HealthEvidence {
            retry_after_s: Some(7),
            ..Default::default()
        };
        let t = h.observe(&acc(), status(429, ev), now, &cd()).unwrap();
        assert_eq!(t.until.unwrap(), now + TimeDelta::seconds(7));
    }

    #[test]
    fn cooldown_expires_with_an_event() {
        let now = Utc::now();
        let mut h = Health::default();
        h.observe(&acc(), status(529, HealthEvidence::default()), now, &cd())
            .unwrap();
        assert_eq!(h.state, HealthState::Overloaded);
        assert!(h.expire(&acc(), now).is_none());
        let later = now + TimeDelta::seconds(31);
        assert!(h.available(later));
        let t = h.expire(&acc(), later).unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (
                HealthState::Overloaded,
                HealthState::Healthy,
                HealthReason::CooldownExpired
            )
        );
        assert!(h.expire(&acc(), later).is_none());
    }

    #[test]
    fn ban_is_sticky_until_manual_reset() {
        let now = Utc::now();
        let mut h = Health::default();
        let ev = HealthEvidence {
            error_type: Some("permission_error".into()),
            message: Some("This organization has been disabled.".into()),
            ..Default::default()
        };
        let t = h.observe(&acc(), status(403, ev), now, &cd()).unwrap();
        assert_eq!(
            (t.to, t.reason),
            (HealthState::Banned, HealthReason::Forbidden)
        );
        assert!(h.observe(&acc(), Signal::Success, now, &cd()).is_none());
        assert!(h
            .observe(&acc(), status(429, HealthEvidence::default()), now, &cd())
            .is_none());
        assert!(!h.available(now + TimeDelta::days(365)));
        let t = h.reset(&acc(), HealthReason::ManualReset).unwrap();
        assert_eq!(t.to, HealthState::Healthy);
    }

    #[test]
    fn unauthorized_clears_on_success_and_bad_request_is_ignored() {
        let now = Utc::now();
        let mut h = Health::default();
        assert!(h
            .observe(&acc(), status(400, HealthEvidence::default()), now, &cd())
            .is_none());
        h.observe(&acc(), status(401, HealthEvidence::default()), now, &cd())
            .unwrap();
        assert!(!h.available(now));
        let t = h.observe(&acc(), Signal::Success, now, &cd()).unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (
                HealthState::Unauthorized,
                HealthState::Healthy,
                HealthReason::Succeeded
            )
        );
        assert!(
            h.observe(&acc(), Signal::Success, now, &cd()).is_none(),
            "no event without a change"
        );
    }

    #[test]
    fn remote_events_are_adopted_and_old_cooldowns_ignored() {
        let now = Utc::now();
        let mut h = Health::default();
        let ev = AccountHealthChanged {
            account: acc(),
            from: HealthState::Healthy,
            to: HealthState::RateLimited,
            reason: HealthReason::RateLimited,
            until: Some(now + TimeDelta::seconds(30)),
            evidence: HealthEvidence::default(),
        };
        h.apply_remote(&ev, now);
        assert!(!h.available(now));
        let mut h2 = Health::default();
        h2.apply_remote(&ev, now + TimeDelta::seconds(31));
        assert_eq!(h2, Health::default());
    }

    #[test]
    fn server_errors_cool_an_account_down_only_on_repeated_evidence() {
        let c = Cooldowns {
            strikes: 3,
            strike_window: Duration::from_secs(60),
            ..cd()
        };
        let id = AccountId::parse("acc_1").unwrap();
        let t0 = Utc::now();
        let s500 = || Signal::Status {
            status: 500,
            evidence: HealthEvidence::default(),
        };
        let conn = || Signal::Connection {
            message: "reset".into(),
        };
        let at = |s: i64| t0 + TimeDelta::seconds(s);
        // (signal, seconds after t0, state after)
        let steps: Vec<(Signal, i64, HealthState)> = vec![
            (s500(), 0, HealthState::Healthy),
            (conn(), 10, HealthState::Healthy),
            // A success in between starts the count again.
            (Signal::Success, 11, HealthState::Healthy),
            (s500(), 12, HealthState::Healthy),
            (s500(), 13, HealthState::Healthy),
            // Outside the window: the count starts over.
            (s500(), 100, HealthState::Healthy),
            (s500(), 101, HealthState::Healthy),
            (conn(), 102, HealthState::Degraded),
        ];
        let mut h = Health::default();
        for (i, (sig, secs, want)) in steps.into_iter().enumerate() {
            h.observe(&id, sig, at(secs), &c);
            assert_eq!(h.state, want, "step {i}");
        }
        // Account signals keep their immediate effect.
        let mut h = Health::default();
        h.observe(
            &id,
            Signal::Status {
                status: 529,
                evidence: HealthEvidence::default(),
            },
            t0,
            &c,
        );
        assert_eq!(h.state, HealthState::Overloaded);
        let mut h = Health::default();
        h.observe(
            &id,
            Signal::Status {
                status: 429,
                evidence: HealthEvidence::default(),
            },
            t0,
            &c,
        );
        assert_eq!(h.state, HealthState::RateLimited);
    }
}
