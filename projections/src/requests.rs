//! Projection `requests`: the request log, metadata only (no prompts, no answers), one
//! row per `request.finished` event id, with the limit that refused it if one did. Token counts and cost are not copied here:
//! [`crate::read::request_log`] joins the usage ledger by request id at read time, which
//! is order-independent (usage may be recorded before or after the request finishes).
//!
//! Retention is not applied inside the projection (it would need a clock): the relay
//! calls [`prune_request_log`] periodically with `now − LOG_RETENTION_MONTHS`. A
//! duplicate of an event already pruned would be inserted again; duplicates arrive
//! within minutes of the original, so this does not happen with sane retention.

use crate::runner::Projection;
use crate::sql::{self, i, opt, wire_name, OnConflict};
use crate::Dialect as _;
use crate::Error;
use ingest::StoredEvent;
use schema::Event;
use sqlx::{AnyConnection, AnyPool};

/// The request-log projection.
pub struct RequestsProjection;

impl RequestsProjection {
    /// The projection's name.
    pub const NAME: &'static str = "requests";
}

pub(crate) const REQUEST_COLUMNS: &str = "event_id, position, occurred_at_ms, day, request_id, \
    tenant, api_key, account, model, endpoint, status, outcome, stream, latency_us, ttfb_us, \
    upstream_us, attempts, routing_reason, error_type, upstream_request_id, rejected_by";

/// Deletes request-log rows that occurred before `older_than_ms` (epoch ms); returns
/// how many were deleted. Not part of the projection: the caller supplies the clock.
pub async fn prune_request_log(db: &AnyPool, older_than_ms: i64) -> Result<u64, Error> {
    let done = sqlx::query(&db.sql("DELETE FROM request_log WHERE occurred_at_ms < $1"))
        .bind(older_than_ms)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

#[async_trait::async_trait]
impl Projection for RequestsProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> Result<(), Error> {
        let rows = sql::once_per_event(events, |e| match &e.envelope.event {
            Event::RequestFinished(r) => Some((&e.envelope, r)),
            Event::UsageRecorded(_)
            | Event::AccountHealthChanged(_)
            | Event::AdminAction(_)
            | Event::AuthFailed(_) => None,
        });
        sql::insert_rows(
            tx,
            "request_log",
            REQUEST_COLUMNS,
            OnConflict::Ignore("event_id"),
            &rows,
            |q, (e, (env, r))| {
                let account = r
                    .routing
                    .as_ref()
                    .map(|d| d.account.to_string())
                    .unwrap_or_else(|| opt(env.account.as_ref()));
                q.bind(env.id.to_string())
                    .bind(i(e.position))
                    .bind(env.occurred_at.timestamp_millis())
                    .bind(sql::day_of(env.occurred_at))
                    .bind(env.request_id.clone().unwrap_or_default())
                    .bind(opt(env.tenant.as_ref()))
                    .bind(opt(env.api_key.as_ref()))
                    .bind(account)
                    .bind(r.model.clone().unwrap_or_default())
                    .bind(r.endpoint.clone())
                    .bind(i64::from(r.status))
                    .bind(wire_name(&r.outcome))
                    .bind(i64::from(r.stream))
                    .bind(i(r.latency_us))
                    .bind(r.ttfb_us.map(i))
                    .bind(r.upstream_us.map(i))
                    .bind(i64::from(r.attempts))
                    .bind(
                        r.routing
                            .as_ref()
                            .map(|d| wire_name(&d.reason))
                            .unwrap_or_default(),
                    )
                    .bind(r.error_type.clone().unwrap_or_default())
                    .bind(r.upstream_request_id.clone().unwrap_or_default())
                    .bind(r.rejected_by.clone().unwrap_or_default())
            },
        )
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut AnyConnection) -> Result<(), Error> {
        sql::delete_all(tx, &["request_log"]).await
    }
}
