//! Projection `notifications`: the notification outbox. Each event worth telling
//! someone about becomes one row keyed by its event id (a duplicate is ignored, nothing
//! is ever updated); the relay's notifier delivers from it.
//!
//! What becomes a notice ([`notice_of`], pure and deterministic):
//! - `account.health_changed` into `rate_limited`, `banned` or `unauthorized`, and back
//!   to `healthy` from one of those (`account.recovered`); short cooldowns (overloaded,
//!   degraded) are not notices;
//! - `admin.action` `account.token_refresh_failed` (an OAuth refresh failed);
//! - `admin.action` `budget.threshold_crossed` (a key's or a tenant's budget passed 50,
//!   80 or 100 %);
//! - `admin.action` `ops.spool_growing`, `ops.quarantine_grew`,
//!   `ops.projector_lagging` and `ops.recovered` (a relay's publisher or the
//!   projectors are in trouble, or fine again).
//!
//! Account and ops notices are for the operator only; budget notices and daily digests
//! also reach the tenant they are about. The outbox holds no delivery state: what was
//! sent to whom lives in the relay's `notification_deliveries`, which a rebuild of
//! this projection does not touch, so a replay re-creates identical rows and sends
//! nothing again.
//!
//! Rows the relay writes itself: an ops alert cannot wait for the log (the log may be
//! what is failing), so the relay also writes its row directly, built by the same
//! [`outbox_row`] from the same envelope (the event's id is deterministic), at position
//! 0; when the event arrives here its insert is ignored. The daily digest
//! (`digest.daily`) is not an event: the relay writes it directly, keyed by tenant and
//! day. Rows at position 0 are the relay's, not this projection's, so [`reset`] keeps
//! them.
//!
//! [`reset`]: crate::runner::Projection::reset

use crate::runner::Projection;
use crate::sql::{self, i, opt, wire_name, OnConflict};
use crate::Dialect as _;
use crate::Error;
use ingest::StoredEvent;
use schema::{AdminVerb, Envelope, Event, HealthState};
use serde::Serialize;
use sqlx::AnyConnection;
use std::collections::BTreeMap;

/// The outbox projection.
pub struct NotificationsProjection;

impl NotificationsProjection {
    /// The projection's name.
    pub const NAME: &'static str = "notifications";
}

/// Who may receive a kind of notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Operator targets only.
    Operator,
    /// Operator targets, and targets of the tenant the notice is about.
    Tenant,
}

impl Audience {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Operator => "operator",
            Audience::Tenant => "tenant",
        }
    }
}

/// Every kind of notice, with its audience.
pub const KINDS: [(&str, Audience); 11] = [
    ("account.rate_limited", Audience::Operator),
    ("account.banned", Audience::Operator),
    ("account.unauthorized", Audience::Operator),
    ("account.recovered", Audience::Operator),
    ("account.token_refresh_failed", Audience::Operator),
    ("budget.threshold_crossed", Audience::Tenant),
    ("ops.spool_growing", Audience::Operator),
    ("ops.quarantine_grew", Audience::Operator),
    ("ops.projector_lagging", Audience::Operator),
    ("ops.recovered", Audience::Operator),
    (DIGEST_KIND, Audience::Tenant),
];

/// The kind of the daily usage digest the relay writes per tenant and day.
pub const DIGEST_KIND: &str = "digest.daily";

/// The audience of a kind (`None` for an unknown kind).
pub fn audience_of(kind: &str) -> Option<Audience> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a)
}

/// One notice, as the outbox stores it (envelope fields aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// One of [`KINDS`].
    pub kind: &'static str,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// One line.
    pub title: String,
    /// A sentence or two, no secrets.
    pub message: String,
    /// Kind-specific facts (reason, until, percent, …), ordered keys.
    pub details: BTreeMap<&'static str, serde_json::Value>,
}

