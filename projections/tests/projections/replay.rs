//! Rebuild and reprice.

use crate::common::*;
use crate::each_backend;
use crate::runner::workload;
use chrono::NaiveDate;
use projections::{PriceTable, Projection};
use rust_decimal::Decimal;
use std::sync::Arc;

each_backend!(
    rebuild_one_projection_restores_identical_rows,
    reprice_matches_a_rebuild_with_the_new_table,
    reprice_applies_to_per_use_prices
);

async fn rebuild_one_projection_restores_identical_rows(db: &TestDb) {
    let log = MemLog::new();
    log.push_all(&workload(1_500));
    catch_up(&db.pool, log.clone()).await;
    let before = dump_all(&db.pool).await;
    // Vandalise the read models; a rebuild must restore them from the log alone.
    sqlx::query("DELETE FROM usage_ledger WHERE day < '2026-11-03'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE usage_totals SET cost_nanos = 0")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log")
        .execute(&db.pool)
        .await
        .unwrap();
    let ps = projections::all(prices());
    let mut seen = Vec::new();
    let done = projections::rebuild(&db.pool, log.clone(), &ps, "usage", &mut |name, lag| {
        seen.push((name.to_owned(), lag.checkpoint))
    })
    .await
    .unwrap();
    assert_eq!(done, vec![("usage".to_owned(), 1_500)]);
    assert_eq!(seen.last().unwrap(), &("usage".to_owned(), 1_500));
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1));
    let after = dump_all(&db.pool).await;
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1], before[1]);
    assert!(after[5].1.is_empty(), "audit was not rebuilt yet");
    projections::rebuild(&db.pool, log.clone(), &ps, "all", &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(dump_all(&db.pool).await, before);
    assert!(matches!(
        projections::rebuild(&db.pool, log, &ps, "nope", &mut |_, _| {}).await,
        Err(projections::Error::UnknownProjection(_))
    ));
}

fn raised_table() -> PriceTable {
    let mut v: serde_json::Value =
        serde_json::from_str(projections::pricing::EMBEDDED_JSON).unwrap();
    v["versions"].as_array_mut().unwrap().push(serde_json::json!({
        "id": "test-2026-11-05",
        "effective_from": "2026-11-05",
        "models": {
            "claude-sonnet-4-6": { "input": "4", "output": "15", "cache_read": "0.3", "geo_us": "1.1" },
            "claude-new": { "input": "1", "output": "2", "cache_read": "0.1" }
        }
    }));
    PriceTable::from_json(&v.to_string()).unwrap()
}

async fn reprice_matches_a_rebuild_with_the_new_table(db: &TestDb) {
    let log = MemLog::new();
    let events = workload(1_500);
    log.push_all(&events);
    catch_up(&db.pool, log.clone()).await;
    let table = raised_table();
    // Expected difference per tenant, computed from the events and both tables.
    let old = PriceTable::embedded().unwrap();
    let mut expected: std::collections::BTreeMap<String, i64> = Default::default();
    for e in &events {
        if let schema::Event::UsageRecorded(u) = &e.event {
            if e.occurred_at < at(2026, 11, 2, 0) {
                continue;
            }
            let n =
                |p: projections::pricing::Priced| projections::money::usd_to_nanos(p.cost).unwrap();
            let diff =
                n(table.price_usage(e.occurred_at, u)) - n(old.price_usage(e.occurred_at, u));
            *expected
                .entry(e.tenant.as_ref().unwrap().to_string())
                .or_default() += diff;
        }
    }
    let mut seen = Vec::new();
    let diffs = projections::reprice_with(
        &db.pool,
        &table,
        NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
        &mut |done, total| seen.push((done, total)),
    )
    .await
    .unwrap();
    assert_eq!(diffs.len(), 2);
    // Progress counts every repriced ledger row, from 0 to all of them.
    let rows: u64 = diffs.iter().map(|d| d.events).sum();
    assert_eq!(seen.first(), Some(&(0, rows)));
    assert_eq!(seen.last(), Some(&(rows, rows)));
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    for d in &diffs {
        let want = projections::money::nanos_to_usd(expected[&d.tenant]);
        assert_eq!(d.difference, want, "{}", d.tenant);
        assert_ne!(d.difference, Decimal::ZERO);
        assert_eq!(d.new_cost - d.old_cost, d.difference);
        assert!(d.changed_events > 0 && d.changed_events < d.events);
    }
    let repriced = dump_all(&db.pool).await;
    // A rebuild with the new table yields the very same rows.
    let ps: Vec<Arc<dyn Projection>> = projections::all(Arc::new(table));
    projections::rebuild(&db.pool, log, &ps, "usage", &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(dump_all(&db.pool).await, repriced);
}

async fn reprice_applies_to_per_use_prices(db: &TestDb) {
    let log = MemLog::new();
    // 1000 input and 500 output tokens of Sonnet 4.6 with 3 web searches on Nov 3.
    let mut e = usage(&UsageSpec::default());
    if let schema::Event::UsageRecorded(u) = &mut e.event {
        u.server_tool_use.web_search_requests = 3;
    }
    log.push(&e);
    catch_up(&db.pool, log.clone()).await;
    let cost = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT cost_nanos FROM usage_ledger")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        n
    };
    // 1000 * 3 + 500 * 15 = 10500 µUSD of tokens, plus 3 * $0.01.
    assert_eq!(cost().await, 40_500_000);
    let mut v: serde_json::Value =
        serde_json::from_str(projections::pricing::EMBEDDED_JSON).unwrap();
    v["versions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": "test-2026-11-01",
            "effective_from": "2026-11-01",
            "server_tools": { "web_search": { "per_use": "0.02", "source": "test" } },
            "models": {
                "claude-sonnet-4-6": { "input": "4", "output": "15", "cache_read": "0.3" }
            }
        }));
    let table = PriceTable::from_json(&v.to_string()).unwrap();
    let from = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    let diffs = projections::reprice(&db.pool, &table, from).await.unwrap();
    // 1000 * 4 + 500 * 15 = 11500 µUSD, plus 3 * $0.02.
    assert_eq!(cost().await, 71_500_000);
    assert_eq!(
        diffs[0].difference,
        projections::money::nanos_to_usd(31_000_000)
    );
    let repriced = dump_all(&db.pool).await;
    let ps: Vec<Arc<dyn Projection>> = projections::all(Arc::new(table));
    projections::rebuild(&db.pool, log, &ps, "usage", &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(dump_all(&db.pool).await, repriced);
}

