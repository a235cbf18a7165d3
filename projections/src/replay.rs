//! Replay: rebuilding projections from the log, and repricing the usage ledger after a
//! price-table change.

use crate::money::nanos_to_usd;
use crate::pricing::{PriceContext, PriceTable, ServerToolUses, Tokens};
use crate::runner::{self, Lag, Projection, Projector, ProjectorOptions};
use crate::usage::UsageProjection;
use crate::Dialect as _;
use crate::{money, Error};
use chrono::NaiveDate;
use ingest::{EventLog, Position};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Resets and replays the projection named `which` (or every one for `"all"`). The
/// reset (rows and checkpoints) is one transaction, then the log is replayed once, up
/// to its head as of the reset, into every chosen projection. `progress` receives
/// `which` and the lag after every batch. Fails with `LeaseHeld` while another runner (e.g. a
/// running relay) owns a projection: stop it first.
pub async fn rebuild(
    db: &AnyPool,
    log: Arc<dyn EventLog>,
    projections: &[Arc<dyn Projection>],
    which: &str,
    progress: &mut (dyn FnMut(&str, Lag) + Send),
) -> Result<Vec<(String, Position)>, Error> {
    let chosen: Vec<&Arc<dyn Projection>> = if which == "all" {
        projections.iter().collect()
    } else {
        projections.iter().filter(|p| p.name() == which).collect()
    };
    if chosen.is_empty() {
        return Err(Error::UnknownProjection(which.to_owned()));
    }
    // One group: the log is read and decoded once for every chosen projection.
    let label = if which == "all" {
        "all"
    } else {
        chosen[0].name()
    };
    let names: Vec<String> = chosen.iter().map(|p| p.name().to_owned()).collect();
    let projector = Projector::group(db.clone(), log, chosen.into_iter().cloned().collect());
    let mut report = |lag: Lag| progress(label, lag);
    let at = projector.rebuild(&mut report).await?;
    Ok(names.into_iter().map(|n| (n, at)).collect())
}

/// Cost change of one tenant after [`reprice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepriceDiff {
    /// The tenant (`""` for usage without one).
    pub tenant: String,
    /// Usage events considered.
    pub events: u64,
    /// Of those, how many changed (cost, version, entry or flag).
    pub changed_events: u64,
    /// Cost before, USD.
    pub old_cost: Decimal,
    /// Cost after, USD.
    pub new_cost: Decimal,
    /// `new_cost − old_cost`.
    pub difference: Decimal,
}

/// Re-prices every ledger row from `from_day` (UTC) on with `prices`, rewrites the
/// affected usage totals, and returns the difference per tenant (ordered by tenant).
///
/// Runs in one transaction while holding the `usage` projection's lease, so it fails
/// with `LeaseHeld` while a usage projector is running. Afterwards, run the projector
/// with the same table (e.g. restart the relay with the new `PRICE_TABLE`): the result
/// is then identical to a rebuild with the new table.
pub async fn reprice(
    db: &AnyPool,
    prices: &PriceTable,
    from_day: NaiveDate,
) -> Result<Vec<RepriceDiff>, Error> {
    reprice_with(db, prices, from_day, &mut |_, _| {}).await
}

