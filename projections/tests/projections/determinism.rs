//! Determinism: ≥100k mixed events projected live, then rebuilt, compare every table row
//! by row; on SQLite and PostgreSQL, from the SQLite log (and from JetStream when the
//! `nats` crate provides it).

use crate::common::*;
use crate::each_backend;
use crate::runner::{run_live_group, run_live_with};
use chrono::{DateTime, Utc};
use ingest::EventLog;
use projections::Dialect as _;
use rand::{Rng, SeedableRng};
use schema::{
    AccountId, Completeness, Envelope, Event, HealthEvidence, HealthReason, HealthState, Outcome,
    RoutingReason, ServerToolUse, UsageRecorded,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

pub const EVENTS: usize = 100_000;

/// A seeded mix of every event type (with duplicates of earlier ids), spanning the
/// 2026-10-07 price change.
pub fn mixed_events(n: usize, seed: u64) -> Vec<Envelope> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let models = [
        "claude-sonnet-4-6",
        "claude-opus-4-6",
        "claude-haiku-5-5",
        "claude-sonnet-5-5",
        "claude-sonnet-4-5-20250929",
        "claude-opus-4-1",
        "claude-future-9",
    ];
    let tenants = ["acme", "globex", "initech", "umbrella"];
    let start: DateTime<Utc> = at(2026, 9, 20, 0);
    let mut out: Vec<Envelope> = Vec::with_capacity(n);
    for i in 0..n {
        let when = start + chrono::Duration::seconds(i as i64 * 45 + rng.gen_range(0..30));
        let account = format!("acc_{}", rng.gen_range(0..12));
        let tenant = tenants[rng.gen_range(0..tenants.len())];
        let key = format!("key_{}_{}", tenant, rng.gen_range(0..3));
        let request = format!("req_{}", i / 2);
        let roll = rng.gen_range(0..100);
        let mut e = if roll < 55 {
            let spec = UsageSpec {
                tenant,
                key: "key_a",
                account: "acc_1",
                model: models[rng.gen_range(0..models.len())].into(),
                request: request.clone(),
                tokens: [
                    rng.gen_range(0..250_000),
                    rng.gen_range(0..8_000),
                    rng.gen_range(0..60_000),
                    rng.gen_range(0..5_000),
                    rng.gen_range(0..2_000),
                ],
                at: when,
            };
            let mut e = usage(&spec);
            if let Event::UsageRecorded(u) = &mut e.event {
                *u = UsageRecorded {
                    account: AccountId::parse(account.clone()).unwrap(),
                    attempt: rng.gen_range(1..3),
                    status: [200, 200, 200, 429, 529][rng.gen_range(0..5)],
                    server_tool_use: ServerToolUse {
                        web_search_requests: rng.gen_range(0..2),
                        web_fetch_requests: 0,
                    },
                    service_tier: [None, Some("standard"), Some("batch")][rng.gen_range(0..3)]
                        .map(Into::into),
                    speed: [None, Some("fast")][rng.gen_range(0..2)].map(Into::into),
                    inference_geo: [None, Some("us"), Some("global")][rng.gen_range(0..3)]
                        .map(Into::into),
                    completeness: [
                        Completeness::Complete,
                        Completeness::ClientDisconnectedPartial,
                        Completeness::UpstreamErrorPartial,
                    ][rng.gen_range(0..3)],
                    ..u.clone()
                };
            }
            e.api_key = Some(schema::ApiKeyId::parse(key.clone()).unwrap());
            e
        } else if roll < 85 {
            let outcome = [
                Outcome::Completed,
                Outcome::Completed,
                Outcome::ClientDisconnected,
                Outcome::UpstreamError,
                Outcome::Rejected,
            ][rng.gen_range(0..5)];
            let mut e = finished(&request, &account, outcome, when);
            if let Event::RequestFinished(r) = &mut e.event {
                r.latency_us = rng.gen_range(1_000..9_000_000);
                r.ttfb_us = rng.gen_bool(0.8).then(|| rng.gen_range(100..900_000));
                if let Some(route) = &mut r.routing {
                    route.reason = [
                        RoutingReason::StickySession,
                        RoutingReason::PriorityWeighted,
                        RoutingReason::Failover,
                    ][rng.gen_range(0..3)];
                }
            }
            e.tenant = Some(schema::TenantId::parse(tenant).unwrap());
            e
        } else if roll < 93 {
            let to = [
                HealthState::Healthy,
                HealthState::RateLimited,
                HealthState::Overloaded,
                HealthState::Unauthorized,
            ][rng.gen_range(0..4)];
            let mut unified = BTreeMap::new();
            if rng.gen_bool(0.5) {
                unified.insert(
                    "5h-utilization".to_owned(),
                    format!("0.{}", rng.gen_range(10..99)),
                );
            }
            health(
                &account,
                HealthState::Healthy,
                to,
                HealthReason::RateLimited,
                when,
                HealthEvidence {
                    status: rng.gen_bool(0.7).then_some(429),
                    retry_after_s: Some(30),
                    error_type: rng.gen_bool(0.5).then(|| "rate_limit_error".into()),
                    message: None,
                    unified,
                },
            )
        } else if roll < 97 {
            admin(
                ["key.create", "account.reset", "key.disable"][rng.gen_range(0..3)],
                when,
            )
        } else {
            auth_failed(when)
        };
        // Ids are v7 from the clock; make them depend on the seed only.
        e.id = Uuid::from_u128(rng.gen());
        // About 1% are re-publications of an earlier event (same id, same content).
        if i > 10 && rng.gen_range(0..100) == 0 {
            e = out[rng.gen_range(0..i)].clone();
        }
        out.push(e);
    }
    out
}

