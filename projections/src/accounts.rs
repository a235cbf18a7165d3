//! Projection `accounts`: the status of every upstream account — health state, reason,
//! cooldown end, last error (from the evidence of health changes), the last unified
//! rate-limit headers seen, and counters.
//!
//! Inputs: `account.health_changed` (state, error, unified headers), `usage.recorded`
//! (usage events and tokens of the account that served the attempt) and
//! `request.finished` (requests whose final attempt was routed to the account; errors =
//! those that ended `upstream_error` or `relay_error`). Events are applied in log order;
//! every counted event id is remembered in `account_status_events`, so a duplicate at
//! a new position neither counts twice nor rolls the state back.

use crate::runner::Projection;
use crate::sql::{self, i, wire_name, OnConflict};
use crate::Dialect as _;
use crate::Error;
use ingest::StoredEvent;
use schema::{Event, Outcome};
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, HashSet};

/// The account-status projection.
pub struct AccountsProjection;

impl AccountsProjection {
    /// The projection's name.
    pub const NAME: &'static str = "accounts";
}

#[derive(Debug, Clone, Default)]
pub(crate) struct StatusRow {
    pub state: String,
    pub reason: String,
    pub until_ms: Option<i64>,
    pub changed_at_ms: Option<i64>,
    pub last_error_at_ms: Option<i64>,
    pub last_error_status: Option<i64>,
    pub last_error_type: Option<String>,
    pub last_error_message: Option<String>,
    pub unified: String,
    pub unified_at_ms: Option<i64>,
    pub requests: i64,
    pub errors: i64,
    pub usage_events: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub health_changes: i64,
    pub last_event_at_ms: i64,
}

pub(crate) const STATUS_COLUMNS: &str = "account, state, reason, until_ms, changed_at_ms, \
    last_error_at_ms, last_error_status, last_error_type, last_error_message, unified, \
    unified_at_ms, requests, errors, usage_events, input_tokens, output_tokens, \
    cache_read_tokens, cache_write_tokens, health_changes, last_event_at_ms";

impl StatusRow {
    fn fresh() -> Self {
        StatusRow {
            state: "healthy".into(),
            unified: "{}".into(),
            ..Default::default()
        }
    }

    pub(crate) fn from_row(r: &sqlx::any::AnyRow) -> Result<(String, Self), sqlx::Error> {
        Ok((
            r.try_get("account")?,
            StatusRow {
                state: r.try_get("state")?,
                reason: r.try_get("reason")?,
                until_ms: r.try_get("until_ms")?,
                changed_at_ms: r.try_get("changed_at_ms")?,
                last_error_at_ms: r.try_get("last_error_at_ms")?,
                last_error_status: r.try_get("last_error_status")?,
                last_error_type: r.try_get("last_error_type")?,
                last_error_message: r.try_get("last_error_message")?,
                unified: crate::long_text(r, "unified")?.unwrap_or_default(),
                unified_at_ms: r.try_get("unified_at_ms")?,
                requests: r.try_get("requests")?,
                errors: r.try_get("errors")?,
                usage_events: r.try_get("usage_events")?,
                input_tokens: r.try_get("input_tokens")?,
                output_tokens: r.try_get("output_tokens")?,
                cache_read_tokens: r.try_get("cache_read_tokens")?,
                cache_write_tokens: r.try_get("cache_write_tokens")?,
                health_changes: r.try_get("health_changes")?,
                last_event_at_ms: r.try_get("last_event_at_ms")?,
            },
        ))
    }
}

/// The account an event concerns, if any.
fn account_of(e: &StoredEvent) -> Option<String> {
    let env = &e.envelope;
    match &env.event {
        Event::UsageRecorded(u) => Some(u.account.to_string()),
        Event::AccountHealthChanged(h) => Some(h.account.to_string()),
        Event::RequestFinished(r) => r
            .routing
            .as_ref()
            .map(|d| d.account.to_string())
            .or_else(|| env.account.as_ref().map(|a| a.to_string())),
        Event::AdminAction(_) | Event::AuthFailed(_) => None,
    }
}

fn fold(row: &mut StatusRow, e: &StoredEvent) {
    let env = &e.envelope;
    let at = env.occurred_at.timestamp_millis();
    row.last_event_at_ms = row.last_event_at_ms.max(at);
    match &env.event {
        Event::AccountHealthChanged(h) => {
            row.state = wire_name(&h.to);
            row.reason = wire_name(&h.reason);
            row.until_ms = h.until.map(|u| u.timestamp_millis());
            row.changed_at_ms = Some(at);
            row.health_changes += 1;
            let ev = &h.evidence;
            let is_error = ev.status.is_some_and(|s| s >= 400)
                || ev.error_type.is_some()
                || ev.message.is_some();
            if is_error {
                row.last_error_at_ms = Some(at);
                row.last_error_status = ev.status.map(i64::from);
                row.last_error_type = ev.error_type.clone();
                row.last_error_message = ev.message.clone();
            }
            if !ev.unified.is_empty() {
                row.unified = serde_json::to_string(&ev.unified).unwrap_or_else(|_| "{}".into());
                row.unified_at_ms = Some(at);
            }
        }
        Event::UsageRecorded(u) => {
            row.usage_events += 1;
            row.input_tokens += i(u.input_tokens);
            row.output_tokens += i(u.output_tokens);
            row.cache_read_tokens += i(u.cache_read_input_tokens);
            row.cache_write_tokens +=
                i(u.cache_creation_5m_input_tokens) + i(u.cache_creation_1h_input_tokens);
        }
        Event::RequestFinished(r) => {
            row.requests += 1;
            match r.outcome {
                Outcome::UpstreamError | Outcome::RelayError => row.errors += 1,
                Outcome::Completed | Outcome::ClientDisconnected | Outcome::Rejected => {}
            }
        }
        Event::AdminAction(_) | Event::AuthFailed(_) => {}
    }
}