/// The notice an event gives, if any. Pure: the same envelope gives the same notice.
pub fn notice_of(env: &Envelope) -> Option<Notice> {
    match &env.event {
        Event::AccountHealthChanged(h) => {
            let (kind, severity, verb) = match (h.from, h.to) {
                (_, HealthState::RateLimited) => {
                    ("account.rate_limited", "warning", "is rate-limited")
                }
                (_, HealthState::Banned) => ("account.banned", "critical", "is banned"),
                (_, HealthState::Unauthorized) => {
                    ("account.unauthorized", "critical", "is unauthorized")
                }
                (
                    HealthState::RateLimited | HealthState::Banned | HealthState::Unauthorized,
                    HealthState::Healthy,
                ) => ("account.recovered", "info", "recovered"),
                _ => return None,
            };
            let reason = wire_name(&h.reason);
            let mut message = format!("Account {} {verb} ({reason}", h.account);
            if let Some(s) = h.evidence.status {
                message.push_str(&format!(", upstream status {s}"));
            }
            message.push(')');
            if let Some(until) = h.until {
                message.push_str(&format!("; back at {}", until.to_rfc3339()));
            }
            message.push('.');
            let mut details = BTreeMap::new();
            details.insert("account", h.account.to_string().into());
            details.insert("from", wire_name(&h.from).into());
            details.insert("to", wire_name(&h.to).into());
            details.insert("reason", reason.into());
            details.insert(
                "until",
                h.until
                    .map(|u| u.to_rfc3339().into())
                    .unwrap_or(serde_json::Value::Null),
            );
            if let Some(s) = h.evidence.status {
                details.insert("upstream_status", s.into());
            }
            if let Some(t) = &h.evidence.error_type {
                details.insert("error_type", t.clone().into());
            }
            Some(Notice {
                kind,
                severity,
                title: format!("Account {} {verb}", h.account),
                message,
                details,
            })
        }
        Event::AdminAction(a) => match a.verb()? {
            AdminVerb::AccountTokenRefreshFailed => {
                let mut details = BTreeMap::new();
                details.insert("target", a.target.clone().into());
                if let Some(acc) = &env.account {
                    details.insert("account", acc.to_string().into());
                }
                let who = env
                    .account
                    .as_ref()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| a.target.clone());
                Some(Notice {
                    kind: "account.token_refresh_failed",
                    severity: "critical",
                    title: format!("OAuth token refresh failed for {who}"),
                    message: a.summary.clone(),
                    details,
                })
            }
            AdminVerb::BudgetThreshold => {
                let percent = percent_in(&a.summary);
                let mut details = BTreeMap::new();
                details.insert("target", a.target.clone().into());
                details.insert(
                    "percent",
                    percent
                        .map(serde_json::Value::from)
                        .unwrap_or(serde_json::Value::Null),
                );
                let severity = match percent {
                    Some(p) if p >= 100 => "critical",
                    Some(p) if p >= 80 => "warning",
                    _ => "info",
                };
                let title = match percent {
                    Some(p) => format!("Budget of {} passed {p}%", a.target),
                    None => format!("Budget threshold crossed for {}", a.target),
                };
                Some(Notice {
                    kind: "budget.threshold_crossed",
                    severity,
                    title,
                    message: a.summary.clone(),
                    details,
                })
            }
            verb @ (AdminVerb::OpsSpoolGrowing
            | AdminVerb::OpsQuarantineGrew
            | AdminVerb::OpsProjectorLagging
            | AdminVerb::OpsRecovered) => {
                let (severity, title) = match verb {
                    AdminVerb::OpsSpoolGrowing => {
                        ("warning", format!("Event spool growing ({})", a.target))
                    }
                    AdminVerb::OpsQuarantineGrew => {
                        ("critical", format!("Events quarantined ({})", a.target))
                    }
                    AdminVerb::OpsProjectorLagging => {
                        ("warning", format!("Projectors lagging ({})", a.target))
                    }
                    _ => ("info", format!("Recovered ({})", a.target)),
                };
                let mut details = BTreeMap::new();
                details.insert("target", a.target.clone().into());
                Some(Notice {
                    kind: verb.as_str(),
                    severity,
                    title,
                    message: a.summary.clone(),
                    details,
                })
            }
            _ => None,
        },
        Event::RequestFinished(_) | Event::UsageRecorded(_) | Event::AuthFailed(_) => None,
    }
}

/// The percentage in a `budget.threshold_crossed` summary (`… passed 80%: …`).
fn percent_in(summary: &str) -> Option<u32> {
    let rest = summary.split(" passed ").nth(1)?;
    rest.split('%').next()?.trim().parse().ok()
}

pub(crate) const OUTBOX_COLUMNS: &str = "event_id, position, occurred_at_ms, kind, severity, \
    audience, tenant, api_key, account, title, message, details";

/// One outbox row, log position aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The event id (or, for a digest, the id the relay derived).
    pub event_id: String,
    /// When it happened (ms since the epoch).
    pub occurred_at_ms: i64,
    /// One of [`KINDS`].
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// [`Audience::as_str`].
    pub audience: String,
    /// The tenant it is about, or empty.
    pub tenant: String,
    /// The key it is about, or empty.
    pub api_key: String,
    /// The account it is about, or empty.
    pub account: String,
    /// One line.
    pub title: String,
    /// A sentence or two.
    pub message: String,
    /// Kind-specific facts, a JSON object.
    pub details: String,
}

