//! Projection `usage`: the usage ledger (one row per `usage.recorded` event id, priced)
//! and the usage totals per (UTC day, tenant, API key, account, model).
//!
//! Idempotence: the ledger's primary key is the event id and rows are inserted with
//! `ON CONFLICT DO NOTHING … RETURNING event_id`; only the rows actually inserted are
//! added to the totals. A duplicate event, even one stored at a new position after
//! JetStream's dedup window, therefore counts once.
//!
//! `requests` in the totals counts usage events, i.e. upstream attempts that reported
//! usage (a request that failed over has one per attempt that reached upstream).

use crate::pricing::PriceTable;
use crate::runner::Projection;
use crate::sql::{self, i, opt, wire_name, OnConflict};
use crate::Dialect as _;
use crate::{money, Error};
use ingest::StoredEvent;
use schema::Event;
use sqlx::AnyConnection;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The usage ledger and totals, priced with a fixed [`PriceTable`].
pub struct UsageProjection {
    prices: Arc<PriceTable>,
}

impl UsageProjection {
    /// The projection's name.
    pub const NAME: &'static str = "usage";

    /// Prices events with `prices` (pass the same table to every run and rebuild; after
    /// changing it, run [`crate::reprice`]).
    pub fn new(prices: Arc<PriceTable>) -> Self {
        Self { prices }
    }
}

/// A ledger row as written.
#[derive(Debug, Clone)]
pub(crate) struct LedgerRow {
    pub event_id: String,
    pub position: i64,
    pub occurred_at_ms: i64,
    pub day: String,
    pub tenant: String,
    pub api_key: String,
    pub account: String,
    pub model: String,
    pub request_id: String,
    pub attempt: i64,
    pub status: i64,
    pub stream: i64,
    pub tokens: [i64; 5],
    pub web_search: i64,
    pub web_fetch: i64,
    pub service_tier: String,
    pub speed: String,
    pub inference_geo: String,
    pub completeness: String,
    pub price_version: String,
    pub price_key: String,
    pub fallback: i64,
    pub unit: [String; 5],
    pub cost_nanos: i64,
}

pub(crate) const LEDGER_COLUMNS: &str =
    "event_id, position, occurred_at_ms, day, tenant, api_key, account, model, \
     request_id, attempt, status, stream, input_tokens, output_tokens, cache_read_tokens, \
     cache_write_5m_tokens, cache_write_1h_tokens, web_search_requests, web_fetch_requests, \
     service_tier, speed, inference_geo, completeness, price_version, price_key, \
     priced_by_fallback, unit_input, unit_output, unit_cache_read, unit_cache_write_5m, \
     unit_cache_write_1h, cost_nanos";

/// Key of a totals row.
pub(crate) type TotalsKey = (String, String, String, String, String);

/// Sums of a totals row: requests, five token kinds, cost, fallback requests.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sums {
    pub requests: i64,
    pub tokens: [i64; 5],
    pub cost_nanos: i64,
    pub fallback: i64,
}

impl Sums {
    pub(crate) fn add(&mut self, row: &LedgerRow) {
        self.requests += 1;
        for (t, r) in self.tokens.iter_mut().zip(row.tokens) {
            *t += r;
        }
        self.cost_nanos += row.cost_nanos;
        self.fallback += row.fallback;
    }
}