/// Appends `events` in batches while the projectors run, waits, dumps, rebuilds all,
/// dumps again and compares.
/// With `grouped`, the live run uses one projector for all projections (one
/// subscription); otherwise one projector each. The rebuild always uses a group, so
/// the comparison also checks that batching differently yields the same rows.
pub async fn live_then_rebuild(
    db: &TestDb,
    log: Arc<dyn EventLog>,
    events: &[Envelope],
    grouped: bool,
) {
    let t0 = std::time::Instant::now();
    let feeder = {
        let log = log.clone();
        let events = events.to_vec();
        tokio::spawn(async move {
            for chunk in events.chunks(2_000) {
                log.append_batch(chunk).await.unwrap();
            }
        })
    };
    // Projectors start while events are still arriving, and run until they have
    // applied everything the feeder appended.
    let fed = async move { feeder.await.unwrap() };
    if grouped {
        run_live_group(&db.pool, log.clone(), projections::all(prices()), fed).await;
    } else {
        run_live_with(
            &db.pool,
            log.clone(),
            projections::all(prices()),
            projections::ProjectorOptions::default(),
            fed,
        )
        .await;
    }
    eprintln!(
        "{}: live projection done after {:?}",
        db.backend,
        t0.elapsed()
    );
    let projected = dump_all(&db.pool).await;
    eprintln!("{}: dump done after {:?}", db.backend, t0.elapsed());
    let ledger = &projected[0].1;
    assert!(
        ledger.len() > events.len() / 2,
        "ledger has {} rows",
        ledger.len()
    );
    let ps = projections::all(prices());
    projections::rebuild(&db.pool, log.clone(), &ps, "all", &mut |_, _| {})
        .await
        .unwrap();
    eprintln!("{}: rebuild done after {:?}", db.backend, t0.elapsed());
    let rebuilt = dump_all(&db.pool).await;
    for ((table, a), (_, b)) in projected.iter().zip(rebuilt.iter()) {
        assert_eq!(a.len(), b.len(), "{table}: row count");
        for (ra, rb) in a.iter().zip(b.iter()) {
            assert_eq!(ra, rb, "{table}");
        }
    }
    // The totals agree with the ledger they were built from.
    let sums: (i64, i64) =
        sqlx::query_as(&db.pool.sql(
            "SELECT CAST(SUM(cost_nanos) AS BIGINT), CAST(COUNT(*) AS BIGINT) FROM usage_ledger",
        ))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let totals: (i64, i64) = sqlx::query_as(&db.pool.sql(
        "SELECT CAST(SUM(cost_nanos) AS BIGINT), CAST(SUM(requests) AS BIGINT) FROM usage_totals",
    ))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(sums, totals);
}