/// Which of `ids` are stored for the first time, storing them. Portable: the ids
/// already stored are read first (the projector holds the lease, so nothing else
/// writes this table meanwhile), then the rest inserted; no `RETURNING`, which MySQL
/// lacks.
async fn first_seen(tx: &mut AnyConnection, ids: &[String]) -> Result<HashSet<String>, Error> {
    let mut fresh: Vec<&String> = Vec::with_capacity(ids.len());
    let mut unique = HashSet::with_capacity(ids.len());
    for id in ids {
        if unique.insert(id.as_str()) {
            fresh.push(id);
        }
    }
    let params = sql::Params::of(tx);
    let mut stored = HashSet::new();
    for chunk in fresh.chunks(params.rows_per_statement(1)) {
        let text = format!(
            "SELECT event_id FROM account_status_events WHERE event_id IN ({})",
            params.list(chunk.len())
        );
        let text = tx.sql(&text);
        let mut q = sqlx::query_as::<_, (String,)>(&text);
        for id in chunk {
            q = q.bind(id.as_str());
        }
        stored.extend(q.fetch_all(&mut *tx).await?.into_iter().map(|(id,)| id));
    }
    fresh.retain(|id| !stored.contains(id.as_str()));
    sql::insert_rows(
        tx,
        "account_status_events",
        "event_id",
        OnConflict::Ignore("event_id"),
        &fresh,
        |q, id| q.bind(id.as_str()),
    )
    .await?;
    Ok(fresh.into_iter().cloned().collect())
}

#[async_trait::async_trait]
impl Projection for AccountsProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> Result<(), Error> {
        let mut relevant = Vec::new();
        let mut ids = Vec::new();
        let mut batch_ids = HashSet::new();
        for e in events {
            if let Some(account) = account_of(e) {
                let id = e.envelope.id.to_string();
                if batch_ids.insert(id.clone()) {
                    ids.push(id.clone());
                    relevant.push((id, account, e));
                }
            }
        }
        if relevant.is_empty() {
            return Ok(());
        }
        let new_ids = first_seen(tx, &ids).await?;
        let accounts: Vec<String> = relevant
            .iter()
            .filter(|(id, _, _)| new_ids.contains(id))
            .map(|(_, a, _)| a.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if accounts.is_empty() {
            return Ok(());
        }
        let mut rows: BTreeMap<String, StatusRow> = BTreeMap::new();
        let params = sql::Params::of(tx);
        for chunk in accounts.chunks(params.rows_per_statement(1)) {
            let text = format!(
                "SELECT {STATUS_COLUMNS} FROM account_status WHERE account IN ({})",
                params.list(chunk.len())
            );
            let text = tx.sql(&text);
            let mut q = sqlx::query(&text);
            for a in chunk {
                q = q.bind(a.clone());
            }
            for r in q.fetch_all(&mut *tx).await? {
                let (account, row) = StatusRow::from_row(&r)?;
                rows.insert(account, row);
            }
        }
        for (id, account, e) in &relevant {
            if new_ids.contains(id) {
                fold(
                    rows.entry(account.clone()).or_insert_with(StatusRow::fresh),
                    e,
                );
            }
        }
        let entries: Vec<_> = rows.iter().collect();
        sql::insert_rows(
            tx,
            "account_status",
            STATUS_COLUMNS,
            OnConflict::Replace("account"),
            &entries,
            |q, (account, r)| {
                q.bind(account.as_str())
                    .bind(r.state.as_str())
                    .bind(r.reason.as_str())
                    .bind(r.until_ms)
                    .bind(r.changed_at_ms)
                    .bind(r.last_error_at_ms)
                    .bind(r.last_error_status)
                    .bind(r.last_error_type.as_deref())
                    .bind(r.last_error_message.as_deref())
                    .bind(r.unified.as_str())
                    .bind(r.unified_at_ms)
                    .bind(r.requests)
                    .bind(r.errors)
                    .bind(r.usage_events)
                    .bind(r.input_tokens)
                    .bind(r.output_tokens)
                    .bind(r.cache_read_tokens)
                    .bind(r.cache_write_tokens)
                    .bind(r.health_changes)
                    .bind(r.last_event_at_ms)
            },
        )
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut AnyConnection) -> Result<(), Error> {
        sql::delete_all(tx, &["account_status", "account_status_events"]).await
    }
}