/// The ledger's secondary indexes as SQLite stores them: (name, normalised SQL).
async fn ledger_indexes(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT name, sql FROM sqlite_master \
         WHERE type = 'index' AND tbl_name = 'usage_ledger' AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// On SQLite a rebuild replays the ledger without its secondary indexes and creates
/// them at the end, exactly as the migrations define them; if a rebuild dies before
/// that, the next projector start creates them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_rebuild_restores_the_ledger_indexes_and_a_start_repairs_missing_ones() {
    let db = TestDb::sqlite().await;
    let log = MemLog::new();
    log.push_all(&workload(1_500));
    catch_up(&db.pool, log.clone()).await;
    let migrated = ledger_indexes(&db).await;
    let names: Vec<&str> = migrated.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "usage_ledger_day",
            "usage_ledger_key_time",
            "usage_ledger_request",
            "usage_ledger_tenant_day",
            "usage_ledger_tenant_time",
            "usage_ledger_time"
        ]
    );
    let before = dump_all(&db.pool).await;

    // The rebuild drops them (observed from its progress callback) and recreates them.
    let ps = projections::all(prices());
    let pool = db.pool.clone();
    let during = Arc::new(std::sync::Mutex::new(None));
    let seen = during.clone();
    let probe = tokio::runtime::Handle::current();
    projections::rebuild(&db.pool, log.clone(), &ps, "usage", &mut |_, lag| {
        if lag.checkpoint > 0 && seen.lock().unwrap().is_none() {
            let pool = pool.clone();
            let n: i64 = tokio::task::block_in_place(|| {
                probe.block_on(async move {
                    sqlx::query_scalar(
                        "SELECT COUNT(*) FROM sqlite_master \
                         WHERE type = 'index' AND tbl_name = 'usage_ledger' AND sql IS NOT NULL",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                })
            });
            *seen.lock().unwrap() = Some(n);
        }
    })
    .await
    .unwrap();
    assert_eq!(
        *during.lock().unwrap(),
        Some(0),
        "replayed without the indexes"
    );
    assert_eq!(ledger_indexes(&db).await, migrated, "the same definitions");
    assert_eq!(dump_all(&db.pool).await, before, "the same rows");

    // A rebuild that died after dropping them: the next start creates them.
    for (name, _) in &migrated[..2] {
        sqlx::query(&format!("DROP INDEX {name}"))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert_eq!(ledger_indexes(&db).await.len(), migrated.len() - 2);
    catch_up(&db.pool, log.clone()).await;
    assert_eq!(ledger_indexes(&db).await, migrated);
    db.cleanup().await;
}