impl UsageProjection {
    fn row(&self, e: &StoredEvent) -> Result<Option<LedgerRow>, Error> {
        let env = &e.envelope;
        let u = match &env.event {
            Event::UsageRecorded(u) => u,
            Event::RequestFinished(_)
            | Event::AccountHealthChanged(_)
            | Event::AdminAction(_)
            | Event::AuthFailed(_) => return Ok(None),
        };
        let priced = self.prices.price_usage(env.occurred_at, u);
        Ok(Some(LedgerRow {
            event_id: env.id.to_string(),
            position: i64::try_from(e.position).unwrap_or(i64::MAX),
            occurred_at_ms: env.occurred_at.timestamp_millis(),
            day: sql::day_of(env.occurred_at),
            tenant: opt(env.tenant.as_ref()),
            api_key: opt(env.api_key.as_ref()),
            account: u.account.to_string(),
            model: u.model.clone(),
            request_id: env.request_id.clone().unwrap_or_default(),
            attempt: i64::from(u.attempt),
            status: i64::from(u.status),
            stream: i64::from(u.stream),
            tokens: [
                i(u.input_tokens),
                i(u.output_tokens),
                i(u.cache_read_input_tokens),
                i(u.cache_creation_5m_input_tokens),
                i(u.cache_creation_1h_input_tokens),
            ],
            web_search: i(u.server_tool_use.web_search_requests),
            web_fetch: i(u.server_tool_use.web_fetch_requests),
            service_tier: u.service_tier.clone().unwrap_or_default(),
            speed: u.speed.clone().unwrap_or_default(),
            inference_geo: u.inference_geo.clone().unwrap_or_default(),
            completeness: wire_name(&u.completeness),
            price_version: priced.version,
            price_key: priced.price_key,
            fallback: i64::from(priced.fallback),
            unit: [
                priced.unit.input.to_string(),
                priced.unit.output.to_string(),
                priced.unit.cache_read.to_string(),
                priced.unit.cache_write_5m.to_string(),
                priced.unit.cache_write_1h.to_string(),
            ],
            cost_nanos: money::usd_to_nanos(priced.cost)?,
        }))
    }
}

/// Inserts ledger rows, skipping ids already stored; returns, per row, whether it was
/// inserted. `rows` hold distinct ids.
///
/// The statements return no rows (a `RETURNING` clause streams one row per insert
/// back from SQLite's worker thread, a third of a replay's cost). When fewer rows are
/// inserted than given, a stored row of the same id at another position
/// is an earlier copy of the event: the checkpoint, advanced in the same
/// transaction, keeps a position from being applied twice, so a row stored at *our*
/// position was inserted by this statement.
async fn insert_ledger(tx: &mut AnyConnection, rows: &[LedgerRow]) -> Result<Vec<bool>, Error> {
    let stored = sql::insert_rows(
        tx,
        "usage_ledger",
        LEDGER_COLUMNS,
        OnConflict::Ignore("event_id"),
        rows,
        |q, r| {
            let mut q = q
                .bind(r.event_id.as_str())
                .bind(r.position)
                .bind(r.occurred_at_ms)
                .bind(r.day.as_str())
                .bind(r.tenant.as_str())
                .bind(r.api_key.as_str())
                .bind(r.account.as_str())
                .bind(r.model.as_str())
                .bind(r.request_id.as_str())
                .bind(r.attempt)
                .bind(r.status)
                .bind(r.stream);
            for t in r.tokens {
                q = q.bind(t);
            }
            q = q
                .bind(r.web_search)
                .bind(r.web_fetch)
                .bind(r.service_tier.as_str())
                .bind(r.speed.as_str())
                .bind(r.inference_geo.as_str())
                .bind(r.completeness.as_str())
                .bind(r.price_version.as_str())
                .bind(r.price_key.as_str())
                .bind(r.fallback);
            for u in &r.unit {
                q = q.bind(u.as_str());
            }
            q.bind(r.cost_nanos)
        },
    )
    .await?;
    if usize::try_from(stored).ok() == Some(rows.len()) {
        return Ok(vec![true; rows.len()]);
    }
    let params = sql::Params::of(tx);
    let mut at = HashMap::with_capacity(rows.len());
    for chunk in rows.chunks(params.rows_per_statement(1)) {
        let text = format!(
            "SELECT event_id, position FROM usage_ledger WHERE event_id IN ({})",
            params.list(chunk.len())
        );
        let text = tx.sql(&text);
        let mut q = sqlx::query_as::<_, (String, i64)>(&text);
        for r in chunk {
            q = q.bind(r.event_id.as_str());
        }
        at.extend(q.fetch_all(&mut *tx).await?);
    }
    Ok(rows
        .iter()
        .map(|r| at.get(&r.event_id) == Some(&r.position))
        .collect())
}