impl OutboxRow {
    /// A row from its parts; the audience follows from the kind.
    pub fn new(id: String, occurred_at_ms: i64, n: Notice, tenant: String) -> Self {
        Self {
            event_id: id,
            occurred_at_ms,
            kind: n.kind.to_owned(),
            severity: n.severity.to_owned(),
            audience: audience_of(n.kind)
                .unwrap_or(Audience::Operator)
                .as_str()
                .to_owned(),
            tenant,
            api_key: String::new(),
            account: String::new(),
            title: n.title,
            message: n.message,
            details: serde_json::to_string(&n.details).unwrap_or_default(),
        }
    }
}

/// The row an event gives, if any. Pure: the projection and the relay (for the rows
/// it writes directly) build identical rows from the same envelope.
pub fn outbox_row(env: &Envelope) -> Option<OutboxRow> {
    let n = notice_of(env)?;
    let account = env
        .account
        .as_ref()
        .map(|a| a.to_string())
        .or_else(|| {
            n.details
                .get("account")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut row = OutboxRow::new(
        env.id.to_string(),
        env.occurred_at.timestamp_millis(),
        n,
        opt(env.tenant.as_ref()),
    );
    row.api_key = opt(env.api_key.as_ref());
    row.account = account;
    Some(row)
}

/// Writes a row the relay made itself (position 0; see the module docs). Returns
/// whether it was new.
pub async fn insert_direct(tx: &mut AnyConnection, row: &OutboxRow) -> Result<bool, Error> {
    let done = sqlx::query(&tx.sql(&format!(
        "INSERT INTO notification_outbox ({OUTBOX_COLUMNS}) \
         VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (event_id) DO NOTHING"
    )))
    .bind(row.event_id.clone())
    .bind(row.occurred_at_ms)
    .bind(row.kind.clone())
    .bind(row.severity.clone())
    .bind(row.audience.clone())
    .bind(row.tenant.clone())
    .bind(row.api_key.clone())
    .bind(row.account.clone())
    .bind(row.title.clone())
    .bind(row.message.clone())
    .bind(row.details.clone())
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

#[async_trait::async_trait]
impl Projection for NotificationsProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> Result<(), Error> {
        let rows = sql::once_per_event(events, |e| outbox_row(&e.envelope));
        sql::insert_rows(
            tx,
            "notification_outbox",
            OUTBOX_COLUMNS,
            OnConflict::Ignore("event_id"),
            &rows,
            |q, (e, r)| {
                q.bind(r.event_id.as_str())
                    .bind(i(e.position))
                    .bind(r.occurred_at_ms)
                    .bind(r.kind.as_str())
                    .bind(r.severity.as_str())
                    .bind(r.audience.as_str())
                    .bind(r.tenant.as_str())
                    .bind(r.api_key.as_str())
                    .bind(r.account.as_str())
                    .bind(r.title.as_str())
                    .bind(r.message.as_str())
                    .bind(r.details.as_str())
            },
        )
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut AnyConnection) -> Result<(), Error> {
        // Rows at position 0 are the relay's own (module docs): a rebuild keeps them.
        sqlx::query(&tx.sql("DELETE FROM notification_outbox WHERE position > 0"))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use schema::{
        AccountHealthChanged, AccountId, AdminAction, HealthEvidence, HealthReason, TenantId,
    };
    use uuid::Uuid;

    fn health(from: HealthState, to: HealthState, reason: HealthReason) -> Envelope {
        let t = Utc.with_ymd_and_hms(2026, 11, 3, 12, 0, 0).unwrap();
        Envelope::new(
            Uuid::nil(),
            t,
            Event::AccountHealthChanged(AccountHealthChanged {
                account: AccountId::parse("acc_1").unwrap(),
                from,
                to,
                reason,
                until: (to != HealthState::Healthy).then(|| t + chrono::Duration::seconds(90)),
                evidence: HealthEvidence {
                    status: Some(429),
                    ..HealthEvidence::default()
                },
            }),
        )
    }

    fn admin(verb: AdminVerb, target: &str, summary: &str) -> Envelope {
        Envelope::new(
            Uuid::nil(),
            Utc.with_ymd_and_hms(2026, 11, 3, 12, 0, 0).unwrap(),
            Event::AdminAction(AdminAction::new("relay", verb, target, summary)),
        )
    }

    #[test]
    fn health_changes_that_matter_become_notices() {
        use HealthReason as R;
        use HealthState as S;
        let cases = [
            (
                S::Healthy,
                S::RateLimited,
                R::RateLimited,
                Some("account.rate_limited"),
            ),
            (S::Healthy, S::Banned, R::Forbidden, Some("account.banned")),
            (
                S::Healthy,
                S::Unauthorized,
                R::Unauthorized,
                Some("account.unauthorized"),
            ),
            (
                S::RateLimited,
                S::Healthy,
                R::CooldownExpired,
                Some("account.recovered"),
            ),
            (
                S::Banned,
                S::Healthy,
                R::ManualReset,
                Some("account.recovered"),
            ),
            (
                S::Unauthorized,
                S::Healthy,
                R::Succeeded,
                Some("account.recovered"),
            ),
            (S::Healthy, S::Overloaded, R::Overloaded, None),
            (S::Healthy, S::Degraded, R::ServerError, None),
            (S::Overloaded, S::Healthy, R::CooldownExpired, None),
            (S::Degraded, S::Healthy, R::Succeeded, None),
        ];
        for (from, to, reason, want) in cases {
            let got = notice_of(&health(from, to, reason)).map(|n| n.kind);
            assert_eq!(got, want, "{from:?} → {to:?}");
        }
        let n = notice_of(&health(S::Healthy, S::RateLimited, R::RateLimited)).unwrap();
        assert_eq!(
            n.message,
            "Account acc_1 is rate-limited (rate_limited, upstream status 429); \
             back at 2026-11-03T12:01:30+00:00."
        );
        assert_eq!(n.details["until"], "2026-11-03T12:01:30+00:00");
        assert_eq!(n.details["reason"], "rate_limited");
    }

    #[test]
    fn refresh_failures_and_budget_thresholds_become_notices() {
        let n = notice_of(&admin(
            AdminVerb::AccountTokenRefreshFailed,
            "account:acc_1",
            "token refresh for acc_1 failed: invalid_grant",
        ))
        .unwrap();
        assert_eq!(n.kind, "account.token_refresh_failed");
        assert_eq!(n.severity, "critical");
        for (summary, percent, severity) in [
            (
                "monthly_budget_usd of key:key_a passed 50%: $5 of $10",
                Some(50),
                "info",
            ),
            (
                "monthly_budget_usd of tenant:t passed 80%: $8 of $10",
                Some(80),
                "warning",
            ),
            (
                "daily_budget_usd of key:key_a passed 100%: $10 of $10",
                Some(100),
                "critical",
            ),
            ("something else", None, "info"),
        ] {
            let n = notice_of(&admin(AdminVerb::BudgetThreshold, "key:key_a", summary)).unwrap();
            assert_eq!(n.kind, "budget.threshold_crossed");
            assert_eq!(
                n.details["percent"],
                serde_json::json!(percent),
                "{summary}"
            );
            assert_eq!(n.severity, severity, "{summary}");
        }
        let mut other = admin(AdminVerb::KeyCreate, "key:key_a", "created");
        other.tenant = Some(TenantId::parse("t").unwrap());
        assert_eq!(notice_of(&other), None);
    }

    #[test]
    fn ops_actions_become_operator_notices_with_the_events_id() {
        for (verb, severity) in [
            (AdminVerb::OpsSpoolGrowing, "warning"),
            (AdminVerb::OpsQuarantineGrew, "critical"),
            (AdminVerb::OpsProjectorLagging, "warning"),
            (AdminVerb::OpsRecovered, "info"),
        ] {
            let mut env = admin(verb, "spool:relay-1", "the spool holds 1500 events");
            env.id = Uuid::from_u128(7);
            let row = outbox_row(&env).unwrap();
            assert_eq!(row.kind, verb.as_str());
            assert_eq!(row.severity, severity, "{verb:?}");
            assert_eq!(row.audience, "operator");
            assert_eq!(row.event_id, Uuid::from_u128(7).to_string());
            assert_eq!(row.message, "the spool holds 1500 events");
            assert_eq!(row.details, r#"{"target":"spool:relay-1"}"#);
            assert_eq!(outbox_row(&env), Some(row), "pure");
        }
    }

    #[test]
    fn every_kind_has_an_audience() {
        assert_eq!(audience_of("ops.spool_growing"), Some(Audience::Operator));
        assert_eq!(audience_of(DIGEST_KIND), Some(Audience::Tenant));
        assert_eq!(audience_of("account.banned"), Some(Audience::Operator));
        assert_eq!(
            audience_of("budget.threshold_crossed"),
            Some(Audience::Tenant)
        );
        assert_eq!(audience_of("nope"), None);
    }
}
