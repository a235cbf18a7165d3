//! Projection `audit`: every `admin.action` and `auth.failed`, append-only, keyed by
//! event id (a duplicate is ignored, nothing is ever updated).
//!
//! Columns shared by both kinds: time, kind, request id, tenant, API key. Admin actions
//! fill `actor`, `action`, `target`, `summary`; auth failures fill `reason`,
//! `endpoint`, `key_prefix` (at most 12 characters, never the key) and `client_addr`.

use crate::runner::Projection;
use crate::sql::{self, i, opt, wire_name, OnConflict};
use crate::Error;
use ingest::StoredEvent;
use schema::Event;
use sqlx::AnyConnection;

/// The audit-log projection.
pub struct AuditProjection;

impl AuditProjection {
    /// The projection's name.
    pub const NAME: &'static str = "audit";
}

pub(crate) const AUDIT_COLUMNS: &str = "event_id, position, occurred_at_ms, day, kind, \
    request_id, tenant, api_key, actor, action, target, summary, reason, endpoint, \
    key_prefix, client_addr";

#[async_trait::async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> Result<(), Error> {
        // (event, [actor, action, target, summary, reason, endpoint, key_prefix, client_addr])
        let rows = sql::once_per_event(events, |e| match &e.envelope.event {
            Event::AdminAction(a) => Some([
                a.actor.clone(),
                a.action.clone(),
                a.target.clone(),
                a.summary.clone(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]),
            Event::AuthFailed(f) => Some([
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                wire_name(&f.reason),
                f.endpoint.clone(),
                f.key_prefix.clone().unwrap_or_default(),
                f.client_addr.clone().unwrap_or_default(),
            ]),
            Event::RequestFinished(_)
            | Event::UsageRecorded(_)
            | Event::AccountHealthChanged(_) => None,
        });
        sql::insert_rows(
            tx,
            "audit_log",
            AUDIT_COLUMNS,
            OnConflict::Ignore("event_id"),
            &rows,
            |q, (e, fields)| {
                let env = &e.envelope;
                let mut q = q
                    .bind(env.id.to_string())
                    .bind(i(e.position))
                    .bind(env.occurred_at.timestamp_millis())
                    .bind(sql::day_of(env.occurred_at))
                    .bind(env.event.type_name().to_owned())
                    .bind(env.request_id.clone().unwrap_or_default())
                    .bind(opt(env.tenant.as_ref()))
                    .bind(opt(env.api_key.as_ref()));
                for f in fields {
                    q = q.bind(f.as_str());
                }
                q
            },
        )
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut AnyConnection) -> Result<(), Error> {
        sql::delete_all(tx, &["audit_log"]).await
    }
}