/// [`reprice`] with a progress callback: `progress(done, total)` in ledger rows, after
/// every row.
pub async fn reprice_with(
    db: &AnyPool,
    prices: &PriceTable,
    from_day: NaiveDate,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Vec<RepriceDiff>, Error> {
    let name = UsageProjection::NAME;
    let opts = ProjectorOptions::default();
    let holder = format!("reprice-{}", opts.holder);
    runner::lease_or_fail(db, name, &holder, opts.lease_ttl).await?;
    let result = reprice_leased(db, prices, from_day, &holder, &opts, progress).await;
    runner::release_lease(db, name, &holder).await;
    result
}

async fn reprice_leased(
    db: &AnyPool,
    prices: &PriceTable,
    from_day: NaiveDate,
    holder: &str,
    opts: &ProjectorOptions,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Vec<RepriceDiff>, Error> {
    let day = from_day.format("%Y-%m-%d").to_string();
    let mut tx = db.begin().await?;
    runner::renew_lease(&mut tx, UsageProjection::NAME, holder, opts.lease_ttl).await?;
    let rows = sqlx::query(&tx.sql(
        "SELECT event_id, tenant, occurred_at_ms, model, service_tier, speed, inference_geo, \
         input_tokens, output_tokens, cache_read_tokens, cache_write_5m_tokens, \
         cache_write_1h_tokens, price_version, price_key, priced_by_fallback, unit_input, \
         unit_output, unit_cache_read, unit_cache_write_5m, unit_cache_write_1h, cost_nanos, \
         web_search_requests FROM usage_ledger WHERE day >= $1 ORDER BY event_id",
    ))
    .bind(&day)
    .fetch_all(&mut *tx)
    .await?;
    let mut diffs: BTreeMap<String, (u64, u64, i64, i64)> = BTreeMap::new();
    let total = rows.len() as u64;
    progress(0, total);
    for (done, r) in (1..).zip(rows) {
        let event_id: String = r.try_get(0)?;
        let tenant: String = r.try_get(1)?;
        let at_ms: i64 = r.try_get(2)?;
        let model: String = r.try_get(3)?;
        let tier: String = r.try_get(4)?;
        let speed: String = r.try_get(5)?;
        let geo: String = r.try_get(6)?;
        let n = |k: usize| -> Result<u64, sqlx::Error> {
            Ok(u64::try_from(r.try_get::<i64, _>(k)?).unwrap_or(0))
        };
        let tokens = Tokens {
            input: n(7)?,
            output: n(8)?,
            cache_read: n(9)?,
            cache_write_5m: n(10)?,
            cache_write_1h: n(11)?,
        };
        let some = |s: &str| -> Option<String> { (!s.is_empty()).then(|| s.to_owned()) };
        let (tier, speed, geo) = (some(&tier), some(&speed), some(&geo));
        let uses = ServerToolUses { web_search: n(21)? };
        let priced = prices.price_with_uses(
            at_ms,
            &PriceContext {
                model: &model,
                service_tier: tier.as_deref(),
                speed: speed.as_deref(),
                inference_geo: geo.as_deref(),
            },
            tokens,
            uses,
        );
        let new_nanos = money::usd_to_nanos(priced.cost)?;
        let old_nanos: i64 = r.try_get(20)?;
        let new_units = [
            priced.unit.input.to_string(),
            priced.unit.output.to_string(),
            priced.unit.cache_read.to_string(),
            priced.unit.cache_write_5m.to_string(),
            priced.unit.cache_write_1h.to_string(),
        ];
        let old_units: [String; 5] = [
            r.try_get(15)?,
            r.try_get(16)?,
            r.try_get(17)?,
            r.try_get(18)?,
            r.try_get(19)?,
        ];
        let changed = new_nanos != old_nanos
            || priced.version != r.try_get::<String, _>(12)?
            || priced.price_key != r.try_get::<String, _>(13)?
            || i64::from(priced.fallback) != r.try_get::<i64, _>(14)?
            || new_units != old_units;
        let d = diffs.entry(tenant).or_default();
        d.0 += 1;
        d.2 += old_nanos;
        d.3 += new_nanos;
        if changed {
            d.1 += 1;
            let [ui, uo, ur, u5, u1] = new_units;
            sqlx::query(&tx.sql(
                "UPDATE usage_ledger SET price_version = $1, price_key = $2, \
                 priced_by_fallback = $3, unit_input = $4, unit_output = $5, \
                 unit_cache_read = $6, unit_cache_write_5m = $7, unit_cache_write_1h = $8, \
                 cost_nanos = $9 WHERE event_id = $10",
            ))
            .bind(priced.version)
            .bind(priced.price_key)
            .bind(i64::from(priced.fallback))
            .bind(ui)
            .bind(uo)
            .bind(ur)
            .bind(u5)
            .bind(u1)
            .bind(new_nanos)
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
        }
        progress(done, total);
    }
    // The totals of the affected days are recomputed from the ledger, which is the
    // same arithmetic the projection does incrementally.
    sqlx::query(&tx.sql("DELETE FROM usage_totals WHERE day >= $1"))
        .bind(&day)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&tx.sql(
        "INSERT INTO usage_totals (day, tenant, api_key, account, model, requests, \
         input_tokens, output_tokens, cache_read_tokens, cache_write_5m_tokens, \
         cache_write_1h_tokens, cost_nanos, fallback_requests) \
         SELECT day, tenant, api_key, account, model, CAST(COUNT(*) AS BIGINT), \
         CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
         CAST(SUM(cache_read_tokens) AS BIGINT), CAST(SUM(cache_write_5m_tokens) AS BIGINT), \
         CAST(SUM(cache_write_1h_tokens) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT), \
         CAST(SUM(priced_by_fallback) AS BIGINT) \
         FROM usage_ledger WHERE day >= $1 GROUP BY day, tenant, api_key, account, model",
    ))
    .bind(&day)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(diffs
        .into_iter()
        .map(|(tenant, (events, changed, old, new))| RepriceDiff {
            tenant,
            events,
            changed_events: changed,
            old_cost: nanos_to_usd(old),
            new_cost: nanos_to_usd(new),
            difference: nanos_to_usd(new - old),
        })
        .collect())
}