/// Adds `sums` to the totals rows (multi-row upsert; keys are unique per call).
pub(crate) async fn add_totals(
    tx: &mut AnyConnection,
    sums: &BTreeMap<TotalsKey, Sums>,
) -> Result<(), Error> {
    let entries: Vec<_> = sums.iter().collect();
    sql::insert_rows(
        tx,
        "usage_totals",
        "day, tenant, api_key, account, model, requests, input_tokens, output_tokens, \
         cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cost_nanos, \
         fallback_requests",
        OnConflict::Add("day, tenant, api_key, account, model"),
        &entries,
        |q, ((day, tenant, key, account, model), s)| {
            let mut q = q
                .bind(day.as_str())
                .bind(tenant.as_str())
                .bind(key.as_str())
                .bind(account.as_str())
                .bind(model.as_str())
                .bind(s.requests);
            for t in s.tokens {
                q = q.bind(t);
            }
            q.bind(s.cost_nanos).bind(s.fallback)
        },
    )
    .await?;
    Ok(())
}

pub(crate) fn totals_key(r: &LedgerRow) -> TotalsKey {
    (
        r.day.clone(),
        r.tenant.clone(),
        r.api_key.clone(),
        r.account.clone(),
        r.model.clone(),
    )
}

#[async_trait::async_trait]
impl Projection for UsageProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> Result<(), Error> {
        let mut seen = HashSet::new();
        let mut rows = Vec::new();
        for e in events {
            if let Some(row) = self.row(e)? {
                // A duplicate inside one batch keeps its first (lowest) position.
                if seen.insert(row.event_id.clone()) {
                    rows.push(row);
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let inserted = insert_ledger(tx, &rows).await?;
        let mut sums: BTreeMap<TotalsKey, Sums> = BTreeMap::new();
        for (r, _) in rows.iter().zip(inserted).filter(|(_, new)| *new) {
            sums.entry(totals_key(r)).or_default().add(r);
        }
        add_totals(tx, &sums).await
    }

    async fn reset(&self, tx: &mut AnyConnection) -> Result<(), Error> {
        sql::delete_all(tx, &["usage_totals", "usage_ledger"]).await
    }

    fn rebuild_indexes(&self) -> &'static [(&'static str, &'static str)] {
        LEDGER_INDEXES
    }
}

/// The ledger's secondary indexes, as its migrations (`0100_projections`,
/// `0150_ledger_budget_indexes`) create them; a rebuild drops and recreates them
/// (`Projection::rebuild_indexes`). Its primary key, which deduplicates event ids,
/// always stays.
const LEDGER_INDEXES: &[(&str, &str)] = &[
    (
        "usage_ledger_tenant_day",
        "CREATE INDEX IF NOT EXISTS usage_ledger_tenant_day ON usage_ledger (tenant, day)",
    ),
    (
        "usage_ledger_day",
        "CREATE INDEX IF NOT EXISTS usage_ledger_day ON usage_ledger (day)",
    ),
    (
        "usage_ledger_request",
        "CREATE INDEX IF NOT EXISTS usage_ledger_request ON usage_ledger (request_id)",
    ),
    (
        "usage_ledger_time",
        "CREATE INDEX IF NOT EXISTS usage_ledger_time ON usage_ledger (occurred_at_ms)",
    ),
    (
        "usage_ledger_key_time",
        "CREATE INDEX IF NOT EXISTS usage_ledger_key_time ON usage_ledger (api_key, occurred_at_ms)",
    ),
    (
        "usage_ledger_tenant_time",
        "CREATE INDEX IF NOT EXISTS usage_ledger_tenant_time ON usage_ledger (tenant, occurred_at_ms)",
    ),
];