each_backend!(
    hundred_thousand_events_from_the_sqlite_log,
    hundred_thousand_events_from_jetstream,
    a_copy_republished_after_the_jetstream_duplicate_window_counts_once
);

/// JetStream forgets ids after its duplicate window; a publisher that replays an
/// event later (a journal recovered after a long outage, say) stores a second copy.
/// The read models still count it once.
async fn a_copy_republished_after_the_jetstream_duplicate_window_counts_once(db: &TestDb) {
    let mut server = nats::testing::NatsServer::start().await;
    let settings = nats::StreamSettings {
        duplicate_window: std::time::Duration::from_secs(1),
        ..nats::StreamSettings::default()
    };
    let log = nats::JetStreamLog::connect(&server.url(), settings)
        .await
        .unwrap();
    let spent = usage(&UsageSpec::default());
    let ended = finished(
        "req_1",
        "acc_1",
        schema::Outcome::Completed,
        at(2026, 11, 3, 12),
    );
    for e in [&spent, &ended] {
        assert!(!log.append(e).await.unwrap().duplicate);
    }
    // Inside the window a copy is recognised; once it has passed, it is stored.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for e in [&spent, &ended] {
        while log.append(e).await.unwrap().duplicate {
            assert!(
                std::time::Instant::now() < deadline,
                "the window never passed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let head = log.head().await.unwrap();
    assert!(
        head >= 4,
        "both copies of both events are in the stream: head {head}"
    );
    catch_up(&db.pool, Arc::new(log)).await;
    let ledger: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_ledger")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ledger, 1);
    let st = projections::read::statement(&db.pool, "acme", "2026-11")
        .await
        .unwrap();
    assert_eq!(st.totals.requests, 1);
    assert_eq!(st.totals.input_tokens, 1_000);
    let logged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM request_log")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(logged, 1);
    server.stop().await;
}

async fn hundred_thousand_events_from_the_sqlite_log(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let log = ingest::sqlite::SqliteLog::open(&dir.path().join("events.db"))
        .await
        .unwrap();
    let events = mixed_events(EVENTS, 42);
    live_then_rebuild(db, Arc::new(log.clone()), &events, false).await;
    log.close().await;
}

async fn hundred_thousand_events_from_jetstream(db: &TestDb) {
    let mut server = nats::testing::NatsServer::start().await;
    let log = nats::JetStreamLog::connect(&server.url(), nats::StreamSettings::default())
        .await
        .unwrap();
    let events = mixed_events(EVENTS, 43);
    live_then_rebuild(db, Arc::new(log), &events, true).await;
    server.stop().await;
}

/// The same 100k events, duplicates included, projected into SQLite, PostgreSQL and
/// MariaDB give the same rows, value for value. Rows are compared in key order sorted
/// here, so the servers' collations do not matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_events_give_the_same_rows_on_every_backend() {
    let log = MemLog::new();
    log.push_all(&mixed_events(EVENTS, 44));
    let log: Arc<dyn EventLog> = log;
    let mut dumps = Vec::new();
    for db in [
        TestDb::sqlite().await,
        TestDb::postgres().await,
        TestDb::mysql().await,
    ] {
        let t0 = std::time::Instant::now();
        catch_up(&db.pool, log.clone()).await;
        let mut tables = dump_all(&db.pool).await;
        for (_, rows) in &mut tables {
            rows.sort();
        }
        eprintln!("{}: projected and dumped in {:?}", db.backend, t0.elapsed());
        dumps.push((db.backend, tables));
        db.cleanup().await;
    }
    let (first, reference) = &dumps[0];
    assert!(reference[0].1.len() > EVENTS / 2, "the ledger is filled");
    for (backend, tables) in &dumps[1..] {
        for ((table, a), (_, b)) in reference.iter().zip(tables.iter()) {
            assert_eq!(a.len(), b.len(), "{table}: rows on {first} and {backend}");
            for (ra, rb) in a.iter().zip(b.iter()) {
                assert_eq!(ra, rb, "{table}: {first} and {backend}");
            }
        }
    }
}
